"""A tagged value in Redis that the shared tag index does not know, after an index outage.

Found while looking into a report of ``tests/chaos/test_consistency.py`` ("k:33 held v87 in
Redis, listed under neither of its tags"). That report itself was the index watch's own
false finding (its two looks fell in two different legitimate moments of the key: a
``set_many``'s write-then-record and a later invalidation's forget-then-delete; see
``_chaos_workload.IndexWatch``). These are two real ways to the same state, each a defect:

* **A replayed invalidation whose removal failed after it ran.** An instance whose index was
  out of service remembers its ``invalidate_by_tag`` and replays it later: it resolves the
  tag's keys (now including one another instance wrote meanwhile), forgets them in the index,
  and then hands them to the writer to delete. When the removal's reply was lost (a reset, or
  a timeout on a stalled link whose bytes the server got later), the replay stopped with the
  keys forgotten and their values in place, and the retried replay no longer found them: the
  value stayed in Redis, out of reach of every later ``invalidate_by_tag``.
* **``set_many`` while its own index is out of service.** ``set`` keeps a tagged value the
  index could not record out of the shared layers (its copies there go); ``set_many`` left
  them in Redis, unknown to the index until its records were replayed, and an invalidation
  of their tags by another instance meanwhile missed them.

Real Redis, real TCP proxy: the component cut off reaches Redis through the proxy, the rest
directly. The removal's lost reply is a real stall: the proxy holds the bytes, the client
times out (and its one retry fails), and the server runs the removal when the link comes back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from layercache import CacheEntry, CacheStack, MemoryLayer, RedisLayer, RedisTagIndex
from polling import eventually_async

T = TypeVar("T")

pytestmark = pytest.mark.redis

PREFIX = "ui:"
INDEX = "ui:tags"
TIMEOUT = 0.3  # the proxied client's socket timeout
WAIT = 10.0


def client(url: str, timeout: float = 5.0) -> Any:
    """As docs/distributed.md's clients: short timeouts, one quick retry."""
    return aioredis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), retries=1),
    )


def stack(layer_client: Any, index: RedisTagIndex, *, retry_after: float = 0.2) -> CacheStack:
    return CacheStack(
        [MemoryLayer(), RedisLayer(client=layer_client, prefix=PREFIX)],
        tag_index=index,
        graceful_degradation={"retry_after": retry_after},
    )


async def value_in_redis(redis_client: Any, key: str) -> bool:
    """A value (not absent, not a deletion's tombstone) under ``key`` in Redis."""
    raw = await redis_client.get(f"{PREFIX}{key}".encode())
    return raw is not None and not bytes(raw).startswith(b"\xc1LT")


async def indexed_under(redis_client: Any, key: str, tag: str) -> bool:
    return bool(await redis_client.sismember(f"{{{INDEX}}}:tag:{tag}", key))


async def wait_for(predicate: Any, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not await predicate():
        assert loop.time() < deadline, f"{what} not reached"
        await asyncio.sleep(0.01)


class StalledRemoval(RedisTagIndex):
    """The real index, with a stall of its link (the proxy) armed for its next removal
    (``remove``, or ``expire``: how an invalidation forgets its keys): the removal's bytes are
    held, the client gives up (socket timeout, one retry on a connection the proxy holds too),
    and the link comes back only then, so the server runs the removal after the call failed.
    ``stalled`` is set once that happened."""

    proxy: Any = None
    armed = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stalled = asyncio.Event()

    async def remove(self, keys: Sequence[str]) -> None:
        if not self.armed:
            return await super().remove(keys)
        await self._stalled(super().remove(keys))

    async def expire(self, keys: Sequence[str], tags: Sequence[str] = ()) -> int:
        if not self.armed:
            return await super().expire(keys, tags)
        return await self._stalled(super().expire(keys, tags))

    async def _stalled(self, removal: Awaitable[T]) -> T:
        self.armed = False
        proxy = self.proxy
        accepted = proxy.accepted
        proxy.cut("blackhole", close_existing=False)

        async def heal_after_the_retry() -> None:
            # The client's retry opens a new connection (held by the cut): it gave up on the
            # first one. Healing now delivers the held removal and resets the retry.
            await eventually_async(lambda: proxy.accepted > accepted, WAIT, "the retry")
            proxy.restore()

        healer = asyncio.ensure_future(heal_after_the_retry())
        try:
            return await removal
        finally:
            await asyncio.wait_for(healer, WAIT)
            self.stalled.set()


async def test_a_replayed_invalidation_whose_removal_failed_still_deletes_the_values(
    redis_clean: Any, redis_proxy: Any
) -> None:
    direct = client(redis_clean.url)
    flaky = client(redis_proxy.url, TIMEOUT)  # instance 1's index only
    index = StalledRemoval(client=flaky, prefix=INDEX)
    index.proxy = redis_proxy
    one = stack(direct, index)
    zero = stack(direct, RedisTagIndex(client=direct, prefix=INDEX))
    try:
        async with one, zero:
            # The removal scripts are loaded in Redis (as in a run).
            await zero.set("warm", 0, tags=["warm"])
            await zero.invalidate_by_tag("warm")
            await zero.delete("warm")
            # Instance 1's index is out of reach: its invalidation of "t" is remembered.
            redis_proxy.cut("refuse")
            await one.invalidate_by_tag("t")
            assert one._writer.tags.down
            redis_proxy.restore()
            # Instance 0 then writes the key (tagged "t"): in Redis and in the index.
            await zero.set_many([CacheEntry("k", "new", {"tags": ["t"]})])
            assert await value_in_redis(direct, "k")
            assert await indexed_under(direct, "k", "t")
            # Instance 1's index is back: its next tag operation replays the invalidation,
            # which resolves "k" and forgets it in the index; that removal's reply is lost.
            # (A record that follows a write to Redis asks the index at once.)
            index.armed = True
            await one.set("other", 1, tags=["x"])
            await asyncio.wait_for(index.stalled.wait(), WAIT)

            async def forgotten() -> bool:
                return not await indexed_under(direct, "k", "t")

            await wait_for(forgotten, "the failed removal, run late by the server")
            # The replay is retried until it succeeds; it must not leave "k" behind.

            async def replayed() -> bool:
                await one.set("other", 1, tags=["x"])
                return not one._writer.tags.down

            await wait_for(replayed, "the replay of instance 1's index")
            unindexed = await value_in_redis(direct, "k") and not await indexed_under(
                direct, "k", "t"
            )
            assert not unindexed, "a value in Redis the tag index does not know"
            # The consequence: another invalidation of "t" must reach the key in Redis.
            await zero.invalidate_by_tag("t")
            assert not await value_in_redis(direct, "k")
    finally:
        for c in (direct, flaky):
            await c.aclose()


async def test_set_many_with_its_index_out_of_reach_keeps_tagged_values_out_of_redis(
    redis_clean: Any, redis_proxy: Any
) -> None:
    direct = client(redis_clean.url)
    flaky = client(redis_proxy.url, TIMEOUT)  # instance 0's index only
    zero = stack(direct, RedisTagIndex(client=flaky, prefix=INDEX), retry_after=30)
    one = stack(direct, RedisTagIndex(client=direct, prefix=INDEX))
    try:
        async with zero, one:
            redis_proxy.cut("refuse")
            await zero.set_many(
                [
                    CacheEntry("a", "va", {"tags": ["t"]}),
                    CacheEntry("b", "vb", {"tags": ["t"]}),
                    CacheEntry("plain", "vp"),
                ]
            )
            assert zero._writer.tags.down
            # Another instance invalidates the tag; it cannot know "a" and "b" from the index.
            await one.invalidate_by_tag("t")
            for key in ("a", "b"):
                assert not await value_in_redis(direct, key), f"{key} escaped the invalidation"
                assert await one.get(key) is None
            # An untagged value is not concerned (the index has nothing to know of it).
            assert await one.get("plain") == "vp"
            # The writing instance itself keeps its values in its memory layer.
            assert await zero.get("a") == "va"
    finally:
        for c in (direct, flaky):
            await c.aclose()
