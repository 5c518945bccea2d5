# DO NOT EDIT: generated from src/layercache/_async/adapter.py by scripts/unasync.py.
# Change the async source and run `python scripts/unasync.py`.
"""Binds a user's layer into uniform async calls, once, when the stack is built.

Optional methods are looked up here and nowhere else, so the hot path never calls
``hasattr``. Driver errors that are not already ``LayerCacheError`` are translated into
``CacheLayerError(layer, operation)`` in :meth:`LayerAdapter.call`.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from .._codec import UnserializableValueError
from .._entry import Entry, EntryMeta
from .._exceptions import CacheLayerError, LayerCacheError
from .._primitives.threads import (
    Cancelled,
    bind_method,
    gather,
    is_async_callable,
    pause,
    stack_layer,
)
from .._telemetry import Telemetry
from .batcher import DEFAULT_MAX_BATCH, Batcher
from .recovery import Backlog

__all__ = ["MAX_MISSED", "LayerAdapter"]

# Writes and invalidations a degraded layer may miss (in keys) before it is fenced.
MAX_MISSED = 10_000


# Reads are timed and traced by the reader (its fast path calls the layer directly).
_TIMED_BY_READER = frozenset({"get", "get_many"})


def _peek_by(
    lookup: Callable[[str, float], Entry | None],
) -> Callable[[str, float], tuple[Any, EntryMeta] | None]:
    """A ``peek`` made of a layer's ``lookup``."""

    def peek(key: str, now: float) -> tuple[Any, EntryMeta] | None:
        entry = lookup(key, now)
        return None if entry is None else (entry.value, entry.meta)

    return peek


def _missed_weight(item: tuple[str, Any]) -> int:
    """A missed bulk delete counts its keys; a pattern or a clear counts one."""
    kind, arg = item
    return len(arg) if kind == "delete" else 1


_OPTIONAL = (
    "get_many",
    "set_many",
    "delete_many",
    "purge_many",
    "delete_matching",
    "keys",
    "has",
    "ttl",
    "size",
    "ping",
)


class LayerAdapter:
    """A layer bound once to the stack's calling convention, its capabilities known up front."""

    def __init__(self, layer: Any, index: int) -> None:
        # A layer may hand this stack a twin of itself (RedisLayer(url=...) in SyncCacheStack).
        layer = stack_layer(layer)
        for attr in ("name", "get", "set", "delete", "clear"):
            if not hasattr(layer, attr):
                raise TypeError(
                    f"layer {layer!r} is not a CacheLayer: it has no {attr!r} "
                    "(required: name, default_ttl, is_local, get, set, delete, clear)"
                )
        name = layer.name
        if not isinstance(name, str) or not name:
            raise ValueError(f"layer {layer!r} needs a non-empty str name")
        self.layer = layer
        self.index = index
        self.name: str = name
        self.default_ttl: float | None = getattr(layer, "default_ttl", None)
        self.is_local: bool = bool(getattr(layer, "is_local", False))
        blocking = bool(getattr(layer, "is_blocking", False))
        # The L1 fast path: a local, non-blocking layer with a synchronous lookup(key, now).
        lookup = getattr(layer, "lookup", None)
        self.lookup: Callable[[str, float], Entry | None] | None = (
            lookup
            if lookup is not None and not blocking and not is_async_callable(lookup)
            else None
        )
        # The same as (value, metadata) without making an Entry (MemoryLayer.peek), or through
        # lookup() for a layer without peek().
        peek = getattr(layer, "peek", None)
        self.peek: Callable[[str, float], tuple[Any, EntryMeta] | None] | None = None
        if self.lookup is not None:
            self.peek = (
                peek if peek is not None and not is_async_callable(peek) else _peek_by(self.lookup)
            )
        # Layers with a synchronous lookup (the memory layer) are also written synchronously
        # on the stack's hot paths (backfill, store): no extra frames for an L1 write.
        self.direct_set: Callable[[str, Entry, float | None], None] | None = (
            layer.set if self.lookup is not None and not is_async_callable(layer.set) else None
        )
        self._get = bind_method(layer.get, blocking)
        self._set = bind_method(layer.set, blocking)
        self._delete = bind_method(layer.delete, blocking)
        self._clear = bind_method(layer.clear, blocking)
        # The read of the hot path. A built-in driver that already raises CacheLayerError for
        # every failure (``raises_layer_errors``) is called directly: no extra frame per hit.
        self.read: Callable[[str], Entry | None] = self.get
        if getattr(layer, "raises_layer_errors", False) and callable(layer.get):
            self.read = layer.get
        # Conditional stores (RedisLayer's leases): a shared layer that can refuse a fetch's
        # store when the key changed since the read the fetch began from. The stack reads it
        # with get_leased, and stores fetched values with set_leased.
        self.leases = (
            not self.is_local
            and callable(getattr(layer, "get_leased", None))
            and callable(getattr(layer, "set_leased", None))
            and callable(getattr(layer, "lease", None))
        )
        self.read_leased: Callable[[str], tuple[Entry | None, Any]] | None = None
        if self.leases:
            self._get_leased = bind_method(layer.get_leased, blocking)
            self._lease = bind_method(layer.lease, blocking)
            self._set_leased = bind_method(layer.set_leased, blocking)
            fence = getattr(layer, "fence_tags", None)
            self._fence_tags = bind_method(fence, blocking) if callable(fence) else None
            self.read_leased = self.get_leased
            if getattr(layer, "raises_layer_errors", False) and callable(layer.get_leased):
                self.read_leased = layer.get_leased
        self._optional: dict[str, Callable[..., Any]] = {}
        for attr in _OPTIONAL:
            fn = getattr(layer, attr, None)
            if callable(fn):
                self._optional[attr] = bind_method(fn, blocking)
        # Concurrent reads (and writes) of a remote layer share bulk calls (batcher.py).
        self.read_batcher: Batcher | None = None
        self.leased_batcher: Batcher | None = None
        self.write_batcher: Batcher | None = None
        self.leased_store_batcher: Batcher | None = None
        if not self.is_local:
            self._batch(layer, blocking)
        closer = getattr(layer, "close", None)
        self._close = bind_method(closer, blocking) if callable(closer) else None
        # Graceful degradation (owned by the layer set): ``backlog.down_until`` is when a
        # failed layer may be probed again, ``backlog`` what it missed meanwhile, replayed
        # before it serves again (bounded in keys; on overflow the layer is fenced: cleared
        # on recovery, since what it missed is no longer known).
        self.backlog = Backlog(MAX_MISSED, _missed_weight)
        self.missed_keys: set[str] = set()  # the keys of the deletes in the backlog
        # Keys a fetch refilled while the layer was away, oldest first (bounded by the layer
        # set; not changes: dropped on recovery, forgotten on overflow, never a fence).
        self.refills: OrderedDict[str, None] = OrderedDict()
        # When the current outage began (the stack's clock; set by the layer set).
        self.degraded_since: float | None = None
        # Where calls are timed and traced (set by the layer set), and the recorders of
        # each operation's latency, bound on first use.
        self.telemetry: Telemetry | None = None
        self._timers: dict[str, Callable[[float], None]] = {}
        # Whether a pattern invalidation has cleared this layer yet (warned about once).
        self._cleared_for_patterns = False
        # The layer's own eviction counter (the memory layer's bound), read by get_metrics().
        self.counts_evictions = hasattr(layer, "evictions")
        # Where the layer reports unreadable stored values: a handler of this stack's, added
        # beside any other (add_error_handler, removed on close), or, for a layer that only
        # has set_error_handler, set (the layer then serves this stack alone).
        adder = getattr(layer, "add_error_handler", None)
        setter = getattr(layer, "set_error_handler", None)
        self._add_handler: Callable[[Any], Any] | None = adder if callable(adder) else None
        self._set_handler: Callable[[Any], Any] | None = setter if callable(setter) else None

    def _batch(self, layer: Any, blocking: bool) -> None:
        """Put batchers in front of the layer's reads and writes (see batcher.py).

        A layer tunes them with attributes: ``read_batching`` and ``write_batching`` (on
        unless false), ``batch_window`` (seconds a batch leader waits for more callers; 0)
        and ``max_batch`` (items per bulk call). Plain reads are batched through the layer's
        ``get_batch`` (failures reported as its ``get`` would be) or else its ``get_many``;
        leased reads through ``get_leased_batch`` only; writes through ``set_batch`` and
        the conditional stores of fetches through ``set_leased_batch`` only (one outcome per
        item: a value that cannot be stored fails its own caller alone).
        """
        window = float(getattr(layer, "batch_window", 0.0) or 0.0)
        max_batch = int(getattr(layer, "max_batch", DEFAULT_MAX_BATCH) or DEFAULT_MAX_BATCH)

        def batcher(one: Callable[[Any], Any], bulk: Any, operation: str) -> Batcher:
            # Reads are deduplicated (a key asked twice is read once); writes report one
            # outcome per item and keep their order.
            reads = operation == "get"
            return Batcher(
                one,
                self._bulk(operation, bind_method(bulk, blocking)),
                max_batch=max_batch,
                window=window,
                per_item=not reads,
                dedupe=reads,
            )

        def coalesced(
            single: Callable[..., Any], bulk: Any
        ) -> tuple[Batcher, Callable[..., Any]]:
            # A write of several arguments goes through the batcher as one tuple.
            def alone(item: tuple[Any, ...]) -> Any:
                return single(*item)

            made = batcher(alone, bulk, "set")
            submit = made.submit

            def write(*args: Any) -> Any:
                return submit(args)

            return made, write

        if getattr(layer, "read_batching", True):
            many = getattr(layer, "get_batch", None)
            if not callable(many):
                many = getattr(layer, "get_many", None)
            if callable(many):
                self.read_batcher = batcher(self.read, many, "get")
                self.read = self.read_batcher.submit
            leased = getattr(layer, "get_leased_batch", None)
            if self.read_leased is not None and callable(leased):
                self.leased_batcher = batcher(self.read_leased, leased, "get")
                self.read_leased = self.leased_batcher.submit
        if getattr(layer, "write_batching", True):
            stores = getattr(layer, "set_batch", None)
            if callable(stores):
                self.write_batcher, self._set = coalesced(self._set, stores)
            leased_stores = getattr(layer, "set_leased_batch", None)
            if self.leases and callable(leased_stores):
                self.leased_store_batcher, self._set_leased = coalesced(
                    self._set_leased, leased_stores
                )

    def _bulk(
        self, operation: str, fn: Callable[[list[Any]], Any]
    ) -> Callable[[list[Any]], list[Any]]:
        """A layer's bulk call for a batcher: failures translated as ``operation`` (what each
        caller's own call would have raised), one result per item checked."""

        def bulk(items: list[Any]) -> list[Any]:
            results = list(self._call(operation, fn, (items,)))
            if len(results) != len(items):
                raise CacheLayerError(
                    self.name,
                    operation,
                    f"a bulk {operation} returned {len(results)} results for {len(items)} items",
                )
            return results

        return bulk

    def report_to(self, handler: Callable[[BaseException, dict[str, Any]], None]) -> Any:
        """Have the layer report to ``handler``; returns what undoes it (or ``None``)."""
        if self._add_handler is not None:
            return self._add_handler(handler)
        if self._set_handler is not None:
            self._set_handler(handler)
        return None

    def evictions(self) -> int:
        """Values the layer evicted to keep its bound (0 for a layer that does not say)."""
        return int(self.layer.evictions or 0) if self.counts_evictions else 0

    @property
    def degraded_until(self) -> float | None:
        """When this degraded layer may be probed again (``None``: in service)."""
        return self.backlog.down_until

    def call(self, operation: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` and translate driver failures into ``CacheLayerError``; timed (and
        traced, for a remote layer) unless the reader times it."""
        telemetry = self.telemetry
        if telemetry is None or operation in _TIMED_BY_READER:
            return self._call(operation, fn, args)
        timer = self._timers.get(operation)
        if timer is None:
            timer = self._timers[operation] = telemetry.timer(self.name, operation)
        began = time.perf_counter()
        try:
            if telemetry.tracer is None or self.is_local:
                return self._call(operation, fn, args)
            with telemetry.tracer.layer_call(self.name, operation):
                return self._call(operation, fn, args)
        finally:
            timer(time.perf_counter() - began)

    def _call(
        self, operation: str, fn: Callable[..., Any], args: tuple[Any, ...]
    ) -> Any:
        try:
            return fn(*args)
        except (LayerCacheError, UnserializableValueError):
            raise  # already translated, or the caller's value at fault (not the layer)
        except Cancelled:
            raise
        except Exception as exc:
            raise CacheLayerError(self.name, operation) from exc

    def get(self, key: str) -> Entry | None:
        """The stored entry, or ``None``."""
        return self.call("get", self._get, key)  # type: ignore[no-any-return]

    def set(self, key: str, entry: Entry, ttl: float | None) -> None:
        """Store one entry."""
        self.call("set", self._set, key, entry, ttl)

    def delete(self, key: str) -> None:
        """Remove one key."""
        self.call("delete", self._delete, key)

    def clear(self) -> None:
        """Remove everything the layer owns."""
        self.call("clear", self._clear)

    def get_leased(self, key: str) -> tuple[Entry | None, Any]:
        """The stored entry (or ``None``) and the lease of this read (``leases`` only)."""
        return self.call("get", self._get_leased, key)  # type: ignore[no-any-return]

    def take_lease(self, key: str) -> Any:
        """A lease on ``key`` as it is now, for a fetch that read nothing before it."""
        return self.call("lease", self._lease, key)

    def set_leased(
        self, key: str, entry: Entry, ttl: float | None, lease: Any, tags: Sequence[str]
    ) -> bool:
        """Store a fetched entry unless the key (or one of ``tags``) changed since ``lease``;
        ``False`` when refused."""
        return bool(self.call("set", self._set_leased, key, entry, ttl, lease, tags))

    def fence_tags(self, tags: Sequence[str]) -> None:
        """Refuse the stores of fetches of keys with ``tags`` that began before now."""
        if self._fence_tags is not None:
            self.call("fence_tags", self._fence_tags, list(tags))

    def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        """Bulk read, through the layer's fast path when it has one."""
        fn = self._optional.get("get_many")
        if fn is not None:
            result = self.call("get_many", fn, list(keys))
            return list(result)
        return gather([partial(self.get, k) for k in keys])

    def set_many(self, items: Sequence[tuple[str, Entry, float | None]]) -> None:
        """Bulk write, through the layer's fast path when it has one."""
        fn = self._optional.get("set_many")
        if fn is not None:
            self.call("set_many", fn, list(items))
        else:
            gather([partial(self.set, k, e, t) for k, e, t in items])

    def delete_many(self, keys: Sequence[str]) -> None:
        """Bulk delete, through the layer's fast path when it has one."""
        fn = self._optional.get("delete_many")
        if fn is not None:
            self.call("delete_many", fn, list(keys))
        else:
            gather([partial(self.delete, k) for k in keys])

    @property
    def can_list_keys(self) -> bool:
        """Whether the layer has ``keys`` (it can say which keys it holds)."""
        return "keys" in self._optional

    def keys(self, pattern: str | None = None) -> list[str]:
        """The layer's keys matching a glob (every key without one); needs ``keys``."""
        return list(self.call("keys", self._optional["keys"], pattern))

    def delete_matching(self, pattern: str) -> int:
        """Delete keys matching a glob; needs ``delete_matching`` or ``keys`` on the layer."""
        fn = self._optional.get("delete_matching")
        if fn is not None:
            return int(self.call("delete_matching", fn, pattern))
        if not self.can_list_keys:
            # The layer cannot find the matching keys (memcached cannot list them): it is
            # cleared instead. Too much is dropped, never too little: refusing would leave the
            # invalidated values served from it (or, degraded, keep it out of service, its
            # replay failing the same way every time).
            if not self._cleared_for_patterns and self.telemetry is not None:
                self.telemetry.log(
                    logging.WARNING,
                    "layercache: layer %s cannot list keys; pattern and prefix invalidations "
                    "clear it",
                    self.name,
                    operation="delete_matching",
                    layer=self.name,
                )
            self._cleared_for_patterns = True
            self.clear()
            return 0
        keys = self.keys(pattern)
        if keys:
            self.delete_many(keys)
        return len(keys)

    def delete_matching_in_batches(self, pattern: str, batch_size: int) -> int:
        """Delete keys matching a glob with one ``delete_many`` per ``batch_size`` keys,
        pausing between batches, so a large background deletion (the old generation) never
        sends one huge command nor holds the stack for its whole length. The keys come from
        the layer's ``keys`` (one listing); a layer without it gets its own
        ``delete_matching``, which chooses its batches itself."""
        if not self.can_list_keys:
            return self.delete_matching(pattern)
        keys = self.keys(pattern)
        # Keys of a retired generation are read and fetched by nobody: a layer that can remove
        # keys for good (no tombstone, see RedisLayer.purge_many) does so.
        purge = self._optional.get("purge_many")
        for start in range(0, len(keys), batch_size):
            if start:
                pause(0)
            batch = keys[start : start + batch_size]
            if purge is not None:
                self.call("purge_many", purge, batch)
            else:
                self.delete_many(batch)
        return len(keys)

    def ping(self) -> bool:
        """Probe the layer (``ping`` when it has one, else a read of a probe key)."""
        fn = self._optional.get("ping")
        if fn is not None:
            return bool(self.call("ping", fn))
        self.get("layercache:health-probe")
        return True

    def close(self) -> None:
        """Release the layer's resources."""
        if self._close is not None:
            self.call("close", self._close)
