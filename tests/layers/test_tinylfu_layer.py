"""MemoryLayer(eviction="tinylfu"): the layer contract, bounds, values, expiry, the byte bound,
scan resistance through the layer, stacks on top of it, and threads hammering it."""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from layercache import CacheStack, Entry, MemoryLayer, SyncCacheStack
from layercache.testing import LayerContractTests, ManualClock

T0 = 1_700_000_000.0


def entry(value: Any, ttl: float | None = 60.0, now: float = T0) -> Entry:
    return Entry(value, now, None if ttl is None else now + ttl)


class TestMemoryLayerTinyLfuContract(LayerContractTests):
    uses_manual_clock = True

    def make_layer(self) -> MemoryLayer:
        return MemoryLayer(ttl=60, eviction="tinylfu", clock=self.clock or time.time)


def test_the_bound_holds_and_values_stay_right() -> None:
    clock = ManualClock(T0)
    layer = MemoryLayer(ttl=60, max_size=200, eviction="tinylfu", clock=clock)
    rng = random.Random(1)
    for i in range(20_000):
        key = f"k{int(rng.paretovariate(1.0)) % 5_000}"
        got = layer.get(key)
        if got is None:
            layer.set(key, entry(f"value of {key}"), 60.0)
        else:
            assert got.value == f"value of {key}"
        if i % 500 == 0:
            assert layer.size() <= 200
    assert layer.size() == 200
    assert layer.evictions > 0
    assert len(layer._policy or ()) == layer.size()
    for key in layer.keys("*"):
        found = layer.get(key)
        assert found is not None
        assert found.value == f"value of {key}"


def test_expiry_is_still_honoured() -> None:
    clock = ManualClock(T0)
    layer = MemoryLayer(ttl=60, max_size=10, eviction="tinylfu", clock=clock)
    layer.set("short", entry("s", ttl=5), 5.0)
    layer.set("long", entry("l", ttl=500), 500.0)
    for _ in range(5):
        assert layer.get("short") is not None
    clock.advance(6)
    assert layer.get("short") is None
    assert layer.has("short") is False
    assert layer.size() == 1  # the expired key left the map and the policy
    assert len(layer._policy or ()) == 1
    found = layer.get("long")
    assert found is not None
    assert found.value == "l"


def test_deletes_and_clear_reach_the_policy() -> None:
    layer = MemoryLayer(ttl=None, max_size=50, eviction="tinylfu")
    for i in range(50):
        layer.set(f"k{i}", entry(i, ttl=None), None)
    layer.delete("k1")
    layer.delete_many(["k2", "k3", "nope"])
    assert layer.delete_matching("k4?") == 10
    assert layer.size() == 37
    assert len(layer._policy or ()) == 37
    # Room for 13 new keys without any eviction.
    for i in range(13):
        layer.set(f"n{i}", entry(i, ttl=None), None)
    assert layer.evictions == 0
    layer.clear()
    assert layer.size() == 0
    assert len(layer._policy or ()) == 0


def test_overwriting_a_key_keeps_one_copy() -> None:
    layer = MemoryLayer(ttl=None, max_size=3, eviction="tinylfu")
    for _ in range(3):
        layer.set("a", entry("a1", ttl=None), None)
    layer.set("a", entry("a2", ttl=None), None)
    assert layer.size() == 1
    assert len(layer._policy or ()) == 1
    found = layer.get("a")
    assert found is not None
    assert found.value == "a2"


def test_the_byte_bound_evicts_through_the_policy() -> None:
    layer = MemoryLayer(ttl=None, max_size=1_000, max_bytes=20_000, eviction="tinylfu")
    for i in range(200):
        layer.set(f"k{i}", entry("x" * 500, ttl=None), None)
        assert layer.approximate_bytes <= 20_000
    assert 0 < layer.size() < 200
    assert len(layer._policy or ()) == layer.size()


def test_a_scan_does_not_flush_the_hot_keys_of_the_layer() -> None:
    """The case LRU cannot handle: hot keys read often, then one pass over many new keys."""
    results = {}
    for eviction in ("lru", "tinylfu"):
        layer = MemoryLayer(ttl=None, max_size=100, eviction=eviction)  # type: ignore[arg-type]
        hot = [f"hot{i}" for i in range(50)]
        for key in hot:
            layer.set(key, entry(key, ttl=None), None)
        for _ in range(40):  # more than the log holds between two writes: replayed in batches
            for key in hot:
                assert layer.get(key) is not None
        for i in range(400):
            layer.set(f"scan{i}", entry(i, ttl=None), None)
        results[eviction] = sum(layer.get(key) is not None for key in hot)
    assert results["tinylfu"] == 50
    assert results["lru"] == 0


async def test_a_cache_stack_on_a_tinylfu_layer() -> None:
    clock = ManualClock(T0)
    layer = MemoryLayer(ttl=60, max_size=64, eviction="tinylfu", clock=clock)
    cache = CacheStack([layer], clock=clock)
    fetched: list[str] = []

    async def fetch_for(key: str) -> str:
        fetched.append(key)
        return f"v:{key}"

    try:
        rng = random.Random(2)
        for _ in range(3_000):
            key = f"k{min(int(rng.expovariate(1 / 40)), 999)}"

            async def fetch(key: str = key) -> str:
                return await fetch_for(key)

            assert await cache.get(key, fetch, ttl=30) == f"v:{key}"
            assert layer.size() <= 64
        hits = 3_000 - len(fetched)
        assert hits > 1_500  # the hot part of the distribution stays in memory
        # Expiry through the stack: after the TTL every key is fetched again.
        clock.advance(31)
        fetched.clear()

        async def again() -> str:
            return await fetch_for("k0")

        assert await cache.get("k0", again, ttl=30) == "v:k0"
        assert fetched == ["k0"]
    finally:
        await cache.aclose()


@pytest.fixture
def frequent_thread_switches() -> Iterator[None]:
    """Make the GIL switch threads every microsecond so the operations really interleave."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


@pytest.mark.parametrize("max_bytes", [None, 40_000])
@pytest.mark.usefixtures("frequent_thread_switches")
def test_threads_hammering_a_tinylfu_layer(max_bytes: int | None) -> None:
    clock = ManualClock(T0)
    layer = MemoryLayer(ttl=60, max_size=50, eviction="tinylfu", max_bytes=max_bytes, clock=clock)
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            start.wait()
            for i in range(4_000):
                key = f"k{rng.randrange(200)}"
                op = rng.random()
                if op < 0.4:
                    layer.set(key, entry("x" * rng.randrange(2_000)), 60.0)
                elif op < 0.85:
                    got = layer.get(key)
                    assert got is None or isinstance(got, Entry)
                elif op < 0.95:
                    layer.delete(key)
                elif op < 0.98:
                    layer.keys("k1*", 10)
                else:
                    layer.delete_matching(f"k{rng.randrange(10)}?")
                if i % 500 == 0:
                    assert layer.size() <= 50
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert layer.size() <= 50
    policy = layer._policy
    assert policy is not None
    assert len(policy) == layer.size()
    assert set(layer.keys()) == {k for k in layer._metas if k in policy}


@pytest.mark.usefixtures("frequent_thread_switches")
def test_threads_hammering_a_sync_stack_on_a_tinylfu_layer() -> None:
    layer = MemoryLayer(ttl=60, max_size=40, eviction="tinylfu")
    cache = SyncCacheStack([layer])
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            start.wait()
            for _ in range(1_500):
                key = f"k{rng.randrange(150)}"
                op = rng.random()
                if op < 0.7:
                    assert cache.get(key, lambda key=key: f"v:{key}", ttl=60) == f"v:{key}"
                elif op < 0.9:
                    cache.set(key, f"v:{key}", ttl=60)
                else:
                    cache.delete(key)
                assert layer.size() <= 40
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=work, args=(seed,)) for seed in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        assert layer.size() <= 40
    finally:
        cache.close()
