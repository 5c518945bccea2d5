# DO NOT EDIT: generated from tests/stack/test_l2_batching.py
# by scripts/unasync_tests.py. Change the async source and run
# `python scripts/unasync_tests.py`.
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

from _twins_sync import ASYNC, Event, join_all, spawn, wait_event
from layercache import CacheLayerError, RedisLayer, SyncCacheStack

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

    def get_batch(self, keys: list[str]) -> Any:
        self._bulk_read(keys)
        return self.inner.get_batch(keys)

    def get_leased_batch(self, keys: list[str]) -> Any:
        self._bulk_read(keys)
        return self.inner.get_leased_batch(keys)

    def _bulk_read(self, keys: list[str]) -> None:
        self.bulk_reads.append(list(keys))
        self.bulk_read_sent.set()
        if self.hold is not None:
            wait_event(self.hold)

    def set_batch(self, items: list[Any]) -> Any:
        self.bulk_writes.append([key for key, _, _ in items])
        return self.inner.set_batch(items)


def command_calls(client: Any) -> dict[str, int]:
    """Calls per command since the last ``CONFIG RESETSTAT`` (as the server counts them)."""
    stats = client.info("commandstats")
    return {
        name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
        for name in ("get", "mget", "set", "evalsha")
    }


def test_concurrent_reads_of_distinct_keys_share_bulk_reads(
    redis_proxy: Any, redis_sync_client: Any
) -> None:
    # 300 callers on the default pool (50 connections): unbatched, 300 GETs queue for them.
    cache = SyncCacheStack([RedisLayer(url=redis_proxy.url, prefix=PREFIX, ttl=60)])
    try:
        values = {f"k{i}": {"n": i, "s": "v" * i} for i in range(300)}
        cache.set_many(list(values.items()))
        redis_sync_client.config_resetstat()
        redis_proxy.set_latency(0.02)  # every round trip takes 40 ms: callers pile up
        gate = Event()

        def read(key: str) -> Any:
            wait_event(gate)
            return cache.get(key)

        callers = [spawn(read, key) for key in values]
        gate.set()
        assert join_all(callers, timeout=30) == list(values.values())
        calls = command_calls(redis_sync_client)
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
        cache.close()


def test_values_of_every_type_come_back_from_a_batch_as_stored(redis_proxy: Any) -> None:
    layer = Watched(RedisLayer(url=redis_proxy.url, prefix=PREFIX, ttl=60))
    cache = SyncCacheStack([layer])
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
        cache.set_many(list(values.items()))
        redis_proxy.set_latency(0.02)
        gate = Event()

        def read(key: str) -> Any:
            wait_event(gate)
            return cache.get(key)

        callers = [spawn(read, key) for key in values]
        gate.set()
        got = join_all(callers)
        assert layer.bulk_reads, "no batch was formed"
        for (key, expected), value in zip(values.items(), got, strict=True):
            assert value == expected, key
            assert type(value) is type(expected), key
    finally:
        cache.close()


def test_hostile_and_huge_values_in_one_batch(redis_proxy: Any, redis_sync_client: Any) -> None:
    layer = Watched(RedisLayer(url=redis_proxy.url, prefix=PREFIX, ttl=60))
    cache = SyncCacheStack([layer])
    reported: list[tuple[str, str]] = []
    layer.inner.add_error_handler(lambda exc, ctx: reported.append((ctx["key"], ctx["operation"])))
    huge = "x" * (8 * 1024 * 1024)
    try:
        cache.set("huge", huge)
        cache.set_many([(f"k{i}", i) for i in range(20)])
        # Bytes that are no entry, written by another program: a miss, reported, never decoded.
        redis_sync_client.set(f"{PREFIX}garbage", b"\x80\x04\x95 not an entry")
        redis_sync_client.set(f"{PREFIX}nul", b"")
        keys = ["huge", "garbage", "nul", "absent", *(f"k{i}" for i in range(20))]
        redis_proxy.set_latency(0.02)
        gate = Event()

        def read(key: str) -> Any:
            wait_event(gate)
            return cache.get(key)

        callers = [spawn(read, key) for key in keys]
        gate.set()
        got = dict(zip(keys, join_all(callers, timeout=30), strict=True))
        assert got["huge"] == huge
        assert (got["garbage"], got["nul"], got["absent"]) == (None, None, None)
        assert [got[f"k{i}"] for i in range(20)] == list(range(20))
        assert sorted(reported) == [("garbage", "get"), ("nul", "get")]
        assert any("huge" in batch or "garbage" in batch for batch in layer.bulk_reads)
    finally:
        cache.close()


@pytest.mark.parametrize("cut", ["refuse", "blackhole"])
def test_redis_cut_mid_batch_fails_each_caller_of_the_batch(redis_proxy: Any, cut: str) -> None:
    layer = Watched(RedisLayer(url=redis_proxy.url, prefix=PREFIX, ttl=60, socket_timeout=0.5))
    cache = SyncCacheStack([layer])
    try:
        cache.set_many([(f"k{i}", i) for i in range(30)])
        redis_proxy.set_latency(0.1)
        callers = [spawn(cache.get, f"k{i}") for i in range(30)]
        wait_event(layer.bulk_read_sent)  # a batch is on its way to Redis
        redis_proxy.cut(cut)  # type: ignore[arg-type]
        results = join_all(callers, return_exceptions=True, timeout=30)
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
        assert cache.get("k3") == 3  # nothing is left stuck
    finally:
        redis_proxy.restore()
        cache.close()


def test_redis_cut_mid_batch_degrades_to_the_fetcher_for_each_caller(
    redis_proxy: Any,
) -> None:
    layer = Watched(RedisLayer(url=redis_proxy.url, prefix=PREFIX, ttl=60, socket_timeout=0.5))
    cache = SyncCacheStack([layer], graceful_degradation={"retry_after": 30})
    try:
        cache.set_many([(f"k{i}", i) for i in range(20)])
        redis_proxy.set_latency(0.1)

        def fetcher(key: str) -> Any:
            def fetch() -> str:
                return f"origin-{key}"

            return fetch

        callers = [spawn(cache.get, f"k{i}", fetcher(f"k{i}")) for i in range(20)]
        wait_event(layer.bulk_read_sent)
        redis_proxy.cut("refuse")
        results = join_all(callers, timeout=30)
        in_batch = set(layer.bulk_reads[0])
        for i, result in enumerate(results):
            key = f"k{i}"
            assert result == (f"origin-{key}" if key in in_batch else i)
        assert cache.get_stats().layers[0].degraded_until is not None
    finally:
        redis_proxy.restore()
        cache.close()


def test_callers_on_many_threads_or_tasks_read_their_own_writes(
    redis_clean: Any, fast_switching: None
) -> None:
    # Coalesced sets and batched reads under preemption every microsecond (threads in the
    # twin): each caller owns its keys, so it must read back exactly what it last wrote.
    layer = Watched(RedisLayer(url=redis_clean.url, prefix=PREFIX, ttl=60))
    cache = SyncCacheStack([layer])

    def caller(n: int) -> int:
        for step in range(15):
            key = f"c{n}:{step % 3}"
            cache.set(key, [n, step])
            got = cache.get(key)
            assert got == [n, step], (key, got)
            assert cache.get(f"c{n}:absent") is None
        return n

    try:
        assert join_all([spawn(caller, n) for n in range(32)], timeout=60) == list(range(32))
        assert layer.bulk_reads  # they did share calls
        assert layer.bulk_writes
    finally:
        cache.close()


def test_concurrent_sets_share_pipelines_and_fail_alone(redis_proxy: Any) -> None:
    layer = Watched(RedisLayer(url=redis_proxy.url, prefix=PREFIX, ttl=60))
    cache = SyncCacheStack([layer])
    try:
        cache.set("warm", 0)  # the connection is open before the latency starts
        redis_proxy.set_latency(0.02)
        gate = Event()

        def write(key: str, value: Any) -> Any:
            wait_event(gate)
            cache.set(key, value)
            return key

        items: list[tuple[str, Any]] = [(f"w{i}", i) for i in range(200)]
        items.insert(57, ("bad", object()))  # cannot be serialized: fails its own caller only
        callers = [spawn(write, key, value) for key, value in items]
        gate.set()
        results = join_all(callers, return_exceptions=True, timeout=30)
        bad = results[57]
        with pytest.raises(type(bad)) as lone:  # what a set of its own raises
            cache.set("bad", object())
        assert str(bad) == str(lone.value)
        assert [r for r in results if isinstance(r, BaseException)] == [bad]
        redis_proxy.set_latency(0)
        assert cache.get_many([f"w{i}" for i in range(200)]) == list(range(200))
        assert cache.get("bad") is None
        written = sum(len(batch) for batch in layer.bulk_writes)
        if ASYNC:
            # The first set goes alone; the 200 queued behind it go in one pipeline.
            assert (len(layer.bulk_writes), written) == (1, 200), layer.bulk_writes
        else:
            assert 1 <= len(layer.bulk_writes) <= 12, layer.bulk_writes
            assert written >= 150, layer.bulk_writes
    finally:
        cache.close()


def test_cold_reads_with_fetchers_batch_their_leased_reads(redis_proxy: Any) -> None:
    # Reads that may start a fetch carry a lease (conditional stores): batched too, and every
    # fetched value is stored under its own read's lease.
    layer = Watched(RedisLayer(url=redis_proxy.url, prefix=PREFIX, ttl=60))
    cache = SyncCacheStack([layer])
    fetched: list[str] = []
    try:
        cache.set("warm", 0)
        redis_proxy.set_latency(0.02)
        gate = Event()

        def read(key: str) -> Any:
            def fetch() -> str:
                fetched.append(key)
                return f"v-{key}"

            wait_event(gate)
            return cache.get(key, fetch)

        keys = [f"cold{i}" for i in range(40)]
        callers = [spawn(read, key) for key in keys]
        gate.set()
        assert join_all(callers, timeout=30) == [f"v-{k}" for k in keys]
        assert sorted(fetched) == sorted(keys)
        assert layer.bulk_reads
        redis_proxy.set_latency(0)
        # Stored under the leases of the batched reads: Redis has every value now.
        assert [e.value for e in layer.inner.get_many(keys)] == [f"v-{k}" for k in keys]
    finally:
        cache.close()


def test_batching_can_be_turned_off(redis_proxy: Any, redis_sync_client: Any) -> None:
    cache = SyncCacheStack(
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
        cache.set_many([(f"k{i}", i) for i in range(20)])
        redis_sync_client.config_resetstat()
        redis_proxy.set_latency(0.01)
        callers = [spawn(cache.get, f"k{i}") for i in range(20)]
        assert join_all(callers) == list(range(20))
        calls = command_calls(redis_sync_client)
        assert (calls["get"], calls["mget"]) == (20, 0)
    finally:
        cache.close()


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
