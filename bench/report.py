"""Turn measurements into Markdown tables, the goal ratios, and a JSON document."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from bench.harness import Subject
from bench.memory import MemorySubject
from bench.stampede import StampedeSubject

# Row names the goals are judged on (kept here so a renamed row fails loudly, not silently).
LC_L1 = "layercache CacheStack[MemoryLayer]"
CASHEWS_L1 = "cashews mem://"
LC_L2 = "layercache CacheStack[RedisLayer]"
RAW_L2 = "floor: redis-py GET + json.loads"
LC_COLD = "layercache CacheStack[MemoryLayer]"
LC_MEM = "layercache MemoryLayer (via CacheStack.set)"
CASHEWS_MEM = "cashews mem://"


@dataclass(frozen=True)
class Goal:
    """One ratio of issue 2 point 8."""

    key: str
    label: str
    limit: float
    exact: bool = False  # the value must equal the limit (fetch count)


GOALS = (
    Goal("l1_hit_vs_cashews_mem", "async L1 hit / cashews mem:// hit (issue 16)", 0.15),
    Goal("l2_hit_vs_raw_redis", "async L2 hit / raw redis-py GET+json.loads", 1.15),
    Goal("cold_gets_origin_fetches", "75 concurrent cold gets: origin fetches", 1, exact=True),
    Goal(
        "bytes_per_int_entry_vs_cashews",
        "bytes per int entry / cashews mem:// (issue 16)",
        0.5,
    ),
    Goal("bytes_per_entry_vs_cashews", "bytes per small dict entry / cashews mem://", 0.8),
)


def _us(seconds: float) -> str:
    us = seconds * 1e6
    return f"{us:.2f}" if us < 10 else f"{us:.1f}"


def _find(rows: list[Subject], name: str) -> Subject | None:
    return next((r for r in rows if r.name == name), None)


def latency_table(title: str, rows: list[Subject], floor: str) -> list[str]:
    """Per-op latency rows, with the ratio to the named floor row.

    The CPU column is this process's CPU time per operation (see ``run_batch_cpu``); its
    ratio to the floor's isolates the client-side overhead from server and machine noise.
    """
    base = _find(rows, floor)
    lines = [
        f"### {title}",
        "",
        "| subject | µs/op (median) | min … max | x floor | client CPU µs/op | CPU x floor "
        "| note |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    base_cpu = base.cpu_median if base is not None else None
    for row in rows:
        ratio = f"{row.median / base.median:.2f}" if base is not None else "-"
        cpu = row.cpu_median
        cpu_ratio = f"{cpu / base_cpu:.2f}" if cpu is not None and base_cpu else "-"
        lines.append(
            f"| {row.name} | {_us(row.median)} | {_us(min(row.samples))} … "
            f"{_us(max(row.samples))} | {ratio} | {_us(cpu) if cpu is not None else '-'} "
            f"| {cpu_ratio} | {row.note} |"
        )
    return [*lines, ""]


def throughput_table(title: str, rows: list[Subject], floor: str) -> list[str]:
    """ops/s rows, with the ratio to the floor (higher is better)."""
    base = _find(rows, floor)
    lines = [
        f"### {title}",
        "",
        "| subject | ops/s (median) | min … max | ÷ async floor | note |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        ratio = f"{row.median / base.median:.2f}" if base is not None else "-"
        note = row.note if row.is_async else "; ".join(filter(None, [row.note, "64 threads"]))
        lines.append(
            f"| {row.name} | {row.median:,.0f} | {min(row.samples):,.0f} … "
            f"{max(row.samples):,.0f} | {ratio} | {note} |"
        )
    return [*lines, ""]


def stampede_table(title: str, rows: list[StampedeSubject]) -> list[str]:
    """Origin fetch counts of every run, and wall time."""
    lines = [
        f"### {title}",
        "",
        "| subject | origin fetches per run | wall ms (median) | note |",
        "| --- | ---: | ---: | --- |",
    ]
    for row in rows:
        fetches = ", ".join(str(f) for f in row.fetches)
        wall = statistics.median(row.elapsed) * 1e3
        lines.append(f"| {row.name} | {fetches} | {wall:.0f} | {row.note} |")
    return [*lines, ""]


def memory_table(title: str, rows: list[MemorySubject]) -> list[str]:
    """Bytes per entry, with the ratio to cashews."""
    base = next((r for r in rows if r.name == CASHEWS_MEM), None)
    lines = [
        f"### {title}",
        "",
        "| subject | bytes/entry | x cashews | note |",
        "| --- | ---: | ---: | --- |",
    ]
    for row in rows:
        ratio = f"{row.bytes_per_entry / base.bytes_per_entry:.2f}" if base else "-"
        lines.append(f"| {row.name} | {row.bytes_per_entry:.0f} | {ratio} | {row.note} |")
    return [*lines, ""]


def ratios(
    l1: list[Subject],
    l2: list[Subject],
    cold: list[StampedeSubject],
    mem: list[MemorySubject],
    mem_int: list[MemorySubject] | None = None,
) -> dict[str, Any]:
    """The goal ratios; a ratio whose scenario did not run is ``None``."""
    values: dict[str, float | None] = {goal.key: None for goal in GOALS}
    lc, cw = _find(l1, LC_L1), _find(l1, CASHEWS_L1)
    if lc is not None and cw is not None:
        values["l1_hit_vs_cashews_mem"] = lc.median / cw.median
    lc_l2, raw = _find(l2, LC_L2), _find(l2, RAW_L2)
    if lc_l2 is not None and raw is not None:
        values["l2_hit_vs_raw_redis"] = lc_l2.median / raw.median
    lc_cold = next((r for r in cold if r.name == LC_COLD), None)
    if lc_cold is not None:
        values["cold_gets_origin_fetches"] = max(lc_cold.fetches)
    lc_mem = next((r for r in mem if r.name == LC_MEM), None)
    cw_mem = next((r for r in mem if r.name == CASHEWS_MEM), None)
    if lc_mem is not None and cw_mem is not None:
        values["bytes_per_entry_vs_cashews"] = lc_mem.bytes_per_entry / cw_mem.bytes_per_entry
    lc_int = next((r for r in mem_int or () if r.name == LC_MEM), None)
    cw_int = next((r for r in mem_int or () if r.name == CASHEWS_MEM), None)
    if lc_int is not None and cw_int is not None:
        values["bytes_per_int_entry_vs_cashews"] = lc_int.bytes_per_entry / cw_int.bytes_per_entry
    out: dict[str, Any] = {}
    if lc_l2 is not None and raw is not None and lc_l2.cpu_median and raw.cpu_median:
        # Not a goal: the same ratio on this process's CPU time, which shows the client-side
        # overhead without the server's and the machine's noise.
        out["l2_hit_vs_raw_redis_client_cpu"] = lc_l2.cpu_median / raw.cpu_median
    for goal in GOALS:
        value = values[goal.key]
        met = None
        if value is not None:
            met = value == goal.limit if goal.exact else value <= goal.limit
        out[goal.key] = {"label": goal.label, "value": value, "goal": goal.limit, "met": met}
    return out


def goals_table(result: dict[str, Any]) -> list[str]:
    """The goal ratios with met / missed and by how much."""
    lines = [
        "### Goals (issue 2, point 8; issue 16)",
        "",
        "| goal | measured | target | result |",
        "| --- | ---: | ---: | --- |",
    ]
    for goal in GOALS:
        item = result[goal.key]
        value = item["value"]
        if value is None:
            lines.append(f"| {goal.label} | not run | - | - |")
            continue
        target = f"= {goal.limit}" if goal.exact else f"≤ {goal.limit}"
        shown = f"{value:.0f}" if goal.exact else f"{value:.3f}"
        if item["met"]:
            verdict = "met"
        elif goal.exact:
            verdict = f"MISSED ({value:.0f} fetches)"
        else:
            verdict = f"MISSED by {(value / goal.limit - 1) * 100:.0f}%"
        lines.append(f"| {goal.label} | {shown} | {target} | {verdict} |")
    cpu = result.get("l2_hit_vs_raw_redis_client_cpu")
    if cpu is not None:
        lines.append(f"| (info) the L2 ratio on client CPU time | {cpu:.3f} | - | - |")
    return [*lines, ""]


def subject_json(row: Subject, unit: str) -> dict[str, Any]:
    """One latency/throughput row as JSON."""
    return {
        "name": row.name,
        "kind": "async" if row.is_async else "sync",
        "unit": unit,
        "median": row.median,
        "samples": row.samples,
        "cpu_median": row.cpu_median,
        "cpu_samples": row.cpu_samples,
        "iterations_per_sample": row.iterations,
        "note": row.note,
    }
