"""The fault-injection proxy itself (tests/_tcp_proxy.py), driven from plain sync tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis
import redis.exceptions

from _redis_server import RedisServer
from _tcp_proxy import TcpProxy

pytestmark = pytest.mark.redis


@pytest.fixture
def client(redis_proxy: TcpProxy) -> Iterator[redis.Redis]:
    """A sync redis-py client through the proxy, without retries (each fault shows at once)."""
    created = redis.Redis(
        host=redis_proxy.host,
        port=redis_proxy.port,
        socket_timeout=0.3,
        socket_connect_timeout=0.3,
        retry=None,
    )
    try:
        yield created
    finally:
        created.close()


def test_forwards_both_ways(client: redis.Redis, redis_clean: RedisServer) -> None:
    assert client.set("a", "1")
    assert redis_clean.command("GET", "a") == b"1"
    assert client.get("a") == b"1"


def test_latency_delays_each_direction(redis_proxy: TcpProxy, client: redis.Redis) -> None:
    assert client.ping()  # connected before the latency starts
    redis_proxy.set_latency(0.1)
    began = time.perf_counter()
    assert client.ping()
    elapsed = time.perf_counter() - began
    assert 0.2 <= elapsed < 0.4, elapsed  # 0.1 s there, 0.1 s back


def test_latency_past_the_client_timeout_times_out(
    redis_proxy: TcpProxy, client: redis.Redis
) -> None:
    assert client.ping()
    redis_proxy.set_latency(0.5)
    began = time.perf_counter()
    with pytest.raises(redis.exceptions.TimeoutError):
        client.ping()
    assert time.perf_counter() - began < 0.45


def test_refuse_resets_current_and_new_connections(
    redis_proxy: TcpProxy, client: redis.Redis
) -> None:
    assert client.ping()
    redis_proxy.cut("refuse")
    assert redis_proxy.active_connections == 0
    began = time.perf_counter()
    with pytest.raises(redis.exceptions.ConnectionError):
        client.ping()
    assert time.perf_counter() - began < 0.2  # no waiting for a timeout
    redis_proxy.restore()
    assert client.ping()


def test_blackhole_hangs_until_the_client_gives_up(
    redis_proxy: TcpProxy, client: redis.Redis
) -> None:
    redis_proxy.cut("blackhole")
    began = time.perf_counter()
    with pytest.raises(redis.exceptions.TimeoutError):
        client.ping()
    assert time.perf_counter() - began >= 0.29
    redis_proxy.restore()
    assert client.ping()


def test_a_stalled_connection_resumes_on_restore(
    redis_proxy: TcpProxy, redis_server: RedisServer
) -> None:
    slow_client = redis.Redis(host=redis_proxy.host, port=redis_proxy.port, socket_timeout=5)
    try:
        assert slow_client.ping()
        redis_proxy.cut("blackhole", close_existing=False)
        results: list[object] = []
        worker = threading.Thread(target=lambda: results.append(slow_client.incr("n")))
        worker.start()
        worker.join(0.3)
        # Stalled, not failed: after 0.3 s the command has neither answered nor errored.
        assert worker.is_alive()
        assert results == []
        redis_proxy.restore()
        worker.join(5)
        assert results == [1]
    finally:
        slow_client.close()


def test_a_stopped_upstream_closes_the_client_connection(
    redis_proxy: TcpProxy, redis_clean: RedisServer, client: redis.Redis
) -> None:
    redis_clean.stop()
    with pytest.raises(redis.exceptions.ConnectionError):
        client.ping()
    redis_clean.start()
    assert client.ping()


def test_reset_clears_every_fault(redis_proxy: TcpProxy, client: redis.Redis) -> None:
    redis_proxy.set_latency(1.0)
    redis_proxy.cut("blackhole")
    redis_proxy.reset()
    assert (redis_proxy.latency, redis_proxy.mode) == (0.0, None)
    began = time.perf_counter()
    assert client.ping()
    assert time.perf_counter() - began < 0.1


def test_bad_arguments_are_refused(redis_proxy: TcpProxy) -> None:
    with pytest.raises(ValueError, match="mode"):
        redis_proxy.cut("drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="blackhole"):
        redis_proxy.cut("refuse", close_existing=False)
    with pytest.raises(ValueError, match="latency"):
        redis_proxy.set_latency(-1)
