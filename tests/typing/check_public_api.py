"""Uses of the public API that must pass ``mypy --strict`` (checked by ``test_typing.py``).

Never imported or run: it only has to type-check. Every name comes from ``layercache`` itself,
the way a user writes it; ``assert_type`` pins the types the API promises.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from typing_extensions import assert_type

import layercache
from layercache import (
    CacheEntry,
    CacheEntryRequest,
    CacheInspectResult,
    CacheLayer,
    CacheLayerError,
    CacheMetrics,
    CacheMissError,
    CacheNamespace,
    CacheOptions,
    CacheStack,
    CacheStats,
    CircuitOpenError,
    DiskLayer,
    Entry,
    FetchTimeoutError,
    HitRate,
    JsonSerializer,
    LatencySummary,
    LayerCacheError,
    LayerHealth,
    LayerMetrics,
    LayerStatus,
    MemoryLayer,
    MsgpackSerializer,
    PickleSerializer,
    RedisLayer,
    UnserializableValueError,
)


class User:
    def __init__(self, user_id: int) -> None:
        self.user_id = user_id


async def load_user(user_id: int) -> User:
    return User(user_id)


def load_user_sync(user_id: int) -> User:
    return User(user_id)


def build_layers(directory: Path) -> list[CacheLayer]:
    memory = MemoryLayer(ttl=60, max_size=1_000, eviction="lfu", max_bytes=10_000_000)
    redis = RedisLayer(
        url="redis://127.0.0.1:6379/0",
        ttl=dt.timedelta(hours=1),
        prefix="app:",
        serializer=MsgpackSerializer(),
        compression="zstd",
        compression_threshold=512,
    )
    disk = DiskLayer(directory, ttl=None, max_files=100, max_bytes=None, name="disk")
    disk_json = DiskLayer(str(directory / "json"), serializer=JsonSerializer(), name="disk2")
    signed = PickleSerializer(signing_secret=b"secret")
    assert_type(memory.name, str)
    assert_type(memory.default_ttl, float | None)
    assert_type(memory.is_local, bool)
    del signed
    return [memory, redis, disk, disk_json]


async def reads(cache: CacheStack) -> None:
    user: Any = await cache.get("user:1", lambda: load_user(1))
    same: Any = await cache.get("user:1", lambda: load_user_sync(1), ttl=30, tags=["users"])
    await cache.get("user:1", options=CacheOptions(ttl=60, tags=("a",)))
    await cache.get("user:1", options={"ttl": {"memory": 10, "redis": 600}})
    await cache.get_or_raise("user:1", lambda: load_user(1), ttl_policy="until-midnight")
    await cache.get("user:2", lambda: None, negative_cache=True, negative_ttl=5)
    await cache.get("k", lambda: 1, ttl_policy={"align_to": 300}, ttl_jitter=2.5)
    await cache.get("k", lambda: 1, ttl_policy=lambda key, value: 10.0)
    await cache.get("k", lambda: 1, should_cache=lambda value: value is not None, fetch_timeout=3)

    results: list[Any] = await cache.get_many(
        [
            "plain-key",
            ("with-fetcher", lambda: load_user(3)),
            ("without-fetcher", None),
            CacheEntryRequest("request"),
            CacheEntryRequest("request2", fetcher=lambda: 2, options={"ttl": 5}),
            CacheEntryRequest("request3", lambda: 3, CacheOptions(tags=("x",))),
        ]
    )
    assert_type(await cache.has("k"), bool)
    assert_type(await cache.ttl("k"), float | None)
    info = await cache.inspect("k")
    assert_type(info, CacheInspectResult | None)
    if info is not None:
        assert_type(info.found_in_layers, list[str])
        assert_type(info.fresh_ttl, float | None)
        assert_type(info.is_stale, bool)
        assert_type(info.tags, tuple[str, ...])
    del user, same, results


async def writes(cache: CacheStack) -> None:
    await cache.set("k", {"any": "value"})
    await cache.set("k", 1, ttl=dt.timedelta(minutes=5), tags=["a", "b"])
    await cache.set("k", 1, options={"ttl": 0})
    await cache.set_many([("a", 1), CacheEntry("b", 2), CacheEntry("c", 3, options={"ttl": 5})])
    await cache.set_many([CacheEntry("d", 4, CacheOptions(tags=("t",)))])
    await cache.delete("k")
    await cache.delete_many(["a", "b"])
    assert_type(await cache.invalidate_by_tag("users"), int)
    assert_type(await cache.invalidate_by_tags(["a", "b"], mode="all"), int)
    assert_type(await cache.invalidate_by_pattern("user:*"), int)
    assert_type(await cache.invalidate_by_prefix("user:"), int)
    await cache.clear()


async def wrapping(cache: CacheStack) -> None:
    cached_user = cache.wrap("user", load_user)
    keeps_signature: Callable[[int], Awaitable[User]] = cached_user
    del keeps_signature
    await cached_user(1)
    cached_sync = cache.wrap("user-sync", load_user_sync, ttl=30)
    await cached_sync(2)

    @cache.wrap("profile", ttl=300, tags=["profiles"])
    async def profile(user_id: int) -> dict[str, int]:
        return {"id": user_id}

    await profile(5)

    @cache.wrap("by-resolver", key_resolver=lambda user_id: f"id={user_id}")
    def resolved(user_id: int) -> int:
        return user_id

    await resolved(3)


async def namespaces(cache: CacheStack) -> None:
    tenant = cache.namespace("tenant:abc")
    assert_type(tenant, CacheNamespace)
    posts = tenant.namespace("posts")
    await posts.set("1", {"title": "x"}, ttl=60)
    value: Any = await posts.get("1", lambda: None)
    await posts.get_many(["1", ("2", lambda: 2), CacheEntryRequest("3")])
    await posts.set_many([("4", 4), CacheEntry("5", 5)])
    assert_type(await posts.invalidate_by_pattern("*"), int)
    await posts.clear()
    del value


def observability(cache: CacheStack) -> None:
    metrics = cache.get_metrics()
    assert_type(metrics, CacheMetrics)
    counters: list[int] = [
        metrics.hits,
        metrics.misses,
        metrics.fetches,
        metrics.stale_hits,
        metrics.refreshes,
        metrics.write_failures,
        metrics.stampede_dedupes,
        metrics.backfills,
        metrics.evictions,
        metrics.errors,
    ]
    for name, layer_metrics in metrics.layers.items():
        assert_type(name, str)
        assert_type(layer_metrics, LayerMetrics)
        assert_type(layer_metrics.hits, int)
        latency = layer_metrics.latency
        assert_type(latency, LatencySummary)
        seconds: list[float] = [latency.mean, latency.p50, latency.p99]
        assert_type(latency.count, int)
        del seconds
    stats = cache.get_stats()
    assert_type(stats, CacheStats)
    for status in stats.layers:
        assert_type(status, LayerStatus)
        assert_type(status.degraded_until, float | None)
    assert_type(stats.background_refreshes, int)
    rate = cache.get_hit_rate()
    assert_type(rate, HitRate)
    assert_type(rate.overall, float)
    assert_type(rate.layers, dict[str, float])
    cache.reset_metrics()

    def on_hit(payload: dict[str, Any]) -> None:
        logging.getLogger("app").info("hit %s", payload["key"])

    async def on_error(payload: dict[str, Any]) -> None:
        return None

    unsubscribe = cache.on("hit", on_hit)
    assert_type(unsubscribe, Callable[[], None])
    unsubscribe()
    cache.on("error", on_error)
    cache.off("error", on_error)
    del counters


async def health(cache: CacheStack) -> None:
    for report in await cache.health_check():
        assert_type(report, LayerHealth)
        assert_type(report.healthy, bool)
        assert_type(report.latency, float)
        assert_type(report.error, str | None)


async def errors(cache: CacheStack) -> None:
    try:
        await cache.get_or_raise("missing")
    except CacheMissError as miss:
        assert_type(miss.key, str)
    except FetchTimeoutError as timeout:
        assert_type(timeout.key, str)
        assert_type(timeout.timeout, float)
    except CircuitOpenError as circuit:
        assert_type(circuit.key, str)
    except CacheLayerError as failure:
        assert_type(failure.layer, str)
        assert_type(failure.operation, str)
        cause: BaseException | None = failure.__cause__
        del cause
    except LayerCacheError:
        pass
    base: type[Exception] = LayerCacheError
    timeout_base: type[TimeoutError] = FetchTimeoutError
    miss_base: type[KeyError] = CacheMissError
    unserializable_base: type[TypeError] = UnserializableValueError
    del base, timeout_base, miss_base, unserializable_base
    try:
        await cache.set("k", object())
    except UnserializableValueError as refused:
        assert_type(refused, UnserializableValueError)


class DictLayer:
    """A user-written layer: plugs into the stack through the CacheLayer protocol."""

    name = "dict"
    default_ttl: float | None = None
    is_local = True

    def __init__(self) -> None:
        self.data: dict[str, Entry] = {}

    def get(self, key: str) -> Entry | None:
        return self.data.get(key)

    def set(self, key: str, entry: Entry, ttl: float | None) -> None:
        self.data[key] = entry

    def delete(self, key: str) -> None:
        self.data.pop(key, None)

    def clear(self) -> None:
        self.data.clear()


async def main(directory: Path) -> None:
    user_layer: CacheLayer = DictLayer()
    entry = Entry("v", stored_at=0.0, fresh_until=None, tags=("t",))
    assert_type(entry.expires_at, float | None)
    assert_type(entry.storage_ttl(1.0), float | None)
    async with CacheStack(
        [*build_layers(directory), user_layer],
        logger=logging.getLogger("cache"),
        metrics=True,
        stampede_prevention=True,
        negative_caching=False,
        negative_ttl=dt.timedelta(seconds=5),
        fetch_timeout=30,
        ttl_jitter={"memory": 1.0},
        write_policy="best-effort",
        max_tag_index_keys=10_000,
        max_profile_entries=10_000,
    ) as cache:
        assert_type(cache, CacheStack)
        await reads(cache)
        await writes(cache)
        await wrapping(cache)
        await namespaces(cache)
        observability(cache)
        await health(cache)
        await errors(cache)
    await cache.aclose()
    assert_type(layercache.__version__, str)
