# DO NOT EDIT: generated from tests/freshness/test_fetch_timeouts.py
# by scripts/unasync_tests.py. Change the async source and run
# `python scripts/unasync_tests.py`.
"""Issue 3, point 4: ``fetch_timeout`` and ``fetch_soft_timeout``.

A fetch that outlives ``fetch_timeout`` fails every waiter with ``FetchTimeoutError(key,
timeout)`` and leaves nothing behind; with a stale value, ``fetch_soft_timeout`` hands it to
the waiters while the fetch finishes in the background and updates the cache.
"""

from __future__ import annotations

from typing import Any

import pytest
from twin_freshness_support import (
    BuildStack,
    EventLog,
    Gate,
    Value,
    eventually,
    eventually_async,
    within,
)

from _twins_sync import join_all, settles_within, spawn
from layercache import FetchTimeoutError, LayerCacheError

SIE: dict[str, Any] = {"ttl": 10, "stale_if_error": 100}


def test_fetch_timeout_fails_every_waiter(build_stack: BuildStack) -> None:
    env = build_stack()
    log = EventLog(env.cache, "stampede_dedupe")
    never = Gate("never")
    waiters = [spawn(env.cache.get, "k", never.fetch, fetch_timeout=0.1) for _ in range(5)]
    never.wait_started()
    eventually(lambda: len(log.of("stampede_dedupe")) == 4, "4 waiters to join")
    results = join_all(waiters, return_exceptions=True)
    for result in results:
        assert isinstance(result, FetchTimeoutError), result
        assert isinstance(result, LayerCacheError)
        assert isinstance(result, TimeoutError)
        assert (result.key, result.timeout) == ("k", 0.1)
    assert never.calls == 1
    # Nothing holds the key now: the next call fetches again, and nothing was cached.
    assert env.cache.get("k") is None
    good = Value("v")
    assert within(spawn(env.cache.get, "k", good.fetch, fetch_timeout=0.1), "a fetch") == "v"
    assert good.calls == 1
    assert env.cache.get("k") == "v"
    never.release()


def test_stack_wide_fetch_timeout(build_memory: BuildStack) -> None:
    env = build_memory(fetch_timeout=0.05)
    never = Gate("never")
    with pytest.raises(FetchTimeoutError) as info:
        within(spawn(env.cache.get, "k", never.fetch), "a fetch")
    assert info.value.timeout == 0.05
    # A per-call value overrides the stack default.
    slow = Gate("v")
    task = spawn(env.cache.get, "k2", slow.fetch, fetch_timeout=5)
    slow.wait_started()
    # Four stack timeouts long.
    assert not settles_within(task, 0.2), "the per-call fetch_timeout=5 was ignored"
    slow.release()
    assert within(task, "the fetch") == "v"
    never.release()


def test_fetchers_own_timeout_error_is_not_a_fetch_timeout(build_memory: BuildStack) -> None:
    env = build_memory()
    error = TimeoutError("the database's own timeout")

    def fetch() -> Any:
        raise error

    with pytest.raises(TimeoutError) as info:
        env.cache.get("k", fetch, fetch_timeout=5)
    assert info.value is error, "the fetcher's TimeoutError must propagate unchanged"


def test_soft_timeout_serves_stale_while_the_fetch_goes_on(build_stack: BuildStack) -> None:
    env = build_stack()
    log = EventLog(env.cache, "stale_serve")
    env.cache.set("k", "v1", **SIE)
    env.clock.advance(15)  # stale, inside the error window (not a stale-while-revalidate one)
    gate = Gate("v2")
    readers = [
        spawn(env.cache.get, "k", gate.fetch, fetch_soft_timeout=0.05, **SIE) for _ in range(5)
    ]
    gate.wait_started()
    results = join_all(readers, timeout=2.0)
    assert results == ["v1"] * 5
    assert gate.calls == 1
    assert gate.finished == 0, "the waiters did not wait for the fetch"
    states = log.states()
    assert states == ["soft-timeout"] * 5, states
    assert all(e["key"] == "k" for e in log.of("stale_serve"))
    # The fetch was not abandoned: it finishes in the background and updates every layer.
    gate.release()
    eventually(lambda: gate.finished == 1, "the fetch to finish")

    def updated() -> bool:
        return env.layer_values("k") == ["v2"] * len(env.layers)

    eventually_async(updated, "the background fetch to update every layer")
    assert env.cache.get("k") == "v2"
    assert gate.calls == 1


def test_soft_timeout_with_a_fast_fetch_returns_the_new_value(
    build_memory: BuildStack,
) -> None:
    env = build_memory()
    log = EventLog(env.cache, "stale_serve")
    env.cache.set("k", "v1", **SIE)
    env.clock.advance(15)
    fast = Value("v2")
    assert env.cache.get("k", fast.fetch, fetch_soft_timeout=1, **SIE) == "v2"
    assert log.of("stale_serve") == []


def test_soft_timeout_does_nothing_without_a_stale_value(build_stack: BuildStack) -> None:
    env = build_stack()
    log = EventLog(env.cache, "stale_serve")
    gate = Gate("v")
    task = spawn(env.cache.get, "cold", gate.fetch, fetch_soft_timeout=0.05)
    gate.wait_started()
    # Five soft timeouts.
    assert not settles_within(task, 0.25), (
        f"the soft timeout ended a read with no stale value: {task.result()!r}"
    )
    gate.release()
    assert within(task, "the fetch") == "v"
    assert log.of("stale_serve") == []


def test_soft_timeout_then_failing_fetch_keeps_the_stale_value(
    build_memory: BuildStack,
) -> None:
    env = build_memory()
    env.cache.set("k", "v1", **SIE)
    env.clock.advance(15)
    gate = Gate()
    gate.error = RuntimeError("origin down")
    assert (
        within(
            spawn(env.cache.get, "k", gate.fetch, fetch_soft_timeout=0.05, **SIE),
            "the soft timeout",
        )
        == "v1"
    )
    gate.release()
    eventually(lambda: gate.finished == 1, "the fetch to fail")
    assert env.layer_values("k") == ["v1"]
    # Still served on the next failure.
    failing = Gate()
    failing.error = RuntimeError("still down")
    failing.release()
    assert env.cache.get("k", failing.fetch, **SIE) == "v1"
