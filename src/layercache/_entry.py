"""The envelope every layer stores: a value plus the metadata the stack judges freshness by.

Layers never judge freshness; they store and return ``Entry`` objects (the memory layer keeps
the object itself, remote layers encode it with :mod:`layercache._codec`). All timestamps are
wall-clock seconds (``time.time()``) because they cross processes through Redis and disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Entry"]


@dataclass(slots=True)
class Entry:
    """A cached value with its timing and tags.

    Attributes:
        value: The cached value (``None`` for a negatively cached miss).
        stored_at: Wall time the value was produced.
        fresh_until: Wall time the value stops being fresh; ``None`` means never.
        stale_until: End of the stale-while-revalidate window (``None``: no window).
        error_until: End of the stale-if-error window (``None``: no window).
        tags: The tags the value was stored with (they belong to the value).
        expires_at: Derived: the wall time after which no use of the entry is possible
            (``None``: never). Treat an entry as immutable once built.
    """

    value: Any
    stored_at: float
    fresh_until: float | None
    stale_until: float | None = None
    error_until: float | None = None
    tags: tuple[str, ...] = ()
    expires_at: float | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        end = self.fresh_until
        if end is not None:
            if self.stale_until is not None and self.stale_until > end:
                end = self.stale_until
            if self.error_until is not None and self.error_until > end:
                end = self.error_until
        self.expires_at = end

    def storage_ttl(self, now: float) -> float | None:
        """Seconds a layer should keep the entry physically (``None``: no expiry)."""
        end = self.expires_at
        if end is None:
            return None
        return max(end - now, 0.0)

    def is_fresh(self, now: float) -> bool:
        """Whether the value is still fresh at ``now``."""
        return self.fresh_until is None or now < self.fresh_until

    def is_usable(self, now: float) -> bool:
        """Whether the value may still be used at all (fresh or inside a window)."""
        end = self.expires_at
        return end is None or now < end

    def clipped(self, deadline: float) -> Entry:
        """A copy whose every window ends by ``deadline`` (for a layer keeping it shorter)."""
        if self.expires_at is not None and self.expires_at <= deadline:
            return self

        def clip(value: float | None) -> float | None:
            return deadline if value is None or value > deadline else value

        return Entry(
            self.value,
            self.stored_at,
            clip(self.fresh_until),
            None if self.stale_until is None else clip(self.stale_until),
            None if self.error_until is None else clip(self.error_until),
            self.tags,
        )
