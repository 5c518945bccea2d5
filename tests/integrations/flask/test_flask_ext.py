"""The Flask extension through Flask's test client: what is cached, what never is, keys,
tags, the init_app pattern, the configuration-built stack and single-flight across threads."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytest.importorskip("flask")

from flask import Flask, Request, Response, make_response, request

from layercache import DiskLayer, MemoryLayer, SyncCacheStack
from layercache.integrations.flask import LayerCache

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "flask_app.py"


class Calls:
    """Counts view runs (thread-safe: the view may run on the stack's fetch thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def hit(self) -> int:
        with self._lock:
            self.count += 1
            return self.count


@pytest.fixture
def stack() -> Iterator[SyncCacheStack]:
    with SyncCacheStack([MemoryLayer(ttl=60)]) as s:
        yield s


def make_app(ext: LayerCache, calls: Calls) -> Flask:
    app = Flask("flask_ext_test")

    @app.route("/page", methods=["GET", "HEAD", "POST"])
    @ext.cached(ttl=60, tags=["pages"])
    def page() -> Response:
        n = calls.hit()
        resp = make_response(f"page {n} {request.args.to_dict(flat=False)}", 201)
        resp.headers["X-Custom"] = "yes"
        resp.headers["Content-Type"] = "text/plain; charset=utf-8"
        return resp

    @app.get("/status/<int:code>")
    @ext.cached()
    def status(code: int) -> tuple[str, int]:
        return f"status {code} run {calls.hit()}", code

    @app.get("/lang")
    @ext.cached(key_resolver=lambda req: req.headers.get("Accept-Language", ""))
    def lang() -> str:
        return f"lang {request.headers.get('Accept-Language')} run {calls.hit()}"

    @app.get("/me")
    @ext.cached(cache_authenticated=True, key_resolver=lambda req: req.headers["Authorization"])
    def me() -> str:
        return f"me {request.headers['Authorization']} run {calls.hit()}"

    @app.get("/sets-cookie")
    @ext.cached()
    def sets_cookie() -> Response:
        resp = make_response(f"cookie run {calls.hit()}")
        resp.set_cookie("session", "secret")
        return resp

    @app.get("/not-found")
    @ext.cached(statuses=(200, 404))
    def not_found() -> tuple[str, int]:
        return f"missing run {calls.hit()}", 404

    return app


def without_x_cache(resp: Any) -> list[tuple[str, str]]:
    return [(k, v) for k, v in resp.headers.items() if k != "X-Cache"]


def test_second_request_is_a_hit_with_identical_status_headers_and_body(
    stack: SyncCacheStack,
) -> None:
    calls = Calls()
    ext = LayerCache(stack=stack)
    app = make_app(ext, calls)
    ext.init_app(app)
    client = app.test_client(use_cookies=False)

    first = client.get("/page?x=1")
    second = client.get("/page?x=1")

    assert first.headers["X-Cache"] == "MISS"
    assert second.headers["X-Cache"] == "HIT"
    assert calls.count == 1
    assert second.status_code == first.status_code == 201
    assert second.data == first.data == b"page 1 {'x': ['1']}"
    assert without_x_cache(second) == without_x_cache(first)
    assert second.headers["X-Custom"] == "yes"
    # HEAD is cached under its own key (the method is part of it).
    assert client.head("/page?x=1").headers["X-Cache"] == "MISS"
    assert client.head("/page?x=1").headers["X-Cache"] == "HIT"


def test_requests_with_credentials_bypass_the_cache_unless_asked(stack: SyncCacheStack) -> None:
    calls = Calls()
    ext = LayerCache(stack=stack)
    app = make_app(ext, calls)
    ext.init_app(app)
    client = app.test_client(use_cookies=False)
    assert client.get("/page").headers["X-Cache"] == "MISS"  # cached for anonymous users
    anonymous_body = client.get("/page").data

    auth = client.get("/page", headers={"Authorization": "Bearer alice"})
    cookie = client.get("/page", headers={"Cookie": "session=bob"})
    assert "X-Cache" not in auth.headers
    assert "X-Cache" not in cookie.headers
    assert auth.data != anonymous_body
    assert cookie.data != anonymous_body
    assert calls.count == 3

    # Opted in, with a key_resolver telling users apart.
    alice = {"Authorization": "Bearer alice"}
    bob = {"Authorization": "Bearer bob"}
    assert client.get("/me", headers=alice).headers["X-Cache"] == "MISS"
    assert client.get("/me", headers=alice).headers["X-Cache"] == "HIT"
    bob_resp = client.get("/me", headers=bob)
    assert bob_resp.headers["X-Cache"] == "MISS"
    assert b"Bearer bob" in bob_resp.data


@pytest.mark.parametrize("code", [301, 404, 500])
def test_non_2xx_responses_are_not_cached(stack: SyncCacheStack, code: int) -> None:
    calls = Calls()
    ext = LayerCache(stack=stack)
    app = make_app(ext, calls)
    ext.init_app(app)
    client = app.test_client(use_cookies=False)
    first = client.get(f"/status/{code}")
    second = client.get(f"/status/{code}")
    assert first.status_code == second.status_code == code
    assert first.headers["X-Cache"] == second.headers["X-Cache"] == "MISS"
    assert calls.count == 2
    assert client.get("/status/200").headers["X-Cache"] == "MISS"
    assert client.get("/status/200").headers["X-Cache"] == "HIT"


def test_statuses_widens_what_is_cached_and_set_cookie_is_never_cached(
    stack: SyncCacheStack,
) -> None:
    calls = Calls()
    ext = LayerCache(stack=stack)
    app = make_app(ext, calls)
    ext.init_app(app)
    client = app.test_client(use_cookies=False)
    client.get("/not-found")
    hit = client.get("/not-found")
    assert hit.status_code == 404
    assert hit.headers["X-Cache"] == "HIT"

    first = client.get("/sets-cookie")
    second = client.get("/sets-cookie")
    assert second.headers["X-Cache"] == "MISS"
    assert first.data == b"cookie run 2"
    assert second.data == b"cookie run 3"


def test_post_is_not_cached(stack: SyncCacheStack) -> None:
    calls = Calls()
    ext = LayerCache(stack=stack)
    app = make_app(ext, calls)
    ext.init_app(app)
    client = app.test_client(use_cookies=False)
    assert client.post("/page").data == b"page 1 {}"
    assert client.post("/page").data == b"page 2 {}"
    assert "X-Cache" not in client.post("/page").headers
    assert client.get("/page").headers["X-Cache"] == "MISS"  # POSTs stored nothing


def test_query_parameter_order_does_not_matter_but_values_do(stack: SyncCacheStack) -> None:
    calls = Calls()
    ext = LayerCache(stack=stack)
    app = make_app(ext, calls)
    ext.init_app(app)
    client = app.test_client(use_cookies=False)
    assert client.get("/page?a=1&b=2").headers["X-Cache"] == "MISS"
    assert client.get("/page?b=2&a=1").headers["X-Cache"] == "HIT"
    assert client.get("/page?a=1&b=3").headers["X-Cache"] == "MISS"
    # Repeated parameters keep their order (getlist() shows it to the view).
    assert client.get("/page?a=1&a=2").headers["X-Cache"] == "MISS"
    assert client.get("/page?a=2&a=1").headers["X-Cache"] == "MISS"
    assert client.get("/page").headers["X-Cache"] == "MISS"


def test_key_resolver_is_part_of_the_key(stack: SyncCacheStack) -> None:
    calls = Calls()
    ext = LayerCache(stack=stack)
    app = make_app(ext, calls)
    ext.init_app(app)
    client = app.test_client(use_cookies=False)
    en = client.get("/lang", headers={"Accept-Language": "en"})
    fr = client.get("/lang", headers={"Accept-Language": "fr"})
    assert en.headers["X-Cache"] == fr.headers["X-Cache"] == "MISS"
    en_again = client.get("/lang", headers={"Accept-Language": "en"})
    assert en_again.headers["X-Cache"] == "HIT"
    assert en_again.data == en.data == b"lang en run 1"


def test_tag_invalidation_through_ext_stack(stack: SyncCacheStack) -> None:
    calls = Calls()
    ext = LayerCache(stack=stack)
    app = make_app(ext, calls)
    ext.init_app(app)
    client = app.test_client(use_cookies=False)
    client.get("/page?v=1")
    client.get("/page?v=2")
    assert client.get("/page?v=1").headers["X-Cache"] == "HIT"
    with app.app_context():
        assert ext.stack is stack
        assert ext.stack.invalidate_by_tag("pages") == 2
    assert client.get("/page?v=1").headers["X-Cache"] == "MISS"
    assert client.get("/page?v=2").headers["X-Cache"] == "MISS"


def test_init_app_with_two_apps_keeps_their_caches_apart() -> None:
    ext = LayerCache()
    calls_a, calls_b = Calls(), Calls()
    app_a, app_b = make_app(ext, calls_a), make_app(ext, calls_b)
    ext.init_app(app_a)
    ext.init_app(app_b)
    try:
        with app_a.app_context():
            stack_a = ext.stack
        with app_b.app_context():
            stack_b = ext.stack
        assert stack_a is not stack_b
        assert app_a.extensions["layercache"].stack is stack_a

        assert app_a.test_client(use_cookies=False).get("/page").headers["X-Cache"] == "MISS"
        assert app_a.test_client(use_cookies=False).get("/page").headers["X-Cache"] == "HIT"
        assert app_b.test_client(use_cookies=False).get("/page").headers["X-Cache"] == "MISS"
        assert (calls_a.count, calls_b.count) == (1, 1)
        with pytest.raises(RuntimeError, match="application context"):
            _ = ext.stack  # two apps, no context: which one?
        with pytest.raises(RuntimeError, match="already"):
            ext.init_app(app_a)
    finally:
        ext.close()
    ext.close()  # idempotent


def test_stack_built_from_config(tmp_path: Path) -> None:
    app = Flask("configured")
    app.config.update(
        LAYERCACHE_TTL=5,
        LAYERCACHE_PREFIX="shop",
        LAYERCACHE_MEMORY_MAX_SIZE=2,
        LAYERCACHE_STACK_OPTIONS={"stampede_prevention": True},
    )
    ext = LayerCache(app)
    calls = Calls()

    @app.get("/item/<int:n>")
    @ext.cached()
    def item(n: int) -> str:
        return f"item {n} run {calls.hit()}"

    try:
        stack = ext.stack  # one app bound in the constructor: no context needed
        (memory,) = stack.layers
        assert isinstance(memory, MemoryLayer)
        client = app.test_client(use_cookies=False)
        client.get("/item/1")
        assert client.get("/item/1").headers["X-Cache"] == "HIT"
        keys = memory.keys()
        assert keys == ["shop:GET:/item/1?"]
        remaining = stack.ttl(keys[0])
        assert remaining is not None
        assert 0 < remaining <= 5
        for n in range(2, 5):  # the memory bound is 2 entries
            client.get(f"/item/{n}")
        assert len(memory.keys()) == 2
    finally:
        ext.close()

    for bad in (
        {"LAYERCACHE_URL": "http://example.com"},
        {"LAYERCACHE_TTL": -1},
        {"LAYERCACHE_MEMORY_MAX_SIZE": 0},
        {"LAYERCACHE_PREFIX": ""},
    ):
        other = Flask("bad")
        other.config.update(bad)
        with pytest.raises(ValueError, match=r"LAYERCACHE_|prefix"):
            LayerCache(other)
    # A bad URL's error names its scheme, never the whole URL (it may hold a password).
    leaky = Flask("leaky")
    leaky.config["LAYERCACHE_URL"] = "http://user:hunter2@example.com"
    with pytest.raises(ValueError, match="'http'") as refused:
        LayerCache(leaky)
    assert "hunter2" not in str(refused.value)
    # Sentinel URLs are Redis URLs (tests/topologies runs them against a real Sentinel set).
    sentinel = Flask("sentinel")
    sentinel.config["LAYERCACHE_URL"] = "redis+sentinel://127.0.0.1:1/mymaster/0"
    LayerCache(sentinel).close()


def test_responses_survive_a_serialising_layer(tmp_path: Path) -> None:
    """DiskLayer serialises the value: the stored dict (status, headers, body bytes) round-trips."""
    calls = Calls()
    with SyncCacheStack([DiskLayer(tmp_path / "disk", ttl=60)]) as disk_stack:
        ext = LayerCache(stack=disk_stack)
        app = make_app(ext, calls)
        ext.init_app(app)
        client = app.test_client(use_cookies=False)
        first = client.get("/page?z=9")
        second = client.get("/page?z=9")
        assert second.headers["X-Cache"] == "HIT"
        assert (second.status_code, second.data) == (first.status_code, first.data)
        assert without_x_cache(second) == without_x_cache(first)


def test_foreign_stored_value_reads_as_a_miss(stack: SyncCacheStack) -> None:
    calls = Calls()
    ext = LayerCache(stack=stack)
    app = make_app(ext, calls)
    ext.init_app(app)
    client = app.test_client(use_cookies=False)
    client.get("/page")
    (key,) = stack.layers[0].keys()
    stack.set(key, {"status": "oops"})
    resp = client.get("/page")
    assert resp.headers["X-Cache"] == "MISS"
    assert resp.data == b"page 2 {}"
    assert client.get("/page").headers["X-Cache"] == "MISS"  # the bad value was dropped
    assert client.get("/page").headers["X-Cache"] == "HIT"


def test_long_or_odd_urls_get_a_valid_key(stack: SyncCacheStack) -> None:
    calls = Calls()
    ext = LayerCache(stack=stack)
    app = make_app(ext, calls)
    ext.init_app(app)
    client = app.test_client(use_cookies=False)
    long_query = "/page?q=" + "x" * 3000
    assert client.get(long_query).headers["X-Cache"] == "MISS"
    assert client.get(long_query).headers["X-Cache"] == "HIT"
    assert client.get("/page?q=%0Aline").headers["X-Cache"] == "MISS"
    assert client.get("/page?q=%0Aline").headers["X-Cache"] == "HIT"


def test_eight_threads_on_a_cold_url_run_the_view_once(stack: SyncCacheStack) -> None:
    ext = LayerCache(stack=stack)
    app = Flask("stampede")
    ext.init_app(app)
    runs = Calls()
    threads_n = 8
    joined = threading.Condition()
    dedupes = {"n": 0}

    def on_dedupe(_payload: dict[str, Any]) -> None:
        with joined:
            dedupes["n"] += 1
            joined.notify_all()

    stack.on("stampede_dedupe", on_dedupe)

    @app.get("/slow")
    @ext.cached()
    def slow() -> str:
        n = runs.hit()
        # Hold the fetch until the other seven requests are waiting on it (bounded).
        with joined:
            assert joined.wait_for(lambda: dedupes["n"] >= threads_n - 1, timeout=10)
        return f"slow {n} {request.path}"

    barrier = threading.Barrier(threads_n)
    results: list[tuple[int, bytes, str]] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            client = app.test_client(use_cookies=False)
            barrier.wait(timeout=10)
            resp = client.get("/slow")
            results.append((resp.status_code, resp.data, resp.headers["X-Cache"]))
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=worker) for _ in range(threads_n)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=20)
    assert not errors
    assert runs.count == 1
    assert len(results) == threads_n
    assert {(status, body) for status, body, _ in results} == {(200, b"slow 1 /slow")}
    assert sorted(x for _, _, x in results) == ["HIT"] * 7 + ["MISS"]


def test_uncacheable_response_is_not_shared_with_concurrent_waiters(
    stack: SyncCacheStack,
) -> None:
    """A response setting a cookie is private to its request, even to requests that waited on
    the same single-flight: they run the view themselves."""
    ext = LayerCache(stack=stack)
    app = Flask("private")
    ext.init_app(app)
    runs = Calls()
    released = threading.Event()
    waiting = threading.Event()
    stack.on("stampede_dedupe", lambda _p: waiting.set())

    @app.get("/cookie")
    @ext.cached()
    def cookie() -> Response:
        n = runs.hit()
        if n == 1:
            assert released.wait(10)
        resp = make_response(f"token {n}")
        resp.set_cookie("token", str(n))
        return resp

    bodies: list[bytes] = []

    def first() -> None:
        bodies.append(app.test_client(use_cookies=False).get("/cookie").data)

    t = threading.Thread(target=first)
    t.start()
    second_client = app.test_client(use_cookies=False)
    second: list[Any] = []
    t2 = threading.Thread(target=lambda: second.append(second_client.get("/cookie")))
    t2.start()
    assert waiting.wait(10)  # the second request joined the first one's flight
    released.set()
    t.join(10)
    t2.join(10)
    assert bodies == [b"token 1"]
    assert second[0].data == b"token 2"
    assert second[0].headers["Set-Cookie"].startswith("token=2")
    assert runs.count == 2


def test_view_sees_its_request_context_and_g(stack: SyncCacheStack) -> None:
    from flask import g

    ext = LayerCache(stack=stack)
    app = Flask("ctx")
    ext.init_app(app)

    @app.before_request
    def load_user() -> None:
        g.tenant = request.args.get("tenant", "none")

    @app.get("/ctx")
    @ext.cached()
    def ctx() -> str:
        return f"{g.tenant} {request.args['tenant']}"

    assert app.test_client(use_cookies=False).get("/ctx?tenant=acme").data == b"acme acme"


def test_resolvers_receive_the_request(stack: SyncCacheStack) -> None:
    seen: list[Request] = []
    ext = LayerCache(stack=stack)
    app = Flask("resolver")
    ext.init_app(app)

    def resolver(req: Request) -> str:
        seen.append(req)
        return req.args.get("v", "")

    @app.get("/r/<int:n>")
    @ext.cached(key_resolver=resolver, tags=lambda req: [f"r:{req.view_args['n']}"])  # type: ignore[index]
    def r(n: int) -> str:
        return str(n)

    client = app.test_client(use_cookies=False)
    client.get("/r/7?v=a")
    assert len(seen) == 1
    assert seen[0].path == "/r/7"
    with app.app_context():
        assert ext.stack.invalidate_by_tag("r:7") == 1


def test_bad_arguments_and_unbound_use() -> None:
    ext = LayerCache()
    with pytest.raises(RuntimeError, match="application context"):
        _ = ext.stack
    with pytest.raises(ValueError, match="ttl"):
        ext.cached(ttl=0)
    with pytest.raises(ValueError, match="single str"):
        ext.cached(tags="single")
    with pytest.raises(TypeError):
        LayerCache(stack=object())  # type: ignore[arg-type]


def test_import_without_flask_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "flask", None)
    monkeypatch.delitem(sys.modules, "layercache.integrations.flask")
    with pytest.raises(ImportError, match=r"pip install 'layercache-py\[flask\]'"):
        importlib.import_module("layercache.integrations.flask")


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("layercache_flask_example_app", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_app_caches_and_invalidates_by_tag(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("LAYERCACHE_URL", raising=False)
    example = _load_example()
    app = example.create_app({"TESTING": True, "DATABASE": str(tmp_path / "products.sqlite3")})
    try:
        client = app.test_client(use_cookies=False)
        first = client.get("/products/1")
        assert first.headers["X-Cache"] == "MISS"
        assert first.json["price"] == 20.0
        assert client.get("/products/1").headers["X-Cache"] == "HIT"
        assert client.get("/products").headers["X-Cache"] == "MISS"
        assert client.get("/products").headers["X-Cache"] == "HIT"
        assert example.lookups["count"] == 2
        assert client.get("/products/99").status_code == 404
        assert client.get("/products/99").status_code == 404
        assert example.lookups["count"] == 4  # 404s are not cached

        changed = client.post("/products/1/price", data={"price": "12.5"})
        assert changed.json == {"invalidated": 2}
        again = client.get("/products/1")
        assert again.headers["X-Cache"] == "MISS"
        assert again.json["price"] == 12.5
        listing = client.get("/products")
        assert listing.headers["X-Cache"] == "MISS"
        assert listing.json[0]["price"] == 12.5
        # The other product's page was not invalidated.
        assert client.get("/products/2").headers["X-Cache"] == "MISS"
        assert client.get("/products/2").headers["X-Cache"] == "HIT"
    finally:
        example.cache.close()
