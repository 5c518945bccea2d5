"""LayerCacheBackend with a Redis LOCATION, against a real redis-server (tests/conftest.py).

Two backends on one server stand for two processes: each has its own memory layer, Redis is
what they share. Backends with equal settings share one engine in a process, so each "process"
gets a slightly different real option (``MEMORY_MAX_SIZE``), as two deployments might.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django_support import FakeClock

from layercache import PickleSerializer
from layercache.integrations.django import LayerCacheBackend

pytestmark = pytest.mark.redis


def _process(i: int) -> dict[str, Any]:
    """Options that make backend ``i`` an engine of its own (another "process")."""
    return {"MEMORY_MAX_SIZE": 10_000 + i}


@pytest.fixture
def backends(redis_clean: Any, clock: FakeClock) -> Iterator[list[LayerCacheBackend]]:
    made = [
        LayerCacheBackend(
            redis_clean.url,
            {
                "TIMEOUT": 300,
                "OPTIONS": {**_process(i), "CLOCK": clock, "PREFIX": "dj:", "MEMORY_TTL": 30},
            },
        )
        for i in range(2)
    ]
    yield made
    for backend in made:
        backend.shutdown()


def test_shared_through_redis(backends: list[LayerCacheBackend], redis_clean: Any) -> None:
    one, two = backends
    one.set("k", {"a": [1, 2]})
    one.set("none", None)
    assert two.get("k") == {"a": [1, 2]}
    assert two.get("none", "default") is None
    assert two.get("missing", "default") == "default"
    raw = redis.Redis(host=redis_clean.host, port=redis_clean.port)
    try:
        assert raw.exists("dj::1:k")
        assert raw.ttl("dj::1:k") > 0
        one.set("forever", 1, None)
        assert raw.ttl("dj::1:forever") == -1
        raw.set("unrelated", "keep")
        two.clear()
        assert raw.get("unrelated") == b"keep"  # clear() removes only the prefix
        # No invalidation bus: one's memory layer keeps serving it until MEMORY_TTL passes.
        assert one.get("k") == {"a": [1, 2]}
        assert two.get("k") is None
    finally:
        raw.close()


def test_expiry_memory_cap_and_zero_timeout(
    backends: list[LayerCacheBackend], clock: FakeClock
) -> None:
    one, two = backends
    one.set("k", "v", timeout=100)
    clock.now += 50  # past MEMORY_TTL (30): served from Redis again
    assert one.get("k") == "v"
    clock.now += 51
    assert one.get("k") is None
    one.set("z", "v")
    two.set("z", "v", 0)
    one._engine.stack.layers[0].clear()  # forget one's L1: Redis must not hold it any more
    assert one.get("z") is None


def test_add_incr_touch_tags_over_redis(backends: list[LayerCacheBackend]) -> None:
    one, two = backends
    assert one.add("a", 1) is True
    assert two.add("a", 2) is False  # two sees one's value through Redis
    assert two.incr("a", 5) == 6
    assert two.touch("a", 1000) is True
    with pytest.raises(ValueError, match="not found"):
        one.incr("nope")
    one.set("p", 1, tags=["products"])
    assert one.invalidate_by_tag("products") == 1
    assert two.get("p") is None


async def test_async_over_redis(backends: list[LayerCacheBackend]) -> None:
    one, two = backends
    await one.aset("k", "v")
    assert two.get("k") == "v"
    assert await two.aget("k") == "v"
    assert await two.aadd("k", "w") is False
    await one.aset("n", 1)
    assert await two.aincr("n", 2) == 3
    assert await two.aget_many(["k", "n", "x"]) == {"k": "v", "n": 3}
    # one's memory layer still holds n=1 (no invalidation bus); Redis has 3.
    assert await one.aget("n") == 1
    one._engine.async_side().stack.layers[0].clear()
    assert await one.aget("n") == 3
    assert await two.atouch("k", 0) is True
    assert await two.aget("k") is None
    for backend in backends:
        await backend.ashutdown()


def test_pickle_serializer_for_arbitrary_objects(redis_clean: Any, clock: FakeClock) -> None:
    options = {"CLOCK": clock, "SERIALIZER": PickleSerializer(signing_secret="s3cret")}
    one, two = (
        LayerCacheBackend(redis_clean.url, {"OPTIONS": {**options, **_process(i)}})
        for i in range(2)
    )
    try:
        one.set("t", (1, {2, 3}))
        assert two.get("t") == (1, {2, 3})
    finally:
        one.shutdown()
        two.shutdown()
