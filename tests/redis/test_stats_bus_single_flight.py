"""get_stats() on real Redis: bus messages sent, applied and rejected, and the distributed
single-flight counters (locks won, waits) next to the fetches in flight."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from layercache import (
    BusStatus,
    CacheStack,
    MemoryLayer,
    RedisInvalidationBus,
    RedisLayer,
    RedisSingleFlightCoordinator,
)

SECRET = "stats-bus"


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + 5
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"{what} not met within 5s"
        await asyncio.sleep(0.005)


def peer(client: Any, **options: Any) -> CacheStack:
    return CacheStack(
        [MemoryLayer(), RedisLayer(client=client, prefix="stats:")],
        invalidation_bus=RedisInvalidationBus(
            publisher=client, channel="stats:bus", signing_secret=SECRET
        ),
        **options,
    )


@pytest.fixture
async def client(redis_clean: Any) -> AsyncIterator[Any]:
    connection = aioredis.from_url(redis_clean.url)
    yield connection
    await connection.aclose()


async def test_bus_messages_sent_received_and_rejected(client: Any) -> None:
    a, b = peer(client), peer(client)
    async with a, b:
        assert a.get_stats().bus == BusStatus(True, 0, 0, 0, 0)
        await a.set("k", 1)
        await a.delete("k")
        await a.invalidate_by_tag("t")  # no key carries it: one tags message
        await until(lambda: b.get_stats().metrics.bus_received == 3, "B applied 3 messages")
        assert a.get_stats().bus == BusStatus(True, 0, sent=3, received=0, rejected=0)
        # A forged (unsigned) message and garbage are dropped by B (and by A) and counted.
        await client.publish("stats:bus", b'{"source_id": "x", "scope": "clear"}')
        await client.publish("stats:bus", b"\xff\x00not json")
        await until(lambda: b.get_stats().metrics.bus_rejected == 2, "B rejected 2 messages")
        status = b.get_stats().bus
        assert status is not None
        assert (status.received, status.rejected) == (3, 2)
        assert b.get_stats().metrics.errors_by_operation.get("bus.receive") == 2
        assert b.get_stats().metrics.bus_received == 3


async def test_stack_without_bus_has_no_bus_status() -> None:
    async with CacheStack([MemoryLayer()]) as cache:
        assert cache.get_stats().bus is None


async def test_single_flight_counters_of_two_instances(client: Any) -> None:
    coordinators = [RedisSingleFlightCoordinator(client=client, prefix="stats:sf") for _ in "ab"]
    stacks = [
        CacheStack(
            [MemoryLayer(), RedisLayer(client=client, prefix="stats:")],
            single_flight_coordinator=coordinator,
            single_flight_poll=0.01,
        )
        for coordinator in coordinators
    ]
    started = asyncio.Event()
    release = asyncio.Event()
    calls = 0

    async def slow() -> str:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        return "v"

    try:
        first = asyncio.create_task(stacks[0].get("cold", slow))
        await asyncio.wait_for(started.wait(), 5)
        second = asyncio.create_task(stacks[1].get("cold", slow))
        await until(lambda: coordinators[1].stats.waits == 1, "B waits for A's lease")
        assert stacks[0].get_stats().single_flight.in_flight == 1
        release.set()
        assert await asyncio.gather(first, second) == ["v", "v"]
        assert calls == 1
        won, waited = stacks[0].get_stats().single_flight, stacks[1].get_stats().single_flight
        assert won.distributed
        assert (won.acquired, won.waits, won.in_flight) == (1, 0, 0)
        assert (waited.acquired, waited.waits, waited.shared_hits) == (0, 1, 1)
    finally:
        for stack in stacks:
            await stack.aclose()
