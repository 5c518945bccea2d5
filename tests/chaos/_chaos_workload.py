"""The multi-instance workload of the chaos suite: instances built as docs/distributed.md
recommends, random operations over a small key space, recovery checks and the final audit.

Used by test_consistency.py (TCP cuts) and test_kill_restart.py (Redis SIGKILLed); the origin
model and the staleness rule are in ``_chaos_support``.

Every instance is docs/distributed.md's ``make_client`` + ``build_cache``: its own
``redis.asyncio`` client (short timeouts, one quick retry), ``MemoryLayer`` + ``RedisLayer``,
``RedisSingleFlightCoordinator``, a signed ``RedisInvalidationBus`` with its own ``source_id``
and ``broadcast_l1_invalidation=True``, ``RedisTagIndex`` (16 shards, ``key_ttl``), graceful
degradation, ``generation=1`` with cleanup. Only the timings are scaled down (each is noted
with the doc's value): a run lasts seconds, and the doc's ``retry_after=5`` or 5 s health
check would leave it one fault long.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from _chaos_support import Origin, Raised, Read, Stale, Window, describe, raised
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from layercache import (
    CacheEntry,
    CacheEntryRequest,
    CacheStack,
    LayerCacheError,
    MemoryLayer,
    RedisInvalidationBus,
    RedisLayer,
    RedisSingleFlightCoordinator,
    RedisTagIndex,
)

APP = "chaos"
SECRET = "chaos-suite-signing-secret-0123456789abcdef"
KEYS = [f"k:{i:02d}" for i in range(40)]
TAGS = [f"t{i}" for i in range(5)]
GRACE = 0.5  # a change must be visible everywhere this long after it returned
SETTLE = 0.5  # settled periods start this long after every instance recovered
RECOVERY_BOUND = 10.0  # longest wait for every instance to recover after a fault
FOCUS = 6  # keys that single-key changes pick from at a time
INDEX_WATCH = 0.25  # seconds between two looks of the index watch

SOCKET_TIMEOUT = 0.5  # doc: 1.0
RETRY_AFTER = 0.5  # doc: 5
BUS_TIMEOUT = 1.0  # doc: the bus default, 5
HEALTH_CHECK = 0.25  # doc: the bus default, 5
BUS_BACKOFF = (0.05, 0.5)  # doc: the bus default, (0.05, 5.0)
# A holder cut off before its release leaves its lock until the lease ends, and every miss of
# that key elsewhere waits single_flight_timeout meanwhile (documented); with the doc's 30 s /
# 5 s one cut stalls a hot key's readers 5 s at a time and a short run judges few reads.
SINGLE_FLIGHT_LEASE = 3.0  # doc: 30
SINGLE_FLIGHT_TIMEOUT = 1.0  # doc: 5


def tags_of(key: str) -> list[str]:
    """Each key carries one or two of the five tags, fixed for the run (tags belong to the
    value, and every write of a key gives the same tags)."""
    i = int(key[2:])
    return sorted({TAGS[i % 5], TAGS[(i // 8) % 5]})


def keys_with(tags: Sequence[str], mode: str) -> list[str]:
    wanted = set(tags)
    if mode == "all":
        return [k for k in KEYS if wanted.issubset(tags_of(k))]
    return [k for k in KEYS if wanted.intersection(tags_of(k))]


def matching(pattern: str) -> list[str]:
    """The model's side of a glob (the workload's patterns use only ``*`` and ``?``, where
    ``fnmatch`` and the library's globs agree)."""
    return [k for k in KEYS if fnmatch.fnmatchcase(k, pattern)]


# -- one instance -------------------------------------------------------------------------------


@dataclass
class Instance:
    index: int
    client: Any
    cache: CacheStack
    bus: RedisInvalidationBus
    errors: int = 0  # ``error`` events (reported, not raised)

    def recovered(self) -> bool:
        """Bus subscribed, no degraded layer, the tag index back, nothing left unsent.

        The last two have no public accessor: they are read from the stack's collaborators
        (the writer's tag keeper, the announcer). A renamed internal fails the test here
        rather than counting as recovered: before, the names of the stack as it was before
        its split (``_tags_down_until``, ``_unsent``) no longer existed, and every settled
        period began without waiting for the tag index or the kept announcements."""
        stack = self.cache
        if not self.bus.is_subscribed:
            return False
        if any(layer.degraded_until is not None for layer in stack.get_stats().layers):
            return False
        if stack._writer.tags.down:
            return False
        return not stack._announcer.pending()


def build_instance(index: int, url: str) -> Instance:
    """docs/distributed.md's ``make_client`` + ``build_cache`` on ``url``, timings scaled."""
    client = aioredis.Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=SOCKET_TIMEOUT,
        retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), retries=1),
    )
    bus = RedisInvalidationBus(
        publisher=client,
        channel=f"{APP}:invalidation",
        signing_secret=SECRET,
        source_id=f"{APP}-instance-{index}",
        timeout=BUS_TIMEOUT,
        health_check_interval=HEALTH_CHECK,
        reconnect_backoff=BUS_BACKOFF,
    )
    cache = CacheStack(
        [
            MemoryLayer(ttl=60, max_size=10_000),
            RedisLayer(client=client, prefix=f"{APP}:cache:", ttl=3600),
        ],
        single_flight_coordinator=RedisSingleFlightCoordinator(
            client=client, prefix=f"{APP}:singleflight"
        ),
        single_flight_lease=SINGLE_FLIGHT_LEASE,
        single_flight_timeout=SINGLE_FLIGHT_TIMEOUT,
        invalidation_bus=bus,
        broadcast_l1_invalidation=True,
        tag_index=RedisTagIndex(
            client=client, prefix=f"{APP}:tag-index", known_keys_shards=16, key_ttl=3600
        ),
        graceful_degradation={"retry_after": RETRY_AFTER},
        generation=1,
        generation_cleanup={"batch_size": 500},
    )
    instance = Instance(index, client, cache, bus)

    def on_error(_event: dict[str, Any]) -> None:
        instance.errors += 1

    cache.on("error", on_error)
    return instance


@contextlib.asynccontextmanager
async def running(instances: Sequence[Instance]) -> AsyncIterator[None]:
    """Every instance entered (``async with cache``), then closed with its client."""
    try:
        async with contextlib.AsyncExitStack() as entered:
            for inst in instances:
                await entered.enter_async_context(inst.cache)
            yield
    finally:
        for inst in instances:
            await inst.client.aclose()


# -- the run ------------------------------------------------------------------------------------


class KeyLocks:
    """The origin's row locks: changes of one key are serialized (taken in key order)."""

    def __init__(self) -> None:
        self._locks = {key: asyncio.Lock() for key in KEYS}

    @contextlib.asynccontextmanager
    async def hold(self, keys: Sequence[str]) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for key in sorted(set(keys)):
                await stack.enter_async_context(self._locks[key])
            yield


@dataclass
class Run:
    """One run's state: origin, instances, every read, what raised, the settled windows."""

    instances: list[Instance]
    origin: Origin = field(default_factory=lambda: Origin(KEYS))
    locks: KeyLocks = field(default_factory=KeyLocks)
    t0: float = field(default_factory=time.monotonic)
    reads: list[Read] = field(default_factory=list)
    raised: list[Raised] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    ops: int = 0
    windows: list[Window] = field(default_factory=list)
    recovery_times: list[float] = field(default_factory=list)
    recovery_misses: int = 0
    stopped: float = 0.0
    slowest: tuple[float, str] = (0.0, "-")
    audit: Window | None = None
    unindexed: list[str] = field(default_factory=list)
    # Start of the settled period under way (None during faults); set by the fault schedule.
    settled_from: float | None = None
    # Half the single-key changes go to a few keys at a time, and the focus moves on now and
    # then: a race that leaves an old value behind is then not papered over by the next change
    # of the key, and the reads that follow find it (70% of the reads go to the focus).
    focus: list[str] = field(default_factory=lambda: KEYS[:FOCUS])
    # Origin-read time of a fetched value -> (fetching instance, when the fetch returned).
    fetch_log: dict[float, tuple[int, float]] = field(default_factory=dict)
    # Faults, for the diagnosis: (began, ended, what), ended = inf while running.
    faults: list[tuple[float, float, str]] = field(default_factory=list)
    # Per key: changes under way now, and changes begun so far (the index watch leaves out
    # keys that a change touched while it looked: see IndexWatch).
    under_way: Counter[str] = field(default_factory=Counter)
    begun: Counter[str] = field(default_factory=Counter)

    def read_key(self, rng: random.Random) -> str:
        return rng.choice(self.focus if rng.random() < 0.7 else KEYS)

    def change_keys(self, rng: random.Random, count: int) -> list[str]:
        """Keys for a single-key change (or a small bulk one): half the time among the focus,
        otherwise anywhere (a key changed rarely keeps a wrong value long enough to be read)."""
        return rng.sample(self.focus if rng.random() < 0.5 else KEYS, count)

    def fetcher(
        self, key: str, instance: int, rng: random.Random
    ) -> Callable[[], Awaitable[dict[str, Any]]]:
        """The origin read of ``key``: a short delay, the read, then the query's own latency
        (5% of the time long, so that changes land while fetches are in flight). Each fetch
        is logged by its origin-read time (``"r"``, unique), for the diagnosis of a stale
        read: who fetched the value, and when the fetch handed it to the stack."""

        async def fetch() -> dict[str, Any]:
            await asyncio.sleep(rng.uniform(0, 0.002))
            value = self.origin.value(key)
            slow = rng.random() < 0.05
            await asyncio.sleep(rng.uniform(0.1, 0.5) if slow else rng.uniform(0, 0.01))
            self.fetch_log[value["r"]] = (instance, time.monotonic())
            return value

        return fetch

    def got(self, key: str, instance: int, started: float, value: Any) -> None:
        ended = time.monotonic()
        if not isinstance(value, dict) or value.get("k") != key:
            self.wrong.append(f"{key} on instance {instance}: got {value!r}")
            return
        self.reads.append(Read(key, instance, started, ended, int(value["v"]), value["r"]))

    @contextlib.asynccontextmanager
    async def change(self, keys: Sequence[str], op: str, instance: int) -> AsyncIterator[None]:
        """Change ``keys`` at the origin, then let the body tell the cache; record when the
        cache call returned (``inf`` if it raised)."""
        async with self.locks.hold(keys):
            touched = set(keys)
            self.under_way.update(touched)
            self.begun.update(touched)
            began = self.origin.bump(keys)
            returned = float("inf")
            try:
                yield
                returned = time.monotonic()
            finally:
                self.under_way.subtract(touched)
                self.origin.record(keys, op, instance, began, returned)

    def quiet_since(self, mark: tuple[set[str], Counter[str]]) -> Callable[[str], bool]:
        """Whether a key saw no change from ``mark`` (:meth:`change_mark`) until now: none
        under way then or now, none begun in between."""
        busy, begun = mark
        return lambda key: (
            key not in busy and self.under_way[key] <= 0 and self.begun[key] == begun[key]
        )

    def change_mark(self) -> tuple[set[str], Counter[str]]:
        """The keys being changed now, and how many changes each key has begun."""
        return {key for key, n in self.under_way.items() if n > 0}, Counter(self.begun)

    def explain(self, stale: Stale) -> str:
        """A stale read in words, with who fetched the value and the faults around it."""
        read, t0 = stale.read, self.t0
        text = describe(stale, t0)
        fetched = self.fetch_log.get(read.read_at)
        if fetched is None:
            text += "; the value was written by a set (no fetch)"
        else:
            text += f"; fetched by instance {fetched[0]}, fetch returned {fetched[1] - t0:.3f}s"
        history = self.origin.history[read.key]
        earlier = [c for c in history if 0 < c.version <= stale.missed.version][-4:]
        text += "; its changes: " + ", ".join(
            f"v{c.version} {c.op} by instance {c.instance} {c.began - t0:.3f}-"
            f"{c.returned - t0:.3f}s"
            for c in earlier
        )
        low, high = stale.missed.began - 2.0, read.started
        near = [
            f"{what} {began - t0:.2f}-{ended - t0:.2f}s"
            for began, ended, what in self.faults
            if began <= high and ended >= low
        ]
        return text + "; faults nearby: " + (", ".join(near) if near else "none")

    def story(self, key: str) -> str:
        """The last changes of ``key`` and the faults of the last 3 s (for a diagnosis)."""
        t0 = self.t0
        changes = ", ".join(
            f"v{c.version} {c.op} by instance {c.instance} {c.began - t0:.3f}-"
            f"{c.returned - t0:.3f}s"
            for c in self.origin.history[key][-4:]
        )
        now = time.monotonic()
        faults = ", ".join(
            f"{what} {began - t0:.2f}-{ended - t0:.2f}s"
            for began, ended, what in self.faults
            if ended >= now - 3.0
        )
        return f"its last changes: {changes}; faults: {faults or 'none'} (t0={t0:.3f})"

    def settled(self) -> bool:
        """Whether a settled period is open now (see ``settled_from``)."""
        return self.settled_from is not None and time.monotonic() >= self.settled_from

    def all_recovered(self) -> bool:
        return all(inst.recovered() for inst in self.instances)

    async def wait_recovered(self) -> float:
        """Poll (bounded by ``RECOVERY_BOUND``) until every instance recovered; returns when.
        A miss is counted (and fails the test)."""
        began = time.monotonic()
        deadline = began + RECOVERY_BOUND
        while not self.all_recovered():
            if time.monotonic() > deadline:
                self.recovery_misses += 1
                break
            await asyncio.sleep(0.01)
        done = time.monotonic()
        self.recovery_times.append(done - began)
        return done


# -- operations ---------------------------------------------------------------------------------

Operation = Callable[[Run, Instance, random.Random], Awaitable[None]]


async def op_get(run: Run, inst: Instance, rng: random.Random) -> None:
    await read(run, inst, run.read_key(rng), rng)


async def read(run: Run, inst: Instance, key: str, rng: random.Random) -> None:
    started = time.monotonic()
    value = await inst.cache.get(key, run.fetcher(key, inst.index, rng), tags=tags_of(key))
    run.got(key, inst.index, started, value)


async def op_get_many(run: Run, inst: Instance, rng: random.Random) -> None:
    keys = list({run.read_key(rng) for _ in range(rng.randint(2, 4))})
    started = time.monotonic()
    values = await inst.cache.get_many(
        [CacheEntryRequest(k, run.fetcher(k, inst.index, rng), {"tags": tags_of(k)}) for k in keys]
    )
    for key, value in zip(keys, values, strict=True):
        run.got(key, inst.index, started, value)


async def op_set(run: Run, inst: Instance, rng: random.Random) -> None:
    (key,) = run.change_keys(rng, 1)
    async with run.change([key], "set", inst.index):
        await inst.cache.set(key, run.origin.value(key), tags=tags_of(key))


async def op_set_many(run: Run, inst: Instance, rng: random.Random) -> None:
    keys = run.change_keys(rng, rng.randint(2, 3))
    async with run.change(keys, "set_many", inst.index):
        await inst.cache.set_many(
            [CacheEntry(k, run.origin.value(k), {"tags": tags_of(k)}) for k in keys]
        )


async def op_delete(run: Run, inst: Instance, rng: random.Random) -> None:
    (key,) = run.change_keys(rng, 1)
    async with run.change([key], "delete", inst.index):
        await inst.cache.delete(key)


async def op_delete_many(run: Run, inst: Instance, rng: random.Random) -> None:
    keys = run.change_keys(rng, rng.randint(2, 3))
    async with run.change(keys, "delete_many", inst.index):
        await inst.cache.delete_many(keys)


async def op_tag(run: Run, inst: Instance, rng: random.Random) -> None:
    tag = rng.choice(TAGS)
    async with run.change(keys_with([tag], "any"), f"invalidate_by_tag({tag})", inst.index):
        await inst.cache.invalidate_by_tag(tag)


async def op_tags(run: Run, inst: Instance, rng: random.Random) -> None:
    tags = rng.sample(TAGS, 2)
    mode = rng.choice(["any", "all"])
    keys = keys_with(tags, mode)
    async with run.change(keys, f"invalidate_by_tags({tags}, {mode})", inst.index):
        await inst.cache.invalidate_by_tags(tags, mode=mode)


async def op_pattern(run: Run, inst: Instance, rng: random.Random) -> None:
    digit = rng.randrange(10)
    pattern = rng.choice([f"k:?{digit}", f"*{digit}", f"k:{digit % 4}*"])
    async with run.change(matching(pattern), f"invalidate_by_pattern({pattern})", inst.index):
        await inst.cache.invalidate_by_pattern(pattern)


async def op_prefix(run: Run, inst: Instance, rng: random.Random) -> None:
    prefix = f"k:{rng.randrange(4)}"
    async with run.change(matching(prefix + "*"), f"invalidate_by_prefix({prefix})", inst.index):
        await inst.cache.invalidate_by_prefix(prefix)


async def op_clear(run: Run, inst: Instance, rng: random.Random) -> None:
    async with run.change(KEYS, "clear", inst.index):
        await inst.cache.clear()


MIXED: list[tuple[Operation, float]] = [
    (op_get, 68),
    (op_get_many, 5),
    (op_set, 9),
    (op_set_many, 2),
    (op_delete, 6),
    (op_delete_many, 2),
    (op_tag, 3),
    (op_tags, 2),
    (op_pattern, 2.5),
    (op_prefix, 2),
    (op_clear, 0.15),
]
"""The consistency run's mix (weights): mostly reads, single-key changes on the focus, broad
invalidations now and then, a clear rarely."""


def before(deadline: float) -> Callable[[], bool]:
    """``going`` for :func:`worker`: until ``deadline``."""
    return lambda: time.monotonic() < deadline


async def worker(
    run: Run,
    inst: Instance,
    rng: random.Random,
    going: Callable[[], bool],
    operations: Sequence[tuple[Operation, float]] = MIXED,
    think: float = 0.004,
) -> None:
    """Random operations on ``inst`` while ``going()``; what raises is collected."""
    kinds = [op for op, _ in operations]
    weights = [w for _, w in operations]
    while going():
        op = rng.choices(kinds, weights)[0]
        run.ops += 1
        began = time.monotonic()
        try:
            await op(run, inst, rng)
        except Exception as exc:  # graceful degradation: none may raise; collected
            run.raised.append(raised(op.__name__[3:], inst.index, exc))
        took = time.monotonic() - began
        if took > run.slowest[0]:
            where = f"{op.__name__[3:]} on instance {inst.index} at {began - run.t0:.2f}s"
            run.slowest = (took, where)
        await asyncio.sleep(rng.uniform(0, think))  # the workload's think time


async def move_focus(run: Run, rng: random.Random, going: Callable[[], bool]) -> None:
    """Every 0.3-1.2 s, single-key changes move to other keys."""
    while going():
        await asyncio.sleep(rng.uniform(0.3, 1.2))
        run.focus = rng.sample(KEYS, FOCUS)


class IndexWatch:
    """The shared tag index checked against Redis, from a connection of its own.

    Invariant: a value Redis holds is listed in the index under every tag it carries, or a
    ``invalidate_by_tag`` (which resolves keys through the index) would leave it in place: a
    stale value that every later read serves. Two steps of a change leave a key unlisted for
    a moment, by design: a ``set`` writes the value and then records its tags, and every
    removal forgets the key in the index and then deletes its value. :meth:`watch` therefore
    reports only the same value (same ``stored_at`` and version) found unlisted twice,
    ``INDEX_WATCH`` apart, while a settled period is open (every instance recovered, no
    fault), **and** in looks during which no change of that key was under way. (Without the
    last condition one look could fall in a ``set_many``'s write-then-record moment and the
    next in the forget-then-delete moment of a later invalidation of the same value, which
    is not listed in the key's history yet when reported: a false finding, seen in CI as
    "k:33 v87 under neither tag" and reproduced with MONITOR.) :meth:`snapshot` alone is the
    final check, once nothing changes any more.

    Redis is read with a second ``RedisLayer`` on the same prefix (it hides the layer's own
    bookkeeping: tombstones, fences) and ``SMEMBERS`` of the tag sets.
    """

    def __init__(self, url: str) -> None:
        self.client = aioredis.Redis.from_url(url)
        self.layer = RedisLayer(client=self.client, prefix=f"{APP}:cache:")
        self.found: dict[tuple[str, str, float], str] = {}  # persistent violations

    async def snapshot(self) -> dict[tuple[str, str, float], str]:
        """``(key, tag, stored_at)`` -> description, for every value missing from a tag set."""
        stored = [f"v1:{key}" for key in KEYS]
        entries = await self.layer.get_many(stored)
        members = {
            tag: await self.client.smembers(f"{{{APP}:tag-index}}:tag:{tag}") for tag in TAGS
        }
        missing = {}
        for key, name, entry in zip(KEYS, stored, entries, strict=True):
            if entry is None:
                continue
            for tag in entry.tags:
                if name.encode() not in members.get(tag, set()):
                    value = entry.value if isinstance(entry.value, dict) else {}
                    missing[(key, tag, entry.stored_at)] = (
                        f"{key} (value v{value.get('v')} stored at wall {entry.stored_at:.3f}, "
                        f"origin read {value.get('r', 0.0):.3f}) not under {tag}"
                    )
        return missing

    async def watch(self, run: Run, going: Callable[[], bool]) -> None:
        before: dict[tuple[str, str, float], str] | None = None
        while going():
            await asyncio.sleep(INDEX_WATCH)
            if not run.settled():
                before = None
                continue
            mark = run.change_mark()
            try:
                now = await self.snapshot()
            except (LayerCacheError, RedisError, OSError):
                before = None  # the server went away meanwhile (a kill): look again later
                continue
            quiet = run.quiet_since(mark)
            now = {item: text for item, text in now.items() if quiet(item[0])}
            if before is not None and run.settled():
                for item, text in now.items():
                    if item in before and item not in self.found:
                        self.found[item] = f"{text} at {time.monotonic():.3f}: " + run.story(
                            item[0]
                        )
            before = now if run.settled() else None

    async def aclose(self) -> None:
        await self.layer.aclose()
        await self.client.aclose()


async def audit(run: Run, watch: IndexWatch) -> None:
    """After the run, once every instance recovered: check the tag index against Redis
    (:class:`IndexWatch`), then, ``SETTLE`` after the last change, read every key on every
    instance. Nothing changes any more, so an old value left behind by a race (in Redis or in
    an L1) is found even if the run's own reads missed it. The audit is the run's last
    settled window."""
    await run.wait_recovered()
    for text in (await watch.snapshot()).values():
        run.unindexed.append(f"{text} after the run")
    start = time.monotonic() + SETTLE
    await asyncio.sleep(SETTLE)  # the grace the rule gives the last changes
    rng = random.Random(0)
    for inst in run.instances:
        for key in KEYS:
            try:
                await read(run, inst, key, rng)
            except Exception as exc:
                run.raised.append(raised("audit get", inst.index, exc))
    run.audit = Window(start, time.monotonic())
    run.windows.append(run.audit)
