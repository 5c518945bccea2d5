"""A burst of concurrent callers of one key shares one read of the lower layers and one
fetch (issue 10, point 1a), on the default pool of a ``RedisLayer`` built from ``url=``.

Before the fix, every caller read Redis before callers were merged: 400 cold callers made 400
``GET``s at once, and redis-py's asyncio pool refused the 101st connection
(``MaxConnectionsError`` as ``CacheLayerError``).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import redis

from layercache import CacheStack, MemoryLayer, RedisLayer, SyncCacheStack

BURST = 400


def redis_gets(url: str) -> int:
    """How many GET commands the server has executed (INFO commandstats)."""
    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
        return int(stats.get("cmdstat_get", {}).get("calls", 0))
    finally:
        client.close()


async def test_400_cold_callers_one_read_one_fetch(redis_clean: Any) -> None:
    stack = CacheStack([MemoryLayer(), RedisLayer(url=redis_clean.url, prefix="burst:")])
    calls = 0
    release = asyncio.Event()

    async def origin() -> dict[str, int]:
        nonlocal calls
        calls += 1
        await asyncio.wait_for(release.wait(), 10)
        return {"id": 1}

    redis_clean.flushall()
    before = redis_gets(redis_clean.url)
    try:
        tasks = [asyncio.create_task(stack.get("user:1", origin)) for _ in range(BURST)]
        # Every caller is queued on the shared read or fetch before the origin answers.
        deadline = asyncio.get_running_loop().time() + 10
        while stack.get_metrics().stampede_dedupes < BURST - 1:
            assert asyncio.get_running_loop().time() < deadline, stack.get_metrics()
            await asyncio.sleep(0.005)
        release.set()
        results = await asyncio.gather(*tasks)
    finally:
        await stack.aclose()
    assert results == [{"id": 1}] * BURST
    assert calls == 1
    assert redis_gets(redis_clean.url) - before == 1  # one read of Redis for the whole burst


async def test_400_concurrent_l2_hits_of_one_key_share_one_read(redis_clean: Any) -> None:
    writer = CacheStack([RedisLayer(url=redis_clean.url, prefix="burst:")])
    await writer.set("hot", [1, 2, 3])
    await writer.aclose()
    stack = CacheStack([MemoryLayer(), RedisLayer(url=redis_clean.url, prefix="burst:")])
    before = redis_gets(redis_clean.url)
    try:
        results = await asyncio.gather(*(stack.get("hot") for _ in range(BURST)))
    finally:
        await stack.aclose()
    assert results == [[1, 2, 3]] * BURST
    assert redis_gets(redis_clean.url) - before == 1
    assert stack.get_metrics().hits == BURST


async def test_a_cancelled_leader_does_not_cancel_its_followers(redis_clean: Any) -> None:
    stack = CacheStack([MemoryLayer(), RedisLayer(url=redis_clean.url, prefix="burst:")])
    started = asyncio.Event()
    release = asyncio.Event()

    async def origin() -> str:
        started.set()
        await asyncio.wait_for(release.wait(), 10)
        return "value"

    try:
        leader = asyncio.create_task(stack.get("k", origin))
        await asyncio.sleep(0)  # the leader starts the shared read
        followers = [asyncio.create_task(stack.get("k", origin)) for _ in range(20)]
        await asyncio.wait_for(started.wait(), 10)
        leader.cancel()
        release.set()
        assert await asyncio.gather(*followers) == ["value"] * 20
        with pytest.raises(asyncio.CancelledError):
            await leader
    finally:
        await stack.aclose()


def test_sync_burst_of_threads_one_read_one_fetch(redis_clean: Any, fast_switching: None) -> None:
    threads_count = 64
    stack = SyncCacheStack([MemoryLayer(), RedisLayer(url=redis_clean.url, prefix="burst:")])
    calls = 0
    lock = threading.Lock()
    barrier = threading.Barrier(threads_count)
    results: list[Any] = []
    errors: list[BaseException] = []

    def origin() -> str:
        nonlocal calls
        with lock:
            calls += 1
        return "v"

    def caller() -> None:
        try:
            barrier.wait(10)
            value = stack.get("cold", origin)
            with lock:
                results.append(value)
        except BaseException as exc:  # reported below
            errors.append(exc)

    before = redis_gets(redis_clean.url)
    try:
        threads = [threading.Thread(target=caller) for _ in range(threads_count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        stack.close()
    assert not errors
    assert results == ["v"] * threads_count
    assert calls == 1
    assert redis_gets(redis_clean.url) - before <= 1
