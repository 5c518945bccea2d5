"""What the memcached layer costs over its client library, cold, in one run (issue 15).

Three cold-start scenarios against one local ``memcached`` (started here on a free port, the
test suite's launcher), each for the asyncio stack (aiomcache) and the sync stack (pymemcache):

* **cold miss**: a new key each call; the stack misses memory and memcached, calls an instant
  fetcher and stores its value in both. Floor: the raw client's ``get`` + ``json.dumps`` +
  ``set``.
* **cold start, L2 hit**: the keys are in memcached, the instance's memory layer is empty (a
  restarted process): each call reads memcached, decodes and fills L1. Floor: the raw
  client's ``get`` + ``json.loads``.
* **bulk cold start**: ``get_many`` of 100 keys in memcached with an empty L1. Floor: the
  raw client's multi-get + ``json.loads`` of each.
* **64 concurrent reads** (asyncio; issue 16): 64 tasks each walking their own slice of
  2,560 keys stored in memcached, through ``CacheStack([MemcachedLayer(...)])`` with read
  batching on (concurrent reads merged into one multi-get, the default) and off
  (``read_batching=False``), against raw aiomcache ``get`` + ``json.loads`` on a pool of 16
  connections (the layer's ``max_connections``; aiomcache's default is 2). ops/s of whole
  passes, the paired ratio to the raw client, and CPU time per read.

The stack is ``CacheStack([MemoryLayer(), MemcachedLayer(servers=...)])`` (and its sync twin);
values are a 1 KiB JSON object. Subjects run in many short interleaved slices (``--calls``
calls each, ``--rounds`` rounds, on fresh keys), each stack slice right next to its floor's
(which of the two goes first alternates), so that a busy shared machine slows both sides of a
ratio alike. Reported: the median slice as wall time per call (per key for the bulk scenario)
and as the calling thread's CPU time per call (``time.thread_time``: the figure least
disturbed by other processes), and each ratio to the floor as the median over the rounds of
the two adjacent slices' ratio. The layer's extra work
per read: the entry envelope is decoded; the namespace version is read with the data only
once it is older than ``version_reuse`` (1 s), so a hit asks memcached for its key alone.

Usage: ``python -m bench.memcached [--calls N] [--rounds R] [--quick] [--json PATH]``

(``--quick``: 2 rounds of 100 calls, and a walk of 640 keys in 2 rounds.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from bench.fixtures import ROOT, VALUE

BULK = 100
# Keys written for the L2-hit scenarios (each slice reads the next ones, with L1 emptied).
WARM_KEYS = 2000


@contextlib.contextmanager
def memcached_server() -> Iterator[Any]:
    """A throwaway ``memcached`` on a free 127.0.0.1 port, killed on exit."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from _memcached_server import MemcachedServer  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    # One worker thread: every connection (the raw clients' and the layer's) is served by the
    # same thread, so the floor and the stack see the same server (with memcached's default 4,
    # which thread a connection lands on changed the floor by up to 4x run to run).
    server = MemcachedServer.launch(threads=1)
    try:
        yield server
    finally:
        server.kill()


def _median(samples: list[float]) -> float:
    return statistics.median(samples)


# One subject's samples: (wall seconds, CPU seconds) per call, one pair per slice.
Samples = dict[str, list[tuple[float, float]]]


def _summary(samples: Samples) -> dict[str, tuple[float, float]]:
    """Median wall and median CPU seconds per call of each subject."""
    return {
        name: (_median([w for w, _ in pairs]), _median([c for _, c in pairs]))
        for name, pairs in samples.items()
    }


def _order(names: list[str], round_index: int) -> list[str]:
    """The subjects of one round: each (floor, stack) pair back to back, the pair's order
    flipped every other round (neither is always first after the other pair's slices)."""
    pairs = [names[index : index + 2] for index in range(0, len(names), 2)]
    if round_index % 2:
        pairs = [pair[::-1] for pair in pairs]
    return [name for pair in pairs for name in pair]


def ratios(samples: Samples) -> dict[str, tuple[float, float]]:
    """Each stack row over the floor row before it (same scenario and twin), wall and CPU:
    the median over the rounds of the ratio of the two adjacent slices of one round (so a
    burst of load on the machine weighs on both sides of a ratio alike)."""
    names = list(samples)
    out: dict[str, tuple[float, float]] = {}
    for index in range(0, len(names) - 1, 2):
        floor, stack = samples[names[index]], samples[names[index + 1]]
        out[names[index + 1]] = (
            _median([s[0] / f[0] for f, s in zip(floor, stack, strict=True)]),
            _median([s[1] / f[1] for f, s in zip(floor, stack, strict=True) if f[1] > 0]),
        )
    return out


async def run_async(host: str, port: int, calls: int, rounds: int) -> Samples:
    import aiomcache

    from layercache import CacheStack, MemoryLayer
    from layercache.memcached import MemcachedLayer

    raw = aiomcache.Client(host, port, pool_size=4)
    servers = f"{host}:{port}"
    counter = iter(range(10**9))

    async def fetch() -> Any:
        return VALUE

    async def floor_miss() -> None:
        key = f"raw:{next(counter)}".encode()
        if await raw.get(key) is None:
            await raw.set(key, json.dumps(VALUE).encode(), exptime=60)

    stack = CacheStack([MemoryLayer(), MemcachedLayer(servers=servers, prefix="bm:", ttl=60)])

    async def stack_miss() -> None:
        await stack.get(f"k{next(counter)}", fetch)

    # L2 hits: a writer stack fills memcached; the reader stack's L1 is emptied each slice.
    warm_keys = [f"w{index}" for index in range(max(WARM_KEYS, calls))]
    await stack.set_many([(key, VALUE) for key in warm_keys])
    for key in warm_keys:
        await raw.set(f"raw:{key}".encode(), json.dumps(VALUE).encode(), exptime=600)
    reader_layer = MemcachedLayer(servers=servers, prefix="bm:", ttl=60)
    reader_memory = MemoryLayer()
    reader = CacheStack([reader_memory, reader_layer])
    position = iter(range(10**9))

    async def floor_hit() -> None:
        key = warm_keys[next(position) % len(warm_keys)]
        json.loads(await raw.get(f"raw:{key}".encode()))

    async def stack_hit() -> None:
        await reader.get(warm_keys[next(position) % len(warm_keys)], fetch)

    bulk = [warm_keys[start : start + BULK] for start in range(0, len(warm_keys) - BULK + 1, BULK)]
    bulk_position = iter(range(10**9))

    async def floor_bulk() -> None:
        keys = bulk[next(bulk_position) % len(bulk)]
        values = await raw.multi_get(*(f"raw:{key}".encode() for key in keys))
        [json.loads(value) for value in values]

    async def stack_bulk() -> None:
        await reader.get_many(bulk[next(bulk_position) % len(bulk)])

    subjects: dict[str, tuple[Callable[[], Awaitable[None]], int]] = {
        "async cold miss: aiomcache get+set": (floor_miss, 1),
        "async cold miss: CacheStack[Memory, Memcached]": (stack_miss, 1),
        "async L2 hit: aiomcache get": (floor_hit, 1),
        "async L2 hit: CacheStack[Memory, Memcached]": (stack_hit, 1),
        f"async bulk {BULK}: aiomcache multi_get": (floor_bulk, BULK),
        f"async bulk {BULK}: CacheStack.get_many": (stack_bulk, BULK),
    }
    for call, _ in subjects.values():  # warm up: connections, the namespace version
        for _ in range(20):
            await call()
    samples: Samples = {name: [] for name in subjects}
    for round_index in range(rounds):
        for name in _order(list(subjects), round_index):
            call, per = subjects[name]
            reader_memory.clear()  # every read of this slice starts with an empty L1
            repeat = calls if per == 1 else max(1, calls // BULK)
            cpu = time.thread_time()
            began = time.perf_counter()
            for _ in range(repeat):
                await call()
            wall = time.perf_counter() - began
            samples[name].append(
                (wall / (repeat * per), (time.thread_time() - cpu) / (repeat * per))
            )
    await stack.aclose()
    await reader.aclose()
    await raw.close()
    return samples


CONCURRENCY = 64
CONCURRENT_KEYS = 2_560
RAW_CONCURRENT = "async 64 concurrent reads: aiomcache get (pool 16)"
LC_CONCURRENT = "async 64 concurrent reads: CacheStack[Memcached], batched"
LC_CONCURRENT_OFF = "async 64 concurrent reads: CacheStack[Memcached], read_batching=False"


async def run_concurrent(host: str, port: int, count: int, rounds: int) -> dict[str, Any]:
    """64 concurrent readers of distinct keys: per subject, the ops/s and the CPU seconds
    per read of each round (one pass over ``count`` keys), rounds in a rotated order."""
    import aiomcache

    from layercache import CacheStack
    from layercache.memcached import MemcachedLayer

    servers = f"{host}:{port}"
    raw = aiomcache.Client(host, port, pool_size=16)
    batched = CacheStack([MemcachedLayer(servers=servers, prefix="bmc:", ttl=600)])
    off = CacheStack([MemcachedLayer(servers=servers, prefix="bmc:", ttl=600, read_batching=False)])
    keys = [f"c{index}" for index in range(count)]
    await batched.set_many([(key, VALUE) for key in keys])
    encoded = json.dumps(VALUE).encode()
    for key in keys:
        await raw.set(f"rawc:{key}".encode(), encoded, exptime=600)

    async def raw_get(key: str) -> Any:
        return json.loads(await raw.get(f"rawc:{key}".encode()))  # type: ignore[arg-type]

    subjects: dict[str, Callable[[str], Awaitable[Any]]] = {
        RAW_CONCURRENT: raw_get,
        LC_CONCURRENT: batched.get,
        LC_CONCURRENT_OFF: off.get,
    }
    per = count // CONCURRENCY

    async def one_pass(read: Callable[[str], Awaitable[Any]]) -> tuple[float, float]:
        async def worker(index: int) -> None:
            for key in keys[index * per : (index + 1) * per]:
                await read(key)

        cpu = time.process_time()
        began = time.perf_counter()
        await asyncio.gather(*(worker(index) for index in range(CONCURRENCY)))
        wall = time.perf_counter() - began
        reads = per * CONCURRENCY
        return reads / wall, (time.process_time() - cpu) / reads

    for name, read in subjects.items():  # check, then warm up (connections, the version)
        if await read(keys[0]) != VALUE:
            raise AssertionError(f"{name}: expected a hit")
        await one_pass(read)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in subjects}
    names = list(subjects)
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(await one_pass(subjects[name]))
    batcher = batched._layers.adapters[0].read_batcher
    keys_per_call = (
        None
        if batcher is None or not batcher.batches
        else (batcher.batched_items / batcher.batches)
    )
    await batched.aclose()
    await off.aclose()
    await raw.close()
    return {"samples": samples, "keys_per_multi_get": keys_per_call}


def concurrent_report(result: dict[str, Any], count: int) -> list[str]:
    """A Markdown table of the concurrent walk."""
    samples: dict[str, list[tuple[float, float]]] = result["samples"]
    rounds = len(samples[RAW_CONCURRENT])
    floor = samples[RAW_CONCURRENT]
    lines = [
        f"### memcached, {CONCURRENCY} concurrent readers of distinct keys ({count:,} per pass, "
        f"{rounds} rounds; medians; ratios paired per round)",
        "",
        "| subject | ops/s | x floor | CPU µs/read | CPU x floor |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, rows in samples.items():
        ops = _median([r[0] for r in rows])
        cpu = _median([r[1] for r in rows])
        ratio = _median([r[0] / f[0] for f, r in zip(floor, rows, strict=True)])
        cpu_ratio = _median([r[1] / f[1] for f, r in zip(floor, rows, strict=True)])
        lines.append(f"| {name} | {ops:,.0f} | {ratio:.2f} | {cpu * 1e6:.1f} | {cpu_ratio:.2f} |")
    per_call = result["keys_per_multi_get"]
    if per_call is not None:
        lines += ["", f"Batched: {per_call:.1f} keys per multi-get on average."]
    return [*lines, ""]


def run_sync(host: str, port: int, calls: int, rounds: int) -> Samples:
    from pymemcache.client.base import Client

    from layercache import MemoryLayer, SyncCacheStack
    from layercache.memcached import SyncMemcachedLayer

    raw = Client((host, port), no_delay=True, default_noreply=False)
    servers = f"{host}:{port}"
    counter = iter(range(10**9))

    def fetch() -> Any:
        return VALUE

    def floor_miss() -> None:
        key = f"sraw:{next(counter)}"
        if raw.get(key) is None:
            raw.set(key, json.dumps(VALUE).encode(), expire=60, noreply=False)

    stack = SyncCacheStack(
        [MemoryLayer(), SyncMemcachedLayer(servers=servers, prefix="sbm:", ttl=60)]
    )

    def stack_miss() -> None:
        stack.get(f"k{next(counter)}", fetch)

    warm_keys = [f"w{index}" for index in range(max(WARM_KEYS, calls))]
    stack.set_many([(key, VALUE) for key in warm_keys])
    for key in warm_keys:
        raw.set(f"sraw:{key}", json.dumps(VALUE).encode(), expire=600, noreply=False)
    reader_memory = MemoryLayer()
    reader = SyncCacheStack(
        [reader_memory, SyncMemcachedLayer(servers=servers, prefix="sbm:", ttl=60)]
    )
    position = iter(range(10**9))

    def floor_hit() -> None:
        json.loads(raw.get(f"sraw:{warm_keys[next(position) % len(warm_keys)]}"))

    def stack_hit() -> None:
        reader.get(warm_keys[next(position) % len(warm_keys)], fetch)

    bulk = [warm_keys[start : start + BULK] for start in range(0, len(warm_keys) - BULK + 1, BULK)]
    bulk_position = iter(range(10**9))

    def floor_bulk() -> None:
        keys = [f"sraw:{key}" for key in bulk[next(bulk_position) % len(bulk)]]
        found = raw.get_many(keys)
        [json.loads(found[key]) for key in keys]

    def stack_bulk() -> None:
        reader.get_many(bulk[next(bulk_position) % len(bulk)])

    subjects: dict[str, tuple[Callable[[], None], int]] = {
        "sync cold miss: pymemcache get+set": (floor_miss, 1),
        "sync cold miss: SyncCacheStack[Memory, Memcached]": (stack_miss, 1),
        "sync L2 hit: pymemcache get": (floor_hit, 1),
        "sync L2 hit: SyncCacheStack[Memory, Memcached]": (stack_hit, 1),
        f"sync bulk {BULK}: pymemcache get_many": (floor_bulk, BULK),
        f"sync bulk {BULK}: SyncCacheStack.get_many": (stack_bulk, BULK),
    }
    for call, _ in subjects.values():
        for _ in range(20):
            call()
    samples: Samples = {name: [] for name in subjects}
    for round_index in range(rounds):
        for name in _order(list(subjects), round_index):
            call, per = subjects[name]
            reader_memory.clear()
            repeat = calls if per == 1 else max(1, calls // BULK)
            cpu = time.thread_time()
            began = time.perf_counter()
            for _ in range(repeat):
                call()
            wall = time.perf_counter() - began
            samples[name].append(
                (wall / (repeat * per), (time.thread_time() - cpu) / (repeat * per))
            )
    stack.close()
    reader.close()
    raw.close()
    return samples


def report(samples: Samples, calls: int, rounds: int) -> list[str]:
    """A Markdown table of one run."""
    results = _summary(samples)
    lines = [
        f"### memcached cold start, 1 KiB JSON values ({rounds} rounds of {calls}-call slices;"
        " times: median slice; ratios: median of the rounds' ratios)",
        "",
        "| subject | µs/key wall | x floor | µs/key CPU | CPU x floor |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    over = ratios(samples)
    for name, (wall, cpu) in results.items():
        ratio = over.get(name)
        lines.append(
            f"| {name} | {wall * 1e6:.1f} | {'floor' if ratio is None else f'{ratio[0]:.2f}'} "
            f"| {cpu * 1e6:.1f} | {'floor' if ratio is None else f'{ratio[1]:.2f}'} |"
        )
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a Markdown table (exit 0 whatever the ratios)."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.memcached", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--calls", type=int, default=200, help="calls per slice")
    parser.add_argument("--rounds", type=int, default=25, help="slices per subject")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 rounds of 100")
    parser.add_argument("--json", type=Path, help="also write the rows and ratios as JSON here")
    args = parser.parse_args(argv)
    calls, rounds = (100, 2) if args.quick else (args.calls, args.rounds)
    calls = max(calls, BULK)
    walk_keys, walk_rounds = (640, 2) if args.quick else (CONCURRENT_KEYS, 7)
    with memcached_server() as server:
        samples = asyncio.run(run_async(server.host, server.port, calls, rounds))
        samples.update(run_sync(server.host, server.port, calls, rounds))
        concurrent = asyncio.run(run_concurrent(server.host, server.port, walk_keys, walk_rounds))
    print("\n".join(report(samples, calls, rounds)))
    print("\n".join(concurrent_report(concurrent, walk_keys)))
    results = _summary(samples)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "rows_us": {
                        name: {"wall": wall * 1e6, "cpu": cpu * 1e6}
                        for name, (wall, cpu) in results.items()
                    },
                    "ratios": {
                        name: {"wall": wall, "cpu": cpu}
                        for name, (wall, cpu) in ratios(samples).items()
                    },
                    "concurrent": {
                        "keys": walk_keys,
                        "keys_per_multi_get": concurrent["keys_per_multi_get"],
                        "rows": {
                            name: {
                                "ops_per_s": _median([r[0] for r in rows]),
                                "cpu_us_per_read": _median([r[1] for r in rows]) * 1e6,
                                "x_floor": _median(
                                    [
                                        r[0] / f[0]
                                        for f, r in zip(
                                            concurrent["samples"][RAW_CONCURRENT],
                                            rows,
                                            strict=True,
                                        )
                                    ]
                                ),
                            }
                            for name, rows in concurrent["samples"].items()
                        },
                    },
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
