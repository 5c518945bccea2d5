"""``SyncCacheStack`` hammered by 48 threads preempted every microsecond (issue 11, point 5).

One ``SyncCacheStack([MemoryLayer(), RedisLayer(url=...)])`` on a private ``redis-server``,
shared by 48 threads with ``sys.setswitchinterval(1e-6)`` (the ``fast_switching`` fixture).
Each thread does a random mix of ``get`` (with a fetcher and a tag), ``set``, ``delete``,
``delete_many`` and, rarely, ``invalidate_by_tag`` over 24 keys. The origin model is
``_chaos_support``'s, with changes of a key serialized by a lock per key (a row lock).

The rule, for one instance: a read that *starts* after a change of its key *returned* must
never get an older version (no grace at all: nothing has to travel between instances). No
operation may raise. After the run, every key L1 holds must be known to the tag index under
its tag: reads only sample the state, and a value the index does not know is found only by the
next ``invalidate_by_tag`` of its tag, which leaves it in place (how the rare stale read this
test used to report came about: a fetch that recorded its tag just before a concurrent delete
forgot the key in the index, and wrote L1 just after that delete; see
``tests/stack_sync/test_tag_record_race.py``).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest
from _chaos_support import ChaosRedisServer, Origin, Raised, Read, describe, judge, raised

from layercache import InMemoryTagIndex, MemoryLayer, RedisLayer, SyncCacheStack

pytestmark = pytest.mark.redis

THREADS = 48
KEYS = [f"s:{i:02d}" for i in range(24)]
CI_SECONDS = 6.0
SOAK_SECONDS = 90.0


def tag_of(key: str) -> str:
    return f"g{int(key[2:]) % 4}"


class Hammer:
    def __init__(self, stack: SyncCacheStack) -> None:
        self.stack = stack
        self.origin = Origin(KEYS)
        self.locks = {key: threading.Lock() for key in KEYS}
        self.reads: list[Read] = []
        self.raised: list[Raised] = []
        self.wrong: list[str] = []
        self.ops = 0
        self._record = threading.Lock()

    @contextmanager
    def change(self, keys: Sequence[str], op: str, thread: int) -> Iterator[None]:
        """Change ``keys`` at the origin under their locks, then the body tells the cache."""
        with ExitStack() as held:
            for key in sorted(set(keys)):
                held.enter_context(self.locks[key])
            began = self.origin.bump(keys)
            returned = float("inf")
            try:
                yield
                returned = time.monotonic()
            finally:
                self.origin.record(keys, op, thread, began, returned)

    def fetcher(self, key: str, rng: random.Random) -> Callable[[], dict[str, Any]]:
        def fetch() -> dict[str, Any]:
            value = self.origin.value(key)
            # Now and then a slow query, so that changes land while the fetch is in flight.
            time.sleep(rng.uniform(0.001, 0.01) if rng.random() < 0.1 else 0)
            return value

        return fetch

    def work(self, thread: int, seed: int, until: float) -> None:
        rng = random.Random(seed)
        stack = self.stack
        while time.monotonic() < until:
            kind = rng.random()
            key = rng.choice(KEYS)
            op = "get"
            try:
                if kind < 0.75:
                    started = time.monotonic()
                    value = stack.get(key, self.fetcher(key, rng), tags=[tag_of(key)])
                    ended = time.monotonic()
                    if not isinstance(value, dict) or value.get("k") != key:
                        self.wrong.append(f"{key}: {value!r}")
                    else:
                        read = Read(key, thread, started, ended, int(value["v"]), value["r"])
                        with self._record:
                            self.reads.append(read)
                elif kind < 0.87:
                    op = "set"
                    with self.change([key], op, thread):
                        stack.set(key, self.origin.value(key), tags=[tag_of(key)])
                elif kind < 0.95:
                    op = "delete"
                    with self.change([key], op, thread):
                        stack.delete(key)
                elif kind < 0.99:
                    op = "delete_many"
                    keys = rng.sample(KEYS, 3)
                    with self.change(keys, op, thread):
                        stack.delete_many(keys)
                else:
                    tag = tag_of(key)
                    op = f"invalidate_by_tag({tag})"
                    with self.change([k for k in KEYS if tag_of(k) == tag], op, thread):
                        stack.invalidate_by_tag(tag)
            except Exception as exc:  # collected; none may happen
                with self._record:
                    self.raised.append(raised(op, thread, exc))
            with self._record:
                self.ops += 1


def test_sync_stack_under_many_threads(
    chaos_redis: ChaosRedisServer, fast_switching: None, soak: bool
) -> None:
    memory = MemoryLayer(ttl=60)
    index = InMemoryTagIndex()
    stack = SyncCacheStack([memory, RedisLayer(url=chaos_redis.url, ttl=600)], tag_index=index)
    hammer = Hammer(stack)
    rng = random.Random(7)
    started = time.monotonic()
    until = started + (SOAK_SECONDS if soak else CI_SECONDS)
    threads = [
        threading.Thread(target=hammer.work, args=(i, rng.getrandbits(64), until), daemon=True)
        for i in range(THREADS)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(until - time.monotonic() + 30)
        stuck = [t.name for t in threads if t.is_alive()]
        flights = len(stack._flights)
        # L1 values the tag index does not know under their tag (none may be left).
        stored = memory.keys()
        unindexed = [k for k in stored if tag_of(k) not in index.tags_of(k)]
    finally:
        stack.close()
    verdict = judge(hammer.reads, hammer.origin.history, grace=0.0)
    print(
        f"\nchaos sync-threads: threads={THREADS} ops={hammer.ops} reads={len(hammer.reads)} "
        f"stale={len(verdict.stale)} (worst {verdict.worst_text()}) "
        f"raising={len(hammer.raised)} | changes={hammer.origin.changes()} "
        f"fetches={hammer.origin.fetches} wrong={len(hammer.wrong)} flights_left={flights} "
        f"unindexed={len(unindexed)} "
        f"time={time.monotonic() - started:.1f}s"
    )
    for stale in verdict.stale[:8]:
        print("  STALE", describe(stale, started, "thread"))
    for failure in hammer.raised[:3]:
        print(f"  RAISED {failure.op} in thread {failure.instance}: {failure.trace}")
    assert not stuck, f"threads still running: {stuck}"
    assert verdict.judged > 1000, f"only {verdict.judged} reads"
    assert not hammer.wrong, hammer.wrong[:5]
    assert not hammer.raised, f"{len(hammer.raised)} raised; first: {hammer.raised[0].trace}"
    assert flights == 0
    assert not unindexed, f"L1 holds keys the tag index does not know: {unindexed}"
    assert not verdict.stale, (
        f"{len(verdict.stale)} stale reads (worst {verdict.worst_text()}); "
        f"first: {describe(verdict.stale[0], started, 'thread')}"
    )
