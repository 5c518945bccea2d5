"""wrap() keeps the wrapped function's signature (ParamSpec) and get(type=) its type.

Checked by ``test_wrap_typing.py`` under ``mypy --strict``, which also compares each
``reveal_type`` note with the type written in the "revealed" comment below it; never run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from typing_extensions import assert_type, reveal_type

from layercache import CacheNamespace, CacheStack, SyncCacheStack


@dataclass
class User:
    user_id: int


async def load_user(user_id: int, *, verbose: bool = False) -> User:
    return User(user_id)


def load_users(limit: int) -> list[User]:
    return [User(i) for i in range(limit)]


async def on_the_async_stack(cache: CacheStack, ns: CacheNamespace) -> None:
    # Bare, sync and async functions: Callable[P, Awaitable[R]], R the awaited type.
    reveal_type(cache.wrap("user", load_user))
    # revealed: def (user_id: int, *, verbose: bool =) -> Awaitable[User]
    reveal_type(cache.wrap("users", load_users))
    # revealed: def (limit: int) -> Awaitable[list[User]]
    # As a decorator factory.
    reveal_type(cache.wrap("user", ttl=30)(load_user))
    # revealed: def (user_id: int, *, verbose: bool =) -> Awaitable[User]
    reveal_type(cache.wrap("users")(load_users))
    # revealed: def (limit: int) -> Awaitable[list[User]]
    reveal_type(ns.wrap("user")(load_user))
    # revealed: def (user_id: int, *, verbose: bool =) -> Awaitable[User]
    reveal_type(ns.wrap("users", load_users))
    # revealed: def (limit: int) -> Awaitable[list[User]]

    @cache.wrap("profile", ttl=300)
    async def profile(user_id: int) -> dict[str, int]:
        return {"id": user_id}

    assert_type(await profile(1), dict[str, int])
    assert_type(await cache.wrap("user", load_user)(1, verbose=True), User)

    class Service:
        @cache.wrap("svc")
        async def find(self, user_id: int) -> User:
            return User(user_id)

    assert_type(await Service().find(1), User)

    # get / get_or_raise with type=: the value's type.
    assert_type(await cache.get("user:1", type=User), User | None)
    assert_type(await cache.get_or_raise("user:1", type=User), User)
    assert_type(await cache.get("users", type=list[User]), list[User] | None)
    assert_type(await ns.get("user:1", type=User), User | None)
    assert_type(await ns.get_or_raise("user:1", type=User), User)
    untyped: Any = await cache.get("user:1")
    del untyped


def on_the_sync_stack(cache: SyncCacheStack) -> None:
    reveal_type(cache.wrap("users", load_users))
    # revealed: def (limit: int) -> list[User]
    reveal_type(cache.wrap("users", ttl=5)(load_users))
    # revealed: def (limit: int) -> list[User]
    reveal_type(cache.namespace("n").wrap("users")(load_users))
    # revealed: def (limit: int) -> list[User]

    @cache.wrap("sq")
    def square(n: int) -> int:
        return n * n

    assert_type(square(3), int)
    assert_type(cache.get("user:1", type=User), User | None)
    assert_type(cache.get_or_raise("user:1", type=User), User)
