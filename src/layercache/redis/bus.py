"""``RedisInvalidationBus``: tells the other instances what changed, over Redis pub/sub.

Wire format (one UTF-8 JSON object per pub/sub message, optionally signed) and the checks of
received messages: :mod:`layercache.redis._wire`, plain code both twins of the bus use.
Server-assisted invalidation (``track_prefix``, Redis's ``CLIENT TRACKING``): the payloads and
their mapping back to stack keys in :mod:`layercache.redis._tracking`.
"""

from __future__ import annotations

import logging
import math
import os
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

try:
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import RedisCluster
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test of the layer
    raise ImportError(
        "layercache.redis needs the 'redis' extra: pip install 'layercache-py[redis]'"
    ) from exc

from .._exceptions import CacheLayerError
from .._keys import _check_text
from .._primitives.aio import (
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
from .._types import ErrorHandler, InvalidationMessage
from ._clients import (
    DEFAULT_SOCKET_TIMEOUT,
    LoopBoundClient,
    read_pubsub,
    sync_twin_for_sync_clients,
    url_client,
)
from ._errors import DriverErrors, call_error_handler
from ._keys import generation_key, invalidation_channel
from ._options import check_raw_client
from ._scripts import GENERATION_BUMP
from ._tracking import (
    FLUSH,
    TRACKING_CHANNEL,
    TRACKING_SCOPE,
    TRACKING_SOURCE,
    TrackingBatch,
    enable_tracking_args,
    parse_invalidation,
    push_as_message,
)
from ._wire import (  # noqa: F401 - re-exported: their import path is layercache.redis.bus
    MAX_SOURCE_ID,
    MODES,
    OPERATIONS,
    SCOPES,
    WIRE_VERSION,
    RejectedMessageError,
    WireFormat,
    backoff_delay,
    validate_message,
)

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

# How long one read of the pub/sub connection waits before the loop looks at the clock.
_MAX_POLL = 1.0
_SUBSCRIBE_TYPES = frozenset({"subscribe", "ssubscribe"})
_UNSUBSCRIBE_TYPES = frozenset({"unsubscribe", "sunsubscribe"})
_DATA_TYPES = frozenset({"message", "smessage"})
# Server invalidations already waiting on the connection that one L1 drop takes together.
_MAX_TRACKING_BATCH = 64


class _SubscriberLost(ConnectionError):
    """The subscription ended without a driver error (server-side unsubscribe, silence)."""


# unasync: begin async-only
@sync_twin_for_sync_clients("._sync_bus:SyncRedisInvalidationBus")
# unasync: end async-only
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

    Server-assisted invalidation (``track_prefix``): the subscriber's connection also turns on
    Redis client-side caching in broadcast mode for the keys under ``track_prefix`` (``CLIENT
    TRACKING ON REDIRECT <itself> BCAST PREFIX <track_prefix>``), so Redis itself reports every
    change of such a key, by any client (programs that do not use this library too), by
    expiry or eviction, and ``FLUSHALL``/``FLUSHDB``. ``on_message`` then also receives
    messages with ``scope="tracking"`` (``source_id`` ``"redis:client-tracking"``):
    ``operation="invalidate"`` with the changed keys (the Redis keys minus ``track_prefix``,
    i.e. the stack's keys), or ``operation="clear"`` with no keys (the database was flushed,
    or more than ``max_keys`` keys changed at once: every local copy goes). Invalidations
    already waiting on the connection are delivered as one message. The stack drops those
    keys from its local layers; the signed channel still carries what tracking cannot see
    (tag, pattern and clear operations, generations). Tracking lives and dies with the
    connection: it is turned on again on every new connection before the subscription is
    confirmed, and that re-subscribe calls ``on_reconnect()`` as usual. Set ``track_prefix``
    to the ``prefix`` of the stack's ``RedisLayer``, and connect the bus to the same Redis
    server (or Sentinel master) as that layer: tracking sees only the server it runs on.
    Works on RESP2 (the invalidations arrive on the ``__redis__:invalidate`` channel; a
    ``PUBLISH`` there by a client is rejected, since only the server sends key lists) and
    RESP3 connections (pushed on the same connection). Redis Cluster clients are refused:
    tracking is per node. Our own writes come back as invalidations too (Redis cannot tell
    them apart): the local copy of a key this instance just wrote is dropped and read again
    from Redis on its next use (see docs/perf-tracking.md for the cost).

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
        track_prefix: Turn on server-assisted invalidation for the Redis keys starting with
            this prefix (the ``RedisLayer``'s ``prefix``; ``""`` tracks every key of the
            server). ``None`` (default): off. Needs Redis 6 or later and a non-cluster client.

    Raises:
        ValueError: On a bad argument (also ``track_prefix`` with cluster clients).
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
        track_prefix: str | None = None,
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
            check_raw_client(client, f"the {role} must be created with decode_responses=False")
        self._sharded = isinstance(publisher, RedisCluster)
        if subscriber is not None and isinstance(subscriber, RedisCluster) != self._sharded:
            raise ValueError("publisher and subscriber must both be cluster clients, or neither")
        if self._sharded and not callable(getattr(RedisCluster, "pubsub", None)):
            # Older redis-py releases have no cluster pub/sub at all.
            raise ValueError("sharded pub/sub needs a redis-py whose RedisCluster has pubsub()")
        if track_prefix is not None:
            if not isinstance(track_prefix, str):
                raise ValueError(f"track_prefix must be a str, not {type(track_prefix).__name__}")
            if track_prefix:
                _check_text("track_prefix", track_prefix, MAX_SOURCE_ID)
            if self._sharded:
                raise ValueError(
                    "track_prefix needs a single Redis server or a Sentinel-managed master: "
                    "CLIENT TRACKING is per node, and the bus does not open one tracking "
                    "connection per cluster master"
                )
        self._track_prefix = track_prefix
        self._track_bytes = None if track_prefix is None else track_prefix.encode("utf-8")
        self._tracked_messages = 0
        self._tracked_keys = 0
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
        self.source_id: str = _check_text("source_id", source_id, MAX_SOURCE_ID)
        self._publisher: Any = publisher
        self._subscriber: Any = subscriber if subscriber is not None else publisher
        self._wire = WireFormat(
            signing_secret=signing_secret,
            replay_window=replay_window,
            max_message_bytes=max_message_bytes,
            max_keys=max_keys,
        )
        self._errors = DriverErrors("bus")
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

    def __repr__(self) -> str:
        return (
            f"RedisInvalidationBus(channel={self._channel_name!r}, source_id={self.source_id!r}, "
            f"signed={self.signed}, sharded={self._sharded}, "
            f"track_prefix={self._track_prefix!r})"
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
        return self._wire.signed

    @property
    def replay_window(self) -> float:
        """Seconds a signed message's timestamp may differ from this instance's clock."""
        return self._wire.replay_window

    @property
    def max_message_bytes(self) -> int:
        """Larger messages are dropped unread, and never sent."""
        return self._wire.max_message_bytes

    @property
    def max_keys(self) -> int:
        """Keys (or tags) per message at most, on both sides."""
        return self._wire.max_keys

    @property
    def is_subscribed(self) -> bool:
        """Whether the subscriber currently holds a confirmed subscription."""
        return self._subscribed

    @property
    def track_prefix(self) -> str | None:
        """The prefix of the Redis keys whose changes the server reports (``None``: off)."""
        return self._track_prefix

    @property
    def is_tracking(self) -> bool:
        """Whether server-assisted invalidation is on for the current, confirmed subscription."""
        return self._subscribed and self._track_prefix is not None

    @property
    def tracked(self) -> tuple[int, int]:
        """``(payloads, keys)``: the server's invalidation payloads taken in so far, and the
        keys the messages made of them named (a flush counts no keys)."""
        return self._tracked_messages, self._tracked_keys

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
            with self._errors("aclose"):
                await self._publisher.aclose()

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
        with self._errors("bump_generation"):
            key = generation_key(self._channel_name)
            return int(await self._generation_script(keys=[key], args=[int(minimum)]))

    async def load_generation(self) -> int | None:
        """The key generation stored in Redis (``None`` when none was ever bumped).

        Raises:
            CacheLayerError: Redis failed, or the stored value is not an integer.
        """
        with self._errors("load_generation"):
            raw = await self._publisher.get(generation_key(self._channel_name))
            return None if raw is None else int(raw)

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
        # Cancellation (a BaseException) passes through untranslated.
        with self._errors("publish"):
            for payload in payloads:
                await bounded(
                    self._publisher.execute_command(command, self._channel, payload),
                    self.timeout,
                )

    def encode(self, message: InvalidationMessage) -> list[bytes]:
        """The wire payloads :meth:`publish` sends for ``message`` (split as needed; see
        :class:`~layercache.redis._wire.WireFormat`).

        Raises:
            ValueError: If the message is invalid, or cannot be split to fit the limits.
        """
        return self._wire.encode(message)

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
        return self._wire.decode(data, self.source_id, now)

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
        # The subscriber must outlive a broken error handler.
        broken = "invalidation bus: the on_error handler raised"
        if not call_error_handler(self._on_error, exc, context, logger, broken):
            logger.warning("invalidation bus: %s (%s)", exc, context)

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
        elif self._track_bytes is None:
            await bounded(pubsub.subscribe(self._channel), self.timeout)
        else:
            # Tracking first, then the channels (the bus's last: its confirmation, which
            # reports the subscription, comes after everything is in place). Invalidations
            # between the two are lost, and covered: the stack drops its local copies on
            # that confirmation (on_reconnect), or has none yet (the first start).
            resp2 = await bounded(self._enable_tracking(pubsub), self.timeout)
            channels = (TRACKING_CHANNEL, self._channel) if resp2 else (self._channel,)
            await bounded(pubsub.subscribe(*channels), self.timeout)

    async def _enable_tracking(self, pubsub: Any) -> bool:
        """Turn on ``CLIENT TRACKING`` on the subscriber's own connection, redirected to
        itself; whether the connection speaks RESP2 (the invalidations then come as pub/sub
        messages on ``__redis__:invalidate``; on RESP3 they are pushed, and the driver hands
        them to :meth:`_tracking_push`).

        Raises:
            redis.exceptions.ResponseError: The server refused (before Redis 6, an ACL).
            ValueError: A RESP3 connection whose driver offers no invalidation push handler.
        """
        assert self._track_bytes is not None
        # The pub/sub object sends without reading (a subscribed connection's replies are
        # messages); nothing is subscribed yet, so the replies are read off the connection.
        await pubsub.execute_command("CLIENT", "ID")
        connection = pubsub.connection
        client_id = int(await connection.read_response())
        resp3 = str(getattr(connection, "protocol", 2)) == "3"
        if resp3:
            parser = getattr(connection, "_parser", None)
            install = getattr(parser, "set_invalidation_push_handler", None)
            if install is None:
                raise ValueError(
                    "this redis-py cannot hand RESP3 invalidation pushes to the bus; "
                    "give it a client created with protocol=2"
                )
            install(self._tracking_push)
        await pubsub.execute_command(*enable_tracking_args(client_id, self._track_bytes))
        reply = await connection.read_response()
        if reply not in (b"OK", "OK"):
            raise _SubscriberLost(f"CLIENT TRACKING answered {reply!r}")
        return not resp3

    async def _tracking_push(self, response: object) -> list[object]:
        """The driver's handler of RESP3 ``invalidate`` pushes: the pub/sub message a RESP2
        connection would have received, read by :meth:`_listen` like any other."""
        return push_as_message(response)

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
            while message is not None:
                message = await self._dispatch(pubsub, message)

    async def _dispatch(self, pubsub: Any, message: dict[str, Any]) -> dict[str, Any] | None:
        """Handle one message read from the connection; returns the next one when handling
        it read ahead (server invalidations are taken together)."""
        kind = message.get("type")
        if kind in _DATA_TYPES:
            channel = message.get("channel")
            if channel == self._channel:
                await self._receive(message.get("data"))
            elif channel == TRACKING_CHANNEL and self._track_bytes is not None:
                return await self._receive_tracking(pubsub, message)
        elif kind in _SUBSCRIBE_TYPES:
            if message.get("channel") == self._channel:
                if self._subscribed and self._track_bytes is not None:
                    # The driver reconnected by itself and subscribed again, but tracking
                    # ended with the old connection: start over on a new one.
                    raise _SubscriberLost("the driver reconnected; tracking must be turned on")
                await self._confirmed()
        elif kind in _UNSUBSCRIBE_TYPES:
            # Not asked for: the server dropped us (a slot moved, ACL change). Start over.
            raise _SubscriberLost(f"the server ended the subscription ({kind})")
        return None

    async def _receive_tracking(
        self, pubsub: Any, message: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Apply one server invalidation and those already waiting behind it as one drop
        (at most ``_MAX_TRACKING_BATCH`` payloads and ``max_keys`` keys); returns the first
        other message read meanwhile, for the caller to handle next."""
        batch = TrackingBatch(self._wire.max_keys)
        following: dict[str, Any] | None = None
        while True:
            self._take_tracking(batch, message.get("data"))
            if batch.messages >= _MAX_TRACKING_BATCH or batch.flush:
                break
            waiting = await self._read(pubsub, 0.0)
            if waiting is None:
                break
            if waiting.get("type") in _DATA_TYPES and waiting.get("channel") == TRACKING_CHANNEL:
                message = waiting
                continue
            following = waiting
            break
        if batch:
            await self._deliver_tracking(batch)
        return following

    def _take_tracking(self, batch: TrackingBatch, data: object) -> None:
        assert self._track_bytes is not None
        wire = self._wire
        try:
            parsed = parse_invalidation(
                data,
                self._track_bytes,
                max_keys=wire.max_keys,
                max_bytes=wire.max_message_bytes,
            )
        except RejectedMessageError as exc:
            self._rejected += 1
            size = len(data) if isinstance(data, bytes) else None
            self._report(
                exc,
                {"operation": "bus.receive", "reason": exc.reason, "size": size, "tracking": True},
            )
            return
        if parsed is FLUSH and data is not None:
            count = len(data) if isinstance(data, list) else None
            self._report(
                RejectedMessageError(
                    "oversized",
                    f"a server invalidation of {count} keys (more than max_keys or "
                    "max_message_bytes, or not all bytes): every local copy is dropped instead",
                ),
                {"operation": "bus.tracking", "reason": "oversized", "size": count},
            )
        batch.add(parsed)

    async def _deliver_tracking(self, batch: TrackingBatch) -> None:
        self._tracked_messages += batch.messages
        keys: tuple[str, ...] = ()
        if batch.flush:
            operation = "clear"
        else:
            operation, keys = "invalidate", tuple(batch.keys)
            self._tracked_keys += len(keys)
        if self._on_message is None:
            return
        message = InvalidationMessage(
            source_id=TRACKING_SOURCE,
            scope=TRACKING_SCOPE,
            operation=operation,
            keys=keys,
            timestamp=time.time(),
        )
        try:
            await self._on_message(message)
        except Exception as exc:
            self._report(exc, {"operation": "bus.on_message", "scope": TRACKING_SCOPE})

    async def _read(self, pubsub: Any, timeout: float) -> dict[str, Any] | None:
        message = await read_pubsub(pubsub, timeout, self.timeout, self._sharded)
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
        if self._track_bytes is not None:
            # The connection goes back to the pool (closed: tracking ends with it); it must
            # not keep calling this bus with the pushes of a later life.
            parser = getattr(getattr(pubsub, "connection", None), "_parser", None)
            uninstall = getattr(parser, "set_invalidation_push_handler", None)
            if uninstall is not None:
                uninstall(None)
        try:
            await bounded(pubsub.aclose(), self.timeout)
        except Cancelled:
            raise
        except Exception as exc:
            logger.debug("invalidation bus: closing the pub/sub connection failed: %r", exc)
