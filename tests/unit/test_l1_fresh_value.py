"""The L1 hit path (issue 16): ``MemoryLayer.fresh_value`` answers only a *fresh* value, and
the stack answers everything else (stale, expired, absent, ``type=``, a layer that only has
``peek``) exactly as through ``peek``."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from layercache import CacheStack, Entry, MemoryLayer, SyncCacheStack
from layercache._entry import EntryMeta
from layercache.layers.memory import NOT_FRESH
from layercache.testing import ManualClock

T0 = 1_700_000_000.0


def test_fresh_value_answers_fresh_values_only() -> None:
    clock = ManualClock(T0)
    layer = MemoryLayer(clock=clock)
    layer.set("fresh", Entry("f", T0, T0 + 10), 100)
    layer.set("forever", Entry("e", T0, None), None)
    layer.set("stale", Entry("s", T0, T0 + 1, stale_until=T0 + 50), 100)
    assert EntryMeta(T0, None).fresh_end == float("inf")
    assert layer.fresh_value("fresh", T0 + 9.999) == "f"
    assert layer.fresh_value("fresh", T0 + 10) is NOT_FRESH  # fresh_until is exclusive
    assert layer.fresh_value("forever", T0 + 1e9) == "e"
    assert layer.fresh_value("stale", T0 + 2) is NOT_FRESH
    assert layer.peek("stale", T0 + 2) is not None  # still usable: peek() has it
    assert layer.fresh_value("absent", T0) is NOT_FRESH
    layer.set("none", Entry(None, T0, T0 + 10), 100)
    assert layer.fresh_value("none", T0) is None  # a cached None is a value


def test_fresh_value_marks_the_key_as_read_for_eviction() -> None:
    clock = ManualClock(T0)
    layer = MemoryLayer(clock=clock, max_size=3)
    for key in "abc":
        layer.set(key, Entry(key, T0, T0 + 60), 60)
    assert layer.fresh_value("a", T0) == "a"  # a is read, b and c are not
    layer.set("d", Entry("d", T0, T0 + 60), 60)
    assert sorted(layer.keys("*")) == ["a", "c", "d"]


class PeekOnly:
    """A user's local layer with lookup() (so a peek) but no fresh_value()."""

    name = "mine"
    is_local = True
    default_ttl = None

    def __init__(self) -> None:
        self.data: dict[str, Entry] = {}

    def lookup(self, key: str, now: float) -> Entry | None:
        entry = self.data.get(key)
        return entry if entry is not None and entry.is_usable(now) else None

    async def get(self, key: str) -> Entry | None:
        return self.data.get(key)

    async def set(self, key: str, entry: Entry, ttl: float | None) -> None:
        self.data[key] = entry

    async def delete(self, key: str) -> None:
        self.data.pop(key, None)

    async def clear(self) -> None:
        self.data.clear()


@dataclasses.dataclass
class User:
    id: int


def test_stack_hits_stale_and_typed_reads_through_both_l1_kinds() -> None:
    async def scenario(first: Any) -> None:
        clock = ManualClock(T0)
        cache = CacheStack([first], clock=clock, stale_while_revalidate=30)
        calls: list[str] = []

        async def fetch() -> dict[str, int]:
            calls.append("k")
            return {"id": len(calls)}

        assert await cache.get("k", fetch, ttl=10) == {"id": 1}
        assert await cache.get("k", fetch) == {"id": 1}  # the plain hit
        assert await cache.get("k", type=User) == User(1)  # type=: through peek
        clock.advance(11)  # stale now: served, refreshed in the background
        assert await cache.get("k", fetch) == {"id": 1}
        for _ in range(100):
            if len(calls) == 2:
                break
            await asyncio.sleep(0.01)
        assert await cache.get("k", fetch) == {"id": 2}
        assert await cache.get("absent") is None
        metrics = cache.get_metrics()
        assert metrics.hits >= 3
        await cache.aclose()

    asyncio.run(scenario(MemoryLayer()))
    asyncio.run(scenario(PeekOnly()))


def test_sync_stack_plain_hit() -> None:
    cache = SyncCacheStack([MemoryLayer()])
    cache.set("k", [1, 2])
    assert cache.get("k") == [1, 2]
    assert cache.get_metrics().layers["memory"].hits == 1
    cache.close()


def test_stacks_stay_under_30_instance_attributes() -> None:
    """CPython shares the attribute names of a class's instances (one-step reads) for at most
    30 of them; a 31st made every attribute read of the L1 hit a hash lookup (about 5% more
    instructions). Every attribute is set in the constructor, none later."""

    async def scenario() -> int:
        cache = CacheStack([MemoryLayer()])
        await cache.set("k", 1)
        await cache.get("k")
        await cache.get("absent")
        cache.reset_metrics()
        cache.get_stats()
        cache.on("hit", lambda payload: None)
        count = len(vars(cache))
        await cache.aclose()
        return count

    assert asyncio.run(scenario()) <= 30
    sync = SyncCacheStack([MemoryLayer()])
    sync.set("k", 1)
    sync.get("k")
    sync.reset_metrics()
    sync.get_stats()
    assert len(vars(sync)) <= 30
    sync.close()


def test_plain_hits_still_reach_hit_listeners_added_later() -> None:
    async def scenario() -> list[str]:
        cache = CacheStack([MemoryLayer()])
        await cache.set("k", 1)
        seen: list[str] = []
        await cache.get("k")
        off = cache.on("hit", lambda payload: seen.append(payload["layer"]))
        await cache.get("k")
        off()
        await cache.get("k")
        await cache.aclose()
        return seen

    assert asyncio.run(scenario()) == ["memory"]


def test_the_l1_latency_is_sampled_once_in_64_hits() -> None:
    """The memory layer's latency is timed for the lookups made while its hit count is a
    multiple of 64 (the hit count is the sampling tick: a tick of its own cost 6% of the
    hit); a stack built with ``metrics=False`` times none."""

    async def scenario(metrics: bool) -> tuple[int, int]:
        cache = CacheStack([MemoryLayer()], metrics=metrics)
        await cache.set("k", 1)
        for _ in range(640):
            assert await cache.get("k") == 1
        layer = cache.get_metrics().layers["memory"]
        await cache.aclose()
        return layer.hits, layer.latency.count

    assert asyncio.run(scenario(True)) == (640, 10)
    assert asyncio.run(scenario(False)) == (640, 0)


def test_a_key_is_checked_on_every_path_but_the_plain_l1_hit() -> None:
    """The plain L1 hit skips the key check (only checked keys are ever stored, so a key found
    fresh in L1 is a valid one); an invalid key is refused on every other path, whatever L1
    holds, with and without a generation, in both stacks, and a valid key that only looks
    like a generation's stored form is not confused with it."""
    invalid: list[Any] = ["", "a\x00b", "tab\tkey", "x" * 1025, 5, None, b"k"]

    async def scenario(generation: int | None) -> None:
        cache = CacheStack([MemoryLayer()], generation=generation)
        await cache.set("k", 1)
        assert await cache.get("k") == 1
        for key in invalid:
            for kwargs in ({}, {"fetcher": lambda: 1}, {"type": int}):
                try:
                    await cache.get(key, **kwargs)
                except (ValueError, TypeError):
                    continue
                raise AssertionError(f"{key!r} was accepted ({kwargs})")
        if generation is not None:
            assert await cache.get(f"v{generation}:k") is None  # another key: not "k"
        await cache.aclose()

    asyncio.run(scenario(None))
    asyncio.run(scenario(3))
    sync = SyncCacheStack([MemoryLayer()])
    sync.set("k", 1)
    assert sync.get("k") == 1
    for key in invalid:
        try:
            sync.get(key)
        except (ValueError, TypeError):
            continue
        raise AssertionError(f"{key!r} was accepted by the sync stack")
    sync.close()
