"""One "instance" of the multi-process single-flight test (run as a script, not collected).

Usage: ``python _single_flight_worker.py URL RUN_ID KEY CALLERS FETCH_DELAY``

Connects to Redis, announces itself on ``RUN_ID:ready``, waits on ``RUN_ID:go`` (BLPOP, the
barrier the test releases for every process at once), then runs CALLERS concurrent
``coordinator.run()`` calls on KEY. The origin fetch counts itself with INCR on
``RUN_ID:fetches`` and stores its value under ``RUN_ID:shared``, which ``read_shared`` reads.
Prints one JSON line: pid, start and end wall times, the values returned and the stats.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import time
from typing import Any

import redis.asyncio

from layercache.redis.single_flight import RedisSingleFlightCoordinator


async def main(url: str, run_id: str, key: str, callers: int, fetch_delay: float) -> None:
    client = redis.asyncio.Redis.from_url(url)
    coordinator = RedisSingleFlightCoordinator(client, prefix=f"{run_id}:singleflight")
    shared = f"{run_id}:shared"

    async def fetch() -> str:
        await client.incr(f"{run_id}:fetches")
        await asyncio.sleep(fetch_delay)  # the origin's latency
        value = f"value-from-{os.getpid()}"
        await client.set(shared, value)
        return value

    async def read_shared() -> tuple[bool, Any]:
        raw = await client.get(shared)
        return (False, None) if raw is None else (True, raw.decode())

    try:
        await client.ping()
        await client.rpush(f"{run_id}:ready", os.getpid())
        if await client.blpop([f"{run_id}:go"], timeout=30) is None:
            raise SystemExit("the test never released the barrier")
        start = time.time()
        results = await asyncio.gather(
            *(coordinator.run(key, fetch, read_shared, timeout=10.0) for _ in range(callers))
        )
        end = time.time()
        report = {
            "pid": os.getpid(),
            "start": start,
            "end": end,
            "results": results,
            "stats": dataclasses.asdict(coordinator.stats),
        }
        print(json.dumps(report), flush=True)
    finally:
        await coordinator.aclose()
        await client.aclose()


if __name__ == "__main__":
    url, run_id, key, callers, fetch_delay = sys.argv[1:6]
    asyncio.run(main(url, run_id, key, int(callers), float(fetch_delay)))
