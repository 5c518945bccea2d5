"""Distributed coordination, measured through the public API (``python -m bench.distributed``).

Starts its own ``redis-server`` on a free 127.0.0.1 port (and, for the cluster rows, a real
three-master Redis Cluster: ``tests/_redis_server.py``'s ``RedisCluster3``), then measures in
one run:

1. **Cross-process single-flight.** 4 Python processes, each one instance
   ``CacheStack([MemoryLayer(), RedisLayer(client=...)],
   single_flight_coordinator=RedisSingleFlightCoordinator(client=...))``, each with 25
   concurrent callers of ``get(key, origin)`` on a cold key, all released at once by a Redis
   barrier (every process blocks on ``BLPOP`` until the parent pushes the go signal). The
   origin takes 100 ms and counts its calls with ``INCR`` on a key every process shares. The
   figures: origin fetches per run (goal: 1) and the wall time from the release to the last
   caller's return, median over 5 runs (a new cold key each run; an unmeasured first round
   warms connection pools and the coordinator's subscription). The same stacks without a
   coordinator are the contrast (one fetch per process).
2. **Invalidation propagation.** Two processes, each one instance with
   ``broadcast_l1_invalidation=True`` and a signed ``RedisInvalidationBus``. This process (B)
   first holds every key in its memory layer; the other process (A) then deletes, or
   overwrites with ``set``, one key every 2 ms and notes the wall time when each call started.
   B listens to its stack's ``invalidation`` event and, when it fires, checks that the key is
   really gone from its ``MemoryLayer`` and notes the time. The delay is B's time minus A's
   call start (A's own writes to memory and Redis, the publish, Redis, verification, parsing
   and B's local delete included); A's call duration is shown next to it. The raw bus figure
   of ``bench/bus_latency.py`` (publish to ``on_message``, no stack) is measured in the same
   run for comparison. Both processes share the machine's clock.
3. **Tag invalidation of 10,000 keys.** ``CacheStack([MemoryLayer(), RedisLayer(client=...)],
   tag_index=RedisTagIndex(client=...))``; 10,000 keys tagged ``bulk`` (and ``group:<i % 10>``)
   written with ``set_many`` in batches of 1,000, then ``invalidate_by_tag("bulk")`` timed
   (lookup, delete from both layers, removal from the index): median of 3, on the single server
   and on the three-master cluster.

Each scenario runs for both stack kinds (``--kinds async,sync``, the default): ``CacheStack`` on
``redis.asyncio`` clients, and ``SyncCacheStack`` on sync ``redis.Redis`` clients with the sync
twins of the same components (the classes return them when given a sync client). The sync
single-flight callers are 25 threads per process, released together by a ``threading.Barrier``
after the same Redis barrier; propagation also runs across kinds (async A -> sync B, sync A ->
async B: the wire is shared). The report shows sync/async ratios from the same run.

``--quick`` shrinks every figure (a smoke run of under a minute); ``--json PATH`` writes the
results too. Options: ``--skip-cluster``, ``--only singleflight,propagation,tags``, ``--kinds``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import inspect
import json
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
SCENARIOS = ("singleflight", "propagation", "tags")
# "async": CacheStack on redis.asyncio clients; "sync": SyncCacheStack on redis.Redis clients
# (the same component classes return their sync twins when given a sync client).
KINDS = ("async", "sync")
# Writer -> reader pairs of the propagation scenario (the wire is shared).
PAIRS = (("async", "async"), ("sync", "sync"), ("async", "sync"), ("sync", "async"))


@dataclass(frozen=True)
class Settings:
    """How much to measure (``--quick`` shrinks every figure)."""

    quick: bool = False
    processes: int = 4
    callers: int = 25
    origin_delay: float = 0.1
    single_flight_runs: int = 5
    invalidations: int = 2000
    interval: float = 0.002
    tag_keys: int = 10_000
    tag_runs: int = 3

    @classmethod
    def smoke(cls) -> Settings:
        """A run that exercises every path quickly (the numbers are rough)."""
        return cls(quick=True, single_flight_runs=2, invalidations=200, tag_keys=1000, tag_runs=1)


def _log(message: str) -> None:
    print(f"[bench.distributed {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (as in bench/bus_latency.py)."""
    index = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH")) if p
    )
    return env


# -- one code path for both stack kinds -----------------------------------------------------------


async def _resolve(value: Any) -> Any:
    """What a stack call gave: an async stack's awaitable is awaited, a sync result returned.

    The sync stack's calls block this process's event loop while they run, which is what a
    sync caller does anyway; nothing else runs on the loop meanwhile.
    """
    return await value if inspect.isawaitable(value) else value


def _redis_client(url: str, kind: str) -> Any:
    """A redis-py client of the stack kind (sync calls are bounded by the socket timeout)."""
    import redis
    import redis.asyncio

    if kind == "sync":
        return redis.Redis.from_url(url, socket_timeout=5)
    return redis.asyncio.Redis.from_url(url)


def _stack_class(kind: str) -> Any:
    from layercache import CacheStack, SyncCacheStack

    return SyncCacheStack if kind == "sync" else CacheStack


async def _close(resource: Any) -> None:
    """``aclose()`` an asyncio stack or client, ``close()`` a sync one."""
    aclose = getattr(resource, "aclose", None)
    if aclose is not None:
        await aclose()
    else:
        resource.close()


@contextlib.asynccontextmanager
async def _opened(stack: Any) -> AsyncIterator[Any]:
    """``async with`` a CacheStack, ``with`` a SyncCacheStack (which starts its bus)."""
    if hasattr(stack, "__aenter__"):
        async with stack:
            yield stack
    else:
        with stack:
            yield stack


async def _concurrently(call: Callable[[], Any], n: int, pool: ThreadPoolExecutor | None) -> Any:
    """``n`` concurrent ``call()``: coroutines gathered, or (with ``pool``) ``n`` threads.

    The threads wait on a ``threading.Barrier`` so they start together, as the coroutines do.
    """
    if pool is None:
        return await asyncio.gather(*(call() for _ in range(n)))
    barrier = threading.Barrier(n)

    def released() -> Any:
        barrier.wait(60)
        return call()

    loop = asyncio.get_running_loop()
    return await asyncio.gather(*(loop.run_in_executor(pool, released) for _ in range(n)))


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    """This module in a new Python process (a worker, chosen by ``args``)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.distributed",
        *args,
        cwd=ROOT,
        env=_child_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
    )


async def _reap(processes: Sequence[asyncio.subprocess.Process]) -> None:
    for process in processes:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def _wait_for_list(
    client: Any,
    key: str,
    count: int,
    processes: Sequence[asyncio.subprocess.Process],
    timeout: float = 60.0,
) -> None:
    """Bounded polling until the Redis list ``key`` has ``count`` items (a barrier)."""
    deadline = time.monotonic() + timeout
    while int(await client.llen(key)) < count:
        failed = [p.returncode for p in processes if p.returncode not in (None, 0)]
        if failed:
            raise RuntimeError(f"a worker process exited with {failed[0]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{key}: {count} items expected within {timeout}s")
        await asyncio.sleep(0.005)


# -- 1. cross-process single-flight -------------------------------------------------------------


def _origin(kind: str, client: Any, counter: str, key: str, delay: float) -> Callable[[], Any]:
    """The slow origin (``delay`` seconds), counting its calls in Redis, of the stack ``kind``."""
    result = {"key": key, "from": os.getpid()}
    if kind == "async":

        async def origin() -> dict[str, Any]:
            await client.incr(counter)
            await asyncio.sleep(delay)  # the origin's latency
            return result

        return origin

    def sync_origin() -> dict[str, Any]:
        client.incr(counter)
        time.sleep(delay)
        return result

    return sync_origin


async def _single_flight_worker(args: argparse.Namespace) -> None:
    """One instance: a stack per process, ``callers`` concurrent gets per released round.

    The sync stack's callers are ``callers`` threads (a pool kept across rounds); the barrier
    with the parent and the reports go through an asyncio client in both kinds.
    """
    import redis.asyncio

    from layercache import MemoryLayer, RedisLayer, RedisSingleFlightCoordinator

    run_id: str = args.run_id
    client = _redis_client(args.url, args.kind)
    control = client if args.kind == "async" else redis.asyncio.Redis.from_url(args.url)
    pool = ThreadPoolExecutor(args.callers) if args.kind == "sync" else None
    coordinator = (
        RedisSingleFlightCoordinator(client=client, prefix=f"{run_id}:sf")
        if args.coordinated
        else None
    )
    cache = _stack_class(args.kind)(
        [MemoryLayer(ttl=60), RedisLayer(client=client, prefix=f"{run_id}:cache:", ttl=60)],
        single_flight_coordinator=coordinator,
        single_flight_timeout=10,
    )
    try:
        async with _opened(cache):
            # A warm pool, as in a running service: the first round would otherwise also
            # measure opening a connection per concurrent caller.
            await _concurrently(client.ping, args.callers, pool)
            for round_no in range(args.rounds):
                key = f"product:{round_no}"
                origin = _origin(args.kind, client, f"{run_id}:fetches:{round_no}", key, args.delay)
                await control.rpush(f"{run_id}:ready:{round_no}", os.getpid())
                if await control.blpop([f"{run_id}:go:{round_no}"], timeout=60) is None:
                    raise SystemExit("the parent never released the barrier")
                start = time.time()
                values = await _concurrently(
                    lambda key=key, origin=origin: cache.get(key, origin), args.callers, pool
                )
                end = time.time()
                report = {
                    "pid": os.getpid(),
                    "start": start,
                    "end": end,
                    "values": sorted({json.dumps(v, sort_keys=True) for v in values}),
                    "calls": len(values),
                    "stats": None if coordinator is None else dataclasses.asdict(coordinator.stats),
                }
                await control.rpush(f"{run_id}:done:{round_no}", json.dumps(report))
    finally:
        if pool is not None:
            pool.shutdown()
        await _close(client)
        if control is not client:
            await control.aclose()


async def single_flight(
    url: str, settings: Settings, coordinated: bool, kind: str = "async"
) -> dict[str, Any]:
    """``settings.processes`` instances x ``settings.callers`` callers on a cold key.

    ``kind`` "sync": SyncCacheStack instances whose callers are threads.

    Returns:
        Per measured run: origin fetches and wall time (release to the last return), and
        their summary.

    Raises:
        RuntimeError: If a worker fails, or callers of one run got different values.
    """
    import redis.asyncio

    run_id = f"bench-sf-{uuid.uuid4().hex[:8]}"
    rounds = settings.single_flight_runs + 1  # round 0 only warms up
    client = redis.asyncio.Redis.from_url(url)
    worker_args = [
        "--worker",
        "singleflight",
        "--url",
        url,
        "--run-id",
        run_id,
        "--rounds",
        str(rounds),
        "--callers",
        str(settings.callers),
        "--delay",
        str(settings.origin_delay),
        "--kind",
        kind,
    ]
    if coordinated:
        worker_args.append("--coordinated")
    processes = [await _spawn(*worker_args) for _ in range(settings.processes)]
    runs: list[dict[str, Any]] = []
    try:
        for round_no in range(rounds):
            await _wait_for_list(
                client, f"{run_id}:ready:{round_no}", settings.processes, processes
            )
            released = time.time()
            await client.rpush(f"{run_id}:go:{round_no}", *["go"] * settings.processes)
            reports = []
            for _ in range(settings.processes):
                popped = await client.blpop([f"{run_id}:done:{round_no}"], timeout=60)
                if popped is None:
                    raise RuntimeError(f"round {round_no}: a worker did not report in 60 s")
                reports.append(json.loads(popped[1]))
            fetches = int(await client.get(f"{run_id}:fetches:{round_no}") or 0)
            values = {v for r in reports for v in r["values"]}
            calls = sum(r["calls"] for r in reports)
            if calls != settings.processes * settings.callers:
                raise RuntimeError(f"round {round_no}: {calls} calls returned")
            if coordinated and len(values) != 1:
                raise RuntimeError(f"round {round_no}: callers got different values {values}")
            if round_no == 0:
                continue
            stats = [r["stats"] for r in reports if r["stats"] is not None]
            runs.append(
                {
                    "fetches": fetches,
                    "wall": max(r["end"] for r in reports) - released,
                    "start_spread": max(r["start"] for r in reports)
                    - min(r["start"] for r in reports),
                    "notifications": sum(s["notifications"] for s in stats),
                    "degraded": sum(s["degraded"] + s["timeouts"] for s in stats),
                }
            )
        for process in processes:
            if await asyncio.wait_for(process.wait(), 30) != 0:
                raise RuntimeError(f"a worker exited with {process.returncode}")
    finally:
        await _reap(processes)
        await client.aclose()
    walls = [r["wall"] for r in runs]
    return {
        "kind": kind,
        "coordinated": coordinated,
        "processes": settings.processes,
        "callers": settings.callers,
        "origin_delay": settings.origin_delay,
        "runs": runs,
        "fetches": [r["fetches"] for r in runs],
        "wall_median": statistics.median(walls),
        "wall_min": min(walls),
        "wall_max": max(walls),
    }


# -- 2. invalidation propagation between two processes -------------------------------------------


def _propagation_stack(client: Any, run_id: str, kind: str) -> Any:
    """One instance of the propagation scenario (same configuration in both processes)."""
    from layercache import MemoryLayer, RedisInvalidationBus, RedisLayer

    return _stack_class(kind)(
        [MemoryLayer(ttl=600), RedisLayer(client=client, prefix=f"{run_id}:cache:", ttl=600)],
        invalidation_bus=RedisInvalidationBus(
            publisher=client, channel=f"{run_id}:invalidation", signing_secret=SECRET
        ),
        broadcast_l1_invalidation=True,
    )


async def _invalidator_worker(args: argparse.Namespace) -> None:
    """Instance A: after the go signal, deletes or overwrites one key every ``interval``."""
    import redis.asyncio

    client = _redis_client(args.url, args.kind)
    control = client if args.kind == "async" else redis.asyncio.Redis.from_url(args.url)
    calls: list[tuple[str, float, float]] = []
    try:
        async with _opened(_propagation_stack(client, args.run_id, args.kind)) as stack:
            await control.rpush(f"{args.run_id}:ready", os.getpid())
            if await control.blpop([f"{args.run_id}:go"], timeout=60) is None:
                raise SystemExit("the parent never released the barrier")
            for operation in args.operations.split(","):
                for i in range(args.count):
                    key = f"{operation}:{i}"
                    began = time.time()
                    if operation == "delete":
                        await _resolve(stack.delete(key))
                    else:
                        await _resolve(stack.set(key, {"version": 2}))
                    calls.append((key, began, time.time()))
                    await asyncio.sleep(args.interval)  # pacing, not synchronisation
    finally:
        await _close(client)
        if control is not client:
            await control.aclose()
    sys.stdout.write(json.dumps(calls))
    sys.stdout.flush()


async def propagation(
    url: str, settings: Settings, writer: str = "async", reader: str = "async"
) -> dict[str, Any]:
    """Delay from A's ``delete``/``set`` to the key leaving B's memory layer.

    ``writer`` and ``reader`` are the stack kinds of A (the other process) and B (this one).

    Raises:
        RuntimeError: If the worker fails, or an invalidation does not arrive in time.
    """
    import redis.asyncio

    from layercache import CacheEntry

    run_id = f"bench-inv-{uuid.uuid4().hex[:8]}"
    operations = ("delete", "set")
    count = settings.invalidations
    client = _redis_client(url, reader)
    control = client if reader == "async" else redis.asyncio.Redis.from_url(url)
    stack = _propagation_stack(client, run_id, reader)
    memory = stack.layers[0]
    keys = {f"{op}:{i}" for op in operations for i in range(count)}
    gone_at: dict[str, float] = {}
    errors: list[Any] = []
    all_gone = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_invalidation(payload: dict[str, Any]) -> None:
        # A sync stack calls this on its bus thread: the event is set through the loop.
        now = time.time()
        for key in payload["keys"]:
            if key in keys and key not in gone_at and memory.get(key) is None:
                gone_at[key] = now
        if len(gone_at) == len(keys):
            loop.call_soon_threadsafe(all_gone.set)

    process: asyncio.subprocess.Process | None = None
    try:
        async with _opened(stack):
            stack.on("error", errors.append)
            # B holds every key in its memory layer (and Redis) before A starts.
            ordered = sorted(keys)
            for start in range(0, len(ordered), 1000):
                await _resolve(
                    stack.set_many(
                        CacheEntry(k, {"version": 1}) for k in ordered[start : start + 1000]
                    )
                )
            if any(memory.get(k) is None for k in keys):
                raise RuntimeError("the memory layer did not keep every key")
            stack.on("invalidation", on_invalidation)
            process = await _spawn(
                "--worker",
                "invalidator",
                "--url",
                url,
                "--run-id",
                run_id,
                "--count",
                str(count),
                "--interval",
                str(settings.interval),
                "--operations",
                ",".join(operations),
                "--kind",
                writer,
            )
            await _wait_for_list(control, f"{run_id}:ready", 1, [process])
            await control.rpush(f"{run_id}:go", "go")
            assert process.stdout is not None
            output = await asyncio.wait_for(process.stdout.read(), 300)
            if await asyncio.wait_for(process.wait(), 30) != 0:
                raise RuntimeError(f"the invalidating process exited with {process.returncode}")
            try:
                await asyncio.wait_for(all_gone.wait(), 10)
            except asyncio.TimeoutError:
                raise RuntimeError(
                    f"{len(keys) - len(gone_at)} of {len(keys)} keys never left B's memory layer"
                ) from None
    finally:
        if process is not None:
            await _reap([process])
        await _close(client)
        if control is not client:
            await control.aclose()
    if errors:
        raise RuntimeError(f"the stack reported an error: {errors[0]!r}")
    calls: list[list[Any]] = json.loads(output)
    rows = []
    for operation in operations:
        mine = [c for c in calls if c[0].startswith(f"{operation}:")]
        delays = sorted((gone_at[key] - began) * 1000 for key, began, _ in mine)
        durations = sorted((ended - began) * 1000 for _, began, ended in mine)
        rows.append(
            {
                "writer": writer,
                "reader": reader,
                "operation": operation,
                "count": len(delays),
                "p50_ms": _percentile(delays, 0.50),
                "p99_ms": _percentile(delays, 0.99),
                "max_ms": delays[-1],
                "call_p50_ms": _percentile(durations, 0.50),
            }
        )
    return {"rows": rows}


# -- 3. tag invalidation of 10,000 keys ---------------------------------------------------------


async def tag_invalidation(
    make_client: Callable[[], Awaitable[Any]], settings: Settings, kind: str = "async"
) -> dict[str, Any]:
    """``invalidate_by_tag`` over ``settings.tag_keys`` keys, ``settings.tag_runs`` times.

    ``make_client`` gives a client of ``kind`` (sync: a SyncCacheStack and the sync index).

    Raises:
        RuntimeError: If the invalidation does not remove exactly the tagged keys.
    """
    from layercache import CacheEntry, MemoryLayer, RedisLayer, RedisTagIndex

    count = settings.tag_keys
    writes: list[float] = []
    lookups: list[float] = []
    invalidations: list[float] = []
    for run in range(settings.tag_runs):
        client = await make_client()
        prefix = f"bench-tags-{run}-{uuid.uuid4().hex[:6]}"
        index = RedisTagIndex(client=client, prefix=f"{prefix}:tag-index")
        redis_layer = RedisLayer(client=client, prefix=f"{prefix}:", ttl=600)
        stack = _stack_class(kind)(
            [MemoryLayer(ttl=600, max_size=count * 2), redis_layer], tag_index=index
        )
        keys = [f"item:{i}" for i in range(count)]
        try:
            started = time.perf_counter()
            for start in range(0, count, 1000):
                await _resolve(
                    stack.set_many(
                        CacheEntry(k, {"id": i}, {"tags": ["bulk", f"group:{i % 10}"]})
                        for i, k in enumerate(keys[start : start + 1000], start)
                    )
                )
            writes.append(time.perf_counter() - started)
            await _resolve(stack.set("other", "stays", tags=["other"]))

            started = time.perf_counter()
            found = await _resolve(index.keys_for_tags(["bulk"]))
            lookups.append(time.perf_counter() - started)
            if found != set(keys):
                raise RuntimeError(f"keys_for_tags found {len(found)} of {count} keys")

            started = time.perf_counter()
            removed = await _resolve(stack.invalidate_by_tag("bulk"))
            invalidations.append(time.perf_counter() - started)
            if removed != count:
                raise RuntimeError(f"invalidate_by_tag removed {removed} of {count} keys")
            survivors = await _resolve(redis_layer.size())
            if survivors != 1 or await _resolve(stack.get("item:7")) is not None:
                raise RuntimeError("tagged keys survived the invalidation")
            if await _resolve(stack.get("other")) != "stays":
                raise RuntimeError("an untagged key was invalidated")
            await _resolve(stack.clear())
        finally:
            await _close(stack)
            await _close(client)
    return {
        "kind": kind,
        "keys": count,
        "runs": settings.tag_runs,
        "invalidate_median": statistics.median(invalidations),
        "invalidate_all": invalidations,
        "lookup_median": statistics.median(lookups),
        "write_median": statistics.median(writes),
    }


@contextlib.contextmanager
def _redis_cluster3() -> Iterator[Any]:
    """A throwaway three-master Redis Cluster on free loopback ports (the tests' launcher)."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from _redis_server import RedisCluster3  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    cluster = RedisCluster3.launch()
    try:
        yield cluster
    finally:
        cluster.close()


# -- report ------------------------------------------------------------------------------------


_STACK_NAMES = {"async": "CacheStack", "sync": "SyncCacheStack"}


def _ratio(value: float, baseline: float | None) -> str:
    """``value / baseline`` as ``0.00x`` (empty without an async baseline in the same run)."""
    return f"{value / baseline:.2f}x" if baseline else ""


def _markdown(document: dict[str, Any]) -> str:
    results = document["results"]
    settings = document["settings"]
    out: list[str] = []
    if results.get("single_flight"):
        sf = results["single_flight"]
        first = sf[0]
        baseline = {r["coordinated"]: r["wall_median"] for r in sf if r["kind"] == "async"}
        out += [
            f"### Cross-process single-flight: {first['processes']} processes x "
            f"{first['callers']} concurrent callers, cold key, "
            f"{first['origin_delay'] * 1000:.0f} ms origin",
            "",
            f"Wall time: from the release of every process to the last caller's return; "
            f"median of {settings['single_flight_runs']} runs. The sync callers are threads "
            "started together by a `threading.Barrier`.",
            "",
            "| configuration | origin fetches per run | wall time median (ms) | min … max (ms) "
            "| sync/async |",
            "| --- | --- | ---: | ---: | ---: |",
        ]
        for row in sf:
            stack = _STACK_NAMES[row["kind"]]
            if row["kind"] == "sync":
                stack += f" ({row['callers']} threads)"
            name = (
                f"{stack} + RedisSingleFlightCoordinator"
                if row["coordinated"]
                else f"{stack}, no coordinator (in-process single-flight only)"
            )
            ratio = _ratio(row["wall_median"], baseline.get(row["coordinated"]))
            out.append(
                f"| {name} | {', '.join(str(f) for f in row['fetches'])} "
                f"| {row['wall_median'] * 1000:.1f} "
                f"| {row['wall_min'] * 1000:.1f} … {row['wall_max'] * 1000:.1f} "
                f"| {ratio if row['kind'] == 'sync' else ''} |"
            )
        out.append("")
    if results.get("propagation"):
        prop = results["propagation"]
        baseline = {
            r["operation"]: r["p50_ms"]
            for r in prop["rows"]
            if (r.get("writer", "async"), r.get("reader", "async")) == ("async", "async")
        }
        out += [
            "### Invalidation propagation between two processes (signed bus)",
            "",
            "A is the writing process, B the one whose `MemoryLayer` must lose the key. "
            "The last column is p50 over the async → async p50 of the same operation.",
            "",
            "| path | invalidations | p50 (ms) | p99 (ms) | max (ms) | A's call p50 (ms) "
            "| p50 / async p50 |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in prop["rows"]:
            writer = _STACK_NAMES[row.get("writer", "async")]
            reader = _STACK_NAMES[row.get("reader", "async")]
            out.append(
                f"| {writer} A `{row['operation']}()` → key gone from {reader} B's "
                f"`MemoryLayer` | {row['count']} | {row['p50_ms']:.3f} | {row['p99_ms']:.3f} "
                f"| {row['max_ms']:.3f} | {row['call_p50_ms']:.3f} "
                f"| {_ratio(row['p50_ms'], baseline.get(row['operation']))} |"
            )
        raw = prop.get("raw_bus")
        if raw:
            out.append(
                f"| raw bus (bench.bus_latency: publish → `on_message`, signed, 1 key, async) "
                f"| {raw['count']} | {raw['p50_ms']:.3f} | {raw['p99_ms']:.3f} "
                f"| {raw['max_ms']:.3f} | | |"
            )
        out.append("")
    if results.get("tags"):
        first = results["tags"][0]
        baseline = {
            r["backend"]: r["invalidate_median"] for r in results["tags"] if r["kind"] == "async"
        }
        out += [
            f"### Tag invalidation of {first['keys']:,} tagged keys "
            f"([MemoryLayer, RedisLayer] + RedisTagIndex)",
            "",
            f"Median of {first['runs']} runs.",
            "",
            "| stack | Redis | `invalidate_by_tag` (ms) | all runs (ms) | `keys_for_tags` (ms) "
            "| writing the keys (`set_many`, s) | sync/async |",
            "| --- | --- | ---: | --- | ---: | ---: | ---: |",
        ]
        for row in results["tags"]:
            runs = ", ".join(f"{t * 1000:.0f}" for t in row["invalidate_all"])
            ratio = _ratio(row["invalidate_median"], baseline.get(row["backend"]))
            out.append(
                f"| {_STACK_NAMES[row['kind']]} | {row['backend']} "
                f"| {row['invalidate_median'] * 1000:.1f} | {runs} "
                f"| {row['lookup_median'] * 1000:.1f} | {row['write_median']:.2f} "
                f"| {ratio if row['kind'] == 'sync' else ''} |"
            )
        out.append("")
    return "\n".join(out)


# -- driver ------------------------------------------------------------------------------------


async def _measure(
    url: str, cluster: Any, settings: Settings, scenarios: Sequence[str], kinds: Sequence[str]
) -> dict[str, Any]:
    import redis
    import redis.asyncio
    from redis.cluster import ClusterNode

    results: dict[str, Any] = {}
    if "singleflight" in scenarios:
        results["single_flight"] = []
        for coordinated in (True, False):
            for kind in kinds:
                _log(f"single-flight, {kind}, coordinator={'yes' if coordinated else 'no'}")
                results["single_flight"].append(
                    await single_flight(url, settings, coordinated, kind)
                )
    if "propagation" in scenarios:
        from bench import bus_latency

        rows: list[dict[str, Any]] = []
        for writer, reader in PAIRS:
            if writer in kinds and reader in kinds:
                _log(
                    f"propagation {writer} -> {reader}: {settings.invalidations} deletes "
                    f"+ {settings.invalidations} sets"
                )
                rows += (await propagation(url, settings, writer, reader))["rows"]
        results["propagation"] = {"rows": rows}
        _log(f"raw bus: {settings.invalidations} signed single-key messages")
        results["propagation"]["raw_bus"] = await bus_latency.measure(
            url, count=settings.invalidations, signed=True, interval=settings.interval
        )
    if "tags" in scenarios:
        results["tags"] = []
        for kind in kinds:

            async def single(kind: str = kind) -> Any:
                return _redis_client(url, kind)

            _log(f"tags, {kind}: {settings.tag_keys} keys on a single server")
            results["tags"].append(
                {"backend": "single server", **await tag_invalidation(single, settings, kind)}
            )
        for kind in kinds if cluster is not None else ():

            async def clustered(kind: str = kind) -> Any:
                if kind == "sync":
                    # The sync client reads the slot map when it is built.
                    nodes = [ClusterNode(host, port) for host, port in cluster.startup_nodes]
                    return redis.RedisCluster(startup_nodes=nodes, socket_timeout=5)
                client = cluster.async_client()
                await client.initialize()  # see docs/distributed.md, "Start-up"
                return client

            _log(f"tags, {kind}: {settings.tag_keys} keys on a 3-master cluster")
            results["tags"].append(
                {"backend": "3-master cluster", **await tag_invalidation(clustered, settings, kind)}
            )
    return results


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the JSON document (with a ``markdown`` rendering)."""
    from bench.fixtures import environment, redis_server

    args = parse_args(argv)
    settings = Settings.smoke() if args.quick else Settings()
    scenarios = tuple(args.only.split(",")) if args.only else SCENARIOS
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    kinds = tuple(args.kinds.split(","))
    if set(kinds) - set(KINDS):
        raise SystemExit(f"--kinds takes a subset of {','.join(KINDS)}")
    with contextlib.ExitStack() as exits:
        server = exits.enter_context(redis_server())
        _log(f"redis-server on {server.host}:{server.port}")
        cluster = None
        if "tags" in scenarios and not args.skip_cluster:
            cluster = exits.enter_context(_redis_cluster3())
            _log(f"3-master cluster on {cluster.startup_nodes}")
        results = asyncio.run(_measure(server.url, cluster, settings, scenarios, kinds))
    document: dict[str, Any] = {
        "environment": environment(),
        "settings": dataclasses.asdict(settings),
        "results": results,
    }
    document["markdown"] = _markdown(document)
    if args.json:
        Path(args.json).write_text(json.dumps(document, indent=2, default=str) + "\n")
    return document


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options (and the worker processes' hidden ones)."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.distributed",
        description="Cross-instance single-flight, invalidation propagation, tag invalidation.",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run (rough numbers)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--only", metavar="LIST", help=f"subset of {','.join(SCENARIOS)}")
    parser.add_argument(
        "--kinds",
        default=",".join(KINDS),
        metavar="LIST",
        help="stack kinds: async (CacheStack), sync (SyncCacheStack); default both",
    )
    parser.add_argument(
        "--skip-cluster", action="store_true", help="no 3-master cluster rows (needs redis-cli)"
    )
    # The worker processes' arguments.
    parser.add_argument("--worker", choices=("singleflight", "invalidator"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--run-id", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--callers", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--delay", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--coordinated", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--interval", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--operations", help=argparse.SUPPRESS)
    parser.add_argument("--kind", choices=KINDS, default="async", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; prints the Markdown tables to stdout."""
    args = parse_args(argv)
    if args.worker == "singleflight":
        asyncio.run(_single_flight_worker(args))
        return 0
    if args.worker == "invalidator":
        asyncio.run(_invalidator_worker(args))
        return 0
    document = run(argv)
    env = document["environment"]
    print(
        f"Python {env['python']} on {env['platform']}, {env['cpus']} CPUs; "
        f"{env['redis_server'] or 'no redis-server'}; hiredis parser: {env['hiredis_parser']}\n"
    )
    print(document["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
