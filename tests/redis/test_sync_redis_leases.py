"""The sync twin's (SyncRedisLayer's) conditional stores, tombstones and fences, against a real
redis-server and the real three-master cluster (redis-py's sync clients).

The same cases as test_redis_leases.py, in the twin generated from the asyncio layer: the
refusals after another instance's delete, set, fence_tags, clear and delete_matching, an
unchanged key stored, a lease past lease_ttl refused, a stale entry's lease, tombstones read
as absent, fences hidden, lease_ttl=None, and the server-clock bound.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from tag_index_support import Backend

from layercache._codec import EntryCodec
from layercache._entry import Entry
from layercache._exceptions import CacheLayerError
from layercache.redis import RedisLayer, SyncRedisLayer
from layercache.redis._lease import TOMBSTONE_MAGIC, Lease

pytestmark = pytest.mark.redis

PREFIX = "lease:"
FENCE_ALL = b"lease:\x00fence:all"
TAGS = ("users", "posts")


def entry(value: Any, tags: tuple[str, ...] = ()) -> Entry:
    now = time.time()
    return Entry(value, now, now + 60, None, None, tags)


def tag_fence(tag: str) -> bytes:
    return PREFIX.encode() + b"\x00fence:tag:" + tag.encode()


@pytest.fixture
def backend(sync_backend: Backend) -> Backend:
    """Sync clients on a single server and on the three-master cluster (tests/redis/conftest.py)."""
    return sync_backend


class Pair:
    """Two instances' sync layers on the same Redis and prefix, and a raw client."""

    def __init__(self, backend: Backend, **options: Any) -> None:
        self.kind = backend.kind
        self.raw = backend.client()
        self.ours: SyncRedisLayer = RedisLayer(client=backend.client(), prefix=PREFIX, **options)
        self.other: SyncRedisLayer = RedisLayer(client=backend.client(), prefix=PREFIX, **options)

    def stored(self, key: str) -> Any:
        raw = self.raw.get(PREFIX.encode() + key.encode())
        return None if raw is None else EntryCodec().decode(raw).value

    def server_time_us(self) -> int:
        seconds, micros = self.raw.time()
        return int(seconds) * 1_000_000 + int(micros)


@pytest.fixture
def pair(backend: Backend) -> Pair:
    return Pair(backend)


def test_the_twin_is_the_sync_class(pair: Pair) -> None:
    assert isinstance(pair.ours, SyncRedisLayer)


def test_unchanged_key_is_stored(pair: Pair) -> None:
    found, lease = pair.ours.get_leased("k")
    assert found is None
    assert lease.observed is None
    assert pair.ours.set_leased("k", entry("mine", TAGS), 60, lease, TAGS)
    assert pair.stored("k") == "mine"


@pytest.mark.parametrize(
    ("change", "left"),
    [
        (lambda other: other.delete("k"), "tombstone"),
        (lambda other: other.delete_many(["k"]), "tombstone"),
        (lambda other: other.set("k", entry("theirs"), 60), "theirs"),
        (lambda other: other.fence_tags(["posts"]), None),
        (lambda other: other.clear(), None),
        (lambda other: other.delete_matching("unrelated:*"), None),
    ],
    ids=["delete", "delete_many", "set", "fence_tags", "clear", "delete_matching"],
)
def test_a_change_by_another_client_refuses_the_store(
    pair: Pair, change: Any, left: str | None
) -> None:
    _, lease = pair.ours.get_leased("k")
    change(pair.other)
    assert not pair.ours.set_leased("k", entry("mine", TAGS), 60, lease, TAGS)
    # The key holds what the change left, never our value.
    raw = pair.raw.get(b"lease:k")
    if left == "tombstone":
        assert raw.startswith(TOMBSTONE_MAGIC)
    elif left == "theirs":
        assert pair.stored("k") == "theirs"
    else:
        assert raw is None


def test_a_lease_older_than_lease_ttl_is_refused(pair: Pair) -> None:
    _, lease = pair.ours.get_leased("k")
    assert not pair.ours.set_leased(
        "k", entry("v"), 60, Lease(lease.read_at - 10_000_000, None), ()
    )
    assert pair.raw.get(b"lease:k") is None
    assert pair.ours.set_leased("k", entry("v"), 60, Lease(lease.read_at - 9_000_000, None), ())


def test_a_lease_on_a_stale_entry(pair: Pair) -> None:
    now = time.time()
    stale = Entry("old", now - 100, now - 10, now + 50, None, ())
    pair.other.set("k", stale, 60)
    found, lease = pair.ours.get_leased("k")
    assert found == stale
    assert pair.ours.set_leased("k", entry("refreshed"), 60, lease, ())
    assert pair.stored("k") == "refreshed"
    pair.other.set("k", stale, 60)
    _, lease = pair.ours.get_leased("k")
    pair.other.set("k", entry("newer"), 60)
    assert not pair.ours.set_leased("k", entry("refreshed"), 60, lease, ())
    assert pair.stored("k") == "newer"


def test_tombstones_read_as_absent_and_fences_stay_hidden(pair: Pair) -> None:
    reported: list[Any] = []
    pair.ours.set_error_handler(lambda exc, context: reported.append(context))
    pair.ours.set_many([(k, entry(k), 60) for k in ("a", "b", "c")])
    pair.ours.delete("a")
    pair.ours.delete_many(["b"])
    pair.ours.fence_tags(TAGS)
    assert pair.raw.get(b"lease:a").startswith(TOMBSTONE_MAGIC)
    assert pair.ours.get("a") is None
    assert pair.ours.get_leased("b")[0] is None
    assert [e.value if e else None for e in pair.ours.get_many(["a", "b", "c"])] == [
        None,
        None,
        "c",
    ]
    assert not pair.ours.has("a")
    assert pair.ours.ttl("b") is None
    assert pair.ours.keys() == ["c"]
    assert pair.ours.size() == 1
    pair.ours.clear()
    assert pair.ours.keys() == []
    assert pair.ours.size() == 0
    assert pair.raw.exists(FENCE_ALL, *(tag_fence(t) for t in TAGS)) == 1 + len(TAGS)
    assert reported == []


def test_leases_off_keeps_plain_unlink_and_plain_sets(backend: Backend) -> None:
    pair = Pair(backend, lease_ttl=None)
    pair.ours.set("k", entry(1), 60)
    pair.ours.delete("k")
    assert pair.raw.exists(b"lease:k") == 0
    _, lease = pair.ours.get_leased("k")
    pair.other.set("k", entry("theirs"), 60)
    pair.other.fence_tags(TAGS)
    pair.other.clear()
    assert pair.ours.set_leased("k", entry("mine"), 60, lease, TAGS)
    assert pair.stored("k") == "mine"
    assert pair.raw.exists(FENCE_ALL, *(tag_fence(t) for t in TAGS)) == 0
    assert pair.ours.lease("k") == Lease(0, None)


def test_read_at_is_a_lower_bound_of_the_server_clock(pair: Pair) -> None:
    skew = 250_000 if pair.kind != "single" else 0
    for _ in range(50):
        lease = pair.ours.lease("k")
        server = pair.server_time_us()
        assert lease.read_at <= server - skew
        assert server - lease.read_at - skew < 50_000


# A single server checks the fences in the store's own script: these are the cluster's steps.
@pytest.mark.parametrize("sync_backend", ["cluster3"], indirect=True)
def test_fence_written_between_store_and_fence_read_is_undone(backend: Backend) -> None:
    pair = Pair(backend)
    _, lease = pair.ours.get_leased("k")
    client = pair.ours.client
    real_mget = client.mget_nonatomic

    def fence_then_read(keys: Any, *args: Any) -> Any:
        assert pair.raw.get(b"lease:k") is not None  # the store has happened
        pair.other.fence_tags(["posts"])
        return real_mget(keys, *args)

    client.mget_nonatomic = fence_then_read
    try:
        assert not pair.ours.set_leased("k", entry("mine"), 60, lease, ["posts"])
    finally:
        del client.mget_nonatomic
    assert pair.raw.exists(b"lease:k") == 0


@pytest.mark.parametrize("sync_backend", ["cluster3"], indirect=True)
def test_an_unchecked_cluster_store_is_taken_back(backend: Backend) -> None:
    pair = Pair(backend)
    _, lease = pair.ours.get_leased("k")
    client = pair.ours.client

    def fail(keys: Any, *args: Any) -> Any:
        raise RedisConnectionError("fence read lost")

    client.mget_nonatomic = fail
    try:
        with pytest.raises(CacheLayerError):
            pair.ours.set_leased("k", entry("mine"), 60, lease, ["posts"])
    finally:
        del client.mget_nonatomic
    assert pair.raw.exists(b"lease:k") == 0


def test_undo_script_removes_only_what_it_stored(pair: Pair) -> None:
    pair.ours.set("k", entry("v"), 60)
    stored = pair.raw.get(b"lease:k")
    undo = pair.ours._undo_script
    assert undo(keys=[b"lease:k"], args=[hashlib.sha1(b"other").hexdigest()]) == 0
    assert undo(keys=[b"lease:k"], args=[hashlib.sha1(stored).hexdigest()]) == 1
    assert pair.raw.exists(b"lease:k") == 0


def test_scripts_flushed_from_the_servers_are_loaded_again(pair: Pair) -> None:
    pair.ours.set_many([(f"k{i}", entry(i), 60) for i in range(20)])
    pair.raw.script_flush()
    pair.ours.delete_many([f"k{i}" for i in range(10)])
    pair.raw.script_flush()
    assert pair.ours.size() == 10
    pair.raw.script_flush()
    assert pair.ours.delete_matching("k*") == 10


def test_invalid_lease_options_raise(redis_sync_client: Any) -> None:
    for options in ({"lease_ttl": 0.01}, {"clock_skew": 0}, {"lease_ttl": 1, "clock_skew": 2}):
        with pytest.raises(ValueError, match=r"lease_ttl|clock_skew"):
            RedisLayer(client=redis_sync_client, **options)
