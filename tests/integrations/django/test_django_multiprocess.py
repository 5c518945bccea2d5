"""LayerCacheBackend across processes: INVALIDATION_BUS, TAG_INDEX and SINGLE_FLIGHT on a real
redis-server (tests/conftest.py).

Two backends in one process stand for two processes: each has its own memory layer, its own
Redis clients and its own bus. Backends with equal settings share one engine per process, so
each "process" gets its own ``SOURCE_ID`` (as two processes have). One test runs a real second
process.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django_support import eventually

from layercache.integrations.django import LayerCacheBackend

pytestmark = pytest.mark.redis

SECRET = "bus-test-secret"
# Long enough that, without the bus, a memory copy outlives every test.
MEMORY_TTL = 300


def _options(channel: str, process: str = "one", **extra: Any) -> dict[str, Any]:
    bus = {"CHANNEL": channel, "SIGNING_SECRET": SECRET, "SOURCE_ID": f"djmp-{process}"}
    return {"PREFIX": "djmp:", "MEMORY_TTL": MEMORY_TTL, "INVALIDATION_BUS": bus, **extra}


def _bus_threads(channel: str) -> list[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith("layercache-bus") and channel in t.name
    ]


@pytest.fixture
def channel(request: pytest.FixtureRequest) -> str:
    return f"djmp:{request.node.name}"


@pytest.fixture
def pair(redis_clean: Any, channel: str) -> Iterator[tuple[LayerCacheBackend, LayerCacheBackend]]:
    one = LayerCacheBackend(redis_clean.url, {"TIMEOUT": 300, "OPTIONS": _options(channel)})
    two = LayerCacheBackend(redis_clean.url, {"TIMEOUT": 300, "OPTIONS": _options(channel, "two")})
    try:
        yield one, two
    finally:
        _shutdown(one, two)


class Heard:
    """The bus messages a backend received from other processes (its stack's events)."""

    def __init__(self, backend: LayerCacheBackend) -> None:
        self.keys: list[list[str]] = []
        backend._engine.stack.on("invalidation", lambda payload: self.keys.append(payload["keys"]))

    def settle(self, count: int) -> None:
        """Wait until ``count`` messages arrived in all (a late one would drop a warmed copy)."""
        assert eventually(lambda: len(self.keys) >= count), self.keys


def _warm(backend: LayerCacheBackend, key: str, expected: Any) -> None:
    """Read ``key`` into ``backend``'s memory layer (the first read also subscribes it)."""
    assert backend.get(key) == expected
    assert backend._engine.memory.get(backend._key(key, None)) is not None


def _shutdown(*backends: LayerCacheBackend) -> None:
    # Each bus thread takes up to one poll interval to stop: stop them side by side.
    threads = [threading.Thread(target=b.shutdown) for b in backends]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads)


def test_set_delete_and_incr_reach_the_other_memory_layer(
    pair: tuple[LayerCacheBackend, LayerCacheBackend],
) -> None:
    one, two = pair
    heard = Heard(two)
    assert two.get("k") is None  # a miss: two subscribes before reading Redis
    one.set("k", 1)
    heard.settle(1)
    _warm(two, "k", 1)
    one.set("k", 2)
    assert eventually(lambda: two.get("k") == 2)

    one.delete("k")
    assert eventually(lambda: two.get("k", "gone") == "gone")

    one.set("n", 10)
    heard.settle(4)
    _warm(two, "n", 10)
    assert one.incr("n", 5) == 15  # a compare-and-set on Redis, announced on the bus
    assert eventually(lambda: two.get("n") == 15)
    assert heard.keys[-1] == [two._key("n", None)]
    assert one.get("n") == 15
    assert two.decr("n") == 14
    assert eventually(lambda: one.get("n") == 14)


def test_clear_and_many_reach_the_other_memory_layer(
    pair: tuple[LayerCacheBackend, LayerCacheBackend],
) -> None:
    one, two = pair
    heard = Heard(two)
    assert two.get_many(["a", "b"]) == {}
    one.set_many({"a": 1, "b": 2})
    heard.settle(1)
    assert two.get_many(["a", "b"]) == {"a": 1, "b": 2}
    _warm(two, "a", 1)
    one.set_many({"a": 10, "b": 20})
    assert eventually(lambda: two.get_many(["a", "b"]) == {"a": 10, "b": 20})
    one.delete_many(["a"])
    assert eventually(lambda: two.get_many(["a", "b"]) == {"b": 20})
    _warm(one, "b", 20)
    two.clear()
    assert eventually(lambda: one.get("b", "gone") == "gone")


def test_invalidate_by_tag_reaches_keys_another_process_stored(
    pair: tuple[LayerCacheBackend, LayerCacheBackend],
) -> None:
    one, two = pair
    heard = Heard(one)
    assert one.get("x") is None
    two.set("p1", "a", tags=["products"])
    two.set("p2", "b", tags=["products", "sale"])
    two.set("other", "c", tags=["users"])
    heard.settle(3)
    _warm(one, "p1", "a")
    _warm(one, "p2", "b")
    _warm(two, "p2", "b")
    # The shared Redis tag index knows two's keys, though one never stored them.
    assert one.invalidate_by_tag("products") == 2
    assert one.get("p1") is None
    assert one.get("p2") is None
    assert eventually(lambda: two._engine.memory.get(two._key("p2", None)) is None)
    assert two.get("p2") is None
    assert one.get("other") == "c"


def test_memory_tag_index_only_knows_its_own_keys(redis_clean: Any, channel: str) -> None:
    one, two = (
        LayerCacheBackend(redis_clean.url, {"OPTIONS": _options(channel, p, TAG_INDEX="memory")})
        for p in ("one", "two")
    )
    try:
        two.set("p", 1, tags=["products"])
        assert one.invalidate_by_tag("products") == 0
        assert two.invalidate_by_tag("products") == 1
    finally:
        _shutdown(one, two)


async def test_async_side_publishes_with_the_sync_identity(
    pair: tuple[LayerCacheBackend, LayerCacheBackend], channel: str
) -> None:
    one, two = pair
    heard_two, heard_one = Heard(two), Heard(one)
    try:
        assert two.get("k") is None
        await one.aset("k", 1)
        heard_two.settle(1)
        _warm(two, "k", 1)
        await one.aset("k", 2)
        assert eventually(lambda: two.get("k") == 2)
        await one.aset("n", 1)
        heard_two.settle(3)
        _warm(two, "n", 1)
        assert await one.aincr("n") == 2
        assert eventually(lambda: two.get("n") == 2)
        # One subscription per backend: the asyncio stack only publishes, as the sync bus.
        assert one._engine.async_side().targets["bus"].source_id == one._engine.bus.source_id
        assert one._engine.bus.source_id != two._engine.bus.source_id
        assert len(_bus_threads(channel)) == 2
        # one's own announcements never come back to it: it only hears two.
        two.set("from-two", "s")
        heard_one.settle(1)
        assert heard_one.keys == [[one._key("from-two", None)]]
        assert one._engine.memory.get(one._key("n", None)) is None  # aincr dropped its own copy
        assert one._engine.memory.get(one._key("k", None)) is not None
    finally:
        await one.ashutdown()
        await two.ashutdown()


def test_shutdown_stops_the_bus_thread(redis_clean: Any, channel: str) -> None:
    backend = LayerCacheBackend(redis_clean.url, {"OPTIONS": _options(channel)})
    backend.get("k")  # subscribes
    assert len(_bus_threads(channel)) == 1
    backend.close()  # Django's per-request call keeps the subscription
    assert len(_bus_threads(channel)) == 1
    backend.shutdown()
    assert _bus_threads(channel) == []


def test_single_flight_fetches_once_across_processes(redis_clean: Any, channel: str) -> None:
    one, two = (
        LayerCacheBackend(redis_clean.url, {"OPTIONS": _options(channel, p, SINGLE_FLIGHT=True)})
        for p in ("one", "two")
    )
    calls: list[str] = []
    started = threading.Event()
    second_fetch = threading.Event()
    results: dict[str, Any] = {}

    def first() -> str:
        calls.append("one")
        started.set()
        # Holds the lock until the other process fetches too (a failure), or for a while.
        second_fetch.wait(timeout=0.5)
        return "value"

    def second() -> str:
        calls.append("two")
        second_fetch.set()
        return "other"

    def run(name: str, backend: LayerCacheBackend, fetch: Callable[[], str]) -> None:
        results[name] = backend.get_or_set("cold", fetch, timeout=60)

    try:
        runner = threading.Thread(target=run, args=("one", one, first))
        runner.start()
        assert started.wait(timeout=5)
        run("two", two, second)
        runner.join(timeout=10)
        assert not runner.is_alive()
        assert calls == ["one"]
        assert results == {"one": "value", "two": "value"}
        assert two.get_or_set("cold", second) == "value"
    finally:
        _shutdown(one, two)


async def test_async_single_flight_fetches_once_across_processes(
    redis_clean: Any, channel: str
) -> None:
    one, two = (
        LayerCacheBackend(redis_clean.url, {"OPTIONS": _options(channel, p, SINGLE_FLIGHT=True)})
        for p in ("one", "two")
    )
    calls: list[int] = []
    second_fetch = threading.Event()

    def fetch() -> str:
        # Called in a worker thread; the first call holds the lock until a second one comes
        # (a failure) or for a while.
        calls.append(1)
        if len(calls) > 1:
            second_fetch.set()
        else:
            second_fetch.wait(timeout=0.5)
        return "value"

    try:
        results = await asyncio.gather(
            one.aget_or_set("cold", fetch, 60), two.aget_or_set("cold", fetch, 60)
        )
        assert results == ["value", "value"]
        assert len(calls) == 1
        assert one.get("cold") == "value"
    finally:
        await one.ashutdown()
        await two.ashutdown()
        _shutdown(one, two)


_CHILD = textwrap.dedent(
    """
    import sys
    import time

    from django.conf import settings

    url, channel, secret, secret_key = sys.argv[1:5]
    settings.configure(
        SECRET_KEY=secret_key,  # the parent's: values are pickles signed with a derived key
        CACHES={
            "default": {
                "BACKEND": "layercache.integrations.django.LayerCacheBackend",
                "LOCATION": url,
                "OPTIONS": {
                    "PREFIX": "djmp:",
                    "MEMORY_TTL": 300,
                    "INVALIDATION_BUS": {"CHANNEL": channel, "SIGNING_SECRET": secret},
                },
            }
        }
    )
    import django

    django.setup()
    from django.core.cache import cache

    print("ready", cache.get("k"), flush=True)  # now in this process's memory layer
    sys.stdin.readline()  # the parent changed k
    deadline = time.monotonic() + 10
    while cache.get("k") == 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    print("seen", cache.get("k"), flush=True)
    cache.set("k", 3)
    print("wrote", flush=True)
    sys.stdin.readline()
    cache.shutdown()
    """
)


@pytest.mark.slow
def test_real_second_process(redis_clean: Any, channel: str, tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    backend = LayerCacheBackend(redis_clean.url, {"OPTIONS": _options(channel)})
    child = subprocess.Popen(
        [sys.executable, str(script), redis_clean.url, channel, SECRET, settings.SECRET_KEY],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        backend.set("k", 1)
        assert child.stdout.readline().split() == ["ready", "1"]
        backend.set("k", 2)
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().split() == ["seen", "2"]
        _warm(backend, "k", 2)
        assert child.stdout.readline().strip() == "wrote"
        assert eventually(lambda: backend.get("k") == 3)
        child.stdin.write("done\n")
        child.stdin.flush()
        _, err = child.communicate(timeout=20)
        assert child.returncode == 0, err
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
        backend.shutdown()


# ---------------------------------------------------------------------- configuration errors


@pytest.mark.parametrize(
    ("location", "options", "message"),
    [
        ("", {"INVALIDATION_BUS": True}, "INVALIDATION_BUS needs a Redis LOCATION"),
        ("", {"TAG_INDEX": "redis"}, "needs a Redis LOCATION"),
        ("", {"SINGLE_FLIGHT": True}, "SINGLE_FLIGHT needs a Redis LOCATION"),
        ("", {"TAG_INDEX": "disk"}, "TAG_INDEX must be 'redis' or 'memory'"),
        ("", {"SINGLE_FLIGHT": "yes"}, "SINGLE_FLIGHT must be True or False"),
        ("", {"INVALIDATION_BUS": "on"}, "INVALIDATION_BUS must be True, False or a dict"),
        ("", {"INVALIDATION_BUS_X": True}, "unknown LayerCacheBackend OPTIONS"),
        ("redis://127.0.0.1:9/0", {"INVALIDATION_BUS": {"SECRET": "s"}}, "SECRET"),
        ("redis://127.0.0.1:9/0", {"INVALIDATION_BUS": {"REPLAY_WINDOW": -1}}, "replay_window"),
    ],
)
def test_invalid_options_are_improperly_configured(
    location: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ImproperlyConfigured, match=message):
        LayerCacheBackend(location, {"OPTIONS": options})


def test_memory_only_defaults_need_no_redis() -> None:
    backend = LayerCacheBackend("", {"OPTIONS": {"TAG_INDEX": "memory", "INVALIDATION_BUS": False}})
    backend.set("k", 1, tags=["t"])
    assert backend.invalidate_by_tag("t") == 1
    backend.shutdown()
