"""CacheMiddleware's lean hit path: what it remembers between requests (the keys it built, the
ready-to-send form of stored responses) never changes what a request gets."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx2")

import httpx2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from _redis_server import RedisServer
from layercache import CacheStack, MemoryLayer
from layercache.integrations import _http, asgi
from layercache.integrations._http import ReadyMemo, build_key, freeze
from layercache.integrations.asgi import CacheMiddleware
from layercache.redis import RedisLayer
from layercache.testing import ManualClock
from polling import eventually


def app_with(cache: CacheStack, clock: ManualClock, **options: Any) -> tuple[Any, list[str]]:
    calls: list[str] = []

    async def page(request: Request) -> Response:
        calls.append(request.url.path)
        return PlainTextResponse(f"page {request.url.path} #{len(calls)}")

    async def plant(request: Request) -> Response:
        """Store a response of our own under /p's key (another writer of the same key)."""
        key = build_key("http", "/p", "", host="testserver")
        entry = freeze(200, [("x-planted", "yes")], b"planted", ttl=10, now=clock())
        await cache.set(key, entry, ttl=10)
        return PlainTextResponse("planted")

    inner = Starlette(
        routes=[Route("/plant", plant, methods=["POST"]), Route("/{name:path}", page)]
    )
    return CacheMiddleware(inner, cache, ttl=10, clock=clock, **options), calls


def test_a_replaced_entry_is_served_as_stored_not_as_remembered() -> None:
    clock = ManualClock(1_000.0)
    cache = CacheStack([MemoryLayer(ttl=3600)], clock=clock)
    app, calls = app_with(cache, clock)
    with TestClient(app) as client:
        assert client.get("/p").headers["x-cache"] == "MISS"
        hit = client.get("/p")
        assert (hit.text, hit.headers["x-cache"]) == ("page /p #1", "HIT")
        client.post("/plant")
        planted = client.get("/p")
        assert (planted.text, planted.headers["x-cache"]) == ("planted", "HIT")
        assert planted.headers["x-planted"] == "yes"
        assert planted.headers["content-length"] == "7"
    assert calls == ["/p"]


def test_age_and_staleness_are_computed_per_request_on_a_remembered_response() -> None:
    clock = ManualClock(1_000.0)
    cache = CacheStack([MemoryLayer(ttl=3600)], clock=clock)
    app, calls = app_with(cache, clock, stale_while_revalidate=30)
    with TestClient(app) as client:
        client.get("/a")
        for age in (0, 4, 9):
            response = client.get("/a")
            assert (response.headers["x-cache"], response.headers["age"]) == ("HIT", str(age))
            clock.advance(4 if age == 0 else 5)
        # 14 s after storing: past the 10 s TTL, inside stale-while-revalidate.
        stale = client.get("/a")
        assert (stale.headers["x-cache"], stale.headers["age"]) == ("STALE", "14")
        assert stale.text == "page /a #1"
        eventually(lambda: len(calls) == 2, what="the background refresh")
        assert client.get("/a").text == "page /a #2"  # the refreshed one, not the remembered


def test_head_hit_from_a_remembered_get_response_has_no_body() -> None:
    clock = ManualClock(1_000.0)
    cache = CacheStack([MemoryLayer(ttl=3600)], clock=clock)
    app, calls = app_with(cache, clock)
    with TestClient(app) as client:
        client.get("/h")
        assert client.get("/h").headers["x-cache"] == "HIT"
        head = client.head("/h")
        assert (head.headers["x-cache"], head.content) == ("HIT", b"")
        assert head.headers["content-length"] == str(len("page /h #1"))
    assert calls == ["/h"]


def test_the_key_memo_is_bounded_and_hostile_urls_keep_distinct_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(asgi, "_KEY_MEMO", 8)
    clock = ManualClock(1_000.0)
    cache = CacheStack([MemoryLayer(ttl=3600)], clock=clock)
    app, calls = app_with(cache, clock)
    with TestClient(app) as client:
        for n in range(20):
            client.get(f"/k/{n}?x={'y' * 600}")  # over 512 characters: hashed keys
        assert len(app._keys) <= 8
        assert client.get("/k/3?x=" + "y" * 600).headers["x-cache"] == "HIT"
        assert client.get("/k/3?x=" + "y" * 601).headers["x-cache"] == "MISS"
    assert len(calls) == 21


def test_credentials_are_still_seen_by_the_single_header_pass() -> None:
    clock = ManualClock(1_000.0)
    cache = CacheStack([MemoryLayer(ttl=3600)], clock=clock)
    app, calls = app_with(cache, clock)
    with TestClient(app) as client:
        client.get("/c")
        for headers in ({"Cookie": "s=1"}, {"Authorization": "Bearer x"}, {"Range": "bytes=0-1"}):
            assert "x-cache" not in client.get("/c", headers=headers).headers
        no_store = client.get("/c", headers={"Cache-Control": "no-store"})
        assert "x-cache" not in no_store.headers
        # A Cache-Control the cache accepts is checked and let through.
        assert client.get("/c", headers={"Cache-Control": "max-age=0"}).headers["x-cache"] == "HIT"
    assert calls == ["/c"] * 5


def test_ready_memo_by_identity_and_bounded() -> None:
    memo = ReadyMemo(max_entries=2, max_bytes=100)
    value: dict[str, Any] = {"v": 1}
    memo.put("a", value, "ready-a", 10)
    assert memo.get("a", value) == "ready-a"
    assert memo.get("a", {"v": 1}) is None  # an equal but other object: not this entry
    other: dict[str, Any] = {"v": 2}
    memo.put("a", other, "ready-a2", 10)  # replaced, not added
    assert (len(memo), memo.get("a", value), memo.get("a", other)) == (1, None, "ready-a2")
    memo.put("b", value, "ready-b", 10)
    memo.put("c", value, "ready-c", 10)  # a third key: starts over
    assert (len(memo), memo.get("c", value)) == (1, "ready-c")
    memo.put("d", value, "ready-d", 95)  # over the byte budget with c: starts over
    assert (len(memo), memo.get("d", value)) == (1, "ready-d")
    memo.put("d", value, "huge", 101)  # larger than the budget: not kept at all
    assert (len(memo), memo.get("d", value)) == (0, None)


def test_hit_headers_are_ready_headers_plus_age_and_x_cache() -> None:
    stored = _http.thaw(freeze(200, [("content-type", "text/plain")], b"abc", ttl=5, now=10.0))
    assert stored is not None
    assert _http.hit_headers(stored, "HIT", 12.5) == [
        ("content-type", "text/plain"),
        ("content-length", "3"),
        ("age", "2"),
        ("x-cache", "HIT"),
    ]


@pytest.mark.redis
async def test_a_stack_that_decodes_every_read_hits_and_keeps_one_entry_per_key(
    redis_clean: RedisServer,
) -> None:
    clock = ManualClock(1_000.0)
    cache = CacheStack([RedisLayer(url=redis_clean.url, ttl=600)], clock=clock)
    app, calls = app_with(cache, clock)
    async with (
        cache,
        httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=app), base_url="http://testserver"
        ) as client,
    ):
        assert (await client.get("/r")).headers["x-cache"] == "MISS"
        for age in (1, 2, 3):
            clock.advance(1)
            response = await client.get("/r")
            assert (response.text, response.headers["x-cache"]) == ("page /r #1", "HIT")
            assert response.headers["age"] == str(age)
        assert len(app._ready) == 1
    assert calls == ["/r"]
