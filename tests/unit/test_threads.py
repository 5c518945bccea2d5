"""The thread twin's fetch pool (``_primitives/threads.py``: ``_FetchPool``, ``Workers``), with
real threads: the hand-off a sync fetch under ``fetch_timeout`` runs through."""

from __future__ import annotations

import concurrent.futures
import contextvars
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any

import pytest

from layercache._primitives.threads import _CLOSED, Workers, _FetchPool, with_timeout

VAR = contextvars.ContextVar("var", default="unset")


@pytest.fixture
def pool() -> Iterator[_FetchPool]:
    fetch_pool = _FetchPool(4, "test-fetch")
    try:
        yield fetch_pool
    finally:
        fetch_pool.shutdown(5)


def _pool_threads(name: str = "test-fetch") -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(name)]


def test_sequential_calls_reuse_one_warm_thread(pool: _FetchPool) -> None:
    names = {pool.call(5, lambda: threading.current_thread().name) for _ in range(200)}
    assert len(names) == 1
    assert next(iter(names)).startswith("test-fetch")
    assert len(_pool_threads()) == 1


def test_results_exceptions_and_tracebacks_pass_through(pool: _FetchPool) -> None:
    assert pool.call(5, lambda a, b: a + b, 2, 3) == 5

    def broken() -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError) as info:
        pool.call(5, broken)
    assert "broken" in [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    # A BaseException the work raises reaches the caller too; the worker survives it.
    with pytest.raises(SystemExit):
        pool.call(5, sys.exit, 3)
    assert pool.call(5, lambda: "alive") == "alive"


def test_a_wait_timeout_is_a_fresh_timeout_error_the_works_own_passes_through(
    pool: _FetchPool,
) -> None:
    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(TimeoutError) as waited:
        pool.call(0.1, release.wait, 10)
    assert time.monotonic() - started >= 0.1
    assert str(waited.value) == ""
    release.set()
    own = TimeoutError("origin")

    def fail() -> None:
        raise own

    with pytest.raises(TimeoutError) as info:
        pool.call(5, fail)
    assert info.value is own


def test_the_work_runs_in_a_copy_of_the_callers_context(pool: _FetchPool) -> None:
    def read_and_change() -> str:
        seen = VAR.get()
        VAR.set("changed in the worker")
        return seen

    token = VAR.set("caller")
    try:
        assert pool.call(5, read_and_change) == "caller"
        assert VAR.get() == "caller"
        VAR.set("second")
        assert pool.call(5, read_and_change) == "second"
    finally:
        VAR.reset(token)


def test_a_timeout_beyond_the_platforms_lock_timeout_is_accepted(pool: _FetchPool) -> None:
    # fetch_timeout accepts any finite number of seconds; a wait beyond TIMEOUT_MAX used to
    # raise OverflowError from the lock (Future.result) instead of waiting.
    assert pool.call(1e12, lambda: time.sleep(0.05) or "slow") == "slow"


def test_at_the_bound_calls_queue_in_order_and_a_withdrawn_one_never_runs() -> None:
    pool = _FetchPool(2, "bounded-fetch")
    release = threading.Event()
    ran: list[str] = []
    lock = threading.Lock()

    def hold(name: str) -> str:
        with lock:
            ran.append(name)
        release.wait(10)
        return name

    results: dict[str, Any] = {}

    def caller(name: str, timeout: float) -> None:
        try:
            results[name] = pool.call(timeout, hold, name)
        except BaseException as exc:
            results[name] = exc

    try:
        busy = [threading.Thread(target=caller, args=(n, 10)) for n in ("a", "b")]
        for thread in busy:
            thread.start()
        deadline = time.monotonic() + 10
        while len(ran) < 2:
            assert time.monotonic() < deadline, "the first two calls did not start"
            time.sleep(0.005)
        # Both threads busy: the next calls queue; one caller gives up meanwhile.
        queued = threading.Thread(target=caller, args=("c", 10))
        queued.start()
        deadline = time.monotonic() + 10
        while len(pool._queued) < 1:
            assert time.monotonic() < deadline, "c did not queue"
            time.sleep(0.005)
        with pytest.raises(TimeoutError):
            pool.call(0.1, hold, "gave-up")
        assert len(pool._queued) == 1, "the withdrawn call is still queued"
        last = threading.Thread(target=caller, args=("d", 10))
        last.start()
        deadline = time.monotonic() + 10
        while len(pool._queued) < 2:
            assert time.monotonic() < deadline, "d did not queue"
            time.sleep(0.005)
        release.set()
        for thread in (*busy, queued, last):
            thread.join(10)
        assert results == {"a": "a", "b": "b", "c": "c", "d": "d"}
        assert ran[2:] == ["c", "d"]
        assert "gave-up" not in ran
        assert len(_pool_threads("bounded-fetch")) == 2
    finally:
        release.set()
        pool.shutdown(5)


def test_shutdown_cancels_queued_calls_stops_idle_threads_and_lets_busy_ones_finish() -> None:
    pool = _FetchPool(1, "closing-fetch")
    assert pool.call(5, lambda: "warm") == "warm"  # one idle thread
    release = threading.Event()
    started = threading.Event()
    results: dict[str, Any] = {}

    def caller(name: str, fn: Any) -> None:
        try:
            results[name] = pool.call(10, fn)
        except BaseException as exc:
            results[name] = exc

    def hold() -> str:
        started.set()
        release.wait(10)
        return "finished"

    busy = threading.Thread(target=caller, args=("busy", hold))
    busy.start()
    assert started.wait(10)
    queued = threading.Thread(target=caller, args=("queued", lambda: "never"))
    queued.start()
    deadline = time.monotonic() + 10
    while not pool._queued:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    pool.shutdown(0.05)  # the busy thread outlives this wait: abandoned, still running
    queued.join(10)
    assert isinstance(results["queued"], concurrent.futures.CancelledError)
    assert pool.call(5, lambda: "inline") is _CLOSED
    release.set()
    busy.join(10)
    assert results["busy"] == "finished"
    deadline = time.monotonic() + 10
    while _pool_threads("closing-fetch"):
        assert time.monotonic() < deadline, "the busy thread did not stop after its call"
        time.sleep(0.005)


def test_workers_run_the_call_inline_after_close() -> None:
    workers = Workers("closed-workers")
    assert with_timeout(lambda: threading.current_thread().name, 5, workers).startswith(
        "closed-workers-fetch"
    )
    workers.close(5)
    assert with_timeout(lambda: threading.current_thread(), 5, workers) is (
        threading.current_thread()
    )
    assert not _pool_threads("closed-workers")


def test_idle_and_hung_workers_and_queued_calls_never_block_interpreter_exit() -> None:
    script = textwrap.dedent(
        """
        import threading
        from layercache._primitives.threads import _FetchPool

        pool = _FetchPool(2, "exit-fetch")
        pool.call(5, lambda: None)  # one idle worker
        hung = threading.Event()
        for _ in range(3):  # two hung workers, one queued call: every caller gives up
            try:
                pool.call(0.1, hung.wait)
            except TimeoutError:
                pass
        print("done", flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "done"
