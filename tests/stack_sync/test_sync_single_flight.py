"""Single-flight across threads: one fetch per cold key, errors reach every waiting thread."""

from __future__ import annotations

import threading

import pytest
from sync_stack_support import Held, Runner, SyncEnv, wait_until


class Boom(Exception):
    pass


def test_32_threads_on_a_cold_key_cause_one_fetch(senv: SyncEnv) -> None:
    fetch = Held({"value": "shared"})
    runners = [Runner(lambda: senv.cache.get("cold", fetch)) for _ in range(32)]
    wait_until(fetch.started.is_set, "the fetch to start")
    wait_until(
        lambda: senv.cache.get_metrics().stampede_dedupes == 31, "31 threads to join the fetch"
    )
    fetch.release.set()
    assert [r.join() for r in runners] == [{"value": "shared"}] * 32
    assert fetch.calls == 1
    metrics = senv.cache.get_metrics()
    assert (metrics.fetches, metrics.stampede_dedupes) == (1, 31)
    assert senv.in_layers("cold") == senv.names


def test_distinct_keys_fetch_independently(smemory: SyncEnv) -> None:
    fetches = {k: Held(k) for k in ("a", "b", "c")}
    runners = [Runner(lambda k=k: smemory.cache.get(k, fetches[k])) for k in fetches]
    for fetch in fetches.values():
        wait_until(fetch.started.is_set, "three independent fetches")
    for fetch in fetches.values():
        fetch.release.set()
    assert [r.join() for r in runners] == ["a", "b", "c"]


def test_fetcher_exception_reaches_every_thread_and_is_not_cached(senv: SyncEnv) -> None:
    boom = Boom("origin down")
    fetch = Held(error=boom)
    runners = [Runner(lambda: senv.cache.get("flaky", fetch)) for _ in range(10)]
    wait_until(
        lambda: senv.cache.get_metrics().stampede_dedupes == 9, "9 threads to join the fetch"
    )
    fetch.release.set()
    for runner in runners:
        with pytest.raises(Boom) as info:
            runner.join()
        assert info.value is boom, "a waiter got another exception than the fetcher's own"
    assert fetch.calls == 1
    assert senv.in_layers("flaky") == []
    assert senv.cache.get("flaky") is None
    # No in-flight state was left behind: the next call fetches again and succeeds.
    assert senv.cache.get("flaky", lambda: "recovered") == "recovered"
    assert senv.cache.get("flaky") == "recovered"


def test_fetcher_exception_propagates_unchanged(smemory: SyncEnv) -> None:
    def failing() -> str:
        raise KeyError("missing row")

    with pytest.raises(KeyError, match="missing row"):
        smemory.cache.get("k", failing)
    assert smemory.cache.get("k", lambda: 1) == 1


def test_stampede_prevention_off_fetches_per_thread(build_sync) -> None:  # type: ignore[no-untyped-def]
    env: SyncEnv = build_sync(stampede_prevention=False)
    release = threading.Event()
    lock = threading.Lock()
    calls = 0

    def fetch() -> int:
        nonlocal calls
        with lock:
            calls += 1
        release.wait(5)
        return 1

    runners = [Runner(lambda: env.cache.get("k", fetch)) for _ in range(5)]
    wait_until(lambda: calls == 5, "five independent fetches")
    release.set()
    assert [r.join() for r in runners] == [1] * 5


def test_fetch_timeout_fails_every_thread_and_leaves_no_state(smemory: SyncEnv) -> None:
    from layercache import FetchTimeoutError

    hung = Held("never")
    runners = [
        Runner(lambda: smemory.cache.get("slow", hung, fetch_timeout=0.05)) for _ in range(3)
    ]
    for runner in runners:
        with pytest.raises(FetchTimeoutError) as info:
            runner.join()
        assert info.value.key == "slow"
        assert info.value.timeout == pytest.approx(0.05)
    hung.release.set()
    assert smemory.cache.get("slow") is None
    assert smemory.cache.get("slow", lambda: "ok", fetch_timeout=1) == "ok"
