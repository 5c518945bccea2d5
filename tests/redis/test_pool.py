"""The pools RedisLayer builds from ``url=`` wait for a free connection (issue 10, point 1b).

redis-py's asyncio ``ConnectionPool`` raises ``MaxConnectionsError`` once 100 connections are
in use, so a burst of more than 100 concurrent L2 reads failed (and, under graceful
degradation, took Redis out of service). The library's pools are ``BlockingConnectionPool``s:
callers beyond ``max_connections`` wait, for at most the socket timeout.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from typing import Any

import pytest
import redis
import redis.asyncio

from _redis_server import RedisServer
from layercache import CacheStack, MemoryLayer, SyncCacheStack
from layercache._exceptions import CacheLayerError
from layercache.redis import RedisLayer, SyncRedisLayer

pytestmark = pytest.mark.redis

BURST = 400


async def _fill(url: str, count: int) -> None:
    writer = RedisLayer(url=url)
    try:
        await CacheStack([writer]).set_many([(f"k{i}", i) for i in range(count)])
    finally:
        await writer.aclose()


@pytest.mark.parametrize("pool", [{}, {"max_connections": 10}], ids=["default", "10"])
async def test_400_concurrent_l2_hits_of_distinct_keys_all_succeed(
    redis_clean: RedisServer, pool: dict[str, Any]
) -> None:
    await _fill(redis_clean.url, BURST)
    layer = RedisLayer(url=redis_clean.url, **pool)
    cache = CacheStack([MemoryLayer(), layer])
    try:
        values = await asyncio.gather(*(cache.get(f"k{i}") for i in range(BURST)))
        assert values == list(range(BURST))
        assert cache.get_metrics().layers["redis"].hits == BURST
    finally:
        await cache.aclose()


def test_sync_twin_400_threads_wait_for_a_connection(redis_clean: RedisServer) -> None:
    """SyncCacheStack's layer from url= waits too (redis-py's sync pool raises
    "Too many connections" at its limit)."""
    cache = SyncCacheStack([RedisLayer(url=redis_clean.url, max_connections=4)])
    try:
        cache.set_many([(f"k{i}", i) for i in range(BURST)])
        start = threading.Barrier(32)
        errors: list[BaseException] = []

        def read(first: int) -> None:
            start.wait()
            try:
                for i in range(first, BURST, 32):
                    assert cache.get(f"k{i}") == i
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=read, args=(n,)) for n in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
    finally:
        cache.close()


async def test_a_pool_busy_past_the_socket_timeout_fails_clearly(
    redis_clean: RedisServer,
) -> None:
    layer = RedisLayer(url=redis_clean.url, max_connections=1, socket_timeout=0.2)
    # A subscription holds the pool's only connection until it is closed.
    pubsub: Any = layer.client.pubsub()
    await pubsub.subscribe("hold")
    try:
        started = time.monotonic()
        with pytest.raises(CacheLayerError) as caught:
            await layer.get("k")
        waited = time.monotonic() - started
        assert 0.15 <= waited < 2.0
        message = str(caught.value)
        assert "max_connections=1" in message
        assert "socket_timeout=0.2" in message
        assert isinstance(caught.value.__cause__, redis.exceptions.ConnectionError)
    finally:
        await pubsub.aclose()
    assert await layer.get("k") is None  # the connection is free again
    await layer.aclose()


def test_the_sync_pool_busy_past_the_socket_timeout_fails_clearly(
    redis_clean: RedisServer,
) -> None:
    layer = SyncRedisLayer(url=redis_clean.url, max_connections=1, socket_timeout=0.2)
    pubsub: Any = layer.client.pubsub()
    pubsub.subscribe("hold")
    try:
        with pytest.raises(CacheLayerError, match="max_connections=1"):
            layer.get("k")
    finally:
        pubsub.close()
    assert layer.get("k") is None
    layer.close()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10"])
def test_max_connections_must_be_a_positive_int(bad: Any) -> None:
    with pytest.raises(ValueError, match="max_connections"):
        RedisLayer(url="redis://127.0.0.1:1/0", max_connections=bad)


def test_help_shows_the_real_parameters() -> None:
    """``RedisLayer.__new__`` takes (*args, **kwargs) to pick the sync twin; help() and
    inspect.signature() show __init__'s parameters anyway."""
    for cls in (RedisLayer, SyncRedisLayer):
        parameters = inspect.signature(cls).parameters
        assert list(parameters)[:2] == ["client", "url"], cls
        assert parameters["max_connections"].default == 50
        assert "args" not in parameters
        assert "self" not in parameters


async def test_waiting_pool_queues_callers_and_survives_a_cancelled_waiter(
    redis_clean: Any,
) -> None:
    """The asyncio pool built from url= takes the plain pool's path while a connection is
    free, and queues callers only when every connection is busy: each release wakes one, and
    a waiter that is cancelled does not swallow the release meant for the one behind it."""
    from layercache.redis._clients import WaitingConnectionPool, new_async_client

    client = new_async_client(redis_clean.url, 5.0, 1)
    pool = client.connection_pool
    assert isinstance(pool, WaitingConnectionPool)
    try:
        holder = asyncio.create_task(client.blpop(["nothing-here"], timeout=0.3))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while not pool._in_use_connections:
            assert loop.time() < deadline
            await asyncio.sleep(0.001)
        first = asyncio.create_task(client.get("k"))
        second = asyncio.create_task(client.get("k"))
        while len(pool._waiters) < 2:
            assert loop.time() < deadline
            await asyncio.sleep(0.001)
        first.cancel()
        assert await asyncio.wait_for(second, 5) is None
        assert await holder is None
        with pytest.raises(asyncio.CancelledError):
            await first
        assert not pool._waiters
    finally:
        await client.aclose()


async def test_a_waiter_cancelled_after_being_woken_hands_the_connection_on(
    redis_clean: Any,
) -> None:
    """A release wakes the oldest waiter; if that waiter is cancelled before it takes the
    connection (here: while it waits for the pool's lock to take it), the next waiter must get
    it at once, not wait out its timeout while the connection sits idle."""
    from layercache.redis._clients import WaitingConnectionPool

    pool = WaitingConnectionPool.from_url(redis_clean.url, max_connections=1, timeout=3.0)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5

    async def until(condition: Any) -> None:
        while not condition():
            assert loop.time() < deadline
            await asyncio.sleep(0.001)

    try:
        held = await pool.get_connection()
        first = asyncio.create_task(pool.get_connection())
        second = asyncio.create_task(pool.get_connection())
        await until(lambda: len(pool._waiters) == 2)
        await pool.release(held)  # wakes `first`
        await pool._lock.acquire()  # `first` will block taking the connection
        try:
            await until(lambda: pool._lock._waiters)
            first.cancel()
            await until(first.done)
        finally:
            pool._lock.release()
        connection = await asyncio.wait_for(second, 1.0)
        await pool.release(connection)
        with pytest.raises(asyncio.CancelledError):
            await first
    finally:
        await pool.disconnect()


def test_the_sync_pool_queues_threads_only_when_full(redis_clean: Any) -> None:
    """The sync twins' pool built from url= takes the plain pool's path while a connection is
    free (no queue per command, unlike redis-py's BlockingConnectionPool), and makes threads
    wait only when every connection is busy: each release lets one of them through."""
    from layercache.redis._clients import SyncWaitingConnectionPool, sync_url_client

    client = sync_url_client(redis_clean.url, socket_timeout=5.0, max_connections=2)
    pool = client.connection_pool
    assert isinstance(pool, SyncWaitingConnectionPool)
    deadline = time.monotonic() + 5
    try:
        held = [pool.get_connection(), pool.get_connection()]
        results: list[Any] = []
        threads = [
            threading.Thread(target=lambda: results.append(client.get("k"))) for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        while len(pool._queue) < 4:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        assert results == []  # all four wait: the pool is full
        for connection in held:
            pool.release(connection)
        for thread in threads:
            thread.join(5)
        assert results == [None] * 4
        assert not pool._queue
    finally:
        client.close()


def test_a_sync_waiter_gives_up_after_the_timeout(redis_clean: Any) -> None:
    from layercache.redis._clients import SyncWaitingConnectionPool, pool_exhausted

    pool = SyncWaitingConnectionPool.from_url(redis_clean.url, max_connections=1, timeout=0.1)
    try:
        held = pool.get_connection()
        began = time.monotonic()
        with pytest.raises(redis.exceptions.ConnectionError) as caught:
            pool.get_connection()
        assert time.monotonic() - began >= 0.1
        assert pool_exhausted(caught.value)
        pool.release(held)
        pool.release(pool.get_connection())  # free again: no wait
        assert not pool._queue
    finally:
        pool.disconnect()
