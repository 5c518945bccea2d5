# DO NOT EDIT: generated from tests/freshness/test_stale_if_error.py
# by scripts/unasync_tests.py. Change the async source and run
# `python scripts/unasync_tests.py`.
"""Issue 3, point 2: stale-if-error.

When a fetch fails or times out and a value inside the ``stale_if_error`` window exists, it is
served (event ``stale_serve`` state ``"stale-if-error"``); outside every window the error
propagates unchanged; a layer failure (``CacheLayerError``) is never masked by a stale value.
"""

from __future__ import annotations

from typing import Any

import pytest
from twin_freshness_support import (
    BuildStack,
    EventLog,
    Failing,
    FlakyLayer,
    Gate,
    LayerDown,
    Value,
    eventually,
    within,
)

from _twins_sync import join_all, spawn
from layercache import CacheLayerError, FetchTimeoutError, MemoryLayer, SyncCacheStack
from layercache.testing import ManualClock

# Fresh for 10 s; served when the origin fails for 100 s more. No stale-while-revalidate.
SIE: dict[str, Any] = {"ttl": 10, "stale_if_error": 100}


class OriginError(Exception):
    """The fetcher's own exception."""


def test_failing_fetch_serves_the_stale_value(build_stack: BuildStack) -> None:
    env = build_stack()
    log = EventLog(env.cache, "stale_serve")
    env.cache.set("k", "v1", **SIE)
    env.clock.advance(15)  # past fresh, inside the error window
    failing = Failing(OriginError("db down"))
    assert env.cache.get("k", failing.fetch, **SIE) == "v1"
    assert failing.calls == 1, "stale-if-error serves after a real fetch attempt"
    assert [(e["key"], e["state"], e["layer"]) for e in log.of("stale_serve")] == [
        ("k", "stale-if-error", "memory")
    ]
    assert env.cache.get_metrics().stale_hits == 1
    # The error is not cached: the next read tries the origin again.
    assert env.cache.get("k", failing.fetch, **SIE) == "v1"
    assert failing.calls == 2
    # Nothing was overwritten; a working fetcher replaces the stale value.
    assert env.layer_values("k") == ["v1"] * len(env.layers)
    good = Value("v2")
    assert env.cache.get("k", good.fetch, **SIE) == "v2"
    assert env.layer_values("k") == ["v2"] * len(env.layers)


def test_timed_out_fetch_serves_the_stale_value(build_stack: BuildStack) -> None:
    env = build_stack()
    log = EventLog(env.cache, "stale_serve")
    env.cache.set("k", "v1", **SIE)
    env.clock.advance(15)
    never = Gate("never")
    value = within(
        spawn(env.cache.get, "k", never.fetch, fetch_timeout=0.05, **SIE), "a timed-out fetch"
    )
    assert value == "v1"
    assert log.states() == ["stale-if-error"]
    never.release()


def test_every_waiter_gets_the_stale_value(build_stack: BuildStack) -> None:
    env = build_stack()
    env.cache.set("k", "v1", **SIE)
    env.clock.advance(15)
    log = EventLog(env.cache, "stampede_dedupe")
    gate = Gate()
    gate.error = OriginError("db down")
    readers = [spawn(env.cache.get, "k", gate.fetch, **SIE) for _ in range(10)]
    gate.wait_started()
    eventually(lambda: len(log.of("stampede_dedupe")) == 9, "9 readers to join the fetch")
    gate.release()
    assert join_all(readers) == ["v1"] * 10
    assert gate.calls == 1


def test_outside_every_window_the_error_propagates_unchanged(build_stack: BuildStack) -> None:
    env = build_stack()
    log = EventLog(env.cache, "stale_serve")
    env.cache.set("k", "v1", **SIE)
    env.clock.advance(111)  # past fresh (10) + error window (100)
    error = OriginError("db down")
    failing = Failing(error)
    with pytest.raises(OriginError) as info:
        env.cache.get("k", failing.fetch, **SIE)
    assert info.value is error, "the fetcher's exception must propagate unchanged"
    never = Gate("never")
    with pytest.raises(FetchTimeoutError) as timeout:
        within(spawn(env.cache.get, "k", never.fetch, fetch_timeout=0.05, **SIE), "a fetch")
    assert (timeout.value.key, timeout.value.timeout) == ("k", 0.05)
    never.release()
    # A cold key has no stale value at all.
    with pytest.raises(OriginError):
        env.cache.get("cold", failing.fetch, **SIE)
    assert log.of("stale_serve") == []


def test_window_of_the_stale_while_revalidate_kind_does_not_serve_errors(
    build_memory: BuildStack,
) -> None:
    """Only ``stale_if_error`` serves on error: past the SWR window the error propagates."""
    env = build_memory()
    env.cache.set("k", "v1", ttl=10, stale_while_revalidate=20, stale_if_error=50)
    env.clock.advance(40)  # past SWR (30), inside the error window (60)
    failing = Failing(OriginError("db down"))
    assert env.cache.get("k", failing.fetch) == "v1"
    env.clock.advance(25)  # past both windows (65)
    with pytest.raises(OriginError):
        env.cache.get("k", failing.fetch)


def test_per_layer_error_window(build_layered: BuildStack) -> None:
    env = build_layered()
    lower = env.lower_name
    opts: dict[str, Any] = {"ttl": 10, "stale_if_error": {"memory": 5, lower: 100}}
    env.cache.set("k", "v1", **opts)
    env.clock.advance(50)  # memory's window is over, the lower layer's is not
    log = EventLog(env.cache, "stale_serve")
    failing = Failing(OriginError("db down"))
    assert env.cache.get("k", failing.fetch, **opts) == "v1"
    assert [(e["state"], e["layer"]) for e in log.of("stale_serve")] == [("stale-if-error", lower)]


def test_layer_failure_is_not_masked_by_a_stale_value(
    clock: ManualClock, closing: list[SyncCacheStack]
) -> None:
    """A stale value inside the window must not hide a layer failure in strict mode."""
    memory = MemoryLayer(ttl=60, clock=clock)
    flaky = FlakyLayer()
    cache = SyncCacheStack([memory, flaky], clock=clock)
    closing.append(cache)
    cache.set("k", "v1", **SIE)
    clock.advance(15)

    # The write of the fetched value fails: strict mode reports it.
    flaky.down("set")
    good = Value("v2")
    with pytest.raises(CacheLayerError) as info:
        cache.get("k", good.fetch, **SIE)
    assert (info.value.layer, info.value.operation) == ("flaky", "set")
    assert isinstance(info.value.__cause__, LayerDown)

    # The read of the lower layer fails: reported too, not answered from L1's stale copy.
    memory.set("k", flaky.data["k"], None)
    flaky.down("get")
    with pytest.raises(CacheLayerError) as info:
        cache.get("k", Failing(OriginError("db down")).fetch, **SIE)
    assert (info.value.layer, info.value.operation) == ("flaky", "get")
