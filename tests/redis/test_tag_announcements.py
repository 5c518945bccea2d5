"""How a bulk tag invalidation is announced on the bus (issue 16).

A bus that says how many keys a message may carry (``RedisInvalidationBus(max_keys=)``, the
same on every instance) gets messages of that many: the 10,000 keys of one invalidation go out
as one message, not ten of 1,000 (each message costs a receiver its own pass, and a change of
up to 1,024 keys is marked key by key in its flight table). Announcements kept while the bus
cannot publish stay in pieces of at most 1,000 keys, so the backlog's bound (in messages) still
bounds the keys it holds.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis

from layercache import (
    CacheEntry,
    CacheStack,
    MemoryLayer,
    RedisInvalidationBus,
    RedisLayer,
    RedisTagIndex,
)
from layercache._async.announcer import Announcer
from layercache._exceptions import CacheLayerError
from layercache._telemetry import Telemetry
from layercache._types import InvalidationMessage
from polling import eventually_async

pytestmark = pytest.mark.redis

CHANNEL = "ann16:bus"


class Instance:
    def __init__(self, client: Any, index: RedisTagIndex, max_keys: int) -> None:
        self.memory = MemoryLayer(max_size=20_000)
        self.stack = CacheStack(
            [self.memory, RedisLayer(client=client, prefix="ann16:")],
            tag_index=index,
            invalidation_bus=RedisInvalidationBus(
                publisher=client, channel=CHANNEL, max_keys=max_keys
            ),
            broadcast_l1_invalidation=False,
        )


@pytest.mark.parametrize("max_keys", [10_000, 700])
async def test_a_bulk_invalidation_goes_out_in_messages_of_the_bus_max_keys(
    redis_clean: Any, max_keys: int
) -> None:
    client = aioredis.from_url(redis_clean.url)
    listener = aioredis.from_url(redis_clean.url)
    index = RedisTagIndex(client, prefix="ann16:idx")
    a, b = Instance(client, index, max_keys), Instance(client, index, max_keys)
    count = 3_000
    keys = [f"item:{i}" for i in range(count)]
    pubsub = listener.pubsub()
    try:
        async with a.stack, b.stack:
            await a.stack.set_many(CacheEntry(k, i, {"tags": ["bulk"]}) for i, k in enumerate(keys))
            await b.stack.get_many(keys)
            assert b.memory.size() == count
            await pubsub.subscribe(CHANNEL)
            assert (await pubsub.get_message(timeout=5))["type"] == "subscribe"
            assert await a.stack.invalidate_by_tag("bulk") == count
            await eventually_async(lambda: b.memory.size() == 0, what="the peer's L1 emptied")
            payloads = 0
            while await pubsub.get_message(timeout=0.5) is not None:
                payloads += 1
            # The tag message, then the keys in messages of max_keys.
            assert payloads == 1 + math.ceil(count / max_keys)
            assert await b.stack.get_many(keys[:50]) == [None] * 50
    finally:
        await pubsub.aclose()
        await listener.aclose()
        await client.aclose()


class FlakyBus:
    """An invalidation bus that fails while ``down`` and records what it published."""

    source_id = "flaky"
    max_keys = 10_000

    def __init__(self) -> None:
        self.down = True
        self.sent: list[InvalidationMessage] = []

    async def publish(self, message: InvalidationMessage) -> None:
        if self.down:
            raise CacheLayerError("bus", "publish", "down")
        self.sent.append(message)


async def test_kept_announcements_hold_at_most_1000_keys_each() -> None:
    bus = FlakyBus()
    announcer = Announcer(
        bus, broadcast=False, telemetry=Telemetry(["memory"], False, False), retry_after=1.0
    )
    keys = [f"k{i}" for i in range(2_500)]
    await announcer.announce("keys", "invalidate", keys)
    assert announcer.pending() == 3  # 1,000 + 1,000 + 500 keys, not one message of 2,500
    kept: Sequence[Any] = [item[1] for item in announcer.backlog.queue]
    assert [len(m.keys) for m in kept] == [1_000, 1_000, 500]
    assert {(m.scope, m.operation) for m in kept} == {("keys", "invalidate")}
    bus.down = False
    await announcer.flush()
    assert announcer.pending() == 0
    assert [k for m in bus.sent for k in m.keys] == keys
    # Once the bus publishes, a bulk change goes out in one message again.
    await announcer.announce("keys", "invalidate", keys)
    assert len(bus.sent[-1].keys) == 2_500
    await asyncio.sleep(0)
