"""Tagged bulk writes against untagged ones, in one run (issue 10, point 9).

``CacheStack([MemoryLayer(), RedisLayer(client=...)], tag_index=RedisTagIndex(client=...))``:
``set_many`` of N entries (the 1 KiB value of ``bench/fixtures.py``, default N = 10,000) once
without tags and once with two tags per key (``bulk`` and ``group:<i % 10>``). Same stack, same
values, same keys; the only difference is the ``tags`` option. Each measurement starts from an
empty Redis and an empty memory layer (every write is a first write, and the tagged one also
builds the index from nothing), and times the ``set_many`` call alone. The subjects run
interleaved, in an order rotated every round, and the figure is the median over the rounds.

A third row is the tagged write through the same index without its ``record_many`` (a
wrapper exposing only ``record``): one index round trip per key, which is what every tagged
``set_many`` cost before ``record_many`` existed. With ``--kinds async,sync`` (the default) the
same three rows are measured for ``SyncCacheStack`` on sync redis-py clients.

Goal: tagged / untagged ``set_many`` at most 2.0x (for each stack kind).

Starts its own ``redis-server`` on a free 127.0.0.1 port (never 6379).

Usage: ``python -m bench.tagged_writes [--quick] [--keys N] [--rounds R] [--kinds async,sync]
[--json PATH]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.fixtures import VALUE, environment, redis_server

GOAL = 2.0
UNTAGGED = "set_many, untagged"
TAGGED = "set_many, 2 tags per key (record_many)"
PER_KEY = "set_many, 2 tags per key, one record per key (before)"


@dataclass
class Row:
    """One measured configuration: its samples in seconds per ``set_many`` call."""

    kind: str
    name: str
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


class PerKeyIndex:
    """The same index seen without ``record_many``: the stack falls back to ``record`` per key
    (what a tagged ``set_many`` cost before the batched call existed)."""

    def __init__(self, index: Any) -> None:
        self._index = index
        self.record = index.record
        self.remove = index.remove
        self.tags_of = index.tags_of
        self.keys_for_tags = index.keys_for_tags
        self.keys_matching = index.keys_matching
        self.clear = index.clear


def entries(keys: int, tagged: bool) -> list[Any]:
    from layercache import CacheEntry

    if not tagged:
        return [(f"item:{i}", VALUE) for i in range(keys)]
    return [
        CacheEntry(f"item:{i}", VALUE, {"tags": ["bulk", f"group:{i % 10}"]}) for i in range(keys)
    ]


async def _measure_async(url: str, keys: int, rounds: int) -> list[Row]:
    import redis.asyncio

    from layercache import CacheStack, MemoryLayer, RedisLayer, RedisTagIndex

    client = redis.asyncio.Redis.from_url(url)
    index = RedisTagIndex(client, prefix="bench:tags")
    memory = MemoryLayer(ttl=3600, max_size=keys * 2)
    stack = CacheStack(
        [memory, RedisLayer(client=client, prefix="bench:v:", ttl=3600)], tag_index=index
    )
    memory_b = MemoryLayer(ttl=3600, max_size=keys * 2)
    before = CacheStack(
        [memory_b, RedisLayer(client=client, prefix="bench:v:", ttl=3600)],
        tag_index=PerKeyIndex(index),
    )
    plain, tagged = entries(keys, tagged=False), entries(keys, tagged=True)
    subjects: list[tuple[Row, Any, MemoryLayer, list[Any]]] = [
        (Row("async", UNTAGGED), stack, memory, plain),
        (Row("async", TAGGED), stack, memory, tagged),
        (Row("async", PER_KEY), before, memory_b, tagged),
    ]
    try:
        for round_ in range(rounds + 1):  # round 0 warms up (connections, scripts)
            order = subjects[round_ % 3 :] + subjects[: round_ % 3]
            for row, cache, layer, items in order:
                await client.flushdb()
                layer.clear()
                started = time.perf_counter()
                await cache.set_many(items)
                elapsed = time.perf_counter() - started
                if round_:
                    row.samples.append(elapsed)
                # Untimed check that the write did what it claims (a benchmark of a no-op
                # would be worthless): every key indexed after a tagged write, none otherwise.
                assert await index.size() == (0 if row.name == UNTAGGED else keys)
    finally:
        await stack.aclose()
        await before.aclose()
        await client.aclose()
    return [row for row, _, _, _ in subjects]


def _measure_sync(url: str, keys: int, rounds: int) -> list[Row]:
    import redis

    from layercache import MemoryLayer, RedisLayer, RedisTagIndex, SyncCacheStack

    client = redis.Redis.from_url(url)
    index: Any = RedisTagIndex(client, prefix="bench:tags")
    memory = MemoryLayer(ttl=3600, max_size=keys * 2)
    stack = SyncCacheStack(
        [memory, RedisLayer(client=client, prefix="bench:v:", ttl=3600)], tag_index=index
    )
    memory_b = MemoryLayer(ttl=3600, max_size=keys * 2)
    before = SyncCacheStack(
        [memory_b, RedisLayer(client=client, prefix="bench:v:", ttl=3600)],
        tag_index=PerKeyIndex(index),
    )
    plain, tagged = entries(keys, tagged=False), entries(keys, tagged=True)
    subjects: list[tuple[Row, Any, MemoryLayer, list[Any]]] = [
        (Row("sync", UNTAGGED), stack, memory, plain),
        (Row("sync", TAGGED), stack, memory, tagged),
        (Row("sync", PER_KEY), before, memory_b, tagged),
    ]
    try:
        for round_ in range(rounds + 1):
            order = subjects[round_ % 3 :] + subjects[: round_ % 3]
            for row, cache, layer, items in order:
                client.flushdb()
                layer.clear()
                started = time.perf_counter()
                cache.set_many(items)
                elapsed = time.perf_counter() - started
                if round_:
                    row.samples.append(elapsed)
                # Untimed check that the write did what it claims (a benchmark of a no-op
                # would be worthless): every key indexed after a tagged write, none otherwise.
                assert index.size() == (0 if row.name == UNTAGGED else keys)
    finally:
        stack.close()
        before.close()
        client.close()
    return [row for row, _, _, _ in subjects]


def ratios(rows: Sequence[Row]) -> dict[str, dict[str, float]]:
    """Per stack kind: tagged / untagged, and the per-key fallback / untagged."""
    out: dict[str, dict[str, float]] = {}
    for kind in dict.fromkeys(r.kind for r in rows):
        by_name = {r.name: r.median for r in rows if r.kind == kind}
        out[kind] = {
            "tagged_vs_untagged": by_name[TAGGED] / by_name[UNTAGGED],
            "per_key_vs_untagged": by_name[PER_KEY] / by_name[UNTAGGED],
        }
    return out


def report(rows: Sequence[Row], keys: int, rounds: int) -> list[str]:
    """Markdown tables of one run."""
    lines = [
        f"### set_many of {keys:,} keys, memory + Redis + RedisTagIndex "
        f"(median of {rounds} rounds)",
        "",
        "| stack | subject | ms (median) | min … max | µs per key | x untagged |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        base = next(r for r in rows if r.kind == row.kind and r.name == UNTAGGED)
        lines.append(
            f"| {row.kind} | {row.name} | {row.median * 1e3:.1f} | "
            f"{min(row.samples) * 1e3:.1f} … {max(row.samples) * 1e3:.1f} | "
            f"{row.median / keys * 1e6:.1f} | {row.median / base.median:.2f} |"
        )
    lines += ["", "### Goals", "", "| ratio | measured | goal | |", "| --- | ---: | ---: | --- |"]
    for kind, values in ratios(rows).items():
        ratio = values["tagged_vs_untagged"]
        lines.append(
            f"| {kind}: tagged / untagged set_many | {ratio:.2f} | ≤ {GOAL:.1f} "
            f"| {'met' if ratio <= GOAL else 'MISSED'} |"
        )
    return [*lines, ""]


def run(keys: int, rounds: int, kinds: Sequence[str]) -> list[Row]:
    """Start a throwaway redis-server and measure every requested stack kind."""
    measures: dict[str, Callable[[str, int, int], list[Row]]] = {
        "async": lambda url, n, r: asyncio.run(_measure_async(url, n, r)),
        "sync": _measure_sync,
    }
    rows: list[Row] = []
    with redis_server() as server:
        url = f"redis://{server.host}:{server.port}/0"
        for kind in kinds:
            rows += measures[kind](url, keys, rounds)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print Markdown tables (exit 0 even when the goal is missed)."""
    parser = argparse.ArgumentParser(prog="python -m bench.tagged_writes", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1,000 keys, 2 rounds (smoke)")
    parser.add_argument("--keys", type=int, help="keys per set_many (default 10,000)")
    parser.add_argument("--rounds", type=int, help="measured rounds (default 5)")
    parser.add_argument("--kinds", default="async,sync", help="async, sync or both")
    parser.add_argument("--json", type=Path, help="also write the rows and ratios as JSON here")
    args = parser.parse_args(argv)
    keys = args.keys or (1_000 if args.quick else 10_000)
    rounds = args.rounds or (2 if args.quick else 5)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not kinds or set(kinds) - {"async", "sync"}:
        parser.error("--kinds takes async, sync or async,sync")
    rows = run(keys, rounds, kinds)
    print("\n".join(report(rows, keys, rounds)))
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "keys": keys,
                    "rounds": rounds,
                    "ratios": ratios(rows),
                    "rows_ms": {f"{r.kind}: {r.name}": r.median * 1e3 for r in rows},
                    "environment": environment(),
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
