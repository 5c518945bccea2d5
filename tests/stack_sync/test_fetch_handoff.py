"""The sync stack's fetch hand-off under ``fetch_timeout``, with real threads.

A thread cannot be interrupted, so a fetch bounded by ``fetch_timeout`` runs on one of the
stack's worker threads while the caller waits for it at most that long. What that hand-off
must keep, whatever primitive carries it: the caller gets ``FetchTimeoutError`` after the
timeout even if the fetcher never returns; the caller's context variables are visible in the
fetcher; the fetcher's exception reaches the caller with its traceback; single-flight followers
join the leader's fetch; the soft timeout and ``stale_if_error`` still serve the stale value;
the pool of fetch threads stays bounded, and a call queued at that bound whose caller stopped
waiting never reaches the origin; many concurrent cold misses each get their own value.
"""

from __future__ import annotations

import contextvars
import gc
import os
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sync_stack_support import Held

from layercache import FetchTimeoutError, MemoryLayer, SyncCacheStack
from layercache._primitives.threads import Workers
from layercache.testing import ManualClock
from polling import eventually

REQUEST = contextvars.ContextVar("request", default="none")


@pytest.fixture
def cache() -> Iterator[SyncCacheStack]:
    stack = SyncCacheStack([MemoryLayer(ttl=60)], fetch_timeout=5)
    try:
        yield stack
    finally:
        stack.close()


def _fetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("layercache-fetch")]


class Results:
    """What each of several caller threads got: a value or the exception it raised."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.got: dict[Any, Any] = {}

    def run(self, name: Any, call: Callable[[], Any]) -> threading.Thread:
        def target() -> None:
            try:
                value: Any = call()
            except BaseException as exc:
                value = exc
            with self.lock:
                self.got[name] = value

        thread = threading.Thread(target=target, name=f"caller-{name}", daemon=True)
        thread.start()
        return thread


def test_the_caller_times_out_while_the_fetcher_never_returns(cache: SyncCacheStack) -> None:
    never = threading.Event()
    started = time.monotonic()
    with pytest.raises(FetchTimeoutError) as info:
        cache.get("k", never.wait, fetch_timeout=0.2)
    took = time.monotonic() - started
    assert (info.value.key, info.value.timeout) == ("k", 0.2)
    assert 0.2 <= took < 4.0, took
    # The key is free again: the next call fetches (on a worker: the hung one is still busy).
    assert cache.get("k", lambda: "v", fetch_timeout=0.2) == "v"
    never.set()


def test_the_caller_times_out_while_the_fetcher_spins_holding_the_interpreter_lock(
    cache: SyncCacheStack,
) -> None:
    # The caller wakes the worker and then needs the interpreter lock back before it starts
    # its bounded wait: a fetcher that never blocks must not keep it from timing out.
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    started = time.monotonic()
    try:
        with pytest.raises(FetchTimeoutError):
            cache.get("k", spin, fetch_timeout=0.2)
        assert time.monotonic() - started < 4.0
    finally:
        stop.set()


def test_the_fetcher_runs_on_a_worker_in_the_callers_context(cache: SyncCacheStack) -> None:
    seen: list[tuple[str, str]] = []

    def fetch() -> str:
        seen.append((REQUEST.get(), threading.current_thread().name))
        REQUEST.set("changed by the fetcher")
        return "v"

    token = REQUEST.set("req-7")
    try:
        assert cache.get("k", fetch) == "v"
        assert REQUEST.get() == "req-7", "the fetcher's own context change leaked back"
    finally:
        REQUEST.reset(token)
    assert len(seen) == 1
    assert seen[0][0] == "req-7"
    assert seen[0][1].startswith("layercache-fetch")
    assert seen[0][1] != threading.current_thread().name


def test_each_call_sees_its_own_callers_context_on_a_reused_worker(
    cache: SyncCacheStack,
) -> None:
    seen: list[str] = []

    def fetch() -> str:
        seen.append(REQUEST.get())
        return REQUEST.get()

    for n in range(20):
        token = REQUEST.set(f"req-{n}")
        try:
            assert cache.get(f"k{n}", fetch) == f"req-{n}"
        finally:
            REQUEST.reset(token)
    assert seen == [f"req-{n}" for n in range(20)]


def test_a_fetch_timeout_beyond_the_platforms_lock_timeout_waits_for_the_fetch() -> None:
    # Any finite fetch_timeout is valid; one beyond threading.TIMEOUT_MAX used to fail every
    # fetch that was not done at once with OverflowError (from the future's wait).
    cache = SyncCacheStack([MemoryLayer(ttl=60)], fetch_timeout=1e12)
    try:
        assert cache.get("k", lambda: time.sleep(0.05) or "slow") == "slow"
    finally:
        cache.close()


def test_the_fetchers_exception_reaches_the_caller_with_its_traceback(
    cache: SyncCacheStack,
) -> None:
    class OriginDown(Exception):
        pass

    raised: list[OriginDown] = []

    def origin_that_fails() -> Any:
        error = OriginDown("boom")
        raised.append(error)
        raise error

    with pytest.raises(OriginDown) as info:
        cache.get("k", origin_that_fails)
    assert info.value is raised[0]
    frames = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert "origin_that_fails" in frames, frames
    # Never cached, nothing left in flight: the next call fetches again.
    assert cache.get("k", lambda: "v") == "v"


def test_a_timeout_error_raised_by_the_fetcher_is_its_own(cache: SyncCacheStack) -> None:
    def fetch() -> Any:
        raise TimeoutError("the origin's own timeout")

    with pytest.raises(TimeoutError) as info:
        cache.get("k", fetch, fetch_timeout=5)
    assert not isinstance(info.value, FetchTimeoutError)
    assert str(info.value) == "the origin's own timeout"


def test_followers_join_the_leaders_handed_off_fetch(cache: SyncCacheStack) -> None:
    held = Held("shared")
    results = Results()
    leader = results.run("leader", lambda: cache.get("k", held))
    eventually(held.started.is_set, what="the leader's fetch to start")
    followers = [results.run(n, lambda: cache.get("k", held)) for n in range(8)]
    eventually(lambda: cache.get_metrics().stampede_dedupes >= 8, what="the 8 followers to join")
    held.release.set()
    for thread in (leader, *followers):
        thread.join(10)
    assert held.calls == 1
    assert results.got == {name: "shared" for name in ("leader", *range(8))}


def test_followers_of_a_hung_fetch_all_get_fetch_timeout_error(cache: SyncCacheStack) -> None:
    never = threading.Event()
    calls: list[int] = []

    def hang() -> Any:
        calls.append(1)
        never.wait()

    results = Results()
    threads = [results.run(n, lambda: cache.get("k", hang, fetch_timeout=0.3)) for n in range(6)]
    for thread in threads:
        thread.join(10)
    assert len(calls) == 1
    assert all(isinstance(v, FetchTimeoutError) for v in results.got.values()), results.got
    assert len(results.got) == 6
    never.set()


def test_soft_timeout_serves_stale_while_the_handed_off_fetch_goes_on() -> None:
    clock = ManualClock()
    cache = SyncCacheStack([MemoryLayer(ttl=60, clock=clock)], clock=clock, fetch_timeout=5)
    try:
        assert cache.get("k", lambda: "old", ttl=10, stale_if_error=100) == "old"
        clock.advance(11)
        held = Held("new")
        started = time.monotonic()
        got = cache.get("k", held, ttl=10, stale_if_error=100, fetch_soft_timeout=0.1)
        assert got == "old"
        assert time.monotonic() - started < 4.0
        assert held.started.is_set()
        held.release.set()
        eventually(lambda: cache.get("k") == "new", what="the fetch to store its value")
    finally:
        cache.close()


def test_stale_if_error_serves_stale_after_a_hard_timeout() -> None:
    clock = ManualClock()
    cache = SyncCacheStack([MemoryLayer(ttl=60, clock=clock)], clock=clock)
    never = threading.Event()
    try:
        assert cache.get("k", lambda: "old", ttl=10, stale_if_error=100) == "old"
        clock.advance(11)
        got = cache.get("k", never.wait, ttl=10, stale_if_error=100, fetch_timeout=0.2)
        assert got == "old"
    finally:
        never.set()
        cache.close()


def test_the_fetch_pool_stays_bounded_and_drops_calls_nobody_waits_for() -> None:
    bound = Workers.FETCH_THREADS
    before = set(_fetch_threads())
    cache = SyncCacheStack([MemoryLayer(ttl=60)], fetch_timeout=30)
    release = threading.Event()
    started = threading.Semaphore(0)
    late: list[str] = []
    try:

        def hold() -> str:
            started.release()
            release.wait(20)
            return "held"

        results = Results()
        busy = [results.run(n, lambda n=n: cache.get(f"busy{n}", hold)) for n in range(bound)]
        for _ in range(bound):
            assert started.acquire(timeout=10), "a fetch did not start"
        # Every fetch thread is busy: the next call queues, and its caller gives up.
        with pytest.raises(FetchTimeoutError):
            cache.get("queued", lambda: late.append("called") or "late", fetch_timeout=0.2)
        mine = [t for t in _fetch_threads() if t not in before]
        assert len(mine) == bound, len(mine)
        release.set()
        for thread in busy:
            thread.join(10)
        assert set(results.got.values()) == {"held"}
        # The pool still works, with the same threads, and the dropped call never ran.
        assert cache.get("after", lambda: "ok") == "ok"
        assert len([t for t in _fetch_threads() if t not in before]) == bound
        assert late == [], "a call whose caller had stopped waiting reached the origin"
    finally:
        release.set()
        cache.close()


def test_an_idle_worker_keeps_nothing_of_its_last_fetch_alive(cache: SyncCacheStack) -> None:
    class Value:
        pass

    produced: list[weakref.ref[Value]] = []

    def fetch() -> Value:
        value = Value()
        produced.append(weakref.ref(value))
        return value

    assert isinstance(cache.get("k", fetch, should_cache=lambda v: False), Value)
    assert cache.get("k") is None  # not stored: only the caller had it

    def released() -> bool:
        gc.collect()
        return produced[0]() is None

    # The worker lets go of it right after handing it over (a few bytecodes later).
    eventually(released, timeout=5, what="the worker thread to let go of the fetched value")


def test_many_concurrent_cold_misses_each_get_their_own_value(fast_switching: None) -> None:
    assert sys.getswitchinterval() < 1e-3
    cache = SyncCacheStack([MemoryLayer(ttl=60)], fetch_timeout=10)
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def fetcher(key: str) -> Callable[[], str]:
        def fetch() -> str:
            with lock:
                counts[key] = counts.get(key, 0) + 1
            return f"value-of-{key}"

        return fetch

    errors: list[BaseException] = []
    barrier = threading.Barrier(48)

    def caller(n: int) -> None:
        try:
            barrier.wait(10)
            for i in range(60):
                # Half the keys are shared by neighbouring threads (followers join), half
                # are this thread's own.
                key = f"shared{(n // 2)}-{i}" if i % 2 else f"own{n}-{i}"
                got = cache.get(key, fetcher(key))
                if got != f"value-of-{key}":
                    raise AssertionError(f"{key}: got {got!r}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(n,), daemon=True) for n in range(48)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        assert len(counts) == 48 * 30 + 24 * 30
        assert set(counts.values()) == {1}, "a key was fetched twice"
    finally:
        cache.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_stack_used_before_a_fork_fetches_and_refreshes_in_the_child() -> None:
    # A pre-fork server builds (and warms) the stack in the parent; each forked worker uses
    # it. The parent's fetch and refresh threads do not exist in the child: the child must
    # start its own instead of waiting for them (every timed fetch used to time out there,
    # and background refreshes never ran).
    script = textwrap.dedent(
        """
        import os, sys, time
        from layercache import MemoryLayer, SyncCacheStack
        from layercache.testing import ManualClock

        clock = ManualClock()
        cache = SyncCacheStack([MemoryLayer(ttl=60, clock=clock)], clock=clock, fetch_timeout=3)
        assert cache.get("warm", lambda: "parent", ttl=10, stale_while_revalidate=60) == "parent"
        clock.advance(11)  # stale: a refresh in the parent runs on its refresh pool
        assert cache.get("warm", lambda: "refreshed", ttl=10, stale_while_revalidate=60)
        deadline = time.monotonic() + 5
        while cache.get("warm") != "refreshed":
            assert time.monotonic() < deadline, "no refresh in the parent"
            time.sleep(0.01)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                began = time.monotonic()
                got = cache.get("cold", lambda: "child")
                took = time.monotonic() - began
                clock.advance(11)
                stale = cache.get("warm", lambda: "child-refresh", ttl=10,
                                  stale_while_revalidate=60)
                deadline = time.monotonic() + 5
                while cache.get("warm") != "child-refresh" and time.monotonic() < deadline:
                    time.sleep(0.01)
                print(got, took < 2, stale, cache.get("warm"), flush=True)
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
        """
    )
    assert run_forking(script) == ["child", "True", "refreshed", "child-refresh"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_work_under_way_in_other_threads_at_a_fork_is_not_waited_for_in_the_child() -> None:
    # At the fork, one thread is clearing the stack (held inside the second layer's clear)
    # and another is fetching "k". Neither thread exists in the child. The child's caller of "k"
    # used to join the parent's fetch and wait forever; and the clear, never ending there,
    # kept every fetched value out of the child's L1.
    script = textwrap.dedent(
        """
        import os, sys, threading, time
        from layercache import MemoryLayer, SyncCacheStack

        class HeldClear(MemoryLayer):
            def __init__(self):
                super().__init__(ttl=60, name="held")
                self.entered = threading.Event()
                self.release = threading.Event()

            def clear(self):
                self.entered.set()
                self.release.wait(10)
                super().clear()

        l1 = MemoryLayer(ttl=60)
        held = HeldClear()
        cache = SyncCacheStack([l1, held])
        fetching = threading.Event()
        release_fetch = threading.Event()

        def slow():
            fetching.set()
            release_fetch.wait(10)
            return "parent"

        clearer = threading.Thread(target=cache.clear)
        clearer.start()
        assert held.entered.wait(5)
        # Begun after the clear: not marked by it, so a caller of "k" joins it.
        fetcher = threading.Thread(target=lambda: cache.get("k", slow))
        fetcher.start()
        assert fetching.wait(5)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                began = time.monotonic()
                got = cache.get("k", lambda: "child")
                took = time.monotonic() - began
                fresh = cache.get("other", lambda: "v")
                print(got, took < 2, fresh, l1.peek("other", time.time()) is not None, flush=True)
                code = 0
            finally:
                os._exit(code)
        release_fetch.set()
        held.release.set()
        fetcher.join(10)
        clearer.join(10)
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
        """
    )
    assert run_forking(script) == ["child", "True", "v", "True"]


def run_forking(script: str) -> list[str]:
    """Run ``script`` (which forks) in a new interpreter; the words it printed."""
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()
