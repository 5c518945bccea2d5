"""Fault injection with real processes: a slow, dead, cut-off and restored Redis (issue 3).

Every fault is real: latency and cut-offs come from a loopback TCP proxy
(``tests/_tcp_proxy.py``) in front of a real ``redis-server``, and "Redis killed" stops the
server process. No mocks. The stack under test is always
``CacheStack([MemoryLayer(), RedisLayer(url=..., socket_timeout=0.2)])``, in

* strict mode (the default): every layer failure surfaces as ``CacheLayerError``;
* graceful mode (``graceful_degradation={"retry_after": ...}``): a failing Redis is skipped,
  reads fall through to the fetcher, nothing is lost, and the layer comes back by itself
  without resurrecting data that was deleted, invalidated or overwritten while it was away.

Every wait is bounded (``asyncio.wait_for``, polling with a deadline); nothing sleeps and hopes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.exceptions

from _redis_server import RedisServer
from _tcp_proxy import TcpProxy
from layercache import CacheStack, MemoryLayer
from layercache._entry import Entry
from layercache._exceptions import CacheLayerError
from layercache.redis import RedisLayer

pytestmark = pytest.mark.redis

PREFIX = "faults:"
SOCKET_TIMEOUT = 0.2  # the client's command timeout
SLOW = 0.5  # injected latency per direction: well past the timeout
RETRY_AFTER = 1.0  # graceful mode, as in the issue
QUICK_RETRY_AFTER = 0.3  # the resurrection matrix: same logic, shorter waits
CALL_BOUND = 5.0  # no single cache call may take longer than this (a hang is a failure)
RECOVERY_BOUND = 5.0  # deadline of every "wait until recovered" poll
POLL = 0.01


@dataclass
class Env:
    """One stack under test, its layers, and a direct view of the real server."""

    cache: CacheStack
    memory: MemoryLayer
    redis: RedisLayer
    direct: RedisLayer  # same prefix, straight to the server (never through the proxy)
    graceful: bool
    fetches: list[str] = field(default_factory=list)

    def fetcher(self, key: str, value: Any = None) -> Callable[[], Awaitable[Any]]:
        """An async fetcher that records its calls and returns ``value`` (default
        ``"fetched:<key>"``)."""

        async def fetch() -> Any:
            self.fetches.append(key)
            return f"fetched:{key}" if value is None else value

        return fetch

    def redis_status(self) -> Any:
        """``get_stats().layers`` entry of the Redis layer."""
        return self.cache.get_stats().layers[1]

    def redis_counts(self) -> int:
        """Redis layer hits + misses so far (how often it was really consulted)."""
        layer = self.cache.get_metrics().layers["redis"]
        return int(layer.hits + layer.misses)

    async def in_redis(self, key: str) -> Any:
        """The value stored in the real server for ``key`` (``None`` when absent)."""
        entry = await asyncio.wait_for(self.direct.get(key), CALL_BOUND)
        return None if entry is None else entry.value


StackFactory = Callable[..., Awaitable[Env]]


@pytest.fixture
async def make_env(redis_clean: RedisServer) -> AsyncIterator[StackFactory]:
    """Build stacks over a given URL (the proxy's or the server's); closes them afterwards."""
    async with AsyncExitStack() as exits:

        async def build(
            url: str, *, graceful: bool, retry_after: float = RETRY_AFTER, **stack_kwargs: Any
        ) -> Env:
            memory = MemoryLayer(ttl=60, max_size=stack_kwargs.pop("memory_size", None))
            layer = RedisLayer(url=url, prefix=PREFIX, ttl=600, socket_timeout=SOCKET_TIMEOUT)
            direct = RedisLayer(url=redis_clean.url, prefix=PREFIX, socket_timeout=2.0)
            exits.push_async_callback(direct.aclose)
            if graceful:
                stack_kwargs["graceful_degradation"] = {"retry_after": retry_after}
            cache = CacheStack([memory, layer], **stack_kwargs)
            exits.push_async_callback(cache.aclose)
            return Env(cache, memory, layer, direct, graceful)

        yield build


def in_chain(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    """Whether ``exc`` or one of its causes/contexts is one of ``kinds``."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kinds):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def timed(awaitable: Awaitable[Any]) -> tuple[Any, float]:
    """Await under :data:`CALL_BOUND`; return ``(result, seconds)``."""
    began = time.perf_counter()
    result = await asyncio.wait_for(awaitable, CALL_BOUND)
    return result, time.perf_counter() - began


MODES = [pytest.param(False, id="strict"), pytest.param(True, id="graceful")]


# -- Redis slow: 500 ms each way behind a 200 ms client timeout ---------------------------


@pytest.mark.parametrize("graceful", MODES)
async def test_slow_redis_l1_warm_hit_is_unaffected(
    redis_proxy: TcpProxy, make_env: StackFactory, graceful: bool
) -> None:
    env = await make_env(redis_proxy.url, graceful=graceful)
    await env.cache.set("warm", "v")
    redis_proxy.set_latency(SLOW)

    durations = []
    for _ in range(20):
        value, seconds = await timed(env.cache.get("warm", env.fetcher("warm")))
        assert value == "v"
        durations.append(seconds)

    # An L1 hit never touches Redis: far below even one slow round trip.
    assert max(durations) < 0.1, durations
    assert env.fetches == []
    assert env.redis_status().degraded_until is None


@pytest.mark.parametrize("graceful", MODES)
async def test_slow_redis_l2_hit(
    redis_proxy: TcpProxy, make_env: StackFactory, graceful: bool
) -> None:
    env = await make_env(redis_proxy.url, graceful=graceful)
    await env.cache.set("k", "in-redis")
    env.memory.clear()  # the value is now only in Redis: the next read is an L2 hit
    redis_proxy.set_latency(SLOW)

    if not graceful:
        began = time.perf_counter()
        with pytest.raises(CacheLayerError) as caught:
            await asyncio.wait_for(env.cache.get("k", env.fetcher("k")), CALL_BOUND)
        assert caught.value.layer == "redis"
        assert in_chain(caught.value, (redis.exceptions.TimeoutError, TimeoutError))
        # The client timeout bounds the failure: no waiting for the slow reply.
        assert time.perf_counter() - began < 1.0
        return

    before = time.time()
    value, seconds = await timed(env.cache.get("k", env.fetcher("k")))
    assert value == "fetched:k"  # fell back to the fetcher
    assert env.fetches == ["k"]
    assert seconds < 1.0, f"graceful L2 hit under a slow Redis took {seconds:.3f}s"
    degraded_until = env.redis_status().degraded_until
    assert degraded_until is not None
    assert before + RETRY_AFTER - 0.05 <= degraded_until <= time.time() + RETRY_AFTER + 0.05

    # While degraded, Redis is skipped: another cold read costs no timeout at all.
    value, seconds = await timed(env.cache.get("other", env.fetcher("other")))
    assert value == "fetched:other"
    assert seconds < 0.15, f"a read while Redis is degraded still waited {seconds:.3f}s"
    # And the fetched value is served from L1 from now on.
    value, seconds = await timed(env.cache.get("k"))
    assert value == "fetched:k"
    assert seconds < 0.1


@pytest.mark.parametrize("graceful", MODES)
async def test_slow_redis_cold_miss(
    redis_proxy: TcpProxy, make_env: StackFactory, graceful: bool
) -> None:
    env = await make_env(redis_proxy.url, graceful=graceful)
    redis_proxy.set_latency(SLOW)

    if not graceful:
        began = time.perf_counter()
        with pytest.raises(CacheLayerError) as caught:
            await asyncio.wait_for(env.cache.get("cold", env.fetcher("cold")), CALL_BOUND)
        assert caught.value.layer == "redis"
        assert in_chain(caught.value, (redis.exceptions.TimeoutError, TimeoutError))
        assert time.perf_counter() - began < 1.0
        return

    value, seconds = await timed(env.cache.get("cold", env.fetcher("cold")))
    assert value == "fetched:cold"
    assert env.fetches == ["cold"]
    assert seconds < 1.0, f"graceful cold miss under a slow Redis took {seconds:.3f}s"
    assert env.redis_status().degraded_until is not None


async def test_graceful_error_event_on_each_layer_failure(
    redis_proxy: TcpProxy, make_env: StackFactory
) -> None:
    env = await make_env(redis_proxy.url, graceful=True)
    events: list[dict[str, Any]] = []
    env.cache.on("error", events.append)
    redis_proxy.cut("refuse")

    assert await asyncio.wait_for(env.cache.get("a", env.fetcher("a")), CALL_BOUND) == "fetched:a"
    assert events, "a layer failure in graceful mode emits an error event"
    assert env.cache.get_metrics().errors >= 1


# -- Redis killed mid-traffic -----------------------------------------------------------


@dataclass
class Traffic:
    """Outcome counters of the concurrent readers."""

    ok: int = 0
    wrong: list[tuple[str, Any]] = field(default_factory=list)
    failures: list[BaseException] = field(default_factory=list)

    @property
    def calls(self) -> int:
        return self.ok + len(self.wrong) + len(self.failures)


async def run_readers(
    env: Env, traffic: Traffic, stop: asyncio.Event, workers: int = 50, keys: int = 200
) -> list[asyncio.Task[None]]:
    """Start ``workers`` tasks doing get-with-fetcher on random keys until ``stop``."""

    async def fetch_for(key: str) -> str:
        await asyncio.sleep(0.001)  # a little origin latency, so fetches overlap
        return f"value:{key}"

    async def worker(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            key = f"user:{rng.randrange(keys)}"
            try:
                value = await asyncio.wait_for(
                    env.cache.get(key, lambda key=key: fetch_for(key)), CALL_BOUND
                )
            except Exception as exc:
                traffic.failures.append(exc)
            else:
                if value == f"value:{key}":
                    traffic.ok += 1
                else:
                    traffic.wrong.append((key, value))
            await asyncio.sleep(0)  # L1 hits never yield: let the other readers run

    return [asyncio.create_task(worker(i)) for i in range(workers)]


async def until(condition: Callable[[], bool], deadline: float, what: str) -> None:
    """Poll ``condition`` every few ms; fail after ``deadline`` seconds."""
    began = time.perf_counter()
    while not condition():
        assert time.perf_counter() - began < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(POLL)


@pytest.mark.parametrize("graceful", MODES)
async def test_redis_killed_mid_traffic(
    redis_clean: RedisServer, make_env: StackFactory, graceful: bool
) -> None:
    # Straight to the server (no proxy): the process dies, connections are refused.
    # A small L1 keeps most reads going to Redis.
    env = await make_env(redis_clean.url, graceful=graceful, memory_size=16)
    traffic = Traffic()
    stop = asyncio.Event()
    tasks = await run_readers(env, traffic, stop)
    try:
        await until(lambda: traffic.calls >= 300, 15, "traffic before the kill")
        failures_before = len(traffic.failures)
        calls_at_kill = traffic.calls
        # Stop the server in a thread, so the readers keep running while it dies.
        await asyncio.to_thread(redis_clean.stop)
        killed_at = time.perf_counter()
        # Keep the load on past retry_after, so graceful mode also probes the dead server.
        await until(
            lambda: (
                traffic.calls - calls_at_kill >= 300
                and time.perf_counter() - killed_at > RETRY_AFTER + 0.3
            ),
            15,
            "traffic while Redis is down",
        )
        if graceful:
            assert env.redis_status().degraded_until is not None
            # Bring it back under load: the recovery path must not lose requests either.
            await asyncio.to_thread(redis_clean.start)
            restarted_at = time.perf_counter()
            await until(
                lambda: time.perf_counter() - restarted_at > RETRY_AFTER + 0.3,
                15,
                "traffic after the restart",
            )
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 2 * CALL_BOUND)

    assert traffic.wrong == []
    assert failures_before == 0
    if graceful:
        assert traffic.failures == [], (
            f"graceful mode lost {len(traffic.failures)} of {traffic.calls} requests: "
            f"{traffic.failures[:3]!r}"
        )
    else:
        assert traffic.failures, "strict mode reported no failure while Redis was dead"
        foreign = [f for f in traffic.failures if not isinstance(f, CacheLayerError)]
        assert foreign == [], f"strict mode raised non-CacheLayerError failures: {foreign[:3]!r}"
        assert {f.layer for f in traffic.failures if isinstance(f, CacheLayerError)} == {"redis"}


# -- Redis cut off and restored: recovery -------------------------------------------------

OUTAGES = ["proxy-refuse", "proxy-blackhole", "server-stop"]


async def start_outage(kind: str, proxy: TcpProxy, server: RedisServer) -> None:
    if kind == "server-stop":
        await asyncio.to_thread(server.stop)
    else:
        proxy.cut("refuse" if kind == "proxy-refuse" else "blackhole")


async def end_outage(kind: str, proxy: TcpProxy, server: RedisServer) -> None:
    if kind == "server-stop":
        await asyncio.to_thread(server.start)
    else:
        proxy.restore()


@pytest.mark.parametrize("kind", OUTAGES)
async def test_graceful_recovers_by_itself_after_retry_after(
    redis_proxy: TcpProxy, redis_clean: RedisServer, make_env: StackFactory, kind: str
) -> None:
    url = redis_clean.url if kind == "server-stop" else redis_proxy.url
    env = await make_env(url, graceful=True)
    await env.cache.set("probe", "p")

    await start_outage(kind, redis_proxy, redis_clean)
    # Traffic during the outage (longer than retry_after, so probes of the dead Redis fail
    # and re-degrade it): every read answers, from L1 or the fetcher, never an error.
    outage_began = time.perf_counter()
    while time.perf_counter() - outage_began < RETRY_AFTER * 1.5:
        env.memory.clear()
        value, _ = await timed(env.cache.get("probe"))
        assert value in (None, "p")
        value, _ = await timed(env.cache.get("during", env.fetcher("during")))
        assert value == "fetched:during"
        await asyncio.sleep(POLL)
    assert env.redis_status().degraded_until is not None

    await end_outage(kind, redis_proxy, redis_clean)
    if kind == "server-stop":
        # A restarted redis-server without persistence starts empty: put the probe back.
        await asyncio.wait_for(env.direct.set("probe", stored("p"), None), CALL_BOUND)
    restored = time.perf_counter()
    hits_before = env.cache.get_metrics().layers["redis"].hits
    while True:
        env.memory.clear()
        value, _ = await timed(env.cache.get("probe"))
        if env.cache.get_metrics().layers["redis"].hits > hits_before:
            break
        assert value is None
        assert time.perf_counter() - restored < RECOVERY_BOUND, "Redis never served again"
        await asyncio.sleep(POLL)
    recovery = time.perf_counter() - restored
    assert value == "p"
    assert env.redis_status().degraded_until is None
    print(f"\n[{kind}] first Redis hit {recovery * 1000:.0f} ms after Redis came back")
    # At most one retry_after (plus a timed-out probe and scheduling slack).
    assert recovery < RETRY_AFTER + 0.8

    # Writes reach Redis again.
    value, _ = await timed(env.cache.get("after", env.fetcher("after")))
    assert value == "fetched:after"
    assert await env.in_redis("after") == "fetched:after"


def stored(value: Any) -> Entry:
    """An entry as the stack would store it (fresh for 10 minutes)."""
    now = time.time()
    return Entry(value, now, now + 600, None, None, ())


@pytest.mark.parametrize("kind", ["proxy-refuse", "proxy-blackhole"])
async def test_strict_reports_the_outage_and_works_again_after_it(
    redis_proxy: TcpProxy, make_env: StackFactory, kind: str
) -> None:
    env = await make_env(redis_proxy.url, graceful=False)
    await env.cache.set("k", "v")
    env.memory.clear()

    redis_proxy.cut("refuse" if kind == "proxy-refuse" else "blackhole")
    for operation in (
        lambda: env.cache.get("k", env.fetcher("k")),
        lambda: env.cache.set("k2", "v2"),
        lambda: env.cache.delete("k"),
        lambda: env.cache.invalidate_by_prefix("k"),
    ):
        with pytest.raises(CacheLayerError):
            await asyncio.wait_for(operation(), CALL_BOUND)

    redis_proxy.restore()
    # No degradation state in strict mode: the very next call after the outage works.
    value, _ = await timed(env.cache.get("k", env.fetcher("k")))
    assert value == "v"
    assert env.redis_status().degraded_until is None


# -- no resurrection: what happened while Redis was away is not undone by its return ------

OPERATIONS: dict[str, Callable[[CacheStack], Awaitable[Any]]] = {
    "delete": lambda cache: cache.delete("user:1"),
    "delete_many": lambda cache: cache.delete_many(["user:1", "user:404"]),
    "invalidate_by_tag": lambda cache: cache.invalidate_by_tag("users"),
    "invalidate_by_tags": lambda cache: cache.invalidate_by_tags(["users", "x"], mode="any"),
    "invalidate_by_pattern": lambda cache: cache.invalidate_by_pattern("user:*"),
    "invalidate_by_prefix": lambda cache: cache.invalidate_by_prefix("user:"),
    "clear": lambda cache: cache.clear(),
    "set": lambda cache: cache.set("user:1", "v2"),
}

RESURRECTION_CASES = [
    *[pytest.param(op, "refuse", "the-write", id=f"{op}-refuse") for op in OPERATIONS],
    *[
        pytest.param(op, "refuse", "an-earlier-read", id=f"{op}-refuse-already-degraded")
        for op in OPERATIONS
    ],
    *[
        pytest.param(op, "blackhole", "the-write", id=f"{op}-blackhole")
        for op in ("delete", "invalidate_by_tag", "set")
    ],
]


@pytest.mark.parametrize(("operation", "mode", "discovered_by"), RESURRECTION_CASES)
async def test_write_during_outage_is_not_undone_by_recovery(
    redis_proxy: TcpProxy,
    make_env: StackFactory,
    operation: str,
    mode: str,
    discovered_by: str,
) -> None:
    env = await make_env(redis_proxy.url, graceful=True, retry_after=QUICK_RETRY_AFTER)
    await env.cache.set("user:1", "v1", tags=["users"])
    await env.cache.set("probe", "p")
    assert await env.in_redis("user:1") == "v1"

    redis_proxy.cut(mode)  # type: ignore[arg-type]
    if discovered_by == "an-earlier-read":
        # Redis is already known to be down (degraded) when the write comes: it is skipped.
        env.memory.clear()
        value, _ = await timed(env.cache.get("probe"))
        assert value is None  # Redis skipped: the probe is only there
        assert env.redis_status().degraded_until is not None
    await asyncio.wait_for(OPERATIONS[operation](env.cache), CALL_BOUND)  # graceful: succeeds
    # Meaningful only if the write really missed Redis: the old value is still there.
    assert await env.in_redis("user:1") == "v1"
    expected = "v2" if operation == "set" else None

    redis_proxy.restore()
    # From now on, whatever the state of the recovery, v1 must never be served.
    began = time.perf_counter()
    consulted = env.redis_counts()
    while True:
        env.memory.clear()
        value, _ = await timed(env.cache.get("user:1"))
        assert value != "v1", f"{operation} during the outage was undone: v1 came back"
        assert value in (None, expected)
        if env.redis_status().degraded_until is None and env.redis_counts() > consulted:
            break
        assert time.perf_counter() - began < RECOVERY_BOUND, (
            f"Redis layer not recovered: {env.redis_status()}"
        )
        await asyncio.sleep(POLL)

    # Recovered: Redis itself no longer holds v1 (the write was replayed, or the layer fenced).
    for _ in range(3):
        env.memory.clear()
        value, _ = await timed(env.cache.get("user:1", env.fetcher("user:1", "refetched")))
        assert value in ("refetched", expected), value
    assert await env.in_redis("user:1") != "v1"


async def test_graceful_fences_a_layer_that_missed_too_much(
    redis_proxy: TcpProxy, make_env: StackFactory
) -> None:
    from layercache._async.adapter import MAX_MISSED

    bound = MAX_MISSED
    env = await make_env(redis_proxy.url, graceful=True, retry_after=QUICK_RETRY_AFTER)
    await env.cache.set("user:1", "v1")
    await env.cache.set("bystander", "b")

    redis_proxy.cut("refuse")
    await asyncio.wait_for(env.cache.delete("user:1"), CALL_BOUND)
    # More missed operations than the replay log holds: the layer must be fenced instead.
    for i in range(bound):
        await env.cache.delete(f"x:{i}")
    assert await env.in_redis("user:1") == "v1"

    redis_proxy.restore()
    began = time.perf_counter()
    consulted = env.redis_counts()
    while True:
        env.memory.clear()
        value, _ = await timed(env.cache.get("user:1"))
        assert value is None
        if env.redis_status().degraded_until is None and env.redis_counts() > consulted:
            break
        assert time.perf_counter() - began < RECOVERY_BOUND
        await asyncio.sleep(POLL)
    # Fenced: cleared on recovery, so even keys nobody touched are gone from Redis.
    assert await env.in_redis("user:1") is None
    assert await env.in_redis("bystander") is None


# -- the other read paths in graceful mode ---------------------------------------------


async def test_graceful_get_many_falls_through_during_an_outage(
    redis_proxy: TcpProxy, make_env: StackFactory
) -> None:
    env = await make_env(redis_proxy.url, graceful=True)
    await env.cache.set("a", "A")
    env.memory.clear()
    redis_proxy.cut("refuse")

    values, _ = await timed(
        env.cache.get_many([("a", env.fetcher("a")), ("b", env.fetcher("b")), "c"])
    )
    assert values == ["fetched:a", "fetched:b", None]
    assert env.redis_status().degraded_until is not None


@pytest.mark.parametrize("query", ["has", "ttl", "inspect"])
async def test_graceful_queries_do_not_raise_during_an_outage(
    redis_proxy: TcpProxy, make_env: StackFactory, query: str
) -> None:
    env = await make_env(redis_proxy.url, graceful=True)
    await env.cache.set("a", "A")
    env.memory.clear()  # only Redis holds it, and Redis is about to be unreachable
    redis_proxy.cut("refuse")

    # The value cannot be seen while Redis is away; what matters is that no error surfaces.
    await asyncio.wait_for(getattr(env.cache, query)("a"), CALL_BOUND)


READ_PATHS: dict[str, tuple[Callable[[CacheStack], Awaitable[Any]], Any]] = {
    "get": (lambda cache: cache.get("user:1"), None),
    "get_many": (lambda cache: cache.get_many(["user:1"]), [None]),
    "has": (lambda cache: cache.has("user:1"), False),
    "ttl": (lambda cache: cache.ttl("user:1"), None),
    "inspect": (lambda cache: cache.inspect("user:1"), None),
}


@pytest.mark.parametrize("read", list(READ_PATHS))
async def test_no_read_path_sees_a_deleted_value_before_the_replay(
    redis_proxy: TcpProxy, make_env: StackFactory, read: str
) -> None:
    # Redis is reachable again but still degraded (retry_after not over): the delete it
    # missed has not been replayed yet, so every read path must keep skipping it.
    env = await make_env(redis_proxy.url, graceful=True, retry_after=RETRY_AFTER)
    await env.cache.set("user:1", "v1")
    redis_proxy.cut("refuse")
    await asyncio.wait_for(env.cache.delete("user:1"), CALL_BOUND)
    redis_proxy.restore()
    assert await env.in_redis("user:1") == "v1"  # not replayed yet
    assert env.redis_status().degraded_until is not None

    env.memory.clear()
    call, absent = READ_PATHS[read]
    result = await asyncio.wait_for(call(env.cache), CALL_BOUND)
    assert result == absent, f"{read} served the deleted value from the degraded layer"


# -- write-behind and outages -------------------------------------------------------------


async def until_true(condition: Callable[[], Awaitable[bool]], deadline: float, what: str) -> None:
    """Like :func:`until` for an async condition."""
    began = time.perf_counter()
    while not await condition():
        assert time.perf_counter() - began < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(POLL)


@pytest.mark.parametrize("graceful", MODES)
async def test_write_behind_delete_during_an_outage_is_not_lost(
    redis_proxy: TcpProxy, make_env: StackFactory, graceful: bool
) -> None:
    env = await make_env(
        redis_proxy.url,
        graceful=graceful,
        retry_after=QUICK_RETRY_AFTER,
        write_strategy="write-behind",
        write_behind={"batch_size": 100, "flush_interval": 0.02, "max_queue": 10_000},
    )
    await env.cache.set("user:1", "v1")

    async def flushed() -> bool:
        return bool(await env.in_redis("user:1") == "v1")

    await until_true(flushed, RECOVERY_BOUND, "the write-behind flush of v1")

    redis_proxy.cut("refuse")
    await asyncio.wait_for(env.cache.delete("user:1"), CALL_BOUND)  # queued: returns at once
    # Wait until the queued delete was tried against the dead Redis (and failed).
    await until(
        lambda: env.cache.get_metrics().write_failures > 0,
        RECOVERY_BOUND,
        "a failed write-behind flush",
    )
    assert await env.in_redis("user:1") == "v1"

    redis_proxy.restore()
    began = time.perf_counter()
    while time.perf_counter() - began < QUICK_RETRY_AFTER * 3:
        env.memory.clear()
        value, _ = await timed(env.cache.get("user:1"))
        assert value != "v1", "the delete queued during the outage was lost: v1 came back"
        await asyncio.sleep(POLL)
