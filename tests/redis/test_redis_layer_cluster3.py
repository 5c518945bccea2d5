"""RedisLayer on a real Redis Cluster of three masters (keys spread over every node).

The one-node cluster of test_redis_layer_cluster.py applies the cross-slot rules; this one adds
what only several nodes bring: commands routed to the right master, bulk commands split per
slot *and per node*, SCAN over every primary.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from layercache._entry import Entry
from layercache.redis import RedisLayer
from layercache.testing import run_layer_contract

pytestmark = pytest.mark.redis

_prefixes = itertools.count()


def entry(value: Any) -> Entry:
    now = time.time()
    return Entry(value, now, now + 60)


def node_sizes(cluster: Any) -> list[int]:
    return [int(node.command("DBSIZE")) for node in cluster.nodes]


async def test_layer_contract_on_three_masters(redis_cluster3_client: Any) -> None:
    def factory() -> RedisLayer:
        # A fresh prefix per check: each check gets an empty layer on the shared cluster.
        return RedisLayer(client=redis_cluster3_client, prefix=f"contract{next(_prefixes)}:")

    report = await run_layer_contract(factory)
    assert not report.failed
    # Every optional method of RedisLayer was exercised, none skipped.
    assert not report.skipped, report.skipped


async def test_bulk_operations_across_slots_and_nodes(
    redis_cluster3: Any, redis_cluster3_client: Any
) -> None:
    layer = RedisLayer(client=redis_cluster3_client, prefix="m:")
    other = RedisLayer(client=redis_cluster3_client, prefix="n:")
    count = 3000
    keys = [f"k{i}" for i in range(count)]
    await layer.set_many([(k, entry(i), 60.0) for i, k in enumerate(keys)])
    await layer.set_many([("gone", entry(0), 0), ("forever", entry(1), None), ("ü🎉", entry(2), 5)])
    await other.set("k1", entry("other"), 60)
    # The keys really are spread over the three masters.
    sizes = node_sizes(redis_cluster3)
    assert sum(sizes) == count + 3
    assert min(sizes) > count // 5, sizes

    values = await layer.get_many([*keys, "missing", "gone", "ü🎉"])
    assert [v.value if v else None for v in values] == [*range(count), None, None, 2]
    assert await layer.ttl("forever") is None
    assert 0 < (await layer.ttl("k7") or 0) <= 60
    assert await layer.size() == count + 2
    assert len(await layer.keys("k1*")) == 1111
    assert len(await layer.keys(limit=10)) == 10
    assert await layer.has("ü🎉")

    await layer.delete_many(keys[:1000])
    assert await layer.get_many(keys[:3]) == [None, None, None]
    assert await layer.size() == count + 2 - 1000
    # k2, k20..k29 and k200..k299 are gone already: k2000..k2999 are left.
    assert await layer.delete_matching("k2*") == 1000
    assert await layer.delete_matching("?🎉") == 1
    assert await layer.size() == count + 2 - 1000 - 1000 - 1

    await layer.clear()
    assert await layer.size() == 0
    assert (await other.get("k1")).value == "other"  # type: ignore[union-attr]
    # Only the other layer's key, and this layer's all-fence (clear writes it, never clears it).
    assert sum(node_sizes(redis_cluster3)) == 2
    assert await redis_cluster3_client.exists(b"m:\x00fence:all") == 1


async def test_concurrent_first_use_of_a_fresh_cluster_client(redis_cluster3: Any) -> None:
    redis_cluster3.flushall()
    for _ in range(20):
        client: Any = redis_cluster3.async_client()  # not initialized: as users create it
        layer = RedisLayer(client=client, prefix="cold:")
        try:
            await asyncio.gather(*(layer.set(f"k{i}", entry(i), 60) for i in range(200)))
        finally:
            await client.aclose()
