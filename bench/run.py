"""The benchmark command: ``python -m bench [--quick] [--json PATH] [--no-redis]``.

Scenarios, all measured in the same process and the same run:

1. ``l1``: L1 hit latency (layercache vs cashews ``mem://`` vs aiocache memory vs an awaited
   dict lookup; dogpile memory, cachetools and ``dict.get`` as sync references).
2. ``l2``: Redis hit latency with nothing in memory in front (layercache with a lone
   ``RedisLayer``, and memory-miss + Redis-hit; vs redis-py ``GET`` + ``json.loads``, cashews,
   aiocache; dogpile's sync Redis backend and a sync redis-py floor as references).
3. ``concurrent``: 64 concurrent Redis readers, ops/s.
4. ``cold``: 75 concurrent cold gets of one key with a 50 ms origin: origin fetches.
5. ``memory``: bytes per small in-memory entry (tracemalloc).

A ``redis-server`` is started on a free 127.0.0.1 port for the run (never 6379) and stopped at
the end. ``--no-redis`` runs only the in-process scenarios (1, 4 without Redis rows, 5).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from bench import latency, memory, report, stampede, suite
from bench.fixtures import VALUE_SIZE, environment, redis_server
from bench.harness import Settings, Subject, measure_latency, measure_throughput

CORE = ("l1", "l2", "concurrent", "cold", "memory")
SCENARIOS = (*CORE, *suite.SCENARIOS)


def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def _run(
    settings: Settings, scenarios: Sequence[str], redis_host_port: tuple[str, int] | None
) -> dict[str, Any]:
    l1_rows: list[Subject] = []
    l2_rows: list[Subject] = []
    conc_rows: list[Subject] = []
    cold_rows: list[stampede.StampedeSubject] = []
    mem_rows: list[memory.MemorySubject] = []
    async with AsyncExitStack() as exits:
        if "l1" in scenarios:
            _log("1/5 L1 hit latency")
            l1_rows = await latency.l1_subjects(exits)
            await measure_latency(l1_rows, settings)
        if redis_host_port is not None and ("l2" in scenarios or "concurrent" in scenarios):
            redis_rows = await latency.redis_subjects(exits, *redis_host_port)
            if "l2" in scenarios:
                _log("2/5 L2 (Redis) hit latency")
                l2_rows = latency.fresh(redis_rows)
                await measure_latency(l2_rows, settings)
            if "concurrent" in scenarios:
                _log(f"3/5 {settings.concurrency} concurrent Redis readers")
                conc_rows = latency.fresh(redis_rows, drop=("layercache memory(miss)",))
                await measure_throughput(conc_rows, settings)
        if "cold" in scenarios:
            _log(f"4/5 {settings.stampede_callers} concurrent cold gets")
            url = None
            if redis_host_port is not None:
                url = f"redis://{redis_host_port[0]}:{redis_host_port[1]}/0"
            cold_rows = stampede.subjects(exits, url)
            await stampede.measure(cold_rows, settings)
    mem_int_rows: list[memory.MemorySubject] = []
    if "memory" in scenarios:
        _log(f"5/5 bytes per entry ({settings.memory_entries:,} entries, int and dict values)")
        mem_int_rows = memory.subjects(settings.memory_entries)
        await memory.measure(mem_int_rows, settings.memory_entries, "int")
        mem_rows = memory.subjects(settings.memory_entries)
        await memory.measure(mem_rows, settings.memory_entries, "dict")

    goals = report.ratios(l1_rows, l2_rows, cold_rows, mem_rows, mem_int_rows)
    rounds = settings.rounds
    tables: list[str] = []
    if l1_rows:
        tables += report.latency_table(
            f"1. L1 hit latency (median of {rounds} rounds)", l1_rows, "floor: awaited dict lookup"
        )
    if l2_rows:
        tables += report.latency_table(
            f"2. L2 (Redis) hit latency, {VALUE_SIZE} B JSON value (median of {rounds} rounds)",
            l2_rows,
            report.RAW_L2,
        )
    if conc_rows:
        tables += report.throughput_table(
            f"3. {settings.concurrency} concurrent L2 readers (median of {rounds} rounds)",
            conc_rows,
            report.RAW_L2,
        )
    if cold_rows:
        tables += report.stampede_table(
            f"4. {settings.stampede_callers} concurrent cold gets, "
            f"{settings.fetch_delay * 1000:.0f} ms origin",
            cold_rows,
        )
    if mem_int_rows:
        tables += report.memory_table(
            f"5a. Bytes per small in-memory entry ({settings.memory_entries:,} int values)",
            mem_int_rows,
        )
    if mem_rows:
        tables += report.memory_table(
            f"5b. Bytes per small in-memory entry ({settings.memory_entries:,} small dict values)",
            mem_rows,
        )
    tables += report.goals_table(goals)
    return {
        "settings": {
            "quick": settings.quick,
            "rounds": settings.rounds,
            "target_seconds_per_sample": settings.target,
            "concurrency": settings.concurrency,
            "stampede_callers": settings.stampede_callers,
            "fetch_delay": settings.fetch_delay,
            "memory_entries": settings.memory_entries,
            "value_bytes": VALUE_SIZE,
            "redis": redis_host_port is not None,
        },
        "results": {
            "l1_hit": [report.subject_json(r, "seconds/op") for r in l1_rows],
            "l2_hit": [report.subject_json(r, "seconds/op") for r in l2_rows],
            "concurrent_l2": [report.subject_json(r, "ops/s") for r in conc_rows],
            "cold_gets": [
                {"name": r.name, "fetches": r.fetches, "elapsed": r.elapsed, "note": r.note}
                for r in cold_rows
            ],
            "bytes_per_entry": [
                {"name": r.name, "bytes_per_entry": r.bytes_per_entry, "note": r.note}
                for r in mem_rows
            ],
            "bytes_per_int_entry": [
                {"name": r.name, "bytes_per_entry": r.bytes_per_entry, "note": r.note}
                for r in mem_int_rows
            ],
        },
        "ratios": goals,
        "markdown": "\n".join(tables),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark layercache against the raw floor and its peers (see BENCHMARKS.md).",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--no-redis", action="store_true", help="skip everything that needs redis-server"
    )
    parser.add_argument(
        "--only",
        metavar="LIST",
        help=f"comma-separated scenarios to run (default: all of {','.join(SCENARIOS)})",
    )
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    return parser.parse_args(argv)


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; return the JSON document (also printed / written per the options)."""
    args = parse_args(argv)
    settings = Settings.smoke() if args.quick else Settings.full()
    if args.rounds:
        settings = Settings(**{**settings.__dict__, "rounds": args.rounds})
    scenarios = tuple(SCENARIOS if not args.only else args.only.split(","))
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    needs_redis = not args.no_redis and bool({"l2", "concurrent", "cold"} & set(scenarios))
    core = tuple(s for s in scenarios if s in CORE)
    document: dict[str, Any] = {"markdown": "", "results": {}, "ratios": {}}
    if core:
        with contextlib.ExitStack() as exits:
            host_port = None
            if needs_redis:
                server = exits.enter_context(redis_server())
                host_port = (server.host, server.port)
                _log(f"redis-server on {server.host}:{server.port}")
            document = asyncio.run(_run(settings, core, host_port))
    # The issue-16 figures: each module in a child process of its own, peers in its own run.
    outcomes = [
        suite.run_module(module, settings.quick, _log)
        for module in suite.MODULES
        if module.scenario in scenarios and not (args.no_redis and module.needs_redis)
    ]
    if outcomes:
        parts = [document["markdown"]]
        for outcome in outcomes:
            parts.append(f"## {outcome.module.title} (`python -m {outcome.module.module}`)\n")
            parts.append(outcome.markdown.strip() + "\n")
        parts.append("\n".join(suite.summary_table(outcomes)))
        document["markdown"] = "\n".join(parts)
        document["suite"] = {
            o.module.scenario: {
                "returncode": o.returncode,
                "seconds": o.seconds,
                "result": o.document,
            }
            for o in outcomes
        }
    document = {"environment": environment(), **document}
    if args.json:
        Path(args.json).write_text(json.dumps(document, indent=2, default=str) + "\n")
    return document


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m bench``; prints the Markdown report to stdout."""
    document = run(argv)
    env = document["environment"]
    print(
        f"Python {env['python']} on {env['platform']}, {env['cpus']} CPUs; "
        f"{env['redis_server'] or 'no redis-server'}; hiredis parser: {env['hiredis_parser']}\n"
    )
    print(document["markdown"])
    return 0
