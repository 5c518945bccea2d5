"""Batched memcached reads (issue 16): concurrent reads of distinct keys share multi-gets.

``MemcachedLayer.get_batch`` is what the stack's read batching sends (one multi-get per
server): a lone read goes at once with ``get``, reads arriving while one is in flight go
together in the next. Each caller gets its own entry; failures and unreadable values are
reported as operation ``"get"``, as each caller's own read would be (through ``get_many`` they
said ``"get_many"``). ``read_batching``, ``batch_window`` and ``max_batch`` are the options,
as on ``RedisLayer``; the sync twin takes them too. Against a real memcached.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from _memcached_server import MemcachedServer
from layercache import CacheLayerError, CacheStack, SyncCacheStack
from layercache.memcached import MemcachedLayer, SyncMemcachedLayer


class Watched:
    """A memcached layer seen through: records its single and bulk reads."""

    is_local = False

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.default_ttl = inner.default_ttl
        self.reads: list[str] = []
        self.bulk_reads: list[list[str]] = []

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    async def get(self, key: str) -> Any:
        self.reads.append(key)
        return await self.inner.get(key)

    async def get_batch(self, keys: list[str]) -> Any:
        self.bulk_reads.append(list(keys))
        return await self.inner.get_batch(keys)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, exc: BaseException, context: dict[str, Any]) -> None:
        self.calls.append(context)


async def test_concurrent_reads_of_distinct_keys_share_one_multi_get(
    memcached: MemcachedServer, prefix: str
) -> None:
    layer = Watched(MemcachedLayer(servers=memcached.address, prefix=prefix, ttl=60))
    cache = CacheStack([layer])
    try:
        keys = [f"k{i}" for i in range(64)]
        await cache.set_many([(k, {"k": k}) for k in keys])
        got = await asyncio.gather(*(cache.get(k) for k in keys))
        assert got == [{"k": k} for k in keys]
        # The first read went alone; the 63 that came while it was in flight, together.
        assert layer.reads == ["k0"]
        assert layer.bulk_reads == [keys[1:]]
        # Misses and duplicates in a batch: each caller its own answer, a key read once.
        asked = ["k1", "missing", "k2", "k2", "k3"]
        got = await asyncio.gather(*(cache.get(k) for k in asked))
        assert got == [{"k": "k1"}, None, {"k": "k2"}, {"k": "k2"}, {"k": "k3"}]
        assert layer.bulk_reads[-1] == ["missing", "k2", "k3"]
    finally:
        await cache.aclose()


async def test_max_batch_bounds_a_multi_get(memcached: MemcachedServer, prefix: str) -> None:
    layer = Watched(MemcachedLayer(servers=memcached.address, prefix=prefix, max_batch=50))
    cache = CacheStack([layer])
    try:
        keys = [f"k{i}" for i in range(201)]
        await cache.set_many([(k, k) for k in keys])
        assert await asyncio.gather(*(cache.get(k) for k in keys)) == keys
        assert [len(b) for b in layer.bulk_reads] == [50, 50, 50, 50]
    finally:
        await cache.aclose()


async def test_a_failed_multi_get_fails_each_caller_as_its_own_get(
    own_memcached: MemcachedServer, prefix: str
) -> None:
    cache = CacheStack([MemcachedLayer(servers=own_memcached.address, prefix=prefix, timeout=1.0)])
    try:
        keys = [f"k{i}" for i in range(20)]
        await cache.set_many([(k, k) for k in keys])
        own_memcached.kill()
        results = await asyncio.gather(*(cache.get(k) for k in keys), return_exceptions=True)
        batcher = cache._layers.adapters[0].read_batcher
        assert batcher is not None
        assert batcher.batches, "the reads did not go in a batch"
        for result in results:
            assert isinstance(result, CacheLayerError), repr(result)
            # As each caller's own read would have failed (not "get_many").
            assert (result.layer, result.operation) == ("memcached", "get")
            assert result.__cause__ is not None
        assert len({id(r) for r in results}) == len(results)  # one exception per caller
    finally:
        await cache.aclose()


async def test_an_unreadable_value_in_a_batch_is_a_miss_reported_as_get(
    memcached: MemcachedServer, prefix: str
) -> None:
    import aiomcache

    recorder = Recorder()
    inner = MemcachedLayer(servers=memcached.address, prefix=prefix)
    inner.set_error_handler(recorder)
    layer = Watched(inner)
    cache = CacheStack([layer])
    raw = aiomcache.Client(memcached.host, memcached.port)
    try:
        keys = [f"k{i}" for i in range(10)]
        await cache.set_many([(k, k) for k in keys])
        version = inner._version
        assert version is not None
        await raw.set(inner._keys.key(version, "k5"), b"not an entry")
        got = await asyncio.gather(*(cache.get(k) for k in keys))
        assert got == [None if k == "k5" else k for k in keys]
        assert layer.bulk_reads
        assert "k5" in layer.bulk_reads[0]
        assert [(c["key"], c["operation"]) for c in recorder.calls] == [("k5", "get")]
    finally:
        await raw.close()
        await cache.aclose()


async def test_read_batching_off_reads_one_key_per_call(
    memcached: MemcachedServer, prefix: str
) -> None:
    layer = Watched(MemcachedLayer(servers=memcached.address, prefix=prefix, read_batching=False))
    cache = CacheStack([layer])
    try:
        keys = [f"k{i}" for i in range(20)]
        await cache.set_many([(k, k) for k in keys])
        assert await asyncio.gather(*(cache.get(k) for k in keys)) == keys
        assert layer.bulk_reads == []
        assert sorted(layer.reads) == sorted(keys)
    finally:
        await cache.aclose()


def test_batching_options_are_checked_and_passed_to_the_sync_twin() -> None:
    for bad in (
        {"read_batching": "yes"},
        {"batch_window": -1},
        {"batch_window": 1.0},
        {"max_batch": 0},
        {"max_batch": 10_001},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            MemcachedLayer(servers="127.0.0.1:1", **bad)
    layer = MemcachedLayer(
        servers="127.0.0.1:1", read_batching=False, batch_window=0.001, max_batch=64
    )
    assert (layer.read_batching, layer.batch_window, layer.max_batch) == (False, 0.001, 64)
    twin = layer._sync_twin()
    assert isinstance(twin, SyncMemcachedLayer)
    assert (twin.read_batching, twin.batch_window, twin.max_batch) == (False, 0.001, 64)
    twin.close()


def test_threads_share_multi_gets_in_the_sync_stack(
    memcached: MemcachedServer, prefix: str
) -> None:
    cache = SyncCacheStack([MemcachedLayer(servers=memcached.address, prefix=prefix, ttl=60)])
    try:
        keys = [f"k{i}" for i in range(64)]
        cache.set_many([(k, {"k": k}) for k in keys])
        barrier = threading.Barrier(len(keys))
        results: dict[str, Any] = {}

        def read(key: str) -> None:
            barrier.wait(10)
            results[key] = cache.get(key)

        threads = [threading.Thread(target=read, args=(k,)) for k in keys]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not any(t.is_alive() for t in threads)
        assert results == {k: {"k": k} for k in keys}
        batcher = cache._layers.adapters[0].read_batcher
        assert batcher is not None
        assert batcher.batches >= 1, "no read went in a batch"
        # Through the twin's get_batch: a failure would be reported as "get".
        assert callable(getattr(cache._layers.adapters[0].layer, "get_batch", None))
    finally:
        cache.close()
