"""RedisLayer on a ``redis.asyncio.RedisCluster`` client (a one-node cluster, real slot rules)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis.exceptions
from redis.crc import key_slot

from layercache._entry import Entry
from layercache.redis import RedisLayer

pytestmark = pytest.mark.redis


def entry(value: Any) -> Entry:
    now = time.time()
    return Entry(value, now, now + 60)


async def test_cluster_rejects_cross_slot_commands(redis_cluster_client: Any) -> None:
    # The premise of this module: keys of different slots cannot share one plain MGET
    # (redis-py raises RedisClusterException; the server itself refuses it too).
    assert key_slot(b"t:a") != key_slot(b"t:b")
    with pytest.raises((redis.exceptions.RedisError, redis.exceptions.RedisClusterException)):
        await redis_cluster_client.execute_command("MGET", "t:a", "t:b")
    node = redis_cluster_client.get_node_from_key("t:a")
    with pytest.raises(redis.exceptions.ResponseError, match="same slot"):
        await redis_cluster_client.execute_command("MGET", "t:a", "t:b", target_nodes=node)


async def test_layer_on_cluster_client(redis_cluster_client: Any) -> None:
    layer = RedisLayer(client=redis_cluster_client, prefix="t:")
    other = RedisLayer(client=redis_cluster_client, prefix="u:")
    keys = [f"k{i}" for i in range(700)]
    await layer.set_many([(k, entry(k), 60.0) for k in keys])
    await layer.set_many([("gone", entry(0), 0), ("forever", entry(1), None)])
    await other.set("k1", entry("other"), 60)

    results = await layer.get_many(["k5", "missing", "k1", "k699"])
    assert [r.value if r else None for r in results] == ["k5", None, "k1", "k699"]
    assert (await layer.get("k3")).value == "k3"  # type: ignore[union-attr]
    assert await layer.ttl("forever") is None
    assert await layer.size() == 701
    assert len(await layer.keys("k1*")) == 111
    assert await layer.has("k2")

    assert await layer.delete_matching("k1*") == 111
    await layer.delete_many([f"k{i}" for i in range(2, 10)])
    assert await layer.size() == 701 - 111 - 8

    await layer.clear()
    assert await layer.size() == 0
    assert (await other.get("k1")).value == "other"  # type: ignore[union-attr]
    assert await layer.ping() is True
