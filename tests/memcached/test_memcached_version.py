"""The namespace version is reused for ``version_reuse`` seconds by reads as well as stores.

A read while the version is confirmed asks memcached for the data keys alone (one key per key
read, counted by the server's own ``cmd_get``), not for the version key too; another
instance's ``clear()`` is seen within ``version_reuse`` seconds (checked against a real
server: after the bound, without any sleep-and-hope, the read must miss); a failure makes the
next read fetch the version again. Both twins.
"""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from _memcached_server import MemcachedServer
from layercache import Entry
from layercache._exceptions import CacheLayerError
from layercache.memcached import MemcachedLayer, SyncMemcachedLayer

DEADLINE = 10.0


def entry(value: str) -> Entry:
    now = time.time()
    return Entry(value, now, now + 600)


def keys_requested(server: MemcachedServer) -> int:
    """Keys memcached was asked for so far (``cmd_get`` counts every key of a multi-get)."""
    return int(server.stats()["cmd_get"])


def wait_until(moment: float) -> None:
    """Block until ``time.monotonic()`` reaches ``moment`` (a deadline, not a guess)."""
    while (left := moment - time.monotonic()) > 0:
        time.sleep(left)


async def test_a_hit_asks_for_the_data_key_alone(memcached: MemcachedServer, prefix: str) -> None:
    layer = MemcachedLayer(servers=memcached.address, prefix=prefix, version_reuse=60)
    try:
        await layer.set("k", entry("v"), 60)
        await layer.set_many([(f"m{i}", entry(str(i)), 60) for i in range(5)])
        assert (await layer.get("k")).value == "v"  # type: ignore[union-attr]
        before = keys_requested(memcached)
        for _ in range(20):
            assert (await layer.get("k")).value == "v"  # type: ignore[union-attr]
        assert await layer.get("absent") is None  # a miss: one round trip, one key
        found = await layer.get_many([f"m{i}" for i in range(5)])
        assert [e.value for e in found if e is not None] == ["0", "1", "2", "3", "4"]
        # 20 hits + 1 miss + 5 keys of the bulk read; the version key was never asked for
        # (the old layer asked for it with every read: 48).
        assert keys_requested(memcached) - before == 26
    finally:
        await layer.aclose()


def test_sync_a_hit_asks_for_the_data_key_alone(memcached: MemcachedServer, prefix: str) -> None:
    layer = SyncMemcachedLayer(servers=memcached.address, prefix=prefix, version_reuse=60)
    try:
        layer.set("k", entry("v"), 60)
        assert layer.get("k").value == "v"  # type: ignore[union-attr]
        before = keys_requested(memcached)
        for _ in range(20):
            assert layer.get("k").value == "v"  # type: ignore[union-attr]
        assert layer.get("absent") is None
        assert keys_requested(memcached) - before == 21
    finally:
        layer.close()


async def test_another_instances_clear_is_seen_within_version_reuse(
    memcached: MemcachedServer, prefix: str
) -> None:
    bound = 0.5
    clearing = MemcachedLayer(servers=memcached.address, prefix=prefix, version_reuse=bound)
    reading = MemcachedLayer(servers=memcached.address, prefix=prefix, version_reuse=bound)
    try:
        await clearing.set("k", entry("before"), 60)
        assert (await reading.get("k")).value == "before"  # type: ignore[union-attr]
        # The reader's version was confirmed by that read, at the latest now.
        confirmed_by = time.monotonic()
        await clearing.clear()
        assert await clearing.get("k") is None  # the clearing instance: at once
        # Within the bound the reader may still answer from the cleared namespace (what the
        # bound buys: no version read on its hits); past it, its reads see the clear.
        wait_until(confirmed_by + bound)
        assert await reading.get("k") is None
        # ...and its stores land in the new namespace, where the other instance finds them.
        await reading.set("k", entry("after"), 60)
        assert (await clearing.get("k")).value == "after"  # type: ignore[union-attr]
    finally:
        await clearing.aclose()
        await reading.aclose()


def test_sync_another_instances_clear_is_seen_within_version_reuse(
    memcached: MemcachedServer, prefix: str
) -> None:
    bound = 0.5
    clearing = SyncMemcachedLayer(servers=memcached.address, prefix=prefix, version_reuse=bound)
    reading = SyncMemcachedLayer(servers=memcached.address, prefix=prefix, version_reuse=bound)
    try:
        clearing.set("k", entry("before"), 60)
        assert reading.get("k").value == "before"  # type: ignore[union-attr]
        confirmed_by = time.monotonic()
        clearing.clear()
        assert clearing.get("k") is None
        wait_until(confirmed_by + bound)
        assert reading.get("k") is None
        reading.set("k", entry("after"), 60)
        assert clearing.get("k").value == "after"  # type: ignore[union-attr]
    finally:
        clearing.close()
        reading.close()


async def test_within_the_bound_a_read_does_not_ask_for_the_version(
    memcached: MemcachedServer, prefix: str
) -> None:
    """The other side of the bound: a peer's clear is not looked for on every hit (the old
    layer saw it at once because it read the version key with every read)."""
    clearing = MemcachedLayer(servers=memcached.address, prefix=prefix)
    reading = MemcachedLayer(servers=memcached.address, prefix=prefix, version_reuse=60)
    try:
        await clearing.set("k", entry("before"), 60)
        assert (await reading.get("k")).value == "before"  # type: ignore[union-attr]
        await clearing.clear()
        assert (await reading.get("k")).value == "before"  # type: ignore[union-attr]
    finally:
        await clearing.aclose()
        await reading.aclose()


def test_a_failure_makes_the_next_read_fetch_the_version(
    own_memcached: MemcachedServer, prefix: str
) -> None:
    """A server that failed may have restarted empty (another instance then starts a new
    namespace): after a failure the next read asks for the version again, however recently it
    was confirmed."""
    layer = SyncMemcachedLayer(
        servers=own_memcached.address, prefix=prefix, version_reuse=60, timeout=1.0
    )
    try:
        layer.set("k", entry("old"), 60)
        assert layer.get("k").value == "old"  # type: ignore[union-attr]
        own_memcached.kill()
        with pytest.raises(CacheLayerError):
            layer.get("k")
        own_memcached.start()
        other = SyncMemcachedLayer(servers=own_memcached.address, prefix=prefix)
        try:
            other.set("k", entry("new"), 60)  # a new namespace, from the clock
            deadline = time.monotonic() + DEADLINE
            found: Any = None
            while time.monotonic() < deadline:
                try:
                    found = layer.get("k")
                    break
                except CacheLayerError:  # the pool's dead connections, one by one
                    continue
            assert found is not None
            assert found.value == "new"
        finally:
            other.close()
    finally:
        layer.close()


@pytest.mark.parametrize("bad", [-1, -0.5, math.inf, math.nan, True, "1", None])
def test_version_reuse_is_checked(memcached: MemcachedServer, bad: Any) -> None:
    for cls in (MemcachedLayer, SyncMemcachedLayer):
        with pytest.raises(ValueError, match="version_reuse"):
            cls(servers=memcached.address, version_reuse=bad)
