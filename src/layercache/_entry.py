"""The envelope every layer stores: a value plus the metadata the stack judges freshness by.

Layers never judge freshness; they store and return ``Entry`` objects (the memory layer keeps
the object itself, remote layers encode it with :mod:`layercache._codec`). All timestamps are
wall-clock seconds (``time.time()``) because they cross processes through Redis and disk.

An entry is two references: its value and an immutable :class:`EntryMeta` holding the times and
tags. The metadata is shared between entries written together (the same options within the
same millisecond, see :class:`MetaCache`), so a small value held in memory costs its own object
plus one 48-byte envelope, not an envelope with six fields and two float objects of its own.
"""

from __future__ import annotations

from typing import Any

_INF = float("inf")

__all__ = ["Entry", "EntryMeta", "MetaCache"]

# Entries written within this many seconds with the same options share one EntryMeta: they
# are stored as written at the first one's time (at most this much earlier than they were),
# and never more than a thousandth of their TTL earlier.
META_SHARE_WINDOW = 0.01
_META_SHARE_FRACTION = 0.001


class EntryMeta:
    """The times and tags of an entry; immutable once built and shared between entries.

    Attributes:
        stored_at: Wall time the value was produced.
        fresh_until: Wall time the value stops being fresh; ``None`` means never.
        stale_until: End of the stale-while-revalidate window (``None``: no window).
        error_until: End of the stale-if-error window (``None``: no window).
        tags: The tags the value was stored with (they belong to the value).
        expires_at: Derived: the wall time after which no use of the entry is possible
            (``None``: never).
        fresh_end: Derived: ``fresh_until`` as a float (``inf`` for never), so that a hit
            path tests freshness with one comparison.
    """

    __slots__ = (
        "error_until",
        "expires_at",
        "fresh_end",
        "fresh_until",
        "stale_until",
        "stored_at",
        "tags",
    )

    stored_at: float
    fresh_until: float | None
    stale_until: float | None
    error_until: float | None
    tags: tuple[str, ...]
    expires_at: float | None
    fresh_end: float

    def __init__(
        self,
        stored_at: float,
        fresh_until: float | None,
        stale_until: float | None = None,
        error_until: float | None = None,
        tags: tuple[str, ...] = (),
    ) -> None:
        self.stored_at = stored_at
        self.fresh_until = fresh_until
        self.stale_until = stale_until
        self.error_until = error_until
        self.tags = tags
        self.fresh_end = _INF if fresh_until is None else fresh_until
        end = fresh_until
        if end is not None:
            if stale_until is not None and stale_until > end:
                end = stale_until
            if error_until is not None and error_until > end:
                end = error_until
        self.expires_at = end

    def _fields(self) -> tuple[Any, ...]:
        return (self.stored_at, self.fresh_until, self.stale_until, self.error_until, self.tags)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not EntryMeta:
            return NotImplemented
        assert isinstance(other, EntryMeta)
        return self is other or self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"EntryMeta(stored_at={self.stored_at!r}, fresh_until={self.fresh_until!r}, "
            f"stale_until={self.stale_until!r}, error_until={self.error_until!r}, "
            f"tags={self.tags!r})"
        )


class Entry:
    """A cached value with its timing and tags (see :class:`EntryMeta` for the fields).

    ``Entry(value, stored_at, fresh_until, stale_until=None, error_until=None, tags=())``
    builds its own metadata; :meth:`of` pairs a value with metadata already built (shared).
    Treat an entry as immutable once built. Hot paths read ``entry.meta.<field>`` directly;
    the same fields are readable on the entry itself.
    """

    __slots__ = ("meta", "value")

    value: Any
    meta: EntryMeta

    def __init__(
        self,
        value: Any,
        stored_at: float,
        fresh_until: float | None,
        stale_until: float | None = None,
        error_until: float | None = None,
        tags: tuple[str, ...] = (),
    ) -> None:
        self.value = value
        self.meta = EntryMeta(stored_at, fresh_until, stale_until, error_until, tags)

    @classmethod
    def of(cls, value: Any, meta: EntryMeta) -> Entry:
        """An entry of ``value`` with the (shared) metadata ``meta``."""
        entry = object.__new__(cls)
        entry.value = value
        entry.meta = meta
        return entry

    @property
    def stored_at(self) -> float:
        """Wall time the value was produced."""
        return self.meta.stored_at

    @property
    def fresh_until(self) -> float | None:
        """End of freshness (``None``: never)."""
        return self.meta.fresh_until

    @property
    def stale_until(self) -> float | None:
        """End of the stale-while-revalidate window (``None``: no window)."""
        return self.meta.stale_until

    @property
    def error_until(self) -> float | None:
        """End of the stale-if-error window (``None``: no window)."""
        return self.meta.error_until

    @property
    def tags(self) -> tuple[str, ...]:
        """The tags the value was stored with."""
        return self.meta.tags

    @property
    def expires_at(self) -> float | None:
        """After this wall time no use of the entry is possible (``None``: never)."""
        return self.meta.expires_at

    def with_value(self, value: Any) -> Entry:
        """The same entry holding ``value`` instead (a converted or re-encoded value)."""
        return Entry.of(value, self.meta)

    def storage_ttl(self, now: float) -> float | None:
        """Seconds a layer should keep the entry physically (``None``: no expiry)."""
        end = self.meta.expires_at
        if end is None:
            return None
        return max(end - now, 0.0)

    def is_fresh(self, now: float) -> bool:
        """Whether the value is still fresh at ``now``."""
        fresh_until = self.meta.fresh_until
        return fresh_until is None or now < fresh_until

    def is_usable(self, now: float) -> bool:
        """Whether the value may still be used at all (fresh or inside a window)."""
        end = self.meta.expires_at
        return end is None or now < end

    def clipped(self, deadline: float) -> Entry:
        """A copy whose every window ends by ``deadline`` (for a layer keeping it shorter)."""
        meta = self.meta
        if meta.expires_at is not None and meta.expires_at <= deadline:
            return self

        def clip(value: float | None) -> float | None:
            return deadline if value is None or value > deadline else value

        return Entry(
            self.value,
            meta.stored_at,
            clip(meta.fresh_until),
            None if meta.stale_until is None else clip(meta.stale_until),
            None if meta.error_until is None else clip(meta.error_until),
            meta.tags,
        )

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not Entry:
            return NotImplemented
        assert isinstance(other, Entry)
        return self.value == other.value and self.meta == other.meta

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        meta = self.meta
        return (
            f"Entry(value={self.value!r}, stored_at={meta.stored_at!r}, "
            f"fresh_until={meta.fresh_until!r}, stale_until={meta.stale_until!r}, "
            f"error_until={meta.error_until!r}, tags={meta.tags!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        meta = self.meta
        return (Entry, (self.value, *meta._fields()))


class MetaCache:
    """Shares :class:`EntryMeta` objects between entries written together.

    One slot per layer: the metadata of the last entry built for it, with the durations it was
    built from. A new entry with the same durations and tags, written less than
    :data:`META_SHARE_WINDOW` (10 ms) after that one, and less than a thousandth of its TTL
    after it, reuses it (it is recorded as stored, and fresh until, that much earlier than it
    would otherwise be: never later). Bounded by the number of layers.
    """

    __slots__ = ("_slots",)

    def __init__(self) -> None:
        self._slots: dict[str, tuple[EntryMeta, Any]] = {}

    def meta(
        self,
        layer: str,
        now: float,
        ttl: float | None,
        stale: float | None,
        error: float | None,
        tags: tuple[str, ...],
    ) -> EntryMeta:
        """Metadata for an entry stored in ``layer`` at ``now`` for ``ttl`` (``None``: no
        expiry) with the given window lengths and tags."""
        shape = (ttl, stale, error, tags)
        slot = self._slots.get(layer)
        if slot is not None:
            meta, was = slot
            age = now - meta.stored_at
            if (
                0.0 <= age < META_SHARE_WINDOW
                and was == shape
                and (ttl is None or age < ttl * _META_SHARE_FRACTION)
            ):
                return meta
        if ttl is None:
            meta = EntryMeta(now, None, tags=tags)
        else:
            fresh_until = now + ttl
            meta = EntryMeta(
                now,
                fresh_until,
                fresh_until + stale if stale else None,
                fresh_until + error if error else None,
                tags,
            )
        self._slots[layer] = (meta, shape)
        return meta
