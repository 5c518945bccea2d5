"""In-process single-flight: one fetch per cold key, worker threads, errors and cancellation."""

from __future__ import annotations

import asyncio
import itertools
import threading

import pytest
from stack_support import StackEnv, eventually

from _twins_async import Event, join_all, spawn, wait_event


class Boom(Exception):
    pass


async def test_hundred_concurrent_callers_cause_one_fetch(env: StackEnv) -> None:
    started = Event()
    release = Event()
    fetches = 0

    async def fetch() -> dict[str, str]:
        nonlocal fetches
        fetches += 1
        started.set()
        await release.wait()
        return {"value": "shared"}

    tasks = [spawn(env.cache.get, "cold", fetch) for _ in range(100)]
    await wait_event(started, 2)
    await eventually(
        lambda: env.cache.get_metrics().stampede_dedupes == 99, "99 callers to join the fetch"
    )
    release.set()
    results = await join_all(tasks)
    assert results == [{"value": "shared"}] * 100
    assert fetches == 1
    metrics = env.cache.get_metrics()
    assert metrics.fetches == 1
    assert metrics.stampede_dedupes == 99
    assert await env.in_layers("cold") == [layer.name for layer in env.layers]


async def test_distinct_keys_fetch_independently(memory_env: StackEnv) -> None:
    release = Event()
    fetched: list[str] = []

    def make(key: str):  # type: ignore[no-untyped-def]
        async def fetch() -> str:
            fetched.append(key)
            await release.wait()
            return key

        return fetch

    tasks = [spawn(memory_env.cache.get, k, make(k)) for k in ("a", "b", "c")]
    await eventually(lambda: len(fetched) == 3, "three independent fetches")
    release.set()
    assert await join_all(tasks) == ["a", "b", "c"]


# unasync: begin async-only
# The event loop's own thread and its responsiveness: there is no loop in the sync stack.
async def test_sync_fetcher_runs_off_the_loop_thread(env: StackEnv) -> None:
    loop_thread = threading.get_ident()
    fetch_threads: list[int] = []
    started = threading.Event()
    release = threading.Event()

    def blocking_fetch() -> str:
        fetch_threads.append(threading.get_ident())
        started.set()
        # Bounded: if this ran on the loop thread the test fails instead of hanging.
        release.wait(3)
        return "from-thread"

    task = spawn(env.cache.get, "sync", blocking_fetch)
    await eventually(started.is_set, "the sync fetcher to start")
    # The loop is responsive while the fetcher blocks: other cache operations complete.
    await asyncio.wait_for(env.cache.set("other", 1), 2)
    assert await asyncio.wait_for(env.cache.get("other"), 2) == 1
    assert not task.done()
    release.set()
    assert await asyncio.wait_for(task, 3) == "from-thread"
    assert fetch_threads
    assert fetch_threads[0] != loop_thread, "the sync fetcher ran on the event-loop thread"


# unasync: end async-only


async def test_sync_fetchers_are_deduplicated_too(memory_env: StackEnv) -> None:
    release = threading.Event()
    calls = 0

    def fetch() -> int:
        nonlocal calls
        calls += 1
        release.wait(3)
        return 42

    tasks = [spawn(memory_env.cache.get, "k", fetch) for _ in range(20)]
    await eventually(lambda: calls == 1, "the fetch to start")
    await eventually(
        lambda: memory_env.cache.get_metrics().stampede_dedupes == 19, "19 joined callers"
    )
    release.set()
    assert await join_all(tasks) == [42] * 20
    assert calls == 1


async def test_fetcher_exception_reaches_every_waiter_and_is_not_cached(env: StackEnv) -> None:
    release = Event()
    boom = Boom("origin down")
    calls = 0

    async def failing() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        raise boom

    tasks = [spawn(env.cache.get, "flaky", failing) for _ in range(10)]
    await eventually(
        lambda: env.cache.get_metrics().stampede_dedupes == 9, "9 callers to join the fetch"
    )
    release.set()
    results = await join_all(tasks, return_exceptions=True)
    assert calls == 1
    for result in results:
        assert result is boom, f"a waiter got {result!r}, not the fetcher's own exception"
    assert await env.in_layers("flaky") == []
    assert await env.cache.get("flaky") is None
    # No in-flight state was left behind: the next call fetches again and succeeds.
    assert await env.cache.get("flaky", lambda: "recovered") == "recovered"
    assert await env.cache.get("flaky") == "recovered"


async def test_sync_fetcher_exception_propagates_unchanged(memory_env: StackEnv) -> None:
    def failing() -> str:
        raise KeyError("missing row")

    with pytest.raises(KeyError, match="missing row"):
        await memory_env.cache.get("k", failing)
    assert await memory_env.cache.get("k", lambda: 1) == 1


# unasync: begin async-only
# Cancelling a waiting task: a thread blocked in the sync stack cannot be cancelled.
async def test_cancelling_one_waiter_does_not_cancel_the_fetch(env: StackEnv) -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    outcome: list[str] = []

    async def fetch() -> str:
        started.set()
        try:
            await release.wait()
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        outcome.append("finished")
        return "survivor"

    leader = spawn(env.cache.get, "k", fetch)
    await asyncio.wait_for(started.wait(), 2)
    followers = [spawn(env.cache.get, "k", fetch) for _ in range(3)]
    await eventually(lambda: env.cache.get_metrics().stampede_dedupes == 3, "followers to join")
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    followers[0].cancel()
    release.set()
    results = await asyncio.gather(*followers, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert results[1:] == ["survivor", "survivor"]
    assert outcome == ["finished"], "cancelling waiters cancelled the shared fetch"
    assert await env.cache.get("k") == "survivor", "the fetched value was not stored"


# unasync: end async-only


async def test_stampede_prevention_off_fetches_per_caller(build_stack) -> None:  # type: ignore[no-untyped-def]
    env: StackEnv = await build_stack(stampede_prevention=False)
    release = Event()
    numbers = itertools.count(1)  # next() is atomic: safe from the twin's threads too
    started: list[int] = []

    async def fetch() -> int:
        number = next(numbers)
        started.append(number)
        await release.wait()
        return number

    tasks = [spawn(env.cache.get, "k", fetch) for _ in range(5)]
    await eventually(lambda: len(started) == 5, "five independent fetches")
    release.set()
    # Every caller got its own fetch's value: none was shared.
    assert sorted(await join_all(tasks)) == [1, 2, 3, 4, 5]


async def test_fetch_timeout_fails_every_waiter_and_leaves_no_state(memory_env: StackEnv) -> None:
    from layercache import FetchTimeoutError

    never = Event()

    async def hung() -> str:
        await never.wait()
        return "never"

    tasks = [spawn(memory_env.cache.get, "slow", hung, fetch_timeout=0.05) for _ in range(3)]
    results = await join_all(tasks, return_exceptions=True, timeout=2)
    for result in results:
        assert isinstance(result, FetchTimeoutError), result
        assert result.key == "slow"
        assert result.timeout == pytest.approx(0.05)
    assert await memory_env.cache.get("slow") is None
    assert await memory_env.cache.get("slow", lambda: "ok", fetch_timeout=1) == "ok"
    # Let the abandoned fetch end (in the sync twin it blocks a pool thread until then).
    never.set()
