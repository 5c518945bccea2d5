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

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, runtime_checkable

from ._entry import Entry

__all__ = [
    "CacheLayer",
    "Closable",
    "ErrorHandler",
    "GenerationStore",
    "InvalidationBus",
    "InvalidationMessage",
    "LayerItem",
    "MaybeAwaitable",
    "OperationTracer",
    "ReportsErrors",
    "SyncClosable",
    "SingleFlightCoordinator",
    "TagIndex",
]

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


Handler: TypeAlias = Callable[..., Any]
"""A callback a coordination component is given (plain or ``async`` like the component)."""


@runtime_checkable
class InvalidationBus(Protocol):
    """Cross-instance announcements (``RedisInvalidationBus``): ``CacheStack(invalidation_bus=)``.

    Methods are ``async`` for ``CacheStack`` and plain for ``SyncCacheStack``. ``aclose()`` (or
    ``close()``) is optional.
    """

    source_id: str

    def start(
        self, on_message: Handler, on_reconnect: Handler, on_error: ErrorHandler
    ) -> MaybeAwaitable:
        """Subscribe: call ``on_message(message)`` for every other instance's announcement,
        ``on_reconnect()`` after the subscription was lost (messages may have been missed) and
        ``on_error(error, context)`` for what it absorbs. Keeps retrying by itself."""
        ...

    def publish(self, message: InvalidationMessage) -> MaybeAwaitable:
        """Send ``message`` to the other instances (``LayerCacheError`` when it cannot)."""
        ...


@runtime_checkable
class GenerationStore(Protocol):
    """Where the key generation lives for every instance (``RedisInvalidationBus`` is one)."""

    def load_generation(self) -> MaybeAwaitable:
        """The stored generation, or ``None``."""
        ...

    def bump_generation(self, at_least: int) -> MaybeAwaitable:
        """Store a generation ``>= at_least`` higher than the stored one; returns it."""
        ...


@runtime_checkable
class TagIndex(Protocol):
    """Which keys carry which tags (``InMemoryTagIndex``, ``RedisTagIndex``).

    ``record_many``, ``tags_of`` and ``is_shared`` (default: shared between instances) are
    optional. Methods are plain (no I/O: the in-process index, both stacks), ``async``
    (``CacheStack``) or plain doing I/O (``SyncCacheStack``).
    """

    def record(self, key: str, tags: Any, expires_at: float | None = None) -> MaybeAwaitable:
        """Replace ``key``'s tags; returns keys evicted to keep a bound (the stack deletes
        them)."""
        ...

    def remove(self, keys: Any) -> MaybeAwaitable:
        """Forget ``keys``."""
        ...

    def keys_for_tags(self, tags: Any, mode: str = "any") -> MaybeAwaitable:
        """Keys carrying any (``mode="any"``) or all (``"all"``) of ``tags``."""
        ...

    def keys_matching(self, pattern: str) -> MaybeAwaitable:
        """Tagged keys matching a glob."""
        ...

    def clear(self) -> MaybeAwaitable:
        """Forget everything."""
        ...


@runtime_checkable
class SingleFlightCoordinator(Protocol):
    """One fetch of a key across instances (``RedisSingleFlightCoordinator``).

    ``add_error_handler(handler)`` is optional (see :class:`ReportsErrors`).
    """

    def run(
        self, key: str, fetch: Handler, read_shared: Handler, *, timeout: float, poll: float
    ) -> MaybeAwaitable:
        """Run ``fetch()`` here if this instance wins the key's lease; else wait (polling
        ``read_shared()`` -> ``(found, value)``) for the winner's value, up to ``timeout``.
        A stack given ``single_flight_lease`` / ``single_flight_renew_interval`` also passes
        ``lease=`` / ``renew_interval=`` (the component itself is never reconfigured)."""
        ...


@runtime_checkable
class Closable(Protocol):
    """A component the stack closes with itself: ``aclose()`` on ``CacheStack``'s side."""

    def aclose(self) -> MaybeAwaitable:
        """Release the component's resources."""
        ...


@runtime_checkable
class ReportsErrors(Protocol):
    """A component that reports the failures it absorbs; each stack using it adds its own
    handler (and removes it when it closes), so one component may serve several stacks."""

    def add_error_handler(self, handler: ErrorHandler) -> Callable[[], None]:
        """Also call ``handler(error, context)`` for every failure absorbed; returns the
        function that removes it."""
        ...


@runtime_checkable
class SyncClosable(Protocol):
    """A component ``SyncCacheStack`` closes with itself: ``close()``."""

    def close(self) -> MaybeAwaitable:
        """Release the component's resources."""
        ...


@runtime_checkable
class OperationTracer(Protocol):
    """What a stack tells a tracer (``CacheStack.set_tracer``): the seam the OpenTelemetry
    integration plugs into, open to any other tracing system.

    Context managers may span awaits (the same task) or blocking calls (the same thread);
    exceptions propagate through them. With no tracer set, each point costs the stack one
    attribute test.
    """

    def operation(self, name: str, key: str | None) -> AbstractContextManager[Any]:
        """Around a public operation that goes beyond L1: ``"cache.get"`` (an L1 miss or a
        stale L1 value), ``"cache.get_many"``, ``"cache.set"``, ``"cache.set_many"``,
        ``"cache.delete"``, ``"cache.clear"``, ``"cache.invalidate"``,
        ``"cache.bump_generation"``. ``key``: the stored form of a single key, else ``None``."""
        ...

    def layer_call(self, layer: str, operation: str) -> AbstractContextManager[Any]:
        """Around one call to a non-local layer (``"get"``, ``"get_many"``, ``"set"``,
        ``"set_many"``, ``"delete"``, ``"delete_many"``, ``"clear"``...)."""
        ...

    def fetch(self, key: str) -> AbstractContextManager[Any]:
        """Around one origin fetch (inside ``"cache.get"``, or alone for a background
        refresh)."""
        ...

    def l1_hit(self, key: str, layer: str) -> None:
        """A ``get`` answered by the first, in-process layer; no operation was opened. The
        hot path: it must cost well under a microsecond when nothing records."""
        ...

    def outcome(self, result: str, layer: str | None) -> None:
        """The result of the current read below L1: ``"hit"`` (``layer``: where),
        ``"miss"`` (``None``) or ``"stale"`` (``layer``: where the stale value came from)."""
        ...

    def event(self, name: str, attributes: Mapping[str, Any]) -> None:
        """Something that happened during the current operation: ``"stale_serve"``
        ``{key, state, layer}``, ``"stampede_dedupe"`` ``{key}``, ``"degraded"``
        ``{layer, operation, error, retry_after}``, ``"recovered"`` ``{layer}``,
        ``"circuit_open"`` / ``"circuit_closed"`` ``{key}``."""
        ...
