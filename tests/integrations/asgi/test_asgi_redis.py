"""Two CacheMiddleware instances sharing a real Redis (layer, bus, tag index, single-flight)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx2")

import httpx2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from _redis_server import RedisServer
from layercache import CacheStack, MemoryLayer
from layercache.integrations.asgi import CacheMiddleware
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
            url=url, channel="asgi:inv", signing_secret="test-secret"
        ),
        single_flight_coordinator=RedisSingleFlightCoordinator(url=url, prefix="asgi:sf"),
        single_flight_timeout=10,
        tag_index=RedisTagIndex(url=url, prefix="asgi:tags"),
    )


class Instance:
    def __init__(self, url: str, calls: list[str], gate: asyncio.Event | None = None) -> None:
        self.cache = stack(url)

        async def product(request: Request) -> Response:
            calls.append(request.path_params["pid"])
            if gate is not None:
                await gate.wait()
            return PlainTextResponse(f"product {request.path_params['pid']} #{len(calls)}")

        async def invalidate(request: Request) -> Response:
            return JSONResponse(
                {"dropped": await self.cache.invalidate_by_tag(request.path_params["tag"])}
            )

        app = Starlette(
            routes=[
                Route("/products/{pid}", product),
                Route("/invalidate/{tag}", invalidate, methods=["POST"]),
            ]
        )
        self.app = CacheMiddleware(
            app, self.cache, ttl=120, tags=lambda scope: ["products", scope["path"]]
        )
        self.client = httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=self.app), base_url="http://shop"
        )

    async def close(self) -> None:
        await self.client.aclose()
        await self.cache.aclose()


async def test_b_hits_what_a_cached_and_a_tag_invalidation_reaches_b(
    redis_clean: RedisServer,
) -> None:
    calls: list[str] = []
    a, b = Instance(redis_clean.url, calls), Instance(redis_clean.url, calls)
    try:
        await a.cache.start()
        await b.cache.start()
        miss = await a.client.get("/products/1")
        assert miss.headers["x-cache"] == "MISS"
        hit = await b.client.get("/products/1")
        assert (hit.headers["x-cache"], hit.text) == ("HIT", "product 1 #1")
        # B now holds it in its own memory layer too.
        assert (await b.client.get("/products/1")).headers["x-cache"] == "HIT"
        dropped = await a.client.post("/invalidate/products")
        assert dropped.json()["dropped"] >= 1

        async def b_misses() -> bool:
            return (await b.client.get("/products/1")).headers["x-cache"] == "MISS"

        for _ in range(1000):
            if await b_misses():
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("B kept serving the invalidated response")
        assert len(calls) == 2
    finally:
        await a.close()
        await b.close()


async def test_cold_url_across_two_instances_runs_the_app_once(redis_clean: RedisServer) -> None:
    calls: list[str] = []
    gate = asyncio.Event()
    a = Instance(redis_clean.url, calls, gate)
    b = Instance(redis_clean.url, calls, gate)
    try:
        await a.cache.start()
        await b.cache.start()
        requests: list[Any] = []
        for index in range(100):
            client = a.client if index % 2 else b.client
            requests.append(asyncio.ensure_future(client.get("/products/7")))
        await eventually_async(lambda: len(calls) >= 1, what="the first origin call")

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
    assert {r.text for r in responses} == {"product 7 #1"}
    assert [r.headers["x-cache"] for r in responses].count("MISS") == 1
