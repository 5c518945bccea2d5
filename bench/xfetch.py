"""Early refresh (XFetch) against refresh-ahead and plain TTL on a hot key (issue 16).

The issue's figure: under steady load on a hot key, origin calls per TTL period and requests
that waited on the origin (goal: 0 waits, about 1 call per period).

**Load.** ``--callers`` asyncio tasks (default 100) each loop ``get("hot", origin, ...)`` and
then sleep a random 5-15 ms (about 10,000 reads a second in all) for ``--periods`` TTL periods
(default 10) of ``--ttl`` seconds (default 1). The origin sleeps ``--origin-ms`` (default 30 ms)
and counts its calls. The key is fetched once before the clock starts; every figure covers the
measured window only.

**Figures per row.** Origin calls per TTL period; requests that *waited on the origin*: counted
by the stack (its ``misses`` counter: a read that found no fresh value and joined or led a
foreground fetch; a stale-while-revalidate serve is not one), and for the peer, which keeps no
such count, reads that took at least half the origin's time (the stack's rows show that
count too, as a check); *wait episodes*: bursts of such waits, each the readers of one fetch
that nobody started in time (rises of the count more than two origin times apart, sampled
every few milliseconds); p99 and max read latency. Ratios: calls and waits against plain TTL
in the same table.

**Rows.** ``CacheStack([MemoryLayer()])`` with:
plain TTL; ``stale_while_revalidate=TTL`` (nobody waits either, but it serves values past their
TTL: the column *stale served*); ``refresh_ahead`` of 0.1 s (about three origin times: a window
tuned for this origin); ``early_refresh`` with beta 0.5, 1 and 2. The peer: cashews
``@cache.early(ttl=TTL, early_ttl=0.9 TTL)`` on its memory backend (background recomputation
after ``early_ttl``, the same idea as refresh-ahead).

**Slow origin** (full run): the same stacks when the origin takes 150 ms, with the refresh-ahead
window still at 0.1 s (tuned for the fast origin): refresh-ahead now refreshes too late and its
readers wait; early refresh learns the fetch time and starts earlier (and, with TTL only about
7 origin times, refreshes more often).

**Two instances, memory + Redis** (full run; ``--quick`` too unless ``--no-redis``): two stacks
``[MemoryLayer(), RedisLayer(client=...)]`` on one throwaway ``redis-server``, half the callers
on each, with and without a shared ``RedisSingleFlightCoordinator``; plain TTL,
``refresh_ahead`` and ``early_refresh=True``. Calls are counted across both instances.

The machine is shared and noisy: compare rows within one run. ``--quick``: 50 callers, 3
periods, the fast-origin rows plain / refresh-ahead / beta 1 / cashews and the coordinated
Redis pair (about half a minute).

Usage: ``python -m bench.xfetch [--quick] [--callers N] [--periods N] [--ttl S]
[--origin-ms MS] [--no-redis] [--json PATH]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.fixtures import VALUE, environment, redis_server

SLOW_ORIGIN_MS = 150.0
REFRESH_AHEAD = 0.1
THINK = (0.005, 0.015)  # seconds a caller sleeps between reads
KEY = "hot"


@dataclass
class Origin:
    """The origin: sleeps ``delay`` seconds and counts its calls."""

    delay: float
    calls: int = 0

    async def fetch(self) -> Any:
        self.calls += 1
        await asyncio.sleep(self.delay)
        return VALUE


@dataclass
class Row:
    """One measured configuration."""

    scenario: str
    mode: str
    callers: int
    periods: int
    ttl: float
    origin_ms: float
    requests: int = 0
    origin_calls: int = 0
    calls_per_period: float = 0.0
    waited: int | None = None  # counted by the stack (None: a peer without the count)
    slow_reads: int = 0  # reads that took at least half the origin's time
    stale_served: int | None = None
    wait_episodes: int = 0
    p99_us: float = 0.0
    max_ms: float = 0.0
    calls_vs_ttl: float | None = None
    waits_vs_ttl: float | None = None


Read = Callable[[int], Awaitable[Any]]
"""A read of the hot key by caller ``i`` (the caller picks its instance)."""


Built = tuple[Read, list[Any]]
"""The reads of a configuration and its stacks (whose counters are read; none for a peer)."""


@dataclass
class Subject:
    """A configuration under load: ``build(origin)`` sets it up around ``origin``."""

    scenario: str
    mode: str
    build: Callable[[Origin], contextlib.AbstractAsyncContextManager[Built]]


@dataclass
class Load:
    """What the callers saw."""

    requests: int
    slow: int
    latencies: list[float]
    wait_episodes: int


async def drive(
    read: Read,
    callers: int,
    periods: int,
    ttl: float,
    origin_delay: float,
    waits: Callable[[int], int],
) -> Load:
    """``callers`` loops of read-then-think for ``periods`` TTL periods. ``waits(slow)`` is the
    running count of waits (the stacks' misses, or the slow reads ``slow`` for a peer); it is
    sampled every few milliseconds to count wait episodes: rises more than two origin times
    apart (the readers of one fetch that nobody started in time)."""
    began = time.perf_counter()
    deadline = began + periods * ttl
    latencies: list[float] = []
    slow = 0
    threshold = origin_delay / 2

    async def caller(i: int) -> None:
        nonlocal slow
        rng = random.Random(i)
        await asyncio.sleep(rng.uniform(*THINK))  # spread the callers
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            await read(i)
            took = time.perf_counter() - start
            latencies.append(took)
            if took >= threshold:
                slow += 1
            await asyncio.sleep(rng.uniform(*THINK))

    episodes = 0  # bursts of waits (a burst: the readers of one fetch nobody refreshed in time)

    async def monitor() -> None:
        nonlocal episodes
        seen, last_rise = waits(0), -math.inf
        step = min(0.01, origin_delay / 3)
        while time.perf_counter() < deadline + origin_delay:
            await asyncio.sleep(step)
            now = waits(slow)
            if now > seen:
                moment = time.perf_counter()
                if moment - last_rise > 2 * origin_delay:
                    episodes += 1
                last_rise = moment
                seen = now

    watcher = asyncio.ensure_future(monitor())
    await asyncio.gather(*(caller(i) for i in range(callers)))
    await watcher
    bad = episodes
    return Load(len(latencies), slow, latencies, bad)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(subject: Subject, args: argparse.Namespace, origin_ms: float) -> Row:
    origin = Origin(origin_ms / 1000)
    row = Row(subject.scenario, subject.mode, args.callers, args.periods, args.ttl, origin_ms)
    async with subject.build(origin) as (read, stacks):
        await read(0)  # the cold fetch, before the clock starts
        for stack in stacks:
            stack.reset_metrics()
        calls_before = origin.calls

        def waits(slow: int) -> int:
            if not stacks:
                return slow
            return sum(stack.get_metrics().misses for stack in stacks)

        load = await drive(read, args.callers, args.periods, args.ttl, origin.delay, waits)
        row.origin_calls = origin.calls - calls_before
        if stacks:
            metrics = [stack.get_metrics() for stack in stacks]
            row.waited = sum(m.misses for m in metrics)
            row.stale_served = sum(m.stale_hits for m in metrics)
    latencies = load.latencies
    row.requests = load.requests
    row.slow_reads = load.slow
    row.wait_episodes = load.wait_episodes
    row.calls_per_period = row.origin_calls / args.periods
    row.p99_us = _percentile(latencies, 0.99) * 1e6
    row.max_ms = max(latencies, default=0.0) * 1e3
    return row


# ---------------------------------------------------------------------------- subjects


def stack_subject(scenario: str, mode: str, ttl: float, options: dict[str, Any]) -> Subject:
    """One ``CacheStack([MemoryLayer()])`` read with ``options``."""
    from layercache import CacheStack, MemoryLayer

    @contextlib.asynccontextmanager
    async def build(origin: Origin) -> AsyncIterator[Built]:
        stack = CacheStack([MemoryLayer(ttl=ttl)])
        opts = {"ttl": ttl, **options}
        get = stack.get
        fetch = origin.fetch

        async def read(_: int) -> Any:
            return await get(KEY, fetch, **opts)

        try:
            yield read, [stack]
        finally:
            await stack.aclose()

    return Subject(scenario, mode, build)


def cashews_subject(scenario: str, ttl: float) -> Subject:
    """cashews' ``@cache.early`` on its memory backend: recomputed in the background once
    ``early_ttl`` (0.9 TTL) has passed, one recomputation at a time (its lock)."""
    from cashews import Cache

    @contextlib.asynccontextmanager
    async def build(origin: Origin) -> AsyncIterator[Built]:
        cache = Cache()
        cache.setup("mem://")

        @cache.early(ttl=ttl, early_ttl=0.9 * ttl, key="hot")
        async def hot() -> Any:
            return await origin.fetch()

        async def read(_: int) -> Any:
            return await hot()

        try:
            yield read, []
        finally:
            await cache.close()

    return Subject(scenario, "cashews @cache.early (early_ttl 0.9 TTL)", build)


def redis_pair_subject(
    scenario: str, mode: str, ttl: float, options: dict[str, Any], url: str, coordinated: bool
) -> Subject:
    """Two instances ``[MemoryLayer(), RedisLayer(client=...)]`` on one Redis (callers split
    between them), with or without a shared single-flight coordinator."""
    import redis.asyncio as aioredis

    from layercache import CacheStack, MemoryLayer, RedisLayer, RedisSingleFlightCoordinator

    @contextlib.asynccontextmanager
    async def build(origin: Origin) -> AsyncIterator[Built]:
        prefix = f"bench:xfetch:{random.getrandbits(32):08x}:"
        clients = [aioredis.from_url(url) for _ in range(2)]
        stacks = []
        for client in clients:
            extra: dict[str, Any] = {}
            if coordinated:
                extra["single_flight_coordinator"] = RedisSingleFlightCoordinator(
                    client=client, prefix=prefix + "sf"
                )
            layers = [MemoryLayer(ttl=ttl), RedisLayer(client=client, ttl=ttl, prefix=prefix)]
            stacks.append(CacheStack(layers, **extra))
        opts = {"ttl": ttl, **options}
        fetch = origin.fetch
        gets = [stack.get for stack in stacks]

        async def read(i: int) -> Any:
            return await gets[i % 2](KEY, fetch, **opts)

        try:
            yield read, stacks
        finally:
            for stack in stacks:
                await stack.aclose()
            for client in clients:
                await client.aclose()

    return Subject(scenario, mode, build)


MODES: list[tuple[str, dict[str, Any]]] = [
    ("plain TTL", {}),
    ("stale_while_revalidate=TTL", {"stale_while_revalidate": "TTL"}),
    (f"refresh_ahead={REFRESH_AHEAD}", {"refresh_ahead": REFRESH_AHEAD}),
    ("early_refresh=0.25", {"early_refresh": 0.25}),
    ("early_refresh=0.5", {"early_refresh": 0.5}),
    ("early_refresh=True (beta 1)", {"early_refresh": True}),
    ("early_refresh=2", {"early_refresh": 2.0}),
]
QUICK_MODES = ("plain TTL", f"refresh_ahead={REFRESH_AHEAD}", "early_refresh=True (beta 1)")
REDIS_MODES = ("plain TTL", f"refresh_ahead={REFRESH_AHEAD}", "early_refresh=True (beta 1)")


def _options(options: dict[str, Any], ttl: float) -> dict[str, Any]:
    return {k: (ttl if v == "TTL" else v) for k, v in options.items()}


# ---------------------------------------------------------------------------- report


def _ratios(rows: list[Row]) -> None:
    """Calls and waits of each row against the plain-TTL row of its scenario."""
    by_scenario: dict[str, Row] = {r.scenario: r for r in rows if r.mode == "plain TTL"}
    for row in rows:
        base = by_scenario.get(row.scenario)
        if base is None:
            continue
        if base.calls_per_period:
            row.calls_vs_ttl = row.calls_per_period / base.calls_per_period
        base_waits = base.waited if base.waited is not None else base.slow_reads
        waits = row.waited if row.waited is not None else row.slow_reads
        if base_waits:
            row.waits_vs_ttl = waits / base_waits


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table(rows: list[Row]) -> str:
    lines: list[str] = []
    scenarios = list(dict.fromkeys(r.scenario for r in rows))
    for scenario in scenarios:
        group = [r for r in rows if r.scenario == scenario]
        first = group[0]
        lines.append(
            f"### {scenario}: {first.callers} callers, {first.periods} periods of "
            f"{first.ttl:g} s, origin {first.origin_ms:g} ms\n"
        )
        lines.append(
            "| mode | reads | origin calls / TTL period | waited on the origin (stack count) "
            "| wait episodes | reads >= origin/2 | stale served | p99 read | max read "
            "| calls vs plain TTL | waits vs plain TTL |"
        )
        lines.append(
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        )
        for r in group:
            waited = "n/a" if r.waited is None else str(r.waited)
            stale = "n/a" if r.stale_served is None else str(r.stale_served)
            lines.append(
                f"| {r.mode} | {r.requests:,} | {r.calls_per_period:.2f} | {waited} "
                f"| {r.wait_episodes} | {r.slow_reads} | {stale} "
                f"| {r.p99_us:,.0f} us | {r.max_ms:.1f} ms "
                f"| {_ratio(r.calls_vs_ttl)} | {_ratio(r.waits_vs_ttl)} |"
            )
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.xfetch", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run (about 30 s)")
    parser.add_argument("--callers", type=int, default=None, help="concurrent callers (100)")
    parser.add_argument("--periods", type=int, default=None, help="TTL periods measured (10)")
    parser.add_argument("--ttl", type=float, default=1.0, help="TTL in seconds (1)")
    parser.add_argument("--origin-ms", type=float, default=30.0, help="origin time (30 ms)")
    parser.add_argument("--no-redis", action="store_true", help="skip the two-instance rows")
    parser.add_argument(
        "--only", default="", help="run only the rows whose scenario or mode contains this text"
    )
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.callers is None:
        args.callers = 50 if args.quick else 100
    if args.periods is None:
        args.periods = 3 if args.quick else 10
    if args.callers < 1 or args.periods < 1 or args.ttl <= 0 or args.origin_ms <= 0:
        parser.error("--callers and --periods must be >= 1, --ttl and --origin-ms positive")
    return args


async def run(args: argparse.Namespace) -> list[Row]:
    ttl = args.ttl
    rows: list[Row] = []
    fast = f"one instance, memory, origin {args.origin_ms:g} ms"
    plans: list[tuple[Subject, float]] = []
    for mode, options in MODES:
        if args.quick and mode not in QUICK_MODES:
            continue
        plans.append((stack_subject(fast, mode, ttl, _options(options, ttl)), args.origin_ms))
    plans.append((cashews_subject(fast, ttl), args.origin_ms))
    if not args.quick:
        slow = f"one instance, memory, slow origin {SLOW_ORIGIN_MS:g} ms"
        for mode, options in MODES:
            if mode != "stale_while_revalidate=TTL":
                plans.append(
                    (stack_subject(slow, mode, ttl, _options(options, ttl)), SLOW_ORIGIN_MS)
                )
    with contextlib.ExitStack() as exits:
        if not args.no_redis:
            server = exits.enter_context(redis_server())
            for coordinated in (True,) if args.quick else (True, False):
                scenario = "two instances, memory + Redis, " + (
                    "single-flight coordinator" if coordinated else "no coordinator"
                )
                for mode, options in MODES:
                    if mode in REDIS_MODES:
                        plans.append(
                            (
                                redis_pair_subject(
                                    scenario,
                                    mode,
                                    ttl,
                                    _options(options, ttl),
                                    server.url,
                                    coordinated,
                                ),
                                args.origin_ms,
                            )
                        )
        for subject, origin_ms in plans:
            if args.only and args.only not in f"{subject.scenario} / {subject.mode}":
                continue
            row = await measure(subject, args, origin_ms)
            print(
                f"  {subject.scenario} / {subject.mode}: {row.calls_per_period:.2f} calls per "
                f"period, {row.waited if row.waited is not None else row.slow_reads} waited",
                file=sys.stderr,
            )
            rows.append(row)
    _ratios(rows)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: prints the Markdown tables (progress on stderr)."""
    args = parse_args(argv)
    rows = asyncio.run(run(args))
    env = environment()
    print(
        f"Python {env['python']} on {env['platform']}, {env['cpus']} CPUs; "
        f"{env.get('redis_server') or 'no redis-server'}\n"
    )
    print(table(rows))
    if args.json is not None:
        document = {"environment": env, "rows": [asdict(r) for r in rows]}
        args.json.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
