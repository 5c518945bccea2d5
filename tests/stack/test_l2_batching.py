"""Auto-batched reads and coalesced writes of a remote layer (issue 16), on a real Redis.

Concurrent reads of distinct keys that miss L1 share bulk reads (``MGET``): a read sent while
another is in flight waits and goes with the next batch; every caller gets its own value, and
a batch that fails fails each of its callers as its own read would have. Concurrent stores
share pipelines the same way, with one outcome per caller. Round trips are counted by the
server (``INFO commandstats``) or by a pass-through layer that records each bulk call.

The generated twin (tests/generated_sync/) runs the same tests on ``SyncCacheStack`` with real
threads; what only tasks can do (be cancelled, run on several event loops) is async-only.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

import pytest

from _twins_async import ASYNC, Event, join_all, pause, spawn, wait_event
from layercache import CacheLayerError, CacheStack, RedisLayer

pytestmark = pytest.mark.redis

PREFIX = "lc-batch:"


class Watched:
    """A Redis layer seen through: records every bulk read and write before passing it on
    (the round trips a batch costs, and the moment one is sent)."""

    is_local = False

    def __init__(self, inner: Any) -> None:
        if not ASYNC:
            inner = inner._sync_twin()  # what SyncCacheStack would use in its place
        self.inner = inner
        self.name = inner.name
        self.default_ttl = inner.default_ttl
        self.bulk_reads: list[list[str]] = []
        self.bulk_writes: list[list[str]] = []
        self.bulk_read_sent = Event()
        # When set, a bulk read waits for it before it goes on to Redis.
        self.hold: Any = None

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    async def get_batch(self, keys: list[str]) -> Any:
        await self._bulk_read(keys)
        return await self.inner.get_batch(keys)

    async def get_leased_batch(self, keys: list[str]) -> Any:
        await self._bulk_read(keys)
        return await self.inner.get_leased_batch(keys)

    async def _bulk_read(self, keys: list[str]) -> None:
        self.bulk_reads.append(list(keys))
        self.bulk_read_sent.set()
        if self.hold is not None:
            await wait_event(self.hold)

    async def set_batch(self, items: list[Any]) -> Any:
        self.bulk_writes.append([key for key, _, _ in items])
        return await self.inner.set_batch(items)


async def command_calls(client: Any) -> dict[str, int]:
    """Calls per command since the last ``CONFIG RESETSTAT`` (as the server counts them)."""
    stats = await client.info("commandstats")
    return {
        name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
        for name in ("get", "mget", "set", "evalsha")
    }


async def test_concurrent_reads_of_distinct_keys_share_bulk_reads(
    redis_proxy: Any, redis_client: Any
) -> None:
    # 300 callers on the default pool (50 connections): unbatched, 300 GETs queue for them.
    cache = CacheStack([RedisLayer(url=redis_proxy.url, prefix=PREFIX, ttl=60)])
    try:
        values = {f"k{i}": {"n": i, "s": "v" * i} for i in range(300)}
        await cache.set_many(list(values.items()))
        await redis_client.config_resetstat()
        redis_proxy.set_latency(0.02)  # every round trip takes 40 ms: callers pile up
        gate = Event()

        async def read(key: str) -> Any:
            await wait_event(gate)
            return await cache.get(key)

        callers = [spawn(read, key) for key in values]
        gate.set()
        assert await join_all(callers, timeout=30) == list(values.values())
        calls = await command_calls(redis_client)
        if ASYNC:
            # The first read goes alone; the 299 queued behind it take two MGETs (256 + 43).
            assert (calls["get"], calls["mget"]) == (1, 2), calls
        else:
            # Threads arrive over a few milliseconds: a few more batches, never one per read.
            assert calls["get"] + calls["mget"] <= 12, calls
            assert calls["mget"] >= 1, calls
        # Each caller's read is timed (as long as it waited for its value).
        metrics = cache.get_metrics().layers["redis"]
        assert metrics.operations["get"].count == 300
        assert metrics.hits == 300
    finally:
        await cache.aclose()


async def test_values_of_every_type_come_back_from_a_batch_as_stored(redis_proxy: Any) -> None:
    layer = Watched(RedisLayer(url=redis_proxy.url, prefix=PREFIX, ttl=60))
    cache = CacheStack([layer])
    values: dict[str, Any] = {
        "int": 7,
        "big": 2**70,
        "float": 1.5,
        "str": "héllo 🎉",
        "empty": "",
        "bool": True,
        "list": [1, "two", [3.0]],
        "dict": {"a": {"b": [None, False]}},
        "bytes": b"\x00\xff raw",
        "datetime": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
        "date": dt.date(2024, 2, 29),
        "decimal": decimal.Decimal("1.10"),
        "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    }
    try:
        await cache.set_many(list(values.items()))
        redis_proxy.set_latency(0.02)
        gate = Event()

        async def read(key: str) -> Any:
            await wait_event(gate)
            return await cache.get(key)

        callers = [spawn(read, key) for key in values]
        gate.set()
        got = await join_all(callers)
        assert layer.bulk_reads, "no batch was formed"
        for (key, expected), value in zip(values.items(), got, strict=True):
            assert value == expected, key
            assert type(value) is type(expected), key
    finally:
        await cache.aclose()


async def test_hostile_and_huge_values_in_one_batch(redis_proxy: Any, redis_client: Any) -> None:
    layer = Watched(RedisLayer(url=redis_proxy.url, prefix=PREFIX, ttl=60))
    cache = CacheStack([layer])
    reported: list[tuple[str, str]] = []
    layer.inner.add_error_handler(lambda exc, ctx: reported.append((ctx["key"], ctx["operation"])))
    huge = "x" * (8 * 1024 * 1024)
    try:
        await cache.set("huge", huge)
        await cache.set_many([(f"k{i}", i) for i in range(20)])
        # Bytes that are no entry, written by another program: a miss, reported, never decoded.
        await redis_client.set(f"{PREFIX}garbage", b"\x80\x04\x95 not an entry")
        await redis_client.set(f"{PREFIX}nul", b"")
        keys = ["huge", "garbage", "nul", "absent", *(f"k{i}" for i in range(20))]
        redis_proxy.set_latency(0.02)
        gate = Event()

        async def read(key: str) -> Any:
            await wait_event(gate)
            return await cache.get(key)

        callers = [spawn(read, key) for key in keys]
        gate.set()
        got = dict(zip(keys, await join_all(callers, timeout=30), strict=True))
        assert got["huge"] == huge
        assert (got["garbage"], got["nul"], got["absent"]) == (None, None, None)
        assert [got[f"k{i}"] for i in range(20)] == list(range(20))
        assert sorted(reported) == [("garbage", "get"), ("nul", "get")]
        assert any("huge" in batch or "garbage" in batch for batch in layer.bulk_reads)
    finally:
        await cache.aclose()


@pytest.mark.parametrize("cut", ["refuse", "blackhole"])
async def test_redis_cut_mid_batch_fails_each_caller_of_the_batch(
    redis_proxy: Any, cut: str
) -> None:
    layer = Watched(RedisLayer(url=redis_proxy.url, prefix=PREFIX, ttl=60, socket_timeout=0.5))
    cache = CacheStack([layer])
    try:
        await cache.set_many([(f"k{i}", i) for i in range(30)])
        redis_proxy.set_latency(0.1)
        callers = [spawn(cache.get, f"k{i}") for i in range(30)]
        await wait_event(layer.bulk_read_sent)  # a batch is on its way to Redis
        redis_proxy.cut(cut)  # type: ignore[arg-type]
        results = await join_all(callers, return_exceptions=True, timeout=30)
        failed = {f"k{i}" for i, r in enumerate(results) if isinstance(r, BaseException)}
        # Every caller of the batch that was cut off failed; the others had their value.
        assert set(layer.bulk_reads[0]) <= failed
        for i, result in enumerate(results):
            if f"k{i}" in failed:
                assert isinstance(result, CacheLayerError), repr(result)
                # As its own read would have failed: the layer, operation "get", the cause.
                assert (result.layer, result.operation) == ("redis", "get")
                assert result.__cause__ is not None
            else:
                assert result == i
        # One exception per caller, not one shared instance.
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len({id(e) for e in errors}) == len(errors)
        redis_proxy.restore()
        redis_proxy.set_latency(0)
        assert await cache.get("k3") == 3  # nothing is left stuck
    finally:
        redis_proxy.restore()
        await cache.aclose()


async def test_redis_cut_mid_batch_degrades_to_the_fetcher_for_each_caller(
    redis_proxy: Any,
) -> None:
    layer = Watched(RedisLayer(url=redis_proxy.url, prefix=PREFIX, ttl=60, socket_timeout=0.5))
    cache = CacheStack([layer], graceful_degradation={"retry_after": 30})
    try:
        await cache.set_many([(f"k{i}", i) for i in range(20)])
        redis_proxy.set_latency(0.1)

        def fetcher(key: str) -> Any:
            async def fetch() -> str:
                return f"origin-{key}"

            return fetch

        callers = [spawn(cache.get, f"k{i}", fetcher(f"k{i}")) for i in range(20)]
        await wait_event(layer.bulk_read_sent)
        redis_proxy.cut("refuse")
        results = await join_all(callers, timeout=30)
        in_batch = set(layer.bulk_reads[0])
        for i, result in enumerate(results):
            key = f"k{i}"
            assert result == (f"origin-{key}" if key in in_batch else i)
        assert cache.get_stats().layers[0].degraded_until is not None
    finally:
        redis_proxy.restore()
        await cache.aclose()


async def test_callers_on_many_threads_or_tasks_read_their_own_writes(
    redis_clean: Any, fast_switching: None
) -> None:
    # Coalesced sets and batched reads under preemption every microsecond (threads in the
    # twin): each caller owns its keys, so it must read back exactly what it last wrote.
    layer = Watched(RedisLayer(url=redis_clean.url, prefix=PREFIX, ttl=60))
    cache = CacheStack([layer])

    async def caller(n: int) -> int:
        for step in range(15):
            key = f"c{n}:{step % 3}"
            await cache.set(key, [n, step])
            got = await cache.get(key)
            assert got == [n, step], (key, got)
            assert await cache.get(f"c{n}:absent") is None
        return n

    try:
        assert await join_all([spawn(caller, n) for n in range(32)], timeout=60) == list(range(32))
        assert layer.bulk_reads  # they did share calls
        assert layer.bulk_writes
    finally:
        await cache.aclose()


async def test_concurrent_sets_share_pipelines_and_fail_alone(redis_proxy: Any) -> None:
    layer = Watched(RedisLayer(url=redis_proxy.url, prefix=PREFIX, ttl=60))
    cache = CacheStack([layer])
    try:
        await cache.set("warm", 0)  # the connection is open before the latency starts
        redis_proxy.set_latency(0.02)
        gate = Event()

        async def write(key: str, value: Any) -> Any:
            await wait_event(gate)
            await cache.set(key, value)
            return key

        items: list[tuple[str, Any]] = [(f"w{i}", i) for i in range(200)]
        items.insert(57, ("bad", object()))  # cannot be serialized: fails its own caller only
        callers = [spawn(write, key, value) for key, value in items]
        gate.set()
        results = await join_all(callers, return_exceptions=True, timeout=30)
        bad = results[57]
        with pytest.raises(type(bad)) as lone:  # what a set of its own raises
            await cache.set("bad", object())
        assert str(bad) == str(lone.value)
        assert [r for r in results if isinstance(r, BaseException)] == [bad]
        redis_proxy.set_latency(0)
        assert await cache.get_many([f"w{i}" for i in range(200)]) == list(range(200))
        assert await cache.get("bad") is None
        written = sum(len(batch) for batch in layer.bulk_writes)
        if ASYNC:
            # The first set goes alone; the 200 queued behind it go in one pipeline.
            assert (len(layer.bulk_writes), written) == (1, 200), layer.bulk_writes
        else:
            assert 1 <= len(layer.bulk_writes) <= 12, layer.bulk_writes
            assert written >= 150, layer.bulk_writes
    finally:
        await cache.aclose()


async def test_cold_reads_with_fetchers_batch_their_leased_reads(redis_proxy: Any) -> None:
    # Reads that may start a fetch carry a lease (conditional stores): batched too, and every
    # fetched value is stored under its own read's lease.
    layer = Watched(RedisLayer(url=redis_proxy.url, prefix=PREFIX, ttl=60))
    cache = CacheStack([layer])
    fetched: list[str] = []
    try:
        await cache.set("warm", 0)
        redis_proxy.set_latency(0.02)
        gate = Event()

        async def read(key: str) -> Any:
            async def fetch() -> str:
                fetched.append(key)
                return f"v-{key}"

            await wait_event(gate)
            return await cache.get(key, fetch)

        keys = [f"cold{i}" for i in range(40)]
        callers = [spawn(read, key) for key in keys]
        gate.set()
        assert await join_all(callers, timeout=30) == [f"v-{k}" for k in keys]
        assert sorted(fetched) == sorted(keys)
        assert layer.bulk_reads
        redis_proxy.set_latency(0)
        # Stored under the leases of the batched reads: Redis has every value now.
        assert [e.value for e in await layer.inner.get_many(keys)] == [f"v-{k}" for k in keys]
    finally:
        await cache.aclose()


async def test_batching_can_be_turned_off(redis_proxy: Any, redis_client: Any) -> None:
    cache = CacheStack(
        [
            RedisLayer(
                url=redis_proxy.url,
                prefix=PREFIX,
                ttl=60,
                read_batching=False,
                write_batching=False,
            )
        ]
    )
    try:
        await cache.set_many([(f"k{i}", i) for i in range(20)])
        await redis_client.config_resetstat()
        redis_proxy.set_latency(0.01)
        callers = [spawn(cache.get, f"k{i}") for i in range(20)]
        assert await join_all(callers) == list(range(20))
        calls = await command_calls(redis_client)
        assert (calls["get"], calls["mget"]) == (20, 0)
    finally:
        await cache.aclose()


def test_batching_options_are_checked() -> None:
    for bad in (
        {"read_batching": "yes"},
        {"write_batching": 1},
        {"batch_window": -1},
        {"batch_window": 1.0},
        {"batch_window": float("nan")},
        {"max_batch": 0},
        {"max_batch": 10_001},
        {"max_batch": 2.5},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            RedisLayer(url="redis://127.0.0.1:1/0", **bad)
    layer = RedisLayer(url="redis://127.0.0.1:1/0", batch_window=0.001, max_batch=64)
    assert (layer.batch_window, layer.max_batch) == (0.001, 64)


# unasync: begin async-only
async def test_coalesced_sets_of_one_key_keep_their_order(redis_proxy: Any) -> None:
    layer = Watched(RedisLayer(url=redis_proxy.url, prefix=PREFIX, ttl=60))
    cache = CacheStack([layer])
    try:
        await cache.set("k", "start")
        redis_proxy.set_latency(0.02)
        first = spawn(cache.set, "other", 1)  # in flight: the sets below queue behind it
        await pause(0)
        queued = [spawn(cache.set, "k", n) for n in range(10)]
        await join_all([first, *queued])
        assert layer.bulk_writes == [["k"] * 10]
        redis_proxy.set_latency(0)
        assert await cache.get("k") == 9  # applied in the order they were made
    finally:
        await cache.aclose()


async def test_a_cancelled_caller_leaves_and_a_cancelled_leader_strands_nobody(
    redis_proxy: Any,
) -> None:
    import asyncio

    layer = Watched(RedisLayer(url=redis_proxy.url, prefix=PREFIX, ttl=60))
    cache = CacheStack([layer])
    try:
        await cache.set_many([(f"k{i}", i) for i in range(12)])
        redis_proxy.set_latency(0.05)
        alone = spawn(cache.get, "k0")  # sent at once: the others queue behind it
        await pause(0)
        queued = [spawn(cache.get, f"k{i}") for i in range(1, 12)]
        await pause(0)
        queued[0].cancel()  # k1: would have led the next batch
        queued[4].cancel()  # k5: an ordinary waiter
        layer.hold = Event()  # the batch below waits before it reaches Redis
        await wait_event(layer.bulk_read_sent)
        assert "k1" not in layer.bulk_reads[0]
        assert "k5" not in layer.bulk_reads[0]
        # Cancel the leader of the batch in flight: the others go again, with a new leader.
        leader = queued[1]  # k2 leads (k1 left)
        assert layer.bulk_reads[0][0] == "k2"
        leader.cancel()
        await pause(0)
        layer.hold.set()
        results = await asyncio.wait_for(
            asyncio.gather(alone, *queued, return_exceptions=True), timeout=10
        )
        assert results[0] == 0
        for i, result in enumerate(results[1:], start=1):
            if i in (1, 2, 5):
                assert isinstance(result, asyncio.CancelledError)
            else:
                assert result == i
        assert len(layer.bulk_reads) == 2
        assert "k2" not in layer.bulk_reads[1]
    finally:
        await cache.aclose()


def test_one_stack_on_several_event_loops_batches_per_loop(redis_clean: Any) -> None:
    import asyncio
    import threading

    layer = Watched(RedisLayer(url=redis_clean.url, prefix=PREFIX, ttl=60))
    cache = CacheStack([layer])
    failures: list[BaseException] = []

    async def one_loop(n: int) -> None:
        keys = [f"l{n}:{i}" for i in range(64)]
        await cache.set_many([(k, [n, i]) for i, k in enumerate(keys)])
        for _ in range(5):
            got = await asyncio.gather(*(cache.get(k) for k in keys))
            assert got == [[n, i] for i in range(64)]

    def run(n: int) -> None:
        try:
            asyncio.run(one_loop(n))
        except BaseException as exc:  # reported to the test thread
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(t.is_alive() for t in threads)
    assert not failures, failures
    assert layer.bulk_reads
    for batch in layer.bulk_reads:  # a batch never mixes the callers of two loops
        assert len({key.split(":")[0] for key in batch}) == 1, batch

    async def close() -> None:
        await cache.aclose()

    asyncio.run(close())


# unasync: end async-only
