"""Scenarios 1-3: L1 hit latency, L2 (Redis) hit latency, 64 concurrent L2 readers.

Every library stores the same 1 KiB value (:data:`bench.fixtures.VALUE`) under its own key
with a TTL of an hour (so nothing expires mid-run), through its own public API, and is read
back through its own public ``get``. Every subject checks once that its read is a real hit.
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import AsyncExitStack
from typing import Any

from bench.fixtures import VALUE, VALUE_JSON
from bench.harness import Subject

TTL = 3600
# Connections each library may open: at least one per concurrent reader for everyone.
# (cashews' own default is a BlockingConnectionPool of 10, which would throttle it.)
POOL = 128


async def l1_subjects(exits: AsyncExitStack) -> list[Subject]:
    """In-process hits: layercache's MemoryLayer stack vs peers vs an awaited dict lookup."""
    from aiocache import SimpleMemoryCache  # type: ignore[import-untyped]
    from cachetools import TTLCache
    from cashews import Cache
    from dogpile.cache import make_region

    from layercache import CacheStack, MemoryLayer

    key = "bench:l1"
    store = {key: VALUE}

    async def dict_get(k: str) -> Any:
        return store.get(k)

    lc = CacheStack([MemoryLayer(ttl=TTL)])
    exits.push_async_callback(lc.aclose)
    await lc.set(key, VALUE)

    cw = Cache()
    cw.setup("mem://", size=10_000)
    exits.push_async_callback(cw.close)
    await cw.set(key, VALUE, expire=TTL)

    ac = SimpleMemoryCache()
    exits.push_async_callback(ac.close)
    await ac.set(key, VALUE, ttl=TTL)

    region = make_region().configure("dogpile.cache.memory", expiration_time=TTL)
    region.set(key, VALUE)

    ttl_cache: TTLCache[str, Any] = TTLCache(maxsize=10_000, ttl=TTL)
    ttl_cache[key] = VALUE

    return [
        Subject("floor: awaited dict lookup", dict_get, key, note="async def + dict.get"),
        Subject("layercache CacheStack[MemoryLayer]", lc.get, key),
        Subject("cashews mem://", cw.get, key),
        Subject("aiocache SimpleMemoryCache", ac.get, key, note="default timeout=5"),
        Subject("sync floor: dict.get", store.get, key, is_async=False),
        Subject("dogpile.cache memory (sync)", region.get, key, is_async=False),
        Subject("cachetools TTLCache (sync)", ttl_cache.get, key, is_async=False),
    ]


async def redis_subjects(exits: AsyncExitStack, host: str, port: int) -> list[Subject]:
    """Redis hits with nothing in process memory in front of them.

    The layercache row the L2 goal is judged on is a stack whose only layer is the
    ``RedisLayer`` (the fair comparison with a bare ``GET``); the "memory miss" row is the
    realistic two-layer stack with its L1 emptied before every read, so it also pays the
    backfill into memory.
    """
    import redis
    import redis.asyncio as aioredis
    from aiocache import RedisCache
    from cashews import Cache
    from dogpile.cache import make_region

    from layercache import CacheStack, MemoryLayer, RedisLayer

    url = f"redis://{host}:{port}/0"

    raw = aioredis.Redis(host=host, port=port, max_connections=POOL)
    exits.push_async_callback(raw.aclose)
    await raw.set("bench:raw", VALUE_JSON)

    async def raw_get(k: str) -> Any:
        return json.loads(await raw.get(k))  # type: ignore[arg-type]

    raw_t = aioredis.Redis(host=host, port=port, max_connections=POOL, socket_timeout=5.0)
    exits.push_async_callback(raw_t.aclose)

    async def raw_get_t(k: str) -> Any:
        return json.loads(await raw_t.get(k))  # type: ignore[arg-type]

    lc = CacheStack([RedisLayer(url=url, ttl=TTL, prefix="bench:lc:")])
    exits.push_async_callback(lc.aclose)
    await lc.set("v", VALUE)

    # The layer's own GET (redis/_clients.py: a parked connection, past redis-py's per-command
    # machinery) under the floor's decode: the rest of the layercache row is the stack's cost.
    lc_client = lc.layers[0]._client

    async def lean_get(k: str) -> Any:
        return json.loads(await lc_client.fast_get(k.encode()))

    memory = MemoryLayer(ttl=TTL)
    lc2 = CacheStack([memory, RedisLayer(url=url, ttl=TTL, prefix="bench:lc2:")])
    exits.push_async_callback(lc2.aclose)
    await lc2.set("v", VALUE)

    async def lc2_cold_l1(k: str) -> Any:
        memory.clear()
        return await lc2.get(k)

    cw = Cache()
    cw.setup(url, max_connections=POOL)
    exits.push_async_callback(cw.close)
    await cw.set("bench:cashews", VALUE, expire=TTL)

    ac = RedisCache(endpoint=host, port=port)
    exits.push_async_callback(ac.close)
    await ac.set("bench:aiocache", VALUE, ttl=TTL)

    region = make_region().configure(
        "dogpile.cache.redis",
        expiration_time=TTL,
        arguments={"host": host, "port": port, "db": 0, "redis_expiration_time": TTL * 2},
    )
    region.set("bench:dogpile", VALUE)

    sync_raw = redis.Redis(host=host, port=port, max_connections=POOL)
    exits.callback(sync_raw.close)

    def sync_raw_get(k: str) -> Any:
        return json.loads(sync_raw.get(k))  # type: ignore[arg-type]

    return [
        Subject("floor: redis-py GET + json.loads", raw_get, "bench:raw", note="asyncio"),
        Subject(
            "floor, socket_timeout=5",
            raw_get_t,
            "bench:raw",
            note="same client setting as RedisLayer(url=)",
            expect=VALUE,
        ),
        Subject(
            "floor: the layer's GET (parked connection) + json.loads",
            lean_get,
            "bench:raw",
            note="what RedisLayer(url=) sends",
            expect=VALUE,
        ),
        Subject("layercache CacheStack[RedisLayer]", lc.get, "v"),
        Subject(
            "layercache memory(miss)+redis(hit)",
            lc2_cold_l1,
            "v",
            note="L1 cleared before each get; includes backfill",
            expect=VALUE,
        ),
        Subject("cashews redis://", cw.get, "bench:cashews", note="pickle"),
        Subject("aiocache RedisCache", ac.get, "bench:aiocache", note="json, timeout=5"),
        Subject(
            "sync floor: redis-py GET + json.loads",
            sync_raw_get,
            "bench:raw",
            is_async=False,
            expect=VALUE,
        ),
        Subject(
            "dogpile.cache redis (sync)",
            region.get,
            "bench:dogpile",
            is_async=False,
            note="pickle",
            expect=VALUE,
        ),
    ]


def fresh(subjects: list[Subject], *, drop: tuple[str, ...] = ()) -> list[Subject]:
    """Copies without samples, for a second scenario over the same clients."""
    return [
        dataclasses.replace(s, samples=[], cpu_samples=[], iterations=0)
        for s in subjects
        if not any(s.name.startswith(d) for d in drop)
    ]
