"""PrometheusCollector against real stacks: the exposition text parsed back must say what
``get_stats()`` says (memory + a real Redis, a cut Redis under graceful degradation, a bus
between two stacks, Redis single-flight), several stacks on one registry, the ASGI/WSGI
apps of prometheus_client, and the multiprocess recipe of docs/prometheus.md."""

from __future__ import annotations

import asyncio
import gc
import importlib
import math
import os
import re
import socket
import subprocess
import sys
import textwrap
import urllib.request
import wsgiref.util
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

if os.environ.get("CI") != "true":  # under CI a missing extra fails (the import below)
    pytest.importorskip("prometheus_client")

from prometheus_client import (
    CollectorRegistry,
    Counter,
    generate_latest,
    make_asgi_app,
    make_wsgi_app,
)
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as om_families,
)
from prometheus_client.parser import text_string_to_metric_families

from _redis_server import RedisServer
from layercache import (
    LATENCY_BUCKETS,
    CacheStack,
    CacheStats,
    MemoryLayer,
    OperationLatency,
    SyncCacheStack,
)
from layercache.integrations.prometheus import PrometheusCollector
from polling import eventually_async

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "prometheus.md"


def need(module: str) -> Any:
    """``module``, imported; skipped when missing locally, a failure under ``CI=true``."""
    if os.environ.get("CI") == "true":
        return importlib.import_module(module)
    return pytest.importorskip(module)


# --------------------------------------------------------------------------- parsing


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(registry: CollectorRegistry) -> tuple[dict[str, Any], Samples]:
    """The exposition of ``registry`` parsed back: families by name and every sample."""
    return parse(generate_latest(registry).decode("utf-8"))


def parse(text: str) -> tuple[dict[str, Any], Samples]:
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples: Samples = {}
    for family in families.values():
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = s.value
    return families, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def series(samples: Samples, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every sample of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return {lab: v for (n, lab), v in samples.items() if n == name and wanted <= lab}


def check_histograms(families: dict[str, Any]) -> int:
    """Every histogram: cumulative buckets non-decreasing, +Inf == _count, _sum >= 0.
    Returns how many label sets were checked."""
    checked = 0
    for family in families.values():
        if family.type != "histogram":
            continue
        groups: dict[frozenset[tuple[str, str]], dict[str, Any]] = {}
        for s in family.samples:
            base = frozenset((k, v) for k, v in s.labels.items() if k != "le")
            group = groups.setdefault(base, {"buckets": []})
            if s.name.endswith("_bucket"):
                group["buckets"].append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_count"):
                group["count"] = s.value
            elif s.name.endswith("_sum"):
                group["sum"] = s.value
        for labels, group in groups.items():
            buckets = group["buckets"]
            bounds = [b for b, _ in buckets]
            assert bounds == [*LATENCY_BUCKETS, math.inf], (family.name, labels)
            counts = [c for _, c in buckets]
            assert counts == sorted(counts), f"{family.name} {labels}: decreasing {counts}"
            assert counts[-1] == group["count"], (family.name, labels)
            assert group["sum"] >= 0, (family.name, labels)
            checked += 1
    return checked


def assert_histogram(samples: Samples, name: str, latency: OperationLatency, **labels: str) -> None:
    """The exposed histogram ``name{labels}`` is exactly ``latency``."""
    for bound, count in zip(LATENCY_BUCKETS, latency.buckets, strict=False):
        le = next(
            lab
            for lab in series(samples, name + "_bucket", **labels)
            if dict(lab)["le"] != "+Inf" and float(dict(lab)["le"]) == bound
        )
        assert samples[(name + "_bucket", le)] == count, (name, labels, bound)
    assert value(samples, name + "_bucket", le="+Inf", **labels) == latency.count
    assert latency.buckets[-1] == latency.count
    assert value(samples, name + "_count", **labels) == latency.count
    assert value(samples, name + "_sum", **labels) == pytest.approx(latency.sum, rel=1e-12)


def assert_matches(samples: Samples, stack: str, stats: CacheStats) -> None:
    """Every number of ``stats`` is in the exposition under ``stack=stack``, and nothing else
    is exposed for that stack."""
    m = stats.metrics
    seen: set[tuple[str, frozenset[tuple[str, str]]]] = set()

    def expect(name: str, expected: float, **labels: str) -> None:
        key = (name, frozenset({"stack": stack, **labels}.items()))
        assert key in samples, f"missing {name}{labels}"
        assert samples[key] == pytest.approx(expected, rel=1e-12), (name, labels)
        seen.add(key)

    for name, attribute in [
        ("hits", "hits"),
        ("misses", "misses"),
        ("fetches", "fetches"),
        ("stale_serves", "stale_hits"),
        ("stampede_dedupes", "stampede_dedupes"),
        ("backfills", "backfills"),
        ("evictions", "evictions"),
        ("refreshes", "refreshes"),
        ("write_failures", "write_failures"),
    ]:
        expect(f"layercache_{name}_total", getattr(m, attribute))
    for layer, lm in m.layers.items():
        expect("layercache_layer_hits_total", lm.hits, layer=layer)
        expect("layercache_layer_misses_total", lm.misses, layer=layer)
        for operation, latency in lm.operations.items():
            labels = {"stack": stack, "layer": layer, "operation": operation}
            assert_histogram(
                samples, "layercache_layer_operation_duration_seconds", latency, **labels
            )
            seen.update(
                (n, lab)
                for n, lab in samples
                if n.startswith("layercache_layer_operation_duration_seconds")
                and set(labels.items()) <= lab
            )
    for operation, count in m.errors_by_operation.items():
        expect("layercache_errors_total", count, operation=operation)
    assert_histogram(samples, "layercache_fetch_duration_seconds", m.fetch_latency, stack=stack)
    seen.update(
        (n, lab)
        for n, lab in samples
        if n.startswith("layercache_fetch_duration_seconds") and ("stack", stack) in lab
    )
    for status in stats.layers:
        expect(
            "layercache_layer_degraded",
            0 if status.degraded_until is None else 1,
            layer=status.name,
        )
        if status.degraded_until is not None:
            expect(
                "layercache_layer_degraded_until_timestamp_seconds",
                status.degraded_until,
                layer=status.name,
            )
        if status.degraded_since is not None:
            expect(
                "layercache_layer_degraded_since_timestamp_seconds",
                status.degraded_since,
                layer=status.name,
            )
        expect("layercache_layer_pending_replay", status.pending_replay, layer=status.name)
    expect("layercache_in_flight_fetches", stats.in_flight_fetches)
    expect("layercache_background_refreshes", stats.background_refreshes)
    expect("layercache_open_circuits", stats.open_circuits)
    if stats.tag_index_keys is not None:
        expect("layercache_tag_index_keys", stats.tag_index_keys)
    if stats.bus is not None:
        expect("layercache_bus_messages_sent_total", stats.bus.sent)
        expect("layercache_bus_messages_received_total", stats.bus.received)
        expect("layercache_bus_messages_rejected_total", stats.bus.rejected)
        assert (stats.bus.sent, stats.bus.received, stats.bus.rejected) == (
            m.bus_sent,
            m.bus_received,
            m.bus_rejected,
        )
        expect("layercache_bus_subscribed", 1 if stats.bus.subscribed else 0)
        expect("layercache_bus_pending_announcements", stats.bus.pending_announcements)
    sf = stats.single_flight
    if sf.distributed:
        for name in ("acquired", "waits", "takeovers", "timeouts", "shared_hits", "degraded"):
            expect(f"layercache_single_flight_{name}_total", getattr(sf, name))
    mine = {key for key in samples if ("stack", stack) in key[1]}
    assert mine == seen, f"unexpected series: {sorted(mine - seen)}"


def exposed_for(registry: CollectorRegistry, cache: Any, stack: str) -> Samples:
    """Scrape right after ``get_stats()`` (nothing runs in between) and check they agree."""
    stats = cache.get_stats()
    families, samples = scrape(registry)
    assert_matches(samples, stack, stats)
    check_histograms(families)
    return samples


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def closing() -> AsyncIterator[list[CacheStack]]:
    stacks: list[CacheStack] = []
    try:
        yield stacks
    finally:
        for stack in stacks:
            await stack.aclose()


# --------------------------------------------------------------------------- real Redis


@pytest.mark.redis
async def test_memory_and_redis_counts_per_layer_match_get_stats(
    redis_clean: RedisServer, registry: CollectorRegistry, closing: list[CacheStack]
) -> None:
    from layercache import RedisLayer

    memory = MemoryLayer(ttl=60)
    cache = CacheStack([memory, RedisLayer(url=redis_clean.url, prefix="prom:", ttl=600)])
    closing.append(cache)
    collector = PrometheusCollector(cache, stack="api", registry=registry)
    assert collector.registered

    assert await cache.get("a", lambda: "A") == "A"  # miss everywhere, one fetch
    assert await cache.get("a", lambda: "X") == "A"  # memory hit
    await cache.set("b", "B")
    memory.clear()
    assert await cache.get("b") == "B"  # Redis hit, backfilled into memory
    assert await cache.get("none") is None  # miss, no fetcher
    await cache.delete("a")

    samples = exposed_for(registry, cache, "api")
    # The numbers themselves, not only their agreement with get_stats().
    assert value(samples, "layercache_hits_total", stack="api") == 2
    assert value(samples, "layercache_misses_total", stack="api") == 2
    assert value(samples, "layercache_fetches_total", stack="api") == 1
    assert value(samples, "layercache_backfills_total", stack="api") == 1
    assert value(samples, "layercache_layer_hits_total", stack="api", layer="memory") == 1
    assert value(samples, "layercache_layer_hits_total", stack="api", layer="redis") == 1
    assert value(samples, "layercache_layer_misses_total", stack="api", layer="memory") == 3
    assert value(samples, "layercache_layer_misses_total", stack="api", layer="redis") == 2
    assert value(samples, "layercache_fetch_duration_seconds_count", stack="api") == 1
    redis_ops = {
        dict(lab)["operation"]
        for lab in series(
            samples, "layercache_layer_operation_duration_seconds_count", layer="redis"
        )
    }
    assert {"get", "set", "delete"} <= redis_ops
    assert (
        value(
            samples,
            "layercache_layer_operation_duration_seconds_count",
            stack="api",
            layer="redis",
            operation="get",
        )
        == 3
    )
    assert value(samples, "layercache_layer_degraded", stack="api", layer="redis") == 0

    # reset_metrics() zeroes what the collector reports.
    cache.reset_metrics()
    samples = exposed_for(registry, cache, "api")
    assert value(samples, "layercache_hits_total", stack="api") == 0
    assert value(samples, "layercache_fetch_duration_seconds_count", stack="api") == 0


@pytest.mark.redis
async def test_a_cut_redis_shows_as_degraded_with_its_errors(
    redis_proxy: Any, registry: CollectorRegistry, closing: list[CacheStack]
) -> None:
    from layercache import RedisLayer

    cache = CacheStack(
        [
            MemoryLayer(ttl=60),
            RedisLayer(url=redis_proxy.url, prefix="prom:", ttl=600, socket_timeout=0.3),
        ],
        graceful_degradation={"retry_after": 30},
    )
    closing.append(cache)
    PrometheusCollector(cache, stack="degraded", registry=registry)
    await cache.set("k", 1)
    samples = exposed_for(registry, cache, "degraded")
    assert value(samples, "layercache_layer_degraded", stack="degraded", layer="redis") == 0
    assert not series(samples, "layercache_errors_total")

    redis_proxy.cut("refuse")
    assert await cache.get("other", lambda: 2) == 2  # Redis fails: degraded, fetched
    await cache.set("while-down", 3)  # missed by Redis: waits for the replay
    stats = cache.get_stats()
    redis_status = stats.layers[1]
    assert redis_status.degraded_until is not None
    samples = exposed_for(registry, cache, "degraded")
    assert value(samples, "layercache_layer_degraded", stack="degraded", layer="redis") == 1
    assert value(samples, "layercache_layer_degraded", stack="degraded", layer="memory") == 0
    until = value(
        samples,
        "layercache_layer_degraded_until_timestamp_seconds",
        stack="degraded",
        layer="redis",
    )
    assert until == pytest.approx(redis_status.degraded_until, abs=1e-6)
    assert not series(
        samples, "layercache_layer_degraded_until_timestamp_seconds", layer="memory"
    ), "a healthy layer has no degraded-until series"
    assert value(samples, "layercache_layer_pending_replay", stack="degraded", layer="redis") >= 1
    errors = series(samples, "layercache_errors_total", stack="degraded")
    assert errors, "the failed Redis call is counted by operation"
    assert sum(errors.values()) == stats.metrics.errors


@pytest.mark.redis
async def test_bus_counters_of_two_stacks_on_one_registry(
    redis_clean: RedisServer,
    redis_client: Any,
    registry: CollectorRegistry,
    closing: list[CacheStack],
) -> None:
    from layercache import RedisInvalidationBus, RedisLayer

    def build() -> CacheStack:
        stack = CacheStack(
            [MemoryLayer(ttl=60), RedisLayer(url=redis_clean.url, prefix="prom:", ttl=600)],
            invalidation_bus=RedisInvalidationBus(
                url=redis_clean.url, channel="prom:bus", signing_secret="s3cret"
            ),
        )
        closing.append(stack)
        return stack

    a, b = build(), build()
    PrometheusCollector(a, stack="a", registry=registry)
    PrometheusCollector(b, stack="b", registry=registry)
    await a.start()
    await b.start()

    await a.set("k", 1)
    await eventually_async(
        lambda: b.get_stats().metrics.bus_received >= 1, what="b received a's invalidation"
    )
    await redis_client.publish("prom:bus", b"not a signed message")
    await eventually_async(
        lambda: a.get_stats().metrics.bus_rejected >= 1 and b.get_stats().metrics.bus_rejected >= 1,
        what="both stacks rejected the forged message",
    )
    stats_a, stats_b = a.get_stats(), b.get_stats()
    families, samples = scrape(registry)
    assert_matches(samples, "a", stats_a)
    assert_matches(samples, "b", stats_b)
    check_histograms(families)
    assert value(samples, "layercache_bus_messages_sent_total", stack="a") == 1
    assert value(samples, "layercache_bus_messages_received_total", stack="b") == 1
    assert value(samples, "layercache_bus_messages_rejected_total", stack="b") == 1
    assert value(samples, "layercache_bus_subscribed", stack="b") == 1
    # The rejected message is also an error of the bus's receive operation.
    assert value(samples, "layercache_errors_total", stack="b", operation="bus.receive") == 1
    # One family per metric name, both stacks in it.
    hits = families["layercache_hits"]
    assert {s.labels["stack"] for s in hits.samples} == {"a", "b"}


@pytest.mark.redis
async def test_single_flight_lease_counters(
    redis_clean: RedisServer, registry: CollectorRegistry, closing: list[CacheStack]
) -> None:
    from layercache import RedisLayer, RedisSingleFlightCoordinator

    def build() -> CacheStack:
        stack = CacheStack(
            [MemoryLayer(ttl=60), RedisLayer(url=redis_clean.url, prefix="prom:", ttl=600)],
            single_flight_coordinator=RedisSingleFlightCoordinator(
                url=redis_clean.url, prefix="prom:sf"
            ),
            single_flight_timeout=10,
            single_flight_poll=0.01,
        )
        closing.append(stack)
        return stack

    a, b = build(), build()
    PrometheusCollector(a, stack="a", registry=registry)
    PrometheusCollector(b, stack="b", registry=registry)
    gate = asyncio.Event()
    calls: list[str] = []

    async def slow() -> str:
        calls.append("fetch")
        await gate.wait()
        return "v"

    first = asyncio.create_task(a.get("hot", slow))
    await eventually_async(lambda: calls == ["fetch"], what="a's fetch started")
    second = asyncio.create_task(b.get("hot", slow))
    await eventually_async(
        lambda: b.get_stats().single_flight.waits >= 1, what="b waits for a's lease"
    )
    # While it runs: a's fetch is in flight and exposed as such.
    samples = exposed_for(registry, a, "a")
    assert value(samples, "layercache_in_flight_fetches", stack="a") == 1
    gate.set()
    assert await asyncio.gather(first, second) == ["v", "v"]
    assert calls == ["fetch"]

    stats_a, stats_b = a.get_stats(), b.get_stats()
    families, samples = scrape(registry)
    assert_matches(samples, "a", stats_a)
    assert_matches(samples, "b", stats_b)
    check_histograms(families)
    assert value(samples, "layercache_single_flight_acquired_total", stack="a") == 1
    assert value(samples, "layercache_single_flight_waits_total", stack="b") == 1
    assert value(samples, "layercache_single_flight_takeovers_total", stack="b") == 0
    assert value(samples, "layercache_in_flight_fetches", stack="a") == 0


# --------------------------------------------------------------------------- registration


async def test_two_stacks_duplicates_unregister_and_dropped_stacks(
    registry: CollectorRegistry, closing: list[CacheStack]
) -> None:
    one, two = CacheStack([MemoryLayer(ttl=60)]), CacheStack([MemoryLayer(ttl=60)])
    closing.extend([one, two])
    first = PrometheusCollector(one, stack="one", registry=registry)
    second = PrometheusCollector(two, stack="two", registry=registry)
    await one.get("k", lambda: 1)
    await one.get("k")
    await two.get("k", lambda: 2)

    _, samples = scrape(registry)
    assert value(samples, "layercache_hits_total", stack="one") == 1
    assert value(samples, "layercache_hits_total", stack="two") == 0
    assert value(samples, "layercache_fetches_total", stack="two") == 1
    assert_matches(samples, "one", one.get_stats())
    assert_matches(samples, "two", two.get_stats())

    with pytest.raises(ValueError, match="'one' is already registered"):
        PrometheusCollector(CacheStack([MemoryLayer()]), stack="one", registry=registry)
    with pytest.raises(ValueError, match="already registered on this registry as stack 'two'"):
        PrometheusCollector(two, stack="again", registry=registry)
    with pytest.raises(ValueError, match="non-empty"):
        PrometheusCollector(one, stack="", registry=registry)

    # A name clash with another collector of the registry is refused by prometheus_client.
    other = CollectorRegistry()
    Counter("layercache_hits", "someone else's", registry=other)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        PrometheusCollector(one, stack="one", registry=other)

    first.unregister()
    first.unregister()  # idempotent
    assert not first.registered
    _, samples = scrape(registry)
    assert not series(samples, "layercache_hits_total", stack="one")
    assert value(samples, "layercache_hits_total", stack="two") == 0
    # The name is free again.
    again = PrometheusCollector(one, stack="one", registry=registry)
    assert series(scrape(registry)[1], "layercache_hits_total", stack="one")

    # The last stack out takes the shared collector off the registry.
    again.unregister()
    second.unregister()
    assert generate_latest(registry) == b""
    Counter("layercache_hits", "now free", registry=registry)  # the names are free


def test_a_dropped_stack_is_not_kept_alive(registry: CollectorRegistry) -> None:
    cache = SyncCacheStack([MemoryLayer(ttl=60)])
    collector = PrometheusCollector(cache, stack="temp", registry=registry)
    cache.get("k", lambda: 1)
    assert value(scrape(registry)[1], "layercache_fetches_total", stack="temp") == 1
    cache.close()
    del cache
    gc.collect()
    assert collector.cache is None, "the collector kept the stack alive"
    assert not series(scrape(registry)[1], "layercache_hits_total", stack="temp")
    # Its name can be used by a new stack.
    fresh = SyncCacheStack([MemoryLayer(ttl=60)])
    PrometheusCollector(fresh, stack="temp", registry=registry)
    assert value(scrape(registry)[1], "layercache_fetches_total", stack="temp") == 0
    fresh.close()


def test_a_closed_stack_leaves_the_scrape_and_frees_its_name(registry: CollectorRegistry) -> None:
    cache = SyncCacheStack([MemoryLayer(ttl=60)])
    alone = PrometheusCollector(cache, stack="closing", registry=None)
    PrometheusCollector(cache, stack="closing", registry=registry)
    cache.get("k", lambda: 1)
    assert value(scrape(registry)[1], "layercache_fetches_total", stack="closing") == 1
    cache.close()
    assert cache.closed
    assert not series(scrape(registry)[1], "layercache_hits_total", stack="closing")
    assert list(alone.collect()) == []
    fresh = SyncCacheStack([MemoryLayer(ttl=60)])
    PrometheusCollector(fresh, stack="closing", registry=registry)  # the name is free again
    assert value(scrape(registry)[1], "layercache_fetches_total", stack="closing") == 0
    fresh.close()


class BrokenStatsStack(SyncCacheStack):
    """A real stack whose get_stats() fails (fault injection for the scrape)."""

    def get_stats(self) -> CacheStats:
        raise RuntimeError("stats unavailable")


def test_a_failing_stack_is_left_out_of_the_scrape_not_the_others(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    good = SyncCacheStack([MemoryLayer(ttl=60)])
    broken = BrokenStatsStack([MemoryLayer(ttl=60)])
    try:
        PrometheusCollector(good, stack="good", registry=registry)
        PrometheusCollector(broken, stack="broken", registry=registry)
        good.get("k", lambda: 1)
        with caplog.at_level("WARNING", logger="layercache.prometheus"):
            _, samples = scrape(registry)
        assert_matches(samples, "good", good.get_stats())
        assert not [lab for _, lab in samples if ("stack", "broken") in lab]
        assert any("'broken'" in r.getMessage() for r in caplog.records)
    finally:
        good.close()
        broken.close()


def test_registry_none_registers_nothing_and_collects_its_stack() -> None:
    cache = SyncCacheStack([MemoryLayer(ttl=60)])
    try:
        collector = PrometheusCollector(cache, stack="solo", registry=None)
        assert not collector.registered
        collector.unregister()  # nothing to do
        cache.get("k", lambda: 1)
        names = {f.name for f in collector.collect()}
        assert "layercache_fetches" in names
        registry = CollectorRegistry()
        registry.register(collector)
        _, samples = scrape(registry)
        assert_matches(samples, "solo", cache.get_stats())
        # describe() names every family, so a clash is refused at registration.
        described = {f.name for f in collector.describe()}
        assert {
            "layercache_tag_index_keys",
            "layercache_bus_messages_sent",
            "layercache_single_flight_takeovers",
        } <= described
        with pytest.raises(ValueError, match="Duplicated timeseries"):
            PrometheusCollector(cache, stack="solo2", registry=registry)
    finally:
        cache.close()


def test_default_registry_is_prometheus_clients() -> None:
    from prometheus_client import REGISTRY

    cache = SyncCacheStack([MemoryLayer(ttl=60)])
    collector = PrometheusCollector(cache)
    try:
        assert collector.stack == "default"
        _, samples = scrape(REGISTRY)
        assert value(samples, "layercache_hits_total", stack="default") == 0
    finally:
        collector.unregister()
        cache.close()
    assert not series(scrape(REGISTRY)[1], "layercache_hits_total")


# --------------------------------------------------------------------------- serving


async def test_make_asgi_app_serves_the_exposition(
    registry: CollectorRegistry, closing: list[CacheStack]
) -> None:
    httpx2 = need("httpx2")
    cache = CacheStack([MemoryLayer(ttl=60)], tag_index=None)
    closing.append(cache)
    PrometheusCollector(cache, stack="web", registry=registry)
    await cache.set("k", 1, tags=["t"])
    assert await cache.get("k") == 1
    app = make_asgi_app(registry)
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=app), base_url="http://metrics"
    ) as client:
        stats = cache.get_stats()
        response = await client.get("/metrics")
        # What Prometheus asks for first: the OpenMetrics format, parsed by its strict parser.
        openmetrics = await client.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
    assert openmetrics.status_code == 200
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.endswith("# EOF\n")
    om = {f.name: f for f in om_families(openmetrics.text)}
    assert {s.labels["stack"] for s in om["layercache_hits"].samples} == {"web"}
    om_hits = [s.value for s in om["layercache_hits"].samples if s.name == "layercache_hits_total"]
    assert om_hits == [1]
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families, samples = parse(response.text)
    assert_matches(samples, "web", stats)
    assert check_histograms(families) >= 1
    assert value(samples, "layercache_hits_total", stack="web") == 1
    assert value(samples, "layercache_tag_index_keys", stack="web") == 1
    assert families["layercache_hits"].documentation.startswith("Reads")


def test_sync_stack_through_the_wsgi_app(registry: CollectorRegistry) -> None:
    cache = SyncCacheStack([MemoryLayer(ttl=60, max_size=2)])
    try:
        PrometheusCollector(cache, stack="sync", registry=registry)
        for key in "abcd":
            cache.get(key, lambda key=key: key)
        cache.get("d")
        stats = cache.get_stats()
        environ: dict[str, Any] = {"PATH_INFO": "/metrics"}
        wsgiref.util.setup_testing_defaults(environ)
        status: list[str] = []
        body = b"".join(
            make_wsgi_app(registry)(environ, lambda s, headers, exc=None: status.append(s))
        )
        assert status == ["200 OK"]
        families, samples = parse(body.decode("utf-8"))
        assert_matches(samples, "sync", stats)
        check_histograms(families)
        assert value(samples, "layercache_fetches_total", stack="sync") == 4
        assert value(samples, "layercache_evictions_total", stack="sync") == 2
        assert value(samples, "layercache_hits_total", stack="sync") == 1
    finally:
        cache.close()


# --------------------------------------------------------------------------- the extra


def test_missing_extra_names_it() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["prometheus_client"] = None  # as if the extra were not installed
        try:
            import layercache.integrations.prometheus
        except ImportError as exc:
            print(exc)
        else:
            raise SystemExit("imported without prometheus_client")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert "layercache-py[prometheus]" in result.stdout


# --------------------------------------------------------------------------- docs


def doc_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_the_fastapi_example_of_the_docs() -> None:
    need("fastapi")
    from prometheus_client import REGISTRY
    from starlette.testclient import TestClient

    (block,) = [b for b in doc_blocks() if "FastAPI()" in b]
    namespace: dict[str, Any] = {"__name__": "docs_prometheus"}
    exec(compile(block, str(DOC), "exec"), namespace)  # registers stack "api" on REGISTRY
    try:
        with TestClient(namespace["app"]) as client:
            assert client.get("/users/7").json() == {"id": 7}
            assert client.get("/users/7").json() == {"id": 7}
            response = client.get("/metrics/")
        assert response.status_code == 200
        _, samples = parse(response.text)
        assert value(samples, "layercache_hits_total", stack="api") == 1
        assert value(samples, "layercache_fetches_total", stack="api") == 1
    finally:
        namespace["collector"].unregister()
    assert not series(scrape(REGISTRY)[1], "layercache_hits_total", stack="api")


def test_the_wsgi_example_of_the_docs() -> None:
    from prometheus_client import CONTENT_TYPE_LATEST

    (block,) = [b for b in doc_blocks() if "def metrics_flask" in b]
    namespace: dict[str, Any] = {"__name__": "docs_prometheus_wsgi"}
    exec(compile(block, str(DOC), "exec"), namespace)  # registers stack "web" on REGISTRY
    try:
        cache = namespace["cache"]
        cache.get("k", lambda: 1)
        cache.get("k")
        body, status, headers = namespace["metrics_flask"]()
        assert (status, headers) == (200, {"Content-Type": CONTENT_TYPE_LATEST})
        _, samples = parse(body.decode("utf-8"))
        assert value(samples, "layercache_hits_total", stack="web") == 1
        assert_matches(samples, "web", cache.get_stats())
    finally:
        namespace["collector"].unregister()
        namespace["cache"].close()


def test_the_docs_blocks_are_the_ones_tested() -> None:
    assert len(doc_blocks()) == 3


def worker_script(base_port: int, gets: int) -> str:
    (recipe,) = [b for b in doc_blocks() if "def serve_worker_metrics" in b]
    return recipe + textwrap.dedent(
        f"""
        import sys
        from layercache import MemoryLayer, SyncCacheStack

        cache = SyncCacheStack([MemoryLayer(ttl=60)])
        for _ in range({gets}):
            cache.get("k", lambda: 1)
        port = serve_worker_metrics(cache, name="api", base_port={base_port}, addr="127.0.0.1")
        print(port, flush=True)
        sys.stdin.read()  # until the test closes it
        """
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.slow
def test_the_multiprocess_recipe_gives_each_worker_its_port_and_label() -> None:
    base = free_port()
    workers: list[subprocess.Popen[str]] = []
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    try:
        ports = []
        for gets in (3, 5):  # one after the other: the second finds the first's port taken
            worker = subprocess.Popen(
                [sys.executable, "-c", worker_script(base, gets)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            workers.append(worker)
            assert worker.stdout is not None
            ports.append(int(worker.stdout.readline()))
        assert len(set(ports)) == 2
        assert all(base <= p < base + 32 for p in ports)
        for port, gets in zip(ports, (3, 5), strict=True):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                _, samples = parse(r.read().decode("utf-8"))
            label = f"api-{port}"
            assert {dict(lab)["stack"] for lab in series(samples, "layercache_hits_total")} == {
                label
            }
            assert value(samples, "layercache_hits_total", stack=label) == gets - 1
            assert value(samples, "layercache_fetches_total", stack=label) == 1
    finally:
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.close()
        for worker in workers:
            worker.wait(timeout=10)
            if worker.stdout is not None:
                worker.stdout.close()
