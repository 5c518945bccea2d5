"""One stack, several event loops (issue 10, point 2).

redis.asyncio clients belong to the loop that opened their connections, so a module-level
``CacheStack`` with ``RedisLayer(url=...)`` (the README's shape) failed on every second
``asyncio.run()`` ("Event loop is closed", "attached to a different loop"). Components built
from ``url=`` now keep one client per loop, closed when that loop shuts down; the bus
subscribes again on the next loop; the write-behind flusher moves to the next loop too.

These tests are sync functions that run their own loops (``asyncio.run``, threads).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from _redis_server import RedisServer
from layercache import CacheStack, MemoryLayer
from layercache.redis import (
    RedisInvalidationBus,
    RedisLayer,
    RedisSingleFlightCoordinator,
    RedisTagIndex,
    SyncRedisTagIndex,
)
from polling import eventually

pytestmark = pytest.mark.redis


@pytest.fixture
def admin(redis_clean: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(host=redis_clean.host, port=redis_clean.port)
    try:
        yield client
    finally:
        client.close()


def connections(admin: redis.Redis) -> int:
    """Clients connected to the server, this admin connection excluded."""
    return len(admin.client_list()) - 1


def readme_stack(url: str, memory: MemoryLayer | None = None) -> CacheStack:
    """The README's shape: every Redis component built from the URL."""
    return CacheStack(
        [memory or MemoryLayer(ttl=60), RedisLayer(url=url, ttl=3600)],
        invalidation_bus=RedisInvalidationBus(url=url, channel="loops:inv"),
        single_flight_coordinator=RedisSingleFlightCoordinator(url=url, prefix="loops:sf"),
        tag_index=RedisTagIndex(url=url, prefix="loops:tags"),
    )


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        await asyncio.sleep(0.005)


async def scenario(
    cache: CacheStack, memory: MemoryLayer, url: str, name: str, *, probe: bool = False
) -> None:
    """Everything the README shows, plus a remote delete arriving over the bus.

    ``probe``: with loops in several threads, the subscriber runs on one of them; when that
    loop ends, another re-subscribes at its next miss, so the wait makes one.
    """
    calls = 0

    def fetch() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"name": name}

    results = await asyncio.gather(
        *(cache.get(f"user:{name}", fetch, tags=["users", f"t:{name}"]) for _ in range(50))
    )
    assert results == [{"name": name}] * 50
    assert calls == 1
    assert await cache.get_or_raise(f"user:{name}") == {"name": name}
    await cache.invalidate_by_tag(f"t:{name}")
    assert await cache.get(f"user:{name}") is None
    await cache.set(f"shared:{name}", 1, tags=["shared"])
    assert memory.get(f"shared:{name}") is not None
    # Another instance deletes the key: this instance's bus drops its L1 copy.
    peer = readme_stack(url)
    try:
        await peer.delete(f"shared:{name}")
    finally:
        await peer.aclose()

    def dropped() -> bool:
        return memory.get(f"shared:{name}") is None

    deadline = time.monotonic() + 10.0
    while not dropped():
        assert time.monotonic() < deadline, "the remote delete was not applied within 10s"
        if probe:
            assert await cache.get(f"probe:{name}") is None
        await asyncio.sleep(0.005)


def test_readme_shape_across_three_asyncio_runs(redis_clean: RedisServer) -> None:
    memory = MemoryLayer(ttl=60)
    cache = readme_stack(redis_clean.url, memory)  # built outside any loop, like a module global
    for run in range(3):
        asyncio.run(scenario(cache, memory, redis_clean.url, f"run{run}"))
    asyncio.run(cache.aclose())


def test_two_threads_each_running_its_own_loop(redis_clean: RedisServer) -> None:
    memory = MemoryLayer(ttl=60)
    cache = readme_stack(redis_clean.url, memory)
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def worker(thread: int) -> None:
        start.wait()
        try:
            for run in range(3):
                asyncio.run(
                    scenario(cache, memory, redis_clean.url, f"thread{thread}-{run}", probe=True)
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    asyncio.run(cache.aclose())


def test_a_finished_loop_closes_its_connections(
    redis_clean: RedisServer, admin: redis.Redis
) -> None:
    memory = MemoryLayer(ttl=60)
    cache = readme_stack(redis_clean.url, memory)
    layer: Any = cache.layers[1]
    baseline = connections(admin)
    during: list[int] = []

    async def use() -> None:
        await scenario(cache, memory, redis_clean.url, "leak")
        during.append(connections(admin))

    for _ in range(3):
        asyncio.run(use())
        # asyncio.run closed the loop's clients before it returned: nothing is left open.
        eventually(lambda: connections(admin) == baseline, what="connections closed")
    assert during
    assert min(during) > baseline
    assert layer.client.loops == 0
    asyncio.run(cache.aclose())


def test_clients_of_at_most_max_loops_are_kept(
    redis_clean: RedisServer, admin: redis.Redis
) -> None:
    layer = RedisLayer(url=redis_clean.url)
    pool: Any = layer.client
    pool.max_loops = 2
    baseline = connections(admin)
    loops = [asyncio.new_event_loop() for _ in range(4)]

    async def drain() -> None:
        # The closes scheduled on this loop when its client was evicted.
        current = asyncio.current_task()
        await asyncio.gather(*(t for t in asyncio.all_tasks() if t is not current))

    try:
        for loop in loops:
            assert loop.run_until_complete(layer.get("k")) is None
            assert pool.loops <= 2
        for loop in loops:
            loop.run_until_complete(drain())
        # The two newest loops keep one connection each; the evicted ones closed theirs.
        eventually(lambda: connections(admin) == baseline + 2, what="evicted clients closed")
    finally:
        for loop in loops:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
    eventually(lambda: connections(admin) == baseline, what="every client closed")
    assert pool.loops == 0


def test_a_client_passed_in_is_used_as_given(redis_clean: RedisServer) -> None:
    async def run() -> None:
        client = redis.asyncio.Redis.from_url(redis_clean.url)
        layer = RedisLayer(client=client)
        assert layer.client is client
        assert await layer.get("k") is None
        await layer.aclose()  # not the layer's to close
        assert await client.ping()
        await client.aclose()

    asyncio.run(run())


def test_write_behind_moves_to_the_next_loop(redis_clean: RedisServer) -> None:
    reader = RedisLayer(url=redis_clean.url)
    cache = CacheStack(
        [MemoryLayer(), RedisLayer(url=redis_clean.url)],
        write_strategy="write-behind",
        write_behind={"flush_interval": 0.01},
    )

    async def write(key: str) -> None:
        await cache.set(key, key)
        await wait_until(lambda: cache_pending(cache) == 0, f"{key} flushed")

    def cache_pending(stack: CacheStack) -> int:
        behind: Any = stack._writer.behind
        return len(behind) + len(behind._inflight)

    for run in range(3):
        asyncio.run(write(f"wb{run}"))

    async def check() -> None:
        for run in range(3):
            assert await reader.get(f"wb{run}") is not None
        await reader.aclose()
        await cache.aclose()

    asyncio.run(check())


def test_coordination_components_take_url_keyword_only(redis_clean: RedisServer) -> None:
    for build in (
        lambda: RedisTagIndex(),
        lambda: RedisSingleFlightCoordinator(),
        lambda: RedisInvalidationBus(),
    ):
        with pytest.raises(ValueError, match="exactly one of"):
            build()
    with pytest.raises(ValueError, match="exactly one of"):
        RedisTagIndex(redis.asyncio.Redis.from_url(redis_clean.url), url=redis_clean.url)
    index = SyncRedisTagIndex(url=redis_clean.url, prefix="loops:sync")
    index.record("k", ["a"])
    assert index.keys_for_tags(["a"]) == {"k"}
    index.close()


def test_components_on_a_url_layers_client_across_runs(redis_clean: RedisServer) -> None:
    """``RedisLayer(url=...).client`` (one client per loop) shared with the components, the
    shape the Django and Flask integrations build."""
    layer = RedisLayer(url=redis_clean.url)
    memory = MemoryLayer(ttl=60)
    cache = CacheStack(
        [memory, layer],
        invalidation_bus=RedisInvalidationBus(layer.client, channel="loops:shared"),
        single_flight_coordinator=RedisSingleFlightCoordinator(
            client=layer.client, prefix="loops:shared-sf"
        ),
        tag_index=RedisTagIndex(client=layer.client, prefix="loops:shared-tags"),
    )

    async def run(name: str) -> None:
        assert await cache.get(name, lambda: name, tags=["a"]) == name
        assert await cache.invalidate_by_tag("a") == 1
        assert memory.get(name) is None
        bus: Any = cache._link.bus
        assert bus.is_subscribed

    for run_number in range(3):
        asyncio.run(run(f"shared{run_number}"))
    asyncio.run(cache.aclose())
