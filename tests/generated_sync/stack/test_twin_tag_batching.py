# DO NOT EDIT: generated from tests/stack/test_tag_batching.py
# by scripts/unasync_tests.py. Change the async source and run
# `python scripts/unasync_tests.py`.
"""Bulk writes record their tags in one batched tag-index call (issue 10, point 9).

``set_many`` calls the index's ``record_many`` once for all its keys (it used to call
``record`` once per key: one Redis round trip each with ``RedisTagIndex``); an index written
without ``record_many`` still works, one ``record`` per key; and what a down index missed is
replayed in batches too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from layercache import CacheEntry, CacheLayerError, MemoryLayer, SyncCacheStack
from layercache._glob import glob_match
from layercache.testing import ManualClock


class PlainIndex:
    """A user-written tag index (a plain dict) with only the methods of the original
    interface."""

    def __init__(self) -> None:
        self.tags: dict[str, tuple[str, ...]] = {}
        self.calls: list[tuple[str, int]] = []
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise CacheLayerError("tag-index", "record")

    def record(self, key: str, tags: Sequence[str], expires_at: float | None = None) -> list[str]:
        self._check()
        self.calls.append(("record", 1))
        self._store(key, tags)
        return []

    def _store(self, key: str, tags: Sequence[str]) -> None:
        if tags:
            self.tags[key] = tuple(tags)
        else:
            self.tags.pop(key, None)

    def remove(self, keys: Iterable[str]) -> None:
        self._check()
        for key in keys:
            self.tags.pop(key, None)

    def tags_of(self, key: str) -> tuple[str, ...]:
        return self.tags.get(key, ())

    def keys_for_tags(self, tags: Sequence[str], mode: str = "any") -> set[str]:
        self._check()
        test = all if mode == "all" else any
        return {k for k, own in self.tags.items() if tags and test(t in own for t in tags)}

    def keys_matching(self, pattern: str) -> list[str]:
        self._check()
        return [k for k in self.tags if glob_match(pattern, k)]

    def clear(self) -> None:
        self._check()
        self.tags.clear()


class BatchingIndex(PlainIndex):
    """The same with ``record_many``."""

    def record_many(self, items: Iterable[tuple[str, Sequence[str], float | None]]) -> list[str]:
        self._check()
        records = list(items)
        self.calls.append(("record_many", len(records)))
        for key, tags, _expires_at in records:
            self._store(key, tags)
        return []


def tagged(count: int, start: int = 0) -> list[CacheEntry]:
    return [
        CacheEntry(f"k{i}", i, {"tags": ["all", f"g{i % 2}"]}) for i in range(start, start + count)
    ]


def test_set_many_records_every_key_in_one_call() -> None:
    index = BatchingIndex()
    cache = SyncCacheStack([MemoryLayer()], tag_index=index)
    cache.set_many(tagged(100))
    assert index.calls == [("record_many", 100)]
    assert cache.invalidate_by_tag("g1") == 50
    assert cache.get("k1") is None
    assert cache.get("k2") == 2
    cache.close()


def test_an_index_without_record_many_gets_one_record_per_key() -> None:
    index = PlainIndex()
    cache = SyncCacheStack([MemoryLayer()], tag_index=index)
    cache.set_many([*tagged(10), ("untagged", 1), CacheEntry("k3", "retagged")])
    assert index.calls == [("record", 1)] * 12
    assert index.tags_of("k3") == ()
    assert cache.invalidate_by_tag("g1") == 4  # k1, k5, k7, k9: k3 lost its tags
    assert [cache.get(f"k{i}") for i in range(4)] == [0, None, 2, "retagged"]
    cache.close()


def test_records_a_down_index_missed_are_replayed_in_batches() -> None:
    clock = ManualClock()
    index = BatchingIndex()
    cache = SyncCacheStack(
        [MemoryLayer(clock=clock)],
        tag_index=index,
        graceful_degradation={"retry_after": 10},
        clock=clock,
    )
    cache.set_many(tagged(10))
    index.down = True
    cache.set_many(tagged(30, start=10))  # fails: remembered, one record per key
    cache.set_many(tagged(20, start=40))  # index skipped: remembered as well
    assert index.calls == [("record_many", 10)]
    index.down = False
    clock.advance(11)
    cache.set("probe", 1)  # the next index operation replays what was missed first
    assert index.calls[1:] == [("record_many", 50), ("record", 1)]
    assert cache.invalidate_by_tag("all") == 60
    cache.close()
