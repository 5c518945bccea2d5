"""What conditional stores cost on a cold get (issue 11, point 1), in one run.

A cold get with one layer of Redis is a miss (``GET``), an instant fetch and the store of its
value. With leases on (``RedisLayer`` default, ``lease_ttl=10``) the store is one ``EVALSHA``
that checks the key and the fences and sets it; with ``lease_ttl=None`` it is a plain
``SET PX``. The floor is raw redis-py doing the same: ``GET`` + ``json.dumps`` + ``SET PX``.
Every call uses a new key, so every call is a miss. Subjects run in interleaved rounds (each
round runs every subject once on its own fresh keys) and the median round is reported, as
wall time and as this process's CPU time per call (the CPU time leaves out the server's work,
the wall time includes it). Goal: leases cost at most 10% over ``lease_ttl=None``.

Usage: ``python -m bench.cold_store [--calls N] [--rounds R]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.fixtures import VALUE, redis_server

GOAL = 1.10


async def run(port: int, calls: int, rounds: int) -> dict[str, tuple[float, float]]:
    import redis.asyncio as aioredis

    from layercache import CacheStack
    from layercache.redis import RedisLayer

    url = f"redis://127.0.0.1:{port}/0"
    raw = aioredis.Redis.from_url(url)
    leased = CacheStack([RedisLayer(url=url, prefix="bl:", ttl=60)])
    plain = CacheStack([RedisLayer(url=url, prefix="bp:", ttl=60, lease_ttl=None)])

    async def fetch() -> Any:
        return VALUE

    counter = iter(range(10**9))

    async def floor() -> None:
        key = f"bf:{next(counter)}"
        if await raw.get(key) is None:
            await raw.set(key, json.dumps(await fetch()), px=60_000)

    def through(stack: CacheStack) -> Callable[[], Awaitable[Any]]:
        async def call() -> Any:
            return await stack.get(f"k{next(counter)}", fetch)

        return call

    subjects: dict[str, Callable[[], Awaitable[Any]]] = {
        "floor: redis-py GET + SET": floor,
        "CacheStack[RedisLayer(lease_ttl=None)]": through(plain),
        "CacheStack[RedisLayer] (leases)": through(leased),
    }
    for call in subjects.values():  # warm up: connections, scripts, the clock estimate
        for _ in range(200):
            await call()
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in subjects}
    for _ in range(rounds):
        for name, call in subjects.items():
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(calls):
                await call()
            samples[name].append(
                ((time.perf_counter() - wall) / calls, (time.process_time() - cpu) / calls)
            )
    await leased.aclose()
    await plain.aclose()
    await raw.aclose()
    return {
        name: (statistics.median(w for w, _ in s), statistics.median(c for _, c in s))
        for name, s in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with redis_server() as server:
        results = asyncio.run(run(server.port, args.calls, args.rounds))
    floor_wall, _ = results["floor: redis-py GET + SET"]
    plain_wall, plain_cpu = results["CacheStack[RedisLayer(lease_ttl=None)]"]
    print(f"cold get, one layer of Redis: {args.rounds} rounds x {args.calls} calls, median")
    print(f"{'subject':42} {'wall us':>9} {'cpu us':>9} {'wall/floor':>11} {'wall/plain':>11}")
    for name, (wall, cpu) in results.items():
        print(
            f"{name:42} {wall * 1e6:9.1f} {cpu * 1e6:9.1f} "
            f"{wall / floor_wall:10.2f}x {wall / plain_wall:10.2f}x"
        )
    leased_wall, leased_cpu = results["CacheStack[RedisLayer] (leases)"]
    ratio = leased_wall / plain_wall
    verdict = "met" if ratio <= GOAL else "NOT met"
    print(
        f"leases cost {100 * (ratio - 1):+.1f}% wall, {100 * (leased_cpu / plain_cpu - 1):+.1f}% "
        f"client CPU on a cold get (goal <= +{100 * (GOAL - 1):.0f}% wall): {verdict}"
    )


if __name__ == "__main__":
    main()
