"""cache_middleware's hit path remembers the ready form of stored responses: a replaced entry,
age and staleness stay exact."""

from __future__ import annotations

import pytest

pytest.importorskip("aiohttp")

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from layercache import CacheStack, MemoryLayer
from layercache.integrations._http import build_key, freeze
from layercache.integrations.aiohttp import cache_middleware
from layercache.testing import ManualClock


async def test_a_replaced_entry_and_the_age_are_exact_on_remembered_hits() -> None:
    clock = ManualClock(1_000.0)
    cache = CacheStack([MemoryLayer(ttl=3600)], clock=clock)
    calls: list[str] = []

    async def page(request: web.Request) -> web.StreamResponse:
        calls.append(request.path)
        return web.Response(text=f"page #{len(calls)}")

    app = web.Application(middlewares=[cache_middleware(cache, ttl=10, clock=clock)])
    app.router.add_get("/p", page)
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/p")).headers["X-Cache"] == "MISS"
        for age in (0, 3):
            hit = await client.get("/p")
            assert (hit.headers["X-Cache"], hit.headers["Age"]) == ("HIT", str(age))
            assert await hit.text() == "page #1"
            clock.advance(3)
        key = build_key("http", "/p", "", host=f"{client.host}:{client.port}".lower())
        entry = freeze(200, [("x-planted", "yes")], b"planted", ttl=10, now=clock())
        await cache.set(key, entry, ttl=10)
        planted = await client.get("/p")
        assert (await planted.text(), planted.headers["X-Planted"]) == ("planted", "yes")
        assert planted.headers["Age"] == "0"
        clock.advance(11)
        # Past its TTL (no stale option): the stack fetches again, never the remembered form.
        again = await client.get("/p")
        assert (again.headers["X-Cache"], await again.text()) == ("MISS", "page #2")
    assert calls == ["/p", "/p"]
