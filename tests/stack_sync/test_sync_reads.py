"""SyncCacheStack reads: get, get_or_raise, get_many, has, ttl, inspect, backfill."""

from __future__ import annotations

import pytest
from stack_support import EventLog, RecordingLayer
from sync_stack_support import SyncCounter, SyncEnv, wait_until

from layercache import (
    CacheEntryRequest,
    CacheInspectResult,
    CacheMissError,
    LayerCacheError,
    MemoryLayer,
    SyncCacheStack,
)
from layercache.testing import ManualClock


def test_get_miss_without_fetcher_returns_none(senv: SyncEnv) -> None:
    assert senv.cache.get("absent") is None
    assert senv.in_layers("absent") == []


def test_get_fetches_once_and_stores_in_every_layer(senv: SyncEnv) -> None:
    fetch = SyncCounter({"id": 1, "name": "Ada"})
    assert senv.cache.get("user:1", fetch) == {"id": 1, "name": "Ada"}
    assert fetch.calls == 1
    assert senv.in_layers("user:1") == senv.names
    assert senv.cache.get("user:1", fetch) == {"id": 1, "name": "Ada"}
    assert senv.cache.get("user:1") == {"id": 1, "name": "Ada"}
    assert fetch.calls == 1, "a stored value must not be fetched again"


def test_get_or_raise(senv: SyncEnv) -> None:
    with pytest.raises(CacheMissError) as info:
        senv.cache.get_or_raise("missing:key")
    assert info.value.key == "missing:key"
    assert isinstance(info.value, LayerCacheError)
    with pytest.raises(CacheMissError) as info:
        senv.cache.get_or_raise("none:key", lambda: None)
    assert info.value.key == "none:key"
    assert senv.cache.get_or_raise("k", lambda: 0) == 0, "a falsy value is not a miss"
    assert senv.cache.get_or_raise("k") == 0
    senv.cache.set("present", "here")
    assert senv.cache.get_or_raise("present") == "here"


def test_get_many_mixed_entries_preserve_order(senv: SyncEnv) -> None:
    senv.cache.set("a", "A")
    senv.cache.set("c", "C")
    fetch_b, fetch_d = SyncCounter("B"), SyncCounter("D")
    results = senv.cache.get_many(
        [
            "c",
            ("b", fetch_b),
            "missing",
            CacheEntryRequest("d", fetch_d, options={"ttl": 5}),
            "a",
            CacheEntryRequest("e"),
            ("a", None),
        ]
    )
    assert results == ["C", "B", None, "D", "A", None, "A"]
    assert (fetch_b.calls, fetch_d.calls) == (1, 1)
    assert senv.cache.get("b") == "B"
    remaining = senv.cache.ttl("d")
    assert remaining is not None
    assert 0 < remaining <= 5
    assert senv.cache.get_many([]) == []


def test_get_many_plain_keys_order_with_misses(senv: SyncEnv) -> None:
    senv.cache.set_many([(f"k{i}", i) for i in range(0, 10, 2)])
    keys = [f"k{i}" for i in range(10)][::-1]
    assert senv.cache.get_many(keys) == [i if i % 2 == 0 else None for i in range(10)][::-1]


def test_get_many_uses_the_layer_fast_path(clock: ManualClock) -> None:
    memory = MemoryLayer(clock=clock)
    recording = RecordingLayer("remote")
    with SyncCacheStack([memory, recording], clock=clock) as cache:
        cache.set_many([("a", 1), ("b", 2), ("c", 3)])
        memory.clear()
        recording.calls.clear()
        assert cache.get_many(["a", "b", "c", "zz"]) == [1, 2, 3, None]
        reads = [call for call in recording.calls if call[0] in ("get", "get_many")]
        assert reads == [("get_many", ["a", "b", "c", "zz"])], reads
        assert memory.get("a") is not None, "get_many hits are backfilled into L1"


def test_has(senv: SyncEnv) -> None:
    assert senv.cache.has("h") is False
    senv.cache.set("h", "v", ttl=10)
    assert senv.cache.has("h") is True
    senv.clock.advance(11)
    assert senv.cache.has("h") is False, "an expired value is not 'in' the cache"
    senv.cache.set("h", "v")
    senv.cache.delete("h")
    assert senv.cache.has("h") is False


def test_has_finds_a_value_only_in_a_lower_layer(slayered: SyncEnv) -> None:
    slayered.cache.set("deep", 1)
    slayered.memory.delete("deep")
    assert slayered.cache.has("deep") is True


def test_ttl(senv: SyncEnv) -> None:
    assert senv.cache.ttl("absent") is None
    senv.cache.set("t", "v", ttl=100)
    assert senv.cache.ttl("t") == pytest.approx(100, abs=0.5)
    senv.clock.advance(30)
    assert senv.cache.ttl("t") == pytest.approx(70, abs=0.5)
    senv.clock.advance(71)
    assert senv.cache.ttl("t") is None, "an expired key has no ttl"


def test_ttl_comes_from_the_fastest_layer(slayered: SyncEnv) -> None:
    lower = slayered.lower_name
    assert lower is not None
    slayered.cache.set("t", "v", ttl={"memory": 10, lower: 500})
    assert slayered.cache.ttl("t") == pytest.approx(10, abs=0.5)
    slayered.memory.delete("t")
    assert slayered.cache.ttl("t") == pytest.approx(500, abs=0.5)


def test_inspect(senv: SyncEnv) -> None:
    assert senv.cache.inspect("absent") is None
    senv.cache.set("i", {"v": 1}, ttl=100, tags=["users", "tenant:a"])
    senv.clock.advance(40)
    result = senv.cache.inspect("i")
    assert isinstance(result, CacheInspectResult)
    assert result.key == "i"
    assert list(result.found_in_layers) == senv.names
    assert result.fresh_ttl == pytest.approx(60, abs=0.5)
    assert result.is_stale is False
    assert sorted(result.tags) == ["tenant:a", "users"]


def test_inspect_lists_only_layers_holding_the_key(slayered: SyncEnv) -> None:
    slayered.cache.set("i", 1)
    slayered.memory.delete("i")
    result = slayered.cache.inspect("i")
    assert result is not None
    assert list(result.found_in_layers) == [slayered.lower_name]


def test_lower_layer_hit_backfills_upper_layers(slayered: SyncEnv) -> None:
    log = EventLog(slayered.cache, "hit", "backfill")
    slayered.cache.set("bf", {"deep": True})
    slayered.memory.delete("bf")
    slayered.cache.reset_metrics()
    assert slayered.cache.get("bf") == {"deep": True}
    assert slayered.layer_values("bf")[0] == {"deep": True}, "L1 was not backfilled"
    wait_until(lambda: len(log.of("backfill")) == 1, "the backfill event")
    assert [e["layer"] for e in log.of("hit")] == [slayered.lower_name]
    backfill = log.of("backfill")[0]
    assert (backfill["key"], backfill["from_layer"], backfill["to_layer"]) == (
        "bf",
        slayered.lower_name,
        "memory",
    )
    assert slayered.cache.get_metrics().backfills == 1
    assert slayered.cache.get("bf") == {"deep": True}
    wait_until(lambda: len(log.of("hit")) == 2, "the second hit event")
    assert [e["layer"] for e in log.of("hit")] == [slayered.lower_name, "memory"]


def test_backfill_uses_each_layers_own_ttl(build_sync_layered) -> None:  # type: ignore[no-untyped-def]
    env: SyncEnv = build_sync_layered(memory_ttl=30, lower_ttl=3600)
    fetch = SyncCounter("v")
    assert env.cache.get("k", fetch) == "v"
    assert env.memory.ttl("k") == pytest.approx(30, abs=0.5)
    env.clock.advance(31)
    assert env.memory.get("k") is None
    assert env.cache.get("k", fetch) == "v", "the lower layer still holds a fresh value"
    assert fetch.calls == 1
    assert env.memory.ttl("k") == pytest.approx(30, abs=0.5), "backfill uses the L1 ttl"
    assert env.cache.get_metrics().backfills == 1


def test_backfill_never_extends_a_values_life(build_sync_layered) -> None:  # type: ignore[no-untyped-def]
    env: SyncEnv = build_sync_layered(memory_ttl=300, lower_ttl=3600)
    env.cache.set("short", "v", ttl=10)
    env.memory.delete("short")
    env.clock.advance(4)
    assert env.cache.get("short") == "v"
    memory_ttl = env.memory.ttl("short")
    assert memory_ttl is not None
    assert memory_ttl <= 6.5, f"backfilled copy lives {memory_ttl}s, the value only 6s more"
    env.clock.advance(7)
    assert env.cache.get("short") is None, "an expired value came back through backfill"
