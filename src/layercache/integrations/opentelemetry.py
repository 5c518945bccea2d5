"""OpenTelemetry: spans for cache operations and metrics read from ``get_stats()``.

```python
from opentelemetry import trace
from layercache import CacheStack, MemoryLayer, RedisLayer
from layercache.integrations.opentelemetry import instrument

cache = CacheStack([MemoryLayer(ttl=30), RedisLayer(url="redis://localhost:6379/0")])
handle = instrument(cache)                  # the global tracer and meter providers
tracer = trace.get_tracer("app")
with tracer.start_as_current_span("GET /users/42"):
    user = await cache.get("user:42", load_user)   # spans cache.get > cache.layer.get, cache.fetch
handle.uninstrument()                       # or uninstrument(cache)
```

``instrument()`` installs an :class:`~layercache.OperationTracer` on the stack
(``cache.set_tracer``) and registers observable instruments on the meter; ``uninstrument()``
puts the previous tracer back and withdraws the stack from the instruments (they report
nothing for it afterwards).

Sampling: by default (``root_spans=False``) a cache span is only created inside a *recording*
span (the surrounding request's trace, sampled in). With no SDK, a sampled-out trace, or no
span at all, a cache operation creates no span, and an L1 hit costs one look at the current
context (about 0.2 µs). ``root_spans=True`` also starts a trace at a cache operation that has
no surrounding span (the SDK's sampler then decides, at its cost, on every operation including
L1 hits). Keys go on spans (``cache.key``) only with ``record_keys=True``: keys can hold
personal data. See docs/opentelemetry.md for the span, attribute and metric tables.
"""

from __future__ import annotations

import contextvars
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from types import TracebackType
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics as otel_metrics
    from opentelemetry import trace as otel_trace
    from opentelemetry.context import Context
    from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
    from opentelemetry.trace import (
        INVALID_SPAN,
        Span,
        SpanKind,
        Status,
        StatusCode,
        Tracer,
        TracerProvider,
    )
except ImportError as exc:  # pragma: no cover - exercised by a test that hides opentelemetry
    raise ImportError(
        "layercache.integrations.opentelemetry needs opentelemetry-api: "
        "pip install 'layercache-py[otel]'"
    ) from exc

from .. import LATENCY_BUCKETS, CacheStats, OperationTracer, __version__

__all__ = ["Instrumentation", "instrument", "uninstrument"]

INSTRUMENTATION_NAME = "layercache"

# The key under which the OpenTelemetry API keeps the current span in a Context, found through
# the public API (the Context is a dict): reading it costs one dict lookup on the hot path
# instead of ``trace.get_current_span()``'s function calls and isinstance check.
_SPAN_KEY: str = next(iter(otel_trace.set_span_in_context(INVALID_SPAN, Context())))


def _context_reader() -> Callable[[], Context]:
    """The cheapest callable returning the current OpenTelemetry Context.

    ``opentelemetry.context.get_current()`` delegates to the runtime context, by default a
    ``ContextVar`` holder: reading that ``ContextVar`` directly saves two Python calls (about
    60 ns) on every L1 hit. It is used only after checking that it really returns what
    ``get_current()`` returns, before and while a probe context is attached; any other runtime
    context (``OTEL_PYTHON_CONTEXT``) or a future change of that attribute falls back to
    ``get_current``.
    """
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    var = getattr(runtime, "_current_context", None)
    if not isinstance(var, contextvars.ContextVar):
        return otel_context.get_current
    read: Callable[[], Context] = var.get
    try:
        if read() is not otel_context.get_current():
            return otel_context.get_current
        probe = Context({"layercache-probe": True})
        token = otel_context.attach(probe)
        try:
            same = read() is probe and otel_context.get_current() is probe
        finally:
            otel_context.detach(token)
    except Exception:  # pragma: no cover - an unexpected runtime context
        return otel_context.get_current
    return read if same else otel_context.get_current


_get_current: Callable[[], Context] = _context_reader()

_INTERNAL = SpanKind.INTERNAL
_CLIENT = SpanKind.CLIENT
_NULL: AbstractContextManager[None] = nullcontext()

# The operation scope the stack is inside (for outcome()), per task / thread.
_scope: contextvars.ContextVar[_OperationScope | None] = contextvars.ContextVar(
    "layercache_otel_scope", default=None
)

# Event names of the seam -> span event names; attribute names of their payloads -> span
# attribute names (``key`` only with record_keys).
_EVENT_NAMES = {
    "stale_serve": "cache.stale_serve",
    "stampede_dedupe": "cache.stampede_dedupe",
    "degraded": "cache.layer.degraded",
    "recovered": "cache.layer.recovered",
    "circuit_open": "cache.circuit.open",
    "circuit_closed": "cache.circuit.closed",
}
_EVENT_ATTRIBUTES = {
    "layer": "cache.layer",
    "state": "cache.stale.state",
    "operation": "cache.operation",
    "error": "error.message",
    "retry_after": "cache.retry_after",
}


def _attribute_value(value: Any) -> str | bool | int | float:
    if isinstance(value, (str, bool, int, float)):
        return value
    return repr(value) if isinstance(value, BaseException) else str(value)


class _SpanScope:
    """A span made current for the duration of a ``with`` block (exceptions recorded)."""

    __slots__ = ("_attributes", "_kind", "_name", "_token", "_tracer", "span")

    def __init__(
        self, tracer: Tracer, name: str, kind: SpanKind, attributes: dict[str, Any]
    ) -> None:
        self._tracer = tracer
        self._name = name
        self._kind = kind
        self._attributes = attributes
        self.span: Span | None = None
        self._token: object = None

    def __enter__(self) -> None:
        span = self._tracer.start_span(self._name, kind=self._kind, attributes=self._attributes)
        self.span = span
        self._token = otel_context.attach(otel_trace.set_span_in_context(span))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        otel_context.detach(self._token)  # type: ignore[arg-type]
        span = self.span
        if span is not None:
            if exc is not None:
                _record_error(span, exc)
            span.end()


def _record_error(span: Span, exc: BaseException) -> None:
    span.set_attribute("error.type", type(exc).__qualname__)
    if isinstance(exc, Exception):
        span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__qualname__}: {exc}"))


class _OperationScope:
    """One public operation below L1: its span (when recording), its outcome, its duration."""

    __slots__ = (
        "_began",
        "_counts",
        "_handle",
        "_key",
        "_layer",
        "_name",
        "_record",
        "_result",
        "_scope_token",
        "_span_scope",
        "_takes_outcome",
        "closed",
    )

    def __init__(
        self,
        handle: _CacheTracer,
        name: str,
        key: str | None,
        record: bool,
        takes_outcome: bool = True,
    ) -> None:
        self._handle = handle
        self._name = name
        self._key = key
        self._record = record
        self._takes_outcome = takes_outcome  # False for a fetch: outcome() is its operation's
        self._result: str | None = None
        self._layer: str | None = None
        self._counts: dict[str, int] | None = None
        self._span_scope: _SpanScope | None = None
        self._scope_token: contextvars.Token[_OperationScope | None] | None = None
        self._began = 0.0
        self.closed = False

    def outcome(self, result: str, layer: str | None) -> None:
        if self._result is None and self._counts is None:
            self._result, self._layer = result, layer
            return
        counts = self._counts
        if counts is None:
            # Several outcomes (get_many): counted per result instead of one result.
            counts = self._counts = {"hit": 0, "miss": 0, "stale": 0}
            assert self._result is not None
            counts[self._result] = counts.get(self._result, 0) + 1
            self._result = self._layer = None
        counts[result] = counts.get(result, 0) + 1

    def __enter__(self) -> None:
        handle = self._handle
        if self._record:
            attributes: dict[str, Any] = {
                "cache.operation": self._name.removeprefix("cache."),
            }
            if handle.record_keys and self._key is not None:
                attributes["cache.key"] = self._key
            scope = _SpanScope(handle.tracer, self._name, _INTERNAL, attributes)
            scope.__enter__()
            self._span_scope = scope
        if self._takes_outcome:
            self._scope_token = _scope.set(self)
        self._began = time.perf_counter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        duration = time.perf_counter() - self._began
        self.closed = True
        if self._scope_token is not None:
            _scope.reset(self._scope_token)
        handle = self._handle
        attributes: dict[str, Any] = {
            "cache.stack": handle.stack_name,
            "cache.operation": self._name.removeprefix("cache."),
        }
        result = self._result
        if result is not None:
            attributes["cache.result"] = result
        if exc is not None:
            attributes["error.type"] = type(exc).__qualname__
        histogram = handle.duration
        if histogram is not None:
            histogram.record(duration, attributes)
        scope = self._span_scope
        if scope is not None and scope.span is not None:
            span = scope.span
            if result is not None:
                span.set_attribute("cache.result", result)
                span.set_attribute("cache.hit", result != "miss")
                if self._layer is not None:
                    span.set_attribute("cache.layer", self._layer)
            elif self._counts is not None:
                for name, count in self._counts.items():
                    span.set_attribute(f"cache.{name}_count", count)
            scope.__exit__(exc_type, exc, tb)


class _CacheTracer:
    """The :class:`~layercache.OperationTracer` that :func:`instrument` installs."""

    __slots__ = (
        "__weakref__",
        "_hit_attributes",
        "duration",
        "handle",
        "record_keys",
        "root_spans",
        "stack_name",
        "tracer",
    )

    def __init__(
        self,
        tracer: Tracer,
        *,
        record_keys: bool,
        root_spans: bool,
        stack_name: str,
    ) -> None:
        self.tracer = tracer
        self.record_keys = record_keys
        self.root_spans = root_spans
        self.stack_name = stack_name
        self.duration: Any = None  # the hub's histogram, set by instrument()
        self.handle: Instrumentation | None = None
        self._hit_attributes: dict[str, dict[str, Any]] = {}

    def _recording(self) -> bool:
        """Whether to create a span now (below L1 only): inside a recording span, inside a
        local span that was sampled and has ended since, or with no span when root_spans.

        The ended span is the case of background work (a stale-while-revalidate refresh, a
        write-behind flush) started by a traced operation: the task's context still holds the
        operation's span, and the work joins its trace. A sampled-out span (not sampled) and a
        remote parent with no local span (``is_remote``) get no cache spans.
        """
        span: Any = _get_current().get(_SPAN_KEY)
        if span is None:
            return self.root_spans
        if span.is_recording():
            return True
        context = span.get_span_context()
        return bool(context.trace_flags.sampled and not context.is_remote)

    # -- the hot path --------------------------------------------------------------------

    def l1_hit(self, key: str, layer: str) -> None:
        span = _get_current().get(_SPAN_KEY)
        if span is None:
            if not self.root_spans:
                return
        elif not span.is_recording():  # type: ignore[attr-defined]
            return
        attributes = self._hit_attributes.get(layer)
        if attributes is None:
            attributes = self._hit_attributes[layer] = {
                "cache.operation": "get",
                "cache.result": "hit",
                "cache.hit": True,
                "cache.layer": layer,
            }
        if self.record_keys:
            attributes = {**attributes, "cache.key": key}
        self.tracer.start_span("cache.get", kind=_INTERNAL, attributes=attributes).end()

    # -- below L1 ------------------------------------------------------------------------

    def operation(self, name: str, key: str | None) -> AbstractContextManager[None]:
        return _OperationScope(self, name, key, self._recording())

    def fetch(self, key: str) -> AbstractContextManager[None]:
        return _OperationScope(self, "cache.fetch", key, self._recording(), False)

    def layer_call(self, layer: str, operation: str) -> AbstractContextManager[None]:
        if not self._recording():
            return _NULL
        return _SpanScope(
            self.tracer,
            f"cache.layer.{operation}",
            _CLIENT,
            {"cache.layer": layer, "cache.operation": operation},
        )

    def outcome(self, result: str, layer: str | None) -> None:
        scope = _scope.get()
        if scope is not None and not scope.closed:
            scope.outcome(result, layer)

    def event(self, name: str, attributes: Mapping[str, Any]) -> None:
        span = _get_current().get(_SPAN_KEY)
        if span is None or not span.is_recording():  # type: ignore[attr-defined]
            return
        converted: dict[str, str | bool | int | float] = {}
        for field, value in attributes.items():
            if value is None:
                continue
            if field == "key":
                if self.record_keys:
                    converted["cache.key"] = _attribute_value(value)
                continue
            converted[_EVENT_ATTRIBUTES.get(field, f"cache.{field}")] = _attribute_value(value)
        span.add_event(_EVENT_NAMES.get(name, f"cache.{name}"), converted)  # type: ignore[attr-defined]


# -- metrics ----------------------------------------------------------------------------------


def _layer_attrs(stack: str, layer: str) -> dict[str, str]:
    return {"cache.stack": stack, "cache.layer": layer}


class _MeterHub:
    """The instruments of one meter, shared by every stack instrumented with it.

    OpenTelemetry has no way to remove an observable instrument or its callback, so the
    instruments are created once per meter and their callbacks report the stacks that are
    instrumented *now*: uninstrumenting a stack withdraws it from them.
    """

    def __init__(self, meter: Meter) -> None:
        self.lock = threading.Lock()
        self.sources: dict[str, Instrumentation] = {}
        self.duration = meter.create_histogram(
            "cache.operation.duration",
            unit="s",
            description="Duration of cache operations that go beyond the in-process layer "
            "(L1 misses, writes, invalidations) and of origin fetches",
            explicit_bucket_boundaries_advisory=list(LATENCY_BUCKETS),
        )
        counters: list[tuple[str, str, str, str]] = [
            ("cache.hits", "{hit}", "hits", "Reads answered from a layer"),
            ("cache.misses", "{miss}", "misses", "Reads that found no usable value"),
            ("cache.fetches", "{fetch}", "fetches", "Origin fetches (fetcher calls)"),
            ("cache.stale_hits", "{hit}", "stale_hits", "Stale values served"),
            ("cache.refreshes", "{refresh}", "refreshes", "Background refreshes run"),
            ("cache.stampede_dedupes", "{request}", "stampede_dedupes", "Waits on a running fetch"),
            ("cache.backfills", "{write}", "backfills", "Faster layers filled from a slower one"),
            ("cache.evictions", "{entry}", "evictions", "Entries evicted from a bounded layer"),
            ("cache.write_failures", "{write}", "write_failures", "Layer writes that failed"),
        ]
        for name, unit, field, description in counters:
            meter.create_observable_counter(
                name, [self._metric_callback(field)], unit=unit, description=description
            )
        meter.create_observable_counter(
            "cache.errors",
            [self._errors],
            unit="{error}",
            description="Errors absorbed or raised, by operation",
        )
        meter.create_observable_counter(
            "cache.layer.hits", [self._layer_hits], unit="{hit}", description="Hits per layer"
        )
        meter.create_observable_counter(
            "cache.layer.misses",
            [self._layer_misses],
            unit="{miss}",
            description="Misses per layer",
        )
        meter.create_observable_counter(
            "cache.bus.messages",
            [self._bus_messages],
            unit="{message}",
            description="Invalidation bus messages by direction (sent, received, rejected)",
        )
        meter.create_observable_counter(
            "cache.single_flight.events",
            [self._single_flight],
            unit="{event}",
            description="Distributed single-flight: leases acquired, waits, takeovers, "
            "timeouts, shared hits, degraded",
        )
        meter.create_observable_up_down_counter(
            "cache.fetches.in_flight",
            [self._in_flight],
            unit="{fetch}",
            description="Origin fetches running now",
        )
        meter.create_observable_up_down_counter(
            "cache.background_refreshes",
            [self._background],
            unit="{refresh}",
            description="Background refreshes (stale or refresh-ahead) running now",
        )
        meter.create_observable_gauge(
            "cache.layer.degraded",
            [self._degraded],
            unit="1",
            description="1 from a layer's failure until it has recovered (graceful degradation)",
        )
        meter.create_observable_up_down_counter(
            "cache.layer.pending_replay",
            [self._pending_replay],
            unit="{key}",
            description="Missed operations waiting to be replayed to a degraded layer",
        )
        meter.create_observable_up_down_counter(
            "cache.circuits.open",
            [self._open_circuits],
            unit="{key}",
            description="Keys whose circuit breaker is open or half-open",
        )
        meter.create_observable_up_down_counter(
            "cache.tag_index.keys",
            [self._tag_index],
            unit="{key}",
            description="Keys in the in-process tag index",
        )

    def _stats(self) -> Iterator[tuple[str, CacheStats]]:
        with self.lock:
            sources = list(self.sources.values())
        for source in sources:
            stats = source.stats()
            if stats is not None:
                yield source.name, stats

    def _metric_callback(self, field: str) -> Any:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            for stack, stats in self._stats():
                yield Observation(getattr(stats.metrics, field), {"cache.stack": stack})

        return callback

    def _errors(self, options: CallbackOptions) -> Iterable[Observation]:
        for stack, stats in self._stats():
            by_operation = dict(stats.metrics.errors_by_operation)
            for operation, count in by_operation.items():
                yield Observation(count, {"cache.stack": stack, "cache.operation": operation})

    def _layer_hits(self, options: CallbackOptions) -> Iterable[Observation]:
        for stack, stats in self._stats():
            for layer, figures in stats.metrics.layers.items():
                yield Observation(figures.hits, _layer_attrs(stack, layer))

    def _layer_misses(self, options: CallbackOptions) -> Iterable[Observation]:
        for stack, stats in self._stats():
            for layer, figures in stats.metrics.layers.items():
                yield Observation(figures.misses, _layer_attrs(stack, layer))

    def _bus_messages(self, options: CallbackOptions) -> Iterable[Observation]:
        for stack, stats in self._stats():
            if stats.bus is None:
                continue
            metrics = stats.metrics
            for direction, count in (
                ("sent", metrics.bus_sent),
                ("received", metrics.bus_received),
                ("rejected", metrics.bus_rejected),
            ):
                yield Observation(count, {"cache.stack": stack, "cache.bus.direction": direction})

    def _single_flight(self, options: CallbackOptions) -> Iterable[Observation]:
        for stack, stats in self._stats():
            flight = stats.single_flight
            if not flight.distributed:
                continue
            for kind, count in (
                ("acquired", flight.acquired),
                ("wait", flight.waits),
                ("takeover", flight.takeovers),
                ("timeout", flight.timeouts),
                ("shared_hit", flight.shared_hits),
                ("degraded", flight.degraded),
            ):
                yield Observation(count, {"cache.stack": stack, "cache.single_flight.event": kind})

    def _in_flight(self, options: CallbackOptions) -> Iterable[Observation]:
        for stack, stats in self._stats():
            yield Observation(stats.in_flight_fetches, {"cache.stack": stack})

    def _background(self, options: CallbackOptions) -> Iterable[Observation]:
        for stack, stats in self._stats():
            yield Observation(stats.background_refreshes, {"cache.stack": stack})

    def _degraded(self, options: CallbackOptions) -> Iterable[Observation]:
        for stack, stats in self._stats():
            for status in stats.layers:
                # degraded_until stays set from the failure until the layer has recovered
                # (past it the layer is only being retried).
                degraded = status.degraded_until is not None
                yield Observation(1 if degraded else 0, _layer_attrs(stack, status.name))

    def _pending_replay(self, options: CallbackOptions) -> Iterable[Observation]:
        for stack, stats in self._stats():
            for status in stats.layers:
                yield Observation(status.pending_replay, _layer_attrs(stack, status.name))

    def _open_circuits(self, options: CallbackOptions) -> Iterable[Observation]:
        for stack, stats in self._stats():
            yield Observation(stats.open_circuits, {"cache.stack": stack})

    def _tag_index(self, options: CallbackOptions) -> Iterable[Observation]:
        for stack, stats in self._stats():
            if stats.tag_index_keys is not None:
                yield Observation(stats.tag_index_keys, {"cache.stack": stack})


_hubs: weakref.WeakKeyDictionary[Meter, _MeterHub] = weakref.WeakKeyDictionary()
_hubs_lock = threading.Lock()


def _hub(meter: Meter) -> _MeterHub:
    with _hubs_lock:
        hub = _hubs.get(meter)
        if hub is None:
            hub = _hubs[meter] = _MeterHub(meter)
        return hub


# -- the public surface -----------------------------------------------------------------------


class Instrumentation:
    """What :func:`instrument` did to one stack; :meth:`uninstrument` undoes it."""

    def __init__(
        self,
        cache: Any,
        tracer: _CacheTracer,
        previous: OperationTracer | None,
        hub: _MeterHub,
        name: str,
    ) -> None:
        # Weakly: the meter's instruments hold this handle while it is active, and must not
        # keep a stack alive that the application dropped without uninstrumenting it.
        self._cache: weakref.ref[Any] = weakref.ref(cache)
        self._tracer = tracer
        self._previous = previous
        self._hub = hub
        self.name = name
        self._active = True

    @property
    def cache(self) -> Any:
        """The instrumented stack (``None`` once it was garbage collected)."""
        return self._cache()

    @property
    def active(self) -> bool:
        """Whether the stack is still instrumented by this handle."""
        return self._active

    @property
    def record_keys(self) -> bool:
        """Whether spans carry ``cache.key``."""
        return self._tracer.record_keys

    @property
    def root_spans(self) -> bool:
        """Whether cache operations start traces of their own (no surrounding span)."""
        return self._tracer.root_spans

    def stats(self) -> CacheStats | None:
        """The stack's ``get_stats()`` while instrumented and open, else ``None`` (for the
        metrics: a closed or garbage-collected stack leaves them)."""
        cache = self._cache() if self._active else None
        if cache is None or cache.closed:
            return None
        stats: CacheStats = cache.get_stats()
        return stats

    def uninstrument(self) -> None:
        """Put back the tracer the stack had before and withdraw it from the metrics.

        Idempotent. If another tracer replaced this one on the stack in the meantime, that
        tracer is left in place.
        """
        if not self._active:
            return
        self._active = False
        with self._hub.lock:
            if self._hub.sources.get(self.name) is self:
                del self._hub.sources[self.name]
        cache = self._cache()
        if cache is not None and cache.tracer is self._tracer:
            cache.set_tracer(self._previous)
        self._tracer.handle = None


def instrument(
    cache: Any,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    *,
    record_keys: bool = False,
    root_spans: bool = False,
    name: str = "default",
) -> Instrumentation:
    """Trace ``cache`` (a :class:`~layercache.CacheStack` or
    :class:`~layercache.SyncCacheStack`) and report its statistics as metrics.

    Args:
        cache: The stack.
        tracer_provider: Where spans go (default: the global provider, also one set later).
        meter_provider: Where metrics go (default: the global provider).
        record_keys: Put the key on spans and span events (``cache.key``). Off by default:
            keys can hold personal data.
        root_spans: Also trace cache operations that run outside any span (each one a trace
            of its own, subject to the sampler). Off by default: cache spans only join a
            recording surrounding span.
        name: The ``cache.stack`` attribute of this stack's metrics; distinct per meter when
            several stacks are instrumented in one process.

    Raises:
        ValueError: The stack is already instrumented, or ``name`` is taken on this meter.
    """
    if not callable(getattr(cache, "set_tracer", None)) or not callable(
        getattr(cache, "get_stats", None)
    ):
        raise TypeError(f"cache must be a CacheStack or SyncCacheStack, not {cache!r}")
    current = cache.tracer
    if isinstance(current, _CacheTracer):
        raise ValueError("this cache stack is already instrumented (uninstrument() it first)")
    if not isinstance(name, str) or not name:
        raise ValueError("name must be a non-empty string")
    tracer = otel_trace.get_tracer(
        INSTRUMENTATION_NAME, __version__, tracer_provider=tracer_provider
    )
    meter = otel_metrics.get_meter(INSTRUMENTATION_NAME, __version__, meter_provider=meter_provider)
    hub = _hub(meter)
    cache_tracer = _CacheTracer(
        tracer, record_keys=bool(record_keys), root_spans=bool(root_spans), stack_name=name
    )
    cache_tracer.duration = hub.duration
    with hub.lock:
        taken = hub.sources.get(name)
        if taken is not None and taken.cache is not None:
            raise ValueError(
                f"a stack named {name!r} is already instrumented on this meter: "
                "pass instrument(..., name=...) to tell the stacks apart"
            )
        handle = Instrumentation(cache, cache_tracer, current, hub, name)
        hub.sources[name] = handle
    cache_tracer.handle = handle
    try:
        handle._previous = cache.set_tracer(cache_tracer)
    except BaseException:
        with hub.lock:
            del hub.sources[name]
        raise
    return handle


def uninstrument(cache: Any) -> None:
    """Undo :func:`instrument` on ``cache`` (``ValueError`` if it is not instrumented)."""
    current = cache.tracer
    if not isinstance(current, _CacheTracer) or current.handle is None:
        raise ValueError("this cache stack is not instrumented")
    current.handle.uninstrument()
