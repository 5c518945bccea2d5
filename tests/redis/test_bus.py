"""RedisInvalidationBus against a real redis-server: exchange, hostile input, reconnects, close.

Every wait is bounded polling with a deadline (``eventually``); nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from _redis_server import RedisServer
from _tcp_proxy import TcpProxy
from layercache._exceptions import CacheLayerError
from layercache._signing import MessageSigner
from layercache.redis.bus import (
    InvalidationMessage,
    RedisInvalidationBus,
    RejectedMessageError,
    backoff_delay,
)

pytestmark = pytest.mark.redis

SECRET = "test-secret-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
DEADLINE = 10.0


async def eventually(condition: Callable[[], bool], timeout: float = DEADLINE) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.005)


class Recorder:
    """The three callbacks of ``start()``, recording what they were given."""

    def __init__(self) -> None:
        self.messages: list[InvalidationMessage] = []
        self.reconnects = 0
        self.errors: list[tuple[BaseException, dict[str, Any]]] = []
        self.fail_next_message = False

    async def on_message(self, message: InvalidationMessage) -> None:
        if self.fail_next_message:
            self.fail_next_message = False
            raise RuntimeError("handler failed")
        self.messages.append(message)

    async def on_reconnect(self) -> None:
        self.reconnects += 1

    def on_error(self, exc: BaseException, context: dict[str, Any]) -> None:
        self.errors.append((exc, context))

    async def start(self, bus: RedisInvalidationBus) -> None:
        await bus.start(self.on_message, self.on_reconnect, self.on_error)

    def reasons(self) -> list[str]:
        return [ctx.get("reason", ctx.get("operation", "?")) for _, ctx in self.errors]

    def keys(self) -> list[str]:
        return [k for m in self.messages for k in m.keys]


def message(
    bus: RedisInvalidationBus,
    keys: tuple[str, ...] = ("k",),
    scope: str = "keys",
    operation: str = "delete",
    mode: str = "any",
    timestamp: float | None = None,
) -> InvalidationMessage:
    return InvalidationMessage(
        source_id=bus.source_id,
        scope=scope,
        operation=operation,
        keys=keys,
        timestamp=time.time() if timestamp is None else timestamp,
        mode=mode,
    )


@pytest.fixture
def channel() -> str:
    return f"test:bus:{uuid.uuid4().hex}"


ClientFactory = Callable[..., redis.asyncio.Redis]


@pytest.fixture
async def make_client(redis_clean: RedisServer) -> AsyncIterator[ClientFactory]:
    """New ``redis.asyncio.Redis`` clients (the session server by default), closed afterwards."""
    created: list[redis.asyncio.Redis] = []

    def make(port: int | None = None, **kwargs: Any) -> redis.asyncio.Redis:
        client = redis.asyncio.Redis(host=redis_clean.host, port=port or redis_clean.port, **kwargs)
        created.append(client)
        return client

    yield make
    for client in created:
        await client.aclose()


BusFactory = Callable[..., RedisInvalidationBus]


@pytest.fixture
async def make_bus(channel: str, make_client: ClientFactory) -> AsyncIterator[BusFactory]:
    """New buses on ``channel`` (each with its own client unless given), closed afterwards."""
    created: list[RedisInvalidationBus] = []

    def make(publisher: Any = None, subscriber: Any = None, **kwargs: Any) -> RedisInvalidationBus:
        kwargs.setdefault("channel", channel)
        bus = RedisInvalidationBus(publisher or make_client(), subscriber, **kwargs)
        created.append(bus)
        return bus

    yield make
    for bus in created:
        await bus.aclose()


async def started(make_bus: BusFactory, **kwargs: Any) -> tuple[RedisInvalidationBus, Recorder]:
    bus = make_bus(**kwargs)
    recorder = Recorder()
    await recorder.start(bus)
    return bus, recorder


async def subscribers(client: redis.asyncio.Redis, channel: str) -> int:
    reply = await client.execute_command("PUBSUB", "NUMSUB", channel)
    return int(reply[1])


# -- exchange ----------------------------------------------------------------------------------


async def test_two_instances_exchange_messages_and_ignore_their_own(make_bus: BusFactory) -> None:
    a, seen_by_a = await started(make_bus)
    b, seen_by_b = await started(make_bus)
    assert a.source_id != b.source_id
    assert a.is_subscribed
    assert b.is_subscribed
    assert not a.sharded

    sent = message(a, ("user:1", "user:2"), operation="set")
    await a.publish(sent)
    await eventually(lambda: len(seen_by_b.messages) == 1)
    assert seen_by_b.messages == [sent]  # every field survives the wire

    reply = message(b, ("profile", "avatar"), scope="tags", operation="invalidate", mode="all")
    await b.publish(reply)
    await eventually(lambda: len(seen_by_a.messages) == 1)
    # One channel delivers in order: a had its own message before b's, and ignored it.
    assert seen_by_a.messages == [reply]
    assert seen_by_b.messages == [sent]
    assert seen_by_a.errors == seen_by_b.errors == []
    assert seen_by_a.reconnects == seen_by_b.reconnects == 0


@pytest.mark.parametrize(
    ("scope", "operation", "keys", "mode"),
    [
        ("keys", "delete", ("ключ", "emoji:🎉", 'quote"and\\slash'), "any"),
        ("keys", "set", (), "any"),
        ("tags", "invalidate", ("t1",), "any"),
        ("pattern", "invalidate", ("user:[0-9]*",), "any"),
        ("prefix", "invalidate", ("session:",), "any"),
        ("clear", "clear", (), "any"),
        ("generation", "bump", ("42",), "any"),
    ],
)
async def test_every_scope_travels_signed(
    make_bus: BusFactory, scope: str, operation: str, keys: tuple[str, ...], mode: str
) -> None:
    sender = make_bus(signing_secret=SECRET)
    _, recorder = await started(make_bus, signing_secret=SECRET)
    sent = message(sender, keys, scope, operation, mode)
    await sender.publish(sent)
    await eventually(lambda: len(recorder.messages) == 1)
    assert recorder.messages == [sent]
    assert recorder.errors == []


async def test_a_failing_handler_is_reported_and_the_next_message_arrives(
    make_bus: BusFactory,
) -> None:
    sender = make_bus()
    _, recorder = await started(make_bus)
    recorder.fail_next_message = True
    await sender.publish(message(sender, ("first",)))
    await sender.publish(message(sender, ("second",)))
    await eventually(lambda: recorder.keys() == ["second"])
    assert recorder.reasons() == ["bus.on_message"]
    assert isinstance(recorder.errors[0][0], RuntimeError)


# -- hostile input -----------------------------------------------------------------------------


def _signed(body: dict[str, Any], secret: str = SECRET) -> bytes:
    return json.dumps(MessageSigner(secret).signed(body)).encode()


def _body(sender: RedisInvalidationBus, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(sender.encode(message(sender, ("victim",)))[0])
    body.pop("sig", None)
    body.update(changes)
    return body


HOSTILE: dict[str, tuple[str, Callable[[RedisInvalidationBus], list[bytes]]]] = {
    "unsigned": ("unsigned", lambda s: [json.dumps(_body(s)).encode()]),
    "forged": ("forged", lambda s: [_signed(_body(s), secret="not-the-secret")]),
    "tampered": (
        "forged",
        lambda s: [s.encode(message(s, ("victim",)))[0].replace(b"victim", b"victin")],
    ),
    "malformed json": ("malformed", lambda s: [b'{"v": 1, "keys": ["a"']),
    "not utf-8": ("malformed", lambda s: [b"\xff\xfe\x00garbage"]),
    "nan timestamp": ("malformed", lambda s: [b'{"timestamp": NaN}']),
    "duplicate field": ("malformed", lambda s: [b'{"v": 1, "v": 1}']),
    "deep nesting": ("malformed", lambda s: [b"[" * 2000 + b"]" * 2000]),
    "json array": ("schema", lambda s: [b"[1, 2, 3]"]),
    "unknown scope": ("schema", lambda s: [_signed(_body(s, scope="everything"))]),
    "unknown operation": ("schema", lambda s: [_signed(_body(s, operation="drop"))]),
    "unknown mode": ("schema", lambda s: [_signed(_body(s, mode="some"))]),
    "extra field": ("schema", lambda s: [_signed(_body(s, value="injected"))]),
    "missing field": ("schema", lambda s: [_signed({"v": 1, "keys": ["a"]})]),
    "keys not a list": ("schema", lambda s: [_signed(_body(s, keys="victim"))]),
    "key not a string": ("schema", lambda s: [_signed(_body(s, keys=[1]))]),
    "key with a control char": ("schema", lambda s: [_signed(_body(s, keys=["a\nb"]))]),
    "empty key": ("schema", lambda s: [_signed(_body(s, keys=[""]))]),
    "too many keys": ("schema", lambda s: [_signed(_body(s, keys=[f"k{i}" for i in range(101)]))]),
    "two patterns": ("schema", lambda s: [_signed(_body(s, scope="pattern", keys=["a*", "b*"]))]),
    "bad generation": ("schema", lambda s: [_signed(_body(s, scope="generation", keys=["-1"]))]),
    "timestamp as text": ("schema", lambda s: [_signed(_body(s, timestamp="now"))]),
    "bool version": ("schema", lambda s: [_signed(_body(s, v=True))]),
    "future version": ("schema", lambda s: [_signed(_body(s, v=2))]),
    "short nonce": ("schema", lambda s: [_signed(_body(s, nonce="abc"))]),
    "oversized": ("oversized", lambda s: [_signed(_body(s, keys=["x" * 1000] * 5))]),
    "too old": ("stale", lambda s: [_signed(_body(s, timestamp=time.time() - 60))]),
    "from the future": ("stale", lambda s: [_signed(_body(s, timestamp=time.time() + 60))]),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_hostile_messages_are_dropped_and_the_subscriber_keeps_working(
    make_bus: BusFactory, make_client: ClientFactory, channel: str, case: str
) -> None:
    reason, payloads = HOSTILE[case]
    sender = make_bus(signing_secret=SECRET, max_keys=100)
    _, recorder = await started(
        make_bus, signing_secret=SECRET, max_keys=100, max_message_bytes=4096
    )
    raw = make_client()
    for payload in payloads(sender):
        await raw.publish(channel, payload)
    canary = message(sender, ("canary",))
    await sender.publish(canary)

    await eventually(lambda: len(recorder.messages) == 1)
    assert recorder.messages == [canary]  # the hostile message was not applied
    assert recorder.reasons() == [reason]
    exc, context = recorder.errors[0]
    assert isinstance(exc, RejectedMessageError)
    assert exc.reason == reason
    assert context["operation"] == "bus.receive"
    assert context["channel"] == channel


async def test_a_replayed_message_is_dropped(
    make_bus: BusFactory, make_client: ClientFactory, channel: str
) -> None:
    sender = make_bus(signing_secret=SECRET)
    _, recorder = await started(make_bus, signing_secret=SECRET)
    raw = make_client()
    (captured,) = sender.encode(message(sender, ("once",)))
    await raw.publish(channel, captured)
    await raw.publish(channel, captured)  # the replay: same bytes, same signature
    await sender.publish(message(sender, ("canary",)))
    await eventually(lambda: recorder.keys() == ["once", "canary"])
    assert recorder.reasons() == ["replayed"]


async def test_identical_messages_are_not_mistaken_for_replays(make_bus: BusFactory) -> None:
    sender = make_bus(signing_secret=SECRET)
    _, recorder = await started(make_bus, signing_secret=SECRET)
    same = message(sender, ("k",))
    await sender.publish(same)
    await sender.publish(same)  # a genuine repeat gets a new nonce
    await eventually(lambda: len(recorder.messages) == 2)
    assert recorder.errors == []


async def test_without_a_secret_signed_and_unsigned_messages_are_accepted(
    make_bus: BusFactory, make_client: ClientFactory, channel: str
) -> None:
    signed_sender = make_bus(signing_secret=SECRET)
    plain_sender = make_bus()
    _, recorder = await started(make_bus)
    await signed_sender.publish(message(signed_sender, ("a",)))
    await plain_sender.publish(message(plain_sender, ("b",)))
    await make_client().publish(channel, b"not json")  # still checked
    await plain_sender.publish(message(plain_sender, ("c",)))
    await eventually(lambda: recorder.keys() == ["a", "b", "c"])
    assert recorder.reasons() == ["malformed"]


async def test_an_error_handler_that_raises_does_not_stop_the_subscriber(
    make_bus: BusFactory, make_client: ClientFactory, channel: str
) -> None:
    bus = make_bus()
    sender = make_bus()
    received: list[InvalidationMessage] = []

    async def on_message(m: InvalidationMessage) -> None:
        received.append(m)

    async def on_reconnect() -> None:
        pass

    def on_error(exc: BaseException, context: dict[str, Any]) -> None:
        raise RuntimeError("broken handler")

    await bus.start(on_message, on_reconnect, on_error)
    await make_client().publish(channel, b"junk")
    await sender.publish(message(sender, ("after",)))
    await eventually(lambda: len(received) == 1)


# -- publishing --------------------------------------------------------------------------------


async def test_publish_splits_by_count_and_by_size(make_bus: BusFactory) -> None:
    sender = make_bus(max_keys=100, max_message_bytes=4096)
    _, recorder = await started(make_bus, max_keys=100, max_message_bytes=4096)
    many = tuple(f"key:{i}" for i in range(250))
    wide = tuple(f"{i}:" + "w" * 500 for i in range(20))
    assert len(sender.encode(message(sender, many))) == 3  # by count
    by_size = sender.encode(message(sender, wide))
    assert len(by_size) >= 3
    assert all(len(p) <= 4096 for p in by_size)
    await sender.publish(message(sender, many))
    await sender.publish(message(sender, wide))
    await eventually(lambda: len(recorder.keys()) == 270)
    assert recorder.keys() == [*many, *wide]  # complete, in order
    assert all(len(m.keys) <= 100 for m in recorder.messages)
    assert recorder.errors == []


async def test_a_message_that_arrives_in_parts_is_read_whole_without_a_reconnect(
    make_bus: BusFactory, make_client: ClientFactory, redis_proxy: TcpProxy
) -> None:
    # A large message over a slow link reaches the subscriber in parts, further apart than
    # the read slice (min(1 s, health_check_interval)). redis-py's asyncio pub/sub keeps
    # what it read of the message when a slice times out; the sync twin's test of the same
    # name covers redis-py's sync pub/sub, which did not.
    through_proxy = make_client(port=redis_proxy.port)
    bus, recorder = await started(
        make_bus, subscriber=through_proxy, health_check_interval=0.05, timeout=5.0
    )
    sender = make_bus()
    many = tuple(f"key:{i:05d}:" + "x" * 20 for i in range(2000))  # about 60 KB
    redis_proxy.set_pacing(0.2, 16384)
    await sender.publish(message(sender, many))
    await sender.publish(message(sender, ("after",)))
    await eventually(lambda: recorder.keys()[-1:] == ["after"])
    assert recorder.keys() == [*many, "after"]
    assert recorder.reconnects == 0
    assert recorder.errors == []
    assert bus.is_subscribed


async def test_publish_refuses_what_cannot_be_sent(make_bus: BusFactory) -> None:
    sender = make_bus(max_keys=10, max_message_bytes=2048)
    with pytest.raises(ValueError, match="scope"):
        await sender.publish(message(sender, scope="everything"))
    with pytest.raises(ValueError, match="control"):
        await sender.publish(message(sender, ("a\x00b",)))
    tags = tuple(f"t{i}" for i in range(11))
    with pytest.raises(ValueError, match="limit is 10"):  # "all" tags cannot be split
        await sender.publish(message(sender, tags, scope="tags", mode="all"))
    await sender.publish(message(sender, ("x" * 1024,)))  # fits...
    with pytest.raises(ValueError, match="max_message_bytes"):
        await sender.publish(message(sender, ("é" * 1024,)))  # ...2 KiB of UTF-8 does not


async def test_publish_failure_is_a_cache_layer_error(
    make_bus: BusFactory, make_client: ClientFactory, redis_proxy: TcpProxy
) -> None:
    publisher = make_client(port=redis_proxy.port, retry=Retry(NoBackoff(), 0))
    bus = make_bus(publisher=publisher)
    await bus.publish(message(bus))  # connected
    redis_proxy.cut("refuse")
    with pytest.raises(CacheLayerError) as raised:
        await bus.publish(message(bus))
    assert (raised.value.layer, raised.value.operation) == ("bus", "publish")
    assert isinstance(raised.value.__cause__, redis.exceptions.ConnectionError)


async def test_publish_is_bounded_by_timeout(
    make_bus: BusFactory, make_client: ClientFactory, redis_proxy: TcpProxy
) -> None:
    publisher = make_client(port=redis_proxy.port, retry=Retry(NoBackoff(), 0))
    bus = make_bus(publisher=publisher, timeout=0.2)
    await bus.publish(message(bus))
    redis_proxy.cut("blackhole", close_existing=False)
    began = time.monotonic()
    with pytest.raises(CacheLayerError):
        await bus.publish(message(bus))
    assert time.monotonic() - began < 2.0


# -- reconnecting ------------------------------------------------------------------------------


@pytest.mark.parametrize("driver_retries", [False, True], ids=["bus-reconnects", "driver-retries"])
async def test_subscriber_reconnects_after_a_cut_and_calls_on_reconnect(
    make_bus: BusFactory,
    make_client: ClientFactory,
    redis_proxy: TcpProxy,
    driver_retries: bool,
) -> None:
    # Only the subscriber goes through the proxy; the publisher stays connected.
    options: dict[str, Any] = {} if driver_retries else {"retry": Retry(NoBackoff(), 0)}
    through_proxy = make_client(port=redis_proxy.port, **options)
    publisher = make_client()
    bus = make_bus(publisher=publisher, subscriber=through_proxy)
    recorder = Recorder()
    await recorder.start(bus)
    sender = make_bus()
    await sender.publish(message(sender, ("before",)))
    await eventually(lambda: recorder.keys() == ["before"])
    assert recorder.reconnects == 0

    redis_proxy.cut("refuse")
    await sender.publish(message(sender, ("lost",)))  # nobody can hear this one
    redis_proxy.restore()

    await eventually(lambda: recorder.reconnects == 1)
    assert bus.is_subscribed
    await sender.publish(message(sender, ("after",)))
    await eventually(lambda: len(recorder.messages) == 2)
    assert recorder.keys() == ["before", "after"]
    assert recorder.reconnects == 1
    if not driver_retries:  # the bus saw the loss itself and reported it
        assert recorder.reasons() == ["bus.subscribe"]
        assert isinstance(recorder.errors[0][0], CacheLayerError)


async def test_a_silent_connection_is_detected_by_the_health_check(
    make_bus: BusFactory, make_client: ClientFactory, redis_proxy: TcpProxy
) -> None:
    # A blackhole keeps the socket open: no error ever reaches the reader, only PING finds out.
    through_proxy = make_client(port=redis_proxy.port, retry=Retry(NoBackoff(), 0))
    bus = make_bus(
        subscriber=through_proxy,
        health_check_interval=0.2,
        timeout=0.3,
        reconnect_backoff=(0.05, 0.2),
    )
    recorder = Recorder()
    await recorder.start(bus)
    redis_proxy.cut("blackhole", close_existing=False)
    await eventually(lambda: not bus.is_subscribed)
    redis_proxy.restore()
    await eventually(lambda: recorder.reconnects == 1)
    sender = make_bus()
    await sender.publish(message(sender, ("after",)))
    await eventually(lambda: recorder.keys() == ["after"])


async def test_start_reports_an_unreachable_server_and_keeps_trying(
    make_bus: BusFactory, make_client: ClientFactory, redis_proxy: TcpProxy
) -> None:
    through_proxy = make_client(port=redis_proxy.port, retry=Retry(NoBackoff(), 0))
    bus = make_bus(subscriber=through_proxy, reconnect_backoff=(0.05, 0.2), timeout=1.0)
    recorder = Recorder()
    redis_proxy.cut("refuse")
    with pytest.raises(CacheLayerError) as raised:
        await recorder.start(bus)
    assert (raised.value.layer, raised.value.operation) == ("bus", "subscribe")
    assert recorder.errors == []  # the caller of start() reports it, not on_error as well
    redis_proxy.restore()
    # It ran without the bus until now: the late subscription counts as a reconnect.
    await eventually(lambda: recorder.reconnects == 1)
    await recorder.start(bus)  # already subscribed: returns at once
    assert recorder.reconnects == 1


# -- closing -----------------------------------------------------------------------------------


async def test_aclose_ends_the_subscriber(
    make_bus: BusFactory, make_client: ClientFactory, channel: str
) -> None:
    observer = make_client()
    bus, recorder = await started(make_bus)
    assert await subscribers(observer, channel) == 1
    await bus.aclose()
    assert not bus.is_subscribed
    deadline = time.monotonic() + DEADLINE
    while await subscribers(observer, channel) != 0:
        assert time.monotonic() < deadline, "the subscription outlived aclose()"
        await asyncio.sleep(0.005)
    await bus.aclose()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await recorder.start(bus)
    tasks = [t for t in asyncio.all_tasks() if t.get_name().startswith("layercache-bus")]
    assert tasks == []


# -- cluster (sharded pub/sub) -------------------------------------------------------------------


async def test_cluster_clients_use_sharded_pub_sub(
    redis_cluster_server: RedisServer, redis_cluster_client: Any, channel: str
) -> None:
    from redis.asyncio.cluster import RedisCluster

    other = RedisCluster(host=redis_cluster_server.host, port=redis_cluster_server.port)
    a = RedisInvalidationBus(redis_cluster_client, channel=channel, signing_secret=SECRET)
    b = RedisInvalidationBus(other, channel=channel, signing_secret=SECRET)
    try:
        assert a.sharded
        assert b.sharded
        seen_by_a, seen_by_b = Recorder(), Recorder()
        await seen_by_a.start(a)
        await seen_by_b.start(b)
        # Asked of the channel's owner with a plain client: redis-py 8.2's cluster client
        # fails to merge a SHARDNUMSUB reply (it unpacks the flat reply as pairs).
        node = redis_cluster_client.get_node_from_key(channel)
        owner = redis.asyncio.Redis(host=node.host, port=node.port)
        try:
            shard = await owner.execute_command("PUBSUB", "SHARDNUMSUB", channel)
            plain = await owner.execute_command("PUBSUB", "NUMSUB", channel)
        finally:
            await owner.aclose()
        assert int(shard[1]) == 2
        assert int(plain[1]) == 0

        sent = message(a, ("x", "y"))
        await a.publish(sent)
        reply = message(b, ("z",))
        await b.publish(reply)
        await eventually(lambda: seen_by_b.messages == [sent] and seen_by_a.messages == [reply])
        assert seen_by_a.errors == seen_by_b.errors == []
    finally:
        await a.aclose()
        await b.aclose()
        await other.aclose()


# -- construction ------------------------------------------------------------------------------


async def test_constructor_refuses_bad_arguments(
    make_client: ClientFactory, redis_cluster_client: Any
) -> None:
    client = make_client()
    with pytest.raises(ValueError, match="decode_responses"):
        RedisInvalidationBus(make_client(decode_responses=True))
    with pytest.raises(ValueError, match="both be cluster"):
        RedisInvalidationBus(client, redis_cluster_client)
    with pytest.raises(ValueError, match=r"redis\.asyncio\.Redis"):
        RedisInvalidationBus(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="control"):
        RedisInvalidationBus(client, channel="a\nb")
    with pytest.raises(ValueError, match="empty"):
        RedisInvalidationBus(client, signing_secret="")
    with pytest.raises(ValueError, match="replay_window"):
        RedisInvalidationBus(client, replay_window=0)
    with pytest.raises(ValueError, match="max_keys"):
        RedisInvalidationBus(client, max_keys=0)
    with pytest.raises(ValueError, match="reconnect_backoff"):
        RedisInvalidationBus(client, reconnect_backoff=(1.0, 0.5))
    bus = RedisInvalidationBus(client, source_id="me", signing_secret=SECRET)
    assert bus.source_id == "me"
    assert SECRET not in repr(bus)


def test_backoff_grows_is_capped_and_jittered() -> None:
    import random

    rng = random.Random(1)
    delays = [backoff_delay(n, 0.05, 5.0, rng) for n in range(20)]
    assert 0.025 <= delays[0] <= 0.05
    assert all(d <= 5.0 for d in delays)
    assert delays[-1] >= 2.5
    assert len({round(d, 6) for d in delays[-5:]}) == 5  # jitter: capped delays still differ
