"""``RedisTagIndex.record_many``: one script call per batch of keys, the same result as one
``record`` per key (issue 10, point 9), on a real single server and a real three-master cluster.

A tagged ``set_many`` of N keys used to cost N round trips to the index (one ``record`` script
call per key); it now costs one per batch of 500 keys.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

import pytest
import redis.asyncio
from tag_index_support import Backend

import layercache.redis.tag_index as tag_index_module
from layercache import CacheEntry, CacheStack, MemoryLayer
from layercache._exceptions import CacheLayerError
from layercache.redis import RedisLayer
from layercache.redis._keys import tag_index_base, tag_index_match
from layercache.redis.tag_index import RedisTagIndex

pytestmark = pytest.mark.redis


async def index_state(client: Any, prefix: str) -> dict[bytes, Any]:
    """Every Redis key of the index at ``prefix`` (name without ``{prefix}:``) and its content:
    sets as frozensets, the expiry sorted set as (member, score) pairs, strings as bytes."""
    base = tag_index_base(prefix).encode()
    state: dict[bytes, Any] = {}
    async for raw in client.scan_iter(match=tag_index_match(prefix), count=1000):
        kind = await client.type(raw)
        name = raw[len(base) :]
        if kind == b"set":
            state[name] = frozenset(await client.smembers(raw))
        elif kind == b"zset":
            state[name] = tuple(await client.zrange(raw, 0, -1, withscores=True))
        else:
            state[name] = await client.get(raw)
    return state


def random_batch(rng: random.Random, now: float) -> list[tuple[str, list[str], float | None]]:
    """Items over a small key pool (so keys are re-tagged, also within one batch), tag lists
    with repeats and empty ones, and expiries: none, future, or long past (swept at once)."""
    items: list[tuple[str, list[str], float | None]] = []
    for _ in range(rng.randint(0, 30)):
        key = rng.choice([f"k{i}" for i in range(25)] + ["ünï:🎉"])
        tags = rng.choices([f"t{i}" for i in range(8)] + ["é"], k=rng.choice([0, 0, 1, 2, 3, 6]))
        expires = rng.choice([None, None, now + rng.randint(10, 1000), now - 1000])
        items.append((key, tags, expires))
    return items


@pytest.mark.parametrize("small_batches", [False, True])
async def test_record_many_equals_one_record_per_key(
    backend: Backend, small_batches: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if small_batches:
        # Many script calls per record_many, and entries larger than the argument bound
        # (6 tags = 9 arguments > 8) that must still go, alone.
        monkeypatch.setattr(tag_index_module, "_RECORD_BATCH", 3)
        monkeypatch.setattr(tag_index_module, "_RECORD_BATCH_ARGS", 8)
    client = backend.client()
    one_by_one = RedisTagIndex(client, prefix="rm:single", known_keys_shards=5)
    batched = RedisTagIndex(client, prefix="rm:batch", known_keys_shards=5)
    for seed in range(12):
        rng = random.Random(seed)
        now = time.time()
        for _ in range(4):
            items = random_batch(rng, now)
            for key, tags, expires in items:
                assert await one_by_one.record(key, tags, expires) == []
            assert await batched.record_many(items) == []
            expected = await index_state(client, "rm:single")
            assert await index_state(client, "rm:batch") == expected, (seed, items)
    # The comparison saw real data: keys, tags, shards and expiries.
    final = await index_state(client, "rm:batch")
    assert any(name.startswith(b"tag:") for name in final)
    assert any(name.startswith(b"keys:") for name in final)
    assert b"expiry" in final


async def test_record_many_key_ttl_and_validation(backend: Backend) -> None:
    client = backend.client()
    index = RedisTagIndex(client, prefix="rm:ttl", key_ttl=60)
    before = time.time()
    await index.record_many([("a", ["x"], None), ("b", ["x"], before + 5), ("c", [], None)])
    expiry = f"{{{'rm:ttl'}}}:expiry".encode()
    assert before + 60 <= await client.zscore(expiry, b"a") <= time.time() + 60
    assert await client.zscore(expiry, b"b") == pytest.approx(before + 5)
    assert await client.zscore(expiry, b"c") is None
    assert await index.record_many([]) == []
    # Every item is checked before Redis is touched: a bad last item records nothing.
    for bad, message in (
        (("", ["x"], None), "key"),
        (("d", "x", None), "single str"),
        (("d", ["x"], math.inf), "expires_at"),
        (("d", [f"t{i}" for i in range(65)], None), "at most 64"),
    ):
        with pytest.raises(ValueError, match=message):
            await index.record_many([("new", ["y"], None), bad])
    assert await index.keys_for_tags(["y"]) == set()


async def test_record_many_refuses_another_shard_count(backend: Backend) -> None:
    client = backend.client()
    await RedisTagIndex(client, prefix="rm:layout", known_keys_shards=16).record("k", ["a"])
    eight = RedisTagIndex(client, prefix="rm:layout", known_keys_shards=8)
    with pytest.raises(CacheLayerError, match="known_keys_shards") as info:
        await eight.record_many([("k2", ["a"], None)])
    assert info.value.operation == "record_many"
    assert await eight.keys_for_tags(["a"]) == {"k"}


# -- through a stack ---------------------------------------------------------------------------


async def test_tagged_set_many_then_invalidate_by_tag(backend: Backend) -> None:
    client = backend.client()
    memory = MemoryLayer(max_size=10_000)
    layer = RedisLayer(client=client, prefix="rm:v:")
    index = RedisTagIndex(client, prefix="rm:stack")
    stack = CacheStack([memory, layer], tag_index=index)
    async with stack:
        await stack.set_many(
            CacheEntry(f"item:{i}", i, {"tags": ["all", f"group:{i % 3}"]}) for i in range(1200)
        )
        # Re-tag a third of them (group:0 -> moved) and drop the tags of a few others.
        await stack.set_many(
            [
                *(CacheEntry(f"item:{i}", -i, {"tags": ["moved"]}) for i in range(0, 1200, 3)),
                *((f"item:{i}", "untagged") for i in range(1, 30, 3)),
            ]
        )
        assert await index.keys_for_tags(["group:0"]) == set()
        assert await stack.invalidate_by_tag("group:1") == 400 - 10
        gone = {f"item:{i}" for i in range(1, 1200, 3)} - {f"item:{i}" for i in range(1, 30, 3)}
        for i in range(1200):
            key = f"item:{i}"
            expected = None if key in gone else (-i if i % 3 == 0 else i)
            if i in range(1, 30, 3):
                expected = "untagged"
            assert await stack.get(key) == expected, key
        assert await stack.invalidate_by_tag("moved") == 400
        assert await layer.size() == 400 + 10  # group:2 and the 10 untagged keys
        assert await index.keys_for_tags(["group:1", "moved"]) == set()
        # The invalidated keys' other entries ("all") are expired: the sweep forgets them.
        assert await index.cleanup() == 400 - 10 + 400
        assert await index.keys_for_tags(["all"]) == {f"item:{i}" for i in range(2, 1200, 3)}


async def test_tagged_set_many_costs_one_round_trip_per_batch(redis_clean: Any) -> None:
    """1,000 tagged keys: 2 index script calls (batches of 500), not 1,000; a handful of round
    trips in all (counted on the client's connections and in Redis's own command stats)."""
    sends = 0

    class CountingConnection(redis.asyncio.Connection):
        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            nonlocal sends
            sends += 1
            await super().send_packed_command(command, check_health)

    pool = redis.asyncio.ConnectionPool(
        connection_class=CountingConnection, host=redis_clean.host, port=redis_clean.port
    )
    client = redis.asyncio.Redis(connection_pool=pool)
    stack = CacheStack(
        [MemoryLayer(), RedisLayer(client=client, prefix="rt:")],
        tag_index=RedisTagIndex(client, prefix="rt:tags"),
    )
    try:
        # Warm up: connections made, scripts loaded.
        await stack.set_many([CacheEntry("warm", 0, {"tags": ["w"]})])
        await client.config_resetstat()
        sends = 0
        await stack.set_many(
            CacheEntry(f"k{i}", i, {"tags": ["bulk", f"g{i % 7}"]}) for i in range(1000)
        )
        round_trips = sends
        stats = await client.info("commandstats")
        script_calls = sum(
            int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval")
        )
        assert script_calls == 2, stats
        # The value pipeline (1), the two script calls (2), and at most a connection
        # handshake or two on top: O(batches), not O(keys).
        assert round_trips <= 6, round_trips
        assert await stack.invalidate_by_tag("bulk") == 1000
    finally:
        await stack.aclose()
        await client.aclose()
        await pool.aclose()  # a pool passed in is not closed by the client
