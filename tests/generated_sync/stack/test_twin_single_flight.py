# DO NOT EDIT: generated from tests/stack/test_single_flight.py
# by scripts/unasync_tests.py. Change the async source and run
# `python scripts/unasync_tests.py`.
"""In-process single-flight: one fetch per cold key, worker threads, errors and cancellation."""

from __future__ import annotations

import itertools
import threading

import pytest
from twin_stack_support import StackEnv, eventually

from _twins_sync import Event, join_all, spawn, wait_event


class Boom(Exception):
    pass


def test_hundred_concurrent_callers_cause_one_fetch(env: StackEnv) -> None:
    started = Event()
    release = Event()
    fetches = 0

    def fetch() -> dict[str, str]:
        nonlocal fetches
        fetches += 1
        started.set()
        release.wait()
        return {"value": "shared"}

    tasks = [spawn(env.cache.get, "cold", fetch) for _ in range(100)]
    wait_event(started, 2)
    eventually(
        lambda: env.cache.get_metrics().stampede_dedupes == 99, "99 callers to join the fetch"
    )
    release.set()
    results = join_all(tasks)
    assert results == [{"value": "shared"}] * 100
    assert fetches == 1
    metrics = env.cache.get_metrics()
    assert metrics.fetches == 1
    assert metrics.stampede_dedupes == 99
    assert env.in_layers("cold") == [layer.name for layer in env.layers]


def test_distinct_keys_fetch_independently(memory_env: StackEnv) -> None:
    release = Event()
    fetched: list[str] = []

    def make(key: str):  # type: ignore[no-untyped-def]
        def fetch() -> str:
            fetched.append(key)
            release.wait()
            return key

        return fetch

    tasks = [spawn(memory_env.cache.get, k, make(k)) for k in ("a", "b", "c")]
    eventually(lambda: len(fetched) == 3, "three independent fetches")
    release.set()
    assert join_all(tasks) == ["a", "b", "c"]


def test_sync_fetchers_are_deduplicated_too(memory_env: StackEnv) -> None:
    release = threading.Event()
    calls = 0

    def fetch() -> int:
        nonlocal calls
        calls += 1
        release.wait(3)
        return 42

    tasks = [spawn(memory_env.cache.get, "k", fetch) for _ in range(20)]
    eventually(lambda: calls == 1, "the fetch to start")
    eventually(lambda: memory_env.cache.get_metrics().stampede_dedupes == 19, "19 joined callers")
    release.set()
    assert join_all(tasks) == [42] * 20
    assert calls == 1


def test_fetcher_exception_reaches_every_waiter_and_is_not_cached(env: StackEnv) -> None:
    release = Event()
    boom = Boom("origin down")
    calls = 0

    def failing() -> str:
        nonlocal calls
        calls += 1
        release.wait()
        raise boom

    tasks = [spawn(env.cache.get, "flaky", failing) for _ in range(10)]
    eventually(lambda: env.cache.get_metrics().stampede_dedupes == 9, "9 callers to join the fetch")
    release.set()
    results = join_all(tasks, return_exceptions=True)
    assert calls == 1
    for result in results:
        assert result is boom, f"a waiter got {result!r}, not the fetcher's own exception"
    assert env.in_layers("flaky") == []
    assert env.cache.get("flaky") is None
    # No in-flight state was left behind: the next call fetches again and succeeds.
    assert env.cache.get("flaky", lambda: "recovered") == "recovered"
    assert env.cache.get("flaky") == "recovered"


def test_sync_fetcher_exception_propagates_unchanged(memory_env: StackEnv) -> None:
    def failing() -> str:
        raise KeyError("missing row")

    with pytest.raises(KeyError, match="missing row"):
        memory_env.cache.get("k", failing)
    assert memory_env.cache.get("k", lambda: 1) == 1


def test_stampede_prevention_off_fetches_per_caller(build_stack) -> None:  # type: ignore[no-untyped-def]
    env: StackEnv = build_stack(stampede_prevention=False)
    release = Event()
    numbers = itertools.count(1)  # next() is atomic: safe from the twin's threads too
    started: list[int] = []

    def fetch() -> int:
        number = next(numbers)
        started.append(number)
        release.wait()
        return number

    tasks = [spawn(env.cache.get, "k", fetch) for _ in range(5)]
    eventually(lambda: len(started) == 5, "five independent fetches")
    release.set()
    # Every caller got its own fetch's value: none was shared.
    assert sorted(join_all(tasks)) == [1, 2, 3, 4, 5]


def test_fetch_timeout_fails_every_waiter_and_leaves_no_state(memory_env: StackEnv) -> None:
    from layercache import FetchTimeoutError

    never = Event()

    def hung() -> str:
        never.wait()
        return "never"

    tasks = [spawn(memory_env.cache.get, "slow", hung, fetch_timeout=0.05) for _ in range(3)]
    results = join_all(tasks, return_exceptions=True, timeout=2)
    for result in results:
        assert isinstance(result, FetchTimeoutError), result
        assert result.key == "slow"
        assert result.timeout == pytest.approx(0.05)
    assert memory_env.cache.get("slow") is None
    assert memory_env.cache.get("slow", lambda: "ok", fetch_timeout=1) == "ok"
    # Let the abandoned fetch end (in the sync twin it blocks a pool thread until then).
    never.set()
