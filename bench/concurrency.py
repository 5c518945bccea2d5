"""Concurrent L2 reads of distinct keys: auto-batched reads against the raw client (issue 16).

Scenarios, all in one run against one throwaway ``redis-server``:

1. **64 concurrent readers (asyncio)**: 64 tasks, each walking its own slice of ``--keys``
   (10,000) pre-stored 1 KiB JSON values, so no two read the same key and nothing is served
   from process memory: layercache with a lone ``RedisLayer`` (batching on, the default; and
   off), memory + Redis with the memory layer emptied before every pass (every read misses L1,
   hits Redis and is backfilled), cashews and aiocache Redis backends, and the floor: raw
   redis-py asyncio ``GET`` + ``json.loads`` with its **default** pool. ops/s (median of the
   rounds), the ratio to the floor, p50 and p99 per read. Goal: layercache ≥ 3x the floor.
2. **L2 hit at concurrency 1**: one key, batching on vs off (``read_batching=False``, what
   the layer did before batching), same method as ``bench.latency`` (calibrated batches,
   interleaved, median of rounds). Goal: on / off ≤ 1.05.
3. **64 threads (sync)**: ``SyncCacheStack`` over the sync Redis layer (batching on, the
   sync default; and off) vs raw sync redis-py ``GET`` + ``json.loads`` (default pool), the
   same walk over distinct keys; and the sync L2 hit at concurrency 1, on vs off.
4. **64 concurrent cold misses (asyncio)**: 64 tasks each walking their own slice of
   ``--cold-keys`` (2,560) keys that are in no layer (the database is emptied before every
   pass), with a trivial fetcher: a leased read, the fetch, the conditional store
   (``set_leased``). layercache with batching on (reads merged into ``MGET`` calls, the stores of
   concurrent fetches into pipelines of the lease-check script), with only reads batched
   (``write_batching=False``: one ``EVALSHA`` per store, as before), with batching off, and
   the floor: raw redis-py ``GET``, then ``SET ... EX`` of the ``json.dumps``'d value. Also
   reported: the server's socket reads (``INFO stats`` ``total_reads_processed``, about one
   per round trip) and commands per key.

Subjects are measured in rounds, each round one pass per subject in a rotated order, so the
drift of a shared machine lands on all of them alike. Also reported: how many keys one MGET
carried on average (the server's ``INFO commandstats``). ``--profile`` prints where the
time of the batched asyncio pass goes (cProfile, top functions by own time).

Usage: ``python -m bench.concurrency [--quick] [--json PATH] [--profile] [--cold-keys N]``
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import json
import pstats
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.fixtures import VALUE, VALUE_JSON, environment, redis_server
from bench.harness import Settings, Subject, measure_latency
from bench.report import latency_table

TTL = 3600
CONCURRENCY = 64
# cashews' own default pool is a BlockingConnectionPool of 10, which would throttle it (as in
# bench/latency.py); the raw floor and layercache use their defaults.
PEER_POOL = 128
RAW = "floor: redis-py GET + json.loads"
LC = "layercache CacheStack[RedisLayer]"
LC_OFF = "layercache CacheStack[RedisLayer], batching off"
SYNC_RAW = "sync floor: redis-py GET + json.loads"
SYNC_LC = "layercache SyncCacheStack[RedisLayer]"
SYNC_LC_OFF = "layercache SyncCacheStack[RedisLayer], batching off"
RAW_SET = "floor: redis-py SET"
LC_SET = "layercache CacheStack[RedisLayer].set"
RAW_COLD = "floor: redis-py GET + SET per key"
LC_COLD = "layercache CacheStack[RedisLayer].get(key, fetcher)"
LC_COLD_READS = "layercache, stores one by one (write_batching=False)"
LC_COLD_OFF = "layercache, batching off"
# The cold walk's database (emptied before each pass, so every key is cold).
COLD_DB = 1
THROUGHPUT_GOAL = 3.0
# The asyncio layers that send one command per call get a connection per task (as raw
# redis-py's default pool gives): with the default 50, 14 of the 64 tasks wait for one, and
# the pool's waiters can starve behind callers that take a released connection first (a
# waiter timed out after 5 s on a loaded machine).
OFF_POOL = 64
C1_GOAL = 1.05
C1_ROUNDS = 11


@dataclass
class Walker:
    """One subject of the concurrent walk: ``read(key)`` for each of its keys.

    ``before_pass`` runs (untimed) before every pass (to empty an L1). ``samples`` holds the
    ops/s of each round, ``latencies`` every read's seconds (for p50 / p99).
    """

    name: str
    read: Callable[[str], Any]
    keys: list[str]
    is_async: bool = True
    note: str = ""
    before_pass: Callable[[], Any] | None = None
    # What one call must return (checked once; ``None``: a write, nothing to check).
    expect: Any = field(default_factory=lambda: VALUE)
    samples: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    keys_per_mget: float | None = None
    # Server socket reads and commands per key (one untimed pass; the cold walk).
    reads_per_key: float | None = None
    commands_per_key: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _pass_async(walker: Walker, tasks: int) -> tuple[float, list[float]]:
    keys, read = walker.keys, walker.read
    per = len(keys) // tasks
    latencies: list[float] = []

    async def worker(i: int) -> None:
        clock = time.perf_counter
        mine: list[float] = []
        for key in keys[i * per : (i + 1) * per]:
            began = clock()
            await read(key)
            mine.append(clock() - began)
        latencies.extend(mine)

    began = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(tasks)))
    return time.perf_counter() - began, latencies


def _pass_threads(
    walker: Walker, pool: ThreadPoolExecutor, tasks: int
) -> tuple[float, list[float]]:
    keys, read = walker.keys, walker.read
    per = len(keys) // tasks
    latencies: list[float] = []

    def worker(i: int) -> None:
        clock = time.perf_counter
        mine: list[float] = []
        for key in keys[i * per : (i + 1) * per]:
            began = clock()
            read(key)
            mine.append(clock() - began)
        latencies.extend(mine)  # list.extend is atomic under the GIL

    began = time.perf_counter()
    for future in [pool.submit(worker, i) for i in range(tasks)]:
        future.result()
    return time.perf_counter() - began, latencies


async def _one_pass(walker: Walker, pool: ThreadPoolExecutor | None) -> tuple[float, list[float]]:
    if walker.before_pass is not None:
        done = walker.before_pass()
        if asyncio.iscoroutine(done):
            await done
    if walker.is_async:
        return await _pass_async(walker, CONCURRENCY)
    assert pool is not None
    return await asyncio.to_thread(_pass_threads, walker, pool, CONCURRENCY)


async def measure_walk(walkers: list[Walker], rounds: int, seconds: float) -> None:
    """``rounds`` samples per walker, each of whole passes lasting ``seconds`` at least, in
    a rotated order (the drift of a shared machine lands on every subject alike); a check
    and a warm-up pass each first."""
    with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
        for walker in walkers:
            sample = walker.keys[len(walker.keys) // 2]
            got = walker.read(sample)
            if walker.is_async:
                got = await got
            if walker.expect is not None and got != walker.expect:
                raise AssertionError(f"{walker.name}: expected a hit, got {str(got)[:80]!r}")
            await _one_pass(walker, pool)
        for r in range(rounds):
            for walker in [*walkers[r % len(walkers) :], *walkers[: r % len(walkers)]]:
                spent, reads, cpu = 0.0, 0, time.process_time()
                while spent < seconds:
                    elapsed, latencies = await _one_pass(walker, pool)
                    spent += elapsed
                    reads += len(latencies)
                    walker.latencies.extend(latencies)
                walker.samples.append(reads / spent)
                walker.cpu.append((time.process_time() - cpu) / reads)


def paired_ratio(rows: list[Walker], name: str, base: str) -> float:
    """The median over the rounds of ``name``'s ops/s over ``base``'s in the same round."""
    by_name = {r.name: r for r in rows}
    mine, theirs = by_name[name].samples, by_name[base].samples
    return statistics.median(a / b for a, b in zip(mine, theirs, strict=True))


async def _keys_per_mget(walker: Walker, admin: Any) -> float | None:
    """One more (untimed) pass with the server's command counters reset: keys per MGET."""
    await admin.config_resetstat()
    with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
        await _one_pass(walker, pool)
    stats = await admin.info("commandstats")
    mgets = int(stats.get("cmdstat_mget", {}).get("calls", 0))
    gets = int(stats.get("cmdstat_get", {}).get("calls", 0))
    return (len(walker.keys) - gets) / mgets if mgets else None


async def _server_work(walker: Walker, admin: Any) -> tuple[float, float]:
    """One more (untimed) pass with the server's counters reset after its ``before_pass``:
    the server's socket reads and the commands it ran, per key."""
    if walker.before_pass is not None:
        await walker.before_pass()
    await admin.config_resetstat()
    await _pass_async(walker, CONCURRENCY)
    # (The INFO that reads the counter is one of the reads it counts.)
    reads = int((await admin.info("stats"))["total_reads_processed"]) - 1
    stats = await admin.info("commandstats")
    commands = sum(
        int(value.get("calls", 0))
        for name, value in stats.items()
        if name not in ("cmdstat_info", "cmdstat_config|resetstat")
    )
    return reads / len(walker.keys), commands / len(walker.keys)


# ---------------------------------------------------------------------------------- subjects


async def _store(host: str, port: int, count: int, exits: AsyncExitStack) -> dict[str, list[str]]:
    """Every library's copy of ``count`` 1 KiB values under its own keys."""
    import redis.asyncio as aioredis

    admin = aioredis.Redis(host=host, port=port)
    exits.push_async_callback(admin.aclose)
    pipe = admin.pipeline(transaction=False)
    raw_keys = [f"raw:{i}" for i in range(count)]
    for key in raw_keys:
        pipe.set(key, VALUE_JSON, ex=TTL)
    await pipe.execute()
    return {"raw": raw_keys, "lc": [f"k{i}" for i in range(count)]}


def _closing_peer(close: Callable[[], Any]) -> Callable[[], Any]:
    """A peer's ``close``, quiet about the redis-py ``close()`` it calls (deprecated since
    redis-py 5.0.1): their warning, not this benchmark's."""

    async def closing() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            await close()

    return closing


async def async_walkers(
    exits: AsyncExitStack, host: str, port: int, count: int
) -> tuple[list[Walker], Any]:
    """The asyncio subjects of the concurrent walk (values stored), and an admin client."""
    import redis.asyncio as aioredis
    from aiocache import RedisCache  # type: ignore[import-untyped]
    from cashews import Cache

    from layercache import CacheStack, MemoryLayer, RedisLayer

    url = f"redis://{host}:{port}/0"
    keys = await _store(host, port, count, exits)
    admin = aioredis.Redis(host=host, port=port)
    exits.push_async_callback(admin.aclose)

    raw = aioredis.Redis(host=host, port=port)  # redis-py's default pool
    exits.push_async_callback(raw.aclose)

    async def raw_get(key: str) -> Any:
        return json.loads(await raw.get(key))  # type: ignore[arg-type]

    lc = CacheStack([RedisLayer(url=url, ttl=TTL, prefix="bench:c:")])
    exits.push_async_callback(lc.aclose)
    await lc.set_many([(k, VALUE) for k in keys["lc"]])
    off = CacheStack(
        [
            RedisLayer(
                url=url,
                ttl=TTL,
                prefix="bench:c:",
                read_batching=False,
                write_batching=False,
                max_connections=OFF_POOL,
            )
        ]
    )
    exits.push_async_callback(off.aclose)
    memory = MemoryLayer(ttl=TTL)
    lc2 = CacheStack([memory, RedisLayer(url=url, ttl=TTL, prefix="bench:c:")])
    exits.push_async_callback(lc2.aclose)

    cw = Cache()
    cw.setup(url, max_connections=PEER_POOL)
    exits.push_async_callback(_closing_peer(cw.close))
    cw_keys = [f"cw:{i}" for i in range(count)]
    for start in range(0, count, 500):
        await cw.set_many({k: VALUE for k in cw_keys[start : start + 500]}, expire=TTL)

    ac = RedisCache(endpoint=host, port=port)
    exits.push_async_callback(_closing_peer(ac.close))
    ac_keys = [f"ac:{i}" for i in range(count)]
    for start in range(0, count, 500):
        await ac.multi_set([(k, VALUE) for k in ac_keys[start : start + 500]], ttl=TTL)

    return [
        Walker(RAW, raw_get, keys["raw"], note="asyncio, default pool"),
        Walker(LC, lc.get, keys["lc"], note="batching on (default)"),
        Walker(LC_OFF, off.get, keys["lc"], note="read_batching=False: one GET per read"),
        Walker(
            "layercache memory(miss)+redis",
            lc2.get,
            keys["lc"],
            note="L1 emptied before each pass: every read misses it, then backfills",
            before_pass=memory.clear,
        ),
        Walker("cashews redis://", cw.get, cw_keys, note=f"pickle, pool {PEER_POOL}"),
        Walker("aiocache RedisCache", ac.get, ac_keys, note="json, defaults"),
    ], admin


async def write_walkers(exits: AsyncExitStack, host: str, port: int, count: int) -> list[Walker]:
    """64 concurrent writers of distinct keys: coalesced sets (on, off) vs raw ``SET``."""
    import redis.asyncio as aioredis

    from layercache import CacheStack, RedisLayer

    url = f"redis://{host}:{port}/0"
    raw = aioredis.Redis(host=host, port=port)
    exits.push_async_callback(raw.aclose)

    async def raw_set(key: str) -> None:
        await raw.set(key, json.dumps(VALUE, separators=(",", ":")), ex=TTL)

    on = CacheStack([RedisLayer(url=url, ttl=TTL, prefix="bench:w:")])
    exits.push_async_callback(on.aclose)
    off = CacheStack(
        [
            RedisLayer(
                url=url,
                ttl=TTL,
                prefix="bench:w:",
                read_batching=False,
                write_batching=False,
                max_connections=OFF_POOL,
            )
        ]
    )
    exits.push_async_callback(off.aclose)

    def setter(cache: Any) -> Callable[[str], Any]:
        async def write(key: str) -> None:
            await cache.set(key, VALUE)

        return write

    keys = [f"w{i}" for i in range(count)]
    return [
        Walker(
            RAW_SET,
            raw_set,
            [f"raw:w{i}" for i in range(count)],
            note="json.dumps + SET EX",
            expect=None,
        ),
        Walker(LC_SET, setter(on), keys, note="write batching on (default)", expect=None),
        Walker(
            "layercache CacheStack[RedisLayer].set, batching off",
            setter(off),
            keys,
            note="write_batching=False: one SET per write",
            expect=None,
        ),
    ]


async def cold_walkers(
    exits: AsyncExitStack, host: str, port: int, count: int
) -> tuple[list[Walker], Any]:
    """64 concurrent cold misses of distinct keys, with a trivial fetcher: batching on, only
    reads batched, off, and raw redis-py ``GET`` + ``SET`` per key; and an admin client of
    the cold walk's database."""
    import redis.asyncio as aioredis

    from layercache import CacheStack, RedisLayer

    url = f"redis://{host}:{port}/{COLD_DB}"
    admin = aioredis.Redis(host=host, port=port, db=COLD_DB)
    exits.push_async_callback(admin.aclose)
    raw = aioredis.Redis(host=host, port=port, db=COLD_DB)  # redis-py's default pool
    exits.push_async_callback(raw.aclose)

    async def fetch() -> Any:
        return VALUE

    async def raw_miss(key: str) -> Any:
        found = await raw.get(key)
        if found is not None:
            return json.loads(found)
        value = await fetch()
        await raw.set(key, json.dumps(value, separators=(",", ":")), ex=TTL)
        return value

    def reader(**options: Any) -> Callable[[str], Any]:
        cache = CacheStack([RedisLayer(url=url, ttl=TTL, prefix="bench:cold:", **options)])
        exits.push_async_callback(cache.aclose)

        async def read(key: str) -> Any:
            return await cache.get(key, fetch)

        return read

    async def empty() -> None:
        await admin.flushdb()

    keys = [f"cold{i}" for i in range(count)]
    return [
        Walker(RAW_COLD, raw_miss, keys, note="GET, json.dumps, SET EX", before_pass=empty),
        Walker(LC_COLD, reader(), keys, note="batching on (default)", before_pass=empty),
        Walker(
            LC_COLD_READS,
            reader(write_batching=False, max_connections=OFF_POOL),
            keys,
            note="reads batched, one EVALSHA per store",
            before_pass=empty,
        ),
        Walker(
            LC_COLD_OFF,
            reader(read_batching=False, write_batching=False, max_connections=OFF_POOL),
            keys,
            note="one GET and one EVALSHA per key",
            before_pass=empty,
        ),
    ], admin


async def cold_c1_subjects(exits: AsyncExitStack, host: str, port: int) -> list[Subject]:
    """A cold miss at concurrency 1 (a new key every call, trivial fetcher): write batching
    on (the lone store goes through the batcher, alone) vs off, and the raw floor."""
    import itertools

    import redis.asyncio as aioredis

    from layercache import CacheStack, RedisLayer

    url = f"redis://{host}:{port}/{COLD_DB}"
    raw = aioredis.Redis(host=host, port=port, db=COLD_DB)
    exits.push_async_callback(raw.aclose)
    fresh = itertools.count()

    async def fetch() -> Any:
        return VALUE

    async def raw_miss(_: Any) -> Any:
        key = f"c1raw:{next(fresh)}"
        found = await raw.get(key)
        if found is not None:
            return json.loads(found)
        await raw.set(key, json.dumps(VALUE, separators=(",", ":")), ex=60)
        return VALUE

    def miss(**options: Any) -> Callable[[Any], Any]:
        cache = CacheStack([RedisLayer(url=url, ttl=60, prefix="bench:c1cold:", **options)])
        exits.push_async_callback(cache.aclose)

        async def read(_: Any) -> Any:
            return await cache.get(f"c{next(fresh)}", fetch)

        return read

    return [
        Subject(RAW_COLD, raw_miss, None, expect=VALUE),
        Subject(LC_COLD, miss(), None, note="write batching on", expect=VALUE),
        Subject(LC_COLD_READS, miss(write_batching=False), None, note="as before", expect=VALUE),
    ]


def sync_walkers(exits: ExitStack, host: str, port: int, count: int) -> list[Walker]:
    """The threaded subjects: SyncCacheStack (on, off) vs raw sync redis-py."""
    import redis

    from layercache import RedisLayer, SyncCacheStack

    url = f"redis://{host}:{port}/0"
    raw = redis.Redis(host=host, port=port)  # default pool
    exits.callback(raw.close)

    def raw_get(key: str) -> Any:
        return json.loads(raw.get(key))  # type: ignore[arg-type]

    on = SyncCacheStack([RedisLayer(url=url, ttl=TTL, prefix="bench:c:")])
    exits.callback(on.close)
    off = SyncCacheStack(
        [RedisLayer(url=url, ttl=TTL, prefix="bench:c:", read_batching=False, write_batching=False)]
    )
    exits.callback(off.close)
    lc_keys = [f"k{i}" for i in range(count)]
    return [
        Walker(SYNC_RAW, raw_get, [f"raw:{i}" for i in range(count)], False, "default pool"),
        Walker(SYNC_LC, on.get, lc_keys, False, "batching on (default)"),
        Walker(SYNC_LC_OFF, off.get, lc_keys, False, "read_batching=False"),
    ]


async def c1_subjects(exits: AsyncExitStack, host: str, port: int) -> list[Subject]:
    """L2 hit at concurrency 1: batching on vs off, and the raw floor."""
    import redis.asyncio as aioredis

    from layercache import CacheStack, RedisLayer

    url = f"redis://{host}:{port}/0"
    raw = aioredis.Redis(host=host, port=port)
    exits.push_async_callback(raw.aclose)

    async def raw_get(key: str) -> Any:
        return json.loads(await raw.get(key))  # type: ignore[arg-type]

    on = CacheStack([RedisLayer(url=url, ttl=TTL, prefix="bench:c1:")])
    exits.push_async_callback(on.aclose)
    off = CacheStack([RedisLayer(url=url, ttl=TTL, prefix="bench:c1:", read_batching=False)])
    exits.push_async_callback(off.aclose)
    await on.set("v", VALUE)
    return [
        Subject(RAW, raw_get, "raw:0", expect=VALUE),
        Subject(LC, on.get, "v", note="batching on", expect=VALUE),
        Subject(LC_OFF, off.get, "v", note="as before batching", expect=VALUE),
    ]


def sync_c1_subjects(walkers: list[Walker]) -> list[Subject]:
    """The sync L2 hit at concurrency 1 over the walk's clients."""
    by_name = {w.name: w for w in walkers}
    return [
        Subject(name, by_name[name].read, by_name[name].keys[0], is_async=False, expect=VALUE)
        for name in (SYNC_RAW, SYNC_LC, SYNC_LC_OFF)
    ]


def lone_call_overhead(calls: int) -> dict[str, float]:
    """What batching adds to a lone call (nothing else in flight), without I/O: seconds per
    call through ``Batcher.submit`` minus the call itself, for both twins (median of 5)."""
    from layercache._async.batcher import Batcher
    from layercache._sync.batcher import Batcher as ThreadBatcher

    async def one(item: Any) -> Any:
        return item

    async def many(items: list[Any]) -> list[Any]:
        return items

    def sync_one(item: Any) -> Any:
        return item

    def sync_many(items: list[Any]) -> list[Any]:
        return items

    async def timed(fn: Callable[[Any], Any]) -> float:
        began = time.process_time()
        for _ in range(calls):
            await fn(1)
        return (time.process_time() - began) / calls

    def sync_timed(fn: Callable[[Any], Any]) -> float:
        began = time.process_time()
        for _ in range(calls):
            fn(1)
        return (time.process_time() - began) / calls

    batcher = Batcher(one, many)
    threads = ThreadBatcher(sync_one, sync_many)  # type: ignore[arg-type]

    async def both() -> tuple[list[float], list[float]]:
        added, sync_added = [], []
        for _ in range(5):
            added.append(await timed(batcher.submit) - await timed(one))
            sync_added.append(sync_timed(threads.submit) - sync_timed(sync_one))
        return added, sync_added

    added, sync_added = asyncio.run(both())
    return {"async": statistics.median(added), "sync": statistics.median(sync_added)}


# ---------------------------------------------------------------------------------- report


def walk_table(title: str, rows: list[Walker], floor: str) -> list[str]:
    lines = [
        f"### {title}",
        "",
        "| subject | ops/s (median) | min … max | x floor (paired) | client CPU µs/op "
        "| p50 µs | p99 µs | keys/MGET | note |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        per_mget = "-" if row.keys_per_mget is None else f"{row.keys_per_mget:.1f}"
        lines.append(
            f"| {row.name} | {row.median:,.0f} | {min(row.samples):,.0f} … "
            f"{max(row.samples):,.0f} | {paired_ratio(rows, row.name, floor):.2f} "
            f"| {statistics.median(row.cpu) * 1e6:.1f} "
            f"| {row.percentile(0.5) * 1e6:,.0f} | {row.percentile(0.99) * 1e6:,.0f} "
            f"| {per_mget} | {row.note} |"
        )
    return [*lines, ""]


def cold_table(title: str, rows: list[Walker], floor: str) -> list[str]:
    lines = [
        f"### {title}",
        "",
        "| subject | ops/s (median) | min … max | x floor (paired) | client CPU µs/op "
        "| p50 µs | p99 µs | server reads/key | commands/key | note |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        reads = "-" if row.reads_per_key is None else f"{row.reads_per_key:.2f}"
        commands = "-" if row.commands_per_key is None else f"{row.commands_per_key:.2f}"
        lines.append(
            f"| {row.name} | {row.median:,.0f} | {min(row.samples):,.0f} … "
            f"{max(row.samples):,.0f} | {paired_ratio(rows, row.name, floor):.2f} "
            f"| {statistics.median(row.cpu) * 1e6:.1f} "
            f"| {row.percentile(0.5) * 1e6:,.0f} | {row.percentile(0.99) * 1e6:,.0f} "
            f"| {reads} | {commands} | {row.note} |"
        )
    return [*lines, ""]


def _cpu_ratio(rows: list[Walker], name: str, base: str) -> float:
    by_name = {r.name: r for r in rows}
    return statistics.median(by_name[name].cpu) / statistics.median(by_name[base].cpu)


def _c1_cpu_ratio(rows: list[Subject], name: str, base: str) -> float:
    by_name = {r.name: r for r in rows}
    return float((by_name[name].cpu_median or 0.0) / (by_name[base].cpu_median or 1.0))


def _paired_c1(rows: list[Subject], name: str, base: str) -> float:
    """The median over the rounds of ``name``'s latency over ``base``'s in the same round."""
    by_name = {r.name: r for r in rows}
    pairs = zip(by_name[name].samples, by_name[base].samples, strict=True)
    return statistics.median(a / b for a, b in pairs)


async def run(
    settings: Settings, count: int, profile: bool, cold_count: int = 2_560
) -> dict[str, Any]:
    """Every scenario in one run."""
    result: dict[str, Any] = {}
    # A 5% difference needs more rounds than a 3x one on a shared machine.
    c1_settings = settings if settings.quick else dataclasses.replace(settings, rounds=C1_ROUNDS)
    with redis_server() as server, ExitStack() as sync_exits:
        async with AsyncExitStack() as exits:
            walkers, admin = await async_walkers(exits, server.host, server.port, count)
            await measure_walk(walkers, settings.rounds, 2 * settings.target)
            for walker in walkers:
                if walker.name in (LC, "layercache memory(miss)+redis"):
                    walker.keys_per_mget = await _keys_per_mget(walker, admin)
            if profile:
                lc = next(w for w in walkers if w.name == LC)
                profiler = cProfile.Profile()
                profiler.enable()
                await _one_pass(lc, None)
                profiler.disable()
                result["profile"] = profiler
            writers = await write_walkers(exits, server.host, server.port, count)
            await measure_walk(writers, settings.rounds, 2 * settings.target)
            cold, cold_admin = await cold_walkers(exits, server.host, server.port, cold_count)
            await measure_walk(cold, settings.rounds, 2 * settings.target)
            for walker in cold:
                walker.reads_per_key, walker.commands_per_key = await _server_work(
                    walker, cold_admin
                )
            if profile:
                batched = next(w for w in cold if w.name == LC_COLD)
                profiler = cProfile.Profile()
                await _one_pass(batched, None)  # (emptied: cold again)
                profiler.enable()
                await _one_pass(batched, None)
                profiler.disable()
                result["cold_profile"] = profiler
            c1 = await c1_subjects(exits, server.host, server.port)
            await measure_latency(c1, c1_settings)
            cold_c1 = await cold_c1_subjects(exits, server.host, server.port)
            await measure_latency(cold_c1, c1_settings)
            await cold_admin.flushdb()
            threads = sync_walkers(sync_exits, server.host, server.port, count)
            await measure_walk(threads, settings.rounds, 2 * settings.target)
            sync_lc = next(w for w in threads if w.name == SYNC_LC)
            sync_lc.keys_per_mget = await _keys_per_mget(sync_lc, admin)
            sync_c1 = sync_c1_subjects(threads)
            await measure_latency(sync_c1, c1_settings)
    result.update(
        writers=writers,
        cold=cold,
        cold_c1=cold_c1,
        walkers=walkers,
        c1=c1,
        threads=threads,
        sync_c1=sync_c1,
        goals={
            "async_c64_vs_raw": paired_ratio(walkers, LC, RAW),
            "async_c64_batching_off_vs_raw": paired_ratio(walkers, LC_OFF, RAW),
            "async_c1_on_vs_off": _paired_c1(c1, LC, LC_OFF),
            "async_c64_writes_vs_raw": paired_ratio(writers, LC_SET, RAW_SET),
            "async_c64_cold_vs_raw": paired_ratio(cold, LC_COLD, RAW_COLD),
            "async_c64_cold_stores_one_by_one_vs_raw": paired_ratio(cold, LC_COLD_READS, RAW_COLD),
            "async_c64_cold_batching_off_vs_raw": paired_ratio(cold, LC_COLD_OFF, RAW_COLD),
            "async_c64_cold_on_vs_stores_one_by_one": paired_ratio(cold, LC_COLD, LC_COLD_READS),
            "async_c64_cold_cpu_per_op_raw_over_lc": _cpu_ratio(cold, RAW_COLD, LC_COLD),
            "async_c1_cold_on_vs_off": _paired_c1(cold_c1, LC_COLD, LC_COLD_READS),
            "async_c1_cold_cpu_on_vs_off": _c1_cpu_ratio(cold_c1, LC_COLD, LC_COLD_READS),
            "sync_c64_vs_raw": paired_ratio(threads, SYNC_LC, SYNC_RAW),
            "sync_c64_batching_off_vs_raw": paired_ratio(threads, SYNC_LC_OFF, SYNC_RAW),
            "sync_c1_on_vs_off": _paired_c1(sync_c1, SYNC_LC, SYNC_LC_OFF),
            "async_c64_cpu_per_op_raw_over_lc": _cpu_ratio(walkers, RAW, LC),
            "async_c1_cpu_on_vs_off": _c1_cpu_ratio(c1, LC, LC_OFF),
            "sync_c1_cpu_on_vs_off": _c1_cpu_ratio(sync_c1, SYNC_LC, SYNC_LC_OFF),
            "sync_c64_cpu_per_op_raw_over_lc": _cpu_ratio(threads, SYNC_RAW, SYNC_LC),
        },
    )
    return result


def _overhead_lines(result: dict[str, Any], twin: str, c1: list[Subject]) -> list[str]:
    added = result["lone_overhead"][twin]
    off = next(r for r in c1 if r.name.endswith("batching off"))
    cpu = off.cpu_median or off.median
    return [
        f"What batching adds to a lone read, measured without I/O: {added * 1e6:.2f} µs per "
        f"call, {added / cpu * 100:.1f}% of the batching-off hit's client CPU time "
        f"({cpu * 1e6:.1f} µs) and {added / off.median * 100:.1f}% of its latency.",
        "",
    ]


def report(result: dict[str, Any], settings: Settings, count: int) -> list[str]:
    rounds = f"median of {settings.rounds} rounds"
    c1_rounds = len(result["c1"][0].samples)
    goals = result["goals"]
    lines = [
        *walk_table(
            f"{CONCURRENCY} concurrent readers (asyncio), distinct keys of {count:,} "
            f"1 KiB values ({rounds})",
            result["walkers"],
            RAW,
        ),
        *latency_table(
            f"L2 hit at concurrency 1, asyncio (median of {c1_rounds} rounds)", result["c1"], RAW
        ),
        *_overhead_lines(result, "async", result["c1"]),
        *walk_table(
            f"{CONCURRENCY} concurrent writers (asyncio), distinct keys ({rounds})",
            result["writers"],
            RAW_SET,
        ),
        *cold_table(
            f"{CONCURRENCY} concurrent cold misses (asyncio), distinct keys, trivial fetcher "
            f"({len(result['cold'][0].keys):,} per pass; {rounds})",
            result["cold"],
            RAW_COLD,
        ),
        *latency_table(
            f"Cold miss at concurrency 1, asyncio (median of {c1_rounds} rounds)",
            result["cold_c1"],
            RAW_COLD,
        ),
        *walk_table(
            f"{CONCURRENCY} threads, distinct keys ({rounds})", result["threads"], SYNC_RAW
        ),
        *latency_table(
            f"Sync L2 hit at concurrency 1 (median of {c1_rounds} rounds)",
            result["sync_c1"],
            SYNC_RAW,
        ),
        *_overhead_lines(result, "sync", result["sync_c1"]),
        "### Goals (issue 16, auto-batched L2 reads)",
        "",
        "| ratio | measured | goal | |",
        "| --- | ---: | ---: | --- |",
    ]
    for label, key, goal, higher in (
        ("64 concurrent L2 reads: layercache ops/s / raw", "async_c64_vs_raw", 3.0, True),
        ("  (batching off) / raw", "async_c64_batching_off_vs_raw", None, True),
        ("  client CPU per read: raw / layercache", "async_c64_cpu_per_op_raw_over_lc", None, True),
        ("L2 hit at c=1: batching on / off (paired)", "async_c1_on_vs_off", C1_GOAL, False),
        ("  the same on client CPU time", "async_c1_cpu_on_vs_off", None, False),
        ("64 concurrent sets: layercache ops/s / raw SET", "async_c64_writes_vs_raw", None, True),
        (
            "64 concurrent cold misses: layercache / raw GET+SET",
            "async_c64_cold_vs_raw",
            None,
            True,
        ),
        ("  (stores one by one) / raw", "async_c64_cold_stores_one_by_one_vs_raw", None, True),
        ("  (batching off) / raw", "async_c64_cold_batching_off_vs_raw", None, True),
        (
            "  batched stores / stores one by one",
            "async_c64_cold_on_vs_stores_one_by_one",
            None,
            True,
        ),
        (
            "  client CPU per cold miss: raw / layercache",
            "async_c64_cold_cpu_per_op_raw_over_lc",
            None,
            True,
        ),
        (
            "cold miss at c=1: write batching on / off (paired)",
            "async_c1_cold_on_vs_off",
            C1_GOAL,
            False,
        ),
        ("  the same on client CPU time", "async_c1_cold_cpu_on_vs_off", None, False),
        ("64 threads: SyncCacheStack ops/s / raw sync", "sync_c64_vs_raw", None, True),
        ("  (batching off) / raw sync", "sync_c64_batching_off_vs_raw", None, True),
        ("  client CPU per read: raw / layercache", "sync_c64_cpu_per_op_raw_over_lc", None, True),
        ("sync L2 hit at c=1: on / off (paired)", "sync_c1_on_vs_off", C1_GOAL, False),
        ("  the same on client CPU time", "sync_c1_cpu_on_vs_off", None, False),
    ):
        value = goals[key]
        if goal is None:
            lines.append(f"| {label} | {value:.2f} | - | |")
            continue
        met = value >= goal if higher else value <= goal
        sign = "≥" if higher else "≤"
        lines.append(f"| {label} | {value:.3f} | {sign} {goal} | {'met' if met else 'MISSED'} |")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print Markdown tables (exit 0 even when a goal is missed)."""
    parser = argparse.ArgumentParser(prog="python -m bench.concurrency", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few seconds, for smoke tests")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--keys", type=int, default=None, help="values walked (default 10000)")
    parser.add_argument(
        "--cold-keys", type=int, default=None, help="cold misses per pass (default 2560)"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the batched passes")
    args = parser.parse_args(argv)
    settings = Settings.smoke() if args.quick else Settings.full()
    count = args.keys or (1_280 if args.quick else 10_000)
    if count < CONCURRENCY:
        parser.error(f"--keys must be at least {CONCURRENCY}")
    cold_count = args.cold_keys or (640 if args.quick else 2_560)
    if cold_count < CONCURRENCY:
        parser.error(f"--cold-keys must be at least {CONCURRENCY}")
    result = asyncio.run(run(settings, count, args.profile, cold_count))
    result["lone_overhead"] = lone_call_overhead(20_000 if args.quick else 200_000)
    print("\n".join(report(result, settings, count)))
    if "profile" in result:
        print(f"### cProfile of one batched pass ({count:,} reads), top 25 by own time\n")
        print("```")
        pstats.Stats(result["profile"], stream=sys.stdout).sort_stats("tottime").print_stats(25)
        print("```")
    if "cold_profile" in result:
        print(
            f"### cProfile of one batched cold pass ({cold_count:,} misses), top 25 by own time\n"
        )
        print("```")
        stats = pstats.Stats(result["cold_profile"], stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(25)
        print("```")
    if args.json is not None:

        def walk_json(rows: list[Walker]) -> list[dict[str, Any]]:
            return [
                {
                    "name": r.name,
                    "ops_per_s": r.median,
                    "samples": r.samples,
                    "client_cpu_us_per_op": statistics.median(r.cpu) * 1e6,
                    "p50_us": r.percentile(0.5) * 1e6,
                    "p99_us": r.percentile(0.99) * 1e6,
                    "keys_per_mget": r.keys_per_mget,
                    "note": r.note,
                }
                for r in rows
            ]

        def c1_json(rows: list[Subject]) -> dict[str, float]:
            return {r.name: r.median * 1e6 for r in rows}

        args.json.write_text(
            json.dumps(
                {
                    "keys": count,
                    "concurrency": CONCURRENCY,
                    "rounds": settings.rounds,
                    "goals": result["goals"],
                    "async_c64": walk_json(result["walkers"]),
                    "async_c64_writes": walk_json(result["writers"]),
                    "async_c64_cold": [
                        {
                            **row,
                            "server_reads_per_key": walker.reads_per_key,
                            "commands_per_key": walker.commands_per_key,
                        }
                        for row, walker in zip(
                            walk_json(result["cold"]), result["cold"], strict=True
                        )
                    ],
                    "sync_c64": walk_json(result["threads"]),
                    "async_c1_us": c1_json(result["c1"]),
                    "async_c1_cold_us": c1_json(result["cold_c1"]),
                    "sync_c1_us": c1_json(result["sync_c1"]),
                    "lone_call_overhead_us": {
                        k: v * 1e6 for k, v in result["lone_overhead"].items()
                    },
                    "environment": environment(),
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
