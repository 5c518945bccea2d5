"""Server-assisted invalidation across a Redis Sentinel failover (one master, one replica,
three sentinels): tracking lives on the subscriber's connection to the master, so after
``SENTINEL FAILOVER`` the bus must subscribe on the new master, turn tracking on there, and
the stack must drop its L1 (changes made meanwhile were reported to nobody). A raw client's
write on the new master is then seen. Every wait is bounded polling.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis
from _topology_servers import SentinelSet

from layercache import CacheStack, MemoryLayer, RedisInvalidationBus, RedisLayer, SyncCacheStack
from layercache._codec import EntryCodec
from layercache._entry import Entry
from layercache.redis import SyncRedisInvalidationBus
from polling import eventually, eventually_async

pytestmark = pytest.mark.redis

PREFIX = "tf:"
FAILOVER_DEADLINE = 20.0


def encoded(value: Any) -> bytes:
    now = time.time()
    return EntryCodec().encode(Entry(value, now, now + 300))


def promoted(topology: SentinelSet, node: Any) -> bool:
    return topology.reported_master_ports() == {node.port} and topology.is_master(node)


async def test_tracking_moves_to_the_new_master_after_a_failover(
    fresh_sentinel_set: SentinelSet,
) -> None:
    topology = fresh_sentinel_set
    old, new = topology.master, topology.replica
    memory = MemoryLayer(name="memory")
    bus = RedisInvalidationBus(
        url=topology.url(),
        channel="tf:bus",
        track_prefix=PREFIX,
        health_check_interval=0.25,
        reconnect_backoff=(0.05, 0.5),
    )
    stack = CacheStack(
        [memory, RedisLayer(url=topology.url(), prefix=PREFIX, socket_timeout=1.0)],
        invalidation_bus=bus,
        # The first command after the switch fails ("the master moved"): skip the layer
        # briefly instead of failing the caller, as a production stack would.
        graceful_degradation={"retry_after": 0.25},
    )
    async with stack:
        writer = redis.Redis(host="127.0.0.1", port=old.port, socket_timeout=2)
        writer.set(PREFIX + "k", encoded("v1"))
        await eventually_async(lambda: bus.tracked[1] >= 1, what="the first report")
        assert await stack.get("k") == "v1"
        assert memory.get("k") is not None
        writer.close()

        topology.failover()
        await eventually_async(
            lambda: promoted(topology, new),
            timeout=FAILOVER_DEADLINE,
            what="the replica promoted",
            interval=0.05,
        )
        await eventually_async(
            lambda: memory.get("k") is None and bus.is_tracking,
            timeout=FAILOVER_DEADLINE,
            what="L1 dropped and tracking on again",
        )
        # Tracking now runs on the new master: a raw write there is reported.
        writer = redis.Redis(host="127.0.0.1", port=new.port, socket_timeout=2)
        try:
            before = bus.tracked[1]
            writer.set(PREFIX + "k", encoded("v2"))
            await eventually_async(lambda: bus.tracked[1] > before, what="the report")
            deadline = time.monotonic() + FAILOVER_DEADLINE
            while not (await stack.get("k") == "v2" and memory.get("k") is not None):
                assert time.monotonic() < deadline, "the stack never served v2 from L1"
                await asyncio.sleep(0.01)
            writer.set(PREFIX + "k", encoded("v3"))
            await eventually_async(lambda: memory.get("k") is None, what="tracked on the new one")
            assert await stack.get("k") == "v3"
        finally:
            writer.close()


def test_the_sync_stack_tracks_the_new_master_after_a_failover(
    fresh_sentinel_set: SentinelSet,
) -> None:
    topology = fresh_sentinel_set
    new = topology.replica
    memory = MemoryLayer(name="memory")
    bus = SyncRedisInvalidationBus(
        url=topology.url(),
        channel="tf:bus",
        track_prefix=PREFIX,
        health_check_interval=0.25,
        reconnect_backoff=(0.05, 0.5),
    )
    stack = SyncCacheStack(
        [memory, RedisLayer(url=topology.url(), prefix=PREFIX, socket_timeout=1.0)],
        invalidation_bus=bus,
        # The first command after the switch fails ("the master moved"): skip the layer
        # briefly instead of failing the caller, as a production stack would.
        graceful_degradation={"retry_after": 0.25},
    )
    with stack:
        stack.set("k", "v1")
        eventually(lambda: memory.get("k") is None, what="the echo of our own write")
        assert stack.get("k") == "v1"
        assert memory.get("k") is not None
        topology.failover()
        eventually(
            lambda: promoted(topology, new),
            timeout=FAILOVER_DEADLINE,
            what="the replica promoted",
            interval=0.05,
        )
        eventually(
            lambda: memory.get("k") is None and bus.is_tracking,
            timeout=FAILOVER_DEADLINE,
            what="L1 dropped and tracking on again",
        )
        writer = redis.Redis(host="127.0.0.1", port=new.port, socket_timeout=2)
        try:
            before = bus.tracked[1]
            writer.set(PREFIX + "k", encoded("v2"))
            eventually(lambda: bus.tracked[1] > before, what="the report of a raw write")
            eventually(
                lambda: stack.get("k") == "v2" and memory.get("k") is not None,
                timeout=FAILOVER_DEADLINE,
                what="v2 served from L1",
            )
            writer.set(PREFIX + "k", encoded("v3"))
            eventually(lambda: memory.get("k") is None, what="tracked on the new master")
            assert stack.get("k") == "v3"
        finally:
            writer.close()
