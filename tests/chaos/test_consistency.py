"""Three instances, random TCP cuts to Redis, and a checker of every read (issue 11, point 1).

Three ``CacheStack`` instances run in this process, each built as docs/distributed.md
recommends (``_chaos_workload.build_instance``: own client and pool, own bus ``source_id``),
each reaching a private ``redis-server`` through its own loopback ``TcpProxy`` (the proxies
run in a child process, ``_proxy_host.py``, so that they do not take the GIL from the
instances).

Workers on every instance do a random mix of ``get``/``get_many`` (with fetchers and tags),
``set``/``set_many``, ``delete``/``delete_many``, ``invalidate_by_tag(s)``,
``invalidate_by_pattern``, ``invalidate_by_prefix`` and, rarely, ``clear`` over 40 keys and 5
tags. The origin model and the rule are in ``_chaos_support``: a read that started more than
0.5 s after a change of its key returned must not get an older version.

Faults: the run alternates *fault periods* (many short cuts of one instance's link:
``refuse``, ``blackhole``, ``stall`` or ``slow``; a stall keeps the connections open without
forwarding and delivers what they held when the link comes back, like TCP after a partition
heals; slow adds 20-200 ms each way) and *settled periods*. Every link always has 1 ms of
latency each way. A settled period starts 0.5 s after the last cut healed **and** every
instance reports itself recovered (bus subscribed again, no degraded layer, the tag index back,
no announcement left unsent; bounded, a miss fails the test), and ends when the next fault
period begins. The run ends with an audit (every key read on every instance once nothing
changes any more). Stale reads are judged in settled periods and the audit; an operation that
raises is a failure at any time (graceful degradation promises none).

Besides reads, an index watch (``_chaos_workload.IndexWatch``) checks during settled periods
and after the run that every value Redis holds is listed in the shared tag index under each
of its tags: one that is not survives ``invalidate_by_tag`` of that tag, a stale value in
waiting that a read may or may not happen to hit.

``python -m pytest -s tests/chaos/test_consistency.py`` prints one line per seed.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from _chaos_support import ChaosRedisServer, ProxyHost, Window, judge, soak_requested
from _chaos_workload import (
    GRACE,
    SETTLE,
    IndexWatch,
    Run,
    audit,
    before,
    build_instance,
    move_focus,
    running,
    worker,
)

pytestmark = pytest.mark.redis

INSTANCES = 3
WORKERS = 6  # per instance
CI_SEEDS = 5
CI_SECONDS = 11.0
SOAK_SEEDS = 10
SOAK_SECONDS = 120.0
MIN_SETTLED = 1.5  # shortest settled period
MODES = ("refuse", "blackhole", "stall", "slow")
MODE_WEIGHTS = (35, 25, 25, 15)
# Every link carries this much latency each way, always: as between hosts, and it widens the
# windows in which a change and a fetch on two instances can cross (the bus takes two hops).
BASE_LATENCY = 0.001


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """One test per seed: ``CI_SEEDS`` of them, ``SOAK_SEEDS`` in a soak."""
    if "seed" in metafunc.fixturenames:
        count = SOAK_SEEDS if soak_requested(metafunc.config) else CI_SEEDS
        metafunc.parametrize("seed", range(1, count + 1))


class Faults:
    """The fault schedule: fault periods of random cuts, then settled periods."""

    def __init__(self, run: Run, proxies: ProxyHost, rng: random.Random) -> None:
        self.run = run
        self.proxies = proxies
        self.rng = rng
        self.cuts = 0
        self.modes: dict[str, int] = dict.fromkeys(MODES, 0)

    async def cut(self, index: int, mode: str, seconds: float) -> None:
        """Cut instance ``index``'s link for ``seconds``, then restore it."""
        began = time.monotonic()
        if mode == "stall":
            await self.proxies.command(f"stall {index}")
        elif mode == "slow":
            await self.proxies.command(f"latency {index} {self.rng.uniform(0.02, 0.2)}")
        else:
            await self.proxies.command(f"cut {index} {mode}")
        self.cuts += 1
        self.modes[mode] += 1
        await asyncio.sleep(seconds)
        if mode == "slow":
            await self.proxies.command(f"latency {index} {BASE_LATENCY}")
        else:
            await self.proxies.command(f"restore {index}")
        self.run.faults.append((began, time.monotonic(), f"instance {index} {mode}"))

    async def __call__(self, until: float) -> None:
        """Alternate until ``until``; a fault period starts only if a settled period of at
        least ``MIN_SETTLED`` still fits after it (the last one runs to the end)."""
        rng, run = self.rng, self.run
        while True:
            fault_end = time.monotonic() + rng.uniform(1.0, 2.0)
            if fault_end + 1.0 + SETTLE + MIN_SETTLED > until:
                return
            run.settled_from = None
            while time.monotonic() < fault_end:
                # Many short cuts: every one is an outage to recover from (and replay).
                seconds = min(rng.uniform(0.1, 0.6), fault_end + 0.5 - time.monotonic())
                mode = rng.choices(MODES, MODE_WEIGHTS)[0]
                await self.cut(rng.randrange(INSTANCES), mode, seconds)
                await asyncio.sleep(rng.uniform(0.0, 0.2))
            healed = time.monotonic()
            recovered = await run.wait_recovered()
            run.faults.append((healed, recovered, "recovery"))
            start = recovered + SETTLE
            run.settled_from = start
            end = start + rng.uniform(MIN_SETTLED, 2.5)
            if end + 1.0 + SETTLE + MIN_SETTLED > until:
                end = until
            if end > start:
                await asyncio.sleep(end - time.monotonic())
                run.windows.append(Window(start, end))
            if end >= until:
                return


async def test_three_instances_under_tcp_cuts(
    chaos_redis: ChaosRedisServer, soak: bool, seed: int
) -> None:
    rng = random.Random(seed)
    seconds = SOAK_SECONDS if soak else CI_SECONDS
    proxies = ProxyHost(chaos_redis.port, INSTANCES)
    watch = IndexWatch(chaos_redis.url)
    instances = [build_instance(i, proxies.url(i)) for i in range(INSTANCES)]
    for index in range(INSTANCES):
        await proxies.command(f"latency {index} {BASE_LATENCY}")
    try:
        async with running(instances):
            run = Run(instances)
            faults = Faults(run, proxies, random.Random(rng.getrandbits(64)))
            until = run.t0 + seconds
            tasks = [
                worker(run, inst, random.Random(rng.getrandbits(64)), before(until))
                for inst in instances
                for _ in range(WORKERS)
            ]
            tasks.append(faults(until))
            tasks.append(move_focus(run, random.Random(rng.getrandbits(64)), before(until)))
            tasks.append(watch.watch(run, before(until)))
            await asyncio.gather(*tasks)
            run.stopped = time.monotonic()
            await audit(run, watch)
            run.unindexed[:0] = watch.found.values()
    finally:
        await watch.aclose()
        proxies.close()

    verdict = judge(run.reads, run.origin.history, grace=GRACE, windows=run.windows)
    assert run.audit is not None
    audited = judge(
        [r for r in run.reads if r.started >= run.audit.start], run.origin.history, grace=GRACE
    )
    unjudged = judge(
        [r for r in run.reads if not any(w.start <= r.started <= w.end for w in run.windows)],
        run.origin.history,
        grace=GRACE,
    )
    print(
        f"\nchaos consistency seed={seed}: ops={run.ops} reads={len(run.reads)} "
        f"stale={len(verdict.stale)} (worst {verdict.worst_text()}) raising={len(run.raised)} "
        f"cuts={faults.cuts} | judged={verdict.judged} settled_periods={len(run.windows) - 1} "
        f"audit_stale={len(audited.stale)}/{audited.judged} unindexed={len(run.unindexed)} "
        f"changes={run.origin.changes()} "
        f"fetches={run.origin.fetches} recovery_max={max(run.recovery_times):.2f}s "
        f"recovery_misses={run.recovery_misses} stale_during_faults={len(unjudged.stale)} "
        f"(not judged) wrong={len(run.wrong)} "
        f"error_events={sum(i.errors for i in instances)} modes={faults.modes} "
        f"run={run.stopped - run.t0:.1f}s slowest_op={run.slowest[0]:.2f}s ({run.slowest[1]})"
    )
    for line in run.unindexed[:5]:
        print("  UNINDEXED", line)
    for stale in verdict.stale[:8]:
        print("  STALE", run.explain(stale))
    for failure in run.raised[:3]:
        print(
            f"  RAISED {failure.op} on instance {failure.instance} at "
            f"{failure.at - run.t0:.3f}s: {failure.trace}"
        )
    assert faults.cuts > 0, "no fault: nothing was tested"
    assert len(run.windows) > 1, "no settled period: nothing was judged"
    assert verdict.judged > 100, f"only {verdict.judged} reads fell in settled periods"
    assert not run.wrong, run.wrong[:5]
    assert run.recovery_misses == 0, "an instance did not recover in time after a fault"
    assert not run.raised, f"{len(run.raised)} operations raised; first: {run.raised[0].trace}"
    assert not run.unindexed, (
        f"{len(run.unindexed)} cached keys the tag index lost (a tag invalidation would miss "
        f"them): {run.unindexed[:5]}"
    )
    assert not verdict.stale, (
        f"{len(verdict.stale)} stale reads in settled periods (worst {verdict.worst_text()}); "
        f"first: {run.explain(verdict.stale[0])}"
    )
