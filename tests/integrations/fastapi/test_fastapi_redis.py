"""``cached`` across two FastAPI instances sharing a real Redis: values rebuilt as the model,
one run of a cold endpoint for concurrent requests on both instances (the Redis single-flight
coordinator), tag invalidation reaching the other instance's memory layer (the bus)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx2")

import httpx2
from fastapi import FastAPI
from pydantic import BaseModel

from _redis_server import RedisServer
from layercache import CacheStack, MemoryLayer
from layercache.integrations.fastapi import cached
from layercache.redis import (
    RedisInvalidationBus,
    RedisLayer,
    RedisSingleFlightCoordinator,
    RedisTagIndex,
)
from polling import eventually_async

pytestmark = pytest.mark.redis


class Product(BaseModel):
    id: int
    name: str


class Instance:
    """One application instance (one process in production) with its own stack."""

    def __init__(self, url: str, gate: asyncio.Event, calls: list[int]) -> None:
        self.cache = CacheStack(
            [MemoryLayer(ttl=60), RedisLayer(url=url, ttl=600)],
            invalidation_bus=RedisInvalidationBus(url=url, channel="fastapi-test:inv"),
            single_flight_coordinator=RedisSingleFlightCoordinator(
                url=url, prefix="fastapi-test:sf"
            ),
            tag_index=RedisTagIndex(url=url, prefix="fastapi-test:tags"),
        )
        self.app = FastAPI()

        # The same code in both instances: the default key prefix (module and qualname of
        # the endpoint) is the same, so the instances share entries.
        @self.app.get("/products/{product_id}")
        @cached(self.cache, ttl=60, tags=lambda args: [f"product:{args['product_id']}"])
        async def product(product_id: int) -> Product:
            calls.append(product_id)
            await gate.wait()
            return Product(id=product_id, name=f"p{product_id}")

        self.product = product
        self.client = httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=self.app), base_url="http://test"
        )

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.cache.aclose()


@pytest.fixture
async def pair(redis_clean: RedisServer) -> AsyncIterator[tuple[Instance, Instance, Any]]:
    gate = asyncio.Event()
    calls: list[int] = []
    a = Instance(redis_clean.url, gate, calls)
    b = Instance(redis_clean.url, gate, calls)
    await a.cache.start()
    await b.cache.start()
    try:
        yield a, b, (gate, calls)
    finally:
        await a.aclose()
        await b.aclose()


async def test_a_value_from_redis_comes_back_as_the_model(
    pair: tuple[Instance, Instance, Any],
) -> None:
    a, b, (gate, calls) = pair
    gate.set()
    assert (await a.client.get("/products/1")).json() == {"id": 1, "name": "p1"}
    # Instance b finds the fields in Redis and rebuilds the return annotation's model.
    value = await b.product(1)
    assert isinstance(value, Product)
    assert value == Product(id=1, name="p1")
    assert (await b.client.get("/products/1")).json() == {"id": 1, "name": "p1"}
    assert calls == [1]


async def test_a_cold_key_runs_once_for_concurrent_requests_on_both_instances(
    pair: tuple[Instance, Instance, Any],
) -> None:
    a, b, (gate, calls) = pair
    burst = [
        asyncio.create_task(instance.client.get("/products/7"))
        for _ in range(100)
        for instance in (a, b)
    ]
    # Each instance shares one flight locally; the two flights share one run through Redis.
    await eventually_async(
        lambda: (
            a.cache.get_metrics().stampede_dedupes + b.cache.get_metrics().stampede_dedupes == 198
            and len(calls) == 1
        ),
        what="one run, every other request waiting on its instance's flight",
    )
    gate.set()
    responses = await asyncio.gather(*burst)
    assert {r.status_code for r in responses} == {200}
    assert {r.text for r in responses} == {'{"id":7,"name":"p7"}'}
    assert calls == [7]


async def test_tag_invalidation_reaches_the_other_instance(
    pair: tuple[Instance, Instance, Any],
) -> None:
    a, b, (gate, calls) = pair
    gate.set()
    await a.client.get("/products/2")
    await b.client.get("/products/2")  # from Redis, now in b's memory layer too
    assert calls == [2]
    key = f"fastapi:{__name__}.Instance.__init__.<locals>.product:product_id=2"
    assert (await b.cache.inspect(key)) is not None
    assert await a.cache.invalidate_by_tag("product:2") == 1

    async def b_dropped() -> bool:
        found = await b.cache.inspect(key)
        return found is None

    dropped = False
    for _ in range(2000):  # bounded: the bus delivers within milliseconds
        dropped = await b_dropped()
        if dropped:
            break
        await asyncio.sleep(0.005)
    assert dropped, "b's memory layer still holds the invalidated entry"
    await b.client.get("/products/2")
    assert calls == [2, 2]
