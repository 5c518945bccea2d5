# DO NOT EDIT: generated from src/layercache/_async/tag_index.py by scripts/unasync.py.
# Change the async source and run `python scripts/unasync.py`.
"""Binds a tag index (the in-process one, ``RedisTagIndex``, a user's) into uniform calls, once.

Like :class:`~layercache._async.adapter.LayerAdapter` for layers: the index's methods are looked
up here and nowhere else. Plain methods of the in-process index (no I/O) are called directly
by both stacks; an index doing I/O has methods of the stack's own kind. An index without
``record_many`` (one written before it existed) gets one ``record`` call per item.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .._primitives.threads import bind_method, check_component
from .._tag_index import TagRecord

__all__ = ["TagIndexAdapter"]

_REQUIRED = ("record", "remove", "keys_for_tags", "keys_matching", "clear")


class TagIndexAdapter:
    """A tag index as the stack calls it.

    ``is_shared``: the index is shared between instances (``RedisTagIndex``): a tag
    invalidation announced on the bus was resolved by its publisher for everyone. A
    per-instance index (``is_shared = False``, the in-process one) resolves it here. An index
    that does not say is taken as shared.
    """

    def __init__(self, index: Any) -> None:
        for name in _REQUIRED:
            if not callable(getattr(index, name, None)):
                raise TypeError(f"tag_index {index!r} has no {name}() method")
        self.index = index
        self.is_shared = bool(getattr(index, "is_shared", True))
        if self.is_shared:
            # An index doing I/O on the other kind of Redis client cannot work here: refuse it
            # now rather than on the first tagged write.
            check_component(index, "tag_index", "record")
        self.record: Callable[[str, Sequence[str], float | None], list[str]] = (
            bind_method(index.record, False)
        )
        self.remove: Callable[[Iterable[str]], None] = bind_method(index.remove, False)
        self.keys_for_tags: Callable[[Sequence[str], str], set[str]] = bind_method(
            index.keys_for_tags, False
        )
        self.keys_matching: Callable[[str], list[str]] = bind_method(
            index.keys_matching, False
        )
        self.clear: Callable[[], None] = bind_method(index.clear, False)
        tags_of = getattr(index, "tags_of", None)
        self._tags_of = bind_method(tags_of, False) if callable(tags_of) else None
        many = getattr(index, "record_many", None)
        self._record_many = bind_method(many, False) if callable(many) else None
        expire = getattr(index, "expire", None)
        self._expire = bind_method(expire, False) if callable(expire) else None
        closer = getattr(index, "close", None)
        self._close = bind_method(closer, False) if callable(closer) else None

    def record_many(self, items: Sequence[TagRecord]) -> list[str]:
        """Record several keys' tags; returns the keys evicted to keep the index's bound."""
        if self._record_many is not None:
            return list(self._record_many(items) or ())
        evicted: list[str] = []
        for key, tags, expires_at in items:
            evicted.extend(self.record(key, tags, expires_at) or ())
        return evicted

    def forget_invalidated(self, keys: Sequence[str], tags: Sequence[str]) -> int:
        """Forget ``keys``, just resolved by an invalidation of ``tags``; returns how many of
        them the index still knew as live. An index with ``expire`` (``RedisTagIndex``) takes
        them out of those tags' sets and leaves the rest of their entries to its expiry sweep
        (no per-key read): a key invalidated under another tag before that sweep is still
        listed under its other tags, and is not counted again. Any other index removes them
        (all counted)."""
        if self._expire is not None:
            return int(self._expire(keys, tags))
        self.remove(keys)
        return len(keys)

    def size(self) -> int | None:
        """Keys in an in-process index; ``None`` for one that cannot tell without I/O."""
        if self.is_shared:
            return None
        try:
            return len(self.index)
        except TypeError:
            return None

    def probe(self) -> None:
        """One cheap call that fails while the index is out of reach."""
        if self._tags_of is not None:
            self._tags_of("layercache:health-probe")
        else:
            self.keys_for_tags(["layercache:health-probe"], "any")

    def forget_matching(self, pattern: str) -> None:
        """Forget the tagged keys matching a glob."""
        self.remove(self.keys_matching(pattern))

    def close(self) -> None:
        """Close the index (when it has resources of its own)."""
        if self._close is not None:
            self._close()
