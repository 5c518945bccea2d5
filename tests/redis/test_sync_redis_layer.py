"""SyncRedisLayer (the generated sync twin of RedisLayer) and SyncCacheStack over a real Redis.

The server comes from tests/conftest.py (``redis_server`` / ``redis_clean``).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.exceptions

from _redis_server import RedisServer
from layercache import CacheLayerError, CacheStack, MemoryLayer, SyncCacheStack
from layercache._codec import MAGIC, CorruptEntryError
from layercache.redis import RedisLayer, SyncRedisLayer
from layercache.redis._lease import TOMBSTONE_MAGIC
from layercache.testing import run_layer_contract

pytestmark = pytest.mark.redis

PREFIX = "s:"
_prefixes = itertools.count()


@pytest.fixture
def sync_client(redis_clean: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(host=redis_clean.host, port=redis_clean.port)
    try:
        yield client
    finally:
        client.close()


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        time.sleep(0.002)


# -- construction: one class for both stacks ---------------------------------------------


def test_a_sync_client_makes_a_sync_layer(sync_client: redis.Redis) -> None:
    layer: Any = RedisLayer(client=sync_client, prefix=PREFIX, name="r", ttl=30)
    assert type(layer) is SyncRedisLayer
    assert (layer.name, layer.prefix, layer.default_ttl) == ("r", PREFIX, 30.0)
    assert layer.client is sync_client
    assert layer.is_blocking is True
    assert not layer.is_local


def test_sync_stack_builds_a_sync_twin_of_a_url_layer(redis_clean: RedisServer) -> None:
    source = RedisLayer(url=redis_clean.url, prefix=PREFIX, name="shared", ttl=42)
    with SyncCacheStack([MemoryLayer(), source]) as cache:
        cache.set("k", {"v": 1})
        twin = cache._layers.adapters[1].layer
        assert type(twin) is SyncRedisLayer
        assert (twin.name, twin.prefix, twin.default_ttl) == ("shared", PREFIX, 42.0)
        assert isinstance(twin.client, redis.Redis)
    # The value went through the twin (the stack closed it, and with it its own client).
    probe = redis.Redis(host=redis_clean.host, port=redis_clean.port)
    try:
        assert probe.exists(b"s:k") == 1
    finally:
        probe.close()


def test_sync_stack_refuses_a_layer_on_an_asyncio_client(redis_clean: RedisServer) -> None:
    layer = RedisLayer(client=redis.asyncio.Redis(port=redis_clean.port))
    with pytest.raises(TypeError, match="asyncio client"):
        SyncCacheStack([MemoryLayer(), layer])


def test_sync_layer_validates_like_the_async_one(sync_client: redis.Redis) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        SyncRedisLayer()
    with pytest.raises(ValueError, match="control character"):
        SyncRedisLayer(client=sync_client, prefix="a\nb")
    with pytest.raises(ValueError, match="decode_responses"):
        RedisLayer(client=redis.Redis(decode_responses=True))


async def test_the_async_stack_runs_a_sync_layer_in_threads(sync_client: redis.Redis) -> None:
    layer: Any = RedisLayer(client=sync_client, prefix=PREFIX)
    cache = CacheStack([layer])
    await cache.set("k", [1, 2])
    assert await cache.get("k") == [1, 2]
    await cache.aclose()


# -- the layer contract --------------------------------------------------------------------


async def test_layer_contract(sync_client: redis.Redis) -> None:
    def factory() -> SyncRedisLayer:
        return SyncRedisLayer(client=sync_client, prefix=f"contract{next(_prefixes)}:")

    report = await run_layer_contract(factory)
    assert not report.failed
    assert not report.skipped, report.skipped


async def test_layer_contract_with_an_owned_client(redis_clean: RedisServer) -> None:
    def factory() -> SyncRedisLayer:
        return SyncRedisLayer(url=redis_clean.url, prefix=f"owned{next(_prefixes)}:")

    report = await run_layer_contract(factory, large_value_size=0)
    assert not report.failed


# -- SyncCacheStack with memory + redis --------------------------------------------------


@pytest.fixture
def stack(redis_clean: RedisServer) -> Iterator[SyncCacheStack]:
    cache = SyncCacheStack([MemoryLayer(), RedisLayer(url=redis_clean.url, prefix=PREFIX)])
    try:
        yield cache
    finally:
        cache.close()


def test_get_set_delete_through_both_layers(
    stack: SyncCacheStack, sync_client: redis.Redis
) -> None:
    calls = []

    def fetch() -> dict[str, int]:
        calls.append(1)
        return {"a": 1}

    assert stack.get("k", fetch) == {"a": 1}
    assert stack.get("k", fetch) == {"a": 1}
    assert len(calls) == 1
    assert sync_client.exists(b"s:k") == 1
    stack.set("j", "value")
    assert sync_client.exists(b"s:j") == 1
    stack.delete("k")
    # With leases on (the default) a delete leaves a tombstone for lease_ttl, not an empty key.
    assert sync_client.get(b"s:k").startswith(TOMBSTONE_MAGIC)
    assert stack.get("k") is None


def test_redis_hit_backfills_memory(redis_clean: RedisServer, stack: SyncCacheStack) -> None:
    stack.set("k", 7)
    # A second instance (fresh memory) reads it from Redis, then from its own L1.
    with SyncCacheStack([MemoryLayer(), RedisLayer(url=redis_clean.url, prefix=PREFIX)]) as other:
        assert other.get("k") == 7
        assert other._layers.adapters[0].layer.get("k") is not None


def test_get_many_and_set_many(stack: SyncCacheStack) -> None:
    stack.set_many([("a", 1), ("b", 2)])
    assert stack.get_many(["a", "missing", "b"]) == [1, None, 2]


def test_invalidate_by_tag_and_pattern(stack: SyncCacheStack, sync_client: redis.Redis) -> None:
    stack.set("user:1", 1, tags=["users"])
    stack.set("user:2", 2, tags=["users"])
    stack.set("post:1", 3)
    stack.invalidate_by_tag("users")
    assert stack.get("user:1") is None
    assert stack.get("user:2") is None
    assert stack.get("post:1") == 3
    stack.set("user:3", 4)
    stack.invalidate_by_pattern("post:*")
    assert stack.get("post:1") is None
    assert stack.get("user:3") == 4
    # The tag's deletes left tombstones, invalidate_by_pattern its all-fence (fences hold a
    # server time); post:1 was removed by the pattern, and user:3 is the only value.
    stored = {raw: sync_client.get(raw) for raw in sync_client.keys(b"s:*")}
    fences = {raw: value for raw, value in stored.items() if raw.startswith(b"s:\x00fence:")}
    assert {raw: value[:3] for raw, value in stored.items() if raw not in fences} == {
        b"s:user:1": TOMBSTONE_MAGIC,
        b"s:user:2": TOMBSTONE_MAGIC,
        b"s:user:3": MAGIC,
    }
    assert b"s:\x00fence:all" in fences
    assert all(value.isdigit() for value in fences.values())


def test_32_threads_on_a_cold_key_cause_one_fetch(stack: SyncCacheStack) -> None:
    calls = 0
    gate = threading.Event()

    def fetch() -> int:
        nonlocal calls
        calls += 1
        gate.wait(5)
        return 42

    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(stack.get("cold", fetch))) for _ in range(32)
    ]
    for thread in threads:
        thread.start()
    wait_until(lambda: stack.get_metrics().stampede_dedupes == 31)
    gate.set()
    for thread in threads:
        thread.join(5)
    assert results == [42] * 32
    assert calls == 1


def test_threads_share_the_layer_safely(stack: SyncCacheStack) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(50):
                stack.set(f"t{n}:{i}", i)
                assert stack.get(f"t{n}:{i}") == i
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == []


def test_corrupt_bytes_read_as_a_miss_and_emit_an_error_event(
    redis_clean: RedisServer, sync_client: redis.Redis
) -> None:
    with SyncCacheStack([RedisLayer(url=redis_clean.url, prefix=PREFIX)]) as cache:
        seen: list[Any] = []
        cache.on("error", seen.append)
        sync_client.set(b"s:bad", b"not an entry")
        assert cache.get("bad") is None
        assert cache.get("bad", lambda: "fetched") == "fetched"
        assert seen[0]["context"] == {"layer": "redis", "key": "bad", "operation": "get"}
        assert isinstance(seen[0]["error"], CorruptEntryError)
    # The fetched value replaced the foreign bytes.
    assert sync_client.get(b"s:bad") != b"not an entry"


def test_server_down_is_a_layer_error_in_strict_mode(redis_server: RedisServer) -> None:
    if not redis_server.is_running:
        redis_server.start()
    cache = SyncCacheStack([MemoryLayer(), RedisLayer(url=redis_server.url, prefix=PREFIX)])
    try:
        cache.set("warm", 1)
        redis_server.stop()
        try:
            with pytest.raises(CacheLayerError) as info:
                cache.get("cold", lambda: 1)
            assert info.value.layer == "redis"
            assert isinstance(info.value.__cause__, redis.exceptions.RedisError | OSError)
        finally:
            redis_server.start()
    finally:
        cache.close()


def test_server_down_falls_through_with_graceful_degradation(redis_server: RedisServer) -> None:
    if not redis_server.is_running:
        redis_server.start()
    cache = SyncCacheStack(
        [MemoryLayer(), RedisLayer(url=redis_server.url, prefix=PREFIX)],
        graceful_degradation={"retry_after": 60},
        write_policy="best-effort",
    )
    try:
        redis_server.stop()
        try:
            assert cache.get("cold", lambda: "from-fetcher") == "from-fetcher"
            assert cache.get("cold") == "from-fetcher"  # served by memory
            statuses = {s.name: s.degraded_until for s in cache.get_stats().layers}
            assert statuses["redis"] is not None
        finally:
            redis_server.start()
    finally:
        cache.close()
