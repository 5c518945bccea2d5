"""The data of ``warm()``: what to warm (:class:`WarmEntry`) and what happened
(:class:`WarmSummary`). Plain dataclasses both stacks share."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["WarmEntry", "WarmSummary", "coerce_warm_entries"]


@dataclass(frozen=True, slots=True)
class WarmEntry:
    """One key to warm.

    Attributes:
        key: The key (as given to ``get``).
        fetcher: Produces the value (sync or async for ``CacheStack``, sync for
            ``SyncCacheStack``), called only when the key is not fresh in the stack.
        priority: Higher priorities are fetched first; equal priorities keep their order.
        options: Per-operation options (``CacheOptions`` or a ``dict``: ``ttl``, ``tags``...),
            applied as ``get(key, fetcher, **options)`` would.
    """

    key: str
    fetcher: Callable[[], Any]
    priority: int = 0
    options: Any = None


@dataclass(frozen=True, slots=True)
class WarmSummary:
    """What ``warm()`` did.

    Attributes:
        warmed: Keys whose fetcher ran and succeeded (their value stored as ``get`` stores
            it: a ``None`` result only with ``negative_cache``).
        failed: Keys whose fetcher raised (only with ``continue_on_error``).
        skipped: Keys already fresh in the stack (their fetcher was not called).
        duration: Seconds the whole warm-up took.
        errors: ``(key, exception)`` for every failed key, in the order they failed.
    """

    warmed: int
    failed: int
    skipped: int
    duration: float
    errors: tuple[tuple[str, Exception], ...] = field(default=())


def coerce_warm_entries(entries: Iterable[Any]) -> list[WarmEntry]:
    """``WarmEntry`` objects from ``WarmEntry``, ``(key, fetcher)`` pairs or equivalent
    dicts; ordered by priority, highest first (stable).

    Raises:
        ValueError: An entry of another shape, a fetcher that is not callable, or a priority
            that is not an int.
    """
    if isinstance(entries, str | bytes | Mapping):
        raise ValueError("warm() takes an iterable of WarmEntry or (key, fetcher) pairs")
    out: list[WarmEntry] = []
    for item in entries:
        if isinstance(item, WarmEntry):
            entry = item
        elif isinstance(item, tuple) and len(item) == 2:
            entry = WarmEntry(item[0], item[1])
        elif isinstance(item, Mapping):
            try:
                entry = WarmEntry(**item)
            except TypeError as exc:
                raise ValueError(f"bad warm entry {item!r}: {exc}") from None
        else:
            raise ValueError(f"warm entries are WarmEntry or (key, fetcher) pairs, not {item!r}")
        if not callable(entry.fetcher):
            raise ValueError(f"the fetcher of warm entry {entry.key!r} is not callable")
        if isinstance(entry.priority, bool) or not isinstance(entry.priority, int):
            raise ValueError(f"the priority of warm entry {entry.key!r} must be an int")
        out.append(entry)
    out.sort(key=lambda e: -e.priority)  # list.sort is stable: equal priorities keep order
    return out
