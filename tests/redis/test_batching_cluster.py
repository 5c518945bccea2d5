"""Batched reads and coalesced writes on a real three-master Redis Cluster, keys across slots.

A batch of keys of many slots becomes one ``MGET`` per slot, sent as one pipeline per node
(redis-py's ``mget_nonatomic``): the nodes see a few reads (socket read events, ``INFO stats``
``total_reads_processed``), not one per key. Both stacks: ``CacheStack`` on the asyncio cluster
client, ``SyncCacheStack`` on the sync one with threads.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
import redis
import redis.cluster

from layercache import CacheStack, SyncCacheStack
from layercache.redis import RedisLayer

pytestmark = pytest.mark.redis

KEYS = [f"user:{i}" for i in range(300)]


def _stat(node: Any, section: str, field: str) -> int:
    for line in node.command("INFO", section).decode().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split("calls=")[1].split(",")[0]) if "calls=" in value else int(value)
    return 0


def _reset(cluster: Any) -> None:
    for node in cluster.nodes:
        node.command("CONFIG", "RESETSTAT")


def _totals(cluster: Any) -> dict[str, int]:
    return {
        "get": sum(_stat(n, "commandstats", "cmdstat_get") for n in cluster.nodes),
        "mget": sum(_stat(n, "commandstats", "cmdstat_mget") for n in cluster.nodes),
        "reads": sum(_stat(n, "stats", "total_reads_processed") for n in cluster.nodes),
    }


def _slots(keys: list[str]) -> int:
    from redis.crc import key_slot

    return len({key_slot(f"b:{k}".encode()) for k in keys})


async def test_concurrent_reads_across_slots_share_one_pipeline_per_node(
    redis_cluster3: Any, redis_cluster3_client: Any
) -> None:
    cache = CacheStack([RedisLayer(client=redis_cluster3_client, prefix="b:", ttl=60)])
    try:
        await cache.set_many([(k, {"k": k}) for k in KEYS])
        _reset(redis_cluster3)
        got = await asyncio.gather(*(cache.get(k) for k in KEYS))
        assert got == [{"k": k} for k in KEYS]
        totals = _totals(redis_cluster3)
        # The first read goes alone; the other 299 (256 + 43) are MGETs of one slot each.
        assert totals["get"] == 1, totals
        assert totals["mget"] == _slots(KEYS[1:257]) + _slots(KEYS[257:]), totals
        # ...pipelined per node: a few socket reads per node, not one per key (300+).
        assert totals["reads"] <= 40, totals
    finally:
        await cache.aclose()


async def test_concurrent_sets_across_slots_share_pipelines(
    redis_cluster3: Any, redis_cluster3_client: Any
) -> None:
    cache = CacheStack([RedisLayer(client=redis_cluster3_client, prefix="b:", ttl=60)])
    try:
        await cache.set("warm", 1)
        _reset(redis_cluster3)
        await asyncio.gather(*(cache.set(k, [k]) for k in KEYS))
        totals = _totals(redis_cluster3)
        assert totals["reads"] <= 40, totals
        assert await cache.get_many(KEYS) == [[k] for k in KEYS]
    finally:
        await cache.aclose()


def _sync_cluster(cluster: Any) -> Any:
    return redis.RedisCluster(
        startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in cluster.startup_nodes],
        socket_timeout=5,
    )


def test_threads_read_across_slots_in_batches(redis_cluster3: Any) -> None:
    redis_cluster3.flushall()
    client = _sync_cluster(redis_cluster3)
    cache = SyncCacheStack([RedisLayer(client=client, prefix="b:", ttl=60)])
    try:
        cache.set_many([(k, {"k": k}) for k in KEYS])
        _reset(redis_cluster3)
        barrier = threading.Barrier(len(KEYS))
        results: dict[str, Any] = {}

        def read(key: str) -> None:
            barrier.wait(10)
            results[key] = cache.get(key)

        threads = [threading.Thread(target=read, args=(k,)) for k in KEYS]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not any(t.is_alive() for t in threads)
        assert results == {k: {"k": k} for k in KEYS}
        totals = _totals(redis_cluster3)
        # Threads arrive over some milliseconds; still far fewer reads than callers.
        assert totals["get"] < len(KEYS) // 2, totals
        assert totals["mget"] > 0, totals
    finally:
        cache.close()
        client.close()
