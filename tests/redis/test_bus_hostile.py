"""Hostile bus input never touches the subscription (issue 11, point 5), against a real
redis-server, for the asyncio bus and its sync twin.

Before the fix a JSON body nested about 1,000 levels deep got through ``json.loads`` (just
under the interpreter's recursion limit) and then raised ``RecursionError`` further down: in
the canonicalisation that checks the signature, or in the ``repr`` of an error message. That
escaped the message handler, the subscriber took it for a lost connection and reconnected,
which lost every message published meanwhile and made every stack empty its local layers.
Where exactly the window lies depends on how deep the subscriber's own stack is, so the deep
cases sweep a range of depths that contains it wherever it is.

Each case publishes its hostile payloads through a raw client, then a valid signed "canary",
and checks: no reconnect and no lost-connection report, every payload rejected, counted
(``bus.rejected``) and reported as a ``RejectedMessageError``, and the canary applied.
Every wait is bounded polling (``eventually``); nothing sleeps to synchronise.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio

from _redis_server import RedisServer
from layercache._signing import MessageSigner, SignatureError, canonical_bytes
from layercache.redis import _wire as wire_module
from layercache.redis.bus import InvalidationMessage, RedisInvalidationBus, RejectedMessageError
from polling import eventually, eventually_async

pytestmark = pytest.mark.redis

SECRET = "hostile-bus-secret-5d2c8e1f0a9b7c6d"
HEX64 = "0" * 64
# json.loads refuses (RecursionError) from about sys.getrecursionlimit() levels on; the steps
# after it recurse too, from a deeper stack. A sweep from well below to well above the limit
# contains the depths that pass the first and break a later step, however deep the
# subscriber's own stack is.
DEPTHS = range(sys.getrecursionlimit() - 400, sys.getrecursionlimit() + 100)
MAX_BYTES = 1 << 20


def nest(depth: int, inner: str = "") -> str:
    return "[" * depth + inner + "]" * depth


def nest_objects(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def body_of(sender: Any, **changes: Any) -> dict[str, Any]:
    """A complete, well-formed (unsigned) wire body from ``sender``, with ``changes``."""
    body: dict[str, Any] = json.loads(sender.encode(message(sender, ("victim",)))[0])
    body.pop("sig", None)
    body.update(changes)
    return body


def with_raw(body: dict[str, Any], field: str, raw: str) -> bytes:
    """``body`` as JSON with ``field`` set to the raw JSON text ``raw`` (which json.dumps
    could not produce: too deep for its own recursion)."""
    text = json.dumps({**body, field: "@@RAW@@"})
    return text.replace('"@@RAW@@"', raw).encode()


def message(bus: Any, keys: tuple[str, ...] = ("k",)) -> InvalidationMessage:
    return InvalidationMessage(
        source_id=bus.source_id,
        scope="keys",
        operation="delete",
        keys=keys,
        timestamp=time.time(),
        mode="any",
    )


Builder = Callable[[Any], list[bytes]]

# name -> (subscriber signs?, reasons every payload may be rejected with, payloads)
CASES: dict[str, tuple[bool, set[str], Builder]] = {
    "deep in an extra field next to sig": (
        True,
        {"malformed"},
        lambda s: [f'{{"sig":"{HEX64}","x":{nest(d)}}}'.encode() for d in DEPTHS],
    ),
    "deep inside keys of a signed-looking body": (
        True,
        {"malformed"},
        lambda s: [with_raw({**body_of(s), "sig": HEX64}, "keys", nest(d)) for d in DEPTHS],
    ),
    "deep objects next to sig": (
        True,
        {"malformed"},
        lambda s: [f'{{"sig":"{HEX64}","x":{nest_objects(d)}}}'.encode() for d in DEPTHS],
    ),
    "deep as the sig itself": (
        True,
        {"malformed"},
        lambda s: [f'{{"sig":{nest(d)}}}'.encode() for d in DEPTHS],
    ),
    "deep version, unsigned bus": (
        False,
        {"malformed"},
        lambda s: [with_raw(body_of(s), "v", nest(d)) for d in DEPTHS],
    ),
    "deep pattern, unsigned bus": (
        False,
        {"malformed"},
        lambda s: [
            with_raw(body_of(s, scope="pattern", operation="invalidate"), "keys", nest(d))
            for d in DEPTHS
        ],
    ),
    "deep and never closed": (
        True,
        {"malformed"},
        lambda s: [b"[" * 200_000, b'{"sig":' + b'{"a":' * 100_000],
    ),
    "huge numbers": (
        True,
        {"malformed", "forged"},
        lambda s: [
            f'{{"sig":"{HEX64}","timestamp":{"9" * 100_000}}}'.encode(),
            f'{{"sig":"{HEX64}","timestamp":1e999999}}'.encode(),
            with_raw({**body_of(s), "sig": HEX64}, "keys", "[-1e999999]"),
            f'{{"sig":"{HEX64}","x":0.{"1" * 100_000}}}'.encode(),
        ],
    ),
    "invalid utf-8": (
        True,
        {"malformed"},
        lambda s: [b'{"sig":"\xff\xfe"}', b"\xc0\xaf", b'{"sig":"\xed\xa0\x80"}'],
    ),
    "not json": (
        True,
        {"malformed"},
        lambda s: [
            b"",
            b"\xef\xbb\xbf{}",
            b"\x00\x01garbage",
            b'{"sig":',
            b"}{",
            b'{"sig" "x"}',
            b"[1,]",
        ],
    ),
    "json that is not an object": (
        True,
        {"schema"},
        lambda s: [b"[]", b'"sig"', b"null", b"1", b"true", b"[[[[[]]]]]"],
    ),
    "duplicate keys": (
        True,
        {"malformed"},
        lambda s: [
            f'{{"sig":"{HEX64}","sig":"{HEX64}"}}'.encode(),
            with_raw({**body_of(s), "sig": HEX64}, "x", '{"a":1,"a":2}'),
        ],
    ),
    "nan and infinities": (
        True,
        {"malformed"},
        lambda s: [
            f'{{"sig":"{HEX64}","timestamp":{c}}}'.encode()
            for c in ("NaN", "Infinity", "-Infinity")
        ],
    ),
    "oversized": (
        True,
        {"oversized"},
        lambda s: [b"[" * (MAX_BYTES + 1), b" " * (MAX_BYTES + 1)],
    ),
}


def check_outcome(
    bus: Any,
    errors: list[tuple[BaseException, dict[str, Any]]],
    reconnects: int,
    sent: int,
    reasons: set[str],
) -> None:
    # First what the defect broke: the subscription. A RecursionError that escaped showed up
    # as a lost connection (reported by _lost) and, after the re-subscribe, on_reconnect.
    lost = [ctx for _, ctx in errors if ctx.get("operation") != "bus.receive"]
    assert lost == []
    assert reconnects == 0
    assert len(errors) == sent
    for exc, context in errors:
        assert isinstance(exc, RejectedMessageError), repr(exc)
        assert exc.reason in reasons, (exc.reason, exc.detail)
        assert context["reason"] == exc.reason
        assert len(str(exc)) < 1000  # the detail never echoes a hostile payload whole
    assert bus.rejected == sent


# -- asyncio -----------------------------------------------------------------------------------


class Recorder:
    """The three callbacks of ``start()``, recording what they were given."""

    def __init__(self) -> None:
        self.messages: list[InvalidationMessage] = []
        self.reconnects = 0
        self.errors: list[tuple[BaseException, dict[str, Any]]] = []
        self.fail_with: BaseException | None = None

    async def on_message(self, message: InvalidationMessage) -> None:
        failure, self.fail_with = self.fail_with, None
        if failure is not None:
            raise failure
        self.messages.append(message)

    async def on_reconnect(self) -> None:
        self.reconnects += 1

    def on_error(self, exc: BaseException, context: dict[str, Any]) -> None:
        self.errors.append((exc, context))

    def keys(self) -> list[str]:
        return [k for m in self.messages for k in m.keys]


@pytest.fixture
def channel() -> str:
    return f"test:bus-hostile:{uuid.uuid4().hex}"


@pytest.fixture
async def make_bus(redis_clean: RedisServer, channel: str) -> AsyncIterator[Callable[..., Any]]:
    """New asyncio buses on ``channel`` (each with its own client), closed afterwards."""
    created: list[tuple[Any, Any]] = []

    def make(**kwargs: Any) -> Any:
        client = redis.asyncio.Redis(host=redis_clean.host, port=redis_clean.port)
        bus = RedisInvalidationBus(client, channel=channel, **kwargs)
        created.append((bus, client))
        return bus

    yield make
    for bus, client in created:
        await bus.aclose()
        await client.aclose()


@pytest.mark.parametrize("case", sorted(CASES))
async def test_hostile_payloads_are_rejected_without_touching_the_subscription(
    make_bus: Callable[..., Any], redis_clean: RedisServer, channel: str, case: str
) -> None:
    signs, reasons, build = CASES[case]
    secret = SECRET if signs else None
    sender = make_bus(signing_secret=secret)
    bus = make_bus(signing_secret=secret, max_message_bytes=MAX_BYTES)
    recorder = Recorder()
    await bus.start(recorder.on_message, recorder.on_reconnect, recorder.on_error)
    payloads = build(sender)
    raw = redis.asyncio.Redis(host=redis_clean.host, port=redis_clean.port)
    try:
        for payload in payloads:
            await raw.publish(channel, payload)
    finally:
        await raw.aclose()
    canary = message(sender, ("canary",))
    await sender.publish(canary)

    await eventually_async(lambda: len(recorder.messages) >= 1, what="the canary")
    assert recorder.messages == [canary]  # applied, and nothing hostile before it
    check_outcome(bus, recorder.errors, recorder.reconnects, len(payloads), reasons)
    assert bus.is_subscribed


@pytest.mark.parametrize(
    "failure",
    [RuntimeError("handler failed"), RecursionError("deep"), MemoryError(), KeyError("x")],
    ids=lambda f: type(f).__name__,
)
async def test_a_failing_handler_is_reported_and_the_subscription_stays(
    make_bus: Callable[..., Any], failure: BaseException
) -> None:
    sender = make_bus(signing_secret=SECRET)
    bus = make_bus(signing_secret=SECRET)
    recorder = Recorder()
    await bus.start(recorder.on_message, recorder.on_reconnect, recorder.on_error)
    recorder.fail_with = failure
    await sender.publish(message(sender, ("first",)))
    await sender.publish(message(sender, ("second",)))
    await eventually_async(lambda: recorder.keys() == ["second"], what="the second message")
    assert recorder.reconnects == 0
    assert [(exc, ctx["operation"]) for exc, ctx in recorder.errors] == [
        (failure, "bus.on_message")
    ]
    assert bus.rejected == 0  # a valid message whose handler failed was not rejected


async def test_rejected_is_read_only(make_bus: Callable[..., Any]) -> None:
    bus = make_bus()
    assert bus.rejected == 0
    with pytest.raises(AttributeError):
        bus.rejected = 5


# -- the sync twin -----------------------------------------------------------------------------


class SyncRecorder:
    """The three (plain) callbacks of the sync bus's ``start()``; called on its thread."""

    def __init__(self) -> None:
        self.messages: list[InvalidationMessage] = []
        self.reconnects = 0
        self.errors: list[tuple[BaseException, dict[str, Any]]] = []
        self.fail_with: BaseException | None = None
        self._lock = threading.Lock()

    def on_message(self, message: InvalidationMessage) -> None:
        failure, self.fail_with = self.fail_with, None
        if failure is not None:
            raise failure
        with self._lock:
            self.messages.append(message)

    def on_reconnect(self) -> None:
        self.reconnects += 1

    def on_error(self, exc: BaseException, context: dict[str, Any]) -> None:
        with self._lock:
            self.errors.append((exc, context))


@pytest.fixture
def make_sync_bus(redis_clean: RedisServer, channel: str) -> Iterator[Callable[..., Any]]:
    """New sync buses on ``channel`` (each with its own client), closed afterwards."""
    created: list[tuple[Any, Any]] = []

    def make(**kwargs: Any) -> Any:
        client = redis.Redis(host=redis_clean.host, port=redis_clean.port, socket_timeout=5)
        # The subscriber thread reads in slices of health_check_interval; close() waits for
        # the current one: a short interval keeps the suite fast.
        kwargs.setdefault("health_check_interval", 0.25)
        bus = RedisInvalidationBus(client, channel=channel, **kwargs)
        created.append((bus, client))
        return bus

    yield make
    for bus, client in created:
        bus.close()
        client.close()


SYNC_CASES = [
    "deep in an extra field next to sig",
    "deep inside keys of a signed-looking body",
    "deep version, unsigned bus",
    "huge numbers",
    "invalid utf-8",
    "json that is not an object",
]


@pytest.mark.parametrize("case", SYNC_CASES)
def test_sync_hostile_payloads_are_rejected_without_touching_the_subscription(
    make_sync_bus: Callable[..., Any], redis_clean: RedisServer, channel: str, case: str
) -> None:
    signs, reasons, build = CASES[case]
    secret = SECRET if signs else None
    sender = make_sync_bus(signing_secret=secret)
    bus = make_sync_bus(signing_secret=secret, max_message_bytes=MAX_BYTES)
    assert type(bus).__name__ == "SyncRedisInvalidationBus"
    recorder = SyncRecorder()
    bus.start(recorder.on_message, recorder.on_reconnect, recorder.on_error)
    payloads = build(sender)
    raw = redis.Redis(host=redis_clean.host, port=redis_clean.port)
    try:
        for payload in payloads:
            raw.publish(channel, payload)
    finally:
        raw.close()
    canary = message(sender, ("canary",))
    sender.publish(canary)

    eventually(lambda: len(recorder.messages) >= 1, what="the canary")
    assert recorder.messages == [canary]
    # RejectedMessageError is one class shared by both twins.
    check_outcome(bus, recorder.errors, recorder.reconnects, len(payloads), reasons)
    assert bus.is_subscribed


def test_sync_failing_handler_is_reported_and_the_subscription_stays(
    make_sync_bus: Callable[..., Any],
) -> None:
    sender = make_sync_bus(signing_secret=SECRET)
    bus = make_sync_bus(signing_secret=SECRET)
    recorder = SyncRecorder()
    bus.start(recorder.on_message, recorder.on_reconnect, recorder.on_error)
    recorder.fail_with = RecursionError("deep")
    sender.publish(message(sender, ("first",)))
    sender.publish(message(sender, ("second",)))
    eventually(lambda: [k for m in recorder.messages for k in m.keys] == ["second"])
    assert recorder.reconnects == 0
    assert [ctx["operation"] for _, ctx in recorder.errors] == ["bus.on_message"]
    assert bus.rejected == 0


# -- without Redis: the checks themselves ------------------------------------------------------


def offline_bus(**kwargs: Any) -> Any:
    """A bus that is never started: decode() needs no connection."""
    return RedisInvalidationBus(redis.asyncio.Redis(), **kwargs)


@pytest.mark.parametrize("case", sorted(CASES))
def test_decode_rejects_every_hostile_payload_at_any_stack_depth(case: str) -> None:
    signs, reasons, build = CASES[case]
    secret = SECRET if signs else None
    bus = offline_bus(signing_secret=secret, max_message_bytes=MAX_BYTES)
    payloads = build(offline_bus(signing_secret=secret))

    def decode_at(extra_frames: int, payload: bytes) -> BaseException | None:
        # Called from ``extra_frames`` deeper: where a recursive step gives up depends on
        # how much of the recursion limit the caller already used.
        if extra_frames:
            return decode_at(extra_frames - 1, payload)
        try:
            bus.decode(payload)
        except Exception as exc:
            return exc
        return None

    for extra in (0, 7, 50):
        for payload in payloads:
            outcome = decode_at(extra, payload)
            assert isinstance(outcome, RejectedMessageError), (extra, repr(outcome)[:200])
            assert outcome.reason in reasons


def test_canonical_bytes_refuses_deep_input_with_a_value_error() -> None:
    deep: list[Any] = []
    for _ in range(100_000):  # built without recursion
        deep = [deep]
    with pytest.raises(ValueError, match="nest"):
        canonical_bytes({"x": deep})
    signer = MessageSigner(SECRET)
    with pytest.raises(SignatureError):
        signer.verify({"x": deep, "sig": HEX64})
    # Within the bound the bus enforces before parsing it works as ever.
    shallow: list[Any] = []
    for _ in range(wire_module.MAX_NESTING - 1):
        shallow = [shallow]
    depth = wire_module.MAX_NESTING
    assert canonical_bytes({"x": shallow}) == b'{"x":' + b"[" * depth + b"]" * depth + b"}"


def _depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (containers count one level each)."""
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _random_json(rng: random.Random, depth: int) -> Any:
    # Strings full of what a careless scan would count: brackets, quotes and backslashes.
    alphabet = '[]{}"\\/,:ab \u00e9\u2028'
    text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(6)))
    if depth == 0 or rng.random() < 0.25:
        return rng.choice([text, 1, -2.5, True, None])
    if rng.random() < 0.5:
        return [_random_json(rng, depth - 1) for _ in range(rng.randrange(4))]
    return {
        "".join(rng.choice(alphabet) for _ in range(rng.randrange(4))) + str(i): _random_json(
            rng, depth - 1
        )
        for i in range(rng.randrange(4))
    }


def test_the_depth_scan_agrees_with_the_parser() -> None:
    rng = random.Random(11_05)
    within = wire_module.nesting_within
    for _ in range(3000):
        value = _random_json(rng, rng.randrange(1, 12))
        for ensure_ascii in (True, False):
            text = json.dumps(value, ensure_ascii=ensure_ascii, indent=rng.choice([None, 1]))
            depth = _depth(value)
            for limit in (depth - 1, depth, depth + 1):
                if limit >= 0:
                    assert within(text.encode(), limit) == (depth <= limit), (text, limit)
    # Strings that would fool a scan that miscounts escapes.
    for text, depth in [
        (r'["\\"]', 1),  # an escaped backslash, then the closing quote
        (r'["\"]"]', 1),  # an escaped quote inside the string
        (r'["\\\"[[[[[[[[[[["]', 1),
        (r'[[[["\u005c"]]]]', 4),
        ('{"[[[[[[[[[[[[[[[[[[": {"]]]]]]]]]]]]]]]]]]": [[[]]]}}', 5),
    ]:
        assert json.loads(text) is not None
        assert _depth(json.loads(text)) == depth
        assert within(text.encode(), depth)
        assert not within(text.encode(), depth - 1)
