"""The issue-16 figures of ``python -m bench``: each a benchmark module of its own, run here.

Every module measures layercache against the raw floor and its peers *in its own run* and
prints its tables with ratios; this runner starts each one as a child process (each starts its
own servers and event loops, and one module's memory never weighs on the next), passes
``--quick`` through, collects its Markdown and its JSON, and builds one summary of the goals.

Scenarios and what each measures:

- ``batching`` (:mod:`bench.concurrency`): 64 concurrent L2 readers of distinct keys vs raw
  redis-py with its default pool; c=1 latency with batching on and off; p50/p99; 64 threads.
- ``sync`` (:mod:`bench.sync_paths`): the sync L2 hit vs raw sync redis-py GET+json.
- ``hit_ratio`` (:mod:`bench.hit_ratio`): W-TinyLFU hit ratios vs theine, cachetools' LRU and
  our LRU/LFU; per-operation cost.
- ``xfetch`` (:mod:`bench.xfetch`): early refresh vs refresh-ahead and plain TTL on a hot key:
  origin calls per TTL period, reads that waited on the origin.
- ``tags`` (:mod:`bench.tagged_writes`): tagged vs untagged set_many; invalidate_by_tag of
  10,000 keys.
- ``tracking`` (:mod:`bench.tracking`): server-assisted invalidation propagation p50/p99 next
  to the bus.
- ``memcached`` (:mod:`bench.memcached`): MemcachedLayer hit vs raw aiomcache / pymemcache.
- ``sync_cold`` (:mod:`bench.sync_cold`): the sync cold miss with the default ``fetch_timeout``
  (the fetch handed to a worker thread) vs ``fetch_timeout=None`` vs the raw floors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

Summary = Callable[[dict[str, Any]], list[tuple[str, str, str, str]]]


@dataclass(frozen=True)
class Module:
    """One benchmark module: its scenario name, module path, title and goal summary."""

    scenario: str
    module: str
    title: str
    needs_redis: bool = True
    args: tuple[str, ...] = ()
    summary: Summary | None = field(default=None, compare=False)


def _verdict(value: float | None, goal: float, higher: bool) -> str:
    if value is None:
        return "not measured"
    met = value >= goal if higher else value <= goal
    return "met" if met else "MISSED"


def _goal_rows(
    goals: dict[str, Any], spec: Sequence[tuple[str, str, float | None, bool, str]]
) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    for label, key, goal, higher, fmt in spec:
        value = goals.get(key)
        shown = "-" if value is None else format(value, fmt)
        if goal is None:
            rows.append((label, shown, "-", ""))
        else:
            sign = "≥" if higher else "≤"
            rows.append((label, shown, f"{sign} {goal}", _verdict(value, goal, higher)))
    return rows


def _batching(doc: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = _goal_rows(
        doc.get("goals", {}),
        (
            (
                "64 concurrent L2 reads, distinct keys: ops/s / raw redis-py (default pool)",
                "async_c64_vs_raw",
                3.0,
                True,
                ".2f",
            ),
            ("L2 hit at c=1: batching on / off", "async_c1_on_vs_off", 1.05, False, ".3f"),
            (
                "64 threads: SyncCacheStack ops/s / raw sync redis-py",
                "sync_c64_vs_raw",
                None,
                True,
                ".2f",
            ),
        ),
    )
    walkers = doc.get("async_c64", [])
    for walker in walkers[:2]:  # the raw floor, then layercache with batching on
        rows.append(
            (
                f"64 concurrent L2 reads, {walker['name']}: p50 / p99 per read (µs)",
                f"{walker['p50_us']:,.0f} / {walker['p99_us']:,.0f}",
                "reported",
                "",
            )
        )
    return rows


def _xfetch(doc: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    for row in doc.get("rows", []):
        if not str(row.get("scenario", "")).startswith("one instance, memory, origin"):
            continue
        mode = row.get("mode", "")
        if mode.startswith("early_refresh=True"):
            waited = row.get("waited")
            rows.append(
                (
                    f"hot key, {mode}: origin calls per TTL period",
                    f"{row['calls_per_period']:.2f}",
                    "≈ 1",
                    "met" if 0.5 <= row["calls_per_period"] <= 2.0 else "MISSED",
                )
            )
            rows.append(
                (
                    f"hot key, {mode}: reads that waited on the origin",
                    "-" if waited is None else str(waited),
                    "= 0",
                    "met" if waited == 0 else "MISSED",
                )
            )
        elif mode == "plain TTL":
            rows.append(
                (
                    "hot key, plain TTL (reference): reads that waited",
                    str(row.get("waited")),
                    "-",
                    "",
                )
            )
    return rows


def _tracking(doc: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    for row in doc.get("propagation", []):
        rows.append(
            (
                f"propagation, {row['scenario']}: p50 / p99 (ms)",
                f"{row['p50_ms']:.2f} / {row['p99_ms']:.2f}",
                "reported",
                "",
            )
        )
    return rows


def _sync(doc: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    wall, cpu = doc.get("l2_ratio"), doc.get("l2_cpu_ratio")
    if wall is None:
        return []
    shown = f"{wall:.3f} (CPU {cpu:.3f})" if cpu is not None else f"{wall:.3f}"
    return [
        (
            "sync L2 hit / raw sync redis-py GET+json",
            shown,
            "≤ 1.10",
            _verdict(max(wall, cpu or 0.0), 1.10, False),
        )
    ]


def _sync_cold(doc: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    for group, label in (
        ("memory", "SyncCacheStack[Memory]"),
        ("memcached", "SyncCacheStack[Memory, SyncMemcached]"),
        ("redis", "SyncCacheStack[Memory, SyncRedis]"),
    ):
        share = doc.get(f"{group}_handoff_ratio")
        if share is not None:
            cpu = doc.get(f"{group}_handoff_ratio_cpu")
            shown = f"{share:.2f}" if cpu is None else f"{share:.2f} (CPU {cpu:.2f})"
            rows.append(
                (f"sync cold miss {label}: default fetch_timeout / None", shown, "reported", "")
            )
    return rows


def _tags(doc: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    for kind, values in doc.get("ratios", {}).items():
        ratio = values.get("tagged_vs_untagged")
        if ratio is not None:
            rows.append(
                (
                    f"{kind}: tagged (RedisTagIndex) / untagged set_many, 10,000 keys",
                    f"{ratio:.2f}",
                    "≤ 2",
                    _verdict(ratio, 2.0, False),
                )
            )
        seconds = values.get("invalidate_s")
        if seconds is not None:
            single = kind != "cluster"
            rows.append(
                (
                    f"{kind}: invalidate_by_tag of 10,000 keys (RedisTagIndex)",
                    f"{seconds * 1e3:.1f} ms",
                    "≤ 100 ms" if single else "-",
                    _verdict(seconds, 0.1, False) if single else "",
                )
            )
    return rows


def _hit_ratio(doc: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    return [
        (str(g["goal"]), str(g["measured"]), "as labelled", "met" if g["met"] else "MISSED")
        for g in doc.get("goals", [])
    ]


MODULES: tuple[Module, ...] = (
    Module("batching", "bench.concurrency", "Auto-batched L2 reads", summary=_batching),
    Module("sync", "bench.sync_paths", "Sync paths", summary=_sync),
    Module(
        "hit_ratio",
        "bench.hit_ratio",
        "W-TinyLFU hit ratios",
        needs_redis=False,
        summary=_hit_ratio,
    ),
    Module("xfetch", "bench.xfetch", "Early refresh (XFetch)", summary=_xfetch),
    Module("tags", "bench.tagged_writes", "Tagged writes and invalidation", summary=_tags),
    Module("tracking", "bench.tracking", "Server-assisted invalidation", summary=_tracking),
    Module("memcached", "bench.memcached", "memcached"),
    Module(
        "sync_cold", "bench.sync_cold", "Sync cold miss and the fetch hand-off", summary=_sync_cold
    ),
)
SCENARIOS = tuple(m.scenario for m in MODULES)


@dataclass
class Outcome:
    """What one module printed and wrote."""

    module: Module
    markdown: str
    document: dict[str, Any]
    seconds: float
    returncode: int


def run_module(module: Module, quick: bool, log: Callable[[str], None]) -> Outcome:
    """Run one module as a child process and collect its Markdown and JSON."""
    with tempfile.TemporaryDirectory(prefix="layercache-bench-") as tmp:
        out = Path(tmp) / "result.json"
        argv = [sys.executable, "-m", module.module, *module.args, "--json", str(out)]
        if quick:
            argv.append("--quick")
        log(f"{module.scenario}: {' '.join(argv[1:])}")
        began = time.perf_counter()
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        done = subprocess.run(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, check=False
        )
        seconds = time.perf_counter() - began
        document: dict[str, Any] = {}
        if out.exists():
            try:
                loaded = json.loads(out.read_text())
            except ValueError:
                loaded = {}
            document = loaded if isinstance(loaded, dict) else {"rows": loaded}
    if done.returncode != 0:
        log(f"{module.scenario}: exited with {done.returncode}")
    return Outcome(module, done.stdout, document, seconds, done.returncode)


def summary_table(outcomes: Sequence[Outcome]) -> list[str]:
    """One table of every module's goals (the modules' own tables have the detail)."""
    lines = [
        "### Issue 16 goals (each measured in its module's own run, above)",
        "",
        "| figure | measured | goal | result |",
        "| --- | ---: | ---: | --- |",
    ]
    for outcome in outcomes:
        if outcome.returncode != 0:
            lines.append(f"| {outcome.module.title} | failed (exit {outcome.returncode}) | - | - |")
            continue
        if outcome.module.summary is None:
            continue
        for label, value, goal, verdict in outcome.module.summary(outcome.document):
            lines.append(f"| {label} | {value} | {goal} | {verdict} |")
    return [*lines, ""]
