"""RedisLayer's conditional stores (leases), tombstones and fences, against real Redis.

Every refusal case runs on a single server and on the three-master cluster (``backend``
fixture, tests/redis/conftest.py), where the data key, the all-fence and the tag fences live
in different slots (checked below) and set_leased takes the store / fence read / undo path.
"Another client" is a second layer on its own connection pool, as another instance would be.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from typing import Any

import pytest
import redis.asyncio
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from tag_index_support import Backend

from _redis_server import RedisServer, find_free_port
from layercache._codec import MAGIC, EntryCodec
from layercache._entry import Entry
from layercache._exceptions import CacheLayerError
from layercache.redis import RedisLayer
from layercache.redis._lease import (
    REMEASURE_US,
    TOMBSTONE_MAGIC,
    Lease,
    ServerClock,
    fence_at_or_after,
    monotonic_us,
)

pytestmark = pytest.mark.redis

PREFIX = "lease:"
FENCE_ALL = b"lease:\x00fence:all"
# Tags whose fences hash to slots other than the data key's on the cluster (checked below).
TAGS = ("users", "posts")


def entry(value: Any, tags: tuple[str, ...] = ()) -> Entry:
    now = time.time()
    return Entry(value, now, now + 60, None, None, tags)


def tag_fence(tag: str) -> bytes:
    return PREFIX.encode() + b"\x00fence:tag:" + tag.encode()


class Recorder:
    """An error handler that records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[BaseException, dict[str, Any]]] = []

    def __call__(self, exc: BaseException, context: dict[str, Any]) -> None:
        self.calls.append((exc, context))


class Pair:
    """Two instances' layers on the same Redis and prefix (their own clients) and a raw client."""

    def __init__(self, backend: Backend, **options: Any) -> None:
        self.kind = backend.kind
        self.raw = backend.client()
        self.ours = RedisLayer(client=backend.client(), prefix=PREFIX, **options)
        self.other = RedisLayer(client=backend.client(), prefix=PREFIX, **options)

    async def ready(self) -> Pair:
        if self.kind != "single":
            await self.raw.initialize()
        return self

    async def stored(self, key: str) -> Entry | None:
        raw = await self.raw.get(PREFIX.encode() + key.encode())
        return None if raw is None else EntryCodec().decode(raw)

    async def server_time_us(self) -> int:
        seconds, micros = await self.raw.time()
        return int(seconds) * 1_000_000 + int(micros)


@pytest.fixture
async def pair(backend: Backend) -> Pair:
    # The backend fixture closes the clients.
    return await Pair(backend).ready()


# -- the different slots of the cluster case ---------------------------------------------------


def test_data_key_and_fences_hash_to_different_slots() -> None:
    slots = {key_slot(b"lease:k"), key_slot(FENCE_ALL), *(key_slot(tag_fence(t)) for t in TAGS)}
    assert len(slots) == 2 + len(TAGS)


# -- refusals on a key that was missing ----------------------------------------------------------


async def test_unchanged_missing_key_is_stored(pair: Pair) -> None:
    found, lease = await pair.ours.get_leased("k")
    assert found is None
    assert lease.observed is None
    assert await pair.ours.set_leased("k", entry("mine", TAGS), 60, lease, TAGS)
    assert (await pair.stored("k")).value == "mine"  # type: ignore[union-attr]
    assert 0 < (await pair.ours.ttl("k") or 0) <= 60


async def test_delete_by_another_client_refuses_the_store(pair: Pair) -> None:
    _, lease = await pair.ours.get_leased("k")
    await pair.other.delete("k")
    assert not await pair.ours.set_leased("k", entry("mine"), 60, lease, ())
    raw = await pair.raw.get(b"lease:k")
    assert raw.startswith(TOMBSTONE_MAGIC)
    assert await pair.ours.get("k") is None


async def test_set_by_another_client_refuses_the_store(pair: Pair) -> None:
    _, lease = await pair.ours.get_leased("k")
    await pair.other.set("k", entry("theirs"), 60)
    assert not await pair.ours.set_leased("k", entry("mine"), 60, lease, ())
    assert (await pair.stored("k")).value == "theirs"  # type: ignore[union-attr]


async def test_fence_tags_by_another_client_refuses_a_store_with_that_tag(pair: Pair) -> None:
    _, lease = await pair.ours.get_leased("k")
    await pair.other.fence_tags(["posts"])
    # Another tag's fence does not concern this key...
    assert await pair.ours.set_leased("j", entry("mine", ("users",)), 60, lease, ["users"])
    # ...its own does (the key is absent, so only the fence can refuse).
    assert not await pair.ours.set_leased("k", entry("mine", TAGS), 60, lease, TAGS)
    assert await pair.raw.get(b"lease:k") is None


async def test_clear_by_another_client_refuses_the_store(pair: Pair) -> None:
    _, lease = await pair.ours.get_leased("k")
    await pair.other.clear()
    assert not await pair.ours.set_leased("k", entry("mine"), 60, lease, ())
    assert await pair.raw.get(b"lease:k") is None


async def test_delete_matching_by_another_client_refuses_any_store(pair: Pair) -> None:
    _, lease = await pair.ours.get_leased("k")
    # A pattern that does not even match the key: the all-fence refuses every earlier read.
    assert await pair.other.delete_matching("unrelated:*") == 0
    assert not await pair.ours.set_leased("k", entry("mine"), 60, lease, ())
    assert await pair.raw.get(b"lease:k") is None


async def test_a_lease_taken_after_the_change_is_stored(pair: Pair) -> None:
    await pair.other.fence_tags(TAGS)
    await pair.other.clear()
    await pair.other.delete("k")
    # The fences are written, then the read: the read is newer than all of them. A fence is
    # compared with a lower bound of the read's time, which trails the server clock by at
    # most 2 ms + 0.1% of up to 10 s (+ clock_skew on a cluster): wait that out.
    fenced_at = await pair.server_time_us()
    await asyncio.sleep(0.02 + (0.25 if pair.kind != "single" else 0))
    _, lease = await pair.ours.get_leased("k")
    assert lease.read_at > fenced_at
    assert await pair.ours.set_leased("k", entry("mine", TAGS), 60, lease, TAGS)
    assert (await pair.stored("k")).value == "mine"  # type: ignore[union-attr]


async def test_a_lease_older_than_lease_ttl_is_refused(pair: Pair) -> None:
    _, lease = await pair.ours.get_leased("k")
    too_old = Lease(lease.read_at - 10_000_000, lease.observed)
    assert not await pair.ours.set_leased("k", entry("mine"), 60, too_old, ())
    assert await pair.raw.get(b"lease:k") is None
    # Just inside lease_ttl (10 s by default) it is still accepted.
    young_enough = Lease(lease.read_at - 9_000_000, lease.observed)
    assert await pair.ours.set_leased("k", entry("mine"), 60, young_enough, ())


async def test_a_lease_ages_out_on_the_server_clock(backend: Backend) -> None:
    pair = await Pair(backend, lease_ttl=0.1, clock_skew=0.01).ready()
    _, lease = await pair.ours.get_leased("k")
    # read_at is a lower bound of the server clock at the read, so once 0.1 s have passed
    # here the lease is at least 0.1 s old on the server's clock too.
    await asyncio.sleep(0.11)
    assert await pair.server_time_us() - lease.read_at >= 100_000
    assert not await pair.ours.set_leased("k", entry("mine"), 60, lease, ())
    assert await pair.raw.get(b"lease:k") is None


# -- leases on a stale entry and on a tombstone ----------------------------------------------


async def test_a_lease_on_a_stale_entry(pair: Pair) -> None:
    now = time.time()
    stale = Entry("old", now - 100, now - 10, now + 50, None, ())
    await pair.other.set("k", stale, 60)
    found, lease = await pair.ours.get_leased("k")
    assert found == stale
    assert lease.observed is not None
    assert lease.observed.startswith(MAGIC)
    # Unchanged since the read: the refresh is stored over it.
    assert await pair.ours.set_leased("k", entry("refreshed"), 60, lease, ())
    assert (await pair.stored("k")).value == "refreshed"  # type: ignore[union-attr]

    await pair.other.set("k", stale, 60)
    _, lease = await pair.ours.get_leased("k")
    await pair.other.set("k", entry("newer"), 60)
    assert not await pair.ours.set_leased("k", entry("refreshed"), 60, lease, ())
    assert (await pair.stored("k")).value == "newer"  # type: ignore[union-attr]


async def test_a_lease_on_a_tombstone(pair: Pair) -> None:
    await pair.other.set("k", entry("old"), 60)
    await pair.other.delete("k")
    found, lease = await pair.ours.get_leased("k")
    assert found is None
    assert lease.observed is not None
    assert lease.observed.startswith(TOMBSTONE_MAGIC)
    assert await pair.ours.set_leased("k", entry("mine"), 60, lease, ())
    assert (await pair.stored("k")).value == "mine"  # type: ignore[union-attr]

    await pair.other.delete("k")
    _, lease = await pair.ours.get_leased("k")
    # A second delete right away (same microsecond or not) leaves different bytes.
    await pair.other.delete("k")
    assert await pair.raw.get(b"lease:k") != lease.observed
    assert not await pair.ours.set_leased("k", entry("mine"), 60, lease, ())


async def test_deletes_of_one_key_never_repeat_a_tombstone(pair: Pair) -> None:
    # A tombstone from the same microsecond (or a clock that went back) is replaced by bytes
    # nobody read, so a lease on it is refused.
    ahead = await pair.server_time_us() + 1_000_000
    planted = TOMBSTONE_MAGIC + str(ahead).encode()
    await pair.raw.set(b"lease:k", planted, px=10_000)
    _, lease = await pair.ours.get_leased("k")
    await pair.other.delete("k")
    assert (await pair.raw.get(b"lease:k")).startswith(TOMBSTONE_MAGIC)
    assert await pair.raw.get(b"lease:k") != planted
    assert not await pair.ours.set_leased("k", entry("late"), 60, lease, ())
    seen = []
    for _ in range(20):
        await pair.other.delete_many(["k", "k"])
        seen.append(await pair.raw.get(b"lease:k"))
    assert len(set(seen)) == len(seen)


async def test_lease_without_a_read_observes_the_raw_value(pair: Pair) -> None:
    await pair.other.set("k", entry("v"), 60)
    lease = await pair.ours.lease("k")
    assert lease.observed == await pair.raw.get(b"lease:k")
    assert await pair.ours.set_leased("k", entry("refreshed"), 60, lease, ())
    lease = await pair.ours.lease("k")
    await pair.other.delete("k")
    assert not await pair.ours.set_leased("k", entry("late"), 60, lease, ())


async def test_set_leased_ttl(pair: Pair) -> None:
    _, lease = await pair.ours.get_leased("k")
    assert await pair.ours.set_leased("k", entry("v"), 0, lease, ())
    assert await pair.raw.exists(b"lease:k") == 0  # ttl <= 0: nothing stored
    assert await pair.ours.set_leased("k", entry("v"), None, lease, ())
    assert await pair.raw.pttl(b"lease:k") == -1


# -- tombstones and fences as readers see them -----------------------------------------------


async def test_tombstones_read_as_absent_and_are_never_reported(pair: Pair) -> None:
    recorder = Recorder()
    pair.ours.set_error_handler(recorder)
    await pair.ours.set_many([(k, entry(k), 60) for k in ("a", "b", "c")])
    await pair.ours.delete("a")
    await pair.ours.delete_many(["b", "never"])
    assert (await pair.raw.get(b"lease:a")).startswith(TOMBSTONE_MAGIC)
    assert (await pair.raw.get(b"lease:never")).startswith(TOMBSTONE_MAGIC)

    assert await pair.ours.get("a") is None
    assert (await pair.ours.get_leased("b"))[0] is None
    assert [e.value if e else None for e in await pair.ours.get_many(["a", "b", "c"])] == [
        None,
        None,
        "c",
    ]
    assert not await pair.ours.has("a")
    assert await pair.ours.has("c")
    assert await pair.ours.ttl("a") is None
    assert await pair.ours.keys() == ["c"]
    assert await pair.ours.keys("*", limit=1) == ["c"]
    assert await pair.ours.size() == 1
    # delete_matching counts the values it removed, not the tombstones it swept up.
    assert await pair.ours.delete_matching("*") == 1
    assert recorder.calls == []


async def test_unreadable_bytes_are_still_reported_by_get_leased(pair: Pair) -> None:
    recorder = Recorder()
    pair.ours.set_error_handler(recorder)
    await pair.raw.set(b"lease:bad", b"not an entry")
    found, lease = await pair.ours.get_leased("bad")
    assert found is None
    assert lease.observed == b"not an entry"
    assert [context for _, context in recorder.calls] == [
        {"layer": "redis", "key": "bad", "operation": "get"}
    ]
    # A foreign value stays foreign: has, keys and size still count it.
    assert await pair.ours.has("bad")
    assert await pair.ours.size() == 1


async def test_fence_keys_are_hidden_and_survive_clear(pair: Pair) -> None:
    await pair.ours.set("k", entry(1), 60)
    await pair.ours.fence_tags(TAGS)
    assert await pair.raw.exists(*(tag_fence(t) for t in TAGS)) == len(TAGS)
    assert await pair.ours.keys() == ["k"]
    assert await pair.ours.size() == 1
    await pair.ours.clear()
    assert await pair.ours.keys() == []
    assert await pair.ours.size() == 0
    assert await pair.raw.exists(FENCE_ALL, *(tag_fence(t) for t in TAGS)) == 1 + len(TAGS)
    assert await pair.ours.delete_matching("*") == 0
    assert await pair.raw.exists(FENCE_ALL, *(tag_fence(t) for t in TAGS)) == 1 + len(TAGS)
    # Fences hold a server time and expire after lease_ttl.
    assert 0 < await pair.raw.pttl(FENCE_ALL) <= 10_000
    assert (await pair.raw.get(FENCE_ALL)).isdigit()


async def test_clear_and_delete_matching_fence_before_they_scan(
    redis_clean: RedisServer, redis_client: Any
) -> None:
    layer = RedisLayer(client=redis_client, prefix=PREFIX)
    await layer.set("k", entry(1), 60)
    watcher = redis.asyncio.Redis(host=redis_clean.host, port=redis_clean.port)
    try:
        async with watcher.monitor() as monitor:
            await layer.clear()
            await layer.delete_matching("k*")
            commands: list[str] = []
            while len([c for c in commands if c.startswith("SCAN")]) < 2:
                commands.append((await monitor.next_command())["command"])
    finally:
        await watcher.aclose()
    firsts = [c.split(" ")[0] for c in commands if c.split(" ")[0] in ("EVALSHA", "SCAN")]
    assert firsts == ["EVALSHA", "SCAN", "EVALSHA", "SCAN"]
    assert all("fence:all" in c for c in commands if c.startswith("EVALSHA"))


# -- the server clock ----------------------------------------------------------------------------


async def test_read_at_is_a_lower_bound_of_the_server_clock(pair: Pair) -> None:
    skew = 250_000 if pair.kind != "single" else 0
    for _ in range(50):
        lease = await pair.ours.lease("k")
        server = await pair.server_time_us()
        assert lease.read_at <= server - skew
        assert server - lease.read_at - skew < 50_000


def test_server_clock_estimate_is_measured_again_after_ten_seconds() -> None:
    clock = ServerClock()
    assert clock.read_at() is None  # nothing measured
    now = monotonic_us()
    clock.update(now, 5_000_000_000)
    fresh = clock.read_at()
    after = monotonic_us()
    assert fresh is not None
    # "Measured time + time since" minus the 2 ms margin (and a little drift margin).
    assert 2_000 <= 5_000_000_000 + (after - now) - fresh < 12_000
    clock.update(now - REMEASURE_US - 1_000_000, 5_000_000_000)
    assert clock.read_at() is None  # too old: the next caller measures
    clock.refreshing = True  # ...while it does, the others keep a (wider) bound
    widened = clock.read_at()
    assert widened is not None
    elapsed = monotonic_us() - (now - REMEASURE_US - 1_000_000)
    # 2 ms + 0.1% of the 11 s age below "measured time + elapsed".
    assert 5_000_000_000 + elapsed - widened >= 2_000 + 11_000


def test_fence_comparison() -> None:
    assert fence_at_or_after(b"100", 100)
    assert not fence_at_or_after(b"99", 100)
    assert not fence_at_or_after(None, 100)
    assert not fence_at_or_after(b"junk", 100)


# -- lease_ttl=None: the old behaviour -------------------------------------------------------


async def test_leases_off_keeps_plain_unlink_and_plain_sets(backend: Backend) -> None:
    pair = await Pair(backend, lease_ttl=None).ready()
    await pair.ours.set("k", entry(1), 60)
    await pair.ours.delete("k")
    assert await pair.raw.exists(b"lease:k") == 0
    await pair.ours.set_many([("a", entry(1), 60), ("b", entry(2), 60)])
    await pair.ours.delete_many(["a", "b"])
    assert await pair.raw.exists(b"lease:a", b"lease:b") == 0

    found, lease = await pair.ours.get_leased("k")
    assert found is None
    await pair.other.set("k", entry("theirs"), 60)
    await pair.other.fence_tags(TAGS)
    await pair.other.delete_matching("zzz*")
    # Everything changed since the read, and the store still happens.
    assert await pair.ours.set_leased("k", entry("mine"), 60, lease, TAGS)
    assert (await pair.stored("k")).value == "mine"  # type: ignore[union-attr]
    await pair.ours.clear()
    assert await pair.raw.exists(FENCE_ALL, *(tag_fence(t) for t in TAGS)) == 0
    # No command at all for a lease nobody checks.
    assert await pair.ours.lease("k") == Lease(0, None)


# -- the cluster's store / fence read / undo ---------------------------------------------------


async def test_undo_script_removes_only_what_it_stored(pair: Pair) -> None:
    await pair.ours.set("k", entry("v"), 60)
    stored = await pair.raw.get(b"lease:k")
    undo = pair.ours._undo_script
    assert await undo(keys=[b"lease:k"], args=[hashlib.sha1(b"other").hexdigest()]) == 0
    assert await pair.raw.get(b"lease:k") == stored
    assert await undo(keys=[b"lease:k"], args=[hashlib.sha1(stored).hexdigest()]) == 1
    assert await pair.raw.exists(b"lease:k") == 0
    assert await undo(keys=[b"lease:k"], args=[hashlib.sha1(stored).hexdigest()]) == 0


async def test_fence_written_between_store_and_fence_read_is_undone(
    redis_cluster3_client: Any, redis_cluster3: Any
) -> None:
    # The interleaving is constructed: the fence read (MGET per slot, the step after the store
    # script) first lets another instance write its tag fence.
    ours = RedisLayer(client=redis_cluster3_client, prefix=PREFIX)
    other_client = redis_cluster3.async_client()
    try:
        other = RedisLayer(client=other_client, prefix=PREFIX)
        _, lease = await ours.get_leased("k")
        real_mget = redis_cluster3_client.mget_nonatomic
        stored_before_fence: list[bytes | None] = []

        async def fence_then_read(keys: Any, *args: Any) -> Any:
            stored_before_fence.append(await redis_cluster3_client.get(b"lease:k"))
            await other.fence_tags(["posts"])
            return await real_mget(keys, *args)

        redis_cluster3_client.mget_nonatomic = fence_then_read
        try:
            assert not await ours.set_leased("k", entry("mine"), 60, lease, ["posts"])
        finally:
            del redis_cluster3_client.mget_nonatomic
        assert stored_before_fence[0] is not None  # the store had happened...
        assert await redis_cluster3_client.exists(b"lease:k") == 0  # ...and was undone
        # Without a fence the same path keeps the store.
        _, lease = await ours.get_leased("j")
        assert await ours.set_leased("j", entry("mine"), 60, lease, ["users"])
        assert await redis_cluster3_client.exists(b"lease:j") == 1
    finally:
        await other_client.aclose()


async def test_an_unchecked_cluster_store_is_taken_back(redis_cluster3_client: Any) -> None:
    ours = RedisLayer(client=redis_cluster3_client, prefix=PREFIX)
    _, lease = await ours.get_leased("k")

    async def fail(keys: Any, *args: Any) -> Any:
        raise RedisConnectionError("fence read lost")

    redis_cluster3_client.mget_nonatomic = fail
    try:
        with pytest.raises(CacheLayerError):
            await ours.set_leased("k", entry("mine"), 60, lease, ["posts"])
    finally:
        del redis_cluster3_client.mget_nonatomic
    assert await redis_cluster3_client.exists(b"lease:k") == 0


async def test_scripts_flushed_from_the_servers_are_loaded_again(pair: Pair) -> None:
    await pair.ours.set_many([(f"k{i}", entry(i), 60) for i in range(20)])
    await pair.ours.fence_tags(TAGS)
    await pair.raw.script_flush()
    await pair.ours.delete_many([f"k{i}" for i in range(10)])
    await pair.raw.script_flush()
    await pair.ours.fence_tags(TAGS)
    await pair.raw.script_flush()
    assert await pair.ours.size() == 10
    await pair.raw.script_flush()
    assert await pair.ours.delete_matching("k*") == 10
    for i in range(10):
        assert (await pair.raw.get(f"lease:k{i}".encode())) is None
    # The store script goes out as a bare EVALSHA: it loads itself again too. (On the cluster
    # the fences written above are younger than clock_skew: the store is refused, by the
    # script, which therefore ran.)
    lease = await pair.ours.lease("fresh")
    await pair.raw.script_flush()
    stored = await pair.ours.set_leased("fresh", entry(1), 60, lease, ())
    assert stored is (pair.kind == "single")
    assert ((await pair.ours.get("fresh")) is not None) is stored


# -- options and failures ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"lease_ttl": 0},
        {"lease_ttl": -1},
        {"lease_ttl": 0.05},
        {"lease_ttl": math.nan},
        {"lease_ttl": math.inf},
        {"lease_ttl": True},
        {"lease_ttl": "10"},
        {"clock_skew": 0},
        {"clock_skew": -0.1},
        {"clock_skew": math.nan},
        {"clock_skew": math.inf},
        {"clock_skew": True},
        {"clock_skew": None},
        {"lease_ttl": 1, "clock_skew": 1},
    ],
)
def test_invalid_lease_options_raise(redis_server: RedisServer, options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"lease_ttl|clock_skew"):
        RedisLayer(url=redis_server.url, **options)


def test_lease_options_reach_the_sync_twin(redis_server: RedisServer) -> None:
    layer = RedisLayer(url=redis_server.url, lease_ttl=None, clock_skew=0.5)
    twin = layer._sync_twin()
    try:
        assert twin.lease_ttl is None
        assert twin._options["clock_skew"] == 0.5
        assert RedisLayer(url=redis_server.url, lease_ttl=2.5)._sync_twin().lease_ttl == 2.5
    finally:
        twin.close()


async def test_lease_methods_raise_cache_layer_error_when_redis_is_gone() -> None:
    layer = RedisLayer(url=f"redis://127.0.0.1:{find_free_port()}", socket_timeout=0.5)
    try:
        with pytest.raises(CacheLayerError):
            await layer.get_leased("k")
        with pytest.raises(CacheLayerError):
            await layer.lease("k")
        with pytest.raises(CacheLayerError):
            await layer.set_leased("k", entry(1), 60, Lease(0, None), ())
        with pytest.raises(CacheLayerError):
            await layer.fence_tags(["t"])
        with pytest.raises(CacheLayerError):
            await layer.delete("k")
    finally:
        await layer.aclose()
