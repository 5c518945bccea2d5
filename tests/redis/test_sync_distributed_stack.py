"""Several SyncCacheStack instances sharing one Redis (a single server, or the real
three-master cluster): the sync bus, the shared tag index and the cross-instance single-flight,
end to end through the public API. Also: an asyncio CacheStack and a SyncCacheStack on the same
channel and prefixes work together, and each stack refuses the other kind's components.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.cluster

from _redis_server import RedisServer
from layercache import (
    CacheStack,
    MemoryLayer,
    RedisInvalidationBus,
    RedisLayer,
    RedisSingleFlightCoordinator,
    RedisTagIndex,
    SyncCacheStack,
)
from polling import eventually, eventually_async

pytestmark = pytest.mark.redis

SECRET = "sync-distributed-secret"
DEADLINE = 10.0


def components(client: Any, names: str) -> dict[str, Any]:
    """The three coordination components on ``client``, under the deployment ``names``."""
    return {
        "invalidation_bus": RedisInvalidationBus(
            publisher=client,
            channel=f"{names}:invalidation",
            signing_secret=SECRET,
            # Short read slices keep close() (which joins the subscriber thread) fast.
            health_check_interval=0.25,
        ),
        "broadcast_l1_invalidation": True,
        "tag_index": RedisTagIndex(client=client, prefix=f"{names}:tags"),
        "single_flight_coordinator": RedisSingleFlightCoordinator(
            client=client, prefix=f"{names}:sf"
        ),
        "single_flight_timeout": 5,
    }


class Instance:
    """One service instance: its own sync client, memory layer and stack."""

    def __init__(self, client: Any, names: str) -> None:
        self.client = client
        self.memory = MemoryLayer(name="memory")
        self.parts = components(client, names)
        self.stack = SyncCacheStack(
            [self.memory, RedisLayer(client=client, prefix=f"{names}:")], **self.parts
        )
        self.heard: list[dict[str, Any]] = []
        self.stack.on("invalidation", self.heard.append)

    @property
    def bus(self) -> Any:
        return self.parts["invalidation_bus"]

    @property
    def coordinator(self) -> Any:
        return self.parts["single_flight_coordinator"]

    def in_memory(self, key: str) -> bool:
        return self.memory.get(key) is not None


def close_all(stacks: list[Any]) -> None:
    """Close stacks in parallel (each joins its components' threads, up to a read slice)."""
    closers = [threading.Thread(target=s.close) for s in stacks]
    for closer in closers:
        closer.start()
    for closer in closers:
        closer.join(DEADLINE)


def cluster_client(cluster: Any) -> redis.RedisCluster:
    return redis.RedisCluster(
        startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in cluster.startup_nodes],
        socket_timeout=5,
    )


@pytest.fixture(params=["single", "cluster3"])
def trio(request: pytest.FixtureRequest) -> Iterator[list[Instance]]:
    """Three instances on one Redis server, or on the real 3-master Redis Cluster."""
    names = f"app-{uuid.uuid4().hex[:8]}"
    if request.param == "single":
        server: RedisServer = request.getfixturevalue("redis_clean")
        clients: list[Any] = [
            redis.Redis(host=server.host, port=server.port, socket_timeout=5) for _ in range(3)
        ]
    else:
        cluster = request.getfixturevalue("redis_cluster3")
        cluster.flushall()
        clients = [cluster_client(cluster) for _ in range(3)]
    instances = [Instance(client, names) for client in clients]
    try:
        for instance in instances:
            instance.stack.__enter__()  # subscribes the bus (blocks until confirmed)
            assert instance.bus.is_subscribed
        yield instances
    finally:
        close_all([i.stack for i in instances])
        for client in clients:
            client.close()


# -- invalidations reach every instance ----------------------------------------------------------


def test_a_set_on_one_instance_drops_the_others_l1(trio: list[Instance]) -> None:
    a, b, c = trio
    a.stack.set("profile:1", "old")
    # A read racing the announcement of a change to the same key does not backfill (it cannot
    # tell which version it read), so read once the announcement has arrived.
    eventually(lambda: bool(b.heard) and bool(c.heard))
    for other in (b, c):
        assert other.stack.get("profile:1") == "old"
        assert other.in_memory("profile:1")
    a.stack.set("profile:1", "new")
    eventually(lambda: not b.in_memory("profile:1") and not c.in_memory("profile:1"))
    assert b.stack.get("profile:1") == "new"
    assert c.stack.get("profile:1") == "new"
    assert a.heard == []  # its own announcements are ignored


@pytest.mark.parametrize(
    "operation", ["set", "delete", "tag", "tags_all", "pattern", "prefix", "clear"]
)
def test_invalidations_reach_every_instance(trio: list[Instance], operation: str) -> None:
    a, b, c = trio
    a.stack.set("post:1", "p1", tags=["posts", "user:7"])
    a.stack.set("other:1", "o1")
    eventually(lambda: len(b.heard) >= 2 and len(c.heard) >= 2)
    for instance in trio:
        assert instance.stack.get("post:1") == "p1"
        assert instance.stack.get("other:1") == "o1"
        assert instance.in_memory("post:1")
    expected: str | None = None
    if operation == "set":
        a.stack.set("post:1", "p2")
        expected = "p2"
    elif operation == "delete":
        a.stack.delete("post:1")
    elif operation == "tag":
        assert a.stack.invalidate_by_tag("user:7") == 1
    elif operation == "tags_all":
        assert a.stack.invalidate_by_tags(["posts", "user:7"], mode="all") == 1
    elif operation == "pattern":
        a.stack.invalidate_by_pattern("post:*")
    elif operation == "prefix":
        a.stack.invalidate_by_prefix("post:")
    else:
        a.stack.clear()

    for other in (b, c):
        # Bounded polling on the L1 itself: the old value must leave it.
        eventually(lambda o=other: not o.in_memory("post:1"))  # type: ignore[misc]
        assert other.stack.get("post:1") == expected
    if operation != "clear":
        for other in (b, c):
            assert other.stack.get("other:1") == "o1"
            assert other.in_memory("other:1")


def test_a_fetch_in_flight_when_another_instance_deletes_is_not_stored(
    trio: list[Instance],
) -> None:
    a, b, _ = trio
    started, release = threading.Event(), threading.Event()
    result: list[Any] = []

    def slow() -> str:
        started.set()
        assert release.wait(DEADLINE)
        return "fetched-before-delete"

    caller = threading.Thread(target=lambda: result.append(b.stack.get("k", slow)))
    caller.start()
    assert started.wait(DEADLINE)
    heard_before = len(b.heard)
    a.stack.delete("k")
    eventually(lambda: len(b.heard) > heard_before)
    release.set()
    caller.join(DEADLINE)
    assert result == ["fetched-before-delete"]  # the waiting caller gets it...
    assert b.memory.get("k") is None  # ...but it resurrects nothing
    assert b.stack.get("k") is None
    assert a.stack.get("k") is None


def test_concurrent_cold_gets_on_three_instances_fetch_once(trio: list[Instance]) -> None:
    fetches = 0
    lock = threading.Lock()
    started, release = threading.Event(), threading.Event()

    def origin() -> dict[str, int]:
        nonlocal fetches
        with lock:
            fetches += 1
        started.set()
        assert release.wait(DEADLINE)
        return {"id": 1}

    results: list[Any] = []
    callers = [
        threading.Thread(target=lambda s=i.stack: results.append(s.get("cold", origin)))
        for i in trio
        for _ in range(10)
    ]
    for caller in callers:
        caller.start()
    eventually(
        lambda: (
            started.is_set()
            and sum(i.coordinator.stats.waits for i in trio) == 2
            and all(i.stack.get_metrics().stampede_dedupes == 9 for i in trio)
        )
    )
    release.set()
    for caller in callers:
        caller.join(DEADLINE)
    assert results == [{"id": 1}] * 30
    assert fetches == 1
    assert sum(i.coordinator.stats.fetches for i in trio) == 1


def test_generation_bump_is_announced(trio: list[Instance]) -> None:
    a, b, c = trio
    a.stack.set("k", "v1")
    assert b.stack.get("k") == "v1"
    assert b.stack.get_generation() is None
    # The stacks run without generations; a bump still moves every instance.
    new = a.stack.bump_generation()
    assert new >= 1
    eventually(lambda: b.stack.get_generation() == new and c.stack.get_generation() == new)
    assert b.stack.get("k") is None
    assert c.stack.get("k") is None


def test_cluster_bus_uses_sharded_pub_sub(redis_cluster3: Any) -> None:
    redis_cluster3.flushall()
    names = f"app-{uuid.uuid4().hex[:8]}"
    clients = [cluster_client(redis_cluster3) for _ in range(3)]
    instances = [Instance(client, names) for client in clients]
    try:
        for instance in instances:
            instance.stack.__enter__()
            assert instance.bus.sharded
        channel = instances[0].bus.channel
        probe = clients[0]
        owner = probe.get_node_from_key(channel)
        # Asked of the owner's own client: redis-py 8.2's cluster client fails to merge a
        # SHARDNUMSUB reply (it unpacks the flat reply as pairs).
        node = probe.get_redis_connection(owner)
        shard = node.execute_command("PUBSUB", "SHARDNUMSUB", channel)
        plain = node.execute_command("PUBSUB", "NUMSUB", channel)
        assert int(shard[1]) == 3
        assert int(plain[1]) == 0
        a, b, c = instances
        a.stack.set("k", "v")
        eventually(lambda: bool(b.heard) and bool(c.heard))
        assert b.heard[0]["keys"] == ["k"]
        assert b.heard[0]["source_id"] == a.bus.source_id
    finally:
        close_all([i.stack for i in instances])
        for client in clients:
            client.close()


# -- an asyncio CacheStack and a SyncCacheStack together -----------------------------------------


@pytest.fixture
async def mixed(redis_clean: RedisServer) -> AsyncIterator[tuple[Instance, Any, MemoryLayer]]:
    """A SyncCacheStack instance and an asyncio CacheStack on the same channel and prefixes."""
    names = f"mix-{uuid.uuid4().hex[:8]}"
    sync_client = redis.Redis(host=redis_clean.host, port=redis_clean.port, socket_timeout=5)
    async_client = redis.asyncio.Redis(host=redis_clean.host, port=redis_clean.port)
    sync_side = Instance(sync_client, names)
    async_memory = MemoryLayer(name="memory")
    async_stack = CacheStack(
        [async_memory, RedisLayer(client=async_client, prefix=f"{names}:")],
        **components(async_client, names),
    )
    await asyncio.to_thread(sync_side.stack.__enter__)
    try:
        async with async_stack:
            yield sync_side, async_stack, async_memory
    finally:
        await asyncio.to_thread(sync_side.stack.close)
        sync_client.close()
        await async_client.aclose()


async def test_async_and_sync_stacks_invalidate_each_other(
    mixed: tuple[Instance, Any, MemoryLayer],
) -> None:
    sync_side, async_stack, async_memory = mixed
    async_heard: list[Any] = []
    async_stack.on("invalidation", async_heard.append)

    # Sync writes, async reads, then the sync side changes it: the async L1 drops it.
    await asyncio.to_thread(sync_side.stack.set, "from-sync", "v1", tags=["shared"])
    await eventually_async(lambda: bool(async_heard))
    assert await async_stack.get("from-sync") == "v1"
    assert async_memory.get("from-sync") is not None
    await asyncio.to_thread(sync_side.stack.set, "from-sync", "v2")
    await eventually_async(lambda: async_memory.get("from-sync") is None)
    assert await async_stack.get("from-sync") == "v2"

    # Async writes, sync reads, then the async side deletes it: the sync L1 drops it.
    await async_stack.set("from-async", "a1", tags=["shared"])
    await eventually_async(lambda: bool(sync_side.heard))
    assert await asyncio.to_thread(sync_side.stack.get, "from-async") == "a1"
    assert sync_side.in_memory("from-async")
    await async_stack.delete("from-async")
    await eventually_async(lambda: not sync_side.in_memory("from-async"))
    assert await asyncio.to_thread(sync_side.stack.get, "from-async") is None

    # One shared tag index: a tag invalidation on the async side finds the sync side's keys.
    await asyncio.to_thread(sync_side.stack.set, "tagged", "t", tags=["shared"])
    assert await asyncio.to_thread(sync_side.stack.get, "tagged") == "t"
    # Only "tagged": from-sync lost its tag when set again untagged, from-async was deleted.
    assert await async_stack.invalidate_by_tag("shared") == 1
    await eventually_async(lambda: not sync_side.in_memory("tagged"))
    assert await asyncio.to_thread(sync_side.stack.get, "tagged") is None

    # And the other way round, with a pattern.
    await async_stack.set("pat:1", 1)
    assert await async_stack.get("pat:1") == 1
    await asyncio.to_thread(sync_side.stack.invalidate_by_pattern, "pat:*")
    await eventually_async(lambda: async_memory.get("pat:1") is None)
    assert await async_stack.get("pat:1") is None


async def test_async_and_sync_stacks_share_single_flight(
    mixed: tuple[Instance, Any, MemoryLayer],
) -> None:
    sync_side, async_stack, _ = mixed
    async_coordinator = async_stack._loader._coordinator
    fetches = {"sync": 0, "async": 0}
    started, release = threading.Event(), threading.Event()

    def sync_origin() -> str:
        fetches["sync"] += 1
        started.set()
        assert release.wait(DEADLINE)
        return "from-sync-origin"

    async def async_origin() -> str:
        fetches["async"] += 1
        return "from-async-origin"

    # The sync stack takes the lock and holds it while its origin is gated...
    holder = asyncio.ensure_future(asyncio.to_thread(sync_side.stack.get, "cold", sync_origin))
    await eventually_async(started.is_set)
    # ...so the asyncio stack waits for it instead of fetching.
    waiter = asyncio.ensure_future(async_stack.get("cold", async_origin))
    await eventually_async(lambda: async_coordinator.stats.waits == 1)
    release.set()
    assert await asyncio.wait_for(holder, DEADLINE) == "from-sync-origin"
    assert await asyncio.wait_for(waiter, DEADLINE) == "from-sync-origin"
    assert fetches == {"sync": 1, "async": 0}
    assert async_coordinator.stats.shared_hits == 1

    # The other way round: the asyncio stack holds, the sync stack waits.
    gate = asyncio.Event()

    async def gated_async_origin() -> str:
        fetches["async"] += 1
        await gate.wait()
        return "from-async-origin"

    holder2 = asyncio.ensure_future(async_stack.get("cold-2", gated_async_origin))
    await eventually_async(lambda: fetches["async"] == 1)
    waiter2 = asyncio.ensure_future(asyncio.to_thread(sync_side.stack.get, "cold-2", sync_origin))
    await eventually_async(lambda: sync_side.coordinator.stats.waits == 1)
    gate.set()
    assert await asyncio.wait_for(holder2, DEADLINE) == "from-async-origin"
    assert await asyncio.wait_for(waiter2, DEADLINE) == "from-async-origin"
    assert fetches == {"sync": 1, "async": 1}


# -- each stack refuses the other kind's components ----------------------------------------------

KINDS = ["invalidation_bus", "single_flight_coordinator", "tag_index"]


def _component(kind: str, client: Any) -> Any:
    if kind == "invalidation_bus":
        return RedisInvalidationBus(publisher=client, channel="refused")
    if kind == "single_flight_coordinator":
        return RedisSingleFlightCoordinator(client=client, prefix="refused:sf")
    return RedisTagIndex(client=client, prefix="refused:tags")


@pytest.mark.parametrize("kind", KINDS)
async def test_sync_stack_refuses_a_component_on_an_asyncio_client(
    redis_clean: RedisServer, kind: str
) -> None:
    client = redis.asyncio.Redis(host=redis_clean.host, port=redis_clean.port)
    try:
        with pytest.raises(TypeError, match="SyncCacheStack"):
            SyncCacheStack([MemoryLayer()], **{kind: _component(kind, client)})
    finally:
        await client.aclose()


@pytest.mark.parametrize("kind", KINDS)
async def test_async_stack_refuses_a_sync_component(redis_clean: RedisServer, kind: str) -> None:
    client = redis.Redis(host=redis_clean.host, port=redis_clean.port)
    try:
        with pytest.raises(TypeError, match="CacheStack"):
            CacheStack([MemoryLayer()], **{kind: _component(kind, client)})
    finally:
        client.close()


@pytest.mark.parametrize("first_call", ["get_many", "has", "ttl", "inspect"])
def test_any_first_operation_subscribes_the_bus(redis_clean: RedisServer, first_call: str) -> None:
    # An instance whose first calls are get_many (which fills its L1) must already be
    # listening: it used to subscribe only on a miss of get() or on a publish.
    names = f"app-{uuid.uuid4().hex[:8]}"
    clients = [redis.Redis(host=redis_clean.host, port=redis_clean.port) for _ in range(2)]
    writer, reader = (Instance(client, names) for client in clients)
    try:
        writer.stack.set("k", 1)
        assert not reader.bus.is_subscribed
        if first_call == "get_many":
            assert reader.stack.get_many(["k"]) == [1]
        else:
            getattr(reader.stack, first_call)("k")
        assert reader.bus.is_subscribed
        assert reader.stack.get_many(["k"]) == [1]
        assert reader.in_memory("k")
        writer.stack.set("k", 2)
        eventually(lambda: not reader.in_memory("k"))
        assert reader.stack.get_many(["k"]) == [2]
    finally:
        close_all([writer.stack, reader.stack])
        for client in clients:
            client.close()


def test_clear_keeps_the_shared_generation(redis_clean: RedisServer) -> None:
    # Default channel and layer prefix: the stored generation used to live at
    # "layercache:invalidation:generation", inside the layer's "layercache:" prefix, so clear()
    # deleted it and an instance started later went back to the old generation.
    clients = [redis.Redis(host=redis_clean.host, port=redis_clean.port) for _ in range(2)]

    def make(client: Any) -> SyncCacheStack:
        return SyncCacheStack(
            [MemoryLayer(ttl=60), RedisLayer(client=client)],
            invalidation_bus=RedisInvalidationBus(publisher=client, health_check_interval=0.25),
            generation=1,
        )

    first = make(clients[0])
    later = None
    try:
        first.set("k", 1)
        assert first.bump_generation() == 2
        first.clear()
        later = make(clients[1])
        later.__enter__()  # loads the stored generation
        assert later.get_generation() == 2
    finally:
        close_all([s for s in (first, later) if s is not None])
        for client in clients:
            client.close()
