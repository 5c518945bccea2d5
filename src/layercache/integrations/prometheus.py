"""Prometheus metrics for a cache stack: ``PrometheusCollector(cache, stack="api")``.

```python
from prometheus_client import make_asgi_app
from layercache import CacheStack, MemoryLayer
from layercache.integrations.prometheus import PrometheusCollector

cache = CacheStack([MemoryLayer(ttl=60)])
PrometheusCollector(cache, stack="api")  # registers on prometheus_client.REGISTRY
app.mount("/metrics", make_asgi_app())
```

A pull-model collector: nothing runs on the cache's paths. Each scrape calls
``cache.get_stats()`` (sync, no I/O, on both ``CacheStack`` and ``SyncCacheStack``) once per
stack and turns the snapshot into metric families (``layercache_`` prefix, ``_total`` counters,
seconds; labels ``stack``, ``layer``, ``operation``). See docs/prometheus.md for the metric
table and PromQL examples.

Several stacks on one registry: prometheus-client refuses two collectors that expose the same
metric names in one registry, so every ``PrometheusCollector`` given the same ``registry``
joins one shared collector registered there, which yields all its stacks' samples in one family
per metric name, told apart by the ``stack`` label. A ``stack`` name already taken on that
registry raises ``ValueError``, and so does the same cache object registered twice.
``unregister()`` takes a stack out (the shared collector leaves the registry with its last
stack). ``registry=None`` registers nothing: the object is itself a collector of its one stack,
to register by hand (``my_registry.register(collector)``) or to call ``collect()`` on.

Stacks are held by weak reference: the collector never keeps a stack alive. A stack that was
garbage collected disappears from the next scrape and frees its ``stack`` name. A stack that
was closed but is still referenced keeps reporting its last counters until ``unregister()``;
call it when you close the stack (the stack has no public "closed" state to test).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.metrics_core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "layercache.integrations.prometheus needs prometheus-client: "
        "pip install 'layercache-py[prometheus]'"
    ) from exc

from layercache import LATENCY_BUCKETS, CacheStats, OperationLatency

__all__ = ["PrometheusCollector"]

_log = logging.getLogger("layercache.prometheus")

# The ``le`` label of each bounded bucket ("5e-05", "0.0001", ... "10.0": the same text as
# prometheus_client's own histograms give these bounds).
_BOUNDS = tuple(repr(float(bound)) for bound in LATENCY_BUCKETS)


class _HasStats(Protocol):
    def get_stats(self) -> CacheStats: ...

    @property
    def closed(self) -> bool: ...


# --------------------------------------------------------------------------- metric families


class _Families:
    """One scrape's families, filled stack by stack (samples of every stack in one family)."""

    def __init__(self) -> None:
        self._metrics: list[Metric] = []

    def _add(self, metric: Metric) -> Metric:
        self._metrics.append(metric)
        return metric

    def counter(self, name: str, doc: str, labels: Sequence[str]) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc, labels=labels)
        self._add(family)
        return family

    def gauge(self, name: str, doc: str, labels: Sequence[str]) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, doc, labels=labels)
        self._add(family)
        return family

    def histogram(self, name: str, doc: str, labels: Sequence[str]) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, doc, labels=labels)
        self._add(family)
        return family

    def all(self) -> list[Metric]:
        return list(self._metrics)


def _histogram(family: HistogramMetricFamily, labels: list[str], latency: OperationLatency) -> None:
    # Cumulative counts per bound, then +Inf (which is the count); prometheus_client renders
    # _bucket, _count (from +Inf) and _sum.
    bounded = latency.buckets[:-1]
    buckets = [(le, float(count)) for le, count in zip(_BOUNDS, bounded, strict=True)]
    buckets.append(("+Inf", float(latency.count)))
    family.add_metric(labels, buckets, latency.sum)


_STACK = ("stack",)
_LAYER = ("stack", "layer")

# Counters read straight from CacheMetrics: (metric name without _total, attribute, help).
_STACK_COUNTERS: tuple[tuple[str, str, str], ...] = (
    (
        "layercache_hits",
        "hits",
        "Reads (get, get_many entries) answered from a cache layer, without the origin.",
    ),
    (
        "layercache_misses",
        "misses",
        "Reads no layer could answer fresh (then fetched from the origin or returned None).",
    ),
    ("layercache_fetches", "fetches", "Origin fetches (fetcher calls) the stack started."),
    (
        "layercache_stale_serves",
        "stale_hits",
        "Reads answered with a stale value inside its stale window (stale-while-revalidate "
        "or stale-if-error).",
    ),
    (
        "layercache_stampede_dedupes",
        "stampede_dedupes",
        "Callers that joined a fetch already in flight for the same key instead of starting one.",
    ),
    (
        "layercache_backfills",
        "backfills",
        "Values copied into faster layers after a hit in a slower one.",
    ),
    (
        "layercache_evictions",
        "evictions",
        "Entries evicted by a bounded layer (the memory layer's max_size).",
    ),
    ("layercache_refreshes", "refreshes", "Background refreshes of entries that were stale."),
    (
        "layercache_write_failures",
        "write_failures",
        "Writes to a layer that failed (the value was not stored there).",
    ),
)


class _StackSamples:
    """Adds one stack's snapshot to the families of a scrape."""

    def __init__(self, families: _Families) -> None:
        f = families
        self.counters = [
            (f.counter(name, doc, _STACK), attribute) for name, attribute, doc in _STACK_COUNTERS
        ]
        self.layer_hits = f.counter(
            "layercache_layer_hits", "Lookups a layer answered (per layer, fresh or stale).", _LAYER
        )
        self.layer_misses = f.counter(
            "layercache_layer_misses", "Lookups a layer could not answer (per layer).", _LAYER
        )
        self.errors = f.counter(
            "layercache_errors",
            "Errors the stack absorbed (a layer, the bus, the tag index, a refresh...), by the "
            "operation that failed.",
            ("stack", "operation"),
        )
        self.layer_duration = f.histogram(
            "layercache_layer_operation_duration_seconds",
            "Duration of calls to a layer, per layer and operation. The first (in-process) "
            "layer's get is sampled (1 lookup in 64): its count is not the number of lookups.",
            ("stack", "layer", "operation"),
        )
        self.fetch_duration = f.histogram(
            "layercache_fetch_duration_seconds",
            "Duration of origin fetches (fetcher calls).",
            _STACK,
        )
        self.degraded = f.gauge(
            "layercache_layer_degraded",
            "1 while a layer is out of service after a failure (skipped until it recovers), "
            "else 0.",
            _LAYER,
        )
        self.degraded_until = f.gauge(
            "layercache_layer_degraded_until_timestamp_seconds",
            "Unix time at which a degraded layer may be probed again (it stays in the past "
            "until a request probes it). Present only while the layer is degraded.",
            _LAYER,
        )
        self.degraded_since = f.gauge(
            "layercache_layer_degraded_since_timestamp_seconds",
            "Unix time of the failure that degraded a layer. Present only while it is degraded.",
            _LAYER,
        )
        self.pending_replay = f.gauge(
            "layercache_layer_pending_replay",
            "Operations a degraded layer missed, waiting to be replayed when it recovers "
            "(weighed in keys).",
            _LAYER,
        )
        self.in_flight = f.gauge(
            "layercache_in_flight_fetches",
            "Origin fetches running now in this stack (foreground and background).",
            _STACK,
        )
        self.background = f.gauge(
            "layercache_background_refreshes",
            "Background refreshes running now.",
            _STACK,
        )
        self.open_circuits = f.gauge(
            "layercache_open_circuits",
            "Keys whose circuit breaker is open or half-open.",
            _STACK,
        )
        self.tag_index_keys = f.gauge(
            "layercache_tag_index_keys",
            "Keys in the stack's in-process tag index (absent for a tag index that cannot tell "
            "without I/O, such as RedisTagIndex).",
            _STACK,
        )
        self.bus_sent = f.counter(
            "layercache_bus_messages_sent",
            "Invalidation messages this stack published on its bus.",
            _STACK,
        )
        self.bus_received = f.counter(
            "layercache_bus_messages_received",
            "Invalidation messages from other instances this stack applied.",
            _STACK,
        )
        self.bus_rejected = f.counter(
            "layercache_bus_messages_rejected",
            "Bus messages refused (bad signature, replayed, malformed).",
            _STACK,
        )
        self.bus_subscribed = f.gauge(
            "layercache_bus_subscribed",
            "1 once the stack's bus subscription was started, else 0.",
            _STACK,
        )
        self.bus_pending = f.gauge(
            "layercache_bus_pending_announcements",
            "Announcements kept while the bus was unreachable, to publish when it is back.",
            _STACK,
        )
        sf = "Distributed single-flight (the coordinator's totals; a coordinator shared by "
        self.sf_acquired = f.counter(
            "layercache_single_flight_acquired",
            sf + "stacks reports the same totals in each): fetch locks won.",
            _STACK,
        )
        self.sf_waits = f.counter(
            "layercache_single_flight_waits",
            sf + "stacks reports the same totals in each): waits for another instance's fetch.",
            _STACK,
        )
        self.sf_takeovers = f.counter(
            "layercache_single_flight_takeovers",
            sf + "stacks reports the same totals in each): locks taken over from a dead holder.",
            _STACK,
        )
        self.sf_timeouts = f.counter(
            "layercache_single_flight_timeouts",
            sf + "stacks reports the same totals in each): waits that reached their timeout.",
            _STACK,
        )
        self.sf_shared_hits = f.counter(
            "layercache_single_flight_shared_hits",
            sf + "stacks reports the same totals in each): values another instance stored, "
            "found by a waiter.",
            _STACK,
        )
        self.sf_degraded = f.counter(
            "layercache_single_flight_degraded",
            sf + "stacks reports the same totals in each): calls that fell back to a plain "
            "fetch because the coordinator failed.",
            _STACK,
        )

    def add(self, stack: str, stats: CacheStats) -> None:
        m = stats.metrics
        one = [stack]
        for family, attribute in self.counters:
            family.add_metric(one, float(getattr(m, attribute)))
        for layer, lm in m.layers.items():
            self.layer_hits.add_metric([stack, layer], float(lm.hits))
            self.layer_misses.add_metric([stack, layer], float(lm.misses))
            for operation, latency in sorted(lm.operations.items()):
                _histogram(self.layer_duration, [stack, layer, operation], latency)
        for operation, count in sorted(m.errors_by_operation.items()):
            self.errors.add_metric([stack, operation], float(count))
        _histogram(self.fetch_duration, one, m.fetch_latency)
        for status in stats.layers:
            labels = [stack, status.name]
            down = status.degraded_until is not None
            self.degraded.add_metric(labels, 1.0 if down else 0.0)
            if status.degraded_until is not None:
                self.degraded_until.add_metric(labels, status.degraded_until)
            if status.degraded_since is not None:
                self.degraded_since.add_metric(labels, status.degraded_since)
            self.pending_replay.add_metric(labels, float(status.pending_replay))
        self.in_flight.add_metric(one, float(stats.in_flight_fetches))
        self.background.add_metric(one, float(stats.background_refreshes))
        self.open_circuits.add_metric(one, float(stats.open_circuits))
        if stats.tag_index_keys is not None:
            self.tag_index_keys.add_metric(one, float(stats.tag_index_keys))
        if stats.bus is not None:
            self.bus_sent.add_metric(one, float(m.bus_sent))
            self.bus_received.add_metric(one, float(m.bus_received))
            self.bus_rejected.add_metric(one, float(m.bus_rejected))
            self.bus_subscribed.add_metric(one, 1.0 if stats.bus.subscribed else 0.0)
            self.bus_pending.add_metric(one, float(stats.bus.pending_announcements))
        sf = stats.single_flight
        if sf.distributed:
            self.sf_acquired.add_metric(one, float(sf.acquired))
            self.sf_waits.add_metric(one, float(sf.waits))
            self.sf_takeovers.add_metric(one, float(sf.takeovers))
            self.sf_timeouts.add_metric(one, float(sf.timeouts))
            self.sf_shared_hits.add_metric(one, float(sf.shared_hits))
            self.sf_degraded.add_metric(one, float(sf.degraded))


def _collect(stacks: Iterable[tuple[str, _HasStats]], *, describe: bool = False) -> list[Metric]:
    """The families of ``stacks``; ``describe``: every family, even without samples."""
    families = _Families()
    samples = _StackSamples(families)
    for name, cache in stacks:
        try:
            stats = cache.get_stats()
        except Exception:
            # One broken stack must not fail the whole scrape (a 500 loses every metric).
            _log.warning(
                "get_stats() failed for stack %r; skipped in this scrape", name, exc_info=True
            )
            continue
        samples.add(name, stats)
    return [f for f in families.all() if describe or f.samples]


# --------------------------------------------------------------------------- registration


class _Entry:
    # ``token`` identifies the PrometheusCollector that added the entry without referencing it
    # (the shared collector is the value of a dict weakly keyed by registry, and a handle holds
    # its registry: a strong path from value to key would keep the registry alive).
    __slots__ = ("cache", "token")

    def __init__(self, cache: weakref.ref[Any], token: object) -> None:
        self.cache = cache
        self.token = token


class _SharedCollector:
    """The one collector registered on a registry: every stack added with that registry."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: dict[str, _Entry] = {}
        self.registered = False

    def _live(self) -> list[tuple[str, _HasStats]]:
        with self.lock:
            live: list[tuple[str, _HasStats]] = []
            for name, entry in list(self.entries.items()):
                cache = entry.cache()
                if cache is None or cache.closed:
                    # The stack was garbage collected or closed: it reports no more, and its
                    # name may be used again.
                    del self.entries[name]
                else:
                    live.append((name, cache))
        live.sort(key=lambda item: item[0])
        return live

    def collect(self) -> Iterator[Metric]:
        yield from _collect(self._live())

    def describe(self) -> Iterator[Metric]:
        # The names this collector may expose, so a clash with another collector is refused
        # at registration instead of producing an invalid exposition.
        yield from _collect((), describe=True)


_SHARED_LOCK = threading.Lock()
# Keyed weakly by registry: a dropped registry takes its shared collector with it.
_SHARED: weakref.WeakKeyDictionary[CollectorRegistry, _SharedCollector] = (
    weakref.WeakKeyDictionary()
)


class PrometheusCollector:
    """Exposes ``cache.get_stats()`` as Prometheus metrics labelled ``stack=<stack>``.

    ``registry``: where to register (default ``prometheus_client.REGISTRY``); ``None``
    registers nothing (register the object yourself, or call :meth:`collect`). Raises
    ``ValueError`` when ``stack`` is already used on ``registry`` or ``cache`` is already
    registered there, or when the metric names clash with another collector of ``registry``.
    """

    def __init__(
        self,
        cache: _HasStats,
        *,
        stack: str = "default",
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        if not isinstance(stack, str) or not stack:
            raise ValueError("stack must be a non-empty string")
        get_stats: Callable[[], CacheStats] | None = getattr(cache, "get_stats", None)
        if not callable(get_stats):
            raise TypeError("cache must be a CacheStack or SyncCacheStack (it has no get_stats)")
        self._cache: weakref.ref[Any] = weakref.ref(cache)
        self._stack = stack
        self._registry = registry
        self._token = object()
        self._registered = False
        if registry is not None:
            self._join(registry, cache)

    def _join(self, registry: CollectorRegistry, cache: _HasStats) -> None:
        with _SHARED_LOCK:
            shared = _SHARED.get(registry)
            if shared is None:
                shared = _SHARED[registry] = _SharedCollector()
            live = shared._live()
            for name, other in live:
                if name == self._stack:
                    raise ValueError(
                        f"a stack named {self._stack!r} is already registered on this registry"
                    )
                if other is cache:
                    raise ValueError(
                        f"this cache is already registered on this registry as stack {name!r}"
                    )
            if not shared.registered:
                # Raises ValueError (DuplicateTimeseries) on a clash with another collector.
                registry.register(shared)
                shared.registered = True
            with shared.lock:
                shared.entries[self._stack] = _Entry(self._cache, self._token)
            self._registered = True

    @property
    def stack(self) -> str:
        """The ``stack`` label of this cache's samples."""
        return self._stack

    @property
    def cache(self) -> Any:
        """The cache, or ``None`` once it was garbage collected."""
        return self._cache()

    @property
    def registered(self) -> bool:
        """Whether this stack is registered on its registry (``False`` after
        :meth:`unregister`, or with ``registry=None``)."""
        return self._registered

    def unregister(self) -> None:
        """Stop exporting this stack (idempotent). Its ``stack`` name may be used again."""
        registry = self._registry
        if registry is None:
            return
        with _SHARED_LOCK:
            if not self._registered:
                return
            self._registered = False
            shared = _SHARED.get(registry)
            if shared is None:
                return
            with shared.lock:
                entry = shared.entries.get(self._stack)
                if entry is not None and entry.token is self._token:
                    del shared.entries[self._stack]
                empty = not shared.entries
            if empty and shared.registered:
                registry.unregister(shared)
                shared.registered = False
                del _SHARED[registry]

    # A collector of its one stack, for registry=None (or any direct use).

    def collect(self) -> Iterator[Metric]:
        """This stack's metric families (empty once the stack was closed or garbage
        collected)."""
        cache = self._cache()
        yield from _collect([] if cache is None or cache.closed else [(self._stack, cache)])

    def describe(self) -> Iterator[Metric]:
        """Every metric family this collector may expose, without samples."""
        yield from _collect((), describe=True)

    def __repr__(self) -> str:
        state = "registered" if self._registered else "not registered"
        return f"<PrometheusCollector stack={self._stack!r} {state}>"
