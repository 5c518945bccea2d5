"""A killed memcached under graceful degradation: nothing raises, reads fall through to the
fetcher, the writes it missed are remembered and replayed once the server is back (the stack
replays a missed write as the removal of the key, so no instance reads an older value there),
then it is back in service. A real process, killed with SIGKILL and started again (empty) on
the same port; every wait is bounded polling."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from _memcached_server import MemcachedServer
from layercache import CacheStack, Entry, MemoryLayer, SyncCacheStack
from layercache._exceptions import CacheLayerError
from layercache.memcached import MemcachedLayer, SyncMemcachedLayer

RETRY_AFTER = 0.3
DEADLINE = 10.0


def memcached_status(cache: Any) -> Any:
    return next(s for s in cache.get_stats().layers if s.name == "memcached")


def stale(value: str) -> Entry:
    """An entry another instance might have written to the restarted server."""
    now = time.time()
    return Entry(value, now, now + 600)


async def test_killed_server_degrades_then_recovers(
    own_memcached: MemcachedServer, prefix: str
) -> None:
    layer = MemcachedLayer(servers=own_memcached.address, prefix=prefix, timeout=1.0)
    direct = MemcachedLayer(servers=own_memcached.address, prefix=prefix, timeout=1.0)
    cache = CacheStack(
        [MemoryLayer(ttl=60), layer], graceful_degradation={"retry_after": RETRY_AFTER}
    )
    fetched: list[str] = []

    def fetcher(key: str) -> Any:
        async def fetch() -> str:
            fetched.append(key)
            return f"v:{key}"

        return fetch

    try:
        assert await cache.get("before", fetcher("before")) == "v:before"
        own_memcached.kill()

        # Reads fall through to the fetcher; the write of its value to memcached is skipped.
        assert await asyncio.wait_for(cache.get("during", fetcher("during")), 5) == "v:during"
        assert fetched == ["before", "during"]
        assert memcached_status(cache).degraded_until is not None
        # Writes while down: no exception, remembered for replay.
        await asyncio.wait_for(cache.set("written", "while-down"), 5)
        await asyncio.wait_for(cache.delete("before"), 5)
        assert memcached_status(cache).pending_replay >= 1
        # The layer itself does fail (the stack absorbed it).
        with pytest.raises(CacheLayerError):
            await direct.get("written")

        own_memcached.start()  # empty, same port
        # Another instance writes older values of the keys this stack changed while down.
        await direct.set("written", stale("older"), 600)
        await direct.set("before", stale("older"), 600)
        deadline = time.monotonic() + DEADLINE
        probes = 0
        while memcached_status(cache).degraded_until is not None:
            assert time.monotonic() < deadline, "memcached layer did not recover"
            probes += 1  # a new key each time: an L1 hit never reaches the layer
            await cache.get(f"probe:{probes}", fetcher("probe"))
            await asyncio.sleep(0.05)
        assert memcached_status(cache).pending_replay == 0
        # The replay removed them: no instance reads the older values from memcached.
        assert await direct.get("written") is None
        assert await direct.get("before") is None
        assert await cache.get("written") == "while-down"
        # Back in service: values reach memcached again.
        await cache.set("after", "ok")
        assert (await direct.get("after")).value == "ok"  # type: ignore[union-attr]
    finally:
        await cache.aclose()
        await direct.aclose()


def test_sync_stack_killed_server_degrades_then_recovers(
    own_memcached: MemcachedServer, prefix: str
) -> None:
    direct = SyncMemcachedLayer(servers=own_memcached.address, prefix=prefix, timeout=1.0)
    cache = SyncCacheStack(
        [MemoryLayer(ttl=60), MemcachedLayer(servers=own_memcached.address, prefix=prefix)],
        graceful_degradation={"retry_after": RETRY_AFTER},
    )
    try:
        cache.set("a", 1)
        own_memcached.kill()
        assert cache.get("b", lambda: 2) == 2
        cache.set("c", 3)
        assert memcached_status(cache).degraded_until is not None
        own_memcached.start()
        direct.set("c", stale("older"), 600)
        deadline = time.monotonic() + DEADLINE
        probes = 0
        while memcached_status(cache).degraded_until is not None:
            assert time.monotonic() < deadline, "memcached layer did not recover"
            probes += 1
            cache.get(f"probe:{probes}", lambda: 0)
            time.sleep(0.05)
        assert memcached_status(cache).pending_replay == 0
        assert direct.get("c") is None  # replayed: the older value is gone
        assert cache.get("c") == 3
        cache.set("d", 4)
        assert direct.get("d").value == 4  # type: ignore[union-attr]
    finally:
        cache.close()
        direct.close()


async def test_without_degradation_the_failure_is_a_cache_layer_error(
    own_memcached: MemcachedServer, prefix: str
) -> None:
    layer = MemcachedLayer(servers=own_memcached.address, prefix=prefix, timeout=1.0)
    try:
        own_memcached.kill()
        for call in (layer.get("k"), layer.ping(), layer.clear(), layer.get_many(["a", "b"])):
            with pytest.raises(CacheLayerError) as caught:
                await call
            assert caught.value.layer == "memcached"
            assert isinstance(caught.value.__cause__, OSError)
    finally:
        await layer.aclose()
