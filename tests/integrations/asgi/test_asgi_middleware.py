"""CacheMiddleware with Starlette's and FastAPI's own TestClient: what is cached, how, and what
never is (issue 13, first bullet)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx2")  # what starlette's TestClient uses

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from layercache import CacheStack, MemoryLayer
from layercache.integrations._http import build_key
from layercache.integrations.asgi import CacheMiddleware
from layercache.testing import ManualClock
from polling import eventually

Handler = Callable[[Request], Any]


class Harness:
    """A Starlette app whose routes count their calls, behind CacheMiddleware."""

    def __init__(self, **options: Any) -> None:
        self.clock = ManualClock(1_000_000.0)
        self.cache = CacheStack([MemoryLayer(ttl=3600)], clock=self.clock)
        self.calls: dict[str, int] = {}
        self.routes: list[Route] = []
        self.options = options

    def route(self, path: str, methods: list[str] | None = None) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            name = path

            async def endpoint(request: Request) -> Any:
                self.calls[name] = self.calls.get(name, 0) + 1
                return await handler(request)

            self.routes.append(Route(path, endpoint, methods=methods))
            return handler

        return register

    def client(self, **kwargs: Any) -> TestClient:
        app = Starlette(routes=self.routes)
        options = {"ttl": 10, "clock": self.clock, **self.options}
        app.add_middleware(CacheMiddleware, cache=self.cache, **options)
        return TestClient(app, **kwargs)

    def count(self, path: str) -> int:
        return self.calls.get(path, 0)


def text(body: str, **headers: str) -> Callable[[Request], Any]:
    async def handler(_request: Request) -> Response:
        return PlainTextResponse(body, headers=headers)

    return handler


@pytest.fixture
def harness() -> Harness:
    return Harness()


def test_get_is_cached_with_status_headers_and_body(harness: Harness) -> None:
    @harness.route("/items")
    async def items(request: Request) -> Response:
        n = harness.count("/items")
        return JSONResponse({"n": n}, status_code=203, headers={"X-Origin": f"call-{n}"})

    with harness.client() as client:
        first = client.get("/items")
        assert first.headers["x-cache"] == "MISS"
        harness.clock.advance(3)
        second = client.get("/items")
    assert second.status_code == 203
    assert second.json() == {"n": 1}
    assert second.headers["x-origin"] == "call-1"
    assert second.headers["x-cache"] == "HIT"
    assert second.headers["age"] == "3"
    assert second.headers["content-type"] == "application/json"
    assert harness.count("/items") == 1


def test_query_order_does_not_matter_but_values_do(harness: Harness) -> None:
    harness.route("/q")(text("q"))
    with harness.client() as client:
        assert client.get("/q?a=1&b=2").headers["x-cache"] == "MISS"
        assert client.get("/q?b=2&a=1").headers["x-cache"] == "HIT"
        assert client.get("/q?a=1&b=3").headers["x-cache"] == "MISS"
        assert client.get("/q?a=2&a=1").headers["x-cache"] == "MISS"
        # Repeated parameters keep their order (an application may read them as a list).
        assert client.get("/q?a=1&a=2").headers["x-cache"] == "MISS"
    assert harness.count("/q") == 4


def test_entry_expires_after_ttl(harness: Harness) -> None:
    harness.route("/t")(text("t"))
    with harness.client() as client:
        client.get("/t")
        harness.clock.advance(9)
        assert client.get("/t").headers["x-cache"] == "HIT"
        harness.clock.advance(2)
        assert client.get("/t").headers["x-cache"] == "MISS"
    assert harness.count("/t") == 2


def test_head_is_served_from_the_get_entry(harness: Harness) -> None:
    harness.route("/h", methods=["GET", "HEAD"])(text("the body"))
    with harness.client() as client:
        head = client.head("/h")
        assert head.headers["x-cache"] == "MISS"
        assert head.content == b""
        assert head.headers["content-length"] == "8"
        # The HEAD miss stored the GET response, body included.
        get = client.get("/h")
        assert get.headers["x-cache"] == "HIT"
        assert get.text == "the body"
        head_again = client.head("/h")
        assert head_again.headers["x-cache"] == "HIT"
        assert head_again.content == b""
    assert harness.count("/h") == 1


def test_hop_by_hop_and_x_cache_headers_are_not_stored(harness: Harness) -> None:
    harness.route("/hop")(text("x", **{"X-Cache": "FORGED", "Keep-Alive": "timeout=5"}))
    with harness.client() as client:
        miss = client.get("/hop")
        hit = client.get("/hop")
    assert miss.headers.get_list("x-cache") == ["MISS"]
    assert hit.headers.get_list("x-cache") == ["HIT"]
    assert "keep-alive" not in hit.headers


def test_binary_body_round_trips_exactly(harness: Harness) -> None:
    payload = bytes(range(256)) * 4

    @harness.route("/bin")
    async def binary(_request: Request) -> Response:
        return Response(payload, media_type="application/octet-stream")

    with harness.client() as client:
        client.get("/bin")
        hit = client.get("/bin")
    assert hit.headers["x-cache"] == "HIT"
    assert hit.content == payload


# ---------------------------------------------------------------------- never cached


async def with_cookie(_request: Request) -> Response:
    response = PlainTextResponse("hi")
    response.set_cookie("session", "secret")
    return response


@pytest.mark.parametrize(
    ("handler", "request_headers", "status"),
    [
        pytest.param(with_cookie, {}, 200, id="set-cookie"),
        pytest.param(text("x", **{"Cache-Control": "no-store"}), {}, 200, id="resp-no-store"),
        pytest.param(text("x", **{"Cache-Control": "private"}), {}, 200, id="resp-private"),
        pytest.param(text("x", **{"Cache-Control": "no-cache"}), {}, 200, id="resp-no-cache"),
        pytest.param(text("x", **{"X-Cache-Bypass": "1"}), {}, 200, id="bypass-header"),
        pytest.param(text("x", Vary="*"), {}, 200, id="vary-star"),
        pytest.param(text("x"), {"Authorization": "Bearer t"}, 200, id="authorization"),
        pytest.param(text("x"), {"Cookie": "a=b"}, 200, id="cookie"),
        pytest.param(text("x"), {"Cache-Control": "no-store"}, 200, id="req-no-store"),
        pytest.param(text("x"), {"Range": "bytes=0-1"}, 200, id="range"),
    ],
)
def test_never_cached(
    harness: Harness, handler: Handler, request_headers: dict[str, str], status: int
) -> None:
    harness.route("/n")(handler)
    with harness.client() as client:
        for _ in range(2):
            response = client.get("/n", headers=request_headers)
            assert response.status_code == status
            assert response.headers.get("x-cache") in (None, "MISS")
    assert harness.count("/n") == 2


@pytest.mark.parametrize("status", [201, 206, 302, 304, 400, 404, 500, 503])
def test_statuses_outside_the_cacheable_set_are_not_cached(harness: Harness, status: int) -> None:
    @harness.route("/s")
    async def handler(_request: Request) -> Response:
        return Response(b"" if status == 304 else b"body", status_code=status)

    with harness.client() as client:
        for _ in range(2):
            response = client.get("/s", follow_redirects=False)
            assert response.status_code == status
            assert response.headers["x-cache"] == "MISS"
    assert harness.count("/s") == 2


@pytest.mark.parametrize("status", [200, 203, 204, 300, 301, 308])
def test_default_cacheable_statuses(harness: Harness, status: int) -> None:
    @harness.route("/s")
    async def handler(_request: Request) -> Response:
        return Response(b"" if status == 204 else b"body", status_code=status)

    with harness.client() as client:
        client.get("/s", follow_redirects=False)
        hit = client.get("/s", follow_redirects=False)
    assert hit.status_code == status
    assert hit.headers["x-cache"] == "HIT"
    assert harness.count("/s") == 1


def test_statuses_option_is_limited_to_2xx_and_3xx() -> None:
    app = Starlette()
    cache = CacheStack([MemoryLayer()])
    with pytest.raises(ValueError, match="200-399"):
        CacheMiddleware(app, cache, statuses={200, 404})
    with pytest.raises(ValueError, match="ttl"):
        CacheMiddleware(app, cache, ttl=0)
    with pytest.raises(ValueError, match="single str"):
        CacheMiddleware(app, cache, tags="products")


def test_post_is_never_cached(harness: Harness) -> None:
    harness.route("/p", methods=["POST"])(text("p"))
    with harness.client() as client:
        assert "x-cache" not in client.post("/p").headers
        client.post("/p")
    assert harness.count("/p") == 2


def test_body_over_max_body_size_passes_through_streamed() -> None:
    harness = Harness(max_body_size=1000)
    chunk = b"x" * 400

    @harness.route("/big")
    async def big(_request: Request) -> Response:
        async def stream() -> AsyncIterator[bytes]:
            for _ in range(5):
                yield chunk

        return StreamingResponse(stream(), media_type="text/plain")

    harness.route("/fixed")(text("y" * 2000))

    with harness.client() as client:
        for _ in range(2):
            response = client.get("/big")
            assert response.content == chunk * 5
            assert response.headers["x-cache"] == "MISS"
            fixed = client.get("/fixed")
            assert fixed.text == "y" * 2000
            assert fixed.headers["x-cache"] == "MISS"
    assert harness.count("/big") == 2
    assert harness.count("/fixed") == 2


def test_small_streaming_response_is_cached(harness: Harness) -> None:
    @harness.route("/stream")
    async def streamed(_request: Request) -> Response:
        async def stream() -> AsyncIterator[bytes]:
            yield b"a"
            yield b"b"

        return StreamingResponse(stream(), media_type="text/plain")

    with harness.client() as client:
        client.get("/stream")
        hit = client.get("/stream")
    assert hit.content == b"ab"
    assert hit.headers["x-cache"] == "HIT"
    assert hit.headers["content-length"] == "2"


def test_exclude_paths_and_predicate() -> None:
    harness = Harness(exclude=["/admin"])
    for path in ("/admin", "/admin/users", "/administrators"):
        harness.route(path)(text(path))
    with harness.client() as client:
        for _ in range(2):
            client.get("/admin")
            client.get("/admin/users")
            client.get("/administrators")
    assert harness.count("/admin") == 2
    assert harness.count("/admin/users") == 2
    assert harness.count("/administrators") == 1

    other = Harness(exclude=lambda scope: scope["path"].endswith(".live"))
    other.route("/feed.live")(text("live"))
    with other.client() as client:
        client.get("/feed.live")
        assert "x-cache" not in client.get("/feed.live").headers
    assert other.count("/feed.live") == 2


def test_key_resolver_owns_identity_for_credentialed_requests() -> None:
    def user(scope: dict[str, Any]) -> str | None:
        headers = dict(scope["headers"])
        token = headers.get(b"authorization")
        return None if token is None else token.decode()

    harness = Harness(key_resolver=user)

    @harness.route("/me")
    async def me(request: Request) -> Response:
        return PlainTextResponse(request.headers.get("authorization", "nobody"))

    with harness.client() as client:
        assert client.get("/me", headers={"Authorization": "alice"}).headers["x-cache"] == "MISS"
        hit = client.get("/me", headers={"Authorization": "alice"})
        assert (hit.headers["x-cache"], hit.text) == ("HIT", "alice")
        bob = client.get("/me", headers={"Authorization": "bob"})
        assert (bob.headers["x-cache"], bob.text) == ("MISS", "bob")
        # None: this request is not cached at all.
        assert "x-cache" not in client.get("/me").headers
        assert "x-cache" not in client.get("/me").headers
    assert harness.count("/me") == 4


# ---------------------------------------------------------------------- Vary


def test_vary_puts_the_varied_request_headers_in_the_key(harness: Harness) -> None:
    @harness.route("/greet")
    async def greet(request: Request) -> Response:
        language = request.headers.get("accept-language", "en")
        return PlainTextResponse(
            {"fr": "bonjour", "en": "hello"}.get(language, "?"), headers={"Vary": "Accept-Language"}
        )

    with harness.client() as client:
        assert client.get("/greet", headers={"Accept-Language": "en"}).text == "hello"
        assert client.get("/greet", headers={"Accept-Language": "fr"}).text == "bonjour"
        en = client.get("/greet", headers={"Accept-Language": "en"})
        fr = client.get("/greet", headers={"Accept-Language": "fr"})
        other = client.get("/greet", headers={"Accept-Language": "de"})
    assert (en.headers["x-cache"], en.text) == ("HIT", "hello")
    assert (fr.headers["x-cache"], fr.text) == ("HIT", "bonjour")
    assert (other.headers["x-cache"], other.text) == ("MISS", "?")
    assert harness.count("/greet") == 3


# ---------------------------------------------------------------------- Cache-Control


def test_respect_cache_control_s_maxage_wins() -> None:
    harness = Harness(respect_cache_control=True)
    harness.route("/cc")(text("cc", **{"Cache-Control": "public, max-age=5, s-maxage=100"}))
    harness.route("/ma")(text("ma", **{"Cache-Control": "max-age=50"}))
    harness.route("/zero")(text("zero", **{"Cache-Control": "max-age=0"}))
    with harness.client() as client:
        for path in ("/cc", "/ma", "/zero"):
            client.get(path)
        harness.clock.advance(40)  # past the default ttl (10) and max-age=5
        assert client.get("/cc").headers["x-cache"] == "HIT"
        assert client.get("/ma").headers["x-cache"] == "HIT"
        assert client.get("/zero").headers["x-cache"] == "MISS"
        harness.clock.advance(20)  # 60 s: past max-age=50, within s-maxage=100
        assert client.get("/cc").headers["x-cache"] == "HIT"
        assert client.get("/ma").headers["x-cache"] == "MISS"
    assert harness.count("/zero") == 2


def test_without_the_option_max_age_is_ignored(harness: Harness) -> None:
    harness.route("/cc")(text("cc", **{"Cache-Control": "max-age=1000"}))
    with harness.client() as client:
        client.get("/cc")
        harness.clock.advance(11)
        assert client.get("/cc").headers["x-cache"] == "MISS"


# ---------------------------------------------------------------------- stale responses


def test_stale_while_revalidate_serves_stale_and_refreshes_once() -> None:
    harness = Harness(stale_while_revalidate=30)

    @harness.route("/swr")
    async def swr(_request: Request) -> Response:
        return PlainTextResponse(f"v{harness.count('/swr')}")

    with harness.client() as client:
        assert client.get("/swr").text == "v1"
        harness.clock.advance(15)
        stale = client.get("/swr")
        assert (stale.headers["x-cache"], stale.text) == ("STALE", "v1")
        eventually(lambda: harness.count("/swr") == 2, what="one background refresh")
        eventually(
            lambda: client.get("/swr").headers["x-cache"] == "HIT", what="the refreshed entry"
        )
        fresh = client.get("/swr")
    assert (fresh.headers["x-cache"], fresh.text, fresh.headers["age"]) == ("HIT", "v2", "0")
    assert harness.count("/swr") == 2


def test_stale_while_revalidate_refresh_that_is_not_cacheable_keeps_stale() -> None:
    harness = Harness(stale_while_revalidate=30)

    @harness.route("/swr")
    async def swr(_request: Request) -> Response:
        response = PlainTextResponse(f"v{harness.count('/swr')}")
        if harness.count("/swr") > 1:
            response.set_cookie("session", "secret")
        return response

    with harness.client() as client:
        client.get("/swr")
        harness.clock.advance(15)
        stale = client.get("/swr")
        assert (stale.headers["x-cache"], stale.text) == ("STALE", "v1")
        assert "set-cookie" not in stale.headers
        eventually(lambda: harness.count("/swr") == 2, what="the background refresh")
        again = client.get("/swr")
    assert "set-cookie" not in again.headers
    assert again.text in ("v1", "v3")


def test_stale_if_error_replaces_a_5xx_or_an_exception() -> None:
    harness = Harness(stale_if_error=60)
    failure: dict[str, str] = {"mode": "ok"}

    @harness.route("/sie")
    async def sie(_request: Request) -> Response:
        if failure["mode"] == "500":
            return PlainTextResponse("down", status_code=503)
        if failure["mode"] == "raise":
            raise RuntimeError("origin exploded")
        return PlainTextResponse("good")

    with harness.client() as client:
        assert client.get("/sie").text == "good"
        harness.clock.advance(20)
        failure["mode"] = "500"
        stale = client.get("/sie")
        assert (stale.status_code, stale.text, stale.headers["x-cache"]) == (200, "good", "STALE")
        failure["mode"] = "raise"
        stale = client.get("/sie")
        assert (stale.status_code, stale.text, stale.headers["x-cache"]) == (200, "good", "STALE")
        # No stale response to fall back on: the error itself.
        failure["mode"] = "500"
        fresh_key = client.get("/sie?other=1")
        assert (fresh_key.status_code, fresh_key.headers["x-cache"]) == (503, "MISS")
        failure["mode"] = "raise"
        with pytest.raises(RuntimeError, match="origin exploded"):
            client.get("/sie?other=2")
        # Beyond the stale-if-error window: the error.
        harness.clock.advance(100)
        failure["mode"] = "500"
        assert client.get("/sie").status_code == 503


def test_errors_are_not_cached_without_stale_if_error(harness: Harness) -> None:
    @harness.route("/boom")
    async def boom(_request: Request) -> Response:
        raise RuntimeError("boom")

    with harness.client() as client:
        for _ in range(2):
            with pytest.raises(RuntimeError, match="boom"):
                client.get("/boom")
    assert harness.count("/boom") == 2


# ---------------------------------------------------------------------- tags


def test_tags_invalidated_from_application_code() -> None:
    harness = Harness(tags=lambda scope: ["products", f"path:{scope['path']}"])

    @harness.route("/products/{pid}")
    async def product(request: Request) -> Response:
        return PlainTextResponse(f"{request.path_params['pid']}:{harness.count('/products/{pid}')}")

    @harness.route("/invalidate/{tag:path}", methods=["POST"])
    async def invalidate(request: Request) -> Response:
        dropped = await harness.cache.invalidate_by_tag(request.path_params["tag"])
        return JSONResponse({"dropped": dropped})

    with harness.client() as client:
        client.get("/products/1")
        client.get("/products/2")
        assert client.get("/products/1").headers["x-cache"] == "HIT"
        assert client.post("/invalidate/path:/products/1").json() == {"dropped": 1}
        assert client.get("/products/1").headers["x-cache"] == "MISS"
        assert client.get("/products/2").headers["x-cache"] == "HIT"
        assert client.post("/invalidate/products").json() == {"dropped": 2}
        assert client.get("/products/1").headers["x-cache"] == "MISS"
        assert client.get("/products/2").headers["x-cache"] == "MISS"


# ---------------------------------------------------------------------- hostile input


@pytest.mark.parametrize(
    "url",
    [
        "/h?" + "a=" + "x" * 20_000,
        "/h?" + "&".join(f"k{i}=v" for i in range(3000)),
        "/h?%00%01=%ff&%7f=1",
        "/h?=&&&=&a",
        "/h/%E2%98%83/%F0%9F%98%80?q=%ED%A0%80",
        "/h/" + "p" * 3000,
    ],
)
def test_hostile_urls_still_cache(harness: Harness, url: str) -> None:
    harness.route("/h{rest:path}")(text("ok"))
    with harness.client() as client:
        assert client.get(url).headers["x-cache"] == "MISS"
        assert client.get(url).headers["x-cache"] == "HIT"


def test_hostile_varied_header_values(harness: Harness) -> None:
    harness.route("/v")(text("v", Vary="X-Odd, Accept"))
    odd = b"\xff" * 5000
    with harness.client() as client:
        assert client.get("/v", headers={"X-Odd": odd}).headers["x-cache"] == "MISS"
        assert client.get("/v", headers={"X-Odd": odd}).headers["x-cache"] == "HIT"
        assert client.get("/v", headers={"X-Odd": odd + b"!"}).headers["x-cache"] == "MISS"


async def test_raw_asgi_scope_with_odd_bytes_and_text() -> None:
    """What a server may hand over, beyond what an HTTP client library lets a test send."""
    calls: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"vary", b"x-b")]})
        await send({"type": "http.response.body", "body": b"ok"})

    cache = CacheStack([MemoryLayer()])
    middleware = CacheMiddleware(app, cache)
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/odd\x00\x7f\ud800/\u2603",
        "root_path": "",
        "query_string": b"\x00\xff\x7f=\x80&" + b"z" * 5000,
        "headers": [(b"host", b"\x00\xff" * 600), (b"x-b", b"\x01\xfe" * 600)],
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    for _ in range(2):
        await middleware(dict(scope), receive, send)
    statuses = [dict(m["headers"])[b"x-cache"] for m in sent if m["type"] == "http.response.start"]
    assert statuses == [b"MISS", b"HIT"]
    assert len(calls) == 1
    await cache.aclose()


def test_host_is_part_of_the_key(harness: Harness) -> None:
    @harness.route("/where")
    async def where(request: Request) -> Response:
        return PlainTextResponse(request.headers["host"])

    with harness.client() as client:
        assert client.get("/where", headers={"Host": "a.example"}).text == "a.example"
        evil = client.get("/where", headers={"Host": "evil.example"})
        assert (evil.text, evil.headers["x-cache"]) == ("evil.example", "MISS")
        good = client.get("/where", headers={"Host": "a.example"})
        assert (good.text, good.headers["x-cache"]) == ("a.example", "HIT")


def test_foreign_value_under_the_key_is_dropped(harness: Harness) -> None:
    harness.route("/f")(text("real"))
    key = build_key("http", "/f", "", host="testserver")

    @harness.route("/plant", methods=["POST"])
    async def plant(_request: Request) -> Response:
        await harness.cache.set(key, {"v": 1, "status": "not a status"})
        return PlainTextResponse("planted")

    with harness.client() as client:
        client.post("/plant")
        first = client.get("/f")
        assert (first.text, first.headers["x-cache"]) == ("real", "MISS")
        assert client.get("/f").headers["x-cache"] == "MISS"  # the foreign value was dropped
        assert client.get("/f").headers["x-cache"] == "HIT"


def test_fastapi_app_with_its_test_client() -> None:
    pytest.importorskip("fastapi")
    from fastapi import FastAPI
    from fastapi.testclient import TestClient as FastTestClient

    clock = ManualClock(1_000.0)
    cache = CacheStack([MemoryLayer(ttl=60)], clock=clock)
    calls: list[int] = []
    app = FastAPI()
    app.add_middleware(CacheMiddleware, cache=cache, ttl=30, clock=clock)

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        calls.append(item_id)
        return {"id": item_id}

    with FastTestClient(app) as client:
        assert client.get("/items/3").headers["x-cache"] == "MISS"
        hit = client.get("/items/3")
    assert hit.json() == {"id": 3}
    assert hit.headers["x-cache"] == "HIT"
    assert calls == [3]
