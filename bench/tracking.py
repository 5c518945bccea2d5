"""Server-assisted invalidation (``RedisInvalidationBus(track_prefix=...)``, Redis client-side
caching) next to the signed bus, in one run (``python -m bench.tracking``).

Starts its own ``redis-server`` on a free 127.0.0.1 port and measures:

1. **Propagation between two processes.** This process (the reader, B) holds every key of the
   run in its ``MemoryLayer``; a second Python process (the writer, A) changes one key every
   ``--interval`` seconds and notes the wall time when each call began. B listens to its
   stack's ``invalidation`` event and, when it fires, checks that the key is really gone from
   its memory layer and notes the time. The delay is B's time minus A's call start (both
   processes share the machine's clock). Scenarios:

   * ``bus``: A is a ``CacheStack`` whose ``set`` is announced on the signed bus
     (``broadcast_l1_invalidation=True``); B subscribes to the same signed channel (the way
     this library propagated changes before tracking);
   * ``tracking, raw SET``: A is a plain ``redis.asyncio`` client (not this library) doing
     ``SET``; B's bus tracks the layer's prefix (``track_prefix``), the signed channel beside;
   * ``tracking, raw DEL``: the same with ``DEL``;
   * ``tracking, stack.set``: A is a ``CacheStack`` without a bus; B learns from Redis alone;
   * ``tracking, raw SET -> SyncCacheStack``: B is a ``SyncCacheStack`` (subscriber thread).

2. **What tracking costs a local write.** Redis reports this instance's own writes too (it
   cannot tell them apart), so a key this instance just wrote loses its L1 copy and its next
   read goes to Redis. In one process, one ``CacheStack`` per configuration (no bus; signed
   bus announcing writes; tracking): ``set`` a key, let the report arrive (1 ms), read it
   back. Shown: the read-back latency (p50, p99), how many reads went to Redis per write, and
   a mixed workload (10% ``set``, 90% ``get`` over 1,000 hot keys) in ops/s, against raw
   redis-py ``GET``/``SET`` + JSON (no L1) in the same run as the floor.

``--quick`` shrinks every figure; ``--json PATH`` writes the results too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench.bus_latency import summarise

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-tracking-secret-0123456789abcdef0123456789"
TRACKING_SOURCE = "redis:client-tracking"
WRITERS = ("stack-bus", "raw-set", "raw-del", "stack-plain")


def _names(run_id: str) -> tuple[str, str]:
    """The layer prefix and the bus channel of one run."""
    return f"{run_id}:cache:", f"{run_id}:invalidation"


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(fraction * len(ordered)) - 1))
    return ordered[index]


def _entry(value: Any) -> Any:
    from layercache._entry import Entry

    now = time.time()
    return Entry(value, now, now + 600)


# -- the writing process (A) -----------------------------------------------------------------


async def _writer(args: argparse.Namespace) -> None:
    """Process A: after the go signal, change one key every ``interval`` seconds."""
    import redis.asyncio

    from layercache import CacheStack, MemoryLayer, RedisInvalidationBus, RedisLayer

    prefix, channel = _names(args.run_id)
    client = redis.asyncio.Redis.from_url(args.url)
    stack: Any = None
    if args.writer == "stack-bus":
        stack = CacheStack(
            [MemoryLayer(ttl=600), RedisLayer(client=client, prefix=prefix, ttl=600)],
            invalidation_bus=RedisInvalidationBus(
                publisher=client, channel=channel, signing_secret=SECRET
            ),
            broadcast_l1_invalidation=True,
        )
    elif args.writer == "stack-plain":
        stack = CacheStack(
            [MemoryLayer(ttl=600), RedisLayer(client=client, prefix=prefix, ttl=600)]
        )
    calls: list[tuple[str, float, float]] = []
    value = json.dumps({"version": 2}).encode()
    try:
        if stack is not None:
            await stack.start()
        await client.rpush(f"{args.run_id}:ready", os.getpid())
        if await client.blpop([f"{args.run_id}:go"], timeout=60) is None:
            raise SystemExit("the reader never released the barrier")
        for i in range(args.count):
            key = f"p:{i}"
            began = time.time()
            if args.writer == "raw-set":
                await client.set(prefix + key, value)
            elif args.writer == "raw-del":
                await client.delete(prefix + key)
            else:
                await stack.set(key, {"version": 2})
            calls.append((key, began, time.time()))
            await asyncio.sleep(args.interval)  # pacing, not synchronisation
    finally:
        if stack is not None:
            await stack.aclose()
        await client.aclose()
    sys.stdout.write(json.dumps(calls))
    sys.stdout.flush()


async def _spawn_writer(url: str, run_id: str, writer: str, count: int, interval: float) -> Any:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH")) if p
    )
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.tracking",
        "--writer",
        writer,
        "--url",
        url,
        "--run-id",
        run_id,
        "--count",
        str(count),
        "--interval",
        str(interval),
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
    )


# -- the reading process (B) -----------------------------------------------------------------


def _reader_stack(client: Any, run_id: str, tracking: bool) -> tuple[Any, Any, Any]:
    """B's stack (a SyncCacheStack when ``client`` is sync), its memory layer and its bus."""
    import redis

    from layercache import (
        CacheStack,
        MemoryLayer,
        RedisInvalidationBus,
        RedisLayer,
        SyncCacheStack,
    )

    prefix, channel = _names(run_id)
    memory = MemoryLayer(ttl=600)
    sync = isinstance(client, redis.Redis)
    bus = RedisInvalidationBus(
        publisher=client,
        channel=channel,
        signing_secret=SECRET,
        track_prefix=prefix if tracking else None,
        max_keys=10_000,
        **({"health_check_interval": 0.25} if sync else {}),
    )
    kind = SyncCacheStack if sync else CacheStack
    stack = kind([memory, RedisLayer(client=client, prefix=prefix, ttl=600)], invalidation_bus=bus)
    return stack, memory, bus


async def propagation(
    url: str, writer: str, *, tracking: bool, sync_reader: bool, count: int, interval: float
) -> dict[str, Any]:
    """Delay from A's change to the key leaving B's memory layer (see the module doc).

    Raises:
        RuntimeError: If the writer fails, or a change never reaches B.
    """
    import redis
    import redis.asyncio

    run_id = f"bench-trk-{uuid.uuid4().hex[:8]}"
    prefix, _ = _names(run_id)
    control = redis.asyncio.Redis.from_url(url)
    client: Any = redis.Redis.from_url(url) if sync_reader else redis.asyncio.Redis.from_url(url)
    stack, memory, _ = _reader_stack(client, run_id, tracking)
    keys = [f"p:{i}" for i in range(count)]
    wanted = set(keys)
    gone_at: dict[str, float] = {}
    errors: list[Any] = []
    all_gone = asyncio.Event()
    loop = asyncio.get_running_loop()
    source = TRACKING_SOURCE if tracking else None

    def on_invalidation(payload: dict[str, Any]) -> None:
        # A SyncCacheStack calls this on its bus thread: the event is set through the loop.
        now = time.time()
        if source is not None and payload["source_id"] != source:
            return
        for key in payload["keys"]:
            if key in wanted and key not in gone_at and memory.get(key) is None:
                gone_at[key] = now
        if len(gone_at) == len(keys):
            loop.call_soon_threadsafe(all_gone.set)

    def on_error(payload: dict[str, Any]) -> None:
        errors.append(payload)

    process: Any = None
    try:
        if sync_reader:
            await asyncio.to_thread(stack.start)
        else:
            await stack.start()
        # B holds every key before A starts (Redis too, for the DEL writer). Written to the
        # memory layer directly: a stack's own set would come back as a report and drop it.
        await control.mset({prefix + k: b'{"version": 1}' for k in keys})
        await asyncio.sleep(0.2)  # let the reports of that MSET pass before filling L1
        for key in keys:
            memory.set(key, _entry({"version": 1}), 600)
        stack.on("invalidation", on_invalidation)
        stack.on("error", on_error)
        process = await _spawn_writer(url, run_id, writer, count, interval)
        deadline = time.monotonic() + 60
        while await control.llen(f"{run_id}:ready") < 1:
            if process.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError("the writer did not get ready")
            await asyncio.sleep(0.02)
        await control.rpush(f"{run_id}:go", "go")
        output = await asyncio.wait_for(process.stdout.read(), 600)
        if await asyncio.wait_for(process.wait(), 30) != 0:
            raise RuntimeError(f"the writer exited with {process.returncode}")
        try:
            await asyncio.wait_for(all_gone.wait(), 10)
        except asyncio.TimeoutError:
            raise RuntimeError(
                f"{len(keys) - len(gone_at)} of {len(keys)} keys never left B's memory layer"
            ) from None
    finally:
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
        if sync_reader:
            await asyncio.to_thread(stack.close)
            client.close()
        else:
            await stack.aclose()
            await client.aclose()
        await control.aclose()
    if errors:
        raise RuntimeError(f"the reader's stack reported an error: {errors[0]!r}")
    calls: list[list[Any]] = json.loads(output)
    delays = [gone_at[key] - began for key, began, _ in calls]
    durations = [(ended - began) * 1000 for _, began, ended in calls]
    return {"count": len(delays), **summarise(delays), "call_p50_ms": _percentile(durations, 0.5)}


async def storm(url: str, port: int, *, count: int, batched: bool) -> dict[str, Any] | None:
    """A write storm from another program: ``redis-benchmark`` (50 clients, ``count`` SETs of
    random ``key:<n>`` keys, no pipelining, so Redis reports a few keys per event-loop turn).
    How fast B's tracking subscriber applies the reports, and how far behind it is when the
    storm ends (a marker key set right after it: reports arrive in order, so once the
    marker's is applied, every earlier one is). ``batched=False`` applies every report on its
    own (the bus's read-ahead off), for comparison. ``None`` without ``redis-benchmark``."""
    import shutil

    import redis.asyncio

    from layercache import CacheStack, MemoryLayer, RedisInvalidationBus, RedisLayer
    from layercache.redis import bus as bus_module

    binary = shutil.which("redis-benchmark")
    if binary is None:
        return None
    control = redis.asyncio.Redis.from_url(url)
    client = redis.asyncio.Redis.from_url(url)
    bus = RedisInvalidationBus(publisher=client, channel="bench:storm", track_prefix="key:")
    stack = CacheStack(
        [MemoryLayer(ttl=600), RedisLayer(client=client, prefix="key:")], invalidation_bus=bus
    )
    marker_at: list[float] = []

    def on_invalidation(payload: dict[str, Any]) -> None:
        if "marker" in payload["keys"]:
            marker_at.append(time.time())

    saved = bus_module._MAX_TRACKING_BATCH
    bus_module._MAX_TRACKING_BATCH = saved if batched else 1
    try:
        await stack.start()
        stack.on("invalidation", on_invalidation)
        before = bus.tracked
        began = time.time()
        process = await asyncio.create_subprocess_exec(
            binary,
            *("-p", str(port), "-t", "set", "-n", str(count), "-r", "1000000", "-c", "50", "-q"),
            stdout=asyncio.subprocess.DEVNULL,
            stdin=asyncio.subprocess.DEVNULL,
        )
        if await asyncio.wait_for(process.wait(), 600) != 0:
            raise RuntimeError(f"redis-benchmark exited with {process.returncode}")
        ended = time.time()
        await control.set("key:marker", b"x")
        deadline = time.monotonic() + 120
        while not marker_at:
            if time.monotonic() > deadline:
                raise RuntimeError("the storm's reports were not applied within 120 s")
            await asyncio.sleep(0.001)
        payloads = bus.tracked[0] - before[0]
        keys = bus.tracked[1] - before[1]
    finally:
        bus_module._MAX_TRACKING_BATCH = saved
        await stack.aclose()
        await client.aclose()
        await control.aclose()
    return {
        "batched": batched,
        "writes": count,
        "writes_per_s": count / (ended - began),
        "applied_keys_per_s": keys / (marker_at[0] - began),
        "lag_ms": max(0.0, marker_at[0] - ended) * 1000,
        "payloads": payloads,
        "keys_per_payload": keys / max(1, payloads),
    }


# -- the cost of tracking on a local write ------------------------------------------------------


MODES = ("plain", "bus", "tracking", "raw")


class _Config:
    """One configuration of the write-cost part: a stack (or raw redis-py) on its own prefix."""

    def __init__(self, url: str, mode: str) -> None:
        import redis.asyncio

        from layercache import CacheStack, MemoryLayer, RedisInvalidationBus, RedisLayer

        self.mode = mode
        run_id = f"bench-cost-{uuid.uuid4().hex[:8]}"
        self.prefix, channel = _names(run_id)
        self.client = redis.asyncio.Redis.from_url(url)
        self.stack: Any = None
        if mode != "raw":
            bus = None
            if mode != "plain":
                bus = RedisInvalidationBus(
                    publisher=self.client,
                    channel=channel,
                    signing_secret=SECRET,
                    track_prefix=self.prefix if mode == "tracking" else None,
                )
            self.stack = CacheStack(
                [MemoryLayer(ttl=600), RedisLayer(client=self.client, prefix=self.prefix, ttl=600)],
                invalidation_bus=bus,
                broadcast_l1_invalidation=mode == "bus",
            )

    async def put(self, key: str, value: Any) -> None:
        if self.stack is None:
            await self.client.set(self.prefix + key, json.dumps(value).encode(), ex=600)
        else:
            await self.stack.set(key, value)

    async def get(self, key: str) -> Any:
        if self.stack is None:
            raw = await self.client.get(self.prefix + key)
            return None if raw is None else json.loads(raw)
        return await self.stack.get(key)

    def redis_reads(self) -> int:
        if self.stack is None:
            return 0
        layer = self.stack.get_metrics().layers["redis"]
        return int(layer.hits + layer.misses)

    async def aclose(self) -> None:
        if self.stack is not None:
            await self.stack.aclose()
        await self.client.aclose()


async def write_cost(url: str, *, writes: int, mixed_ops: int, rounds: int) -> list[dict[str, Any]]:
    """Each configuration (``plain``: no bus, ``bus``: signed bus announcing writes,
    ``tracking``: track_prefix, the signed bus not announcing writes, ``raw``: redis-py without
    L1): the read-back of a key written 1 ms earlier, and the mixed workload. The
    configurations take turns, ``rounds`` times (the machine is shared and noisy): medians."""
    configs = [_Config(url, mode) for mode in MODES]
    value = {"id": 1, "name": "x" * 100}
    latencies: dict[str, list[float]] = {mode: [] for mode in MODES}
    reads_per_write: dict[str, list[float]] = {mode: [] for mode in MODES}
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    mixed_reads: dict[str, list[float]] = {mode: [] for mode in MODES}
    hot = [f"hot:{i}" for i in range(1000)]
    try:
        for config in configs:
            if config.stack is not None:
                await config.stack.start()
            for key in hot:
                await config.put(key, value)
        await asyncio.sleep(0.2)
        for config in configs:
            for key in hot:
                await config.get(key)
        rng = random.Random(16)
        for _ in range(rounds):
            plan = [(rng.random() < 0.1, rng.choice(hot)) for _ in range(mixed_ops // rounds)]
            for config in configs:
                mode = config.mode
                # Read-back: set, the report arrives (1 ms), get.
                before = config.redis_reads()
                for i in range(writes // rounds):
                    key = f"rb:{i % 100}"
                    await config.put(key, value)
                    await asyncio.sleep(0.001)
                    began = time.perf_counter()
                    await config.get(key)
                    latencies[mode].append((time.perf_counter() - began) * 1e6)
                reads_per_write[mode].append((config.redis_reads() - before) / (writes // rounds))
                # Mixed: 10% set, 90% get over 1,000 hot keys, one after the other.
                before = config.redis_reads()
                began = time.perf_counter()
                for is_write, key in plan:
                    if is_write:
                        await config.put(key, value)
                    else:
                        await config.get(key)
                rates[mode].append(len(plan) / (time.perf_counter() - began))
                mixed_reads[mode].append(
                    (config.redis_reads() - before) / max(1, sum(1 for w, _ in plan if w))
                )
    finally:
        for config in configs:
            await config.aclose()
    return [
        {
            "mode": mode,
            "readback_p50_us": _percentile(latencies[mode], 0.5),
            "readback_p99_us": _percentile(latencies[mode], 0.99),
            "redis_reads_per_write": _percentile(reads_per_write[mode], 0.5),
            "mixed_ops_per_s": _percentile(rates[mode], 0.5),
            "mixed_ops_per_s_rounds": rates[mode],
            "mixed_redis_reads_per_write": _percentile(mixed_reads[mode], 0.5),
        }
        for mode in MODES
    ]


# -- the run ---------------------------------------------------------------------------------


SCENARIOS: tuple[tuple[str, str, bool, bool], ...] = (
    # (name, writer, reader tracks the prefix, reader is a SyncCacheStack)
    ("bus: stack.set announced on the signed bus", "stack-bus", False, False),
    ("tracking: raw redis-py SET", "raw-set", True, False),
    ("tracking: raw redis-py DEL", "raw-del", True, False),
    ("tracking: stack.set (no bus)", "stack-plain", True, False),
    ("tracking: raw SET -> SyncCacheStack", "raw-set", True, True),
)


async def run(
    quick: bool, count: int | None, interval: float, storm_writes: int | None = None
) -> dict[str, Any]:
    from bench.fixtures import environment, redis_server

    count = count or (200 if quick else 2000)
    writes = 300 if quick else 3000
    mixed_ops = 3000 if quick else 90_000
    results: dict[str, Any] = {"environment": environment(), "count": count}
    with redis_server() as server:
        rows = []
        for name, writer, tracking, sync_reader in SCENARIOS:
            figures = await propagation(
                server.url,
                writer,
                tracking=tracking,
                sync_reader=sync_reader,
                count=count,
                interval=interval,
            )
            rows.append({"scenario": name, **figures})
        results["propagation"] = rows
        storm_writes = storm_writes or (50_000 if quick else 500_000)
        results["storm"] = [
            row
            for batched in (True, False, True, False)
            if (row := await storm(server.url, server.port, count=storm_writes, batched=batched))
        ]
        results["write_cost"] = await write_cost(
            server.url, writes=writes, mixed_ops=mixed_ops, rounds=3 if quick else 9
        )
    results["markdown"] = _markdown(results)
    return results


def _markdown(results: dict[str, Any]) -> str:
    rows = results["propagation"]
    bus = rows[0]
    lines = [
        "### Propagation: a change in process A to the key leaving B's L1",
        "",
        "| scenario | changes | p50 (ms) | p99 (ms) | max (ms) | p50 / bus p50 | "
        "p99 / bus p99 | A's call p50 (ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['count']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} "
            f"| {r['max_ms']:.3f} | {r['p50_ms'] / bus['p50_ms']:.2f}x "
            f"| {r['p99_ms'] / bus['p99_ms']:.2f}x | {r['call_p50_ms']:.3f} |"
        )
    lines += [
        "",
        "### A write storm from another program (redis-benchmark: 50 clients, SET)",
        "",
        "| reader | writes | writes/s | keys applied/s | behind at the end (ms) | "
        "reports | keys per report |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results["storm"]:
        name = "read-ahead (default)" if r["batched"] else "one drop per report"
        lines.append(
            f"| {name} | {r['writes']:,} | {r['writes_per_s']:,.0f} "
            f"| {r['applied_keys_per_s']:,.0f} | {r['lag_ms']:.1f} | {r['payloads']:,} "
            f"| {r['keys_per_payload']:.1f} |"
        )
    if not results["storm"]:
        lines.append("| (redis-benchmark not installed: skipped) | | | | | | |")
    cost = {r["mode"]: r for r in results["write_cost"]}
    raw = cost["raw"]
    plain = cost["plain"]
    lines += [
        "",
        "### What tracking costs a local write (one process, CacheStack; mixed: median of "
        "the rounds)",
        "",
        "| configuration | read-back p50 (us) | read-back p99 (us) | Redis reads per write "
        "| mixed ops/s | vs no bus | vs raw redis-py | Redis reads per write (mixed) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    labels = {
        "plain": "no bus",
        "bus": "signed bus, writes announced",
        "tracking": "tracking (track_prefix)",
        "raw": "raw redis-py GET/SET + json (no L1)",
    }
    for mode in ("plain", "bus", "tracking", "raw"):
        r = cost[mode]
        reads, mixed_reads = (
            ("every read", "every read")
            if mode == "raw"
            else (f"{r['redis_reads_per_write']:.2f}", f"{r['mixed_redis_reads_per_write']:.2f}")
        )
        lines.append(
            f"| {labels[mode]} | {r['readback_p50_us']:.1f} | {r['readback_p99_us']:.1f} "
            f"| {reads} | {r['mixed_ops_per_s']:,.0f} "
            f"| {r['mixed_ops_per_s'] / plain['mixed_ops_per_s']:.2f}x "
            f"| {r['mixed_ops_per_s'] / raw['mixed_ops_per_s']:.2f}x "
            f"| {mixed_reads} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (also the writer process, with ``--writer``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small figures (a smoke run)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--changes", type=int, help="changes per propagation scenario")
    parser.add_argument("--interval", type=float, default=0.002, help="seconds between changes")
    parser.add_argument("--storm-writes", type=int, help="SETs of the write storm")
    # The writer process's arguments.
    parser.add_argument("--writer", choices=WRITERS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--run-id", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.writer:
        asyncio.run(_writer(args))
        return 0
    results = asyncio.run(run(args.quick, args.changes, args.interval, args.storm_writes))
    print(results["markdown"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
