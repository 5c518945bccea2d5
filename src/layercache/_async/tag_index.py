"""The in-process tag index: tag → keys and key → tags, bounded by key count.

When the bound is reached the oldest tagged key is evicted from the index *and returned to the
stack, which deletes it from the layers*: dropping only the index entry would leave a value
that ``invalidate_by_tag`` could no longer reach.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeAlias

from .._glob import compile_glob

__all__ = ["InMemoryTagIndex", "TagRecord", "bind_record_many"]

TagRecord: TypeAlias = tuple[str, Sequence[str], "float | None"]
"""``(key, tags, expires_at)``: one key's tags as ``record`` takes them."""


class InMemoryTagIndex:
    """Tag bookkeeping for one process (use ``RedisTagIndex`` to share it between instances).

    Every method runs under one lock and never suspends inside it: the threaded twin is called
    from many threads (callers, refresh workers, the bus subscriber), and an asyncio stack
    may be used from threads that each run their own loop, so an iteration must never see the
    maps change.
    """

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

    async def record(
        self, key: str, tags: Sequence[str], expires_at: float | None = None
    ) -> list[str]:
        """Replace ``key``'s tags; returns keys evicted to keep the bound (delete them).

        ``expires_at`` (when every copy of the value is gone) is accepted for interface
        parity with ``RedisTagIndex``; this index is bounded by ``max_keys`` instead.
        """
        evicted: list[str] = []
        with self._lock:
            self._record(key, tags, evicted)
        return evicted

    async def record_many(self, items: Iterable[TagRecord]) -> list[str]:
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

    async def remove(self, keys: Iterable[str]) -> None:
        """Forget ``keys``."""
        with self._lock:
            for key in keys:
                self._unlink(key)

    async def tags_of(self, key: str) -> tuple[str, ...]:
        """The tags ``key`` was stored with."""
        with self._lock:
            return self._key_tags.get(key, ())

    async def keys_for_tags(self, tags: Sequence[str], mode: str = "any") -> set[str]:
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

    async def keys_matching(self, pattern: str) -> list[str]:
        """Tagged keys matching a glob."""
        glob = compile_glob(pattern)
        with self._lock:
            return [k for k in self._key_tags if glob.matches(k)]

    async def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._key_tags.clear()
            self._tag_keys.clear()

    def __len__(self) -> int:
        return len(self._key_tags)


def bind_record_many(index: Any) -> Callable[[Sequence[TagRecord]], Awaitable[list[str]]]:
    """``index.record_many``, or for an index without it (one written before it existed) one
    ``record`` call per item. Looked up once, when the stack is built."""
    method = getattr(index, "record_many", None)
    if callable(method):
        return method  # type: ignore[no-any-return]
    record = index.record

    async def record_each(items: Sequence[TagRecord]) -> list[str]:
        evicted: list[str] = []
        for key, tags, expires_at in items:
            evicted.extend(await record(key, tags, expires_at) or ())
        return evicted

    return record_each
