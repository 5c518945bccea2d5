"""Events (on/off, payloads, raising handlers), metrics, stats, hit rate, health, lifecycle."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from stack_support import EventLog, StackEnv, eventually, lcall

from _twins_async import Event, join_all, pause, spawn
from layercache import (
    CacheMetrics,
    CacheStack,
    CacheStats,
    HitRate,
    LatencySummary,
    LayerHealth,
    LayerMetrics,
    LayerStatus,
    MemoryLayer,
)
from layercache.testing import ManualClock


async def test_event_payloads(env: StackEnv) -> None:
    log = EventLog(env.cache, "hit", "miss", "set", "delete")
    await env.cache.get("k")
    await env.cache.set("k", 1)
    await env.cache.get("k")
    await env.cache.delete("k")
    await eventually(lambda: len(log.events) >= 4, "four events")
    assert {"event": "miss", "key": "k"}.items() <= log.of("miss")[0].items()
    assert {"event": "set", "key": "k"}.items() <= log.of("set")[0].items()
    assert {"event": "hit", "key": "k", "layer": "memory"}.items() <= log.of("hit")[0].items()
    assert {"event": "delete", "key": "k"}.items() <= log.of("delete")[0].items()
    assert [e["event"] for e in log.events] == ["miss", "set", "hit", "delete"]


# unasync: begin async-only
# A coroutine handler needs the event loop: the sync stack cannot run one.
async def test_async_handlers_are_run(memory_env: StackEnv) -> None:
    seen = asyncio.Event()
    payloads: list[dict[str, Any]] = []

    async def handler(payload: dict[str, Any]) -> None:
        payloads.append(payload)
        seen.set()

    memory_env.cache.on("miss", handler)
    await memory_env.cache.get("absent")
    await asyncio.wait_for(seen.wait(), 2)
    assert payloads[0]["key"] == "absent"


# unasync: end async-only


async def test_off_and_unsubscribe(memory_env: StackEnv) -> None:
    first: list[dict[str, Any]] = []
    second: list[dict[str, Any]] = []
    unsubscribe = memory_env.cache.on("miss", first.append)
    memory_env.cache.on("miss", second.append)
    await memory_env.cache.get("a")
    await eventually(lambda: len(first) == 1 and len(second) == 1, "both handlers")
    unsubscribe()
    memory_env.cache.off("miss", second.append)
    await memory_env.cache.get("b")
    probe: list[dict[str, Any]] = []
    memory_env.cache.on("miss", probe.append)
    await memory_env.cache.get("c")
    await eventually(lambda: len(probe) == 1, "a later handler")
    assert len(first) == 1, "unsubscribe() did not remove the handler"
    assert len(second) == 1, "off() did not remove the handler"


async def test_raising_handlers_never_break_operations(env: StackEnv) -> None:
    calls: list[str] = []

    def bad_sync(payload: dict[str, Any]) -> None:
        calls.append("sync")
        raise RuntimeError("handler bug")

    async def bad_async(payload: dict[str, Any]) -> None:
        calls.append("async")
        raise RuntimeError("async handler bug")

    good: list[dict[str, Any]] = []
    for name in ("hit", "miss", "set", "delete", "backfill"):
        env.cache.on(name, bad_sync)
        env.cache.on(name, bad_async)
    env.cache.on("set", good.append)
    assert await env.cache.get("k", lambda: "v") == "v"
    assert await env.cache.get("k") == "v"
    await env.cache.set("k", "w")
    await env.cache.delete("k")
    assert await env.cache.get("k") is None
    await eventually(lambda: "sync" in calls and "async" in calls, "the raising handlers")
    await eventually(lambda: len(good) >= 1, "the good handler after a raising one")
    # Let any task of the async handler finish before the loop closes.
    for _ in range(5):
        await pause(0)


async def test_stampede_dedupe_event(memory_env: StackEnv) -> None:
    log = EventLog(memory_env.cache, "stampede_dedupe")
    release = Event()

    async def fetch() -> str:
        await release.wait()
        return "v"

    tasks = [spawn(memory_env.cache.get, "hot", fetch) for _ in range(3)]
    await eventually(lambda: len(log.of("stampede_dedupe")) == 2, "two dedupe events")
    release.set()
    assert await join_all(tasks) == ["v"] * 3
    assert all(e["key"] == "hot" for e in log.of("stampede_dedupe"))


async def test_metrics_counters(env: StackEnv) -> None:
    cache = env.cache
    metrics = cache.get_metrics()
    assert isinstance(metrics, CacheMetrics)
    assert (metrics.hits, metrics.misses, metrics.fetches) == (0, 0, 0)
    await cache.get("a")  # miss, no fetch
    await cache.get("b", lambda: 1)  # miss + fetch
    await cache.get("b")  # hit
    await cache.get("b")  # hit
    metrics = cache.get_metrics()
    assert metrics.hits == 2
    assert metrics.misses == 2
    assert metrics.fetches == 1
    for name in ("stale_hits", "refreshes", "write_failures", "stampede_dedupes", "evictions"):
        assert getattr(metrics, name) == 0, name
    assert set(metrics.layers) == {layer.name for layer in env.layers}
    memory = metrics.layers["memory"]
    assert isinstance(memory, LayerMetrics)
    assert memory.hits == 2
    assert memory.misses == 2
    if env.lower is not None:
        lower = metrics.layers[env.lower.name]
        assert (lower.hits, lower.misses) == (0, 2)
        assert isinstance(lower.latency, LatencySummary)
        assert lower.latency.count >= 2
        assert 0 <= lower.latency.p50 <= lower.latency.p99
        assert lower.latency.mean >= 0


async def test_metrics_lower_layer_hit_and_backfill(layered: StackEnv) -> None:
    await layered.cache.set("k", 1)
    await lcall(layered.memory, "delete", "k")
    before = layered.cache.get_metrics()
    assert await layered.cache.get("k") == 1
    after = layered.cache.get_metrics()
    lower = str(layered.lower_name)
    assert after.hits - before.hits == 1
    assert after.misses - before.misses == 0
    assert after.backfills - before.backfills == 1
    assert after.layers["memory"].misses - before.layers["memory"].misses == 1
    assert after.layers[lower].hits - before.layers[lower].hits == 1


async def test_reset_metrics(env: StackEnv) -> None:
    await env.cache.get("a", lambda: 1)
    await env.cache.get("a")
    env.cache.reset_metrics()
    metrics = env.cache.get_metrics()
    assert (metrics.hits, metrics.misses, metrics.fetches, metrics.backfills) == (0, 0, 0, 0)
    assert all(m.hits == 0 and m.misses == 0 for m in metrics.layers.values())
    assert env.cache.get_hit_rate().overall == 0
    # Counting goes on after a reset, for the stack and for every layer.
    await env.cache.get("a")
    await env.cache.get("absent")
    metrics = env.cache.get_metrics()
    assert (metrics.hits, metrics.misses) == (1, 1)
    assert (metrics.layers["memory"].hits, metrics.layers["memory"].misses) == (1, 1), (
        "L1 hits/misses are no longer counted after reset_metrics()"
    )
    assert env.cache.get_hit_rate().layers["memory"] == pytest.approx(0.5)


async def test_evictions_are_counted(clock: ManualClock) -> None:
    memory = MemoryLayer(ttl=60, max_size=2, clock=clock)
    async with CacheStack([memory], clock=clock) as cache:
        for i in range(5):
            await cache.set(f"e:{i}", i)
        assert cache.get_metrics().evictions == 3


async def test_metrics_disabled(clock: ManualClock) -> None:
    memory = MemoryLayer(clock=clock)
    async with CacheStack([memory], clock=clock, metrics=False) as cache:
        await cache.set("k", 1)
        assert await cache.get("k") == 1
        assert isinstance(cache.get_metrics(), CacheMetrics)


async def test_hit_rate(layered: StackEnv) -> None:
    cache = layered.cache
    await cache.get("m")  # miss everywhere
    await cache.set("h", 1)
    await cache.get("h")  # L1 hit
    await cache.get("h")  # L1 hit
    await lcall(layered.memory, "delete", "h")
    await cache.get("h")  # lower hit
    rate = cache.get_hit_rate()
    assert isinstance(rate, HitRate)
    assert rate.overall == pytest.approx(3 / 4)
    assert rate.layers["memory"] == pytest.approx(2 / 4)
    assert rate.layers[str(layered.lower_name)] == pytest.approx(1 / 2)


async def test_stats(env: StackEnv) -> None:
    await env.cache.get("a", lambda: 1)
    stats = env.cache.get_stats()
    assert isinstance(stats, CacheStats)
    assert isinstance(stats.metrics, CacheMetrics)
    assert stats.metrics.fetches == 1
    assert stats.background_refreshes == 0
    expected = [LayerStatus("memory", True, None)]
    if env.kind == "memory+disk":
        expected.append(LayerStatus("disk", True, None))
    elif env.kind == "memory+redis":
        expected.append(LayerStatus("redis", False, None))
    assert list(stats.layers) == expected


async def test_health_check(env: StackEnv) -> None:
    health = await env.cache.health_check()
    assert [h.layer for h in health] == [layer.name for layer in env.layers]
    for item in health:
        assert isinstance(item, LayerHealth)
        assert item.healthy is True
        assert item.error is None
        assert isinstance(item.latency, float)
        assert 0 <= item.latency < 5


async def test_health_check_reports_a_failing_layer(clock: ManualClock) -> None:
    class Broken:
        name = "broken"
        default_ttl = None
        is_local = False

        async def get(self, key: str) -> None:
            raise ConnectionError("down")

        async def set(self, key: str, entry: object, ttl: float | None) -> None:
            raise ConnectionError("down")

        async def delete(self, key: str) -> None:
            raise ConnectionError("down")

        async def clear(self) -> None:
            raise ConnectionError("down")

        async def ping(self) -> bool:
            raise ConnectionError("down")

    async with CacheStack([MemoryLayer(clock=clock), Broken()], clock=clock) as cache:
        health = await cache.health_check()
        assert [h.healthy for h in health] == [True, False]
        assert health[1].error


async def test_async_context_manager_and_aclose(clock: ManualClock) -> None:
    memory = MemoryLayer(clock=clock)
    async with CacheStack([memory], clock=clock) as cache:
        assert isinstance(cache, CacheStack)
        await cache.set("k", 1)
        assert await cache.get("k") == 1
    await cache.aclose()  # idempotent
    other = CacheStack([MemoryLayer(clock=clock)], clock=clock)
    await other.set("k", 1)
    await other.aclose()
    await other.aclose()
