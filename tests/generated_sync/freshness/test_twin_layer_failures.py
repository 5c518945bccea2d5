# DO NOT EDIT: generated from tests/freshness/test_layer_failures.py
# by scripts/unasync_tests.py. Change the async source and run
# `python scripts/unasync_tests.py`.
"""Issue 3, point 6 (with the degradation it relies on): strict mode, best-effort writes and
graceful degradation with replay of what a degraded layer missed.

Failures are injected with a user-written layer that raises on demand (:class:`FlakyLayer`)
and, for Redis, for real: a stopped ``redis-server`` or a TCP proxy that refuses connections.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twin_freshness_support import EventLog, FlakyLayer, LayerDown, Value, lcall

from layercache import CacheLayerError, MemoryLayer, SyncCacheStack
from layercache.testing import ManualClock

REDIS_PREFIX = "lc-fresh-fault:"


def _stack(
    clock: ManualClock, closing: list[SyncCacheStack], *layers: Any, **opts: Any
) -> SyncCacheStack:
    cache = SyncCacheStack(list(layers), clock=clock, **opts)
    closing.append(cache)
    return cache


def _value(memory: MemoryLayer, key: str) -> Any:
    entry = memory.get(key)
    assert entry is not None, f"the memory layer does not hold {key!r}"
    return entry.value


# ---------------------------------------------------------------------------- strict


def test_strict_read_failure_is_a_cache_layer_error(
    clock: ManualClock, closing: list[SyncCacheStack]
) -> None:
    flaky = FlakyLayer()
    cache = _stack(clock, closing, MemoryLayer(clock=clock), flaky)
    flaky.down("get")
    with pytest.raises(CacheLayerError) as info:
        cache.get("k", Value("v").fetch)
    assert (info.value.layer, info.value.operation) == ("flaky", "get")
    assert isinstance(info.value.__cause__, LayerDown)
    assert cache.get_stats().layers[1].degraded_until is None, "strict mode degrades nothing"


WRITES: dict[str, tuple[str, Callable[[SyncCacheStack], Any]]] = {
    "set": ("set", lambda c: c.set("k", 1)),
    "fetch-store": ("set", lambda c: c.get("cold", Value("v").fetch)),
    "set_many": ("set_many", lambda c: c.set_many([("a", 1), ("b", 2)])),
    "delete": ("delete", lambda c: c.delete("k")),
    "pattern": ("delete_matching", lambda c: c.invalidate_by_pattern("k*")),
    "clear": ("clear", lambda c: c.clear()),
}


@pytest.mark.parametrize("operation", list(WRITES))
def test_strict_write_failure_is_a_cache_layer_error(
    clock: ManualClock, closing: list[SyncCacheStack], operation: str
) -> None:
    failing_op, call = WRITES[operation]
    flaky = FlakyLayer()
    cache = _stack(clock, closing, MemoryLayer(clock=clock), flaky)
    cache.set("k", 0)
    flaky.down(failing_op)
    with pytest.raises(CacheLayerError) as info:
        call(cache)
    assert info.value.layer == "flaky"
    assert isinstance(info.value.__cause__, LayerDown)


@pytest.mark.parametrize("operation", ["set", "set_many"])
def test_a_strict_write_that_fails_leaves_no_layer_holding_the_value(
    clock: ManualClock, closing: list[SyncCacheStack], operation: str
) -> None:
    # The caller is told the write failed: the memory layer, written first, must not go on
    # serving the new value while the failed layer (and every other instance) has the old one.
    memory = MemoryLayer(clock=clock)
    flaky = FlakyLayer()
    cache = _stack(clock, closing, memory, flaky)
    cache.set("k", "old")
    flaky.down(operation)

    def write() -> None:
        if operation == "set":
            cache.set("k", "new")
        else:
            cache.set_many([("k", "new")])

    with pytest.raises(CacheLayerError):
        write()
    assert memory.get("k") is None
    flaky.up()
    assert flaky.data["k"].value == "old"
    assert cache.get("k") == "old"


@pytest.mark.redis
def test_strict_mode_reports_a_stopped_redis(
    redis_clean: Any, clock: ManualClock, closing: list[SyncCacheStack]
) -> None:
    from layercache import RedisLayer

    memory = MemoryLayer(clock=clock)
    redis = RedisLayer(url=redis_clean.url, prefix=REDIS_PREFIX, socket_timeout=0.5)
    cache = _stack(clock, closing, memory, redis)
    cache.set("k", "v")
    redis_clean.stop()
    try:
        memory.clear()
        with pytest.raises(CacheLayerError) as info:
            cache.get("k")
        assert (info.value.layer, info.value.operation) == ("redis", "get")
        with pytest.raises(CacheLayerError) as info:
            cache.set("x", 1)
        assert info.value.layer == "redis"
        with pytest.raises(CacheLayerError):
            cache.delete("k")
    finally:
        redis_clean.start()


# ---------------------------------------------------------------------------- best-effort


def test_best_effort_write_succeeds_while_one_layer_works(
    clock: ManualClock, closing: list[SyncCacheStack]
) -> None:
    memory = MemoryLayer(clock=clock)
    flaky = FlakyLayer()
    cache = _stack(clock, closing, memory, flaky, write_policy="best-effort")
    errors = EventLog(cache, "error")
    flaky.down("set")
    cache.set("k", "v")
    assert _value(memory, "k") == "v"
    assert cache.get_metrics().write_failures == 1
    assert errors.of("error"), "a failed layer write must be reported as an error event"
    assert isinstance(errors.of("error")[0]["error"], CacheLayerError)
    # A fetched value is returned (and kept in the healthy layer) too.
    assert cache.get("cold", Value("fetched").fetch) == "fetched"
    assert _value(memory, "cold") == "fetched"
    assert cache.get_metrics().write_failures == 2


def test_best_effort_write_fails_only_when_every_layer_fails(
    clock: ManualClock, closing: list[SyncCacheStack]
) -> None:
    one, two = FlakyLayer("one"), FlakyLayer("two")
    cache = _stack(clock, closing, one, two, write_policy="best-effort")
    one.down("set")
    cache.set("k", 1)
    assert two.values() == {"k": 1}
    assert cache.get_metrics().write_failures == 1
    two.down("set")
    with pytest.raises(CacheLayerError):
        cache.set("k", 2)
    assert cache.get_metrics().write_failures == 3


@pytest.mark.redis
def test_best_effort_survives_a_redis_cut_off(
    redis_proxy: Any, clock: ManualClock, closing: list[SyncCacheStack]
) -> None:
    from layercache import RedisLayer

    memory = MemoryLayer(clock=clock)
    redis = RedisLayer(url=redis_proxy.url, prefix=REDIS_PREFIX, socket_timeout=0.3)
    cache = _stack(clock, closing, memory, redis, write_policy="best-effort")
    cache.set("k", "before")
    redis_proxy.cut("refuse")
    cache.set("k", "during")  # the memory layer took it: not a failed write
    assert _value(memory, "k") == "during"
    assert cache.get_metrics().write_failures == 1


# ---------------------------------------------------------------------------- graceful


def test_degraded_layer_is_skipped_then_probed_and_re_enabled(
    clock: ManualClock, closing: list[SyncCacheStack]
) -> None:
    memory = MemoryLayer(clock=clock)
    flaky = FlakyLayer()
    cache = _stack(clock, closing, memory, flaky, graceful_degradation={"retry_after": 1})
    errors = EventLog(cache, "error")
    cache.set("k", "old")
    flaky.down()
    memory.clear()
    fetch = Value("fresh")
    began = clock()

    # The read fails over to the fetcher instead of failing.
    assert cache.get("k", fetch.fetch) == "fresh"
    stats = cache.get_stats()
    assert stats.layers[0].degraded_until is None
    assert stats.layers[1].name == "flaky"
    assert stats.layers[1].degraded_until == pytest.approx(began + 1)
    assert any(e["context"].get("layer") == "flaky" for e in errors.of("error"))

    # While degraded the layer is not touched at all; writes go to the healthy layer.
    flaky.calls.clear()
    cache.set("a", 1)
    assert _value(memory, "a") == 1
    memory.clear()
    assert cache.get("k", fetch.fetch) == "fresh"
    assert fetch.calls == 2, "reads must fall through the degraded layer to the fetcher"
    assert flaky.calls == []

    # retry_after passed, the layer still fails: one probe, degraded again from now.
    clock.advance(1.5)
    assert cache.get("zz") is None
    assert flaky.ops("ping") == [("ping", None)]
    assert cache.get_stats().layers[1].degraded_until == pytest.approx(clock() + 1)

    # Back: the next operation after retry_after probes it and puts it back in service.
    flaky.up()
    clock.advance(1.1)
    memory.clear()
    assert cache.get("k", fetch.fetch) == "fresh", "the recovered layer served stale data"
    assert cache.get_stats().layers[1].degraded_until is None
    cache.set("b", 2)
    assert flaky.values()["b"] == 2


def test_graceful_true_means_ten_seconds(clock: ManualClock, closing: list[SyncCacheStack]) -> None:
    flaky = FlakyLayer()
    cache = _stack(clock, closing, MemoryLayer(clock=clock), flaky, graceful_degradation=True)
    flaky.down()
    cache.set("k", 1)
    assert cache.get_stats().layers[1].degraded_until == pytest.approx(clock() + 10)


def _prepare_missed(cache: SyncCacheStack, memory: MemoryLayer) -> None:
    """Store values, then invalidate or overwrite them while the lower layer is failing."""
    for key in ("del", "upd", "p:1", "p:2", "keep"):
        cache.set(key, "old")
    cache.set("tag", "old", tags=["t"])
    cache.set("pre", "old")


def _missed_operations(cache: SyncCacheStack) -> None:
    cache.delete("del")
    cache.set("upd", "new")
    cache.invalidate_by_pattern("p:*")
    cache.invalidate_by_tag("t")
    cache.invalidate_by_prefix("pre")


def _assert_nothing_stale_comes_back(cache: SyncCacheStack, memory: MemoryLayer) -> None:
    memory.clear()  # every read now goes to the recovered layer
    assert cache.get("del") is None
    assert cache.get("upd") in (None, "new")
    assert cache.get("p:1") is None
    assert cache.get("p:2") is None
    assert cache.get("tag") is None
    assert cache.get("pre") is None
    assert cache.get("keep") == "old", "below the bound the layer is replayed, not wiped"


def test_missed_invalidations_are_replayed_on_recovery(
    clock: ManualClock, closing: list[SyncCacheStack]
) -> None:
    memory = MemoryLayer(clock=clock)
    flaky = FlakyLayer()
    cache = _stack(clock, closing, memory, flaky, graceful_degradation={"retry_after": 1})
    _prepare_missed(cache, memory)
    flaky.down()
    _missed_operations(cache)  # none of them raises
    assert cache.get_stats().layers[1].degraded_until is not None
    # Healthy again but not yet retried: it still holds every old value, and is not used.
    flaky.up()
    assert flaky.values()["del"] == "old"
    memory.clear()
    assert cache.get("del") is None
    clock.advance(1.1)
    _assert_nothing_stale_comes_back(cache, memory)
    assert cache.get_stats().layers[1].degraded_until is None
    assert set(flaky.values()) <= {"keep", "upd"}
    assert flaky.values().get("upd", "new") == "new"


def test_missed_clear_is_replayed(clock: ManualClock, closing: list[SyncCacheStack]) -> None:
    memory = MemoryLayer(clock=clock)
    flaky = FlakyLayer()
    cache = _stack(clock, closing, memory, flaky, graceful_degradation={"retry_after": 1})
    cache.set_many([("a", 1), ("b", 2)])
    flaky.down()
    cache.clear()
    flaky.up()
    clock.advance(1.1)
    memory.clear()
    assert cache.get("a") is None
    assert cache.get("b") is None
    assert flaky.data == {}


@pytest.mark.parametrize(("missed", "fenced"), [(10_000, False), (10_001, True)])
def test_missed_log_overflow_fences_the_layer(
    clock: ManualClock, closing: list[SyncCacheStack], missed: int, fenced: bool
) -> None:
    memory = MemoryLayer(clock=clock)
    flaky = FlakyLayer()
    cache = _stack(clock, closing, memory, flaky, graceful_degradation={"retry_after": 1})
    cache.set("keep", "old")
    cache.set("gone:0", "old")
    flaky.down()
    for i in range(missed):
        cache.delete(f"gone:{i}")
    flaky.up()
    flaky.calls.clear()
    clock.advance(1.1)
    memory.clear()
    assert cache.get("gone:0") is None
    assert cache.get_stats().layers[1].degraded_until is None
    if fenced:
        # What it missed is no longer known: it was cleared before serving again.
        assert ("clear", None) in flaky.calls
        assert flaky.data == {}
        assert cache.get("keep") is None
    else:
        assert ("clear", None) not in flaky.calls
        assert cache.get("keep") == "old"
    # Back in service either way; a later recovery is not fenced again.
    cache.set("new", 1)
    assert flaky.values()["new"] == 1


QUERIES: dict[str, tuple[Callable[[SyncCacheStack], Any], Any]] = {
    "get_many": (lambda c: c.get_many(["k"]), [None]),
    "has": (lambda c: c.has("k"), False),
    "ttl": (lambda c: c.ttl("k"), None),
    "inspect": (lambda c: c.inspect("k"), None),
}


@pytest.mark.parametrize("query", list(QUERIES))
def test_reads_other_than_get_skip_a_degraded_layer(
    clock: ManualClock, closing: list[SyncCacheStack], query: str
) -> None:
    """get_many, has, ttl and inspect must not read a degraded layer's missed-delete data."""
    call, expected = QUERIES[query]
    memory = MemoryLayer(clock=clock)
    flaky = FlakyLayer()
    cache = _stack(clock, closing, memory, flaky, graceful_degradation={"retry_after": 1})
    cache.set("k", "old", ttl=100)
    flaky.down()
    cache.delete("k")  # the flaky layer misses it and is degraded
    flaky.up()  # reachable again, but not re-enabled before retry_after: still holds "old"
    memory.clear()
    assert cache.get("k") is None
    assert call(cache) == expected, f"{query}() saw a value deleted while degraded"


def test_get_many_as_first_read_after_retry_after_serves_nothing_missed(
    clock: ManualClock, closing: list[SyncCacheStack]
) -> None:
    memory = MemoryLayer(clock=clock)
    flaky = FlakyLayer()
    cache = _stack(clock, closing, memory, flaky, graceful_degradation={"retry_after": 1})
    cache.set_many([("a", 1), ("b", 2)])
    flaky.down()
    cache.delete("a")
    cache.clear()
    flaky.up()
    clock.advance(1.1)
    memory.clear()
    # The first operation after retry_after is a bulk read: it must recover (and replay) the
    # layer first, or skip it, but never answer from what it missed.
    assert cache.get_many(["a", "b"]) == [None, None]


def test_get_many_falls_through_a_failing_layer(
    clock: ManualClock, closing: list[SyncCacheStack]
) -> None:
    memory = MemoryLayer(clock=clock)
    flaky = FlakyLayer()
    cache = _stack(clock, closing, memory, flaky, graceful_degradation={"retry_after": 1})
    cache.set("a", 1)
    flaky.down()
    # Not yet known to be failing: get_many finds out, degrades it and answers anyway.
    assert cache.get_many(["a", "b", ("c", Value("C").fetch)]) == [1, None, "C"]
    assert cache.get_stats().layers[1].degraded_until is not None


@pytest.mark.redis
def test_redis_cut_off_degrades_and_replays(
    redis_proxy: Any, redis_sync_client: Any, clock: ManualClock, closing: list[SyncCacheStack]
) -> None:
    from layercache import RedisLayer

    memory = MemoryLayer(clock=clock)
    redis = RedisLayer(url=redis_proxy.url, prefix=REDIS_PREFIX, socket_timeout=0.3)
    cache = _stack(clock, closing, memory, redis, graceful_degradation={"retry_after": 1})
    _prepare_missed(cache, memory)
    redis_proxy.cut("refuse")
    began = clock()
    _missed_operations(cache)  # graceful: none of them raises
    assert cache.get_stats().layers[1].degraded_until == pytest.approx(began + 1)
    memory.clear()
    fetch = Value("fetched")
    assert cache.get("keep", fetch.fetch) == "fetched", "the read fell through"
    redis_proxy.restore()
    # Still holding the old values (checked with a separate client).
    assert redis_sync_client.exists(f"{REDIS_PREFIX}del") == 1
    clock.advance(1.1)
    cache.delete("keep")  # "keep" was overwritten by the fetch; restore its old state
    cache.set("keep", "old")
    _assert_nothing_stale_comes_back(cache, memory)
    assert cache.get_stats().layers[1].degraded_until is None
    # The layer the stack uses (the sync stack swaps a RedisLayer(url=) for its sync twin).
    for key in ("del", "p:1", "p:2", "tag", "pre"):
        assert lcall(cache.layers[1], "get", key) is None, key
