"""CacheMiddleware under concurrency (httpx2.AsyncClient over ASGITransport, one event loop):
single-flight at the HTTP level, and an uncacheable response never shared with the requests
that joined its flight."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx2")

import httpx2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from layercache import CacheStack, MemoryLayer
from layercache.integrations.asgi import CacheMiddleware
from polling import eventually_async

N = 200


class Origin:
    """Routes that wait on a gate, so every request arrives while the first one runs."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.calls = 0

    async def plain(self, _request: Request) -> Response:
        self.calls += 1
        await self.gate.wait()
        return PlainTextResponse("shared")

    async def cookie(self, _request: Request) -> Response:
        self.calls += 1
        n = self.calls
        await self.gate.wait()
        response = PlainTextResponse(f"private {n}")
        response.set_cookie("session", f"s{n}")
        return response

    async def big(self, _request: Request) -> Response:
        self.calls += 1
        n = self.calls
        await self.gate.wait()

        async def stream() -> AsyncIterator[bytes]:
            for _ in range(4):
                yield f"{n:08d}".encode() * 64

        # No Content-Length: only the body's size, as it streams, says "too large".
        return StreamingResponse(stream(), headers={"X-Call": str(n)})

    async def failing(self, _request: Request) -> Response:
        self.calls += 1
        await self.gate.wait()
        return PlainTextResponse(f"error {self.calls}", status_code=500)


def build(origin: Origin, cache: CacheStack, **options: Any) -> Any:
    app = Starlette(
        routes=[
            Route("/plain", origin.plain),
            Route("/cookie", origin.cookie),
            Route("/big", origin.big),
            Route("/failing", origin.failing),
        ]
    )
    return CacheMiddleware(app, cache, ttl=60, **options)


async def burst(app: Any, path: str, cache: CacheStack) -> list[Any]:
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=app), base_url="http://test"
    ) as client:
        tasks = [asyncio.ensure_future(client.get(path)) for _ in range(N)]
        return await asyncio.gather(*tasks)


async def release_when_all_joined(origin: Origin, cache: CacheStack) -> None:
    await eventually_async(
        lambda: cache.get_metrics().stampede_dedupes >= N - 1, what="every request joined"
    )
    origin.gate.set()


async def test_cold_url_runs_the_app_once_for_200_concurrent_requests() -> None:
    origin = Origin()
    async with CacheStack([MemoryLayer()]) as cache:
        app = build(origin, cache)
        releaser = asyncio.ensure_future(release_when_all_joined(origin, cache))
        responses = await burst(app, "/plain", cache)
        await releaser
    assert origin.calls == 1
    assert all(r.status_code == 200 and r.text == "shared" for r in responses)
    kinds = sorted(r.headers["x-cache"] for r in responses)
    assert kinds.count("MISS") == 1
    assert kinds.count("HIT") == N - 1


@pytest.mark.parametrize("path", ["/cookie", "/big"])
async def test_uncacheable_response_is_never_handed_to_joined_requests(path: str) -> None:
    origin = Origin()
    async with CacheStack([MemoryLayer()]) as cache:
        app = build(origin, cache, max_body_size=1024)
        releaser = asyncio.ensure_future(release_when_all_joined(origin, cache))
        responses = await burst(app, path, cache)
        await releaser
    # Every request ran the application itself and got its own response.
    assert origin.calls == N
    seen: set[int] = set()
    for response in responses:
        assert response.status_code == 200
        assert response.headers["x-cache"] == "MISS"
        if path == "/cookie":
            n = int(response.headers["set-cookie"].split("=s")[1].split(";")[0])
            assert response.text == f"private {n}"
        else:
            n = int(response.headers["x-call"])
            assert response.content == f"{n:08d}".encode() * 256
        seen.add(n)
    assert len(seen) == N


async def test_5xx_under_concurrency_is_not_shared() -> None:
    origin = Origin()
    async with CacheStack([MemoryLayer()]) as cache:
        app = build(origin, cache)
        releaser = asyncio.ensure_future(release_when_all_joined(origin, cache))
        responses = await burst(app, "/failing", cache)
        await releaser
    assert origin.calls == N
    assert all(r.status_code == 500 and r.headers["x-cache"] == "MISS" for r in responses)
