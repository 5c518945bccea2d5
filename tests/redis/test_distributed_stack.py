"""Several CacheStack instances sharing one Redis: the bus, the shared tag index and the
cross-instance single-flight, end to end through the public API (real redis-server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from layercache import (
    CacheStack,
    MemoryLayer,
    RedisInvalidationBus,
    RedisLayer,
    RedisSingleFlightCoordinator,
    RedisTagIndex,
)

SECRET = "test-secret"


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.01)


class Instance:
    """One service instance: its own clients, memory layer and stack."""

    def __init__(self, url: str, name: str, client: Any = None) -> None:
        self.client = client if client is not None else aioredis.from_url(url)
        self.memory = MemoryLayer(name="memory")
        self.stack = CacheStack(
            [self.memory, RedisLayer(client=self.client, prefix="app:")],
            invalidation_bus=RedisInvalidationBus(
                publisher=self.client, channel="app:invalidation", signing_secret=SECRET
            ),
            broadcast_l1_invalidation=True,
            tag_index=RedisTagIndex(client=self.client, prefix="app:tags"),
            single_flight_coordinator=RedisSingleFlightCoordinator(
                client=self.client, prefix="app:sf"
            ),
            single_flight_timeout=5,
        )
        self.name = name

    async def close(self) -> None:
        await self.stack.aclose()
        await self.client.aclose()


@pytest.fixture(params=["single", "cluster3"])
async def pair(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Instance, Instance]]:
    """Two instances on one Redis server, or on a real 3-master Redis Cluster."""
    if request.param == "single":
        server = request.getfixturevalue("redis_clean")
        a, b = Instance(server.url, "a"), Instance(server.url, "b")
    else:
        cluster = request.getfixturevalue("redis_cluster3")
        cluster.flushall()
        clients = [cluster.async_client(), cluster.async_client()]
        for client in clients:
            await client.initialize()
        a, b = Instance("", "a", clients[0]), Instance("", "b", clients[1])
    async with a.stack, b.stack:  # subscribes both to the bus
        yield a, b
    await a.client.aclose()
    await b.client.aclose()


def in_memory(instance: Instance, key: str) -> bool:
    return instance.memory.get(key) is not None


async def test_a_set_on_one_instance_drops_the_others_l1(pair: tuple[Instance, Instance]) -> None:
    a, b = pair
    heard: list[Any] = []
    b.stack.on("invalidation", heard.append)
    await a.stack.set("profile:1", "old")

    async def b_heard_it() -> bool:
        return bool(heard)

    # A read racing the announcement of a change to the same key does not backfill (it
    # cannot tell which version it read), so read once the announcement has arrived.
    await wait_until(b_heard_it)
    assert await b.stack.get("profile:1") == "old"
    assert in_memory(b, "profile:1")
    await a.stack.set("profile:1", "new")

    async def dropped() -> bool:
        return not in_memory(b, "profile:1")

    await wait_until(dropped)
    assert await b.stack.get("profile:1") == "new"


@pytest.mark.parametrize("operation", ["delete", "tag", "tags_all", "pattern", "prefix", "clear"])
async def test_invalidations_reach_every_instance(
    pair: tuple[Instance, Instance], operation: str
) -> None:
    a, b = pair
    await a.stack.set("post:1", "p1", tags=["posts", "user:7"])
    await a.stack.set("other:1", "o1")
    for instance in (a, b):
        assert await instance.stack.get("post:1") == "p1"
    if operation == "delete":
        await a.stack.delete("post:1")
    elif operation == "tag":
        assert await a.stack.invalidate_by_tag("user:7") == 1
    elif operation == "tags_all":
        assert await a.stack.invalidate_by_tags(["posts", "user:7"], mode="all") == 1
    elif operation == "pattern":
        await a.stack.invalidate_by_pattern("post:*")
    elif operation == "prefix":
        await a.stack.invalidate_by_prefix("post:")
    else:
        await a.stack.clear()

    async def gone_everywhere() -> bool:
        return not in_memory(b, "post:1") and await b.stack.get("post:1") is None

    await wait_until(gone_everywhere)
    if operation != "clear":
        assert await b.stack.get("other:1") == "o1"


async def test_a_fetch_in_flight_when_another_instance_invalidates_is_not_stored(
    pair: tuple[Instance, Instance],
) -> None:
    a, b = pair
    started, release = asyncio.Event(), asyncio.Event()

    async def slow() -> str:
        started.set()
        await release.wait()
        return "fetched-before-delete"

    task = asyncio.create_task(b.stack.get("k", slow))
    await asyncio.wait_for(started.wait(), 5)
    seen: list[Any] = []
    b.stack.on("invalidation", seen.append)
    await a.stack.delete("k")

    async def b_heard_it() -> bool:
        return bool(seen)

    await wait_until(b_heard_it)
    release.set()
    assert await task == "fetched-before-delete"
    assert b.memory.get("k") is None
    assert await b.stack.get("k") is None


async def test_concurrent_cold_gets_on_two_instances_fetch_once(
    pair: tuple[Instance, Instance],
) -> None:
    a, b = pair
    fetches = 0
    release = asyncio.Event()

    async def origin() -> dict[str, int]:
        nonlocal fetches
        fetches += 1
        await release.wait()
        return {"id": 1}

    tasks = [
        asyncio.create_task(instance.stack.get("cold", origin))
        for instance in (a, b)
        for _ in range(25)
    ]
    await asyncio.sleep(0.2)  # let every caller reach the lock or the wait (not a sync point)
    release.set()
    assert await asyncio.wait_for(asyncio.gather(*tasks), 10) == [{"id": 1}] * 50
    assert fetches == 1


async def test_forged_messages_do_not_invalidate(redis_clean: Any) -> None:
    a = Instance(redis_clean.url, "a")
    async with a.stack:
        await a.stack.set("k", "v")
        errors: list[Any] = []
        a.stack.on("error", errors.append)
        raw = aioredis.from_url(redis_clean.url)
        await raw.publish(
            "app:invalidation",
            b'{"source_id":"evil","scope":"keys","operation":"delete","keys":["k"],'
            b'"timestamp":1,"mode":"any"}',
        )

        async def reported() -> bool:
            return bool(errors)

        await wait_until(reported)
        assert in_memory(a, "k")
        await raw.aclose()
    await a.client.aclose()


async def test_generation_bump_is_announced(redis_clean: Any) -> None:
    def make(url: str) -> tuple[CacheStack, Any]:
        client = aioredis.from_url(url)
        stack = CacheStack(
            [MemoryLayer(), RedisLayer(client=client, prefix="gen:")],
            invalidation_bus=RedisInvalidationBus(publisher=client, channel="gen:bus"),
            generation=1,
        )
        return stack, client

    (a, ca), (b, cb) = make(redis_clean.url), make(redis_clean.url)
    async with a, b:
        await a.set("k", "v1")
        assert await b.get("k") == "v1"
        assert await a.bump_generation() >= 2

        async def moved() -> bool:
            return b.get_generation() == a.get_generation()

        await wait_until(moved)
        assert await b.get("k") is None
        # An instance started after the bump finds the generation stored in Redis.
        late, cl = make(redis_clean.url)
        async with late:
            assert late.get_generation() == a.get_generation()
        await cl.aclose()
    await ca.aclose()
    await cb.aclose()


async def test_an_instance_cut_off_from_the_bus_drops_its_l1_on_reconnect(
    redis_clean: Any, redis_proxy: Any
) -> None:
    # The subscriber goes through the proxy; cutting it means this instance may miss
    # invalidations, so after it reconnects its local layers must be empty.
    client = aioredis.from_url(redis_clean.url)
    subscriber = aioredis.from_url(redis_proxy.url)
    memory = MemoryLayer()
    bus = RedisInvalidationBus(
        publisher=client,
        subscriber=subscriber,
        channel="cut:bus",
        health_check_interval=0.2,
        reconnect_backoff=(0.02, 0.2),
    )
    stack = CacheStack(
        [memory, RedisLayer(client=client, prefix="cut:")],
        invalidation_bus=bus,
        broadcast_l1_invalidation=True,
    )
    async with stack:
        await stack.set("k", "v")
        assert memory.get("k") is not None
        redis_proxy.cut("refuse")

        async def lost() -> bool:
            return not bus.is_subscribed

        await wait_until(lost)
        redis_proxy.restore()

        async def dropped() -> bool:
            return bus.is_subscribed and memory.get("k") is None

        await wait_until(dropped)
        assert await stack.get("k") == "v"  # still in Redis: the shared layer is untouched
    await client.aclose()
    await subscriber.aclose()
