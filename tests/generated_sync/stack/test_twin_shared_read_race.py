# DO NOT EDIT: generated from tests/stack/test_shared_read_race.py
# by scripts/unasync_tests.py. Change the async source and run
# `python scripts/unasync_tests.py`.
"""A value another instance fetched (distributed single-flight) must not be backfilled into L1
when the key changed here while it was being read.

Regression: the loader's ``_read_shared`` (a waiter reading the value the lease holder stored)
backfilled L1 without checking for changes since its read began. A delete on this instance
landing between the shared layer's answer and the backfill left the deleted value in L1 until
its TTL: the chaos suite's kill-restart test saw it as a stale read of a key its own instance
had deleted 1.7 s before.
"""

from __future__ import annotations

from typing import Any

from _twins_sync import Event, join, spawn
from layercache import Entry, MemoryLayer, SyncCacheStack
from layercache.testing import ManualClock


class SlowShared:
    """A remote layer: its first read misses (nothing there yet); the next one finds the
    value "another instance" stored, and answers only when released."""

    is_local = False

    def __init__(self, entry: Entry) -> None:
        self.name = "shared"
        self.default_ttl = None
        self.entry = entry
        self.reads = 0
        self.reading = Event()
        self.release = Event()
        self.deleted: list[str] = []

    def get(self, key: str) -> Entry | None:
        self.reads += 1
        if self.reads == 1:
            return None
        held = self.entry  # what the layer held when the read reached it
        self.reading.set()
        self.release.wait()
        return held

    def set(self, key: str, entry: Entry, ttl: float | None) -> None:
        self.entry = entry

    def delete(self, key: str) -> None:
        self.deleted.append(key)

    def clear(self) -> None:
        pass


class AnotherInstanceFetched:
    """A coordinator whose lease another instance holds: this one only reads the shared
    layers for the value (``read_shared``), as a waiter does."""

    def run(self, key: str, fetch: Any, read_shared: Any, **_terms: Any) -> Any:
        found, value = read_shared()
        return value if found else fetch()


def test_a_delete_during_the_shared_read_keeps_the_value_out_of_l1() -> None:
    clock = ManualClock()
    memory = MemoryLayer(clock=clock)
    shared = SlowShared(Entry(value="old", stored_at=clock(), fresh_until=clock() + 300))
    cache = SyncCacheStack(
        [memory, shared], clock=clock, single_flight_coordinator=AnotherInstanceFetched()
    )

    def never() -> str:
        raise AssertionError("the other instance fetched it")

    try:
        waiter = spawn(cache.get, "k", never)
        shared.reading.wait()  # the shared layer has answered "old" in its mind
        cache.delete("k")
        assert shared.deleted == ["k"]
        shared.release.set()
        assert join(waiter) == "old"  # the waiter gets the fetch's value, as stated
        assert memory.get("k") is None, "the deleted value was backfilled into L1"
    finally:
        cache.close()
