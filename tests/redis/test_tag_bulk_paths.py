"""Tagged bulk writes and tag invalidation in bulk (issue 16), on a real single server and a real
three-master cluster.

The tag index forgets and records keys with one command per tag set, per known-keys shard and
for the expiry set (each with many members) instead of a few commands per key, and a tagged
``set_many``'s record equals one record per key. On a cluster the Redis layer's bulk deletes
(tombstone scripts) run one call per hash slot, never one per key and never across slots.
Round trips and commands are counted with ``INFO commandstats`` (what the server ran, scripts'
inner commands included), never timed.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
import redis.asyncio
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from tag_index_support import Backend

import layercache.redis.tag_index as tag_index_module
from layercache import (
    CacheEntry,
    CacheStack,
    InMemoryTagIndex,
    MemoryLayer,
    RedisInvalidationBus,
    SyncCacheStack,
)
from layercache.redis import RedisLayer
from layercache.redis._keys import (
    tag_index_base,
    tag_index_by_shard,
    tag_index_expiry,
    tag_index_match,
    tag_index_shard_of,
)
from layercache.redis.tag_index import RedisTagIndex
from polling import eventually_async

pytestmark = pytest.mark.redis

PREFIX = "bulk:idx"
VALUES = "bulk:v:"


def tags_of(i: int) -> list[str]:
    """Key i's tags: 1 to 3 (111 distinct tags in all), every key has ``bulk``."""
    return ["bulk", f"group:{i % 10}", f"team:{i % 100}"][: 1 + i % 3]


async def command_calls(client: Any) -> dict[str, int]:
    """Calls per command so far (``INFO commandstats``; every primary of a cluster summed)."""
    if isinstance(client, RedisCluster):
        per_node = await client.info("commandstats", target_nodes=RedisCluster.PRIMARIES)
        infos = list(per_node.values())
    else:
        infos = [await client.info("commandstats")]
    calls: dict[str, int] = {}
    for info in infos:
        for name, values in info.items():
            command = name.removeprefix("cmdstat_")
            calls[command] = calls.get(command, 0) + int(values["calls"])
    return calls


async def counted(client: Any, call: Callable[[], Awaitable[Any]]) -> tuple[Any, dict[str, int]]:
    """``call()``'s result and the commands the server(s) ran meanwhile."""
    before = await command_calls(client)
    result = await call()
    after = await command_calls(client)
    delta = {name: n - before.get(name, 0) for name, n in after.items()}
    return result, {name: n for name, n in delta.items() if n and name != "info"}


async def index_state(client: Any, prefix: str) -> dict[bytes, Any]:
    """Every Redis key of the index at ``prefix`` (name without ``{prefix}:``) and its content."""
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


# -- record_many in bulk: the same result as one record per key ----------------------------------


def random_batch(
    rng: random.Random, now: float, past: bool
) -> list[tuple[str, list[str], float | None]]:
    """Items over a small key pool (keys re-tagged, also within one batch), tag lists with
    repeats and empty ones; expiries none or future, and long past ones only if ``past``."""
    expiries: list[float | None] = [None, None, now + rng.randint(10, 1000)]
    if past:
        expiries.append(now - 1000)
    items: list[tuple[str, list[str], float | None]] = []
    for _ in range(rng.randint(0, 40)):
        key = rng.choice([f"k{i}" for i in range(30)] + ["ünï:🎉"])
        tags = rng.choices([f"t{i}" for i in range(8)] + ["é"], k=rng.choice([0, 1, 2, 3, 6]))
        items.append((key, tags, rng.choice(expiries)))
    return items


@pytest.mark.parametrize("sweep", [16, 1])
async def test_record_many_in_bulk_equals_one_record_per_key(
    backend: Backend, sweep: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches without expired items take the bulk path, with the keys that earlier batches
    left expired swept first; the others go key by key. Either way the index ends exactly as
    after one ``record`` per item. (``sweep=1``: the sweep's limit is reached, and the bulk
    path must forget exactly the keys the per-key sweeps would have.)"""
    monkeypatch.setattr(tag_index_module, "_RECORD_SWEEP", sweep)
    client = backend.client()
    one_by_one = RedisTagIndex(client, prefix="eq:single", known_keys_shards=5)
    batched = RedisTagIndex(client, prefix="eq:batch", known_keys_shards=5)
    bulk_calls = 0
    for seed in range(10):
        rng = random.Random(seed)
        now = time.time()
        for step in range(6):
            items = random_batch(rng, now, past=step % 3 == 0)
            for key, tags, expires in items:
                await one_by_one.record(key, tags, expires)
            _, commands = await counted(client, lambda items=items: batched.record_many(items))
            if items and commands.get("zrangebyscore", 0) == 1 < len(items):
                bulk_calls += 1  # one sweep for the whole batch: the bulk path ran
            expected = await index_state(client, "eq:single")
            assert await index_state(client, "eq:batch") == expected, (seed, step, items)
    assert bulk_calls >= 10
    final = await index_state(client, "eq:batch")
    assert any(name.startswith(b"tag:") for name in final)
    assert b"expiry" in final


async def test_record_many_after_a_bulk_expire_stays_in_bulk(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tag invalidation leaves many expired entries (``expire``). The next
    ``record_many`` batches take the bulk path all the same (one sweep read per call) and end
    exactly as one ``record`` per item: the keys the per-key sweeps would forget are forgotten
    (in their order, skipping items recorded before the sweep reaches them), items among the
    expired keys are recorded anew."""
    monkeypatch.setattr(tag_index_module, "_RECORD_BATCH", 40)
    # At most 8 x 100 keys swept: some of the 1,200 are left for cleanup() to compare.
    monkeypatch.setattr(tag_index_module, "_RECORD_SWEEP", 1)
    client = backend.client()
    one_by_one = RedisTagIndex(client, prefix="bx:single", known_keys_shards=5)
    batched = RedisTagIndex(client, prefix="bx:batch", known_keys_shards=5)
    keys = [f"item:{i:04}" for i in range(1200)]
    for index in (one_by_one, batched):
        await index.record_many([(k, tags_of(i), None) for i, k in enumerate(keys)])
        assert await index.expire(keys, ["bulk"]) == len(keys)
        assert await index.expire(keys[:10], ["bulk"]) == 0  # already expired: not live
    rng = random.Random(7)
    now = time.time()
    for _ in range(8):
        # Items among the expired keys (before, inside and beyond what the sweeps reach),
        # repeated keys and new ones, with and without tags and expiries.
        items = [
            (
                rng.choice([*keys[:60], *keys[1100:1110], "new:1", "new:2", "new:3"]),
                rng.choice([[], ["bulk"], ["x", "group:1"]]),
                rng.choice([None, now + 600]),
            )
            for _ in range(rng.randint(1, 100))
        ]
        for key, tags, expires in items:
            await one_by_one.record(key, tags, expires)
        _, commands = await counted(client, lambda items=items: batched.record_many(items))
        assert commands["zrangebyscore"] == commands["evalsha"] == -(-len(items) // 40)
        assert await index_state(client, "bx:batch") == await index_state(client, "bx:single")
    assert 0 < await batched.cleanup() == await one_by_one.cleanup()
    assert await index_state(client, "bx:batch") == await index_state(client, "bx:single")


async def test_expire_takes_keys_out_of_the_tags_and_leaves_the_rest_to_the_sweep(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No sweep inside record(): cleanup() below is the only one.
    monkeypatch.setattr(tag_index_module, "_RECORD_SWEEP", 0)
    client = backend.client()
    index = RedisTagIndex(client, prefix=PREFIX)
    await index.record_many(
        [
            ("a", ["t", "u"], None),
            ("b", ["t"], time.time() + 600),
            ("c", ["u"], None),
            ("ü🎉", ["t", "é"], None),
        ]
    )
    _, commands = await counted(client, lambda: index.expire(["a", "b", "ü🎉", "gone"], ["t"]))
    assert commands.get("smembers", 0) == 0, commands  # no key's tags are read
    assert await index.keys_for_tags(["t"]) == set()
    # Their entries under other tags stay until the sweep; "gone" was never recorded.
    assert await index.keys_for_tags(["u", "é"]) == {"a", "c", "ü🎉"}
    assert await index.expire(["a", "b"], ["t", "u"]) == 0  # already expired: none live
    assert await index.keys_for_tags(["u"]) == {"c"}
    # A key recorded again before the sweep keeps its new record, under every tag it names
    # (also one its expired entry named: "t" left its set, the entry still said "t").
    await index.record("b", ["v"])
    await index.record_many([("ü🎉", ["t"], None)])
    assert await index.cleanup() == 2  # a, gone
    assert await index.tags_of("b") == ("v",)
    assert await index.tags_of("a") == ()
    assert await index.keys_for_tags(["t"]) == {"ü🎉"}
    assert await index.keys_for_tags(["t", "u", "v", "é"]) == {"b", "c", "ü🎉"}
    assert await index.size() == 3
    with pytest.raises(ValueError, match="single str"):
        await index.expire(["c"], "u")
    with pytest.raises(ValueError, match="tag"):
        await index.expire(["c"], ["bad\ntag"])
    assert await index.expire([], ["u"]) == 0
    assert await index.keys_for_tags(["u"]) == {"c"}


# -- the index's bulk commands -----------------------------------------------------------------


async def test_index_records_and_forgets_with_one_command_per_set(redis_clean: Any) -> None:
    """2,000 keys with 1 to 3 of 111 tags, 16 known-keys shards: record_many costs one
    SMEMBERS and one SADD of its tag set per key, plus one command per tag set, shard and the
    expiry set per script call (500 keys). Recording the same tags again touches no tag set;
    forgetting costs one SMEMBERS per key and one command per set per call (1,000 keys).
    (One record per key cost 3 to 5 more commands per key, and a sweep per key.)"""
    client = redis.asyncio.Redis(host=redis_clean.host, port=redis_clean.port)
    index = RedisTagIndex(client, prefix=PREFIX, key_ttl=600)
    count = 2000
    items = [(f"item:{i}", tags_of(i), None) for i in range(count)]
    sets_per_call = 111 + 16
    try:
        await index.record("warm", ["w"])  # scripts loaded, layout written
        await index.remove(["warm"])

        _, first = await counted(client, lambda: index.record_many(items))
        assert first["evalsha"] == 4
        assert first["zrangebyscore"] == 4  # one sweep per call, not one per key
        assert first["smembers"] == count
        assert first["sadd"] <= count + 4 * sets_per_call, first
        assert first.get("srem", 0) == 0, first
        assert first.get("del", 0) == 0, first
        assert first["zadd"] <= 4 * 2, first  # the expiry set: a few commands per call

        _, again = await counted(client, lambda: index.record_many(items))
        assert again["smembers"] == count
        # One SADD per tag set and shard per call (members already there), none per key.
        assert again.get("sadd", 0) <= 4 * sets_per_call, again
        assert again.get("del", 0) == 0, again
        assert again.get("srem", 0) == 0, again

        # Untagged writes of keys that never had tags: nothing per key but the SMEMBERS.
        plain = [(f"plain:{i}", (), None) for i in range(count)]
        _, untagged = await counted(client, lambda: index.record_many(plain))
        assert untagged["smembers"] == count
        assert untagged.get("sadd", 0) == 0, untagged
        assert untagged.get("del", 0) == 0, untagged
        assert untagged["srem"] <= 4 * 16, untagged

        _, forgot = await counted(client, lambda: index.remove([k for k, _, _ in items]))
        assert forgot["evalsha"] == 2
        assert forgot["smembers"] == count
        assert forgot["srem"] <= 2 * sets_per_call, forgot
        assert forgot["del"] == 2, forgot
        assert forgot["zrem"] == 2, forgot
        assert await index.size() == 0
        assert await index_state(client, PREFIX) == {b"layout": b"16"}
    finally:
        await client.aclose()


async def test_cleanup_forgets_in_bulk(redis_clean: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """3,000 keys whose expiry passed: one cleanup script call forgets them all with a few
    commands per tag set and shard (one SMEMBERS per key)."""
    client = redis.asyncio.Redis(host=redis_clean.host, port=redis_clean.port)
    index = RedisTagIndex(client, prefix=PREFIX)
    now = time.time()
    try:
        assert await index.cleanup() == 0  # the script loaded
        await index.record_many([(f"old:{i}", tags_of(i), now + 60) for i in range(3000)])
        await index.record("new", ["bulk"], now + 600)

        class Later:
            @staticmethod
            def time() -> float:
                return now + 120

        monkeypatch.setattr(tag_index_module, "time", Later)
        forgotten, commands = await counted(client, lambda: index.cleanup(batch_size=10_000))
        assert forgotten == 3000
        assert commands["evalsha"] == 1
        assert commands["smembers"] == 3000
        assert commands["srem"] <= 3 * (111 + 16), commands
        assert await index.keys_for_tags(["bulk"]) == {"new"}
        assert await index.size() == 1
    finally:
        await client.aclose()


def test_grouping_by_shard_follows_the_shard_rule() -> None:
    members = [f"k{i}".encode() for i in range(2000)] + ["ü🎉".encode()]
    for shards in (1, 7, 16):
        groups = tag_index_by_shard(members, shards)
        assert sorted(m for group in groups.values() for m in group) == sorted(members)
        for number, group in groups.items():
            assert all(tag_index_shard_of(m, shards) == number for m in group)


async def test_remove_sends_keys_joined_and_ignores_impossible_keys(backend: Backend) -> None:
    """``remove`` sends each shard's keys as one newline-joined argument: a key holding a
    newline cannot be a recorded key (keys are validated), and must not split into others."""
    index = backend.index(known_keys_shards=3)
    await index.record_many([("a", ["t"], None), ("b", ["t"], None), ("ü🎉", ["t"], None)])
    await index.remove(["a\nb", "a\n", "\nb"])
    assert await index.keys_for_tags(["t"]) == {"a", "b", "ü🎉"}
    await index.remove(["a", "ü🎉", "never-recorded"])
    assert await index.keys_for_tags(["t"]) == {"b"}
    assert await index.size() == 1


# -- 10,000 tagged keys, two stacks and the bus -----------------------------------------------


class Instance:
    def __init__(self, client: Any, index: Any) -> None:
        self.memory = MemoryLayer(max_size=50_000)
        self.layer = RedisLayer(client=client, prefix=VALUES)
        self.stack = CacheStack(
            [self.memory, self.layer],
            tag_index=index,
            invalidation_bus=RedisInvalidationBus(publisher=client, channel="bulk:bus"),
            broadcast_l1_invalidation=False,
        )


@pytest.mark.slow
@pytest.mark.parametrize("index_kind", ["redis", "memory"])
async def test_invalidate_10k_tagged_keys_everywhere(backend: Backend, index_kind: str) -> None:
    """After ``invalidate_by_tag`` on one stack, none of the 10,000 keys is left in either
    stack's memory layer, in Redis or under the tag in the index (their other entries expired,
    gone after the sweep); keys without the tag stay. With the shared index the server runs one
    index script per 2,000 keys and one tombstone script per 500 keys (per slot on a cluster),
    and no command per key in the index."""
    client = backend.client()
    if index_kind == "redis":
        shared = RedisTagIndex(client, prefix=PREFIX)
        a, b = Instance(client, shared), Instance(client, shared)
    else:
        a = Instance(client, InMemoryTagIndex(max_keys=20_000))
        b = Instance(client, InMemoryTagIndex(max_keys=20_000))
    count = 10_000
    keys = [f"item:{i}" for i in range(count)]
    async with a.stack, b.stack:
        await a.stack.set("warm", 0, tags=["warm"])  # every script loaded
        await a.stack.invalidate_by_tag("warm")
        await a.stack.set_many(CacheEntry(k, i, {"tags": tags_of(i)}) for i, k in enumerate(keys))
        await a.stack.set("keep", "kept", tags=["unrelated"])
        await a.stack.set("plain", "untagged")
        assert [e is not None for e in await b.stack.get_many(keys)] == [True] * count
        assert b.memory.size() == count

        removed, commands = await counted(client, lambda: a.stack.invalidate_by_tag("bulk"))
        assert removed == count
        await eventually_async(lambda: b.memory.size() == 0, what="the peer's L1 emptied")

        assert a.memory.size() == 2  # keep, plain
        assert await a.layer.get_many(keys) == [None] * count
        assert await b.stack.get_many(keys[:100]) == [None] * 100
        assert await b.stack.get("keep") == "kept"
        assert await a.stack.get("plain") == "untagged"
        if index_kind == "redis":
            # The invalidated tag's set lost every key at once; the keys' other entries are
            # expired (score 0), for the sweep to forget. No command per key or key and tag:
            # the tag's keys in one SMEMBERS (one set: no SUNION), then one expire script per
            # 2,000 keys: ZADDs of 500 keys and SREMs of the tag's set of 1,000 (the bound of
            # one command's members).
            assert await shared.keys_for_tags(["bulk"]) == set()
            assert commands["smembers"] == 1, commands
            assert commands.get("sunion", 0) == 0, commands
            assert commands["srem"] == count // 1000, commands
            assert commands["zadd"] == count // 500, commands
            index_scripts = 5
            # Every key is expired (score 0), or already forgotten by a record's sweep since.
            due = {m.decode() for m in await client.zrangebyscore(tag_index_expiry(PREFIX), 0, 0)}
            assert due <= set(keys)
            for key in set(keys[:500]) - due:
                assert await shared.tags_of(key) == (), key
            assert await shared.cleanup() == len(due) >= count - 100
            assert await shared.size() == 1
            assert await shared.keys_for_tags(["bulk", "group:3", "team:42"]) == set()
            state = await index_state(client, PREFIX)
            assert set(state) - {b"layout", b"expiry"} == {
                b"tag:unrelated",
                b"key:keep",
                *(n for n in state if n.startswith(b"keys:")),
            }
            assert len([n for n in state if n.startswith(b"keys:")]) == 1
        else:
            index_scripts = 0
        # The values: one tombstone script per 500 keys on a server (a cluster: per slot among
        # them, about one per key for keys spread over 16,384 slots); the tag's fence: one.
        value_scripts = count // 500 if backend.kind == "single" else count
        assert commands["evalsha"] <= index_scripts + value_scripts + 1, commands


async def test_bulk_delete_one_script_per_slot(backend: Backend) -> None:
    """Keys that share hash slots (hash tags) are deleted with one tombstone script per slot
    among each 500 keys, on whichever node holds the slot: never a CROSSSLOT error, never a
    call per key (which a cluster cost before). A server: one script per 500 keys."""
    client = backend.client()
    layer = RedisLayer(client=client, prefix="slots:")
    stack = CacheStack([MemoryLayer(), layer])
    tagged = [f"{{tenant{i % 6}}}:item:{i}" for i in range(3000)]
    spread = [f"k{i}" for i in range(300)]
    keys = tagged + spread
    async with stack:
        warm = [f"warm{i}" for i in range(60)]  # the script loaded on every node
        await stack.set_many((k, 0) for k in warm)
        await stack.delete_many(warm)
        await stack.set_many((k, i) for i, k in enumerate(keys))
        _, commands = await counted(client, lambda: stack.delete_many(keys))
        assert await layer.get_many(keys) == [None] * len(keys)
        assert await layer.size() == 0
        if backend.kind == "single":
            assert commands["evalsha"] == 7, commands
        else:
            # 3,000 keys in 6 slots: 6 calls per 500 keys; 300 keys over ~300 slots.
            slots = len({key_slot(f"slots:{k}".encode()) for k in spread})
            assert commands["evalsha"] <= 6 * 6 + slots, commands
            assert len({key_slot(f"slots:{k}".encode()) for k in tagged}) == 6


# -- a set during the invalidation --------------------------------------------------------------


class Interleaving(RedisTagIndex):
    """A RedisTagIndex that runs a step of a test right after its next ``keys_for_tags`` or
    ``expire`` call (inside the invalidation that made it: ``expire`` is how a tag
    invalidation forgets its keys in this index)."""

    after: dict[str, Callable[[], Awaitable[None]]]

    async def keys_for_tags(self, tags: Sequence[str], mode: str = "any") -> set[str]:
        found = await super().keys_for_tags(tags, mode)
        step = self.after.pop("keys_for_tags", None)
        if step is not None:
            await step()
        return found

    async def expire(self, keys: Any, tags: Sequence[str] = ()) -> int:
        live = await super().expire(keys, tags)
        step = self.after.pop("expire", None)
        if step is not None:
            await step()
        return live


@pytest.mark.parametrize("moment", ["keys_for_tags", "expire"])
async def test_set_during_invalidation_is_consistent(backend: Backend, moment: str) -> None:
    """A ``set`` that lands inside a bulk invalidation (after it resolved the tag's keys, or
    after it forgot them in the index, before the values are deleted) leaves its key either
    gone from every layer or stored with tags the index knows, so the next invalidation of
    the tag reaches it; a ``set`` after the invalidation returned stays."""
    client = backend.client()
    index = Interleaving(client, prefix=PREFIX)
    index.after = {}
    memory = MemoryLayer(max_size=10_000)
    layer = RedisLayer(client=client, prefix=VALUES)
    stack = CacheStack([memory, layer], tag_index=index)
    count = 3000
    keys = [f"item:{i}" for i in range(count)]
    concurrent = ["item:7", "item:2999", "fresh"]

    async def concurrent_sets() -> None:
        for key in concurrent:
            await stack.set(key, f"new:{key}", tags=["bulk"])

    async with stack:
        await stack.set_many(CacheEntry(k, i, {"tags": tags_of(i)}) for i, k in enumerate(keys))
        index.after[moment] = concurrent_sets
        assert await stack.invalidate_by_tag("bulk") == count
        assert not index.after, "the concurrent step did not run"
        for key in concurrent:
            in_memory = memory.get(key)
            stored = await layer.get(key)
            known = await index.tags_of(key)
            if stored is None:
                assert in_memory is None, key
            else:
                assert stored.value == f"new:{key}", key
                assert in_memory is None or in_memory.value == stored.value, key
                assert known == ("bulk",), (key, known)
        assert await layer.get_many(keys[8:2999]) == [None] * (2999 - 8)
        # Whatever the concurrent sets left, the next invalidation of the tag removes it.
        await stack.invalidate_by_tag("bulk")
        for key in concurrent:
            assert await stack.get(key) is None
        # Every key's entries are expired now, and the sweep forgets them all.
        await index.cleanup()
        assert await index.size() == 0
        await stack.set("after", "stays", tags=["bulk"])
        assert await stack.get("after") == "stays"
        assert await index.keys_for_tags(["bulk"]) == {"after"}


# -- the sync stack ------------------------------------------------------------------------------


def test_sync_stack_bulk_tags(redis_clean: Any) -> None:
    import redis as sync_redis

    client = sync_redis.Redis(host=redis_clean.host, port=redis_clean.port)
    index: Any = RedisTagIndex(client, prefix=PREFIX)
    memory = MemoryLayer(max_size=10_000)
    stack = SyncCacheStack([memory, RedisLayer(client=client, prefix=VALUES)], tag_index=index)
    count = 3000
    keys = [f"item:{i}" for i in range(count)]
    team = [i for i in range(count) if "team:42" in tags_of(i)]

    def calls() -> dict[str, int]:
        info = client.info("commandstats")
        return {n.removeprefix("cmdstat_"): int(v["calls"]) for n, v in info.items()}

    try:
        stack.set_many(CacheEntry(k, i, {"tags": tags_of(i)}) for i, k in enumerate(keys))
        assert index.size() == count
        before = calls()
        assert stack.invalidate_by_tag("team:42") == len(team) == 10
        assert stack.invalidate_by_tag("bulk") == count - len(team)
        delta = {n: c - before.get(n, 0) for n, c in calls().items()}
        # 1 + 2 index scripts (10 keys, then 2,990 in batches of 2,000), each with SREMs of
        # 1,000 keys of the tag's set and ZADDs of 500; no command per key.
        assert delta["srem"] == 1 + 2 + 1, delta
        assert delta["zadd"] == 1 + 4 + 2, delta
        assert delta["smembers"] == 2, delta
        assert memory.size() == 0
        assert index.keys_for_tags(["bulk", "team:42"]) == set()
        assert index.cleanup() == count
        assert index.size() == 0
        assert stack.get_many(keys[:50]) == [None] * 50
    finally:
        stack.close()
        client.close()
