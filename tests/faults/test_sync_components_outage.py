"""SyncCacheStack with the sync bus, coordinator and tag index through a Redis outage (the
server killed and started again, or cut off by the loopback proxy), under graceful degradation:
reads keep answering from L1 or the fetcher, nothing raises, and once Redis is back the bus
subscribes again and the L1 is dropped (it may have missed invalidations).
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from _redis_server import RedisServer
from _tcp_proxy import TcpProxy
from layercache import (
    MemoryLayer,
    RedisInvalidationBus,
    RedisLayer,
    RedisSingleFlightCoordinator,
    RedisTagIndex,
    SyncCacheStack,
)
from polling import eventually

pytestmark = pytest.mark.redis

DEADLINE = 10.0
# One get during the outage: a failed coordinator call, a failed layer read and write, and a
# failed tag index write, each bounded by the client's 0.25 s timeouts, with room for a slow
# machine.
MAX_GET = 3.0


def holds_value(client: Any, raw_key: str) -> bool:
    """A value under the key: present and not a deletion's tombstone (see RedisLayer)."""
    raw = client.get(raw_key.encode())
    return raw is not None and not bytes(raw).startswith(b"\xc1LT")


def fragile_client(port: int, timeout: float = 0.25) -> redis.Redis:
    """A sync client that gives up fast: one attempt, short timeouts.

    Each component (coordinator, layer, tag index, bus) pays this timeout on its own when a
    blackholed server never answers, so it is kept short.
    """
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


class Node:
    """A SyncCacheStack with all three coordination components on one sync client."""

    def __init__(self, client: redis.Redis, names: str, retry_after: float = 0.2) -> None:
        self.client = client
        self.memory = MemoryLayer(name="memory")
        self.bus: Any = RedisInvalidationBus(
            publisher=client,
            channel=f"{names}:bus",
            health_check_interval=0.2,
            timeout=0.5,
            reconnect_backoff=(0.02, 0.2),
        )
        self.coordinator: Any = RedisSingleFlightCoordinator(client=client, prefix=f"{names}:sf")
        self.stack = SyncCacheStack(
            [self.memory, RedisLayer(client=client, prefix=f"{names}:")],
            invalidation_bus=self.bus,
            broadcast_l1_invalidation=True,
            single_flight_coordinator=self.coordinator,
            tag_index=RedisTagIndex(client=client, prefix=f"{names}:tags"),
            graceful_degradation={"retry_after": retry_after},
            single_flight_timeout=2,
        )
        self.errors: list[dict[str, Any]] = []
        self.stack.on("error", self.errors.append)

    def timed_get(self, key: str, fetcher: Callable[[], Any] | None = None) -> Any:
        began = time.monotonic()
        value = self.stack.get(key, fetcher)
        assert time.monotonic() - began < MAX_GET, f"get({key!r}) was not bounded"
        return value


@pytest.fixture
def names() -> str:
    return f"out-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def nodes(redis_clean: RedisServer) -> Iterator[list[Node]]:
    """Nodes appended here are closed (in parallel) and their clients too, after the test.

    Depends on ``redis_clean`` so that its server is running again for the next test even if
    this one failed while it was stopped.
    """
    made: list[Node] = []
    yield made
    closers = [threading.Thread(target=n.stack.close) for n in made]
    for closer in closers:
        closer.start()
    for closer in closers:
        closer.join(DEADLINE)
    for node in made:
        node.client.close()
    if not redis_clean.is_running:
        redis_clean.start()


def serve_through_outage(node: Node) -> None:
    """What a service does while Redis is unreachable: every call answers, none raises."""
    assert node.timed_get("warm") == "w"  # from L1
    assert node.timed_get("cold", lambda: "from-origin") == "from-origin"
    assert node.timed_get("cold") == "from-origin"  # and kept in L1 meanwhile
    node.stack.set("written", "during")
    assert node.timed_get("written") == "during"
    node.stack.delete("never-there")
    eventually(lambda: not node.bus.is_subscribed)  # the subscriber noticed
    assert node.timed_get("warm") == "w"
    assert node.timed_get("cold-2", lambda: "again") == "again"


def recovered(node: Node, direct: redis.Redis, names: str) -> None:
    """After Redis is back: the bus re-subscribed, the L1 was dropped, Redis is used again."""
    eventually(lambda: node.bus.is_subscribed)
    # On reconnect the instance drops its L1: it may have missed invalidations.
    eventually(lambda: node.memory.get("warm") is None and node.memory.get("cold") is None)
    probes = itertools.count()

    def stored_in_redis() -> bool:
        # Traffic drives the degraded layer's recovery (a new key each time).
        key = f"probe:{next(probes)}"
        node.stack.get(key, lambda: 1)
        return holds_value(direct, f"{names}:{key}")

    eventually(stored_in_redis)
    assert node.stack.get("after", lambda: "ok") == "ok"
    # Redis and the bus problems were reported as error events, never raised.
    operations = {str(e["context"].get("operation", "")) for e in node.errors}
    assert any(op.startswith("bus") for op in operations), operations


def test_redis_killed_and_started_again(
    redis_clean: RedisServer, nodes: list[Node], names: str
) -> None:
    node = Node(fragile_client(redis_clean.port), names)
    nodes.append(node)
    direct = redis.Redis(host=redis_clean.host, port=redis_clean.port)
    try:
        with node.stack:
            node.stack.set("warm", "w", tags=["t"])
            assert node.memory.get("warm") is not None
            redis_clean.stop()
            try:
                serve_through_outage(node)
                assert node.coordinator.stats.degraded >= 1
            finally:
                redis_clean.start()  # the session server, same port
            recovered(node, direct, names)
    finally:
        direct.close()


@pytest.mark.parametrize("mode", ["refuse", "blackhole"])
def test_redis_cut_off_by_the_proxy(
    redis_clean: RedisServer, redis_proxy: TcpProxy, nodes: list[Node], names: str, mode: Any
) -> None:
    node = Node(fragile_client(redis_proxy.port), names)
    nodes.append(node)
    direct = redis.Redis(host=redis_clean.host, port=redis_clean.port)
    try:
        with node.stack:
            node.stack.set("warm", "w", tags=["t"])
            redis_proxy.cut(mode)
            serve_through_outage(node)
            redis_proxy.restore()
            recovered(node, direct, names)
    finally:
        direct.close()


def test_a_tag_invalidation_during_an_outage_is_replayed(
    redis_clean: RedisServer, redis_proxy: TcpProxy, nodes: list[Node], names: str
) -> None:
    node = Node(fragile_client(redis_proxy.port), names)
    nodes.append(node)
    direct = redis.Redis(host=redis_clean.host, port=redis_clean.port)
    try:
        with node.stack:
            node.stack.set("post:1", "v1", tags=["posts"])
            redis_proxy.cut("refuse")
            node.stack.set("post:2", "v2", tags=["posts"])
            assert node.stack.invalidate_by_tag("posts") == 0  # keys unknown until recovery
            assert node.memory.get("post:1") is None  # local copies dropped at once
            redis_proxy.restore()
            probes = itertools.count()

            def replayed() -> bool:
                node.stack.get(f"probe:{next(probes)}", lambda: 1)
                return not holds_value(direct, f"{names}:post:1")

            eventually(replayed)
            node.memory.clear()
            assert node.stack.get("post:1") is None  # never resurrected from Redis
    finally:
        direct.close()


def test_an_announcement_that_failed_is_sent_after_recovery(
    redis_clean: RedisServer, redis_proxy: TcpProxy, nodes: list[Node], names: str
) -> None:
    flaky = Node(fragile_client(redis_proxy.port), names)
    steady = Node(redis.Redis(host=redis_clean.host, port=redis_clean.port), names)
    nodes.extend([flaky, steady])
    with flaky.stack, steady.stack:
        steady.stack.set("k", "v1")
        assert steady.memory.get("k") is not None
        redis_proxy.cut("refuse")
        flaky.stack.delete("k")  # reaches neither Redis nor the bus: kept for later
        assert steady.memory.get("k") is not None
        redis_proxy.restore()
        probes = itertools.count()

        def steady_dropped_it() -> bool:
            flaky.stack.set(f"later:{next(probes)}", 1)  # the next write sends what it kept
            return steady.memory.get("k") is None

        eventually(steady_dropped_it)


def test_a_peer_never_keeps_a_value_deleted_during_an_outage(
    redis_clean: RedisServer, redis_proxy: TcpProxy, nodes: list[Node], names: str
) -> None:
    # The flaky instance skips its degraded Redis layer for a whole second after the outage,
    # while its bus publisher works again at once.
    flaky = Node(fragile_client(redis_proxy.port), names, retry_after=1.0)
    steady = Node(redis.Redis(host=redis_clean.host, port=redis_clean.port), names)
    nodes.extend([flaky, steady])
    direct = redis.Redis(host=redis_clean.host, port=redis_clean.port)
    try:
        with flaky.stack, steady.stack:
            steady.stack.set("k", "v1")
            redis_proxy.cut("refuse")
            flaky.stack.delete("k")  # reaches neither Redis nor the bus: kept for later
            redis_proxy.restore()
            probes = itertools.count()

            def steady_dropped_it() -> bool:
                flaky.stack.set(f"later:{next(probes)}", 1)
                return steady.memory.get("k") is None

            eventually(steady_dropped_it)
            # A read on the peer now may still find v1 in Redis (the delete is not replayed
            # yet)...
            steady.stack.get("k")

            def replayed_to_redis() -> bool:
                flaky.stack.set(f"later:{next(probes)}", 1)
                return not holds_value(direct, f"{names}:k")

            eventually(replayed_to_redis)
            # ...but once the delete reached Redis, no instance may serve the deleted value.
            assert steady.stack.get("k") is None
    finally:
        direct.close()
