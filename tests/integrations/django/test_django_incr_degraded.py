"""``incr``/``decr`` of LayerCacheBackend while Redis is unreachable (cut with the TCP proxy).

With GRACEFUL_DEGRADATION the cache must not take the site down (no connection error) and must
not count on a copy only this process holds: incr behaves as on an empty cache (ValueError).
Without it, incr raises CacheLayerError like every other operation.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django_support import FakeClock

from layercache import CacheLayerError
from layercache.integrations.django import LayerCacheBackend

pytestmark = pytest.mark.redis

RETRY_AFTER = 10


def _backend(url: str, clock: FakeClock, degrade: bool) -> LayerCacheBackend:
    options: dict[str, Any] = {"CLOCK": clock, "PREFIX": "djdg:", "MEMORY_TTL": 300}
    if degrade:
        options["GRACEFUL_DEGRADATION"] = {"retry_after": RETRY_AFTER}
    return LayerCacheBackend(url, {"TIMEOUT": 3600, "OPTIONS": options})


@pytest.fixture
def degraded(redis_proxy: Any, clock: FakeClock) -> Iterator[LayerCacheBackend]:
    backend = _backend(redis_proxy.url, clock, degrade=True)
    yield backend
    backend.shutdown()


@pytest.fixture
def raw(redis_sync_client: Any) -> Any:
    """A plain redis-py client on the same server, to look behind the backend."""
    return redis_sync_client


def test_incr_while_redis_is_down_reads_as_missing(
    degraded: LayerCacheBackend, redis_proxy: Any, clock: FakeClock, raw: redis.Redis
) -> None:
    backend = degraded
    backend.set("hits", 5)
    assert backend.incr("hits") == 6
    assert backend.get("hits") == 6  # in memory again
    redis_proxy.cut("refuse")
    with pytest.raises(ValueError, match="not found"):
        backend.incr("hits")
    with pytest.raises(ValueError, match="not found"):
        backend.decr("hits", 2)
    # The usual fallback of a Django counter works and keeps the site up, in memory only.
    backend.set("hits", 1)
    assert backend.get("hits") == 1
    with pytest.raises(ValueError, match="not found"):
        backend.incr("hits")  # never counts on the memory copy alone
    assert backend.get("hits") == 1
    redis_proxy.restore()
    assert raw.exists("djdg::1:hits")  # Redis still holds the count from before the outage
    with pytest.raises(ValueError, match="not found"):
        backend.incr("hits")  # the stack keeps Redis out of service until retry_after
    clock.now += RETRY_AFTER + 1
    # Redis is back: the write it missed (hits=1) removes its stale 6 before incr reads it.
    with pytest.raises(ValueError, match="not found"):
        backend.incr("hits")
    gone = raw.get("djdg::1:hits")  # a delete leaves a tombstone (\xc1LT...), read as absent
    assert gone is None or gone.startswith(b"\xc1LT")
    backend.set("hits", 1)
    assert backend.incr("hits") == 2
    assert raw.exists("djdg::1:hits")


def test_incr_of_a_key_never_written_during_the_outage_counts_on(
    degraded: LayerCacheBackend, redis_proxy: Any, clock: FakeClock
) -> None:
    backend = degraded
    backend.set("n", 1)
    redis_proxy.cut("refuse")
    with pytest.raises(ValueError, match="not found"):
        backend.incr("n")
    redis_proxy.restore()
    clock.now += RETRY_AFTER + 1
    assert backend.incr("n") == 2  # nothing was missed: the Redis counter is still right


async def test_aincr_while_redis_is_down_reads_as_missing(
    degraded: LayerCacheBackend, redis_proxy: Any, clock: FakeClock
) -> None:
    backend = degraded
    try:
        await backend.aset("n", 1)
        assert await backend.aincr("n") == 2
        redis_proxy.cut("refuse")
        with pytest.raises(ValueError, match="not found"):
            await backend.aincr("n")
        with pytest.raises(ValueError, match="not found"):
            await backend.adecr("n")
        redis_proxy.restore()
        clock.now += RETRY_AFTER + 1
        assert await backend.aincr("n") == 3
    finally:
        await backend.ashutdown()


def test_without_degradation_incr_raises_the_layer_error(
    redis_proxy: Any, clock: FakeClock
) -> None:
    backend = _backend(redis_proxy.url, clock, degrade=False)
    try:
        backend.set("n", 1)
        redis_proxy.cut("refuse")
        with pytest.raises(CacheLayerError) as caught:
            backend.incr("n")
        assert caught.value.__cause__ is not None  # the driver's connection error
        redis_proxy.restore()
        assert backend.incr("n") == 2
    finally:
        backend.shutdown()


def test_bus_backend_starts_while_redis_is_down_under_degradation(
    redis_proxy: Any, clock: FakeClock
) -> None:
    redis_proxy.cut("refuse")
    options = {"INVALIDATION_BUS": True, "GRACEFUL_DEGRADATION": True, "CLOCK": clock}
    backend = LayerCacheBackend(redis_proxy.url, {"OPTIONS": options})
    try:
        backend.set("k", 1)  # memory only for now
        assert backend.get("k") == 1
        with pytest.raises(ValueError, match="not found"):
            backend.incr("k")
    finally:
        backend.shutdown()


def test_bus_backend_without_degradation_fails_fast_and_leaves_no_thread(
    redis_proxy: Any,
) -> None:
    redis_proxy.cut("refuse")
    channel = "djdg:no-thread"
    with pytest.raises(CacheLayerError):
        LayerCacheBackend(redis_proxy.url, {"OPTIONS": {"INVALIDATION_BUS": {"CHANNEL": channel}}})
    assert not [t for t in threading.enumerate() if channel in t.name]
