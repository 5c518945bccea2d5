"""A read that can start no fetch (``get`` without a fetcher) reads the Redis layer plainly: no
lease, so no ``TIME`` command to measure the server clock for one. A read with a fetcher still
takes its lease (a fetch after a miss stores only if nothing changed since). Both stacks, on a
real server, counted by the server's ``INFO commandstats``."""

from __future__ import annotations

from typing import Any

import redis

from layercache import CacheStack, RedisLayer, SyncCacheStack


def commands(url: str, name: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
        return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
    finally:
        client.close()


async def test_a_read_without_a_fetcher_takes_no_lease(redis_clean: Any) -> None:
    stack = CacheStack([RedisLayer(url=redis_clean.url, prefix="plain:")])
    try:
        await stack.set("k", 1)
        times = commands(redis_clean.url, "time")
        gets = commands(redis_clean.url, "get")
        for _ in range(5):
            assert await stack.get("k") == 1
        assert await stack.get("absent") is None
        assert commands(redis_clean.url, "get") - gets == 6
        assert commands(redis_clean.url, "time") == times  # no clock measured: no lease

        async def origin() -> int:
            return 2

        assert await stack.get("other", origin) == 2  # a miss with a fetcher: leased
        assert commands(redis_clean.url, "time") > times
    finally:
        await stack.aclose()


def test_sync_a_read_without_a_fetcher_takes_no_lease(redis_clean: Any) -> None:
    stack = SyncCacheStack([RedisLayer(url=redis_clean.url, prefix="plain:")])
    try:
        stack.set("k", 1)
        times = commands(redis_clean.url, "time")
        for _ in range(5):
            assert stack.get("k") == 1
        assert stack.get("absent") is None
        assert commands(redis_clean.url, "time") == times
        assert stack.get("other", lambda: 2) == 2
        assert commands(redis_clean.url, "time") > times
    finally:
        stack.close()
