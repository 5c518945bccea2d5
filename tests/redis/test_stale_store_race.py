"""A fetch in flight never stores its older value after a change returned (issue 11, point 1).

Two stacks share one Redis and have no bus at all, so nothing here depends on the timing of
announcements: the guarantee must hold in Redis itself. Stack A starts a fetch of a key (the
origin read is held open by an event), stack B changes the key in one of the ways a service
can, and then A's fetch finishes. Before the fix A stored its value in Redis after B's change,
and every later reader got the old value until the TTL ran out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from tag_index_support import Backend

from layercache import CacheStack, InMemoryTagIndex, MemoryLayer, RedisTagIndex
from layercache.redis import RedisLayer

pytestmark = pytest.mark.redis

PREFIX = "race:"


def stack_on(client: Any) -> CacheStack:
    return CacheStack(
        [MemoryLayer(), RedisLayer(client=client, prefix=PREFIX)],
        tag_index=RedisTagIndex(client=client, prefix="race:tags"),
    )


Change = Callable[[CacheStack], Awaitable[Any]]

CHANGES: dict[str, Change] = {
    "delete": lambda b: b.delete("item:1"),
    "delete_many": lambda b: b.delete_many(["item:1", "other"]),
    "set": lambda b: b.set("item:1", "new", tags=["items"]),
    "invalidate_by_tag": lambda b: b.invalidate_by_tag("items"),
    "invalidate_by_tags_all": lambda b: b.invalidate_by_tags(["items", "red"], mode="all"),
    "invalidate_by_pattern": lambda b: b.invalidate_by_pattern("item:*"),
    "invalidate_by_prefix": lambda b: b.invalidate_by_prefix("item:"),
    "clear": lambda b: b.clear(),
}


@pytest.fixture
async def stacks(backend: Backend) -> AsyncIterator[tuple[CacheStack, CacheStack]]:
    """On one server, and on a 3-master cluster (keys, tags and fences on different nodes),
    through the folder's ``backend`` fixture; each stack has its own client."""
    a, b = stack_on(backend.client()), stack_on(backend.client())
    async with a, b:
        yield a, b


async def race(
    a: CacheStack, b: CacheStack, change: Change, *, stored_before: bool
) -> tuple[Any, Any]:
    """A fetches ``item:1`` slowly; B changes it mid-fetch. Returns (what A's caller got,
    what a fresh reader gets afterwards)."""
    if stored_before:
        await b.set("item:1", "v0", tags=["items", "red"])
        await b.set("item:1", "v0", tags=["items", "red"], ttl=0.05)  # stale soon
        await asyncio.sleep(0.1)  # think time: let it expire in every layer
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow_origin() -> str:
        entered.set()
        await release.wait()
        return "old"  # read from the origin before B's change

    fetch = asyncio.create_task(a.get("item:1", slow_origin, tags=["items", "red"]))
    await asyncio.wait_for(entered.wait(), 5)
    await change(b)  # the change returned
    release.set()
    got = await asyncio.wait_for(fetch, 5)
    reader = stack_on(b._layers.adapters[1].layer.client)
    async with reader:
        later = await reader.get("item:1", lambda: "fresh", tags=["items", "red"])
    return got, later


@pytest.mark.parametrize("name", sorted(CHANGES))
@pytest.mark.parametrize("stored_before", [False, True], ids=["absent", "expired"])
async def test_a_change_during_a_fetch_wins_in_redis(
    stacks: tuple[CacheStack, CacheStack], name: str, stored_before: bool
) -> None:
    a, b = stacks
    got, later = await race(a, b, CHANGES[name], stored_before=stored_before)
    assert got == "old"  # A's own caller started before the change: it may see the old value
    expected = "new" if name == "set" else "fresh"
    assert later == expected  # a read that starts after the change never does


async def test_an_unchanged_fetch_is_stored(stacks: tuple[CacheStack, CacheStack]) -> None:
    a, b = stacks
    calls = 0

    async def origin() -> str:
        nonlocal calls
        calls += 1
        return "v"

    assert await a.get("item:2", origin, tags=["items"]) == "v"
    b_value = await b.get("item:2", origin, tags=["items"])
    assert b_value == "v"
    assert calls == 1  # B found A's value in Redis
    # A change of another tag or key does not refuse an unrelated fetch.
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow() -> str:
        entered.set()
        await release.wait()
        return "slow"

    fetch = asyncio.create_task(a.get("item:3", slow, tags=["items"]))
    await asyncio.wait_for(entered.wait(), 5)
    await b.invalidate_by_tag("unrelated")
    await b.delete("item:4")
    release.set()
    assert await fetch == "slow"
    assert await b.get("item:3", lambda: "refetched") == "slow"


async def test_a_background_refresh_takes_its_own_lease(
    stacks: tuple[CacheStack, CacheStack],
) -> None:
    """Stale-while-revalidate from L1: the refresh read nothing from Redis, so it takes a
    lease before it calls the origin, and a change made during it still wins."""
    a, b = stacks
    await a.set("item:5", "v0", ttl=0.05, stale_while_revalidate=30)
    await asyncio.sleep(0.1)  # think time: the entry turns stale
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow_origin() -> str:
        entered.set()
        await release.wait()
        return "old"

    assert await a.get("item:5", slow_origin, ttl=0.05, stale_while_revalidate=30) == "v0"
    await asyncio.wait_for(entered.wait(), 5)
    await b.set("item:5", "new")
    release.set()

    async def refreshed() -> bool:
        return a.get_stats().background_refreshes == 0

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while not await refreshed():
        assert loop.time() < deadline
        await asyncio.sleep(0.01)
    reader = stack_on(b._layers.adapters[1].layer.client)
    async with reader:
        assert await reader.get("item:5", lambda: "fresh") == "new"


class _GatedIndex(InMemoryTagIndex):
    """An in-process index whose first record of ``item:1`` waits for a gate: it holds a
    fetch at the moment it records the tags of the value it fetched."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def record(  # type: ignore[override]
        self, key: str, tags: Any, expires_at: float | None = None
    ) -> list[str]:
        if key == "item:1" and not self.gate.is_set():
            self.entered.set()
            await self.gate.wait()
        return super().record(key, tags, expires_at)


async def test_a_tag_invalidation_between_a_fetch_store_and_its_record_wins(
    redis_client: Any,
) -> None:
    """A fetch's tags are recorded before its value is stored. Recorded after (before the
    fix), an invalidation of the tag landing between the fetch's Redis store and its record
    resolved no key, returned, and a reader then got the fetched (older) value from Redis
    until the fetch removed it itself. Here the fetch is held at its record: the invalidation
    returns, and a reader must not find the old value anywhere."""
    index = _GatedIndex()
    stack = CacheStack(
        [MemoryLayer(), RedisLayer(client=redis_client, prefix="gated:")], tag_index=index
    )
    async with stack:
        fetch = asyncio.create_task(stack.get("item:1", lambda: "old", tags=["items"]))
        await asyncio.wait_for(index.entered.wait(), 5)
        await stack.invalidate_by_tag("items")  # returned: "old" may be read nowhere now
        assert await stack.get("item:1") is None
        assert await redis_client.get("gated:item:1") is None
        index.gate.set()
        assert await asyncio.wait_for(fetch, 5) == "old"  # its own caller still gets it
        assert await stack.get("item:1") is None  # refused in Redis, not written to L1
        assert await redis_client.get("gated:item:1") is None
