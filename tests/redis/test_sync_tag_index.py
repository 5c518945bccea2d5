"""The sync RedisTagIndex (``SyncRedisTagIndex``) on its own and shared by SyncCacheStack
instances, against a real redis-server and the real three-master cluster.

A tag invalidation on one instance removes the keys another instance stored from Redis, and
(with the bus) from that instance's L1; ``keys_for_tags`` any/all, expiry and cleanup.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.retry import Retry
from tag_index_support import Backend

from _redis_server import RedisServer
from layercache import (
    CacheEntry,
    CacheLayerError,
    MemoryLayer,
    RedisInvalidationBus,
    RedisLayer,
    RedisTagIndex,
    SyncCacheStack,
)
from polling import eventually

pytestmark = pytest.mark.redis

DEADLINE = 10.0


def wait_past(moment: float) -> None:
    """Wait until the wall clock has passed ``moment`` (bounded: ``moment`` is near).

    The expiry under test is a wall-clock moment, so the wait is on the wall clock itself.
    """
    assert moment - time.time() < 1.0
    eventually(lambda: time.time() > moment + 0.01, timeout=2.0)


@pytest.fixture
def backend(sync_backend: Backend) -> Backend:
    """Sync clients on a single server and on the three-master cluster (tests/redis/conftest.py)."""
    return sync_backend


@pytest.fixture
def prefix() -> str:
    return f"ti-{uuid.uuid4().hex[:8]}"


# -- the component --------------------------------------------------------------------------


def test_a_sync_client_makes_a_sync_index(backend: Backend, prefix: str) -> None:
    import layercache
    import layercache.redis

    index: Any = RedisTagIndex(client=backend.client(), prefix=f"{prefix}:tags")
    assert type(index) is layercache.redis.SyncRedisTagIndex
    assert layercache.SyncRedisTagIndex is layercache.redis.SyncRedisTagIndex
    with pytest.raises(ValueError, match="known_keys_shards"):
        RedisTagIndex(client=backend.client(), known_keys_shards=0)
    index.close()


def test_record_any_all_remove_and_matching(backend: Backend, prefix: str) -> None:
    writer: Any = RedisTagIndex(client=backend.client(), prefix=f"{prefix}:tags")
    reader: Any = RedisTagIndex(client=backend.client(), prefix=f"{prefix}:tags")
    assert writer.record("post:1", ["posts", "user:7"]) == []
    writer.record("post:2", ["posts"])
    writer.record("user:7", ["user:7", "users"])
    writer.record("ключ:🎉", ["posts", "unicode"])
    # Another instance sees the same index.
    assert reader.tags_of("post:1") == ("posts", "user:7")
    assert reader.keys_for_tags(["posts"]) == {"post:1", "post:2", "ключ:🎉"}
    assert reader.keys_for_tags(["posts", "user:7"], mode="any") == {
        "post:1",
        "post:2",
        "user:7",
        "ключ:🎉",
    }
    assert reader.keys_for_tags(["posts", "user:7"], mode="all") == {"post:1"}
    assert reader.keys_for_tags(["posts", "nothing"], mode="all") == set()
    assert reader.keys_for_tags([]) == set()
    assert sorted(reader.keys_matching("post:*")) == ["post:1", "post:2"]
    assert reader.size() == 4
    # A new record replaces the key's tags.
    writer.record("post:1", ["archive"])
    assert reader.keys_for_tags(["posts", "user:7"], mode="all") == set()
    assert reader.keys_for_tags(["archive"]) == {"post:1"}
    reader.remove(["post:1", "post:2", "never-recorded"])
    assert reader.keys_for_tags(["posts", "archive"]) == {"ключ:🎉"}
    assert reader.tags_of("post:1") == ()
    assert reader.size() == 2
    with pytest.raises(ValueError, match="mode"):
        reader.keys_for_tags(["posts"], mode="some")


def test_record_many_equals_one_record_per_key(backend: Backend, prefix: str) -> None:
    client = backend.client()
    batched: Any = RedisTagIndex(client=client, prefix=f"{prefix}:many")
    single: Any = RedisTagIndex(client=client, prefix=f"{prefix}:one")
    items = [
        ("a", ["x", "y"], None),
        ("b", ["y"], time.time() + 60),
        ("a", ["z"], None),  # re-tagged within the batch: the last tags win
        ("c", ["x"], None),
        ("c", [], None),  # forgotten again
    ]
    assert batched.record_many(items) == []
    for key, tags, expires in items:
        single.record(key, tags, expires)
    for index in (batched, single):
        assert index.keys_for_tags(["x", "y", "z"]) == {"a", "b"}
        assert index.tags_of("a") == ("z",)
        assert index.size() == 2
    # Through a SyncCacheStack: one batched call for the whole set_many.
    stack = SyncCacheStack(
        [MemoryLayer(), RedisLayer(client=client, prefix=f"{prefix}:v:")], tag_index=batched
    )
    with stack:
        stack.set_many(CacheEntry(f"k{i}", i, {"tags": ["bulk", f"g{i % 2}"]}) for i in range(1200))
        assert batched.keys_for_tags(["bulk"]) == {f"k{i}" for i in range(1200)}
        assert stack.invalidate_by_tag("g1") == 600
        assert stack.get("k1") is None
        assert stack.get("k2") == 2


def test_expiry_and_cleanup(backend: Backend, prefix: str) -> None:
    writer: Any = RedisTagIndex(client=backend.client(), prefix=f"{prefix}:tags")
    sweeper: Any = RedisTagIndex(client=backend.client(), prefix=f"{prefix}:tags")
    soon = time.time() + 0.2
    for i in range(5):
        writer.record(f"old:{i}", ["x"], expires_at=soon)
    writer.record("new", ["x"], expires_at=time.time() + 3600)
    writer.record("forever", ["x"])
    wait_past(soon)
    # Nothing was written since they expired, so nothing has swept them yet.
    assert len(sweeper.keys_for_tags(["x"])) == 7
    assert sweeper.cleanup(batch_size=2) == 5
    assert sweeper.keys_for_tags(["x"]) == {"new", "forever"}
    assert sweeper.cleanup() == 0
    assert sweeper.size() == 2
    with pytest.raises(ValueError, match="batch_size"):
        sweeper.cleanup(batch_size=0)


def test_clear_leaves_foreign_keys(backend: Backend, prefix: str) -> None:
    client = backend.client()
    index: Any = RedisTagIndex(client=client, prefix=f"{prefix}:tags")
    other: Any = RedisTagIndex(client=client, prefix=f"{prefix}:other")
    for i in range(30):
        index.record(f"k{i}", ["t"])
    other.record("keep", ["t"])
    client.set(f"{prefix}:plain", b"1")
    index.clear()
    assert index.size() == 0
    assert index.keys_for_tags(["t"]) == set()
    assert other.keys_for_tags(["t"]) == {"keep"}
    assert client.get(f"{prefix}:plain") == b"1"


def test_concurrent_writers_on_threads_never_mix_tag_sets(backend: Backend, prefix: str) -> None:
    a: Any = RedisTagIndex(client=backend.client(), prefix=f"{prefix}:tags")
    b: Any = RedisTagIndex(client=backend.client(), prefix=f"{prefix}:tags")
    go = threading.Event()
    failures: list[BaseException] = []

    def writer(index: Any, tags: list[str]) -> None:
        go.wait(DEADLINE)
        try:
            for _ in range(30):
                index.record("contested", tags)
        except BaseException as exc:  # reported by the assertion below
            failures.append(exc)

    threads = [
        threading.Thread(target=writer, args=(a, ["a1", "a2"])),
        threading.Thread(target=writer, args=(b, ["b1", "b2"])),
    ]
    for thread in threads:
        thread.start()
    go.set()
    for thread in threads:
        thread.join(DEADLINE)
    assert failures == []
    tags = set(a.tags_of("contested"))
    assert tags in ({"a1", "a2"}, {"b1", "b2"})  # one writer's set, never a mix
    for tag in ("a1", "a2", "b1", "b2"):
        assert (a.keys_for_tags([tag]) == {"contested"}) == (tag in tags)


def test_failure_is_a_cache_layer_error(redis_server: RedisServer) -> None:
    from _redis_server import find_free_port

    # Nothing listens on that port; one attempt per command (redis-py retries by default).
    client = redis.Redis(
        port=find_free_port(),
        socket_connect_timeout=0.5,
        socket_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        index: Any = RedisTagIndex(client=client, prefix="nobody")
        with pytest.raises(CacheLayerError) as raised:
            index.record("k", ["t"])
        assert raised.value.layer == "tag-index"
        with pytest.raises(CacheLayerError):
            index.keys_for_tags(["t"])
    finally:
        client.close()


# -- shared by SyncCacheStack instances --------------------------------------------------------


@dataclass
class Instance:
    client: Any
    memory: MemoryLayer
    stack: SyncCacheStack
    index: Any


def make_instance(client: Any, prefix: str, *, bus: bool, **options: Any) -> Instance:
    memory = MemoryLayer(name="memory")
    index = RedisTagIndex(client=client, prefix=f"{prefix}:tags")
    extra: dict[str, Any] = {}
    if bus:
        extra["invalidation_bus"] = RedisInvalidationBus(
            publisher=client, channel=f"{prefix}:bus", health_check_interval=0.25
        )
        extra["broadcast_l1_invalidation"] = True
    stack = SyncCacheStack(
        [memory, RedisLayer(client=client, prefix=f"{prefix}:")],
        tag_index=index,
        **extra,
        **options,
    )
    return Instance(client, memory, stack, index)


@pytest.fixture
def pair_factory(backend: Backend, prefix: str) -> Iterator[Callable[..., list[Instance]]]:
    made: list[Instance] = []

    def make(bus: bool, **options: Any) -> list[Instance]:
        pair = [make_instance(backend.client(), prefix, bus=bus, **options) for _ in range(2)]
        for instance in pair:
            instance.stack.__enter__()  # subscribes the bus before the test starts
        made.extend(pair)
        return pair

    yield make
    closers = [threading.Thread(target=i.stack.close) for i in made]
    for closer in closers:
        closer.start()
    for closer in closers:
        closer.join(DEADLINE)


def redis_has(instance: Instance, prefix: str, key: str) -> bool:
    raw = instance.client.get(f"{prefix}:{key}".encode())
    return raw is not None and not bytes(raw).startswith(b"\xc1LT")  # not a tombstone


def test_invalidate_by_tag_removes_the_other_instances_keys_from_redis(
    pair_factory: Callable[..., list[Instance]], prefix: str
) -> None:
    a, b = pair_factory(bus=False)
    b.stack.set("post:1", "p1", tags=["posts"])
    b.stack.set("post:2", "p2", tags=["posts", "featured"])
    a.stack.set("post:3", "p3", tags=["posts"])
    b.stack.set("other", "o", tags=["misc"])
    assert a.index.keys_for_tags(["posts"]) == {"post:1", "post:2", "post:3"}
    assert a.stack.invalidate_by_tag("posts") == 3
    for key in ("post:1", "post:2", "post:3"):
        assert not redis_has(a, prefix, key)
    assert redis_has(a, prefix, "other")
    assert b.index.keys_for_tags(["posts"]) == set()
    # post:2's entry under "featured" is expired by the invalidation: gone after the sweep.
    assert b.index.cleanup() == 3
    assert b.index.keys_for_tags(["posts", "featured"]) == set()
    assert b.stack.get("other") == "o"


@pytest.mark.parametrize("mode", ["any", "all"])
def test_invalidate_by_tags_reaches_the_other_l1_through_the_bus(
    pair_factory: Callable[..., list[Instance]], prefix: str, mode: str
) -> None:
    a, b = pair_factory(bus=True)
    b.stack.set("both", 1, tags=["red", "round"])
    b.stack.set("red-only", 2, tags=["red"])
    b.stack.set("untagged", 3)
    for key in ("both", "red-only", "untagged"):
        assert b.memory.get(key) is not None  # in B's L1
    expected = {"both", "red-only"} if mode == "any" else {"both"}
    assert a.stack.invalidate_by_tags(["red", "round"], mode=mode) == len(expected)
    eventually(lambda: all(b.memory.get(key) is None for key in expected))
    for key in expected:
        assert not redis_has(a, prefix, key)
        assert b.stack.get(key) is None
    assert b.memory.get("untagged") is not None  # untouched
    if mode == "all":
        assert b.memory.get("red-only") is not None
        assert b.stack.get("red-only") == 2


def test_a_set_replaces_tags_across_instances(
    pair_factory: Callable[..., list[Instance]],
) -> None:
    a, b = pair_factory(bus=True)
    a.stack.set("k", "v1", tags=["old"])
    b.stack.set("k", "v2", tags=["new"])  # the tags belong to the value
    eventually(lambda: a.memory.get("k") is None)  # B's announcement reached A's L1
    assert a.stack.invalidate_by_tag("old") == 0
    assert a.stack.get("k") == "v2"
    assert a.stack.invalidate_by_tag("new") == 1
    eventually(lambda: b.memory.get("k") is None)
    assert b.stack.get("k") is None


def test_tagged_keys_expire_from_the_shared_index(
    pair_factory: Callable[..., list[Instance]],
) -> None:
    a, b = pair_factory(bus=False)
    before = time.time()
    a.stack.set("short", "s", tags=["t"], ttl=0.2)
    b.stack.set("long", "l", tags=["t"], ttl=3600)
    assert a.index.keys_for_tags(["t"]) == {"short", "long"}
    # The index forgets a key once no layer can hold its value any more.
    wait_past(before + 0.3)
    assert b.index.cleanup() == 1
    assert a.index.keys_for_tags(["t"]) == {"long"}
    assert a.stack.get("short") is None
