"""The tombstones of bulk deletes (``RedisLayer.delete_many``, what ``invalidate_by_tag`` runs),
against a real redis-server and the three-master cluster.

A tombstone is written blind (one ``SET`` per key, no read of the old value): each script call
draws a random nonce, so its tombstones are bytes no earlier read saw, and a fetch that read a
key before the delete is still refused its store. On a single server a batch's keys travel as
one newline-joined argument; a key holding a newline (never a valid cache key, but the layer
can be called directly) must still delete exactly itself.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster
from tag_index_support import Backend

from layercache._codec import EntryCodec
from layercache._entry import Entry
from layercache.redis import RedisLayer
from layercache.redis._lease import TOMBSTONE_MAGIC

pytestmark = pytest.mark.redis

PREFIX = "tomb:"


def entry(value: Any) -> Entry:
    now = time.time()
    return Entry(value, now, now + 60, None, None, ())


def raw_key(key: str) -> bytes:
    return (PREFIX + key).encode("utf-8", "surrogatepass")


async def server_time_us(client: Any) -> int:
    reply = await client.time()
    seconds, micros = next(iter(reply.values())) if isinstance(reply, dict) else reply
    return int(seconds) * 1_000_000 + int(micros)


async def commands(client: Any) -> dict[str, int]:
    """Calls per command so far (every primary of a cluster summed)."""
    if isinstance(client, RedisCluster):
        infos = list(
            (await client.info("commandstats", target_nodes=RedisCluster.PRIMARIES)).values()
        )
    else:
        infos = [await client.info("commandstats")]
    totals: dict[str, int] = {}
    for info in infos:
        for name, values in info.items():
            if name.startswith("cmdstat_"):
                command = name.removeprefix("cmdstat_")
                totals[command] = totals.get(command, 0) + int(values["calls"])
    return totals


async def test_every_delete_leaves_bytes_no_earlier_read_saw(backend: Backend) -> None:
    """A tombstone that looks like the one a delete would write (same microsecond, or a
    clock that stood later) is still replaced by bytes nobody read: a fetch that read it is
    refused its store. Repeated deletes of one key never write the same bytes twice."""
    raw = backend.client()
    ours = RedisLayer(client=backend.client(), prefix=PREFIX)
    other = RedisLayer(client=backend.client(), prefix=PREFIX)
    for planted_at in (await server_time_us(raw), await server_time_us(raw) + 1_000_000):
        planted = TOMBSTONE_MAGIC + str(planted_at).encode()
        await raw.set(raw_key("k"), planted, px=10_000)
        found, lease = await ours.get_leased("k")
        assert found is None
        assert lease.observed == planted
        await other.delete_many(["k", "k2"])
        now = await raw.get(raw_key("k"))
        assert now.startswith(TOMBSTONE_MAGIC)
        assert now != planted
        assert not await ours.set_leased("k", entry("late"), 60, lease, ())
    seen: list[bytes] = []
    for round_ in range(30):
        if round_ % 3 == 0:
            await other.delete("k")
        else:
            await other.delete_many(["k", "k", f"x{round_}"])
        seen.append(await raw.get(raw_key("k")))
    assert all(s.startswith(TOMBSTONE_MAGIC) for s in seen)
    assert len(set(seen)) == len(seen)


async def test_a_fetch_that_read_before_a_bulk_delete_is_refused(backend: Backend) -> None:
    """Every key of a bulk delete (several batches, values and missing keys alike) refuses
    the store of a fetch that read it before."""
    ours = RedisLayer(client=backend.client(), prefix=PREFIX)
    other = RedisLayer(client=backend.client(), prefix=PREFIX)
    keys = [f"item:{i}" for i in range(1_203)]
    await other.set_many([(k, entry(i), 60) for i, k in enumerate(keys) if i % 2])
    leases = [await ours.get_leased(k) for k in keys]
    await other.delete_many(keys)
    for key, (_, lease) in zip(keys, leases, strict=True):
        assert not await ours.set_leased(key, entry("stale"), 60, lease, ()), key
    assert await ours.get_many(keys) == [None] * len(keys)
    # A fetch that reads after the delete stores.
    _, lease = await ours.get_leased(keys[0])
    assert await ours.set_leased(keys[0], entry("fresh"), 60, lease, ())


async def test_bulk_delete_reaches_exactly_its_keys(backend: Backend) -> None:
    """Keys with non-ASCII text, a lone surrogate, spaces, and (called directly) a newline:
    each deleted, and nothing else, across batches."""
    raw = backend.client()
    layer = RedisLayer(client=backend.client(), prefix=PREFIX)
    odd = ["é:ü", "k\udc80", "with space", "a\nb", "tab\tkey", "*?[", ""]
    keys = [f"n:{i}" for i in range(1_100)] + odd
    keep = ["a", "b", "a\n", "n:1100", "tab", "key"]
    await layer.set_many([(k, entry(k), 60) for k in [*keys, *keep]])
    await layer.delete_many(keys)
    for key in keys:
        assert (await raw.get(raw_key(key))).startswith(TOMBSTONE_MAGIC), key
    for key in keep:
        stored = await raw.get(raw_key(key))
        assert stored is not None, key
        assert not stored.startswith(TOMBSTONE_MAGIC), key
        assert EntryCodec().decode(stored).value == key


async def test_bulk_tombstones_are_written_blind(backend: Backend) -> None:
    """One SET per key and no read of the old value (a GETRANGE per key cost as much again
    on the server); on a single server one script per 500 keys."""
    raw = backend.client()
    layer = RedisLayer(client=backend.client(), prefix=PREFIX)
    keys = [f"item:{i}" for i in range(1_000)]
    await layer.set_many([(k, entry(i), 60) for i, k in enumerate(keys)])
    await layer.delete("warm")  # the script loaded
    before = await commands(raw)
    await layer.delete_many(keys)
    after = await commands(raw)
    ran = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    assert ran.get("getrange", 0) == 0, ran
    assert ran.get("get", 0) == 0, ran
    assert ran["set"] == len(keys), ran
    if backend.kind == "single":
        assert ran["evalsha"] == 2, ran
