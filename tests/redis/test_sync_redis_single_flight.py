"""The sync RedisSingleFlightCoordinator (``SyncRedisSingleFlightCoordinator``) driving
SyncCacheStack instances against a real redis-server: one origin fetch per cold key across
instances and threads, takeover after a failed or dead holder, lease renewal, degradation when
Redis is down, and no thread left behind by ``close()``.

Every instance has its own sync client; the fetchers are gated by ``threading.Event`` so every
caller is really in flight at once. Waits are bounded polling with a deadline.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from _redis_server import RedisServer
from _tcp_proxy import TcpProxy
from layercache import (
    MemoryLayer,
    RedisLayer,
    RedisSingleFlightCoordinator,
    SyncCacheStack,
)
from layercache.redis._keys import single_flight_lock
from polling import eventually

pytestmark = pytest.mark.redis

DEADLINE = 10.0


# The coordination components' own threads. (The stack's worker pools, "layercache-fetch_N"
# and "layercache-refresh_N", are checked by tests/stack_sync/test_sync_owned_threads.py;
# other tests' abandoned fetches may still hold threads of that name here.)
_COMPONENT_THREADS = ("layercache-bus", "layercache-single-flight", "layercache-lease")


def layercache_threads() -> set[threading.Thread]:
    """Live background threads of the coordination components."""
    return {
        t for t in threading.enumerate() if t.name.startswith(_COMPONENT_THREADS) and t.is_alive()
    }


class GatedOrigin:
    """An origin whose fetch counts itself, then blocks until ``release`` is set."""

    def __init__(self, value: Any = "fresh", error: BaseException | None = None) -> None:
        self.value = value
        self.error = error
        self.calls = 0
        self._lock = threading.Lock()
        self.started = threading.Event()
        self.release = threading.Event()

    def fetch(self) -> Any:
        with self._lock:
            self.calls += 1
        self.started.set()
        if not self.release.wait(DEADLINE):
            raise AssertionError("the test never released the origin")
        if self.error is not None:
            raise self.error
        return self.value


class Caller(threading.Thread):
    """Runs one ``get`` on a thread, keeping its result or exception."""

    def __init__(self, call: Callable[[], Any]) -> None:
        super().__init__(daemon=True, name="test-caller")
        self._call = call
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self._call()
        except BaseException as exc:  # kept for the test's assertions
            self.error = exc

    def outcome(self) -> Any:
        self.join(DEADLINE)
        assert not self.is_alive(), "the caller did not finish in time"
        if self.error is not None:
            raise self.error
        return self.result


@dataclass
class Instance:
    """One service instance: its own sync client, L1, coordinator and stack."""

    client: redis.Redis
    memory: MemoryLayer
    coordinator: Any
    stack: SyncCacheStack
    errors: list[dict[str, Any]]


InstanceFactory = Callable[..., Instance]


@pytest.fixture
def prefix() -> str:
    return f"sf-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_instance(redis_clean: RedisServer, prefix: str) -> Iterator[InstanceFactory]:
    """Instances on the session server (or ``port``); stacks and clients closed afterwards."""
    made: list[Instance] = []

    def make(
        port: int | None = None,
        client_options: dict[str, Any] | None = None,
        coordinator_options: dict[str, Any] | None = None,
        **stack_options: Any,
    ) -> Instance:
        client = redis.Redis(
            host=redis_clean.host, port=port or redis_clean.port, **(client_options or {})
        )
        coordinator = RedisSingleFlightCoordinator(
            client=client, prefix=f"{prefix}:sf", **(coordinator_options or {})
        )
        memory = MemoryLayer(name="memory")
        stack_options.setdefault("single_flight_timeout", 5)
        stack = SyncCacheStack(
            [memory, RedisLayer(client=client, prefix=f"{prefix}:")],
            single_flight_coordinator=coordinator,
            **stack_options,
        )
        errors: list[dict[str, Any]] = []
        stack.on("error", errors.append)
        instance = Instance(client, memory, coordinator, stack, errors)
        made.append(instance)
        return instance

    yield make
    # A component's close() joins its thread (up to one read slice, ~1 s): close in parallel.
    closers = [threading.Thread(target=instance.stack.close) for instance in made]
    for closer in closers:
        closer.start()
    for closer in closers:
        closer.join(DEADLINE)
    for instance in made:
        instance.client.close()


def test_a_sync_client_makes_a_sync_coordinator(redis_clean: RedisServer) -> None:
    import layercache
    import layercache.redis

    client = redis.Redis(host=redis_clean.host, port=redis_clean.port)
    try:
        coordinator: Any = RedisSingleFlightCoordinator(client=client, prefix="p:sf", lease=9)
        assert type(coordinator) is layercache.redis.SyncRedisSingleFlightCoordinator
        assert (
            layercache.SyncRedisSingleFlightCoordinator
            is layercache.redis.SyncRedisSingleFlightCoordinator
        )
        assert coordinator.lease == 9.0
        assert coordinator.renew_interval == pytest.approx(3.0)
        coordinator.configure(lease=1.5)
        assert coordinator.renew_interval == pytest.approx(0.5)
        with pytest.raises(ValueError, match="shorter than the lease"):
            coordinator.configure(lease=1.0, renew_interval=1.0)
        with pytest.raises(ValueError, match="decode_responses=False"):
            RedisSingleFlightCoordinator(client=redis.Redis(decode_responses=True))
        coordinator.close()
    finally:
        client.close()


def test_three_instances_times_ten_threads_fetch_once(make_instance: InstanceFactory) -> None:
    before = layercache_threads()
    instances = [make_instance() for _ in range(3)]
    origin = GatedOrigin({"id": 1})
    callers = [
        Caller(lambda s=instance.stack: s.get("cold", origin.fetch))
        for instance in instances
        for _ in range(10)
    ]
    for caller in callers:
        caller.start()

    def all_in_flight() -> bool:
        # One caller per instance reaches the coordinator (one holds the lock, two wait);
        # the other nine of each instance joined its in-process flight.
        return (
            origin.started.is_set()
            and sum(i.coordinator.stats.waits for i in instances) == 2
            and all(i.stack.get_metrics().stampede_dedupes == 9 for i in instances)
        )

    eventually(all_in_flight)
    assert origin.calls == 1
    origin.release.set()
    assert [c.outcome() for c in callers] == [{"id": 1}] * 30
    assert origin.calls == 1
    stats = [i.coordinator.stats for i in instances]
    assert sum(s.acquired for s in stats) == 1
    assert sum(s.fetches for s in stats) == 1
    assert sum(s.shared_hits for s in stats) == 2  # the waiters read the holder's value
    assert sum(s.degraded + s.timeouts + s.takeovers for s in stats) == 0
    assert all(i.errors == [] for i in instances)
    # The lock is gone; a later read is a plain hit.
    lock = single_flight_lock(instances[0].coordinator.prefix, "cold")
    assert instances[0].client.exists(lock) == 0
    assert instances[2].stack.get("cold", origin.fetch) == {"id": 1}
    assert origin.calls == 1

    closers = [threading.Thread(target=instance.stack.close) for instance in instances]
    for closer in closers:
        closer.start()
    for closer in closers:
        closer.join(DEADLINE)
    eventually(lambda: layercache_threads() - before == set(), timeout=3.0)


def test_a_failing_holder_is_taken_over_by_a_waiter(make_instance: InstanceFactory) -> None:
    a, b = make_instance(), make_instance()
    failing = GatedOrigin(error=RuntimeError("origin down"))
    good = GatedOrigin("from-b")
    good.release.set()
    holder = Caller(lambda: a.stack.get("k", failing.fetch))
    holder.start()
    assert failing.started.wait(DEADLINE)
    waiter = Caller(lambda: b.stack.get("k", good.fetch))
    waiter.start()
    eventually(lambda: b.coordinator.stats.waits == 1)
    failing.release.set()
    released = time.monotonic()
    with pytest.raises(RuntimeError, match="origin down") as raised:
        holder.outcome()
    assert raised.value is failing.error  # the fetcher's own exception, unchanged
    assert waiter.outcome() == "from-b"
    # Announced on release: the waiter did not sit out its 5 s timeout.
    assert time.monotonic() - released < 2.0
    assert b.coordinator.stats.takeovers == 1
    assert b.coordinator.stats.timeouts == 0
    assert (failing.calls, good.calls) == (1, 1)
    assert a.stack.get("k") == "from-b"  # stored by the waiter, visible to the failed holder


def test_a_dead_holder_is_replaced_after_its_lease(
    make_instance: InstanceFactory, redis_clean: RedisServer
) -> None:
    instance = make_instance()
    lock = single_flight_lock(instance.coordinator.prefix, "k")
    # A holder that died without releasing: its lock outlives it until the lease ends.
    instance.client.set(lock, b"dead-holder-token", px=300)
    origin = GatedOrigin("after-takeover")
    origin.release.set()
    began = time.monotonic()
    assert instance.stack.get("k", origin.fetch) == "after-takeover"
    assert time.monotonic() - began < 2.0  # right after the lease, not at the 5 s timeout
    assert instance.coordinator.stats.takeovers == 1
    assert origin.calls == 1


def test_the_lease_is_renewed_during_a_fetch_longer_than_it(
    make_instance: InstanceFactory,
) -> None:
    before = layercache_threads()
    lease = 0.3
    a = make_instance(single_flight_lease=lease)
    b = make_instance(single_flight_lease=lease)
    # The stack's lease goes with each call; the coordinator itself is not reconfigured.
    assert a.coordinator.lease != lease
    lock = single_flight_lock(a.coordinator.prefix, "slow")
    origin = GatedOrigin("slow-value")
    holder = Caller(lambda: a.stack.get("slow", origin.fetch))
    holder.start()
    assert origin.started.wait(DEADLINE)
    token = a.client.get(lock)
    assert token is not None
    assert any(t.name.startswith("layercache-lease") for t in layercache_threads() - before)
    # Four renewals at lease/3 apart: more than a whole lease has passed since the lock was
    # taken, so without them it would have expired.
    eventually(lambda: a.coordinator.stats.renewals >= 4)
    assert a.client.get(lock) == token  # still the holder's own lock
    assert 0 < a.client.pttl(lock) <= lease * 1000
    # Another instance arriving now still finds the lock held and waits for the holder.
    waiter = Caller(lambda: b.stack.get("slow", origin.fetch))
    waiter.start()
    eventually(lambda: b.coordinator.stats.waits == 1)
    assert origin.calls == 1
    origin.release.set()
    assert holder.outcome() == "slow-value"
    assert waiter.outcome() == "slow-value"
    assert origin.calls == 1
    assert a.coordinator.stats.lock_lost == 0
    assert a.coordinator.stats.renew_failures == 0
    assert b.coordinator.stats.takeovers == 0
    assert a.client.exists(lock) == 0
    # The renewal thread ended with the fetch.
    eventually(
        lambda: (
            not any(t.name.startswith("layercache-lease") for t in layercache_threads() - before)
        ),
        timeout=3.0,
    )


def _outage_client_options() -> dict[str, Any]:
    # One attempt per command and short timeouts: the test measures the coordinator, not
    # redis-py's retries.
    return {"retry": Retry(NoBackoff(), 0), "socket_timeout": 0.5, "socket_connect_timeout": 0.5}


def test_redis_down_degrades_to_a_local_fetch_with_an_error_event(
    make_instance: InstanceFactory, redis_proxy: TcpProxy
) -> None:
    instance = make_instance(
        port=redis_proxy.port,
        client_options=_outage_client_options(),
        graceful_degradation={"retry_after": 10},
    )
    assert instance.stack.get("warm", lambda: "w") == "w"  # connected, and works
    redis_proxy.cut("refuse")
    origin = GatedOrigin("direct")
    origin.release.set()
    began = time.monotonic()
    assert instance.stack.get("cold", origin.fetch) == "direct"  # no exception
    assert time.monotonic() - began < 2.0
    assert origin.calls == 1
    assert instance.coordinator.stats.degraded == 1
    eventually(
        lambda: any(e["context"].get("component") == "single_flight" for e in instance.errors)
    )
    reported = [e for e in instance.errors if e["context"].get("component") == "single_flight"]
    assert reported[0]["context"] == {
        "component": "single_flight",
        "key": "cold",
        "operation": "acquire",
    }
    assert isinstance(reported[0]["error"], redis.exceptions.ConnectionError | OSError)
    # Still one fetch per key inside the instance while degraded.
    again = GatedOrigin("direct-2")
    callers = [Caller(lambda: instance.stack.get("cold-2", again.fetch)) for _ in range(5)]
    for caller in callers:
        caller.start()
    eventually(lambda: again.started.is_set())
    again.release.set()
    assert [c.outcome() for c in callers] == ["direct-2"] * 5
    assert again.calls == 1


def test_redis_dying_while_waiting_still_answers_the_caller(
    make_instance: InstanceFactory, redis_proxy: TcpProxy
) -> None:
    instance = make_instance(
        port=redis_proxy.port,
        client_options=_outage_client_options(),
        graceful_degradation={"retry_after": 10},
        single_flight_timeout=1,
        single_flight_poll=0.02,
    )
    lock = single_flight_lock(instance.coordinator.prefix, "k")
    instance.client.set(lock, b"other-holder", px=10_000)
    origin = GatedOrigin("direct")
    origin.release.set()
    began = time.monotonic()
    caller = Caller(lambda: instance.stack.get("k", origin.fetch))
    caller.start()
    eventually(lambda: instance.coordinator.stats.waits == 1)
    redis_proxy.cut("refuse")
    assert caller.outcome() == "direct"
    assert time.monotonic() - began < 3.0  # never past single_flight_timeout by much
    assert origin.calls == 1
    stats = instance.coordinator.stats
    assert stats.degraded + stats.timeouts == 1


def test_close_leaves_no_threads_and_later_runs_fetch_directly(
    make_instance: InstanceFactory,
) -> None:
    before = layercache_threads()
    a, b = make_instance(), make_instance()
    origin = GatedOrigin("v")
    holder = Caller(lambda: a.stack.get("k", origin.fetch))
    holder.start()
    assert origin.started.wait(DEADLINE)
    waiter = Caller(lambda: b.stack.get("k", origin.fetch))
    waiter.start()
    eventually(lambda: b.coordinator.stats.waits == 1)
    # The waiting instance listens for completion notices on its own thread.
    eventually(
        lambda: any(
            t.name.startswith("layercache-single-flight") for t in layercache_threads() - before
        )
    )
    origin.release.set()
    assert holder.outcome() == waiter.outcome() == "v"
    began = time.monotonic()
    a.stack.close()
    b.stack.close()
    assert time.monotonic() - began < 3.0
    eventually(lambda: layercache_threads() - before == set(), timeout=3.0)
    # A closed coordinator no longer coordinates: run() calls fetch directly.
    fallback = GatedOrigin("direct")
    fallback.release.set()
    assert b.coordinator.run("other", fallback.fetch, lambda: (False, None)) == "direct"
    assert b.coordinator.stats.degraded == 1
    b.coordinator.close()  # idempotent
