"""``CacheStack``: the layered read/write orchestration on asyncio.

The public API, and the top of every path. ``get`` answers an L1 hit itself (a plain call, nothing
suspends); below L1 the reader reads the layers in order and the loader fetches once per key; the
writer stores in every layer and keeps the tag index; the layer set fans out and handles
degraded layers; the bus link applies other instances' changes; the announcer tells them ours.
Each write or invalidation method here is a short sequence of those calls. Who calls whom is
drawn in ``docs/architecture.md``.

This module is the one source of truth for the orchestration: the thread-based
``SyncCacheStack`` is generated from it (``scripts/unasync.py``), so it avoids constructs only
one twin has, outside the few helpers the generator knows how to rename.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, ParamSpec, Protocol, TypeVar, overload

from .._entry import Entry, EntryMeta
from .._exceptions import CacheMissError, LayerCacheError
from .._glob import compile_glob, escape_glob
from .._keys import (
    MAX_KEY_LENGTH,
    MAX_PREFIX_LENGTH,
    validate_key,
)
from .._keys import validate_pattern as _validate_pattern
from .._keys import validate_prefix as _validate_prefix
from .._metrics import (
    BusStatus,
    CacheInspectResult,
    CacheMetrics,
    CacheStats,
    HitRate,
    LayerHealth,
)
from .._options import (
    AdaptiveTtl,
    CacheEntry,
    CacheEntryRequest,
    CacheOptions,
    coerce_options,
    merge_options,
)
from .._primitives.aio import call_fetcher, wait_launched
from .._typed import converter_for
from .._types import InvalidationBus, OperationTracer, SingleFlightCoordinator
from .._warming import WarmEntry, WarmSummary, coerce_warm_entries
from ..layers.memory import NOT_FRESH, MemoryLayer
from ..snapshots import MAX_BYTES, MAX_ENTRIES, read_snapshot, write_snapshot
from .assembly import assemble
from .flights import Flight, among
from .namespace import ANNOTATION, CacheNamespace, cached_decorator
from .reader import MISS

__all__ = ["CacheNamespace", "CacheStack"]

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")
Fetcher = Callable[[], Any]
OptionsArg = CacheOptions | Mapping[str, Any] | None
GetEntry = str | tuple[str, Fetcher | None] | CacheEntryRequest
SetEntry = tuple[str, Any] | CacheEntry
WarmItem = WarmEntry | tuple[str, Fetcher]

# How long aclose() lets in-flight fetches finish before cancelling them.
_CLOSE_GRACE = 5.0
# The memory layer's latency is timed on one lookup in (mask + 1) on the L1 path of get().
_L1_SAMPLE_MASK = 63


def _fresh_reader(
    peek: Callable[[str, float], tuple[Any, EntryMeta] | None] | None, layer: Any
) -> Callable[[str, float], Any] | None:
    """The L1 hit path's read: ``key``'s value if fresh at ``now``, else ``NOT_FRESH``.
    A :class:`MemoryLayer` answers it itself (no tuple, one comparison); any other layer with
    a ``peek`` through it."""
    if peek is None:
        return None
    if isinstance(layer, MemoryLayer) and peek == layer.peek:
        return layer.fresh_value

    def fresh(key: str, now: float) -> Any:
        found = peek(key, now)
        if found is None or now >= found[1].fresh_end:
            return NOT_FRESH
        return found[0]

    return fresh


# Per-call option sets remembered after coercion (see CacheStack._options).
_OPTIONS_MEMO = 256


class WrapDecorator(Protocol):
    """What ``wrap(prefix)`` returns: a decorator keeping the function's signature."""

    # unasync: begin async-only
    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]], /) -> Callable[P, Awaitable[R]]: ...

    @overload
    # unasync: end async-only
    def __call__(self, fn: Callable[P, R], /) -> Callable[P, Awaitable[R]]: ...


class CacheStack:
    """Layers read fastest first behind one ``get(key, fetcher)``.

    Args:
        layers: The layers, fastest first (e.g. ``[MemoryLayer(), RedisLayer(url=...)]``).
        logger: Logger for debug lines about layer decisions and one line per degradation,
            recovery and circuit change (``True``: ``logging.getLogger("layercache")``, the
            default; ``False``: silent). Lines carry structured ``extra`` fields.
        metrics: Collect counters and per-layer latency.
        stampede_prevention: Share one in-flight fetch among concurrent callers of a key.
        negative_caching: Stack default of ``negative_cache`` (cache ``None`` results).
        negative_ttl: Stack default lifetime of negatively cached results.
        fetch_timeout: Seconds a fetch may run (default 30: no fetch holds a key forever).
        ttl_jitter: Stack default ``ttl_jitter``.
        early_refresh: Stack default ``early_refresh`` (``True`` or a beta: probabilistic
            early refresh of fresh values on hits, see ``CacheOptions``).
        write_policy: ``"strict"``: any layer failure fails the write; ``"best-effort"``: a
            write fails only when every layer fails (failures are counted).
        tag_index: The tag index (default: an in-process ``InMemoryTagIndex`` bounded by
            ``max_tag_index_keys``; one instance may serve several stacks).
        max_tag_index_keys: Bound of the default in-process tag index.
        max_profile_entries: Bound on per-key bookkeeping.
        ttl_policy_timezone: Time zone of the ``until-midnight`` / ``next-hour`` policies.
        clock: Wall clock in seconds (inject a fake one in tests).
        rng: Random source for TTL jitter and the draws of ``early_refresh``.
        invalidation_bus: Cross-instance invalidation (e.g. ``RedisInvalidationBus``): with
            it, every delete, invalidation, clear and generation bump is announced to the
            other instances, which drop the keys from their local layers.
        broadcast_l1_invalidation: Also announce writes (``set``, ``set_many``), so peers
            drop their L1 copy of the old value. Default: on when a bus is configured.
        snapshot_base_dir: The directory ``persist_to_file`` / ``restore_from_file`` paths
            must resolve into (symlinks and ``..`` resolved first); default the current
            working directory at construction, ``False`` lifts the confinement.
    """

    def __init__(
        self,
        layers: Sequence[Any],
        *,
        logger: logging.Logger | bool | None = None,
        metrics: bool = True,
        stampede_prevention: bool = True,
        negative_caching: bool = False,
        negative_ttl: float | _dt.timedelta | None = None,
        fetch_timeout: float | _dt.timedelta | None = 30,
        ttl_jitter: float | Mapping[str, float] | None = None,
        stale_while_revalidate: float | Mapping[str, float] | None = None,
        stale_if_error: float | Mapping[str, float] | None = None,
        fetch_soft_timeout: float | _dt.timedelta | None = None,
        adaptive_ttl: AdaptiveTtl | Mapping[str, Any] | None = None,
        early_refresh: bool | float | None = None,
        circuit_breaker: Any = None,
        fetcher_rate_limit: Any = None,
        background_refresh_timeout: float | _dt.timedelta = 30,
        graceful_degradation: bool | Mapping[str, Any] | None = None,
        write_policy: Literal["strict", "best-effort"] = "strict",
        write_strategy: Literal["write-through", "write-behind"] = "write-through",
        write_behind: Mapping[str, Any] | None = None,
        single_flight_coordinator: SingleFlightCoordinator | None = None,
        single_flight_lease: float | _dt.timedelta | None = None,
        single_flight_timeout: float | _dt.timedelta = 5,
        single_flight_poll: float | _dt.timedelta = 0.05,
        single_flight_renew_interval: float | _dt.timedelta | None = None,
        invalidation_bus: InvalidationBus | None = None,
        broadcast_l1_invalidation: bool | None = None,
        generation: int | None = None,
        generation_cleanup: Mapping[str, Any] | bool | None = None,
        tag_index: Any = None,
        max_tag_index_keys: int = 100_000,
        max_profile_entries: int = 100_000,
        ttl_policy_timezone: _dt.tzinfo | str = _dt.timezone.utc,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        snapshot_base_dir: str | os.PathLike[str] | Literal[False] | None = None,
    ) -> None:
        settings = dict(locals())
        del settings["self"]
        parts = assemble(settings)
        # The collaborators, each owning its state; calls go one way (docs/architecture.md).
        self._telemetry = telemetry = parts.telemetry
        # Collaborators used off the hot paths, reached through the parts (an instance with
        # more than 30 attributes has its attributes looked up by hash: see _l1_quiet).
        self._parts = parts
        self._announcer = parts.announcer
        self._layers = parts.layers
        self._flights = parts.flights
        self._writer = parts.writer
        self._loader = parts.loader
        self._reader = parts.reader
        self._link = parts.link
        self._tag_index = parts.tag_index
        self._defaults: CacheOptions = parts.defaults
        self._memo: dict[Any, tuple[Any, CacheOptions]] = {}
        self._check_layer_names(self._defaults)
        self._clock = clock
        self.max_profile_entries = max_profile_entries
        self._closed = False
        # The L1 fast path of get(): a local layer that answers synchronously is read with a
        # plain call, its counters and the event hub held here for one attribute load each.
        first = self._layers.adapters[0]
        self._l1: Callable[[str, float], tuple[Any, EntryMeta] | None] | None = first.peek
        self._l1_fresh = _fresh_reader(first.peek, first.layer)
        self._l1_name = first.name
        self._metrics = telemetry.metrics
        self._metrics_enabled = metrics
        self._l1_counters = telemetry.metrics.layers[first.name]
        self._l1_timer = telemetry.timer(first.name, "get")
        self._events = telemetry.events
        self._tracer: OperationTracer | None = None  # the L1 path's copy of telemetry.tracer
        # No "hit" listener and no tracer: the plain L1 hit only counts (kept up to date by
        # the event hub and set_tracer). Keep this class under 30 instance attributes, all
        # set here: CPython shares the attribute names of a class's instances (one-step
        # reads) only up to 30, and one more costs the L1 hit about 5% (callgrind).
        self._l1_quiet = True
        self._events.watch(self._watch_hit_hooks)
        self._evictions_base = 0

    # ------------------------------------------------------------------ helpers

    def _watch_hit_hooks(self) -> None:
        self._l1_quiet = "hit" not in self._events.active and self._tracer is None

    def _options(self, options: OptionsArg, kwargs: Mapping[str, Any]) -> CacheOptions:
        """Per-call options on top of the stack defaults; validates before any I/O.

        The result is remembered (bounded) for the same keyword values, compared with their
        types (``True`` and ``1`` differ), and for the same ``CacheOptions`` object: a call
        site passing the same options every time (``get(key, fetcher, ttl=60)``) pays for
        their validation once, not on every hit."""
        key: Any = None  # what the result is remembered under (None: not remembered)
        owner: Any = None  # the options object a remembered result belongs to (by identity)
        if kwargs:
            if options is not None:
                raise TypeError("pass options either as keyword arguments or as options=")
            key = tuple(
                (k, v.__class__, tuple(v) if v.__class__ is list else v) for k, v in kwargs.items()
            )
            options = kwargs
        elif options is None:
            return self._defaults
        elif options.__class__ is CacheOptions:
            key, owner = id(options), options  # the entry holds it: its id is never reused
        if key is not None:
            try:
                known = self._memo.get(key)
            except TypeError:  # an unhashable value (a per-layer dict): not remembered
                key = None
            else:
                if known is not None and known[0] is owner:
                    return known[1]
        coerced = coerce_options(options)
        if coerced is not None:
            self._check_layer_names(coerced)
        merged = merge_options(self._defaults, coerced)
        if key is not None:
            if len(self._memo) >= _OPTIONS_MEMO:
                self._memo.clear()  # a forgotten entry only costs its validation again
            self._memo[key] = (owner, merged)
        return merged

    def _check_layer_names(self, options: CacheOptions) -> None:
        """A per-layer dict naming no layer of this stack is a typo: refuse it."""
        known = self._layers.names
        for name, value in (("ttl", options.ttl), ("ttl_jitter", options.ttl_jitter)):
            if isinstance(value, dict):
                unknown = set(value) - known
                if unknown:
                    raise ValueError(
                        f"{name} names unknown layer(s) {sorted(unknown)}; "
                        f"this stack's layers are {sorted(known)}"
                    )

    def _render(self, key: str) -> str:
        """The stored form of a validated key: ``v{N}:key`` under a generation."""
        generation = self._link.generation
        return key if generation is None else f"v{generation}:{key}"

    async def _open(self) -> None:
        """Refuse a closed stack, and subscribe to the bus on first use: every operation that
        reads or fills a local layer must be listening before it does (an instance that only
        ever called ``get_many`` would otherwise keep its L1 copies forever)."""
        if self._closed:
            raise RuntimeError("this CacheStack is closed")
        if self._link.needs_start():
            await self._link.start()

    async def start(self) -> None:
        """Start what this stack otherwise starts on first use (the bus subscription), now.

        Idempotent. A process that shares an L1 with another stack, or must hear every
        announcement before it serves, calls it at start-up (``async with`` does too).
        Raises what the bus raises when it cannot subscribe (without graceful degradation).
        """
        await self._open()

    # ------------------------------------------------------------------ reads

    @overload
    async def get(
        self,
        key: str,
        fetcher: Fetcher | None = None,
        *,
        type: type[T],
        options: OptionsArg = None,
        **kwargs: Any,
    ) -> T | None: ...

    @overload
    async def get(
        self,
        key: str,
        fetcher: Fetcher | None = None,
        *,
        type: Any = None,
        options: OptionsArg = None,
        **kwargs: Any,
    ) -> Any: ...

    async def get(
        self,
        key: str,
        fetcher: Fetcher | None = None,
        *,
        type: Any = None,
        options: OptionsArg = None,
        **kwargs: Any,
    ) -> Any:
        """Return the value of ``key`` from the fastest layer holding it.

        A hit in a lower layer backfills the layers above it. On a full miss ``fetcher`` (sync
        or async) runs once however many callers wait, and its result is stored in every
        layer. Without a fetcher a miss returns ``None``.

        ``type`` (a dataclass, a Pydantic model, ``list[Model]``, ``Model | None``...) rebuilds
        a cached value as that type: a remote layer returns the ``dict`` its serializer
        stored. A stored value that does not validate is treated as a miss (fetched again)
        and reported as an ``error`` event. The fetcher's own result is returned as it is.

        Raises:
            ValueError: invalid key or option values.
            TypeError: ``type`` is not a type that can be rebuilt.
            CacheLayerError: a layer failed (strict write policy).
            FetchTimeoutError: the fetch outlived ``fetch_timeout``.
        """
        # (``type`` is the keyword argument here: ``key.__class__`` tests the key.) A str key
        # is checked after the plain L1 hit: only checked keys are ever stored, so a key found
        # fresh in L1 is a valid one; every other path checks it below, before anything else.
        name = key
        if key.__class__ is not str:
            validate_key(key)
        if self._link.generation is not None:
            key = self._render(key)
        opts = self._defaults if not kwargs and options is None else self._options(options, kwargs)
        fresh = self._l1_fresh
        if fresh is not None:
            now = self._clock()
            # The memory layer's latency is sampled (the lookups made while its hit count is a
            # multiple of 64): timing every L1 hit would cost more than the hit itself, and
            # the count is kept anyway (a tick of its own cost 6% of the hit).
            counters = self._l1_counters
            if counters.hits & _L1_SAMPLE_MASK or not self._metrics_enabled:
                value = fresh(key, now)
            else:
                began = time.perf_counter()
                value = fresh(key, now)
                self._l1_timer(time.perf_counter() - began)
            if value is not NOT_FRESH and type is None and not opts.has_hit_work:
                # The plain hit: a fresh value, nothing to convert, nothing to do after it.
                self._metrics.hits += 1
                counters.hits += 1
                if not self._l1_quiet:
                    if "hit" in self._events.active:
                        self._events.emit("hit", {"key": key, "layer": self._l1_name})
                    if self._tracer is not None:
                        self._tracer.l1_hit(key, self._l1_name)
                return value
        if not (0 < len(name) <= MAX_KEY_LENGTH and name.isprintable()):
            validate_key(name)
        convert = None if type is None else converter_for(type)
        stale: tuple[Entry, str] | None = None
        if fresh is not None:
            # Anything else (absent, stale, a type to rebuild, work after the hit): the
            # entry with its metadata.
            found = self._l1(key, now)  # type: ignore[misc]
            if found is not None:
                value, meta = found
                if convert is not None:
                    # L1 may hold the raw value a get() without type= backfilled: convert it
                    # (a value already of the type costs one check); not of the type: a miss.
                    try:
                        value = convert(value)
                    except Exception as exc:
                        self._telemetry.report(
                            exc, operation="get.convert", key=key, layer=self._l1_name
                        )
                        found = None
            if found is not None:
                fresh_until = meta.fresh_until
                if fresh_until is None or now < fresh_until:
                    metrics = self._metrics
                    metrics.hits += 1
                    self._l1_counters.hits += 1
                    if "hit" in self._events.active:
                        self._events.emit("hit", {"key": key, "layer": self._l1_name})
                    if self._tracer is not None:
                        self._tracer.l1_hit(key, self._l1_name)
                    if opts.has_hit_work:
                        await self._loader.after_hit(
                            key, Entry.of(value, meta), fetcher, opts, now, 0
                        )
                    return value
                stale = (Entry.of(value, meta), self._l1_name)
        await self._open()
        start = 1 if fresh is not None else 0
        if self._tracer is None:
            value = await self._reader.read_through(key, fetcher, opts, start, stale, convert)
        else:
            with self._tracer.operation("cache.get", key):
                value = await self._reader.read_through(key, fetcher, opts, start, stale, convert)
        return None if value is MISS else value

    @overload
    async def get_or_raise(
        self,
        key: str,
        fetcher: Fetcher | None = None,
        *,
        type: type[T],
        options: OptionsArg = None,
        **kwargs: Any,
    ) -> T: ...

    @overload
    async def get_or_raise(
        self,
        key: str,
        fetcher: Fetcher | None = None,
        *,
        type: Any = None,
        options: OptionsArg = None,
        **kwargs: Any,
    ) -> Any: ...

    async def get_or_raise(
        self,
        key: str,
        fetcher: Fetcher | None = None,
        *,
        type: Any = None,
        options: OptionsArg = None,
        **kwargs: Any,
    ) -> Any:
        """Like :meth:`get`, but raise ``CacheMissError`` instead of returning ``None``."""
        value = await self.get(key, fetcher, type=type, options=options, **kwargs)
        if value is None:
            raise CacheMissError(key)
        return value

    async def get_many(self, entries: Iterable[GetEntry]) -> list[Any]:
        """Values for several entries, in order (``None`` for misses without a fetcher).

        Entries are keys, ``(key, fetcher)`` pairs or :class:`CacheEntryRequest`. Reads go
        through each layer's bulk path (Redis ``MGET``); misses with a fetcher are loaded with
        single-flight like :meth:`get`.
        """
        requests: list[tuple[str, Fetcher | None, CacheOptions]] = []
        for item in entries:
            if isinstance(item, str):
                requests.append((self._render(validate_key(item)), None, self._defaults))
            elif isinstance(item, CacheEntryRequest):
                key = self._render(validate_key(item.key))
                requests.append((key, item.fetcher, self._options(item.options, {})))
            elif isinstance(item, tuple) and len(item) == 2:
                requests.append((self._render(validate_key(item[0])), item[1], self._defaults))
            else:
                raise ValueError(
                    f"get_many entries are keys, (key, fetcher) pairs or CacheEntryRequest; "
                    f"got {item!r}"
                )
        for _, fetcher, _ in requests:
            if fetcher is not None and not callable(fetcher):
                raise ValueError(f"get_many fetchers must be callable, not {fetcher!r}")
        await self._open()
        with self._telemetry.operation("cache.get_many", None):
            results = await self._reader.read_many(requests)
        return [None if r is MISS else r for r in results]

    async def has(self, key: str) -> bool:
        """Whether any layer holds a usable (fresh or in-window) value for ``key``."""
        found, _ = await self._first_entry(self._render(validate_key(key)), first_only=True)
        return bool(found)

    async def _first_entry(self, key: str, first_only: bool = False) -> tuple[list[str], Any]:
        """The layers holding a usable entry of ``key`` (stored form), and the first one."""
        await self._open()
        now = self._clock()
        found: list[str] = []
        first = None
        for adapter in self._layers.adapters:
            entry = await self._writer.peek(adapter, key)
            if entry is not None and entry.is_usable(now):
                found.append(adapter.name)
                if first is None:
                    first = entry
                if first_only:
                    break
        return found, first

    async def ttl(self, key: str) -> float | None:
        """Remaining fresh TTL in seconds from the fastest layer holding ``key``.

        ``None`` when no layer holds it or it never expires; ``0.0`` when only a stale copy
        remains.
        """
        _, entry = await self._first_entry(self._render(validate_key(key)), first_only=True)
        if entry is None or entry.fresh_until is None:
            return None
        return float(max(entry.fresh_until - self._clock(), 0.0))

    async def inspect(self, key: str) -> CacheInspectResult | None:
        """Where ``key`` lives, its remaining windows and tags; ``None`` when absent."""
        found, entry = await self._first_entry(self._render(validate_key(key)))
        if entry is None:
            return None
        now = self._clock()

        def remaining(until: float | None) -> float | None:
            return None if until is None else max(until - now, 0.0)

        return CacheInspectResult(
            key=key,
            found_in_layers=found,
            fresh_ttl=remaining(entry.fresh_until),
            stale_ttl=remaining(entry.stale_until),
            error_ttl=remaining(entry.error_until),
            is_stale=not entry.is_fresh(now),
            tags=entry.tags,
        )

    # ------------------------------------------------------------------ writes

    async def set(self, key: str, value: Any, *, options: OptionsArg = None, **kwargs: Any) -> None:
        """Store ``value`` under ``key`` in every layer (tags replace the key's old tags)."""
        key = self._render(validate_key(key))
        opts = self._options(options, kwargs)
        await self._open()
        with self._telemetry.operation("cache.set", key):
            # An explicit write is newer than a running fetch or read of the key.
            with self._flights.changing(lambda k, _: k == key, (key,)):
                await self._writer.store(key, value, opts, None)
            await self._announcer.announce("keys", "set", (key,))

    async def set_many(self, entries: Iterable[SetEntry]) -> None:
        """Store several values; one bulk write per layer."""
        items: list[tuple[str, Any, CacheOptions]] = []
        for item in entries:
            if isinstance(item, CacheEntry):
                key, value, raw = item.key, item.value, item.options
            elif isinstance(item, tuple) and len(item) == 2:
                key, value = item
                raw = None
            else:
                raise ValueError(f"set_many entries are (key, value) or CacheEntry, not {item!r}")
            items.append((self._render(validate_key(key)), value, self._options(raw, {})))
        await self._open()
        if not items:
            return
        written = {key for key, _, _ in items}
        with self._telemetry.operation("cache.set_many", None):
            with self._flights.changing(among(written), written):
                await self._writer.store_many(items)
            await self._announcer.announce("keys", "set", [key for key, _, _ in items])

    async def delete(self, key: str) -> None:
        """Remove ``key`` from every layer; a fetch of it in flight will not be stored."""
        validate_key(key)
        await self.delete_many([key])

    async def delete_many(self, keys: Iterable[str]) -> None:
        """Remove several keys from every layer."""
        unique = list(dict.fromkeys(self._render(validate_key(k)) for k in keys))
        await self._open()
        if not unique:
            return
        with self._telemetry.operation("cache.delete", unique[0] if len(unique) == 1 else None):
            with self._flights.changing(among(unique), unique):
                await self._writer.delete(unique)
            await self._announcer.announce("keys", "delete", unique)
        if self._telemetry.wants("delete"):
            for key in unique:
                self._telemetry.emit("delete", {"key": key})

    async def clear(self) -> None:
        """Remove every key from every layer (each layer clears only what it owns)."""
        await self._open()
        with self._telemetry.operation("cache.clear", None):
            with self._flights.changing_all():
                await self._writer.clear()
            await self._announcer.announce("clear", "clear", ())

    async def invalidate_by_tag(self, tag: str) -> int:
        """Delete every key stored with ``tag``; returns how many keys were known."""
        return await self.invalidate_by_tags([tag])

    async def invalidate_by_tags(
        self, tags: Iterable[str], mode: Literal["any", "all"] = "any"
    ) -> int:
        """Delete keys carrying any (``mode="any"``) or all (``"all"``) of ``tags``."""
        if mode not in ("any", "all"):
            raise ValueError(f"mode must be 'any' or 'all', not {mode!r}")
        tag_list = coerce_options({"tags": list(tags)})
        assert tag_list is not None
        wanted = tag_list.tags or ()
        await self._open()
        if not wanted:
            return 0
        tag_set = set(wanted)

        def tagged(_key: str, flight: Flight) -> bool:
            if mode == "all":
                return tag_set.issubset(flight.tags)
            return not tag_set.isdisjoint(flight.tags)

        with self._telemetry.operation("cache.invalidate", None):
            # The change begins before the index is asked which keys carry the tags: a fetch
            # that stores and records its tags in between would be neither in the answer nor
            # still in flight to be marked, and its value would outlive the invalidation.
            with self._flights.changing(tagged):
                keys, known = await self._writer.invalidate_tags(wanted, mode)
            await self._announcer.announce("tags", "invalidate", wanted, mode)
            if keys:
                await self._announcer.announce("keys", "invalidate", keys)
        return known

    async def invalidate_by_pattern(self, pattern: str) -> int:
        """Delete every key matching the glob ``pattern`` (``*``, ``?``, ``[...]``).

        Returns the number of keys removed from the layer that removed the most.
        """
        _validate_pattern(pattern)
        generation = self._link.generation
        if generation is not None:
            pattern = escape_glob(f"v{generation}:") + pattern
        glob = compile_glob(pattern)
        await self._open()
        with self._telemetry.operation("cache.invalidate", None):
            with self._flights.changing(lambda k, _: glob.matches(k)):
                removed = await self._writer.invalidate_pattern(pattern)
            await self._announcer.announce("pattern", "invalidate", (pattern,))
        return removed

    async def invalidate_by_prefix(self, prefix: str) -> int:
        """Delete every key starting with ``prefix``."""
        _validate_prefix(prefix)
        return await self.invalidate_by_pattern(escape_glob(prefix) + "*")

    # ------------------------------------------------------------------ generations

    def get_generation(self) -> int | None:
        """The current key generation (``None`` when generations are off)."""
        return self._link.generation

    async def bump_generation(self) -> int:
        """Move every key to a new generation at once (no scan): old keys become unreachable.

        The new number is stored in Redis when the bus can store it (so every instance and
        restart agrees) and announced on the bus; ``generation_cleanup`` deletes the old
        generation's keys in the background in batches.
        """
        await self._open()
        with self._telemetry.operation("cache.bump_generation", None):
            return await self._link.bump()

    # ------------------------------------------------------------------ wrap, namespace

    @overload
    def wrap(
        self,
        prefix: str,
        fn: None = None,
        *,
        key_resolver: Callable[..., str] | None = None,
        type: Any = ...,
        **opts: Any,
    ) -> WrapDecorator: ...

    # unasync: begin async-only
    @overload
    def wrap(
        self,
        prefix: str,
        fn: Callable[P, Awaitable[R]],
        *,
        key_resolver: Callable[..., str] | None = None,
        type: Any = ...,
        **opts: Any,
    ) -> Callable[P, Awaitable[R]]: ...

    # unasync: end async-only
    @overload
    def wrap(
        self,
        prefix: str,
        fn: Callable[P, R],
        *,
        key_resolver: Callable[..., str] | None = None,
        type: Any = ...,
        **opts: Any,
    ) -> Callable[P, Awaitable[R]]: ...

    def wrap(
        self,
        prefix: str,
        fn: Any = None,
        *,
        key_resolver: Callable[..., str] | None = None,
        type: Any = ANNOTATION,
        **opts: Any,
    ) -> Any:
        """A cached version of ``fn`` (sync or async), bare or as a decorator.

        Keys are ``prefix:`` plus a collision-free rendering of the arguments bound to the
        function's signature with defaults applied (``user:123`` for ``f(123)``, and for
        ``f(user_id=123)``; ``user:"123"`` for ``f("123")``), or ``prefix:`` plus
        ``key_resolver(*args, **kwargs)``. Call the wrapper the way :meth:`get` is called.

        Methods work: the bound ``self`` (or ``cls``) is left out of the key, so every
        instance shares the cached values, unless the instance's class defines
        ``__cache_key__(self)``, whose result then leads the key. ``wrap`` may sit above or
        below ``@classmethod`` and ``@staticmethod``.

        Values read from a remote layer are rebuilt as the function's return annotation
        (``-> User``, ``-> list[User]``, ``-> User | None``; see :meth:`get`'s ``type``),
        resolved on the first call. ``type=`` names the type instead; ``type=None`` returns
        values as stored.

        Raises:
            ValueError: ``fn`` is not callable, a bad prefix or option.
            TypeError: ``type`` cannot be rebuilt; at the first call, a return annotation
                that cannot be resolved.
        """
        _validate_prefix(prefix, limit=MAX_PREFIX_LENGTH)
        options = self._options(None, opts)
        if key_resolver is not None and not callable(key_resolver):
            raise ValueError("key_resolver must be callable")
        decorate = cached_decorator(self.get, prefix, key_resolver, type, options)
        if fn is not None:
            return decorate(fn)
        return decorate

    def namespace(self, prefix: str) -> CacheNamespace:
        """A view of this stack whose keys all live under ``prefix:``."""
        return CacheNamespace(self, prefix)

    # ------------------------------------------------------------------ warming, snapshots

    async def warm(
        self,
        entries: Iterable[WarmItem],
        *,
        concurrency: int = 4,
        continue_on_error: bool = False,
        progress: Callable[[int, int], Any] | None = None,
    ) -> WarmSummary:
        """Fill the cache before traffic: fetch and store every key not fresh yet.

        ``entries`` are :class:`~layercache.WarmEntry` (or ``(key, fetcher)`` pairs), taken
        highest ``priority`` first (equal priorities in order), at most ``concurrency``
        fetches at once. A key already fresh in some layer is skipped without calling its
        fetcher; any other is fetched and stored as ``get(key, fetcher, **options)`` would,
        and a ``warm`` event ``{key}`` is emitted. ``progress(done, total)`` is called after
        each entry (from the worker that finished it).

        Raises:
            ValueError: ``concurrency`` below 1, a bad entry, key or option (before any fetch).
            Exception: The first fetcher error, after the fetches already running end,
                unless ``continue_on_error`` (then counted in the summary's ``failed``).
        """
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be an int >= 1, not {concurrency!r}")
        if progress is not None and not callable(progress):
            raise ValueError("progress must be callable")
        plan = [
            (self._render(validate_key(e.key)), e.fetcher, self._options(e.options, {}))
            for e in coerce_warm_entries(entries)
        ]
        await self._open()
        with self._telemetry.operation("cache.warm", None):
            return await self._parts.warmer.warm(
                plan,
                concurrency=concurrency,
                continue_on_error=continue_on_error,
                progress=progress,
            )

    async def export_state(
        self, *, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES
    ) -> dict[str, Any]:
        """A JSON-serialisable snapshot of every fresh key: value, remaining TTLs, tags.

        Each key comes from the first layer that can list its keys and holds it fresh;
        keys of the current generation appear in their user form. The format is described
        in :mod:`layercache.snapshots`.

        Raises:
            ValueError: No layer can list keys, a value JSON cannot carry, or over the bounds.
            CacheLayerError: A layer failed or is degraded (an export never leaves keys out
                silently).
        """
        await self._open()
        with self._telemetry.operation("cache.export_state", None):
            return await self._parts.snapshots.export(
                self._link.generation, max_entries=max_entries, max_bytes=max_bytes
            )

    async def import_state(
        self,
        snapshot: Mapping[str, Any],
        *,
        max_entries: int = MAX_ENTRIES,
        max_bytes: int = MAX_BYTES,
    ) -> int:
        """Store a snapshot's entries through every layer (tags recorded, peers told as for
        :meth:`set_many`); returns how many were stored. The whole snapshot is validated
        first: a corrupt or truncated one raises ``ValueError`` and imports nothing. Expired
        entries (``ttl`` <= 0) are skipped.
        """
        items = self._parts.snapshots.plan_import(
            snapshot, max_entries=max_entries, max_bytes=max_bytes
        )
        await self.set_many(items)
        return len(items)

    async def persist_to_file(
        self, path: str | os.PathLike[str], *, secret: str | bytes | None = None
    ) -> None:
        """Write :meth:`export_state` to ``path`` atomically (temp file, fsync, rename),
        signed with HMAC-SHA256 when ``secret`` is given.

        Raises:
            ValueError: ``path`` resolves outside ``snapshot_base_dir``, or the export fails.
        """
        snapshot = await self.export_state()
        base = self._parts.snapshot_base_dir
        await call_fetcher(lambda: write_snapshot(snapshot, path, secret=secret, base_dir=base))

    async def restore_from_file(
        self, path: str | os.PathLike[str], *, secret: str | bytes | None = None
    ) -> int:
        """Import a file written by :meth:`persist_to_file`; returns the entries stored.

        All or nothing: a corrupt, truncated, unsigned (when ``secret`` is given), signed
        (when it is not) or mis-signed file raises ``ValueError`` and imports nothing.

        Raises:
            ValueError: As above, or ``path`` resolves outside ``snapshot_base_dir``.
            OSError: The file cannot be read.
        """
        base = self._parts.snapshot_base_dir
        snapshot = await call_fetcher(lambda: read_snapshot(path, secret=secret, base_dir=base))
        return await self.import_state(snapshot)

    # ------------------------------------------------------------------ observability

    def on(self, event: str, handler: Callable[[dict[str, Any]], Any]) -> Callable[[], None]:
        """Subscribe ``handler`` to ``event``; returns a function that unsubscribes it."""
        return self._telemetry.events.on(event, handler)

    def off(self, event: str, handler: Callable[[dict[str, Any]], Any]) -> None:
        """Unsubscribe ``handler`` from ``event``."""
        self._telemetry.events.off(event, handler)

    def report_error(self, error: BaseException, **context: Any) -> None:
        """Count ``error`` and announce it as an ``error`` event (``{"error", "context"}``),
        as the stack does for the failures it absorbs itself: for an integration or wrapper
        that absorbs one on the stack's behalf (the Django backend's unreadable values)."""
        self._telemetry.report(error, **context)

    def get_metrics(self) -> CacheMetrics:
        """A snapshot of the counters and per-layer latency."""
        return self._metrics.snapshot(self._layers.evictions() - self._evictions_base)

    def reset_metrics(self) -> None:
        """Zero every counter."""
        self._metrics.reset()
        self._evictions_base = self._layers.evictions()

    def get_stats(self) -> CacheStats:
        """Metrics plus the status of every layer, work in flight, the bus, single-flight,
        the tag index's size (when it can tell without I/O), open circuits and the recent
        degradations. No I/O: cheap enough for a scrape every second."""
        loader = self._loader
        bus = None
        metrics = self.get_metrics()
        if self._link.bus is not None:
            bus = BusStatus(
                subscribed=self._link.started,
                pending_announcements=self._announcer.pending(),
                sent=metrics.bus_sent,
                received=metrics.bus_received,
                rejected=metrics.bus_rejected,
            )
        return CacheStats(
            metrics=metrics,
            layers=self._layers.status(),
            background_refreshes=loader.background,
            in_flight_fetches=loader.in_flight,
            bus=bus,
            single_flight=loader.single_flight_status(),
            tag_index_keys=self._tag_index.size(),
            open_circuits=loader.circuits.open_keys(),
            degradations=self._telemetry.degradations(),
        )

    @property
    def tracer(self) -> OperationTracer | None:
        """The tracer this stack reports its operations to (``None``: none)."""
        return self._telemetry.tracer

    def set_tracer(self, tracer: OperationTracer | None) -> OperationTracer | None:
        """Report operations to ``tracer`` from now on (``None``: stop); returns the previous
        one. The seam of ``layercache.integrations.opentelemetry.instrument``."""
        if tracer is not None and not isinstance(tracer, OperationTracer):
            raise TypeError(f"tracer must implement layercache.OperationTracer, not {tracer!r}")
        previous = self._telemetry.tracer
        self._telemetry.tracer = self._tracer = tracer
        self._watch_hit_hooks()
        return previous

    def get_hit_rate(self) -> HitRate:
        """Overall and per-layer hit rates."""
        return self._metrics.hit_rate()

    async def health_check(self) -> list[LayerHealth]:
        """Probe every layer; never raises."""
        return await self._layers.health(time.perf_counter)

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called (a closed stack refuses every operation)."""
        return self._closed

    @property
    def layers(self) -> list[Any]:
        """The layers, fastest first."""
        return [a.layer for a in self._layers.adapters]

    # ------------------------------------------------------------------ lifecycle

    async def aclose(self) -> None:
        """Let in-flight fetches finish (bounded), then close every layer. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._loader.closed = True
        await wait_launched(self._flights.handles(), _CLOSE_GRACE)
        errors = await self._writer.close()
        await wait_launched(self._events.pending(), _CLOSE_GRACE)
        await wait_launched(self._link.cleanups(), _CLOSE_GRACE)
        await self._loader.workers.aclose(_CLOSE_GRACE)
        # The coordination components, then the layers.
        for undo in self._parts.unreport:
            undo()
        for component in self._parts.components:
            try:
                await component.aclose()
            except LayerCacheError as exc:
                errors.append(exc)
        try:
            await self._tag_index.close()
        except LayerCacheError as exc:
            errors.append(exc)
        errors.extend(await self._layers.close())
        if errors:
            raise errors[0]

    async def __aenter__(self) -> CacheStack:
        if self._link.needs_start():
            try:
                await self._link.start()
            except BaseException:
                await self.aclose()  # __aexit__ will not run: stop the bus's retry loop
                raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"CacheStack([{', '.join(a.name for a in self._layers.adapters)}])"
