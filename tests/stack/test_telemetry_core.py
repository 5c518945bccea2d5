"""The observability core: per-operation latency histograms, errors by operation, fetches in
flight, degradation history, the tracer seam (``set_tracer``) and structured log lines."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from stack_support import Counter, RecordingLayer, StackEnv, eventually

from _twins_async import Event, join_all, spawn
from layercache import (
    LATENCY_BUCKETS,
    CacheLayerError,
    CacheStack,
    CircuitBreaker,
    CircuitOpenError,
    InMemoryTagIndex,
    MemoryLayer,
    OperationLatency,
    OperationTracer,
    SingleFlightStatus,
)
from layercache.testing import ManualClock


class SwitchLayer(RecordingLayer):
    """A remote user layer that fails every call while ``down``."""

    def __init__(self) -> None:
        super().__init__("remote")
        self.down = False

    def get(self, key: str) -> Any:
        if self.down:
            raise ConnectionError("remote is down")
        return super().get(key)

    def set(self, key: str, entry: Any, ttl: float | None) -> None:
        if self.down:
            raise ConnectionError("remote is down")
        super().set(key, entry, ttl)

    def delete(self, key: str) -> None:
        if self.down:
            raise ConnectionError("remote is down")
        super().delete(key)

    def delete_many(self, keys: Any) -> None:
        if self.down:
            raise ConnectionError("remote is down")
        super().delete_many(keys)

    def ping(self) -> bool:
        return not self.down


class RecordingTracer:
    """An OperationTracer that writes down what the stack told it, nesting included."""

    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []
        self.depth = 0

    @contextlib.contextmanager
    def _span(self, *what: Any) -> Iterator[None]:
        self.log.append(("enter", self.depth, *what))
        self.depth += 1
        try:
            yield
        except BaseException as exc:
            self.log.append(("error", type(exc).__name__))
            raise
        finally:
            self.depth -= 1
            self.log.append(("exit", self.depth, what[0]))

    def operation(self, name: str, key: str | None) -> contextlib.AbstractContextManager[Any]:
        return self._span(name, key)

    def layer_call(self, layer: str, operation: str) -> contextlib.AbstractContextManager[Any]:
        return self._span("layer", layer, operation)

    def fetch(self, key: str) -> contextlib.AbstractContextManager[Any]:
        return self._span("fetch", key)

    def l1_hit(self, key: str, layer: str) -> None:
        self.log.append(("l1_hit", key, layer))

    def outcome(self, result: str, layer: str | None) -> None:
        self.log.append(("outcome", result, layer))

    def event(self, name: str, attributes: Mapping[str, Any]) -> None:
        self.log.append(("event", name, dict(attributes)))

    def entered(self) -> list[tuple[Any, ...]]:
        return [entry[1:] for entry in self.log if entry[0] == "enter"]


def check_histogram(latency: OperationLatency) -> None:
    assert len(latency.buckets) == len(LATENCY_BUCKETS) + 1
    assert list(latency.buckets) == sorted(latency.buckets)  # cumulative
    assert latency.buckets[-1] == latency.count
    assert latency.sum >= 0


async def test_latency_histograms_per_layer_and_operation(layered: StackEnv) -> None:
    cache = layered.cache
    lower = layered.lower_name
    assert lower is not None
    await cache.set("a", 1)
    await cache.set_many([("b", 2), ("c", 3)])
    await cache.delete("a")
    layered.memory.clear()  # the next reads go below L1
    assert await cache.get("b") == 2
    assert await cache.get_many(["c", "absent"]) == [3, None]
    ops = cache.get_metrics().layers[lower].operations
    assert ops["get"].count == 1
    assert ops["get_many"].count == 1
    assert ops["set"].count == 1
    assert ops["set_many"].count == 1
    deletes = ops.get("delete_many", OperationLatency()).count
    assert deletes + ops.get("delete", OperationLatency()).count == 1
    for latency in ops.values():
        check_histogram(latency)
    # The layer's latency summary counts its reads.
    assert cache.get_metrics().layers[lower].latency.count == 2
    cache.reset_metrics()
    assert cache.get_metrics().layers[lower].operations == {}


async def test_fetch_latency_and_fetches_in_flight(memory_env: StackEnv) -> None:
    cache = memory_env.cache
    started = Event()
    release = Event()

    async def slow() -> str:
        started.set()
        await release.wait()
        return "v"

    task = spawn(cache.get, "k", slow)
    await started.wait()
    stats = cache.get_stats()
    assert stats.in_flight_fetches == 1
    assert stats.single_flight == SingleFlightStatus(in_flight=1, distributed=False)
    release.set()
    assert await join_all([task]) == ["v"]
    stats = cache.get_stats()
    assert stats.in_flight_fetches == 0
    assert stats.metrics.fetch_latency.count == 1
    check_histogram(stats.metrics.fetch_latency)


async def test_errors_are_counted_by_operation(memory_env: StackEnv) -> None:
    cache = memory_env.cache
    cache.report_error(ValueError("x"), operation="custom.op")
    cache.report_error(ValueError("y"), operation="custom.op")
    cache.report_error(ValueError("z"))
    metrics = cache.get_metrics()
    assert metrics.errors == 3
    assert metrics.errors_by_operation == {"custom.op": 2, "unknown": 1}


async def test_errors_by_operation_is_bounded(memory_env: StackEnv) -> None:
    cache = memory_env.cache
    for i in range(200):
        cache.report_error(ValueError("x"), operation=f"op{i}")
    counts = cache.get_metrics().errors_by_operation
    assert len(counts) <= 65
    assert sum(counts.values()) == 200
    assert counts["other"] == 200 - 64


async def test_tag_index_size_and_open_circuits(clock: ManualClock) -> None:
    index = InMemoryTagIndex()
    cache = CacheStack([MemoryLayer(clock=clock)], clock=clock, tag_index=index)
    try:
        await cache.set("a", 1, tags=["t"])
        await cache.set("b", 2, tags=["t", "u"])
        assert cache.get_stats().tag_index_keys == 2

        async def broken() -> Any:
            raise RuntimeError("origin down")

        breaker = CircuitBreaker(failure_threshold=1, cooldown=30)
        with pytest.raises(RuntimeError):
            await cache.get("c", broken, circuit_breaker=breaker)
        assert cache.get_stats().open_circuits == 1
    finally:
        await cache.aclose()


async def test_degradation_history_status_and_log_lines(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    remote = SwitchLayer()
    memory = MemoryLayer(clock=clock)
    cache = CacheStack([memory, remote], clock=clock, graceful_degradation={"retry_after": 10})
    caplog.set_level(logging.INFO, logger="layercache")
    try:
        await cache.set("secret-key-1", 1)
        remote.down = True
        clock.advance(1)
        went_down = clock()
        await cache.set("secret-key-2", 2)  # fails on the remote layer: degraded
        status = {s.name: s for s in cache.get_stats().layers}["remote"]
        assert status.degraded_until == went_down + 10
        assert status.degraded_since == went_down
        await cache.delete("secret-key-1")  # missed by the degraded layer
        assert {s.name: s for s in cache.get_stats().layers}["remote"].pending_replay >= 1
        remote.down = False
        clock.advance(11)
        memory.clear()
        assert await cache.get("secret-key-2") is None  # probes, replays, serves again
        status = {s.name: s for s in cache.get_stats().layers}["remote"]
        assert status.degraded_until is None
        assert status.degraded_since is None
        assert status.pending_replay == 0
        history = cache.get_stats().degradations
        assert [(e.layer, e.event) for e in history] == [
            ("remote", "degraded"),
            ("remote", "recovered"),
        ]
        assert history[0].at == went_down
        assert history[0].operation == "set"
        assert "remote is down" in (history[0].error or "")
        assert cache.get_metrics().errors_by_operation.get("set", 0) >= 1
    finally:
        await cache.aclose()
    lines = [r for r in caplog.records if r.name == "layercache"]
    degraded = [r for r in lines if "failed during" in r.getMessage()]
    recovered = [r for r in lines if "recovered" in r.getMessage()]
    assert len(degraded) == 1
    assert degraded[0].levelno == logging.WARNING
    assert len(recovered) == 1
    assert recovered[0].levelno == logging.INFO
    assert degraded[0].__dict__["layer"] == "remote"
    assert degraded[0].__dict__["operation"] == "set"
    for record in lines:
        for field in ("operation", "key_hash", "layer", "duration"):
            assert field in record.__dict__
        assert "secret-key" not in record.getMessage()


async def test_debug_lines_carry_a_key_hash_never_the_key(
    layered: StackEnv, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="layercache")
    await layered.cache.set("private:alice@example.com", 1)
    layered.memory.clear()
    assert await layered.cache.get("private:alice@example.com") == 1
    hits = [r for r in caplog.records if r.getMessage().startswith("layercache: hit in")]
    assert len(hits) == 1
    record = hits[0]
    assert record.__dict__["layer"] == layered.lower_name
    assert record.__dict__["operation"] == "get"
    assert isinstance(record.__dict__["key_hash"], str)
    assert len(record.__dict__["key_hash"]) == 16
    assert all("alice" not in r.getMessage() for r in caplog.records)


async def test_circuit_changes_are_logged_once_each(
    memory_env: StackEnv, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="layercache")
    cache = memory_env.cache
    healthy = [False]

    async def origin() -> str:
        if not healthy[0]:
            raise RuntimeError("origin down")
        return "ok"

    breaker = CircuitBreaker(failure_threshold=2, cooldown=5)
    for _ in range(2):
        with pytest.raises(RuntimeError):
            await cache.get("k", origin, circuit_breaker=breaker)
    for _ in range(3):
        with pytest.raises(CircuitOpenError):
            await cache.get("k", origin, circuit_breaker=breaker)
    healthy[0] = True
    memory_env.clock.advance(6)
    assert await cache.get("k", origin, circuit_breaker=breaker) == "ok"
    messages = [r for r in caplog.records if "circuit" in r.getMessage()]
    assert [(r.levelno, "opened" in r.getMessage()) for r in messages] == [
        (logging.WARNING, True),
        (logging.INFO, False),
    ]


async def test_logger_false_is_silent(clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
    remote = SwitchLayer()
    remote.down = True
    cache = CacheStack(
        [MemoryLayer(clock=clock), remote],
        clock=clock,
        graceful_degradation={"retry_after": 10},
        logger=False,
    )
    caplog.set_level(logging.DEBUG)
    try:
        await cache.set("k", 1)
        assert cache.get_stats().degradations[-1].event == "degraded"
    finally:
        await cache.aclose()
    assert not [r for r in caplog.records if r.name.startswith("layercache")]
    with pytest.raises(ValueError, match="logger"):
        CacheStack([MemoryLayer()], logger="loud")  # type: ignore[arg-type]


async def test_tracer_sees_operations_layer_calls_fetches_and_l1_hits(
    clock: ManualClock,
) -> None:
    remote = SwitchLayer()
    cache = CacheStack([MemoryLayer(clock=clock), remote], clock=clock)
    tracer = RecordingTracer()
    assert isinstance(tracer, OperationTracer)
    assert cache.set_tracer(tracer) is None
    assert cache.tracer is tracer
    try:
        fetcher = Counter("v")
        assert await cache.get("k", fetcher) == "v"
        assert tracer.entered() == [
            (0, "cache.get", "k"),
            (1, "layer", "remote", "get"),
            (1, "fetch", "k"),
            (1, "layer", "remote", "set"),
        ]
        assert ("outcome", "miss", None) in tracer.log
        tracer.log.clear()
        assert await cache.get("k") == "v"  # an L1 hit: no span, one call
        assert tracer.log == [("l1_hit", "k", "memory")]
        tracer.log.clear()
        await cache.delete("k")
        assert tracer.entered()[0] == (0, "cache.delete", "k")
        tracer.log.clear()

        async def failing() -> Any:
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            await cache.get("other", failing)
        assert ("error", "RuntimeError") in tracer.log
        assert tracer.log[-1] == ("exit", 0, "cache.get")
        assert tracer.depth == 0
        tracer.log.clear()
        await cache.set("tagged", 1, tags=["t"])
        await cache.invalidate_by_tag("t")
        names = [entry[1] for entry in tracer.entered() if entry[0] == 0]
        assert names == ["cache.set", "cache.invalidate"]
        assert cache.set_tracer(None) is tracer
        tracer.log.clear()
        assert await cache.get("k", fetcher) == "v"
        assert tracer.log == []
        with pytest.raises(TypeError):
            cache.set_tracer(object())  # type: ignore[arg-type]
    finally:
        await cache.aclose()


async def test_tracer_hears_of_degradation(clock: ManualClock) -> None:
    remote = SwitchLayer()
    cache = CacheStack(
        [MemoryLayer(clock=clock), remote], clock=clock, graceful_degradation={"retry_after": 5}
    )
    tracer = RecordingTracer()
    cache.set_tracer(tracer)
    try:
        remote.down = True
        await cache.set("k", 1)
        events = [entry for entry in tracer.log if entry[0] == "event"]
        assert events[0][1] == "degraded"
        assert events[0][2]["layer"] == "remote"
        assert events[0][2]["retry_after"] == 5
    finally:
        await cache.aclose()


async def test_a_failing_layer_call_is_timed_and_traced(clock: ManualClock) -> None:
    remote = SwitchLayer()
    remote.down = True
    cache = CacheStack([MemoryLayer(clock=clock), remote], clock=clock)
    tracer = RecordingTracer()
    cache.set_tracer(tracer)
    try:
        with pytest.raises(CacheLayerError):
            await cache.set("k", 1)
        assert cache.get_metrics().layers["remote"].operations["set"].count == 1
        assert ("error", "CacheLayerError") in tracer.log or ("error", "ConnectionError") in (
            tracer.log
        )
    finally:
        await cache.aclose()


async def test_in_flight_count_under_concurrent_callers(memory_env: StackEnv) -> None:
    cache = memory_env.cache
    release = Event()
    started = Event()

    async def slow() -> int:
        started.set()
        await release.wait()
        return 1

    tasks = [spawn(cache.get, f"k{i % 3}", slow) for i in range(300)]
    await started.wait()
    # 300 callers of 3 cold keys: one fetch per key in flight, seen while they wait.
    await eventually(lambda: cache.get_stats().in_flight_fetches == 3, "3 fetches in flight")
    assert cache.get_stats().single_flight.in_flight == 3
    release.set()
    assert sorted(await join_all(tasks)) == [1] * 300
    stats = cache.get_stats()
    assert stats.in_flight_fetches == 0
    assert stats.metrics.fetches == 3
    assert stats.metrics.fetch_latency.count == 3
