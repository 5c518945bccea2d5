"""A Redis Sentinel failover under load, against a real set (one master, one replica, three
sentinels, quorum 2, down-after 500 ms).

Two instances (stacks with graceful degradation, every Redis component built from a
``redis+sentinel://`` URL) keep reading and writing while the master goes away: killed (the
asyncio stack) or demoted by ``SENTINEL FAILOVER`` (the sync stack). Checked: no exception
reaches a caller, reads fall through to the fetcher while Redis is unreachable, each
instance's bus subscribes again on the new master and its L1 is emptied on that switch, a
message published after the failover reaches the peer, and writes land on the new master.
Every wait is bounded polling.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from _topology_servers import SentinelSet

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
from polling import eventually, eventually_async

pytestmark = pytest.mark.redis

FAILOVER_DEADLINE = 20.0
RECONNECTED = "invalidation bus reconnected; dropping local layers"
LOAD_KEYS = 40
LOAD_TTL = 0.2  # load entries expire fast, so reads keep going past L1 during the outage
PROBE_TTL = 120.0  # the probe stays in L1 until something empties it
# From the promotion to both buses on the new master: a master check (1 s), a health-check
# PING (0.25 s), the re-subscribe; far below the ~10 s the old master stays one.
SWITCH_DEADLINE = 5.0


def options() -> dict[str, Any]:
    """What both stacks share: short retries, so that the test sees the recovery quickly."""
    return {
        "graceful_degradation": {"retry_after": 0.25},
        "broadcast_l1_invalidation": True,
        "single_flight_timeout": 2,
    }


def reconnects(caplog: pytest.LogCaptureFixture) -> int:
    return sum(RECONNECTED in record.getMessage() for record in caplog.records)


def redis_on(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)


def key_on(port: int, key: str) -> bytes | None:
    client = redis_on(port)
    try:
        value: bytes | None = client.get(key)
        return value
    except redis.RedisError:
        return None
    finally:
        client.close()


def promoted(topology: SentinelSet, node: Any) -> Callable[[], bool]:
    """Every sentinel reports ``node`` as the master, and ``node`` says it is one."""
    return lambda: topology.reported_master_ports() == {node.port} and topology.is_master(node)


class Load:
    """What the callers saw: fetches (with their time) and every exception that escaped."""

    def __init__(self) -> None:
        self.fetch_times: list[float] = []
        self.errors: list[BaseException] = []
        self.operations = 0
        self.lock = threading.Lock()

    def fetcher(self, value: Any) -> Callable[[], Any]:
        def fetch() -> Any:
            with self.lock:
                self.fetch_times.append(time.monotonic())
            return value

        return fetch

    def fetched_between(self, start: float, end: float) -> int:
        with self.lock:
            return sum(start <= t <= end for t in self.fetch_times)


# -- asyncio stack: the master process is killed ------------------------------------------------


class AsyncInstance:
    def __init__(self, url: str) -> None:
        self.memory = MemoryLayer(name="memory")
        self.stack = CacheStack(
            [self.memory, RedisLayer(url=url, prefix="f:", socket_timeout=1.0)],
            invalidation_bus=RedisInvalidationBus(
                url=url, channel="f:bus", health_check_interval=0.25, reconnect_backoff=(0.05, 0.5)
            ),
            tag_index=RedisTagIndex(url=url, prefix="f:tags"),
            single_flight_coordinator=RedisSingleFlightCoordinator(url=url, prefix="f:sf"),
            **options(),
        )


async def async_load(instance: AsyncInstance, load: Load, stop: asyncio.Event, n: int) -> None:
    i = n
    while not stop.is_set():
        key = f"load:{i % LOAD_KEYS}"
        try:
            if i % 5 == 0:
                await instance.stack.set(key, i, ttl=LOAD_TTL, tags=["load"])
            else:
                await instance.stack.get(key, load.fetcher(i), ttl=LOAD_TTL, tags=["load"])
            load.operations += 1
        except Exception as exc:
            load.errors.append(exc)
        i += 7
        await asyncio.sleep(0.002)


async def test_a_killed_master_fails_over_under_load_without_an_error_reaching_callers(
    fresh_sentinel_set: SentinelSet, caplog: pytest.LogCaptureFixture
) -> None:
    topology = fresh_sentinel_set
    caplog.set_level(logging.WARNING, logger="layercache")
    url = topology.url()
    one, two = AsyncInstance(url), AsyncInstance(url)
    load = Load()
    stop = asyncio.Event()
    async with one.stack, two.stack:
        assert await one.stack.get("probe", lambda: "p", ttl=PROBE_TTL) == "p"
        assert await two.stack.get("probe") == "p"  # from L2, now in both L1s
        assert one.memory.get("probe") is not None
        assert two.memory.get("probe") is not None
        workers = [
            asyncio.create_task(async_load(instance, load, stop, n))
            for n, instance in enumerate([one, two, one, two])
        ]
        try:
            await eventually_async(lambda: load.operations > 200, what="load running")
            old_master = topology.master
            killed_at = time.monotonic()
            old_master.kill()
            await eventually_async(
                promoted(topology, topology.replica),
                timeout=FAILOVER_DEADLINE,
                what="the replica promoted",
                interval=0.05,
            )
            promoted_at = time.monotonic()
            # Both buses subscribed again on the new master, and each emptied its L1 then.
            await eventually_async(
                lambda: one.memory.get("probe") is None and two.memory.get("probe") is None,
                what="both L1s emptied",
            )
            assert reconnects(caplog) >= 2
            # Reads went on while Redis was unreachable: the fetchers answered them.
            assert load.fetched_between(killed_at, promoted_at) > 0
            # A message published after the failover reaches the peer.
            await published_invalidation_reaches_peer(one, two)
            # Writes land on the new master.
            await write_lands_on(one, topology.replica.port)
            load_ops_after = load.operations
            await eventually_async(
                lambda: load.operations > load_ops_after + 100, what="load after the failover"
            )
        finally:
            stop.set()
            await asyncio.gather(*workers)
    assert load.errors == []


async def published_invalidation_reaches_peer(one: AsyncInstance, two: AsyncInstance) -> None:
    deadline = time.monotonic() + FAILOVER_DEADLINE
    while True:
        assert await one.stack.get("shared", lambda: "s", ttl=PROBE_TTL) == "s"
        if one.memory.get("shared") is not None:
            await two.stack.delete("shared")  # announced on the bus
            wait_until = time.monotonic() + 1.0
            while time.monotonic() < wait_until:
                if one.memory.get("shared") is None:
                    return
                await asyncio.sleep(0.005)
        if time.monotonic() > deadline:
            raise AssertionError("no invalidation reached the peer after the failover")
        await asyncio.sleep(0.05)


async def write_lands_on(instance: AsyncInstance, port: int) -> None:
    deadline = time.monotonic() + FAILOVER_DEADLINE
    while True:
        await instance.stack.set("after", "written after the failover", ttl=PROBE_TTL)
        if key_on(port, "f:after") is not None:
            return
        if time.monotonic() > deadline:
            raise AssertionError("no write reached the new master")
        await asyncio.sleep(0.05)


# -- sync stack: SENTINEL FAILOVER demotes the master ---------------------------------------------


class SyncInstance:
    def __init__(self, url: str) -> None:
        self.memory = MemoryLayer(name="memory")
        self.stack = SyncCacheStack(
            [self.memory, RedisLayer(url=url, prefix="g:", socket_timeout=1.0)],
            invalidation_bus=SyncRedisInvalidationBus(
                url=url, channel="g:bus", health_check_interval=0.25, reconnect_backoff=(0.05, 0.5)
            ),
            tag_index=SyncRedisTagIndex(url=url, prefix="g:tags"),
            single_flight_coordinator=SyncRedisSingleFlightCoordinator(url=url, prefix="g:sf"),
            **options(),
        )


def sync_load(instance: SyncInstance, load: Load, stop: threading.Event, n: int) -> None:
    i = n
    while not stop.is_set():
        key = f"load:{i % LOAD_KEYS}"
        try:
            if i % 5 == 0:
                instance.stack.set(key, i, ttl=LOAD_TTL, tags=["load"])
            else:
                instance.stack.get(key, load.fetcher(i), ttl=LOAD_TTL, tags=["load"])
            with load.lock:
                load.operations += 1
        except Exception as exc:
            with load.lock:
                load.errors.append(exc)
        i += 7
        stop.wait(0.002)


def test_a_sentinel_failover_under_load_on_the_sync_stack(
    fresh_sentinel_set: SentinelSet, caplog: pytest.LogCaptureFixture
) -> None:
    topology = fresh_sentinel_set
    caplog.set_level(logging.WARNING, logger="layercache")
    url = topology.url()
    one, two = SyncInstance(url), SyncInstance(url)
    load = Load()
    stop = threading.Event()
    with one.stack, two.stack:
        assert one.stack.get("probe", lambda: "p", ttl=PROBE_TTL) == "p"
        assert two.stack.get("probe") == "p"
        assert one.memory.get("probe") is not None
        assert two.memory.get("probe") is not None
        workers = [
            threading.Thread(target=sync_load, args=(instance, load, stop, n))
            for n, instance in enumerate([one, two, one, two])
        ]
        for worker in workers:
            worker.start()
        try:
            eventually(lambda: load.operations > 200, what="load running")
            topology.failover()
            eventually(
                promoted(topology, topology.replica),
                timeout=FAILOVER_DEADLINE,
                what="the replica promoted",
                interval=0.05,
            )
            # The old master answers as a master until the sentinels demote it (about ten
            # seconds: their INFO period). The clients built from the URL do not wait for
            # that: they ask the sentinels every second whether the master moved, drop
            # connections to the old one, and the buses subscribe again on the new one.
            eventually(
                lambda: one.memory.get("probe") is None and two.memory.get("probe") is None,
                timeout=SWITCH_DEADLINE,
                what="both L1s emptied",
            )
            assert reconnects(caplog) >= 2
            sync_invalidation_reaches_peer(one, two)
            deadline = time.monotonic() + FAILOVER_DEADLINE
            while key_on(topology.replica.port, "g:after") is None:
                one.stack.set("after", "written after the failover", ttl=PROBE_TTL)
                if time.monotonic() > deadline:
                    raise AssertionError("no write reached the new master")
                stop.wait(0.05)
            load_ops_after = load.operations
            eventually(
                lambda: load.operations > load_ops_after + 100, what="load after the failover"
            )
        finally:
            stop.set()
            for worker in workers:
                worker.join(10)
    assert load.errors == []


def sync_invalidation_reaches_peer(one: SyncInstance, two: SyncInstance) -> None:
    deadline = time.monotonic() + FAILOVER_DEADLINE
    while True:
        assert one.stack.get("shared", lambda: "s", ttl=PROBE_TTL) == "s"
        if one.memory.get("shared") is not None:
            two.stack.delete("shared")
            wait_until = time.monotonic() + 1.0
            while time.monotonic() < wait_until:
                if one.memory.get("shared") is None:
                    return
                time.sleep(0.005)
        if time.monotonic() > deadline:
            raise AssertionError("no invalidation reached the peer after the failover")
        time.sleep(0.05)
