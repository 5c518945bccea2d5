"""LayerCacheBackend against the behaviours Django's own cache test suite checks.

The backend is built with an injected clock, so expiry is tested by moving time, not sleeping.
"""

from __future__ import annotations

import datetime
import decimal
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import CacheKeyWarning, caches
from django.core.cache.backends.base import InvalidCacheBackendError
from django_support import FakeClock

from layercache.integrations.django import LayerCacheBackend


def make(clock: FakeClock, **params: Any) -> LayerCacheBackend:
    options = {"CLOCK": clock, **params.pop("OPTIONS", {})}
    return LayerCacheBackend("", {"TIMEOUT": 300, "OPTIONS": options, **params})


@pytest.fixture
def cache(clock: FakeClock) -> Iterator[LayerCacheBackend]:
    backend = make(clock)
    yield backend
    backend.clear()


def test_configured_from_settings() -> None:
    backend = caches["default"]
    assert isinstance(backend, LayerCacheBackend)
    backend.set("from-settings", 1)
    assert backend.get("from-settings") == 1
    assert backend.make_key("k") == "example:1:k"


def test_unknown_option_is_refused(clock: FakeClock) -> None:
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="NOPE"):
        make(clock, OPTIONS={"NOPE": 1})


def test_simple_set_get(cache: LayerCacheBackend) -> None:
    cache.set("key", "value")
    assert cache.get("key") == "value"
    cache.set("key", "other")
    assert cache.get("key") == "other"


def test_default_used_only_on_miss(cache: LayerCacheBackend) -> None:
    assert cache.get("does_not_exist") is None
    assert cache.get("does_not_exist", "bang!") == "bang!"
    cache.set("none", None)
    assert cache.get("none", "default") is None  # a cached None is a hit
    assert cache.has_key("none")
    assert cache.get_many(["none"]) == {"none": None}


def test_add(cache: LayerCacheBackend) -> None:
    assert cache.add("addkey1", "value") is True
    assert cache.add("addkey1", "newvalue") is False
    assert cache.get("addkey1") == "value"


def test_delete(cache: LayerCacheBackend) -> None:
    cache.set_many({"key1": "spam", "key2": "eggs"})
    assert cache.delete("key1") is True
    assert cache.get("key1") is None
    assert cache.get("key2") == "eggs"
    assert cache.delete("key1") is False


def test_has_key_and_in(cache: LayerCacheBackend) -> None:
    cache.set("hello1", "goodbye1")
    assert cache.has_key("hello1")
    assert "hello1" in cache
    assert not cache.has_key("goodbye1")
    assert "goodbye1" not in cache


def test_incr_decr(cache: LayerCacheBackend) -> None:
    cache.set("answer", 41)
    assert cache.incr("answer") == 42
    assert cache.get("answer") == 42
    assert cache.incr("answer", 10) == 52
    assert cache.incr("answer", -10) == 42
    assert cache.decr("answer") == 41
    assert cache.decr("answer", 10) == 31
    assert cache.decr("answer", -10) == 41
    with pytest.raises(ValueError, match="not found"):
        cache.incr("does_not_exist")
    with pytest.raises(ValueError, match="not found"):
        cache.decr("does_not_exist")
    cache.set("null", None)
    with pytest.raises(TypeError):
        cache.incr("null")


def test_incr_keeps_expiry(cache: LayerCacheBackend, clock: FakeClock) -> None:
    cache.set("counter", 1, timeout=10)
    clock.advance(6)
    assert cache.incr("counter") == 2
    clock.advance(5)
    assert cache.get("counter") is None


def test_incr_is_atomic_across_threads(cache: LayerCacheBackend) -> None:
    import threading

    cache.set("hits", 0)
    threads = [
        threading.Thread(target=lambda: [cache.incr("hits") for _ in range(200)]) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cache.get("hits") == 1600


def test_data_types(cache: LayerCacheBackend) -> None:
    stuff = {
        "string": "this is a string",
        "int": 42,
        "bool": True,
        "list": [1, 2, 3, 4],
        "tuple": (1, 2, 3, 4),
        "dict": {"A": 1, "B": 2},
        "set": {1, 2},
        "bytes": b"\x00\xff",
        "decimal": decimal.Decimal("1.10"),
        "date": datetime.date(2026, 1, 2),
        "obj": FakeClock,
    }
    cache.set("stuff", stuff)
    assert cache.get("stuff") == stuff
    assert cache.get("stuff") is not None


def test_expiration(cache: LayerCacheBackend, clock: FakeClock) -> None:
    cache.set("expire1", "very quickly", 1)
    cache.set("expire2", "very quickly", 1)
    cache.set("expire3", "very quickly", 1)
    clock.advance(2)
    assert cache.get("expire1") is None
    assert cache.add("expire2", "newvalue") is True
    assert cache.get("expire2") == "newvalue"
    assert not cache.has_key("expire3")


def test_touch(cache: LayerCacheBackend, clock: FakeClock) -> None:
    cache.set("expire1", "very quickly", timeout=1)
    assert cache.touch("expire1", timeout=4) is True
    clock.advance(2)
    assert cache.has_key("expire1")
    clock.advance(3)
    assert not cache.has_key("expire1")
    cache.set("expire2", "very quickly", timeout=1)
    assert cache.touch("expire2", timeout=None) is True
    clock.advance(10_000)
    assert cache.has_key("expire2")
    assert cache.touch("nonexistent") is False


def test_forever_timeout(cache: LayerCacheBackend, clock: FakeClock) -> None:
    cache.set("key1", "eggs", None)
    assert cache.add("key2", "ham", None) is True
    cache.set_many({"key3": "sausage", "key4": "lobster bisque"}, None)
    clock.advance(10 * 365 * 86400)
    assert cache.get_many(["key1", "key2", "key3", "key4"]) == {
        "key1": "eggs",
        "key2": "ham",
        "key3": "sausage",
        "key4": "lobster bisque",
    }
    assert cache.add("key1", "newvalue", None) is False
    assert cache.get("key1") == "eggs"


def test_default_timeout_none_means_forever(clock: FakeClock) -> None:
    backend = make(clock, TIMEOUT=None)
    backend.set("k", 1)
    clock.advance(10 * 365 * 86400)
    assert backend.get("k") == 1


def test_default_timeout_applies(cache: LayerCacheBackend, clock: FakeClock) -> None:
    cache.set("k", 1)  # TIMEOUT 300
    clock.advance(299)
    assert cache.get("k") == 1
    clock.advance(2)
    assert cache.get("k") is None


@pytest.mark.parametrize("timeout", [0, -1])
def test_zero_or_negative_timeout(cache: LayerCacheBackend, timeout: int) -> None:
    cache.set("key1", "old")
    cache.set("key1", "eggs", timeout)
    assert cache.get("key1") is None
    cache.add("key2", "ham", timeout)
    assert cache.get("key2") is None
    cache.set_many({"key3": "sausage", "key4": "lobster bisque"}, timeout)
    assert cache.get("key3") is None
    assert cache.get("key4") is None
    cache.set("key5", "belgian fries", timeout=1)
    assert cache.touch("key5", timeout=timeout) is True
    assert cache.get("key5") is None


def test_memory_ttl_caps_the_layer(clock: FakeClock) -> None:
    backend = make(clock, OPTIONS={"MEMORY_TTL": 5})
    backend.set("k", 1, timeout=100)
    backend.set("forever", 1, timeout=None)
    clock.advance(6)
    assert backend.get("k") is None  # memory is the only layer here
    assert backend.get("forever") is None


def test_get_set_delete_many(cache: LayerCacheBackend) -> None:
    assert cache.set_many({"a": "a", "b": "b", "c": "c", "d": "d"}) == []
    assert cache.get_many(["a", "c", "d"]) == {"a": "a", "c": "c", "d": "d"}
    assert cache.get_many(["a", "b", "e"]) == {"a": "a", "b": "b"}
    assert cache.get_many(iter(["a", "b", "e"])) == {"a": "a", "b": "b"}
    assert cache.get_many([]) == {}
    cache.delete_many(["a", "b"])
    assert cache.get_many(["a", "b", "c"]) == {"c": "c"}
    cache.delete_many([])


def test_set_many_expiration(cache: LayerCacheBackend, clock: FakeClock) -> None:
    cache.set_many({"key1": "spam", "key2": "eggs"}, 1)
    clock.advance(2)
    assert cache.get("key1") is None
    assert cache.get("key2") is None


def test_clear(cache: LayerCacheBackend) -> None:
    cache.set_many({"key1": "spam", "key2": "eggs"})
    cache.clear()
    assert cache.get("key1") is None
    assert cache.get("key2") is None


def test_versioning(cache: LayerCacheBackend) -> None:
    cache.set("answer1", 42)
    assert cache.get("answer1") == 42
    assert cache.get("answer1", version=1) == 42
    assert cache.get("answer1", version=2) is None
    cache.set("answer2", 42, version=2)
    assert cache.get("answer2") is None
    assert cache.get("answer2", version=2) == 42
    assert cache.has_key("answer2", version=2)
    assert not cache.has_key("answer2")
    cache.delete("answer2", version=2)
    assert cache.get("answer2", version=2) is None


def test_cache_versioning_setting(clock: FakeClock) -> None:
    v1 = make(clock, VERSION=1)
    v2 = make(clock, VERSION=2)
    # Separate backends do not share a memory layer; within one, VERSION sets the default.
    v2.set("k", "two")
    assert v2.get("k") == "two"
    assert v2.get("k", version=1) is None
    assert v1.get("k") is None


def test_incr_decr_version(cache: LayerCacheBackend) -> None:
    cache.set("answer", 42, version=2)
    assert cache.incr_version("answer", version=2) == 3
    assert cache.get("answer", version=2) is None
    assert cache.get("answer", version=3) == 42
    assert cache.decr_version("answer", version=3) == 2
    assert cache.get("answer", version=2) == 42
    with pytest.raises(ValueError, match="not found"):
        cache.incr_version("does_not_exist")
    cache.set("nothing", None)
    assert cache.incr_version("nothing") == 2
    assert cache.get("nothing", "default", version=2) is None


def custom_key_func(key: str, key_prefix: str, version: int) -> str:
    return "CUSTOM-" + "-".join([key_prefix, str(version), key])


def test_key_prefix_and_key_func(clock: FakeClock) -> None:
    prefixed = make(clock, KEY_PREFIX="cacheprefix")
    assert prefixed.make_key("k") == "cacheprefix:1:k"
    custom = make(clock, KEY_FUNCTION=custom_key_func)
    assert custom.make_key("k") == "CUSTOM--1-k"
    dotted = make(clock, KEY_FUNCTION=f"{__name__}.custom_key_func", KEY_PREFIX="p")
    dotted.set("answer", 42)
    assert dotted.get("answer") == 42
    assert dotted.make_key("answer") == "CUSTOM-p-1-answer"
    # Two prefixes on one backend's layers never see each other's keys.
    assert prefixed.get("answer") is None


def test_key_prefix_separates_shared_layers(clock: FakeClock) -> None:
    backend = make(clock)
    backend.set("k", "v")
    backend.key_prefix = "other"
    assert backend.get("k") is None


_OPERATIONS: list[tuple[str, list[Any]]] = [
    ("add", ["KEY", 1]),
    ("get", ["KEY"]),
    ("set", ["KEY", 1]),
    ("incr", ["KEY"]),
    ("decr", ["KEY"]),
    ("touch", ["KEY"]),
    ("delete", ["KEY"]),
    ("get_many", [["KEY", "b"]]),
    ("set_many", [{"KEY": 1, "b": 2}]),
    ("delete_many", [["KEY", "b"]]),
]


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("key with spaces and 清", "Cache key contains characters that will cause errors"),
        ("key\x00with\ncontrol", "Cache key contains characters that will cause errors"),
        ("a" * 250 + "清", "(longer than 250)"),
        ("b" * 2000, "(longer than 250)"),
    ],
)
def test_key_warnings_and_odd_keys_still_work(
    cache: LayerCacheBackend, key: str, message: str
) -> None:
    cache.key_func = lambda k, *args: k
    for operation, template in _OPERATIONS:
        args = [
            key
            if a == "KEY"
            else [key if x == "KEY" else x for x in a]
            if isinstance(a, list)
            else {key if k == "KEY" else k: v for k, v in a.items()}
            if isinstance(a, dict)
            else a
            for a in template
        ]
        with pytest.warns(CacheKeyWarning, match=message.replace("(", r"\(").replace(")", r"\)")):
            getattr(cache, operation)(*args)
    # Django only warns about such keys: the backend must still store and find them.
    with pytest.warns(CacheKeyWarning):
        cache.set(key, "stored")
    with pytest.warns(CacheKeyWarning):
        assert cache.get(key) == "stored"


def test_get_or_set(cache: LayerCacheBackend) -> None:
    assert cache.get("projector") is None
    assert cache.get_or_set("projector", 42) == 42
    assert cache.get("projector") == 42
    assert cache.get_or_set("null", None) is None
    assert cache.get_or_set("null", "default") is None  # the cached None is kept
    calls: list[int] = []

    def compute() -> str:
        calls.append(1)
        return "computed"

    assert cache.get_or_set("mykey", compute) == "computed"
    assert cache.get_or_set("mykey", compute) == "computed"
    assert calls == [1]
    assert cache.get_or_set("version", "v2", version=2) == "v2"
    assert cache.get("version") is None


def test_tags_extra(cache: LayerCacheBackend) -> None:
    cache.set("p1", 1, tags=["products"])
    cache.set_many({"p2": 2, "p3": 3}, tags=["products"])
    cache.set("u1", "user")
    assert cache.invalidate_by_tag("products") == 3
    assert cache.get_many(["p1", "p2", "p3", "u1"]) == {"u1": "user"}
    cache.set("t", 1, tags=["a"])
    cache.touch("t", 100)  # touch keeps the tags
    cache.incr("t")  # so does incr
    assert cache.invalidate_by_tag("a") == 1
    assert cache.get("t") is None


def test_close_keeps_cache_usable(cache: LayerCacheBackend) -> None:
    cache.set("k", 1)
    cache.close()
    assert cache.get("k") == 1


def test_unknown_backend_error_is_djangos() -> None:
    assert issubclass(InvalidCacheBackendError, Exception)


# ---------------------------------------------------------------------------- async


async def test_async_variants(cache: LayerCacheBackend, clock: FakeClock) -> None:
    await cache.aset("akey", "value")
    assert await cache.aget("akey") == "value"
    assert cache.get("akey") == "value"  # the same layers serve both APIs
    cache.set("skey", None)
    assert await cache.aget("skey", "default") is None
    assert await cache.aget("missing", "default") == "default"
    assert await cache.aadd("akey", "new") is False
    assert await cache.aadd("akey2", "new") is True
    assert await cache.ahas_key("akey2")
    assert await cache.adelete("akey2") is True
    assert await cache.adelete("akey2") is False
    await cache.aset("n", 1)
    assert await cache.aincr("n", 4) == 5
    assert await cache.adecr("n") == 4
    with pytest.raises(ValueError, match="not found"):
        await cache.aincr("missing")
    assert await cache.aset_many({"a": 1, "b": 2}) == []
    assert await cache.aget_many(["a", "b", "c"]) == {"a": 1, "b": 2}
    await cache.adelete_many(["a"])
    assert await cache.aget_many(["a", "b"]) == {"b": 2}
    assert await cache.atouch("b", 1) is True
    assert await cache.atouch("nope") is False
    clock.advance(2)
    assert await cache.aget("b") is None
    await cache.aset("gone", 1, 0)
    assert await cache.aget("gone") is None
    assert await cache.aget_or_set("computed", lambda: 7) == 7
    assert await cache.aget_or_set("computed", lambda: 8) == 7
    await cache.aset("v", 1, version=2)
    assert await cache.aincr_version("v", version=2) == 3
    assert await cache.aget("v", version=3) == 1
    await cache.aclear()
    assert cache.get("akey") is None
    await cache.aclose()


async def test_async_tags_shared_with_sync(cache: LayerCacheBackend) -> None:
    await cache.aset("p", 1, tags=["t"])
    cache.set("q", 2, tags=["t"])
    assert cache.invalidate_by_tag("t") == 2
    assert await cache.aget("p") is None
    await cache.aset("r", 3, tags=["u"])
    assert await cache.ainvalidate_by_tag("u") == 1
    assert cache.get("r") is None


async def test_async_does_not_hop_threads(cache: LayerCacheBackend) -> None:
    import threading

    seen: list[threading.Thread] = []
    cache._engine.async_side().stack.on(
        "set", lambda payload: seen.append(threading.current_thread())
    )
    await cache.aset("k", 1)
    assert seen == [threading.current_thread()]


async def test_async_key_warning(cache: LayerCacheBackend) -> None:
    with pytest.warns(CacheKeyWarning):
        await cache.aset("a" * 300, 1)
    with pytest.warns(CacheKeyWarning):
        assert await cache.aget("a" * 300) == 1
