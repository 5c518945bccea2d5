"""Redis SIGKILLed and restarted under load (issue 11, point 2).

Two instances built as docs/distributed.md recommends (``_chaos_workload.build_instance``)
talk straight to a private ``redis-server``; 64 readers (32 per instance) and 4 writers run
while the server is SIGKILLed and restarted on the same port several times. Writers delete
most of the time, so that deletes land in every outage.

Two kinds of restart, both real:

* ``empty``: the server runs without persistence (like the suite's session server), so it
  comes back empty: the shared layer, the tag index, the single-flight locks and the stored
  generation are gone together.
* ``aof``: the append-only file with ``appendfsync always``, so it comes back with every
  acknowledged write: the values a delete made during the outage removed from the local
  layers are still in Redis, and only the replay of that missed delete keeps them from
  coming back.

Goals: no operation raises (graceful degradation); a delete made during an outage is never
undone after recovery (no read judged after the recovery returns a version older than it);
and, generally, no stale read in the settled periods (from 0.5 s after both instances
recovered until the next kill) nor in the final audit, and no cached value the shared tag
index lost (``_chaos_workload.IndexWatch``). The rule and the origin model are
``_chaos_support``'s.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

import pytest
from _chaos_support import ChaosRedisServer, Stale, Window, judge
from _chaos_workload import (
    GRACE,
    SETTLE,
    IndexWatch,
    Operation,
    Run,
    audit,
    build_instance,
    move_focus,
    op_delete,
    op_delete_many,
    op_get,
    op_get_many,
    op_pattern,
    op_set,
    op_tag,
    running,
    worker,
)

pytestmark = pytest.mark.redis

INSTANCES = 2
READERS = 32  # per instance: 64 in all
WRITERS = 2  # per instance
CI_KILLS = 3
SOAK_KILLS = 15
REMOVALS = ("delete", "delete_many", "invalidate_by_tag", "invalidate_by_pattern")

READS: list[tuple[Operation, float]] = [(op_get, 95), (op_get_many, 5)]
WRITES: list[tuple[Operation, float]] = [
    (op_delete, 45),
    (op_delete_many, 10),
    (op_set, 30),
    (op_tag, 10),
    (op_pattern, 5),
]


class Outages:
    """Kill and restart the server ``kills`` times; settled windows in between."""

    def __init__(self, run: Run, server: ChaosRedisServer, rng: random.Random) -> None:
        self.run = run
        self.server = server
        self.rng = rng
        self.periods: list[tuple[float, float, float]] = []  # (killed, restarted, recovered)

    async def __call__(self, kills: int) -> None:
        rng, run = self.rng, self.run
        start = time.monotonic() + SETTLE
        run.settled_from = start
        for _ in range(kills):
            await asyncio.sleep(rng.uniform(1.0, 1.6))  # up: the workload runs
            killed = time.monotonic()
            run.settled_from = None
            run.windows.append(Window(start, killed))
            self.server.kill()
            await asyncio.sleep(rng.uniform(0.4, 1.2))  # how long Redis stays dead
            await asyncio.to_thread(self.server.start)  # same port; answers PING on return
            restarted = time.monotonic()
            recovered = await run.wait_recovered()
            self.periods.append((killed, restarted, recovered))
            run.faults.append((killed, restarted, "redis killed"))
            run.faults.append((restarted, recovered, "recovery"))
            start = recovered + SETTLE
            run.settled_from = start
        await asyncio.sleep(max(0.0, start + 1.0 - time.monotonic()))
        run.windows.append(Window(start, time.monotonic()))

    def outage_of(self, at: float) -> tuple[float, float, float] | None:
        for period in self.periods:
            if period[0] <= at <= period[1]:
                return period
        return None


def resurrections(stale: list[Stale], outages: Outages, history: dict) -> list[Stale]:
    """Stale reads that undid a removal made while Redis was dead (the read came after that
    outage's recovery: judged reads all do)."""
    found = []
    for item in stale:
        for change in history[item.read.key]:
            if not item.read.version < change.version <= item.required:
                continue
            if change.op.split("(")[0] in REMOVALS and outages.outage_of(change.began):
                found.append(item)
                break
    return found


@pytest.mark.parametrize("restart", ["empty", "aof"])
async def test_redis_sigkill_and_restart_under_load(
    redis_factory: Callable[..., ChaosRedisServer], soak: bool, restart: str
) -> None:
    server = redis_factory(persist=restart == "aof")
    rng = random.Random(11)
    instances = [build_instance(i, server.url) for i in range(INSTANCES)]
    watch = IndexWatch(server.url)
    async with running(instances):
        run = Run(instances)
        outages = Outages(run, server, random.Random(rng.getrandbits(64)))
        stop = asyncio.Event()

        def going() -> bool:
            return not stop.is_set()

        tasks = [
            move_focus(run, random.Random(rng.getrandbits(64)), going),
            watch.watch(run, going),
        ]
        for inst in instances:
            for role, count in ((READS, READERS), (WRITES, WRITERS)):
                for _ in range(count):
                    seeded = random.Random(rng.getrandbits(64))
                    tasks.append(worker(run, inst, seeded, going, role))
        background = asyncio.gather(*tasks)
        try:
            await outages(SOAK_KILLS if soak else CI_KILLS)
        finally:
            stop.set()
            await background
        run.stopped = time.monotonic()
        try:
            await audit(run, watch)
        finally:
            await watch.aclose()
        run.unindexed[:0] = watch.found.values()

    history = run.origin.history
    verdict = judge(run.reads, history, grace=GRACE, windows=run.windows)
    undone = resurrections(verdict.stale, outages, history)
    outage_removals = sum(
        1
        for changes in history.values()
        for change in changes
        if change.op.split("(")[0] in REMOVALS and outages.outage_of(change.began)
    )
    recovery = max(recovered - restarted for _, restarted, recovered in outages.periods)
    print(
        f"\nchaos kill-restart restart={restart}: kills={len(outages.periods)} ops={run.ops} "
        f"reads={len(run.reads)} judged={verdict.judged} stale={len(verdict.stale)} "
        f"(worst {verdict.worst_text()}) deletes_undone={len(undone)} raising={len(run.raised)} "
        f"unindexed={len(run.unindexed)} "
        f"| removals_during_outages={outage_removals} changes={run.origin.changes()} "
        f"fetches={run.origin.fetches} recovery_max={recovery:.2f}s "
        f"recovery_misses={run.recovery_misses} wrong={len(run.wrong)} "
        f"error_events={sum(i.errors for i in instances)} "
        f"slowest_op={run.slowest[0]:.2f}s ({run.slowest[1]})"
    )
    for line in run.unindexed[:5]:
        print("  UNINDEXED", line)
    for stale in verdict.stale[:8]:
        print("  STALE", run.explain(stale))
    for failure in run.raised[:3]:
        print(f"  RAISED {failure.op} on instance {failure.instance}: {failure.trace}")
    assert outage_removals > 0, "no delete landed in an outage: nothing was tested"
    assert verdict.judged > 1000, f"only {verdict.judged} reads were judged"
    assert not run.wrong, run.wrong[:5]
    assert run.recovery_misses == 0, "an instance did not recover in time after a restart"
    assert not run.raised, f"{len(run.raised)} operations raised; first: {run.raised[0].trace}"
    assert not undone, f"{len(undone)} reads undid a delete: {run.explain(undone[0])}"
    assert not run.unindexed, f"cached keys the tag index lost: {run.unindexed[:5]}"
    assert not verdict.stale, (
        f"{len(verdict.stale)} stale reads (worst {verdict.worst_text()}); "
        f"first: {run.explain(verdict.stale[0])}"
    )
