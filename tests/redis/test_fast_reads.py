"""The layer's GET and MGET past redis-py's per-command machinery (issue 16, "faster than the
floor": the sync L2 hit at most 1.10x raw redis-py's ``GET`` + ``json.loads``).

A pool the layer built from ``url=`` parks a connection whose last command it ran to its end
and takes it again without redis-py's checkout checks (redis/_clients.py). What must hold:
a reply always belongs to its own command (no connection with an unread reply is ever reused:
a timeout or a cancellation mid-reply drops the connection), a parked connection the server
dropped is replaced without an error, parked connections never starve the pool's other
commands, a forked child never uses its parent's sockets, and clients the layer did not build
(a user's, a Sentinel one) keep redis-py's own path. All against a real ``redis-server``.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from typing import Any

import pytest
import redis
import redis.asyncio

from _redis_server import RedisServer
from _tcp_proxy import TcpProxy
from layercache import CacheStack, Entry, MemoryLayer, SyncCacheStack
from layercache._exceptions import CacheLayerError
from layercache.redis import RedisLayer, SyncRedisLayer
from layercache.redis._clients import (
    SyncWaitingConnectionPool,
    WaitingConnectionPool,
    fast_reads,
    new_async_client,
    sync_fast_reads,
    sync_url_client,
)

pytestmark = pytest.mark.redis


def _normal_clients(server: RedisServer) -> int:
    """Connections the server holds, less the one asking."""
    listing = server.command("CLIENT", "LIST", "TYPE", "normal").decode()
    return len([line for line in listing.splitlines() if line.strip()]) - 1


# -- sync --------------------------------------------------------------------------------------


def test_sync_reads_reuse_one_connection_and_send_nothing_else(redis_clean: RedisServer) -> None:
    cache = SyncCacheStack([RedisLayer(url=redis_clean.url)])
    try:
        cache.set_many([(f"k{i}", {"i": i}) for i in range(20)])
        redis_clean.command("CONFIG", "RESETSTAT")
        for _ in range(10):
            assert cache.get_many([f"k{i}" for i in range(20)]) == [{"i": i} for i in range(20)]
            for i in range(20):
                assert cache.get(f"k{i}") == {"i": i}
        assert cache.get("absent") is None
        stats = redis_clean.command("INFO", "commandstats").decode()
        # Only the reads themselves: no PING, no health check, no CLIENT commands.
        called = {
            line.split(":")[0].split("|")[0]
            for line in stats.splitlines()
            if line.startswith("cmdstat_")
        }
        assert called <= {"cmdstat_get", "cmdstat_mget", "cmdstat_info", "cmdstat_config"}
        assert _normal_clients(redis_clean) == 1
    finally:
        cache.close()


def test_sync_thread_hammer_every_reply_is_the_callers_own(
    redis_clean: RedisServer, fast_switching: None
) -> None:
    """32 threads preempted every microsecond on 4 connections: each read returns the value of
    the key it asked for (a reply handed to the wrong command would show here)."""
    cache = SyncCacheStack([RedisLayer(url=redis_clean.url, max_connections=4)])
    keys = [f"k{i}" for i in range(64)]
    cache.set_many([(key, {"key": key, "pad": "x" * (i * 37)}) for i, key in enumerate(keys)])
    wrong: list[tuple[str, Any]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(32)

    def work(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            start.wait()
            for _ in range(150):
                if rnd.random() < 0.2:
                    batch = rnd.sample(keys, 5)
                    for key, value in zip(batch, cache.get_many(batch), strict=True):
                        if value is None or value["key"] != key:
                            wrong.append((key, value))
                else:
                    key = rnd.choice(keys)
                    value = cache.get(key)
                    if value is None or value["key"] != key:
                        wrong.append((key, value))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(32)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors[:3]
        assert not wrong, wrong[:3]
        assert _normal_clients(redis_clean) <= 4
    finally:
        cache.close()


def test_sync_timeout_mid_reply_never_hands_a_late_reply_to_the_next_read(
    redis_proxy: TcpProxy,
) -> None:
    layer = SyncRedisLayer(url=redis_proxy.url, socket_timeout=0.2, max_connections=1)
    cache = SyncCacheStack([layer])
    try:
        cache.set("a", "value of a")
        cache.set("b", "value of b")
        for _ in range(3):
            redis_proxy.set_latency(0.4)
            with pytest.raises(CacheLayerError):
                cache.get("a")  # times out; a's reply is still on its way
            redis_proxy.set_latency(0)
            # One connection only: had the timed-out one been parked, this read would get a's
            # late reply.
            assert cache.get("b") == "value of b"
            assert cache.get("a") == "value of a"
    finally:
        cache.close()


@pytest.mark.parametrize("how", ["client kill", "server restart"])
def test_sync_parked_connection_dropped_by_the_server_is_replaced(
    redis_clean: RedisServer, how: str
) -> None:
    cache = SyncCacheStack([RedisLayer(url=redis_clean.url)])
    try:
        cache.set("k", [1, 2, 3])
        assert cache.get("k") == [1, 2, 3]  # its connection is parked now
        if how == "client kill":
            redis_clean.command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
            assert cache.get("k") == [1, 2, 3]
        else:
            redis_clean.restart()  # keeps nothing: the value is gone, the read still works
            assert cache.get("k") is None
        assert cache.get_metrics().errors == 0
    finally:
        cache.close()


def test_sync_a_full_pool_hands_parked_connections_to_other_commands(
    redis_clean: RedisServer,
) -> None:
    """Parked connections stay usable by every other command: with a pool of one, a write after
    a read gets the parked connection at once instead of waiting out the pool's timeout."""
    layer = SyncRedisLayer(url=redis_clean.url, max_connections=1, socket_timeout=2.0)
    cache = SyncCacheStack([layer])
    try:
        cache.set("a", 1)
        assert cache.get("a") == 1  # parks the only connection
        began = time.monotonic()
        cache.set("b", 2)  # a pipeline / SET through redis-py's own checkout
        cache.delete("a")  # a script
        assert cache.get("b") == 2
        assert time.monotonic() - began < 1.0
        # Threads mixing both kinds on two connections: nobody runs into the pool's timeout.
        mixed = SyncCacheStack([SyncRedisLayer(url=redis_clean.url, max_connections=2)])
        errors: list[BaseException] = []

        def work(n: int) -> None:
            try:
                for i in range(100):
                    if i % 3 == 0:
                        mixed.set(f"t{n}", i)
                    else:
                        mixed.get(f"t{n}")
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        mixed.close()
        assert not errors, errors[:3]
    finally:
        cache.close()


def test_sync_wrong_type_reply_fails_that_read_only(redis_clean: RedisServer) -> None:
    layer = SyncRedisLayer(url=redis_clean.url)
    cache = SyncCacheStack([layer])
    raw = redis.Redis(host=redis_clean.host, port=redis_clean.port)
    try:
        cache.set("ok", "fine")
        assert cache.get("ok") == "fine"
        raw.rpush(layer._key("list"), b"x")  # not a string: GET answers WRONGTYPE
        with pytest.raises(CacheLayerError) as caught:
            layer.get("list")
        assert "WRONGTYPE" in str(caught.value)
        assert cache.get("ok") == "fine"
        assert _normal_clients(redis_clean) == 2  # the layer's one connection, and raw's
    finally:
        raw.close()
        cache.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_sync_forked_child_never_uses_the_parents_connection(redis_clean: RedisServer) -> None:
    cache = SyncCacheStack([RedisLayer(url=redis_clean.url)])
    try:
        cache.set_many([(f"k{i}", i) for i in range(50)])
        assert cache.get("k0") == 0  # the parent's connection is parked
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: read while the parent reads too
            code = 1
            try:
                good = all(cache.get(f"k{i}") == i for i in range(50) for _ in range(10))
                code = 0 if good else 2
            finally:
                os.write(write_end, bytes([code]))
                os._exit(0)
        os.close(write_end)
        for _ in range(10):
            for i in range(50):
                assert cache.get(f"k{i}") == i
        status = os.read(read_end, 1)
        os.close(read_end)
        os.waitpid(pid, 0)
        assert status == b"\x00", "the child read wrong values"
    finally:
        cache.close()


def test_sync_clients_not_built_here_keep_redis_pys_path(redis_clean: RedisServer) -> None:
    own = redis.Redis(host=redis_clean.host, port=redis_clean.port)
    try:
        get, mget = sync_fast_reads(own)
        assert get == own.get
        assert mget == own.mget
        layer = SyncRedisLayer(url=redis_clean.url)
        pool = layer._client.connection_pool
        assert type(pool) is SyncWaitingConnectionPool
        assert sync_fast_reads(layer._client) == (pool.fast_get, pool.fast_mget)
        layer.close()
        cache = SyncCacheStack([RedisLayer(client=own)])
        cache.set("k", "v")
        assert cache.get("k") == "v"
        cache.close()
    finally:
        own.close()


def test_sync_resp3_reads(redis_clean: RedisServer) -> None:
    cache = SyncCacheStack([RedisLayer(url=redis_clean.url + "?protocol=3")])
    try:
        cache.set_many([("a", {"x": 1}), ("b", [1.5, "two"])])
        assert cache.get("a") == {"x": 1}
        assert cache.get_many(["a", "b", "c"]) == [{"x": 1}, [1.5, "two"], None]
    finally:
        cache.close()


# -- asyncio -----------------------------------------------------------------------------------


async def test_async_cancelled_mid_reply_never_desyncs(redis_proxy: TcpProxy) -> None:
    """Readers cancelled while their reply is on its way: the connection is dropped, so the
    next reads (on a pool of one) get their own replies."""
    layer = RedisLayer(url=redis_proxy.url, max_connections=1)
    cache = CacheStack([layer])
    try:
        await cache.set("a", "value of a")
        await cache.set("b", "value of b")
        for _ in range(3):
            redis_proxy.set_latency(0.3)
            reader = asyncio.ensure_future(layer.get("a"))
            await asyncio.sleep(0.05)  # the GET is sent, its reply delayed by the proxy
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
            redis_proxy.set_latency(0)
            assert await cache.get("b") == "value of b"
            assert await cache.get("a") == "value of a"
    finally:
        await cache.aclose()


async def test_async_400_concurrent_readers_get_their_own_values(
    redis_clean: RedisServer,
) -> None:
    layer = RedisLayer(url=redis_clean.url, max_connections=8)
    cache = CacheStack([MemoryLayer(max_size=10), layer])
    try:
        await cache.set_many([(f"k{i}", {"k": i}) for i in range(400)])
        for _ in range(3):
            order = list(range(400))
            random.shuffle(order)
            values = await asyncio.gather(*(layer.get(f"k{i}") for i in order))
            assert [v.value["k"] if v is not None else None for v in values] == order
            got = await asyncio.gather(*(cache.get(f"k{i}") for i in order))
            assert [g["k"] for g in got] == order
        assert _normal_clients(redis_clean) <= 8
    finally:
        await cache.aclose()


async def test_async_parked_connection_dropped_by_the_server_is_replaced(
    redis_clean: RedisServer,
) -> None:
    cache = CacheStack([RedisLayer(url=redis_clean.url)])
    try:
        await cache.set("k", "v")
        assert await cache.get("k") == "v"
        redis_clean.command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        assert await cache.get("k") == "v"
        assert cache.get_metrics().errors == 0
    finally:
        await cache.aclose()


async def test_async_a_full_pool_hands_parked_connections_to_waiters(
    redis_clean: RedisServer,
) -> None:
    layer = RedisLayer(url=redis_clean.url, max_connections=1, socket_timeout=2.0)
    cache = CacheStack([layer])
    try:
        await cache.set("a", 1)
        began = time.monotonic()
        results = await asyncio.gather(
            *(cache.get("a") if i % 2 else cache.set(f"w{i}", i) for i in range(40))
        )
        assert [r for i, r in enumerate(results) if i % 2] == [1] * 20
        assert time.monotonic() - began < 1.5
    finally:
        await cache.aclose()


def test_async_reads_from_several_event_loops(redis_clean: RedisServer) -> None:
    layer = RedisLayer(url=redis_clean.url)
    cache = CacheStack([layer])

    async def round_trip(n: int) -> Any:
        await cache.set(f"k{n}", n)
        return await cache.get(f"k{n}"), await cache.get_many([f"k{n}", "none"])

    try:
        for n in range(3):
            assert asyncio.run(round_trip(n)) == (n, [n, None])
    finally:
        asyncio.run(cache.aclose())


async def test_async_clients_not_built_here_keep_redis_pys_path(
    redis_clean: RedisServer,
) -> None:
    own = redis.asyncio.Redis(host=redis_clean.host, port=redis_clean.port)
    try:
        get, mget = fast_reads(own)
        assert get == own.get
        assert mget == own.mget
        layer = RedisLayer(url=redis_clean.url)
        await layer.set("k", Entry("v", time.time(), None), None)
        assert (await layer.get("k")).value == "v"
        pool = layer._client.current().connection_pool
        assert type(pool) is WaitingConnectionPool
        assert len(pool._ready) == 1  # the read's connection, parked
        await layer.aclose()
    finally:
        await own.aclose()


# -- fairness of the waiting pool -------------------------------------------------------------


async def test_async_pool_waiters_are_served_first_come_first_served(
    redis_clean: RedisServer,
) -> None:
    """A task that releases its connection and at once asks for one again must not take it
    back while another task waits (it did: the woken waiter found the connection gone,
    queued again at the back, and starved until the pool's timeout)."""
    client = new_async_client(redis_clean.url, 1.0, 1)  # one connection, 1 s wait at most
    stop = asyncio.Event()

    async def hog() -> int:
        done = 0
        while not stop.is_set():
            await client.set("hog", done)  # release, then straight back to the pool
            done += 1
        return done

    async def fast_hog() -> None:
        while not stop.is_set():
            await client.connection_pool.fast_get(b"hog")

    try:
        hogs = [asyncio.ensure_future(hog()), asyncio.ensure_future(fast_hog())]
        await asyncio.sleep(0.05)
        began = time.monotonic()
        for i in range(20):
            await client.set(f"waiter{i}", i)  # each waits behind at most the running command
        waited = time.monotonic() - began
        stop.set()
        await asyncio.gather(*hogs)
        assert waited < 0.8, f"20 commands of a waiting task took {waited:.2f}s"
        assert await client.get("waiter19") == b"19"
    finally:
        stop.set()
        await client.aclose()


def test_sync_pool_waiters_are_served_first_come_first_served(redis_clean: RedisServer) -> None:
    """The threaded pool likewise: two threads releasing and asking again at once, on one
    connection, never keep a third waiting until the pool's timeout."""
    client = sync_url_client(redis_clean.url, socket_timeout=1.0, max_connections=1)
    stop = threading.Event()
    errors: list[BaseException] = []

    def hog(fast: bool) -> None:
        try:
            while not stop.is_set():
                if fast:
                    client.connection_pool.fast_get(b"hog")
                else:
                    client.set("hog", 1)
        except BaseException as exc:  # reported below
            errors.append(exc)

    hogs = [threading.Thread(target=hog, args=(fast,)) for fast in (False, True)]
    try:
        for thread in hogs:
            thread.start()
        began = time.monotonic()
        for i in range(20):
            client.set(f"waiter{i}", i)
        waited = time.monotonic() - began
        stop.set()
        for thread in hogs:
            thread.join(10)
        assert not errors, errors[:2]
        assert waited < 0.8, f"20 commands of a waiting thread took {waited:.2f}s"
    finally:
        stop.set()
        client.close()
