"""The in-process memory layer: a bounded map with O(1) LRU, LFU or FIFO eviction.

It is synchronous on purpose: both stacks call it directly, so an L1 hit is a dict lookup and a
freshness check, with no ``await``, no thread hop and no lock held across I/O. Thread safety for
the sync stack comes from GIL-atomic dict and set operations on the read path plus one small
lock around the multi-step mutations (set with eviction, LFU bookkeeping).

Memory: a stored entry is split in two plain dicts, key -> value and key -> metadata (about 38
bytes per key each at 100,000 keys). The metadata (:class:`~layercache._entry.EntryMeta`: times
and tags) is shared between entries written together, so a small value costs its dict slots
and nearly nothing else; :class:`~layercache._entry.Entry` objects are made only for callers
that ask for one (the stacks' hit path reads value and metadata without one). Readers take no
lock: a writer stores the value before the metadata and a remover drops the metadata first, so
a reader that finds metadata finds its value or a newer one. The metadata dict's insertion
order is the eviction order: LRU does not
move a key on every read (that would rewrite the dict on the hit path, and hold a lock there);
a read marks the key as referenced, and eviction, scanning from the oldest end, gives a marked
key a second chance (it moves to the young end, unmarked) and evicts the first unmarked one
(the CLOCK approximation of LRU). Large maps evict a small batch at a time, so the scan over
the holes a dict keeps at its old end is paid once per batch, not once per eviction.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from typing import Any, Literal

from .._entry import Entry, EntryMeta
from .._glob import compile_glob
from ._tinylfu import TinyLfuPolicy

__all__ = ["DEFAULT_MAX_SIZE", "NOT_FRESH", "MemoryLayer"]

DEFAULT_MAX_SIZE = 100_000
"""Entries kept when ``max_size`` is not given: every map that grows with keys has a bound."""

Eviction = Literal["lru", "lfu", "fifo", "tinylfu"]
_EVICTIONS = ("lru", "lfu", "fifo", "tinylfu")
# TinyLFU: reads marked since the last replay that make a write replay them into the policy
# (a replay costs a call; its decisions do not suffer from reads this late).
_READS_BATCH = 32
# delete_many() holds the lock for this many keys at a time (other threads get in between).
_DELETE_CHUNK = 1024
# How deep approximate_size() looks into containers; deeper data is estimated by its shell.
_SIZE_DEPTH = 2
_SIZE_ITEMS = 64
# A value slot read after its metadata may be gone (another thread removed the key).
_ABSENT: Any = object()
# What fresh_value() answers for a key that is not fresh (absent, stale or expired).
NOT_FRESH: Any = object()


def approximate_size(value: Any, depth: int = _SIZE_DEPTH) -> int:
    """A cheap, bounded estimate of a value's memory footprint in bytes."""
    size = sys.getsizeof(value)
    if depth <= 0:
        return size
    if isinstance(value, dict):
        for count, (k, v) in enumerate(value.items()):
            if count >= _SIZE_ITEMS:
                # Extrapolate from the sample instead of walking a huge mapping.
                return size * 2 if count == 0 else int(size + (size / count) * len(value))
            size += approximate_size(k, depth - 1) + approximate_size(v, depth - 1)
    elif isinstance(value, list | tuple | set | frozenset):
        for count, item in enumerate(value):
            if count >= _SIZE_ITEMS:
                return int(size + (size / count) * len(value))
            size += approximate_size(item, depth - 1)
    return size


class MemoryLayer:
    """An in-process layer bounded by entry count and, optionally, approximate bytes.

    Args:
        ttl: Default lifetime in seconds of values stored here (``None``: no expiry).
        max_size: Most entries kept; ``None`` selects :data:`DEFAULT_MAX_SIZE`. Maps of 2,048
            entries or more evict in batches of ``max_size // 1024`` when full.
        eviction: ``"lru"`` (least recently read, by the CLOCK approximation: a key read since
            the eviction scan last passed it gets a second chance), ``"lfu"`` (least often
            read, ties by age), ``"fifo"`` (oldest write) or ``"tinylfu"`` (W-TinyLFU: a new
            key is admitted only if estimated to be read more often than the key it would
            replace; see ``docs/perf-tinylfu.md``). Every policy is O(1) amortized per
            operation.
        max_bytes: Optional bound on the approximate total size of the stored values.
        name: Layer name used in per-layer options, metrics and events.
        clock: Wall clock in seconds; inject a fake one in tests.
    """

    is_local = True
    is_blocking = False

    def __init__(
        self,
        ttl: float | None = 60,
        max_size: int | None = None,
        eviction: Eviction = "lru",
        *,
        max_bytes: int | None = None,
        name: str = "memory",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl is not None and (not isinstance(ttl, int | float) or ttl < 0):
            raise ValueError(f"ttl must be a non-negative number of seconds or None, not {ttl!r}")
        if max_size is None:
            max_size = DEFAULT_MAX_SIZE
        if not isinstance(max_size, int) or isinstance(max_size, bool) or max_size < 1:
            raise ValueError(f"max_size must be a positive int, not {max_size!r}")
        if eviction not in _EVICTIONS:
            raise ValueError(f"eviction must be one of {', '.join(_EVICTIONS)}; got {eviction!r}")
        if max_bytes is not None and (not isinstance(max_bytes, int) or max_bytes < 1):
            raise ValueError(f"max_bytes must be a positive int or None, not {max_bytes!r}")
        if not isinstance(name, str) or not name:
            raise ValueError("name must be a non-empty str")
        self.name = name
        self.default_ttl: float | None = ttl
        self.max_size = max_size
        self.max_bytes = max_bytes
        self.eviction: Eviction = eviction
        self.evictions = 0
        self._clock = clock
        # key -> metadata: presence, and in insertion order the eviction order (oldest first).
        self._metas: dict[str, EntryMeta] = {}
        # key -> value (stored before, removed after, the key's metadata).
        self._values: dict[str, Any] = {}
        # LRU: keys read since the eviction scan last passed them (their second chance).
        self._referenced: set[str] = set()
        self._batch = 1 if max_size < 2048 else max_size >> 10
        # Sizes are tracked only when a byte bound needs them.
        self._sizes: dict[str, int] | None = {} if max_bytes is not None else None
        self._bytes = 0
        # LFU: key -> read count, and count -> keys in age order; _min_count is the lowest
        # non-empty bucket, so choosing a victim is O(1).
        self._counts: dict[str, int] | None = {} if eviction == "lfu" else None
        self._buckets: dict[int, OrderedDict[str, None]] = {}
        self._min_count = 0
        self._lock = threading.RLock()
        # TinyLFU: the policy (under the lock), and the keys read since the last replay, in
        # first-read order (an insertion-ordered dict used as a set: a read adds its key with
        # one lock-free C call; a write replays them into the policy). Only stored keys are
        # read, and between two writes no key gets stored: bounded by max_size + 32.
        self._policy = TinyLfuPolicy(max_size) if eviction == "tinylfu" else None
        self._reads: dict[str, None] = {}
        # LRU: what a read does (bound once: the hit path makes one call).
        self._mark: Callable[[str], None] | None = (
            self._referenced.add
            if eviction == "lru"
            else self._reads.setdefault
            if eviction == "tinylfu"
            else None
        )

    # -- hot path ---------------------------------------------------------------------------

    def peek(self, key: str, now: float) -> tuple[Any, EntryMeta] | None:
        """``(value, metadata)`` of ``key`` if still usable at ``now`` (the stacks' L1 hit
        path: no :class:`Entry` is made)."""
        meta = self._metas.get(key)
        if meta is None:
            return None
        value = self._values.get(key, _ABSENT)
        if value is _ABSENT:  # removed between the two reads
            return None
        expires_at = meta.expires_at
        if expires_at is not None and now >= expires_at:
            self._discard(key, meta)
            return None
        mark = self._mark
        if mark is not None:
            # A plain set add: atomic, lock-free. A key removed meanwhile may be marked after
            # its removal; the eviction scan drops such marks.
            mark(key)
        elif self._counts is not None:
            self._bump(key)
        return value, meta

    def fresh_value(self, key: str, now: float) -> Any:
        """The value of ``key`` if it is still *fresh* at ``now``, else :data:`NOT_FRESH` (the
        stacks' plain L1 hit: one lookup, one comparison; a stale, expired or absent entry is
        left to :meth:`peek`)."""
        meta = self._metas.get(key)
        if meta is None or now >= meta.fresh_end:
            return NOT_FRESH
        value = self._values.get(key, NOT_FRESH)
        mark = self._mark
        if mark is not None:
            mark(key)  # lock-free, as in peek()
        elif self._counts is not None:
            self._bump(key)
        return value

    def lookup(self, key: str, now: float) -> Entry | None:
        """The stored entry if still usable at ``now``."""
        found = self.peek(key, now)
        return None if found is None else Entry.of(found[0], found[1])

    def get(self, key: str) -> Entry | None:
        """Return the entry for ``key`` or ``None`` (expired entries are dropped)."""
        return self.lookup(key, self._clock())

    def set(self, key: str, entry: Entry, ttl: float | None) -> None:
        """Store ``entry`` for at most ``ttl`` seconds (``None``: as long as the entry lives)."""
        if ttl is not None:
            if ttl <= 0:
                self.delete(key)
                return
            entry = entry.clipped(self._clock() + ttl)
        size = len(key) + approximate_size(entry.value) if self._sizes is not None else 0
        with self._lock:
            data = self._metas
            self._remove(key)
            if self.max_bytes is not None and size > self.max_bytes:
                # A single value larger than the whole bound is not cached here at all.
                return
            policy = self._policy
            # Evict before inserting, so the newcomer is never its own victim (LFU would
            # otherwise always pick the fresh count-1 entry). TinyLFU names its victim when
            # told of the newcomer (never the newcomer itself); only a byte bound evicts here.
            while data and (
                (len(data) >= self.max_size and policy is None)
                or (self.max_bytes is not None and self._bytes + size > self.max_bytes)
            ):
                self._evict(self._batch if len(data) >= self.max_size else 1)
            if policy is not None:
                self._admit(key, policy)
            self._values[key] = entry.value
            data[key] = entry.meta
            if self._sizes is not None:
                self._sizes[key] = size
                self._bytes += size
            if self._counts is not None:
                self._counts[key] = 1
                self._buckets.setdefault(1, OrderedDict())[key] = None
                self._min_count = 1

    # -- bookkeeping ------------------------------------------------------------------------

    def _admit(self, key: str, policy: TinyLfuPolicy) -> None:
        """TinyLFU (caller holds the lock): replay the marked reads once there are
        _READS_BATCH of them (a key read several times in between counts once), tell the
        policy of the new ``key``, drop the victim it names (never ``key`` itself)."""
        reads = self._reads
        if len(reads) >= _READS_BATCH:
            keys = list(reads)
            reads.clear()  # a read marked between the two lines is lost: harmless
            policy.record_hits(keys)
        victim = policy.insert(key)
        if victim is not None and self._remove(victim, tell_policy=False):
            self.evictions += 1

    def _bump(self, key: str) -> None:
        counts = self._counts
        assert counts is not None
        with self._lock:
            count = counts.get(key)
            if count is None:
                return
            bucket = self._buckets[count]
            del bucket[key]
            if not bucket:
                del self._buckets[count]
                if self._min_count == count:
                    self._min_count = count + 1
            counts[key] = count + 1
            self._buckets.setdefault(count + 1, OrderedDict())[key] = None

    def _forget(self, key: str, tell_policy: bool = True) -> None:
        """Drop the bookkeeping of ``key`` (caller holds the lock and removes the entry)."""
        self._referenced.discard(key)
        if self._policy is not None and tell_policy:
            self._policy.remove(key)
        if self._sizes is not None:
            self._bytes -= self._sizes.pop(key, 0)
        if self._counts is not None:
            count = self._counts.pop(key, None)
            if count is not None:
                bucket = self._buckets[count]
                del bucket[key]
                if not bucket:
                    del self._buckets[count]
                    if self._min_count == count:
                        self._min_count = min(self._buckets, default=0)

    def _remove(self, key: str, tell_policy: bool = True) -> bool:
        """Remove ``key`` and its bookkeeping if stored (caller holds the lock): metadata
        first, then the value, so a lock-free reader never pairs metadata with no value."""
        if self._metas.pop(key, None) is None:
            return False
        del self._values[key]
        self._forget(key, tell_policy)
        return True

    def _discard(self, key: str, seen: EntryMeta | None = None) -> bool:
        """Remove ``key`` (only if its metadata is still ``seen``, when given)."""
        with self._lock:
            if seen is not None and self._metas.get(key) is not seen:
                return False
            return self._remove(key)

    def _evict(self, wanted: int) -> None:
        """Evict ``wanted`` entries (at least one while any is stored; caller holds the lock)."""
        data = self._metas
        policy = self._policy
        if policy is not None:
            for _ in range(wanted):
                victim = policy.evict()
                if victim is None:
                    victim = next(iter(data), None)  # never expected: policy and map agree
                    if victim is None:
                        return
                if self._remove(victim, tell_policy=False):
                    self.evictions += 1
            return
        if self._counts is not None:
            for _ in range(wanted):
                if not data:
                    return
                self._remove(next(iter(self._buckets[self._min_count])))
                self.evictions += 1
            return
        referenced = self._referenced
        if len(referenced) > len(data):
            # Marks of keys removed between a read's lookup and its mark: drop them.
            referenced.intersection_update(data)
        evicted = 0
        # Each key looked at is evicted or loses its mark; readers may mark keys again
        # meanwhile (they take no lock), so after one full round marks are ignored.
        budget = len(data)
        while evicted < wanted and data:
            # One scan of the dict's old end per batch (it may hold many holes).
            for key in list(islice(data, max(wanted - evicted, 8))):
                if budget > 0 and key in referenced:
                    referenced.discard(key)
                    data[key] = data.pop(key)  # second chance: to the young end
                    budget -= 1
                    continue
                self._remove(key)
                self.evictions += 1
                evicted += 1
                if evicted >= wanted:
                    return

    # -- the rest of the protocol -----------------------------------------------------------

    def delete(self, key: str) -> None:
        """Remove ``key`` if present."""
        self._discard(key)

    def delete_many(self, keys: Iterable[str]) -> None:
        """Remove every key in ``keys`` (the lock taken once per 1,024 keys, not per key)."""
        keys = list(keys)
        remove = self._remove
        # Without a policy, sizes or counts, a removal is the two maps and the reference mark
        # (what _remove and _forget do then, inline: half the cost per key of a bulk delete).
        plain = self._policy is None and self._sizes is None and self._counts is None
        metas, values, referenced = self._metas, self._values, self._referenced
        for start in range(0, len(keys), _DELETE_CHUNK):
            with self._lock:
                if plain:
                    for key in keys[start : start + _DELETE_CHUNK]:
                        if metas.pop(key, None) is not None:
                            del values[key]
                            referenced.discard(key)
                else:
                    for key in keys[start : start + _DELETE_CHUNK]:
                        remove(key)

    def clear(self) -> None:
        """Remove every entry."""
        with self._lock:
            self._metas.clear()
            self._values.clear()
            self._referenced.clear()
            if self._sizes is not None:
                self._sizes.clear()
            self._bytes = 0
            if self._counts is not None:
                self._counts.clear()
            self._buckets.clear()
            self._min_count = 0
            if self._policy is not None:
                self._policy.clear()
                self._reads.clear()

    def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        """Entries for ``keys`` in order (``None`` for misses)."""
        now = self._clock()
        return [self.lookup(key, now) for key in keys]

    def set_many(self, items: Sequence[tuple[str, Entry, float | None]]) -> None:
        """Store several ``(key, entry, ttl)`` items."""
        for key, entry, ttl in items:
            self.set(key, entry, ttl)

    def keys(self, pattern: str | None = None, limit: int | None = None) -> list[str]:
        """Keys holding a usable entry, optionally filtered by a glob, at most ``limit``."""
        now = self._clock()
        glob = compile_glob(pattern) if pattern is not None else None
        out: list[str] = []
        for key, meta in self._items():
            expires_at = meta.expires_at
            if expires_at is not None and now >= expires_at:
                continue
            if glob is not None and not glob.matches(key):
                continue
            out.append(key)
            if limit is not None and len(out) >= limit:
                break
        return out

    def delete_matching(self, pattern: str) -> int:
        """Remove every key matching the glob ``pattern``; return how many were removed."""
        glob = compile_glob(pattern)
        removed = 0
        for key in [k for k, _ in self._items() if glob.matches(k)]:
            removed += self._discard(key)
        return removed

    def _items(self) -> list[tuple[str, EntryMeta]]:
        """A copy of the stored keys and their metadata, made under the lock (writers hold it;
        readers only mark keys, which never changes the dicts)."""
        with self._lock:
            return list(self._metas.items())

    def has(self, key: str) -> bool:
        """Whether a usable entry is stored under ``key``."""
        meta = self._metas.get(key)
        return meta is not None and (meta.expires_at is None or self._clock() < meta.expires_at)

    def ttl(self, key: str) -> float | None:
        """Remaining storage lifetime of ``key`` in seconds (``None``: absent or no expiry)."""
        meta = self._metas.get(key)
        if meta is None or meta.expires_at is None:
            return None
        remaining = meta.expires_at - self._clock()
        return remaining if remaining > 0 else None

    def size(self) -> int:
        """Number of stored entries (expired ones not yet dropped included)."""
        return len(self._metas)

    @property
    def approximate_bytes(self) -> int:
        """Approximate bytes of stored values (tracked only when ``max_bytes`` is set)."""
        return self._bytes

    def ping(self) -> bool:
        """Always healthy."""
        return True

    def close(self) -> None:
        """Drop every entry."""
        self.clear()

    def __repr__(self) -> str:
        return (
            f"MemoryLayer(name={self.name!r}, ttl={self.default_ttl!r}, "
            f"max_size={self.max_size}, eviction={self.eviction!r}, size={len(self._metas)})"
        )
