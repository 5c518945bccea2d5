"""The in-process tag index: tag → keys and key → tags, bounded by key count.

Plain code with its own lock, shared by both stacks: one instance may be given to a
``SyncCacheStack`` and to ``CacheStack`` instances at once (the Django backend does), and the
stacks call it directly (no I/O, no thread hop) and never change it beyond its methods.

When the bound is reached the oldest tagged key is evicted from the index *and returned to the
stack, which deletes it from the layers*: dropping only the index entry would leave a value
that ``invalidate_by_tag`` could no longer reach.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import TypeAlias

from ._glob import compile_glob

__all__ = ["InMemoryTagIndex", "TagRecord"]

TagRecord: TypeAlias = tuple[str, Sequence[str], "float | None"]
"""``(key, tags, expires_at)``: one key's tags as ``record`` takes them."""


class InMemoryTagIndex:
    """Tag bookkeeping for one process (use ``RedisTagIndex`` to share it between instances).

    Every method runs under one lock: the thread stack calls it from many threads (callers,
    refresh workers, the bus subscriber), asyncio stacks from threads that each run their own
    loop, and an iteration must never see the maps change.
    """

    # Per instance: a peer's tag invalidation is resolved here (the bus carries tags), unlike
    # a shared index, which the publisher already resolved for everyone.
    is_shared = False

    def __init__(self, max_keys: int = 100_000) -> None:
        if not isinstance(max_keys, int) or max_keys < 1:
            raise ValueError(f"max_keys must be a positive int, not {max_keys!r}")
        self.max_keys = max_keys
        self._key_tags: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._tag_keys: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def _unlink(self, key: str) -> None:
        tags = self._key_tags.pop(key, ())
        for tag in tags:
            keys = self._tag_keys.get(tag)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._tag_keys[tag]

    def record(self, key: str, tags: Sequence[str], expires_at: float | None = None) -> list[str]:
        """Replace ``key``'s tags; returns keys evicted to keep the bound (delete them).

        ``expires_at`` (when every copy of the value is gone) is accepted for interface
        parity with ``RedisTagIndex``; this index is bounded by ``max_keys`` instead.
        """
        evicted: list[str] = []
        with self._lock:
            self._record(key, tags, evicted)
        return evicted

    def record_many(self, items: Iterable[TagRecord]) -> list[str]:
        """:meth:`record` for several ``(key, tags, expires_at)`` items, in order; returns
        every key evicted to keep the bound (delete them)."""
        evicted: list[str] = []
        with self._lock:
            for key, tags, _expires_at in items:
                self._record(key, tags, evicted)
        return evicted

    def _record(self, key: str, tags: Sequence[str], evicted: list[str]) -> None:
        self._unlink(key)
        if not tags:
            return
        self._key_tags[key] = tuple(tags)
        for tag in tags:
            self._tag_keys.setdefault(tag, set()).add(key)
        while len(self._key_tags) > self.max_keys:
            oldest = next(iter(self._key_tags))
            self._unlink(oldest)
            evicted.append(oldest)

    def remove(self, keys: Iterable[str]) -> None:
        """Forget ``keys``."""
        with self._lock:
            for key in keys:
                self._unlink(key)

    def tags_of(self, key: str) -> tuple[str, ...]:
        """The tags ``key`` was stored with."""
        with self._lock:
            return self._key_tags.get(key, ())

    def keys_for_tags(self, tags: Sequence[str], mode: str = "any") -> set[str]:
        """Keys carrying any (``mode="any"``) or all (``"all"``) of ``tags``."""
        with self._lock:
            groups: list[set[str]] = [self._tag_keys.get(tag, set()) for tag in tags]
            if not groups:
                return set()
            if mode == "all":
                groups.sort(key=len)
                result = set(groups[0])
                for group in groups[1:]:
                    result &= group
                return result
            return set().union(*groups)

    def keys_matching(self, pattern: str) -> list[str]:
        """Tagged keys matching a glob."""
        glob = compile_glob(pattern)
        with self._lock:
            return [k for k in self._key_tags if glob.matches(k)]

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._key_tags.clear()
            self._tag_keys.clear()

    def __len__(self) -> int:
        return len(self._key_tags)
