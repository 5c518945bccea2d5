"""Protocols a layer (and later a bus, tag index or coordinator) satisfies.

A layer is small: ``name``, ``default_ttl``, ``is_local`` and ``get``/``set``/``delete``/``clear``.
Every other method is optional; the stack detects them once, when it is built, and binds them
into an adapter so the hot path never calls ``hasattr``. Methods may be plain or ``async``:

* plain methods of a layer whose ``is_blocking`` attribute is true (disk, a sync driver) are run
  in a worker thread by :class:`~layercache.CacheStack`, and called directly by the sync stack;
* plain methods of other layers (the memory layer) are called directly, with no thread hop;
* ``async`` methods are awaited (the async stack only; the sync stack refuses such a layer).

A layer stores and returns :class:`~layercache.Entry` objects, never bare values; ``get``
returns ``None`` on a miss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, runtime_checkable

from ._entry import Entry

__all__ = ["CacheLayer", "ErrorHandler", "InvalidationMessage", "LayerItem", "MaybeAwaitable"]

MaybeAwaitable: TypeAlias = Any
"""``T`` or ``Awaitable[T]``; kept as ``Any`` so sync and async layers both satisfy the protocol."""

LayerItem: TypeAlias = tuple[str, Entry, "float | None"]
"""``(key, entry, ttl)`` as passed to ``set_many``; ``ttl`` is the storage lifetime in seconds."""

ErrorHandler: TypeAlias = Callable[[BaseException, dict[str, Any]], None]
"""Called by a layer that turned a bad stored value into a miss (``error`` event)."""


@runtime_checkable
class CacheLayer(Protocol):
    """What the stack needs of a layer.

    Required: ``name``, ``default_ttl`` (seconds, ``None`` = no expiry), ``is_local`` (lives in
    this process or on this machine: memory, disk), ``get``, ``set``, ``delete``, ``clear``.

    Optional, detected once: ``get_many(keys) -> list[Entry | None]``,
    ``set_many(items: Sequence[(key, entry, ttl)])``, ``delete_many(keys)``,
    ``delete_matching(pattern) -> int`` (glob, :mod:`layercache._glob` semantics),
    ``keys(pattern=None) -> list[str]``, ``has(key)``, ``ttl(key)``, ``size()``, ``ping()``,
    ``set_error_handler(handler)``, and ``aclose()`` or ``close()``.
    """

    name: str
    default_ttl: float | None
    is_local: bool

    def get(self, key: str) -> MaybeAwaitable:
        """Return the stored :class:`Entry` or ``None``."""
        ...

    def set(self, key: str, entry: Entry, ttl: float | None) -> MaybeAwaitable:
        """Store ``entry``; the layer may drop it after ``ttl`` seconds (``None``: never)."""
        ...

    def delete(self, key: str) -> MaybeAwaitable:
        """Remove ``key`` (no error when absent)."""
        ...

    def clear(self) -> MaybeAwaitable:
        """Remove every key this layer owns."""
        ...


@dataclass(frozen=True, slots=True)
class InvalidationMessage:
    """What one instance tells the others about a change (see ``RedisInvalidationBus``).

    Attributes:
        source_id: The publishing instance (its own messages are ignored).
        scope: ``"keys"``, ``"tags"``, ``"pattern"``, ``"prefix"``, ``"clear"`` or
            ``"generation"``.
        operation: ``"set"``, ``"delete"``, ``"invalidate"``, ``"clear"`` or ``"bump"``.
        keys: Keys, tags, ``(pattern,)`` or ``(str(generation),)`` depending on ``scope``.
        timestamp: Wall time of publication.
        mode: ``"any"`` or ``"all"`` for ``scope="tags"``.
    """

    source_id: str
    scope: str
    operation: str
    keys: tuple[str, ...]
    timestamp: float
    mode: str = "any"
