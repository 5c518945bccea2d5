# DO NOT EDIT: generated from src/layercache/_async/stack.py by scripts/unasync.py.
# Change the async source and run `python scripts/unasync.py`.
"""``SyncCacheStack``: the layered read/write orchestration on threads.

The read path, top to bottom: validate the key → L1 lookup (a plain call) →
freshness decision on the entry → lower layers in order → backfill the layers above the hit →
local single-flight → fetcher (worker thread for sync fetchers, timeout) → write to every layer
(write policy) → tag index. Events and metrics are emitted along the way.

This module is the one source of truth for the orchestration: the thread-based
``SyncCacheStack`` is generated from it (``scripts/unasync.py``), so it avoids constructs only
one twin has, outside the few helpers the generator knows how to rename.
"""

from __future__ import annotations

import datetime as _dt
import functools
import itertools
import logging
import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Literal, ParamSpec, Protocol, TypeVar, cast, overload

from .._circuit import CircuitRegistry
from .._codec import UnserializableValueError
from .._entry import Entry
from .._events import EventHub
from .._exceptions import (
    CacheLayerError,
    CacheMissError,
    CircuitOpenError,
    FetcherQueueFullError,
    FetchTimeoutError,
    LayerCacheError,
)
from .._glob import compile_glob, escape_glob
from .._keys import (
    MAX_KEY_LENGTH,
    MAX_PREFIX_LENGTH,
    CallKey,
    ReceiverKind,
    receiver_kind,
    validate_key,
)
from .._keys import validate_pattern as _validate_pattern
from .._keys import validate_prefix as _validate_prefix
from .._metrics import (
    CacheInspectResult,
    CacheMetrics,
    CacheStats,
    HitRate,
    LayerHealth,
    LayerStatus,
    MetricsRecorder,
)
from .._options import (
    AdaptiveTtl,
    CacheEntry,
    CacheEntryRequest,
    CacheOptions,
    coerce_options,
    merge_options,
    seconds,
)
from .._policy import build_entry, per_layer_value
from .._typed import converter_for, return_type
from .._types import InvalidationMessage
from ._primitives import (
    FlightFuture,
    call_fetcher,
    check_component,
    gather,
    gather_settled,
    launch,
    launch_background,
    loop_ended,
    new_future,
    new_workers,
    running_loop,
    settle,
    wait_future,
    wait_future_for,
    wait_launched,
    with_timeout,
)
from .adapter import LayerAdapter
from .flights import FOLLOW, JOIN_FETCH, Flight, Flights
from .rate_limit import FetcherLimiter
from .tag_index import InMemoryTagIndex, TagRecord, bind_record_many
from .write_behind import WriteBehindQueue

__all__ = ["SyncCacheNamespace", "SyncCacheStack"]

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")
Fetcher = Callable[[], Any]
OptionsArg = CacheOptions | Mapping[str, Any] | None
GetEntry = str | tuple[str, Fetcher | None] | CacheEntryRequest
SetEntry = tuple[str, Any] | CacheEntry

_MISS: Any = object()
_WRITE_POLICIES = ("strict", "best-effort")
# How long close() lets in-flight fetches finish before cancelling them.
_CLOSE_GRACE = 5.0
# Writes and invalidations a degraded layer may miss before it is fenced (cleared on recovery).
_MAX_MISSED = 10_000
# Keys per bulk delete when a recovered layer catches up, and remembered tag records per
# batched record_many call when a recovered tag index does.
_REPLAY_BATCH = 1_000
# Keys per invalidation message (the bus refuses larger messages).
_BUS_CHUNK = 1_000
# Announcements kept while the bus cannot publish, before they collapse into one "clear".
_MAX_UNSENT = 1_000
# The memory layer's latency is timed on one lookup in (mask + 1) on the L1 path of get().
_L1_SAMPLE_MASK = 63

# wrap()'s default for type=: rebuild values as the function's return annotation.
_ANNOTATION: Any = object()


class WrapDecorator(Protocol):
    """What ``wrap(prefix)`` returns: a decorator keeping the function's signature."""

    def __call__(self, fn: Callable[P, R], /) -> Callable[P, R]: ...


class _SoftTimeout(Exception):
    """Internal: the soft timeout passed while a stale value can be served."""


class _Lower:
    """What the read of the layers below L1 found, handed to every caller of one burst.

    ``entry``: a fresh entry (from layer ``index``) or ``None``; ``stale``: the first usable
    stale entry seen and its layer; ``fetch``: on a miss, the fetch flight every caller with
    a fetcher joins (``fetch_is_new``: registered by this read's leader, which launches it).
    """

    __slots__ = ("entry", "fetch", "fetch_is_new", "index", "is_leader", "leases", "stale")

    def __init__(
        self,
        entry: Entry | None,
        index: int,
        stale: tuple[Entry, str] | None,
        fetch: Flight | None = None,
        leases: dict[int, Any] | None = None,
    ) -> None:
        self.entry = entry
        self.index = index
        self.stale = stale
        self.fetch = fetch
        self.fetch_is_new = False
        self.is_leader = False
        # The leases of the layers with conditional stores that this read saw (index ->
        # lease): a fetch started from a miss stores only if nothing changed since.
        self.leases = leases


# Handed by a shared read whose leader was cancelled: its followers read again themselves.
_READ_AGAIN: Any = object()


def _one(_item: Any) -> int:
    return 1


def _no_flight(_key: str, _flight: Flight) -> bool:
    """For a change that concerns no fetch in flight (it only removes what a fetch stored)."""
    return False


def _among(keys: Collection[str]) -> Callable[[str, Flight], bool]:
    """A change predicate: the flights of ``keys``."""
    wanted = keys if isinstance(keys, set | frozenset) else set(keys)
    return lambda key, _flight: key in wanted


def _with_value(entry: Entry, value: Any) -> Entry:
    """``entry`` holding ``value`` instead (the same object when nothing changed)."""
    if value is entry.value:
        return entry
    return Entry(
        value, entry.stored_at, entry.fresh_until, entry.stale_until, entry.error_until, entry.tags
    )


class SyncCacheStack:
    """Layers read fastest first behind one ``get(key, fetcher)``.

    Args:
        layers: The layers, fastest first (e.g. ``[MemoryLayer(), RedisLayer(url=...)]``).
        logger: Logger for debug lines about layer decisions.
        metrics: Collect counters and per-layer latency.
        stampede_prevention: Share one in-flight fetch among concurrent callers of a key.
        negative_caching: Stack default of ``negative_cache`` (cache ``None`` results).
        negative_ttl: Stack default lifetime of negatively cached results.
        fetch_timeout: Seconds a fetch may run (default 30: no fetch holds a key forever).
        ttl_jitter: Stack default ``ttl_jitter``.
        write_policy: ``"strict"``: any layer failure fails the write; ``"best-effort"``: a
            write fails only when every layer fails (failures are counted).
        tag_index: The tag index (default: an in-process one bounded by
            ``max_tag_index_keys``).
        max_tag_index_keys: Bound of the default in-process tag index.
        max_profile_entries: Bound on per-key bookkeeping.
        ttl_policy_timezone: Time zone of the ``until-midnight`` / ``next-hour`` policies.
        clock: Wall clock in seconds (inject a fake one in tests).
        rng: Random source for TTL jitter.
        invalidation_bus: Cross-instance invalidation (e.g. ``RedisInvalidationBus``): with
            it, every delete, invalidation, clear and generation bump is announced to the
            other instances, which drop the keys from their local layers.
        broadcast_l1_invalidation: Also announce writes (``set``, ``set_many``), so peers
            drop their L1 copy of the old value. Default: on when a bus is configured.
    """

    def __init__(
        self,
        layers: Sequence[Any],
        *,
        logger: logging.Logger | None = None,
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
        circuit_breaker: Any = None,
        fetcher_rate_limit: Any = None,
        background_refresh_timeout: float | _dt.timedelta = 30,
        graceful_degradation: bool | Mapping[str, Any] | None = None,
        write_policy: Literal["strict", "best-effort"] = "strict",
        write_strategy: Literal["write-through", "write-behind"] = "write-through",
        write_behind: Mapping[str, Any] | None = None,
        single_flight_coordinator: Any = None,
        single_flight_lease: float | _dt.timedelta | None = None,
        single_flight_timeout: float | _dt.timedelta = 5,
        single_flight_poll: float | _dt.timedelta = 0.05,
        single_flight_renew_interval: float | _dt.timedelta | None = None,
        invalidation_bus: Any = None,
        broadcast_l1_invalidation: bool | None = None,
        generation: int | None = None,
        generation_cleanup: Mapping[str, Any] | bool | None = None,
        tag_index: Any = None,
        max_tag_index_keys: int = 100_000,
        max_profile_entries: int = 100_000,
        ttl_policy_timezone: _dt.tzinfo | str = _dt.timezone.utc,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if isinstance(layers, str | bytes) or not isinstance(layers, Sequence):
            raise ValueError("layers must be a sequence of cache layers, fastest first")
        if not layers:
            raise ValueError("a SyncCacheStack needs at least one layer")
        self._layers = [LayerAdapter(layer, i) for i, layer in enumerate(layers)]
        names = [a.name for a in self._layers]
        self._layer_names = frozenset(names)
        if len(set(names)) != len(names):
            raise ValueError(f"layer names must be unique; got {names}")
        if write_policy not in _WRITE_POLICIES:
            raise ValueError(f"write_policy must be one of {_WRITE_POLICIES}; got {write_policy!r}")
        if not isinstance(max_profile_entries, int) or max_profile_entries < 1:
            raise ValueError("max_profile_entries must be a positive int")
        if isinstance(ttl_policy_timezone, str):
            from zoneinfo import ZoneInfo

            ttl_policy_timezone = ZoneInfo(ttl_policy_timezone)
        self._tz: _dt.tzinfo = ttl_policy_timezone
        defaults = coerce_options(
            {
                "negative_cache": negative_caching,
                "negative_ttl": negative_ttl,
                "fetch_timeout": fetch_timeout,
                "ttl_jitter": ttl_jitter,
                "stale_while_revalidate": stale_while_revalidate,
                "stale_if_error": stale_if_error,
                "fetch_soft_timeout": fetch_soft_timeout,
                "adaptive_ttl": adaptive_ttl,
                "circuit_breaker": circuit_breaker,
                "fetcher_rate_limit": fetcher_rate_limit,
            }
        )
        assert defaults is not None
        self._check_layer_names(defaults)
        self._defaults: CacheOptions = defaults
        self._logger = logger or logging.getLogger("layercache")
        self._metrics_enabled = metrics
        self._metrics = MetricsRecorder(names)
        self._events = EventHub(self._logger)
        self._stampede_prevention = stampede_prevention
        self._write_policy = write_policy
        self._tags: Any = (
            tag_index if tag_index is not None else InMemoryTagIndex(max_tag_index_keys)
        )
        # A component built on the other kind of Redis client cannot work here: refuse it now
        # rather than on the first miss.
        check_component(single_flight_coordinator, "single_flight_coordinator", "run")
        check_component(invalidation_bus, "invalidation_bus", "publish")
        check_component(self._tags, "tag_index", "record")
        # Bulk writes record their tags in one batched call (a user's index without
        # record_many gets one record call per key).
        self._record_tags = bind_record_many(self._tags)
        self._clock = clock
        self._rng = rng
        self.max_profile_entries = max_profile_entries
        # In-flight reads and fetches, and the marks of changed keys (one owner, one lock).
        self._flights = Flights()
        # Whether a layer makes a fetch's store conditional (RedisLayer's leases).
        self._leasing = any(a.leases for a in self._layers)
        # Shared tag index health under graceful degradation (see _tag_op).
        self._tags_down_until: float | None = None
        self._tags_missed: deque[tuple[str, Any]] = deque()
        self._tags_fenced = False
        self._tags_probing = False
        # The records at the queue's tail, by key (see _remember_tags).
        self._tags_tail: dict[str, list[Any]] = {}
        # Whether what the index missed may concern values in a shared layer (see
        # _remember_tags).
        self._tags_missed_shared = False
        self._background = 0
        # Guards the check-then-act steps on this stack's own small shared state (a layer's
        # probe claim, the background count, per-key profiles): the threaded twin runs them
        # from many threads, the async one from threads that each run their own loop. Never
        # held across a suspension point or any I/O.
        self._state_lock = threading.Lock()
        self._background_refresh_timeout = seconds(
            "background_refresh_timeout", background_refresh_timeout, allow_zero=False
        )
        self._retry_after = _coerce_degradation(graceful_degradation)
        # Adaptive TTL: reads per key since its last write, oldest first (bounded).
        self._reads: OrderedDict[str, int] = OrderedDict()
        # Sliding TTL: when each layer last had the key extended (bounded).
        self._extended: OrderedDict[str, dict[str, float]] = OrderedDict()
        # A probe outliving its lease is presumed lost; keep the lease above any fetch timeout.
        self._circuits = CircuitRegistry(
            max_entries=max_profile_entries,
            clock=clock,
            probe_lease=max(60.0, 2 * (defaults.fetch_timeout or 30.0)),
        )
        self._limiter = FetcherLimiter(max_keys=max_profile_entries)
        # Threads this stack owns in the sync twin (timed fetches, background refreshes).
        self._workers = new_workers("layercache")
        self._behind: WriteBehindQueue | None = _write_behind_queue(
            write_strategy, write_behind, self._flush_behind
        )
        # Distributed coordination (all optional; the Redis components live in
        # layercache.redis, the stack only talks to their small interfaces).
        self._coordinator: Any = single_flight_coordinator
        self._single_flight_timeout = seconds(
            "single_flight_timeout", single_flight_timeout, allow_zero=False
        )
        self._single_flight_poll = seconds(
            "single_flight_poll", single_flight_poll, allow_zero=False
        )
        if single_flight_coordinator is not None:
            if single_flight_lease is not None or single_flight_renew_interval is not None:
                single_flight_coordinator.configure(
                    lease=None
                    if single_flight_lease is None
                    else seconds("single_flight_lease", single_flight_lease, allow_zero=False),
                    renew_interval=None
                    if single_flight_renew_interval is None
                    else seconds(
                        "single_flight_renew_interval",
                        single_flight_renew_interval,
                        allow_zero=False,
                    ),
                )
            hook = getattr(single_flight_coordinator, "set_error_handler", None)
            if hook is not None:
                hook(lambda error, context: self._report(error, **context))
        if broadcast_l1_invalidation and invalidation_bus is None:
            raise ValueError("broadcast_l1_invalidation=True needs an invalidation_bus")
        self._bus: Any = invalidation_bus
        # With a bus, every delete, invalidation, clear and generation bump is announced
        # (a peer must never keep serving what was removed); this governs only whether writes
        # are announced too (so peers drop the old value from L1), on by default with a bus.
        self._broadcast = (
            invalidation_bus is not None
            if broadcast_l1_invalidation is None
            else bool(broadcast_l1_invalidation)
        )
        self._bus_started = invalidation_bus is None
        # unasync: begin async-wording
        # The loop the bus's subscriber runs on: it ends with that loop, and the next one to
        # use the stack subscribes again (a module-level stack and several asyncio.run()
        # calls). The lock guards the restart: threads may each run a loop.
        # unasync: end async-wording
        self._bus_loop: Any = None
        self._bus_lock = threading.Lock()
        # Announcements that could not be published (graceful degradation), oldest first.
        self._unsent: deque[InvalidationMessage] = deque()
        self._flushing = False  # one flusher of _unsent at a time (under _state_lock)
        if generation is not None and (
            isinstance(generation, bool) or not isinstance(generation, int) or generation < 0
        ):
            raise ValueError(f"generation must be a non-negative int or None, not {generation!r}")
        self._generation: int | None = generation
        self._cleanup_batch = _cleanup_batch(generation_cleanup)
        self._cleanups: list[Any] = []
        self._closed = False
        first = self._layers[0]
        # An L1 that answers synchronously: its hit is served by a plain call.
        self._l1: Callable[[str, float], Entry | None] | None = first.lookup
        self._l1_name = first.name
        self._l1_tick = 0
        self._l1_counters = self._metrics.layers[first.name]
        for adapter in self._layers:
            if adapter.set_error_handler is not None:
                adapter.set_error_handler(functools.partial(self._layer_error, adapter.name))

    # ------------------------------------------------------------------ helpers

    def _layer_error(self, layer: str, error: BaseException, context: dict[str, Any]) -> None:
        """Error handler given to layers that turn a bad stored value into a miss."""
        self._metrics.errors += 1
        self._logger.warning("layercache: layer %s reported %r (%s)", layer, error, context)
        if "error" in self._events.active:
            self._events.emit("error", {"error": error, "context": {"layer": layer, **context}})

    def _report(self, error: BaseException, **context: Any) -> None:
        self._metrics.errors += 1
        if "error" in self._events.active:
            self._events.emit("error", {"error": error, "context": context})

    def _options(self, options: OptionsArg, kwargs: Mapping[str, Any]) -> CacheOptions:
        """Per-call options on top of the stack defaults; validates before any I/O."""
        if kwargs:
            if options is not None:
                raise TypeError("pass options either as keyword arguments or as options=")
            options = kwargs
        if options is None:
            return self._defaults
        coerced = coerce_options(options)
        if coerced is not None:
            self._check_layer_names(coerced)
        return merge_options(self._defaults, coerced)

    def _check_layer_names(self, options: CacheOptions) -> None:
        """A per-layer dict naming no layer of this stack is a typo: refuse it."""
        for name in ("ttl", "ttl_jitter"):
            value = getattr(options, name)
            if isinstance(value, dict):
                unknown = set(value) - self._layer_names
                if unknown:
                    raise ValueError(
                        f"{name} names unknown layer(s) {sorted(unknown)}; "
                        f"this stack's layers are {sorted(self._layer_names)}"
                    )

    def _count_background(self, change: int) -> None:
        with self._state_lock:
            self._background += change

    def _claim_probe(self, owner: Any, attribute: str) -> bool:
        """Claim the right to probe a degraded layer (or the tag index): one caller at a
        time, so a recovering layer is never replayed twice at once."""
        with self._state_lock:
            if getattr(owner, attribute):
                return False
            setattr(owner, attribute, True)
            return True

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this SyncCacheStack is closed")

    def _open(self) -> None:
        """Refuse a closed stack, and subscribe to the bus on first use: every operation that
        reads or fills a local layer must be listening before it does (an instance that only
        ever called ``get_many`` would otherwise keep its L1 copies forever)."""
        self._check_open()
        if not self._bus_started or loop_ended(self._bus_loop):
            self._ensure_bus()

    def _entry_or_miss(self, adapter: LayerAdapter, key: str, raw: Any) -> Entry | None:
        if raw is None or isinstance(raw, Entry):
            return raw
        # A user layer returned something that is not an envelope: never hand it out as data.
        self._report(
            TypeError(f"layer {adapter.name!r} returned {type(raw).__name__}, not an Entry"),
            layer=adapter.name,
            key=key,
            operation="get",
        )
        return None

    def _direct_write(
        self, adapter: LayerAdapter, key: str, entry: Entry, ttl: float | None
    ) -> None:
        """Write to a synchronous local layer with a plain call."""
        assert adapter.direct_set is not None
        try:
            adapter.direct_set(key, entry, ttl)
        except LayerCacheError:
            raise
        except Exception as exc:
            raise CacheLayerError(adapter.name, "set") from exc

    def _render(self, key: str) -> str:
        """The stored form of a validated key: ``v{N}:key`` under a generation."""
        generation = self._generation
        return key if generation is None else f"v{generation}:{key}"

    def _for_layers(
        self,
        operation: str,
        layers: Sequence[LayerAdapter],
        make: Callable[[LayerAdapter], Any],
        missed: tuple[str, Any] | None = None,
        succeeded_elsewhere: bool = False,
    ) -> None:
        """Run one operation on several layers concurrently under the write policy.

        ``missed`` describes what a layer that cannot take part must catch up on when it
        recovers (graceful degradation): ``("delete", keys)``, ``("pattern", glob)`` or
        ``("clear", None)``. Degraded layers are skipped (and told), a layer that fails now is
        degraded (and told); without graceful degradation failures follow the write policy.
        """
        if not layers:
            return
        targets = list(layers)
        if self._retry_after is not None:
            targets = []
            for adapter in layers:
                if adapter.degraded_until is not None and not self._recover(adapter):
                    if missed is not None:
                        self._remember(adapter, missed)
                    continue
                targets.append(adapter)
            if not targets:
                return
        results = gather_settled([functools.partial(make, a) for a in targets])
        failures: list[tuple[LayerAdapter, Exception]] = [
            (a, r) for a, r in zip(targets, results, strict=True) if isinstance(r, Exception)
        ]
        if not failures:
            return
        for _, failure in failures:
            if not isinstance(failure, LayerCacheError):
                raise failure  # a programming error, not a layer failure: never swallow it
        self._metrics.write_failures += len(failures)
        if self._retry_after is not None:
            for adapter, failure in failures:
                self._degrade(adapter, failure, operation)
                if missed is not None:
                    self._remember(adapter, missed)
            return
        for _, failure in failures:
            self._report(failure, operation=operation)
        # best-effort: fail only when every layer failed, the synchronously written ones too.
        if self._write_policy == "strict" or (
            len(failures) == len(targets) and not succeeded_elsewhere
        ):
            raise failures[0][1]

    # ------------------------------------------------------------------ invalidation bus

    def _ensure_bus(self) -> None:
        """Subscribe to the bus on first use (the constructor does no I/O), and again on this
        loop when the loop the subscriber ran on has ended."""
        with self._bus_lock:
            if self._bus_started and not loop_ended(self._bus_loop):
                return
            restarted = self._bus_started
            self._bus_started = True
            self._bus_loop = running_loop()
        try:
            if restarted:
                # Nobody listened since the loop the subscriber ran on ended: what was
                # announced meanwhile is lost, as after a reconnect. The local copies go
                # first; concurrent callers do not wait for the subscription (as on the first
                # start), and a drop after it would void the fetches they started meanwhile.
                self._logger.info("layercache: bus subscriber moves to a new loop")
                local = [a for a in self._layers if a.is_local]
                self._for_layers("bus.restart", local, lambda a: a.clear())
            self._bus.start(self._on_bus_message, self._on_bus_reconnect, self._on_bus_error)
            load = getattr(self._bus, "load_generation", None)
            if self._generation is not None and load is not None:
                # Bumps announced while this instance was down are in Redis: adopt them.
                stored = load()
                if stored is not None:
                    self._adopt_generation(stored)
        except Exception as exc:
            # The bus keeps trying to subscribe by itself (and calls on_reconnect when it
            # succeeds), so this is reported once, never retried from here.
            self._report(exc, operation="bus.start")
            if self._retry_after is None:
                raise

    def _publish(
        self,
        scope: str,
        operation: str,
        keys: Sequence[str],
        mode: str = "any",
    ) -> None:
        """Tell the other instances through the bus, if there is one. Deletes,
        invalidations, clears and generation bumps always go out; writes (``operation ==
        "set"``) only under ``broadcast_l1_invalidation``. Large key sets go out in chunks so
        each message stays within the bus's bounds."""
        if self._bus is None or (operation == "set" and not self._broadcast):
            return
        self._ensure_bus()
        items = list(keys)
        chunks = [items[i : i + _BUS_CHUNK] for i in range(0, len(items), _BUS_CHUNK)] or [[]]
        messages = [
            InvalidationMessage(
                source_id=self._bus.source_id,
                scope=scope,
                operation=operation,
                keys=tuple(chunk),
                timestamp=time.time(),
                mode=mode,
            )
            for chunk in chunks
        ]
        # Older announcements that failed go first, so the others hear them in order: behind
        # them in the (bounded) queue.
        if self._keep_unsent(messages, only_behind=True):
            self._flush_unsent()
            return
        for position, message in enumerate(messages):
            try:
                self._bus.publish(message)
            except LayerCacheError as exc:
                self._report(exc, operation="bus.publish")
                if self._retry_after is None:
                    raise
                self._keep_unsent(messages[position:])
                return

    def _keep_unsent(
        self, messages: Sequence[InvalidationMessage], *, only_behind: bool = False
    ) -> bool:
        """Graceful degradation: keep announcements that could not be published (bounded;
        past the bound they collapse into one ``clear``, which is always safe to send).
        ``only_behind``: keep them only if older ones are queued (returns whether kept)."""
        with self._state_lock:
            if only_behind and not self._unsent:
                return False
            self._unsent.extend(messages)
            if len(self._unsent) > _MAX_UNSENT:
                self._unsent.clear()
                self._unsent.append(
                    InvalidationMessage(
                        source_id=self._bus.source_id,
                        scope="clear",
                        operation="clear",
                        keys=(),
                        timestamp=time.time(),
                    )
                )
        return True

    def _flush_unsent(self) -> None:
        """Publish kept announcements, oldest first, until one fails again.

        One flusher at a time (two writes after an outage, or a write and the reconnect
        handler, would otherwise publish the head twice and pop a message never sent): a
        caller that finds a flush running leaves its messages queued, and the running flusher
        takes them, since it looks at the queue under the same lock before it stops. Never
        raises for a failed announcement: the caller's write was applied.
        """
        with self._state_lock:
            if self._flushing:
                return
            self._flushing = True
        try:
            while True:
                with self._state_lock:
                    if not self._unsent:
                        self._flushing = False
                        return
                    message = self._unsent[0]
                try:
                    self._bus.publish(
                        InvalidationMessage(
                            source_id=message.source_id,
                            scope=message.scope,
                            operation=message.operation,
                            keys=message.keys,
                            timestamp=time.time(),  # a fresh stamp: receivers refuse stale ones
                            mode=message.mode,
                        )
                    )
                except LayerCacheError as exc:
                    self._report(exc, operation="bus.publish")
                    with self._state_lock:
                        self._flushing = False
                    return
                except Exception as exc:
                    # This message can never be sent (the bus refuses it): drop it, go on.
                    self._report(exc, operation="bus.publish")
                with self._state_lock:
                    # By identity: an overflow may have collapsed the queue into one clear
                    # meanwhile, which is then still to be sent.
                    if self._unsent and self._unsent[0] is message:
                        self._unsent.popleft()
        except BaseException:
            with self._state_lock:
                self._flushing = False
            raise

    def _on_bus_message(self, message: InvalidationMessage) -> None:
        """Another instance changed something: drop it from this instance's local layers."""
        try:
            self._apply_remote(message)
        except Exception as exc:  # never let one message break the subscriber
            self._report(exc, operation="bus.apply", scope=message.scope)
        if "invalidation" in self._events.active:
            self._events.emit(
                "invalidation", {"keys": list(message.keys), "source_id": message.source_id}
            )

    def _apply_remote(self, message: InvalidationMessage) -> None:
        local = [a for a in self._layers if a.is_local]
        scope = message.scope
        if scope == "keys":
            keys = list(message.keys)
            with self._flights.changing(_among(keys), keys):
                if isinstance(self._tags, InMemoryTagIndex):
                    self._tags.remove(keys)
                if keys:
                    self._for_layers("bus", local, lambda a: a.delete_many(keys))
        elif scope == "tags":
            tags = set(message.keys)
            mode = message.mode

            def hit(_key: str, flight: Flight) -> bool:
                if mode == "all":
                    return tags.issubset(flight.tags)
                return not tags.isdisjoint(flight.tags)

            with self._flights.changing(hit):
                if isinstance(self._tags, InMemoryTagIndex):
                    # A per-instance index resolves the tags here; a shared index was already
                    # emptied by the publisher, which also sends the resolved keys.
                    found = sorted(self._tags.keys_for_tags(list(message.keys), mode))
                    if found:
                        self._tags.remove(found)
                        self._for_layers("bus", local, lambda a: a.delete_many(found))
        elif scope in ("pattern", "prefix"):
            pattern = message.keys[0]
            if scope == "prefix":
                pattern = escape_glob(pattern) + "*"
            glob = compile_glob(pattern)
            with self._flights.changing(lambda k, _: glob.matches(k)):
                if isinstance(self._tags, InMemoryTagIndex):
                    self._forget_tagged_matching(pattern)
                self._for_layers("bus", local, lambda a: a.delete_matching(pattern))
        elif scope == "clear":
            with self._flights.changing_all():
                if isinstance(self._tags, InMemoryTagIndex):
                    self._tags.clear()
                self._for_layers("bus", local, lambda a: a.clear())
        elif scope == "generation":
            self._adopt_generation(int(message.keys[0]))

    def _on_bus_reconnect(self) -> None:
        """The subscriber was cut off and may have missed invalidations: drop local data."""
        self._logger.warning("layercache: invalidation bus reconnected; dropping local layers")
        # The local copies go first: nothing that fails later (a flush of kept announcements
        # to a bus that dropped again) may leave them serving values changed elsewhere.
        try:
            with self._flights.changing_all():
                local = [a for a in self._layers if a.is_local]
                self._for_layers("bus.reconnect", local, lambda a: a.clear())
        finally:
            self._flush_unsent()

    def _on_bus_error(self, error: BaseException, context: dict[str, Any]) -> None:
        self._report(error, **{"operation": "bus", **context})

    # ------------------------------------------------------------------ generations

    def get_generation(self) -> int | None:
        """The current key generation (``None`` when generations are off)."""
        return self._generation

    def bump_generation(self) -> int:
        """Move every key to a new generation at once (no scan): old keys become unreachable.

        The new number is stored in Redis when the bus can store it (so every instance and
        restart agrees) and announced on the bus; ``generation_cleanup`` deletes the old
        generation's keys in the background in batches.
        """
        self._open()
        old = self._generation
        new = (old or 0) + 1
        store = getattr(self._bus, "bump_generation", None)
        if store is not None:
            new = int(store(new))
        self._adopt_generation(new)
        if self._bus is not None:
            self._publish("generation", "bump", (str(new),))
        return new

    def _adopt_generation(self, generation: int) -> None:
        old = self._generation
        if old is not None and generation <= old:
            return
        self._generation = generation
        self._flights.mark_all()
        if old is not None and self._cleanup_batch is not None:
            self._start_cleanup(old)

    def _start_cleanup(self, generation: int) -> None:
        """Delete generation ``generation``'s keys in the background, ``batch_size`` keys per
        bulk delete with a pause between batches (a layer that cannot list its keys deletes
        them with its own ``delete_matching``)."""
        pattern = escape_glob(f"v{generation}:") + "*"
        batch_size = self._cleanup_batch
        assert batch_size is not None

        def purge() -> int:
            total = 0
            for adapter in self._layers:
                try:
                    total += adapter.delete_matching_in_batches(pattern, batch_size)
                except LayerCacheError as exc:
                    self._report(exc, operation="generation_cleanup", layer=adapter.name)
            return total

        # Keep a reference: a task nobody holds may be collected before it finishes.
        self._cleanups = [h for h in self._cleanups if not h.done()]
        self._cleanups.append(launch_background(new_future(), purge, lambda: None, self._workers))

    # ------------------------------------------------------------------ tag index health

    # Every removal forgets the keys in the tag index *before* it deletes them from the
    # layers: a key written again in between (a fetch that started after the change) keeps
    # the tags it records, while the other order would erase them and leave its value out
    # of reach of the next invalidate_by_tag. A key written before the layer delete is
    # deleted; its index entry then points at nothing, which costs nothing.

    def _forget_tagged_matching(self, pattern: str) -> None:
        self._tags.remove(self._tags.keys_matching(pattern))

    def _tag_op(
        self,
        operation: str,
        call: Callable[[], T],
        default: T,
        missed: tuple[str, Any] | list[tuple[str, Any]],
        shared: bool = True,
    ) -> T:
        """Run a tag index operation under the degradation policy.

        Strict: its failure raises. Graceful: a failing (shared) index is skipped until
        ``retry_after`` like a layer, what it missed is remembered (bounded) and replayed when
        it answers again, and the caller gets ``default``: a Redis outage never fails a cache
        operation through the tag index. ``missed`` is one operation, or a list of them (a
        bulk call is remembered per key, so the bound counts keys).
        """
        if self._retry_after is None:
            return call()
        # A record that follows a value written to a shared layer asks the index at once
        # instead of waiting out retry_after: that layer answered, so the index (usually on
        # the same Redis) likely does too, and a tagged value in Redis that the index does not
        # know would escape another instance's invalidation of its tags meanwhile.
        urgent = operation == "record" and shared
        if self._tags_down_until is not None and not self._recover_tags(urgent):
            self._remember_tags(missed, shared)
            return default
        try:
            return call()
        except LayerCacheError as exc:
            self._tags_down_until = self._clock() + self._retry_after
            self._report(exc, operation=f"tag_index.{operation}")
            self._remember_tags(missed, shared)
            return default

    def _remember_tags(
        self, missed: tuple[str, Any] | list[tuple[str, Any]], shared: bool = True
    ) -> None:
        """Record what the tag index missed, one entry per key among consecutive records
        (the last record of a key wins): repeated fetches of a key during an outage cost
        one entry, not one each. ``shared``: the operation may concern values in a shared
        layer (``False`` for a fetch's record whose value reached no shared layer: if the
        queue overflows, the fence then clears the local layers only, so a read-heavy Redis
        outage never clears Redis)."""
        with self._state_lock:  # a replay may be taking items off the queue meanwhile
            if self._tags_down_until is None:
                # A replay finished between this caller's decision and now: it would never
                # see what is queued here. Due at once, so the next tag operation replays it.
                self._tags_down_until = self._clock()
            tail = self._tags_tail
            for kind, arg in missed if isinstance(missed, list) else [missed]:
                if self._tags_fenced:
                    return
                if kind in ("remove", "pattern", "clear"):
                    # Removals are not replayed: one replayed after another instance wrote the
                    # key again would erase that newer entry, and the next invalidation of its
                    # tags would miss its value. A removal that never happens leaves the index
                    # an entry too many (an invalidation then deletes a key that is gone, or
                    # one that moved to other tags: harmless), until the entry's own expiry.
                    continue
                if shared:
                    self._tags_missed_shared = True
                if kind == "record":
                    # Not while a replay runs: it may be sending that very entry.
                    held = None if self._tags_probing else tail.get(arg[0])
                    if held is not None:
                        held[1:] = arg[1:]
                        continue
                else:
                    tail.clear()  # records after another operation are ordered after it
                if len(self._tags_missed) >= _MAX_MISSED:
                    self._tags_missed.clear()
                    tail.clear()
                    self._tags_fenced = True
                    return
                if kind == "record":
                    # A mutable record (the key's later records update it in place); the
                    # replay recognises queue items by identity.
                    holder = list(arg)
                    tail[arg[0]] = holder
                    self._tags_missed.append((kind, holder))
                else:
                    self._tags_missed.append((kind, arg))

    def _next_batch(
        self, queue: deque[tuple[str, Any]], kind: str, weight: Callable[[Any], int]
    ) -> list[tuple[str, Any]]:
        """What to replay next from a missed-operation queue: consecutive operations of
        ``kind`` (they replay as one bulk call, up to ``_REPLAY_BATCH`` by ``weight``), or
        the one operation at its head."""
        with self._state_lock:
            if not queue or queue[0][0] != kind:
                return [queue[0]] if queue else []
            batch: list[tuple[str, Any]] = []
            total = 0
            for item in queue:
                if item[0] != kind or total >= _REPLAY_BATCH:
                    break
                batch.append(item)
                total += weight(item[1])
            return batch

    @staticmethod
    def _pop_replayed(
        queue: deque[tuple[str, Any]], batch: Sequence[tuple[str, Any]]
    ) -> list[tuple[str, Any]]:
        """Take replayed operations off the head of ``queue`` (the state lock held), unless
        a clear or a fence replaced them while they were replayed: what is queued then is
        newer and stays. Items are recognised by identity (each remembered tuple is new)."""
        popped: list[tuple[str, Any]] = []
        for item in batch:
            if not queue or queue[0] is not item:
                break
            popped.append(queue.popleft())
        return popped

    def _recover_tags(self, urgent: bool = False) -> bool:
        """Replay what the tag index missed once ``retry_after`` passed; ``True`` when it is
        back in service. A fenced index (it missed too much to replay) is cleared together
        with the shared layers whose tags it no longer knows."""
        assert self._tags_down_until is not None
        assert self._retry_after is not None
        early = self._clock() < self._tags_down_until
        if (early and not urgent) or not self._claim_probe(self, "_tags_probing"):
            return False
        # What the replay deleted from the layers, announced once it is done: the other
        # instances' L1 copies of those keys must go too (a shared index resolves keys for
        # everyone; nobody else will ever name them again).
        announce: list[tuple[str, str, Sequence[str]]] = []
        try:
            if self._tags_fenced:
                # The index lost track of what was tagged meanwhile: drop every value it may
                # not know, in the shared layers only if one of them got such a value. (The
                # index itself is kept: what it knows of other instances' keys still holds.)
                # Only once it answers again: the fence is lifted by this, and records that
                # go on failing would be lost with it.
                self._tags.tags_of("layercache:health-probe")
                everywhere = self._tags_missed_shared
                targets = [a for a in self._layers if everywhere or a.is_local]
                with self._flights.changing_all():
                    self._for_layers("tag_index.fence", targets, lambda a: a.clear())
                if everywhere:
                    announce.append(("clear", "clear", ()))
                with self._state_lock:
                    self._tags_fenced = False
                    self._tags_missed.clear()
                    self._tags_tail.clear()
                    self._tags_missed_shared = False
            while True:
                batch = self._next_batch(self._tags_missed, "record", _one)
                if not batch:
                    break
                kind, arg = batch[0]
                if kind == "record":
                    # Batched records leave the queue only once the call succeeded.
                    evicted = self._record_tags([tuple(record) for _, record in batch])
                    with self._state_lock:
                        for _, replayed_record in self._pop_replayed(self._tags_missed, batch):
                            recorded_key = replayed_record[0]
                            if self._tags_tail.get(recorded_key) is replayed_record:
                                del self._tags_tail[recorded_key]
                    if evicted:
                        self._drop_evicted(evicted)
                    continue
                # The only other kind remembered (removals are not: see _remember_tags). Its
                # keys are resolved now, so a key written again since is deleted too: more
                # than needed, never too little.
                assert kind == "invalidate", kind
                tags, mode = arg
                # In the order of invalidate_by_tags: the fences first, the index entries
                # before the values (an entry removed after the value's delete could be a
                # newer fetch's record, made after that delete, whose value then escapes).
                self._fence_tags(tags)
                keys = sorted(self._tags.keys_for_tags(list(tags), mode))
                if keys:
                    with self._flights.changing(_among(keys), keys):
                        self._tags.remove(keys)
                        self._delete_everywhere(keys)
                    announce.append(("keys", "invalidate", keys))
                with self._state_lock:
                    self._pop_replayed(self._tags_missed, batch)
        except LayerCacheError as exc:
            self._tags_down_until = self._clock() + self._retry_after
            self._report(exc, operation="tag_index.recover")
            return False
        finally:
            self._tags_probing = False
        with self._state_lock:
            if not self._tags_missed:
                self._tags_missed_shared = False
                self._tags_down_until = None
            else:
                # Remembered after this replay's last look: due at once, for the next caller.
                self._tags_down_until = self._clock()
        for scope, operation, changed in announce:
            self._publish(scope, operation, changed)
        return True

    # ------------------------------------------------------------------ degradation

    def _degrade(self, adapter: LayerAdapter, error: Exception, operation: str) -> None:
        """Skip ``adapter`` until ``retry_after`` from now (graceful degradation)."""
        assert self._retry_after is not None
        until = self._clock() + self._retry_after
        if adapter.degraded_until is None:
            self._logger.warning(
                "layercache: layer %s failed during %s (%r); skipping it for %gs",
                adapter.name,
                operation,
                error.__cause__ or error,
                self._retry_after,
            )
        adapter.degraded_until = until
        self._report(error, layer=adapter.name, operation=operation, degraded_until=until)

    def _remember(self, adapter: LayerAdapter, missed: tuple[str, Any]) -> None:
        """Record what a degraded layer missed; past the bound (in keys), fence it instead."""
        kind, arg = missed
        with self._state_lock:  # a replay may be taking items off the queue meanwhile
            if adapter.fenced:
                return
            if kind == "refill":
                refills = adapter.refills
                for key in arg:
                    refills[key] = None
                    refills.move_to_end(key)
                while len(refills) > _MAX_MISSED:
                    # Forgetting a refill costs nothing but freshness: the layer keeps a
                    # value that no change touched.
                    refills.popitem(last=False)
                return
            pending = adapter.missed_keys
            if kind == "delete":
                # One entry per key: every missed operation is a removal, and removals
                # commute, so a key already waiting to be removed needs no second entry
                # (except while a replay runs: it may have sent that entry already).
                if not adapter.probing:
                    arg = tuple(k for k in arg if k not in pending)
                    if not arg:
                        return
                size = len(arg)
            else:
                size = 1
            if kind == "clear":
                # A clear supersedes everything missed before it.
                adapter.missed.clear()
                adapter.missed_size = 0
                pending.clear()
            if adapter.missed_size + size > _MAX_MISSED:
                adapter.missed.clear()
                adapter.missed_size = 0
                pending.clear()
                adapter.fenced = True
                return
            # A new tuple: the replay recognises its items by identity.
            adapter.missed.append((kind, arg))
            adapter.missed_size += size
            if kind == "delete":
                pending.update(arg)

    def _replayed(self, adapter: LayerAdapter, batch: Sequence[tuple[str, Any]]) -> None:
        with self._state_lock:
            for kind, arg in self._pop_replayed(adapter.missed, batch):
                if kind == "delete":
                    adapter.missed_size -= len(arg)
                    adapter.missed_keys.difference_update(arg)
                else:
                    adapter.missed_size -= 1

    def _recover(self, adapter: LayerAdapter) -> bool:
        """Whether a degraded layer may be used now: probe it once ``retry_after`` passed,
        replay what it missed, and only then put it back in service."""
        until = adapter.degraded_until
        if until is None:
            return True
        if self._clock() < until or not self._claim_probe(adapter, "probing"):
            return False
        # What the replay changed, to announce again once it is done (see below).
        replayed: list[tuple[str, str, Sequence[str]]] = []
        try:
            if not adapter.ping():
                raise CacheLayerError(adapter.name, "ping", "the layer reports itself unhealthy")
            # Replay in order until nothing is left (operations may arrive meanwhile; they
            # are still recorded because the layer counts as degraded while probing).
            if adapter.fenced:
                adapter.clear()
                replayed.append(("clear", "clear", ()))
                with self._state_lock:
                    adapter.fenced = False
                    adapter.missed.clear()
                    adapter.missed_size = 0
                    adapter.missed_keys.clear()
                    adapter.refills.clear()
            while True:
                batch = self._next_batch(adapter.missed, "delete", len)
                if not batch:
                    break
                kind, arg = batch[0]
                if kind == "delete":
                    # Consecutive deletes go out together, in bulk calls of bounded size.
                    keys = [key for _, chunk in batch for key in chunk]
                    for start in range(0, len(keys), _REPLAY_BATCH):
                        adapter.delete_many(keys[start : start + _REPLAY_BATCH])
                    replayed.append(("keys", "delete", keys))
                elif kind == "pattern":
                    adapter.delete_matching(arg)
                    replayed.append(("pattern", "invalidate", (arg,)))
                else:
                    adapter.clear()
                    replayed.append(("clear", "clear", ()))
                self._replayed(adapter, batch)
            # Keys refetched while the layer was away: its older copies go (not announced:
            # no change, the other instances' copies are as good as before).
            while adapter.refills:
                with self._state_lock:
                    refilled = list(itertools.islice(adapter.refills, _REPLAY_BATCH))
                adapter.delete_many(refilled)
                with self._state_lock:
                    for key in refilled:
                        adapter.refills.pop(key, None)
        except Exception as exc:
            assert self._retry_after is not None
            adapter.degraded_until = self._clock() + self._retry_after
            self._report(exc, layer=adapter.name, operation="recover")
            return False
        finally:
            adapter.probing = False
        adapter.degraded_until = None
        self._logger.warning("layercache: layer %s recovered", adapter.name)
        if replayed and not adapter.is_local and self._bus is not None:
            # The other instances heard of these changes when they were made (or when kept
            # announcements were flushed), possibly before this shared layer had them: a peer
            # that re-read the key from it in between holds the old value in its L1 again.
            # Now that the shared layer has caught up, say it once more.
            for scope, operation, changed in replayed:
                self._publish(scope, operation, changed)
        return True

    # ------------------------------------------------------------------ reads

    @overload
    def get(
        self,
        key: str,
        fetcher: Fetcher | None = None,
        *,
        type: type[T],
        options: OptionsArg = None,
        **kwargs: Any,
    ) -> T | None: ...

    @overload
    def get(
        self,
        key: str,
        fetcher: Fetcher | None = None,
        *,
        type: Any = None,
        options: OptionsArg = None,
        **kwargs: Any,
    ) -> Any: ...

    def get(
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
        # (``type`` is the keyword argument here: ``key.__class__`` tests the key.)
        if not (key.__class__ is str and 0 < len(key) <= MAX_KEY_LENGTH and key.isprintable()):
            validate_key(key)
        convert = None if type is None else converter_for(type)
        if self._generation is not None:
            key = self._render(key)
        opts = self._defaults if not kwargs and options is None else self._options(options, kwargs)
        l1 = self._l1
        stale: tuple[Entry, str] | None = None
        if l1 is not None:
            now = self._clock()
            # The memory layer's latency is sampled (one lookup in 64): timing every L1 hit
            # would cost more than the hit itself.
            self._l1_tick = tick = self._l1_tick + 1
            if tick & _L1_SAMPLE_MASK or not self._metrics_enabled:
                entry = l1(key, now)
            else:
                began = time.perf_counter()
                entry = l1(key, now)
                self._metrics.observe(self._l1_name, time.perf_counter() - began)
            if convert is not None and entry is not None:
                # L1 may hold the raw value a get() without type= backfilled: convert it (a
                # value already of the type costs one check); not of the type: a miss here.
                try:
                    value = convert(entry.value)
                except Exception as exc:
                    self._report(exc, operation="get.convert", key=key, layer=self._l1_name)
                    entry = None
                else:
                    if value is not entry.value:
                        entry = _with_value(entry, value)
            if entry is not None:
                fresh_until = entry.fresh_until
                if fresh_until is None or now < fresh_until:
                    metrics = self._metrics
                    metrics.hits += 1
                    self._l1_counters.hits += 1
                    if "hit" in self._events.active:
                        self._events.emit("hit", {"key": key, "layer": self._l1_name})
                    if opts.has_hit_work:
                        self._after_hit(key, entry, fetcher, opts, now, 0)
                    return entry.value
                stale = (entry, self._l1_name)
        value = self._read_through(
            key, fetcher, opts, 1 if l1 is not None else 0, stale, convert=convert
        )
        return None if value is _MISS else value

    @overload
    def get_or_raise(
        self,
        key: str,
        fetcher: Fetcher | None = None,
        *,
        type: type[T],
        options: OptionsArg = None,
        **kwargs: Any,
    ) -> T: ...

    @overload
    def get_or_raise(
        self,
        key: str,
        fetcher: Fetcher | None = None,
        *,
        type: Any = None,
        options: OptionsArg = None,
        **kwargs: Any,
    ) -> Any: ...

    def get_or_raise(
        self,
        key: str,
        fetcher: Fetcher | None = None,
        *,
        type: Any = None,
        options: OptionsArg = None,
        **kwargs: Any,
    ) -> Any:
        """Like :meth:`get`, but raise ``CacheMissError`` instead of returning ``None``."""
        value = self.get(key, fetcher, type=type, options=options, **kwargs)
        if value is None:
            raise CacheMissError(key)
        return value

    def _read_through(
        self,
        key: str,
        fetcher: Fetcher | None,
        opts: CacheOptions,
        start: int,
        stale: tuple[Entry, str] | None,
        convert: Callable[[Any], Any] | None = None,
    ) -> Any:
        """Lower layers in order, then single-flight fetch. Returns ``_MISS`` on a miss.

        ``stale`` is a usable but no longer fresh entry already seen (in L1), kept for
        stale-while-revalidate, stale-if-error and the soft timeout. ``convert`` rebuilds a
        value read below L1 as the type the caller asked for.

        Concurrent callers of a key share the whole read from their L1 miss on: the first
        reads the lower layers (and, on a miss, registers the fetch) for everyone; a burst of
        400 cold callers costs one Redis read and one fetch, not one read per caller (which
        would also need 400 pooled connections at once).
        """
        self._open()
        metrics = self._metrics
        if start == 1:
            self._l1_counters.misses += 1
        if self._stampede_prevention:
            role, running = self._flights.join_read(key, fetcher is not None)
            if role == JOIN_FETCH:
                # A fetch of this key is already running: join it instead of reading every
                # lower layer first (during an outage each failed read could start another
                # origin call).
                if stale is not None:
                    held, held_in = stale
                    if held.stale_until is not None and self._clock() < held.stale_until:
                        self._serve_stale(key, "stale-while-revalidate", held_in)
                        return held.value
                metrics.misses += 1
                assert fetcher is not None  # JOIN_FETCH is only the answer to a fetching caller
                return self._fetch_or_stale(key, fetcher, opts, stale, join=running)
            found = self._shared_read(
                key, start, fetcher, opts, stale, convert, role, running
            )
        else:
            found = self._read_lower(key, start, convert)
        entry = found.entry
        if entry is not None:
            value = entry.value
            if convert is not None:
                # Followers convert for their own type; the leader's value was converted by its
                # read (a fast no-op now), except an L1 copy found when it looked again.
                value = self._convert(key, value, convert, self._layers[found.index].name)
                if value is _MISS:
                    found = _Lower(None, 0, found.stale)  # not of the asked type: a miss here
            if value is not _MISS:
                layer = self._layers[found.index].name
                metrics.hits += 1
                self._logger.debug("layercache: %s hit in %s", key, layer)
                if "hit" in self._events.active:
                    self._events.emit("hit", {"key": key, "layer": layer})
                if opts.has_hit_work:
                    self._after_hit(key, entry, fetcher, opts, self._clock(), found.index)
                return value
        if stale is None:
            stale = found.stale
        if stale is not None and convert is not None:
            # A stale value may be served (stale-while-revalidate, soft timeout, stale-if-error):
            # as the caller's type too; one that is not of it is no stale value at all.
            value = self._convert(key, stale[0].value, convert, stale[1])
            stale = None if value is _MISS else (_with_value(stale[0], value), stale[1])
        now = self._clock()
        if stale is not None:
            held, layer = stale
            if held.stale_until is not None and now < held.stale_until:
                # Stale-while-revalidate: answer now, refresh once in the background.
                self._serve_stale(key, "stale-while-revalidate", layer)
                if fetcher is not None:
                    self._refresh_in_background(key, fetcher, opts, found.leases)
                return held.value
        metrics.misses += 1
        if "miss" in self._events.active:
            self._events.emit("miss", {"key": key})
        if fetcher is None:
            return _MISS
        if found.fetch is not None:
            if found.is_leader and found.fetch_is_new:
                return self._fetch_or_stale(key, fetcher, opts, stale, lead=found.fetch)
            return self._fetch_or_stale(key, fetcher, opts, stale, join=found.fetch)
        return self._fetch_or_stale(key, fetcher, opts, stale)

    def _shared_read(
        self,
        key: str,
        start: int,
        fetcher: Fetcher | None,
        opts: CacheOptions,
        stale: tuple[Entry, str] | None,
        convert: Callable[[Any], Any] | None,
        role: int,
        flight: Flight,
    ) -> _Lower:
        """The read of the layers below L1, shared by every concurrent caller of ``key``
        (``role`` and ``flight`` as :meth:`Flights.join_read` answered).

        The first caller (the leader) reads inline; the others wait for its result. When the
        leader finds nothing and has a fetcher, it registers the fetch flight *before* it
        hands the result over, so that every follower joins that very flight, even one that
        wakes up after the fetch finished (a thread preempted at the wrong moment would
        otherwise start a second fetch). A leader that is cancelled hands over "read again",
        so its followers are never cancelled with it.
        """
        while True:
            if role == JOIN_FETCH:
                return _Lower(None, 0, None, flight)
            if role == FOLLOW:
                assert flight.future is not None
                shared = wait_future(flight.future)
                if shared is _READ_AGAIN:
                    role, flight = self._flights.join_read(key, fetcher is not None)
                    continue
                assert isinstance(shared, _Lower)
                return shared
            try:
                # A caller preempted between its L1 miss and here may find that the burst it
                # belonged to has finished and stored the value: L1 has it now.
                again = self._recheck_l1(key) if start == 1 else None
                found = again if again is not None else self._read_lower(key, start, convert)
                if found.entry is None and callable(fetcher):
                    # The same rule as the leader's own decision below: it fetches unless it
                    # serves a stale value, so a registered fetch is always launched.
                    held = stale if stale is not None else found.stale
                    if held is None or not (
                        held[0].stale_until is not None and self._clock() < held[0].stale_until
                    ):
                        fetch_running, fetch = self._flights.join_fetch(key, opts.tags or ())
                        found.fetch = fetch
                        found.fetch_is_new = fetch_running is None
                        if fetch_running is None:
                            fetch.leases = found.leases
            except Exception as exc:
                future = self._flights.finish_read(key, flight)
                if future is not None:
                    settle(future, error=exc)
                raise
            except BaseException:
                future = self._flights.finish_read(key, flight)
                if future is not None:
                    settle(future, _READ_AGAIN)
                raise
            future = self._flights.finish_read(key, flight)
            if future is not None:
                settle(future, _Lower(found.entry, found.index, found.stale, found.fetch))
            found.is_leader = True
            return found

    def _recheck_l1(self, key: str) -> _Lower | None:
        """L1 once more, now that this caller leads the read: a caller preempted between
        its L1 miss and here may find that the burst it belonged to has finished and stored
        the value (its flights are gone), and must not read the lower layers again."""
        assert self._l1 is not None
        now = self._clock()
        entry = self._l1(key, now)
        if entry is not None and entry.is_fresh(now):
            return _Lower(entry, 0, None)
        return None

    def _read_lower(
        self, key: str, start: int, convert: Callable[[Any], Any] | None
    ) -> _Lower:
        """Read the layers from ``start`` down until one holds a fresh entry; backfill the
        layers above it (unless the key changed meanwhile). Also returns the first usable
        stale entry seen."""
        layers = self._layers
        metrics = self._metrics
        stale: tuple[Entry, str] | None = None
        leases: dict[int, Any] | None = None
        epoch = self._flights.epoch
        for index in range(start, len(layers)):
            adapter = layers[index]
            if adapter.degraded_until is not None and not self._recover(adapter):
                continue
            began = time.perf_counter()
            try:
                if self._behind is not None and not adapter.is_local:
                    queued, raw = self._queued_read(adapter, key)
                    if not queued:
                        raw = adapter.read(key)
                elif adapter.read_leased is not None:
                    raw, lease = adapter.read_leased(key)
                    if leases is None:
                        leases = {}
                    leases[index] = lease
                else:
                    raw = adapter.read(key)
            except CacheLayerError as exc:
                if self._retry_after is None:
                    raise
                self._degrade(adapter, exc, "get")
                continue
            if self._metrics_enabled:
                metrics.observe(adapter.name, time.perf_counter() - began)
            entry = self._entry_or_miss(adapter, key, raw)
            # Every layer below L1 hands out a decoded copy (Redis, disk, a user's layer), so
            # it is rebuilt as the caller's type before it is backfilled above.
            if entry is not None and convert is not None:
                value = self._convert(key, entry.value, convert, adapter.name)
                entry = None if value is _MISS else _with_value(entry, value)
            if entry is None:
                metrics.layers[adapter.name].misses += 1
                continue
            now = self._clock()
            if entry.is_fresh(now):
                metrics.layers[adapter.name].hits += 1
                if index and not self._flights.changed_since(key, epoch):
                    self._backfill(key, entry, layers[:index], adapter.name, now, epoch)
                    self._undo_late_backfill([key], layers[:index], epoch)
                return _Lower(entry, index, stale)
            metrics.layers[adapter.name].misses += 1
            if stale is None and entry.is_usable(now):
                stale = (entry, adapter.name)
        return _Lower(None, 0, stale, None, leases)

    def _convert(self, key: str, value: Any, convert: Callable[[Any], Any], layer: str) -> Any:
        """``value`` rebuilt as the caller's type; ``_MISS`` (reported) when it is not one:
        the stored value is then treated as absent and fetched again."""
        try:
            return convert(value)
        except Exception as exc:
            self._report(exc, operation="get.convert", key=key, layer=layer)
            return _MISS

    def _serve_stale(self, key: str, state: str, layer: str) -> None:
        self._metrics.stale_hits += 1
        self._logger.debug("layercache: serving stale %s from %s (%s)", key, layer, state)
        if "stale_serve" in self._events.active:
            self._events.emit("stale_serve", {"key": key, "state": state, "layer": layer})

    def _fetch_or_stale(
        self,
        key: str,
        fetcher: Fetcher,
        opts: CacheOptions,
        stale: tuple[Entry, str] | None,
        *,
        lead: Flight | None = None,
        join: Flight | None = None,
    ) -> Any:
        """Fetch through single-flight; fall back to a stale value per the soft timeout and
        the stale-if-error window. ``lead``/``join``: see :meth:`_load`."""
        soft = opts.fetch_soft_timeout if stale is not None else None
        try:
            return self._load(key, fetcher, opts, soft, lead=lead, join=join)
        except _SoftTimeout:
            assert stale is not None
            self._serve_stale(key, "soft-timeout", stale[1])
            return stale[0].value
        except CacheLayerError:
            raise
        except Exception:
            if stale is not None:
                entry, layer = stale
                if entry.error_until is not None and self._clock() < entry.error_until:
                    self._serve_stale(key, "stale-if-error", layer)
                    return entry.value
            raise

    def _after_hit(
        self,
        key: str,
        entry: Entry,
        fetcher: Fetcher | None,
        opts: CacheOptions,
        now: float,
        hit_index: int,
    ) -> None:
        """Per-hit work some options ask for: read counting, refresh-ahead, sliding TTL."""
        if opts.adaptive_ttl is not None:
            reads = self._reads
            with self._state_lock:
                reads[key] = reads.get(key, 0) + 1
                reads.move_to_end(key)
                if len(reads) > self.max_profile_entries:
                    reads.popitem(last=False)  # the least recently read profile: bounded
        fresh_until = entry.fresh_until
        if (
            opts.refresh_ahead is not None
            and fetcher is not None
            and fresh_until is not None
            and fresh_until - now <= opts.refresh_ahead
        ):
            self._refresh_in_background(key, fetcher, opts)
        if opts.sliding_ttl and fresh_until is not None:
            self._slide(key, entry, opts, now, hit_index)

    def _slide(
        self, key: str, entry: Entry, opts: CacheOptions, now: float, hit_index: int
    ) -> None:
        """Reset the key's TTL in every layer holding it, skipping negligible extensions.

        Each layer is judged by its own TTL: it is rewritten only once a tenth of that TTL has
        passed since the value was written or last extended there. Layers below the one that
        answered are extended only if they hold the key (they are not filled by a slide).
        """
        fresh_until = entry.fresh_until
        assert fresh_until is not None
        stale_extra = None if entry.stale_until is None else entry.stale_until - fresh_until
        error_extra = None if entry.error_until is None else entry.error_until - fresh_until
        marks = self._extended.get(key, {})
        plan: list[tuple[LayerAdapter, Entry]] = []
        for index, adapter in enumerate(self._layers):
            ttl = per_layer_value(opts.ttl, adapter.name, adapter.default_ttl)
            if ttl is None or ttl <= 0:
                continue
            if now - max(entry.stored_at, marks.get(adapter.name, 0.0)) < 0.1 * ttl:
                continue
            if index > hit_index and self._peek(adapter, key) is None:
                continue
            until = now + ttl
            plan.append(
                (
                    adapter,
                    Entry(
                        entry.value,
                        entry.stored_at,
                        until,
                        None if stale_extra is None else until + stale_extra,
                        None if error_extra is None else until + error_extra,
                        entry.tags,
                    ),
                )
            )
        if not plan:
            return
        fresh = {a.name: e for a, e in plan}

        def extend(adapter: LayerAdapter) -> None:
            copy = fresh[adapter.name]
            adapter.set(key, copy, copy.storage_ttl(now))

        self._for_layers("sliding_ttl", [a for a, _ in plan], extend)
        updated = dict(marks)
        updated.update(dict.fromkeys(fresh, now))
        with self._state_lock:
            self._extended[key] = updated
            self._extended.move_to_end(key)
            if len(self._extended) > self.max_profile_entries:
                self._extended.popitem(last=False)  # bounded; a lost mark only costs a write

    def _refresh_in_background(
        self,
        key: str,
        fetcher: Fetcher,
        opts: CacheOptions,
        leases: dict[int, Any] | None = None,
    ) -> None:
        """Start one background refresh of ``key`` unless a fetch of it is already running
        (``leases``: those of the read that found the key stale, if it read the layers)."""
        if self._closed:
            return
        running, flight = self._flights.join_fetch(key, opts.tags or ())
        if running is not None:
            return
        flight.leases = leases
        assert flight.future is not None
        future = flight.future
        limit = self._background_refresh_timeout
        bounded = merge_options(
            opts,
            CacheOptions(fetch_timeout=min(opts.fetch_timeout or limit, limit)),
        )
        self._count_background(1)

        def finished() -> None:
            self._count_background(-1)
            self._flights.finish_fetch(key, flight)

        flight.handle = launch_background(
            future,
            functools.partial(self._refresh, key, fetcher, bounded, flight),
            finished,
            self._workers,
        )

    def _refresh(self, key: str, fetcher: Fetcher, opts: CacheOptions, flight: Flight) -> Any:
        try:
            value = self._fetch_and_store(key, fetcher, opts, flight)
        except Exception as exc:
            # A background refresh never surfaces to callers; the stale value stays served.
            self._logger.debug("layercache: background refresh of %s failed: %r", key, exc)
            raise
        self._metrics.refreshes += 1
        return value

    def _backfill(
        self,
        key: str,
        entry: Entry,
        targets: Sequence[LayerAdapter],
        source: str,
        now: float,
        epoch: int | None = None,
    ) -> None:
        """Copy a lower layer's hit into the layers above it, each with its own TTL.

        ``epoch``: when the value was read. The in-process layers are then written only if
        the key did not change since, in one step with that check (a change landing between
        a check and the write would leave the value it replaced in L1 after it returned);
        nothing is backfilled if it did.
        """

        def copy_for(adapter: LayerAdapter) -> tuple[Entry, float | None]:
            own_ttl = adapter.default_ttl
            copy = entry if own_ttl is None else entry.clipped(now + own_ttl)
            return copy, copy.storage_ttl(now)

        def fill(adapter: LayerAdapter) -> None:
            copy, ttl = copy_for(adapter)
            if ttl is None or ttl > 0:
                adapter.set(key, copy, ttl)

        remote = [a for a in targets if a.direct_set is None]
        direct = [a for a in targets if a.direct_set is not None]

        def write_direct() -> None:
            for adapter in direct:
                copy, ttl = copy_for(adapter)
                if ttl is None or ttl > 0:
                    self._direct_write(adapter, key, copy, ttl)

        if epoch is None:
            write_direct()
        elif not self._flights.unless_changed_since(key, epoch, write_direct):
            return
        if remote:
            self._for_layers("backfill", remote, fill)
        if entry.tags:
            # The index may not know this key (written by another process, or before a
            # restart of this one): learn its tags so invalidate_by_tag reaches the copies.
            evicted: list[str] = self._tag_op(
                "record",
                functools.partial(self._tags.record, key, entry.tags, entry.expires_at),
                [],
                # Not remembered when the index is down: the writer of the entry recorded its
                # tags (and remembers that record itself), this only re-learns them.
                [],
            )
            if evicted:
                self._drop_evicted(evicted)
        self._metrics.backfills += len(targets)
        if "backfill" in self._events.active:
            for adapter in targets:
                self._events.emit(
                    "backfill", {"key": key, "from_layer": source, "to_layer": adapter.name}
                )

    # ------------------------------------------------------------------ fetch

    def _load(
        self,
        key: str,
        fetcher: Fetcher,
        opts: CacheOptions,
        soft: float | None = None,
        *,
        lead: Flight | None = None,
        join: Flight | None = None,
    ) -> Any:
        """Single-flight: join the key's in-flight fetch or start one.

        ``lead`` is a flight this caller already registered (it starts it), ``join`` one it
        must wait for (found by a shared read: possibly finished, which is fine, its future
        holds the outcome). With ``soft`` (a stale value exists), stop waiting after that long
        with ``_SoftTimeout``; the fetch goes on and stores its value.
        """
        if not callable(fetcher):
            raise ValueError(f"fetcher must be callable, not {fetcher!r}")
        if not self._stampede_prevention:
            flight = Flight(opts.tags or ())
            return self._fetch_and_store(key, fetcher, opts, flight)
        if lead is not None:
            running, flight = None, lead
        elif join is not None:
            running, flight = join, join
        else:
            running, flight = self._flights.join_fetch(key, opts.tags or ())
        if running is not None and running.future is not None:
            self._metrics.stampede_dedupes += 1
            if "stampede_dedupe" in self._events.active:
                self._events.emit("stampede_dedupe", {"key": key})
            return self._wait(running.future, soft)

        future = flight.future
        assert future is not None

        def finished() -> None:
            self._flights.finish_fetch(key, flight)

        fetch = functools.partial(self._fetch_and_store, key, fetcher, opts, flight)
        if soft is None:
            flight.handle = launch(future, fetch, finished)
        else:
            # The soft timeout must be able to end this caller's wait while the fetch goes on:
            # on a worker (the threaded twin's launch() would run it in this very thread).
            flight.handle = launch_background(future, fetch, finished, self._workers)
        # One waiter being cancelled must not cancel the fetch the others share.
        return self._wait(future, soft)

    def _wait(self, future: FlightFuture[Any], soft: float | None) -> Any:
        if soft is None:
            return wait_future(future)
        began = time.monotonic()
        try:
            return wait_future_for(future, soft)
        except TimeoutError as exc:
            if isinstance(exc, FetchTimeoutError) or time.monotonic() - began < soft:
                raise  # the fetch's own timeout or error, not the soft deadline
            raise _SoftTimeout from None

    def _call_fetcher(
        self, key: str, fetcher: Fetcher, timeout: float | None, limit: Any = None
    ) -> Any:
        """Run the fetcher (inside its rate-limit slot, if any) bounded by ``timeout``.

        Waiting for a slot counts against the timeout: a queued caller never waits longer
        than ``fetch_timeout`` in all.
        """

        def run() -> Any:
            if limit is None:
                return call_fetcher(fetcher)
            with self._limiter.slot(key, limit):
                return call_fetcher(fetcher)

        if timeout is None:
            return run()
        began = time.monotonic()
        try:
            return with_timeout(run, timeout, self._workers)
        except TimeoutError:
            if time.monotonic() - began >= timeout:
                raise FetchTimeoutError(key, timeout) from None
            raise  # a TimeoutError raised by the fetcher itself is its own error

    def _fetch_and_store(
        self, key: str, fetcher: Fetcher, opts: CacheOptions, flight: Flight
    ) -> Any:
        """The origin fetch and the write of its value; across instances when a
        single-flight coordinator is configured (one instance fetches, the others read the
        shared layers when it is done)."""
        coordinator = self._coordinator
        if coordinator is None:
            return self._fetch_and_store_here(key, fetcher, opts, flight)
        return coordinator.run(
            key,
            functools.partial(self._fetch_and_store_here, key, fetcher, opts, flight),
            functools.partial(self._read_shared, key),
            timeout=self._single_flight_timeout,
            poll=self._single_flight_poll,
        )

    def _read_shared(self, key: str) -> tuple[bool, Any]:
        """A fresh value of ``key`` in a non-local layer (another instance fetched it),
        backfilled into the layers above it."""
        layers = self._layers
        for index, adapter in enumerate(layers):
            if adapter.is_local:
                continue
            entry = self._peek(adapter, key)
            now = self._clock()
            if entry is not None and entry.is_fresh(now):
                if index:
                    self._backfill(key, entry, layers[:index], adapter.name, now)
                return True, entry.value
        return False, None

    def _fetch_and_store_here(
        self, key: str, fetcher: Fetcher, opts: CacheOptions, flight: Flight
    ) -> Any:
        breaker = opts.circuit_breaker or None
        decision = self._circuits.before_fetch(key, breaker) if breaker is not None else None
        if decision == "reject":
            raise CircuitOpenError(key)
        if self._leasing:
            self._take_leases(key, flight)
        self._metrics.fetches += 1
        self._logger.debug("layercache: fetching %s", key)
        try:
            value = self._call_fetcher(
                key, fetcher, opts.fetch_timeout, opts.fetcher_rate_limit or None
            )
        except FetcherQueueFullError:
            # Local overload says nothing about the origin: not a circuit failure.
            if decision == "probe":
                self._circuits.release_probe(key)
            raise
        except Exception:
            if breaker is not None:
                self._circuits.record_failure(key, breaker)
            raise
        except BaseException:
            # Cancelled (or interrupted): not the origin's fault; free the probe slot.
            if decision == "probe":
                self._circuits.release_probe(key)
            raise
        if breaker is not None:
            self._circuits.record_success(key)
        if value is None and not opts.negative_cache:
            return None
        if opts.should_cache is not None and not opts.should_cache(value):
            return value
        if flight.invalidated:
            self._logger.debug("layercache: %s invalidated during its fetch; not stored", key)
            return value
        self._store(key, value, opts, flight)
        return value

    def _fence_tags(self, tags: Sequence[str]) -> None:
        """Put up the fences of ``tags`` in the layers with conditional stores."""
        if self._leasing:
            leased = [a for a in self._layers if a.leases]
            self._for_layers("invalidate_by_tags", leased, lambda a: a.fence_tags(tags))

    def _take_leases(self, key: str, flight: Flight) -> None:
        """Leases on ``key`` from the layers with conditional stores that this fetch has
        none of (it read nothing from them: a background refresh, a bulk read, a queued
        write-behind read), taken before the origin is called. A layer that cannot give one
        does not get this fetch's value (graceful degradation), or fails the fetch."""
        leases = flight.leases
        for adapter in self._layers:
            if not adapter.leases or (leases is not None and adapter.index in leases):
                continue
            if adapter.degraded_until is not None:
                continue  # skipped now; without a lease it is not written either
            try:
                lease = adapter.take_lease(key)
            except CacheLayerError as exc:
                if self._retry_after is None:
                    raise
                self._degrade(adapter, exc, "lease")
                continue
            if leases is None:
                leases = flight.leases = {}
            leases[adapter.index] = lease

    def _store_leased(
        self,
        key: str,
        writes: Sequence[tuple[LayerAdapter, Entry | None]],
        flight: Flight,
        tags: Sequence[str],
        now: float,
    ) -> bool:
        """A fetch's conditional stores (layers with leases), before any other layer is
        written: ``False`` when one refused it (the key, or one of its tags, changed since
        the read the fetch began from), and then nothing else is stored."""
        leases = flight.leases or {}
        refused: list[str] = []

        def write(adapter: LayerAdapter) -> None:
            entry = by_name[adapter.name]
            lease = leases.get(adapter.index)
            if lease is None:
                return  # it gave no lease (it was down): it does not get this value
            if not adapter.set_leased(key, entry, entry.storage_ttl(now), lease, tags):
                refused.append(adapter.name)

        by_name = {a.name: e for a, e in writes if a.leases and e is not None}
        targets = [a for a, e in writes if a.leases and e is not None]
        self._for_layers(
            "set", targets, write, succeeded_elsewhere=len(targets) < len(writes)
        )
        if refused:
            self._logger.debug(
                "layercache: %s changed in %s during its fetch; the fetched value is not stored",
                key,
                ", ".join(refused),
            )
            return False
        return True

    # ------------------------------------------------------------------ writes

    def _entries_for(
        self, key: str, value: Any, opts: CacheOptions, now: float
    ) -> list[tuple[LayerAdapter, Entry | None]]:
        # Adaptive TTL: the reads counted since the last write lengthen this write's TTL.
        reads = 0
        if opts.adaptive_ttl is not None:
            with self._state_lock:
                reads = self._reads.pop(key, 0)
        return [
            (
                adapter,
                build_entry(
                    key,
                    value,
                    opts,
                    adapter.name,
                    adapter.default_ttl,
                    now,
                    tz=self._tz,
                    rng=self._rng,
                    reads=reads,
                ),
            )
            for adapter in self._layers
        ]

    def _store(self, key: str, value: Any, opts: CacheOptions, flight: Flight | None) -> None:
        """Write ``value`` to every layer, then record its tags."""
        now = self._clock()
        plan = self._entries_for(key, value, opts, now)
        writes = [(a, e) for a, e in plan if e is not None]
        skipped = [a for a, e in plan if e is None]
        leased_stored = False
        if flight is not None and self._leasing and self._behind is None:
            # A fetch's value goes to the layers with conditional stores first, and nowhere
            # if one of them refuses it: it may be older than a change made meanwhile.
            if not self._store_leased(key, writes, flight, opts.tags or (), now):
                return
            others = [(a, e) for a, e in writes if not a.leases]
            leased_stored = len(others) < len(writes)
            writes = others
        by_name = {a.name: e for a, e in writes}

        failed: set[str] = set()

        def write(adapter: LayerAdapter) -> None:
            entry = by_name[adapter.name]
            assert entry is not None
            try:
                adapter.set(key, entry, entry.storage_ttl(now))
            except Exception:
                failed.add(adapter.name)
                raise

        def drop(adapter: LayerAdapter) -> None:
            adapter.delete(key)

        remote = [a for a, _ in writes if a.direct_set is None]
        direct = [(a, e) for a, e in writes if a.direct_set is not None]

        def write_direct() -> None:
            for adapter, entry in direct:
                assert entry is not None
                self._direct_write(adapter, key, entry, entry.storage_ttl(now))

        if flight is None:
            write_direct()
        elif not self._flights.unless_changed(flight, write_direct):
            # Changed since the fetch began: the value goes nowhere more. A conditional store
            # that went through before the change reached Redis is taken back: the change may
            # not have removed it (a tag invalidation resolves keys through the index, and
            # this value's record was never made).
            if leased_stored:
                with self._flights.changing(_no_flight, (key,)):
                    self._delete_everywhere([key])
            return
        behind = self._behind
        if behind is not None:
            # Write-behind: non-local layers get the write from the queue, in a later batch.
            queued: dict[str, tuple[Entry, float | None] | None] = {}
            for adapter, planned in plan:
                if not adapter.is_local:
                    queued[adapter.name] = (
                        None if planned is None else (planned, planned.storage_ttl(now))
                    )
            remote = [a for a in remote if a.is_local]
            skipped = [a for a in skipped if a.is_local]
            behind.put(key, ("set", queued))
        wrote_directly = len(remote) < len(writes)
        # A layer that misses a write must drop the key when it recovers, since it may hold
        # an older value. A fetch's store is a refill, not a change: remembered apart, in a
        # bounded set that forgets its oldest keys instead of fencing the layer (counting
        # every refill during an outage under read load would pass the bound in a second
        # and clear the whole layer on recovery).
        missed = ("delete" if flight is None else "refill", (key,))
        try:
            self._for_layers("set", remote, write, missed, succeeded_elsewhere=wrote_directly)
        except Exception:
            self._forget_failed_write([key], failed)
            raise
        # ttl=0 for a layer means "not stored there": remove an older value it may hold.
        if skipped:
            self._for_layers("set", skipped, drop, missed)
        expires = _latest_expiry(plan)
        # A fetch's value that reached no shared layer (all down) lives in local layers only.
        reached_shared = (
            flight is None
            or behind is not None
            or any(
                not a.is_local and a.degraded_until is None and a.name not in failed for a in remote
            )
        )
        evicted: list[str] = self._tag_op(
            "record",
            functools.partial(self._tags.record, key, opts.tags or (), expires),
            [],
            ("record", (key, opts.tags or (), expires)),
            reached_shared,
        )
        if opts.tags and self._tags_down_until is not None and behind is None:
            # The index could not take this value's tags now: a tagged value in a shared layer
            # that the index does not know would escape another instance's invalidation of
            # its tags. It stays in the local layers only (its record is replayed when the
            # index is back); the shared copies go (a removal: always safe).
            # (A degraded layer got no copy: its missed write is remembered already.)
            shared = [a for a in self._layers if not a.is_local and a.degraded_until is None]
            self._for_layers("set", shared, lambda a: a.delete(key), ("delete", (key,)))
        if evicted:
            self._drop_evicted(evicted)
        if flight is not None and flight.invalidated:
            # The key was invalidated while our writes were in flight; the invalidation may
            # have landed before them, so remove what we just wrote. Removing it is a change
            # of the key too: a read that picked our value up from a lower layer meanwhile
            # must not backfill it after this (newer fetches are not invalidated: they read
            # the origin after the invalidation).
            with self._flights.changing(_no_flight, (key,)):
                self._delete_everywhere([key])
        if "set" in self._events.active:
            self._events.emit("set", {"key": key})

    def set(self, key: str, value: Any, *, options: OptionsArg = None, **kwargs: Any) -> None:
        """Store ``value`` under ``key`` in every layer (tags replace the key's old tags)."""
        key = self._render(validate_key(key))
        opts = self._options(options, kwargs)
        self._open()
        # An explicit write is newer than a running fetch or read of the key.
        with self._flights.changing(lambda k, _: k == key, (key,)):
            self._store(key, value, opts, None)
        self._publish("keys", "set", (key,))

    def set_many(self, entries: Iterable[SetEntry]) -> None:
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
        self._open()
        if not items:
            return
        now = self._clock()
        per_layer: dict[str, list[tuple[str, Entry, float | None]]] = {
            a.name: [] for a in self._layers
        }
        dropped: dict[str, list[str]] = {a.name: [] for a in self._layers}
        written = {key for key, _, _ in items}
        with self._flights.changing(_among(written), written):
            for key, value, opts in items:
                for adapter, entry in self._entries_for(key, value, opts, now):
                    if entry is None:
                        dropped[adapter.name].append(key)
                    else:
                        per_layer[adapter.name].append((key, entry, entry.storage_ttl(now)))

            failed: set[str] = set()

            def write(adapter: LayerAdapter) -> None:
                try:
                    if per_layer[adapter.name]:
                        adapter.set_many(per_layer[adapter.name])
                except Exception:
                    failed.add(adapter.name)
                    raise
                if dropped[adapter.name]:
                    adapter.delete_many(dropped[adapter.name])

            layers: Sequence[LayerAdapter] = self._layers
            behind = self._behind
            if behind is not None:
                remote_names = [a.name for a in layers if not a.is_local]
                queued: dict[str, dict[str, tuple[Entry, float | None] | None]] = {
                    key: dict.fromkeys(remote_names) for key, _, _ in items
                }
                for name in remote_names:
                    for key, entry, ttl in per_layer[name]:
                        queued[key][name] = (entry, ttl)
                for key, payload in queued.items():
                    behind.put(key, ("set", payload))
                layers = [a for a in layers if a.is_local]
            try:
                self._for_layers("set_many", layers, write, ("delete", tuple(written)))
            except Exception:
                self._forget_failed_write(sorted(written), failed)
                raise
            evicted: list[str] = []
            expiries: dict[str, float | None] = {}
            for planned in per_layer.values():
                for key, stored, _ in planned:
                    known = expiries.get(key, 0.0)
                    until = stored.expires_at
                    expiries[key] = None if known is None or until is None else max(known, until)
            # One batched index call for every key (one round trip per chunk on Redis, not one
            # per key); a down index remembers each key's record for the replay.
            records: list[TagRecord] = [
                (key, opts.tags or (), expiries.get(key)) for key, _, opts in items
            ]
            evicted.extend(
                self._tag_op(
                    "record",
                    functools.partial(self._record_tags, records),
                    [],
                    [("record", record) for record in records],
                )
            )
            if evicted:
                self._drop_evicted(evicted)
            if "set" in self._events.active:
                for key, _, _ in items:
                    self._events.emit("set", {"key": key})
        self._publish("keys", "set", [key for key, _, _ in items])

    def _forget_failed_write(self, keys: Sequence[str], failed: Collection[str]) -> None:
        """A write raised to its caller: a layer failed under the strict write policy, or
        refused the value itself (one it cannot serialize: the caller's error, for which no
        layer is degraded). The layers that failed keep what they had; the others (the memory
        layer, written first) drop the keys, so that no reader, in this instance or another,
        sees a value the caller was told was not stored."""
        layers = [a for a in self._layers if a.name not in failed]
        with self._flights.changing(_no_flight, keys):
            for adapter in layers:
                try:
                    adapter.delete_many(list(keys))
                except LayerCacheError as exc:
                    self._report(exc, operation="set.rollback", layer=adapter.name)

    def _delete_everywhere(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        layers: Sequence[LayerAdapter] = self._layers
        behind = self._behind
        if behind is not None:
            # Queued like writes, so a delete after a queued set of the key wins.
            for key in keys:
                behind.put(key, ("delete", None))
            layers = [a for a in layers if a.is_local]
        if len(keys) == 1:
            key = keys[0]
            self._for_layers("delete", layers, lambda a: a.delete(key), ("delete", (key,)))
        else:
            self._for_layers(
                "delete", layers, lambda a: a.delete_many(keys), ("delete", tuple(keys))
            )

    def _drop_evicted(self, keys: list[str]) -> None:
        """Keys the tag index forgot to stay within its bound: their values go too, since no
        invalidation could reach them any more; on every instance when the index is shared
        (the others would never hear those keys named again)."""
        with self._flights.changing(_among(keys), keys):
            self._delete_everywhere(keys)
        if not isinstance(self._tags, InMemoryTagIndex):
            self._publish("keys", "delete", keys)

    def _flush_behind(self, batch: list[tuple[str, tuple[str, Any]]]) -> None:
        """Apply one write-behind batch: one bulk write and one bulk delete per layer."""
        targets = [a for a in self._layers if not a.is_local]
        sets: dict[str, list[tuple[str, Entry, float | None]]] = {a.name: [] for a in targets}
        deletes: dict[str, list[str]] = {a.name: [] for a in targets}
        for key, (kind, payload) in batch:
            for adapter in targets:
                item = payload.get(adapter.name) if kind == "set" else None
                if item is None:
                    deletes[adapter.name].append(key)
                else:
                    sets[adapter.name].append((key, item[0], item[1]))

        rejected: list[str] = []

        def apply(adapter: LayerAdapter) -> None:
            items = sets[adapter.name]
            if items:
                try:
                    adapter.set_many(items)
                except UnserializableValueError:
                    # One value the layer cannot serialize must not block the queue forever
                    # (a retried batch would fail the same way): write the others one by one
                    # and remove the rejected keys everywhere (below).
                    for key, entry, ttl in items:
                        try:
                            adapter.set(key, entry, ttl)
                        except UnserializableValueError as exc:
                            rejected.append(key)
                            self._report(exc, operation="write_behind", key=key)
            if deletes[adapter.name]:
                adapter.delete_many(deletes[adapter.name])

        keys = tuple(key for key, _ in batch)
        # Raises only when the write policy says the batch failed; the queue then keeps it
        # for a retry (under graceful degradation a down layer remembers it for replay).
        self._for_layers("write_behind", targets, apply, ("delete", keys))
        if rejected:
            # The caller's set returned long ago, and this instance's memory layer holds the
            # value: drop it from every layer, so that every instance reads the key afresh.
            self._forget_failed_write(sorted(set(rejected)), ())

    def _queued_read(self, adapter: LayerAdapter, key: str) -> tuple[bool, Entry | None]:
        """A pending write-behind operation answers reads of non-local layers first."""
        assert self._behind is not None
        op = self._behind.pending(key)
        if op is None:
            return False, None
        kind, payload = op
        item = payload.get(adapter.name) if kind == "set" else None
        return True, None if item is None else item[0]

    def delete(self, key: str) -> None:
        """Remove ``key`` from every layer; a fetch of it in flight will not be stored."""
        validate_key(key)
        self.delete_many([key])

    def delete_many(self, keys: Iterable[str]) -> None:
        """Remove several keys from every layer."""
        unique = list(dict.fromkeys(self._render(validate_key(k)) for k in keys))
        self._open()
        if not unique:
            return
        with self._flights.changing(_among(unique), unique):
            self._tag_op(
                "remove",
                functools.partial(self._tags.remove, unique),
                None,
                ("remove", unique),
            )
            self._delete_everywhere(unique)
        self._publish("keys", "delete", unique)
        if "delete" in self._events.active:
            for key in unique:
                self._events.emit("delete", {"key": key})

    def clear(self) -> None:
        """Remove every key from every layer (each layer clears only what it owns)."""
        self._open()
        with self._flights.changing_all():
            if self._behind is not None:
                self._behind.discard(lambda _k: True)
            self._tag_op("clear", self._tags.clear, None, ("clear", None))
            self._for_layers("clear", self._layers, lambda a: a.clear(), ("clear", None))
        self._publish("clear", "clear", ())

    def invalidate_by_tag(self, tag: str) -> int:
        """Delete every key stored with ``tag``; returns how many keys were known."""
        return self.invalidate_by_tags([tag])

    def invalidate_by_tags(
        self, tags: Iterable[str], mode: Literal["any", "all"] = "any"
    ) -> int:
        """Delete keys carrying any (``mode="any"``) or all (``"all"``) of ``tags``."""
        if mode not in ("any", "all"):
            raise ValueError(f"mode must be 'any' or 'all', not {mode!r}")
        tag_list = coerce_options({"tags": list(tags)})
        assert tag_list is not None
        wanted_tags = tag_list.tags or ()
        self._open()
        if not wanted_tags:
            return 0
        tag_set = set(wanted_tags)

        def tagged(_key: str, flight: Flight) -> bool:
            if mode == "all":
                return tag_set.issubset(flight.tags)
            return not tag_set.isdisjoint(flight.tags)

        # The change begins before the index is asked which keys carry the tags: a fetch
        # that stores and records its tags in between would be neither in the answer nor
        # still in flight to be marked, and its value would outlive the invalidation.
        with self._flights.changing(tagged):
            # Likewise on other instances, in Redis itself: the tags' fences go up before the
            # keys are resolved, so a fetch of a tagged key that read before now is refused
            # its store, or stored early enough to be resolved and deleted here.
            self._fence_tags(wanted_tags)
            keys: set[str] = self._tag_op(
                "keys_for_tags",
                functools.partial(self._tags.keys_for_tags, list(wanted_tags), mode),
                set(),
                ("invalidate", (tuple(wanted_tags), mode)),
            )
            if self._tags_down_until is not None:
                # The index is out of reach: which keys carry the tags is unknown until it
                # comes back (the invalidation is replayed then). Local layers are cheap to
                # refill, so drop them now rather than serve a value the caller just
                # invalidated.
                local = [a for a in self._layers if a.is_local]
                self._for_layers("invalidate_by_tags", local, lambda a: a.clear())
            ordered = sorted(keys)
            # Fetches of the keys found run with other tags (or none): mark them too.
            with self._flights.changing(_among(keys), ordered):
                if ordered:
                    self._tag_op(
                        "remove",
                        functools.partial(self._tags.remove, ordered),
                        None,
                        ("remove", ordered),
                    )
                self._delete_everywhere(ordered)
        self._publish("tags", "invalidate", wanted_tags, mode)
        if ordered:
            self._publish("keys", "invalidate", ordered)
        return len(ordered)

    def invalidate_by_pattern(self, pattern: str) -> int:
        """Delete every key matching the glob ``pattern`` (``*``, ``?``, ``[...]``).

        Returns the number of keys removed from the layer that removed the most.
        """
        _validate_pattern(pattern)
        if self._generation is not None:
            pattern = escape_glob(f"v{self._generation}:") + pattern
        glob = compile_glob(pattern)
        self._open()
        with self._flights.changing(lambda k, _: glob.matches(k)):
            counts: list[int] = []

            def purge(adapter: LayerAdapter) -> None:
                counts.append(adapter.delete_matching(pattern))

            if self._behind is not None:
                self._behind.discard(lambda k: glob.matches(k))
            self._tag_op(
                "keys_matching",
                functools.partial(self._forget_tagged_matching, pattern),
                None,
                ("pattern", pattern),
            )
            self._for_layers(
                "invalidate_by_pattern", self._layers, purge, ("pattern", pattern)
            )
        self._publish("pattern", "invalidate", (pattern,))
        return max(counts, default=0)

    def invalidate_by_prefix(self, prefix: str) -> int:
        """Delete every key starting with ``prefix``."""
        _validate_prefix(prefix)
        return self.invalidate_by_pattern(escape_glob(prefix) + "*")

    # ------------------------------------------------------------------ bulk reads

    def get_many(self, entries: Iterable[GetEntry]) -> list[Any]:
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
                requests.append(
                    (
                        self._render(validate_key(item.key)),
                        item.fetcher,
                        self._options(item.options, {}),
                    )
                )
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
        self._open()
        results: list[Any] = [_MISS] * len(requests)
        pending = list(range(len(requests)))
        metrics = self._metrics
        epoch = self._flights.epoch
        for depth, adapter in enumerate(self._layers):
            if not pending:
                break
            if adapter.degraded_until is not None and not self._recover(adapter):
                continue
            keys = [requests[i][0] for i in pending]
            began = time.perf_counter()
            try:
                raws = adapter.get_many(keys)
            except CacheLayerError as exc:
                if self._retry_after is None:
                    raise
                self._degrade(adapter, exc, "get_many")
                continue
            if self._behind is not None and not adapter.is_local:
                for position, key in enumerate(keys):
                    queued, raw = self._queued_read(adapter, key)
                    if queued:
                        raws[position] = raw
            if self._metrics_enabled:
                metrics.observe(adapter.name, time.perf_counter() - began)
            now = self._clock()
            still: list[int] = []
            fills: list[tuple[str, Entry]] = []
            for i, raw in zip(pending, raws, strict=True):
                entry = self._entry_or_miss(adapter, requests[i][0], raw)
                if entry is not None and entry.is_fresh(now):
                    results[i] = entry.value
                    metrics.layers[adapter.name].hits += 1
                    if depth:
                        fills.append((requests[i][0], entry))
                else:
                    metrics.layers[adapter.name].misses += 1
                    still.append(i)
            fills = [(k, e) for k, e in fills if not self._flights.changed_since(k, epoch)]
            if fills:
                self._backfill_many(fills, self._layers[:depth], now)
                self._undo_late_backfill([k for k, _ in fills], self._layers[:depth], epoch)
            pending = still
        metrics.hits += len(requests) - len(pending)
        metrics.misses += len(pending)
        loads = [i for i in pending if requests[i][1] is not None]
        if loads:
            values = gather(
                [
                    functools.partial(
                        self._load, requests[i][0], cast(Fetcher, requests[i][1]), requests[i][2]
                    )
                    for i in loads
                ]
            )
            for i, value in zip(loads, values, strict=True):
                results[i] = value
        return [None if r is _MISS else r for r in results]

    def _undo_late_backfill(
        self, keys: Sequence[str], targets: Sequence[LayerAdapter], epoch: int
    ) -> None:
        """Drop backfilled copies of keys that changed while they were written.

        The check before a backfill and its write are not one step: a write or delete that
        lands between them (from another thread or task) is followed by the backfill of the
        value it replaced. Looking again afterwards closes that: a change marked before this
        look is undone here, a change marked after it writes (or deletes) after the backfill.
        Dropping a newer value in passing costs only a miss.
        """
        late = [key for key in keys if self._flights.changed_since(key, epoch)]
        if late:
            self._for_layers(
                "backfill", targets, lambda a: a.delete_many(late), ("delete", tuple(late))
            )

    def _backfill_many(
        self, fills: Sequence[tuple[str, Entry]], targets: Sequence[LayerAdapter], now: float
    ) -> None:
        def fill(adapter: LayerAdapter) -> None:
            items: list[tuple[str, Entry, float | None]] = []
            for key, entry in fills:
                own = adapter.default_ttl
                copy = entry if own is None else entry.clipped(now + own)
                ttl = copy.storage_ttl(now)
                if ttl is None or ttl > 0:
                    items.append((key, copy, ttl))
            if items:
                adapter.set_many(items)

        self._for_layers("backfill", targets, fill)
        self._metrics.backfills += len(fills) * len(targets)

    # ------------------------------------------------------------------ queries

    def has(self, key: str) -> bool:
        """Whether any layer holds a usable (fresh or in-window) value for ``key``."""
        key = self._render(validate_key(key))
        self._open()
        now = self._clock()
        for adapter in self._layers:
            entry = self._peek(adapter, key)
            if entry is not None and entry.is_usable(now):
                return True
        return False

    def _peek(self, adapter: LayerAdapter, key: str) -> Entry | None:
        """One layer's entry for the query methods, with the same rules as ``get``: a
        degraded layer is skipped (or recovered first), a failure degrades it under graceful
        degradation, and a queued write-behind operation answers before the layer."""
        if adapter.degraded_until is not None and not self._recover(adapter):
            return None
        if self._behind is not None and not adapter.is_local:
            queued, raw = self._queued_read(adapter, key)
            if queued:
                return raw
        try:
            raw = adapter.get(key)
        except CacheLayerError as exc:
            if self._retry_after is None:
                raise
            self._degrade(adapter, exc, "get")
            return None
        return self._entry_or_miss(adapter, key, raw)

    def _first_entry(self, key: str) -> tuple[list[str], Entry | None]:
        now = self._clock()
        found: list[str] = []
        first: Entry | None = None
        for adapter in self._layers:
            entry = self._peek(adapter, key)
            if entry is not None and entry.is_usable(now):
                found.append(adapter.name)
                if first is None:
                    first = entry
        return found, first

    def ttl(self, key: str) -> float | None:
        """Remaining fresh TTL in seconds from the fastest layer holding ``key``.

        ``None`` when no layer holds it or it never expires; ``0.0`` when only a stale copy
        remains.
        """
        key = self._render(validate_key(key))
        self._open()
        now = self._clock()
        for adapter in self._layers:
            entry = self._peek(adapter, key)
            if entry is not None and entry.is_usable(now):
                if entry.fresh_until is None:
                    return None
                return max(entry.fresh_until - now, 0.0)
        return None

    def inspect(self, key: str) -> CacheInspectResult | None:
        """Where ``key`` lives, its remaining windows and tags; ``None`` when absent."""
        stored_key = self._render(validate_key(key))
        self._open()
        found, entry = self._first_entry(stored_key)
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

    @overload
    def wrap(
        self,
        prefix: str,
        fn: Callable[P, R],
        *,
        key_resolver: Callable[..., str] | None = None,
        type: Any = ...,
        **opts: Any,
    ) -> Callable[P, R]: ...

    def wrap(
        self,
        prefix: str,
        fn: Any = None,
        *,
        key_resolver: Callable[..., str] | None = None,
        type: Any = _ANNOTATION,
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
        named = type
        if named is not _ANNOTATION and converter_for(named) is None:
            named = None  # Any, object, None: values as stored

        def decorate(func: Any) -> Any:
            # @wrap above @classmethod / @staticmethod: wrap the function, re-apply the
            # descriptor. Below them (or on a plain method) the first parameter tells.
            method: Any = None
            receiver: ReceiverKind = "none"
            if isinstance(func, classmethod):
                method, receiver, func = classmethod, "class", func.__func__
            elif isinstance(func, staticmethod):
                method, func = staticmethod, func.__func__
            elif callable(func):
                receiver = receiver_kind(func)
            if not callable(func):
                raise ValueError(f"wrap() needs a callable, not {func!r}")
            call_key = CallKey(func, receiver)
            result_type = named

            @functools.wraps(func)
            def cached(*args: Any, **kwargs: Any) -> Any:
                nonlocal result_type
                if key_resolver is not None:
                    suffix = key_resolver(*args, **kwargs)
                    if not isinstance(suffix, str):
                        raise ValueError("key_resolver must return a str")
                else:
                    suffix = call_key(args, kwargs)
                if result_type is _ANNOTATION:
                    # Resolved at the first call, not at decoration: the annotation may name
                    # a class defined after the function (the method's own class, say).
                    resolved = return_type(func)
                    result_type = resolved if converter_for(resolved) is not None else None
                return self.get(
                    f"{prefix}:{suffix}",
                    lambda: func(*args, **kwargs),
                    type=result_type,
                    options=options,
                )

            return cached if method is None else method(cached)

        if fn is not None:
            return decorate(fn)
        return decorate

    def namespace(self, prefix: str) -> SyncCacheNamespace:
        """A view of this stack whose keys all live under ``prefix:``."""
        return SyncCacheNamespace(self, prefix)

    # ------------------------------------------------------------------ observability

    def on(self, event: str, handler: Callable[[dict[str, Any]], Any]) -> Callable[[], None]:
        """Subscribe ``handler`` to ``event``; returns a function that unsubscribes it."""
        return self._events.on(event, handler)

    def off(self, event: str, handler: Callable[[dict[str, Any]], Any]) -> None:
        """Unsubscribe ``handler`` from ``event``."""
        self._events.off(event, handler)

    def _layer_evictions(self) -> int:
        return sum(int(getattr(a.layer, "evictions", 0) or 0) for a in self._layers)

    def get_metrics(self) -> CacheMetrics:
        """A snapshot of the counters and per-layer latency."""
        return self._metrics.snapshot(self._layer_evictions() - self._evictions_base)

    _evictions_base = 0

    def reset_metrics(self) -> None:
        """Zero every counter."""
        self._metrics.reset()
        self._evictions_base = self._layer_evictions()

    def get_stats(self) -> CacheStats:
        """Metrics plus the status of every layer."""
        return CacheStats(
            metrics=self.get_metrics(),
            layers=[LayerStatus(a.name, a.is_local, a.degraded_until) for a in self._layers],
            background_refreshes=self._background,
        )

    def get_hit_rate(self) -> HitRate:
        """Overall and per-layer hit rates."""
        return self._metrics.hit_rate()

    def health_check(self) -> list[LayerHealth]:
        """Probe every layer; never raises."""

        def probe(adapter: LayerAdapter) -> LayerHealth:
            began = time.perf_counter()
            try:
                healthy = adapter.ping()
                error = None if healthy else "ping returned false"
            except Exception as exc:
                healthy, error = False, str(exc.__cause__ or exc)
            return LayerHealth(adapter.name, healthy, time.perf_counter() - began, error)

        return gather([functools.partial(probe, a) for a in self._layers])

    @property
    def layers(self) -> list[Any]:
        """The layers, fastest first."""
        return [a.layer for a in self._layers]

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Let in-flight fetches finish (bounded), then close every layer. Idempotent."""
        if self._closed:
            return
        self._closed = True
        handles = self._flights.handles()
        wait_launched(handles, _CLOSE_GRACE)
        errors: list[BaseException] = []
        if self._behind is not None:
            try:
                self._behind.close()  # nothing queued is lost on a graceful shutdown
            except LayerCacheError as exc:
                errors.append(exc)  # reported after the layers are closed
        wait_launched(self._events.pending(), _CLOSE_GRACE)
        wait_launched(self._cleanups, _CLOSE_GRACE)
        self._workers.close(_CLOSE_GRACE)
        # The coordination components, then the layers.
        for component in (self._bus, self._coordinator, self._tags):
            closer = getattr(component, "close", None)
            if closer is None:
                continue
            try:
                closer()
            except LayerCacheError as exc:
                errors.append(exc)
        for adapter in self._layers:
            try:
                adapter.close()
            except CacheLayerError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> SyncCacheStack:
        if not self._bus_started:
            try:
                self._ensure_bus()
            except BaseException:
                self.close()  # __exit__ will not run: stop the bus's retry loop
                raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SyncCacheStack([{', '.join(a.name for a in self._layers)}])"


def _latest_expiry(plan: Sequence[tuple[Any, Entry | None]]) -> float | None:
    """The last moment any layer may still hold the value (``None``: some layer never
    expires it); the shared tag index forgets the key after that."""
    latest = 0.0
    for _, entry in plan:
        if entry is None:
            continue
        if entry.expires_at is None:
            return None
        latest = max(latest, entry.expires_at)
    return latest or None


def _write_behind_queue(
    strategy: str,
    settings: Mapping[str, Any] | None,
    flush: Callable[[list[tuple[str, tuple[str, Any]]]], None],
) -> WriteBehindQueue | None:
    """Validate ``write_strategy`` / ``write_behind`` and build the queue."""
    if strategy not in ("write-through", "write-behind"):
        raise ValueError(
            f"write_strategy must be 'write-through' or 'write-behind', not {strategy!r}"
        )
    if strategy == "write-through":
        if settings is not None:
            raise ValueError("write_behind settings need write_strategy='write-behind'")
        return None
    options = dict(settings or {})
    unknown = set(options) - {"batch_size", "flush_interval", "max_queue"}
    if unknown:
        raise ValueError(f"unknown write_behind option(s): {sorted(unknown)}")
    batch_size = options.get("batch_size", 100)
    max_queue = options.get("max_queue", 10_000)
    for name, number in (("batch_size", batch_size), ("max_queue", max_queue)):
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise ValueError(f"write_behind {name} must be a positive int, not {number!r}")
    interval = seconds(
        "write_behind['flush_interval']", options.get("flush_interval", 0.05), allow_zero=False
    )
    return WriteBehindQueue(flush, batch_size, interval, max_queue)


def _cleanup_batch(value: Mapping[str, Any] | bool | None) -> int | None:
    """``generation_cleanup`` → batch size of the background deletion (``None``: off)."""
    if value is None or value is False:
        return None
    if value is True:
        return 500
    if isinstance(value, Mapping):
        unknown = set(value) - {"batch_size"}
        if unknown:
            raise ValueError(f"unknown generation_cleanup option(s): {sorted(unknown)}")
        size = value.get("batch_size", 500)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"generation_cleanup batch_size must be a positive int, not {size!r}")
        return size
    raise ValueError(f"generation_cleanup must be a dict, a bool or None, not {value!r}")


def _coerce_degradation(value: bool | Mapping[str, Any] | None) -> float | None:
    """``graceful_degradation`` → seconds a failed layer is skipped (``None``: off)."""
    if value is None or value is False:
        return None
    if value is True:
        return 10.0
    if isinstance(value, Mapping):
        unknown = set(value) - {"retry_after"}
        if unknown:
            raise ValueError(f"unknown graceful_degradation option(s): {sorted(unknown)}")
        return seconds(
            "graceful_degradation['retry_after']", value.get("retry_after", 10), allow_zero=False
        )
    raise ValueError(f"graceful_degradation must be a bool or a dict, not {value!r}")


def _join(prefix: str, key: str) -> str:
    full = f"{prefix}:{key}"
    if len(full) > MAX_KEY_LENGTH:
        raise ValueError(
            f"key is {len(full)} characters long with its namespace; the limit is {MAX_KEY_LENGTH}"
        )
    return full


class SyncCacheNamespace:
    """The :class:`SyncCacheStack` API with every key under ``prefix:`` (nests)."""

    def __init__(self, stack: SyncCacheStack, prefix: str) -> None:
        _validate_prefix(prefix, limit=MAX_PREFIX_LENGTH)
        self._stack = stack
        self.prefix = prefix

    def _key(self, key: str) -> str:
        validate_key(key)
        return _join(self.prefix, key)

    @overload
    def get(
        self,
        key: str,
        fetcher: Fetcher | None = None,
        *,
        type: type[T],
        options: OptionsArg = None,
        **kw: Any,
    ) -> T | None: ...

    @overload
    def get(
        self,
        key: str,
        fetcher: Fetcher | None = None,
        *,
        type: Any = None,
        options: OptionsArg = None,
        **kw: Any,
    ) -> Any: ...

    def get(
        self,
        key: str,
        fetcher: Fetcher | None = None,
        *,
        type: Any = None,
        options: OptionsArg = None,
        **kw: Any,
    ) -> Any:
        """:meth:`SyncCacheStack.get` inside the namespace."""
        return self._stack.get(self._key(key), fetcher, type=type, options=options, **kw)

    @overload
    def get_or_raise(
        self,
        key: str,
        fetcher: Fetcher | None = None,
        *,
        type: type[T],
        options: OptionsArg = None,
        **kw: Any,
    ) -> T: ...

    @overload
    def get_or_raise(
        self,
        key: str,
        fetcher: Fetcher | None = None,
        *,
        type: Any = None,
        options: OptionsArg = None,
        **kw: Any,
    ) -> Any: ...

    def get_or_raise(
        self,
        key: str,
        fetcher: Fetcher | None = None,
        *,
        type: Any = None,
        options: OptionsArg = None,
        **kw: Any,
    ) -> Any:
        """:meth:`SyncCacheStack.get_or_raise` inside the namespace."""
        value = self.get(key, fetcher, type=type, options=options, **kw)
        if value is None:
            raise CacheMissError(key)
        return value

    def get_many(self, entries: Iterable[GetEntry]) -> list[Any]:
        """:meth:`SyncCacheStack.get_many` inside the namespace."""
        mapped: list[GetEntry] = []
        for item in entries:
            if isinstance(item, str):
                mapped.append(self._key(item))
            elif isinstance(item, CacheEntryRequest):
                mapped.append(CacheEntryRequest(self._key(item.key), item.fetcher, item.options))
            elif isinstance(item, tuple) and len(item) == 2:
                mapped.append((self._key(item[0]), item[1]))
            else:
                raise ValueError(f"invalid get_many entry {item!r}")
        return self._stack.get_many(mapped)

    def has(self, key: str) -> bool:
        """:meth:`SyncCacheStack.has` inside the namespace."""
        return self._stack.has(self._key(key))

    def ttl(self, key: str) -> float | None:
        """:meth:`SyncCacheStack.ttl` inside the namespace."""
        return self._stack.ttl(self._key(key))

    def inspect(self, key: str) -> CacheInspectResult | None:
        """:meth:`SyncCacheStack.inspect` inside the namespace."""
        return self._stack.inspect(self._key(key))

    def set(self, key: str, value: Any, *, options: OptionsArg = None, **kw: Any) -> None:
        """:meth:`SyncCacheStack.set` inside the namespace."""
        self._stack.set(self._key(key), value, options=options, **kw)

    def set_many(self, entries: Iterable[SetEntry]) -> None:
        """:meth:`SyncCacheStack.set_many` inside the namespace."""
        mapped: list[SetEntry] = []
        for item in entries:
            if isinstance(item, CacheEntry):
                mapped.append(CacheEntry(self._key(item.key), item.value, item.options))
            elif isinstance(item, tuple) and len(item) == 2:
                mapped.append((self._key(item[0]), item[1]))
            else:
                raise ValueError(f"invalid set_many entry {item!r}")
        self._stack.set_many(mapped)

    def delete(self, key: str) -> None:
        """:meth:`SyncCacheStack.delete` inside the namespace."""
        self._stack.delete(self._key(key))

    def delete_many(self, keys: Iterable[str]) -> None:
        """:meth:`SyncCacheStack.delete_many` inside the namespace."""
        self._stack.delete_many([self._key(k) for k in keys])

    def clear(self) -> None:
        """Remove every key of this namespace (and only those)."""
        self._stack.invalidate_by_prefix(self.prefix + ":")

    def invalidate_by_tag(self, tag: str) -> int:
        """Tags are stack-wide: same as :meth:`SyncCacheStack.invalidate_by_tag`."""
        return self._stack.invalidate_by_tag(tag)

    def invalidate_by_tags(
        self, tags: Iterable[str], mode: Literal["any", "all"] = "any"
    ) -> int:
        """Tags are stack-wide: same as :meth:`SyncCacheStack.invalidate_by_tags`."""
        return self._stack.invalidate_by_tags(tags, mode)

    def invalidate_by_pattern(self, pattern: str) -> int:
        """Glob invalidation inside the namespace."""
        _validate_pattern(pattern)
        return self._stack.invalidate_by_pattern(_join(escape_glob(self.prefix), pattern))

    def invalidate_by_prefix(self, prefix: str) -> int:
        """Prefix invalidation inside the namespace."""
        _validate_prefix(prefix)
        return self._stack.invalidate_by_prefix(_join(self.prefix, prefix))

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

    @overload
    def wrap(
        self,
        prefix: str,
        fn: Callable[P, R],
        *,
        key_resolver: Callable[..., str] | None = None,
        type: Any = ...,
        **opts: Any,
    ) -> Callable[P, R]: ...

    def wrap(
        self,
        prefix: str,
        fn: Any = None,
        *,
        key_resolver: Callable[..., str] | None = None,
        type: Any = _ANNOTATION,
        **opts: Any,
    ) -> Any:
        """:meth:`SyncCacheStack.wrap` inside the namespace."""
        _validate_prefix(prefix, limit=MAX_PREFIX_LENGTH)
        return self._stack.wrap(
            _join(self.prefix, prefix), fn, key_resolver=key_resolver, type=type, **opts
        )

    def namespace(self, prefix: str) -> SyncCacheNamespace:
        """A nested namespace: keys under ``self.prefix:prefix:``."""
        _validate_prefix(prefix, limit=MAX_PREFIX_LENGTH)
        return SyncCacheNamespace(self._stack, _join(self.prefix, prefix))

    def on(self, event: str, handler: Callable[[dict[str, Any]], Any]) -> Callable[[], None]:
        """Events are stack-wide."""
        return self._stack.on(event, handler)

    def off(self, event: str, handler: Callable[[dict[str, Any]], Any]) -> None:
        """Events are stack-wide."""
        self._stack.off(event, handler)

    def __repr__(self) -> str:
        return f"SyncCacheNamespace({self.prefix!r}, {self._stack!r})"
