"""Server-assisted invalidation (``RedisInvalidationBus(track_prefix=...)``, Redis client-side
caching in broadcast mode) with CacheStack against a real redis-server.

The writers that change keys here are raw redis-py clients, not this library: the stacks learn
about their changes from Redis alone. Every wait is bounded polling with a deadline.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from tracking_support import (
    CHECKER_KEYS,
    PREFIX,
    TRACKING_SOURCE,
    Op,
    Read,
    check_history,
    encoded,
)

from _redis_server import RedisServer
from _tcp_proxy import TcpProxy
from layercache import CacheStack, MemoryLayer, RedisInvalidationBus, RedisLayer
from polling import eventually_async

pytestmark = pytest.mark.redis

SECRET = "tracking-secret-0123456789abcdef0123456789"


class Node:
    """One instance: its own client, L1, Redis layer and tracking bus."""

    def __init__(
        self,
        client: Any,
        *,
        signed: bool = False,
        l1_ttl: float = 60,
        bus_client: Any = None,
        **bus_options: Any,
    ) -> None:
        self.client = client
        self.memory = MemoryLayer(ttl=l1_ttl, name="memory")
        self.bus = RedisInvalidationBus(
            publisher=client if bus_client is None else bus_client,
            channel=f"trk:{uuid.uuid4().hex[:6]}" if not signed else "trk:signed",
            signing_secret=SECRET if signed else None,
            track_prefix=PREFIX,
            **bus_options,
        )
        self.stack = CacheStack(
            [self.memory, RedisLayer(client=client, prefix=PREFIX)],
            invalidation_bus=self.bus,
        )
        self.tracked_events: list[tuple[float, list[str]]] = []
        self.errors: list[dict[str, Any]] = []
        self.stack.on("invalidation", self._heard)
        self.stack.on("error", self.errors.append)

    def _heard(self, payload: dict[str, Any]) -> None:
        if payload["source_id"] == TRACKING_SOURCE:
            self.tracked_events.append((time.monotonic(), list(payload["keys"])))

    def in_l1(self, key: str) -> bool:
        return self.memory.get(key) is not None

    def mark(self) -> int:
        """How many server invalidations this stack has applied so far."""
        return len(self.tracked_events)

    async def heard(self, key: str, mark: int) -> None:
        """Wait until an invalidation of ``key`` applied after ``mark`` (``mark()``)."""
        await eventually_async(
            lambda: any(key in keys for _, keys in self.tracked_events[mark:]),
            what=f"the invalidation of {key!r}",
        )

    async def close(self) -> None:
        await self.stack.aclose()


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def protocol(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture
async def make_client(redis_clean: RedisServer) -> AsyncIterator[Callable[..., Any]]:
    created: list[Any] = []

    def make(port: int | None = None, **kwargs: Any) -> Any:
        client = redis.asyncio.Redis(host=redis_clean.host, port=port or redis_clean.port, **kwargs)
        created.append(client)
        return client

    yield make
    for client in created:
        await client.aclose()


@pytest.fixture
async def make_node(make_client: Callable[..., Any]) -> AsyncIterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def make(client: Any = None, **options: Any) -> Node:
        node = Node(client if client is not None else make_client(), **options)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        await node.close()


@pytest.fixture
async def pair(
    make_node: Callable[..., Node], make_client: Callable[..., Any], protocol: int
) -> tuple[Node, Node]:
    a = make_node(make_client(protocol=protocol))
    b = make_node(make_client(protocol=protocol))
    await a.stack.start()
    await b.stack.start()
    assert a.bus.is_tracking
    assert b.bus.is_tracking
    return a, b


@pytest.fixture
async def foreign(make_client: Callable[..., Any]) -> Any:
    """A raw redis-py client: a writer that knows nothing of layercache."""
    return make_client()


async def settle(*nodes: Node) -> None:
    """Wait until every invalidation of the writes made so far has been applied by ``nodes``:
    a marker key set now is reported after them (Redis reports changes in order, and a stack
    applies them in that order)."""
    marker = f"settle:{uuid.uuid4().hex[:8]}"
    marks = [node.mark() for node in nodes]
    await nodes[0].client.set(PREFIX + marker, b"")
    for node, mark in zip(nodes, marks, strict=True):
        await node.heard(marker, mark)


async def cached(node: Node, key: str, value: Any, *, settled: bool = False) -> None:
    """``key`` read through ``node``'s stack until its L1 holds it, once the invalidations of
    earlier writes have arrived (one arriving later would drop the copy again; a read racing
    one is not backfilled, since it cannot tell which version it read)."""
    if not settled:
        await settle(node)
    deadline = time.monotonic() + 10
    while True:
        assert await node.stack.get(key) == value
        if node.in_l1(key):
            return
        assert time.monotonic() < deadline, f"{key!r} never stayed in L1"
        await asyncio.sleep(0.002)


async def cached_in_both(a: Node, b: Node, key: str, value: Any) -> None:
    """``key`` read through both stacks and held in both L1s."""
    await settle(a, b)
    for node in (a, b):
        await cached(node, key, value, settled=True)


async def dropped_from_both(a: Node, b: Node, key: str) -> None:
    await eventually_async(
        lambda: not a.in_l1(key) and not b.in_l1(key), what=f"{key!r} dropped from both L1s"
    )


# -- foreign changes ---------------------------------------------------------------------------


@pytest.mark.parametrize("operation", ["set", "delete", "expire", "mset", "eval", "flushall"])
async def test_a_foreign_change_drops_both_stacks_l1_copies(
    pair: tuple[Node, Node], foreign: Any, operation: str
) -> None:
    a, b = pair
    await foreign.set(PREFIX + "k", encoded("old"))
    await foreign.set(PREFIX + "bystander", encoded("b"))
    await cached_in_both(a, b, "k", "old")
    await cached_in_both(a, b, "bystander", "b")
    expected: Any = "new"
    if operation == "set":
        await foreign.set(PREFIX + "k", encoded("new"))
    elif operation == "delete":
        await foreign.delete(PREFIX + "k")
        expected = None
    elif operation == "expire":
        await foreign.pexpire(PREFIX + "k", 1)
        # Redis reports an expiry when it removes the key: on access or in its expiry cycle.
        deadline = time.monotonic() + 10
        while await foreign.exists(PREFIX + "k"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        expected = None
    elif operation == "mset":
        await foreign.mset({PREFIX + "k": encoded("new"), PREFIX + "other": encoded("o")})
    elif operation == "eval":
        await foreign.eval("redis.call('SET', KEYS[1], ARGV[1])", 1, PREFIX + "k", encoded("new"))
    elif operation == "flushall":
        await foreign.flushall()
        expected = None
    await dropped_from_both(a, b, "k")
    for node in (a, b):
        assert await node.stack.get("k") == expected
    if operation == "flushall":
        await dropped_from_both(a, b, "bystander")
    else:
        assert a.in_l1("bystander")
        assert b.in_l1("bystander")


async def test_keys_outside_the_prefix_and_foreign_bytes_are_ignored(
    pair: tuple[Node, Node], foreign: Any
) -> None:
    a, b = pair
    await foreign.set(PREFIX + "k", encoded("v"))
    await cached_in_both(a, b, "k", "v")
    before = a.bus.tracked
    # The same key name without the prefix, another prefix, keys that are not UTF-8 and the
    # layer's own bookkeeping namespace: none is a key of these stacks.
    await foreign.set("k", b"x")
    await foreign.set("other:k", b"x")
    await foreign.set(PREFIX.encode() + b"\xff\xfe", b"x")
    await foreign.set(PREFIX.encode() + b"\x00fence:all", b"1")
    # A change inside the prefix after them: when it has arrived, so have they (in order).
    await foreign.set(PREFIX + "marker", b"x")
    await eventually_async(lambda: any("marker" in keys for _, keys in a.tracked_events))
    assert a.in_l1("k")
    assert b.in_l1("k")
    messages, keys = a.bus.tracked
    assert keys - before[1] == 1  # only "marker" named a key of this stack
    assert messages - before[0] >= 1
    assert not a.errors
    assert not b.errors


# -- beside the signed bus --------------------------------------------------------------------


async def test_the_signed_bus_still_carries_tags_patterns_clear_and_generations(
    make_node: Callable[..., Node], make_client: Callable[..., Any], foreign: Any
) -> None:
    a = make_node(signed=True)
    b = make_node(signed=True)
    await a.stack.start()
    await b.stack.start()
    await a.stack.set("post:1", "p", tags=["posts"])
    await a.stack.set("user:1", "u")
    await a.stack.set("misc", "m")
    for key, value in (("post:1", "p"), ("user:1", "u"), ("misc", "m")):
        assert await b.stack.get(key) == value

    received = b.stack.get_metrics().bus_received
    await a.stack.invalidate_by_tag("posts")
    await eventually_async(lambda: b.stack.get_metrics().bus_received > received)
    await eventually_async(lambda: not b.in_l1("post:1"))
    await b.stack.get("user:1")
    await a.stack.invalidate_by_pattern("user:*")
    await eventually_async(lambda: not b.in_l1("user:1"))
    generation = await a.stack.bump_generation()
    await eventually_async(lambda: b.stack.get_generation() == generation)

    # A forged (unsigned) bus message is still refused, and tracking still works after it.
    rejected = b.bus.rejected
    await foreign.publish(b.bus.channel, b'{"v": 1, "scope": "clear"}')
    await eventually_async(lambda: b.bus.rejected > rejected)
    await a.stack.set("late", "l1")
    assert await b.stack.get("late") == "l1"
    await foreign.delete(PREFIX + f"v{generation}:late")
    await eventually_async(lambda: not b.in_l1(f"v{generation}:late"))
    assert await b.stack.get("late") is None


# -- reconnects --------------------------------------------------------------------------------


@pytest.mark.parametrize("driver_retries", [False, True], ids=["bus-reconnects", "driver-retries"])
async def test_a_cut_subscriber_drops_l1_on_reconnect_and_tracks_again(
    make_client: Callable[..., Any],
    redis_proxy: TcpProxy,
    foreign: Any,
    driver_retries: bool,
) -> None:
    options: dict[str, Any] = {} if driver_retries else {"retry": Retry(NoBackoff(), 0)}
    through_proxy = make_client(port=redis_proxy.port, **options)
    direct = make_client()
    memory = MemoryLayer(name="memory")
    bus = RedisInvalidationBus(
        publisher=direct,
        subscriber=through_proxy,
        track_prefix=PREFIX,
        reconnect_backoff=(0.02, 0.2),
    )
    stack = CacheStack([memory, RedisLayer(client=direct, prefix=PREFIX)], invalidation_bus=bus)
    tracked = 0

    def heard(payload: dict[str, Any]) -> None:
        nonlocal tracked
        tracked += payload["source_id"] == TRACKING_SOURCE and "k" in payload["keys"]

    stack.on("invalidation", heard)
    try:
        await stack.start()
        await foreign.set(PREFIX + "k", encoded("v1"))
        await eventually_async(lambda: tracked == 1)
        assert await stack.get("k") == "v1"
        assert memory.get("k") is not None

        redis_proxy.cut("refuse")
        await foreign.set(PREFIX + "k", encoded("v2"))  # nobody tracking can see this one
        redis_proxy.restore()
        # Nothing reports the lost change: only the reconnect can have dropped the copy.
        await eventually_async(
            lambda: memory.get("k") is None and bus.is_tracking, what="dropped on reconnect"
        )
        assert tracked == 1
        assert await stack.get("k") == "v2"
        assert memory.get("k") is not None
        # Tracking was turned on again on the new connection.
        await foreign.set(PREFIX + "k", encoded("v3"))
        await eventually_async(lambda: memory.get("k") is None, what="tracked after reconnect")
        assert tracked == 2
        assert await stack.get("k") == "v3"
    finally:
        await stack.aclose()


async def test_a_server_restart_drops_l1_and_tracking_resumes(
    redis_server: RedisServer, redis_clean: RedisServer, make_node: Callable[..., Node]
) -> None:
    node = make_node(reconnect_backoff=(0.02, 0.2))
    await node.stack.start()
    await node.stack.set("k", "v1")
    # The echo of our own write drops it once; read it back into L1.
    await eventually_async(lambda: node.bus.tracked[1] >= 1)
    await cached(node, "k", "v1")
    redis_server.restart()  # an empty server: what L1 holds was lost with the old one
    await eventually_async(lambda: not node.in_l1("k"), what="L1 dropped on reconnect")
    await eventually_async(lambda: node.bus.is_tracking, what="tracking again")
    async with redis.asyncio.Redis(host=redis_server.host, port=redis_server.port) as writer:
        mark = node.mark()
        await writer.set(PREFIX + "k", encoded("v2"))
        await node.heard("k", mark)
        await cached(node, "k", "v2")
        await writer.set(PREFIX + "k", encoded("v3"))
        await eventually_async(lambda: not node.in_l1("k"), what="tracked after the restart")
        assert await node.stack.get("k") == "v3"


async def test_a_connection_the_driver_restores_by_itself_gets_tracking_again(
    pair: tuple[Node, Node], foreign: Any
) -> None:
    # CLIENT KILL: redis-py's pub/sub reconnects and subscribes again on its own; tracking
    # died with the old connection, so the bus must notice and turn it on again.
    a, b = pair
    await foreign.set(PREFIX + "k", encoded("v1"))
    await cached_in_both(a, b, "k", "v1")
    await foreign.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    await eventually_async(lambda: not a.in_l1("k") and not b.in_l1("k"), what="reconnect drop")
    await eventually_async(lambda: a.bus.is_tracking and b.bus.is_tracking)
    await cached_in_both(a, b, "k", "v1")
    await foreign.set(PREFIX + "k", encoded("v2"))
    await dropped_from_both(a, b, "k")
    for node in (a, b):
        assert await node.stack.get("k") == "v2"


# -- hostile payloads --------------------------------------------------------------------------


async def test_publishes_on_the_tracking_channel_are_rejected(
    make_node: Callable[..., Node], make_client: Callable[..., Any], foreign: Any
) -> None:
    node = make_node(make_client(protocol=2))  # RESP2: the subscriber listens on the channel
    await node.stack.start()
    await foreign.set(PREFIX + "k", encoded("v"))
    await cached(node, "k", "v")
    for payload in (b"", b"trk:k", b"\xff" * 100_000, b"*1\r\n$5\r\ntrk:k\r\n"):
        await foreign.publish("__redis__:invalidate", payload)
    await eventually_async(lambda: node.bus.rejected == 4)
    assert node.in_l1("k")  # nothing dropped: only the server sends key lists
    reasons = [e["context"].get("reason") for e in node.errors]
    assert reasons == ["malformed"] * 4
    await foreign.set(PREFIX + "k", encoded("v2"))  # and the subscriber still works
    await eventually_async(lambda: not node.in_l1("k"))


async def test_a_huge_invalidation_drops_everything_once_and_is_bounded(
    make_node: Callable[..., Node],
    make_client: Callable[..., Any],
    foreign: Any,
    protocol: int,
) -> None:
    node = make_node(make_client(protocol=protocol), max_keys=100)
    await node.stack.start()
    await foreign.mset({PREFIX + "k": encoded("v"), PREFIX + "k2": encoded("w")})
    await cached(node, "k", "v")
    await cached(node, "k2", "w")
    # One MSET of 5,000 other keys under the prefix: one invalidation of 5,000 keys, more than
    # max_keys: every local copy goes at once (k and k2 too), and an error event says so.
    named = node.bus.tracked[1]
    await foreign.mset({f"{PREFIX}bulk:{i}": b"x" for i in range(5_000)})
    await eventually_async(lambda: not node.in_l1("k") and not node.in_l1("k2"))
    await eventually_async(
        lambda: any(e["context"].get("operation") == "bus.tracking" for e in node.errors)
    )
    assert node.bus.tracked[1] == named  # the flush named none of the 5,000
    # Over-long and non-UTF-8 keys under the prefix: ignored, no error, nothing dropped.
    errors = len(node.errors)
    await cached(node, "k", "v")
    keys = node.bus.tracked[1]
    mark = node.mark()
    await foreign.set(PREFIX.encode() + b"\xc3\x28" + b"z" * 10_000, b"x")
    await foreign.set(PREFIX.encode() + b"z" * 100_000, b"x")
    await foreign.set(PREFIX + "marker", b"x")
    await node.heard("marker", mark)
    assert node.in_l1("k")
    assert node.bus.tracked[1] == keys + 1
    assert len(node.errors) == errors
    mark = node.mark()
    await foreign.set(PREFIX + "k", encoded("v2"))
    await eventually_async(lambda: not node.in_l1("k"))
    assert await node.stack.get("k") == "v2"


# -- our own writes ----------------------------------------------------------------------------


async def test_a_fetch_keeps_its_stored_value_when_its_own_write_comes_back(
    make_node: Callable[..., Node],
    make_client: Callable[..., Any],
    foreign: Any,
    redis_proxy: TcpProxy,
) -> None:
    # Redis reports our own stores too. When the subscriber's connection is faster than the
    # one the store went out on (here: the layer's traffic is delayed by a proxy; in
    # production a busy or pipelined pooled connection), the report is applied before the
    # fetch has finished storing. The fetch's value must stay in Redis (a tracking report is
    # no reason to take back a conditional store) and the origin is not called again.
    redis_proxy.set_latency(0.003)
    node = make_node(
        make_client(port=redis_proxy.port, max_connections=100), bus_client=make_client()
    )
    await node.stack.start()
    calls: list[str] = []

    def fetcher_for(key: str) -> Callable[[], Any]:
        async def fetch() -> str:
            calls.append(key)
            return f"value of {key}"

        return fetch

    keys = [f"cold:{i}" for i in range(30)]
    values = await asyncio.gather(*(node.stack.get(k, fetcher_for(k)) for k in keys))
    assert values == [f"value of {k}" for k in keys]
    await eventually_async(lambda: node.bus.tracked[1] >= len(keys), what="every echo arrived")
    assert await foreign.exists(*[PREFIX + k for k in keys]) == len(keys)
    values = await asyncio.gather(*(node.stack.get(k, fetcher_for(k)) for k in keys))
    assert values == [f"value of {k}" for k in keys]
    assert sorted(calls) == sorted(keys)


async def test_own_writes_drop_the_local_copy_and_the_next_read_goes_to_redis(
    make_node: Callable[..., Node],
) -> None:
    node = make_node()
    await node.stack.start()
    await node.stack.set("k", "v")
    await eventually_async(lambda: not node.in_l1("k"), what="the echo of our own write")
    await cached(node, "k", "v")  # reads do not come back: it stays until the next change


# -- the checker -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["reads", "fetches"])
async def test_no_stack_serves_a_replaced_value_once_the_change_has_arrived(
    make_node: Callable[..., Node],
    make_client: Callable[..., Any],
    foreign: Any,
    protocol: int,
    redis_proxy: TcpProxy,
    mode: str,
) -> None:
    """A foreign writer changes three keys many times while readers on both stacks read them
    without pause. Once a stack has applied the invalidation of a change, no read it starts
    afterwards returns what the change replaced: not from L1, not from a read or fetch that
    began earlier.

    ``reads``: plain reads; the changes are SET, DEL, MSET, FLUSHALL and a stack's own set.
    ``fetches``: reads with a fetcher from the origin the writer updates first, and entries
    fresh for 20 ms, so fetches run all the time; the changes are SET, MSET and own sets
    (a foreign DEL racing a fetch is the cache-aside race no invalidation can close: the
    fetch may store the origin's older value after the DEL, and nothing changes after it).

    The stacks reach Redis through a proxy that delays every reply by 2 ms while their
    subscribers are connected directly, and L1 copies live 20 ms: reads that Redis answered
    before a change are still on their way when its invalidation arrives."""
    redis_proxy.set_latency(0.002)
    a, b = (
        make_node(
            make_client(port=redis_proxy.port, protocol=protocol, max_connections=100),
            bus_client=make_client(protocol=protocol),
            l1_ttl=0.02,
        )
        for _ in range(2)
    )
    await a.stack.start()
    await b.stack.start()
    rng = random.Random(16)
    keys = list(CHECKER_KEYS)
    fetching = mode == "fetches"
    fresh = 0.02 if fetching else 300.0
    state: dict[str, Any] = dict.fromkeys(keys)
    origin: dict[str, Any] = dict.fromkeys(keys, 0)
    reads: list[Read] = []
    ops: list[Op] = []
    stop = asyncio.Event()

    def fetcher_for(key: str) -> Callable[[], Any]:
        async def fetch() -> Any:
            return origin[key]

        return fetch

    async def reader(index: int, node: Node) -> None:
        while not stop.is_set():
            key = rng.choice(keys)
            started = time.monotonic()
            if fetching:
                value = await node.stack.get(key, fetcher_for(key), ttl=fresh)
            else:
                value = await node.stack.get(key)
            reads.append(Read(index, key, started, time.monotonic(), value))
            await asyncio.sleep(0)

    async def arrival(node: Node, count: int, marker: str) -> float:
        """When ``node`` applied the invalidation of ``marker``, a key the writer sets right
        after each change: Redis sends invalidations in the order of the changes and the
        stack applies them in that order, so the change's own was applied by then too (a
        fetch's echo of an older store may carry the changed key in between)."""

        def found() -> float | None:
            for at, names in node.tracked_events[count:]:
                if marker in names:
                    return at
            return None

        await eventually_async(lambda: found() is not None, what=marker, interval=0.001)
        at = found()
        assert at is not None
        return at

    if fetching:
        for key in keys:
            await foreign.set(PREFIX + key, encoded(0, fresh))
            state[key] = 0
    readers = [asyncio.create_task(reader(i, n)) for i, n in enumerate((a, b)) for _ in range(3)]
    kinds = ["set", "mset", "own"] if fetching else ["set", "delete", "mset", "own", "flush"]
    weights = [6, 2, 1] if fetching else [6, 2, 2, 1, 0.3]
    try:
        for version in range(1, 151):
            counts = [len(a.tracked_events), len(b.tracked_events)]
            kind = rng.choices(kinds, weights)[0]
            key = rng.choice(keys)
            touched = keys[:2] if kind == "mset" else [] if kind == "flush" else [key]
            started = time.monotonic()
            for k in touched:
                origin[k] = version
            if kind == "set":
                await foreign.set(PREFIX + key, encoded(version, fresh))
            elif kind == "delete":
                await foreign.delete(PREFIX + key)
            elif kind == "mset":
                await foreign.mset({PREFIX + k: encoded(version, fresh) for k in touched})
            elif kind == "own":
                await a.stack.set(key, version, ttl=fresh)
            else:
                await foreign.flushall()
            for k in keys if kind == "flush" else touched:
                state[k] = None if kind in ("delete", "flush") else version
            marker = f"marker:{version}"
            await foreign.set(PREFIX + marker, b"")
            arrived = [
                await arrival(node, count, marker)
                for node, count in zip((a, b), counts, strict=True)
            ]
            ops.append(Op(started, dict(state), arrived))
            await asyncio.sleep(rng.uniform(0, 0.003))
    finally:
        stop.set()
        await asyncio.gather(*readers)
    assert check_history(ops, reads) > 50  # reads that could have seen a replaced value


# -- configuration -----------------------------------------------------------------------------


async def test_a_prefix_no_shared_layer_uses_is_refused_at_construction() -> None:
    client = redis.asyncio.Redis()  # never connects
    try:
        with pytest.raises(ValueError, match="track_prefix"):
            CacheStack(
                [MemoryLayer(), RedisLayer(client=client, prefix="app:")],
                invalidation_bus=RedisInvalidationBus(client, track_prefix="other:"),
            )
        # The layer's own prefix is accepted.
        CacheStack(
            [MemoryLayer(), RedisLayer(client=client, prefix="app:")],
            invalidation_bus=RedisInvalidationBus(client, track_prefix="app:"),
        )
    finally:
        await client.aclose()


async def test_cluster_clients_are_refused_clearly() -> None:
    from redis.asyncio.cluster import RedisCluster

    client = RedisCluster(host="127.0.0.1", port=1)  # never connects
    try:
        with pytest.raises(ValueError, match="CLIENT TRACKING is per node"):
            RedisInvalidationBus(client, track_prefix="app:")
        RedisInvalidationBus(client)  # the sharded bus without tracking is fine
    finally:
        await client.aclose()
