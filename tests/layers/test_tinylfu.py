"""TinyLfuPolicy (W-TinyLFU) on its own: bounds under random call orders, scan resistance,
frequency admission, aging, the hill climber, and a hit-ratio check against LRU."""

from __future__ import annotations

import bisect
import itertools
import random
from collections import OrderedDict

import pytest

from layercache.layers._tinylfu import TinyLfuPolicy


def check_invariants(policy: TinyLfuPolicy, resident: set[str]) -> None:
    """The policy tracks exactly the owner's keys, in disjoint segments, within its bounds."""
    window = set(policy._window)
    probation = set(policy._probation)
    protected = set(policy._protected)
    assert not window & probation
    assert not window & protected
    assert not probation & protected
    assert window | probation | protected == resident
    assert len(policy) == len(resident) <= policy.capacity
    assert all(key in policy for key in resident)
    initial = policy._initial_window
    upper = max(1, initial + int((policy.capacity - initial) * 0.8))
    assert 1 <= policy.window_max <= upper
    assert 0 <= policy.protected_max <= policy.capacity
    for segment in (policy._window, policy._probation, policy._protected):
        for value in segment.values():
            frequency, unfolded = value >> 4, value & 0xF
            assert 0 <= unfolded <= frequency <= 15


@pytest.mark.parametrize("capacity", [1, 2, 3, 7, 50, 300])
def test_random_call_orders_keep_every_invariant(capacity: int) -> None:
    """Thousands of seeded operations, odd orders included (hits and removals of unknown keys,
    inserts of resident keys, clears, evictions on demand): the checker never finds a key
    tracked twice, a key the owner dropped, or more keys than the capacity."""
    rng = random.Random(capacity)
    # A small sample factor so that aging and the hill climber run many times.
    policy = TinyLfuPolicy(capacity, sample_factor=1, seed=capacity)
    resident: set[str] = set()
    universe = [f"k{i}" for i in range(capacity * 4 + 8)]
    for step in range(20_000):
        key = rng.choice(universe)
        op = rng.random()
        if op < 0.45:
            if key in resident:
                policy.record_hit(key)
            else:
                evicted = policy.insert(key)
                resident.add(key)
                if evicted is not None:
                    assert evicted != key, "the newcomer is never its own victim"
                    assert evicted in resident
                    resident.discard(evicted)
        elif op < 0.75:
            policy.record_hit(key)  # resident or not: an unknown key is ignored
        elif op < 0.9:
            policy.remove(key)  # resident or not
            resident.discard(key)
        elif op < 0.95:
            if key in resident:
                assert policy.insert(key) is None  # a resident key: counted as a hit
        elif op < 0.99:
            policy.record_hits(rng.sample(universe, 5))
        elif op < 0.998:
            evicted = policy.evict()
            if evicted is None:
                assert not resident
            else:
                assert evicted in resident
                resident.discard(evicted)
        else:
            policy.clear()
            resident.clear()
        if step % 97 == 0:
            check_invariants(policy, resident)
    check_invariants(policy, resident)


def test_odd_calls_never_raise() -> None:
    policy = TinyLfuPolicy(1)
    policy.record_hit("nobody")
    policy.remove("nobody")
    assert policy.evict() is None
    policy.record_hits(["a", "b"])
    assert policy.insert("a") is None
    assert policy.insert("a") is None  # again: a hit
    assert policy.insert("b") == "a"  # capacity 1: the older key goes
    assert "b" in policy
    assert "a" not in policy
    policy.clear()
    assert len(policy) == 0
    assert policy.evict() is None
    assert policy.frequency("never seen") == 0
    assert repr(policy).startswith("TinyLfuPolicy(capacity=1")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"capacity": 0},
        {"capacity": -3},
        {"capacity": True},
        {"capacity": 2.5},
        {"capacity": 10, "window_share": 0.0},
        {"capacity": 10, "window_share": 1.0},
        {"capacity": 10, "protected_share": 1.0},
        {"capacity": 10, "sample_factor": 0},
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"capacity|window_share|protected_share|sample_factor"):
        TinyLfuPolicy(**kwargs)  # type: ignore[arg-type]


# -- admission and eviction ---------------------------------------------------------------------


def fill(policy: TinyLfuPolicy, keys: list[str], resident: set[str]) -> None:
    for key in keys:
        evicted = policy.insert(key)
        resident.add(key)
        if evicted is not None:
            resident.discard(evicted)


def test_a_one_pass_scan_does_not_flush_the_hot_set() -> None:
    policy = TinyLfuPolicy(100, seed=1)
    resident: set[str] = set()
    hot = [f"hot{i}" for i in range(60)]
    fill(policy, hot, resident)
    for _ in range(5):
        policy.record_hits(hot)
    # A scan of 500 keys read once each: an LRU of 100 would end with none of the hot keys.
    fill(policy, [f"scan{i}" for i in range(500)], resident)
    assert len(resident) == 100
    assert all(key in resident for key in hot)


def test_a_long_scan_beside_a_hot_set_still_in_use() -> None:
    """50 times the capacity of keys read once, while the hot set keeps being read (one hot
    read per 10 scan keys): aging happens several times, the hot set stays."""
    policy = TinyLfuPolicy(100, seed=11)
    resident: set[str] = set()
    hot = [f"hot{i}" for i in range(60)]
    fill(policy, hot, resident)
    policy.record_hits(hot)
    for i in range(5_000):
        fill(policy, [f"scan{i}"], resident)
        if i % 10 == 0:
            key = hot[(i // 10) % len(hot)]
            if key in resident:
                policy.record_hit(key)
    assert all(key in resident for key in hot)


def test_a_key_read_more_often_than_the_victim_is_admitted() -> None:
    policy = TinyLfuPolicy(50, seed=2, adaptive=False)
    resident: set[str] = set()
    fill(policy, [f"old{i}" for i in range(50)], resident)
    # "fresh" misses over and over (as if each read were a miss that an owner then dropped):
    # its count grows past the victims' (each read once), so it stays in the end.
    for _ in range(4):
        fill(policy, ["fresh"], resident)
        policy.remove("fresh")
        resident.discard("fresh")
    fill(policy, ["fresh"], resident)
    # Push it out of the window: the admission duel against probation's oldest key.
    fill(policy, [f"push{i}" for i in range(5)], resident)
    assert "fresh" in resident
    assert policy.frequency("fresh") > policy.frequency("old1")
    # A key read once loses its duel against a victim read as often: ties keep the victim.
    before = set(resident)
    evicted = policy.insert("once")
    fill(policy, [f"more{i}" for i in range(3)], resident)
    assert evicted is not None
    assert not (before - resident - {evicted}) or len(before - resident) <= 4


def test_frequent_victims_survive_a_stream_of_new_keys() -> None:
    """Keys read a few times stay while a stream of new keys (each seen once) passes: the
    newcomers lose their admission duels (their frequency is 1, the victims' more)."""
    policy = TinyLfuPolicy(200, seed=3, adaptive=False)
    resident: set[str] = set()
    warm = [f"warm{i}" for i in range(150)]
    fill(policy, warm, resident)
    for _ in range(3):
        policy.record_hits(warm)
    fill(policy, [f"new{i}" for i in range(2_000)], resident)
    assert all(key in resident for key in warm)


# -- the sketch ---------------------------------------------------------------------------------


def test_aging_halves_the_counts() -> None:
    policy = TinyLfuPolicy(64, sample_factor=4, seed=4, adaptive=False)
    resident: set[str] = set()
    fill(policy, [f"r{i}" for i in range(40)], resident)  # the sketch exists from 32 keys
    assert policy._rows, "the sketch is allocated once half the capacity is used"
    # "k" misses 9 times (its owner drops it in between): 1 in the doorkeeper, 8 counted.
    for _ in range(9):
        policy.insert("k")
        policy.remove("k")
    assert policy.frequency("k") == 9
    resident_before = policy.frequency("r0")
    assert resident_before >= 1
    policy._age()
    # The counters halve (8 -> 4) and the doorkeeper is emptied (no +1 any more).
    assert policy.frequency("k") == 4
    assert policy.frequency("r0") == resident_before // 2
    # Aging is triggered by the counted accesses: sample_factor * capacity of them.
    additions = policy._additions
    fill(policy, [f"fresh{i}" for i in range(4 * 64 * 2)], resident)
    assert policy._additions < additions + 4 * 64 * 2


def test_unfolded_hits_reach_the_sketch_when_a_key_leaves() -> None:
    policy = TinyLfuPolicy(16, seed=5, adaptive=False)
    resident: set[str] = set()
    fill(policy, [f"r{i}" for i in range(10)], resident)
    policy.record_hits(["r3"] * 6)
    frequency = policy.frequency("r3")
    assert frequency >= 7
    policy.remove("r3")
    resident.discard("r3")
    # Its history is in the sketch now: the estimate of the departed key is the same.
    assert policy.frequency("r3") == frequency


# -- the hill climber ---------------------------------------------------------------------------


def replay(policy: TinyLfuPolicy, trace: list[str]) -> int:
    resident: set[str] = set()
    hits = 0
    for key in trace:
        if key in resident:
            policy.record_hit(key)
            hits += 1
        else:
            evicted = policy.insert(key)
            resident.add(key)
            if evicted is not None:
                resident.discard(evicted)
    return hits


def test_the_climber_grows_the_window_on_a_recency_biased_trace() -> None:
    """Keys are re-read soon after they first appear and never again later: frequency is
    useless, recency is everything. The window (1% at first) grows."""
    rng = random.Random(6)
    trace = []
    for head in range(1, 60_000):
        trace.append(f"r{head}")
        for _ in range(3):
            trace.append(f"r{max(1, head - int(rng.expovariate(1 / 150)))}")
    policy = TinyLfuPolicy(500, seed=6)
    initial = policy.window_max
    replay(policy, trace)
    assert policy.window_max > 10 * initial
    assert policy.protected_max >= 0


def test_the_climber_shrinks_the_window_on_a_loop() -> None:
    policy = TinyLfuPolicy(1_000, window_share=0.2, seed=7)
    initial = policy.window_max
    assert initial == 200
    loop = [f"l{i}" for i in range(1_200)]
    hits = replay(policy, loop * 60)
    assert policy.window_max < initial
    # LRU never hits on a loop larger than itself; W-TinyLFU keeps most of the loop.
    assert hits / (len(loop) * 60) > 0.6


def test_the_window_stays_within_its_bounds() -> None:
    rng = random.Random(8)
    for capacity in (2, 10, 100):
        policy = TinyLfuPolicy(capacity, sample_factor=1, seed=capacity)
        upper = policy._initial_window + int((capacity - policy._initial_window) * 0.8)
        for phase in range(30):
            # Alternate frequency-friendly and recency-friendly stretches.
            if phase % 2:
                trace = [f"p{rng.randrange(capacity // 2 + 1)}" for _ in range(capacity * 20)]
            else:
                trace = [f"n{phase}:{i}" for i in range(capacity * 20)]
            replay(policy, trace)
            assert 1 <= policy.window_max <= max(1, upper)
            assert policy.protected_max >= 0


def test_without_adaptation_the_window_keeps_its_size() -> None:
    policy = TinyLfuPolicy(1_000, adaptive=False, seed=9)
    replay(policy, [f"l{i % 1_300}" for i in range(50_000)])
    assert policy.window_max == 10


# -- hit ratio ----------------------------------------------------------------------------------


def zipf_trace(seed: int, keys: int, s: float, reads: int) -> list[str]:
    rng = random.Random(seed)
    cumulative = list(itertools.accumulate(1.0 / (k + 1) ** s for k in range(keys)))
    total = cumulative[-1]
    return [
        f"z{bisect.bisect(cumulative, rng.random() * total, 0, keys - 1)}" for _ in range(reads)
    ]


def lru_hits(capacity: int, trace: list[str]) -> int:
    data: OrderedDict[str, None] = OrderedDict()
    hits = 0
    for key in trace:
        if key in data:
            data.move_to_end(key)
            hits += 1
        else:
            data[key] = None
            if len(data) > capacity:
                data.popitem(last=False)
    return hits


def test_tinylfu_beats_lru_on_a_zipf_trace() -> None:
    trace = zipf_trace(10, 20_000, 0.9, 100_000)
    lru = lru_hits(500, trace) / len(trace)
    tinylfu = replay(TinyLfuPolicy(500, seed=10), trace) / len(trace)
    # Measured: LRU about 0.24, W-TinyLFU about 0.31 (the margin is far above run-to-run
    # variation from hash randomization).
    assert tinylfu > lru + 0.04, (lru, tinylfu)
