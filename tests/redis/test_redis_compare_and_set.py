"""RedisLayer.get_with_token / compare_and_set (optimistic updates, such as the Django backend's
counters), in both twins (the asyncio layer and the generated SyncRedisLayer), against a real
redis-server and the real three-master cluster."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.cluster

from _redis_server import RedisServer
from _tcp_proxy import TcpProxy
from layercache._codec import EntryCodec
from layercache._entry import Entry
from layercache._exceptions import CacheLayerError, UnserializableValueError
from layercache.redis import CasToken, RedisLayer, SyncRedisLayer

pytestmark = pytest.mark.redis

PREFIX = "cas:"
WORKERS = 8
INCREMENTS = 25


def entry(value: Any, tags: tuple[str, ...] = ()) -> Entry:
    now = time.time()
    return Entry(value, now, now + 60, None, None, tags)


async def call(result: Any) -> Any:
    """The result of a layer call of either twin (the asyncio one's is awaited)."""
    return await result if inspect.isawaitable(result) else result


class Twin:
    """Layers of one twin on one backend, and a raw sync client to look at the stored bytes."""

    def __init__(self, twin: str, kind: str, make_async: Any, make_sync: Any) -> None:
        self.twin = twin
        self.kind = kind
        self._make_async = make_async
        self._make_sync = make_sync
        self.raw = make_sync()
        self.clients: list[Any] = [self.raw]

    def layer(self, **options: Any) -> Any:
        client = self._make_async() if self.twin == "async" else self._make_sync()
        self.clients.append(client)
        options.setdefault("prefix", PREFIX)
        return RedisLayer(client=client, **options)

    def raw_key(self, key: str) -> bytes:
        return PREFIX.encode() + key.encode()

    async def close(self) -> None:
        for client in self.clients:
            await call(client.aclose() if hasattr(client, "aclose") else client.close())


@pytest.fixture(
    params=[
        ("async", "single"),
        ("sync", "single"),
        ("async", "cluster3"),
        ("sync", "cluster3"),
    ],
    ids=lambda p: "-".join(p),
)
async def twin(request: pytest.FixtureRequest) -> AsyncIterator[Twin]:
    kind: str
    name, kind = request.param
    if kind == "single":
        server: RedisServer = request.getfixturevalue("redis_clean")

        def make_async() -> Any:
            return redis.asyncio.Redis(host=server.host, port=server.port)

        def make_sync() -> Any:
            return redis.Redis(host=server.host, port=server.port, socket_timeout=5)

    else:
        cluster = request.getfixturevalue("redis_cluster3")
        cluster.flushall()
        make_async = cluster.async_client

        def make_sync() -> Any:
            return redis.RedisCluster(
                startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in cluster.startup_nodes],
                socket_timeout=5,
            )

    created = Twin(name, kind, make_async, make_sync)
    try:
        yield created
    finally:
        await created.close()


async def test_the_twin_is_the_one_asked_for(twin: Twin) -> None:
    layer = twin.layer()
    assert isinstance(layer, SyncRedisLayer) == (twin.twin == "sync")


async def test_an_absent_key_has_no_token(twin: Twin) -> None:
    layer = twin.layer()
    assert await call(layer.get_with_token("missing")) is None


async def test_a_token_replaces_the_value_and_keeps_the_expiry(twin: Twin) -> None:
    layer = twin.layer()
    await call(layer.set("n", entry(1, ("t",)), 60))
    got = await call(layer.get_with_token("n"))
    assert got is not None
    stored, token = got
    assert stored.value == 1
    assert stored.tags == ("t",)
    assert isinstance(token, CasToken)
    assert "observed" not in repr(token)  # opaque: no bytes in reprs and logs
    assert await call(layer.compare_and_set("n", token, entry(2, ("t",))))
    after = await call(layer.get("n"))
    assert after is not None
    assert after.value == 2
    assert after.tags == ("t",)
    remaining = twin.raw.pttl(twin.raw_key("n"))
    assert 0 < remaining <= 60_000


async def test_a_key_without_expiry_stays_without_one(twin: Twin) -> None:
    layer = twin.layer()
    await call(layer.set("n", entry(1), None))
    got = await call(layer.get_with_token("n"))
    assert got is not None
    assert await call(layer.compare_and_set("n", got[1], entry(2)))
    assert twin.raw.pttl(twin.raw_key("n")) == -1
    assert (await call(layer.get("n"))).value == 2


async def test_a_token_is_refused_after_another_write(twin: Twin) -> None:
    ours, other = twin.layer(), twin.layer()
    await call(ours.set("n", entry(1), 60))
    got = await call(ours.get_with_token("n"))
    assert got is not None
    await call(other.set("n", entry(5), 60))
    assert not await call(ours.compare_and_set("n", got[1], entry(2)))
    assert (await call(ours.get("n"))).value == 5


async def test_a_token_is_refused_after_a_delete_or_an_expiry(twin: Twin) -> None:
    layer = twin.layer()
    await call(layer.set("d", entry(1), 60))
    await call(layer.set("e", entry(1), 60))
    deleted = await call(layer.get_with_token("d"))
    expired = await call(layer.get_with_token("e"))
    assert deleted is not None
    assert expired is not None
    await call(layer.delete("d"))  # leaves a tombstone (leases on by default)
    twin.raw.delete(twin.raw_key("e"))  # as Redis does when the key expires
    assert not await call(layer.compare_and_set("d", deleted[1], entry(2)))
    assert not await call(layer.compare_and_set("e", expired[1], entry(2)))
    assert await call(layer.get_with_token("d")) is None  # a tombstone is no value
    assert twin.raw.get(twin.raw_key("e")) is None  # nothing was written


async def test_unreadable_bytes_have_no_token_and_are_reported(twin: Twin) -> None:
    layer = twin.layer()
    seen: list[dict[str, Any]] = []
    layer.set_error_handler(lambda exc, context: seen.append(context))
    twin.raw.set(twin.raw_key("junk"), b"not an entry")
    assert await call(layer.get_with_token("junk")) is None
    assert seen == [{"layer": "redis", "key": "junk", "operation": "get_with_token"}]


async def test_an_unserializable_value_is_the_callers_error(twin: Twin) -> None:
    layer = twin.layer()
    await call(layer.set("n", entry(1), 60))
    got = await call(layer.get_with_token("n"))
    assert got is not None
    with pytest.raises(UnserializableValueError, match="compare_and_set"):
        await call(layer.compare_and_set("n", got[1], entry(object())))
    assert (await call(layer.get("n"))).value == 1


async def test_a_replaced_value_refuses_an_older_fetchs_store(twin: Twin) -> None:
    layer = twin.layer()
    await call(layer.set("n", entry(1), 60))
    _, lease = await call(layer.get_leased("n"))
    got = await call(layer.get_with_token("n"))
    assert got is not None
    assert await call(layer.compare_and_set("n", got[1], entry(2)))
    assert not await call(layer.set_leased("n", entry(100), 60, lease, ()))
    assert (await call(layer.get("n"))).value == 2


async def test_the_script_is_loaded_again_after_a_flush(twin: Twin) -> None:
    layer = twin.layer()
    await call(layer.set("n", entry(1), 60))
    first = await call(layer.get_with_token("n"))
    assert await call(layer.compare_and_set("n", first[1], entry(2)))
    twin.raw.script_flush()
    second = await call(layer.get_with_token("n"))
    assert await call(layer.compare_and_set("n", second[1], entry(3)))
    assert (await call(layer.get("n"))).value == 3


async def test_concurrent_increments_are_never_lost(twin: Twin) -> None:
    """WORKERS callers (tasks or threads), each with its own layer, add 1 INCREMENTS times."""
    first = twin.layer()
    await call(first.set("n", entry(0), 60))
    layers = [first, *(twin.layer() for _ in range(WORKERS - 1))]
    if twin.twin == "async":

        async def add(layer: RedisLayer) -> int:
            attempts = 0
            for _ in range(INCREMENTS):
                while True:
                    attempts += 1
                    got = await layer.get_with_token("n")
                    assert got is not None
                    if await layer.compare_and_set("n", got[1], entry(got[0].value + 1)):
                        break
                    await asyncio.sleep(0)
            return attempts

        attempts = await asyncio.wait_for(asyncio.gather(*(add(x) for x in layers)), 30)
    else:
        start = threading.Barrier(WORKERS)

        def add_sync(layer: SyncRedisLayer) -> int:
            start.wait(10)
            attempts = 0
            for _ in range(INCREMENTS):
                while True:
                    attempts += 1
                    got = layer.get_with_token("n")
                    assert got is not None
                    if layer.compare_and_set("n", got[1], entry(got[0].value + 1)):
                        break
            return attempts

        with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
            attempts = list(pool.map(add_sync, layers, timeout=30))
    assert (await call(first.get("n"))).value == WORKERS * INCREMENTS
    assert sum(attempts) >= WORKERS * INCREMENTS


@pytest.mark.parametrize("name", ["async", "sync"])
async def test_driver_errors_are_layer_errors(name: str, redis_proxy: TcpProxy) -> None:
    if name == "async":
        layer: Any = RedisLayer(url=redis_proxy.url, prefix=PREFIX, socket_timeout=2)
    else:
        layer = RedisLayer(client=redis.Redis.from_url(redis_proxy.url, socket_timeout=2))
    try:
        await call(layer.set("n", entry(1), 60))
        got = await call(layer.get_with_token("n"))
        assert got is not None
        redis_proxy.cut("refuse")
        with pytest.raises(CacheLayerError) as read:
            await call(layer.get_with_token("n"))
        with pytest.raises(CacheLayerError) as write:
            await call(layer.compare_and_set("n", got[1], entry(2)))
        assert read.value.operation == "get_with_token"
        assert write.value.operation == "compare_and_set"
        # The driver's error is the cause: callers (the Django backend's graceful degradation)
        # tell an unreachable Redis from other failures by it.
        assert read.value.__cause__ is not None
        assert write.value.__cause__ is not None
    finally:
        redis_proxy.restore()
        if name == "async":
            await layer.aclose()
        else:
            layer.client.close()


def test_the_stored_bytes_are_the_layers_codec(redis_clean: RedisServer) -> None:
    """What compare_and_set stores reads back with the layer's own codec, as set's bytes do."""
    client = redis.Redis(host=redis_clean.host, port=redis_clean.port)
    try:
        layer: SyncRedisLayer = RedisLayer(client=client, prefix=PREFIX)
        layer.set("n", entry(1), 60)
        got = layer.get_with_token("n")
        assert got is not None
        assert layer.compare_and_set("n", got[1], entry(7))
        assert EntryCodec().decode(client.get(PREFIX.encode() + b"n")).value == 7
    finally:
        client.close()
