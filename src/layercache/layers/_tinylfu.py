"""W-TinyLFU: the admission and eviction policy behind ``MemoryLayer(eviction="tinylfu")``.

The policy tracks keys only; the layer keeps the values. It follows the design described by
Einziger, Friedman and Manes ("TinyLFU: A Highly Efficient Cache Admission Policy", 2017) and
in Caffeine's documentation, written here from scratch for CPython's cost model:

* **Window**: a small LRU (1% of the capacity at first) that every new key enters, so a burst
  of new keys can build up some frequency before it has to compete.
* **Main**: a segmented LRU, *probation* (20% of the main space) and *protected* (80%). The
  key leaving the full window is the *candidate*; when the cache is full it enters probation
  only if it is estimated to be read more often than the *victim*, probation's least recently
  used key (a tie keeps the victim). A hit in probation promotes a key to protected, whose
  overflow is demoted back to probation.
* **Frequency sketch**: a count-min sketch, 4 rows of counters that saturate at 15, one
  ``bytearray`` per row of twice the capacity (rounded up to a power of two). The 4 indexes
  are slices of the key's ``hash()``: two 30-bit halves, the low and the high bits of each
  (disjoint up to 32,768 counters per row, overlapping a little above).
* **Doorkeeper**: a Bloom filter (8 one-byte slots per row counter, two probes made from the
  row indexes) in front of the sketch: the first sighting of a key since the last aging only
  marks it, so one-hit wonders do not reach the counters. A key's estimate is its smallest
  counter plus 1 when the doorkeeper knows it.
* **Aging**: after ``sample_factor * capacity`` counted accesses (those that changed a counter
  or marked the doorkeeper, as in Caffeine) every counter is halved (one ``bytes.translate``
  per row), the doorkeeper is emptied and so is every resident's frequency halved.
* **Adaptive window** (hill climbing, Caffeine's rule): every ``sample_factor * capacity``
  requests the hit rate of the sample is compared with the previous one; the window grows or
  shrinks by a step (6.25% of the capacity at first, shrinking first), the direction reverses
  when the hit rate dropped, and the step decays by 2% per sample (a full step again when the
  hit rate moved by 5 points or more). The window takes its room from the protected segment
  and gives it back (probation keeps its share), so it ranges from 1 key to about 80% of the
  capacity. A recency-biased workload ends with a large window (LRU-like), a frequency-biased
  or looping one with a small one.
* Defence against crafted collisions (as in Caffeine): a candidate with a frequency of 6 or
  more that is not more frequent than the victim still gets in 1 time in 128, so colliding
  keys cannot pin a victim. The hash is CPython's ``hash()``, keyed per process for ``str``
  (SipHash, unless ``PYTHONHASHSEED`` fixes it); the rows use 4 x log2(row width) of its bits,
  at most 60.

Cost on CPython: a hit must stay close to an LRU's ``move_to_end``, so a hit does not touch
the sketch. Each resident key carries a small int in its segment's ordered dict,
``frequency << 4 | unfolded``: its frequency estimate (taken from the sketch when it was
inserted, then counted up by its hits; a resident key never misses, so its counters move only
through collisions and aging) and how many of those hits the sketch has not seen yet. The
admission duel compares two ints with no hashing; a key leaving with unfolded hits adds them to
its counters, so its history survives for a comeback. The ints stay below 256: CPython's small
int cache makes them free.

Memory: the three ordered dicts (one node per resident key), and once the policy first holds
half its capacity (no admission decision is needed before the cache is full) the sketch and
the doorkeeper: 12 bytes per counter of a row, about 24 to 48 bytes per unit of capacity. A
large ``max_size`` that is never filled costs nothing for them.

Not thread-safe: the owner calls it under its lock. Odd call orders never raise: ``record_hit``
and ``remove`` of an unknown key are ignored, ``insert`` of a resident key counts as a hit.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Iterable

__all__ = ["TinyLfuPolicy"]

_COUNTER_MAX = 15
# A resident key's int is ``frequency << 4 | unfolded``: its current frequency estimate (at
# most 15) and how much of it the sketch has not seen yet (hits while resident).
_SATURATED = _COUNTER_MAX << 4
_HIT = 0x11  # one hit: frequency + 1, unfolded + 1
_UNFOLDED = 0xF
# A counter after one more access (saturating).
_INCREMENT = bytes(min(i + 1, _COUNTER_MAX) for i in range(256))
# A non-resident key's int after an access, by its counters' minimum before it: seen before
# (the counters take the access, the doorkeeper adds 1) or a first sighting (only the
# doorkeeper's 1).
_SEEN_ESTIMATE = tuple(min(i + 2, _COUNTER_MAX) << 4 for i in range(_COUNTER_MAX + 1))
_FIRST_ESTIMATE = tuple(min(i + 1, _COUNTER_MAX) << 4 for i in range(_COUNTER_MAX + 1))
# Halving every counter of a row at once: bytes.translate with this table.
_HALVE = bytes(i >> 1 for i in range(256))
# Hill climbing (the constants Caffeine documents for its adaptive window).
_STEP_SHARE = 0.0625  # first step: this share of the capacity
_STEP_DECAY = 0.98  # each period the step shrinks by 2%...
_RESTART_THRESHOLD = 0.05  # ...unless the hit rate moved this much: then a full step again
# A candidate at least this frequent may be admitted by chance (1 in 128) against an equally
# or more frequent victim: a defence against crafted hash collisions.
_ADMIT_FLOOR = 6 << 4  # as a resident int
# At most this many keys move between segments in one call after the window or the protected
# segment shrank; the rest follow on later calls (bounded pauses).
_MAX_TRANSFER = 64
# Inserts between two looks at the aging and climbing counters (both are due every
# ``sample_factor * capacity`` events; being up to this many late changes nothing).
_CHECK_EVERY = 32
# Counters per row: twice the capacity, rounded up to a power of two.
_WIDTH_FACTOR = 2


def _halve_resident(value: int) -> int:
    """Age a resident key's int: its frequency halves, as its counters would have; the part
    of the halved frequency the (halved) sketch does not hold stays unfolded."""
    frequency = value >> 4
    in_sketch = (frequency - (value & _UNFOLDED)) >> 1
    frequency >>= 1
    return (frequency << 4) | (frequency - in_sketch if frequency > in_sketch else 0)


class TinyLfuPolicy:
    """Window TinyLFU bookkeeping for at most ``capacity`` keys.

    Args:
        capacity: Most keys tracked (the layer's ``max_size``).
        window_share: Initial share of the capacity given to the window LRU (default 1%).
        protected_share: Share of the main space given to its protected segment (80%).
        sample_factor: The sketch ages after ``sample_factor * capacity`` counted accesses,
            and the hill climber moves after as many requests (default 10).
        adaptive: Whether the hill climber resizes the window (default True).
        seed: Seed of the random admissions (tests); ``None``: random.

    ``insert(key)`` returns the key the owner must drop now, or ``None`` while there is room.
    It never returns the newcomer itself: a new key always enters the window, and the key that
    loses admission is either the candidate leaving the window or the main segment's victim.
    """

    __slots__ = (
        "_adaptive",
        "_additions",
        "_capacity",
        "_checks_left",
        "_doorkeeper",
        "_hits",
        "_initial_window",
        "_misses",
        "_period",
        "_previous_rate",
        "_probation",
        "_protected",
        "_protected_max",
        "_protected_share",
        "_rng",
        "_row_mask",
        "_row_shift",
        "_rows",
        "_sample",
        "_size",
        "_step",
        "_window",
        "_window_max",
        "_window_target",
    )

    def __init__(
        self,
        capacity: int,
        *,
        window_share: float = 0.01,
        protected_share: float = 0.8,
        sample_factor: int = 10,
        adaptive: bool = True,
        seed: int | None = None,
    ) -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, not {capacity!r}")
        if not 0.0 < window_share < 1.0:
            raise ValueError(f"window_share must be between 0 and 1, not {window_share!r}")
        if not 0.0 <= protected_share < 1.0:
            raise ValueError(
                f"protected_share must be at least 0 and below 1, not {protected_share!r}"
            )
        if (
            not isinstance(sample_factor, int)
            or isinstance(sample_factor, bool)
            or sample_factor < 1
        ):
            raise ValueError(f"sample_factor must be a positive int, not {sample_factor!r}")
        self._capacity = capacity
        self._protected_share = protected_share
        self._adaptive = adaptive
        self._rng = random.Random(seed)
        self._sample = sample_factor * capacity
        self._period = sample_factor * capacity
        self._window: OrderedDict[str, int] = OrderedDict()
        self._probation: OrderedDict[str, int] = OrderedDict()
        self._protected: OrderedDict[str, int] = OrderedDict()
        self._size = 0
        self._hits = 0
        self._misses = 0
        self._additions = 0
        self._checks_left = _CHECK_EVERY
        self._previous_rate = 0.0
        self._step = -_STEP_SHARE * capacity
        self._initial_window = max(1, round(capacity * window_share))
        self._window_target = float(self._initial_window)
        self._window_max = 1
        self._protected_max = 0
        self._resize(self._window_target)
        # The sketch: allocated once the policy holds half its capacity (see the module doc).
        self._rows: list[bytearray] = []
        self._row_mask = 0
        self._row_shift = 16
        self._doorkeeper = bytearray()

    # -- the owner's calls ------------------------------------------------------------------

    def record_hit(self, key: str) -> None:
        """A resident key was read (unknown keys are ignored)."""
        self._hits += 1
        protected = self._protected
        value = protected.get(key)
        if value is not None:
            if value < _SATURATED:
                protected[key] = value + _HIT
                self._additions += 1
            protected.move_to_end(key)
            return
        value = self._probation.pop(key, None)
        if value is not None:
            if value < _SATURATED:
                value += _HIT
                self._additions += 1
            protected[key] = value
            if len(protected) > self._protected_max:
                self._demote()
            return
        window = self._window
        value = window.get(key)
        if value is not None:
            if value < _SATURATED:
                window[key] = value + _HIT
                self._additions += 1
            window.move_to_end(key)
        else:
            self._hits -= 1  # not resident: not a hit of this cache

    def record_hits(self, keys: Iterable[str]) -> None:
        """``record_hit`` for each key in order (an owner that logs reads without a lock and
        replays them under its lock, before its next write)."""
        protected = self._protected
        get = protected.get
        move = protected.move_to_end
        record_hit = self.record_hit
        additions = hits = 0
        for key in keys:
            value = get(key)
            if value is None:
                record_hit(key)
                continue
            # A protected key (the most common hit), inlined.
            if value < _SATURATED:
                protected[key] = value + _HIT
                additions += 1
            move(key)
            hits += 1
        self._additions += additions
        self._hits += hits

    def insert(self, key: str) -> str | None:
        """A new key is stored: returns the resident key to drop now, or ``None``.

        The newcomer always enters the window and is never the key returned. An ``insert`` of a
        key already tracked counts as a hit and returns ``None``.
        """
        window = self._window
        probation = self._probation
        if key in window or key in probation or key in self._protected:
            self.record_hit(key)
            return None
        rows = self._rows
        if rows:
            # Count this access (the body of _count, inlined: this is the miss path).
            h = hash(key)
            lo = h & 0x3FFFFFFF
            hi = h >> 34  # signed: row indexes below 0 count from the end of the row
            mask = self._row_mask
            shift = self._row_shift
            i0 = lo & mask
            i1 = lo >> shift
            i2 = hi & mask
            i3 = hi >> shift
            r0, r1, r2, r3 = rows
            a = r0[i0]
            b = r1[i1]
            c = r2[i2]
            d = r3[i3]
            low = a
            if b < low:
                low = b
            if c < low:
                low = c
            if d < low:
                low = d
            doorkeeper = self._doorkeeper
            slot = (i0 << 3) ^ i3
            slot2 = (i1 << 3) ^ i2
            if doorkeeper[slot] and doorkeeper[slot2]:
                # Seen before: every counter takes the access (saturating at 15); the
                # estimate is the new minimum plus the doorkeeper's 1.
                r0[i0] = _INCREMENT[a]
                r1[i1] = _INCREMENT[b]
                r2[i2] = _INCREMENT[c]
                r3[i3] = _INCREMENT[d]
                window[key] = _SEEN_ESTIMATE[low]
                if low < _COUNTER_MAX:  # a saturated key changes no counter
                    self._additions += 1
            else:  # a first sighting (since the last aging) only marks the doorkeeper
                doorkeeper[slot] = 1
                doorkeeper[slot2] = 1
                window[key] = _FIRST_ESTIMATE[low]
                self._additions += 1
        else:
            window[key] = 0
            if self._size + 1 >= (self._capacity + 1) >> 1:
                self._allocate_sketch()
        self._checks_left -= 1
        if self._checks_left <= 0:
            self._check_periods()
        over = len(window) - self._window_max
        if self._size < self._capacity:  # room left: nobody leaves
            self._size += 1
            if over > 0:
                self._shrink_window()
            return None
        if over <= 0:  # the window is within its size (it grew): main gives up a key
            return self._evict_main()
        # Admission: the window's LRU key (the candidate) against main's victim.
        candidate, cvalue = window.popitem(False)
        segment = probation if probation else self._protected
        if segment:
            victim = next(iter(segment))
            vvalue = segment[victim]
            # More frequent wins (ties keep the victim); ``vvalue | 15`` ignores the unfolded
            # half. A frequent loser still gets in 1 time in 128.
            if cvalue > vvalue | _UNFOLDED or (
                cvalue >= _ADMIT_FLOOR and not self._rng.getrandbits(7)
            ):
                del segment[victim]
                probation[candidate] = cvalue
                candidate, cvalue = victim, vvalue
        if cvalue & _UNFOLDED:
            self._fold(candidate, cvalue)
        if over > 1:  # the climber shrank the window
            self._shrink_window()
        return candidate

    def evict(self) -> str | None:
        """Drop and return the key to evict next (main's least recently used, probation first;
        the window's when main is empty), or ``None`` when empty: for an owner that needs room
        for another reason (a byte bound)."""
        if not self._size:
            return None
        self._size -= 1
        return self._evict_main()

    def remove(self, key: str) -> None:
        """A resident key left (deleted, expired); unknown keys are ignored."""
        value = self._window.pop(key, None)
        if value is None:
            value = self._probation.pop(key, None)
            if value is None:
                value = self._protected.pop(key, None)
                if value is None:
                    return
        self._size -= 1
        if value & _UNFOLDED:
            self._fold(key, value)

    def clear(self) -> None:
        """Forget every key, the frequency history and the window adaptation."""
        self._window.clear()
        self._probation.clear()
        self._protected.clear()
        self._size = 0
        self._hits = 0
        self._misses = 0
        self._additions = 0
        self._checks_left = _CHECK_EVERY
        self._previous_rate = 0.0
        self._step = -_STEP_SHARE * self._capacity
        self._resize(float(self._initial_window))
        self._rows = []
        self._doorkeeper = bytearray()

    def __len__(self) -> int:
        return self._size

    def __contains__(self, key: object) -> bool:
        return key in self._window or key in self._probation or key in self._protected

    # -- introspection (tests, benchmarks, repr) --------------------------------------------

    @property
    def capacity(self) -> int:
        """Most keys tracked."""
        return self._capacity

    @property
    def window_max(self) -> int:
        """Current size of the window LRU (moved by the hill climber)."""
        return self._window_max

    @property
    def protected_max(self) -> int:
        """Current size of the main segment's protected part."""
        return self._protected_max

    def segment_sizes(self) -> tuple[int, int, int]:
        """Keys in the window, probation and protected segments."""
        return len(self._window), len(self._probation), len(self._protected)

    def frequency(self, key: str) -> int:
        """Estimated frequency of ``key`` (0 to 15), as admission sees it."""
        for segment in (self._window, self._probation, self._protected):
            value = segment.get(key)
            if value is not None:
                return value >> 4
        return self._estimate(key) if self._rows else 0

    def __repr__(self) -> str:
        window, probation, protected = self.segment_sizes()
        return (
            f"TinyLfuPolicy(capacity={self._capacity}, size={self._size}, "
            f"window={window}/{self._window_max}, probation={probation}, "
            f"protected={protected}/{self._protected_max})"
        )

    # -- admission and eviction -------------------------------------------------------------

    def _evict_main(self) -> str:
        """The cache is full while the window is within its size: main gives up its LRU key
        (after the climber grew the window, or after removals emptied part of the window)."""
        for segment in (self._probation, self._protected, self._window):
            if segment:
                key, value = segment.popitem(False)
                if value & _UNFOLDED:
                    self._fold(key, value)
                return key
        raise AssertionError("unreachable: evicting from an empty policy")  # pragma: no cover

    def _demote(self) -> None:
        protected = self._protected
        probation = self._probation
        limit = self._protected_max
        for _ in range(_MAX_TRANSFER):
            if len(protected) <= limit:
                return
            key, value = protected.popitem(False)
            probation[key] = value

    def _shrink_window(self) -> None:
        """Move the window's overflow (after the climber shrank it) into probation."""
        window = self._window
        probation = self._probation
        limit = self._window_max
        for _ in range(_MAX_TRANSFER):
            if len(window) <= limit:
                return
            key, value = window.popitem(False)
            probation[key] = value

    # -- the sketch -------------------------------------------------------------------------

    def _allocate_sketch(self) -> None:
        width = 16
        while width < self._capacity * _WIDTH_FACTOR:
            width <<= 1
        bits = width.bit_length() - 1
        self._rows = [bytearray(width) for _ in range(4)]
        self._row_mask = width - 1
        # Rows 0 and 2 take the low bits of the hash's two 30-bit halves, rows 1 and 3 their
        # high bits: disjoint up to 2**15 counters per row, overlapping a little above.
        self._row_shift = 30 - bits
        # The doorkeeper: 8 slots per counter of a row, each key probing two of them (its
        # row indexes 0 and 3, and 1 and 2, combined).
        self._doorkeeper = bytearray(width << 3)
        # The keys already resident were each read once (their insert) before the sketch
        # existed: count that read now, so they do not look newer than the keys to come.
        for segment in (self._window, self._probation, self._protected):
            for key, value in list(segment.items()):
                frequency = min(_COUNTER_MAX, self._count(key) + (value >> 4))
                segment[key] = (frequency << 4) | (value & _UNFOLDED)

    def _count(self, key: str) -> int:
        """Record one access of a key that is not resident; return its estimate after it (the
        same steps as in ``insert``, which has them inline)."""
        (i0, i1, i2, i3), slot, slot2 = self._slots(key)
        r0, r1, r2, r3 = self._rows
        low = min(r0[i0], r1[i1], r2[i2], r3[i3])
        doorkeeper = self._doorkeeper
        if doorkeeper[slot] and doorkeeper[slot2]:
            r0[i0] = _INCREMENT[r0[i0]]
            r1[i1] = _INCREMENT[r1[i1]]
            r2[i2] = _INCREMENT[r2[i2]]
            r3[i3] = _INCREMENT[r3[i3]]
            if low < _COUNTER_MAX:
                self._additions += 1
            return _SEEN_ESTIMATE[low] >> 4
        doorkeeper[slot] = 1
        doorkeeper[slot2] = 1
        self._additions += 1
        return _FIRST_ESTIMATE[low] >> 4

    def _slots(self, key: str) -> tuple[tuple[int, int, int, int], int, int]:
        """The counter index in each row and the two doorkeeper slots of ``key`` (the same
        arithmetic as in ``insert``)."""
        h = hash(key)
        lo = h & 0x3FFFFFFF
        hi = h >> 34
        mask = self._row_mask
        shift = self._row_shift
        i0 = lo & mask
        i1 = lo >> shift
        i2 = hi & mask
        i3 = hi >> shift
        return (i0, i1, i2, i3), (i0 << 3) ^ i3, (i1 << 3) ^ i2

    def _estimate(self, key: str) -> int:
        """The sketch's estimate for a key, without counting an access."""
        indexes, slot, slot2 = self._slots(key)
        low = min(row[i] for row, i in zip(self._rows, indexes, strict=True))
        seen = self._doorkeeper[slot] and self._doorkeeper[slot2]
        return min(_COUNTER_MAX, low + (1 if seen else 0))

    def _fold(self, key: str, value: int) -> None:
        """A key leaves: its counters take the hits it had while resident."""
        rows = self._rows
        if not rows:
            return
        unfolded = value & _UNFOLDED
        indexes, _, _ = self._slots(key)
        for row, i in zip(rows, indexes, strict=True):
            row[i] = min(_COUNTER_MAX, row[i] + unfolded)

    # -- aging and hill climbing ------------------------------------------------------------

    def _age(self) -> None:
        """Halve every frequency: the counters, the residents' ints; reset the doorkeeper."""
        self._additions >>= 1
        if not self._rows:
            return
        self._rows = [row.translate(_HALVE) for row in self._rows]
        self._doorkeeper = bytearray(len(self._doorkeeper))
        for segment in (self._window, self._probation, self._protected):
            for key, value in list(segment.items()):
                if value:
                    segment[key] = _halve_resident(value)

    def _check_periods(self) -> None:
        """Every _CHECK_EVERY inserts: age the sketch, move the window, when due."""
        self._misses += _CHECK_EVERY - self._checks_left
        self._checks_left = _CHECK_EVERY
        if self._additions >= self._sample:
            self._age()
        if self._hits + self._misses >= self._period:
            self._end_period()

    def _end_period(self) -> None:
        hits = self._hits
        requests = hits + self._misses
        self._hits = 0
        self._misses = 0
        if self._adaptive and self._capacity > 1 and requests:
            self._climb(hits / requests)

    def _climb(self, rate: float) -> None:
        change = rate - self._previous_rate
        self._previous_rate = rate
        amount = self._step if change >= 0 else -self._step
        if abs(change) >= _RESTART_THRESHOLD:
            full = _STEP_SHARE * self._capacity
            self._step = full if amount >= 0 else -full
        else:
            self._step = amount * _STEP_DECAY
        self._resize(self._window_target + amount)

    def _resize(self, target: float) -> None:
        """Set the window's size; the protected segment gives or takes the difference (the
        probation segment keeps its share, as in Caffeine), so the window ranges from 1 key to
        its initial size plus the initial protected size."""
        initial = self._initial_window
        protected = int((self._capacity - initial) * self._protected_share)
        target = min(max(target, 1.0), float(max(1, initial + protected)))
        self._window_target = target
        grown = int(target) - self._window_max
        self._window_max = int(target)
        self._protected_max = max(0, protected + initial - self._window_max)
        if grown > 0:
            # Main's least recently used keys move into the window (at its young end), as in
            # Caffeine: the window is full at its new size at once, and every later eviction
            # still goes through an admission duel (main never gives a key up without one
            # because the window grew). A shrunk window drains into probation lazily.
            window = self._window
            for segment in (self._probation, self._protected):
                while grown > 0 and segment:
                    key, value = segment.popitem(False)
                    window[key] = value
                    grown -= 1
