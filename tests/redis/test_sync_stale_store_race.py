"""The sync stack: a fetch in flight in one thread never stores its older value after another
stack's change returned (issue 11, point 1). No bus: the guarantee holds in Redis itself.
The async twin of this test is test_stale_store_race.py."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from layercache import MemoryLayer, RedisTagIndex, SyncCacheStack
from layercache.redis import RedisLayer

pytestmark = pytest.mark.redis

PREFIX = "srace:"

CHANGES: dict[str, Callable[[SyncCacheStack], Any]] = {
    "delete": lambda b: b.delete("item:1"),
    "set": lambda b: b.set("item:1", "new", tags=["items"]),
    "invalidate_by_tag": lambda b: b.invalidate_by_tag("items"),
    "invalidate_by_pattern": lambda b: b.invalidate_by_pattern("item:*"),
    "invalidate_by_prefix": lambda b: b.invalidate_by_prefix("item:"),
    "clear": lambda b: b.clear(),
}


def stack_on(client: Any) -> SyncCacheStack:
    return SyncCacheStack(
        [MemoryLayer(), RedisLayer(client=client, prefix=PREFIX)],
        tag_index=RedisTagIndex(client=client, prefix="srace:tags"),
    )


@pytest.fixture
def stacks(redis_sync_client: Any) -> Iterator[tuple[SyncCacheStack, SyncCacheStack]]:
    a, b = stack_on(redis_sync_client), stack_on(redis_sync_client)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_a_change_during_a_threads_fetch_wins_in_redis(
    stacks: tuple[SyncCacheStack, SyncCacheStack], name: str, redis_sync_client: Any
) -> None:
    a, b = stacks
    entered, release = threading.Event(), threading.Event()

    def slow_origin() -> str:
        entered.set()
        assert release.wait(5)
        return "old"

    with ThreadPoolExecutor(1) as pool:
        fetch = pool.submit(a.get, "item:1", slow_origin, tags=["items"])
        assert entered.wait(5)
        CHANGES[name](b)  # the change returned
        release.set()
        assert fetch.result(5) == "old"
    reader = stack_on(redis_sync_client)
    try:
        later = reader.get("item:1", lambda: "fresh", tags=["items"])
    finally:
        reader.close()
    assert later == ("new" if name == "set" else "fresh")
