# DO NOT EDIT: generated from src/layercache/_async/loader.py by scripts/unasync.py.
# Change the async source and run `python scripts/unasync.py`.
"""The loader: fetches from the origin, once per key, and the work some options add to a hit.

Local single-flight (concurrent callers of a key share one fetch through the flight table),
distributed single-flight (one instance fetches, the others wait for its value in the shared
layers), the circuit breaker, the fetcher rate limit, timeouts (hard, and the soft timeout that
lets a caller take a stale value while the fetch goes on), background refresh
(stale-while-revalidate, refresh-ahead, early refresh) and per-hit work (adaptive TTL's read
count, sliding TTL). It stores fetched values through the writer.
"""

from __future__ import annotations

import functools
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .._circuit import CircuitRegistry
from .._early_refresh import FetchDurations
from .._entry import Entry
from .._exceptions import (
    CacheLayerError,
    CircuitOpenError,
    FetcherQueueFullError,
    FetchTimeoutError,
)
from .._metrics import SingleFlightStatus
from .._options import CacheOptions, merge_options
from .._policy import per_layer_value
from .._primitives.threads import (
    FlightFuture,
    call_fetcher,
    launch,
    launch_background,
    wait_future,
    wait_future_for,
    with_timeout,
)
from .._telemetry import Telemetry
from .._types import SingleFlightCoordinator
from .adapter import LayerAdapter
from .flights import Flight, Flights
from .layer_set import LayerSet
from .rate_limit import FetcherLimiter
from .writer import Writer

__all__ = ["FromLayer", "Loader", "SoftTimeout"]

Fetcher = Callable[[], Any]


class FromLayer:
    """A fetch's result that another instance fetched and this one read from a shared layer
    (distributed single-flight): decoded by the layer's serializer, so each caller rebuilds it
    as its own ``type=`` (the reader does), unlike a value this instance's fetcher returned."""

    __slots__ = ("layer", "value")

    def __init__(self, value: Any, layer: str) -> None:
        self.value = value
        self.layer = layer


class SoftTimeout(Exception):
    """The soft timeout passed while a stale value can be served (the fetch goes on)."""


class Loader:
    """Origin fetches and per-hit work for one stack."""

    def __init__(
        self,
        *,
        writer: Writer,
        layers: LayerSet,
        flights: Flights,
        telemetry: Telemetry,
        clock: Callable[[], float],
        coordinator: SingleFlightCoordinator | None,
        coordinator_terms: dict[str, float],
        single_flight_timeout: float,
        single_flight_poll: float,
        stampede_prevention: bool,
        background_refresh_timeout: float,
        fetch_timeout: float | None,
        max_profile_entries: int,
        workers: Any,
        rng: random.Random | None = None,
    ) -> None:
        self._writer = writer
        self._layers = layers
        self._flights = flights
        self._telemetry = telemetry
        self._clock = clock
        self._coordinator = coordinator
        self._terms = coordinator_terms
        self._single_flight_timeout = single_flight_timeout
        self._single_flight_poll = single_flight_poll
        self.stampede_prevention = stampede_prevention
        self._background_timeout = background_refresh_timeout
        self._max_profiles = max_profile_entries
        # A probe outliving its lease is presumed lost; keep the lease above any fetch timeout.
        self.circuits = CircuitRegistry(
            max_entries=max_profile_entries,
            clock=clock,
            probe_lease=max(60.0, 2 * (fetch_timeout or 30.0)),
        )
        self.limiter = FetcherLimiter(max_keys=max_profile_entries)
        # Early refresh (XFetch): each key's last fetch duration, and the draw of each hit.
        self.fetch_durations = FetchDurations(max_profile_entries)
        self._draw = (rng or random).random
        # Threads this stack owns in the thread twin (timed fetches, background refreshes).
        self.workers = workers
        self.background = 0
        # Origin fetches running now (foreground and background).
        self.in_flight = 0
        self.closed = False
        # Sliding TTL: when each layer last had the key extended (bounded).
        self._extended: OrderedDict[str, dict[str, float]] = OrderedDict()
        # Guards the background count and the sliding marks: never held across any I/O.
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ single-flight

    def load(
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
        with :class:`SoftTimeout`; the fetch goes on and stores its value.
        """
        if not callable(fetcher):
            raise ValueError(f"fetcher must be callable, not {fetcher!r}")
        if not self.stampede_prevention:
            flight = Flight(opts.tags or ())
            return self._fetch_and_store(key, fetcher, opts, flight)
        if lead is not None:
            running, flight = None, lead
        elif join is not None:
            running, flight = join, join
        else:
            running, flight = self._flights.join_fetch(key, opts.tags or ())
        if running is not None and running.future is not None:
            self._telemetry.dedupe(key)
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
            # on a worker (the thread twin's launch() would run it in this very thread).
            flight.handle = launch_background(future, fetch, finished, self.workers)
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
            raise SoftTimeout from None

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
            with self.limiter.slot(key, limit):
                return call_fetcher(fetcher)

        if timeout is None:
            return run()
        began = time.monotonic()
        try:
            return with_timeout(run, timeout, self.workers)
        except TimeoutError:
            if time.monotonic() - began >= timeout:
                raise FetchTimeoutError(key, timeout) from None
            raise  # a TimeoutError raised by the fetcher itself is its own error

    def _fetch_and_store(
        self,
        key: str,
        fetcher: Fetcher,
        opts: CacheOptions,
        flight: Flight,
        newer_than: float | None = None,
    ) -> Any:
        """The origin fetch and the write of its value; across instances when a
        single-flight coordinator is configured (one instance fetches, the others read the
        shared layers when it is done).

        ``newer_than``: the refresh of a value that is still fresh (refresh-ahead, early
        refresh), produced at that time: only a value produced later, by another instance,
        stands in for the fetch (the still-fresh value itself must not: it would end every
        such refresh without one). Without a coordinator such a value is looked for once
        before the origin is called.
        """
        coordinator = self._coordinator
        if coordinator is None:
            if newer_than is not None and self._layers.shared:
                try:
                    found, value = self._read_shared(key, newer_than)
                except CacheLayerError as exc:
                    found, value = False, None
                    self._telemetry.debug(
                        "layercache: no newer value read before a refresh: %r",
                        exc,
                        operation="refresh",
                        key=key,
                    )
                if found:
                    return value
            return self._fetch_here(key, fetcher, opts, flight)
        return coordinator.run(
            key,
            functools.partial(self._fetch_here, key, fetcher, opts, flight),
            functools.partial(self._read_shared, key, newer_than),
            timeout=self._single_flight_timeout,
            poll=self._single_flight_poll,
            **self._terms,
        )

    def _read_shared(self, key: str, newer_than: float | None = None) -> tuple[bool, Any]:
        """A fresh value of ``key`` in a shared layer (another instance fetched it; produced
        after ``newer_than`` when given), backfilled into the layers above it."""
        adapters = self._layers.adapters
        for index, adapter in enumerate(adapters):
            if adapter.is_local:
                continue
            # A change of the key here while the layer answers (a delete, an invalidation)
            # must keep the answer out of the layers above: the waiter still returns it (a
            # fetch's value), but it is not stored (API.md's rule for in-flight fetches).
            epoch = self._flights.epoch
            entry = self._writer.peek(adapter, key)
            now = self._clock()
            if (
                entry is not None
                and entry.is_fresh(now)
                and (newer_than is None or entry.stored_at > newer_than)
            ):
                if index:
                    above = adapters[:index]
                    self._writer.backfill(key, entry, above, adapter.name, now, epoch)
                    self._writer.undo_late_backfill([key], above, epoch)
                return True, FromLayer(entry.value, adapter.name)
        return False, None

    def _fetch_here(
        self, key: str, fetcher: Fetcher, opts: CacheOptions, flight: Flight
    ) -> Any:
        breaker = opts.circuit_breaker or None
        circuits = self.circuits
        decision = circuits.before_fetch(key, breaker) if breaker is not None else None
        if decision == "reject":
            raise CircuitOpenError(key)
        if self._layers.leased:
            self._take_leases(key, flight)
        telemetry = self._telemetry
        telemetry.metrics.fetches += 1
        self._count_in_flight(1)
        began = time.perf_counter()
        # On the stack's clock, the one freshness is judged by (early refresh weighs one by
        # the other; a fake clock in tests moves both).
        started = self._clock()
        try:
            with telemetry.fetch(key):
                value = self._call_fetcher(
                    key, fetcher, opts.fetch_timeout, opts.fetcher_rate_limit or None
                )
        except FetcherQueueFullError:
            # Local overload says nothing about the origin: not a circuit failure.
            if decision == "probe":
                circuits.release_probe(key)
            raise
        except Exception:
            if breaker is not None and circuits.record_failure(key, breaker):
                telemetry.circuit(key, "open")
            raise
        except BaseException:
            # Cancelled (or interrupted): not the origin's fault; free the probe slot.
            if decision == "probe":
                circuits.release_probe(key)
            raise
        finally:
            self._count_in_flight(-1)
            telemetry.fetched(key, time.perf_counter() - began)
        self.fetch_durations.record(key if opts.early_refresh else None, self._clock() - started)
        if breaker is not None and circuits.record_success(key):
            telemetry.circuit(key, "closed")
        if value is None and not opts.negative_cache:
            return None
        if opts.should_cache is not None and not opts.should_cache(value):
            return value
        if flight.invalidated:
            telemetry.debug(
                "layercache: invalidated during its fetch; not stored", operation="fetch", key=key
            )
            return value
        self._writer.store(key, value, opts, flight)
        return value

    def _take_leases(self, key: str, flight: Flight) -> None:
        """Leases on ``key`` from the layers with conditional stores that this fetch has
        none of (it read nothing from them: a background refresh, a bulk read, a queued
        write-behind read), taken before the origin is called. A layer that cannot give one
        does not get this fetch's value (graceful degradation), or fails the fetch."""
        layers = self._layers
        leases = flight.leases
        for adapter in layers.leased:
            if leases is not None and adapter.index in leases:
                continue
            if adapter.backlog.down_until is not None:
                continue  # skipped now; without a lease it is not written either
            try:
                lease = adapter.take_lease(key)
            except CacheLayerError as exc:
                if layers.retry_after is None:
                    raise
                layers.degrade(adapter, exc, "lease")
                continue
            if leases is None:
                leases = flight.leases = {}
            leases[adapter.index] = lease

    # ------------------------------------------------------------------ background refresh

    def single_flight_status(self) -> SingleFlightStatus:
        """Fetches in flight here, and the coordinator's counters (when it keeps any)."""
        coordinator = self._coordinator
        counts = getattr(coordinator, "stats", None) if coordinator is not None else None
        fields = ("acquired", "waits", "takeovers", "timeouts", "shared_hits", "degraded")
        values = {name: int(getattr(counts, name, 0) or 0) for name in fields}
        return SingleFlightStatus(
            in_flight=self.in_flight, distributed=coordinator is not None, **values
        )

    def _count_in_flight(self, change: int) -> None:
        with self._lock:
            self.in_flight += change

    def _count_background(self, change: int) -> None:
        with self._lock:
            self.background += change

    def refresh_in_background(
        self,
        key: str,
        fetcher: Fetcher,
        opts: CacheOptions,
        leases: dict[int, Any] | None = None,
        newer_than: float | None = None,
    ) -> None:
        """Start one background refresh of ``key`` unless a fetch of it is already running
        (``leases``: those of the read that found the key stale, if it read the layers;
        ``newer_than``: the production time of the still-fresh value being refreshed, see
        :meth:`_fetch_and_store`)."""
        if self.closed:
            return
        running, flight = self._flights.join_fetch(key, opts.tags or ())
        if running is not None:
            return
        flight.leases = leases
        assert flight.future is not None
        future = flight.future
        limit = self._background_timeout
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
            functools.partial(self._refresh, key, fetcher, bounded, flight, newer_than),
            finished,
            self.workers,
        )

    def _refresh(
        self,
        key: str,
        fetcher: Fetcher,
        opts: CacheOptions,
        flight: Flight,
        newer_than: float | None,
    ) -> Any:
        try:
            value = self._fetch_and_store(key, fetcher, opts, flight, newer_than)
        except Exception as exc:
            # A background refresh never surfaces to callers; the stale value stays served.
            self._telemetry.debug(
                "layercache: background refresh failed: %r", exc, operation="refresh", key=key
            )
            raise
        self._telemetry.metrics.refreshes += 1
        return value

    # ------------------------------------------------------------------ per-hit work

    def after_hit(
        self,
        key: str,
        entry: Entry,
        fetcher: Fetcher | None,
        opts: CacheOptions,
        now: float,
        hit_index: int,
    ) -> None:
        """Per-hit work some options ask for: read counting, refresh-ahead, early refresh,
        sliding TTL."""
        if opts.adaptive_ttl is not None:
            self._writer.count_read(key)
        fresh_until = entry.fresh_until
        if fetcher is not None and fresh_until is not None:
            remaining = fresh_until - now
            ahead = opts.refresh_ahead
            beta = opts.early_refresh
            if (ahead is not None and remaining <= ahead) or (
                beta and self.fetch_durations.due(key, remaining, beta, self._draw)
            ):
                self.refresh_in_background(key, fetcher, opts, newer_than=entry.stored_at)
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
        for index, adapter in enumerate(self._layers.adapters):
            ttl = per_layer_value(opts.ttl, adapter.name, adapter.default_ttl)
            if ttl is None or ttl <= 0:
                continue
            if now - max(entry.stored_at, marks.get(adapter.name, 0.0)) < 0.1 * ttl:
                continue
            if index > hit_index and self._writer.peek(adapter, key) is None:
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

        self._layers.run("sliding_ttl", [a for a, _ in plan], extend)
        updated = dict(marks)
        updated.update(dict.fromkeys(fresh, now))
        with self._lock:
            self._extended[key] = updated
            self._extended.move_to_end(key)
            if len(self._extended) > self._max_profiles:
                self._extended.popitem(last=False)  # bounded; a lost mark only costs a write
