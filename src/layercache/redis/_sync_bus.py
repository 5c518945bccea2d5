# DO NOT EDIT: generated from src/layercache/redis/bus.py by scripts/unasync.py.
# Change the async source and run `python scripts/unasync.py`.
"""``SyncRedisInvalidationBus``: tells the other instances what changed, over Redis pub/sub.

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
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

try:
    import redis as sync_redis
    from redis.cluster import RedisCluster
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test of the layer
    raise ImportError(
        "layercache.redis needs the 'redis' extra: pip install 'layercache-py[redis]'"
    ) from exc

from .._sync._primitives import (
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
from ._clients import DEFAULT_SOCKET_TIMEOUT, LoopBoundClient, init_signature, sync_url_client
from ._keys import generation_key, invalidation_channel
from ._scripts import GENERATION_BUMP

__all__ = [
    "InvalidationMessage",
    "MODES",
    "OPERATIONS",
    "SyncRedisInvalidationBus",
    "RejectedMessageError",
    "SCOPES",
    "WIRE_VERSION",
]

logger = logging.getLogger("layercache.redis.bus")

RedisClient = sync_redis.Redis | RedisCluster
MessageHandler = Callable[[InvalidationMessage], None]
ReconnectHandler = Callable[[], None]

# Shared with the asyncio twin.
from .bus import (  # noqa: F401
    WIRE_VERSION,
    SCOPES,
    OPERATIONS,
    MODES,
    _FIELDS,
    _SIGNATURE_FIELD,
    _MAX_SOURCE_ID,
    _NONCE,
    _GENERATION,
    _REPLAY_MEMORY,
    _MAX_POLL,
    _SUBSCRIBE_TYPES,
    _UNSUBSCRIBE_TYPES,
    _DATA_TYPES,
    _MAX_NESTING,
    _AS_SQUARE,
    _NOT_BRACKETS,
    _MAX_DETAIL,
    RejectedMessageError,
    _SubscriberLost,
    backoff_delay,
    _schema_error,
    _reject_duplicates,
    _reject_constant,
    _nesting_within,
    validate_message,
)


class SyncRedisInvalidationBus:
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
        publisher: A ``redis.Redis`` or ``redis.RedisCluster`` created with
            ``decode_responses=False``; used for ``PUBLISH`` (``SPUBLISH`` on a cluster). The
            bus never closes it.
        subscriber: The client whose ``pubsub()`` connection receives messages; ``None`` uses
            ``publisher.pubsub()``, a dedicated connection from the publisher's pool (or the
            cluster node owning the channel). Must be a cluster client iff ``publisher`` is.
        url: Instead of ``publisher`` (keyword-only; exactly one of the two): the bus builds
            its own client as ``RedisLayer(url=...)`` does (usable from any loop; the
            subscriber reconnects on the loop that restarts it) and closes it in
            :meth:`close`.
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
            raise ValueError("SyncRedisInvalidationBus needs exactly one of publisher= or url=")
        if url is not None and subscriber is not None:
            raise ValueError("subscriber= goes with publisher=, not with url=")
        self._owns_client = url is not None
        if url is not None:
            publisher = sync_url_client(url, socket_timeout=DEFAULT_SOCKET_TIMEOUT)
        for client, role in ((publisher, "publisher"), (subscriber, "subscriber")):
            if client is None or isinstance(client, LoopBoundClient):
                # A RedisLayer(url=...)'s client (layer.client): one client per loop.
                continue
            if not isinstance(client, sync_redis.Redis | RedisCluster):
                raise ValueError(
                    f"{role} must be a redis.Redis or RedisCluster, "
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
            f"SyncRedisInvalidationBus(channel={self._channel_name!r}, source_id={self.source_id!r}, "
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

    def start(
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
            wait_future_for(waiter, 2 * self.timeout + _MAX_POLL)
        except TimeoutError as exc:
            if self._start_waiter is waiter:
                # The subscription that finally succeeds is then a re-subscribe: the stack
                # drops its local layers (it ran without invalidations until then).
                self._start_waiter = None
            raise CacheLayerError(
                "bus", "subscribe", f"not subscribed within {2 * self.timeout + _MAX_POLL:g}s"
            ) from exc

    def close(self) -> None:
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
            stop_spawned(task, _MAX_POLL + self.timeout)
        waiter, self._start_waiter = self._start_waiter, None
        if waiter is not None and not waiter.done():
            waiter.cancel()
        if self._owns_client:
            try:
                self._publisher.close()
            except Exception as exc:
                raise CacheLayerError("bus", "close") from exc

    # -- generations -------------------------------------------------------------------------

    def bump_generation(self, minimum: int = 1) -> int:
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
            return int(self._generation_script(keys=[key], args=[int(minimum)]))
        except Exception as exc:
            raise CacheLayerError("bus", "bump_generation") from exc

    def load_generation(self) -> int | None:
        """The key generation stored in Redis (``None`` when none was ever bumped).

        Raises:
            CacheLayerError: Redis failed, or the stored value is not an integer.
        """
        try:
            raw = self._publisher.get(generation_key(self._channel_name))
            return None if raw is None else int(raw)
        except Exception as exc:
            raise CacheLayerError("bus", "load_generation") from exc

    # -- publishing -------------------------------------------------------------------------

    def publish(self, message: InvalidationMessage) -> None:
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
                bounded(
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

    def _receive(self, data: object) -> None:
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
            self._on_message(message)
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

    def _run(self) -> None:
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
                self._subscribe(pubsub)
                self._listen(pubsub)
            except Cancelled:
                raise
            except Exception as exc:
                self._lost(exc)
            finally:
                self._subscribed = False
                if pubsub is not None:
                    self._close_pubsub(pubsub)
            if self._closed:
                return
            delay = backoff_delay(self._attempt, *self._backoff, self._rng)
            self._attempt += 1
            if wait_signal(self._stopping, delay):
                return

    def _subscribe(self, pubsub: Any) -> None:
        if self._sharded:
            # A cluster client learns the slot map on its first command; the pub/sub needs it
            # to find the node that owns the channel. (Idempotent once initialised.)
            pass  # the sync cluster client initializes when built
            bounded(pubsub.ssubscribe(self._channel), self.timeout)
        else:
            bounded(pubsub.subscribe(self._channel), self.timeout)

    def _listen(self, pubsub: Any) -> None:
        poll = min(_MAX_POLL, self.health_check_interval)
        last_heard = time.monotonic()
        ping_sent: float | None = None
        while not self._closed:
            # The outer bound catches a read that hangs despite its timeout (a reconnect
            # attempt inside the driver against a blackholed server).
            message = bounded(self._read(pubsub, poll), poll + self.timeout)
            now = time.monotonic()
            if message is None:
                if ping_sent is not None:
                    if now - ping_sent > self.timeout:
                        raise _SubscriberLost(f"no answer to PING within {self.timeout:g}s")
                elif now - last_heard >= self.health_check_interval:
                    self._ping(pubsub)
                    ping_sent = now
                continue
            last_heard, ping_sent = now, None
            kind = message.get("type")
            if kind in _DATA_TYPES:
                if message.get("channel") == self._channel:
                    self._receive(message.get("data"))
            elif kind in _SUBSCRIBE_TYPES:
                if message.get("channel") == self._channel:
                    self._confirmed()
            elif kind in _UNSUBSCRIBE_TYPES:
                # Not asked for: the server dropped us (a slot moved, ACL change). Start over.
                raise _SubscriberLost(f"the server ended the subscription ({kind})")

    def _read(self, pubsub: Any, timeout: float) -> dict[str, Any] | None:
        if self._sharded:
            message = pubsub.get_sharded_message(timeout=timeout)
        else:
            message = pubsub.get_message(timeout=timeout)
        return message if isinstance(message, dict) else None

    def _ping(self, pubsub: Any) -> None:
        if self._sharded:
            # A cluster pub/sub holds one connection per node that owns a subscribed channel.
            for node_pubsub in list(getattr(pubsub, "node_pubsub_mapping", {}).values()):
                bounded(node_pubsub.ping(), self.timeout)
        else:
            bounded(pubsub.ping(), self.timeout)

    def _confirmed(self) -> None:
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
            self._on_reconnect()
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

    def _close_pubsub(self, pubsub: Any) -> None:
        try:
            bounded(pubsub.close(), self.timeout)
        except Cancelled:
            raise
        except Exception as exc:
            logger.debug("invalidation bus: closing the pub/sub connection failed: %r", exc)
