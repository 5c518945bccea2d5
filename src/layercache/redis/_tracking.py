"""Server-assisted invalidation (Redis client-side caching), plain code both bus twins share.

With ``RedisInvalidationBus(track_prefix=...)`` the bus's subscriber connection also turns on
``CLIENT TRACKING`` in broadcast mode for the layer's prefix, redirected to itself, so Redis
tells it about every change of a key under the prefix, whoever made it (other instances,
other programs, expiry, eviction, ``FLUSHALL``):

* RESP2 connection: Redis publishes the invalidations on the pub/sub channel
  ``__redis__:invalidate``, which the subscriber joins next to the bus's own channel;
* RESP3 connection (redis-py's default from version 8 on): Redis pushes them on the same
  connection; the driver hands each push to a handler that reshapes it into the pub/sub
  message the RESP2 server would have sent (:func:`push_as_message`).

Payloads: a list of Redis keys, or nil (the whole database changed: ``FLUSHALL``,
``FLUSHDB``). ``PUBLISH __redis__:invalidate ...`` by any client arrives as bytes on RESP2,
never as a list or nil, so :func:`parse_invalidation` rejects it: nobody but the server can
make this instance drop anything through this channel (anybody who can write keys can change
them, which is the point).

Redis keys map back to the stack's keys by stripping the prefix: the layer stores ``key``
under ``prefix + key`` (the stack's rendered key, ``v{N}:`` included under generations), and
the local layers hold the same rendered keys. Keys outside the prefix, keys that are not UTF-8
(never written by this library) and the layer's own bookkeeping keys (``prefix`` then
``"\\x00"``) are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from ._wire import RejectedMessageError

__all__ = [
    "FLUSH",
    "MAX_TRACKED_KEY_BYTES",
    "TRACKING_CHANNEL",
    "TRACKING_SCOPE",
    "TRACKING_SOURCE",
    "TrackingBatch",
    "enable_tracking_args",
    "parse_invalidation",
    "push_as_message",
]

TRACKING_CHANNEL: Final = b"__redis__:invalidate"
"""Where a RESP2 redirect target receives the invalidations (a pub/sub channel)."""

TRACKING_SOURCE: Final = "redis:client-tracking"
"""``source_id`` of the messages the bus makes of Redis's invalidations."""

TRACKING_SCOPE: Final = "tracking"
"""``scope`` of those messages: the wire format has no such scope, so no peer can send one."""

# A stack key is at most 1024 characters (4 UTF-8 bytes each) plus its generation (v{N}:);
# anything longer under the prefix was not written by this library.
MAX_TRACKED_KEY_BYTES: Final = 4 * 1024 + 32
_INTERNAL = 0  # the first byte of the layer's bookkeeping keys after the prefix ("\x00")


class _Flush:
    """The marker of "drop every local copy" (``FLUSH``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "FLUSH"


FLUSH: Final = _Flush()


def enable_tracking_args(client_id: int, prefix: bytes) -> tuple[bytes | int, ...]:
    """The ``CLIENT TRACKING`` command of a subscriber connection ``client_id`` (itself the
    redirect target) for keys under ``prefix`` (every key when empty)."""
    args: tuple[bytes | int, ...] = (
        b"CLIENT",
        b"TRACKING",
        b"ON",
        b"REDIRECT",
        client_id,
        b"BCAST",
    )
    return (*args, b"PREFIX", prefix) if prefix else args


def push_as_message(response: object) -> list[object]:
    """A RESP3 ``invalidate`` push (``[b"invalidate", keys-or-None]``) in the shape of the
    RESP2 pub/sub message (``[b"message", channel, keys-or-None]``), which the driver turns
    into the message dict the subscriber reads. Anything else becomes an empty bytes payload,
    which :func:`parse_invalidation` rejects."""
    if isinstance(response, list | tuple) and len(response) == 2:
        return [b"message", TRACKING_CHANNEL, response[1]]
    return [b"message", TRACKING_CHANNEL, b""]


def parse_invalidation(
    data: object, prefix: bytes, *, max_keys: int, max_bytes: int
) -> tuple[str, ...] | _Flush:
    """The stack keys an invalidation payload names, or :data:`FLUSH` (drop every local copy).

    ``None`` (the server's flush) is :data:`FLUSH`. A list longer than ``max_keys`` or with
    more than ``max_bytes`` of keys, or with an item that is not bytes (no server sends one),
    is :data:`FLUSH` too: dropping everything is always safe and costs no more than the
    payload's length to decide.

    Raises:
        RejectedMessageError: ``"malformed"`` when ``data`` is neither a list nor ``None`` (a
            client's ``PUBLISH`` on the tracking channel); the payload is dropped unapplied.
    """
    if data is None:
        return FLUSH
    if not isinstance(data, list):
        size = len(data) if isinstance(data, bytes | str) else None
        raise RejectedMessageError(
            "malformed",
            f"a {type(data).__name__} on {TRACKING_CHANNEL.decode()} "
            f"(size {size}); Redis sends a list of keys or nil, so a client published it",
        )
    if len(data) > max_keys:
        return FLUSH
    keys: list[str] = []
    total = 0
    cut = len(prefix)
    for raw in data:
        if not isinstance(raw, bytes):
            return FLUSH
        total += len(raw)
        if total > max_bytes:
            return FLUSH
        if not raw.startswith(prefix) or len(raw) - cut > MAX_TRACKED_KEY_BYTES:
            continue
        if len(raw) > cut and raw[cut] == _INTERNAL:
            continue
        try:
            keys.append(raw[cut:].decode("utf-8"))
        except UnicodeDecodeError:
            continue
    return tuple(keys)


class TrackingBatch:
    """Invalidated keys collected from consecutive payloads, applied as one drop.

    At most ``max_keys`` distinct keys: a payload that would pass the bound turns the batch
    into :data:`FLUSH` (drop every local copy). ``messages`` counts the payloads taken in.
    """

    __slots__ = ("flush", "keys", "max_keys", "messages")

    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        self.keys: dict[str, None] = {}
        self.flush = False
        self.messages = 0

    def add(self, parsed: Sequence[str] | _Flush) -> None:
        """Take in one parsed payload."""
        self.messages += 1
        if self.flush:
            return
        if isinstance(parsed, _Flush):
            self.flush = True
            self.keys.clear()
            return
        keys = self.keys
        for key in parsed:
            keys[key] = None
        if len(keys) > self.max_keys:
            self.flush = True
            keys.clear()

    def __bool__(self) -> bool:
        return self.flush or bool(self.keys)
