"""``RedisInvalidationBus``: tells the other instances what changed, over Redis pub/sub.

Wire format: one UTF-8 JSON object per pub/sub message::

    {"v": 1, "source_id": "...", "scope": "keys", "operation": "delete",
     "keys": ["user:1", "user:2"], "timestamp": 1732460000.123, "mode": "any",
     "nonce": "<32 hex>", "sig": "<64 hex>"}

``sig`` (only with ``signing_secret``) is HMAC-SHA256 over the canonical bytes of every other
field (:mod:`layercache._signing`). ``nonce`` makes two otherwise identical messages distinct,
so the replay memory never mistakes a genuine repeat for a replay. Receivers are strict: any
other field, a wrong type, an unknown scope/operation/mode or an invalid key rejects the whole
message.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn

try:
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import RedisCluster
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test of the layer
    raise ImportError(
        "layercache.redis needs the 'redis' extra: pip install 'layercache-py[redis]'"
    ) from exc

from .._async._primitives import (
    Cancelled,
    Signal,
    bounded,
    is_running,
    new_flight_lock,
    new_future,
    spawn,
    stop_spawned,
    wait_future_for,
    wait_signal,
)
from .._exceptions import CacheLayerError, LayerCacheError
from .._keys import _check_text, validate_key, validate_pattern, validate_prefix
from .._options import MAX_TAG_LENGTH
from .._signing import (
    MessageSigner,
    ReplayError,
    ReplayGuard,
    SignatureError,
    check_timestamp,
)
from .._types import ErrorHandler, InvalidationMessage
from ._clients import DEFAULT_SOCKET_TIMEOUT, LoopBoundClient, init_signature, url_client
from ._keys import generation_key, invalidation_channel
from ._scripts import GENERATION_BUMP

__all__ = [
    "InvalidationMessage",
    "MODES",
    "OPERATIONS",
    "RedisInvalidationBus",
    "RejectedMessageError",
    "SCOPES",
    "WIRE_VERSION",
]

logger = logging.getLogger("layercache.redis.bus")

RedisClient = aioredis.Redis | RedisCluster
MessageHandler = Callable[[InvalidationMessage], Awaitable[None]]
ReconnectHandler = Callable[[], Awaitable[None]]

# unasync: begin shared
WIRE_VERSION = 1
SCOPES = frozenset({"keys", "tags", "pattern", "prefix", "clear", "generation"})
OPERATIONS = frozenset({"set", "delete", "invalidate", "clear", "bump"})
MODES = frozenset({"any", "all"})

_FIELDS = frozenset({"v", "source_id", "scope", "operation", "keys", "timestamp", "mode", "nonce"})
_SIGNATURE_FIELD = "sig"
_MAX_SOURCE_ID = 256
_NONCE = re.compile(r"[0-9a-f]{16,64}")
_GENERATION = re.compile(r"[0-9]{1,19}")
# Signatures remembered for replay detection (about 180 bytes each, so at most ~18 MB): enough
# for ~3,000 messages a second within the default 30 s window before the memory forgets early
# (then it refuses late messages older than what it forgot, see ReplayGuard).
_REPLAY_MEMORY = 100_000
# How long one read of the pub/sub connection waits before the loop looks at the clock.
_MAX_POLL = 1.0
_SUBSCRIBE_TYPES = frozenset({"subscribe", "ssubscribe"})
_UNSUBSCRIBE_TYPES = frozenset({"unsubscribe", "sunsubscribe"})
_DATA_TYPES = frozenset({"message", "smessage"})
# Containers nested deeper than this refuse a message before it is parsed. A valid message
# nests two deep (the object and its key list). Python's JSON parser, the canonicalisation that
# checks a signature and the repr in an error message all recurse, each from a different stack
# depth: a body nested just under the interpreter's recursion limit got through the parser and
# then raised RecursionError in a later step (issue 11). Bounded here, none of them comes near
# the limit.
_MAX_NESTING = 8
# For the nesting scan: every bracket as [ or ], everything else deleted.
_AS_SQUARE = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
# A rejection's detail is logged and handed to on_error: never a hostile payload's worth.
_MAX_DETAIL = 300


class RejectedMessageError(LayerCacheError, ValueError):
    """A message received on the bus was dropped (a ``LayerCacheError``, and a ``ValueError``).

    Attributes:
        reason: ``"oversized"``, ``"malformed"`` (not JSON), ``"schema"`` (wrong fields,
            types or values), ``"unsigned"``, ``"forged"`` (signature does not match),
            ``"stale"`` (timestamp outside the replay window), ``"replayed"`` (seen before) or
            ``"unexpected"`` (a check raised an exception nobody foresaw, chained as the
            ``__cause__``: a defect of layercache, but still only this message is dropped).
        detail: What was wrong, at most a few hundred characters of it.
    """

    def __init__(self, reason: str, detail: str) -> None:
        if len(detail) > _MAX_DETAIL:
            detail = f"{detail[:_MAX_DETAIL]}... ({len(detail)} characters)"
        super().__init__(f"invalidation message dropped ({reason}): {detail}")
        self.reason = reason
        self.detail = detail


class _SubscriberLost(ConnectionError):
    """The subscription ended without a driver error (server-side unsubscribe, silence)."""


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Delay before reconnect attempt ``attempt`` (0-based): ``min(cap, base * 2**attempt)``
    with "equal jitter" (between half and all of it), so instances cut off together do not
    reconnect in lockstep while the delay still grows."""
    ceiling = min(cap, base * (2.0 ** min(attempt, 62)))
    return ceiling / 2 + rng.uniform(0.0, ceiling / 2)


def _schema_error(detail: str) -> NoReturn:
    raise RejectedMessageError("schema", detail)


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A duplicated field would let two parsers of the same bytes disagree on the message.
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate field in JSON object")
    return result


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _nesting_within(data: bytes, limit: int) -> bool:
    """Whether the JSON ``data`` nests containers at most ``limit`` deep, found without
    parsing it (so without recursion) and only with whole-buffer byte operations (so in C: a
    few milliseconds per MiB per pass, at most ``limit`` passes).

    Exact for valid UTF-8 JSON, in which a backslash occurs only inside a string, as the start
    of an escape, and no byte of a multi-byte character is ASCII. In a run of backslashes each
    pair, left to right, is one escaped backslash; a backslash left over escapes the next
    character, and only an escaped quote matters here. With those gone every quote opens or
    closes a string, so every other piece between quotes is outside the strings, and its
    brackets are the structure. Each pass then removes the empty pairs (the innermost
    containers): a document ``d`` deep is empty after exactly ``d`` passes. For anything that
    is not JSON the answer only has to come in that bounded time: the parser refuses it.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        # No more openers than that anywhere, strings included: no deeper than that either.
        return True
    data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = b"".join(data.split(b'"')[::2]).translate(_AS_SQUARE, _NOT_BRACKETS)
    if b"[" * (limit + 1) in brackets or b"]" * (limit + 1) in brackets:
        return False  # that many containers opened, or closed, in a row
    for _ in range(limit):
        if not brackets:
            return True
        inner = brackets.replace(b"[]", b"")
        if len(inner) == len(brackets):
            return False  # unbalanced: no pass will ever empty it
        brackets = inner
    return not brackets


def validate_message(message: InvalidationMessage, *, max_keys: int | None = None) -> None:
    """Check every field of ``message`` (what a receiver accepts).

    Raises:
        ValueError: On a wrong type, an unknown scope/operation/mode, too many keys, or a key,
            tag, pattern, prefix or generation that is not valid for its scope.
    """
    source_id, scope, operation, keys, timestamp, mode = (
        message.source_id,
        message.scope,
        message.operation,
        message.keys,
        message.timestamp,
        message.mode,
    )
    _check_text("source_id", source_id, _MAX_SOURCE_ID)
    if type(scope) is not str or scope not in SCOPES:
        raise ValueError(f"scope must be one of {sorted(SCOPES)}, not {scope!r}")
    if type(operation) is not str or operation not in OPERATIONS:
        raise ValueError(f"operation must be one of {sorted(OPERATIONS)}, not {operation!r}")
    if type(mode) is not str or mode not in MODES:
        raise ValueError(f"mode must be 'any' or 'all', not {mode!r}")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
        raise ValueError(f"timestamp must be a number, not {type(timestamp).__name__}")
    if not math.isfinite(timestamp):
        raise ValueError("timestamp must be finite")
    if not isinstance(keys, tuple | list):
        raise ValueError(f"keys must be a tuple of str, not {type(keys).__name__}")
    if max_keys is not None and len(keys) > max_keys:
        raise ValueError(f"{len(keys)} keys in one message; the limit is {max_keys}")
    if scope == "keys":
        for key in keys:
            validate_key(key)
    elif scope == "tags":
        for tag in keys:
            _check_text("tag", tag, MAX_TAG_LENGTH)
    elif scope == "clear":
        if keys:
            raise ValueError("a 'clear' message carries no keys")
    else:
        if len(keys) != 1:
            raise ValueError(f"a {scope!r} message carries exactly one value, not {len(keys)}")
        value = keys[0]
        if scope == "pattern":
            validate_pattern(value)
        elif scope == "prefix":
            validate_prefix(value)
        elif type(value) is not str or _GENERATION.fullmatch(value) is None:
            raise ValueError(f"a generation must be a non-negative integer as text, not {value!r}")


# unasync: end shared


class RedisInvalidationBus:
    """Cross-instance invalidation over Redis pub/sub (sharded pub/sub on a cluster client).

    Every instance publishes what it changed; every other instance drops those entries from its
    local layers. Messages from this bus's own ``source_id`` are ignored.

    With ``signing_secret`` every published message is signed (HMAC-SHA256) and every received
    one must be: unsigned, forged, malformed, oversized, stale (timestamp outside
    ``replay_window``) and replayed (seen before) messages are dropped and reported to
    ``on_error``; the subscriber carries on. Without a secret anyone who can publish on the
    channel can invalidate entries (never inject values: the bus carries no values).

    The subscriber is a background task on its own connection. When the connection is lost
    (an error, a server-side unsubscribe, or no answer to a health-check ``PING`` within
    ``timeout``) it reconnects with capped exponential backoff and jitter, and after every
    successful *re*-subscribe calls ``on_reconnect()``: messages published while it was cut off
    are lost, so the stack drops its local layers.

    Args:
        publisher: A ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster`` created with
            ``decode_responses=False``; used for ``PUBLISH`` (``SPUBLISH`` on a cluster). The
            bus never closes it.
        subscriber: The client whose ``pubsub()`` connection receives messages; ``None`` uses
            ``publisher.pubsub()``, a dedicated connection from the publisher's pool (or the
            cluster node owning the channel). Must be a cluster client iff ``publisher`` is.
        url: Instead of ``publisher`` (keyword-only; exactly one of the two): the bus builds
            its own client as ``RedisLayer(url=...)`` does (usable from any loop; the
            subscriber reconnects on the loop that restarts it) and closes it in
            :meth:`aclose`.
        channel: Channel name; every instance of one deployment must use the same.
        signing_secret: Shared secret; ``None`` sends and accepts unsigned messages.
        replay_window: Seconds a signed message's timestamp may differ from the receiver's
            clock (both directions: covers transit time and clock skew).
        max_message_bytes: Larger messages are dropped unread; :meth:`publish` splits key and
            tag lists so that no message it sends is larger.
        source_id: This instance's identity (default: host, pid and random bits).
        max_keys: Keys (or tags) per message at most, on both sides.
        timeout: Bound in seconds on subscribing, on the answer to a health-check ``PING`` and
            on one publish.
        health_check_interval: Seconds of silence after which the subscriber sends a ``PING``
            (a half-open connection otherwise looks like a quiet channel forever).
        reconnect_backoff: ``(base, cap)`` of the reconnect delay in seconds.

    Raises:
        ValueError: On a bad argument.
    """

    # unasync: begin async-only
    def __new__(cls, publisher: Any = None, *args: Any, **kwargs: Any) -> Any:
        """A ``SyncRedisInvalidationBus`` when ``publisher`` is a sync redis-py client."""
        # Imported here: the sync twin imports this module (no cycle at import time).
        from ._sync_layer import RedisClient as SyncRedisClient

        if isinstance(publisher, SyncRedisClient):
            from ._sync_bus import SyncRedisInvalidationBus

            return SyncRedisInvalidationBus(publisher, *args, **kwargs)
        return super().__new__(cls)

    # unasync: end async-only
    def __init__(
        self,
        publisher: RedisClient | None = None,
        subscriber: RedisClient | None = None,
        *,
        url: str | None = None,
        channel: str = "layercache:invalidation",
        signing_secret: str | bytes | None = None,
        replay_window: float = 30.0,
        max_message_bytes: int = 1_048_576,
        source_id: str | None = None,
        max_keys: int = 10_000,
        timeout: float = 5.0,
        health_check_interval: float = 5.0,
        reconnect_backoff: tuple[float, float] = (0.05, 5.0),
    ) -> None:
        if (publisher is None) == (url is None):
            raise ValueError("RedisInvalidationBus needs exactly one of publisher= or url=")
        if url is not None and subscriber is not None:
            raise ValueError("subscriber= goes with publisher=, not with url=")
        self._owns_client = url is not None
        if url is not None:
            publisher = url_client(url, socket_timeout=DEFAULT_SOCKET_TIMEOUT)
        for client, role in ((publisher, "publisher"), (subscriber, "subscriber")):
            if client is None or isinstance(client, LoopBoundClient):
                # A RedisLayer(url=...)'s client (layer.client): one client per loop.
                continue
            if not isinstance(client, aioredis.Redis | RedisCluster):
                raise ValueError(
                    f"{role} must be a redis.asyncio.Redis or RedisCluster, "
                    f"not {type(client).__name__}"
                )
            encoder = getattr(client, "get_encoder", None)
            if encoder is not None and getattr(encoder(), "decode_responses", False):
                raise ValueError(f"the {role} must be created with decode_responses=False")
        self._sharded = isinstance(publisher, RedisCluster)
        if subscriber is not None and isinstance(subscriber, RedisCluster) != self._sharded:
            raise ValueError("publisher and subscriber must both be cluster clients, or neither")
        if self._sharded and not callable(getattr(RedisCluster, "pubsub", None)):
            # Older redis-py releases have no cluster pub/sub at all.
            raise ValueError("sharded pub/sub needs a redis-py whose RedisCluster has pubsub()")
        self._channel_name = channel
        self._generation_script: Any = None
        self._channel = invalidation_channel(channel)
        self._channel_name = channel
        for name, value in (
            ("replay_window", replay_window),
            ("timeout", timeout),
            ("health_check_interval", health_check_interval),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number of seconds, not {value!r}")
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be positive and finite, not {value!r}")
        for name, count in (("max_message_bytes", max_message_bytes), ("max_keys", max_keys)):
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"{name} must be a positive int, not {count!r}")
        base, cap = reconnect_backoff
        if not (0 < base <= cap and math.isfinite(cap)):
            raise ValueError(
                f"reconnect_backoff must be (base, cap) with 0 < base <= cap, "
                f"not {reconnect_backoff!r}"
            )
        if source_id is None:
            source_id = f"{socket.gethostname()[:200]}:{os.getpid()}:{secrets.token_hex(8)}"
        self.source_id: str = _check_text("source_id", source_id, _MAX_SOURCE_ID)
        self._publisher: Any = publisher
        self._subscriber: Any = subscriber if subscriber is not None else publisher
        self._signer = None if signing_secret is None else MessageSigner(signing_secret)
        self._replay = None if self._signer is None else ReplayGuard(replay_window, _REPLAY_MEMORY)
        self.replay_window = float(replay_window)
        self.max_message_bytes = max_message_bytes
        self.max_keys = max_keys
        self.timeout = float(timeout)
        self.health_check_interval = float(health_check_interval)
        self._backoff = (float(base), float(cap))
        self._rng = random.Random()
        self._on_message: MessageHandler | None = None
        self._on_reconnect: ReconnectHandler | None = None
        self._on_error: ErrorHandler | None = None
        # The subscriber (a task here, a thread in the sync twin), told to stop by _stopping.
        self._task: Any = None
        self._stopping = Signal()
        self._start_waiter: Any = None
        # Guards starting the subscriber (a real lock only in the sync twin, where several
        # threads may call start() at once).
        self._start_lock = new_flight_lock()
        self._subscribed = False
        self._attempt = 0
        self._closed = False
        self._rejected = 0

    # help() and inspect.signature() show __init__'s parameters (the asyncio class's __new__,
    # which picks the sync twin, takes *args and **kwargs).
    __signature__ = init_signature(__init__)

    def __repr__(self) -> str:
        return (
            f"RedisInvalidationBus(channel={self._channel_name!r}, source_id={self.source_id!r}, "
            f"signed={self._signer is not None}, sharded={self._sharded})"
        )

    # -- properties -------------------------------------------------------------------------

    @property
    def channel(self) -> str:
        """The channel name."""
        return self._channel_name

    @property
    def sharded(self) -> bool:
        """Whether the bus uses sharded pub/sub (``SPUBLISH``/``SSUBSCRIBE``: cluster clients)."""
        return self._sharded

    @property
    def signed(self) -> bool:
        """Whether messages are signed and signatures required."""
        return self._signer is not None

    @property
    def is_subscribed(self) -> bool:
        """Whether the subscriber currently holds a confirmed subscription."""
        return self._subscribed

    @property
    def rejected(self) -> int:
        """Received messages dropped so far, for any reason (each also went to ``on_error``
        as a :class:`RejectedMessageError`). A message whose ``on_message`` failed was valid,
        so it is not counted here."""
        return self._rejected

    # -- lifecycle --------------------------------------------------------------------------

    async def start(
        self,
        on_message: MessageHandler,
        on_reconnect: ReconnectHandler,
        on_error: ErrorHandler,
    ) -> None:
        """Start the subscriber task and wait until the channel subscription is confirmed.

        ``on_message(message)`` is called for each valid message of another instance,
        one at a time. ``on_reconnect()`` is called after each re-subscribe, i.e. every confirmed
        subscription except the one this call reports as success. ``on_error(exc, context)``
        receives dropped messages (:class:`RejectedMessageError`, context ``reason``), a lost
        connection and exceptions raised by the other two callbacks. None of these stop the
        subscriber.

        Calling ``start`` again replaces the callbacks (and waits again if not subscribed).

        Raises:
            CacheLayerError: ``("bus", "subscribe")`` if the first attempt to subscribe failed;
                the subscriber keeps retrying in the background and calls ``on_reconnect`` when
                it succeeds (this instance ran without invalidations until then).
            RuntimeError: If the bus was closed.
        """
        if self._closed:
            raise RuntimeError("the invalidation bus is closed")
        self._on_message, self._on_reconnect, self._on_error = on_message, on_reconnect, on_error
        with self._start_lock:
            if self._subscribed and is_running(self._task):
                return
            waiter = self._start_waiter
            if not is_running(self._task):
                # A new subscriber (the first, or one on a new loop after the last one's
                # loop ended): its own stop signal and start waiter, since a signal or future
                # of an ended loop cannot be waited for on another.
                self._stopping = Signal()
                waiter = None
                self._attempt = 0
                self._subscribed = False
            if waiter is None or waiter.done():
                waiter = self._start_waiter = new_future()
            if not is_running(self._task):
                self._task = spawn(self._run, f"layercache-bus:{self._channel_name}")
        try:
            # Each step of subscribing is bounded by ``timeout`` already; this bounds the
            # whole wait too, even when a driver call ignores its bound (in the sync twin: a
            # client built without socket timeouts against a blackholed server).
            await wait_future_for(waiter, 2 * self.timeout + _MAX_POLL)
        except TimeoutError as exc:
            if self._start_waiter is waiter:
                # The subscription that finally succeeds is then a re-subscribe: the stack
                # drops its local layers (it ran without invalidations until then).
                self._start_waiter = None
            raise CacheLayerError(
                "bus", "subscribe", f"not subscribed within {2 * self.timeout + _MAX_POLL:g}s"
            ) from exc

    async def aclose(self) -> None:
        """Stop the subscriber (closing its connection). Idempotent; clients are closed only
        if the bus built them (from ``url``)."""
        self._closed = True
        self._subscribed = False
        self._stopping.set()
        task, self._task = self._task, None
        if is_running(task):
            # Bounded: even a swallowed cancellation (or, in the sync twin, a thread that
            # cannot be cancelled) ends the loop within one read or one driver timeout,
            # because it checks _closed.
            await stop_spawned(task, _MAX_POLL + self.timeout)
        waiter, self._start_waiter = self._start_waiter, None
        if waiter is not None and not waiter.done():
            waiter.cancel()
        if self._owns_client:
            try:
                await self._publisher.aclose()
            except Exception as exc:
                raise CacheLayerError("bus", "aclose") from exc

    # -- generations -------------------------------------------------------------------------

    async def bump_generation(self, minimum: int = 1) -> int:
        """Increment the key generation stored in Redis next to this bus's channel, to at
        least ``minimum``, and return it (one script: atomic across instances); the stack
        announces it on the bus.

        Raises:
            CacheLayerError: Redis failed.
        """
        if self._generation_script is None:
            self._generation_script = self._publisher.register_script(GENERATION_BUMP)
        try:
            key = generation_key(self._channel_name)
            return int(await self._generation_script(keys=[key], args=[int(minimum)]))
        except Exception as exc:
            raise CacheLayerError("bus", "bump_generation") from exc

    async def load_generation(self) -> int | None:
        """The key generation stored in Redis (``None`` when none was ever bumped).

        Raises:
            CacheLayerError: Redis failed, or the stored value is not an integer.
        """
        try:
            raw = await self._publisher.get(generation_key(self._channel_name))
            return None if raw is None else int(raw)
        except Exception as exc:
            raise CacheLayerError("bus", "load_generation") from exc

    # -- publishing -------------------------------------------------------------------------

    async def publish(self, message: InvalidationMessage) -> None:
        """Send ``message`` to every subscribed instance.

        A ``keys`` message, or a ``tags`` message with ``mode="any"``, with more than
        ``max_keys`` entries (or larger than ``max_message_bytes``) goes out as several
        messages of the same meaning.

        Raises:
            ValueError: If the message is invalid, or cannot be split to fit the limits.
            CacheLayerError: ``("bus", "publish")`` from the driver error if Redis fails or
                does not answer within ``timeout``.
        """
        payloads = self.encode(message)
        command = "SPUBLISH" if self._sharded else "PUBLISH"
        try:
            for payload in payloads:
                await bounded(
                    self._publisher.execute_command(command, self._channel, payload),
                    self.timeout,
                )
        except Cancelled:
            raise
        except Exception as exc:
            raise CacheLayerError("bus", "publish") from exc

    def encode(self, message: InvalidationMessage) -> list[bytes]:
        """The wire payloads :meth:`publish` sends for ``message`` (split as needed).

        Raises:
            ValueError: If the message is invalid, or cannot be split to fit the limits.
        """
        validate_message(message)
        keys = tuple(message.keys)
        splittable = message.scope == "keys" or (message.scope == "tags" and message.mode == "any")
        if not splittable:
            if len(keys) > self.max_keys:
                raise ValueError(
                    f"{len(keys)} {message.scope} in one message; the limit is {self.max_keys}"
                )
            payload = self._wire(message, keys)
            if len(payload) > self.max_message_bytes:
                raise ValueError(
                    f"message is {len(payload)} bytes; max_message_bytes is "
                    f"{self.max_message_bytes}"
                )
            return [payload]
        step = self.max_keys
        # A stack of chunks, next one last: halved in place when one is too many bytes.
        pending = [keys[i : i + step] for i in range(0, len(keys), step)] or [()]
        pending.reverse()
        payloads: list[bytes] = []
        while pending:
            chunk = pending.pop()
            payload = self._wire(message, chunk)
            if len(payload) <= self.max_message_bytes:
                payloads.append(payload)
            elif len(chunk) > 1:
                half = len(chunk) // 2
                pending.extend((chunk[half:], chunk[:half]))
            else:
                raise ValueError(
                    f"a message with the single key {chunk[0][:40]!r}... is {len(payload)} "
                    f"bytes; max_message_bytes is {self.max_message_bytes}"
                )
        return payloads

    def _wire(self, message: InvalidationMessage, keys: Sequence[str]) -> bytes:
        body: dict[str, Any] = {
            "v": WIRE_VERSION,
            "source_id": message.source_id,
            "scope": message.scope,
            "operation": message.operation,
            "keys": list(keys),
            "timestamp": float(message.timestamp),
            "mode": message.mode,
            "nonce": secrets.token_hex(16),
        }
        if self._signer is not None:
            body = self._signer.signed(body)
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode(
            "utf-8"
        )

    # -- receiving --------------------------------------------------------------------------

    def decode(self, data: object, *, now: float | None = None) -> InvalidationMessage | None:
        """Parse and check one received payload.

        Returns ``None`` for this instance's own messages. Each accepted signed message is
        remembered for replay detection, so decoding the same payload twice fails the second
        time.

        Raises:
            RejectedMessageError: If the message must be dropped (see its ``reason``); nothing
                else, whatever the payload.
        """
        try:
            return self._decode(data, now)
        except RejectedMessageError:
            raise
        except Exception as exc:
            # Whatever a check raises drops this one message and says why. Nothing a sender
            # can put on the channel may reach the subscriber loop, which would take it for a
            # lost connection: reconnect, lose what was published meanwhile, and have every
            # stack empty its local layers.
            raise RejectedMessageError("unexpected", f"checking it raised {exc!r}") from exc

    def _decode(self, data: object, now: float | None) -> InvalidationMessage | None:
        # Size first, before any work (a memoryview is measured before it is copied).
        if isinstance(data, memoryview):
            size = data.nbytes
        elif isinstance(data, bytes | bytearray):
            size = len(data)
        else:
            raise RejectedMessageError("malformed", f"payload is {type(data).__name__}, not bytes")
        if size > self.max_message_bytes:
            raise RejectedMessageError(
                "oversized", f"{size} bytes; the limit is {self.max_message_bytes}"
            )
        raw = bytes(data)
        try:
            # Strictly UTF-8, as the wire format says (json.loads would guess UTF-16/32 from
            # the bytes, and let lone surrogates through); the nesting scan relies on it.
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RejectedMessageError("malformed", f"not UTF-8: {exc}") from None
        if not _nesting_within(raw, _MAX_NESTING):
            raise RejectedMessageError(
                "malformed", f"nested deeper than {_MAX_NESTING} levels, or brackets unbalanced"
            )
        try:
            body = json.loads(
                text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant
            )
        except ValueError as exc:
            raise RejectedMessageError("malformed", f"not JSON: {exc}") from None
        if not isinstance(body, dict):
            _schema_error(f"a message is a JSON object, not {type(body).__name__}")
        # Authenticate before looking further: an unauthenticated sender learns nothing from
        # how the rest of its message is judged.
        signature: str | None = None
        if self._signer is not None:
            if _SIGNATURE_FIELD not in body:
                raise RejectedMessageError("unsigned", "a signing secret is set")
            try:
                signature = self._signer.verify(body)
            except SignatureError as exc:
                raise RejectedMessageError("forged", str(exc)) from None
        message = self._parse(body)
        if message.source_id == self.source_id:
            return None
        if self._replay is not None:
            assert signature is not None
            clock = time.time() if now is None else now
            try:
                check_timestamp(message.timestamp, clock, self.replay_window)
            except ReplayError as exc:
                raise RejectedMessageError("stale", str(exc)) from None
            try:
                # 128 bits of the digest identify a message as well as all 256, in half the
                # memory.
                self._replay.check(bytes.fromhex(signature[:32]), message.timestamp, clock)
            except ReplayError as exc:
                raise RejectedMessageError("replayed", str(exc)) from None
        return message

    def _parse(self, body: dict[str, Any]) -> InvalidationMessage:
        fields = body.keys() - {_SIGNATURE_FIELD}
        if fields != _FIELDS:
            missing, extra = sorted(_FIELDS - fields), sorted(fields - _FIELDS)
            _schema_error(f"missing fields {missing}, unknown fields {extra}")
        version = body["v"]
        if type(version) is not int or version != WIRE_VERSION:
            _schema_error(f"unsupported version {version!r}")
        nonce = body["nonce"]
        if type(nonce) is not str or _NONCE.fullmatch(nonce) is None:
            _schema_error("nonce must be 16 to 64 lowercase hex digits")
        keys = body["keys"]
        if type(keys) is not list:
            _schema_error(f"keys must be a list, not {type(keys).__name__}")
        if len(keys) > self.max_keys:
            _schema_error(f"{len(keys)} keys; the limit is {self.max_keys}")
        if any(type(k) is not str for k in keys):
            _schema_error("every key must be a string")
        message = InvalidationMessage(
            source_id=body["source_id"],
            scope=body["scope"],
            operation=body["operation"],
            keys=tuple(keys),
            timestamp=body["timestamp"],
            mode=body["mode"],
        )
        try:
            validate_message(message, max_keys=self.max_keys)
        except ValueError as exc:
            _schema_error(str(exc))
        if type(message.timestamp) is int:  # JSON without a fraction
            message = InvalidationMessage(
                source_id=message.source_id,
                scope=message.scope,
                operation=message.operation,
                keys=message.keys,
                timestamp=float(message.timestamp),
                mode=message.mode,
            )
        return message

    async def _receive(self, data: object) -> None:
        """Decode one received payload and hand it to ``on_message``. Nothing that goes wrong
        with one message leaves here: a payload that fails any check is dropped, counted and
        reported; a handler that fails is reported. Only the connection's own errors (in
        :meth:`_listen`) end a subscription."""
        try:
            message = self.decode(data)
        except Exception as exc:  # decode() raises RejectedMessageError only; be sure of it
            self._rejected += 1
            reason = exc.reason if isinstance(exc, RejectedMessageError) else "unexpected"
            size = len(data) if isinstance(data, bytes) else None
            self._report(exc, {"operation": "bus.receive", "reason": reason, "size": size})
            return
        if message is None or self._on_message is None:
            return
        try:
            await self._on_message(message)
        except Exception as exc:
            self._report(exc, {"operation": "bus.on_message", "scope": message.scope})

    def _report(self, exc: BaseException, context: dict[str, Any]) -> None:
        context = {"channel": self._channel_name, **context}
        handler = self._on_error
        if handler is None:
            logger.warning("invalidation bus: %s (%s)", exc, context)
            return
        try:
            handler(exc, context)
        except Exception:
            # The subscriber must outlive a broken error handler.
            logger.exception("invalidation bus: the on_error handler raised")

    # -- the subscriber task ----------------------------------------------------------------

    async def _run(self) -> None:
        # unasync: begin async-wording
        # Cancellation stops this loop, and so does _closed: a driver call that swallows a
        # cancellation (asyncio.wait_for can, up to Python 3.11) must not keep it alive.
        # unasync: end async-wording
        while not self._closed:
            pubsub: Any = None
            try:
                # Connecting (and its handshake) is bounded here: a blackholed server would
                # otherwise hold a client without socket timeouts forever.
                pubsub = self._subscriber.pubsub()
                await self._subscribe(pubsub)
                await self._listen(pubsub)
            except Cancelled:
                raise
            except Exception as exc:
                self._lost(exc)
            finally:
                self._subscribed = False
                if pubsub is not None:
                    await self._close_pubsub(pubsub)
            if self._closed:
                return
            delay = backoff_delay(self._attempt, *self._backoff, self._rng)
            self._attempt += 1
            if await wait_signal(self._stopping, delay):
                return

    async def _subscribe(self, pubsub: Any) -> None:
        if self._sharded:
            # A cluster client learns the slot map on its first command; the pub/sub needs it
            # to find the node that owns the channel. (Idempotent once initialised.)
            await bounded(self._subscriber.initialize(), self.timeout)
            await bounded(pubsub.ssubscribe(self._channel), self.timeout)
        else:
            await bounded(pubsub.subscribe(self._channel), self.timeout)

    async def _listen(self, pubsub: Any) -> None:
        poll = min(_MAX_POLL, self.health_check_interval)
        last_heard = time.monotonic()
        ping_sent: float | None = None
        while not self._closed:
            # The outer bound catches a read that hangs despite its timeout (a reconnect
            # attempt inside the driver against a blackholed server).
            message = await bounded(self._read(pubsub, poll), poll + self.timeout)
            now = time.monotonic()
            if message is None:
                if ping_sent is not None:
                    if now - ping_sent > self.timeout:
                        raise _SubscriberLost(f"no answer to PING within {self.timeout:g}s")
                elif now - last_heard >= self.health_check_interval:
                    await self._ping(pubsub)
                    ping_sent = now
                continue
            last_heard, ping_sent = now, None
            kind = message.get("type")
            if kind in _DATA_TYPES:
                if message.get("channel") == self._channel:
                    await self._receive(message.get("data"))
            elif kind in _SUBSCRIBE_TYPES:
                if message.get("channel") == self._channel:
                    await self._confirmed()
            elif kind in _UNSUBSCRIBE_TYPES:
                # Not asked for: the server dropped us (a slot moved, ACL change). Start over.
                raise _SubscriberLost(f"the server ended the subscription ({kind})")

    async def _read(self, pubsub: Any, timeout: float) -> dict[str, Any] | None:
        if self._sharded:
            message = await pubsub.get_sharded_message(timeout=timeout)
        else:
            message = await pubsub.get_message(timeout=timeout)
        return message if isinstance(message, dict) else None

    async def _ping(self, pubsub: Any) -> None:
        if self._sharded:
            # A cluster pub/sub holds one connection per node that owns a subscribed channel.
            for node_pubsub in list(getattr(pubsub, "node_pubsub_mapping", {}).values()):
                await bounded(node_pubsub.ping(), self.timeout)
        else:
            await bounded(pubsub.ping(), self.timeout)

    async def _confirmed(self) -> None:
        """The subscription is (again) in place."""
        self._subscribed = True
        self._attempt = 0
        waiter = self._start_waiter
        if waiter is not None and not waiter.done():
            # The subscription start() is waiting for: nothing can have been missed yet.
            self._start_waiter = None
            waiter.set_result(None)
            return
        logger.info("invalidation bus %s: subscribed again", self._channel_name)
        if self._on_reconnect is None:
            return
        try:
            await self._on_reconnect()
        except Exception as exc:
            self._report(exc, {"operation": "bus.on_reconnect"})

    def _lost(self, exc: Exception) -> None:
        waiter = self._start_waiter
        if waiter is not None and not waiter.done():
            # start() raises this; the caller reports it, so on_error is not called too.
            self._start_waiter = None
            error = CacheLayerError("bus", "subscribe")
            error.__cause__ = exc
            waiter.set_exception(error)
            return
        if self._subscribed:
            logger.warning(
                "invalidation bus %s: connection lost (%r); reconnecting",
                self._channel_name,
                exc,
            )
            error = CacheLayerError("bus", "subscribe")
            error.__cause__ = exc
            self._report(error, {"operation": "bus.subscribe"})
        else:
            logger.debug("invalidation bus %s: reconnect failed: %r", self._channel_name, exc)

    async def _close_pubsub(self, pubsub: Any) -> None:
        try:
            await bounded(pubsub.aclose(), self.timeout)
        except Cancelled:
            raise
        except Exception as exc:
            logger.debug("invalidation bus: closing the pub/sub connection failed: %r", exc)
