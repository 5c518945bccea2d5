"""A read of the layers that began before ``invalidate_by_tag`` is not handed to a caller
that arrives after the invalidation returned.

Concurrent callers of a key share one read of the lower layers (the first leads, the others
follow). A read's flight carries no tags (they are known only once the value is read), so the
tag predicate alone would leave it joinable; the keys the index resolves are changed as keys,
which invalidates the read. This pins that rule (written while looking for the cause of a rare
stale read after ``invalidate_by_tag`` in the chaos suite's SyncCacheStack hammer; it passes on
the code of that time, so that cause is elsewhere).
"""

from __future__ import annotations

from _twins_async import Event, join, spawn
from layercache import CacheStack, Entry, MemoryLayer
from layercache.testing import ManualClock


class PausingLayer:
    """A remote layer whose first read answers, when released, with what it held when the
    read arrived; later reads answer at once."""

    is_local = False

    def __init__(self) -> None:
        self.name = "remote"
        self.default_ttl = None
        self.data: dict[str, Entry] = {}
        self.reads = 0
        self.reading = Event()
        self.release = Event()

    async def get(self, key: str) -> Entry | None:
        self.reads += 1
        held = self.data.get(key)
        if self.reads == 1:
            self.reading.set()
            await self.release.wait()
        return held

    async def set(self, key: str, entry: Entry, ttl: float | None) -> None:
        self.data[key] = entry

    async def delete(self, key: str) -> None:
        self.data.pop(key, None)

    async def delete_many(self, keys: list[str]) -> None:
        for key in keys:
            self.data.pop(key, None)

    async def clear(self) -> None:
        self.data.clear()


async def test_a_caller_after_invalidate_by_tag_does_not_join_an_older_read() -> None:
    clock = ManualClock()
    memory = MemoryLayer(clock=clock)
    remote = PausingLayer()
    cache = CacheStack([memory, remote], clock=clock)
    try:
        await cache.set("k", "old", tags=["t"])
        memory.clear()  # the next read goes to the remote layer
        first = spawn(cache.get, "k")
        await remote.reading.wait()  # a read of "old" is in flight
        assert await cache.invalidate_by_tag("t") == 1
        assert "k" not in remote.data
        late = spawn(cache.get, "k")  # starts after the invalidation returned
        remote.release.set()
        assert await join(first) == "old"  # began before the invalidation: allowed
        assert await join(late) is None, "a caller after the invalidation got the old value"
        assert memory.get("k") is None
    finally:
        await cache.aclose()
