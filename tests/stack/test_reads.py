"""CacheStack reads: get, get_or_raise, get_many, has, ttl, inspect, backfill."""

from __future__ import annotations

import pytest
from stack_support import Counter, EventLog, RecordingLayer, StackEnv, lcall

from _twins_async import ASYNC, coroutine_function, pause
from layercache import (
    CacheEntryRequest,
    CacheInspectResult,
    CacheMissError,
    CacheStack,
    LayerCacheError,
    MemoryLayer,
)
from layercache.testing import ManualClock


async def test_get_miss_without_fetcher_returns_none(env: StackEnv) -> None:
    assert await env.cache.get("absent") is None
    assert await env.in_layers("absent") == []


async def test_get_fetches_once_and_stores_in_every_layer(env: StackEnv) -> None:
    fetch = Counter({"id": 1, "name": "Ada"})
    assert await env.cache.get("user:1", fetch) == {"id": 1, "name": "Ada"}
    assert fetch.calls == 1
    assert await env.in_layers("user:1") == [layer.name for layer in env.layers]
    assert await env.cache.get("user:1", fetch) == {"id": 1, "name": "Ada"}
    assert await env.cache.get("user:1") == {"id": 1, "name": "Ada"}
    assert fetch.calls == 1, "a stored value must not be fetched again"


async def test_get_accepts_sync_and_async_fetchers(env: StackEnv) -> None:
    async def async_fetch() -> list[int]:
        return [1, 2, 3]

    assert await env.cache.get("sync", lambda: {"sync": True}) == {"sync": True}
    assert await env.cache.get("async", async_fetch) == [1, 2, 3]


# unasync: begin async-only
# A plain callable returning an awaitable: only the asyncio stack can await what it returns.
async def test_a_fetcher_returning_an_awaitable_is_awaited(env: StackEnv) -> None:
    async def async_fetch() -> list[int]:
        return [1, 2, 3]

    # A plain callable returning an awaitable is awaited, not cached as a coroutine object.
    assert await env.cache.get("lambda", lambda: async_fetch()) == [1, 2, 3]
    assert await env.cache.get("lambda") == [1, 2, 3]


# unasync: end async-only


async def test_a_coroutine_function_fetcher(env: StackEnv) -> None:
    # A real ``async def`` in both flavours: the asyncio stack awaits it; the sync stack cannot
    # and refuses it with a TypeError (nothing fetched, nothing stored).
    fetch = coroutine_function([1, 2, 3])
    if ASYNC:
        assert await env.cache.get("coro", fetch) == [1, 2, 3]
        assert await env.in_layers("coro") == [layer.name for layer in env.layers]
    else:
        with pytest.raises(TypeError, match="async"):
            await env.cache.get("coro", fetch)
        assert await env.in_layers("coro") == []


async def test_get_or_raise(env: StackEnv) -> None:
    with pytest.raises(CacheMissError) as info:
        await env.cache.get_or_raise("missing:key")
    assert info.value.key == "missing:key"
    assert isinstance(info.value, LayerCacheError)
    with pytest.raises(CacheMissError) as info:
        await env.cache.get_or_raise("none:key", lambda: None)
    assert info.value.key == "none:key"
    assert await env.cache.get_or_raise("k", lambda: 0) == 0, "a falsy value is not a miss"
    assert await env.cache.get_or_raise("k") == 0
    await env.cache.set("present", "here")
    assert await env.cache.get_or_raise("present") == "here"


async def test_get_many_mixed_entries_preserve_order(env: StackEnv) -> None:
    await env.cache.set("a", "A")
    await env.cache.set("c", "C")
    fetch_b, fetch_d = Counter("B"), Counter("D")
    results = await env.cache.get_many(
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
    # Fetched entries were stored (with their own options).
    assert await env.cache.get("b") == "B"
    remaining = await env.cache.ttl("d")
    assert remaining is not None
    assert 0 < remaining <= 5
    assert await env.cache.get_many([]) == []


async def test_get_many_plain_keys_order_with_misses(env: StackEnv) -> None:
    await env.cache.set_many([(f"k{i}", i) for i in range(0, 10, 2)])
    keys = [f"k{i}" for i in range(10)][::-1]
    assert await env.cache.get_many(keys) == [i if i % 2 == 0 else None for i in range(10)][::-1]


async def test_get_many_uses_the_layer_fast_path(clock: ManualClock) -> None:
    memory = MemoryLayer(clock=clock)
    recording = RecordingLayer("remote")
    async with CacheStack([memory, recording], clock=clock) as cache:
        await cache.set_many([("a", 1), ("b", 2), ("c", 3)])
        memory.clear()
        recording.calls.clear()
        assert await cache.get_many(["a", "b", "c", "zz"]) == [1, 2, 3, None]
        reads = [call for call in recording.calls if call[0] in ("get", "get_many")]
        assert reads == [("get_many", ["a", "b", "c", "zz"])], (
            f"plain reads should use one get_many on the lower layer, got {reads}"
        )
        assert memory.get("a") is not None, "get_many hits are backfilled into L1"


async def test_has(env: StackEnv) -> None:
    assert await env.cache.has("h") is False
    await env.cache.set("h", "v", ttl=10)
    assert await env.cache.has("h") is True
    env.clock.advance(11)
    assert await env.cache.has("h") is False, "an expired value is not 'in' the cache"
    await env.cache.set("h", "v")
    await env.cache.delete("h")
    assert await env.cache.has("h") is False


async def test_has_finds_a_value_only_in_a_lower_layer(layered: StackEnv) -> None:
    await layered.cache.set("deep", 1)
    await lcall(layered.memory, "delete", "deep")
    assert await layered.cache.has("deep") is True


async def test_ttl(env: StackEnv) -> None:
    assert await env.cache.ttl("absent") is None
    await env.cache.set("t", "v", ttl=100)
    assert await env.cache.ttl("t") == pytest.approx(100, abs=0.5)
    env.clock.advance(30)
    assert await env.cache.ttl("t") == pytest.approx(70, abs=0.5)
    env.clock.advance(71)
    assert await env.cache.ttl("t") is None, "an expired key has no ttl"


async def test_ttl_comes_from_the_fastest_layer(layered: StackEnv) -> None:
    lower = layered.lower_name
    assert lower is not None
    await layered.cache.set("t", "v", ttl={"memory": 10, lower: 500})
    assert await layered.cache.ttl("t") == pytest.approx(10, abs=0.5)
    await lcall(layered.memory, "delete", "t")
    assert await layered.cache.ttl("t") == pytest.approx(500, abs=0.5)


async def test_inspect(env: StackEnv) -> None:
    assert await env.cache.inspect("absent") is None
    await env.cache.set("i", {"v": 1}, ttl=100, tags=["users", "tenant:a"])
    env.clock.advance(40)
    result = await env.cache.inspect("i")
    assert isinstance(result, CacheInspectResult)
    assert result.key == "i"
    assert list(result.found_in_layers) == [layer.name for layer in env.layers]
    assert result.fresh_ttl == pytest.approx(60, abs=0.5)
    assert result.is_stale is False
    assert sorted(result.tags) == ["tenant:a", "users"]


async def test_inspect_lists_only_layers_holding_the_key(layered: StackEnv) -> None:
    await layered.cache.set("i", 1)
    await lcall(layered.memory, "delete", "i")
    result = await layered.cache.inspect("i")
    assert result is not None
    assert list(result.found_in_layers) == [layered.lower_name]


async def test_lower_layer_hit_backfills_upper_layers(layered: StackEnv) -> None:
    log = EventLog(layered.cache, "hit", "backfill")
    await layered.cache.set("bf", {"deep": True})
    await lcall(layered.memory, "delete", "bf")
    assert layered.memory.get("bf") is None
    layered.cache.reset_metrics()
    assert await layered.cache.get("bf") == {"deep": True}
    assert (await layered.layer_values("bf"))[0] == {"deep": True}, "L1 was not backfilled"
    await pause(0)
    assert [e["layer"] for e in log.of("hit")] == [layered.lower_name]
    backfills = log.of("backfill")
    assert len(backfills) == 1
    assert backfills[0]["key"] == "bf"
    assert backfills[0]["from_layer"] == layered.lower_name
    assert backfills[0]["to_layer"] == "memory"
    assert layered.cache.get_metrics().backfills == 1
    # The next read is an L1 hit.
    assert await layered.cache.get("bf") == {"deep": True}
    await pause(0)
    assert [e["layer"] for e in log.of("hit")] == [layered.lower_name, "memory"]


async def test_backfill_uses_each_layers_own_ttl(build_layered) -> None:  # type: ignore[no-untyped-def]
    env: StackEnv = await build_layered(memory_ttl=30, lower_ttl=3600)
    fetch = Counter("v")
    assert await env.cache.get("k", fetch) == "v"
    assert await lcall(env.memory, "ttl", "k") == pytest.approx(30, abs=0.5)
    env.clock.advance(31)
    assert env.memory.get("k") is None, "the memory layer keeps values for its own ttl"
    assert await env.cache.get("k", fetch) == "v", "the lower layer still holds a fresh value"
    assert fetch.calls == 1
    memory_ttl = await lcall(env.memory, "ttl", "k")
    assert memory_ttl is not None, "L1 was not backfilled"
    assert memory_ttl == pytest.approx(30, abs=0.5), "backfill must use the memory layer's ttl"
    env.clock.advance(31)
    assert await env.cache.get("k", fetch) == "v"
    assert fetch.calls == 1
    assert env.cache.get_metrics().backfills == 2


async def test_backfill_never_extends_a_values_life(build_layered) -> None:  # type: ignore[no-untyped-def]
    env: StackEnv = await build_layered(memory_ttl=300, lower_ttl=3600)
    await env.cache.set("short", "v", ttl=10)
    await lcall(env.memory, "delete", "short")
    env.clock.advance(4)
    assert await env.cache.get("short") == "v"
    memory_ttl = await lcall(env.memory, "ttl", "short")
    assert memory_ttl is not None
    assert memory_ttl <= 6.5, f"backfilled copy lives {memory_ttl}s, the value only 6s more"
    env.clock.advance(7)
    assert await env.cache.get("short") is None, "an expired value came back through backfill"
