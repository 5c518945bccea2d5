"""``LayerCacheStore`` against Litestar's ``Store`` contract (the cases Litestar runs on its own
stores), on a memory-only stack, memory + a real Redis, and Redis alone."""

from __future__ import annotations

import math
import string
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest

pytest.importorskip("litestar")

from litestar.exceptions import ImproperlyConfiguredException
from litestar.stores.base import NamespacedStore, Store

from layercache import CacheStack, MemoryLayer
from layercache.integrations.litestar import LayerCacheStore
from layercache.redis import RedisLayer


class FakeClock:
    """The stack's wall clock, moved by hand (Litestar's own tests freeze the time)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def shift(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


StackFactory = Callable[[], CacheStack]


@pytest.fixture(params=["memory", "memory+redis", "redis"])
async def make_stack(
    request: pytest.FixtureRequest, clock: FakeClock
) -> AsyncIterator[StackFactory]:
    """Builds stacks of one kind (every one sharing the test's Redis); closes them after."""
    kind = request.param
    client = None
    if "redis" in kind:
        import redis.asyncio

        server = request.getfixturevalue("redis_clean")
        client = redis.asyncio.Redis(host=server.host, port=server.port)
    built: list[CacheStack] = []

    def make() -> CacheStack:
        layers: list[Any] = []
        if "memory" in kind:
            layers.append(MemoryLayer(ttl=None))
        if client is not None:
            layers.append(RedisLayer(client=client, ttl=None, prefix="store-test:"))
        stack = CacheStack(layers, clock=clock)
        built.append(stack)
        return stack

    yield make
    for stack in built:
        await stack.aclose()
    if client is not None:
        await client.aclose()


@pytest.fixture
def cache(make_stack: StackFactory) -> CacheStack:
    return make_stack()


@pytest.fixture
def store(cache: CacheStack) -> LayerCacheStore:
    return LayerCacheStore(cache)


def test_is_a_litestar_namespaced_store(store: LayerCacheStore) -> None:
    assert isinstance(store, Store)
    assert isinstance(store, NamespacedStore)
    assert store.namespace == "LITESTAR"


async def test_get(store: LayerCacheStore) -> None:
    assert await store.get("foo") is None
    await store.set("key", b"value", 60)
    assert await store.get("key") == b"value"


async def test_set_bytes_and_str(store: LayerCacheStore) -> None:
    await store.set("key_1", b"value_1")
    await store.set("key_2", "välue_2")
    assert await store.get("key_1") == b"value_1"
    assert await store.get("key_2") == "välue_2".encode()


@pytest.mark.parametrize("key", [*string.punctuation, "foo\xc3\xbc", "..", "", "ключ 🔑", " "])
async def test_set_special_chars_key(store: LayerCacheStore, key: str) -> None:
    await store.set(key, b"value")
    assert await store.get(key) == b"value"
    assert await store.exists(key)


async def test_keys_the_stack_refuses_are_stored_under_a_digest(store: LayerCacheStore) -> None:
    # Control characters and over-long keys (a request path may hold %0A) never fail a request.
    keys = ["foo\nbar", "foo\rbar", "foo\x00bar", "a" * 2000, "a" * 2000 + "b", "\ud800"]
    for index, key in enumerate(keys):
        await store.set(key, str(index))
    for index, key in enumerate(keys):
        assert await store.get(key) == str(index).encode()
    await store.delete("foo\nbar")
    assert await store.get("foo\nbar") is None
    assert await store.get("foo\rbar") == b"1"
    await store.delete_all()
    assert [await store.get(key) for key in keys] == [None] * len(keys)


async def test_bytes_round_trip_exactly(make_stack: StackFactory) -> None:
    payloads = [
        b"",
        bytes(range(256)),
        b"\xff\xfe not utf-8 \xc3",
        b'{"looks": "like json"}',
        b"\x00" * 10,
        bytes(range(256)) * 4096,  # 1 MiB
    ]
    writer = LayerCacheStore(make_stack())
    for index, payload in enumerate(payloads):
        await writer.set(f"p{index}", payload)
    # A second stack: its memory layer is empty, so a shared layer answers when there is one.
    reader = LayerCacheStore(make_stack())
    for store in (writer, reader):
        for index, payload in enumerate(payloads):
            got = await store.get(f"p{index}")
            if got is None:  # memory-only stacks share nothing
                assert store is reader
                assert len(reader.cache.layers) == 1
                continue
            assert type(got) is bytes
            assert got == payload


@pytest.mark.parametrize("expires_in", [1, 0.5, timedelta(seconds=1)])
async def test_expires(store: LayerCacheStore, clock: FakeClock, expires_in: Any) -> None:
    await store.set("foo", b"bar", expires_in=expires_in)
    assert await store.get("foo") == b"bar"
    clock.shift(2)
    assert await store.get("foo") is None
    assert await store.exists("foo") is False
    assert await store.expires_in("foo") is None


@pytest.mark.parametrize("renew_for", [10, timedelta(seconds=10)])
async def test_get_and_renew(store: LayerCacheStore, clock: FakeClock, renew_for: Any) -> None:
    await store.set("foo", b"bar", expires_in=1)
    await store.set("other", b"baz", expires_in=1)
    assert await store.get("foo", renew_for=renew_for) == b"bar"
    expiration = await store.expires_in("foo")
    assert expiration is not None
    assert 9 <= expiration <= 10
    clock.shift(2)
    assert await store.get("foo") == b"bar"
    assert await store.get("other") is None  # not renewed: expired


async def test_renew_leaves_a_value_without_expiry_alone(store: LayerCacheStore) -> None:
    await store.set("foo", b"bar")
    assert await store.get("foo", renew_for=10) == b"bar"
    assert await store.expires_in("foo") == -1


async def test_delete(store: LayerCacheStore) -> None:
    await store.set("key", b"value", 60)
    await store.delete("key")
    assert await store.get("key") is None


async def test_delete_empty(store: LayerCacheStore) -> None:
    await store.delete("foo")


async def test_exists(store: LayerCacheStore) -> None:
    assert await store.exists("foo") is False
    await store.set("foo", b"bar")
    assert await store.exists("foo") is True


async def test_expires_in_not_set(store: LayerCacheStore) -> None:
    assert await store.expires_in("foo") is None
    await store.set("foo", b"bar")
    assert await store.expires_in("foo") == -1


async def test_expires_in(store: LayerCacheStore, clock: FakeClock) -> None:
    assert await store.expires_in("foo") is None
    await store.set("foo", "bar")
    assert await store.expires_in("foo") == -1
    await store.set("foo", "bar", expires_in=10)
    expiration = await store.expires_in("foo")
    assert expiration is not None
    assert math.ceil(expiration / 10) == 1
    clock.shift(3.5)
    assert await store.expires_in("foo") == 7  # rounded up: 6.5 s left
    clock.shift(7)
    assert await store.expires_in("foo") is None


async def test_delete_all(store: LayerCacheStore) -> None:
    keys = [f"key-{i}" for i in range(10)]
    for i, key in enumerate(keys):
        await store.set(key, b"value", expires_in=10 if i % 2 else None)
    await store.delete_all()
    for key in keys:
        assert await store.get(key) is None


async def test_delete_all_leaves_the_rest_of_the_stack(
    cache: CacheStack, store: LayerCacheStore
) -> None:
    await cache.set("LITESTAR", "not the store's")
    await cache.set("LITESTAR2::key", "a sibling's")
    await cache.set("other", "someone else's")
    await store.set("key", b"value")
    await store.delete_all()
    assert await store.get("key") is None
    assert await cache.get("LITESTAR") == "not the store's"
    assert await cache.get("LITESTAR2::key") == "a sibling's"
    assert await cache.get("other") == "someone else's"


async def test_no_namespace(cache: CacheStack) -> None:
    store = LayerCacheStore(cache, namespace=None)
    assert store.namespace is None
    await store.set("foo", b"bar")
    # Keys are used as given: other code reads them from the stack.
    assert await cache.get("foo") == b"bar"
    with pytest.raises(ImproperlyConfiguredException):
        await store.delete_all()
    child = store.with_namespace("TEST")
    assert child.namespace == "TEST"
    await child.set("foo", b"child")
    assert await store.get("foo") == b"bar"
    await child.delete_all()
    assert await store.get("foo") == b"bar"
    assert await child.get("foo") is None


def test_with_namespace(store: LayerCacheStore) -> None:
    namespaced_test = store.with_namespace("TEST")
    namespaced_test_foo = namespaced_test.with_namespace("FOO")
    assert isinstance(namespaced_test, LayerCacheStore)
    assert namespaced_test.namespace == "LITESTAR_TEST"
    assert namespaced_test_foo.namespace == "LITESTAR_TEST_FOO"
    assert namespaced_test.cache is store.cache


@pytest.mark.parametrize("namespace", ["", "a\nb", 3])
def test_bad_namespace(store: LayerCacheStore, cache: CacheStack, namespace: Any) -> None:
    with pytest.raises(ValueError, match="namespace"):
        store.with_namespace(namespace)
    with pytest.raises(ValueError, match="namespace"):
        LayerCacheStore(cache, namespace=namespace)


async def test_namespaced_store_get_set(store: LayerCacheStore) -> None:
    foo_namespaced = store.with_namespace("foo")
    await store.set("bar", b"litestar namespace")
    await foo_namespaced.set("bar", b"foo namespace")
    assert await store.get("bar") == b"litestar namespace"
    assert await foo_namespaced.get("bar") == b"foo namespace"


async def test_namespaced_store_does_not_propagate_up(store: LayerCacheStore) -> None:
    foo_namespace = store.with_namespace("FOO")
    await foo_namespace.set("foo", b"foo-value")
    await store.set("bar", b"bar-value")
    await foo_namespace.delete_all()
    assert await foo_namespace.get("foo") is None
    assert await store.get("bar") == b"bar-value"


async def test_namespaced_store_delete_all_propagates_down(store: LayerCacheStore) -> None:
    foo_namespace = store.with_namespace("FOO")
    deeper = foo_namespace.with_namespace("BAR")
    await foo_namespace.set("foo", b"foo-value")
    await deeper.set("foo", b"deeper-value")
    await store.set("bar", b"bar-value")
    await store.delete_all()
    assert await foo_namespace.get("foo") is None
    assert await deeper.get("foo") is None
    assert await store.get("bar") is None


async def test_namespaces_never_share_keys(store: LayerCacheStore) -> None:
    # Keys and namespace names that could spell one another's stack keys stay apart.
    stores = {
        "root": store,
        "FOO": store.with_namespace("FOO"),
        "FOOBAR": store.with_namespace("FOOBAR"),
        "FOO:BAR": store.with_namespace("FOO:BAR"),
        "FOO/BAR": store.with_namespace("FOO").with_namespace("BAR"),
        "#": store.with_namespace("#"),
    }
    keys = ["x", "FOO::x", ":x", "BAR::x", "#x"]
    for name, each in stores.items():
        for key in keys:
            await each.set(key, f"{name}|{key}")
    for name, each in stores.items():
        for key in keys:
            assert await each.get(key) == f"{name}|{key}".encode()
    await stores["FOO"].delete_all()
    for name, each in stores.items():
        gone = name in ("FOO", "FOO/BAR")
        for key in keys:
            assert (await each.get(key) is None) is gone, (name, key)


async def test_expires_in_none_uses_the_layer_ttl(redis_client: Any) -> None:
    async with CacheStack(
        [MemoryLayer(ttl=30), RedisLayer(client=redis_client, ttl=30, prefix="store-test:")]
    ) as cache:
        store = LayerCacheStore(cache)
        await store.set("foo", b"bar")
        expiration = await store.expires_in("foo")
        assert expiration is not None
        assert 29 <= expiration <= 30
        assert 0 < await redis_client.ttl("store-test:LITESTAR::foo") <= 30
        await store.set("foo", b"bar", expires_in=timedelta(minutes=2))
        assert 60 < await redis_client.ttl("store-test:LITESTAR::foo") <= 120


async def test_expiry_is_exact_despite_stack_defaults(clock: FakeClock) -> None:
    # A stack serving stale values (and jittering TTLs) by default: a store's expiry stays exact.
    async with CacheStack(
        [MemoryLayer(ttl=None)],
        clock=clock,
        stale_while_revalidate=60,
        stale_if_error=60,
        ttl_jitter=5,
    ) as cache:
        store = LayerCacheStore(cache)
        await store.set("foo", b"bar", expires_in=10)
        assert await store.expires_in("foo") == 10
        clock.shift(10.5)
        assert await store.get("foo") is None
        assert await store.exists("foo") is False


async def test_bad_arguments(store: LayerCacheStore) -> None:
    with pytest.raises(ValueError, match="expires_in"):
        await store.set("foo", b"bar", expires_in=-1)
    with pytest.raises(ValueError, match="expires_in"):
        await store.set("foo", b"bar", expires_in=timedelta(seconds=-1))
    with pytest.raises(TypeError):
        await store.set("foo", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="renew_for"):
        await store.get("foo", renew_for=-5)
    assert await store.get("foo") is None


async def test_a_value_that_is_not_bytes_reads_as_absent(
    cache: CacheStack, store: LayerCacheStore
) -> None:
    await cache.set("LITESTAR::foo", {"not": "bytes"})
    assert await store.get("foo") is None


async def test_usable_as_async_context_manager(store: LayerCacheStore) -> None:
    # Litestar enters every registered store as a lifespan manager.
    async with store:
        await store.set("foo", b"bar")
    assert await store.get("foo") == b"bar"
