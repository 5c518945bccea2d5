# DO NOT EDIT: generated from tests/stack/test_wrap_methods.py
# by scripts/unasync_tests.py. Change the async source and run
# `python scripts/unasync_tests.py`.
"""wrap() on methods, and keys bound to the signature (issue 10, point 4).

A method's ``self`` (or a classmethod's ``cls``) is not part of the key by default; an
instance whose class defines ``__cache_key__()`` puts that in front. Arguments are bound to
the signature with defaults applied, so every spelling of one call shares one key.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from twin_stack_support import StackEnv

from layercache import SyncCacheStack


class Repository:
    """A service object: every instance reads the same data."""

    def __init__(self, cache: SyncCacheStack, calls: list[Any]) -> None:
        self.calls = calls
        self.get_user = cache.wrap("user", self._load)  # wrapping a bound method works too

    def _load(self, user_id: int) -> dict[str, int]:
        self.calls.append(("bound", user_id))
        return {"id": user_id}


def make_service(cache: SyncCacheStack, calls: list[Any]) -> type:
    class Service:
        def __init__(self, name: str = "svc") -> None:
            self.name = name

        @cache.wrap("find")
        def find(self, user_id: int, verbose: bool = False) -> dict[str, Any]:
            calls.append(("find", self.name, user_id, verbose))
            return {"id": user_id, "by": self.name}

        @cache.wrap("sync-find")
        def find_sync(self, user_id: int) -> int:
            calls.append(("sync", user_id))
            return user_id * 2

        @cache.wrap("cm-above")
        @classmethod
        def above(cls, n: int) -> str:
            calls.append(("above", cls.__name__, n))
            return f"{cls.__name__}-{n}"

        @classmethod
        @cache.wrap("cm-below")
        def below(cls, n: int) -> str:
            calls.append(("below", cls.__name__, n))
            return f"{cls.__name__}-{n}"

        @cache.wrap("sm-above")
        @staticmethod
        def static_above(n: int) -> int:
            calls.append(("static_above", n))
            return n + 1

        @staticmethod
        @cache.wrap("sm-below")
        def static_below(n: int) -> int:
            calls.append(("static_below", n))
            return n + 2

    return Service


class Tenant:
    """An instance that IS part of the key: ``__cache_key__`` says how."""

    def __init__(self, cache: SyncCacheStack, tenant_id: str, calls: list[Any]) -> None:
        self.tenant_id = tenant_id
        self.calls = calls
        self.cache = cache

    def __cache_key__(self) -> str:
        return self.tenant_id


def test_a_method_is_cached_without_its_instance_in_the_key(env: StackEnv) -> None:
    calls: list[Any] = []
    service_cls = make_service(env.cache, calls)
    first, second = service_cls("one"), service_cls("two")
    assert first.find(1) == {"id": 1, "by": "one"}
    assert second.find(1) == {"id": 1, "by": "one"}, "instances share the key"
    assert calls == [("find", "one", 1, False)]
    assert env.cache.get("find:1,false") == {"id": 1, "by": "one"}
    assert first.find_sync(4) == 8
    assert env.cache.has("sync-find:4")


def test_classmethods_and_staticmethods_in_either_order(env: StackEnv) -> None:
    calls: list[Any] = []
    service_cls = make_service(env.cache, calls)
    assert service_cls.above(1) == "Service-1"
    assert service_cls().above(1) == "Service-1"
    assert service_cls.below(2) == "Service-2"
    assert service_cls().below(2) == "Service-2"
    assert service_cls.static_above(3) == 4
    assert service_cls().static_above(3) == 4
    assert service_cls.static_below(3) == 5
    assert service_cls().static_below(3) == 5
    assert [c[0] for c in calls] == ["above", "below", "static_above", "static_below"]
    for key in ("cm-above:1", "cm-below:2", "sm-above:3", "sm-below:3"):
        assert env.cache.has(key), key


def test_wrapping_a_bound_method(env: StackEnv) -> None:
    calls: list[Any] = []
    repo = Repository(env.cache, calls)
    assert repo.get_user(5) == {"id": 5}
    assert Repository(env.cache, calls).get_user(5) == {"id": 5}
    assert len(calls) == 1, "a bound method's instance is not in the key either"
    assert env.cache.has("user:5")

    class Keyed(Repository):
        def __cache_key__(self) -> str:
            return "k"

    assert Keyed(env.cache, calls).get_user(5) == {"id": 5}
    assert len(calls) == 2
    assert env.cache.has('user:@"k",5')


def test_cache_key_hook_puts_the_instance_in_the_key(env: StackEnv) -> None:
    calls: list[Any] = []

    class Scoped(Tenant):
        @env.cache.wrap("report")
        def report(self, day: int) -> str:
            calls.append((self.tenant_id, day))
            return f"{self.tenant_id}:{day}"

    a, b = Scoped(env.cache, "a", calls), Scoped(env.cache, "b", calls)
    assert a.report(1) == "a:1"
    assert b.report(1) == "b:1"
    assert Scoped(env.cache, "a", calls).report(1) == "a:1"
    assert calls == [("a", 1), ("b", 1)]
    assert env.cache.get('report:@"a",1') == "a:1"


def test_cache_key_hook_cannot_imitate_plain_arguments(env: StackEnv) -> None:
    calls: list[Any] = []

    class Hooked:
        def __cache_key__(self) -> int:
            return 5

        @env.cache.wrap("v")
        def values(self, *args: int) -> tuple[int, ...]:
            calls.append(("hooked", args))
            return args

    class Plain:
        @env.cache.wrap("v")
        def values(self, *args: int) -> tuple[int, ...]:
            calls.append(("plain", args))
            return args

    Hooked().values(1)
    Plain().values(5, 1)
    assert len(calls) == 2, "Hooked(5).values(1) and Plain().values(5, 1) shared a key"


def test_arguments_are_bound_to_the_signature(env: StackEnv) -> None:
    calls: list[tuple[int, int]] = []

    def f(a: int, b: int = 2) -> int:
        calls.append((a, b))
        return a + b

    cached = env.cache.wrap("f", f)
    assert cached(1) == 3
    assert cached(a=1) == 3
    assert cached(1, b=2) == 3
    assert cached(b=2, a=1) == 3
    assert cached(1, 2) == 3
    assert calls == [(1, 2)], "one call spelled five ways must share one key"
    assert env.cache.has("f:1,2")
    assert cached(1, b=3) == 4
    assert calls == [(1, 2), (1, 3)]


def test_keyword_only_varargs_and_kwargs(env: StackEnv) -> None:
    calls: list[Any] = []

    def g(a: int, *rest: int, scale: int = 1, **extra: str) -> int:
        calls.append((a, rest, scale, extra))
        return (a + sum(rest)) * scale

    cached = env.cache.wrap("g", g)
    assert cached(1, 2, 3) == 6
    assert cached(1, 2, 3, scale=1) == 6
    assert cached(1, 2, 3, tag="x") == 6
    assert cached(1, 2, 3, scale=1, tag="x") == 6
    assert len(calls) == 2
    assert env.cache.has("g:1,2,3,scale=1")
    assert env.cache.has('g:1,2,3,scale=1,tag="x"')


def test_positional_only_name_and_kwargs_name_do_not_collide(env: StackEnv) -> None:
    calls: list[Any] = []

    def h(a: int, /, **kw: int) -> int:
        calls.append((a, kw))
        return a

    cached = env.cache.wrap("h", h)
    cached(1, a=2)
    cached(2, a=1)
    cached(1)
    assert len(calls) == 3


def test_a_call_that_does_not_fit_the_signature_fails_before_any_layer(
    env: StackEnv,
) -> None:
    calls: list[int] = []

    def f(a: int) -> int:
        calls.append(a)
        return a

    cached = env.cache.wrap("f", f)
    with pytest.raises(TypeError):
        cached(1, 2)
    with pytest.raises(TypeError):
        cached(b=1)
    assert calls == []
    assert env.cache.get_metrics().misses == 0


def test_the_wrapper_keeps_the_signature(env: StackEnv) -> None:
    def f(a: int, *, b: str = "x") -> list[int]:
        return [a]

    cached = env.cache.wrap("f", f)
    assert inspect.signature(cached) == inspect.signature(f)
    assert cached.__name__ == "f"
    assert cached.__wrapped__ is f  # type: ignore[attr-defined]


def test_key_resolver_still_receives_the_raw_call(env: StackEnv) -> None:
    seen: list[Any] = []

    class Svc:
        @env.cache.wrap("r", key_resolver=lambda self, n: (seen.append(self), f"n{n}")[1])
        def get(self, n: int) -> int:
            return n

    svc = Svc()
    assert svc.get(3) == 3
    assert seen == [svc]
    assert env.cache.has("r:n3")
