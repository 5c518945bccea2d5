# DO NOT EDIT: generated from tests/stack/test_wrap_namespace.py
# by scripts/unasync_tests.py. Change the async source and run
# `python scripts/unasync_tests.py`.
"""wrap() (bare, decorator, sync/async functions, key rendering, key_resolver) and namespaces."""

from __future__ import annotations

import inspect

import pytest
from twin_stack_support import StackEnv

from _twins_sync import ASYNC
from layercache import SyncCacheNamespace


def test_wrap_bare_async_function(env: StackEnv) -> None:
    calls: list[int] = []

    def find_user(user_id: int) -> dict[str, int]:
        calls.append(user_id)
        return {"id": user_id}

    get_user = env.cache.wrap("user", find_user)
    assert inspect.iscoroutinefunction(get_user) is ASYNC
    assert get_user.__name__ == "find_user"
    assert get_user(123) == {"id": 123}
    assert get_user(123) == {"id": 123}
    assert get_user(7) == {"id": 7}
    assert calls == [123, 7]
    assert env.cache.get("user:123") == {"id": 123}, "wrap(prefix)(123) must use 'user:123'"


def test_wrap_sync_function_is_a_coroutine_function(env: StackEnv) -> None:
    calls: list[str] = []

    def load(name: str) -> str:
        calls.append(name)
        return name.upper()

    cached = env.cache.wrap("load", load)
    assert inspect.iscoroutinefunction(cached) is ASYNC
    assert cached("x") == "X"
    assert cached("x") == "X"
    assert calls == ["x"]
    assert env.cache.get('load:"x"') == "X"


def test_wrap_as_decorator_with_options(env: StackEnv) -> None:
    calls = 0

    @env.cache.wrap("report", ttl=10, tags=["reports"])
    def report(day: int, *, region: str = "eu") -> str:
        nonlocal calls
        calls += 1
        return f"{day}-{region}"

    assert inspect.iscoroutinefunction(report) is ASYNC
    assert report(1, region="us") == "1-us"
    assert report(1, region="us") == "1-us"
    assert calls == 1
    assert env.cache.get('report:1,region="us"') == "1-us"
    assert env.cache.ttl('report:1,region="us"') == pytest.approx(10, abs=0.5)
    env.cache.invalidate_by_tag("reports")
    assert report(1, region="us") == "1-us"
    assert calls == 2


def test_wrap_sync_decorator(env: StackEnv) -> None:
    @env.cache.wrap("sq")
    def square(n: int) -> int:
        return n * n

    assert inspect.iscoroutinefunction(square) is ASYNC
    assert square(4) == 16
    assert env.cache.get("sq:4") == 16


def test_wrap_keys_never_collide(env: StackEnv) -> None:
    calls: list[tuple[object, ...]] = []

    def f(*args: object) -> str:
        calls.append(args)
        return repr(args)

    cached = env.cache.wrap("f", f)
    results = [cached("a:b"), cached("a", "b"), cached(1), cached("1")]
    assert results == [repr(("a:b",)), repr(("a", "b")), repr((1,)), repr(("1",))]
    assert len(calls) == 4, "two different calls shared a cache key"
    for key in ('f:"a:b"', 'f:"a","b"', "f:1", 'f:"1"'):
        assert env.cache.has(key), f"expected key {key!r}"
    # Repeat calls are all hits.
    for args in (("a:b",), ("a", "b"), (1,), ("1",)):
        assert cached(*args) == repr(args)
    assert len(calls) == 4


def test_wrap_kwargs_are_order_independent(env: StackEnv) -> None:
    calls = 0

    def f(**kwargs: int) -> int:
        nonlocal calls
        calls += 1
        return sum(kwargs.values())

    cached = env.cache.wrap("kw", f)
    assert cached(b=2, a=1) == 3
    assert cached(a=1, b=2) == 3
    assert calls == 1
    assert env.cache.has("kw:a=1,b=2")


def test_wrap_key_resolver(env: StackEnv) -> None:
    calls: list[int] = []

    def find(user_id: int, *, verbose: bool = False) -> int:
        calls.append(user_id)
        return user_id * 10

    cached = env.cache.wrap("user", find, key_resolver=lambda user_id, **_: f"id-{user_id}")
    assert cached(5) == 50
    assert cached(5, verbose=True) == 50, "the resolver ignores verbose: same key"
    assert calls == [5]
    assert env.cache.get("user:id-5") == 50


def test_namespace_keys_live_under_the_prefix(env: StackEnv) -> None:
    users = env.cache.namespace("users")
    assert isinstance(users, SyncCacheNamespace)
    users.set("123", {"id": 123})
    assert env.cache.get("users:123") == {"id": 123}
    assert users.get("123") == {"id": 123}
    assert users.get("absent") is None
    assert users.get("f", lambda: "fetched") == "fetched"
    assert env.cache.get("users:f") == "fetched"
    assert users.has("123")
    users.delete("123")
    assert env.cache.get("users:123") is None


def test_namespace_nests(env: StackEnv) -> None:
    posts = env.cache.namespace("tenant:abc").namespace("posts")
    posts.set("1", "post one")
    assert env.cache.get("tenant:abc:posts:1") == "post one"
    assert env.in_layers("tenant:abc:posts:1") == [layer.name for layer in env.layers]


def test_namespace_clear_touches_only_that_namespace(env: StackEnv) -> None:
    env.cache.set_many(
        [("a:1", 1), ("a:2", 2), ("a:x:3", 3), ("ab:1", 4), ("a", 5), ("b:a:1", 6), ("ab", 7)]
    )
    env.cache.namespace("a").clear()
    for key in ("a:1", "a:2", "a:x:3"):
        assert env.in_layers(key) == [], f"{key} survived namespace('a').clear()"
    for key, value in (("ab:1", 4), ("a", 5), ("b:a:1", 6), ("ab", 7)):
        assert env.cache.get(key) == value, f"namespace('a').clear() removed {key}"


def test_namespace_with_glob_characters_is_literal(env: StackEnv) -> None:
    env.cache.set_many([("t[1]:x", 1), ("t1:x", 2), ("t*:x", 3), ("tz:x", 4)])
    env.cache.namespace("t[1]").clear()
    env.cache.namespace("t*").invalidate_by_pattern("*")
    assert env.cache.get("t[1]:x") is None
    assert env.cache.get("t*:x") is None
    assert env.cache.get("t1:x") == 2
    assert env.cache.get("tz:x") == 4


def test_namespace_scopes_pattern_and_prefix_invalidation(env: StackEnv) -> None:
    ns = env.cache.namespace("ns")
    ns.set_many([("user:1", 1), ("user:2", 2), ("post:1", 3)])
    env.cache.set("user:1", "outside")
    ns.invalidate_by_pattern("user:*")
    assert ns.get_many(["user:1", "user:2", "post:1"]) == [None, None, 3]
    assert env.cache.get("user:1") == "outside"
    ns.invalidate_by_prefix("post")
    assert ns.get("post:1") is None
    assert env.cache.get("user:1") == "outside"


def test_namespace_get_many_and_ttl(env: StackEnv) -> None:
    ns = env.cache.namespace("n")
    ns.set("a", 1, ttl=30)
    assert ns.get_many(["a", ("b", lambda: 2), "c"]) == [1, 2, None]
    assert env.cache.get("n:b") == 2
    assert ns.ttl("a") == pytest.approx(30, abs=0.5)
    result = ns.inspect("a")
    assert result is not None


@pytest.mark.parametrize("prefix", ["", "x" * 257, "bad\nprefix", "nul\x00", 5])
def test_namespace_rejects_bad_prefixes(memory_env: StackEnv, prefix: object) -> None:
    with pytest.raises(ValueError, match="prefix"):
        memory_env.cache.namespace(prefix)  # type: ignore[arg-type]


def test_namespace_prefix_of_256_characters_is_fine(memory_env: StackEnv) -> None:
    ns = memory_env.cache.namespace("p" * 256)
    ns.set("k", 1)
    assert memory_env.cache.get("p" * 256 + ":k") == 1
