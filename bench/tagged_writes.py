"""Tagged bulk writes and tag invalidation, against the raw redis-py floor, in one run (issue 16).

Every figure of the issue's point "10,000 tagged keys: ``set_many`` ≤ 2x the untagged one,
``invalidate_by_tag`` ≤ 0.1 s on a single server; bulk deletes chunked per slot on a cluster":

**set_many** of N entries (the 1 KiB value of ``bench/fixtures.py``, default N = 10,000) on
``CacheStack([MemoryLayer(), RedisLayer(client=...)])``: untagged, with 1 to 3 tags per key
(``bulk``, then ``group:<i % 10>``, then ``team:<i % 100>``; key i has ``1 + i % 3`` of them)
through ``RedisTagIndex`` and through ``InMemoryTagIndex``, and (``--per-key``) through the
same ``RedisTagIndex`` seen without ``record_many`` (one index round trip per key: what a tagged
``set_many`` cost before issue 10). The floor is raw redis-py: the same values JSON-encoded and
written with ``SET ... PX`` in one pipeline. Each measurement starts from an empty Redis and an
empty memory layer and times the ``set_many`` call alone.

**invalidate_by_tag("bulk")**, the tag every one of the N keys carries, after an untimed tagged
``set_many``: through ``RedisTagIndex``, through ``InMemoryTagIndex``, and through
``RedisTagIndex`` with the invalidation bus and a second stack whose memory layer holds all N
keys (the time until that peer's memory layer is empty is reported too), and through
``RedisTagIndex`` with ``RedisLayer(lease_ttl=None)`` (plain UNLINK instead of tombstones:
what the leases cost in an invalidation). The floor is raw
redis-py: ``UNLINK`` of the N value keys in batches of 500, pipelined. After each measurement,
untimed checks that every value is gone from both layers and that the index is empty.

Beside the wall time: this process's CPU time (``time.process_time``), the Redis server's CPU
time (``INFO cpu``, user + system, every node of a cluster summed) and the commands it ran
(``INFO commandstats`` calls, those a script runs included). On a shared, loaded machine the
wall times swing with the load; the CPU times and command counts much less.

The same ``set_many`` rows and the ``RedisTagIndex`` invalidation for ``SyncCacheStack`` on sync
clients (``--kinds``), and on a real three-master Redis Cluster (``--cluster``, on by default
when ``redis-cli`` is installed; keys spread over every node, the index in one slot).

The subjects of a table run interleaved, in an order rotated every round; figures are medians.

Goals: tagged / untagged ``set_many`` at most 2.0x (each index, each stack kind);
``invalidate_by_tag`` of 10,000 keys at most 0.1 s on a single server.

Starts its own ``redis-server`` (and cluster) on free 127.0.0.1 ports (never 6379).

Usage: ``python -m bench.tagged_writes [--quick] [--keys N] [--rounds R] [--kinds async,sync]
[--cluster | --no-cluster] [--per-key] [--json PATH]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.fixtures import ROOT, VALUE, VALUE_JSON, environment, redis_server

GOAL_RATIO = 2.0
GOAL_INVALIDATE = 0.1  # seconds, single server
TTL = 3600

FLOOR_SET = "raw redis-py: pipeline SET PX (floor)"
UNTAGGED = "set_many, untagged"
TAGGED = "set_many, 1-3 tags, RedisTagIndex"
TAGGED_MEMORY = "set_many, 1-3 tags, InMemoryTagIndex"
PER_KEY = "set_many, 1-3 tags, one record per key (before issue 10)"

FLOOR_DELETE = "raw redis-py: UNLINK in batches of 500 (floor)"
INVALIDATE = "invalidate_by_tag, RedisTagIndex"
INVALIDATE_MEMORY = "invalidate_by_tag, InMemoryTagIndex"
INVALIDATE_NO_LEASES = "invalidate_by_tag, RedisTagIndex, RedisLayer(lease_ttl=None)"
INVALIDATE_BUS = "invalidate_by_tag, RedisTagIndex + bus, 2 stacks"
PEER_EMPTY = "  the peer's memory layer empty after"
SWEEP = "  then the index's sweep of the expired entries: cleanup() (not part of the call)"
SET_AFTER = "  or instead: tagged set_many of the keys again (its records sweep them)"

TAG = "bulk"
VALUE_PREFIX = "bench:v:"


def tags_of(i: int) -> list[str]:
    """Key i's tags: 1 to 3, every key has ``bulk``."""
    return [TAG, f"group:{i % 10}", f"team:{i % 100}"][: 1 + i % 3]


@dataclass
class Row:
    """One measured subject: seconds per call, and what the server did (per call, median)."""

    table: str
    kind: str
    name: str
    samples: list[float] = field(default_factory=list)
    client_cpu: list[float] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)
    commands: list[int] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


class PerKeyIndex:
    """The same index seen without ``record_many``: the stack falls back to ``record`` per key
    (what a tagged ``set_many`` cost before the batched call existed)."""

    def __init__(self, index: Any) -> None:
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
    return [CacheEntry(f"item:{i}", VALUE, {"tags": tags_of(i)}) for i in range(keys)]


def _stats(info: dict[str, Any]) -> tuple[int, float]:
    """Commands run so far (those inside scripts too, INFO itself not), and the server's CPU
    seconds (user + system), from one ``INFO commandstats cpu`` reply."""
    calls = 0
    for name, values in info.items():
        if name.startswith("cmdstat_") and "config" not in name and "info" not in name:
            calls += int(values["calls"])
    return calls, float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _keep(
    row: Row, before: tuple[int, float], after: tuple[int, float], wall: float, cpu: float
) -> None:
    row.samples.append(wall)
    row.client_cpu.append(cpu)
    row.commands.append(after[0] - before[0])
    row.server_cpu.append(after[1] - before[1])


# -- async ------------------------------------------------------------------------------------


class AsyncSubjects:
    """Stacks on one client (a server or a cluster): every subject of both tables."""

    def __init__(self, client: Any, flush: Callable[[], Awaitable[None]], keys: int) -> None:
        from redis.asyncio.cluster import RedisCluster

        from layercache import (
            CacheStack,
            InMemoryTagIndex,
            MemoryLayer,
            RedisLayer,
            RedisTagIndex,
        )

        self.client = client
        self.is_cluster = isinstance(client, RedisCluster)
        self.flush = flush
        self.keys = keys
        self.names = [f"item:{i}" for i in range(keys)]
        self.raw_names = [f"{VALUE_PREFIX}item:{i}".encode() for i in range(keys)]
        self.index = RedisTagIndex(client, prefix="bench:tags")
        self.memory_index = InMemoryTagIndex(max_keys=keys * 2)
        self.l1: list[Any] = []
        self.stacks: list[Any] = []

        def stack(index: Any, **kwargs: Any) -> Any:
            memory = MemoryLayer(ttl=TTL, max_size=keys * 2)
            layer = RedisLayer(
                client=client, prefix=VALUE_PREFIX, ttl=TTL, **kwargs.pop("layer", {})
            )
            made = CacheStack([memory, layer], tag_index=index, **kwargs)
            self.l1.append(memory)
            self.stacks.append(made)
            return made, memory

        self.redis_stack, self.redis_l1 = stack(self.index)
        self.memory_stack, self.memory_l1 = stack(self.memory_index)
        self.per_key_stack, self.per_key_l1 = stack(PerKeyIndex(self.index))
        # Deletes without tombstones (plain UNLINK): what the leases cost in an invalidation.
        self.unleased_stack, self.unleased_l1 = stack(self.index, layer={"lease_ttl": None})
        self.plain = entries(keys, tagged=False)
        self.tagged = entries(keys, tagged=True)
        self.bus_pair: list[tuple[Any, Any]] = []

    async def with_bus(self) -> None:
        """Two more stacks sharing the RedisTagIndex, with the invalidation bus."""
        from layercache import CacheStack, MemoryLayer, RedisInvalidationBus, RedisLayer

        for _ in range(2):
            memory = MemoryLayer(ttl=TTL, max_size=self.keys * 2)
            made = CacheStack(
                [memory, RedisLayer(client=self.client, prefix=VALUE_PREFIX, ttl=TTL)],
                tag_index=self.index,
                invalidation_bus=RedisInvalidationBus(
                    publisher=self.client, channel="bench:invalidation"
                ),
                # Writes are not announced (a peer dropping what it just read would race the
                # setup); invalidations always are.
                broadcast_l1_invalidation=False,
            )
            await made.start()
            self.l1.append(memory)
            self.stacks.append(made)
            self.bus_pair.append((made, memory))

    async def reset(self) -> None:
        await self.flush()
        for layer in self.l1:
            layer.clear()
        self.memory_index.clear()

    async def server_stats(self) -> tuple[int, float]:
        """Commands run and server CPU seconds so far, every node summed."""
        if not self.is_cluster:
            return _stats(await self.client.info("commandstats", "cpu"))
        from redis.asyncio.cluster import RedisCluster

        per_node = await self.client.info(
            "commandstats", "cpu", target_nodes=RedisCluster.PRIMARIES
        )
        totals = [_stats(info) for info in per_node.values()]
        return sum(c for c, _ in totals), sum(u for _, u in totals)

    async def timed(self, row: Row, call: Callable[[], Awaitable[Any]], keep: bool) -> None:
        before = await self.server_stats()
        cpu = time.process_time()
        started = time.perf_counter()
        await call()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
        after = await self.server_stats()
        if keep:
            _keep(row, before, after, elapsed, cpu)

    # set_many subjects

    async def floor_set(self) -> None:
        pipe = self.client.pipeline(transaction=False)
        for name in self.raw_names:
            pipe.execute_command("SET", name, json.dumps(VALUE), "PX", TTL * 1000)
        await pipe.execute()

    async def check_written(self, name: str) -> None:
        size = await self.index.size()
        expected = self.keys if name in (TAGGED, PER_KEY) else 0
        assert size == expected, (name, size)
        if name == TAGGED_MEMORY:
            assert len(self.memory_index) == self.keys
        got = await self.client.get(self.raw_names[-1])
        assert got is not None, name

    # invalidate subjects (set up untimed)

    async def floor_delete(self) -> None:
        if self.is_cluster:
            # Keys of different slots cannot share an UNLINK: redis-py splits each batch per
            # slot itself (and sends the parts to each node pipelined).
            for start in range(0, self.keys, 500):
                await self.client.unlink(*self.raw_names[start : start + 500])
            return
        pipe = self.client.pipeline(transaction=False)
        for start in range(0, self.keys, 500):
            pipe.execute_command("UNLINK", *self.raw_names[start : start + 500])
        await pipe.execute()

    async def check_gone(self, layers: Sequence[Any]) -> None:
        for layer in layers:
            assert layer.size() == 0, layer
        # The invalidated tag lists no key at once; the keys' other entries are expired, and
        # the index is empty once the sweep (cleanup(), run by the caller) forgot them.
        assert await self.index.keys_for_tags([TAG]) == set()
        assert await self.index.size() == 0
        assert len(self.memory_index) == 0
        sample = self.raw_names[:: max(1, self.keys // 50)]
        values = await asyncio.gather(*(self.client.get(name) for name in sample))
        # With leases on (the default) a deleted key holds a tombstone, never the JSON value.
        assert all(v is None or not v.startswith(VALUE_JSON[:8]) for v in values), values[:3]

    async def close(self) -> None:
        for made in self.stacks:
            await made.aclose()


async def _measure_async(
    client: Any,
    flush: Callable[[], Awaitable[None]],
    kind: str,
    keys: int,
    rounds: int,
    per_key: bool,
    bus: bool,
) -> list[Row]:
    s = AsyncSubjects(client, flush, keys)
    if bus:
        await s.with_bus()
    set_rows: list[tuple[Row, Callable[[], Awaitable[Any]]]] = [
        (Row("set_many", kind, FLOOR_SET), s.floor_set),
        (Row("set_many", kind, UNTAGGED), lambda: s.redis_stack.set_many(s.plain)),
        (Row("set_many", kind, TAGGED), lambda: s.redis_stack.set_many(s.tagged)),
        (Row("set_many", kind, TAGGED_MEMORY), lambda: s.memory_stack.set_many(s.tagged)),
    ]
    if per_key:
        set_rows.append(
            (Row("set_many", kind, PER_KEY), lambda: s.per_key_stack.set_many(s.tagged))
        )
    peer_row = Row("invalidate", kind, PEER_EMPTY)
    sweep_row = Row("invalidate", kind, SWEEP)
    set_after_row = Row("invalidate", kind, SET_AFTER)

    async def setup_floor() -> None:
        await s.redis_stack.set_many(s.tagged)

    async def via_bus() -> None:
        (publisher, _), (_, peer_l1) = s.bus_pair
        started = time.perf_counter()
        await publisher.invalidate_by_tag(TAG)
        deadline = time.perf_counter() + 10
        while peer_l1.size():
            assert time.perf_counter() < deadline, "the peer's memory layer was not emptied"
            await asyncio.sleep(0.0005)
        peer_row.samples.append(time.perf_counter() - started)

    async def setup_bus() -> None:
        (publisher, _), (peer, peer_l1) = s.bus_pair
        await publisher.set_many(s.tagged)
        await peer.get_many(s.names)  # fills the peer's memory layer from Redis
        assert peer_l1.size() == keys

    invalidate_rows: list[
        tuple[Row, Callable[[], Awaitable[Any]], Callable[[], Awaitable[Any]], list[Any]]
    ] = [
        (Row("invalidate", kind, FLOOR_DELETE), setup_floor, s.floor_delete, []),
        (
            Row("invalidate", kind, INVALIDATE),
            lambda: s.redis_stack.set_many(s.tagged),
            lambda: s.redis_stack.invalidate_by_tag(TAG),
            [s.redis_l1],
        ),
        (
            Row("invalidate", kind, INVALIDATE_MEMORY),
            lambda: s.memory_stack.set_many(s.tagged),
            lambda: s.memory_stack.invalidate_by_tag(TAG),
            [s.memory_l1],
        ),
        (
            Row("invalidate", kind, INVALIDATE_NO_LEASES),
            lambda: s.unleased_stack.set_many(s.tagged),
            lambda: s.unleased_stack.invalidate_by_tag(TAG),
            [s.unleased_l1],
        ),
    ]
    if bus:
        invalidate_rows.append(
            (
                Row("invalidate", kind, INVALIDATE_BUS),
                setup_bus,
                via_bus,
                [memory for _, memory in s.bus_pair],
            )
        )
    try:
        for round_ in range(rounds + 1):  # round 0 warms up (connections, scripts)
            shift = round_ % len(set_rows)
            for row, call in set_rows[shift:] + set_rows[:shift]:
                await s.reset()
                await s.timed(row, call, keep=round_ > 0)
                await s.check_written(row.name)
            shift = round_ % len(invalidate_rows)
            for row, setup, call, layers in invalidate_rows[shift:] + invalidate_rows[:shift]:
                await s.reset()
                await setup()
                await s.timed(row, call, keep=round_ > 0)
                if row.name == INVALIDATE and round_ % 2 == 1:
                    # What the invalidation left to the index's sweep, when a write does it:
                    # the same 10,000 keys written again, their records sweeping the expired
                    # entries on the way (odd rounds; even rounds time cleanup() instead).
                    await s.timed(set_after_row, lambda: s.redis_stack.set_many(s.tagged), True)
                    assert await s.index.size() == keys
                    await s.reset()
                    continue
                if row.name not in (FLOOR_DELETE, INVALIDATE_MEMORY):
                    # The expired entries, forgotten by the sweep (timed after the call).
                    await s.timed(sweep_row, s.index.cleanup, keep=row.name == INVALIDATE)
                if row.name != FLOOR_DELETE:
                    await s.check_gone(layers)
            if round_ == 0:
                peer_row.samples.clear()
                set_after_row.samples.clear()
                sweep_row.samples.clear()
    finally:
        await s.close()
    rows = [row for row, _ in set_rows] + [row for row, _, _, _ in invalidate_rows]
    return [*rows, sweep_row, set_after_row, *([peer_row] if bus else [])]


def _run_async_server(url: str, keys: int, rounds: int, per_key: bool) -> list[Row]:
    async def go() -> list[Row]:
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(url)
        try:
            return await _measure_async(
                client, client.flushdb, "async", keys, rounds, per_key, bus=True
            )
        finally:
            await client.aclose()

    return asyncio.run(go())


def _run_async_cluster(cluster: Any, keys: int, rounds: int) -> list[Row]:
    async def go() -> list[Row]:
        client = cluster.async_client()
        await client.initialize()

        async def flush() -> None:
            cluster.flushall()

        try:
            return await _measure_async(
                client, flush, "cluster", keys, rounds, per_key=False, bus=False
            )
        finally:
            await client.aclose()

    return asyncio.run(go())


# -- sync -------------------------------------------------------------------------------------


def _measure_sync(url: str, keys: int, rounds: int, per_key: bool) -> list[Row]:
    import redis

    from layercache import InMemoryTagIndex, MemoryLayer, RedisLayer, RedisTagIndex, SyncCacheStack

    client = redis.Redis.from_url(url)
    index: Any = RedisTagIndex(client, prefix="bench:tags")
    memory_index = InMemoryTagIndex(max_keys=keys * 2)
    layers: list[Any] = []
    stacks: list[Any] = []

    def stack(tag_index: Any) -> Any:
        memory = MemoryLayer(ttl=TTL, max_size=keys * 2)
        layers.append(memory)
        made = SyncCacheStack(
            [memory, RedisLayer(client=client, prefix=VALUE_PREFIX, ttl=TTL)], tag_index=tag_index
        )
        stacks.append(made)
        return made

    redis_stack = stack(index)
    memory_stack = stack(memory_index)
    per_key_stack = stack(PerKeyIndex(index))
    plain, tagged = entries(keys, tagged=False), entries(keys, tagged=True)
    raw_names = [f"{VALUE_PREFIX}item:{i}".encode() for i in range(keys)]

    def floor_set() -> None:
        pipe = client.pipeline(transaction=False)
        for name in raw_names:
            pipe.execute_command("SET", name, json.dumps(VALUE), "PX", TTL * 1000)
        pipe.execute()

    set_rows: list[tuple[Row, Callable[[], Any]]] = [
        (Row("set_many", "sync", FLOOR_SET), floor_set),
        (Row("set_many", "sync", UNTAGGED), lambda: redis_stack.set_many(plain)),
        (Row("set_many", "sync", TAGGED), lambda: redis_stack.set_many(tagged)),
        (Row("set_many", "sync", TAGGED_MEMORY), lambda: memory_stack.set_many(tagged)),
    ]
    if per_key:
        set_rows.append((Row("set_many", "sync", PER_KEY), lambda: per_key_stack.set_many(tagged)))
    invalidate = Row("invalidate", "sync", INVALIDATE)
    sweep = Row("invalidate", "sync", SWEEP)

    def reset() -> None:
        client.flushdb()
        for layer in layers:
            layer.clear()
        memory_index.clear()

    def timed(row: Row, call: Callable[[], Any], keep: bool) -> None:
        before = _stats(client.info("commandstats", "cpu"))
        cpu = time.process_time()
        started = time.perf_counter()
        call()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
        after = _stats(client.info("commandstats", "cpu"))
        if keep:
            _keep(row, before, after, elapsed, cpu)

    try:
        for round_ in range(rounds + 1):
            shift = round_ % len(set_rows)
            for row, call in set_rows[shift:] + set_rows[:shift]:
                reset()
                timed(row, call, keep=round_ > 0)
                expected = keys if row.name in (TAGGED, PER_KEY) else 0
                assert index.size() == expected, row.name
            reset()
            redis_stack.set_many(tagged)
            timed(invalidate, lambda: redis_stack.invalidate_by_tag(TAG), keep=round_ > 0)
            assert index.keys_for_tags([TAG]) == set()
            timed(sweep, index.cleanup, keep=round_ > 0)
            assert index.size() == 0
            assert layers[0].size() == 0
    finally:
        for made in stacks:
            made.close()
        client.close()
    return [row for row, _ in set_rows] + [invalidate, sweep]


# -- the cluster --------------------------------------------------------------------------------


@contextlib.contextmanager
def redis_cluster() -> Iterator[Any]:
    """A throwaway three-master Redis Cluster (``tests/_redis_server.py``), stopped on exit."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from _redis_server import RedisCluster3  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    cluster = RedisCluster3.launch()
    try:
        yield cluster
    finally:
        cluster.stop()


# -- report -------------------------------------------------------------------------------------


def _by(rows: Sequence[Row], kind: str, name: str) -> Row | None:
    return next((r for r in rows if r.kind == kind and r.name == name), None)


def ratios(rows: Sequence[Row]) -> dict[str, dict[str, float]]:
    """Per stack kind: tagged / untagged ``set_many`` (each index), the per-key fallback /
    untagged, and the invalidation in seconds and against the raw UNLINK floor."""
    out: dict[str, dict[str, float]] = {}
    for kind in dict.fromkeys(r.kind for r in rows):
        values: dict[str, float] = {}
        untagged = _by(rows, kind, UNTAGGED)
        for key, name in (
            ("tagged_vs_untagged", TAGGED),
            ("tagged_memory_index_vs_untagged", TAGGED_MEMORY),
            ("per_key_vs_untagged", PER_KEY),
            ("untagged_vs_floor", UNTAGGED),
        ):
            row = _by(rows, kind, name)
            base = _by(rows, kind, FLOOR_SET) if key == "untagged_vs_floor" else untagged
            if row is not None and base is not None and row.samples and base.samples:
                values[key] = row.median / base.median
        floor = _by(rows, kind, FLOOR_DELETE)
        for key, name in (
            ("invalidate_s", INVALIDATE),
            ("invalidate_memory_index_s", INVALIDATE_MEMORY),
            ("invalidate_no_leases_s", INVALIDATE_NO_LEASES),
            ("invalidate_bus_s", INVALIDATE_BUS),
            ("peer_empty_s", PEER_EMPTY),
        ):
            row = _by(rows, kind, name)
            if row is not None and row.samples:
                values[key] = row.median
                if floor is not None and floor.samples and name != PEER_EMPTY:
                    values[key.replace("_s", "_vs_floor")] = row.median / floor.median
        out[kind] = values
    return out


def _ms(seconds: Sequence[float]) -> str:
    return f"{statistics.median(seconds) * 1e3:.1f}" if seconds else ""


def report(rows: Sequence[Row], keys: int, rounds: int) -> list[str]:
    """Markdown tables of one run."""
    lines: list[str] = []
    titles = {
        "set_many": f"### set_many of {keys:,} keys, memory + Redis",
        "invalidate": f"### invalidate_by_tag of a tag on {keys:,} keys, memory + Redis",
    }
    for table in ("set_many", "invalidate"):
        chosen = [r for r in rows if r.table == table and r.samples]
        if not chosen:
            continue
        floor_name = FLOOR_SET if table == "set_many" else FLOOR_DELETE
        lines += [
            f"{titles[table]} (median of {rounds} rounds)",
            "",
            "| stack | subject | ms | min … max | x floor | client CPU ms | server CPU ms "
            "| commands run |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in chosen:
            floor = _by(rows, row.kind, floor_name)
            relative = floor and floor.samples and row.name not in (SWEEP, SET_AFTER)
            versus = f"{row.median / floor.median:.2f}" if relative else ""
            client = _ms(row.client_cpu)
            server = _ms(row.server_cpu)
            commands = f"{statistics.median(row.commands):,.0f}" if row.commands else ""
            lines.append(
                f"| {row.kind} | {row.name} | {row.median * 1e3:.1f} | "
                f"{min(row.samples) * 1e3:.1f} … {max(row.samples) * 1e3:.1f} | {versus} | "
                f"{client} | {server} | {commands} |"
            )
        lines.append("")
    lines += ["### Goals", "", "| figure | measured | goal | |", "| --- | ---: | ---: | --- |"]
    for kind, values in ratios(rows).items():
        for key, label in (
            ("tagged_vs_untagged", "tagged (RedisTagIndex) / untagged set_many"),
            ("tagged_memory_index_vs_untagged", "tagged (InMemoryTagIndex) / untagged set_many"),
        ):
            if key in values:
                ratio = values[key]
                lines.append(
                    f"| {kind}: {label} | {ratio:.2f} | ≤ {GOAL_RATIO:.1f} "
                    f"| {'met' if ratio <= GOAL_RATIO else 'MISSED'} |"
                )
        for key, label in (
            ("invalidate_s", "invalidate_by_tag, RedisTagIndex"),
            ("invalidate_memory_index_s", "invalidate_by_tag, InMemoryTagIndex"),
            ("invalidate_no_leases_s", "invalidate_by_tag, RedisTagIndex, no leases"),
            ("invalidate_bus_s", "invalidate_by_tag, RedisTagIndex + bus"),
        ):
            if key not in values:
                continue
            seconds = values[key]
            if kind == "cluster":
                verdict, goal = "(no goal on a cluster)", "—"
            else:
                verdict = "met" if seconds <= GOAL_INVALIDATE else "MISSED"
                goal = f"≤ {GOAL_INVALIDATE * 1e3:.0f} ms"
            lines.append(f"| {kind}: {label} | {seconds * 1e3:.1f} ms | {goal} | {verdict} |")
    return [*lines, ""]


def run(keys: int, rounds: int, kinds: Sequence[str], cluster: bool, per_key: bool) -> list[Row]:
    """Start a throwaway redis-server (and cluster) and measure every requested kind."""
    rows: list[Row] = []
    with redis_server() as server:
        url = f"redis://{server.host}:{server.port}/0"
        if "async" in kinds:
            rows += _run_async_server(url, keys, rounds, per_key)
        if "sync" in kinds:
            rows += _measure_sync(url, keys, rounds, per_key)
    if cluster:
        with redis_cluster() as nodes:
            rows += _run_async_cluster(nodes, keys, rounds)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print Markdown tables (exit 0 even when a goal is missed)."""
    parser = argparse.ArgumentParser(prog="python -m bench.tagged_writes", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1,000 keys, 2 rounds (smoke)")
    parser.add_argument("--keys", type=int, help="keys per set_many (default 10,000)")
    parser.add_argument("--rounds", type=int, help="measured rounds (default 5)")
    parser.add_argument("--kinds", default="async,sync", help="async, sync or both")
    parser.add_argument(
        "--cluster",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also measure on a three-master cluster (default: when redis-cli is installed)",
    )
    parser.add_argument(
        "--per-key", action="store_true", help="also the one-record-per-key fallback (slow)"
    )
    parser.add_argument("--json", type=Path, help="also write the rows and ratios as JSON here")
    args = parser.parse_args(argv)
    keys = args.keys or (1_000 if args.quick else 10_000)
    rounds = args.rounds or (2 if args.quick else 5)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if set(kinds) - {"async", "sync"}:
        parser.error("--kinds takes async, sync or async,sync")
    cluster = args.cluster
    if cluster is None:
        cluster = shutil.which("redis-cli") is not None and not args.quick
    rows = run(keys, rounds, kinds, cluster, args.per_key)
    print("\n".join(report(rows, keys, rounds)))
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "keys": keys,
                    "rounds": rounds,
                    "ratios": ratios(rows),
                    "rows_ms": {
                        f"{r.kind}: {r.name.strip()}": r.median * 1e3 for r in rows if r.samples
                    },
                    "client_cpu_ms": {
                        f"{r.kind}: {r.name.strip()}": statistics.median(r.client_cpu) * 1e3
                        for r in rows
                        if r.client_cpu
                    },
                    "server_cpu_ms": {
                        f"{r.kind}: {r.name.strip()}": statistics.median(r.server_cpu) * 1e3
                        for r in rows
                        if r.server_cpu
                    },
                    "commands": {
                        f"{r.kind}: {r.name.strip()}": statistics.median(r.commands)
                        for r in rows
                        if r.commands
                    },
                    "environment": environment(),
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
