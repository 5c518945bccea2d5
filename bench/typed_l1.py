"""The L1-hit cost of ``get(key, type=T)`` next to a plain ``get(key)`` (issue 10, point 3).

Usage: python bench/typed_l1.py [--number N]

Each row is the best of five runs of N awaited L1 hits on a ``CacheStack([MemoryLayer()])``,
in nanoseconds per call, with its ratio to the plain hit. ``list[User]`` is built once (as a
module constant would be); writing ``type=list[User]`` inline adds the subscription's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import time
from typing import Any

from layercache import CacheStack, MemoryLayer


@dataclasses.dataclass
class User:
    id: int
    name: str


async def _per_call(cache: CacheStack, key: str, tp: Any, number: int) -> float:
    get = cache.get
    best = float("inf")
    for _ in range(5):
        began = time.perf_counter()
        if tp is None:
            for _ in range(number):
                await get(key)
        else:
            for _ in range(number):
                await get(key, type=tp)
        best = min(best, (time.perf_counter() - began) / number * 1e9)
    return best


async def main(number: int) -> None:
    cache = CacheStack([MemoryLayer(ttl=3600)])
    users = list[User]
    rows: list[tuple[str, str, Any]] = [
        ("get(key)", "dc", None),
        ("get(key, type=User)  # dataclass", "dc", User),
        ("get(key, type=list[User])  # 20 items", "list", users),
    ]
    await cache.set("dc", User(1, "a"))
    await cache.set("list", [User(i, "a") for i in range(20)])
    try:
        import pydantic

        class Model(pydantic.BaseModel):
            id: int
            name: str

        await cache.set("model", Model(id=1, name="a"))
        rows.insert(2, ("get(key, type=Model)  # Pydantic", "model", Model))
    except ImportError:
        pass
    results = [(label, await _per_call(cache, key, tp, number)) for label, key, tp in rows]
    base = results[0][1]
    for label, ns in results:
        print(f"{label:42} {ns:8.0f} ns   x{ns / base:.2f}")
    await cache.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=100_000)
    asyncio.run(main(parser.parse_args().number))
