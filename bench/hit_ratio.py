"""Hit ratios of eviction policies on synthetic traces, and their cost per operation (issue 16).

Every subject replays the same traces in the same run: a read, and on a miss a write of the
key (get-then-set-on-miss). Subjects:

* ``theine`` (2.x, adaptive W-TinyLFU in a Rust core; ``Cache(size, nolock=True)``),
* ``cachetools LRUCache``,
* layercache's ``TinyLfuPolicy`` driven by a plain dict (the policy alone),
* layercache's ``MemoryLayer`` with ``eviction="lru"``, ``"lfu"`` and, when the layer offers
  it, ``"tinylfu"`` (through its public ``get``/``set``),
* ``dict + OrderedDict LRU``: the floor of a Python LRU, next to the bare policy.

Traces, generated with a fixed seed (no trace files, no numpy):

* ``zipf 0.9`` / ``zipf 1.0``: Zipf-distributed keys (inverse CDF: bisect over the cumulative
  weights) over 1M keys (100k with ``--quick``),
* ``loop 1.25x``: the keys ``0 .. 1.25 * cache - 1`` read in order, over and over (a LIRS-style
  loop larger than the cache: LRU never hits),
* ``recency``: a moving working set: 20% of the reads are new keys, the others re-read a key
  at a log-uniform distance behind the newest one (recent keys are hot, old ones fade: the
  case where frequency misleads and the window has to grow),
* ``one-hit mix``: half the reads Zipf 1.0 over 100k keys, half keys read once and never again.

Cache sizes 1k, 10k and 100k (combinations where the cache holds the whole key space are
skipped). Two sanity rows reproduce published configurations of theine's charts: Zipf
(s=1.001, v=10) over 50M keys, 1M reads, cache 500 (published: LRU 12.3%, W-TinyLFU 22.9%),
and a loop of 1,024 keys read 100 times with a cache of 1,000 (a stand-in for LIRS's
``loop.trc``; published: LRU 0%, W-TinyLFU 98%).

The cost table replays one fixed Zipf trace (s=1.0, 100k keys, cache 10k) per subject, three
interleaved rounds, best round, in ns per operation, with ratios to ``MemoryLayer`` LRU.

Goals: within 1 point of theine's hit ratio (or better) on every trace; per-operation cost of
W-TinyLFU at most 1.5x our LRU.

Usage: ``python -m bench.hit_ratio [--quick] [--json PATH]``
"""

from __future__ import annotations

import argparse
import bisect
import gc
import itertools
import json
import math
import random
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SEED = 20240516
SIZES = (1_000, 10_000, 100_000)
HIT_GOAL_POINTS = 1.0
COST_GOAL = 1.5

THEINE = "theine W-TinyLFU"
CACHETOOLS = "cachetools LRUCache"
BARE_LRU = "dict + OrderedDict LRU"
POLICY = "layercache TinyLfuPolicy"
MEM_LRU = "layercache MemoryLayer lru"
MEM_LFU = "layercache MemoryLayer lfu"
MEM_TINYLFU = "layercache MemoryLayer tinylfu"
OURS = (POLICY, MEM_TINYLFU)

Runner = Callable[[list[str]], int]
"""Replays a trace on a fresh cache and returns the number of hits."""


# -- traces ---------------------------------------------------------------------------------


def zipf_ranks(rng: random.Random, n: int, s: float, count: int) -> list[int]:
    """``count`` ranks in ``0 .. n-1`` with P(rank k) proportional to 1 / (k + 1) ** s."""
    cumulative = list(itertools.accumulate(1.0 / (k + 1) ** s for k in range(n)))
    total = cumulative[-1]
    random_ = rng.random
    hi = n - 1
    return [bisect.bisect(cumulative, random_() * total, 0, hi) for _ in range(count)]


class ZipfRejectionInversion:
    """Zipf ranks ``0 .. n-1`` with P(k) proportional to (v + k) ** -s, for huge ``n``.

    Rejection-inversion sampling (W. Hörmann, G. Derflinger, "Rejection-inversion to generate
    variates from monotone discrete distributions", 1996): constant time and memory per draw,
    so 50M keys need no table. The same distribution as Go's ``rand.NewZipf(r, s, v, n-1)``,
    which theine's hit-ratio charts use.
    """

    def __init__(self, rng: random.Random, s: float, v: float, n: int) -> None:
        if s <= 1.0 or v < 1.0 or n < 1:
            raise ValueError("need s > 1, v >= 1, n >= 1")
        self._rng = rng
        self._q = s
        self._v = v
        self._one_minus_q = 1.0 - s
        self._one_minus_q_inv = 1.0 / self._one_minus_q
        self._h_x_max = self._big_h(n - 1 + 0.5)
        self._span = self._big_h(0.5) - math.exp(math.log(v) * -s) - self._h_x_max
        self._squeeze = 1.0 - self._big_h_inv(self._big_h(1.5) - math.exp(-s * math.log(v + 1.0)))

    def _big_h(self, x: float) -> float:
        return math.exp(self._one_minus_q * math.log(self._v + x)) * self._one_minus_q_inv

    def _big_h_inv(self, x: float) -> float:
        return math.exp(self._one_minus_q_inv * math.log(self._one_minus_q * x)) - self._v

    def draw(self) -> int:
        """One rank."""
        while True:
            ur = self._h_x_max + self._rng.random() * self._span
            x = self._big_h_inv(ur)
            k = math.floor(x + 0.5)
            if k - x <= self._squeeze:
                return k
            if ur >= self._big_h(k + 0.5) - math.exp(-math.log(k + self._v) * self._q):
                return k


def _names(prefix: str, ids: list[int]) -> list[str]:
    """Keys for ids; one str object per distinct id, shared by every read of it."""
    table: dict[int, str] = {}
    out = []
    for i in ids:
        name = table.get(i)
        if name is None:
            name = table[i] = f"{prefix}{i}"
        out.append(name)
    return out


def zipf_trace(seed: int, keys: int, s: float, reads: int) -> list[str]:
    """Zipf(s) over ``keys`` keys; the key name of a rank is scrambled (rank order is not key
    order, so no policy can profit from it)."""
    rng = random.Random(seed)
    ranks = zipf_ranks(rng, keys, s, reads)
    multiplier = 2_654_435_761  # odd: a bijection modulo 2**32 scrambles rank -> key id
    return _names(f"z{s}:", [(r * multiplier) & 0xFFFFFFFF for r in ranks])


def loop_trace(length: int, reads: int) -> list[str]:
    """Keys ``0 .. length-1`` in order, again and again."""
    names = [f"loop:{i}" for i in range(length)]
    return [names[i % length] for i in range(reads)]


def recency_trace(seed: int, reads: int, new_share: float = 0.2, depth: int = 200_000) -> list[str]:
    """A moving working set: ``new_share`` of the reads are new keys, the rest re-read a key a
    log-uniform distance (1 .. ``depth``) behind the newest (so the chance of a key being read
    falls with its age while its count of past reads grows: frequency misleads here)."""
    rng = random.Random(seed)
    random_ = rng.random
    log_depth = math.log(depth)
    exp = math.exp
    head = depth  # a history of ``depth`` keys already exists: the hit rate is stationary
    ids = []
    for _ in range(reads):
        if random_() < new_share:
            head += 1
            ids.append(head)
        else:
            ids.append(head - int(exp(random_() * log_depth)) + 1)
    return _names("r:", ids)


def one_hit_mix_trace(seed: int, reads: int, keys: int = 100_000) -> list[str]:
    """Half Zipf 1.0 over ``keys`` keys, half keys that are read exactly once."""
    rng = random.Random(seed)
    popular = zipf_trace(seed + 1, keys, 1.0, reads)
    out = []
    unique = 0
    for key in popular:
        if rng.random() < 0.5:
            out.append(key)
        else:
            unique += 1
            out.append(f"once:{unique}")
    return out


def theine_zipf_trace(seed: int, reads: int) -> list[str]:
    """theine's chart trace: Zipf s=1.001, v=10 over 50M keys."""
    sampler = ZipfRejectionInversion(random.Random(seed), 1.001, 10.0, 50_000_000)
    return _names("tz:", [sampler.draw() for _ in range(reads)])


@dataclass
class Trace:
    """One trace and the cache sizes it runs at."""

    name: str
    keys: list[str]
    sizes: tuple[int, ...]
    note: str = ""
    published: dict[str, float] = field(default_factory=dict)


def traces(quick: bool) -> list[Trace]:
    """Every trace of the run (smaller ones with ``quick``)."""
    zipf_keys = 100_000 if quick else 1_000_000
    reads = 200_000 if quick else 1_000_000
    sizes = SIZES[:2] if quick else SIZES

    def fits(n: int) -> tuple[int, ...]:
        return tuple(s for s in sizes if s < n)

    out = [
        Trace(
            "zipf 0.9",
            zipf_trace(SEED, zipf_keys, 0.9, reads),
            fits(zipf_keys),
            f"{zipf_keys:,} keys, {reads:,} reads",
        ),
        Trace(
            "zipf 1.0",
            zipf_trace(SEED + 1, zipf_keys, 1.0, reads),
            fits(zipf_keys),
            f"{zipf_keys:,} keys, {reads:,} reads",
        ),
    ]
    for size in sizes:
        length = size * 5 // 4
        passes = 8 if quick else 10
        out.append(
            Trace(
                f"loop 1.25x ({size:,})",
                loop_trace(length, length * passes),
                (size,),
                f"{length:,} keys x {passes} passes",
            )
        )
    out.append(
        Trace("recency", recency_trace(SEED + 2, reads), sizes, f"{reads:,} reads, 20% new keys")
    )
    out.append(
        Trace(
            "one-hit mix",
            one_hit_mix_trace(SEED + 3, reads),
            sizes,
            f"{reads:,} reads, 50% read once",
        )
    )
    sanity_reads = 300_000 if quick else 1_000_000
    out.append(
        Trace(
            "sanity: theine zipf",
            theine_zipf_trace(SEED + 4, sanity_reads),
            (500,),
            f"s=1.001 v=10 over 50M keys, {sanity_reads:,} reads",
            {"LRU": 12.3, "W-TinyLFU": 22.9},
        )
    )
    out.append(
        Trace(
            "sanity: LIRS loop",
            loop_trace(1_024, 102_400),
            (1_000,),
            "1,024 keys x 100 passes",
            {"LRU": 0.0, "W-TinyLFU": 98.0},
        )
    )
    return out


# -- subjects -------------------------------------------------------------------------------


def _theine(capacity: int) -> Runner:
    from theine import Cache

    def run(trace: list[str]) -> int:
        cache: Any = Cache(capacity, nolock=True)
        get = cache.get
        put = cache.set
        hits = 0
        try:
            for key in trace:
                if get(key)[1]:
                    hits += 1
                else:
                    put(key, 1)
        finally:
            cache.close()
        return hits

    return run


def _cachetools(capacity: int) -> Runner:
    from cachetools import LRUCache

    def run(trace: list[str]) -> int:
        cache: LRUCache[str, int] = LRUCache(maxsize=capacity)
        get = cache.get
        hits = 0
        for key in trace:
            if get(key) is None:
                cache[key] = 1
            else:
                hits += 1
        return hits

    return run


def _bare_lru(capacity: int) -> Runner:
    def run(trace: list[str]) -> int:
        data: OrderedDict[str, int] = OrderedDict()
        move = data.move_to_end
        pop = data.popitem
        hits = 0
        for key in trace:
            if key in data:
                move(key)
                hits += 1
            else:
                data[key] = 1
                if len(data) > capacity:
                    pop(last=False)
        return hits

    return run


def _policy(capacity: int) -> Runner:
    from layercache.layers._tinylfu import TinyLfuPolicy

    def run(trace: list[str]) -> int:
        data: dict[str, int] = {}
        policy = TinyLfuPolicy(capacity)
        record_hit = policy.record_hit
        insert = policy.insert
        hits = 0
        for key in trace:
            if key in data:
                record_hit(key)
                hits += 1
            else:
                data[key] = 1
                evicted = insert(key)
                if evicted is not None:
                    del data[evicted]
        return hits

    return run


def _memory_layer(eviction: str) -> Callable[[int], Runner]:
    def make(capacity: int) -> Runner:
        from layercache import MemoryLayer
        from layercache._entry import Entry

        def run(trace: list[str]) -> int:
            layer: Any = MemoryLayer(ttl=None, max_size=capacity, eviction=eviction)  # type: ignore[arg-type]
            entry = Entry(1, 0.0, None)
            get = layer.get
            put = layer.set
            hits = 0
            for key in trace:
                if get(key) is None:
                    put(key, entry, None)
                else:
                    hits += 1
            return hits

        return run

    return make


def _has_tinylfu_layer() -> bool:
    from layercache import MemoryLayer

    try:
        MemoryLayer(max_size=10, eviction="tinylfu")  # type: ignore[arg-type]
    except ValueError:
        return False
    return True


def subjects() -> dict[str, Callable[[int], Runner]]:
    """Subject name -> factory of a runner for a cache size."""
    out: dict[str, Callable[[int], Runner]] = {
        THEINE: _theine,
        CACHETOOLS: _cachetools,
        BARE_LRU: _bare_lru,
        POLICY: _policy,
        MEM_LRU: _memory_layer("lru"),
        MEM_LFU: _memory_layer("lfu"),
    }
    if _has_tinylfu_layer():
        out[MEM_TINYLFU] = _memory_layer("tinylfu")
    return out


# -- measuring ------------------------------------------------------------------------------


def hit_ratios(
    trace_list: list[Trace],
    factories: dict[str, Callable[[int], Runner]],
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """One row per trace x size: hit ratio (%) of every subject."""
    rows = []
    for trace in trace_list:
        for size in trace.sizes:
            started = time.perf_counter()
            ratios = {}
            for name, factory in factories.items():
                hits = factory(size)(trace.keys)
                ratios[name] = 100.0 * hits / len(trace.keys)
                gc.collect()
            rows.append(
                {
                    "trace": trace.name,
                    "size": size,
                    "reads": len(trace.keys),
                    "note": trace.note,
                    "published": trace.published,
                    "hit_ratio": ratios,
                }
            )
            log(f"{trace.name} @ {size:,}: {time.perf_counter() - started:.1f} s")
    return rows


def costs(factories: dict[str, Callable[[int], Runner]], quick: bool) -> dict[str, float]:
    """ns per operation on one fixed Zipf trace, best of interleaved rounds."""
    reads = 100_000 if quick else 300_000
    trace = zipf_trace(SEED + 9, 100_000, 1.0, reads)
    best: dict[str, float] = {}
    for _ in range(2 if quick else 3):
        for name, factory in factories.items():
            run = factory(10_000)
            gc.collect()
            gc.disable()
            try:
                started = time.perf_counter_ns()
                run(trace)
                elapsed = time.perf_counter_ns() - started
            finally:
                gc.enable()
            ns = elapsed / reads
            best[name] = min(ns, best.get(name, ns))
    return best


# -- reporting ------------------------------------------------------------------------------


def _goal_mark(points: float) -> str:
    return "ok" if points >= -HIT_GOAL_POINTS else "MISSED"


def report(rows: list[dict[str, Any]], cost: dict[str, float], names: list[str]) -> list[str]:
    """Markdown tables."""
    ours = [n for n in OURS if n in names]
    head = ["trace", "cache", *names, *[f"{n} - theine (points)" for n in ours]]
    lines = [
        "### Hit ratio (%), get-then-set-on-miss",
        "",
        "| " + " | ".join(head) + " |",
        "| --- | ---: |" + " ---: |" * (len(names) + len(ours)),
    ]
    for row in rows:
        ratios = row["hit_ratio"]
        cells = [row["trace"], f"{row['size']:,}", *[f"{ratios[n]:.2f}" for n in names]]
        for n in ours:
            points = ratios[n] - ratios[THEINE]
            cells.append(f"{points:+.2f} {_goal_mark(points)}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Traces: " + "; ".join(sorted({f"{r['trace']}: {r['note']}" for r in rows})), ""]
    sanity = [r for r in rows if r["published"]]
    if sanity:
        lines += [
            "### Sanity rows against theine's published charts",
            "",
            "| trace | cache | published LRU | published W-TinyLFU | theine here "
            "| cachetools LRU here | TinyLfuPolicy here |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in sanity:
            ratios = r["hit_ratio"]
            lines.append(
                f"| {r['trace']} | {r['size']:,} | {r['published']['LRU']:.1f} "
                f"| {r['published']['W-TinyLFU']:.1f} | {ratios[THEINE]:.2f} "
                f"| {ratios[CACHETOOLS]:.2f} | {ratios[POLICY]:.2f} |"
            )
        lines.append("")
    base = cost.get(MEM_LRU)
    lines += [
        "### Cost per operation (Zipf 1.0, 100k keys, cache 10k; best round)",
        "",
        "| subject | ns/op | x MemoryLayer lru | x dict+OrderedDict LRU |",
        "| --- | ---: | ---: | ---: |",
    ]
    bare = cost.get(BARE_LRU)
    for name in names:
        ns = cost[name]
        ratio = f"{ns / base:.2f}" if base else "-"
        ratio_bare = f"{ns / bare:.2f}" if bare else "-"
        lines.append(f"| {name} | {ns:.0f} | {ratio} | {ratio_bare} |")
    lines.append("")
    summary = goals(rows, cost)
    lines += ["### Goals", "", "| goal | measured | |", "| --- | ---: | --- |"]
    for label, value, met in summary:
        lines.append(f"| {label} | {value} | {'met' if met else 'MISSED'} |")
    return [*lines, ""]


def goals(rows: list[dict[str, Any]], cost: dict[str, float]) -> list[tuple[str, str, bool]]:
    """(label, measured, met) for the issue's goals."""
    out = []
    for name in OURS:
        if name not in cost:
            continue
        worst = min(r["hit_ratio"][name] - r["hit_ratio"][THEINE] for r in rows)
        out.append(
            (
                f"{name}: worst hit ratio - theine (points, ≥ -{HIT_GOAL_POINTS:g})",
                f"{worst:+.2f}",
                worst >= -HIT_GOAL_POINTS,
            )
        )
    if MEM_TINYLFU in cost:
        ratio = cost[MEM_TINYLFU] / cost[MEM_LRU]
        out.append(
            (
                f"MemoryLayer tinylfu / lru ns per op (≤ {COST_GOAL:g})",
                f"{ratio:.2f}",
                ratio <= COST_GOAL,
            )
        )
    ratio = cost[POLICY] / cost[BARE_LRU]
    out.append(
        ("bare TinyLfuPolicy / bare OrderedDict LRU ns per op (reference)", f"{ratio:.2f}", True)
    )
    return out


def _log(message: str) -> None:
    print(f"[hit_ratio {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print Markdown tables (exit 0 even when a goal is missed)."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.hit_ratio",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="smaller traces (under a minute)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    factories = subjects()
    _log("generating traces")
    trace_list = traces(args.quick)
    _log(f"{len(trace_list)} traces ready ({time.perf_counter() - started:.1f} s)")
    rows = hit_ratios(trace_list, factories, _log)
    del trace_list
    gc.collect()
    _log("cost per operation")
    cost = costs(factories, args.quick)
    names = list(factories)
    print("\n".join(report(rows, cost, names)))
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "hit_ratio": rows,
                    "ns_per_op": cost,
                    "goals": [
                        {"goal": g, "measured": m, "met": ok} for g, m, ok in goals(rows, cost)
                    ],
                    "quick": args.quick,
                    "seconds": time.perf_counter() - started,
                },
                indent=2,
            )
        )
    _log(f"done in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
