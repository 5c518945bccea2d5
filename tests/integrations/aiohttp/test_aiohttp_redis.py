"""Two aiohttp apps behind cache_middleware sharing a real Redis (layer, bus, tag index,
single-flight)."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("aiohttp")

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from _redis_server import RedisServer
from layercache import CacheStack, MemoryLayer
from layercache.integrations.aiohttp import cache_middleware
from layercache.redis import (
    RedisInvalidationBus,
    RedisLayer,
    RedisSingleFlightCoordinator,
    RedisTagIndex,
)
from polling import eventually_async

pytestmark = pytest.mark.redis


def stack(url: str) -> CacheStack:
    return CacheStack(
        [MemoryLayer(ttl=60), RedisLayer(url=url, ttl=600)],
        invalidation_bus=RedisInvalidationBus(
            url=url, channel="aiohttp:inv", signing_secret="test-secret"
        ),
        single_flight_coordinator=RedisSingleFlightCoordinator(url=url, prefix="aiohttp:sf"),
        single_flight_timeout=10,
        tag_index=RedisTagIndex(url=url, prefix="aiohttp:tags"),
    )


class Instance:
    def __init__(self, url: str, calls: list[str], gate: asyncio.Event | None = None) -> None:
        self.cache = stack(url)

        async def product(request: web.Request) -> web.StreamResponse:
            calls.append(request.match_info["pid"])
            if gate is not None:
                await gate.wait()
            return web.Response(text=f"product {request.match_info['pid']} #{len(calls)}")

        async def invalidate(request: web.Request) -> web.StreamResponse:
            dropped = await self.cache.invalidate_by_tag(request.match_info["tag"])
            return web.json_response({"dropped": dropped})

        app = web.Application(
            middlewares=[
                cache_middleware(
                    self.cache,
                    ttl=120,
                    tags=lambda request: ["products", request.path],
                    vary_on_host=False,  # two test servers, two ports: one shop
                )
            ]
        )
        app.router.add_get("/products/{pid}", product)
        app.router.add_post("/invalidate/{tag}", invalidate)
        self.client = TestClient(TestServer(app))

    async def start(self) -> None:
        await self.cache.start()
        await self.client.start_server()

    async def close(self) -> None:
        await self.client.close()
        await self.cache.aclose()


async def test_b_hits_what_a_cached_and_a_tag_invalidation_reaches_b(
    redis_clean: RedisServer,
) -> None:
    calls: list[str] = []
    a, b = Instance(redis_clean.url, calls), Instance(redis_clean.url, calls)
    try:
        await a.start()
        await b.start()
        miss = await a.client.get("/products/1")
        assert miss.headers["X-Cache"] == "MISS"
        hit = await b.client.get("/products/1")
        assert (hit.headers["X-Cache"], await hit.text()) == ("HIT", "product 1 #1")
        # B now holds it in its own memory layer too.
        assert (await b.client.get("/products/1")).headers["X-Cache"] == "HIT"
        dropped = await a.client.post("/invalidate/products")
        assert (await dropped.json())["dropped"] >= 1

        for _ in range(1000):  # bounded: the bus reaches B's memory layer shortly
            if (await b.client.get("/products/1")).headers["X-Cache"] == "MISS":
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("B kept serving the invalidated response")
        assert len(calls) == 2
    finally:
        await a.close()
        await b.close()


async def test_cold_url_across_two_instances_runs_the_handler_once(
    redis_clean: RedisServer,
) -> None:
    calls: list[str] = []
    gate = asyncio.Event()
    a = Instance(redis_clean.url, calls, gate)
    b = Instance(redis_clean.url, calls, gate)
    try:
        await a.start()
        await b.start()

        async def one(client: TestClient[web.Request, web.Application]) -> tuple[str, str]:
            async with client.get("/products/7") as response:
                return response.headers["X-Cache"], await response.text()

        requests = [asyncio.ensure_future(one(a.client if i % 2 else b.client)) for i in range(100)]
        await eventually_async(lambda: len(calls) >= 1, what="the first handler run")

        def joined() -> bool:
            return (
                a.cache.get_metrics().stampede_dedupes + b.cache.get_metrics().stampede_dedupes
                >= 98
            )

        await eventually_async(joined, what="every request waiting")
        gate.set()
        responses = await asyncio.gather(*requests)
    finally:
        await a.close()
        await b.close()
    assert calls == ["7"]
    assert {body for _, body in responses} == {"product 7 #1"}
    assert [kind for kind, _ in responses].count("MISS") == 1
