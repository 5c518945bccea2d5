"""``layercache.integrations.fastapi.cached``: FastAPI's own ``TestClient`` (and httpx's
``AsyncClient`` over ``ASGITransport`` for the concurrent burst), an in-process stack."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import itertools
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx2")  # what starlette's TestClient uses

import httpx2
from fastapi import (
    BackgroundTasks,
    Body,
    Depends,
    FastAPI,
    Header,
    Path,
    Query,
    Request,
    Response,
)
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from pydantic import BaseModel

from layercache import CacheStack, MemoryLayer, SyncCacheStack
from layercache.integrations.fastapi import cached
from polling import eventually_async


class Product(BaseModel):
    id: int
    name: str
    price: float


class Filter(BaseModel):
    colour: str
    sizes: list[int]


class Session:
    """A database session from a dependency: an object, left out of the key."""

    def __init__(self, opened: int) -> None:
        self.opened = opened


_sessions = itertools.count()


def get_db() -> Session:
    return Session(next(_sessions))


def current_user(x_user: Annotated[str, Header()] = "anonymous") -> str:
    return x_user


def get_cache(request: Request) -> CacheStack:
    """The recipe's dependency: the stack the lifespan stored on the application."""
    cache: CacheStack = request.app.state.cache
    return cache


def new_stack() -> CacheStack:
    return CacheStack([MemoryLayer(ttl=60)])


def build_app(cache: CacheStack | None, calls: list[Any]) -> FastAPI:
    """The same routes with (``cache``) or without (``None``) the decorator."""

    def maybe(**kwargs: Any) -> Callable[[Any], Any]:
        if cache is None:
            return lambda endpoint: endpoint
        return cached(cache, **kwargs)

    app = FastAPI()

    @app.get("/products/{product_id}", response_model=Product)
    @maybe(ttl=30, tags=lambda args: [f"product:{args['product_id']}", "products"])
    async def product(
        request: Request,
        response: Response,
        tasks: BackgroundTasks,
        product_id: Annotated[int, Path(ge=1)],
        db: Annotated[Session, Depends(get_db)],
        currency: str = Query("EUR", max_length=3),
        user: str = Depends(current_user),
    ) -> Product:
        calls.append(("product", product_id, currency, user))
        assert isinstance(request, Request)
        assert isinstance(db, Session)
        return Product(id=product_id, name=f"p{product_id}-{currency}-{user}", price=9.5)

    @app.post("/search")
    @maybe(tags=["search"])
    def search(flt: Annotated[Filter, Body()], limit: int = 10) -> list[Product]:
        calls.append(("search", flt.colour, tuple(flt.sizes), limit, threading.current_thread()))
        return [Product(id=size, name=flt.colour, price=1.0) for size in flt.sizes[:limit]]

    return app


def test_the_decorated_endpoint_keeps_the_signature_and_the_openapi_schema() -> None:
    plain_app = build_app(None, [])
    cached_app = build_app(new_stack(), [])
    assert cached_app.openapi() == plain_app.openapi()

    async def endpoint(item_id: int, q: str | None = Query(None)) -> Product:
        raise AssertionError("not called")

    decorated = cached(new_stack())(endpoint)
    assert inspect.signature(decorated) == inspect.signature(endpoint)
    assert decorated.__wrapped__ is endpoint  # type: ignore[attr-defined]
    assert decorated.__name__ == "endpoint"
    assert inspect.iscoroutinefunction(decorated)


def test_dependencies_and_parameters_resolve_and_only_plain_values_make_the_key() -> None:
    calls: list[Any] = []
    app = build_app(new_stack(), calls)
    with TestClient(app) as client:
        first = client.get("/products/3")
        assert first.status_code == 200, first.text
        assert first.json() == {"id": 3, "name": "p3-EUR-anonymous", "price": 9.5}
        # A new Request, Response, BackgroundTasks and db session each time: still a hit.
        assert client.get("/products/3").json() == first.json()
        assert len(calls) == 1
        # Query, header-derived dependency value and path are in the key.
        assert client.get("/products/3?currency=USD").json()["name"] == "p3-USD-anonymous"
        assert client.get("/products/3", headers={"x-user": "ann"}).json()["name"] == ("p3-EUR-ann")
        assert client.get("/products/4").json()["id"] == 4
        assert len(calls) == 4
        # Validation still runs before the cache (Path(ge=1), max_length=3).
        assert client.get("/products/0").status_code == 422
        assert client.get("/products/3?currency=EURO").status_code == 422
        assert len(calls) == 4


def test_sync_endpoints_run_in_the_thread_pool_and_body_models_are_keys() -> None:
    calls: list[Any] = []
    app = build_app(new_stack(), calls)
    body = {"colour": "red", "sizes": [1, 2, 3]}
    with TestClient(app) as client:
        expected = [{"id": n, "name": "red", "price": 1.0} for n in (1, 2, 3)]
        assert client.post("/search", json=body).json() == expected
        assert client.post("/search", json=body).json() == expected
        assert len(calls) == 1
        assert calls[0][-1] is not threading.main_thread()
        assert client.post("/search?limit=1", json=body).json() == expected[:1]
        assert client.post("/search", json={**body, "sizes": [2]}).json() == expected[1:2]
        assert len(calls) == 3


async def test_values_come_back_typed_and_keys_read_as_documented() -> None:
    cache = new_stack()
    calls: list[int] = []

    async def product(product_id: int, currency: str = "EUR") -> Product:
        calls.append(product_id)
        return Product(id=product_id, name="x", price=1.0)

    endpoint = cached(cache, prefix="products")(product)
    assert await endpoint(7) == Product(id=7, name="x", price=1.0)
    key = 'products:product_id=7,currency="EUR"'
    assert await cache.has(key)
    # A remote layer hands back the model's fields: the endpoint's annotation rebuilds it.
    await cache.set(key, {"id": 7, "name": "from redis", "price": 2.0})
    again = await endpoint(product_id=7)
    assert again == Product(id=7, name="from redis", price=2.0)
    assert calls == [7]
    # The default prefix names the endpoint.
    default = cached(cache)(product)
    await default(8)
    assert await cache.has(f'fastapi:{__name__}.{product.__qualname__}:product_id=8,currency="EUR"')
    # type=None: values as stored.
    raw = cached(cache, prefix="raw", type=None)(product)
    await cache.set('raw:product_id=9,currency="EUR"', {"id": 9})
    assert await raw(9) == {"id": 9}


async def test_tags_static_or_from_the_arguments_and_invalidation() -> None:
    cache = new_stack()
    calls: list[Any] = []
    app = build_app(cache, calls)
    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:
        for _ in range(2):
            await client.get("/products/1")
            await client.get("/products/2")
            await client.post("/search", json={"colour": "b", "sizes": [1]})
        assert len(calls) == 3
        assert await cache.invalidate_by_tag("product:1") == 1
        await client.get("/products/1")
        await client.get("/products/2")
        assert len(calls) == 4
        assert await cache.invalidate_by_tag("products") == 2
        assert await cache.invalidate_by_tag("search") == 1
        await client.get("/products/2")
        await client.post("/search", json={"colour": "b", "sizes": [1]})
        assert len(calls) == 6


async def test_key_resolver_replaces_the_arguments() -> None:
    cache = new_stack()
    seen: list[dict[str, Any]] = []

    def by_language(args: Any) -> str:
        seen.append(dict(args))
        return args["request"].headers.get("accept-language", "en")

    app = FastAPI()
    calls: list[str] = []

    @app.get("/greeting")
    @cached(cache, prefix="greeting", key_resolver=by_language)
    async def greeting(request: Request, name: str = "x") -> dict[str, str]:
        calls.append(name)
        return {"hello": name}

    with TestClient(app) as client:
        assert client.get("/greeting?name=a").json() == {"hello": "a"}
        # Same language, another name: the resolver said it is the same entry.
        assert client.get("/greeting?name=b").json() == {"hello": "a"}
        assert client.get("/greeting?name=c", headers={"accept-language": "fr"}).json() == {
            "hello": "c"
        }
    assert calls == ["a", "c"]
    assert await cache.has("greeting:en")
    assert await cache.has("greeting:fr")
    assert set(seen[0]) == {"request", "name"}


def test_response_objects_are_never_cached() -> None:
    cache = new_stack()
    app = FastAPI()
    calls: list[int] = []

    @app.get("/raw")
    @cached(cache, prefix="raw")
    async def raw() -> JSONResponse:
        calls.append(1)
        return JSONResponse({"n": len(calls)}, headers={"x-run": str(len(calls))})

    with TestClient(app) as client:
        assert client.get("/raw").json() == {"n": 1}
        second = client.get("/raw")
        assert second.json() == {"n": 2}
        assert second.headers["x-run"] == "2"


async def test_a_cold_key_runs_the_endpoint_once_for_200_concurrent_requests() -> None:
    cache = new_stack()
    app = FastAPI()
    gate = asyncio.Event()
    calls: list[int] = []

    @app.get("/slow/{item}")
    @cached(cache)
    async def slow(item: int) -> Product:
        calls.append(item)
        await gate.wait()
        return Product(id=item, name="slow", price=3.0)

    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:
        burst = [asyncio.create_task(client.get("/slow/1")) for _ in range(200)]
        # Every request but the first has joined the one running fetch: then release it.
        await eventually_async(
            lambda: cache.get_metrics().stampede_dedupes == 199,
            what="199 requests waiting on the running fetch",
        )
        assert calls == [1]
        gate.set()
        responses = await asyncio.gather(*burst)
    assert {r.status_code for r in responses} == {200}
    assert all(r.json() == {"id": 1, "name": "slow", "price": 3.0} for r in responses)
    assert calls == [1]


def test_the_lifespan_and_depends_recipe() -> None:
    """docs/fastapi.md's recipe: the stack lives with the app, routes get it from Depends."""
    loads: list[int] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with CacheStack([MemoryLayer(ttl=60)]) as stack:
            app.state.cache = stack
            yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/items/{item_id}")
    @cached(get_cache, ttl=60, tags=lambda args: [f"item:{args['item_id']}"])
    async def item(item_id: int, cache: Annotated[CacheStack, Depends(get_cache)]) -> Product:
        loads.append(item_id)
        return Product(id=item_id, name="item", price=1.0)

    @app.put("/items/{item_id}")
    async def update(
        item_id: int, cache: Annotated[CacheStack, Depends(get_cache)]
    ) -> dict[str, int]:
        return {"dropped": await cache.invalidate_by_tag(f"item:{item_id}")}

    # A provider of no arguments works too.
    @app.get("/other/{item_id}")
    @cached(lambda: app.state.cache, prefix="other")
    async def other(item_id: int) -> dict[str, int]:
        loads.append(-item_id)
        return {"id": item_id}

    with TestClient(app) as client:
        assert client.get("/items/1").json()["id"] == 1
        assert client.get("/items/1").json()["id"] == 1
        assert client.put("/items/1").json() == {"dropped": 1}
        assert client.get("/items/1").json()["id"] == 1
        assert client.get("/other/5").json() == {"id": 5}
        assert client.get("/other/5").json() == {"id": 5}
        stack = app.state.cache
    assert loads == [1, 1, -5]
    # The lifespan closed the stack with the app.
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(stack.get("anything"))


def test_a_provider_giving_something_else_fails_the_request_clearly() -> None:
    app = FastAPI()

    @app.get("/x")
    @cached(lambda: "not a stack")
    async def x() -> int:
        return 1

    with TestClient(app) as client, pytest.raises(TypeError, match="CacheStack"):
        client.get("/x")


def test_bad_arguments_are_refused_at_decoration() -> None:
    sync = SyncCacheStack([MemoryLayer()])
    try:
        with pytest.raises(TypeError, match="async CacheStack"):
            cached(sync)  # type: ignore[arg-type]
    finally:
        sync.close()
    with pytest.raises(TypeError, match="CacheStack"):
        cached(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cached(new_stack(), no_such_option=1)
    with pytest.raises(ValueError, match="single str"):
        cached(new_stack(), tags="products")
    with pytest.raises(ValueError, match="empty"):
        cached(new_stack(), prefix="")

    async def stream() -> AsyncIterator[int]:
        yield 1

    with pytest.raises(TypeError, match="generator"):
        cached(new_stack())(stream)


async def test_key_text_of_plain_values_and_objects() -> None:
    cache = new_stack()

    class User:
        def __init__(self, uid: int) -> None:
            self.uid = uid

        def __cache_key__(self) -> str:
            return f"user-{self.uid}"

    calls: list[str] = []

    async def endpoint(
        a: str, b: int, flt: Filter, user: User, session: Session, tags: set[str]
    ) -> int:
        calls.append(a)
        return 1

    wrapped = cached(cache, prefix="k")(endpoint)
    await wrapped("1", 1, Filter(colour="r", sizes=[2]), User(5), Session(1), {"y", "x"})
    key = 'k:a="1",b=1,flt=Filter{"colour":"r","sizes":[2]},user=@"user-5",tags=s{"x","y"}'
    assert await cache.has(key)
    # A very long argument: a digest keeps the key valid.
    for opened in (2, 3):
        await wrapped("z" * 5000, 1, Filter(colour="r", sizes=[]), User(1), Session(opened), set())
    assert calls == ["1", "z" * 5000]


async def test_a_response_object_is_not_shared_with_concurrent_requests() -> None:
    """Requests that waited on a run returning a ``Response`` run the endpoint themselves."""
    cache = new_stack()
    app = FastAPI()
    gate = asyncio.Event()
    calls: list[int] = []

    @app.get("/accepted", response_model=None)
    @cached(cache)
    async def accepted() -> Product | JSONResponse:
        calls.append(1)
        await gate.wait()
        return JSONResponse({"run": len(calls)}, status_code=202)

    transport = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:
        burst = [asyncio.create_task(client.get("/accepted")) for _ in range(5)]
        await eventually_async(
            lambda: cache.get_metrics().stampede_dedupes == 4 and calls == [1],
            what="four requests waiting on the first one's run",
        )
        gate.set()
        responses = await asyncio.gather(*burst)
    assert {r.status_code for r in responses} == {202}
    assert sorted(r.json()["run"] for r in responses) == [1, 2, 3, 4, 5]


def test_import_without_fastapi_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fastapi", None)
    monkeypatch.delitem(sys.modules, "layercache.integrations.fastapi")
    with pytest.raises(ImportError, match=r"pip install 'layercache-py\[fastapi\]'"):
        importlib.import_module("layercache.integrations.fastapi")
