# DO NOT EDIT: generated from src/layercache/redis/layer.py by scripts/unasync.py.
# Change the async source and run `python scripts/unasync.py`.
"""``SyncRedisLayer``: a shared cache layer on redis-py's sync client (or cluster client)."""

# This module is the single source of the Redis layer's logic: scripts/unasync.py generates
# _sync_layer.py (SyncRedisLayer, on redis-py's sync client) from it. Code only the async class
# has sits between "unasync: begin async-only" / "unasync: end async-only" markers.

from __future__ import annotations

import threading
import datetime as _dt
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

try:
    import redis as sync_redis
    from redis.cluster import RedisCluster
    from redis.exceptions import RedisError
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "layercache.redis needs the 'redis' extra: pip install 'layercache-py[redis]'"
    ) from exc

from .._codec import CorruptEntryError, EntryCodec, UnserializableValueError
from .._entry import Entry
from .._exceptions import CacheLayerError
from .._glob import glob_match
from .._keys import validate_pattern, validate_prefix
from .._types import ErrorHandler, LayerItem
from ..serializers import Serializer
from ._clients import DEFAULT_MAX_CONNECTIONS, init_signature, pool_exhausted, sync_url_client
from ._keys import encode_key, prefix_match, scan_match, strip_prefix


__all__ = ["SyncRedisLayer"]

logger = logging.getLogger("layercache.redis")

# SCAN hint: large enough to keep round trips few, small enough that one reply stays small.
_SCAN_COUNT = 1000
# Keys per UNLINK: bounds both the command size and how long one call holds the server.
_UNLINK_BATCH = 500
# Everything the driver can raise when the server is down, slow or confused.
_DRIVER_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)

RedisClient = sync_redis.Redis | RedisCluster


def _coerce_ttl(ttl: float | _dt.timedelta | None) -> float | None:
    if ttl is None:
        return None
    if isinstance(ttl, _dt.timedelta):
        ttl = ttl.total_seconds()
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl > 0:
        raise ValueError(f"ttl must be a positive number of seconds or None, got {ttl!r}")
    return float(ttl)


def _milliseconds(ttl: float) -> int:
    # Round up so that a tiny positive TTL still stores the value (PX 0 is an error).
    return max(1, math.ceil(ttl * 1000))


class SyncRedisLayer:
    """A cache layer stored in Redis, shared by every process that uses the same prefix.

    The sync twin of the asyncio layer (``layercache.redis.layer``), generated from
    it by ``scripts/unasync.py``: built by the asyncio class when it is given a sync client, and
    by ``SyncCacheStack`` in place of an asyncio layer built from ``url=``. ``SyncCacheStack``
    calls its methods directly from the calling threads (redis-py's sync client is thread-safe
    through its connection pool). It declares ``is_blocking``, so ``CacheStack`` runs it in
    worker threads.

    Values are stored as :class:`~layercache._codec.EntryCodec` bytes under ``prefix + key``.
    Bytes under a key that are not such an entry (written by another program, or damaged) read
    as a miss and are reported to the error handler; they are never unpickled or evaluated.

    Args:
        client: A ``redis.Redis`` or ``redis.RedisCluster`` created with
            ``decode_responses=False`` (the default). The layer uses it as given and does not
            close it.
        url: A ``redis://``/``rediss://``/``unix://`` URL; the layer builds (and closes in
            :meth:`close`) its own client on a pool of at most ``max_connections``
            connections. hiredis is used for parsing when installed. Exactly one of
            ``client`` and ``url`` is required.
        ttl: Default storage lifetime in seconds (or a ``timedelta``); ``None`` for no expiry.
        prefix: Prepended to every key; isolates this cache from other data in the database.
        serializer: Value serializer; default :class:`~layercache.serializers.JsonSerializer`.
        compression: ``None``, ``"gzip"``, ``"brotli"`` or ``"zstd"``.
        compression_threshold: Serialized entries smaller than this many bytes stay
            uncompressed.
        name: Layer name in metrics, events and errors.
        allow_unprefixed_clear: Allow :meth:`clear` with an empty ``prefix`` (it then deletes
            every key of the database).
        socket_timeout: Socket connect and read timeout in seconds of a client built from
            ``url`` (ignored with ``client``); also how long a command waits for a free pooled
            connection when all ``max_connections`` are busy (then ``CacheLayerError``).
        max_connections: Pool size of a client built from ``url``: callers beyond it wait
            for a free connection instead of failing. Default 50.

    Raises:
        ValueError: On a bad argument (both or neither of ``client``/``url``, a bad ``ttl`` or
            ``prefix``, a client that decodes responses).
    """

    is_local = False
    # Methods block on the network: CacheStack runs them in worker threads
    # (SyncCacheStack calls them directly).
    is_blocking = True
    # Every failure leaves this class as CacheLayerError (see _driver_errors), so the stack
    # calls get() directly on its hot path.
    raises_layer_errors = True

    def __init__(
        self,
        client: RedisClient | None = None,
        url: str | None = None,
        ttl: float | _dt.timedelta | None = 300,
        prefix: str = "layercache:",
        serializer: Serializer | None = None,
        compression: str | None = None,
        compression_threshold: int = 1024,
        name: str = "redis",
        allow_unprefixed_clear: bool = False,
        socket_timeout: float | None = 5.0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        if (client is None) == (url is None):
            raise ValueError("SyncRedisLayer needs exactly one of client= or url=")
        if not isinstance(prefix, str):
            raise ValueError(f"prefix must be a str, not {type(prefix).__name__}")
        if prefix:
            validate_prefix(prefix)
        if not isinstance(name, str) or not name:
            raise ValueError("name must be a non-empty str")
        self.name = name
        self._url = url
        # What a twin built from the same URL needs (see _sync_twin).
        self._options: dict[str, Any] = {
            "ttl": ttl,
            "prefix": prefix,
            "serializer": serializer,
            "compression": compression,
            "compression_threshold": compression_threshold,
            "name": name,
            "allow_unprefixed_clear": allow_unprefixed_clear,
            "socket_timeout": socket_timeout,
            "max_connections": max_connections,
        }
        self.default_ttl = _coerce_ttl(ttl)
        self.prefix = prefix
        self.allow_unprefixed_clear = allow_unprefixed_clear
        self._prefix_bytes = prefix.encode("utf-8", "surrogatepass")
        self._codec = EntryCodec(
            serializer=serializer,
            compression=compression,
            compression_threshold=compression_threshold,
        )
        self._error_handler: ErrorHandler | None = None
        if url is not None:
            # A waiting pool: callers beyond max_connections queue for at most socket_timeout
            # instead of failing.
            self._client: RedisClient = sync_url_client(
                url, socket_timeout=socket_timeout, max_connections=max_connections
            )
            self._owns_client = True
        else:
            assert client is not None
            encoder = getattr(client, "get_encoder", None)
            if encoder is not None and getattr(encoder(), "decode_responses", False):
                raise ValueError("SyncRedisLayer needs a client created with decode_responses=False")
            self._client = client
            self._owns_client = False
        self._is_cluster = isinstance(self._client, RedisCluster)
        # A fresh RedisCluster client routes its first commands before it knows the slot
        # map; a burst of them then races its MOVED-triggered refresh (redis-py 8.1). Load
        # the slot map once, before the first command.
        self._cluster_pending = False
        self._cluster_lock = threading.Lock() if self._is_cluster else None

    def __repr__(self) -> str:
        return f"SyncRedisLayer(name={self.name!r}, prefix={self.prefix!r}, ttl={self.default_ttl!r})"

    @property
    def client(self) -> RedisClient:
        """The underlying redis-py client.

        Built from ``url``, the asyncio layer's is a stand-in that forwards every call to the
        running loop's own client (``layercache.redis._clients.LoopBoundClient``).
        """
        return self._client

    @property
    def codec(self) -> EntryCodec:
        """The codec that turns entries into the stored bytes."""
        return self._codec

    # -- plumbing ---------------------------------------------------------------------------

    @contextmanager
    def _driver_errors(self, operation: str) -> Iterator[None]:
        """The one place where driver failures become ``CacheLayerError``."""
        try:
            yield
        except (CacheLayerError, UnserializableValueError):
            raise
        except _DRIVER_ERRORS as exc:
            raise self._layer_error(operation, exc) from exc
        except Exception as exc:
            # Anything else the client raises (a closed loop, a protocol surprise) is still a
            # failure of this layer: the stack relies on that to skip its own wrapper.
            raise CacheLayerError(self.name, operation) from exc

    def _layer_error(self, operation: str, exc: BaseException) -> CacheLayerError:
        """The ``CacheLayerError`` for a driver failure (the caller chains ``exc``)."""
        if not pool_exhausted(exc):
            return CacheLayerError(self.name, operation)
        if self._url is None:
            detail = "no free connection in the given client's pool within its timeout"
        else:
            detail = (
                f"every one of max_connections={self._options['max_connections']} stayed busy "
                f"for socket_timeout={self._options['socket_timeout']}s"
            )
        return CacheLayerError(self.name, operation, detail)

    def _initialize_cluster(self) -> None:
        assert self._cluster_lock is not None
        with self._cluster_lock:
            if not self._cluster_pending:
                return
            with self._driver_errors("initialize"):
                pass  # the sync cluster client initializes when built
            self._cluster_pending = False

    def _key(self, key: str) -> bytes:
        return encode_key(self.prefix, key)

    def _decode(self, key: str, raw: Any, operation: str) -> Entry | None:
        try:
            return self._codec.decode(raw)
        except CorruptEntryError as exc:
            self._report(exc, {"layer": self.name, "key": key, "operation": operation})
            return None

    def _report(self, exc: BaseException, context: dict[str, Any]) -> None:
        handler = self._error_handler
        if handler is None:
            logger.warning("unreadable value in %s for key %r: %s", self.name, context["key"], exc)
            return
        try:
            handler(exc, context)
        except Exception:
            # A broken handler must not turn a harmless miss into a failed read.
            logger.exception("error handler of layer %s raised", self.name)

    def _encode(self, entry: Entry, operation: str) -> bytes:
        try:
            return self._codec.encode(entry)
        except UnserializableValueError as exc:
            # The caller's value, not this layer, is at fault: not a CacheLayerError, so the
            # stack never takes a healthy Redis out of service for it (graceful degradation)
            # and the caller always hears of it.
            raise UnserializableValueError(f"layer {self.name!r} ({operation}): {exc}") from (
                exc.__cause__ or exc
            )

    def _scan(self, match: bytes) -> Iterator[bytes]:
        # scan_iter walks every primary of a cluster client, and one server otherwise.
        for raw in self._client.scan_iter(match=match, count=_SCAN_COUNT):
            yield raw

    def _unlink(self, keys: Sequence[bytes]) -> int:
        # A cluster client splits a multi-key UNLINK per slot itself.
        return int(self._client.unlink(*keys)) if keys else 0

    # -- required methods --------------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        """Return the entry stored under ``key``, or ``None`` (absent or unreadable).

        Raises:
            CacheLayerError: If Redis cannot be reached or fails.
        """
        if self._cluster_pending:
            self._initialize_cluster()
        # Inline try (not the _driver_errors context manager): this is the L2 hit path, and a
        # generator-based context manager costs about a microsecond per call.
        try:
            raw = self._client.get(self._key(key))
        except Exception as exc:
            if isinstance(exc, CacheLayerError):
                raise
            raise self._layer_error("get", exc) from exc
        if raw is None:
            return None
        return self._decode(key, raw, "get")

    def set(self, key: str, entry: Entry, ttl: float | None) -> None:
        """Store ``entry`` for ``ttl`` seconds (``None``: no expiry; ``<= 0``: delete it).

        Raises:
            CacheLayerError: If Redis fails.
            TypeError: If the value cannot be serialized.
        """
        if self._cluster_pending:
            self._initialize_cluster()
        if ttl is not None and ttl <= 0:
            with self._driver_errors("set"):
                self._client.unlink(self._key(key))
            return
        data = self._encode(entry, "set")
        with self._driver_errors("set"):
            if ttl is None:
                self._client.set(self._key(key), data)
            else:
                self._client.set(self._key(key), data, px=_milliseconds(ttl))

    def delete(self, key: str) -> None:
        """Remove ``key`` (no error when absent)."""
        if self._cluster_pending:
            self._initialize_cluster()
        with self._driver_errors("delete"):
            self._client.unlink(self._key(key))

    def clear(self) -> None:
        """Remove every key under this layer's prefix (SCAN + UNLINK in batches).

        Raises:
            ValueError: If the prefix is empty and ``allow_unprefixed_clear`` is false.
            CacheLayerError: If Redis fails.
        """
        if self._cluster_pending:
            self._initialize_cluster()
        if not self.prefix and not self.allow_unprefixed_clear:
            raise ValueError(
                "SyncRedisLayer.clear() with an empty prefix would delete every key of the "
                "database; pass allow_unprefixed_clear=True to allow it"
            )
        with self._driver_errors("clear"):
            batch: list[bytes] = []
            for raw in self._scan(prefix_match(self.prefix)):
                batch.append(raw)
                if len(batch) >= _UNLINK_BATCH:
                    self._unlink(batch)
                    batch = []
            self._unlink(batch)

    # -- optional methods --------------------------------------------------------------------

    def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        """Entries for ``keys`` in the same order (``None`` for misses), in one round trip.

        Raises:
            CacheLayerError: If Redis fails.
        """
        if self._cluster_pending:
            self._initialize_cluster()
        if not keys:
            return []
        raw_keys = [self._key(k) for k in keys]
        with self._driver_errors("get_many"):
            if self._is_cluster:
                # Keys of different slots cannot share one MGET: the cluster client splits it.
                values = self._client.mget_nonatomic(raw_keys)  # type: ignore[union-attr]
            else:
                values = self._client.mget(raw_keys)
        return [
            None if raw is None else self._decode(key, raw, "get_many")
            for key, raw in zip(keys, values, strict=True)
        ]

    def set_many(self, items: Sequence[LayerItem]) -> None:
        """Store several entries in one pipeline (not a transaction).

        Raises:
            CacheLayerError: If Redis fails.
            TypeError: If a value cannot be serialized.
        """
        if self._cluster_pending:
            self._initialize_cluster()
        if not items:
            return
        encoded = [
            (
                self._key(key),
                None if ttl is not None and ttl <= 0 else self._encode(entry, "set_many"),
                ttl,
            )
            for key, entry, ttl in items
        ]
        with self._driver_errors("set_many"):
            pipe = self._client.pipeline(transaction=False)
            for raw_key, data, ttl in encoded:
                if data is None:
                    pipe.execute_command("UNLINK", raw_key)
                elif ttl is None:
                    pipe.execute_command("SET", raw_key, data)
                else:
                    pipe.execute_command("SET", raw_key, data, "PX", _milliseconds(ttl))
            pipe.execute()

    def delete_many(self, keys: Sequence[str]) -> None:
        """Remove ``keys`` (UNLINK, in batches)."""
        if self._cluster_pending:
            self._initialize_cluster()
        with self._driver_errors("delete_many"):
            for start in range(0, len(keys), _UNLINK_BATCH):
                self._unlink([self._key(k) for k in keys[start : start + _UNLINK_BATCH]])

    def delete_matching(self, pattern: str) -> int:
        """Remove every key of this layer matching the glob ``pattern``; return how many.

        Keys are streamed from SCAN and deleted in batches, never all held in memory. Each
        candidate is checked against the pattern on this side, so Redis's byte-wise matching
        never decides what gets deleted.

        Raises:
            ValueError: If ``pattern`` is not a valid pattern.
            CacheLayerError: If Redis fails.
        """
        if self._cluster_pending:
            self._initialize_cluster()
        validate_pattern(pattern)
        deleted = 0
        with self._driver_errors("delete_matching"):
            batch: list[bytes] = []
            for raw in self._scan(scan_match(self.prefix, pattern)):
                key = strip_prefix(self._prefix_bytes, raw)
                if key is None or not glob_match(pattern, key):
                    continue
                batch.append(raw)
                if len(batch) >= _UNLINK_BATCH:
                    deleted += self._unlink(batch)
                    batch = []
            deleted += self._unlink(batch)
        return deleted

    def keys(self, pattern: str | None = None, limit: int | None = None) -> list[str]:
        """Keys of this layer (without the prefix), optionally filtered by a glob.

        Args:
            pattern: Glob the keys must match; ``None`` for every key.
            limit: Stop after this many keys; ``None`` for no limit.

        Raises:
            ValueError: On an invalid pattern or a negative limit.
            CacheLayerError: If Redis fails.
        """
        if self._cluster_pending:
            self._initialize_cluster()
        if pattern is not None:
            validate_pattern(pattern)
        if limit is not None and (isinstance(limit, bool) or limit < 0):
            raise ValueError(f"limit must be None or >= 0, got {limit!r}")
        if limit == 0:
            return []
        match = prefix_match(self.prefix) if pattern is None else scan_match(self.prefix, pattern)
        # SCAN may return a key twice while Redis resizes its table; the dict drops repeats.
        found: dict[str, None] = {}
        with self._driver_errors("keys"):
            for raw in self._scan(match):
                key = strip_prefix(self._prefix_bytes, raw)
                if key is None or (pattern is not None and not glob_match(pattern, key)):
                    continue
                found[key] = None
                if limit is not None and len(found) >= limit:
                    break
        return list(found)

    def has(self, key: str) -> bool:
        """Whether a value is stored under ``key`` (its content is not checked)."""
        if self._cluster_pending:
            self._initialize_cluster()
        with self._driver_errors("has"):
            return bool(self._client.exists(self._key(key)))

    def ttl(self, key: str) -> float | None:
        """Remaining storage lifetime of ``key`` in seconds; ``None`` if absent or unexpiring."""
        if self._cluster_pending:
            self._initialize_cluster()
        with self._driver_errors("ttl"):
            remaining = int(self._client.pttl(self._key(key)))
        # PTTL: -2 absent, -1 no expiry.
        return remaining / 1000 if remaining >= 0 else None

    def size(self) -> int:
        """Number of keys under the prefix (a SCAN; approximate while keys change)."""
        if self._cluster_pending:
            self._initialize_cluster()
        count = 0
        with self._driver_errors("size"):
            for _ in self._scan(prefix_match(self.prefix)):
                count += 1
        return count

    def ping(self) -> bool:
        """``True`` when Redis answers.

        Raises:
            CacheLayerError: If it does not.
        """
        if self._cluster_pending:
            self._initialize_cluster()
        with self._driver_errors("ping"):
            self._client.ping()
        return True

    def set_error_handler(self, handler: ErrorHandler | None) -> None:
        """Call ``handler(exc, context)`` when stored bytes are unreadable (they read as a miss).

        ``context`` holds ``layer``, ``key`` and ``operation``. Without a handler the layer
        logs a warning.
        """
        self._error_handler = handler

    def close(self) -> None:
        """Close the client if this layer created it (from ``url``)."""
        if self._owns_client:
            with self._driver_errors("close"):
                self._client.close()
