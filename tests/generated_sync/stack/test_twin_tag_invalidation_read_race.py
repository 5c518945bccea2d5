# DO NOT EDIT: generated from tests/stack/test_tag_invalidation_read_race.py
# by scripts/unasync_tests.py. Change the async source and run
# `python scripts/unasync_tests.py`.
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

from _twins_sync import Event, join, spawn
from layercache import Entry, MemoryLayer, SyncCacheStack
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

    def get(self, key: str) -> Entry | None:
        self.reads += 1
        held = self.data.get(key)
        if self.reads == 1:
            self.reading.set()
            self.release.wait()
        return held

    def set(self, key: str, entry: Entry, ttl: float | None) -> None:
        self.data[key] = entry

    def delete(self, key: str) -> None:
        self.data.pop(key, None)

    def delete_many(self, keys: list[str]) -> None:
        for key in keys:
            self.data.pop(key, None)

    def clear(self) -> None:
        self.data.clear()


def test_a_caller_after_invalidate_by_tag_does_not_join_an_older_read() -> None:
    clock = ManualClock()
    memory = MemoryLayer(clock=clock)
    remote = PausingLayer()
    cache = SyncCacheStack([memory, remote], clock=clock)
    try:
        cache.set("k", "old", tags=["t"])
        memory.clear()  # the next read goes to the remote layer
        first = spawn(cache.get, "k")
        remote.reading.wait()  # a read of "old" is in flight
        assert cache.invalidate_by_tag("t") == 1
        assert "k" not in remote.data
        late = spawn(cache.get, "k")  # starts after the invalidation returned
        remote.release.set()
        assert join(first) == "old"  # began before the invalidation: allowed
        assert join(late) is None, "a caller after the invalidation got the old value"
        assert memory.get("k") is None
    finally:
        cache.close()
