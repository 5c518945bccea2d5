"""Scenario 5: bytes per small in-memory entry.

``n`` keys ``"user:i"`` and values are built *before* ``tracemalloc`` starts, so they are not
counted: they are the same objects for every library. Two kinds of value: ``int`` (``i``; the
figure issue 16 sets its goal on: what a store spends around a value it holds by reference)
and ``dict`` (``{"id": i, "name": "user-i"}``; a store that copies values, as cashews does,
pays for a second dict).
What each library allocates while storing them (with a one-hour TTL, through its public
``set``) is its per-entry cost: envelopes, expiry bookkeeping, index nodes, hash-table slots.
Growth is measured after a ``gc.collect()``; the library's data is then dropped before the next
one is measured. Figures are tracemalloc's (requested bytes), not RSS.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

TTL = 3600

Filler = Callable[[list[str], list[Any]], Awaitable[Callable[[], Awaitable[None]]]]


@dataclass
class MemorySubject:
    """One library: ``fill(keys, values)`` stores them and returns an async ``drop()``."""

    name: str
    fill: Filler
    note: str = ""
    bytes_per_entry: float = 0.0


def subjects(n: int) -> list[MemorySubject]:
    """The in-memory stores compared."""
    from aiocache import SimpleMemoryCache  # type: ignore[import-untyped]
    from cachetools import TTLCache
    from cashews import Cache
    from dogpile.cache import make_region

    from layercache import CacheStack, MemoryLayer

    bound = 2 * n  # no library may evict during the fill

    async def layercache_stack(keys: list[str], values: list[Any]) -> Any:
        stack = CacheStack([MemoryLayer(ttl=TTL, max_size=bound)])
        for k, v in zip(keys, values, strict=True):
            await stack.set(k, v)
        return stack.aclose

    async def cashews(keys: list[str], values: list[Any]) -> Any:
        cache = Cache()
        cache.setup("mem://", size=bound)
        for k, v in zip(keys, values, strict=True):
            await cache.set(k, v, expire=TTL)
        return cache.close

    async def aiocache(keys: list[str], values: list[Any]) -> Any:
        cache = SimpleMemoryCache()
        for k, v in zip(keys, values, strict=True):
            await cache.set(k, v, ttl=TTL)

        async def drop() -> None:
            await cache.clear()
            await cache.close()

        return drop

    async def cachetools(keys: list[str], values: list[Any]) -> Any:
        cache: TTLCache[str, Any] = TTLCache(maxsize=bound, ttl=TTL)
        for k, v in zip(keys, values, strict=True):
            cache[k] = v

        async def drop() -> None:
            cache.clear()

        return drop

    async def dogpile(keys: list[str], values: list[Any]) -> Any:
        region = make_region().configure("dogpile.cache.memory", expiration_time=TTL)
        for k, v in zip(keys, values, strict=True):
            region.set(k, v)

        async def drop() -> None:
            region.backend._cache.clear()

        return drop

    return [
        MemorySubject("layercache MemoryLayer (via CacheStack.set)", layercache_stack),
        MemorySubject("cashews mem://", cashews, note="stores copy(value): a 2nd dict per entry"),
        MemorySubject("aiocache SimpleMemoryCache", aiocache, note="one TimerHandle per TTL"),
        MemorySubject("cachetools TTLCache", cachetools),
        MemorySubject("dogpile.cache memory", dogpile, note="no per-key TTL"),
    ]


VALUE_KINDS = ("int", "dict")


async def measure(items: list[MemorySubject], n: int, kind: str = "dict") -> None:
    """Fill each store with ``n`` entries of ``kind`` values and record tracemalloc growth per
    entry."""
    keys = [f"user:{i}" for i in range(n)]
    values: list[Any] = list(range(n))
    if kind != "int":
        values = [{"id": i, "name": f"user-{i}"} for i in range(n)]
    for subject in items:
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            drop = await subject.fill(keys, values)
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        subject.bytes_per_entry = (after - before) / n
        await drop()
        del drop
        gc.collect()
