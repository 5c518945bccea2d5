"""A bus alone propagates deletes (issue 10, point 7).

The seeds' minimal setup, ``invalidation_bus=`` without ``broadcast_l1_invalidation=True``,
used to publish nothing: ``delete`` on instance A left B's L1 copy until its TTL. With a bus,
deletes, invalidations, clears and generation bumps are always announced;
``broadcast_l1_invalidation`` governs only write announcements and defaults to on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from layercache import CacheStack, MemoryLayer, RedisInvalidationBus, RedisLayer

SECRET = "bus-announcements"


class Peer:
    def __init__(self, url: str, **options: Any) -> None:
        self.client = aioredis.from_url(url)
        self.memory = MemoryLayer(name="memory")
        self.stack = CacheStack(
            [self.memory, RedisLayer(client=self.client, prefix="ann:")],
            invalidation_bus=RedisInvalidationBus(
                publisher=self.client, channel="ann:bus", signing_secret=SECRET
            ),
            **options,
        )

    def in_l1(self, key: str) -> bool:
        return self.memory.get(key) is not None


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + 5
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"{what} not met within 5s"
        await asyncio.sleep(0.005)


@pytest.fixture(params=[None, False])
async def peers(redis_clean: Any, request: pytest.FixtureRequest) -> AsyncIterator[list[Peer]]:
    """Two instances with a bus: broadcast_l1_invalidation left out, or explicitly off."""
    options = {} if request.param is None else {"broadcast_l1_invalidation": request.param}
    pair = [Peer(redis_clean.url, **options), Peer(redis_clean.url, **options)]
    async with pair[0].stack, pair[1].stack:
        yield pair
    for peer in pair:
        await peer.client.aclose()


async def cached_in_b(a: Peer, b: Peer, key: str, **options: Any) -> None:
    """``key`` is in Redis and in B's L1 (B wrote it: its own announcements do not reach
    itself, so no message of A's is in flight that could drop it)."""
    await b.stack.set(key, "old", **options)
    assert await a.stack.get(key) == "old"
    assert b.in_l1(key)


async def test_delete_reaches_peer_l1(peers: list[Peer]) -> None:
    a, b = peers
    await cached_in_b(a, b, "user:1")
    await a.stack.delete("user:1")
    await until(lambda: not b.in_l1("user:1"), "B dropped user:1")
    assert await b.stack.get("user:1") is None


async def test_invalidations_and_clear_reach_peer_l1(peers: list[Peer]) -> None:
    a, b = peers
    await cached_in_b(a, b, "t:1", tags=["t"])
    await cached_in_b(a, b, "p:1")
    await cached_in_b(a, b, "x:1")
    await a.stack.invalidate_by_tag("t")
    await until(lambda: not b.in_l1("t:1"), "tag invalidation reached B")
    await a.stack.invalidate_by_prefix("p:")
    await until(lambda: not b.in_l1("p:1"), "prefix invalidation reached B")
    await a.stack.clear()
    await until(lambda: not b.in_l1("x:1"), "clear reached B")


async def test_writes_are_announced_by_default_only(
    peers: list[Peer], request: pytest.FixtureRequest
) -> None:
    a, b = peers
    await cached_in_b(a, b, "user:2")
    await a.stack.set("user:2", "new")
    # The set reached Redis; a delete after it is the marker that B processed A's messages.
    await cached_in_b(a, b, "marker")
    await a.stack.delete("marker")
    await until(lambda: not b.in_l1("marker"), "B heard A's messages")
    broadcast_default = request.node.callspec.params["peers"] is None
    if broadcast_default:
        assert not b.in_l1("user:2")
        assert await b.stack.get("user:2") == "new"
    else:
        assert b.in_l1("user:2")  # writes are not announced with broadcast off
        assert await b.stack.get("user:2") == "old"


async def test_broadcast_without_bus_is_refused() -> None:
    with pytest.raises(ValueError, match="needs an invalidation_bus"):
        CacheStack([MemoryLayer()], broadcast_l1_invalidation=True)
    CacheStack([MemoryLayer()], broadcast_l1_invalidation=False)  # says nothing, is fine
