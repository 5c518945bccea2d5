"""A fetch in flight across an invalidation returns its value but never stores it."""

from __future__ import annotations

import fnmatch
from collections.abc import Awaitable, Callable

import pytest
from stack_support import ABSENT, StackEnv, eventually

from _twins_async import Event, join, spawn, wait_event
from layercache import CacheStack, Entry

Invalidate = Callable[[CacheStack], Awaitable[object]]

INVALIDATIONS: dict[str, Invalidate] = {
    "delete": lambda c: c.delete("user:1"),
    "delete_many": lambda c: c.delete_many(["other", "user:1"]),
    "clear": lambda c: c.clear(),
    "tag": lambda c: c.invalidate_by_tag("users"),
    "tags_any": lambda c: c.invalidate_by_tags(["nope", "users"], mode="any"),
    "tags_all": lambda c: c.invalidate_by_tags(["users", "tenant:a"], mode="all"),
    "pattern": lambda c: c.invalidate_by_pattern("user:*"),
    "prefix": lambda c: c.invalidate_by_prefix("user:"),
    "namespace_clear": lambda c: c.namespace("user").clear(),
}


class SlowLayer:
    """A lower layer whose reads (and deletes) wait to be released: a read takes the entry
    first, then waits, so it hands out what was there when it began."""

    name, default_ttl, is_local = "slow", 300, False

    def __init__(self) -> None:
        self.data: dict[str, Entry] = {}
        self.gets = 0
        self.reading = Event()
        self.release_get = Event()
        self.deleting = Event()
        self.release_delete = Event()

    async def get(self, key: str) -> Entry | None:
        self.gets += 1
        entry = self.data.get(key)
        self.reading.set()
        await self.release_get.wait()
        return entry

    async def set(self, key: str, entry: Entry, ttl: float | None) -> None:
        self.data[key] = entry

    async def delete(self, key: str) -> None:
        self.deleting.set()
        await self.release_delete.wait()
        self.data.pop(key, None)

    async def clear(self) -> None:
        self.data.clear()

    async def keys(self, pattern: str | None = None) -> list[str]:
        return [k for k in self.data if pattern is None or fnmatch.fnmatchcase(k, pattern)]


class HeldFetch:
    """A fetcher that blocks until released (no sleeps) and records that it ran."""

    def __init__(self, value: object) -> None:
        self.value = value
        self.started = Event()
        self.release = Event()
        self.calls = 0

    async def __call__(self) -> object:
        self.calls += 1
        self.started.set()
        await self.release.wait()
        return self.value


@pytest.mark.parametrize("operation", list(INVALIDATIONS))
async def test_invalidation_during_fetch_is_not_undone(env: StackEnv, operation: str) -> None:
    fetch = HeldFetch({"name": "stale"})
    task = spawn(env.cache.get, "user:1", fetch, tags=["users", "tenant:a"])
    await wait_event(fetch.started, 2)
    await INVALIDATIONS[operation](env.cache)
    fetch.release.set()
    assert await join(task) == {"name": "stale"}, "the in-flight fetch must still return its value"
    assert await env.layer_values("user:1") == [ABSENT] * len(env.layers), (
        f"a fetch in flight across {operation} stored its value"
    )
    # Nothing is left in flight: the next call fetches anew and stores.
    fresh = HeldFetch({"name": "fresh"})
    fresh.release.set()
    assert await env.cache.get("user:1", fresh) == {"name": "fresh"}
    assert fresh.calls == 1
    assert await env.layer_values("user:1") == [{"name": "fresh"}] * len(env.layers)


@pytest.mark.parametrize("operation", ["tag", "pattern", "prefix"])
async def test_refetch_of_an_expired_tagged_key_is_not_undone(
    env: StackEnv, operation: str
) -> None:
    await env.cache.set("user:1", "old", ttl=5, tags=["users", "tenant:a"])
    env.clock.advance(6)
    fetch = HeldFetch("refetched")
    task = spawn(env.cache.get, "user:1", fetch, tags=["users", "tenant:a"])
    await wait_event(fetch.started, 2)
    await INVALIDATIONS[operation](env.cache)
    fetch.release.set()
    assert await join(task) == "refetched"
    assert await env.cache.get("user:1") is None
    for value in await env.layer_values("user:1"):
        assert value != "refetched", f"the refetch survived {operation}"


async def test_explicit_set_during_fetch_wins(env: StackEnv) -> None:
    fetch = HeldFetch("from-fetch")
    task = spawn(env.cache.get, "k", fetch)
    await wait_event(fetch.started, 2)
    await env.cache.set("k", "explicit")
    fetch.release.set()
    assert await join(task) == "from-fetch"
    assert await env.layer_values("k") == ["explicit"] * len(env.layers)
    assert await env.cache.get("k") == "explicit"


async def test_invalidation_of_other_keys_does_not_block_storing(env: StackEnv) -> None:
    fetch = HeldFetch("kept")
    task = spawn(env.cache.get, "post:1", fetch, tags=["posts"])
    await wait_event(fetch.started, 2)
    await env.cache.delete("post:2")
    await env.cache.invalidate_by_tag("users")
    fetch.release.set()
    assert await join(task) == "kept"
    assert await env.layer_values("post:1") == ["kept"] * len(env.layers)


async def test_an_unrelated_pattern_invalidation_blocks_storing_only_with_leases(
    env: StackEnv,
) -> None:
    """A pattern (or prefix) invalidation marks only the matching flights of this instance;
    in a layer with leases (Redis) its fence is layer-wide: every fetch in flight there is
    refused its store (stored nowhere), and the next read fetches and stores again."""
    leased = any(hasattr(layer, "set_leased") for layer in env.layers)
    fetch = HeldFetch("kept")
    task = spawn(env.cache.get, "post:1", fetch, tags=["posts"])
    await wait_event(fetch.started, 2)
    await env.cache.invalidate_by_pattern("user:*")
    await env.cache.invalidate_by_prefix("post:1:")
    fetch.release.set()
    assert await join(task) == "kept"
    if not leased:
        assert await env.layer_values("post:1") == ["kept"] * len(env.layers)
        return
    assert await env.layer_values("post:1") == [ABSENT] * len(env.layers)
    again = HeldFetch("again")
    again.release.set()
    assert await env.cache.get("post:1", again, tags=["posts"]) == "again"
    assert await env.layer_values("post:1") == ["again"] * len(env.layers)


async def test_a_caller_arriving_after_the_invalidation_gets_a_new_fetch(env: StackEnv) -> None:
    # Read-your-invalidation: the application updates its database, deletes the key, then reads
    # it again. That read must not be served by a fetch that started before the delete.
    old = HeldFetch("before-delete")
    first = spawn(env.cache.get, "k", old)
    await wait_event(old.started, 2)
    await env.cache.delete("k")
    new = HeldFetch("after-delete")
    new.release.set()
    second = spawn(env.cache.get, "k", new)
    # Wait until the second read either started its own fetch or joined the old one.
    await eventually(
        lambda: new.calls == 1 or env.cache.get_metrics().stampede_dedupes == 1,
        "the second read to reach the single-flight",
    )
    old.release.set()
    assert await join(first) == "before-delete"
    assert await join(second) == "after-delete", "a read issued after delete() got pre-delete data"
    assert new.calls == 1
    assert await env.cache.get("k") == "after-delete"


async def test_a_read_racing_a_delete_does_not_backfill_the_old_value() -> None:
    # The lower layer answers a read with the old value, but a delete completes while that
    # read is in flight: the old value must not be copied into the memory layer afterwards.
    from layercache import CacheStack, MemoryLayer

    memory, slow = MemoryLayer(), SlowLayer()
    slow.release_delete.set()  # deletes go through at once here
    cache = CacheStack([memory, slow])
    await cache.set("k", "old")
    memory.clear()
    reader = spawn(cache.get, "k")
    await wait_event(slow.reading, 5)
    slow.release_get.set()  # the read already holds the old entry object
    await cache.delete("k")
    assert await join(reader) == "old"  # the caller gets what it read...
    assert memory.get("k") is None  # ...but it is not backfilled after the delete


async def test_a_caller_after_a_change_never_follows_a_read_that_began_during_it() -> None:
    # A read that begins while a change is under way (after the change marked the running
    # flights) may read the value the change replaces; a caller arriving after the change
    # returned used to follow that read and get the old value (found by the chaos suite's
    # thread test). The change marks the flights again at its end.
    from layercache import CacheStack, MemoryLayer

    memory, slow = MemoryLayer(), SlowLayer()
    cache = CacheStack([memory, slow])
    await cache.set("k", "old")
    memory.clear()
    change = spawn(cache.delete, "k")
    await wait_event(slow.deleting, 5)  # the change is under way: flights marked, L1 done
    during = spawn(cache.get, "k")
    await wait_event(slow.reading, 5)  # a read began during the change, holding "old"
    slow.release_delete.set()
    await join(change)  # the change returned
    after = spawn(cache.get, "k")

    def reached() -> bool:
        followed = any(
            flight.future is not None
            for flights in cache._flights._reads.values()
            for flight in flights.values()
        )
        return followed or slow.gets == 2

    await eventually(reached, "the later caller to follow the read or start its own")
    slow.release_get.set()
    assert await join(during) == "old"  # it began before the change returned: allowed
    assert await join(after) is None, "a read issued after delete() got the deleted value"


@pytest.mark.parametrize("invalidate", INVALIDATIONS.values(), ids=list(INVALIDATIONS))
async def test_a_caller_after_a_change_never_follows_a_read_that_began_before_it(
    invalidate: Invalidate,
) -> None:
    # A read of the lower layers that began before a change holds the value the change
    # replaces. A caller arriving after the change returned must read again rather than
    # follow it, for every kind of change: read flights carry no tags, so a tag invalidation
    # reaches them only through the keys its index resolved (issue 12 guard for the split).
    from layercache import CacheStack, MemoryLayer

    memory, slow = MemoryLayer(), SlowLayer()
    slow.release_delete.set()  # the change itself goes through at once
    cache = CacheStack([memory, slow])
    await cache.set("user:1", "old", tags=["users", "tenant:a"])
    memory.clear()
    before = spawn(cache.get, "user:1")
    await wait_event(slow.reading, 5)  # the read began before the change, holding "old"
    await invalidate(cache)  # the change returned
    after = spawn(cache.get, "user:1")

    def reached() -> bool:
        followed = any(
            flight.future is not None
            for flights in cache._flights._reads.values()
            for flight in flights.values()
        )
        return followed or slow.gets == 2

    await eventually(reached, "the later caller to follow the read or start its own")
    slow.release_get.set()
    assert await join(before) == "old"  # it began before the change: allowed
    assert await join(after) is None, "a read issued after the change got the old value"
