"""The sync memcached twin's connection pool per server (``_Pool``): at most ``size``
connections, made on demand; callers beyond them wait for a release (each release wakes one),
at most ``timeout``; a connection whose command failed is closed and its place freed; closing
the pool closes idle connections and those that come back later. Then the same through the
layer on a real server: a dropped connection is replaced, more threads than connections all
get answers."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from _memcached_server import MemcachedServer
from layercache import Entry
from layercache._exceptions import CacheLayerError
from layercache.memcached import SyncMemcachedLayer
from layercache.memcached._sync_client import _Pool

DEADLINE = 10.0


class Connection:
    """Stands for a pymemcache client in the pool's own tests (no I/O happens there)."""

    made = 0

    def __init__(self) -> None:
        Connection.made += 1
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_connections_are_made_on_demand_then_reused_and_bounded() -> None:
    pool = _Pool(2, Connection)
    first, second = pool.take(None), pool.take(None)
    assert first is not second
    began = time.monotonic()
    assert pool.take(0.05) is None  # both in use: refused after the timeout
    assert time.monotonic() - began >= 0.05
    pool.give(first)
    assert pool.take(0.0) is first  # reused, not made again


def test_a_release_wakes_a_waiting_caller() -> None:
    pool = _Pool(1, Connection)
    held = pool.take(None)
    waiting = threading.Event()
    got: list[Any] = []

    def wait_for_one() -> None:
        waiting.set()
        got.append(pool.take(DEADLINE))

    thread = threading.Thread(target=wait_for_one)
    thread.start()
    assert waiting.wait(DEADLINE)
    pool.give(held)
    thread.join(DEADLINE)
    assert got == [held]


def test_a_failed_connection_is_closed_and_its_place_freed() -> None:
    pool = _Pool(1, Connection)
    broken = pool.take(None)
    pool.discard(broken)
    assert broken.closed
    fresh = pool.take(0.0)  # a new one: the place was freed
    assert fresh is not None
    assert fresh is not broken


def test_each_release_wakes_one_of_several_waiters() -> None:
    pool = _Pool(1, Connection)
    held = pool.take(None)
    results: list[bool] = []
    lock = threading.Lock()

    def waiter() -> None:
        connection = pool.take(DEADLINE)
        with lock:
            results.append(connection is not None)
        if connection is not None:
            pool.give(connection)

    threads = [threading.Thread(target=waiter) for _ in range(8)]
    for thread in threads:
        thread.start()
    pool.give(held)
    for thread in threads:
        thread.join(DEADLINE)
    assert results == [True] * 8
    assert pool.take(0.0) is held  # one connection served all of them


def test_closing_closes_idle_connections_and_those_coming_back() -> None:
    pool = _Pool(2, Connection)
    idle, busy = pool.take(None), pool.take(None)
    pool.give(idle)
    pool.close()
    assert idle.closed
    assert not busy.closed
    pool.give(busy)
    assert busy.closed


def entry(value: Any) -> Entry:
    now = time.time()
    return Entry(value, now, now + 600)


def test_a_connection_the_server_dropped_is_replaced(
    own_memcached: MemcachedServer, prefix: str
) -> None:
    layer = SyncMemcachedLayer(servers=own_memcached.address, prefix=prefix, timeout=1.0)
    try:
        layer.set("k", entry(1), 60)
        own_memcached.restart()  # every open connection is gone
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                layer.set("k", entry(2), 60)
                break
            except CacheLayerError:  # the dropped connection fails once, then is replaced
                assert time.monotonic() < deadline
        assert layer.get("k").value == 2  # type: ignore[union-attr]
    finally:
        layer.close()


@pytest.mark.parametrize("connections", [1, 3])
def test_more_threads_than_connections(
    memcached: MemcachedServer, prefix: str, connections: int
) -> None:
    layer = SyncMemcachedLayer(
        servers=memcached.address, prefix=prefix, max_connections=connections
    )
    try:
        layer.set_many([(f"k{i}", entry(i), 60) for i in range(50)])

        def read(i: int) -> Any:
            found = layer.get(f"k{i % 50}")
            return None if found is None else found.value

        with ThreadPoolExecutor(12) as threads:
            values = list(threads.map(read, range(600)))
        assert values == [i % 50 for i in range(600)]
    finally:
        layer.close()
