"""MemoryLayer: exact LRU / LFU / FIFO eviction order, bounds, clock expiry, threads, globs."""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from layercache import Entry, MemoryLayer
from layercache.layers.memory import DEFAULT_MAX_SIZE, approximate_size
from layercache.testing import ManualClock

T0 = 1_700_000_000.0


def entry(value: Any = "v", clock: ManualClock | None = None, ttl: float | None = 60.0) -> Entry:
    now = clock() if clock is not None else T0
    return Entry(value, now, None if ttl is None else now + ttl)


def make(
    eviction: Any = "lru", max_size: int = 3, **kwargs: Any
) -> tuple[MemoryLayer, ManualClock]:
    clock = ManualClock(T0)
    layer = MemoryLayer(ttl=60, max_size=max_size, eviction=eviction, clock=clock, **kwargs)
    return layer, clock


def put(layer: MemoryLayer, *keys: str) -> None:
    for key in keys:
        layer.set(key, entry(key), 60.0)


def present(layer: MemoryLayer, keys: str = "abcdefgh") -> str:
    """The keys (of single-letter ``keys``) still stored, without touching recency."""
    stored = set(layer.keys("*"))
    return "".join(k for k in keys if k in stored)


# -- eviction order -------------------------------------------------------------------------------


def test_lru_evicts_the_least_recently_read() -> None:
    layer, _ = make("lru")
    put(layer, "a", "b", "c")
    assert layer.get("a") is not None  # a is now the most recent
    put(layer, "d")
    assert present(layer) == "acd"
    assert layer.get("c") is not None
    put(layer, "e")  # a is the least recent now
    assert present(layer) == "cde"
    put(layer, "c")  # overwriting refreshes recency too
    put(layer, "f")
    assert present(layer) == "cef"
    assert layer.evictions == 3


def test_lru_order_follows_a_long_access_sequence() -> None:
    """LRU is the CLOCK approximation: a read marks a key; eviction takes keys oldest-written
    first, moving a marked one to the young end (unmarked) and evicting the first unmarked."""
    layer, _ = make("lru", max_size=4)
    rng = random.Random(5)
    queue: list[str] = []  # oldest first
    marked: set[str] = set()
    for _ in range(2000):
        key = rng.choice("abcdefgh")
        if rng.random() < 0.5:
            if layer.get(key) is not None:
                marked.add(key)
            else:
                assert key not in queue
        else:
            put(layer, key)
            if key in queue:
                queue.remove(key)
                marked.discard(key)
            elif len(queue) == 4:
                while queue[0] in marked:
                    marked.discard(queue[0])
                    queue.append(queue.pop(0))
                queue.pop(0)
            queue.append(key)
        assert layer.keys() == queue


def test_lru_keeps_a_hot_set_through_a_scan() -> None:
    """What LRU is for: keys read since they were written survive a scan of new keys longer
    than the space left for it."""
    layer, _ = make("lru", max_size=10)
    put(layer, *"abcdefghij")
    for key in "abc":
        assert layer.get(key) is not None
    put(layer, *"klmnopq")  # seven new keys: only unread ones may go
    assert set("abc") <= set(layer.keys())
    assert layer.size() == 10


def test_lfu_evicts_the_least_often_read_ties_by_age() -> None:
    layer, _ = make("lfu")
    put(layer, "a", "b", "c")
    for _ in range(2):
        layer.get("a")
    layer.get("b")
    put(layer, "d")  # counts a=3, b=2, c=1 -> c goes
    assert present(layer) == "abd"
    put(layer, "e")  # d (count 1) is the only one at the minimum
    assert present(layer) == "abe"
    layer.get("e")
    layer.get("e")  # e=3, b=2, a=3
    put(layer, "f")
    assert present(layer) == "aef"
    assert layer.evictions == 3


def test_lfu_ties_go_to_the_oldest() -> None:
    layer, _ = make("lfu")
    put(layer, "a", "b", "c")
    for key in "cba":
        layer.get(key)  # all at count 2; a reached it last, c first
    put(layer, "d")
    assert present(layer) == "abd"
    layer.get("d")  # d=2, same count as a and b; a and b reached it earlier
    put(layer, "e")
    assert present(layer) == "ade"


def test_lfu_overwrite_resets_the_count() -> None:
    layer, _ = make("lfu")
    put(layer, "a", "b", "c")
    for _ in range(5):
        layer.get("a")
    layer.get("b")
    layer.get("c")
    put(layer, "a")  # a new value: a starts again at 1
    put(layer, "d")
    assert present(layer) == "bcd"


def test_lfu_min_count_survives_deletes() -> None:
    layer, _ = make("lfu")
    put(layer, "a", "b", "c")
    layer.get("a")
    layer.get("b")
    layer.delete("c")  # the only count-1 key goes; the minimum bucket is now 2
    put(layer, "d")  # d=1, no eviction (size 3)
    layer.get("d")
    layer.get("d")  # d=3
    put(layer, "e")  # evicts the oldest at count 2: a
    assert present(layer) == "bde"


def test_fifo_ignores_reads_and_evicts_the_oldest_write() -> None:
    layer, _ = make("fifo")
    put(layer, "a", "b", "c")
    for _ in range(10):
        layer.get("a")
    put(layer, "d")
    assert present(layer) == "bcd"
    put(layer, "b")  # a rewrite is a new write: b moves to the end
    put(layer, "e")
    assert present(layer) == "bde"
    assert layer.evictions == 2


@pytest.mark.parametrize("eviction", ["lru", "lfu", "fifo"])
def test_many_entries_keep_the_bound_and_count_evictions(eviction: str) -> None:
    layer, _ = make(eviction, max_size=1000)
    for i in range(100_000):
        layer.set(f"k{i}", entry(i), 60.0)
        if eviction == "lfu" and i % 7 == 0:
            layer.get(f"k{i}")
    assert layer.size() == 1000
    assert layer.evictions == 99_000
    if eviction == "fifo":
        assert layer.keys() == [f"k{i}" for i in range(99_000, 100_000)]
    if eviction == "lru":
        assert sorted(layer.keys()) == sorted(f"k{i}" for i in range(99_000, 100_000))


def test_default_max_size_is_bounded() -> None:
    assert MemoryLayer().max_size == DEFAULT_MAX_SIZE


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_size": 0},
        {"max_size": -1},
        {"max_size": True},
        {"max_size": 1.5},
        {"eviction": "random"},
        {"ttl": -1},
        {"ttl": "60"},
        {"max_bytes": 0},
        {"name": ""},
    ],
    ids=repr,
)
def test_constructor_refuses_bad_arguments(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        MemoryLayer(**kwargs)


# -- max_bytes -----------------------------------------------------------------------------------


def test_max_bytes_bound_holds() -> None:
    layer, _ = make("lru", max_size=10_000, max_bytes=20_000)
    rng = random.Random(11)
    for i in range(2_000):
        layer.set(f"k{i}", entry("x" * rng.randrange(0, 2_000)), 60.0)
        assert 0 <= layer.approximate_bytes <= 20_000
    assert layer.evictions > 0
    assert layer.size() < 2_000
    layer.clear()
    assert layer.approximate_bytes == 0


def test_single_oversized_value_is_not_stored() -> None:
    layer, _ = make("lru", max_size=100, max_bytes=1_000)
    put(layer, "a", "b")
    layer.set("big", entry("x" * 5_000), 60.0)
    assert layer.get("big") is None
    assert present(layer) == "ab", "an oversized value must not evict what is there"
    assert layer.evictions == 0


def test_oversized_overwrite_drops_the_old_value() -> None:
    # Keeping the old value would serve data the caller just replaced.
    layer, _ = make("lru", max_size=100, max_bytes=1_000)
    put(layer, "k")
    layer.set("k", entry("x" * 5_000), 60.0)
    assert layer.get("k") is None
    assert layer.size() == 0
    assert layer.approximate_bytes == 0


def test_bytes_follow_overwrites_and_deletes() -> None:
    layer, _ = make("lru", max_size=100, max_bytes=100_000)
    layer.set("k", entry("x" * 1_000), 60.0)
    first = layer.approximate_bytes
    assert first >= 1_000
    layer.set("k", entry("x" * 10), 60.0)
    assert layer.approximate_bytes < first
    layer.delete("k")
    assert layer.approximate_bytes == 0


def test_approximate_size_is_bounded_for_huge_containers() -> None:
    big = list(range(1_000_000))
    assert approximate_size(big) >= len(big) * 8
    nested = {i: {"x": list(range(100))} for i in range(1_000)}
    assert approximate_size(nested) > 0


# -- clock-based expiry ---------------------------------------------------------------------------


def test_entries_expire_on_the_clock() -> None:
    layer, clock = make("lru")
    layer.set("k", entry("v", clock, ttl=10), 10.0)
    clock.advance(9.999)
    assert layer.get("k") is not None
    assert layer.has("k")
    assert layer.ttl("k") == pytest.approx(0.001, abs=1e-6)
    clock.advance(0.001)
    assert layer.get("k") is None
    assert not layer.has("k")
    assert layer.ttl("k") is None
    assert layer.size() == 0, "an expired entry is dropped when read"


def test_storage_ttl_shorter_than_the_entry_clips_it() -> None:
    layer, clock = make("lru")
    layer.set("k", Entry("v", clock(), clock() + 100, clock() + 200), 5.0)
    stored = layer.get("k")
    assert stored is not None
    assert stored.expires_at == clock() + 5
    assert stored.fresh_until == clock() + 5
    clock.advance(5)
    assert layer.get("k") is None


def test_entry_windows_outlive_the_fresh_ttl() -> None:
    layer, clock = make("lru")
    layer.set("k", Entry("v", clock(), clock() + 10, clock() + 30), None)
    clock.advance(20)
    stale = layer.get("k")
    assert stale is not None, "still inside its stale window"
    assert not stale.is_fresh(clock())
    clock.advance(10)
    assert layer.get("k") is None


def test_no_ttl_never_expires() -> None:
    layer, clock = make("lru")
    layer.set("k", entry("v", clock, ttl=None), None)
    clock.advance(10**9)
    assert layer.get("k") is not None
    assert layer.ttl("k") is None


@pytest.mark.parametrize("ttl", [0, -1])
def test_non_positive_storage_ttl_removes_the_key(ttl: float) -> None:
    layer, clock = make("lru")
    put(layer, "k")
    layer.set("k", entry("new", clock), ttl)
    assert layer.get("k") is None


def test_expired_entries_are_not_listed_or_counted_as_usable() -> None:
    layer, clock = make("lru", max_size=10)
    layer.set("short", entry("v", clock, ttl=1), 1.0)
    layer.set("long", entry("v", clock, ttl=100), 100.0)
    clock.advance(2)
    assert layer.keys() == ["long"]
    assert layer.get_many(["short", "long", "absent"])[0] is None
    assert layer.get_many(["long"])[0] is not None


# -- bulk operations and globs --------------------------------------------------------------------


def test_get_many_and_set_many_keep_order() -> None:
    layer, clock = make("lru", max_size=10)
    layer.set_many([("a", entry(1, clock), 60.0), ("b", entry(2, clock), None)])
    got = layer.get_many(["b", "x", "a", "b"])
    assert [e.value if e else None for e in got] == [2, None, 1, 2]
    layer.delete_many(["a", "x"])
    assert layer.keys() == ["b"]


def test_keys_and_delete_matching_use_redis_globs() -> None:
    layer, _ = make("lru", max_size=100)
    keys = ["user:1", "user:2", "user:10", "users", "post:1", "lit*eral", "litXeral", "emoji:🎉"]
    put(layer, *keys)
    assert sorted(layer.keys("user:?")) == ["user:1", "user:2"]
    assert sorted(layer.keys("user:*")) == ["user:1", "user:10", "user:2"]
    assert layer.keys("emoji:?") == ["emoji:🎉"]
    assert layer.keys("[lp]*") == ["post:1", "lit*eral", "litXeral"]
    assert len(layer.keys(None, 3)) == 3
    assert len(layer.keys("*", 100)) == len(keys)
    assert layer.keys("nomatch*") == []
    assert layer.delete_matching("lit\\*eral") == 1
    assert "litXeral" in layer.keys("*")
    assert layer.delete_matching("user:*") == 3
    assert layer.delete_matching("user:*") == 0
    assert sorted(layer.keys()) == sorted(["users", "post:1", "litXeral", "emoji:🎉"])
    with pytest.raises(ValueError, match="pattern"):
        layer.delete_matching("")


def test_delete_matching_keeps_lfu_bookkeeping_consistent() -> None:
    layer, _ = make("lfu", max_size=3)
    put(layer, "a1", "a2", "b")
    layer.get("b")
    assert layer.delete_matching("a*") == 2
    put(layer, "c", "d")  # no eviction needed: 3 entries
    put(layer, "e")  # evicts the oldest at count 1: c
    assert sorted(layer.keys()) == ["b", "d", "e"]


# -- threads ---------------------------------------------------------------------------------------


@pytest.fixture
def frequent_thread_switches() -> Iterator[None]:
    """Make the GIL switch threads every microsecond so the operations really interleave."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


@pytest.mark.parametrize("eviction", ["lru", "lfu", "fifo"])
@pytest.mark.parametrize("max_bytes", [None, 40_000])
@pytest.mark.usefixtures("frequent_thread_switches")
def test_threads_hammering_the_layer(eviction: Any, max_bytes: int | None) -> None:
    clock = ManualClock(T0)
    layer = MemoryLayer(ttl=60, max_size=50, eviction=eviction, max_bytes=max_bytes, clock=clock)
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(seed: int) -> None:
        rng = random.Random(seed)
        try:
            start.wait()
            for i in range(4_000):
                key = f"k{rng.randrange(200)}"
                op = rng.random()
                if op < 0.45:
                    layer.set(key, Entry("x" * rng.randrange(2_000), T0, T0 + 60), 60.0)
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
    if max_bytes is not None:
        assert 0 <= layer.approximate_bytes <= max_bytes
    # The layer still works and its bookkeeping is consistent: fill it up to the bound.
    for i in range(100):
        layer.set(f"after{i}", Entry(i, T0, T0 + 60), 60.0)
    assert layer.size() <= 50
    assert layer.get("after99") is not None
    layer.clear()
    assert layer.size() == 0
    assert layer.approximate_bytes == 0


class _Watched(dict[str, Any]):
    """A dict that counts the mutations made through it."""

    mutations = 0

    def __setitem__(self, key: str, value: Any) -> None:
        self.mutations += 1
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self.mutations += 1
        super().__delitem__(key)

    def pop(self, *args: Any) -> Any:
        self.mutations += 1
        return super().pop(*args)


@pytest.mark.parametrize("eviction", ["lru", "fifo"])
def test_reads_never_change_the_maps(eviction: str) -> None:
    """Reads take no lock, so they must not mutate what a locked copy iterates (an
    OrderedDict.move_to_end on every hit once made keys() fail with "mutated during
    iteration" under threads): a read only marks the key."""
    layer = MemoryLayer(ttl=60, eviction=eviction)  # type: ignore[arg-type]
    for key in ("a1", "a2", "b1"):
        layer.set(key, Entry("v", T0, None), None)
    layer._metas = metas = _Watched(layer._metas)
    layer._values = values = _Watched(layer._values)
    for _ in range(3):
        for key in ("a1", "a2", "b1", "missing"):
            layer.get(key)
    assert metas.mutations == 0
    assert values.mutations == 0
    assert sorted(layer.keys("a*")) == ["a1", "a2"]
    assert layer.delete_matching("a*") == 2
    assert layer.keys() == ["b1"]
