"""Issue 16: refreshing a still-fresh value (``early_refresh``, ``refresh_ahead``) on two
instances sharing a real Redis: the origin is called once per refresh, not once per instance.

Both instances run on one fake clock. With a distributed single-flight coordinator the instance
that refreshes first fetches and the other waits for its value; the still-fresh value in Redis
does not stand in for the refresh (before issue 16 it did: such a refresh ended without a
fetch, and every reader waited for the origin once the value expired). Without a coordinator,
an instance refreshing after another one did takes the newer value from Redis.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
from freshness_support import Gate, eventually

from _twins_async import ASYNC
from layercache import (
    CacheStack,
    MemoryLayer,
    RedisLayer,
    RedisSingleFlightCoordinator,
    SyncRedisSingleFlightCoordinator,
)
from layercache.testing import ManualClock

PREFIX = "lc-early:"
TTL = 100.0


class FixedDraw(random.Random):
    """Every draw gives ``-ln(U) == 1``: a hit refreshes exactly when ``delta * beta >= r``."""

    def random(self) -> float:
        return 1.0 - math.exp(-1.0)


class Origin:
    """A fetcher that takes ``seconds`` on the fake clock."""

    def __init__(self, clock: ManualClock, seconds: float, value: str) -> None:
        self.clock, self.seconds, self.value = clock, seconds, value
        self.calls = 0

    async def fetch(self) -> str:
        self.calls += 1
        self.clock.advance(self.seconds)
        return self.value


Instances = tuple[CacheStack, CacheStack, MemoryLayer, bool]


@pytest.fixture(params=["coordinator", "no-coordinator"])
async def instances(
    request: pytest.FixtureRequest, redis_client: Any, clock: ManualClock
) -> AsyncIterator[Instances]:
    """Instances ``a`` and ``b`` (memory + the same Redis), ``b``'s memory layer, and
    whether they share a single-flight coordinator."""
    stacks: list[CacheStack] = []
    memories: list[MemoryLayer] = []
    for _ in range(2):
        options: dict[str, Any] = {}
        if request.param == "coordinator":
            kind = RedisSingleFlightCoordinator if ASYNC else SyncRedisSingleFlightCoordinator
            options["single_flight_coordinator"] = kind(client=redis_client, prefix="lc-sf")
        memory = MemoryLayer(ttl=TTL, clock=clock)
        memories.append(memory)
        layers = [memory, RedisLayer(client=redis_client, ttl=TTL, prefix=PREFIX)]
        stacks.append(CacheStack(layers, clock=clock, rng=FixedDraw(), **options))
    yield stacks[0], stacks[1], memories[1], request.param == "coordinator"
    for stack in stacks:
        await stack.aclose()


@pytest.mark.parametrize(
    "option", [{"early_refresh": 1.0}, {"refresh_ahead": 0.6}], ids=["early", "ahead"]
)
async def test_one_instance_fetches_and_the_other_takes_its_value(
    instances: Instances, clock: ManualClock, option: dict[str, Any]
) -> None:
    a, b, b_memory, coordinated = instances
    opts: dict[str, Any] = {"ttl": TTL, **option}
    # a fetches (1 s: its delta); b reads the value from Redis (b never timed a fetch: its
    # delta is the 0.05 s default).
    assert await a.get("k", Origin(clock, 1.0, "v1").fetch, **opts) == "v1"
    b_origin = Gate("from b", hold=False)
    assert await b.get("k", b_origin.fetch, **opts) == "v1"
    expires = clock() + TTL

    clock.now = expires - 0.5  # within a's delta (and the refresh-ahead window)
    a_origin = Gate("v2")
    assert await a.get("k", a_origin.fetch, **opts) == "v1"
    await a_origin.wait_started()  # a refreshes from the origin
    if not coordinated:
        a_origin.release()
        await eventually(lambda: a.get_stats().background_refreshes == 0, "a's refresh")
    clock.now = expires - 0.04  # within b's default delta
    assert await b.get("k", b_origin.fetch, **opts) == "v1", "b serves its fresh copy"
    a_origin.release()
    await eventually(
        lambda: a.get_stats().background_refreshes + b.get_stats().background_refreshes == 0,
        "the refreshes",
    )
    assert a_origin.calls == 1
    assert b_origin.calls == 0, "both instances called the origin for one refresh"
    assert b.get_metrics().refreshes == 1, "b did not refresh"
    entry = b_memory.get("k")
    assert entry is not None
    assert entry.value == "v2", "b's memory layer does not hold a's refreshed value"
    assert await b.get("k") == "v2"
