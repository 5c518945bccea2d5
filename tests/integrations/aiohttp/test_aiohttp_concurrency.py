"""cache_middleware under concurrency (aiohttp.test_utils, one event loop): 200 concurrent
requests on a cold URL run the handler once, and an uncacheable response (a cookie, too large,
streamed, 5xx) is never handed to the requests that joined its flight."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("aiohttp")

from aiohttp import TCPConnector, web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict

from layercache import CacheStack, MemoryLayer
from layercache.integrations.aiohttp import cache_middleware
from polling import eventually_async

N = 200


class Origin:
    """Handlers that wait on a gate, so every request arrives while the first one runs."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.calls = 0

    async def plain(self, _request: web.Request) -> web.StreamResponse:
        self.calls += 1
        await self.gate.wait()
        return web.Response(text="shared")

    async def cookie(self, _request: web.Request) -> web.StreamResponse:
        self.calls += 1
        n = self.calls
        await self.gate.wait()
        response = web.Response(text=f"private {n}")
        response.set_cookie("session", f"s{n}")
        return response

    async def big(self, _request: web.Request) -> web.StreamResponse:
        self.calls += 1
        n = self.calls
        await self.gate.wait()
        return web.Response(body=f"{n:08d}".encode() * 256, headers={"X-Call": str(n)})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        n = self.calls
        await self.gate.wait()
        response = web.StreamResponse(headers={"X-Call": str(n)})
        await response.prepare(request)
        await response.write(f"{n:08d}".encode() * 256)
        return response

    async def failing(self, _request: web.Request) -> web.StreamResponse:
        self.calls += 1
        await self.gate.wait()
        return web.Response(text=f"error {self.calls}", status=500)


def build(origin: Origin, cache: CacheStack, **options: Any) -> web.Application:
    app = web.Application(middlewares=[cache_middleware(cache, ttl=60, **options)])
    for name in ("plain", "cookie", "big", "stream", "failing"):
        app.router.add_get(f"/{name}", getattr(origin, name))
    return app


async def burst(app: web.Application, path: str) -> list[tuple[int, CIMultiDict[str], bytes]]:
    connector = TCPConnector(limit=0)  # every request on its own connection, all at once
    async with TestClient(TestServer(app), connector=connector) as client:

        async def one() -> tuple[int, CIMultiDict[str], bytes]:
            async with client.get(path) as response:
                return response.status, CIMultiDict(response.headers), await response.read()

        return await asyncio.gather(*(one() for _ in range(N)))


async def release_when_all_joined(origin: Origin, cache: CacheStack) -> None:
    await eventually_async(
        lambda: cache.get_metrics().stampede_dedupes >= N - 1, what="every request joined"
    )
    origin.gate.set()


async def test_cold_url_runs_the_handler_once_for_200_concurrent_requests() -> None:
    origin = Origin()
    async with CacheStack([MemoryLayer()]) as cache:
        releaser = asyncio.ensure_future(release_when_all_joined(origin, cache))
        responses = await burst(build(origin, cache), "/plain")
        await releaser
    assert origin.calls == 1
    assert all(status == 200 and body == b"shared" for status, _, body in responses)
    kinds = sorted(headers["X-Cache"] for _, headers, _ in responses)
    assert kinds.count("MISS") == 1
    assert kinds.count("HIT") == N - 1


@pytest.mark.parametrize("path", ["/cookie", "/big", "/stream"])
async def test_uncacheable_response_is_never_handed_to_joined_requests(path: str) -> None:
    origin = Origin()
    async with CacheStack([MemoryLayer()]) as cache:
        releaser = asyncio.ensure_future(release_when_all_joined(origin, cache))
        responses = await burst(build(origin, cache, max_body_size=1024), path)
        await releaser
    # Every request ran the handler itself and got its own response.
    assert origin.calls == N
    seen: set[int] = set()
    for status, headers, body in responses:
        assert (status, headers["X-Cache"]) == (200, "MISS")
        if path == "/cookie":
            n = int(headers["Set-Cookie"].split("=s")[1].split(";")[0])
            assert body == f"private {n}".encode()
        else:
            n = int(headers["X-Call"])
            assert body == f"{n:08d}".encode() * 256
        seen.add(n)
    assert len(seen) == N


async def test_5xx_under_concurrency_is_not_shared() -> None:
    origin = Origin()
    async with CacheStack([MemoryLayer()]) as cache:
        releaser = asyncio.ensure_future(release_when_all_joined(origin, cache))
        responses = await burst(build(origin, cache), "/failing")
        await releaser
    assert origin.calls == N
    assert all(status == 500 and h["X-Cache"] == "MISS" for status, h, _ in responses)
