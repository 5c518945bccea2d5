"""The reader: the read path below L1, shared by the concurrent callers of a key.

``CacheStack.get`` answers an L1 hit itself (a plain call). On an L1 miss it comes here: the
layers below L1 in order (read once per key per burst, however many callers wait), the
freshness decision (fresh, stale-while-revalidate, soft timeout, stale-if-error), then the
loader's single-flight fetch. ``get_many`` reads through each layer's bulk path. Hits below L1
are backfilled into the layers above through the writer.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from time import perf_counter
from typing import Any, cast

from .._entry import Entry
from .._exceptions import CacheLayerError
from .._options import CacheOptions
from .._primitives.aio import gather, settle, wait_future
from .._telemetry import Telemetry
from .adapter import LayerAdapter
from .flights import FOLLOW, JOIN_FETCH, Flight, Flights
from .layer_set import LayerSet
from .loader import FromLayer, Loader, SoftTimeout
from .writer import Writer

__all__ = ["MISS", "Reader", "with_value"]

Fetcher = Callable[[], Any]
# A read that found nothing usable (``None`` may be a cached value).
MISS: Any = object()
# Handed by a shared read whose leader was cancelled: its followers read again themselves.
_READ_AGAIN: Any = object()
# A layer read that took no lease.
_NO_LEASE: Any = object()


def with_value(entry: Entry, value: Any) -> Entry:
    """``entry`` holding ``value`` instead (the same object when nothing changed)."""
    if value is entry.value:
        return entry
    return entry.with_value(value)


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


class Reader:
    """Reads below L1 for one stack."""

    def __init__(
        self,
        *,
        layers: LayerSet,
        writer: Writer,
        loader: Loader,
        flights: Flights,
        telemetry: Telemetry,
        clock: Callable[[], float],
    ) -> None:
        self._layers = layers
        self._writer = writer
        self._loader = loader
        self._flights = flights
        self._telemetry = telemetry
        self._clock = clock
        adapters = layers.adapters
        first = adapters[0]
        self._l1: Callable[[str, float], Entry | None] | None = first.lookup
        self._l1_counters = telemetry.metrics.layers[first.name]
        # Each layer's name and hit/miss counters by index, bound once (metrics reset the
        # counters in place): the read path indexes a list instead of hashing a name.
        self._names = [a.name for a in adapters]
        self._counters = [telemetry.metrics.layers[a.name] for a in adapters]
        # The layers above each layer (what its hits backfill), and whether any of them is
        # written asynchronously (not in one step with the change check: see _read_lower).
        self._above = [adapters[:index] for index in range(len(adapters))]
        self._remote_above = [
            any(a.direct_set is None for a in adapters[:index]) for index in range(len(adapters))
        ]
        # Each layer's read latency recorders, bound once.
        self._get_timers = [telemetry.timer(a.name, "get") for a in layers.adapters]
        self._get_many_timers = [telemetry.timer(a.name, "get_many") for a in layers.adapters]

    async def read_through(
        self,
        key: str,
        fetcher: Fetcher | None,
        opts: CacheOptions,
        start: int,
        stale: tuple[Entry, str] | None,
        convert: Callable[[Any], Any] | None = None,
    ) -> Any:
        """Lower layers in order, then single-flight fetch. Returns ``MISS`` on a miss.

        ``stale`` is a usable but no longer fresh entry already seen (in L1), kept for
        stale-while-revalidate, stale-if-error and the soft timeout. ``convert`` rebuilds a
        value read below L1 as the type the caller asked for.

        Concurrent callers of a key share the whole read from their L1 miss on: the first
        reads the lower layers (and, on a miss, registers the fetch) for everyone; a burst of
        400 cold callers costs one Redis read and one fetch, not one read per caller (which
        would also need 400 pooled connections at once).
        """
        telemetry = self._telemetry
        metrics = telemetry.metrics
        if start == 1:
            self._l1_counters.misses += 1
        if self._loader.stampede_prevention:
            role, running = self._flights.join_read(key, fetcher is not None)
            if role == JOIN_FETCH:
                # A fetch of this key is already running: join it instead of reading every
                # lower layer first (during an outage each failed read could start another
                # origin call).
                if stale is not None:
                    held, held_in = stale
                    if held.stale_until is not None and self._clock() < held.stale_until:
                        telemetry.stale(key, "stale-while-revalidate", held_in)
                        return held.value
                metrics.misses += 1
                assert fetcher is not None  # JOIN_FETCH is only the answer to a fetching caller
                return await self._fetch_or_stale(
                    key, fetcher, opts, stale, join=running, convert=convert
                )
            found = await self._shared_read(
                key, start, fetcher, opts, stale, convert, role, running
            )
        else:
            found = await self._read_lower(key, start, convert, fetcher is not None)
        entry = found.entry
        if entry is not None:
            value = entry.value
            if convert is not None:
                # Followers convert for their own type; the leader's value was converted by its
                # read (a fast no-op now), except an L1 copy found when it looked again.
                value = self.convert(key, value, convert, self._names[found.index])
                if value is MISS:
                    found = _Lower(None, 0, found.stale)  # not of the asked type: a miss here
            if value is not MISS:
                telemetry.hit(key, self._names[found.index])
                if opts.has_hit_work:
                    await self._loader.after_hit(
                        key, entry, fetcher, opts, self._clock(), found.index
                    )
                return value
        if stale is None:
            stale = found.stale
        if stale is not None and convert is not None:
            # A stale value may be served (stale-while-revalidate, soft timeout, stale-if-error):
            # as the caller's type too; one that is not of it is no stale value at all.
            value = self.convert(key, stale[0].value, convert, stale[1])
            stale = None if value is MISS else (with_value(stale[0], value), stale[1])
        now = self._clock()
        if stale is not None:
            held, layer = stale
            if held.stale_until is not None and now < held.stale_until:
                # Stale-while-revalidate: answer now, refresh once in the background.
                telemetry.stale(key, "stale-while-revalidate", layer)
                if fetcher is not None:
                    self._loader.refresh_in_background(key, fetcher, opts, found.leases)
                return held.value
        telemetry.miss(key)
        if fetcher is None:
            return MISS
        if found.fetch is not None:
            if found.is_leader and found.fetch_is_new:
                return await self._fetch_or_stale(
                    key, fetcher, opts, stale, lead=found.fetch, convert=convert
                )
            return await self._fetch_or_stale(
                key, fetcher, opts, stale, join=found.fetch, convert=convert
            )
        return await self._fetch_or_stale(key, fetcher, opts, stale, convert=convert)

    async def _shared_read(
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
                shared = await wait_future(flight.future)
                if shared is _READ_AGAIN:
                    role, flight = self._flights.join_read(key, fetcher is not None)
                    continue
                assert isinstance(shared, _Lower)
                return shared
            try:
                # A caller preempted between its L1 miss and here may find that the burst it
                # belonged to has finished and stored the value: L1 has it now.
                again = self._recheck_l1(key) if start == 1 else None
                found = (
                    again
                    if again is not None
                    else await self._read_lower(key, start, convert, fetcher is not None)
                )
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

    async def _read_lower(
        self, key: str, start: int, convert: Callable[[Any], Any] | None, fetching: bool
    ) -> _Lower:
        """Read the layers from ``start`` down until one holds a fresh entry; backfill the
        layers above it (unless the key changed meanwhile). Also returns the first usable
        stale entry seen.

        ``fetching``: the caller has a fetcher. Only then are layers with conditional stores
        read with a lease (a fetch that may follow this read, or a background refresh of a
        stale value, stores under it); a read that can start no fetch is a plain read.
        """
        layers = self._layers
        adapters = layers.adapters
        writer = self._writer
        tracer = self._telemetry.tracer
        behind = writer.behind
        # The common case: no tracer, no write-behind queue to look into first.
        plain = tracer is None and behind is None
        stale: tuple[Entry, str] | None = None
        leases: dict[int, Any] | None = None
        epoch = self._flights.epoch
        for index in range(start, len(adapters)):
            adapter = adapters[index]
            if adapter.backlog.down_until is not None and not await layers.usable(adapter):
                continue
            began = perf_counter()
            lease: Any = _NO_LEASE
            try:
                if not plain:
                    raw, lease = await self._read_traced(adapter, key, fetching)
                elif fetching and adapter.read_leased is not None:
                    raw, lease = await adapter.read_leased(key)
                else:
                    raw = await adapter.read(key)
            except CacheLayerError as exc:
                if layers.retry_after is None:
                    raise
                layers.degrade(adapter, exc, "get")
                continue
            if lease is not _NO_LEASE:
                if leases is None:
                    leases = {}
                leases[index] = lease
            self._get_timers[index](perf_counter() - began)
            counters = self._counters[index]
            if raw is None:
                counters.misses += 1
                continue
            # An Entry as it is (the common case: no call); anything else is checked.
            entry = raw if raw.__class__ is Entry else layers.entry_or_miss(adapter, key, raw)
            # Every layer below L1 hands out a decoded copy (Redis, disk, a user's layer), so
            # it is rebuilt as the caller's type before it is backfilled above.
            if entry is not None and convert is not None:
                value = self.convert(key, entry.value, convert, adapter.name)
                entry = None if value is MISS else with_value(entry, value)
            if entry is None:
                counters.misses += 1
                continue
            now = self._clock()
            fresh_until = entry.fresh_until
            if fresh_until is None or now < fresh_until:
                counters.hits += 1
                if index:
                    above = self._above[index]
                    if not self._remote_above[index]:
                        # In-process layers only: the backfill checks that the key did not
                        # change since the read in one step with its writes (nothing is written
                        # if it did), so neither a check before nor a second look after is due.
                        await writer.backfill(key, entry, above, adapter.name, now, epoch)
                    elif not self._flights.changed_since(key, epoch):
                        # Layers written after that check (remote ones): a change landing
                        # meanwhile is undone by the second look.
                        await writer.backfill(key, entry, above, adapter.name, now, epoch)
                        await writer.undo_late_backfill([key], above, epoch)
                return _Lower(entry, index, stale)
            counters.misses += 1
            if stale is None and entry.is_usable(now):
                stale = (entry, adapter.name)
        return _Lower(None, 0, stale, None, leases)

    async def _read_traced(
        self, adapter: LayerAdapter, key: str, fetching: bool
    ) -> tuple[Any, Any]:
        """One layer's read when a tracer is set or writes are queued: the bytes (or entry)
        read and its lease (``_NO_LEASE`` for a plain read). A tracer's span surrounds a
        remote read; a remote layer's write still queued behind answers instead of it."""
        span = None
        tracer = self._telemetry.tracer
        if tracer is not None and not adapter.is_local:
            span = tracer.layer_call(adapter.name, "get")
            span.__enter__()
        try:
            behind = self._writer.behind
            lease: Any = _NO_LEASE
            if behind is not None and not adapter.is_local:
                queued, raw = self._writer.queued(adapter, key)
                if not queued:
                    raw = await adapter.read(key)
            elif fetching and adapter.read_leased is not None:
                raw, lease = await adapter.read_leased(key)
            else:
                raw = await adapter.read(key)
        except BaseException as exc:
            if span is not None:
                span.__exit__(type(exc), exc, exc.__traceback__)
            raise
        if span is not None:
            span.__exit__(None, None, None)
        return raw, lease

    def convert(self, key: str, value: Any, convert: Callable[[Any], Any], layer: str) -> Any:
        """``value`` rebuilt as the caller's type; ``MISS`` (reported) when it is not one:
        the stored value is then treated as absent and fetched again."""
        try:
            return convert(value)
        except Exception as exc:
            self._telemetry.report(exc, operation="get.convert", key=key, layer=layer)
            return MISS

    async def _fetch_or_stale(
        self,
        key: str,
        fetcher: Fetcher,
        opts: CacheOptions,
        stale: tuple[Entry, str] | None,
        *,
        lead: Flight | None = None,
        join: Flight | None = None,
        convert: Callable[[Any], Any] | None = None,
    ) -> Any:
        """Fetch through single-flight; fall back to a stale value per the soft timeout and
        the stale-if-error window. ``lead``/``join``: see :meth:`Loader.load`. A value
        another instance fetched (read from a shared layer) is rebuilt with ``convert`` like
        any value read from a layer; the fetcher's own result is returned as it is."""
        soft = opts.fetch_soft_timeout if stale is not None else None
        try:
            value = await self._loader.load(key, fetcher, opts, soft, lead=lead, join=join)
            if type(value) is FromLayer:
                value = self._from_layer(key, value, convert)
            return value
        except SoftTimeout:
            assert stale is not None
            self._telemetry.stale(key, "soft-timeout", stale[1])
            return stale[0].value
        except CacheLayerError:
            raise
        except Exception:
            if stale is not None:
                entry, layer = stale
                if entry.error_until is not None and self._clock() < entry.error_until:
                    self._telemetry.stale(key, "stale-if-error", layer)
                    return entry.value
            raise

    def _from_layer(self, key: str, shared: FromLayer, convert: Callable[[Any], Any] | None) -> Any:
        """The value another instance stored, as the caller's type (as read, if it is not
        one: it is the fetch's result all the same, and the mismatch is reported)."""
        if convert is None:
            return shared.value
        value = self.convert(key, shared.value, convert, shared.layer)
        return shared.value if value is MISS else value

    async def read_many(
        self, requests: Sequence[tuple[str, Fetcher | None, CacheOptions]]
    ) -> list[Any]:
        """Values for several keys, in order (``MISS`` for misses without a fetcher): each
        layer's bulk path for the keys still missing, then single-flight loads."""
        layers = self._layers
        writer = self._writer
        telemetry = self._telemetry
        metrics = telemetry.metrics
        behind = writer.behind
        results: list[Any] = [MISS] * len(requests)
        pending = list(range(len(requests)))
        epoch = self._flights.epoch
        for depth, adapter in enumerate(layers.adapters):
            if not pending:
                break
            if adapter.backlog.down_until is not None and not await layers.usable(adapter):
                continue
            keys = [requests[i][0] for i in pending]
            began = time.perf_counter()
            try:
                with telemetry.layer_call(adapter.name, "get_many", not adapter.is_local):
                    raws = await adapter.get_many(keys)
            except CacheLayerError as exc:
                if layers.retry_after is None:
                    raise
                layers.degrade(adapter, exc, "get_many")
                continue
            if behind is not None and not adapter.is_local:
                for position, key in enumerate(keys):
                    queued, raw = writer.queued(adapter, key)
                    if queued:
                        raws[position] = raw
            self._get_many_timers[depth](time.perf_counter() - began)
            now = self._clock()
            still: list[int] = []
            fills: list[tuple[str, Entry]] = []
            for i, raw in zip(pending, raws, strict=True):
                entry = layers.entry_or_miss(adapter, requests[i][0], raw)
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
                above = layers.adapters[:depth]
                await writer.backfill_many(fills, above, now)
                await writer.undo_late_backfill([k for k, _ in fills], above, epoch)
            pending = still
        metrics.hits += len(requests) - len(pending)
        metrics.misses += len(pending)
        tracer = telemetry.tracer
        if tracer is not None:
            # One outcome per entry (the tracer counts them: hits, misses).
            for _ in range(len(requests) - len(pending)):
                tracer.outcome("hit", None)
            for _ in pending:
                tracer.outcome("miss", None)
        loads = [i for i in pending if requests[i][1] is not None]
        if loads:
            values = await gather(
                [
                    functools.partial(
                        self._loader.load,
                        requests[i][0],
                        cast(Fetcher, requests[i][1]),
                        requests[i][2],
                    )
                    for i in loads
                ]
            )
            for i, value in zip(loads, values, strict=True):
                results[i] = value.value if type(value) is FromLayer else value
        return results
