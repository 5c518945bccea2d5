"""Recovery after outages of the bus and the shared tag index (issue 11, points 2, 3, 4, 6).

Real Redis, real TCP proxy: the component under test reaches Redis through the proxy, the rest
directly, so that exactly one thing is cut off at a time.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from layercache import (
    CacheStack,
    MemoryLayer,
    RedisInvalidationBus,
    RedisLayer,
    RedisTagIndex,
)

pytestmark = pytest.mark.redis

CHANNEL = "rr:bus"


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.02)


async def value_gone(redis_client: Any, raw_key: bytes) -> bool:
    """No value under the key: absent, or a deletion's tombstone (see RedisLayer)."""
    raw = await redis_client.get(raw_key)
    return raw is None or bytes(raw).startswith(b"\xc1LT")


def indexed_stack(c: Any, index_client: Any, *, retry_after: float) -> CacheStack:
    """Memory + Redis on ``c``, the shared tag index on ``index_client`` (a proxied client
    cuts off the index alone), graceful degradation."""
    return CacheStack(
        [MemoryLayer(), RedisLayer(client=c, prefix="rr:")],
        tag_index=RedisTagIndex(client=index_client, prefix="rr:tags"),
        graceful_degradation={"retry_after": retry_after},
    )


def client(url: str) -> Any:
    return aioredis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)


async def test_concurrent_flushes_publish_each_kept_announcement_once_in_order(
    redis_clean: Any, redis_proxy: Any
) -> None:
    """Two writes flushing the kept announcements together published the head twice and
    another one never, and the last caller got ``IndexError: pop from an empty deque``."""
    direct = client(redis_clean.url)
    flaky = client(redis_proxy.url)  # only the bus's publisher goes through the proxy
    listener = client(redis_clean.url)
    stack = CacheStack(
        [MemoryLayer(), RedisLayer(client=direct, prefix="rr:")],
        invalidation_bus=RedisInvalidationBus(
            publisher=flaky, subscriber=direct, channel=CHANNEL, health_check_interval=0.2
        ),
        graceful_degradation={"retry_after": 0.2},
    )
    pubsub = listener.pubsub()
    await pubsub.subscribe(CHANNEL)
    await pubsub.get_message(timeout=1.0)  # the subscribe confirmation
    try:
        async with stack:
            await stack.set("warm", 1)
            redis_proxy.cut("refuse")
            kept = [f"gone:{i}" for i in range(6)]
            for key in kept:
                await stack.delete(key)  # applied; the announcement is kept
            redis_proxy.restore()
            # Eight writes at once: every one of them finds kept announcements to flush.
            await asyncio.gather(*(stack.delete(f"after:{i}") for i in range(8)))

            seen: list[str] = []

            async def all_heard() -> bool:
                message = await pubsub.get_message(timeout=0.05)
                while message is not None:
                    if message["type"] == "message":
                        seen.extend(json.loads(message["data"])["keys"])
                    message = await pubsub.get_message(timeout=0.01)
                return all(f"after:{i}" in seen for i in range(8))

            await wait_until(all_heard)
            heard_kept = [key for key in seen if key.startswith("gone:")]
            assert heard_kept == kept  # each once, oldest first
            assert not stack._announcer.pending()
    finally:
        await pubsub.aclose()
        for c in (direct, flaky, listener):
            await c.aclose()


async def test_reconnect_drops_l1_before_it_flushes_kept_announcements(
    redis_clean: Any, redis_proxy: Any
) -> None:
    """On reconnect the kept announcements were flushed first; a publisher hanging on a
    blackholed connection kept L1 serving values changed elsewhere for the whole flush."""
    direct = client(redis_clean.url)
    flaky = aioredis.from_url(redis_proxy.url, socket_timeout=5.0, socket_connect_timeout=5.0)
    memory = MemoryLayer()
    stack = CacheStack(
        [memory, RedisLayer(client=direct, prefix="rr:")],
        invalidation_bus=RedisInvalidationBus(
            publisher=flaky, subscriber=direct, channel=CHANNEL, health_check_interval=0.2
        ),
        graceful_degradation={"retry_after": 0.2},
    )
    reconnected = asyncio.Event()
    try:
        async with stack:
            await stack.set("warm", 1)
            redis_proxy.cut("refuse")
            await stack.delete("gone")  # kept: there is something to flush on reconnect
            assert stack._announcer.pending()
            redis_proxy.cut("blackhole")  # the flush will now hang for socket_timeout
            await stack.set("held", "old")
            assert memory.get("held") is not None
            original = stack._link._on_reconnect

            async def observed() -> None:
                reconnected.set()
                await original()

            stack._link._on_reconnect = observed  # type: ignore[method-assign]
            bus = stack._link.bus
            bus._on_reconnect = observed  # the bus holds the bound method it was started with
            # Cut the subscriber's connection from the server side: it reconnects.
            await direct.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
            await asyncio.wait_for(reconnected.wait(), 10.0)

            async def dropped() -> bool:
                return memory.get("held") is None

            await wait_until(dropped, timeout=2.0)  # well before the 5 s flush gives up
            redis_proxy.restore()
    finally:
        redis_proxy.restore()
        for c in (direct, flaky):
            await c.aclose()


async def test_a_replayed_tag_invalidation_is_announced(redis_clean: Any, redis_proxy: Any) -> None:
    """A tag invalidation made while the shared index was down was replayed on recovery,
    but the keys it resolved were never announced: other instances kept them in L1."""
    direct_a = client(redis_clean.url)
    flaky = client(redis_proxy.url)  # A's tag index only
    direct_b = client(redis_clean.url)
    memory_a, memory_b = MemoryLayer(), MemoryLayer()

    def stack(memory: MemoryLayer, c: Any, index_client: Any) -> CacheStack:
        return CacheStack(
            [memory, RedisLayer(client=c, prefix="rr:")],
            tag_index=RedisTagIndex(client=index_client, prefix="rr:tags"),
            invalidation_bus=RedisInvalidationBus(
                publisher=c, channel=CHANNEL, health_check_interval=0.2
            ),
            broadcast_l1_invalidation=False,  # writes are not announced: B keeps its copy
            graceful_degradation={"retry_after": 0.2},
        )

    a = stack(memory_a, direct_a, flaky)
    b = stack(memory_b, direct_b, direct_b)
    try:
        async with a, b:
            await a.set("post:1", "v1", tags=["posts"])
            assert await b.get("post:1") == "v1"
            assert memory_b.get("post:1") is not None
            redis_proxy.cut("refuse")
            assert await a.invalidate_by_tag("posts") == 0  # the index is out of reach
            redis_proxy.restore()
            probes = iter(range(10_000))

            async def b_dropped_it() -> bool:
                await a.get(f"probe:{next(probes)}", lambda: 1)  # drives A's recovery
                return memory_b.get("post:1") is None

            await wait_until(b_dropped_it)
            assert await value_gone(direct_a, b"rr:post:1")
    finally:
        for c in (direct_a, flaky, direct_b):
            await c.aclose()


async def test_a_read_heavy_outage_does_not_fence_redis(redis_clean: Any, redis_proxy: Any) -> None:
    """Refills (fetch stores) skipped during a Redis outage counted as missed operations:
    past 10,000 of them the layer was fenced and recovery cleared the whole Redis prefix."""
    flaky = client(redis_proxy.url)
    direct = client(redis_clean.url)
    memory = MemoryLayer(max_size=100)
    redis_layer = RedisLayer(client=flaky, prefix="rr:")
    stack = CacheStack(
        [memory, redis_layer],
        tag_index=RedisTagIndex(client=flaky, prefix="rr:tags"),
        graceful_degradation={"retry_after": 0.2},
    )
    try:
        async with stack:
            await stack.set("keep", "v", tags=["t"])
            redis_proxy.cut("refuse")
            for i in range(12_000):  # distinct keys, each fetched and stored in L1 only
                assert await stack.get(f"read:{i}", lambda i=i: i, tags=["t"]) == i
            for _ in range(12_000):  # one key changed many times: one entry
                await stack.delete("hot")
            adapter = stack._layers.adapters[1]
            assert not adapter.backlog.fenced
            assert adapter.backlog.size == 1, list(adapter.backlog.queue)[:5]
            assert not stack._writer.tags.missed_shared
            redis_proxy.restore()
            probes = iter(range(10_000))

            async def recovered() -> bool:
                await stack.get(f"probe:{next(probes)}", lambda: 1, tags=["t"])
                return adapter.degraded_until is None and not stack._writer.tags.down

            await wait_until(recovered)
            assert await direct.exists(b"rr:keep") == 1  # Redis was not cleared
            memory.clear()
            assert await stack.get("keep") == "v"
            assert await stack.invalidate_by_tag("t") >= 1
            assert await value_gone(direct, b"rr:keep")
    finally:
        for c in (flaky, direct):
            await c.aclose()


async def test_kept_announcements_stay_bounded_while_the_bus_is_down(
    redis_clean: Any, redis_proxy: Any
) -> None:
    """With announcements already kept, later ones were appended without the bound: 2,416
    piled up in the chaos suite's memory test against the documented 1,000."""
    direct = client(redis_clean.url)
    flaky = client(redis_proxy.url)
    stack = CacheStack(
        [MemoryLayer(), RedisLayer(client=direct, prefix="rr:")],
        invalidation_bus=RedisInvalidationBus(
            publisher=flaky, subscriber=direct, channel=CHANNEL, health_check_interval=0.2
        ),
        graceful_degradation={"retry_after": 0.2},
    )
    try:
        async with stack:
            await stack.set("warm", 1)
            redis_proxy.cut("refuse")
            for i in range(2_500):
                await stack.delete(f"gone:{i}")
                assert stack._announcer.pending() <= 1_000
            redis_proxy.restore()
    finally:
        for c in (direct, flaky):
            await c.aclose()


@pytest.mark.parametrize("removal", ["delete", "pattern", "clear"])
async def test_a_removal_missed_by_the_index_never_erases_a_newer_record(
    redis_clean: Any, redis_proxy: Any, removal: str
) -> None:
    """A removal made while A's tag index was out of reach was replayed after B had written
    the key again: it erased B's record, and B's value escaped the next invalidation of its
    tag (found by the chaos suite)."""
    direct_a = client(redis_clean.url)
    flaky = client(redis_proxy.url)  # A's tag index only
    direct_b = client(redis_clean.url)

    a = indexed_stack(direct_a, flaky, retry_after=0.2)
    b = indexed_stack(direct_b, direct_b, retry_after=0.2)
    try:
        async with a, b:
            await b.set("k:12", {"v": 1}, tags=["t1"])
            redis_proxy.cut("refuse")
            if removal == "delete":
                await a.delete("k:12")
            elif removal == "pattern":
                await a.invalidate_by_pattern("k:1*")
            else:
                await a.clear()
            redis_proxy.restore()
            await b.set("k:12", {"v": 2}, tags=["t1"])  # newer than A's removal
            probes = iter(range(10_000))

            async def index_back() -> bool:
                await a.set(f"probe:{next(probes)}", 1, tags=["x"])  # drives A's replay
                return not a._writer.tags.down

            await wait_until(index_back)
            assert await b.invalidate_by_tag("t1") == 1
            assert await value_gone(direct_b, b"rr:k:12")
            assert await b.get("k:12") is None
    finally:
        for c in (direct_a, flaky, direct_b):
            await c.aclose()


async def test_a_tagged_write_the_index_cannot_take_stays_out_of_redis(
    redis_clean: Any, redis_proxy: Any
) -> None:
    """With A's tag index out of reach (Redis itself answering), A's tagged write went to
    Redis while its record waited for the index: B's invalidation of the tag could not see it,
    and the value outlived it (found by the chaos suite's index watch)."""
    direct_a = client(redis_clean.url)
    flaky = client(redis_proxy.url)  # A's tag index only
    direct_b = client(redis_clean.url)

    a = indexed_stack(direct_a, flaky, retry_after=5)
    b = indexed_stack(direct_b, direct_b, retry_after=5)
    try:
        async with a, b:
            redis_proxy.cut("refuse")
            await a.set("k", "old", tags=["t"])  # the index is down: A keeps it in L1 only
            await b.invalidate_by_tag("t")
            assert await b.get("k", lambda: "fresh", tags=["t"]) == "fresh"
    finally:
        redis_proxy.restore()
        for c in (direct_a, flaky, direct_b):
            await c.aclose()
