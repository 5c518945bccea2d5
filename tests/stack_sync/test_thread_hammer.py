"""Every mutating method of ``SyncCacheStack`` against concurrent fetches, with threads
preempted often (issue 10, point 5).

Before the fix, 8 threads calling ``get(key, fetcher)`` on cold keys while 4 threads called
``set``/``delete``/``invalidate_by_tag`` killed the writers within a second with
``RuntimeError: dictionary keys changed during iteration``: the stack iterated its in-flight
table to mark changed keys while other threads added and removed flights. The same marking
runs on the bus subscriber thread, where the error was swallowed and the remote invalidation
skipped, leaving a stale L1 copy.

The checker: an origin with a version per key. Each writer thread owns a set of keys and
changes the origin *before* it tells the cache (write-then-invalidate, as a service does), so
once every thread has stopped, no layer may hold a version older than the origin's: that
would be a value a slow fetch read before a change and stored after it.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from layercache import CacheEntry, DiskLayer, MemoryLayer, SyncCacheStack

KEYS = 24
WRITERS = 4
READERS = 8
WRITER_OPS = 250
READER_OPS = 1200


class Origin:
    """The database: one version per key; a writer bumps it before telling the cache."""

    def __init__(self) -> None:
        self.versions = dict.fromkeys(range(KEYS), 0)
        self.fetches = 0

    def load(self, key: int) -> Callable[[], dict[str, int]]:
        def fetch() -> dict[str, int]:
            self.fetches += 1
            version = self.versions[key]
            time.sleep(0)  # let a writer change the key between this read and the store
            return {"key": key, "version": version}

        return fetch


def name(key: int) -> str:
    return f"w{key % WRITERS}:k{key}"


def tag(key: int) -> str:
    return f"group{key % WRITERS}"


def writer(stack: SyncCacheStack, origin: Origin, index: int, seed: int) -> None:
    rng = random.Random(seed)
    own = [k for k in range(KEYS) if k % WRITERS == index]
    for _ in range(WRITER_OPS):
        key = rng.choice(own)
        operation = rng.randrange(8)
        if operation == 0:
            origin.versions[key] += 1
            stack.set(name(key), {"key": key, "version": origin.versions[key]}, tags=[tag(key)])
        elif operation == 1:
            origin.versions[key] += 1
            stack.delete(name(key))
        elif operation == 2:
            chosen = rng.sample(own, 3)
            for k in chosen:
                origin.versions[k] += 1
            stack.delete_many([name(k) for k in chosen])
        elif operation == 3:
            for k in own:
                origin.versions[k] += 1
            stack.invalidate_by_tag(tag(key))
        elif operation == 4:
            for k in own:
                origin.versions[k] += 1
            stack.invalidate_by_pattern(f"w{index}:*")
        elif operation == 5:
            for k in own:
                origin.versions[k] += 1
            stack.invalidate_by_prefix(f"w{index}:")
        elif operation == 6:
            chosen = rng.sample(own, 3)
            for k in chosen:
                origin.versions[k] += 1
            stack.set_many(
                [
                    CacheEntry(
                        name(k), {"key": k, "version": origin.versions[k]}, {"tags": [tag(k)]}
                    )
                    for k in chosen
                ]
            )
        else:
            stack.invalidate_by_tags([tag(key), "unused"], mode="all")  # matches nothing


def reader(stack: SyncCacheStack, origin: Origin, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(READER_OPS):
        key = rng.randrange(KEYS)
        value = stack.get(name(key), origin.load(key), tags=[tag(key)])
        assert value["key"] == key


def hammer(stack: SyncCacheStack, origin: Origin, extra: Callable[[], None] | None = None) -> None:
    errors: list[BaseException] = []

    def run(target: Callable[..., None], *args: Any) -> None:
        try:
            target(*args)
        except BaseException as exc:  # collected and re-raised below
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(writer, stack, origin, i, 100 + i))
        for i in range(WRITERS)
    ]
    threads += [
        threading.Thread(target=run, args=(reader, stack, origin, 200 + i)) for i in range(READERS)
    ]
    if extra is not None:
        threads.append(threading.Thread(target=run, args=(extra,)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads), "a thread is stuck"
    if errors:
        raise errors[0]


def check(stack: SyncCacheStack, origin: Origin, layers: list[Any]) -> None:
    """No layer holds a version older than the origin's; no flight is left behind."""
    for key in range(KEYS):
        for layer in layers:
            entry = layer.get(name(key))
            if entry is not None:
                assert entry.value["version"] == origin.versions[key], (name(key), layer.name)
        cached = stack.get(name(key))
        assert cached is None or cached["version"] == origin.versions[key]
    assert len(stack._flights) == 0


def test_mutations_against_concurrent_fetches_on_memory(fast_switching: None) -> None:
    memory = MemoryLayer(ttl=60)
    stack = SyncCacheStack([memory])
    origin = Origin()
    with stack:
        hammer(stack, origin)
        check(stack, origin, [memory])
    assert origin.fetches > 0


def test_mutations_against_concurrent_fetches_on_two_layers(
    fast_switching: None, tmp_path: Path
) -> None:
    """With a lower layer, reads share a read of it and backfill the memory layer: a
    backfill must not bring back what a change removed."""
    memory = MemoryLayer(ttl=60)
    disk = DiskLayer(tmp_path / "disk", ttl=600)
    stack = SyncCacheStack([memory, disk])
    origin = Origin()
    with stack:
        hammer(stack, origin)
        check(stack, origin, [memory, disk])


def test_metrics_and_stats_under_threads(fast_switching: None) -> None:
    """Reading the metrics while every other thread works never fails, and the background
    count returns to zero."""
    stack = SyncCacheStack([MemoryLayer(ttl=60)], stale_while_revalidate=5)
    origin = Origin()
    done = threading.Event()

    def observe() -> None:
        while not done.is_set():
            stack.get_metrics()
            stack.get_stats()
            stack.get_hit_rate()

    with stack:
        watcher = threading.Thread(target=observe)
        watcher.start()
        try:
            hammer(stack, origin)
        finally:
            done.set()
            watcher.join(30)
        check(stack, origin, [])
        assert stack.get_stats().background_refreshes == 0
