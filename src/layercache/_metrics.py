"""Counters and per-layer latency, plus the result dataclasses of the observability API."""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = [
    "LATENCY_BUCKETS",
    "BusStatus",
    "CacheInspectResult",
    "CacheMetrics",
    "CacheStats",
    "DegradationEvent",
    "HitRate",
    "LatencySummary",
    "LayerHealth",
    "LayerMetrics",
    "LayerStatus",
    "MetricsRecorder",
    "OperationLatency",
    "SingleFlightStatus",
]

# Latency percentiles come from the most recent samples of each layer (a bounded window).
LATENCY_WINDOW = 2_048
# Upper bounds (seconds) of the latency histograms' buckets; a last, unbounded bucket follows.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
# Distinct operation names counted in ``errors_by_operation``; later names count as "other".
MAX_ERROR_OPERATIONS = 64
# Degradation transitions kept for get_stats().
DEGRADATION_HISTORY = 100
COUNTERS = (
    "hits",
    "misses",
    "fetches",
    "stale_hits",
    "refreshes",
    "write_failures",
    "stampede_dedupes",
    "backfills",
    "evictions",
    "errors",
)


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Latency of one layer's operations, in seconds."""

    count: int
    mean: float
    p50: float
    p99: float


@dataclass(frozen=True, slots=True)
class OperationLatency:
    """A latency histogram (seconds) of one operation since the start or ``reset_metrics()``.

    ``buckets`` holds cumulative counts, one per bound of :data:`LATENCY_BUCKETS` and a last one
    for the unbounded bucket (equal to ``count``), the shape Prometheus histograms take."""

    count: int = 0
    sum: float = 0.0
    buckets: tuple[int, ...] = (0,) * (len(LATENCY_BUCKETS) + 1)


@dataclass(frozen=True, slots=True)
class LayerMetrics:
    """Hits, misses and latency of one layer; ``operations``: a histogram per operation
    (``"get"``, ``"set"``, ``"delete"``...). The first layer's ``"get"`` is sampled (one lookup
    in 64 is timed), so its count is not the number of hits."""

    hits: int
    misses: int
    latency: LatencySummary
    operations: dict[str, OperationLatency] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CacheMetrics:
    """A snapshot of the stack's counters."""

    hits: int = 0
    misses: int = 0
    fetches: int = 0
    stale_hits: int = 0
    refreshes: int = 0
    write_failures: int = 0
    stampede_dedupes: int = 0
    backfills: int = 0
    evictions: int = 0
    errors: int = 0
    layers: dict[str, LayerMetrics] = field(default_factory=dict)
    errors_by_operation: dict[str, int] = field(default_factory=dict)
    fetch_latency: OperationLatency = field(default_factory=OperationLatency)
    bus_sent: int = 0
    bus_received: int = 0
    bus_rejected: int = 0


@dataclass(frozen=True, slots=True)
class LayerStatus:
    """Whether a layer is local, until when (wall time) it is skipped as degraded, since when,
    and how much it missed meanwhile (operations waiting for its recovery, weighed in keys)."""

    name: str
    is_local: bool
    degraded_until: float | None = None
    degraded_since: float | None = None
    pending_replay: int = 0


@dataclass(frozen=True, slots=True)
class DegradationEvent:
    """A layer went out of service (``"degraded"``) or came back (``"recovered"``)."""

    layer: str
    event: str
    at: float
    operation: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class BusStatus:
    """The invalidation bus as this stack sees it: whether it subscribed, the announcements it
    keeps while the bus is down, and the messages it sent, applied and rejected."""

    subscribed: bool
    pending_announcements: int
    sent: int
    received: int
    rejected: int


@dataclass(frozen=True, slots=True)
class SingleFlightStatus:
    """Fetches in flight in this stack, and the distributed coordinator's counters (zero
    without one; a coordinator shared by several stacks reports its totals): locks
    ``acquired`` (won), ``waits`` for another instance, ``takeovers`` of a dead holder's lock,
    waiters that reached their ``timeouts``, values found in a shared layer (``shared_hits``)
    and calls that fell back to a plain fetch because Redis failed (``degraded``)."""

    in_flight: int = 0
    distributed: bool = False
    acquired: int = 0
    waits: int = 0
    takeovers: int = 0
    timeouts: int = 0
    shared_hits: int = 0
    degraded: int = 0


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Metrics plus layer status, work in flight, the bus and single-flight, the tag index's
    size (``None`` when it cannot tell without I/O), open circuits and the recent
    degradations (oldest first)."""

    metrics: CacheMetrics
    layers: list[LayerStatus]
    background_refreshes: int = 0
    in_flight_fetches: int = 0
    bus: BusStatus | None = None
    single_flight: SingleFlightStatus = field(default_factory=SingleFlightStatus)
    tag_index_keys: int | None = None
    open_circuits: int = 0
    degradations: tuple[DegradationEvent, ...] = ()


@dataclass(frozen=True, slots=True)
class HitRate:
    """Hit rates in ``[0, 1]``: overall (per ``get``) and per layer (per lookup)."""

    overall: float
    layers: dict[str, float]


@dataclass(frozen=True, slots=True)
class LayerHealth:
    """The result of probing one layer."""

    layer: str
    healthy: bool
    latency: float
    error: str | None = None


class Histogram:
    """Counts per latency bucket (not cumulative), their total and sum."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds

    def reset(self) -> None:
        # In place: timers hold this object (see _LayerCounters.timer).
        self.counts[:] = [0] * len(self.counts)
        self.sum = 0.0

    def snapshot(self) -> OperationLatency:
        cumulative: list[int] = []
        total = 0
        for count in self.counts:
            total += count
            cumulative.append(total)
        return OperationLatency(total, self.sum, tuple(cumulative))


class _LayerCounters:
    __slots__ = ("count", "hits", "latencies", "misses", "operations", "total_latency")

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self.count = 0
        self.total_latency = 0.0
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        # One histogram per operation name (the stack's own, a handful).
        self.operations: dict[str, Histogram] = {}

    def timer(self, operation: str) -> Callable[[float], None]:
        """The recorder of one operation's latencies: one call per timed operation, with the
        histogram (and, for reads, the summary window) bound in advance."""
        histogram = self.operations.get(operation)
        if histogram is None:
            histogram = self.operations.setdefault(operation, Histogram())
        counts = histogram.counts
        bounds = LATENCY_BUCKETS
        if operation != "get" and operation != "get_many":

            def record(seconds: float) -> None:
                counts[bisect_left(bounds, seconds)] += 1
                histogram.sum += seconds

            return record
        latencies = self.latencies

        def record_read(seconds: float) -> None:
            counts[bisect_left(bounds, seconds)] += 1
            histogram.sum += seconds
            self.count += 1
            self.total_latency += seconds
            latencies.append(seconds)

        return record_read


class MetricsRecorder:
    """Mutable counters; plain attribute increments on the hot path."""

    def __init__(self, layer_names: list[str]) -> None:
        self.hits = 0
        self.misses = 0
        self.fetches = 0
        self.stale_hits = 0
        self.refreshes = 0
        self.write_failures = 0
        self.stampede_dedupes = 0
        self.backfills = 0
        self.evictions = 0
        self.errors = 0
        self.bus_sent = 0
        self.bus_received = 0
        self.bus_rejected = 0
        self.layers = {name: _LayerCounters() for name in layer_names}
        self.errors_by_operation: dict[str, int] = {}
        self.fetch_latency = Histogram()

    def timer(self, layer: str, operation: str) -> Callable[[float], None]:
        """The recorder of ``layer``'s ``operation`` latencies (see ``_LayerCounters``)."""
        return self.layers[layer].timer(operation)

    def error(self, operation: str | None) -> None:
        """Count one absorbed error, under its operation."""
        self.errors += 1
        name = operation or "unknown"
        counts = self.errors_by_operation
        if name not in counts and len(counts) >= MAX_ERROR_OPERATIONS:
            name = "other"
        counts[name] = counts.get(name, 0) + 1

    def reset(self) -> None:
        """Zero every counter."""
        for name in COUNTERS:
            setattr(self, name, 0)
        self.bus_sent = self.bus_received = self.bus_rejected = 0
        self.errors_by_operation = {}
        self.fetch_latency.reset()
        # Reset in place: the stack keeps references to the L1 counters on its hot path, and
        # timers to the histograms.
        for counters in self.layers.values():
            counters.hits = counters.misses = counters.count = 0
            counters.total_latency = 0.0
            counters.latencies.clear()
            for histogram in counters.operations.values():
                histogram.reset()

    def snapshot(self, extra_evictions: int = 0) -> CacheMetrics:
        """A frozen copy of the counters."""
        layers: dict[str, LayerMetrics] = {}
        for name, c in self.layers.items():
            ordered = sorted(c.latencies)
            if ordered:
                p50 = ordered[len(ordered) // 2]
                p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
            else:
                p50 = p99 = 0.0
            mean = c.total_latency / c.count if c.count else 0.0
            operations = {}
            for op, histogram in list(c.operations.items()):
                latency = histogram.snapshot()
                if latency.count:  # a timer made in advance for an operation not yet seen
                    operations[op] = latency
            layers[name] = LayerMetrics(
                c.hits, c.misses, LatencySummary(c.count, mean, p50, p99), operations
            )
        values = {name: getattr(self, name) for name in COUNTERS}
        values["evictions"] += extra_evictions
        return CacheMetrics(
            **values,
            layers=layers,
            errors_by_operation=dict(self.errors_by_operation),
            fetch_latency=self.fetch_latency.snapshot(),
            bus_sent=self.bus_sent,
            bus_received=self.bus_received,
            bus_rejected=self.bus_rejected,
        )

    def hit_rate(self) -> HitRate:
        """Overall and per-layer hit rates."""
        total = self.hits + self.misses
        layers = {
            name: (c.hits / (c.hits + c.misses) if c.hits + c.misses else 0.0)
            for name, c in self.layers.items()
        }
        return HitRate(self.hits / total if total else 0.0, layers)


@dataclass(frozen=True, slots=True)
class CacheInspectResult:
    """What the stack knows about one key (see :meth:`CacheStack.inspect`)."""

    key: str
    found_in_layers: list[str]
    fresh_ttl: float | None
    stale_ttl: float | None
    error_ttl: float | None
    is_stale: bool
    tags: tuple[str, ...]
