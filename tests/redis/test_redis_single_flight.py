"""RedisSingleFlightCoordinator against a real redis-server (started by tests/conftest.py).

Each coordinator stands for one instance of a service; instances get their own client. The
"shared layer" of these tests is a plain Redis key that ``fetch()`` writes and
``read_shared()`` reads, and the origin counts its calls with INCR, so a count of 1 means one
origin fetch across every coordinator.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from _redis_server import RedisServer
from _tcp_proxy import TcpProxy
from layercache.redis import single_flight as single_flight_module
from layercache.redis._keys import single_flight_channel, single_flight_lock
from layercache.redis.single_flight import RedisSingleFlightCoordinator

pytestmark = pytest.mark.redis

PREFIX = "t:sf"
KEY = "user:1"
LOCK = single_flight_lock(PREFIX, KEY)

ClientFactory = Callable[..., redis.asyncio.Redis]


@pytest.fixture
async def make_client(redis_clean: RedisServer) -> AsyncIterator[ClientFactory]:
    """Clients on the (emptied) session server, one per simulated instance; closed afterwards."""
    made: list[redis.asyncio.Redis] = []

    def make(**kwargs: Any) -> redis.asyncio.Redis:
        client = redis.asyncio.Redis(host=redis_clean.host, port=redis_clean.port, **kwargs)
        made.append(client)
        return client

    try:
        yield make
    finally:
        for client in made:
            await client.aclose()


@pytest.fixture
async def coordinators() -> AsyncIterator[list[RedisSingleFlightCoordinator]]:
    """Coordinators appended here are closed after the test."""
    created: list[RedisSingleFlightCoordinator] = []
    try:
        yield created
    finally:
        for coordinator in created:
            await coordinator.aclose()


class Origin:
    """The origin and the shared layer: ``fetch()`` counts itself in Redis (INCR), then stores
    its value under a Redis key that ``read_shared()`` reads."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        value: str = "fresh",
        delay: float = 0.0,
        gate: asyncio.Event | None = None,
        error: BaseException | None = None,
        key: str = KEY,
    ) -> None:
        self.client = client
        self.value = value
        self.delay = delay
        self.gate = gate
        self.error = error
        self.counter = f"origin-calls:{key}"
        self.shared = f"shared:{key}"
        self.started = asyncio.Event()
        self.stored_at: float | None = None
        self.reads = 0

    async def fetch(self) -> str:
        await self.client.incr(self.counter)
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        await self.client.set(self.shared, self.value)
        self.stored_at = time.monotonic()
        return self.value

    async def read_shared(self) -> tuple[bool, Any]:
        raw = await self.client.get(self.shared)
        self.reads += 1  # counted once answered: a look still in flight may yet see the value
        return (False, None) if raw is None else (True, raw.decode())

    async def calls(self) -> int:
        return int(await self.client.get(self.counter) or 0)


class LocalOrigin:
    """An origin and shared layer that need no Redis (for the outage tests)."""

    def __init__(self, value: str = "direct", during: Callable[[], None] | None = None) -> None:
        self.value = value
        self.during = during
        self.calls = 0
        self.stored: dict[str, Any] = {}

    async def fetch(self) -> str:
        self.calls += 1
        if self.during is not None:
            self.during()
        self.stored[KEY] = self.value
        return self.value

    async def read_shared(self) -> tuple[bool, Any]:
        return (KEY in self.stored, self.stored.get(KEY))


async def eventually(predicate: Callable[[], Awaitable[bool] | bool], within: float = 5.0) -> None:
    """Poll ``predicate`` until it holds, failing after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def coordinator_on(
    client: redis.asyncio.Redis, registry: list[RedisSingleFlightCoordinator], **kwargs: Any
) -> RedisSingleFlightCoordinator:
    coordinator = RedisSingleFlightCoordinator(client, prefix=PREFIX, **kwargs)
    registry.append(coordinator)
    return coordinator


# -- construction and key shapes ---------------------------------------------------------------


def test_key_shapes() -> None:
    # The braces make the cache key the cluster hash tag of its lock.
    assert single_flight_lock("app:sf", "user:1") == b"app:sf:lock:{user:1}"
    assert single_flight_channel("app:sf") == b"app:sf:done"
    assert single_flight_lock("p", "é") == "p:lock:{é}".encode()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lease": 0}, "lease"),
        ({"lease": -1.0}, "lease"),
        ({"lease": float("inf")}, "finite"),
        ({"lease": 1.0, "renew_interval": 1.0}, "shorter than the lease"),
        ({"renew_interval": 0}, "renew_interval"),
        ({"prefix": ""}, "empty"),
        ({"prefix": "a\nb"}, "control"),
    ],
)
async def test_bad_arguments(make_client: ClientFactory, kwargs: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RedisSingleFlightCoordinator(make_client(), **kwargs)


async def test_refuses_decoding_client(make_client: ClientFactory) -> None:
    with pytest.raises(ValueError, match="decode_responses=False"):
        RedisSingleFlightCoordinator(make_client(decode_responses=True))


async def test_bad_run_arguments(make_client: ClientFactory, coordinators: list[Any]) -> None:
    coordinator = coordinator_on(make_client(), coordinators)
    origin = Origin(make_client())
    with pytest.raises(ValueError, match="poll"):
        await coordinator.run(KEY, origin.fetch, origin.read_shared, poll=0)
    for timeout in (-1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="timeout"):
            await coordinator.run(KEY, origin.fetch, origin.read_shared, timeout=timeout)
    assert await origin.calls() == 0


def test_default_renew_interval_is_a_third_of_the_lease(redis_server: RedisServer) -> None:
    client = redis.asyncio.Redis(host=redis_server.host, port=redis_server.port)
    coordinator = RedisSingleFlightCoordinator(client, lease=9.0)
    assert coordinator.lease == 9.0
    assert coordinator.renew_interval == pytest.approx(3.0)
    assert "lease=9.0" in repr(coordinator)


# -- the holder ----------------------------------------------------------------------------


async def test_lock_held_during_fetch_and_released(
    make_client: ClientFactory, coordinators: list[Any]
) -> None:
    client = make_client()
    coordinator = coordinator_on(client, coordinators, lease=5.0)
    origin = Origin(client)
    seen: dict[str, Any] = {}

    async def fetch() -> str:
        seen["token"] = await client.get(LOCK)
        seen["pttl"] = await client.pttl(LOCK)
        return await origin.fetch()

    assert await coordinator.run(KEY, fetch, origin.read_shared) == "fresh"
    assert seen["token"] is not None
    assert len(seen["token"]) == 32
    assert 4000 < seen["pttl"] <= 5000
    assert await client.exists(LOCK) == 0
    assert await origin.calls() == 1
    stats = coordinator.stats
    assert (stats.acquired, stats.fetches, stats.waits, stats.degraded) == (1, 1, 0, 0)


async def test_a_stale_holder_never_deletes_a_newer_holders_lock(
    make_client: ClientFactory, coordinators: list[Any]
) -> None:
    client = make_client()
    coordinator = coordinator_on(client, coordinators, lease=5.0)
    origin = Origin(client)

    async def fetch() -> str:
        # As if our lease had run out and another instance had taken the lock since.
        await client.set(LOCK, b"newer-holder", px=5000)
        return await origin.fetch()

    assert await coordinator.run(KEY, fetch, origin.read_shared) == "fresh"
    assert await client.get(LOCK) == b"newer-holder"
    assert coordinator.stats.lock_lost == 1
    assert coordinator.stats.release_failures == 0


async def test_holder_rechecks_the_shared_layers_after_taking_the_lock(
    make_client: ClientFactory, coordinators: list[Any]
) -> None:
    # Another instance stored the value and released the lock between this caller's own
    # lookup and its SET NX: no second origin fetch.
    client = make_client()
    coordinator = coordinator_on(client, coordinators)
    origin = Origin(client)
    await client.set(origin.shared, "already-there")
    assert await coordinator.run(KEY, origin.fetch, origin.read_shared) == "already-there"
    assert await origin.calls() == 0
    assert await client.exists(LOCK) == 0
    assert coordinator.stats.shared_hits == 1


async def test_lease_is_renewed_while_a_long_fetch_runs(
    make_client: ClientFactory, coordinators: list[Any]
) -> None:
    lease = 0.2
    client = make_client()
    holder = coordinator_on(client, coordinators, lease=lease)
    other = coordinator_on(make_client(), coordinators, lease=lease)
    origin = Origin(client, delay=4 * lease)
    samples: list[bytes | None] = []

    async def sample() -> None:
        await origin.started.wait()
        while origin.stored_at is None:
            value = await client.get(LOCK)
            # Keep the sample only if the fetch was still running after the read: the lock
            # is released right after the fetch ends, so a read racing that end proves nothing.
            if origin.stored_at is None:
                samples.append(value)
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    first = asyncio.create_task(holder.run(KEY, origin.fetch, origin.read_shared))
    await origin.started.wait()
    # Another instance arrives during the fetch, well after the first lease would have ended.
    await asyncio.sleep(2 * lease)
    second = await other.run(KEY, origin.fetch, origin.read_shared, timeout=5.0, poll=0.02)
    assert await first == "fresh"
    assert second == "fresh"
    await sampler
    # Held by one token from start to finish, across ~4 leases.
    assert len(samples) >= 10
    assert samples[0] is not None
    assert set(samples) == {samples[0]}
    assert holder.stats.renewals >= 3
    assert holder.stats.lock_lost == 0
    assert await origin.calls() == 1
    assert await client.exists(LOCK) == 0


# -- waiters -------------------------------------------------------------------------------


async def test_waiters_are_woken_by_the_notification_not_by_polling(
    make_client: ClientFactory, coordinators: list[Any]
) -> None:
    holder_client = make_client()
    holder = coordinator_on(holder_client, coordinators)
    instances = [coordinator_on(make_client(), coordinators) for _ in range(2)]
    gate = asyncio.Event()
    origin = Origin(holder_client, gate=gate)
    first = asyncio.create_task(holder.run(KEY, origin.fetch, origin.read_shared))
    await origin.started.wait()
    base = origin.reads  # the holder's own re-check

    done_at: list[float] = []

    async def wait_on(coordinator: RedisSingleFlightCoordinator) -> Any:
        value = await coordinator.run(KEY, origin.fetch, origin.read_shared, timeout=5, poll=1.0)
        done_at.append(time.monotonic())
        return value

    waiters = [asyncio.create_task(wait_on(c)) for c in instances for _ in range(10)]
    # Every waiter has made its first look (and found nothing): the next one would be a poll
    # a whole second later.
    await eventually(lambda: origin.reads == base + 20)
    gate.set()
    assert await first == "fresh"
    assert await asyncio.gather(*waiters) == ["fresh"] * 20
    assert origin.stored_at is not None
    latencies = [t - origin.stored_at for t in done_at]
    print(
        f"\nnotification latency (store -> waiter returns), 20 waiters on 2 instances: "
        f"median {statistics.median(latencies) * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms"
    )
    # poll=1.0: only the notification can explain a return this soon.
    assert max(latencies) < 0.1
    assert origin.reads == base + 40  # one look at start, one after the notice: no polling
    for coordinator in instances:
        assert coordinator.stats.notifications >= 1
        assert coordinator.stats.shared_hits == 10
        assert coordinator.stats.fetches == 0
    assert await origin.calls() == 1


async def test_a_dead_holder_is_replaced_by_exactly_one_waiter(
    make_client: ClientFactory, coordinators: list[Any]
) -> None:
    client = make_client()
    # A holder that took the lock and died: a foreign token, a short lease, never released.
    lease_ms = 300
    await client.set(LOCK, b"dead-holder", px=lease_ms)
    started = time.monotonic()
    instances = [coordinator_on(make_client(), coordinators) for _ in range(3)]
    origin = Origin(client, delay=0.05)
    results = await asyncio.gather(
        *(
            c.run(KEY, origin.fetch, origin.read_shared, timeout=5, poll=1.0)
            for c in instances
            for _ in range(10)
        )
    )
    elapsed = time.monotonic() - started
    assert results == ["fresh"] * 30
    assert await origin.calls() == 1
    assert sum(c.stats.takeovers for c in instances) == 1
    assert sum(c.stats.fetches for c in instances) == 1
    # Taken over right after the lease ended (not at the next 1 s poll), and the other
    # waiters learned of the new holder's value by notification.
    assert lease_ms / 1000 <= elapsed < 0.8
    assert await client.exists(LOCK) == 0


async def test_a_waiter_fetches_itself_after_the_timeout(
    make_client: ClientFactory, coordinators: list[Any]
) -> None:
    client = make_client()
    await client.set(LOCK, b"slow-holder", px=10_000)
    coordinator = coordinator_on(client, coordinators)
    origin = Origin(client)
    started = time.monotonic()
    assert await coordinator.run(KEY, origin.fetch, origin.read_shared, timeout=0.3) == "fresh"
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 0.8
    assert coordinator.stats.timeouts == 1
    assert await origin.calls() == 1
    # The other holder's lock is left alone.
    assert await client.get(LOCK) == b"slow-holder"


async def test_waiter_beyond_the_registration_bound_still_gets_the_value_by_polling(
    make_client: ClientFactory, coordinators: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(single_flight_module, "_MAX_WAITING_KEYS", 0)
    client = make_client()
    holder = coordinator_on(client, coordinators)
    waiter = coordinator_on(make_client(), coordinators)
    gate = asyncio.Event()
    origin = Origin(client, gate=gate)
    first = asyncio.create_task(holder.run(KEY, origin.fetch, origin.read_shared))
    await origin.started.wait()
    base = origin.reads
    second = asyncio.create_task(waiter.run(KEY, origin.fetch, origin.read_shared, poll=0.02))
    await eventually(lambda: origin.reads > base)
    gate.set()
    assert await first == await second == "fresh"
    assert waiter.stats.notifications == 0
    assert await origin.calls() == 1


# -- fetch failures ---------------------------------------------------------------------------


async def test_fetch_exception_propagates_and_releases_the_lock(
    make_client: ClientFactory, coordinators: list[Any]
) -> None:
    client = make_client()
    coordinator = coordinator_on(client, coordinators)
    error = RuntimeError("origin down")
    origin = Origin(client, error=error)
    with pytest.raises(RuntimeError) as caught:
        await coordinator.run(KEY, origin.fetch, origin.read_shared)
    assert caught.value is error
    assert await client.exists(LOCK) == 0
    assert coordinator.stats.degraded == 0


async def test_a_waiter_takes_over_at_once_when_the_holder_fails(
    make_client: ClientFactory, coordinators: list[Any]
) -> None:
    client = make_client()
    holder = coordinator_on(client, coordinators)
    waiter = coordinator_on(make_client(), coordinators)
    gate = asyncio.Event()
    failing = Origin(client, gate=gate, error=RuntimeError("origin down"))
    working = Origin(client, value="second")
    first = asyncio.create_task(holder.run(KEY, failing.fetch, failing.read_shared))
    await failing.started.wait()
    second = asyncio.create_task(
        waiter.run(KEY, working.fetch, working.read_shared, timeout=5, poll=1.0)
    )
    await eventually(lambda: working.reads == 1)
    gate.set()
    failed_at = time.monotonic()
    with pytest.raises(RuntimeError, match="origin down"):
        await first
    assert await second == "second"
    # Woken by the release notice, not by the 1 s poll.
    assert time.monotonic() - failed_at < 0.5
    assert waiter.stats.takeovers == 1
    assert await client.get(working.counter) == b"2"  # the failed fetch and the takeover
    assert await client.exists(LOCK) == 0


async def test_a_cancelled_holder_releases_the_lock(
    make_client: ClientFactory, coordinators: list[Any]
) -> None:
    client = make_client()
    coordinator = coordinator_on(client, coordinators)
    origin = Origin(client, gate=asyncio.Event())
    task = asyncio.create_task(coordinator.run(KEY, origin.fetch, origin.read_shared))
    await origin.started.wait()
    assert await client.exists(LOCK) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await client.exists(LOCK) == 0


# -- Redis failures ---------------------------------------------------------------------------


def _no_retry_client(make_client: ClientFactory) -> redis.asyncio.Redis:
    # One attempt per command: the test measures the coordinator, not redis-py's retries.
    return make_client(retry=Retry(NoBackoff(), 0), socket_timeout=2, socket_connect_timeout=2)


async def test_redis_down_degrades_to_a_direct_fetch(
    redis_clean: RedisServer, make_client: ClientFactory, coordinators: list[Any]
) -> None:
    coordinator = coordinator_on(_no_retry_client(make_client), coordinators)
    reports: list[tuple[BaseException, dict[str, Any]]] = []
    coordinator.set_error_handler(lambda exc, context: reports.append((exc, context)))
    origin = LocalOrigin()
    redis_clean.stop()
    try:
        started = time.monotonic()
        assert await coordinator.run(KEY, origin.fetch, origin.read_shared) == "direct"
        assert time.monotonic() - started < 1.0
    finally:
        redis_clean.start()
    assert origin.calls == 1
    assert coordinator.stats.degraded == 1
    assert [context["operation"] for _, context in reports] == ["acquire"]
    assert reports[0][1] == {"component": "single_flight", "key": KEY, "operation": "acquire"}


async def test_redis_dying_while_waiting_degrades_to_a_direct_fetch(
    redis_clean: RedisServer, make_client: ClientFactory, coordinators: list[Any]
) -> None:
    client = _no_retry_client(make_client)
    await client.set(LOCK, b"other-holder", px=10_000)
    coordinator = coordinator_on(client, coordinators)
    origin = LocalOrigin()
    task = asyncio.create_task(
        coordinator.run(KEY, origin.fetch, origin.read_shared, timeout=5, poll=0.02)
    )
    await eventually(lambda: coordinator.stats.waits == 1)
    redis_clean.stop()
    try:
        assert await task == "direct"
    finally:
        redis_clean.start()
    assert origin.calls == 1
    assert coordinator.stats.degraded == 1


async def test_a_hung_redis_never_holds_a_caller_past_its_timeout(
    redis_proxy: TcpProxy, coordinators: list[Any]
) -> None:
    # No socket timeout at all: only the coordinator's own bound can end the wait.
    client = redis.asyncio.Redis.from_url(redis_proxy.url, socket_timeout=None)
    try:
        coordinator = coordinator_on(client, coordinators)
        await client.ping()
        redis_proxy.cut("blackhole", close_existing=False)
        origin = LocalOrigin()
        started = time.monotonic()
        assert await coordinator.run(KEY, origin.fetch, origin.read_shared, timeout=0.3) == "direct"
        assert time.monotonic() - started < 0.6
        assert coordinator.stats.degraded == 1
    finally:
        redis_proxy.restore()
        await client.aclose()


async def test_a_lock_deleted_under_the_holder_does_not_fail_the_fetch(
    make_client: ClientFactory, coordinators: list[Any]
) -> None:
    client = make_client()
    coordinator = coordinator_on(client, coordinators)
    origin = Origin(client)

    async def fetch() -> str:
        await client.delete(LOCK)  # e.g. FLUSHDB, an operator, an eviction
        return await origin.fetch()

    assert await coordinator.run(KEY, fetch, origin.read_shared) == "fresh"
    assert coordinator.stats.lock_lost == 1


async def test_a_release_that_fails_does_not_fail_the_fetch(
    redis_clean: RedisServer, make_client: ClientFactory, coordinators: list[Any]
) -> None:
    coordinator = coordinator_on(_no_retry_client(make_client), coordinators)
    reports: list[dict[str, Any]] = []
    coordinator.set_error_handler(lambda exc, context: reports.append(context))
    # Redis goes away while the origin is being fetched: the release cannot reach it.
    origin = LocalOrigin(during=redis_clean.stop)
    try:
        assert await coordinator.run(KEY, origin.fetch, origin.read_shared) == "direct"
    finally:
        redis_clean.start()
    assert coordinator.stats.release_failures == 1
    assert coordinator.stats.degraded == 0
    assert [context["operation"] for context in reports] == ["release"]


async def test_a_broken_error_handler_changes_nothing(
    redis_clean: RedisServer, make_client: ClientFactory, coordinators: list[Any]
) -> None:
    coordinator = coordinator_on(_no_retry_client(make_client), coordinators)

    def broken(exc: BaseException, context: dict[str, Any]) -> None:
        raise RuntimeError("handler bug")

    coordinator.set_error_handler(broken)
    origin = LocalOrigin()
    redis_clean.stop()
    try:
        assert await coordinator.run(KEY, origin.fetch, origin.read_shared) == "direct"
    finally:
        redis_clean.start()


async def test_the_subscription_comes_back_after_a_server_restart(
    redis_clean: RedisServer, make_client: ClientFactory, coordinators: list[Any]
) -> None:
    holder_client = make_client()
    holder = coordinator_on(holder_client, coordinators)
    waiter = coordinator_on(make_client(), coordinators)

    async def round_trip(key: str) -> float:
        gate = asyncio.Event()
        origin = Origin(holder_client, gate=gate, key=key)
        first = asyncio.create_task(holder.run(key, origin.fetch, origin.read_shared))
        await origin.started.wait()
        base = origin.reads
        second = asyncio.create_task(
            waiter.run(key, origin.fetch, origin.read_shared, timeout=5, poll=1.0)
        )
        await eventually(lambda: origin.reads == base + 1)
        gate.set()
        assert await first == await second == "fresh"
        assert origin.stored_at is not None
        return time.monotonic() - origin.stored_at

    assert await round_trip("before") < 0.1
    assert waiter.stats.subscriptions == 1
    redis_clean.restart()
    await eventually(lambda: waiter.stats.subscriptions == 2)
    assert await round_trip("after") < 0.1
    assert waiter.stats.notifications == 2


async def test_aclose_stops_the_subscription_and_later_calls_fetch_directly(
    make_client: ClientFactory,
) -> None:
    client = make_client()
    holder = RedisSingleFlightCoordinator(client, prefix=PREFIX)
    waiter = RedisSingleFlightCoordinator(make_client(), prefix=PREFIX)
    gate = asyncio.Event()
    origin = Origin(client, gate=gate)
    first = asyncio.create_task(holder.run(KEY, origin.fetch, origin.read_shared))
    await origin.started.wait()
    second = asyncio.create_task(waiter.run(KEY, origin.fetch, origin.read_shared))
    await eventually(lambda: waiter.stats.subscriptions == 1)
    gate.set()
    assert await first == await second == "fresh"
    await waiter.aclose()
    await holder.aclose()
    assert waiter._listener is None
    assert await client.pubsub_numsub(single_flight_channel(PREFIX)) == [
        (single_flight_channel(PREFIX), 0)
    ]
    await client.delete(origin.shared)
    assert await waiter.run(KEY, origin.fetch, origin.read_shared) == "fresh"
    assert await origin.calls() == 2
    assert await client.exists(LOCK) == 0  # no lock was taken after aclose
    assert waiter.stats.degraded == 1
    await waiter.aclose()  # idempotent


# -- cluster client ---------------------------------------------------------------------------


async def test_on_a_cluster_client(
    redis_cluster_server: RedisServer, redis_cluster_client: Any, coordinators: list[Any]
) -> None:
    from redis.asyncio.cluster import RedisCluster

    other_client = RedisCluster(host=redis_cluster_server.host, port=redis_cluster_server.port)
    holder = coordinator_on(redis_cluster_client, coordinators)
    waiter = coordinator_on(other_client, coordinators)
    try:
        gate = asyncio.Event()
        origin = Origin(redis_cluster_client, gate=gate)
        first = asyncio.create_task(holder.run(KEY, origin.fetch, origin.read_shared))
        await origin.started.wait()
        assert await redis_cluster_client.exists(LOCK) == 1
        base = origin.reads
        waiters = [
            asyncio.create_task(waiter.run(KEY, origin.fetch, origin.read_shared, poll=1.0))
            for _ in range(5)
        ]
        await eventually(lambda: origin.reads == base + 5)
        gate.set()
        assert await first == "fresh"
        assert await asyncio.gather(*waiters) == ["fresh"] * 5
        assert origin.stored_at is not None
        assert time.monotonic() - origin.stored_at < 0.2  # notified, not polled
        assert waiter.stats.notifications >= 1
        assert await origin.calls() == 1
        assert await redis_cluster_client.exists(LOCK) == 0
    finally:
        await waiter.aclose()
        await other_client.aclose()
