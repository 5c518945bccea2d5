"""Remote invalidations applied on the bus subscriber thread while the stack's own threads
fetch (issue 10, point 5, the bus half).

Before the fix the subscriber thread iterated the in-flight table while fetching threads
changed it; the ``RuntimeError`` was swallowed as a failed message, and the L1 delete that
followed it never ran: the instance kept serving a value another instance had deleted.

Instance A deletes keys after bumping the origin; instance B (memory only, listening on the
bus) fetches them from 8 threads. Once A stops and B has heard everything, B's memory layer
must hold no version older than the origin's.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import redis

from layercache import MemoryLayer, RedisInvalidationBus, SyncCacheStack

KEYS = 16
READERS = 8
DELETES = 400
SECRET = "sync-bus-hammer"


def instance(url: str) -> tuple[SyncCacheStack, MemoryLayer, Any]:
    client = redis.Redis.from_url(url, socket_timeout=5)
    memory = MemoryLayer(ttl=600)
    bus = RedisInvalidationBus(publisher=client, channel="hammer:bus", signing_secret=SECRET)
    # broadcast_l1_invalidation=True: explicit, so this test isolates the thread race from
    # point 7 (before it, a bus without the flag announced nothing).
    stack = SyncCacheStack([memory], invalidation_bus=bus, broadcast_l1_invalidation=True)
    return stack, memory, client


def test_remote_deletes_on_the_bus_thread_during_fetches(
    redis_clean: Any, fast_switching: None
) -> None:
    a, _, client_a = instance(redis_clean.url)
    b, memory_b, client_b = instance(redis_clean.url)
    versions = dict.fromkeys(range(KEYS), 0)
    stop = threading.Event()
    errors: list[BaseException] = []

    def fetcher(key: int) -> Any:
        def fetch() -> dict[str, int]:
            version = versions[key]
            time.sleep(0)
            return {"version": version}

        return fetch

    def read(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                key = rng.randrange(KEYS)
                b.get(f"k{key}", fetcher(key))
        except BaseException as exc:  # reported below
            errors.append(exc)

    with a, b:
        readers = [threading.Thread(target=read, args=(i,)) for i in range(READERS)]
        for thread in readers:
            thread.start()
        rng = random.Random(7)
        try:
            for _ in range(DELETES):
                key = rng.randrange(KEYS)
                versions[key] += 1
                a.delete(f"k{key}")
        finally:
            stop.set()
            for thread in readers:
                thread.join(30)
        assert not errors, errors[0]
        deadline = time.monotonic() + 10

        def stale() -> list[str]:
            found = []
            for key in range(KEYS):
                entry = memory_b.get(f"k{key}")
                if entry is not None and entry.value["version"] != versions[key]:
                    found.append(f"k{key}")
            return found

        # B hears A's last deletes shortly; after that nothing older than the origin remains.
        while stale():
            assert time.monotonic() < deadline, f"B still serves stale {stale()}"
            time.sleep(0.01)
        assert b.get_metrics().errors == 0  # a message that failed to apply counts as one
    client_a.close()
    client_b.close()
