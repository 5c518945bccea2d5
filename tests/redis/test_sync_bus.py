"""The sync RedisInvalidationBus (``SyncRedisInvalidationBus``) on its own, against a real
redis-server: a blocking start, exchange between instances, hostile input, splitting, reconnects
through the loopback proxy, and a close that stops the subscriber thread.

Every wait is bounded polling with a deadline (``eventually``); nothing sleeps to synchronise.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from _redis_server import RedisServer
from _tcp_proxy import TcpProxy
from layercache import CacheLayerError, InvalidationMessage, RedisInvalidationBus
from layercache._signing import MessageSigner
from polling import eventually

pytestmark = pytest.mark.redis

SECRET = "sync-bus-secret-0123456789abcdef"
DEADLINE = 10.0


def bus_threads(channel: str) -> list[threading.Thread]:
    """Live subscriber threads of the bus on ``channel``."""
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith("layercache-bus") and t.name.endswith(channel) and t.is_alive()
    ]


class Recorder:
    """The three (plain, synchronous) callbacks of ``start()``, recording what they got."""

    def __init__(self) -> None:
        self.messages: list[InvalidationMessage] = []
        self.reconnects = 0
        self.errors: list[tuple[BaseException, dict[str, Any]]] = []
        self.fail_next_message = False
        self.threads: set[str] = set()

    def on_message(self, message: InvalidationMessage) -> None:
        self.threads.add(threading.current_thread().name)
        if self.fail_next_message:
            self.fail_next_message = False
            raise RuntimeError("handler failed")
        self.messages.append(message)

    def on_reconnect(self) -> None:
        self.reconnects += 1

    def on_error(self, exc: BaseException, context: dict[str, Any]) -> None:
        self.errors.append((exc, context))

    def start(self, bus: Any) -> None:
        bus.start(self.on_message, self.on_reconnect, self.on_error)

    def reasons(self) -> list[str]:
        return [ctx.get("reason", ctx.get("operation", "?")) for _, ctx in self.errors]

    def keys(self) -> list[str]:
        return [k for m in self.messages for k in m.keys]


def message(
    bus: Any,
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
    return f"test:sync-bus:{uuid.uuid4().hex}"


ClientFactory = Callable[..., redis.Redis]


@pytest.fixture
def make_client(redis_clean: RedisServer) -> Iterator[ClientFactory]:
    """New sync ``redis.Redis`` clients (the session server by default), closed afterwards."""
    created: list[redis.Redis] = []

    def make(port: int | None = None, **kwargs: Any) -> redis.Redis:
        kwargs.setdefault("socket_timeout", 5)
        client = redis.Redis(host=redis_clean.host, port=port or redis_clean.port, **kwargs)
        created.append(client)
        return client

    yield make
    for client in created:
        client.close()


BusFactory = Callable[..., Any]


@pytest.fixture
def make_bus(channel: str, make_client: ClientFactory) -> Iterator[BusFactory]:
    """New sync buses on ``channel`` (each with its own client unless given), closed after."""
    created: list[Any] = []

    def make(publisher: Any = None, subscriber: Any = None, **kwargs: Any) -> Any:
        kwargs.setdefault("channel", channel)
        # The subscriber thread reads in slices of min(1 s, health_check_interval) and close()
        # waits for the current slice: a short interval keeps the suite fast.
        kwargs.setdefault("health_check_interval", 0.25)
        bus = RedisInvalidationBus(publisher or make_client(), subscriber, **kwargs)
        created.append(bus)
        return bus

    yield make
    closers = [threading.Thread(target=bus.close) for bus in created]
    for closer in closers:
        closer.start()
    for closer in closers:
        closer.join(DEADLINE)


def started(make_bus: BusFactory, **kwargs: Any) -> tuple[Any, Recorder]:
    bus = make_bus(**kwargs)
    recorder = Recorder()
    recorder.start(bus)
    return bus, recorder


def subscribers(client: redis.Redis, channel: str) -> int:
    reply = client.execute_command("PUBSUB", "NUMSUB", channel)
    return int(reply[1])


# -- construction ------------------------------------------------------------------------------


def test_a_sync_client_makes_a_sync_bus(make_client: ClientFactory) -> None:
    import layercache
    import layercache.redis

    client = make_client()
    bus: Any = RedisInvalidationBus(publisher=client, channel="c", signing_secret=SECRET)
    assert type(bus) is layercache.redis.SyncRedisInvalidationBus
    assert layercache.SyncRedisInvalidationBus is layercache.redis.SyncRedisInvalidationBus
    assert type(bus).__name__ == "SyncRedisInvalidationBus"
    assert bus.channel == "c"
    assert bus.signed
    assert not bus.sharded
    assert not bus.is_subscribed
    assert SECRET not in repr(bus)
    # Built by name too, with the same checks as the asyncio class.
    direct = layercache.redis.SyncRedisInvalidationBus(client, source_id="me")
    assert direct.source_id == "me"
    with pytest.raises(ValueError, match="decode_responses"):
        RedisInvalidationBus(make_client(decode_responses=True))
    with pytest.raises(ValueError, match="control"):
        RedisInvalidationBus(client, channel="a\nb")
    with pytest.raises(ValueError, match="empty"):
        RedisInvalidationBus(client, signing_secret="")
    bus.close()
    direct.close()
    assert bus_threads("c") == []  # never started: no thread was made


# -- start and exchange ------------------------------------------------------------------------


def test_start_blocks_until_subscribed(
    make_bus: BusFactory, make_client: ClientFactory, channel: str
) -> None:
    bus, recorder = started(make_bus)
    # No polling: when start() returns the server already counts the subscription.
    assert bus.is_subscribed
    assert subscribers(make_client(), channel) == 1
    threads = bus_threads(channel)
    assert len(threads) == 1
    assert threads[0].daemon
    assert recorder.reconnects == 0
    assert recorder.errors == []
    recorder.start(bus)  # already subscribed: returns at once, no second thread
    assert len(bus_threads(channel)) == 1
    assert subscribers(make_client(), channel) == 1


def test_two_buses_exchange_messages_and_ignore_their_own(make_bus: BusFactory) -> None:
    a, seen_by_a = started(make_bus, signing_secret=SECRET)
    b, seen_by_b = started(make_bus, signing_secret=SECRET)
    assert a.source_id != b.source_id

    sent = message(a, ("user:1", "user:2"), operation="set")
    a.publish(sent)
    eventually(lambda: len(seen_by_b.messages) == 1)
    assert seen_by_b.messages == [sent]  # every field survives the wire

    reply = message(b, ("profile", "avatar"), scope="tags", operation="invalidate", mode="all")
    b.publish(reply)
    eventually(lambda: len(seen_by_a.messages) == 1)
    # One channel delivers in order: a had its own message before b's, and ignored it.
    assert seen_by_a.messages == [reply]
    assert seen_by_b.messages == [sent]
    assert seen_by_a.errors == seen_by_b.errors == []
    assert seen_by_a.reconnects == seen_by_b.reconnects == 0
    # The callbacks run on the subscriber thread, not on the publishing one.
    assert all(name.startswith("layercache-bus") for name in seen_by_a.threads | seen_by_b.threads)


@pytest.mark.parametrize(
    ("scope", "operation", "keys", "mode"),
    [
        ("keys", "delete", ("ключ", "emoji:🎉", 'quote"and\\slash'), "any"),
        ("tags", "invalidate", ("t1", "t2"), "all"),
        ("pattern", "invalidate", ("user:[0-9]*",), "any"),
        ("prefix", "invalidate", ("session:",), "any"),
        ("clear", "clear", (), "any"),
        ("generation", "bump", ("42",), "any"),
    ],
)
def test_every_scope_travels_signed(
    make_bus: BusFactory, scope: str, operation: str, keys: tuple[str, ...], mode: str
) -> None:
    sender = make_bus(signing_secret=SECRET)
    _, recorder = started(make_bus, signing_secret=SECRET)
    sent = message(sender, keys, scope, operation, mode)
    sender.publish(sent)
    eventually(lambda: len(recorder.messages) == 1)
    assert recorder.messages == [sent]
    assert recorder.errors == []


def test_a_failing_handler_is_reported_and_the_next_message_arrives(
    make_bus: BusFactory,
) -> None:
    sender = make_bus()
    _, recorder = started(make_bus)
    recorder.fail_next_message = True
    sender.publish(message(sender, ("first",)))
    sender.publish(message(sender, ("second",)))
    eventually(lambda: recorder.keys() == ["second"])
    assert recorder.reasons() == ["bus.on_message"]
    assert isinstance(recorder.errors[0][0], RuntimeError)


# -- hostile input -----------------------------------------------------------------------------


def _signed(body: dict[str, Any], secret: str = SECRET) -> bytes:
    return json.dumps(MessageSigner(secret).signed(body)).encode()


def _body(sender: Any, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(sender.encode(message(sender, ("victim",)))[0])
    body.pop("sig", None)
    body.update(changes)
    return body


HOSTILE: dict[str, tuple[str, Callable[[Any], bytes]]] = {
    "unsigned": ("unsigned", lambda s: json.dumps(_body(s)).encode()),
    "forged": ("forged", lambda s: _signed(_body(s), secret="not-the-secret")),
    "tampered": (
        "forged",
        lambda s: s.encode(message(s, ("victim",)))[0].replace(b"victim", b"victin"),
    ),
    "malformed json": ("malformed", lambda s: b'{"v": 1, "keys": ["a"'),
    "not utf-8": ("malformed", lambda s: b"\xff\xfe\x00garbage"),
    "deep nesting": ("malformed", lambda s: b"[" * 2000 + b"]" * 2000),
    "json array": ("schema", lambda s: b"[1, 2, 3]"),
    "unknown scope": ("schema", lambda s: _signed(_body(s, scope="everything"))),
    "extra field": ("schema", lambda s: _signed(_body(s, value="injected"))),
    "key with a control char": ("schema", lambda s: _signed(_body(s, keys=["a\nb"]))),
    "oversized": ("oversized", lambda s: _signed(_body(s, keys=["x" * 1000] * 5))),
    "too old": ("stale", lambda s: _signed(_body(s, timestamp=time.time() - 60))),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_messages_are_dropped_and_the_subscriber_keeps_working(
    make_bus: BusFactory, make_client: ClientFactory, channel: str, case: str
) -> None:
    reason, payload = HOSTILE[case]
    sender = make_bus(signing_secret=SECRET, max_keys=100)
    _, recorder = started(make_bus, signing_secret=SECRET, max_keys=100, max_message_bytes=4096)
    make_client().publish(channel, payload(sender))
    canary = message(sender, ("canary",))
    sender.publish(canary)

    eventually(lambda: len(recorder.messages) == 1)
    assert recorder.messages == [canary]  # the hostile message was not applied
    assert recorder.reasons() == [reason]
    exc, context = recorder.errors[0]
    assert isinstance(exc, ValueError)
    assert type(exc).__name__ == "RejectedMessageError"
    assert exc.reason == reason  # type: ignore[attr-defined]
    assert context["operation"] == "bus.receive"
    assert context["channel"] == channel


def test_a_replayed_message_is_dropped(
    make_bus: BusFactory, make_client: ClientFactory, channel: str
) -> None:
    sender = make_bus(signing_secret=SECRET)
    _, recorder = started(make_bus, signing_secret=SECRET)
    raw = make_client()
    (captured,) = sender.encode(message(sender, ("once",)))
    raw.publish(channel, captured)
    raw.publish(channel, captured)  # the replay: same bytes, same signature
    sender.publish(message(sender, ("canary",)))
    eventually(lambda: recorder.keys() == ["once", "canary"])
    assert recorder.reasons() == ["replayed"]


def test_an_error_handler_that_raises_does_not_stop_the_subscriber(
    make_bus: BusFactory, make_client: ClientFactory, channel: str
) -> None:
    bus = make_bus()
    sender = make_bus()
    received: list[InvalidationMessage] = []

    def on_error(exc: BaseException, context: dict[str, Any]) -> None:
        raise RuntimeError("broken handler")

    bus.start(received.append, lambda: None, on_error)
    make_client().publish(channel, b"junk")
    sender.publish(message(sender, ("after",)))
    eventually(lambda: len(received) == 1)
    assert len(bus_threads(channel)) == 1


# -- publishing --------------------------------------------------------------------------------


def test_publish_splits_large_key_lists(make_bus: BusFactory) -> None:
    sender = make_bus(max_keys=100, max_message_bytes=4096, signing_secret=SECRET)
    _, recorder = started(make_bus, max_keys=100, max_message_bytes=4096, signing_secret=SECRET)
    many = tuple(f"key:{i}" for i in range(250))
    wide = tuple(f"{i}:" + "w" * 500 for i in range(20))
    assert len(sender.encode(message(sender, many))) == 3  # by count
    by_size = sender.encode(message(sender, wide))
    assert len(by_size) >= 3
    assert all(len(p) <= 4096 for p in by_size)
    sender.publish(message(sender, many))
    sender.publish(message(sender, wide))
    eventually(lambda: len(recorder.keys()) == 270)
    assert recorder.keys() == [*many, *wide]  # complete, in order
    assert all(len(m.keys) <= 100 for m in recorder.messages)
    assert recorder.errors == []


def test_a_message_that_arrives_in_parts_is_read_whole_without_a_reconnect(
    make_bus: BusFactory, make_client: ClientFactory, redis_proxy: TcpProxy
) -> None:
    # A large message over a slow link reaches the subscriber in parts, further apart than
    # the thread's read slice (min(1 s, health_check_interval)). Its rest is read within the
    # bus's timeout. (Reading it with the slice as redis-py's read timeout made redis-py 8
    # time out mid-message, reconnect by itself and subscribe again: the message was lost
    # and the stack dropped its local layers, on every instance that got a large message.)
    through_proxy = make_client(port=redis_proxy.port)
    bus, recorder = started(
        make_bus, subscriber=through_proxy, health_check_interval=0.05, timeout=5.0
    )
    send_in_parts(make_bus(), recorder, redis_proxy)
    assert bus.is_subscribed


def send_in_parts(sender: Any, recorder: Recorder, proxy: TcpProxy) -> None:
    """Publish a message of about 60 KB while ``proxy`` delivers 16 KiB parts 0.2 s apart,
    then a small one; both arrive whole and in order, with no reconnect and no error."""
    many = tuple(f"key:{i:05d}:" + "x" * 20 for i in range(2000))
    proxy.set_pacing(0.2, 16384)
    sender.publish(message(sender, many))
    sender.publish(message(sender, ("after",)))
    eventually(lambda: recorder.keys()[-1:] == ["after"])
    assert recorder.keys() == [*many, "after"]
    assert recorder.reconnects == 0
    assert recorder.errors == []


def test_a_sharded_message_that_arrives_in_parts_is_read_whole_without_a_reconnect(
    make_bus: BusFactory, redis_cluster_server: RedisServer
) -> None:
    # The same on a cluster (sharded pub/sub): the subscriber's connections all go through a
    # paced proxy (the node's announced address is remapped to it).
    if not redis_cluster_server.is_running:
        redis_cluster_server.start()
    with TcpProxy(redis_cluster_server.host, redis_cluster_server.port) as proxy:
        subscriber = redis.RedisCluster(
            host=proxy.host,
            port=proxy.port,
            address_remap=lambda _address: (proxy.host, proxy.port),
            socket_timeout=5,
        )
        publisher = redis.RedisCluster(
            host=redis_cluster_server.host, port=redis_cluster_server.port, socket_timeout=5
        )
        try:
            options = {"health_check_interval": 0.05, "timeout": 5.0}
            bus, recorder = started(make_bus, publisher=publisher, subscriber=subscriber, **options)
            assert bus.sharded
            send_in_parts(make_bus(publisher=publisher), recorder, proxy)
            bus.close()
        finally:
            subscriber.close()
            publisher.close()


def test_publish_refuses_what_cannot_be_sent(make_bus: BusFactory) -> None:
    sender = make_bus(max_keys=10, max_message_bytes=2048)
    with pytest.raises(ValueError, match="scope"):
        sender.publish(message(sender, scope="everything"))
    with pytest.raises(ValueError, match="control"):
        sender.publish(message(sender, ("a\x00b",)))
    tags = tuple(f"t{i}" for i in range(11))
    with pytest.raises(ValueError, match="limit is 10"):  # "all" tags cannot be split
        sender.publish(message(sender, tags, scope="tags", mode="all"))


def test_publish_failure_is_a_cache_layer_error(
    make_bus: BusFactory, make_client: ClientFactory, redis_proxy: TcpProxy
) -> None:
    publisher = make_client(port=redis_proxy.port, retry=Retry(NoBackoff(), 0), socket_timeout=1)
    bus = make_bus(publisher=publisher)
    bus.publish(message(bus))  # connected
    redis_proxy.cut("refuse")
    began = time.monotonic()
    with pytest.raises(CacheLayerError) as raised:
        bus.publish(message(bus))
    assert time.monotonic() - began < 2.0
    assert (raised.value.layer, raised.value.operation) == ("bus", "publish")
    assert isinstance(raised.value.__cause__, redis.exceptions.ConnectionError | OSError)


def test_generation_bump_and_load(make_bus: BusFactory) -> None:
    a = make_bus()
    b = make_bus()
    assert a.load_generation() is None
    assert a.bump_generation() == 1
    assert b.bump_generation(5) == 5  # to at least the minimum
    assert b.bump_generation() == 6
    assert a.load_generation() == 6


# -- reconnecting ------------------------------------------------------------------------------


def test_subscriber_reconnects_after_a_cut_and_calls_on_reconnect(
    make_bus: BusFactory, make_client: ClientFactory, redis_proxy: TcpProxy, channel: str
) -> None:
    # Only the subscriber goes through the proxy; the publisher stays connected.
    through_proxy = make_client(port=redis_proxy.port, retry=Retry(NoBackoff(), 0))
    bus = make_bus(
        publisher=make_client(),
        subscriber=through_proxy,
        health_check_interval=0.2,
        timeout=0.5,
        reconnect_backoff=(0.02, 0.2),
    )
    recorder = Recorder()
    recorder.start(bus)
    sender = make_bus()
    sender.publish(message(sender, ("before",)))
    eventually(lambda: recorder.keys() == ["before"])
    assert recorder.reconnects == 0

    redis_proxy.cut("refuse")
    eventually(lambda: not bus.is_subscribed)
    sender.publish(message(sender, ("lost",)))  # nobody can hear this one
    redis_proxy.restore()

    eventually(lambda: recorder.reconnects == 1)
    assert bus.is_subscribed
    sender.publish(message(sender, ("after",)))
    eventually(lambda: len(recorder.messages) == 2)
    assert recorder.keys() == ["before", "after"]
    assert recorder.reconnects == 1
    # The bus saw the loss itself and reported it, once.
    assert recorder.reasons() == ["bus.subscribe"]
    assert isinstance(recorder.errors[0][0], CacheLayerError)
    assert len(bus_threads(channel)) == 1  # the same thread, or its one replacement


def test_a_silent_connection_is_detected_by_the_health_check(
    make_bus: BusFactory, make_client: ClientFactory, redis_proxy: TcpProxy
) -> None:
    # A blackhole keeps the socket open: no error reaches the reader, only PING finds out.
    through_proxy = make_client(
        port=redis_proxy.port, retry=Retry(NoBackoff(), 0), socket_timeout=0.5
    )
    bus = make_bus(
        subscriber=through_proxy,
        health_check_interval=0.2,
        timeout=0.3,
        reconnect_backoff=(0.02, 0.2),
    )
    recorder = Recorder()
    recorder.start(bus)
    redis_proxy.cut("blackhole", close_existing=False)
    eventually(lambda: not bus.is_subscribed)
    redis_proxy.restore()
    eventually(lambda: recorder.reconnects == 1)
    sender = make_bus()
    sender.publish(message(sender, ("after",)))
    eventually(lambda: recorder.keys() == ["after"])


def test_start_reports_an_unreachable_server_and_keeps_trying(
    make_bus: BusFactory, make_client: ClientFactory, redis_proxy: TcpProxy
) -> None:
    through_proxy = make_client(port=redis_proxy.port, retry=Retry(NoBackoff(), 0))
    bus = make_bus(subscriber=through_proxy, reconnect_backoff=(0.02, 0.2), timeout=1.0)
    recorder = Recorder()
    redis_proxy.cut("refuse")
    began = time.monotonic()
    with pytest.raises(CacheLayerError) as raised:
        recorder.start(bus)
    assert time.monotonic() - began < 3.0  # bounded by the bus's timeout
    assert (raised.value.layer, raised.value.operation) == ("bus", "subscribe")
    assert recorder.errors == []  # the caller of start() reports it, not on_error as well
    redis_proxy.restore()
    # It ran without the bus until now: the late subscription counts as a reconnect.
    eventually(lambda: recorder.reconnects == 1)
    assert bus.is_subscribed
    recorder.start(bus)  # already subscribed: returns at once
    assert recorder.reconnects == 1


def test_start_is_bounded_even_on_a_client_without_socket_timeouts(
    make_bus: BusFactory, make_client: ClientFactory, redis_proxy: TcpProxy
) -> None:
    # A blackholed server and a client with no socket timeouts: the subscriber thread hangs in
    # the driver, but start() (and so the first operation of a stack) still returns in time.
    hanging = make_client(
        port=redis_proxy.port,
        retry=Retry(NoBackoff(), 0),
        socket_timeout=None,
        socket_connect_timeout=None,
    )
    bus = make_bus(subscriber=hanging, reconnect_backoff=(0.02, 0.2), timeout=0.5)
    recorder = Recorder()
    redis_proxy.cut("blackhole")
    began = time.monotonic()
    with pytest.raises(CacheLayerError) as raised:
        recorder.start(bus)
    assert time.monotonic() - began < 5.0  # 2 x timeout + one read slice, with room
    assert (raised.value.layer, raised.value.operation) == ("bus", "subscribe")
    # Restoring resets the connection the thread hung on; it reconnects by itself, and that
    # late first subscription counts as a reconnect (the stack drops its local layers).
    redis_proxy.restore()
    eventually(lambda: recorder.reconnects == 1)
    assert bus.is_subscribed


# -- closing -----------------------------------------------------------------------------------


def test_close_stops_the_subscriber_thread(
    make_bus: BusFactory, make_client: ClientFactory, channel: str
) -> None:
    observer = make_client()
    bus, recorder = started(make_bus, health_check_interval=5.0)  # the default read slice
    assert subscribers(observer, channel) == 1
    assert len(bus_threads(channel)) == 1
    began = time.monotonic()
    bus.close()
    # close() joins its thread, bounded by about one poll interval.
    assert time.monotonic() - began < 3.0
    assert not bus.is_subscribed
    eventually(lambda: bus_threads(channel) == [], timeout=3.0)
    eventually(lambda: subscribers(observer, channel) == 0)
    bus.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        recorder.start(bus)
    assert bus_threads(channel) == []


def test_close_while_cut_off_stops_the_retrying_thread(
    make_bus: BusFactory, make_client: ClientFactory, redis_proxy: TcpProxy, channel: str
) -> None:
    through_proxy = make_client(port=redis_proxy.port, retry=Retry(NoBackoff(), 0))
    bus = make_bus(subscriber=through_proxy, reconnect_backoff=(0.02, 0.2), timeout=0.5)
    redis_proxy.cut("refuse")
    with pytest.raises(CacheLayerError):
        Recorder().start(bus)
    assert len(bus_threads(channel)) == 1  # still trying in the background
    bus.close()
    eventually(lambda: bus_threads(channel) == [], timeout=3.0)
