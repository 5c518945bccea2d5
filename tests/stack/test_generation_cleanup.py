"""``generation_cleanup={"batch_size": N}``: the old generation is deleted N keys at a time
(issue 10, point 10: the batch size used to be parsed and ignored, one ``delete_matching`` per
layer removed everything at once)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stack_support import eventually

from layercache import CacheStack, Entry, MemoryLayer


class CountingLayer:
    """A real MemoryLayer behind a wrapper that records every bulk delete."""

    is_local = True

    def __init__(self, name: str = "counted", listing: bool = True) -> None:
        self.name = name
        self.default_ttl: float | None = None
        self.inner = MemoryLayer(name=name)
        self.deletes: list[int] = []
        self.matching: list[str] = []
        if listing:
            self.keys = self.inner.keys

    def get(self, key: str) -> Entry | None:
        return self.inner.get(key)

    def set(self, key: str, entry: Entry, ttl: float | None) -> None:
        self.inner.set(key, entry, ttl)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def clear(self) -> None:
        self.inner.clear()

    def delete_many(self, keys: Sequence[str]) -> None:
        self.deletes.append(len(keys))
        self.inner.delete_many(keys)

    def delete_matching(self, pattern: str) -> int:
        self.matching.append(pattern)
        return self.inner.delete_matching(pattern)

    def stored(self) -> list[str]:
        return self.inner.keys()


async def test_the_old_generation_goes_in_batches_of_batch_size() -> None:
    layer = CountingLayer()
    cache: Any = CacheStack([layer], generation=1, generation_cleanup={"batch_size": 7})
    for i in range(50):
        await cache.set(f"k{i}", i)
    await cache.set("kept", "new")  # stays: the bump below moves it out of reach only
    await cache.bump_generation()
    await cache.set("k0", "v2")
    await eventually(lambda: layer.stored() == ["v2:k0"], "the old generation to go")
    assert layer.deletes == [7] * 7 + [2]  # 51 keys of generation 1
    assert layer.matching == []
    await cache.aclose()


async def test_a_layer_that_cannot_list_keys_uses_its_delete_matching() -> None:
    layer = CountingLayer(listing=False)
    cache: Any = CacheStack([layer], generation=1, generation_cleanup={"batch_size": 7})
    for i in range(20):
        await cache.set(f"k{i}", i)
    await cache.bump_generation()
    await eventually(lambda: layer.stored() == [], "the old generation to go")
    assert layer.matching == ["v1:*"]
    assert layer.deletes == []
    await cache.aclose()
