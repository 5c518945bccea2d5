"""cache_middleware with aiohttp's own test client (aiohttp.test_utils): the rules of the ASGI
middleware (tests/integrations/asgi) for aiohttp, and what is aiohttp's own: streamed
responses, raised HTTP exceptions, websocket handshakes (issue 13, aiohttp bullet)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

pytest.importorskip("aiohttp")

from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer

from layercache import CacheStack, MemoryLayer
from layercache.integrations._http import build_key
from layercache.integrations.aiohttp import cache_middleware
from layercache.testing import ManualClock
from polling import eventually_async

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Harness:
    """An aiohttp app whose routes count their calls, behind cache_middleware."""

    def __init__(self, **options: Any) -> None:
        self.clock = ManualClock(1_000_000.0)
        self.cache = CacheStack([MemoryLayer(ttl=3600)], clock=self.clock)
        self.calls: dict[str, int] = {}
        self.routes: list[tuple[str, str, Handler]] = []
        self.options = options

    def route(self, path: str, method: str = "GET") -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            async def endpoint(request: web.Request) -> web.StreamResponse:
                self.calls[path] = self.calls.get(path, 0) + 1
                return await handler(request)

            self.routes.append((method, path, endpoint))
            return handler

        return register

    @asynccontextmanager
    async def client(self) -> AsyncIterator[TestClient[web.Request, web.Application]]:
        options = {"ttl": 10, "clock": self.clock, **self.options}
        app = web.Application(middlewares=[cache_middleware(self.cache, **options)])
        for method, path, endpoint in self.routes:
            if method == "GET":
                app.router.add_get(path, endpoint)  # HEAD too, as aiohttp does by default
            else:
                app.router.add_route(method, path, endpoint)
        async with TestClient(TestServer(app)) as client:
            yield client

    def count(self, path: str) -> int:
        return self.calls.get(path, 0)


def text(body: str, **headers: str) -> Handler:
    async def handler(_request: web.Request) -> web.StreamResponse:
        return web.Response(text=body, headers=headers)

    return handler


@pytest.fixture
def harness() -> Harness:
    return Harness()


async def test_get_is_cached_with_status_headers_and_body(harness: Harness) -> None:
    @harness.route("/items")
    async def items(_request: web.Request) -> web.StreamResponse:
        n = harness.count("/items")
        return web.json_response({"n": n}, status=203, headers={"X-Origin": f"call-{n}"})

    async with harness.client() as client:
        miss = await client.get("/items")
        assert (miss.status, miss.headers["X-Cache"]) == (203, "MISS")
        assert await miss.json() == {"n": 1}
        harness.clock.advance(3)
        hit = await client.get("/items")
        assert (hit.status, hit.headers["X-Cache"], hit.headers["Age"]) == (203, "HIT", "3")
        assert await hit.json() == {"n": 1}
        assert hit.headers["X-Origin"] == "call-1"
        assert hit.headers["Content-Type"] == "application/json; charset=utf-8"
    assert harness.count("/items") == 1


async def test_query_order_does_not_matter_but_values_do(harness: Harness) -> None:
    harness.route("/q")(text("q"))
    async with harness.client() as client:
        assert (await client.get("/q?a=1&b=2")).headers["X-Cache"] == "MISS"
        assert (await client.get("/q?b=2&a=1")).headers["X-Cache"] == "HIT"
        assert (await client.get("/q?a=1&b=3")).headers["X-Cache"] == "MISS"
    assert harness.count("/q") == 2


async def test_entry_expires_after_ttl(harness: Harness) -> None:
    harness.route("/t")(text("t"))
    async with harness.client() as client:
        await client.get("/t")
        harness.clock.advance(11)
        assert (await client.get("/t")).headers["X-Cache"] == "MISS"
    assert harness.count("/t") == 2


async def test_head_is_served_from_the_get_entry(harness: Harness) -> None:
    @harness.route("/h")
    async def page(request: web.Request) -> web.StreamResponse:
        # A HEAD miss runs the handler as GET: what it stores is the GET response.
        return web.Response(text=f"body as {request.method}")

    async with harness.client() as client:
        head = await client.head("/h")
        assert (head.status, head.headers["X-Cache"], await head.read()) == (200, "MISS", b"")
        get = await client.get("/h")
        assert (get.headers["X-Cache"], await get.text()) == ("HIT", "body as GET")
        head = await client.head("/h")
        assert (head.headers["X-Cache"], head.headers["Content-Length"]) == ("HIT", "11")
        assert await head.read() == b""
    assert harness.count("/h") == 1


async def test_hop_by_hop_and_x_cache_headers_are_not_stored(harness: Harness) -> None:
    harness.route("/hop")(text("x", **{"Keep-Alive": "timeout=5", "X-Cache": "forged"}))
    async with harness.client() as client:
        miss = await client.get("/hop")
        assert miss.headers.getall("X-Cache") == ["MISS"]
        hit = await client.get("/hop")
    assert hit.headers.getall("X-Cache") == ["HIT"]
    assert "Keep-Alive" not in hit.headers


async def test_binary_body_round_trips_exactly(harness: Harness) -> None:
    payload = bytes(range(256)) * 4

    @harness.route("/bin")
    async def binary(_request: web.Request) -> web.StreamResponse:
        return web.Response(body=payload, content_type="application/octet-stream")

    async with harness.client() as client:
        await client.get("/bin")
        hit = await client.get("/bin")
        assert hit.headers["X-Cache"] == "HIT"
        assert await hit.read() == payload


async def with_cookie(_request: web.Request) -> web.StreamResponse:
    response = web.Response(text="hi")
    response.set_cookie("session", "secret")
    return response


@pytest.mark.parametrize(
    ("handler", "request_headers"),
    [
        pytest.param(with_cookie, {}, id="set-cookie"),
        pytest.param(text("x", **{"Cache-Control": "no-store"}), {}, id="resp-no-store"),
        pytest.param(text("x", **{"Cache-Control": "private"}), {}, id="resp-private"),
        pytest.param(text("x", **{"Cache-Control": "no-cache"}), {}, id="resp-no-cache"),
        pytest.param(text("x", **{"X-Cache-Bypass": "1"}), {}, id="bypass-header"),
        pytest.param(text("x", Vary="*"), {}, id="vary-star"),
        pytest.param(text("x"), {"Authorization": "Bearer t"}, id="authorization"),
        pytest.param(text("x"), {"Cookie": "a=b"}, id="cookie"),
        pytest.param(text("x"), {"Cache-Control": "no-store"}, id="req-no-store"),
        pytest.param(text("x"), {"Range": "bytes=0-1"}, id="range"),
    ],
)
async def test_never_cached(
    harness: Harness, handler: Handler, request_headers: dict[str, str]
) -> None:
    harness.route("/n")(handler)
    async with harness.client() as client:
        for _ in range(2):
            response = await client.get("/n", headers=request_headers)
            assert response.status == 200
            assert response.headers.get("X-Cache") in (None, "MISS")
            assert "X-Cache-Bypass" not in response.headers
    assert harness.count("/n") == 2


@pytest.mark.parametrize("status", [201, 206, 302, 304, 400, 404, 500, 503])
async def test_statuses_outside_the_cacheable_set_are_not_cached(
    harness: Harness, status: int
) -> None:
    @harness.route("/s")
    async def handler(_request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"" if status == 304 else b"body", status=status)

    async with harness.client() as client:
        for _ in range(2):
            response = await client.get("/s", allow_redirects=False)
            assert (response.status, response.headers["X-Cache"]) == (status, "MISS")
    assert harness.count("/s") == 2


@pytest.mark.parametrize("status", [200, 203, 204, 300, 301, 308])
async def test_default_cacheable_statuses(harness: Harness, status: int) -> None:
    @harness.route("/s")
    async def handler(_request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"" if status == 204 else b"body", status=status)

    async with harness.client() as client:
        await client.get("/s", allow_redirects=False)
        hit = await client.get("/s", allow_redirects=False)
        assert (hit.status, hit.headers["X-Cache"]) == (status, "HIT")
    assert harness.count("/s") == 1


@pytest.mark.parametrize(
    "error", [web.HTTPNotFound, web.HTTPFound, web.HTTPMovedPermanently], ids=str
)
async def test_raised_http_exceptions_reach_the_client_and_are_not_cached(
    harness: Harness, error: type[web.HTTPException]
) -> None:
    @harness.route("/raise")
    async def handler(_request: web.Request) -> web.StreamResponse:
        if issubclass(error, web.HTTPRedirection):
            raise error(location="/elsewhere")
        raise error()

    async with harness.client() as client:
        for _ in range(2):
            response = await client.get("/raise", allow_redirects=False)
            assert response.status == error.status_code
    assert harness.count("/raise") == 2


def test_options_are_checked() -> None:
    cache = CacheStack([MemoryLayer()])
    with pytest.raises(ValueError, match="200-399"):
        cache_middleware(cache, statuses={200, 404})
    with pytest.raises(ValueError, match="ttl"):
        cache_middleware(cache, ttl=0)
    with pytest.raises(ValueError, match="single str"):
        cache_middleware(cache, tags="products")
    with pytest.raises(ValueError, match="single str"):
        cache_middleware(cache, exclude="/admin")
    with pytest.raises(ValueError, match="max_body_size"):
        cache_middleware(cache, max_body_size=-1)


async def test_post_is_never_cached(harness: Harness) -> None:
    harness.route("/p", "POST")(text("p"))
    async with harness.client() as client:
        assert "X-Cache" not in (await client.post("/p")).headers
        await client.post("/p")
    assert harness.count("/p") == 2


async def test_body_over_max_body_size_is_not_stored() -> None:
    harness = Harness(max_body_size=100)
    harness.route("/big")(text("x" * 101))
    harness.route("/small")(text("x" * 100))
    async with harness.client() as client:
        for _ in range(2):
            big = await client.get("/big")
            assert (big.headers["X-Cache"], len(await big.read())) == ("MISS", 101)
        await client.get("/small")
        assert (await client.get("/small")).headers["X-Cache"] == "HIT"
    assert (harness.count("/big"), harness.count("/small")) == (2, 1)


async def streamed(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"X-Streamed": "yes"})
    await response.prepare(request)
    if request.method != "HEAD":
        for index in range(3):
            await response.write(f"chunk{index};".encode())
    await response.write_eof()
    return response


async def test_streamed_response_passes_through_uncached(harness: Harness) -> None:
    harness.route("/stream")(streamed)
    async with harness.client() as client:
        for _ in range(2):
            response = await client.get("/stream")
            assert response.headers["X-Cache"] == "MISS"
            assert response.headers["X-Streamed"] == "yes"
            assert await response.text() == "chunk0;chunk1;chunk2;"
        # HEAD on a streamed route: headers, no body, the connection stays usable.
        head = await client.head("/stream")
        assert (head.status, await head.read()) == (200, b"")
        after = await client.get("/stream")
        assert await after.text() == "chunk0;chunk1;chunk2;"
    # GET twice, the HEAD twice (stopped as GET before a byte was sent, then as HEAD), GET.
    assert harness.count("/stream") == 5


async def test_joined_requests_do_not_wait_for_a_stream_to_end(harness: Harness) -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    runs: list[int] = []

    @harness.route("/sse")
    async def sse(request: web.Request) -> web.StreamResponse:
        runs.append(len(runs))
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first;")
        started.set()
        if len(runs) == 1:
            await release.wait()  # the first stream lasts until the second request is done
        await response.write(b"end")
        return response

    async with harness.client() as client:
        first = await client.get("/sse")
        await started.wait()
        second = await asyncio.wait_for(client.get("/sse"), 10)
        assert await second.text() == "first;end"
        release.set()
        assert await first.text() == "first;end"
    assert len(runs) == 2


async def test_websocket_handshake_bypasses_the_cache(harness: Harness) -> None:
    @harness.route("/ws")
    async def ws(request: web.Request) -> web.StreamResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        async for message in socket:
            if message.type == WSMsgType.TEXT:
                await socket.send_str(message.data.upper())
        return socket

    async with harness.client() as client:
        for _ in range(2):
            async with client.ws_connect("/ws") as socket:
                await socket.send_str("hi")
                assert await socket.receive_str() == "HI"
    assert harness.count("/ws") == 2


async def test_exclude_paths_and_predicate() -> None:
    for exclude in (["/admin"], lambda request: request.path.startswith("/admin")):
        harness = Harness(exclude=exclude)
        harness.route("/admin/users")(text("a"))
        harness.route("/administrators")(text("b"))
        async with harness.client() as client:
            for _ in range(2):
                assert "X-Cache" not in (await client.get("/admin/users")).headers
                await client.get("/administrators")
        assert harness.count("/admin/users") == 2
        expected = 1 if isinstance(exclude, list) else 2
        assert harness.count("/administrators") == expected


async def test_key_resolver_owns_identity_for_credentialed_requests() -> None:
    def by_user(request: web.Request) -> str | None:
        token = request.headers.get("Authorization")
        if token == "Bearer nobody":
            return None
        return "anonymous" if token is None else f"user:{token.split()[-1]}"

    harness = Harness(key_resolver=by_user)

    @harness.route("/me")
    async def me(request: web.Request) -> web.StreamResponse:
        return web.Response(text=f"hello {request.headers.get('Authorization', 'anon')}")

    async with harness.client() as client:
        for _ in range(2):
            alice = await client.get("/me", headers={"Authorization": "Bearer alice"})
            bob = await client.get("/me", headers={"Authorization": "Bearer bob"})
            anon = await client.get("/me")
            assert await alice.text() == "hello Bearer alice"
            assert await bob.text() == "hello Bearer bob"
            assert await anon.text() == "hello anon"
            nobody = await client.get("/me", headers={"Authorization": "Bearer nobody"})
            assert "X-Cache" not in nobody.headers
        assert alice.headers["X-Cache"] == "HIT"
        host = f"{client.host}:{client.port}"
        assert await harness.cache.get(build_key("http", "/me", "", host=host, extra="user:bob"))
    assert harness.count("/me") == 3 + 2  # alice, bob, anonymous once; nobody every time


async def test_vary_puts_the_varied_request_headers_in_the_key(harness: Harness) -> None:
    @harness.route("/v")
    async def varied(request: web.Request) -> web.StreamResponse:
        return web.Response(
            text=f"lang {request.headers.get('Accept-Language', '-')}",
            headers={"Vary": "Accept-Language"},
        )

    async with harness.client() as client:
        for _ in range(2):
            for lang in ("en", "fr", None):
                headers = {} if lang is None else {"Accept-Language": lang}
                response = await client.get("/v", headers=headers)
                assert await response.text() == f"lang {lang or '-'}"
        assert response.headers["X-Cache"] == "HIT"
    assert harness.count("/v") == 3


async def test_respect_cache_control_s_maxage_wins() -> None:
    harness = Harness(respect_cache_control=True)
    harness.route("/cc")(text("cc", **{"Cache-Control": "max-age=5, s-maxage=50"}))
    harness.route("/zero")(text("z", **{"Cache-Control": "max-age=0"}))
    async with harness.client() as client:
        await client.get("/cc")
        harness.clock.advance(20)
        assert (await client.get("/cc")).headers["X-Cache"] == "HIT"
        harness.clock.advance(31)
        assert (await client.get("/cc")).headers["X-Cache"] == "MISS"
        await client.get("/zero")
        assert (await client.get("/zero")).headers["X-Cache"] == "MISS"


async def test_stale_while_revalidate_serves_stale_and_refreshes_once() -> None:
    harness = Harness(stale_while_revalidate=30)

    @harness.route("/swr")
    async def swr(_request: web.Request) -> web.StreamResponse:
        return web.Response(text=f"v{harness.count('/swr')}")

    async with harness.client() as client:
        assert await (await client.get("/swr")).text() == "v1"
        harness.clock.advance(15)
        stale = await client.get("/swr")
        assert (stale.headers["X-Cache"], await stale.text()) == ("STALE", "v1")
        await eventually_async(lambda: harness.count("/swr") == 2, what="one background refresh")
        for _ in range(1000):  # bounded: the refreshed entry lands right after the run
            fresh = await client.get("/swr")
            if fresh.headers["X-Cache"] == "HIT":
                break
            assert (fresh.headers["X-Cache"], await fresh.text()) == ("STALE", "v1")
            await asyncio.sleep(0.01)
        assert (fresh.headers["X-Cache"], await fresh.text(), fresh.headers["Age"]) == (
            "HIT",
            "v2",
            "0",
        )
    assert harness.count("/swr") == 2


@pytest.mark.parametrize("refresh", ["cookie", "stream"])
async def test_stale_while_revalidate_refresh_that_is_not_cacheable_keeps_stale(
    refresh: str,
) -> None:
    harness = Harness(stale_while_revalidate=30)
    refreshed = asyncio.Event()

    @harness.route("/swr")
    async def swr(request: web.Request) -> web.StreamResponse:
        if harness.count("/swr") == 1:
            return web.Response(text="v1")
        refreshed.set()
        if refresh == "stream":
            # A background refresh has no client: stopped before it writes anything.
            return await streamed(request)
        response = web.Response(text="v2")
        response.set_cookie("session", "secret")
        return response

    async with harness.client() as client:
        await client.get("/swr")
        harness.clock.advance(15)
        stale = await client.get("/swr")
        assert (stale.headers["X-Cache"], await stale.text()) == ("STALE", "v1")
        assert "Set-Cookie" not in stale.headers
        await asyncio.wait_for(refreshed.wait(), 10)
        again = await client.get("/swr")
        assert "Set-Cookie" not in again.headers
        assert await again.text() in ("v1", "chunk0;chunk1;chunk2;")


async def test_stale_if_error_replaces_a_5xx_or_an_exception() -> None:
    harness = Harness(stale_if_error=60)
    failure = {"mode": "ok"}

    @harness.route("/sie")
    async def sie(_request: web.Request) -> web.StreamResponse:
        if failure["mode"] == "500":
            return web.Response(text="down", status=503)
        if failure["mode"] == "http-500":
            raise web.HTTPInternalServerError(text="raised down")
        if failure["mode"] == "raise":
            raise RuntimeError("origin exploded")
        return web.Response(text="good")

    async with harness.client() as client:
        assert await (await client.get("/sie")).text() == "good"
        harness.clock.advance(20)
        for mode in ("500", "http-500", "raise"):
            failure["mode"] = mode
            stale = await client.get("/sie")
            assert (stale.status, await stale.text(), stale.headers["X-Cache"]) == (
                200,
                "good",
                "STALE",
            )
        # No stale response to fall back on: the error itself.
        failure["mode"] = "500"
        fresh = await client.get("/sie?other=1")
        assert (fresh.status, fresh.headers["X-Cache"]) == (503, "MISS")
        failure["mode"] = "raise"
        assert (await client.get("/sie?other=2")).status == 500  # aiohttp's own error page
        # Beyond the stale-if-error window: the error.
        harness.clock.advance(100)
        failure["mode"] = "500"
        assert (await client.get("/sie")).status == 503


async def test_errors_are_not_cached_without_stale_if_error(harness: Harness) -> None:
    @harness.route("/boom")
    async def boom(_request: web.Request) -> web.StreamResponse:
        raise RuntimeError("boom")

    async with harness.client() as client:
        for _ in range(2):
            assert (await client.get("/boom")).status == 500
    assert harness.count("/boom") == 2


async def test_tags_invalidated_from_application_code() -> None:
    harness = Harness(tags=lambda request: ["products", f"path:{request.path}"])
    harness.route("/products/1")(text("p1"))
    harness.route("/products/2")(text("p2"))
    async with harness.client() as client:
        await client.get("/products/1")
        await client.get("/products/2")
        assert (await client.get("/products/1")).headers["X-Cache"] == "HIT"
        await harness.cache.invalidate_by_tag("path:/products/1")
        assert (await client.get("/products/1")).headers["X-Cache"] == "MISS"
        assert (await client.get("/products/2")).headers["X-Cache"] == "HIT"
        await harness.cache.invalidate_by_tag("products")
        assert (await client.get("/products/2")).headers["X-Cache"] == "MISS"
    assert (harness.count("/products/1"), harness.count("/products/2")) == (2, 2)


@pytest.mark.parametrize(
    "url",
    [
        "/odd/%00%ff%2F..%2F",
        "/odd/" + "a" * 3000,
        "/odd/x?q=" + "%F0%9F%92%A9" * 200,
        "/odd/\u00e9t\u00e9?k=\u00fc",
    ],
    ids=["control-and-raw-bytes", "long-path", "long-query", "non-ascii"],
)
async def test_hostile_urls_still_cache(harness: Harness, url: str) -> None:
    harness.route("/odd/{tail:.*}")(text("odd"))
    async with harness.client() as client:
        await client.get(url)
        assert (await client.get(url)).headers["X-Cache"] == "HIT"
    assert harness.count("/odd/{tail:.*}") == 1


async def test_host_is_part_of_the_key(harness: Harness) -> None:
    @harness.route("/host")
    async def host(request: web.Request) -> web.StreamResponse:
        return web.Response(text=f"https://{request.host}/link")

    async with harness.client() as client:
        good = await client.get("/host", headers={"Host": "shop.example"})
        forged = await client.get("/host", headers={"Host": "evil.example"})
        assert await forged.text() == "https://evil.example/link"
        again = await client.get("/host", headers={"Host": "shop.example"})
        assert (again.headers["X-Cache"], await again.text()) == ("HIT", await good.text())
    assert harness.count("/host") == 2


async def test_foreign_value_under_the_key_is_dropped(harness: Harness) -> None:
    harness.route("/f")(text("real"))
    async with harness.client() as client:
        key = build_key("http", "/f", "", host=f"{client.host}:{client.port}".lower())
        await harness.cache.set(key, {"something": "else"})
        first = await client.get("/f")
        assert (first.headers["X-Cache"], await first.text()) == ("MISS", "real")
        # The foreign value was dropped: the next request refills, the one after hits.
        assert (await client.get("/f")).headers["X-Cache"] == "MISS"
        assert (await client.get("/f")).headers["X-Cache"] == "HIT"
