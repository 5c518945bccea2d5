"""The clients under the memcached layer: a hung server (SIGSTOP) fails within ``timeout`` and
leaves no half-read connection behind; the asyncio layer built from ``servers=`` serves any
number of event loops (one client per loop, closed when the loop shuts down)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _memcached_server import MemcachedServer
from layercache import CacheStack, Entry, MemoryLayer
from layercache._exceptions import CacheLayerError
from layercache.memcached import MemcachedLayer, SyncMemcachedLayer

TIMEOUT = 0.3


def entry(value: Any) -> Entry:
    now = time.time()
    return Entry(value, now, now + 600)


def stop(server: MemcachedServer) -> None:
    """SIGSTOP the server and wait (bounded) until every one of its threads is stopped: the
    signal is delivered asynchronously, and a worker thread still running would answer."""
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    tasks = Path(f"/proc/{server.pid}/task")
    deadline = time.monotonic() + 5
    while True:
        states = [
            (task / "stat").read_text().rsplit(")", 1)[1].split()[0] for task in tasks.iterdir()
        ]
        if all(state in ("T", "t") for state in states):
            return
        assert time.monotonic() < deadline, f"memcached did not stop: {states}"
        time.sleep(0.005)


@pytest.fixture
def paused(own_memcached: MemcachedServer) -> Iterator[MemcachedServer]:
    """A server this test may SIGSTOP; resumed (SIGCONT) afterwards whatever happens."""
    yield own_memcached
    if own_memcached.pid is not None:
        os.kill(own_memcached.pid, signal.SIGCONT)


async def test_hung_server_times_out_then_recovers(paused: MemcachedServer, prefix: str) -> None:
    layer = MemcachedLayer(servers=paused.address, prefix=prefix, timeout=TIMEOUT)
    try:
        for index in range(20):
            await layer.set(f"k:{index}", entry(index), 60)
        assert paused.pid is not None
        stop(paused)
        began = time.monotonic()
        with pytest.raises(CacheLayerError) as caught:
            await layer.get_many([f"k:{index}" for index in range(20)])
        assert isinstance(caught.value.__cause__, TimeoutError)
        assert time.monotonic() - began < TIMEOUT * 5
        os.kill(paused.pid, signal.SIGCONT)
        # The connection cancelled mid-reply was dropped: every read answers its own keys.
        for _ in range(3):
            got = await layer.get_many([f"k:{index}" for index in range(20)])
            assert [e.value if e else None for e in got] == list(range(20))
            assert (await layer.get("k:3")).value == 3  # type: ignore[union-attr]
    finally:
        await layer.aclose()


def test_sync_hung_server_times_out_then_recovers(paused: MemcachedServer, prefix: str) -> None:
    layer = SyncMemcachedLayer(servers=paused.address, prefix=prefix, timeout=TIMEOUT)
    try:
        for index in range(20):
            layer.set(f"k:{index}", entry(index), 60)
        assert paused.pid is not None
        stop(paused)
        began = time.monotonic()
        with pytest.raises(CacheLayerError):
            layer.get_many([f"k:{index}" for index in range(20)])
        assert time.monotonic() - began < TIMEOUT * 5
        os.kill(paused.pid, signal.SIGCONT)
        for _ in range(3):
            got = layer.get_many([f"k:{index}" for index in range(20)])
            assert [e.value if e else None for e in got] == list(range(20))
    finally:
        layer.close()


def test_one_layer_serves_several_event_loops(memcached: MemcachedServer, prefix: str) -> None:
    """A module-level stack used by several ``asyncio.run()`` calls (and a thread's loop):
    each loop gets its own connections, closed when it shuts down (no warning escapes)."""
    layer = MemcachedLayer(servers=memcached.address, prefix=prefix)
    cache = CacheStack([MemoryLayer(ttl=60), layer])

    async def use(round_: int) -> Any:
        await cache.set(f"r:{round_}", round_)
        return [await layer.get(f"r:{r}") for r in range(round_ + 1)]

    for round_ in range(3):
        got = asyncio.run(use(round_))
        assert [e.value for e in got] == list(range(round_ + 1))

    import threading

    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(asyncio.run(use(3))))
    thread.start()
    thread.join(10)
    assert [e.value for e in results[0]] == [0, 1, 2, 3]
    assert len(layer._client._per_loop) == 0  # every loop's clients were closed at its shutdown

    async def close() -> None:
        await cache.aclose()

    asyncio.run(close())


def test_sync_twin_under_threads(memcached: MemcachedServer, prefix: str) -> None:
    """Eight threads share one sync layer (pooled connections): every read answers its own key."""
    from concurrent.futures import ThreadPoolExecutor

    layer = SyncMemcachedLayer(servers=memcached.address, prefix=prefix, max_connections=4)

    def work(worker: int) -> list[Any]:
        seen = []
        for index in range(100):
            key = f"w{worker}:{index}"
            layer.set(key, entry([worker, index]), 60)
            got = layer.get_many([key, f"w{worker}:{index // 2}"])
            seen.append([e.value if e else None for e in got])
        return seen

    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(work, range(8)))
        for worker, seen in enumerate(results):
            for index, (own, half) in enumerate(seen):
                assert own == [worker, index]
                assert half == [worker, index // 2]
    finally:
        layer.close()


async def test_a_caller_cancelled_during_a_call_is_cancelled_not_timed_out(
    paused: MemcachedServer, prefix: str
) -> None:
    """The per-loop watchdog turns only its own cancellations into ``TimeoutError``: a caller
    cancelled while its read waits on a hung server gets ``CancelledError``, and the layer
    keeps working afterwards."""
    layer = MemcachedLayer(servers=paused.address, prefix=prefix, timeout=5.0)
    try:
        await layer.set("k", entry(1), 60)
        assert paused.pid is not None
        stop(paused)
        reading = asyncio.ensure_future(layer.get("k"))
        # Wait (bounded) until the read is in flight under the watchdog.
        in_flight = layer._client._state().deadlines._calls  # type: ignore[union-attr]
        deadline = time.monotonic() + 5
        while not in_flight:
            assert time.monotonic() < deadline, "the read never started"
            await asyncio.sleep(0.005)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        os.kill(paused.pid, signal.SIGCONT)
        assert (await layer.get("k")).value == 1  # type: ignore[union-attr]
    finally:
        await layer.aclose()


async def test_calls_schedule_no_timer_each(
    memcached: MemcachedServer, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each call's timeout is kept by the loop's watchdog, not by a timer of its own
    (``asyncio.timeout()`` scheduled one per call, and cancelled it): 50 reads arm the
    watchdog's timer once or twice, and it stops when no call is in flight."""
    layer = MemcachedLayer(servers=memcached.address, prefix=prefix, timeout=5.0)
    loop = asyncio.get_running_loop()
    try:
        await layer.set("k", entry(1), 60)
        timers: list[float] = []
        call_at = loop.call_at

        def counting_call_at(when: float, callback: Any, *args: Any, **kwargs: Any) -> Any:
            timers.append(when)
            return call_at(when, callback, *args, **kwargs)

        monkeypatch.setattr(loop, "call_at", counting_call_at)
        began = time.monotonic()
        for _ in range(50):
            assert (await layer.get("k")).value == 1  # type: ignore[union-attr]
        elapsed = time.monotonic() - began
        assert len(timers) < 50
        deadlines = layer._client._state().deadlines  # type: ignore[union-attr]
        assert len(timers) <= elapsed / deadlines.tick + 2
        deadline = time.monotonic() + 5
        while deadlines._handle is not None:  # idle: the watchdog's timer ends
            assert time.monotonic() < deadline
            await asyncio.sleep(deadlines.tick)
    finally:
        await layer.aclose()
