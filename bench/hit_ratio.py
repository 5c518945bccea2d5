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

The cost table replays one fixed Zipf trace (s=1.0 over 100k keys, cache 10k) with every
subject once per round, 7 rounds (3 with ``--quick``) in rotating order, and reports the CPU
time per operation (``time.process_time``, which other processes on a shared machine disturb
less than wall time): the best and the median round, and the median over rounds of the ratio
to ``MemoryLayer`` LRU measured in the same round.

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
import statistics
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
    # The window has to grow here, which the hill climber does one sample (10x the cache
    # size in requests) at a time: the quick run still gives the 10k cache 5 samples.
    recency_reads = 500_000 if quick else reads
    out.append(
        Trace(
            "recency",
            recency_trace(SEED + 2, recency_reads),
            sizes,
            f"{recency_reads:,} reads, 20% new keys",
        )
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


@dataclass
class Feeder:
    """One cache of one subject: ``feed(trace)`` replays reads on it (the cache persists
    between calls) and returns the hits; ``close()`` releases it."""

    feed: Callable[[list[str]], int]
    close: Callable[[], None] = lambda: None


Factory = Callable[[int], Feeder]
"""A subject: makes a fresh cache of a given size."""


def _theine(capacity: int) -> Feeder:
    from theine import Cache

    # nolock: one thread here; the maintenance thread theine starts only expires entries.
    cache: Any = Cache(capacity, nolock=True)
    get = cache.get
    put = cache.set

    def feed(trace: list[str]) -> int:
        hits = 0
        for key in trace:
            if get(key)[1]:
                hits += 1
            else:
                put(key, 1)
        return hits

    return Feeder(feed, cache.close)


def _cachetools(capacity: int) -> Feeder:
    from cachetools import LRUCache

    cache: LRUCache[str, int] = LRUCache(maxsize=capacity)
    get = cache.get

    def feed(trace: list[str]) -> int:
        hits = 0
        for key in trace:
            if get(key) is None:
                cache[key] = 1
            else:
                hits += 1
        return hits

    return Feeder(feed)


def _bare_lru(capacity: int) -> Feeder:
    data: OrderedDict[str, int] = OrderedDict()
    move = data.move_to_end
    pop = data.popitem

    def feed(trace: list[str]) -> int:
        hits = 0
        for key in trace:
            if key in data:
                move(key)
                hits += 1
            else:
                data[key] = 1
                if len(data) > capacity:
                    pop(False)
        return hits

    return Feeder(feed)


def _policy(capacity: int) -> Feeder:
    from layercache.layers._tinylfu import TinyLfuPolicy

    data: dict[str, int] = {}
    policy = TinyLfuPolicy(capacity)
    record_hit = policy.record_hit
    insert = policy.insert

    def feed(trace: list[str]) -> int:
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

    return Feeder(feed)


def _memory_layer(eviction: str) -> Factory:
    def make(capacity: int) -> Feeder:
        from layercache import MemoryLayer
        from layercache._entry import Entry

        layer = MemoryLayer(ttl=None, max_size=capacity, eviction=eviction)  # type: ignore[arg-type]
        entry = Entry(1, 0.0, None)
        get = layer.get
        put = layer.set

        def feed(trace: list[str]) -> int:
            hits = 0
            for key in trace:
                if get(key) is None:
                    put(key, entry, None)
                else:
                    hits += 1
            return hits

        return Feeder(feed, layer.close)

    return make


def _has_tinylfu_layer() -> bool:
    from layercache import MemoryLayer

    try:
        MemoryLayer(max_size=10, eviction="tinylfu")  # type: ignore[arg-type]
    except ValueError:
        return False
    return True


def subjects() -> dict[str, Factory]:
    """Subject name -> factory of a cache of a given size."""
    out: dict[str, Factory] = {
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


def replay(factory: Factory, capacity: int, trace: list[str]) -> int:
    """Hits of a fresh cache on ``trace``."""
    feeder = factory(capacity)
    try:
        return feeder.feed(trace)
    finally:
        feeder.close()


# -- measuring ------------------------------------------------------------------------------


def hit_ratios(
    trace_list: list[Trace],
    factories: dict[str, Factory],
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """One row per trace x size: hit ratio (%) of every subject."""
    rows = []
    for trace in trace_list:
        for size in trace.sizes:
            started = time.perf_counter()
            ratios = {}
            for name, factory in factories.items():
                hits = replay(factory, size, trace.keys)
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


@dataclass
class Cost:
    """CPU time per operation of one subject on the cost trace, over interleaved rounds."""

    name: str
    ns: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        """The fastest round (the least disturbed by other processes)."""
        return min(self.ns)

    @property
    def median(self) -> float:
        """The median round."""
        return statistics.median(self.ns)


COST_KEYS = 100_000
COST_CACHE = 10_000
COST_WARMUP = 100_000


def costs(factories: dict[str, Factory], quick: bool) -> dict[str, Cost]:
    """CPU ns per operation (``time.process_time``: other processes on a shared machine count
    less than in wall time) on one fixed Zipf trace, in steady state (each cache first replays
    ``COST_WARMUP`` reads untimed), every subject once per round, the order rotating from round
    to round."""
    reads = 100_000 if quick else 200_000
    trace = zipf_trace(SEED + 9, COST_KEYS, 1.0, COST_WARMUP + reads)
    warmup, timed = trace[:COST_WARMUP], trace[COST_WARMUP:]
    names = list(factories)
    out = {name: Cost(name) for name in names}
    for round_ in range(3 if quick else 7):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            feeder = factories[name](COST_CACHE)
            try:
                feeder.feed(warmup)
                gc.collect()
                gc.disable()
                try:
                    started = time.process_time()
                    feeder.feed(timed)
                    elapsed = time.process_time() - started
                finally:
                    gc.enable()
            finally:
                feeder.close()
            out[name].ns.append(elapsed * 1e9 / reads)
    return out


def paired_ratio(cost: dict[str, Cost], name: str, base: str) -> float:
    """Median over rounds of ``name``'s time over ``base``'s in the same round."""
    return statistics.median(a / b for a, b in zip(cost[name].ns, cost[base].ns, strict=True))


# -- reporting ------------------------------------------------------------------------------


def _goal_mark(points: float) -> str:
    return "ok" if points >= -HIT_GOAL_POINTS else "MISSED"


def report(rows: list[dict[str, Any]], cost: dict[str, Cost], names: list[str]) -> list[str]:
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
    notes = sorted({f"{r['trace']}: {r['note']}" for r in rows})
    lines += ["", "Traces: " + "; ".join(notes) + ".", ""]
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
    rounds = len(cost[names[0]].ns)
    lines += [
        f"### Cost per operation (Zipf 1.0 over {COST_KEYS:,} keys, cache {COST_CACHE:,}; "
        f"CPU time, {rounds} interleaved rounds)",
        "",
        "| subject | ns/op best | ns/op median | x MemoryLayer lru (paired median) "
        "| x dict+OrderedDict LRU |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in names:
        row = cost[name]
        lines.append(
            f"| {name} | {row.best:.0f} | {row.median:.0f} "
            f"| {paired_ratio(cost, name, MEM_LRU):.2f} "
            f"| {paired_ratio(cost, name, BARE_LRU):.2f} |"
        )
    lines.append("")
    lines += ["### Goals", "", "| goal | measured | |", "| --- | ---: | --- |"]
    for label, value, met in goals(rows, cost):
        lines.append(f"| {label} | {value} | {'met' if met else 'MISSED'} |")
    return [*lines, ""]


def goals(rows: list[dict[str, Any]], cost: dict[str, Cost]) -> list[tuple[str, str, bool]]:
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
        ratio = paired_ratio(cost, MEM_TINYLFU, MEM_LRU)
        out.append(
            (
                f"MemoryLayer tinylfu / lru, CPU per op (≤ {COST_GOAL:g})",
                f"{ratio:.2f}",
                ratio <= COST_GOAL,
            )
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
                    "cpu_ns_per_op": {name: row.ns for name, row in cost.items()},
                    "ratio_to_memory_lru": {
                        name: paired_ratio(cost, name, MEM_LRU) for name in cost
                    },
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
