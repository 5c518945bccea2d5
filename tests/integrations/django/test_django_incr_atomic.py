"""``incr``/``decr`` of LayerCacheBackend are atomic across processes on a real redis-server.

Two backends on one server stand for two processes (each has its own memory layer and Redis
clients); a last test runs real processes.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django_support import FakeClock, in_threads

from layercache.integrations.django import LayerCacheBackend

pytestmark = pytest.mark.redis

THREADS = 8
PER_THREAD = 100


def _backend(url: str, clock: FakeClock, process: int = 0) -> LayerCacheBackend:
    # Equal settings share one engine per process: a distinct MEMORY_MAX_SIZE makes each
    # backend stand for another process.
    options = {
        "CLOCK": clock,
        "PREFIX": "dj:",
        "MEMORY_TTL": 30,
        "MEMORY_MAX_SIZE": 10_000 + process,
    }
    return LayerCacheBackend(url, {"TIMEOUT": 300, "OPTIONS": options})


@pytest.fixture
def backends(redis_clean: Any, clock: FakeClock) -> Iterator[list[LayerCacheBackend]]:
    made = [_backend(redis_clean.url, clock, process=i) for i in range(2)]
    yield made
    for backend in made:
        backend.shutdown()


@pytest.fixture
def raw(redis_sync_client: Any) -> Any:
    """A plain redis-py client on the same server, to look behind the backend."""
    return redis_sync_client


def test_threads_across_two_backends_lose_no_increment(
    backends: list[LayerCacheBackend], raw: redis.Redis
) -> None:
    one, two = backends
    one.set("n", 0, timeout=300, tags=["counters"])

    def work(i: int) -> list[int]:
        backend = backends[i % 2]
        return [backend.incr("n") for _ in range(PER_THREAD)]

    results = in_threads(THREADS, work)
    total = THREADS * PER_THREAD
    # Every increment saw a distinct previous value: none was lost or applied twice.
    assert sorted(v for r in results for v in r) == list(range(1, total + 1))
    assert one.get("n") == total
    assert two.get("n") == total
    # The expiry and the tags survived the read-modify-write cycles.
    assert 0 < raw.pttl("dj::1:n") <= 300_000
    assert one._engine.stack.inspect(":1:n").tags == ("counters",)
    assert one.invalidate_by_tag("counters") == 1
    gone = raw.get("dj::1:n")  # a delete leaves a tombstone (\xc1LT...), read as absent
    assert gone is None or gone.startswith(b"\xc1LT")


async def test_async_gather_across_two_backends(
    backends: list[LayerCacheBackend], raw: redis.Redis
) -> None:
    one, two = backends
    await one.aset("n", 10, timeout=None)

    async def work(i: int) -> list[int]:
        backend = backends[i % 2]
        return [await backend.aincr("n") for _ in range(PER_THREAD)]

    try:
        results = await asyncio.gather(*(work(i) for i in range(THREADS)))
        total = 10 + THREADS * PER_THREAD
        assert await one.aget("n") == total
        assert await two.aget("n") == total
        assert sorted(v for r in results for v in r) == list(range(11, total + 1))
        assert raw.pttl("dj::1:n") == -1  # timeout=None stays forever
    finally:
        for backend in backends:
            await backend.ashutdown()


def test_missing_expired_and_foreign_values(
    backends: list[LayerCacheBackend], clock: FakeClock, raw: redis.Redis
) -> None:
    one, two = backends
    with pytest.raises(ValueError, match="not found"):
        one.incr("nope")
    with pytest.raises(ValueError, match="not found"):
        two.decr("nope")
    one.set("e", 1, timeout=100)
    assert two.decr("e", 3) == -2
    clock.now += 101  # past the Django timeout, though Redis's own clock has not moved
    with pytest.raises(ValueError, match="not found"):
        two.incr("e")
    # A value only one's memory still holds (deleted in Redis by another process) is gone.
    one.set("m", 1)
    raw.delete("dj::1:m")
    with pytest.raises(ValueError, match="not found"):
        one.incr("m")
    assert one.get("m") is None
    raw.set("dj::1:foreign", b"not an entry")
    with pytest.raises(ValueError, match="not found"):
        one.incr("foreign")
    one.set("s", "text")
    with pytest.raises(TypeError):
        one.incr("s")
    assert two.get("s") == "text"


async def test_async_missing_key(backends: list[LayerCacheBackend]) -> None:
    one, _ = backends
    try:
        with pytest.raises(ValueError, match="not found"):
            await one.aincr("nope")
        await one.aset("k", 5)
        assert await one.adecr("k", 2) == 3
        assert one.get("k") == 3  # the sync view agrees (memory copy dropped)
    finally:
        await one.ashutdown()


_WORKER = textwrap.dedent(
    """
    import sys
    from django.conf import settings
    url, count, secret_key = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    # Values are pickles signed with a key derived from SECRET_KEY: the parent's, to share them.
    settings.configure(SECRET_KEY=secret_key)
    from layercache.integrations.django import LayerCacheBackend

    backend = LayerCacheBackend(url, {"OPTIONS": {"PREFIX": "dj:"}})
    sys.stdin.readline()  # start together
    for _ in range(count):
        backend.incr("shared")
    backend.shutdown()
    """
)


def test_real_processes(redis_clean: Any, clock: FakeClock, tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    backend = _backend(redis_clean.url, clock)
    try:
        backend.set("shared", 0, timeout=None)
        procs = [
            subprocess.Popen(
                [sys.executable, str(script), redis_clean.url, "200", settings.SECRET_KEY],
                stdin=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for _ in range(4)
        ]
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err.decode()
        clock.now += 31  # past MEMORY_TTL: this backend's memory copy of 0 is gone
        assert backend.get("shared") == 800
    finally:
        backend.shutdown()
