"""The stats endpoint (layercache.integrations.stats): JSON equal to get_stats(), the page, the
token guard, hidden keys, mounting in FastAPI, Flask and Django, and a degraded real Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx2")

from fastapi import FastAPI
from starlette.testclient import TestClient

from _tcp_proxy import TcpProxy
from layercache import CacheStack, MemoryLayer, SyncCacheStack
from layercache.integrations.stats import (
    TopKeys,
    error_type,
    stats_asgi_app,
    stats_django_view,
    stats_wsgi_app,
)

SECRET_KEY_TEXT = "customer-4711-private"


def page_config(body: str) -> dict[str, Any]:
    """The JSON data block the page carries (its URL, refresh, token and first snapshot)."""
    match = re.search(r'<script type="application/json" id="lc-config">(.*?)</script>', body, re.S)
    assert match is not None, "the page has no config block"
    config: dict[str, Any] = json.loads(match.group(1))
    return config


def assert_matches(data: Any, expected: Any, where: str = "stats") -> None:
    """Every field of the get_stats() dataclass tree equals the JSON (None for a non-finite
    float, lists for tuples)."""
    if dataclasses.is_dataclass(expected) and not isinstance(expected, type):
        assert isinstance(data, dict), where
        for field in dataclasses.fields(expected):
            assert field.name in data, f"{where}.{field.name} missing from the JSON"
            assert_matches(data[field.name], getattr(expected, field.name), f"{where}.{field.name}")
    elif isinstance(expected, dict):
        assert isinstance(data, dict), where
        assert set(data) >= {str(k) for k in expected}, where
        for key, value in expected.items():
            assert_matches(data[str(key)], value, f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(data, list), where
        assert len(data) == len(expected), where
        for i, (got, want) in enumerate(zip(data, expected, strict=True)):
            assert_matches(got, want, f"{where}[{i}]")
    else:
        assert data == expected, f"{where}: JSON {data!r} != get_stats() {expected!r}"


def assert_json_is_stats(data: dict[str, Any], cache: Any, before: float) -> None:
    stats = cache.get_stats()
    rates = cache.get_hit_rate()
    for field in dataclasses.fields(stats):
        assert_matches(data[field.name], getattr(stats, field.name), field.name)
    assert data["hit_rate"] == rates.overall
    for name, rate in rates.layers.items():
        assert data["metrics"]["layers"][name]["hit_rate"] == rate
    assert before <= data["time"] <= time.time()


async def traffic(cache: CacheStack) -> None:
    for i in range(12):
        await cache.get(f"{SECRET_KEY_TEXT}:{i % 4}", lambda: {"v": 1})
    await cache.get("absent-key")
    await cache.set("other", 2)
    await cache.delete("other")


def sync_traffic(cache: SyncCacheStack) -> None:
    for i in range(9):
        cache.get(f"{SECRET_KEY_TEXT}:{i % 3}", lambda: {"v": 1})
    cache.get("absent-key")


@pytest.fixture
async def stack() -> AsyncIterator[CacheStack]:
    cache = CacheStack([MemoryLayer(ttl=60, name="memory"), MemoryLayer(ttl=600, name="l2")])
    try:
        yield cache
    finally:
        await cache.aclose()


@pytest.fixture
def sync_stack() -> Iterator[SyncCacheStack]:
    cache = SyncCacheStack([MemoryLayer(ttl=60)])
    try:
        yield cache
    finally:
        cache.close()


def fastapi_client(app: Any, prefix: str = "/cache-stats") -> TestClient:
    outer = FastAPI()
    outer.mount(prefix, app)
    return TestClient(outer)


# -- ASGI (FastAPI mount) ------------------------------------------------------------------


async def test_json_equals_get_stats_in_fastapi(stack: CacheStack) -> None:
    await traffic(stack)
    assert stack.get_stats().metrics.hits > 0
    before = time.time()
    with fastapi_client(stats_asgi_app(stack)) as client:
        by_query = client.get("/cache-stats/?format=json")
        by_accept = client.get("/cache-stats/", headers={"Accept": "application/json"})
    for response in (by_query, by_accept):
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.headers["cache-control"] == "no-store"
        data = response.json()
        assert_json_is_stats(data, stack, before)
        assert data["metrics"]["hits"] == stack.get_stats().metrics.hits
        assert [layer["name"] for layer in data["layers"]] == ["memory", "l2"]
        assert "top_keys" not in data
        assert data["show_keys"] is False
    assert by_query.json()["metrics"]["layers"]["memory"]["hits"] == 8


async def test_page_is_self_contained_under_a_strict_csp(stack: CacheStack) -> None:
    await traffic(stack)
    with fastapi_client(stats_asgi_app(stack, refresh=5, title="shop <cache>")) as client:
        first = client.get("/cache-stats/", headers={"Accept": "text/html"})
        second = client.get("/cache-stats/")
    assert first.status_code == 200
    assert first.headers["content-type"] == "text/html; charset=utf-8"
    assert first.headers["cache-control"] == "no-store"
    body = first.text
    policy = first.headers["content-security-policy"]
    nonce = re.search(r"script-src 'nonce-([^']+)'", policy)
    assert nonce is not None
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["connect-src"] == "'self'"
    assert directives["script-src"] == f"'nonce-{nonce.group(1)}'"
    assert "unsafe-inline" not in policy
    assert "http" not in policy
    # Every executable script and style carries the nonce; nothing else is loaded.
    scripts = re.findall(r"<script([^>]*)>", body)
    assert scripts
    assert all(
        f'nonce="{nonce.group(1)}"' in attrs or 'type="application/json"' in attrs
        for attrs in scripts
    )
    assert re.findall(r"<style([^>]*)>", body) == [f' nonce="{nonce.group(1)}"']
    assert not re.search(r"\b(src|href)\s*=", body)
    assert not re.search(r"https?:|//[a-z]", body, re.I), "the page names an absolute URL"
    assert "shop &lt;cache&gt;" in body
    assert "shop <cache>" not in body
    # A fresh nonce per response.
    assert second.headers["content-security-policy"] != policy
    config = page_config(body)
    assert config["json_url"] == "/cache-stats/?format=json"
    assert config["refresh"] == 5.0
    assert config["token"] is None
    assert config["initial"]["metrics"]["hits"] == stack.get_stats().metrics.hits


async def test_head_and_other_methods(stack: CacheStack) -> None:
    with fastapi_client(stats_asgi_app(stack)) as client:
        get = client.get("/cache-stats/?format=json")
        head = client.head("/cache-stats/?format=json")
        post = client.post("/cache-stats/", content=b"x")
        delete = client.delete("/cache-stats/")
    assert head.status_code == 200
    assert head.content == b""
    # The same document (its "time" may differ in length by a digit or two).
    assert abs(int(head.headers["content-length"]) - len(get.content)) <= 4
    assert head.headers["cache-control"] == "no-store"
    for response in (post, delete):
        assert response.status_code == 405
        assert response.headers["allow"] == "GET, HEAD"


async def test_token_guard(stack: CacheStack) -> None:
    await traffic(stack)
    with fastapi_client(stats_asgi_app(stack, token="tok-123")) as client:
        missing = client.get("/cache-stats/?format=json")
        html_missing = client.get("/cache-stats/")
        wrong = client.get("/cache-stats/?format=json", headers={"Authorization": "Bearer nope"})
        wrong_query = client.get("/cache-stats/?format=json&token=tok-12")
        basic = client.get("/cache-stats/?format=json", headers={"Authorization": "Basic tok-123"})
        bearer = client.get(
            "/cache-stats/?format=json", headers={"Authorization": "Bearer tok-123"}
        )
        query = client.get("/cache-stats/?format=json&token=tok-123")
        page = client.get("/cache-stats/?token=tok-123")
    for response in (missing, html_missing, wrong, wrong_query, basic):
        assert response.status_code == 401
        assert response.content == b"unauthorized\n"
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert SECRET_KEY_TEXT not in response.text
    assert bearer.status_code == query.status_code == page.status_code == 200
    assert bearer.json()["metrics"]["hits"] == stack.get_stats().metrics.hits
    # The page polls with the token in a header (never in the polled URL).
    config = page_config(page.text)
    assert config["token"] == "tok-123"
    assert "token" not in config["json_url"]


async def test_show_keys_off_no_key_anywhere(stack: CacheStack) -> None:
    app = stats_asgi_app(stack)
    await traffic(stack)
    with fastapi_client(app) as client:
        data = client.get("/cache-stats/?format=json")
        page = client.get("/cache-stats/")
    assert SECRET_KEY_TEXT not in data.text
    assert "absent-key" not in data.text
    assert SECRET_KEY_TEXT not in page.text
    assert "absent-key" not in page.text
    assert "top_keys" not in data.json()
    assert 'id="top"' not in page.text


async def test_show_keys_counts_hits_per_key(stack: CacheStack) -> None:
    app = stats_asgi_app(stack, show_keys=True)
    try:
        for _ in range(5):
            await stack.get("hot", lambda: 1)  # 1 miss, then 4 hits
        for _ in range(3):
            await stack.get("warm", lambda: 1)  # 1 miss, then 2 hits
        with fastapi_client(app) as client:
            data = client.get("/cache-stats/?format=json").json()
            page = client.get("/cache-stats/").text
        assert data["top_keys"] == [
            {"key": "hot", "hits": 4, "error": 0},
            {"key": "warm", "hits": 2, "error": 0},
        ]
        assert data["show_keys"] is True
        assert 'id="top"' in page
        assert page_config(page)["initial"]["top_keys"][0]["key"] == "hot"
    finally:
        app.close()
    await stack.get("hot", lambda: 1)
    assert app.endpoint.top_keys is not None
    assert app.endpoint.top_keys.top()[0]["hits"] == 4, "close() unsubscribes from hit events"


def test_top_keys_is_bounded_and_keeps_heavy_hitters() -> None:
    top = TopKeys(capacity=100)
    for i in range(5_000):
        top.record(f"cold:{i}")
        if i % 10 == 0:
            top.record("heavy")
    assert len(top) == 100
    best = top.top(limit=3)
    assert best[0]["key"] == "heavy"
    # Space-saving: the count never understates, and overstates by at most its error.
    assert best[0]["hits"] - best[0]["error"] <= 500 <= best[0]["hits"]
    assert len(top.top(limit=1000)) == 100


def test_top_keys_space_saving_invariants() -> None:
    """On a skewed random stream: the counters sum to the hits recorded, each count is within
    [true, true + error], and every key with more than total / capacity hits is tracked."""
    import random
    from collections import Counter

    rng = random.Random(7)
    top = TopKeys(capacity=20)
    truth: Counter[str] = Counter()
    for _ in range(20_000):
        key = f"k{min(int(rng.paretovariate(1.2)), 500)}"
        truth[key] += 1
        top.record(key)
    table = top.top(limit=1_000)
    assert len(table) == 20
    assert sum(row["hits"] for row in table) == 20_000
    for row in table:
        assert row["hits"] - row["error"] <= truth[row["key"]] <= row["hits"]
    tracked = {row["key"] for row in table}
    assert {k for k, n in truth.items() if n > 20_000 / 20} <= tracked
    top.clear()
    assert len(top) == 0
    assert top.top() == []


def test_error_type_keeps_only_the_type() -> None:
    assert error_type("ConnectionError('Error 111 connecting to x: key k')") == "ConnectionError"
    assert error_type("redis.exceptions.TimeoutError()") == "redis.exceptions.TimeoutError"
    assert error_type("'oops'") == "error"
    assert error_type(None) is None


async def test_options_are_checked(stack: CacheStack) -> None:
    with pytest.raises(ValueError, match="refresh"):
        stats_asgi_app(stack, refresh=0)
    with pytest.raises(ValueError, match="token"):
        stats_asgi_app(stack, token="")
    with pytest.raises(ValueError, match="token"):
        stats_asgi_app(stack, token="has space")
    with pytest.raises(ValueError, match="title"):
        stats_asgi_app(stack, title="")
    with pytest.raises(TypeError):
        stats_asgi_app(object())  # type: ignore[arg-type]


async def test_root_path_prefix_in_the_page_url(stack: CacheStack) -> None:
    """Mounted two levels deep, and behind a server that strips the prefix (root_path only)."""
    with fastapi_client(stats_asgi_app(stack), prefix="/ops/cache-stats") as client:
        page = client.get("/ops/cache-stats/")
        url = page_config(page.text)["json_url"]
        assert url == "/ops/cache-stats/?format=json"
        assert client.get(url).json()["metrics"]["hits"] == 0

    app = stats_asgi_app(stack)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "root_path": "/behind/proxy",
        "query_string": b"",
        "headers": [],
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 200
    assert page_config(sent[1]["body"].decode())["json_url"] == "/behind/proxy/?format=json"


async def test_sync_stack_in_asgi(sync_stack: SyncCacheStack) -> None:
    sync_traffic(sync_stack)
    before = time.time()
    with fastapi_client(stats_asgi_app(sync_stack)) as client:
        data = client.get("/cache-stats/?format=json").json()
    assert_json_is_stats(data, sync_stack, before)
    assert data["metrics"]["hits"] == 6


# -- WSGI (Flask) --------------------------------------------------------------------------


def test_flask_dispatcher(sync_stack: SyncCacheStack) -> None:
    pytest.importorskip("flask")
    from flask import Flask
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    flask_app = Flask(__name__)

    @flask_app.get("/")
    def index() -> str:
        sync_stack.get("from-flask", lambda: 1)
        return "ok"

    flask_app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        flask_app.wsgi_app, {"/cache-stats": stats_wsgi_app(sync_stack, token="t0k")}
    )
    client = flask_app.test_client()
    sync_traffic(sync_stack)
    assert client.get("/").text == "ok"
    before = time.time()
    data = client.get("/cache-stats/?format=json", headers={"Authorization": "Bearer t0k"})
    assert data.status_code == 200
    assert data.headers["cache-control"] == "no-store"
    assert_json_is_stats(data.get_json(), sync_stack, before)
    assert data.get_json()["metrics"]["misses"] == 5
    assert client.get("/cache-stats/?format=json").status_code == 401
    page = client.get("/cache-stats?token=t0k")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    assert "'nonce-" in page.headers["content-security-policy"]
    assert page_config(page.text)["json_url"] == "/cache-stats?format=json"
    head = client.head("/cache-stats/?format=json&token=t0k")
    assert head.status_code == 200
    assert head.data == b""
    assert client.post("/cache-stats/?token=t0k").status_code == 405
    assert SECRET_KEY_TEXT not in page.text
    assert SECRET_KEY_TEXT not in data.text


# -- Django ----------------------------------------------------------------------------------


@pytest.fixture
def django_settings() -> None:
    pytest.importorskip("django")
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="stats-tests",
            ALLOWED_HOSTS=["testserver"],
            INSTALLED_APPS=[],
            MIDDLEWARE=[],
        )
        django.setup()


def test_django_view(django_settings: None, sync_stack: SyncCacheStack) -> None:
    from django.test import Client, override_settings
    from django.urls import path

    sync_traffic(sync_stack)
    sync_stack.get(f"{SECRET_KEY_TEXT}:0")
    view = stats_django_view(sync_stack, token="dj")
    keys_view = stats_django_view(sync_stack, show_keys=True)  # counts hits from now on

    class Urls:
        urlpatterns: ClassVar[list[Any]] = [path("cache-stats/", view), path("keys/", keys_view)]

    with override_settings(
        ROOT_URLCONF=Urls,
        ALLOWED_HOSTS=["testserver"],
        MIDDLEWARE=["django.middleware.csrf.CsrfViewMiddleware"],
    ):
        client = Client()
        before = time.time()
        response = client.get(
            "/cache-stats/", HTTP_ACCEPT="application/json", HTTP_AUTHORIZATION="Bearer dj"
        )
        assert response.status_code == 200
        assert response["Cache-Control"] == "no-store"
        assert_json_is_stats(json.loads(response.content), sync_stack, before)
        assert json.loads(response.content)["metrics"]["hits"] == 7
        assert client.get("/cache-stats/?format=json").status_code == 401
        page = client.get("/cache-stats/?token=dj")
        assert page.status_code == 200
        assert page["Content-Type"].startswith("text/html")
        assert page_config(page.content.decode())["json_url"] == "/cache-stats/?format=json"
        assert SECRET_KEY_TEXT not in page.content.decode()
        head = client.head("/cache-stats/?token=dj")
        assert head.status_code == 200
        assert head.content == b""
        post = client.post("/cache-stats/?token=dj")
        assert post.status_code == 405, "the view is CSRF-exempt: other methods get 405"
        keys = json.loads(client.get("/keys/?format=json").content)
        assert keys["top_keys"] == []  # the counter started after the traffic
        sync_stack.get(f"{SECRET_KEY_TEXT}:1")
        keys = json.loads(client.get("/keys/?format=json").content)
        assert keys["top_keys"] == [{"key": f"{SECRET_KEY_TEXT}:1", "hits": 1, "error": 0}]
    keys_view.endpoint.close()  # type: ignore[attr-defined]


# -- a degraded real Redis -----------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.parametrize("show_keys", [False, True], ids=["keys-hidden", "keys-shown"])
async def test_degraded_redis_layer(redis_proxy: TcpProxy, show_keys: bool) -> None:
    from layercache import RedisLayer

    cache = CacheStack(
        [MemoryLayer(ttl=60), RedisLayer(url=redis_proxy.url, ttl=600)],
        graceful_degradation={"retry_after": 0.5},
    )
    app = stats_asgi_app(cache, show_keys=show_keys)
    try:
        await traffic(cache)
        redis_proxy.cut("refuse")
        began = time.time()
        # An L1 miss that goes to Redis: the layer fails and is skipped from now on.
        assert await cache.get(f"{SECRET_KEY_TEXT}:cold", lambda: 5) == 5
        status = cache.get_stats().layers[1]
        assert status.degraded_until is not None
        with fastapi_client(app) as client:
            before = time.time()
            data = client.get("/cache-stats/?format=json").json()
            page = client.get("/cache-stats/").text
        assert_json_is_stats_degraded(data, cache, before, show_keys)
        redis = data["layers"][1]
        assert redis["name"] == "redis"
        assert redis["is_local"] is False
        assert redis["degraded_until"] == status.degraded_until > data["time"]
        assert began <= redis["degraded_since"] <= data["time"]
        events = data["degradations"]
        assert events[-1]["layer"] == "redis"
        assert events[-1]["event"] == "degraded"
        if show_keys:
            assert events[-1]["error"] == cache.get_stats().degradations[-1].error
            assert data["top_keys"]
        else:
            assert events[-1]["error"] == error_type(cache.get_stats().degradations[-1].error)
            assert "(" not in (events[-1]["error"] or "")
            assert SECRET_KEY_TEXT not in json.dumps(data)
            assert SECRET_KEY_TEXT not in page
        assert page_config(page)["initial"]["layers"][1]["degraded_until"] == status.degraded_until

        # Back: after retry_after an operation probes Redis and puts it back in service.
        redis_proxy.restore()

        async def recovered() -> bool:
            await cache.get("probe", lambda: 1)
            await cache.delete("probe")
            return cache.get_stats().layers[1].degraded_until is None

        deadline = time.monotonic() + 10
        while not await recovered():
            assert time.monotonic() < deadline, "redis did not recover"
            await asyncio.sleep(0.05)
        with fastapi_client(app) as client:
            data = client.get("/cache-stats/?format=json").json()
        assert data["layers"][1]["degraded_until"] is None
        assert [e["event"] for e in data["degradations"]][-1] == "recovered"
        assert data["degradations"][-1]["error"] is None
    finally:
        app.close()
        await cache.aclose()


def assert_json_is_stats_degraded(
    data: dict[str, Any], cache: CacheStack, before: float, show_keys: bool
) -> None:
    """As assert_json_is_stats, except the degradation errors (only their type without keys)."""
    stats = cache.get_stats()
    for field in dataclasses.fields(stats):
        if field.name == "degradations" and not show_keys:
            got = data["degradations"]
            assert len(got) == len(stats.degradations)
            for event, want in zip(got, stats.degradations, strict=True):
                assert event == {
                    "layer": want.layer,
                    "event": want.event,
                    "at": want.at,
                    "operation": want.operation,
                    "error": error_type(want.error),
                }
            continue
        assert_matches(data[field.name], getattr(stats, field.name), field.name)
    assert data["hit_rate"] == cache.get_hit_rate().overall
    assert before <= data["time"] <= time.time()
