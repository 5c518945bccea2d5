"""RedisTagIndex against a real redis-server and a real three-master Redis Cluster.

Every test runs twice: on a single server (``redis_clean``) and on the cluster
(``redis_cluster3``), where the whole index shares one hash tag and so one slot.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from tag_index_support import TAG_INDEX_PREFIX as PREFIX
from tag_index_support import Backend

import layercache.redis.tag_index as tag_index_module
from _redis_server import find_free_port
from layercache import CacheEntry, CacheStack, InMemoryTagIndex, MemoryLayer
from layercache._exceptions import CacheLayerError
from layercache.redis import RedisLayer
from layercache.redis._keys import tag_index_shard, tag_index_shard_of, to_member
from layercache.redis.tag_index import RedisTagIndex

pytestmark = pytest.mark.redis


async def all_redis_keys(client: Any) -> set[bytes]:
    """Every key of the database (every primary of a cluster)."""
    return {raw async for raw in client.scan_iter(match=b"*", count=1000)}


async def assert_consistent(index: RedisTagIndex, key: str, all_tags: set[str]) -> None:
    """``key`` is in exactly the tag sets of its recorded tags and in exactly one shard."""
    tags = set(await index.tags_of(key))
    for tag in all_tags:
        holders = await index.keys_for_tags([tag])
        assert (key in holders) == (tag in tags), (key, tag, tags)
    client = index.client
    member = to_member(key)
    shards = [
        bool(await client.sismember(tag_index_shard(PREFIX, n), member))
        for n in range(index.known_keys_shards)
    ]
    expected_shard = tag_index_shard_of(member, index.known_keys_shards)
    assert shards == [bool(tags) and n == expected_shard for n in range(len(shards))]


# -- replace semantics, any/all, remove --------------------------------------------------------


async def test_record_replaces_tags(backend: Backend) -> None:
    index = backend.index()
    assert await index.record("k1", ["a", "b"]) == []
    assert await index.tags_of("k1") == ("a", "b")
    await index.record("k1", ["b", "c", "c"])
    assert await index.tags_of("k1") == ("b", "c")
    assert await index.keys_for_tags(["a"]) == set()
    assert await index.keys_for_tags(["b"]) == {"k1"}
    assert await index.keys_for_tags(["c"]) == {"k1"}
    await assert_consistent(index, "k1", {"a", "b", "c"})
    # Emptied tag sets disappear (Redis drops empty sets): nothing is left behind for "a".
    assert not await index.client.exists(f"{{{PREFIX}}}:tag:a".encode())

    await index.record("k1", [])
    assert await index.tags_of("k1") == ()
    assert await index.keys_for_tags(["b", "c"]) == set()
    assert await index.size() == 0
    assert await index.keys_matching("*") == []


async def test_any_and_all(backend: Backend) -> None:
    index = backend.index()
    await index.record("k1", ["a", "b"])
    await index.record("k2", ["b", "c"])
    await index.record("k3", ["c"])
    await index.record("k4", ["ünï", "🎉"])
    assert await index.keys_for_tags(["a", "c"]) == {"k1", "k2", "k3"}
    assert await index.keys_for_tags(["a", "c"], mode="any") == {"k1", "k2", "k3"}
    assert await index.keys_for_tags(["b", "c"], mode="all") == {"k2"}
    assert await index.keys_for_tags(["a", "c"], mode="all") == set()
    assert await index.keys_for_tags(["b"], mode="all") == {"k1", "k2"}
    assert await index.keys_for_tags(["b", "nope"], mode="all") == set()
    assert await index.keys_for_tags(["nope"]) == set()
    assert await index.keys_for_tags([]) == set()
    assert await index.keys_for_tags(["🎉", "ünï"], mode="all") == {"k4"}
    with pytest.raises(ValueError, match="mode"):
        await index.keys_for_tags(["a"], mode="some")
    with pytest.raises(ValueError, match="single str"):
        await index.record("k5", "abc")
    with pytest.raises(ValueError, match="at most 64"):
        await index.record("k5", [f"t{i}" for i in range(65)])


async def test_remove(backend: Backend) -> None:
    index = backend.index()
    await index.record("k1", ["a", "b"])
    await index.record("k2", ["b"], expires_at=time.time() + 60)
    await index.remove(["k1", "missing", "k1"])
    assert await index.tags_of("k1") == ()
    assert await index.keys_for_tags(["a", "b"]) == {"k2"}
    await assert_consistent(index, "k1", {"a", "b"})
    # More keys than one script call takes.
    keys = [f"bulk:{i}" for i in range(700)]
    for key in keys:
        await index.record(key, ["bulk", f"own:{key}"], expires_at=time.time() + 60)
    assert await index.size() == 701
    await index.remove([*keys, "k2"])
    assert await index.size() == 0
    assert await index.keys_for_tags(["bulk", "b"]) == set()
    # Only the layout marker survives: no tag set, key set, shard or expiry entry is left.
    assert await all_redis_keys(index.client) == {f"{{{PREFIX}}}:layout".encode()}


async def test_concurrent_writers_on_two_instances(backend: Backend) -> None:
    # Two "instances" (two clients, two indexes) record the same key concurrently with
    # different tag sets; whichever write lands last, the key is under exactly its tags.
    first, second = backend.index(), backend.index()
    tag_sets = [[f"t{i}", f"t{(i + 1) % 50}", f"t{(i + 7) % 50}", "common"] for i in range(50)]
    all_tags = {tag for tags in tag_sets for tag in tags}
    for round_ in range(3):
        key = f"hot:{round_}"
        await asyncio.gather(
            *(
                (first if i % 2 else second).record(key, tags, expires_at=time.time() + 60 + i)
                for i, tags in enumerate(tag_sets)
            )
        )
        final = set(await first.tags_of(key))
        assert final in [set(tags) for tags in tag_sets]
        assert set(await second.tags_of(key)) == final
        await assert_consistent(first, key, all_tags)
        assert await first.keys_for_tags(["common"]) == {f"hot:{r}" for r in range(round_ + 1)}
        assert await first.client.zcard(f"{{{PREFIX}}}:expiry".encode()) == round_ + 1


async def test_concurrent_first_use_of_a_fresh_cluster_client(redis_cluster3: Any) -> None:
    # redis-py's asyncio cluster client misroutes a burst of commands sent before it loaded
    # its slot map (and can then fail them); the index initializes the client first.
    redis_cluster3.flushall()
    for round_ in range(5):
        client: Any = redis_cluster3.async_client()
        index = RedisTagIndex(client, prefix=PREFIX)
        try:
            await asyncio.gather(*(index.record(f"k{i}", [f"r{round_}"]) for i in range(200)))
            assert len(await index.keys_for_tags([f"r{round_}"])) == 200
        finally:
            await client.aclose()


# -- expiry ------------------------------------------------------------------------------------


async def wait_past(moment: float) -> None:
    """Wait until the wall clock has passed ``moment`` (bounded: ``moment`` is near)."""
    delay = moment - time.time()
    assert delay < 1.0
    if delay > 0:
        # Waiting on the wall clock itself: the expiry is a wall-clock moment.
        await asyncio.sleep(delay + 0.01)
    assert time.time() > moment


async def test_cleanup_forgets_expired_keys(backend: Backend) -> None:
    writer = backend.index(known_keys_shards=7)
    sweeper = backend.index(known_keys_shards=7)  # another instance cleans up
    # Long enough that no record made here expires (and is swept by the next record) before
    # the seven are written: on a loaded 3-master cluster 0.2 s was not (7 expected, 2 left).
    soon = time.time() + 1.0
    for i in range(5):
        await writer.record(f"old:{i}", ["x", f"o{i}"], expires_at=soon)
    await writer.record("new", ["x"], expires_at=time.time() + 3600)
    await writer.record("forever", ["x"])
    await wait_past(soon)
    # Nothing was written since they expired, so nothing has swept them yet.
    assert len(await sweeper.keys_for_tags(["x"])) == 7

    assert await sweeper.cleanup(batch_size=2) == 5  # three script calls
    assert await sweeper.keys_for_tags(["x"]) == {"new", "forever"}
    assert await sweeper.keys_for_tags([f"o{i}" for i in range(5)]) == set()
    assert await sweeper.tags_of("old:0") == ()
    assert sorted(await sweeper.keys_matching("*")) == ["forever", "new"]
    assert await sweeper.cleanup() == 0
    # The Lua shard rule matches the Python one: the forgotten keys left no shard entry.
    assert await sweeper.size() == 2
    await assert_consistent(writer, "old:3", {"x", "o3"})
    with pytest.raises(ValueError, match="batch_size"):
        await sweeper.cleanup(batch_size=0)


async def test_record_sweeps_expired_keys_on_the_way(backend: Backend) -> None:
    index = backend.index()
    soon = time.time() + 0.2
    for i in range(10):
        await index.record(f"soon:{i}", ["s"], expires_at=soon)
    await wait_past(soon)
    await index.record("unrelated", ["u"])
    assert await index.keys_for_tags(["s"]) == set()
    assert await index.size() == 1
    # A key recorded again after its expiry is kept: the sweep runs before the write.
    await index.record("again", ["a"], expires_at=time.time() - 1)
    await index.record("again", ["a"], expires_at=time.time() + 60)
    assert await index.tags_of("again") == ("a",)


async def test_key_ttl_default_expiry(backend: Backend) -> None:
    index = backend.index(key_ttl=60)
    before = time.time()
    await index.record("k", ["a"])
    await index.record("explicit", ["a"], expires_at=before + 5)
    await index.record("untagged", [])
    client = index.client
    expiry = f"{{{PREFIX}}}:expiry".encode()
    score = await client.zscore(expiry, b"k")
    assert before + 60 <= score <= time.time() + 60
    assert await client.zscore(expiry, b"explicit") == pytest.approx(before + 5)
    assert await client.zscore(expiry, b"untagged") is None
    # Dropping a key's tags also drops its expiry entry.
    await index.record("k", [])
    assert await client.zscore(expiry, b"k") is None
    for bad in (float("nan"), float("inf"), True, "soon"):
        with pytest.raises(ValueError, match="expires_at"):
            await index.record("k", ["a"], expires_at=bad)


# -- patterns, clear, layout ------------------------------------------------------------------

KEYS = [
    "user:1",
    "user:2",
    "user:10",
    "post:1",
    "émoji:🎉",
    "a*b",
    "a\\b",
    "日本",
    "日本語",
    "[x]",
]
PATTERNS = [
    "*",
    "user:?",
    "user:*",
    "?moji:*",
    "a\\*b",
    "a*b",
    "a\\\\b",
    "[ép]*",
    "[^u]*",
    "日?",
    "日*",
    "\\[x\\]",
    "*:1",
    "nothing*",
]


@pytest.mark.parametrize("shards", [1, 5])
async def test_keys_matching_uses_our_glob(backend: Backend, shards: int) -> None:
    index = backend.index(known_keys_shards=shards)
    reference = InMemoryTagIndex()
    for key in KEYS:
        await index.record(key, ["t"])
        reference.record(key, ["t"])
    await index.record("untagged", [])
    for pattern in PATTERNS:
        got = await index.keys_matching(pattern)
        assert len(got) == len(set(got))
        assert sorted(got) == sorted(reference.keys_matching(pattern)), pattern
    # Multi-byte characters: Redis's byte-wise '?' alone would miss these.
    assert await index.keys_matching("?moji:?") == ["émoji:🎉"]
    with pytest.raises(ValueError, match="pattern"):
        await index.keys_matching("")


async def test_clear_leaves_foreign_keys(backend: Backend) -> None:
    client = backend.client()
    index = backend.index(client)
    neighbour = backend.index(client, prefix=PREFIX + "2")
    for i in range(1200):  # more than one UNLINK batch
        await index.record(f"k{i}", ["a", f"t{i % 3}"], expires_at=time.time() + 60)
    await neighbour.record("k1", ["a"])
    foreign = [
        b"other:1",
        f"{PREFIX}:tag:a".encode(),  # the same words without the hash tag
        f"{{{PREFIX}}}".encode(),
        f"{{{PREFIX}}}x:tag:a".encode(),
        f"{{{PREFIX}}}-:keys:0".encode(),
    ]
    for raw in foreign:
        await client.set(raw, b"keep")
    await index.clear()
    assert await index.size() == 0
    assert await index.keys_for_tags(["a"]) == set()
    left = await all_redis_keys(client)
    assert not any(raw.startswith(f"{{{PREFIX}}}:".encode()) for raw in left)
    assert set(foreign) <= left
    assert await neighbour.keys_for_tags(["a"]) == {"k1"}
    await index.clear()  # clearing an empty index is fine


async def test_shard_count_mismatch_is_refused(backend: Backend) -> None:
    sixteen = backend.index(known_keys_shards=16)
    eight = backend.index(known_keys_shards=8)
    await sixteen.record("k", ["a"])
    with pytest.raises(CacheLayerError, match="known_keys_shards") as info:
        await eight.record("k2", ["a"])
    assert "16" in str(info.value)
    with pytest.raises(CacheLayerError, match="known_keys_shards"):
        await eight.remove(["k"])
    assert await sixteen.keys_for_tags(["a"]) == {"k"}


def test_constructor_validation() -> None:
    client = redis.asyncio.Redis()  # never connects: validation fails first or nothing is sent
    for kwargs, message in (
        ({"prefix": ""}, "prefix"),
        ({"prefix": "a{b"}, "prefix"),
        ({"prefix": "a}b"}, "prefix"),
        ({"known_keys_shards": 0}, "known_keys_shards"),
        ({"known_keys_shards": True}, "known_keys_shards"),
        ({"known_keys_shards": 5000}, "known_keys_shards"),
        ({"key_ttl": 0}, "key_ttl"),
        ({"key_ttl": float("inf")}, "key_ttl"),
    ):
        with pytest.raises(ValueError, match=message):
            RedisTagIndex(client, **kwargs)
    with pytest.raises(ValueError, match="decode_responses"):
        RedisTagIndex(redis.asyncio.Redis(decode_responses=True))


async def test_failure_is_a_cache_layer_error() -> None:
    # Nothing listens on the port: connections are refused at once (no retries to wait for).
    client = redis.asyncio.Redis(
        port=find_free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    index = RedisTagIndex(client)
    try:
        with pytest.raises(CacheLayerError) as info:
            await index.record("k", ["a"])
        assert info.value.layer == "tag-index"
        assert info.value.operation == "record"
        with pytest.raises(CacheLayerError):
            await index.keys_for_tags(["a"])
    finally:
        await client.aclose()


# -- the streaming paths, checked against the in-process index ---------------------------------


@pytest.mark.parametrize("small_limits", [False, True])
async def test_keys_for_tags_matches_in_memory_index(
    backend: Backend, small_limits: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if small_limits:
        # Force every streaming branch: SSCAN of "large" sets, several SUNION groups, several
        # tag batches, the paged SINTER replacement with SMISMEMBER.
        monkeypatch.setattr(tag_index_module, "_REPLY_LIMIT", 7)
        monkeypatch.setattr(tag_index_module, "_TAG_BATCH", 3)
        monkeypatch.setattr(tag_index_module, "_SCAN_COUNT", 4)
    rng = random.Random(4)
    index = backend.index()
    reference = InMemoryTagIndex()
    tags = [f"tag{i}" for i in range(12)]
    for i in range(150):
        chosen = rng.sample(tags, rng.randint(1, 6))
        await index.record(f"key:{i}", chosen)
        reference.record(f"key:{i}", chosen)
    for _ in range(40):
        query = rng.sample([*tags, "absent"], rng.randint(1, 5))
        for mode in ("any", "all"):
            expected = reference.keys_for_tags(query, mode)
            assert await index.keys_for_tags(query, mode) == expected, (query, mode)
    assert sorted(await index.keys_matching("key:1*")) == sorted(reference.keys_matching("key:1*"))


# -- 10,000 tagged keys through a stack --------------------------------------------------------


@pytest.mark.slow
async def test_invalidate_10k_tagged_keys(
    backend: Backend, capsys: pytest.CaptureFixture[str]
) -> None:
    client = backend.client()
    index = RedisTagIndex(client, prefix=PREFIX)
    layer = RedisLayer(client=client, prefix="t:value:")
    memory = MemoryLayer(ttl=60, max_size=20_000)
    stack = CacheStack([memory, layer], tag_index=index)
    count = 10_000
    keys = [f"item:{i}" for i in range(count)]
    try:
        started = time.perf_counter()
        for start in range(0, count, 1000):
            await stack.set_many(
                CacheEntry(k, i, {"tags": ["bulk", f"group:{i % 10}"]})
                for i, k in enumerate(keys[start : start + 1000], start)
            )
        write_time = time.perf_counter() - started
        await stack.set("other", "stays", tags=["other"])
        assert await index.size() == count + 1

        started = time.perf_counter()
        found = await index.keys_for_tags(["bulk"])
        lookup_time = time.perf_counter() - started
        assert found == set(keys)

        started = time.perf_counter()
        removed = await stack.invalidate_by_tag("bulk")
        invalidate_time = time.perf_counter() - started
        assert removed == count

        assert await layer.size() == 1
        # The invalidated tag's set lost the keys at once; their other entries (group:N) are
        # expired, for the sweep to forget.
        assert await index.keys_for_tags(["bulk"]) == set()
        assert await index.cleanup() == count
        assert await index.size() == 1
        assert await index.keys_for_tags(["bulk", "group:3"]) == set()
        assert await stack.get("item:42") is None
        assert await stack.get("other") == "stays"
        with capsys.disabled():
            print(
                f"\n[{backend.kind}] 10,000 tagged keys: set_many {write_time:.3f}s, "
                f"keys_for_tags {lookup_time * 1000:.1f} ms, "
                f"invalidate_by_tag {invalidate_time:.3f}s"
            )
    finally:
        await stack.aclose()
