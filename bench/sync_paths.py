"""The sync stack's hot paths against their sync references (issue 5), in one run.

* **Sync L1 hit**: ``SyncCacheStack([MemoryLayer()]).get(key)`` vs a ``cachetools.TTLCache``
  hit (``TTLCache.get``). Goal: at most 1.0x.
* **Sync L2 hit**: ``SyncCacheStack([SyncRedisLayer])`` (Redis only, so every read is a Redis
  hit; the layer is ``RedisLayer(url=...)`` turned into its sync twin by the stack) vs a raw
  redis-py sync ``GET`` + ``json.loads`` of the same 1 KiB value. Goal (issue 16): at most
  1.10x. Also shown: the same read with a fetcher (a leased read: a fetch after a miss stores
  only if nothing changed since), and with the layer's read batching off (what the batcher
  costs a single thread).

Both ratios are printed twice: wall time, and the calling thread's CPU time per operation
(``time.thread_time``), the figure least disturbed by other processes on a shared machine.

Same method as the other scenarios (``bench/harness.py``: calibrated batches, interleaved
slices, median of the rounds). Starts its own ``redis-server`` on a free loopback port.

Usage: ``python -m bench.sync_paths [--quick] [--json PATH]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.fixtures import VALUE, VALUE_JSON, redis_server
from bench.harness import Settings, Subject, measure_latency
from bench.report import latency_table

TTL = 3600
L1_GOAL = 1.0
L2_GOAL = 1.10
LC_L2 = "layercache SyncCacheStack[SyncRedisLayer].get"
RAW_L2 = "floor: redis-py GET + json.loads"
LEAN_L2 = "floor: the layer's GET (parked connection) + json.loads"


def l1_subjects(exits: ExitStack) -> list[Subject]:
    """In-process sync hits: the sync stack's memory layer vs cachetools vs ``dict.get``."""
    from cachetools import TTLCache

    from layercache import MemoryLayer, SyncCacheStack

    key = "bench:l1"
    store = {key: VALUE}
    cache = SyncCacheStack([MemoryLayer(ttl=TTL)])
    exits.callback(cache.close)
    cache.set(key, VALUE)
    ttl_cache: TTLCache[str, Any] = TTLCache(maxsize=10_000, ttl=TTL)
    ttl_cache[key] = VALUE
    return [
        Subject("floor: dict.get", store.get, key, is_async=False, expect=VALUE),
        Subject("cachetools TTLCache.get", ttl_cache.get, key, is_async=False, expect=VALUE),
        Subject(
            "layercache SyncCacheStack[MemoryLayer].get",
            cache.get,
            key,
            is_async=False,
            expect=VALUE,
        ),
    ]


def l2_subjects(exits: ExitStack, host: str, port: int) -> list[Subject]:
    """Redis hits: the sync stack on the sync Redis layer vs raw redis-py ``GET`` + decode."""
    import redis

    from layercache import SyncCacheStack
    from layercache.redis import RedisLayer

    url = f"redis://{host}:{port}/0"
    raw = redis.Redis(host=host, port=port)
    exits.callback(raw.close)
    raw.set("bench:raw", VALUE_JSON)

    def raw_get(k: str) -> Any:
        return json.loads(raw.get(k))  # type: ignore[arg-type]

    # Same client settings as the layer's own client built from url= (socket timeouts).
    raw_t = redis.Redis(host=host, port=port, socket_timeout=5.0, socket_connect_timeout=5.0)
    exits.callback(raw_t.close)

    def raw_get_t(k: str) -> Any:
        return json.loads(raw_t.get(k))  # type: ignore[arg-type]

    cache = SyncCacheStack([RedisLayer(url=url, ttl=TTL, prefix="bench:sync:")])
    exits.callback(cache.close)
    cache.set("v", VALUE)
    unbatched = SyncCacheStack(
        [RedisLayer(url=url, ttl=TTL, prefix="bench:sync:", read_batching=False)]
    )
    exits.callback(unbatched.close)

    # The layer's own GET (redis/_clients.py: a parked connection, past redis-py's per-command
    # machinery) under the same decode as the floor: what is left is the stack's own cost.
    pool = cache.layers[0]._client.connection_pool

    def lean_get(k: str) -> Any:
        return json.loads(pool.fast_get(k.encode()))

    def fetch() -> Any:
        return VALUE

    def get_with_fetcher(k: str) -> Any:
        return cache.get(k, fetch)

    return [
        Subject(RAW_L2, raw_get, "bench:raw", is_async=False, expect=VALUE),
        Subject(
            "floor, socket_timeout=5",
            raw_get_t,
            "bench:raw",
            is_async=False,
            expect=VALUE,
            note="the layer's client settings",
        ),
        Subject(
            LEAN_L2,
            lean_get,
            "bench:raw",
            is_async=False,
            expect=VALUE,
            note="what the layer's read sends",
        ),
        Subject(LC_L2, cache.get, "v", is_async=False, expect=VALUE),
        Subject(
            "layercache SyncCacheStack[SyncRedisLayer].get(key, fetcher)",
            get_with_fetcher,
            "v",
            is_async=False,
            expect=VALUE,
            note="leased read",
        ),
        Subject(
            "layercache ... read_batching=False",
            unbatched.get,
            "v",
            is_async=False,
            expect=VALUE,
            note="no read batcher",
        ),
    ]


def _ratio(rows: list[Subject], name: str, base: str) -> float:
    by_name = {r.name: r for r in rows}
    return by_name[name].median / by_name[base].median


def _cpu_ratio(rows: list[Subject], name: str, base: str) -> float | None:
    by_name = {r.name: r for r in rows}
    mine, floor = by_name[name].cpu_median, by_name[base].cpu_median
    return None if mine is None or not floor else mine / floor


def run(settings: Settings) -> dict[str, Any]:
    """Measure both scenarios; return the rows and the goal ratios."""
    with ExitStack() as exits:
        server = exits.enter_context(redis_server())
        l1 = l1_subjects(exits)
        l2 = l2_subjects(exits, server.host, server.port)
        # The harness drives sync subjects from a coroutine; nothing here touches the loop.
        asyncio.run(measure_latency(l1, settings))
        asyncio.run(measure_latency(l2, settings))
    l1_ratio = _ratio(l1, "layercache SyncCacheStack[MemoryLayer].get", "cachetools TTLCache.get")
    l2_ratio = _ratio(l2, LC_L2, RAW_L2)
    return {
        "l1": l1,
        "l2": l2,
        "l1_ratio": l1_ratio,
        "l2_ratio": l2_ratio,
        "l1_cpu_ratio": _cpu_ratio(
            l1, "layercache SyncCacheStack[MemoryLayer].get", "cachetools TTLCache.get"
        ),
        "l2_cpu_ratio": _cpu_ratio(l2, LC_L2, RAW_L2),
        "l2_lean_ratio": _ratio(l2, LC_L2, LEAN_L2),
        "l2_lean_cpu_ratio": _cpu_ratio(l2, LC_L2, LEAN_L2),
    }


def report(result: dict[str, Any], settings: Settings) -> list[str]:
    """Markdown tables of one run."""
    rounds = f"median of {settings.rounds} rounds"
    lines = [
        *latency_table(f"Sync L1 hit ({rounds})", result["l1"], "cachetools TTLCache.get"),
        *latency_table(f"Sync L2 hit, Redis only ({rounds})", result["l2"], RAW_L2),
        "### Goals",
        "",
        "| ratio | wall | CPU | goal | |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for label, ratio, cpu, goal in (
        (
            "sync L1 hit / cachetools TTLCache hit",
            result["l1_ratio"],
            result["l1_cpu_ratio"],
            L1_GOAL,
        ),
        (
            "sync L2 hit / redis-py GET + json.loads",
            result["l2_ratio"],
            result["l2_cpu_ratio"],
            L2_GOAL,
        ),
    ):
        cpu_text = "n/a" if cpu is None else f"{cpu:.3f}"
        lines.append(
            f"| {label} | {ratio:.3f} | {cpu_text} | ≤ {goal:.2f} "
            f"| {'met' if ratio <= goal else 'MISSED'} (wall) |"
        )
    lean_cpu = result["l2_lean_cpu_ratio"]
    lines.append(
        f"| (info) sync L2 hit / the layer's own GET + json.loads | {result['l2_lean_ratio']:.3f} "
        f"| {'n/a' if lean_cpu is None else f'{lean_cpu:.3f}'} | - | the stack's own cost |"
    )
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print Markdown tables (exit 0 even when a goal is missed)."""
    parser = argparse.ArgumentParser(prog="python -m bench.sync_paths", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few seconds, for smoke tests")
    parser.add_argument("--json", type=Path, help="also write the ratios as JSON here")
    args = parser.parse_args(argv)
    settings = Settings.smoke() if args.quick else Settings.full()
    result = run(settings)
    print("\n".join(report(result, settings)))
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "l1_ratio": result["l1_ratio"],
                    "l2_ratio": result["l2_ratio"],
                    "l1_cpu_ratio": result["l1_cpu_ratio"],
                    "l2_cpu_ratio": result["l2_cpu_ratio"],
                    "l2_lean_ratio": result["l2_lean_ratio"],
                    "rows_us": {r.name: r.median * 1e6 for r in [*result["l1"], *result["l2"]]},
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
