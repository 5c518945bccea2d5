"""``cached_resolver`` through Strawberry's own ``schema.execute`` / ``execute_sync``, on memory
and on a real Redis shared by two stacks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

pytest.importorskip("strawberry")

import strawberry
from graphql_types import Color, LabelledProduct, Maker, Product, ProductFilter, product

from _redis_server import RedisServer
from layercache import CacheStack, MemoryLayer, SyncCacheStack
from layercache.integrations.graphql import cached_resolver
from layercache.redis import (
    RedisLayer,
    RedisSingleFlightCoordinator,
    SyncRedisLayer,
)

Decorate = Callable[[Any], Any]


def identity(fn: Any) -> Any:
    return fn


def build_schema(decorate: Decorate, calls: list[Any]) -> strawberry.Schema:
    """A schema whose resolvers cover the shapes Strawberry knows: methods (``self``), ``info``,
    ``root``, ``Parent``, a static method, defaults, input objects, enums, lists, UNSET."""

    @strawberry.type
    class Query:
        @strawberry.field
        @decorate
        async def product(
            self, info: strawberry.Info, id: strawberry.ID, color: Color = Color.RED
        ) -> Product | None:
            calls.append(("product", id, color))
            return product(int(id), color)

        @strawberry.field
        @decorate
        async def products(
            self,
            limit: int = 3,
            filter: ProductFilter | None = None,
            name: str | None = strawberry.UNSET,
        ) -> list[Product]:
            calls.append(("products", limit, filter, name))
            return [product(i) for i in range(limit)]

        @strawberry.field
        @decorate
        def maker(root: Any, info: strawberry.Info, name: str) -> Maker:
            calls.append(("maker", name))
            return Maker(name=name)

        @strawberry.field
        @decorate
        @staticmethod
        async def colors(first: int = 2) -> list[Color]:
            calls.append(("colors", first))
            return list(Color)[:first]

        @strawberry.field
        @decorate
        async def count(self, parent: strawberry.Parent[Any], of: list[int]) -> int:
            calls.append(("count", of))
            return len(of)

    return strawberry.Schema(query=Query)


@pytest.fixture
async def cache() -> AsyncIterator[CacheStack]:
    async with CacheStack([MemoryLayer(ttl=60)]) as stack:
        yield stack


def test_the_schema_is_unchanged(cache: CacheStack) -> None:
    plain = build_schema(identity, [])
    cached = build_schema(cached_resolver(cache, "q", ttl=30, tags=["t"]), [])
    assert str(cached) == str(plain)
    assert "product(id: ID!, color: Color! = RED): Product" in str(cached)


async def run(schema: strawberry.Schema, query: str, **kwargs: Any) -> dict[str, Any]:
    result = await schema.execute(query, **kwargs)
    assert result.errors is None, result.errors
    assert result.data is not None
    return result.data


PRODUCT = '{ product(id: "1") { id name color maker { name country } tags } }'


async def test_the_resolver_runs_once_for_repeated_queries(cache: CacheStack) -> None:
    calls: list[Any] = []
    schema = build_schema(cached_resolver(cache, "q"), calls)
    first = await run(schema, PRODUCT)
    assert first["product"]["maker"] == {"name": "maker 1", "country": None}
    for _ in range(5):
        assert await run(schema, PRODUCT) == first
    assert calls == [("product", "1", Color.RED)]


async def test_the_key_is_the_arguments_as_wrap_renders_them(cache: CacheStack) -> None:
    calls: list[Any] = []
    schema = build_schema(cached_resolver(cache, "q"), calls)
    await run(schema, PRODUCT)
    await run(schema, '{ maker(name: "acme") { name } }')
    await run(schema, "{ colors }")
    # self / info / root / parent are not part of the key; defaults are.
    assert await cache.has('q:"1",Color.RED')
    assert await cache.has('q:"acme"')
    assert await cache.has("q:2")

    @cache.wrap("q")
    async def same_shape(id: str, color: Color = Color.RED) -> None:
        raise AssertionError("the key is cached already")

    await same_shape("1")  # wrap() computes the very same key: a hit


async def test_arguments_distinguish_keys(cache: CacheStack) -> None:
    calls: list[Any] = []
    schema = build_schema(cached_resolver(cache, "q"), calls)
    queries = [
        '{ product(id: "1") { id } }',
        '{ product(id: "2") { id } }',
        '{ product(id: "1", color: BLUE) { id } }',
        "{ products { id } }",
        "{ products(limit: 2) { id } }",
        "{ products(filter: {color: RED}) { id } }",
        "{ products(filter: {color: BLUE}) { id } }",
        '{ products(filter: {nameContains: "x"}) { id } }',
        "{ products(filter: {nameContains: null}) { id } }",
        '{ products(filter: {makers: ["a", "b"]}) { id } }',
        '{ products(filter: {makers: ["b", "a"]}) { id } }',
        "{ products(name: null) { id } }",  # null is not UNSET
        '{ products(name: "") { id } }',
        "{ count(of: [1, 2]) }",
        "{ count(of: [2, 1]) }",
    ]
    for query in queries:
        await run(schema, query)
    assert len(calls) == len(queries)
    # The same arguments again (a default spelled out, a variable): all hits.
    await run(schema, '{ product(id: "1", color: RED) { id } }')
    await run(schema, "{ products(limit: 3) { id } }")
    await run(
        schema,
        "query ($f: ProductFilter) { products(filter: $f) { id } }",
        variable_values={"f": {"color": "BLUE"}},
    )
    await run(schema, "{ count(of: [1, 2]) }")
    assert len(calls) == len(queries)
    assert calls[8][2] == ProductFilter(name_contains=None)
    assert calls[11][3] is None
    assert calls[3][3] is strawberry.UNSET


async def test_key_resolver_gets_the_resolver_parameters(cache: CacheStack) -> None:
    calls: list[Any] = []

    def by_user(self: Any, info: strawberry.Info, id: str, color: Color = Color.RED) -> str:
        return f"{info.context['user']}:{id}"

    schema = build_schema(cached_resolver(cache, "q", by_user), calls)
    for user in ("ann", "bob", "ann"):
        await run(schema, '{ product(id: "7") { id } }', context_value={"user": user})
    assert [c[0] for c in calls] == ["product", "product"]
    assert await cache.has("q:ann:7")
    assert await cache.has("q:bob:7")


async def test_tag_invalidation(cache: CacheStack) -> None:
    calls: list[Any] = []
    schema = build_schema(cached_resolver(cache, "q", tags=["catalog"], ttl=300), calls)
    await run(schema, PRODUCT)
    await run(schema, "{ products { id } }")
    await run(schema, PRODUCT)
    assert len(calls) == 2
    assert await cache.invalidate_by_tag("catalog") == 2
    await run(schema, PRODUCT)
    await run(schema, "{ products { id } }")
    assert len(calls) == 4
    remaining = await cache.ttl('q:"1",Color.RED')
    assert remaining is not None
    assert 290 < remaining <= 300


async def test_a_failing_resolver_is_not_cached(cache: CacheStack) -> None:
    attempts: list[int] = []

    @strawberry.type
    class Query:
        @strawberry.field
        @cached_resolver(cache, "flaky")
        async def flaky(self, n: int) -> int:
            attempts.append(n)
            if len(attempts) == 1:
                raise RuntimeError("database down")
            return n * 2

    schema = strawberry.Schema(query=Query)
    failed = await schema.execute("{ flaky(n: 4) }")
    assert failed.errors is not None
    assert "database down" in failed.errors[0].message
    assert await run(schema, "{ flaky(n: 4) }") == {"flaky": 8}
    assert await run(schema, "{ flaky(n: 4) }") == {"flaky": 8}
    assert attempts == [4, 4]


async def test_concurrent_executions_on_a_cold_key_run_the_resolver_once(
    cache: CacheStack,
) -> None:
    release = asyncio.Event()
    started: list[int] = []
    joined = asyncio.Event()
    dedupes: list[str] = []

    def on_dedupe(event: dict[str, Any]) -> None:
        dedupes.append(event["key"])
        if len(dedupes) == 99:
            joined.set()

    cache.on("stampede_dedupe", on_dedupe)

    @strawberry.type
    class Query:
        @strawberry.field
        @cached_resolver(cache, "slow")
        async def products(self, limit: int) -> list[Product]:
            started.append(limit)
            await release.wait()
            return [product(i) for i in range(limit)]

    schema = strawberry.Schema(query=Query)
    query = "{ products(limit: 4) { id name } }"
    tasks = [asyncio.create_task(schema.execute(query)) for _ in range(100)]
    # Every other execution joined the first one's flight while the resolver runs.
    await asyncio.wait_for(joined.wait(), timeout=10)
    assert set(dedupes) == {"slow:4"}
    release.set()
    results = await asyncio.gather(*tasks)
    assert started == [4]
    assert all(r.errors is None for r in results)
    assert {str(r.data) for r in results} == {str(results[0].data)}


def test_execute_sync_with_a_sync_stack() -> None:
    calls: list[Any] = []
    with SyncCacheStack([MemoryLayer(ttl=60)]) as stack:

        @strawberry.type
        class Query:
            @strawberry.field
            @cached_resolver(stack, "sync", tags=["s"])
            def maker(self, name: str) -> Maker:
                calls.append(name)
                return Maker(name=name, country="NL")

        schema = strawberry.Schema(query=Query)
        for name in ("a", "b", "a", "b"):
            result = schema.execute_sync(f'{{ maker(name: "{name}") {{ name country }} }}')
            assert result.errors is None
            assert result.data == {"maker": {"name": name, "country": "NL"}}
        assert calls == ["a", "b"]
        assert stack.invalidate_by_tag("s") == 2
        schema.execute_sync('{ maker(name: "a") { name } }')
        assert calls == ["a", "b", "a"]


def test_an_async_resolver_needs_the_async_stack() -> None:
    with SyncCacheStack([MemoryLayer()]) as stack:
        decorate = cached_resolver(stack, "x")

        async def resolver(n: int) -> int:
            return n

        with pytest.raises(TypeError, match="CacheStack"):
            decorate(resolver)


def test_bad_arguments(cache: CacheStack) -> None:
    async def resolver(self: Any, n: int) -> int:
        return n

    with pytest.raises(ValueError, match="prefix"):
        cached_resolver(cache, "")(resolver)
    with pytest.raises(ValueError, match="ttl"):
        cached_resolver(cache, "p", ttl=-1)(resolver)
    with pytest.raises(ValueError, match="exclude"):
        cached_resolver(cache, "p", exclude=("nope",))(resolver)
    with pytest.raises(ValueError, match="exclude"):
        cached_resolver(cache, "p", exclude="n")
    with pytest.raises(ValueError, match="key_resolver"):
        cached_resolver(cache, "p", "not callable")  # type: ignore[arg-type]


async def test_any_resolver_function(cache: CacheStack) -> None:
    # A graphql-core style resolver (obj, info, **args), called directly.
    calls: list[Any] = []

    @cached_resolver(cache, "user", exclude=("obj",))
    def resolve_user(obj: Any, info: Any, **args: Any) -> dict[str, Any]:
        calls.append(args)
        return {"id": args["id"], "name": "ann"}

    assert await resolve_user(object(), None, id=1) == {"id": 1, "name": "ann"}
    assert await resolve_user(object(), "other info", id=1) == {"id": 1, "name": "ann"}
    assert await resolve_user(None, None, id=2) == {"id": 2, "name": "ann"}
    assert calls == [{"id": 1}, {"id": 2}]
    assert await cache.has("user:id=1")
    assert resolve_user.__name__ == "resolve_user"


@pytest.mark.redis
async def test_a_list_of_types_round_trips_through_redis_typed(redis_clean: RedisServer) -> None:
    calls: list[Any] = []

    def build() -> CacheStack:
        return CacheStack([MemoryLayer(ttl=60), RedisLayer(url=redis_clean.url, ttl=600)])

    async with build() as writer, build() as reader:
        schemas = [build_schema(cached_resolver(c, "q"), calls) for c in (writer, reader)]
        query = "{ products(limit: 4) { id name price color maker { name country } tags } }"
        first = await run(schemas[0], query)
        # The reader's memory layer is empty: Redis answers, and the objects are Products again
        # (Strawberry reads their attributes: a dict would fail), equal to the resolver's.
        assert await run(schemas[1], query) == first
        assert len(calls) == 1
        assert first["products"][3]["maker"] == {"name": "maker 0", "country": None}

        @cached_resolver(reader, "q")
        async def products(
            self: Any,
            limit: int = 3,
            filter: ProductFilter | None = None,
            name: str | None = strawberry.UNSET,
        ) -> list[Product]:
            raise AssertionError("cached")

        values = await products(None, limit=4)
        assert values == [product(i) for i in range(4)]
        assert all(type(v) is Product for v in values)
        assert type(values[0].maker) is Maker
        assert type(values[0].color) is Color

        @cached_resolver(build(), "q")  # a fresh stack: Redis only has it
        async def one(self: Any, info: Any, id: strawberry.ID, color: Color = Color.RED) -> Product:
            return product(int(id), color)

        await run(schemas[0], '{ product(id: "2", color: BLUE) { id } }')
        got = await one(None, None, strawberry.ID("2"), Color.BLUE)
        assert type(got) is Product
        assert got == product(2, Color.BLUE)


@pytest.mark.redis
@pytest.mark.parametrize(
    "typed",
    # typed=True: a waiter under distributed single-flight returned the raw dict another
    # instance stored, without get()'s type= conversion (fixed in the loader and reader).
    [False, True],
)
async def test_cold_key_across_two_instances_runs_the_resolver_once(
    redis_clean: RedisServer, typed: bool
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    runs: list[int] = []

    def build() -> CacheStack:
        return CacheStack(
            [MemoryLayer(ttl=60), RedisLayer(url=redis_clean.url, ttl=600)],
            single_flight_coordinator=RedisSingleFlightCoordinator(
                url=redis_clean.url, prefix="gql:sf"
            ),
            single_flight_poll=0.01,
        )

    def make(cache: CacheStack) -> strawberry.Schema:
        @strawberry.type
        class Query:
            @strawberry.field
            @cached_resolver(cache, "hot")
            async def products(self, limit: int) -> list[Product]:
                runs.append(limit)
                started.set()
                await release.wait()
                return [product(i) for i in range(limit)]

            @strawberry.field
            @cached_resolver(cache, "hot-names")
            async def names(self, limit: int) -> list[str]:
                runs.append(limit)
                started.set()
                await release.wait()
                return [product(i).name for i in range(limit)]

        return strawberry.Schema(query=Query)

    async with build() as one, build() as two:
        schemas = [make(one), make(two)]
        query = "{ products(limit: 3) { name } }" if typed else "{ names(limit: 3) }"
        tasks = [asyncio.create_task(schemas[i % 2].execute(query)) for i in range(100)]
        await asyncio.wait_for(started.wait(), timeout=10)
        # The other instance's callers find the lock taken: they wait for the value in Redis.
        release.set()
        results = await asyncio.gather(*tasks)
    assert runs == [3]
    assert all(r.errors is None for r in results), [r.errors for r in results if r.errors][:1]
    assert {str(r.data) for r in results} == {str(results[0].data)}


@pytest.mark.redis
def test_sync_stack_round_trips_through_redis_typed(redis_clean: RedisServer) -> None:
    calls: list[str] = []

    def make(stack: SyncCacheStack) -> strawberry.Schema:
        @strawberry.type
        class Query:
            @strawberry.field
            @cached_resolver(stack, "m")
            def makers(self, names: list[str]) -> list[Maker]:
                calls.extend(names)
                return [Maker(name=n, country="DE") for n in names]

        return strawberry.Schema(query=Query)

    def build() -> SyncCacheStack:
        return SyncCacheStack([MemoryLayer(ttl=60), SyncRedisLayer(url=redis_clean.url)])

    with build() as first, build() as second:
        query = '{ makers(names: ["x", "y"]) { name country } }'
        a = make(first).execute_sync(query)
        b = make(second).execute_sync(query)
        assert a.errors is None
        assert b.errors is None
        assert (
            a.data
            == b.data
            == {"makers": [{"name": "x", "country": "DE"}, {"name": "y", "country": "DE"}]}
        )
        assert calls == ["x", "y"]
        raw = second.get('m:["x","y"]', type=list[Maker])
        assert raw == [Maker(name="x", country="DE"), Maker(name="y", country="DE")]


@pytest.mark.redis
async def test_a_type_with_a_computed_field_round_trips_through_redis(
    redis_clean: RedisServer,
) -> None:
    async with CacheStack([RedisLayer(url=redis_clean.url)]) as cache:

        @strawberry.type
        class Query:
            @strawberry.field
            @cached_resolver(cache, "labelled")
            async def item(self, name: str) -> LabelledProduct:
                return LabelledProduct(name=name)

        schema = strawberry.Schema(query=Query)
        for _ in range(2):
            assert await run(schema, '{ item(name: "x") { name label } }') == {
                "item": {"name": "x", "label": "<x>"}
            }
