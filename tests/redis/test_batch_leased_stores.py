"""Coalesced conditional stores (issue 16): concurrent ``set_leased`` calls share pipelines.

A fetch stores its value with ``RedisLayer.set_leased`` (the lease-check script): one round
trip per key before. Concurrent stores of a remote layer now go out together, as one pipeline
of the script (on a cluster one per node, then one read of the fences the stored keys name and
the take-back of the stores a fence refuses), through the stack's batcher: a lone store goes
at once, the stores that arrive while one is in flight go together in the next. Each caller
gets its own outcome: a store refused because its key (or a tag of it) changed since its read
is refused for that key alone; a failed pipeline fails every caller with an error of its own;
a cancelled caller strands nobody.

Everything runs against real Redis: a single server and the three-master cluster
(``backend`` fixture), where the data key and the fences live in different slots.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis.asyncio
from tag_index_support import Backend

from layercache import CacheStack
from layercache._async.adapter import LayerAdapter
from layercache._codec import EntryCodec, UnserializableValueError
from layercache._entry import Entry
from layercache._exceptions import CacheLayerError
from layercache.redis import RedisLayer
from layercache.redis._lease import TOMBSTONE_MAGIC

pytestmark = pytest.mark.redis

PREFIX = "bls:"


def entry(value: Any, tags: tuple[str, ...] = ()) -> Entry:
    now = time.time()
    return Entry(value, now, now + 60, None, None, tags)


async def stored(raw: Any, key: str) -> Any:
    """The value Redis holds under ``key`` (``None``: absent; ``"tombstone"``)."""
    data = await raw.get(PREFIX.encode() + key.encode())
    if data is None:
        return None
    if data.startswith(TOMBSTONE_MAGIC):
        return "tombstone"
    return EntryCodec().decode(data).value


async def ready(backend: Backend) -> Any:
    raw = backend.client()
    if backend.kind != "single":
        await raw.initialize()
    return raw


def _nodes(backend: Backend, raw: Any) -> list[Any]:
    """One client per server (the single server, or each cluster node; closed by the
    backend fixture)."""
    if backend.kind == "single":
        return [raw]
    nodes = [redis.asyncio.Redis(host=n.host, port=n.port) for n in raw.get_nodes()]
    backend.clients.extend(nodes)
    return nodes


async def _reset(nodes: list[Any]) -> None:
    for node in nodes:
        await node.config_resetstat()


async def _totals(nodes: list[Any]) -> dict[str, int]:
    """EVALSHA calls and socket reads, summed over the servers, since the reset."""
    totals = {"evalsha": 0, "reads": 0}
    for node in nodes:
        commands = await node.info("commandstats")
        totals["evalsha"] += int(commands.get("cmdstat_evalsha", {}).get("calls", 0))
        totals["reads"] += int((await node.info("stats"))["total_reads_processed"])
    return totals


class Held:
    """A Redis layer whose bulk conditional stores are recorded and, while ``hold`` is set
    to an unset event, wait for it before they go on to Redis."""

    def __init__(self, inner: RedisLayer) -> None:
        self.inner = inner
        self.name = inner.name
        self.batches: list[list[str]] = []
        self.sent = asyncio.Event()
        self.hold: asyncio.Event | None = None

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    async def set_leased_batch(self, items: list[Any]) -> Any:
        self.batches.append([item[0] for item in items])
        self.sent.set()
        if self.hold is not None:
            await self.hold.wait()
        return await self.inner.set_leased_batch(items)


# -- the layer's bulk call -------------------------------------------------------------------------


async def test_each_item_of_a_batch_is_checked_as_its_own_store(backend: Backend) -> None:
    raw = await ready(backend)
    ours = RedisLayer(client=backend.client(), prefix=PREFIX)
    other = RedisLayer(client=backend.client(), prefix=PREFIX)  # another instance
    keys = ["fresh", "kept", "deleted", "tagged", "replaced", "bad", "gone", "plain"]
    await ours.set("kept", entry("old"), 60)
    await ours.set("deleted", entry("old"), 60)
    await ours.set("replaced", entry("old"), 60)
    leases = [lease for _, lease in await ours.get_leased_batch(keys)]
    # Between the reads and the stores: a delete, a tag invalidation, another write.
    await other.delete("deleted")
    await other.fence_tags(["hot"])
    await other.set("replaced", entry("theirs"), 60)
    await raw.script_flush()  # the stores must load the script again
    values: dict[str, Any] = {k: f"new-{k}" for k in keys}
    values["bad"] = object()  # cannot be serialized: fails its own store alone
    tags = {"tagged": ("hot", "cold"), "plain": ("cold",)}
    ttls = {"gone": 0.0}  # ttl <= 0 stores nothing
    items = [
        (k, entry(values[k], tags.get(k, ())), ttls.get(k, 60.0), lease, tags.get(k, ()))
        for k, lease in zip(keys, leases, strict=True)
    ]
    outcomes = await ours.set_leased_batch(items)
    by_key = dict(zip(keys, outcomes, strict=True))
    assert isinstance(by_key.pop("bad"), UnserializableValueError)
    assert by_key == {
        "fresh": True,
        "kept": True,
        "deleted": False,
        "tagged": False,
        "replaced": False,
        "gone": True,
        "plain": True,
    }
    assert {k: await stored(raw, k) for k in keys} == {
        "fresh": "new-fresh",
        "kept": "new-kept",
        "deleted": "tombstone",
        # On the cluster it was stored, then taken back once its fence was read.
        "tagged": None,
        "replaced": "theirs",
        "bad": None,
        "gone": None,
        "plain": "new-plain",
    }
    assert 0 < (await ours.ttl("fresh") or 0) <= 60


async def test_a_clear_refuses_every_store_of_a_batch_that_read_before_it(
    backend: Backend,
) -> None:
    raw = await ready(backend)
    ours = RedisLayer(client=backend.client(), prefix=PREFIX)
    other = RedisLayer(client=backend.client(), prefix=PREFIX)
    keys = [f"k{i}" for i in range(40)]
    leases = [lease for _, lease in await ours.get_leased_batch(keys)]
    await other.clear()
    outcomes = await ours.set_leased_batch(
        [(k, entry(k), 60.0, lease, ()) for k, lease in zip(keys, leases, strict=True)]
    )
    assert outcomes == [False] * len(keys)
    assert [await stored(raw, k) for k in keys] == [None] * len(keys)
    if backend.kind != "single":
        return  # (a cluster's lease times allow for clock_skew: reads right after are refused)
    # A read after the clear stores again.
    leases = [lease for _, lease in await ours.get_leased_batch(keys)]
    outcomes = await ours.set_leased_batch(
        [(k, entry(k), 60.0, lease, ()) for k, lease in zip(keys, leases, strict=True)]
    )
    assert outcomes == [True] * len(keys)


async def test_with_leases_off_a_batch_is_plain_stores(backend: Backend) -> None:
    raw = await ready(backend)
    layer = RedisLayer(client=backend.client(), prefix=PREFIX, lease_ttl=None)
    keys = [f"k{i}" for i in range(10)]
    leases = [lease for _, lease in await layer.get_leased_batch(keys)]
    outcomes = await layer.set_leased_batch(
        [(k, entry(k), 60.0, lease, ("t",)) for k, lease in zip(keys, leases, strict=True)]
    )
    assert outcomes == [True] * len(keys)
    assert [await stored(raw, k) for k in keys] == keys


# -- through the stack -----------------------------------------------------------------------------


async def test_concurrent_fetches_store_together_each_under_its_own_lease(
    backend: Backend,
) -> None:
    raw = await ready(backend)
    nodes = _nodes(backend, raw)
    cache = CacheStack([RedisLayer(client=backend.client(), prefix=PREFIX, ttl=60)])
    keys = [f"cold{i}" for i in range(64)]
    fetching = 0
    everyone = asyncio.Event()

    async def read(key: str) -> Any:
        async def fetch() -> str:
            nonlocal fetching
            fetching += 1
            if fetching == len(keys):
                everyone.set()
            await everyone.wait()  # every fetch ends in the same turn: the stores meet
            return f"v-{key}"

        return await cache.get(key, fetch)

    try:
        await cache.get("warm", lambda: 0)  # connections, the server clock
        await _reset(nodes)
        got = await asyncio.wait_for(asyncio.gather(*(read(k) for k in keys)), 30)
        assert got == [f"v-{k}" for k in keys]
        totals = await _totals(nodes)
        batcher = cache._layers.adapters[0].leased_store_batcher
        assert batcher is not None
        # The first store went alone; the 63 that came while it was in flight, together.
        assert (batcher.batches, batcher.batched_items) == (1, 63)
        assert totals["evalsha"] == 64, totals
        # 64 reads and 64 stores in a few round trips (a pipeline per node on the cluster),
        # not one per store (128+ before).
        assert totals["reads"] <= (8 if backend.kind == "single" else 30), totals
        assert [await stored(raw, k) for k in keys] == [f"v-{k}" for k in keys]
    finally:
        await cache.aclose()


async def test_a_raced_store_in_a_batch_is_refused_for_its_key_alone(backend: Backend) -> None:
    raw = await ready(backend)
    cache = CacheStack([RedisLayer(client=backend.client(), prefix=PREFIX, ttl=60)])
    other = CacheStack([RedisLayer(client=backend.client(), prefix=PREFIX, ttl=60)])
    keys = [f"k{i}" for i in range(20)]
    fetching = 0
    everyone, release = asyncio.Event(), asyncio.Event()

    async def read(key: str, tags: list[str]) -> Any:
        async def fetch() -> str:
            nonlocal fetching
            fetching += 1
            if fetching == len(keys):
                everyone.set()
            await release.wait()
            return f"fetched-{key}"

        return await cache.get(key, fetch, tags=tags)

    try:
        await cache.get("warm", lambda: 0)
        callers = [asyncio.ensure_future(read(k, [f"t{i}"])) for i, k in enumerate(keys)]
        await asyncio.wait_for(everyone.wait(), 10)
        # Another instance, while the fetches run: a delete, a tag invalidation, a write.
        await other.delete("k3")
        await other.invalidate_by_tag("t5")
        await other.set("k7", "newer")
        release.set()
        got = await asyncio.wait_for(asyncio.gather(*callers), 30)
        assert got == [f"fetched-{k}" for k in keys]  # each caller has its fetched value
        batcher = cache._layers.adapters[0].leased_store_batcher
        assert batcher is not None
        assert batcher.batched_items == len(keys) - 1
        expected: dict[str, Any] = {k: f"fetched-{k}" for k in keys}
        # (k5: never stored on a server, where the script reads the tag's fence; stored then
        # taken back on the cluster, where the fence is read after the store.)
        expected.update(k3="tombstone", k5=None, k7="newer")
        assert {k: await stored(raw, k) for k in keys} == expected
    finally:
        await cache.aclose()
        await other.aclose()


# -- failures and cancellation, through the adapter (one caller per task) --------------------------


async def test_a_failed_pipeline_fails_every_caller_with_an_error_of_its_own(
    redis_proxy: Any,
) -> None:
    layer = RedisLayer(url=redis_proxy.url, prefix=PREFIX, socket_timeout=0.5)
    adapter = LayerAdapter(layer, 0)
    try:
        keys = [f"k{i}" for i in range(12)]
        leases = dict(
            zip(keys, [lease for _, lease in await layer.get_leased_batch(keys)], strict=True)
        )
        redis_proxy.set_latency(0.1)

        def store(key: str, value: Any) -> Any:
            return asyncio.ensure_future(adapter.set_leased(key, entry(value), 60, leases[key], ()))

        alone = store("k0", "v")  # in flight: the others queue behind it
        await asyncio.sleep(0)
        queued = [store(k, "v") for k in keys[1:]]
        redis_proxy.cut("refuse")
        results = await asyncio.wait_for(asyncio.gather(alone, *queued, return_exceptions=True), 30)
        for result in results:
            assert isinstance(result, CacheLayerError), repr(result)
            assert (result.layer, result.operation) == ("redis", "set_leased")
            assert result.__cause__ is not None
        assert len({id(r) for r in results}) == len(results)  # never one shared instance
        batcher = adapter.leased_store_batcher
        assert batcher is not None
        assert batcher.batches == 1  # k1..k11 went as one pipeline
        redis_proxy.restore()
        redis_proxy.set_latency(0)
        # Nothing is stuck: stores go again, one bad value failing alone.
        leases = dict(
            zip(keys, [lease for _, lease in await layer.get_leased_batch(keys)], strict=True)
        )
        alone = store("k0", "v")
        await asyncio.sleep(0)
        queued = [store(k, object() if k == "k4" else k) for k in keys[1:]]
        results = await asyncio.wait_for(asyncio.gather(alone, *queued, return_exceptions=True), 30)
        assert isinstance(results[4], UnserializableValueError)
        assert [r for i, r in enumerate(results) if i != 4] == [True] * (len(keys) - 1)
    finally:
        redis_proxy.restore()
        await layer.aclose()


async def test_a_cancelled_caller_leaves_and_a_cancelled_leader_strands_nobody(
    redis_proxy: Any, redis_client: Any
) -> None:
    layer = Held(RedisLayer(url=redis_proxy.url, prefix=PREFIX))
    adapter = LayerAdapter(layer, 0)
    try:
        keys = [f"k{i}" for i in range(12)]
        leases = dict(
            zip(keys, [lease for _, lease in await layer.get_leased_batch(keys)], strict=True)
        )

        def store(key: str) -> Any:
            return asyncio.ensure_future(adapter.set_leased(key, entry(key), 60, leases[key], ()))

        redis_proxy.set_latency(0.05)
        layer.hold = asyncio.Event()
        alone = store("k0")  # a lone store goes at once (not through the bulk call)
        await asyncio.sleep(0)
        queued = [store(k) for k in keys[1:]]
        await asyncio.sleep(0)
        queued[0].cancel()  # k1: would have led the next batch
        queued[4].cancel()  # k5: an ordinary waiter
        await asyncio.wait_for(layer.sent.wait(), 10)  # k2 leads a batch, held
        assert layer.batches == [["k2", "k3", "k4", "k6", "k7", "k8", "k9", "k10", "k11"]]
        queued[1].cancel()  # the leader of the batch in flight
        await asyncio.sleep(0)
        layer.hold.set()
        results = await asyncio.wait_for(asyncio.gather(alone, *queued, return_exceptions=True), 10)
        cancelled = {"k1", "k2", "k5"}
        for key, result in zip(keys, results, strict=True):
            if key in cancelled:
                assert isinstance(result, asyncio.CancelledError)
            else:
                assert result is True, (key, result)
        # The others went again, in a batch of their own under a new leader.
        assert layer.batches[1] == ["k3", "k4", "k6", "k7", "k8", "k9", "k10", "k11"]
        for key in keys:
            held = await redis_client.get(PREFIX.encode() + key.encode())
            assert (held is None) == (key in cancelled), key
    finally:
        await layer.inner.aclose()


async def test_write_batching_off_stores_one_by_one(backend: Backend) -> None:
    await ready(backend)
    cache = CacheStack(
        [RedisLayer(client=backend.client(), prefix=PREFIX, ttl=60, write_batching=False)]
    )
    try:
        assert cache._layers.adapters[0].leased_store_batcher is None
        keys = [f"k{i}" for i in range(10)]
        got = await asyncio.gather(*(cache.get(k, lambda k=k: k) for k in keys))
        assert got == keys
    finally:
        await cache.aclose()


# -- the sync twin ---------------------------------------------------------------------------------


def test_the_sync_twin_checks_each_item_and_threads_store_together(
    sync_backend: Backend,
) -> None:
    import threading

    from layercache import SyncCacheStack

    raw = sync_backend.client()
    ours = RedisLayer(client=sync_backend.client(), prefix=PREFIX)
    other = RedisLayer(client=sync_backend.client(), prefix=PREFIX)
    keys = ["fresh", "deleted", "tagged"]
    leases = [lease for _, lease in ours.get_leased_batch(keys)]
    other.delete("deleted")
    other.fence_tags(["hot"])
    outcomes = ours.set_leased_batch(
        [
            (
                k,
                entry(k, ("hot",) if k == "tagged" else ()),
                60.0,
                lease,
                ("hot",) if k == "tagged" else (),
            )
            for k, lease in zip(keys, leases, strict=True)
        ]
    )
    assert outcomes == [True, False, False]
    assert raw.get(PREFIX.encode() + b"tagged") is None

    cache = SyncCacheStack([RedisLayer(client=sync_backend.client(), prefix=PREFIX, ttl=60)])
    try:
        cold = [f"cold{i}" for i in range(32)]
        barrier = threading.Barrier(len(cold))
        results: dict[str, Any] = {}

        def read(key: str) -> None:
            def fetch() -> str:
                barrier.wait(10)  # every fetch ends at once: the stores meet
                return f"v-{key}"

            results[key] = cache.get(key, fetch)

        threads = [threading.Thread(target=read, args=(k,)) for k in cold]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not any(t.is_alive() for t in threads)
        assert results == {k: f"v-{k}" for k in cold}
        batcher = cache._layers.adapters[0].leased_store_batcher
        assert batcher is not None
        assert batcher.batches >= 1, "no store went in a batch"
        for key in cold:
            assert EntryCodec().decode(raw.get(PREFIX.encode() + key.encode())).value == f"v-{key}"
    finally:
        cache.close()
