"""Redis Sentinel without a failover: ``redis+sentinel://`` URLs and ``Sentinel.master_for``
clients drive the layer, the bus, the single-flight coordinator and the tag index, on both
stacks, against a real set (one master, one replica, three sentinels; tests/topologies).

The failover itself: test_sentinel_failover.py.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from _topology_servers import SERVICE, SentinelSet

from layercache import (
    CacheStack,
    MemoryLayer,
    RedisInvalidationBus,
    RedisLayer,
    RedisSingleFlightCoordinator,
    RedisTagIndex,
    SyncCacheStack,
)
from layercache.redis import (
    SyncRedisInvalidationBus,
    SyncRedisSingleFlightCoordinator,
    SyncRedisTagIndex,
)
from layercache.redis._clients import is_sentinel_url, parse_sentinel_url
from polling import eventually, eventually_async

pytestmark = pytest.mark.redis

DB = 3  # not 0: the URL's database must be the one written


# -- the URL --------------------------------------------------------------------------------


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_database() -> None:
    target = parse_sentinel_url(
        "redis+sentinel://app:s%40cret@10.0.0.1:26380,10.0.0.2,[::1]:26381/cache/5"
        "?sentinel_password=sp&socket_keepalive=yes&health_check_interval=7"
    )
    assert target.sentinels == (("10.0.0.1", 26380), ("10.0.0.2", 26379), ("::1", 26381))
    assert target.service_name == "cache"
    assert not target.tls
    assert target.connection == {
        "db": 5,
        "username": "app",
        "password": "s@cret",
        "socket_keepalive": True,
        "health_check_interval": 7,
    }
    assert target.sentinel == {"password": "sp"}
    assert target.master_check_interval == 1.0  # the default
    assert (
        parse_sentinel_url("redis+sentinel://h/s?master_check_interval=0").master_check_interval
        == 0
    )
    # The credentials stay out of the repr.
    assert "s@cret" not in repr(target)
    assert "'sp'" not in repr(target)


def test_rediss_sentinel_speaks_tls_to_the_master_and_to_the_sentinels_unless_told() -> None:
    target = parse_sentinel_url("rediss+sentinel://h:1/svc?ssl_ca_certs=/ca.pem")
    assert target.tls
    assert target.connection == {"ssl": True, "ssl_ca_certs": "/ca.pem"}
    assert target.sentinel == {"ssl": True, "ssl_ca_certs": "/ca.pem"}
    plain_sentinels = parse_sentinel_url(
        "rediss+sentinel://h:1/svc?ssl_ca_certs=/ca.pem&sentinel_ssl=false"
    )
    assert plain_sentinels.connection == {"ssl": True, "ssl_ca_certs": "/ca.pem"}
    assert plain_sentinels.sentinel == {}
    assert is_sentinel_url("REDIS+SENTINEL://h/s")
    assert not is_sentinel_url("redis://h:1/0")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://:hunter2@h:1", "service"),
        ("redis+sentinel://:hunter2@h:1/", "service"),
        ("redis+sentinel://:hunter2@h:1/svc/x", "database"),
        ("redis+sentinel://:hunter2@h:1/svc/1/2", "service"),
        ("redis+sentinel://:hunter2@h:99999/svc", "port"),
        ("redis+sentinel://:hunter2@h:1,:2/svc", "host"),
        ("redis+sentinel://:hunter2@/svc", "host:port"),
        ("redis+sentinel://:hunter2@h:1/svc?sentinel_ssl=maybe", "sentinel_ssl"),
        ("redis+sentinel://:hunter2@h:1/svc?db=x", "'db'"),
        ("redis+sentinel://:hunter2@h:1/svc?master_check_interval=-1", "master_check_interval"),
        ("redis+sentinel://:hunter2@h:1/svc?master_check_interval=inf", "master_check_interval"),
    ],
)
def test_a_bad_sentinel_url_is_refused_at_construction_without_its_password(
    url: str, message: str
) -> None:
    for build in (
        lambda: RedisLayer(url=url),
        lambda: RedisInvalidationBus(url=url),
        lambda: RedisSingleFlightCoordinator(url=url),
        lambda: RedisTagIndex(url=url),
        lambda: SyncRedisTagIndex(url=url),
    ):
        with pytest.raises(ValueError, match=message) as caught:
            build()
        assert "hunter2" not in str(caught.value)
        assert ":***@" in str(caught.value)


# -- every component through the sentinels ----------------------------------------------------


def master_keys(topology: SentinelSet, prefix: str) -> list[bytes]:
    """The keys under ``prefix`` in database ``DB`` of the master (read directly)."""
    client = redis.Redis(host="127.0.0.1", port=topology.master.port, db=DB)
    try:
        return sorted(client.scan_iter(match=f"{prefix}*"))
    finally:
        client.close()


class AsyncInstance:
    """One service instance: a memory layer and Redis components on the sentinels."""

    def __init__(self, names: str, client: Any = None, url: str | None = None) -> None:
        self.memory = MemoryLayer(name="memory")
        source: dict[str, Any] = {"url": url} if url is not None else {"client": client}
        publisher: dict[str, Any] = {"url": url} if url is not None else {"publisher": client}
        self.bus = RedisInvalidationBus(
            **publisher, channel=f"{names}:bus", health_check_interval=0.25
        )
        self.stack = CacheStack(
            [self.memory, RedisLayer(**source, prefix=f"{names}:")],
            invalidation_bus=self.bus,
            broadcast_l1_invalidation=True,
            tag_index=RedisTagIndex(**source, prefix=f"{names}:tags"),
            single_flight_coordinator=RedisSingleFlightCoordinator(**source, prefix=f"{names}:sf"),
        )


async def exercise_async(topology: SentinelSet, one: AsyncInstance, two: AsyncInstance) -> None:
    names = "t"
    calls = 0

    async def fetch() -> dict[str, int]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)  # long enough for the other instance to wait on the lease
        return {"v": 1}

    async with one.stack, two.stack:
        # Single flight across the instances: one fetch for both.
        got = await asyncio.gather(
            one.stack.get("k", fetch, tags=["t1"]), two.stack.get("k", fetch, tags=["t1"])
        )
        assert got == [{"v": 1}, {"v": 1}]
        assert calls == 1
        assert master_keys(topology, f"{names}:k")  # in the URL's database of the master
        # L2 through the sentinels: the value is there with L1 gone.
        one.memory.clear()
        assert await one.stack.get("k") == {"v": 1}
        assert one.memory.get("k") is not None
        assert two.memory.get("k") is not None
        # The tag index and the bus: one invalidation drops the key from both L1s.
        assert await one.stack.invalidate_by_tag("t1") == 1
        await eventually_async(lambda: two.memory.get("k") is None, what="peer L1 dropped")
        assert await two.stack.get("k") is None  # L2 (the master) holds only a tombstone


async def test_every_component_through_redis_sentinel_urls(sentinel_clean: SentinelSet) -> None:
    url = sentinel_clean.url(db=DB)
    await exercise_async(sentinel_clean, AsyncInstance("t", url=url), AsyncInstance("t", url=url))


async def test_every_component_through_sentinel_master_for_clients(
    sentinel_clean: SentinelSet,
) -> None:
    managers = [
        redis.asyncio.sentinel.Sentinel(sentinel_clean.sentinel_addresses, socket_timeout=2)
        for _ in range(2)
    ]
    clients = [manager.master_for(SERVICE, db=DB) for manager in managers]
    try:
        await exercise_async(
            sentinel_clean,
            AsyncInstance("t", client=clients[0]),
            AsyncInstance("t", client=clients[1]),
        )
    finally:
        for client, manager in zip(clients, managers, strict=True):
            await client.aclose()
            await manager.aclose()


async def test_a_sentinel_url_pool_makes_callers_wait_instead_of_failing(
    sentinel_clean: SentinelSet,
) -> None:
    """Two connections for forty concurrent reads: the callers beyond two queue (redis-py's
    plain Sentinel pool would raise MaxConnectionsError)."""
    layer = RedisLayer(url=sentinel_clean.url(db=DB), prefix="w:", max_connections=2)
    stack = CacheStack([layer])
    async with stack:
        values = await asyncio.gather(*(stack.get(f"k{i}", lambda i=i: i) for i in range(40)))
        assert values == list(range(40))
        assert len(master_keys(sentinel_clean, "w:")) == 40


def sentinel_clients(topology: SentinelSet) -> list[int]:
    """``connected_clients`` of each sentinel (its peers, this probe, and our clients)."""
    counts = []
    for sentinel in topology.sentinels:
        info = sentinel.query("INFO", "clients")
        assert isinstance(info, bytes)
        line = next(x for x in info.splitlines() if x.startswith(b"connected_clients:"))
        counts.append(int(line.split(b":")[1]))
    return counts


async def test_closing_a_url_built_stack_closes_its_connections_to_the_sentinels(
    sentinel_clean: SentinelSet,
) -> None:
    before = sentinel_clients(sentinel_clean)
    instance = AsyncInstance("c", url=sentinel_clean.url(db=DB))
    async with instance.stack:
        assert await instance.stack.get("k", lambda: 1) == 1
        # The first sentinel that answers is asked; at least one holds our connections now.
        assert sum(sentinel_clients(sentinel_clean)) > sum(before)
    await eventually_async(
        lambda: sentinel_clients(sentinel_clean) == before, what="sentinel connections closed"
    )


# -- the sync stack ----------------------------------------------------------------------------


class SyncInstance:
    def __init__(self, names: str, client: Any = None, url: str | None = None) -> None:
        self.memory = MemoryLayer(name="memory")
        source: dict[str, Any] = {"url": url} if url is not None else {"client": client}
        publisher: dict[str, Any] = {"url": url} if url is not None else {"publisher": client}
        self.stack = SyncCacheStack(
            [self.memory, RedisLayer(**source, prefix=f"{names}:")],
            invalidation_bus=SyncRedisInvalidationBus(
                **publisher, channel=f"{names}:bus", health_check_interval=0.25
            ),
            broadcast_l1_invalidation=True,
            tag_index=SyncRedisTagIndex(**source, prefix=f"{names}:tags"),
            single_flight_coordinator=SyncRedisSingleFlightCoordinator(
                **source, prefix=f"{names}:sf"
            ),
        )


def exercise_sync(topology: SentinelSet, one: SyncInstance, two: SyncInstance) -> None:
    calls = 0
    lock = threading.Lock()
    gate = threading.Barrier(2)

    def fetch() -> dict[str, int]:
        nonlocal calls
        with lock:
            calls += 1
        return {"v": 2}

    results: list[Any] = []

    def read(instance: SyncInstance) -> None:
        gate.wait(5)
        results.append(instance.stack.get("k", fetch, tags=["t2"]))

    with one.stack, two.stack:
        threads = [threading.Thread(target=read, args=(i,)) for i in (one, two)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert results == [{"v": 2}, {"v": 2}]
        assert master_keys(topology, "s:k")
        one.memory.clear()
        assert one.stack.get("k") == {"v": 2}
        assert one.memory.get("k") is not None
        assert two.memory.get("k") is not None
        assert one.stack.invalidate_by_tag("t2") == 1
        eventually(lambda: two.memory.get("k") is None, what="peer L1 dropped")
        assert two.stack.get("k") is None


def test_sync_stack_through_redis_sentinel_urls(sentinel_clean: SentinelSet) -> None:
    url = sentinel_clean.url(db=DB)
    exercise_sync(sentinel_clean, SyncInstance("s", url=url), SyncInstance("s", url=url))


def test_sync_stack_through_sentinel_master_for_clients(sentinel_clean: SentinelSet) -> None:
    managers = [
        redis.sentinel.Sentinel(sentinel_clean.sentinel_addresses, socket_timeout=2)
        for _ in range(2)
    ]
    clients = [manager.master_for(SERVICE, db=DB) for manager in managers]
    try:
        exercise_sync(
            sentinel_clean,
            SyncInstance("s", client=clients[0]),
            SyncInstance("s", client=clients[1]),
        )
    finally:
        for client, manager in zip(clients, managers, strict=True):
            client.close()
            manager.close()


def test_a_key_written_through_the_sentinels_reaches_the_replica(
    sentinel_clean: SentinelSet,
) -> None:
    """What the failover relies on: the replica holds what the master acknowledged (once
    replicated; WAIT makes a writer wait for it)."""
    key = f"r:{uuid.uuid4().hex}"
    layer = RedisLayer(url=sentinel_clean.url(db=DB), prefix="")
    stack = SyncCacheStack([layer])
    with stack:
        stack.set(key, "v")
    master = redis.Redis(host="127.0.0.1", port=sentinel_clean.master.port)
    replica = redis.Redis(host="127.0.0.1", port=sentinel_clean.replica.port, db=DB)
    try:
        assert master.execute_command("WAIT", 1, 2000) == 1
        assert replica.exists(key) == 1
    finally:
        master.close()
        replica.close()
