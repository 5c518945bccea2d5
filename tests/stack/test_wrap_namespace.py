"""wrap() (bare, decorator, sync/async functions, key rendering, key_resolver) and namespaces."""

from __future__ import annotations

import inspect

import pytest
from stack_support import StackEnv

from _twins_async import ASYNC
from layercache import CacheNamespace


async def test_wrap_bare_async_function(env: StackEnv) -> None:
    calls: list[int] = []

    async def find_user(user_id: int) -> dict[str, int]:
        calls.append(user_id)
        return {"id": user_id}

    get_user = env.cache.wrap("user", find_user)
    assert inspect.iscoroutinefunction(get_user) is ASYNC
    assert get_user.__name__ == "find_user"
    assert await get_user(123) == {"id": 123}
    assert await get_user(123) == {"id": 123}
    assert await get_user(7) == {"id": 7}
    assert calls == [123, 7]
    assert await env.cache.get("user:123") == {"id": 123}, "wrap(prefix)(123) must use 'user:123'"


async def test_wrap_sync_function_is_a_coroutine_function(env: StackEnv) -> None:
    calls: list[str] = []

    def load(name: str) -> str:
        calls.append(name)
        return name.upper()

    cached = env.cache.wrap("load", load)
    assert inspect.iscoroutinefunction(cached) is ASYNC
    assert await cached("x") == "X"
    assert await cached("x") == "X"
    assert calls == ["x"]
    assert await env.cache.get('load:"x"') == "X"


async def test_wrap_as_decorator_with_options(env: StackEnv) -> None:
    calls = 0

    @env.cache.wrap("report", ttl=10, tags=["reports"])
    async def report(day: int, *, region: str = "eu") -> str:
        nonlocal calls
        calls += 1
        return f"{day}-{region}"

    assert inspect.iscoroutinefunction(report) is ASYNC
    assert await report(1, region="us") == "1-us"
    assert await report(1, region="us") == "1-us"
    assert calls == 1
    assert await env.cache.get('report:1,region="us"') == "1-us"
    assert await env.cache.ttl('report:1,region="us"') == pytest.approx(10, abs=0.5)
    await env.cache.invalidate_by_tag("reports")
    assert await report(1, region="us") == "1-us"
    assert calls == 2


async def test_wrap_sync_decorator(env: StackEnv) -> None:
    @env.cache.wrap("sq")
    def square(n: int) -> int:
        return n * n

    assert inspect.iscoroutinefunction(square) is ASYNC
    assert await square(4) == 16
    assert await env.cache.get("sq:4") == 16


async def test_wrap_keys_never_collide(env: StackEnv) -> None:
    calls: list[tuple[object, ...]] = []

    async def f(*args: object) -> str:
        calls.append(args)
        return repr(args)

    cached = env.cache.wrap("f", f)
    results = [await cached("a:b"), await cached("a", "b"), await cached(1), await cached("1")]
    assert results == [repr(("a:b",)), repr(("a", "b")), repr((1,)), repr(("1",))]
    assert len(calls) == 4, "two different calls shared a cache key"
    for key in ('f:"a:b"', 'f:"a","b"', "f:1", 'f:"1"'):
        assert await env.cache.has(key), f"expected key {key!r}"
    # Repeat calls are all hits.
    for args in (("a:b",), ("a", "b"), (1,), ("1",)):
        assert await cached(*args) == repr(args)
    assert len(calls) == 4


async def test_wrap_kwargs_are_order_independent(env: StackEnv) -> None:
    calls = 0

    async def f(**kwargs: int) -> int:
        nonlocal calls
        calls += 1
        return sum(kwargs.values())

    cached = env.cache.wrap("kw", f)
    assert await cached(b=2, a=1) == 3
    assert await cached(a=1, b=2) == 3
    assert calls == 1
    assert await env.cache.has("kw:a=1,b=2")


async def test_wrap_key_resolver(env: StackEnv) -> None:
    calls: list[int] = []

    async def find(user_id: int, *, verbose: bool = False) -> int:
        calls.append(user_id)
        return user_id * 10

    cached = env.cache.wrap("user", find, key_resolver=lambda user_id, **_: f"id-{user_id}")
    assert await cached(5) == 50
    assert await cached(5, verbose=True) == 50, "the resolver ignores verbose: same key"
    assert calls == [5]
    assert await env.cache.get("user:id-5") == 50


async def test_namespace_keys_live_under_the_prefix(env: StackEnv) -> None:
    users = env.cache.namespace("users")
    assert isinstance(users, CacheNamespace)
    await users.set("123", {"id": 123})
    assert await env.cache.get("users:123") == {"id": 123}
    assert await users.get("123") == {"id": 123}
    assert await users.get("absent") is None
    assert await users.get("f", lambda: "fetched") == "fetched"
    assert await env.cache.get("users:f") == "fetched"
    assert await users.has("123")
    await users.delete("123")
    assert await env.cache.get("users:123") is None


async def test_namespace_nests(env: StackEnv) -> None:
    posts = env.cache.namespace("tenant:abc").namespace("posts")
    await posts.set("1", "post one")
    assert await env.cache.get("tenant:abc:posts:1") == "post one"
    assert await env.in_layers("tenant:abc:posts:1") == [layer.name for layer in env.layers]


async def test_namespace_clear_touches_only_that_namespace(env: StackEnv) -> None:
    await env.cache.set_many(
        [("a:1", 1), ("a:2", 2), ("a:x:3", 3), ("ab:1", 4), ("a", 5), ("b:a:1", 6), ("ab", 7)]
    )
    await env.cache.namespace("a").clear()
    for key in ("a:1", "a:2", "a:x:3"):
        assert await env.in_layers(key) == [], f"{key} survived namespace('a').clear()"
    for key, value in (("ab:1", 4), ("a", 5), ("b:a:1", 6), ("ab", 7)):
        assert await env.cache.get(key) == value, f"namespace('a').clear() removed {key}"


async def test_namespace_with_glob_characters_is_literal(env: StackEnv) -> None:
    await env.cache.set_many([("t[1]:x", 1), ("t1:x", 2), ("t*:x", 3), ("tz:x", 4)])
    await env.cache.namespace("t[1]").clear()
    await env.cache.namespace("t*").invalidate_by_pattern("*")
    assert await env.cache.get("t[1]:x") is None
    assert await env.cache.get("t*:x") is None
    assert await env.cache.get("t1:x") == 2
    assert await env.cache.get("tz:x") == 4


async def test_namespace_scopes_pattern_and_prefix_invalidation(env: StackEnv) -> None:
    ns = env.cache.namespace("ns")
    await ns.set_many([("user:1", 1), ("user:2", 2), ("post:1", 3)])
    await env.cache.set("user:1", "outside")
    await ns.invalidate_by_pattern("user:*")
    assert await ns.get_many(["user:1", "user:2", "post:1"]) == [None, None, 3]
    assert await env.cache.get("user:1") == "outside"
    await ns.invalidate_by_prefix("post")
    assert await ns.get("post:1") is None
    assert await env.cache.get("user:1") == "outside"


async def test_namespace_get_many_and_ttl(env: StackEnv) -> None:
    ns = env.cache.namespace("n")
    await ns.set("a", 1, ttl=30)
    assert await ns.get_many(["a", ("b", lambda: 2), "c"]) == [1, 2, None]
    assert await env.cache.get("n:b") == 2
    assert await ns.ttl("a") == pytest.approx(30, abs=0.5)
    result = await ns.inspect("a")
    assert result is not None


@pytest.mark.parametrize("prefix", ["", "x" * 257, "bad\nprefix", "nul\x00", 5])
async def test_namespace_rejects_bad_prefixes(memory_env: StackEnv, prefix: object) -> None:
    with pytest.raises(ValueError, match="prefix"):
        memory_env.cache.namespace(prefix)  # type: ignore[arg-type]


async def test_namespace_prefix_of_256_characters_is_fine(memory_env: StackEnv) -> None:
    ns = memory_env.cache.namespace("p" * 256)
    await ns.set("k", 1)
    assert await memory_env.cache.get("p" * 256 + ":k") == 1
