"""Graceful degradation covers the shared tag index and the bus too (real Redis, real proxy)."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

from layercache import (
    CacheStack,
    MemoryLayer,
    RedisInvalidationBus,
    RedisLayer,
    RedisTagIndex,
)


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.02)


def make_stack(url: str, memory: MemoryLayer, client: Any) -> CacheStack:
    return CacheStack(
        [memory, RedisLayer(client=client, prefix="o:")],
        tag_index=RedisTagIndex(client=client, prefix="o:tags"),
        invalidation_bus=RedisInvalidationBus(
            publisher=client, channel="o:bus", health_check_interval=0.2
        ),
        broadcast_l1_invalidation=True,
        graceful_degradation={"retry_after": 0.2},
    )


async def test_a_tag_invalidation_during_an_outage_is_replayed(
    redis_clean: Any, redis_proxy: Any
) -> None:
    client = aioredis.from_url(redis_proxy.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    direct = aioredis.from_url(redis_clean.url)
    memory = MemoryLayer()
    stack = make_stack(redis_proxy.url, memory, client)
    async with stack:
        await stack.set("post:1", "v1", tags=["posts"])
        redis_proxy.cut("refuse")
        # Every operation keeps working through the outage: none raises.
        assert await stack.get("fresh", lambda: "from-origin") == "from-origin"
        await stack.set("post:2", "v2", tags=["posts"])
        await stack.delete("post:9")
        assert await stack.invalidate_by_tag("posts") == 0  # keys unknown until recovery
        assert memory.get("post:1") is None  # local copies dropped at once
        redis_proxy.restore()

        probes = iter(range(10_000))

        async def replayed() -> bool:
            # Traffic drives recovery and replay (a new key each time: L1 hits touch nothing).
            await stack.get(f"probe:{next(probes)}", lambda: 1)
            raw = await direct.get(b"o:post:1")  # a delete leaves a tombstone (\xc1LT...)
            return raw is None or bytes(raw).startswith(b"\xc1LT")

        await wait_until(replayed)
        memory.clear()
        assert await stack.get("post:1") is None  # never resurrected from Redis
    await client.aclose()
    await direct.aclose()


async def test_an_announcement_that_failed_is_sent_after_recovery(
    redis_clean: Any, redis_proxy: Any
) -> None:
    flaky = aioredis.from_url(redis_proxy.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    steady = aioredis.from_url(redis_clean.url)
    memory_a, memory_b = MemoryLayer(), MemoryLayer()
    a = make_stack(redis_proxy.url, memory_a, flaky)
    b = make_stack(redis_clean.url, memory_b, steady)
    async with a, b:
        await b.set("k", "v1")
        assert memory_b.get("k") is not None
        redis_proxy.cut("refuse")
        await a.delete("k")  # cannot reach Redis nor the bus: kept for later
        redis_proxy.restore()

        probes = iter(range(10_000))

        async def b_dropped_it() -> bool:
            await a.set(f"later:{next(probes)}", 1)  # A's next write publishes what it kept
            return memory_b.get("k") is None

        await wait_until(b_dropped_it)
    await flaky.aclose()
    await steady.aclose()
