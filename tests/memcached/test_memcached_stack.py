"""A stack over a real memcached: ``[MemoryLayer, MemcachedLayer]`` end to end, both twins."""

from __future__ import annotations

from typing import Any

from _memcached_server import MemcachedServer
from layercache import CacheStack, MemoryLayer, SyncCacheStack
from layercache.memcached import MemcachedLayer, SyncMemcachedLayer

AWKWARD_KEYS = (
    "user:1",
    "with space",
    "with  space",
    "tab\tkey"[:3] + "-no-tab",
    "ключ",
    "日本語のキー",
    "emoji:🎉",
    "a\u00a0nbsp",
    "x" * 300,
    "x" * 299 + "y",
    "y" * 1024,
)


async def test_get_fetch_backfill_and_get_many(memcached: MemcachedServer, prefix: str) -> None:
    calls: list[str] = []

    async def fetch(key: str) -> Any:
        calls.append(key)
        return {"key": key}

    memcached_layer = MemcachedLayer(servers=memcached.address, prefix=prefix, ttl=600)
    cache = CacheStack([MemoryLayer(ttl=60), memcached_layer])
    other = CacheStack(
        [MemoryLayer(ttl=60), MemcachedLayer(servers=memcached.address, prefix=prefix)]
    )
    backfills: list[dict[str, Any]] = []
    other.on("backfill", backfills.append)
    try:
        assert await cache.get("a", lambda: fetch("a")) == {"key": "a"}
        assert calls == ["a"]
        # In memcached now: another instance (its own L1 empty) reads it there, fills its L1.
        assert (await memcached_layer.get("a")) is not None
        assert await other.get("a", lambda: fetch("again")) == {"key": "a"}
        assert calls == ["a"]
        assert backfills
        assert backfills[0]["key"] == "a"
        assert other.get_metrics().layers["memcached"].hits == 1

        for key in ("b", "c"):
            await cache.set(key, key.upper())
        got = await other.get_many(["a", "b", "c", "missing", ("d", lambda: fetch("d"))])
        assert got == [{"key": "a"}, "B", "C", None, {"key": "d"}]
        assert calls == ["a", "d"]
        # d was stored by other's fetch: the first stack finds it in memcached.
        assert await cache.get("d") == {"key": "d"}

        await cache.delete("b")
        assert await other.get("b") == "B"  # other's L1 still has it (no bus here)
        assert await memcached_layer.get("b") is None
    finally:
        await cache.aclose()
        await other.aclose()


async def test_tags_through_the_in_memory_index(memcached: MemcachedServer, prefix: str) -> None:
    layer = MemcachedLayer(servers=memcached.address, prefix=prefix)
    cache = CacheStack([MemoryLayer(ttl=60), layer])
    try:
        await cache.set("p:1", 1, tags=["product"])
        await cache.set("p:2", 2, tags=["product", "hot"])
        await cache.set("u:1", "u", tags=["user"])
        assert await cache.invalidate_by_tag("product") == 2
        assert await layer.get("p:1") is None
        assert await layer.get("p:2") is None
        assert (await layer.get("u:1")) is not None
        assert await cache.get("p:2") is None
        assert await cache.get("u:1") == "u"
    finally:
        await cache.aclose()


async def test_clear_is_scoped_to_the_prefix(memcached: MemcachedServer, prefix: str) -> None:
    mine = MemcachedLayer(servers=memcached.address, prefix=prefix)
    neighbour = MemcachedLayer(servers=memcached.address, prefix=prefix + "other:")
    cache = CacheStack([MemoryLayer(ttl=60), mine])
    other_cache = CacheStack([neighbour])
    # Another instance of the same prefix, with the namespace version it saw before the clear
    # (version_reuse=0: it reads the version with every operation, so it sees the clear at
    # once; the default bound is tested in test_memcached_version.py).
    peer = MemcachedLayer(servers=memcached.address, prefix=prefix, version_reuse=0)
    try:
        await cache.set("k", "mine")
        await other_cache.set("k", "theirs")
        assert (await peer.get("k")) is not None
        await cache.clear()
        assert await cache.get("k") is None
        assert await mine.get("k") is None
        assert await peer.get("k") is None  # the peer's read sees the new namespace
        assert await other_cache.get("k") == "theirs"
        # A delete by the peer lands in the current namespace.
        await cache.set("k2", "v")
        await peer.delete("k2")
        assert await mine.get("k2") is None
        await cache.set("k3", "after")
        assert await cache.get("k3") == "after"
        assert (await peer.get("k3")).value == "after"  # type: ignore[union-attr]
    finally:
        await cache.aclose()
        await other_cache.aclose()
        await peer.aclose()


async def test_long_unicode_and_spaced_keys_stay_distinct(
    memcached: MemcachedServer, prefix: str
) -> None:
    layer = MemcachedLayer(servers=memcached.address, prefix=prefix)
    cache = CacheStack([layer])  # no L1: every read goes to memcached
    try:
        for index, key in enumerate(AWKWARD_KEYS):
            await cache.set(key, index)
        for index, key in enumerate(AWKWARD_KEYS):
            assert await cache.get(key) == index, key
        assert await cache.get_many(list(AWKWARD_KEYS)) == list(range(len(AWKWARD_KEYS)))
        # Readable keys are stored as they are; the others under a hash.
        version = memcached.get_raw(f"{prefix}version".encode())
        assert version is not None
        assert version.isdigit()
        assert memcached.get_raw(f"{prefix}{version.decode()}:user:1".encode()) is not None
        assert memcached.get_raw(f"{prefix}{version.decode()}:with space".encode()) is None
    finally:
        await cache.aclose()


def test_sync_stack_end_to_end(memcached: MemcachedServer, prefix: str) -> None:
    """``SyncCacheStack`` swaps ``MemcachedLayer(servers=...)`` for its sync twin; entries
    written by either twin are read by the other."""
    calls: list[str] = []
    async_layer = MemcachedLayer(servers=memcached.address, prefix=prefix)
    cache = SyncCacheStack([MemoryLayer(ttl=60), async_layer])
    other = SyncCacheStack(
        [MemoryLayer(ttl=60), SyncMemcachedLayer(servers=memcached.address, prefix=prefix)]
    )
    try:

        def fetch() -> str:
            calls.append("x")
            return "fetched"

        assert cache.get("s:1", fetch) == "fetched"
        assert other.get("s:1", fetch) == "fetched"
        assert calls == ["x"]
        for index, key in enumerate(AWKWARD_KEYS):
            cache.set(key, index)
        assert other.get_many(list(AWKWARD_KEYS)) == list(range(len(AWKWARD_KEYS)))
        cache.set("t:1", 1, tags=["t"])
        assert cache.invalidate_by_tag("t") == 1
        assert other.get("t:1") is None  # gone from memcached (other never held it)
        cache.clear()
        assert cache.get("s:1") is None
    finally:
        cache.close()
        other.close()


async def test_async_stack_reads_what_the_sync_stack_wrote(
    memcached: MemcachedServer, prefix: str
) -> None:
    sync_cache = SyncCacheStack([SyncMemcachedLayer(servers=memcached.address, prefix=prefix)])
    # version_reuse=0: the other stack's clear is seen at once (by default within a second).
    cache = CacheStack([MemcachedLayer(servers=memcached.address, prefix=prefix, version_reuse=0)])
    try:
        for index, key in enumerate(AWKWARD_KEYS):
            sync_cache.set(key, [index, key])
        assert await cache.get_many(list(AWKWARD_KEYS)) == [
            [index, key] for index, key in enumerate(AWKWARD_KEYS)
        ]
        sync_cache.clear()
        assert await cache.get("user:1") is None
    finally:
        sync_cache.close()
        await cache.aclose()


async def test_several_servers_share_the_keys(own_memcached: MemcachedServer, prefix: str) -> None:
    """Two servers: keys spread over both, and both twins agree on which holds a key."""
    first = own_memcached
    with MemcachedServer.launch(binary=first.binary) as second:
        servers = [first.address, (second.host, second.port)]
        layer = MemcachedLayer(servers=servers, prefix=prefix)
        # version_reuse=0: the other stack's clear is seen at once (by default within a second).
        sync_layer = SyncMemcachedLayer(servers=servers, prefix=prefix, version_reuse=0)
        cache = CacheStack([layer])
        sync_cache = SyncCacheStack([sync_layer])
        try:
            keys = [f"k:{index}" for index in range(60)]
            await cache.set_many([(key, key) for key in keys])
            assert sync_cache.get_many(keys) == keys
            counts = [int(s.stats()["curr_items"]) for s in (first, second)]
            assert all(count >= 10 for count in counts), counts
            await cache.clear()
            assert sync_cache.get_many(keys) == [None] * len(keys)
        finally:
            await cache.aclose()
            sync_cache.close()


async def test_pattern_invalidation_clears_memcached(
    memcached: MemcachedServer, prefix: str, caplog: Any
) -> None:
    """memcached cannot list keys: a pattern or prefix invalidation clears the layer (too much
    is dropped, never too little), with one warning; its other keys are fetched again."""
    import logging

    layer = MemcachedLayer(servers=memcached.address, prefix=prefix)
    cache = CacheStack([MemoryLayer(), layer], graceful_degradation={"retry_after": 60})
    caplog.set_level(logging.WARNING, logger="layercache")
    try:
        await cache.set("user:1", 1)
        await cache.set("other", 2)
        assert await cache.invalidate_by_pattern("user:*") == 1  # the memory layer's count
        assert await layer.get("user:1") is None
        assert await layer.get("other") is None  # cleared with it
        assert await cache.get("user:1") is None
        await cache.invalidate_by_prefix("other")
        status = {s.name: s for s in cache.get_stats().layers}[layer.name]
        assert status.degraded_until is None  # not taken out of service
        warnings = [r for r in caplog.records if "cannot list keys" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        await cache.aclose()


def test_signature_shows_the_constructor() -> None:
    import inspect

    parameters = inspect.signature(MemcachedLayer).parameters
    assert list(parameters)[:5] == ["client", "servers", "ttl", "serializer", "name"]
    assert parameters["prefix"].kind is inspect.Parameter.KEYWORD_ONLY
