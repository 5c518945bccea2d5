"""layercache.integrations.opentelemetry against the real OpenTelemetry SDK.

Spans come from an SDK ``TracerProvider`` with a ``SimpleSpanProcessor`` into an
``InMemorySpanExporter``; metrics from a ``MeterProvider`` read by an ``InMemoryMetricReader``.
The remote layer is a real ``redis-server`` (tests/conftest.py), cut through the loopback
``TcpProxy`` for the degradation tests. The no-SDK case runs in a subprocess, so the global
providers of this test process are never set.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    Tracer,
    use_span,
)

from _redis_server import RedisServer
from _tcp_proxy import TcpProxy
from layercache import CacheStack, CircuitBreaker, MemoryLayer, SyncCacheStack
from layercache.integrations.opentelemetry import Instrumentation, instrument, uninstrument
from layercache.redis import RedisLayer

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "otel-test:"
DEADLINE = 10.0


@dataclass
class Otel:
    """An SDK tracer provider with an in-memory exporter, and a meter provider with a reader."""

    provider: TracerProvider
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    meters: MeterProvider

    @property
    def app(self) -> Tracer:
        """The application's tracer (its spans are the parents of the cache's spans)."""
        return self.provider.get_tracer("app")

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.spans() if span.name == name]

    def cache_spans(self) -> list[ReadableSpan]:
        return [span for span in self.spans() if span.name.startswith("cache.")]

    def metrics(self) -> dict[str, list[tuple[dict[str, Any], Any]]]:
        """Metric name -> [(attributes, value or histogram point)] from one collection."""
        out: dict[str, list[tuple[dict[str, Any], Any]]] = {}
        data = self.reader.get_metrics_data()
        if data is None:
            return out
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    points = out.setdefault(metric.name, [])
                    for point in metric.data.data_points:
                        value = getattr(point, "value", point)
                        points.append((dict(point.attributes or {}), value))
        return out


def _make_otel(**provider_kwargs: Any) -> Otel:
    provider = TracerProvider(**provider_kwargs)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    return Otel(provider, exporter, reader, MeterProvider(metric_readers=[reader]))


@pytest.fixture
def otel() -> Iterator[Otel]:
    made = _make_otel()
    try:
        yield made
    finally:
        made.provider.shutdown()
        made.meters.shutdown()


@pytest.fixture
async def redis_stack(redis_clean: RedisServer) -> AsyncIterator[CacheStack]:
    """memory + a real Redis layer."""
    cache = CacheStack(
        [MemoryLayer(ttl=60), RedisLayer(url=redis_clean.url, prefix=PREFIX, ttl=600)]
    )
    try:
        yield cache
    finally:
        await cache.aclose()


def _children(otel: Otel, parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    return [
        span
        for span in otel.spans()
        if span.parent is not None and span.parent.span_id == parent.context.span_id
    ]


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def _all_attribute_values(otel: Otel) -> list[Any]:
    values: list[Any] = []
    for span in otel.spans():
        values.extend(_attrs(span).values())
        for event in span.events:
            values.extend(dict(event.attributes or {}).values())
    return values


def _events(otel: Otel, name: str) -> list[tuple[ReadableSpan, dict[str, Any]]]:
    return [
        (span, dict(event.attributes or {}))
        for span in otel.spans()
        for event in span.events
        if event.name == name
    ]


# -- spans ------------------------------------------------------------------------------------


@pytest.mark.redis
async def test_miss_with_fetcher_inside_a_parent_span(otel: Otel, redis_stack: CacheStack) -> None:
    instrument(redis_stack, otel.provider, otel.meters)
    calls: list[str] = []

    async def load() -> dict[str, int]:
        calls.append("load")
        return {"id": 42}

    with otel.app.start_as_current_span("request"):
        assert await redis_stack.get("user:42", load) == {"id": 42}
    assert calls == ["load"]

    (request,) = otel.named("request")
    (get,) = _children(otel, request)
    assert get.name == "cache.get"
    assert get.kind is SpanKind.INTERNAL
    assert _attrs(get)["cache.operation"] == "get"
    assert _attrs(get)["cache.result"] == "miss"
    assert _attrs(get)["cache.hit"] is False
    assert get.status.status_code is StatusCode.UNSET

    inner = _children(otel, get)
    names = sorted(span.name for span in inner)
    assert "cache.fetch" in names
    assert "cache.layer.get" in names  # the Redis read that missed
    assert any(name.startswith("cache.layer.set") for name in names)  # the store
    (fetch,) = [span for span in inner if span.name == "cache.fetch"]
    assert fetch.kind is SpanKind.INTERNAL
    for layer_span in (span for span in inner if span.name.startswith("cache.layer.")):
        assert layer_span.kind is SpanKind.CLIENT
        assert _attrs(layer_span)["cache.layer"] == "redis"
    # The memory layer is in-process: no layer span for it.
    assert all(_attrs(span).get("cache.layer") != "memory" for span in inner)
    # The key is not recorded by default.
    assert all("cache.key" not in _attrs(span) for span in otel.spans())
    assert "user:42" not in _all_attribute_values(otel)


@pytest.mark.redis
async def test_l2_hit_records_the_layer(
    otel: Otel, redis_stack: CacheStack, redis_clean: RedisServer
) -> None:
    await redis_stack.set("user:7", "seven")
    # A second stack on the same Redis: its memory layer is empty, so the read hits Redis.
    other = CacheStack(
        [MemoryLayer(ttl=60), RedisLayer(url=redis_clean.url, prefix=PREFIX, ttl=600)]
    )
    try:
        instrument(other, otel.provider, otel.meters)
        with otel.app.start_as_current_span("request"):
            assert await other.get("user:7") == "seven"
    finally:
        await other.aclose()
    (request,) = otel.named("request")
    (get,) = _children(otel, request)
    assert _attrs(get)["cache.result"] == "hit"
    assert _attrs(get)["cache.hit"] is True
    assert _attrs(get)["cache.layer"] == "redis"
    assert [span.name for span in _children(otel, get)].count("cache.layer.get") == 1


@pytest.mark.redis
async def test_bulk_writes_and_invalidations(otel: Otel, redis_stack: CacheStack) -> None:
    instrument(redis_stack, otel.provider, otel.meters)
    with otel.app.start_as_current_span("request"):
        await redis_stack.set_many([("x", 1), ("y", 2)])
        await redis_stack.delete_many(["x", "y"])
        await redis_stack.invalidate_by_prefix("p:")
        await redis_stack.clear()
    (request,) = otel.named("request")
    operations = _children(otel, request)
    assert [span.name for span in operations] == [
        "cache.set_many",
        "cache.delete",
        "cache.invalidate",
        "cache.clear",
    ]
    for span in operations:
        assert span.kind is SpanKind.INTERNAL
        assert "cache.key" not in _attrs(span)
        layer_calls = _children(otel, span)
        assert layer_calls, span.name
        for call in layer_calls:
            assert call.kind is SpanKind.CLIENT
            assert call.name == f"cache.layer.{_attrs(call)['cache.operation']}"
            assert _attrs(call)["cache.layer"] == "redis"
    assert {c.name for c in _children(otel, operations[0])} == {"cache.layer.set_many"}
    assert {c.name for c in _children(otel, operations[3])} == {"cache.layer.clear"}


@pytest.mark.redis
async def test_record_keys_puts_the_key_on_spans(otel: Otel, redis_stack: CacheStack) -> None:
    handle = instrument(redis_stack, otel.provider, otel.meters, record_keys=True)
    assert handle.record_keys is True

    async def load() -> str:
        return "v"

    with otel.app.start_as_current_span("request"):
        await redis_stack.get("user:1", load)
        await redis_stack.get("user:1")  # L1 hit
    get_spans = otel.named("cache.get")
    assert len(get_spans) == 2
    assert all(_attrs(span)["cache.key"] == "user:1" for span in get_spans)
    (fetch,) = otel.named("cache.fetch")
    assert _attrs(fetch)["cache.key"] == "user:1"


async def test_l1_hit_is_a_short_child_span(otel: Otel) -> None:
    cache = CacheStack([MemoryLayer(ttl=60)])
    instrument(cache, otel.provider, otel.meters)
    await cache.set("k", 1)
    otel.exporter.clear()
    with otel.app.start_as_current_span("request"):
        assert await cache.get("k") == 1
    (request,) = otel.named("request")
    (hit,) = _children(otel, request)
    assert hit.name == "cache.get"
    assert hit.kind is SpanKind.INTERNAL
    assert _attrs(hit) == {
        "cache.operation": "get",
        "cache.result": "hit",
        "cache.hit": True,
        "cache.layer": "memory",
    }
    assert _children(otel, hit) == []
    await cache.aclose()


@pytest.mark.redis
async def test_no_spans_without_a_parent_unless_root_spans(
    otel: Otel, redis_stack: CacheStack
) -> None:
    handle = instrument(redis_stack, otel.provider, otel.meters)
    assert handle.root_spans is False

    async def load() -> str:
        return "v"

    await redis_stack.get("a", load)  # miss, fetch, Redis calls
    await redis_stack.get("a")  # L1 hit
    await redis_stack.set("b", 1)
    await redis_stack.delete("b")
    assert otel.spans() == []
    # The duration histogram is recorded whether or not a span was (metrics ignore sampling).
    durations = otel.metrics()["cache.operation.duration"]
    operations = {attrs["cache.operation"] for attrs, _ in durations}
    assert {"get", "fetch", "set", "delete"} <= operations

    handle.uninstrument()
    instrument(redis_stack, otel.provider, otel.meters, root_spans=True)
    await redis_stack.get("c", load)
    await redis_stack.get("c")
    roots = [span for span in otel.spans() if span.parent is None]
    assert [span.name for span in roots] == ["cache.get", "cache.get"]
    assert _attrs(roots[0])["cache.result"] == "miss"
    assert _attrs(roots[1])["cache.hit"] is True
    assert {span.name for span in _children(otel, roots[0])} >= {"cache.fetch", "cache.layer.get"}


@pytest.mark.redis
async def test_fetcher_exception_is_recorded(otel: Otel, redis_stack: CacheStack) -> None:
    instrument(redis_stack, otel.provider, otel.meters)

    async def broken() -> str:
        raise LookupError("origin down")

    with pytest.raises(LookupError), otel.app.start_as_current_span("request"):
        await redis_stack.get("k", broken)

    (fetch,) = otel.named("cache.fetch")
    (get,) = otel.named("cache.get")
    for span in (fetch, get):
        assert span.status.status_code is StatusCode.ERROR
        assert _attrs(span)["error.type"] == "LookupError"
        (event,) = [event for event in span.events if event.name == "exception"]
        assert dict(event.attributes or {})["exception.type"] == "LookupError"
        assert dict(event.attributes or {})["exception.message"] == "origin down"
    error_durations = [
        attrs for attrs, _ in otel.metrics()["cache.operation.duration"] if "error.type" in attrs
    ]
    assert {attrs["cache.operation"] for attrs in error_durations} == {"get", "fetch"}


async def test_stale_serve_event(otel: Otel) -> None:
    cache = CacheStack([MemoryLayer(ttl=60)])
    instrument(cache, otel.provider, otel.meters, record_keys=True)
    refreshed = asyncio.Event()

    async def first() -> str:
        return "old"

    async def second() -> str:
        refreshed.set()
        return "new"

    await cache.get("k", first, ttl=0.05, stale_while_revalidate=30)
    deadline = time.monotonic() + DEADLINE
    while True:
        info = await cache.inspect("k")
        assert info is not None
        if info.is_stale:
            break
        assert time.monotonic() < deadline, "the entry never became stale"
        await asyncio.sleep(0.01)
    otel.exporter.clear()
    with otel.app.start_as_current_span("request"):
        assert await cache.get("k", second, ttl=60, stale_while_revalidate=30) == "old"
    await asyncio.wait_for(refreshed.wait(), DEADLINE)

    ((span, attributes),) = _events(otel, "cache.stale_serve")
    assert span.name == "cache.get"
    assert attributes["cache.layer"] == "memory"
    assert attributes["cache.key"] == "k"
    assert "cache.stale.state" in attributes
    assert _attrs(span)["cache.result"] == "stale"
    assert _attrs(span)["cache.layer"] == "memory"
    # The background refresh runs after the request's spans ended; it joins their trace as a
    # child of the cache.get that started it.
    deadline = time.monotonic() + DEADLINE
    while not otel.named("cache.fetch"):
        assert time.monotonic() < deadline, "the background refresh made no span"
        await asyncio.sleep(0.01)
    (fetch,) = otel.named("cache.fetch")
    assert fetch.parent is not None
    assert span.context is not None
    assert fetch.parent.span_id == span.context.span_id
    assert fetch.context is not None
    assert fetch.context.trace_id == span.context.trace_id
    await cache.aclose()


def test_sync_stack_background_refresh_joins_the_request_trace(otel: Otel) -> None:
    """The thread stack runs a background refresh on a worker thread in the caller's context,
    so the refresh's cache.fetch is a child of the cache.get that served the stale value."""
    cache = SyncCacheStack([MemoryLayer(ttl=60)])
    instrument(cache, otel.provider, otel.meters)
    refreshed = threading.Event()

    def second() -> str:
        refreshed.set()
        return "new"

    try:
        cache.get("k", lambda: "old", ttl=0.05, stale_while_revalidate=30)
        deadline = time.monotonic() + DEADLINE
        while not (info := cache.inspect("k")) or not info.is_stale:
            assert time.monotonic() < deadline, "the entry never became stale"
            time.sleep(0.01)
        otel.exporter.clear()
        with otel.app.start_as_current_span("request"):
            assert cache.get("k", second, ttl=60, stale_while_revalidate=30) == "old"
        assert refreshed.wait(DEADLINE)
        deadline = time.monotonic() + DEADLINE
        while not otel.named("cache.fetch"):
            assert time.monotonic() < deadline, "the background refresh made no span"
            time.sleep(0.01)
        (get,) = otel.named("cache.get")
        (fetch,) = otel.named("cache.fetch")
        assert fetch.parent is not None
        assert get.context is not None
        assert fetch.parent.span_id == get.context.span_id
    finally:
        cache.close()


async def test_get_many_span_counts_hits_and_misses(otel: Otel, redis_stack: CacheStack) -> None:
    await redis_stack.set_many([("a", 1), ("b", 2)])
    instrument(redis_stack, otel.provider, otel.meters)
    with otel.app.start_as_current_span("request"):
        assert await redis_stack.get_many(["a", "b", "absent"]) == [1, 2, None]
    (span,) = otel.named("cache.get_many")
    attributes = _attrs(span)
    assert attributes["cache.hit_count"] == 2
    assert attributes["cache.miss_count"] == 1


@pytest.mark.redis
async def test_degradation_and_recovery_events(
    otel: Otel, redis_proxy: TcpProxy, redis_clean: RedisServer
) -> None:
    cache = CacheStack(
        [
            MemoryLayer(ttl=60),
            RedisLayer(url=redis_proxy.url, prefix=PREFIX, ttl=600, socket_timeout=0.5),
        ],
        graceful_degradation={"retry_after": 0.2},
    )
    instrument(cache, otel.provider, otel.meters)

    async def load() -> str:
        return "v"

    try:
        await cache.set("warm", 1)  # connected
        redis_proxy.cut("refuse")
        with otel.app.start_as_current_span("request"):
            assert await cache.get("k", load) == "v"
        ((_span, attributes),) = _events(otel, "cache.layer.degraded")
        assert attributes["cache.layer"] == "redis"
        assert attributes["cache.retry_after"] == pytest.approx(0.2)
        assert "error.message" in attributes
        failed = [s for s in otel.spans() if s.name.startswith("cache.layer.")]
        assert failed
        assert all(s.status.status_code is StatusCode.ERROR for s in failed)
        (get,) = otel.named("cache.get")
        assert get.status.status_code is StatusCode.UNSET  # the read itself succeeded
        degraded = {
            attrs["cache.layer"]: value for attrs, value in otel.metrics()["cache.layer.degraded"]
        }
        assert degraded == {"memory": 0, "redis": 1}

        redis_proxy.restore()
        deadline = time.monotonic() + DEADLINE
        n = 0
        while not _events(otel, "cache.layer.recovered"):
            assert time.monotonic() < deadline, "no recovery event"
            n += 1
            with otel.app.start_as_current_span("retry"):
                await cache.get(f"r{n}", load)
            await asyncio.sleep(0.05)
        ((_, attributes),) = _events(otel, "cache.layer.recovered")
        assert attributes == {"cache.layer": "redis"}
    finally:
        redis_proxy.restore()
        await cache.aclose()


async def test_circuit_events(otel: Otel) -> None:
    cache = CacheStack([MemoryLayer(ttl=60)])
    instrument(cache, otel.provider, otel.meters)

    async def broken() -> str:
        raise RuntimeError("no")

    with otel.app.start_as_current_span("request"), pytest.raises(RuntimeError):
        await cache.get(
            "k", broken, circuit_breaker=CircuitBreaker(failure_threshold=1, cooldown=60)
        )
    names = {name for span in otel.spans() for name in (e.name for e in span.events)}
    assert "cache.circuit.open" in names
    await cache.aclose()


async def test_stampede_dedupe_event(otel: Otel) -> None:
    cache = CacheStack([MemoryLayer(ttl=60)])
    instrument(cache, otel.provider, otel.meters)
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow() -> str:
        started.set()
        await release.wait()
        return "v"

    async def caller(name: str) -> Any:
        with otel.app.start_as_current_span(name):
            return await cache.get("k", slow)

    first = asyncio.create_task(caller("first"))
    await asyncio.wait_for(started.wait(), DEADLINE)
    second = asyncio.create_task(caller("second"))
    deadline = time.monotonic() + DEADLINE
    while cache.get_metrics().stampede_dedupes == 0:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)
    release.set()
    assert list(await asyncio.wait_for(asyncio.gather(first, second), DEADLINE)) == ["v", "v"]
    ((span, attributes),) = _events(otel, "cache.stampede_dedupe")
    assert span.name == "cache.get"
    assert "cache.key" not in attributes
    (second_request,) = otel.named("second")
    assert span.parent is not None
    assert second_request.context is not None
    assert span.parent.span_id == second_request.context.span_id
    await cache.aclose()


# -- instrument / uninstrument ----------------------------------------------------------------


class RecordingTracer:
    """A minimal OperationTracer of the test's own (the "previous" tracer to restore)."""

    def __init__(self) -> None:
        self.hits: list[str] = []

    def operation(self, name: str, key: str | None) -> Any:
        return _null()

    def layer_call(self, layer: str, operation: str) -> Any:
        return _null()

    def fetch(self, key: str) -> Any:
        return _null()

    def l1_hit(self, key: str, layer: str) -> None:
        self.hits.append(key)

    def outcome(self, result: str, layer: str | None) -> None:
        pass

    def event(self, name: str, attributes: Any) -> None:
        pass


def _null() -> Any:
    import contextlib

    return contextlib.nullcontext()


async def test_uninstrument_restores_the_stack(otel: Otel) -> None:
    cache = CacheStack([MemoryLayer(ttl=60)])
    previous = RecordingTracer()
    cache.set_tracer(previous)
    handle = instrument(cache, otel.provider, otel.meters)
    assert isinstance(handle, Instrumentation)
    assert cache.tracer is not previous
    with pytest.raises(ValueError, match="already instrumented"):
        instrument(cache, otel.provider, otel.meters, name="again")
    await cache.set("k", 1)
    with otel.app.start_as_current_span("request"):
        await cache.get("k")
    assert len(otel.named("cache.get")) == 1
    assert previous.hits == []
    assert otel.metrics()["cache.hits"] == [({"cache.stack": "default"}, 1)]

    uninstrument(cache)
    assert cache.tracer is previous
    assert handle.active is False
    handle.uninstrument()  # idempotent
    otel.exporter.clear()
    with otel.app.start_as_current_span("request"):
        await cache.get("k")
    assert otel.cache_spans() == []
    assert previous.hits == ["k"]
    assert "cache.hits" not in otel.metrics() or otel.metrics()["cache.hits"] == []
    with pytest.raises(ValueError, match="not instrumented"):
        uninstrument(cache)

    # Instrumenting again works (the name is free again on this meter).
    again = instrument(cache, otel.provider, otel.meters)
    with otel.app.start_as_current_span("request"):
        await cache.get("k")
    assert len(otel.named("cache.get")) == 1
    again.uninstrument()
    assert cache.tracer is previous
    await cache.aclose()


async def test_two_stacks_on_one_meter_need_names(otel: Otel) -> None:
    first = CacheStack([MemoryLayer(ttl=60)])
    second = CacheStack([MemoryLayer(ttl=60)])
    instrument(first, otel.provider, otel.meters)
    with pytest.raises(ValueError, match="name="):
        instrument(second, otel.provider, otel.meters)
    assert second.tracer is None
    instrument(second, otel.provider, otel.meters, name="second")
    await first.set("a", 1)
    await first.get("a")
    await second.get("missing")
    hits = dict((attrs["cache.stack"], value) for attrs, value in otel.metrics()["cache.hits"])
    misses = dict((attrs["cache.stack"], value) for attrs, value in otel.metrics()["cache.misses"])
    assert hits == {"default": 1, "second": 0}
    assert misses == {"default": 0, "second": 1}
    await first.aclose()
    await second.aclose()


async def test_a_closed_or_dropped_stack_leaves_the_metrics(otel: Otel) -> None:
    cache = CacheStack([MemoryLayer(ttl=60)])
    handle = instrument(cache, otel.provider, otel.meters)
    await cache.get("k")
    assert otel.metrics()["cache.misses"] == [({"cache.stack": "default"}, 1)]
    await cache.aclose()
    assert otel.metrics().get("cache.misses", []) == []  # a closed stack is not reported
    del cache
    gc.collect()
    assert handle.cache is None  # the instrumentation did not keep the stack alive
    assert otel.metrics().get("cache.misses", []) == []
    # Its name is free again.
    other = CacheStack([MemoryLayer(ttl=60)])
    instrument(other, otel.provider, otel.meters)
    await other.aclose()


def test_instrument_refuses_what_is_not_a_stack(otel: Otel) -> None:
    with pytest.raises(TypeError, match="CacheStack"):
        instrument(object(), otel.provider, otel.meters)


# -- metrics ----------------------------------------------------------------------------------


@pytest.mark.redis
async def test_metrics_match_get_stats(otel: Otel, redis_stack: CacheStack) -> None:
    instrument(redis_stack, otel.provider, otel.meters, name="users")

    async def load() -> str:
        return "v"

    for key in ("a", "b", "c"):
        await redis_stack.get(key, load)  # 3 misses + fetches
    for _ in range(5):
        await redis_stack.get("a")  # 5 L1 hits
    stats = redis_stack.get_stats()
    data = otel.metrics()
    stack = {"cache.stack": "users"}
    assert data["cache.hits"] == [(stack, stats.metrics.hits)]
    assert data["cache.misses"] == [(stack, stats.metrics.misses)]
    assert data["cache.fetches"] == [(stack, 3)]
    layer_hits = {attrs["cache.layer"]: value for attrs, value in data["cache.layer.hits"]}
    layer_misses = {attrs["cache.layer"]: value for attrs, value in data["cache.layer.misses"]}
    assert layer_hits == {name: m.hits for name, m in stats.metrics.layers.items()}
    assert layer_misses == {name: m.misses for name, m in stats.metrics.layers.items()}
    assert layer_hits["memory"] == 5
    assert layer_misses["redis"] == 3
    assert data["cache.fetches.in_flight"] == [(stack, 0)]
    assert {attrs["cache.layer"]: v for attrs, v in data["cache.layer.degraded"]} == {
        "memory": 0,
        "redis": 0,
    }
    # The histogram: one point per (operation, result); L1 hits are not recorded.
    durations = {
        (attrs["cache.operation"], attrs.get("cache.result")): point
        for attrs, point in data["cache.operation.duration"]
    }
    assert durations[("get", "miss")].count == 3
    assert durations[("fetch", None)].count == 3
    assert sum(point.count for point in durations.values()) == 6
    assert all(point.sum > 0 for point in durations.values())


async def test_error_counts_by_operation(otel: Otel, redis_clean: RedisServer) -> None:
    # A Redis layer on a port nothing listens on, degraded gracefully: the failures are
    # absorbed and counted by operation.
    with _closed_port() as port:
        cache = CacheStack(
            [
                MemoryLayer(ttl=60),
                RedisLayer(url=f"redis://127.0.0.1:{port}/0", prefix=PREFIX, socket_timeout=0.5),
            ],
            graceful_degradation={"retry_after": 30},
        )
        instrument(cache, otel.provider, otel.meters)

        async def load() -> str:
            return "v"

        assert await cache.get("k", load) == "v"
        stats = cache.get_stats()
        errors = {attrs["cache.operation"]: v for attrs, v in otel.metrics()["cache.errors"]}
        assert errors == dict(stats.metrics.errors_by_operation)
        assert sum(errors.values()) >= 1
        await cache.aclose()


class _closed_port:
    """A loopback port that was free a moment ago (bound, then closed)."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        return None


# -- SyncCacheStack ---------------------------------------------------------------------------


@pytest.mark.redis
def test_sync_stack_in_threads(otel: Otel, redis_clean: RedisServer) -> None:
    cache = SyncCacheStack(
        [MemoryLayer(ttl=60), RedisLayer(url=redis_clean.url, prefix=PREFIX, ttl=600)]
    )
    instrument(cache, otel.provider, otel.meters)
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def worker(n: int) -> None:
        try:
            barrier.wait(DEADLINE)
            with otel.app.start_as_current_span(f"request-{n}"):
                assert cache.get(f"key:{n}", lambda: n) == n
                assert cache.get(f"key:{n}") == n  # L1 hit
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    for n in range(4):
        (request,) = otel.named(f"request-{n}")
        children = _children(otel, request)
        assert sorted(_attrs(span)["cache.result"] for span in children) == ["hit", "miss"]
        (miss,) = [span for span in children if _attrs(span)["cache.result"] == "miss"]
        below = {span.name for span in _children(otel, miss)}
        assert {"cache.fetch", "cache.layer.get"} <= below
        assert any(name.startswith("cache.layer.set") for name in below)
    stats = cache.get_stats()
    assert otel.metrics()["cache.hits"] == [({"cache.stack": "default"}, stats.metrics.hits)]
    uninstrument(cache)
    assert cache.tracer is None
    cache.close()


# -- nothing recorded: no sampling, no SDK ----------------------------------------------------


async def test_non_recording_parent_creates_no_spans() -> None:
    # ALWAYS_ON (not parent-based): any span the integration started would be recorded, so the
    # absence of spans below shows it did not start any.
    otel = _make_otel(sampler=ALWAYS_ON)
    cache = CacheStack([MemoryLayer(ttl=60)])
    instrument(cache, otel.provider, otel.meters, root_spans=True)

    async def load() -> str:
        return "v"

    parent = NonRecordingSpan(
        SpanContext(trace_id=1, span_id=2, is_remote=True, trace_flags=TraceFlags(0))
    )
    with use_span(parent):
        await cache.get("k", load)
        await cache.get("k")
        await cache.set("j", 1)
    assert otel.spans() == []
    # Control: the same calls with no parent at all start root spans (root_spans=True).
    await cache.get("k")
    assert [span.name for span in otel.spans()] == ["cache.get"]
    await cache.aclose()
    otel.provider.shutdown()
    otel.meters.shutdown()


async def test_always_off_sampler_exports_nothing() -> None:
    otel = _make_otel(sampler=ALWAYS_OFF)
    cache = CacheStack([MemoryLayer(ttl=60)])
    instrument(cache, otel.provider, otel.meters, root_spans=True)

    async def load() -> str:
        return "v"

    with otel.app.start_as_current_span("request"):
        await cache.get("k", load)
        await cache.get("k")
    await cache.get("j", load)
    await cache.get("j")
    assert otel.spans() == []
    # Metrics do not depend on sampling.
    assert otel.metrics()["cache.hits"] == [({"cache.stack": "default"}, 2)]
    await cache.aclose()
    otel.provider.shutdown()
    otel.meters.shutdown()


NO_SDK = textwrap.dedent(
    """
    import asyncio
    from opentelemetry import trace
    from layercache import CacheStack, MemoryLayer
    from layercache.integrations.opentelemetry import instrument

    async def main():
        cache = CacheStack([MemoryLayer(ttl=60)])
        instrument(cache, root_spans=True)  # the global (proxy) providers: no SDK installed
        app = trace.get_tracer("app")
        async def load():
            return "v"
        with app.start_as_current_span("request"):
            await cache.get("k", load)
            await cache.get("k")
        await cache.get("j", load)

        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        print("before", len(exporter.get_finished_spans()))
        # Control: once an SDK is set, the same instrumentation records (proxy tracers).
        with app.start_as_current_span("request"):
            await cache.get("k")
        print("after", sorted(s.name for s in exporter.get_finished_spans()))
        await cache.aclose()

    asyncio.run(main())
    """
)


def test_no_sdk_creates_no_spans() -> None:
    result = subprocess.run(
        [sys.executable, "-c", NO_SDK],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no OpenTelemetry warning (e.g. a context detached wrongly)
    lines = result.stdout.splitlines()
    assert lines == ["before 0", "after ['cache.get', 'request']"]


def test_import_without_opentelemetry_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.delitem(sys.modules, "layercache.integrations.opentelemetry")
    with pytest.raises(ImportError, match=r"pip install 'layercache-py\[otel\]'"):
        importlib.import_module("layercache.integrations.opentelemetry")
