"""What both twins of the memcached layer share: plain code, no I/O.

* Key mapping: memcached keys are at most 250 bytes with no whitespace or control characters,
  and memcached cannot list or scan keys. A cache key ``key`` lives under
  ``{prefix}{version}:{key}`` (``version``: the namespace version, see the layer's ``clear``);
  when that text is not a valid memcached key it is replaced by ``{prefix}{version}#`` plus the
  SHA-256 of the full text (``#`` where a readable key has ``:``, so a hashed key never equals a
  readable one), or, when even that does not fit (a long or spaced prefix), ``layercache#``
  plus the hash.
* Server choice: several servers share the keys by rendezvous hashing, the same in both twins,
  so an asyncio and a sync stack on the same servers find each other's entries.
* Expiry times: memcached reads an ``exptime`` over 30 days as a unix timestamp.
* The entry bytes (EntryCodec) and the error handlers of unreadable bytes.
* The translation of driver failures into ``CacheLayerError``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from collections.abc import Callable, Sequence

from .._codec import CorruptEntryError, EntryCodec
from .._entry import Entry
from .._error_handlers import ErrorHandlers, call_error_handler
from .._exceptions import UnserializableValueError
from .._telemetry import key_hash

__all__ = [
    "MAX_KEY_BYTES",
    "MAX_RELATIVE_EXPTIME",
    "ErrorHandlers",
    "failure_detail",
    "KeyMap",
    "MemcachedValueTooLargeError",
    "StoredEntries",
    "exptime",
    "parse_servers",
    "pick_node",
]

logger = logging.getLogger("layercache.memcached")

# memcached's longest key, in bytes.
MAX_KEY_BYTES = 250
# An exptime above this many seconds (30 days) is read by memcached as a unix timestamp.
MAX_RELATIVE_EXPTIME = 30 * 24 * 3600
# What a memcached item costs beyond its value: the key, and the item header (flags, lengths,
# CAS; about 50-60 bytes on a 64-bit server). Kept free under ``max_value_bytes``.
ITEM_OVERHEAD = 64
# A readable key: no whitespace, no C0/C1 control characters (aiomcache checks the same rule;
# pymemcache refuses ASCII whitespace and NUL, a subset).
_READABLE = re.compile("[^\\s\x00-\x1f\x7f-\x9f]+")
_DEFAULT_PORT = 11211


class MemcachedValueTooLargeError(UnserializableValueError, ValueError):
    """An entry is larger than memcached's item limit (``max_value_bytes``), even after
    compression.

    The caller's value, not the layer, is at fault, so like
    :class:`~layercache.UnserializableValueError` (a ``TypeError``; this one is also a
    ``ValueError``) it reaches the caller unchanged and never takes a healthy memcached out of
    service under graceful degradation.
    """


def _readable(text: str) -> bytes | None:
    if _READABLE.fullmatch(text) is None:
        return None
    raw = text.encode("utf-8")
    return raw if len(raw) <= MAX_KEY_BYTES else None


class KeyMap:
    """Cache keys to memcached keys for one prefix (see the module doc)."""

    __slots__ = ("_base", "prefix", "version_key")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        # The last namespace version seen and its key prefix text (one tuple: threads swap it
        # whole), so a read does not rebuild it for every key.
        self._base: tuple[bytes, str] = (b"", prefix)
        # Cache keys continue the prefix with the version's digits: never a letter.
        self.version_key = self.hashed(prefix + "version", prefix + "version")

    @staticmethod
    def hashed(text: str, readable: str) -> bytes:
        """``readable`` as a key if memcached accepts it, else a hash of ``text``."""
        raw = _readable(readable)
        if raw is not None:
            return raw
        return b"layercache#" + hashlib.sha256(
            text.encode("utf-8", "surrogatepass")
        ).hexdigest().encode("ascii")

    def key(self, version: bytes, key: str) -> bytes:
        """The memcached key of cache key ``key`` in namespace ``version`` (decimal digits)."""
        seen, base = self._base
        if seen != version:
            base = self.prefix + version.decode("ascii")
            self._base = (version, base)
        text = base + ":" + key
        raw = _readable(text)
        if raw is not None:
            return raw
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        raw = _readable(base + "#" + digest)
        if raw is not None:
            return raw
        return b"layercache#" + digest.encode("ascii")


def exptime(ttl: float | None, now: Callable[[], float] = time.time) -> int:
    """memcached's ``exptime`` for a storage lifetime of ``ttl`` seconds (``None``: never).

    Whole seconds, rounded up (an entry never goes before its TTL; the layer hides one read
    past its ``expires_at``); over 30 days an absolute unix time, as memcached requires.
    """
    if ttl is None:
        return 0
    seconds = max(1, math.ceil(ttl))
    if seconds > MAX_RELATIVE_EXPTIME:
        return math.ceil(now() + ttl)
    return seconds


def parse_servers(servers: object) -> list[tuple[str, int]]:
    """``servers`` as ``(host, port)`` pairs: ``"host:port"``, ``("host", port)`` or a list of
    them (``"host"`` alone: port 11211; ``"[::1]:11211"`` for IPv6).

    Raises:
        ValueError: On anything else, or an empty list.
    """
    items: Sequence[object]
    if isinstance(servers, str) or (
        isinstance(servers, tuple) and len(servers) == 2 and isinstance(servers[1], int)
    ):
        items = [servers]
    elif isinstance(servers, list | tuple):
        items = servers
    else:
        raise ValueError(
            f"servers must be 'host:port', (host, port) or a list of them: {servers!r}"
        )
    parsed: list[tuple[str, int]] = []
    for item in items:
        if isinstance(item, tuple) and len(item) == 2:
            host, port = item
        elif isinstance(item, str):
            host, sep, port_text = item.rpartition(":")
            if not sep or host.endswith(":") or (":" in host and not host.startswith("[")):
                host, port_text = item, str(_DEFAULT_PORT)
            host = host.strip("[]")
            try:
                port = int(port_text)
            except ValueError:
                raise ValueError(f"bad memcached server {item!r}") from None
        else:
            raise ValueError(f"bad memcached server {item!r}")
        if not isinstance(host, str) or not host or isinstance(port, bool):
            raise ValueError(f"bad memcached server {item!r}")
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"bad memcached server port in {item!r}")
        parsed.append((host, port))
    if not parsed:
        raise ValueError("servers must name at least one memcached server")
    if len(set(parsed)) != len(parsed):
        raise ValueError(f"servers lists a server twice: {servers!r}")
    return parsed


def node_labels(servers: Sequence[tuple[str, int]]) -> list[bytes]:
    """The names rendezvous hashing scores servers by."""
    return [f"{host}:{port}".encode() for host, port in servers]


def pick_node(labels: Sequence[bytes], key: bytes) -> int:
    """The index of the server that holds ``key`` (rendezvous hashing: highest score wins;
    removing a server moves only its own keys)."""
    if len(labels) == 1:
        return 0
    best, best_score = 0, b""
    for index, label in enumerate(labels):
        score = hashlib.blake2b(label + b"\x00" + key, digest_size=8).digest()
        if score > best_score:
            best, best_score = index, score
    return best


def group_by_node(labels: Sequence[bytes], keys: Sequence[bytes]) -> dict[int, list[bytes]]:
    """``keys`` grouped by the server holding them (order kept within a server)."""
    groups: dict[int, list[bytes]] = {}
    for key in keys:
        groups.setdefault(pick_node(labels, key), []).append(key)
    return groups


class StoredEntries:
    """Entries to stored bytes and back, for the layer called ``name``.

    Bytes that are not an entry (written by another program, or damaged) read as a miss and
    are reported to :attr:`error_handler` (a warning is logged without one); they are never
    unpickled or evaluated. An entry over ``max_bytes`` is refused before it is sent.
    """

    __slots__ = ("codec", "error_handler", "max_bytes", "name")

    def __init__(self, name: str, codec: EntryCodec, max_bytes: int) -> None:
        self.name = name
        self.codec = codec
        self.max_bytes = max_bytes
        self.error_handler = ErrorHandlers()

    def decode(self, key: str, raw: bytes, operation: str) -> Entry | None:
        """The entry in ``raw`` read from ``key``, or ``None`` (unreadable)."""
        try:
            return self.codec.decode(raw)
        except CorruptEntryError as exc:
            context = {"layer": self.name, "key": key, "operation": operation}
            broken = f"the error handler of memcached layer {self.name!r} raised"
            if not call_error_handler(self.error_handler, exc, context, logger, broken):
                logger.warning(
                    "unreadable value in %s (key hash %s): %s", self.name, key_hash(key), exc
                )
            return None

    def encode(self, entry: Entry, raw_key: bytes, operation: str) -> bytes:
        """The bytes that store ``entry`` under ``raw_key``.

        Raises:
            UnserializableValueError: If the value cannot be serialized.
            MemcachedValueTooLargeError: If the item would exceed ``max_bytes``.
        """
        try:
            data = self.codec.encode(entry)
        except UnserializableValueError as exc:
            raise UnserializableValueError(f"layer {self.name!r} ({operation}): {exc}") from (
                exc.__cause__ or exc
            )
        if len(data) + len(raw_key) + ITEM_OVERHEAD > self.max_bytes:
            hint = (
                "set compression= (gzip, brotli or zstd) to store compressible values"
                if self.codec.compression is None
                else f"even with {self.codec.compression} compression"
            )
            raise MemcachedValueTooLargeError(
                f"layer {self.name!r} ({operation}): the entry takes {len(data)} bytes, over "
                f"memcached's item limit max_value_bytes={self.max_bytes} (minus "
                f"{len(raw_key) + ITEM_OVERHEAD} bytes of key and item header); {hint}, or "
                "raise the server's -I limit and max_value_bytes together"
            )
        return data


# What memcached answers when an item is over its -I limit (the layer checks first; this is
# a server configured with a smaller limit than max_value_bytes).
_TOO_LARGE = "too large"


def failure_detail(
    max_bytes: int, on_failure: Callable[[], None] | None = None
) -> Callable[[BaseException], str | None]:
    """The ``detail`` of a memcached layer's :class:`~layercache._error_handlers.DriverErrors`:
    tells ``on_failure`` of every failure (the layer then reads the namespace version again: a
    server that failed may have restarted empty), and explains an item refused as too large."""

    def detail(exc: BaseException) -> str | None:
        if on_failure is not None:
            on_failure()
        if _TOO_LARGE in str(exc):
            return (
                f"memcached refused an item as too large: its -I limit is below "
                f"max_value_bytes={max_bytes} ({exc})"
            )
        return None

    return detail
