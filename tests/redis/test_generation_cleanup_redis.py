"""``generation_cleanup`` on a real Redis: the old generation is deleted ``batch_size`` keys per
``UNLINK`` (counted in Redis's own command stats), the new generation is left alone."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio

from layercache import CacheStack, MemoryLayer
from layercache.redis import RedisLayer

pytestmark = pytest.mark.redis


async def wait_until(condition: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Bounded polling of an async condition (the cleanup runs in the background)."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError("the old generation was not deleted in time")
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("batch_size", [100, 64])
async def test_cleanup_unlinks_batch_size_keys_per_command(
    redis_client: Any, batch_size: int
) -> None:
    layer = RedisLayer(client=redis_client, prefix="gc:")
    cache = CacheStack(
        [MemoryLayer(), layer], generation=1, generation_cleanup={"batch_size": batch_size}
    )
    async with cache:
        await cache.set_many((f"k{i}", i) for i in range(1000))
        await cache.set("k0", "stays in generation 1 until the cleanup")
        await redis_client.config_resetstat()
        await cache.bump_generation()
        await cache.set_many((f"k{i}", -i) for i in range(10))

        async def old_generation_gone() -> bool:
            return not [k async for k in redis_client.scan_iter(match=b"gc:v1:*")]

        await wait_until(old_generation_gone)
        stats = await redis_client.info("commandstats")
        # One UNLINK per batch (the ten new-generation writes are SETs in one pipeline).
        assert int(stats["cmdstat_unlink"]["calls"]) == math.ceil(1000 / batch_size)
        assert sorted(await layer.keys()) == sorted(f"v2:k{i}" for i in range(10))
        assert await cache.get("k3") == -3


async def test_cleanup_on_a_cluster(redis_cluster3_client: Any) -> None:
    layer = RedisLayer(client=redis_cluster3_client, prefix="gc:")
    cache = CacheStack([MemoryLayer(), layer], generation=1, generation_cleanup={"batch_size": 50})
    async with cache:
        await cache.set_many((f"k{i}", i) for i in range(300))
        await cache.bump_generation()
        await cache.set("k1", "new")

        async def old_generation_gone() -> bool:
            return await layer.keys() == ["v2:k1"]

        await wait_until(old_generation_gone)
    assert isinstance(redis_cluster3_client, redis.asyncio.RedisCluster)
