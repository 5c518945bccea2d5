"""Counters and per-layer latency, plus the result dataclasses of the observability API."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

__all__ = [
    "CacheInspectResult",
    "CacheMetrics",
    "CacheStats",
    "HitRate",
    "LatencySummary",
    "LayerHealth",
    "LayerMetrics",
    "LayerStatus",
    "MetricsRecorder",
]

# Latency percentiles come from the most recent samples of each layer (a bounded window).
LATENCY_WINDOW = 2_048
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
class LayerMetrics:
    """Hits, misses and latency of one layer."""

    hits: int
    misses: int
    latency: LatencySummary


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


@dataclass(frozen=True, slots=True)
class LayerStatus:
    """Whether a layer is local and until when (wall time) it is skipped as degraded."""

    name: str
    is_local: bool
    degraded_until: float | None = None


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Metrics plus layer status and the number of background refreshes running."""

    metrics: CacheMetrics
    layers: list[LayerStatus]
    background_refreshes: int = 0


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


class _LayerCounters:
    __slots__ = ("count", "hits", "latencies", "misses", "total_latency")

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self.count = 0
        self.total_latency = 0.0
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)


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
        self.layers = {name: _LayerCounters() for name in layer_names}

    def observe(self, layer: str, seconds: float) -> None:
        """Record one operation's latency for ``layer``."""
        counters = self.layers[layer]
        counters.count += 1
        counters.total_latency += seconds
        counters.latencies.append(seconds)

    def reset(self) -> None:
        """Zero every counter."""
        for name in COUNTERS:
            setattr(self, name, 0)
        # Reset in place: the stack keeps references to the L1 counters on its hot path.
        for counters in self.layers.values():
            counters.hits = counters.misses = counters.count = 0
            counters.total_latency = 0.0
            counters.latencies.clear()

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
            layers[name] = LayerMetrics(c.hits, c.misses, LatencySummary(c.count, mean, p50, p99))
        values = {name: getattr(self, name) for name in COUNTERS}
        values["evictions"] += extra_evictions
        return CacheMetrics(**values, layers=layers)

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
