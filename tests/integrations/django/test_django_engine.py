"""One engine per process and configuration: what every thread's (and every asyncio
context's) ``LayerCacheBackend`` shares, and its lifecycle.

Django's ``caches`` builds one backend instance per thread; these tests use it (under
``override_settings``) or build the instances directly, as it does.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import caches
from django.test import override_settings
from django_support import in_threads

from layercache.integrations import _django_engine as registry
from layercache.integrations.django import LayerCacheBackend

BACKEND = "layercache.integrations.django.LayerCacheBackend"
THREADS = 8
PER_THREAD = 200


def _bus_threads(channel: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"layercache-bus:{channel}"]


@pytest.fixture
def channel(request: pytest.FixtureRequest) -> str:
    return f"djeng:{request.node.name}"


@pytest.fixture
def redis_caches(redis_clean: Any, channel: str) -> Iterator[dict[str, Any]]:
    """``CACHES`` with a Redis LOCATION and the invalidation bus, active in Django's handler."""
    entry = {
        "BACKEND": BACKEND,
        "LOCATION": redis_clean.url,
        "KEY_PREFIX": "eng",
        "OPTIONS": {
            "PREFIX": "djeng:",
            "MEMORY_TTL": 300,
            "INVALIDATION_BUS": {"CHANNEL": channel, "SIGNING_SECRET": "engine-secret"},
        },
    }
    with override_settings(CACHES={"default": entry}):
        try:
            yield entry
        finally:
            caches["default"].shutdown()
    assert _bus_threads(channel) == []


@pytest.mark.redis
def test_threads_share_values_memory_and_one_subscription(
    redis_caches: dict[str, Any], channel: str
) -> None:
    main = caches["default"]
    main.set("greeting", "hello")

    def work(i: int) -> tuple[Any, Any, Any]:
        backend = caches["default"]  # this thread's own instance, as Django makes it
        backend.set(f"k{i}", i)
        return backend, backend._engine, backend.get("greeting")

    # The instances themselves are kept (an id alone could be reused by the next thread's
    # instance once a finished thread's one is freed).
    results = in_threads(THREADS, work)
    instances = {id(instance) for instance, _, _ in results}
    assert len(instances | {id(main)}) == THREADS + 1  # one instance per thread
    assert all(engine is main._engine for _, engine, _ in results)
    assert [value for _, _, value in results] == ["hello"] * THREADS
    # Every thread's writes are in the one memory layer, and the subscription is the process's.
    memory = main._engine.memory
    assert all(memory.get(main._key(f"k{i}", None)) is not None for i in range(THREADS))
    assert main.get_many([f"k{i}" for i in range(THREADS)]) == {f"k{i}": i for i in range(THREADS)}
    assert len(_bus_threads(channel)) == 1


def test_memory_only_threads_share_values_and_incr_is_atomic() -> None:
    entry = {"BACKEND": BACKEND, "LOCATION": "", "OPTIONS": {"MEMORY_MAX_SIZE": 4_321}}
    with override_settings(CACHES={"default": entry}):
        main = caches["default"]
        try:
            main.set("hits", 0)

            def work(i: int) -> Any:
                backend = caches["default"]
                for _ in range(PER_THREAD):
                    backend.incr("hits")
                return backend  # kept alive: a freed instance's id can be reused

            assert len({id(backend) for backend in in_threads(THREADS, work)}) == THREADS
            assert main.get("hits") == THREADS * PER_THREAD
        finally:
            main.shutdown()


def test_equal_settings_share_an_engine_different_objects_do_not() -> None:
    class Clock:
        def __call__(self) -> float:
            return 1_700_000_000.0

    clock = Clock()
    one = LayerCacheBackend("", {"KEY_PREFIX": "a", "OPTIONS": {"CLOCK": clock, "MEMORY_TTL": 9}})
    two = LayerCacheBackend("", {"KEY_PREFIX": "b", "OPTIONS": {"MEMORY_TTL": 9, "CLOCK": clock}})
    other = LayerCacheBackend("", {"OPTIONS": {"CLOCK": Clock(), "MEMORY_TTL": 9}})
    try:
        assert one._engine is two._engine  # KEY_PREFIX is per instance, the engine is not
        assert other._engine is not one._engine
        one.set("k", 1)
        assert two.get("k") is None  # another key prefix: another key in the same engine
    finally:
        one.shutdown()
        other.shutdown()


@pytest.mark.redis
async def test_async_side_per_event_loop(redis_clean: Any) -> None:
    params = {"OPTIONS": {"PREFIX": "djeng-async:", "MEMORY_MAX_SIZE": 777}}
    one = LayerCacheBackend(redis_clean.url, params)
    two = LayerCacheBackend(redis_clean.url, params)
    engine = one._engine
    assert two._engine is engine
    assert engine._sides.get(asyncio.get_running_loop()) is None  # built on first a* use only
    try:
        await one.aset("k", "v")
        side = engine.async_side()
        assert await two.aget("k") == "v"
        assert two._engine.async_side() is side  # one CacheStack on this loop
        assert side.stack is not engine.stack

        def other_loop() -> tuple[Any, Any, Any]:
            async def work() -> tuple[Any, Any, Any]:
                value = await two.aget("k")
                mine = two._engine.async_side()
                await two._engine.aclose_side()  # its connections belong to this loop
                return value, mine.stack, mine.targets["redis0"].client.current()

            return asyncio.run(work())

        value, stack, client = await asyncio.to_thread(other_loop)
        assert value == "v"
        assert stack is not side.stack
        mine = side.targets["redis0"].client.current()
        assert client is not mine  # a redis.asyncio client per loop
    finally:
        await one.ashutdown()
    assert engine.closed
    assert engine._sides.get(asyncio.get_running_loop()) is None


@pytest.mark.redis
def test_shutdown_from_one_instance_then_use_from_another(
    redis_caches: dict[str, Any], channel: str
) -> None:
    main = caches["default"]
    main.set("k", 1)
    [(worker, engine)] = in_threads(1, lambda i: (caches["default"], caches["default"]._engine))
    assert worker is not main
    assert engine is main._engine
    assert len(_bus_threads(channel)) == 1

    main.shutdown()
    assert engine.closed
    assert _bus_threads(channel) == []
    # The other instance gets a fresh engine on its next call (Redis still has the value).
    assert worker.get("k") == 1
    assert worker._engine is not engine
    assert len(_bus_threads(channel)) == 1
    assert main.get("k") == 1  # and so does the one that shut down
    assert main._engine is worker._engine
    # An instance still holding a closed engine shuts down the live one too.
    assert engine.closed
    [stale] = in_threads(1, lambda i: caches["default"])
    stale._engine = engine
    stale.shutdown()
    assert main._engine.closed
    assert _bus_threads(channel) == []


def test_registry_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "engines", {})
    monkeypatch.setattr(registry, "MAX_ENGINES", 2)
    made = [LayerCacheBackend("", {"OPTIONS": {"MEMORY_MAX_SIZE": 100 + i}}) for i in range(3)]
    first, *rest = (backend._engine for backend in made)
    try:
        assert first.closed  # the least recently created one made room
        assert list(registry.engines.values()) == rest
        made[0].set("k", 1)  # its backend still works, on a new engine
        assert made[0].get("k") == 1
        assert rest[0].closed
    finally:
        for backend in made:
            backend.shutdown()
    assert registry.engines == {}


def test_a_finished_loops_side_is_forgotten() -> None:
    # async_to_sync (an async view under WSGI) runs each call on a new event loop.
    backend = LayerCacheBackend("", {"OPTIONS": {"MEMORY_MAX_SIZE": 555}})
    # Held here as a Redis side's connections hold them: only pruning can drop their sides.
    loops: list[asyncio.AbstractEventLoop] = []
    stacks: list[Any] = []

    async def call(i: int) -> None:
        await backend.aset("k", i)
        loops.append(asyncio.get_running_loop())
        stacks.append(backend._engine.async_side().stack)

    try:
        for i in range(3):
            asyncio.run(call(i))
        assert len(set(map(id, stacks))) == 3  # one asyncio side per loop
        assert list(backend._engine._sides) == [loops[-1]]  # the finished ones are forgotten
        assert backend.get("k") == 2
    finally:
        backend.shutdown()
