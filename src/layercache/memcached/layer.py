"""``MemcachedLayer``: a shared cache layer in memcached, on aiomcache (asyncio)."""

# This module is the single source of the memcached layer's logic: scripts/unasync.py
# generates _sync_layer.py (SyncMemcachedLayer, on pymemcache) from it. The commands each twin
# sends live in _aio_client.py and _sync_client.py (hand-written, the same methods). Code only
# the async class has sits between "unasync: begin async-only" / "unasync: end async-only".

from __future__ import annotations

import datetime as _dt
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from .._batching import batch_options
from .._codec import EntryCodec
from .._entry import Entry
from .._error_handlers import DriverErrors
from .._exceptions import CacheLayerError
from .._keys import validate_prefix
from .._types import ErrorHandler, LayerItem
from ..serializers import Serializer
from ._aio_client import AioMemcached, MemcacheClient, init_signature, is_sync_client
from ._common import KeyMap, StoredEntries, exptime, failure_detail, parse_servers

# unasync: begin async-only
from ._sync_layer import SyncMemcachedLayer

# unasync: end async-only

__all__ = ["MemcachedLayer"]

# How long (seconds) a confirmed namespace version is reused by reads and stores without
# reading it again, by default (see "clear() and the namespace version" in the class doc).
VERSION_REUSE = 1.0
DEFAULT_MAX_VALUE_BYTES = 1024 * 1024
DEFAULT_MAX_CONNECTIONS = 16


def _coerce_ttl(ttl: float | _dt.timedelta | None) -> float | None:
    if ttl is None:
        return None
    if isinstance(ttl, _dt.timedelta):
        ttl = ttl.total_seconds()
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl > 0:
        raise ValueError(f"ttl must be a positive number of seconds or None, got {ttl!r}")
    return float(ttl)


def _fresh_version(floor: int) -> bytes:
    """A new namespace version: the wall clock in microseconds, above ``floor``. A version key
    memcached evicted comes back larger than any version it held before (versions only grow by
    one per clear), so entries of an older namespace never become readable again."""
    return str(max(time.time_ns() // 1000, floor + 1)).encode("ascii")


class MemcachedLayer:
    """A cache layer stored in memcached, shared by every process that uses the same prefix.

    One class for both stacks. ``MemcachedLayer(client=<a pymemcache client>)`` returns a
    :class:`~layercache.SyncMemcachedLayer`, the generated sync twin of this class (on
    pymemcache), which :class:`~layercache.SyncCacheStack` calls directly.
    ``MemcachedLayer(servers=...)`` is the asyncio layer (on aiomcache); given to
    ``SyncCacheStack`` it is swapped, once at construction, for a ``SyncMemcachedLayer`` with
    the same servers and options (closed by the stack's ``close()``). A ``MemcachedLayer``
    built on an aiomcache ``client`` is refused by ``SyncCacheStack`` with a ``TypeError``.

    Entries are :class:`~layercache._codec.EntryCodec` bytes (JSON by default; never pickle
    unless you pass a signed ``PickleSerializer``). Bytes under a key that are not such an
    entry read as a miss and are reported to the error handler, never unpickled or evaluated.

    Keys: cache key ``key`` is stored under ``{prefix}{version}:{key}``; a key memcached
    cannot take (over 250 bytes of UTF-8, or with whitespace or control characters) is stored
    under ``{prefix}{version}#`` and the SHA-256 of that text instead (distinct keys stay
    distinct; ``layercache#<sha256>`` when the prefix itself does not fit).

    clear() and the namespace version: memcached cannot list keys, so :meth:`clear` increments
    the number under ``{prefix}version`` (``incr``); every key of the old namespace becomes
    unreachable at once and ages out (or is evicted). Reads and stores reuse a version
    confirmed within the last ``version_reuse`` seconds (one round trip, the data keys alone);
    once it is older, the next read fetches the version key in the same multi-get as the data
    and so confirms it (a second round trip only when the namespace changed). Deletes always
    read it first. So another instance's ``clear`` is seen by this one's reads and stores
    within ``version_reuse`` seconds (this instance's own at once): until then a read may
    still answer from the cleared namespace, and a store may land in it (it is then lost, as
    if it had come just before the clear). After any failure the version is read again. Another
    prefix's keys are untouched by ``clear``.

    Expiry: memcached keeps whole seconds (a TTL is rounded up; over 30 days it is sent as a
    unix time, as memcached requires); a read of an entry whose windows have all ended
    (``Entry.expires_at``) is a miss, so entries do not outlive their TTL by that rounding.
    :meth:`ttl` is what the entry's metadata says (memcached cannot tell a key's TTL).

    Args:
        client: An ``aiomcache.Client`` (``FlagClient``), used as given and never closed. Or a
            pymemcache client (``Client``, ``PooledClient``, ``HashClient``): then the sync twin
            is returned. Exactly one of ``client`` and ``servers`` is required.
        servers: ``"host:port"``, ``("host", port)`` or a list of them; the layer builds (and
            closes in :meth:`aclose`) one client per server, keys spread over them by
            rendezvous hashing (the same in both twins).
        ttl: Default storage lifetime in seconds (or a ``timedelta``); ``None`` for no expiry.
        serializer: Value serializer; default :class:`~layercache.serializers.JsonSerializer`.
        name: Layer name in metrics, events and errors.
        prefix: Prepended to every key; isolates this cache (and its :meth:`clear`).
        max_value_bytes: memcached's item size limit (its ``-I``; 1 MiB by default). An entry
            whose bytes, key and item header would not fit is refused with
            :class:`~layercache.memcached.MemcachedValueTooLargeError` before it is sent.
        compression: ``None``, ``"gzip"``, ``"brotli"`` or ``"zstd"``: entries of at least
            ``compression_threshold`` bytes are compressed (and then checked against the limit).
        compression_threshold: Serialized entries smaller than this stay uncompressed.
        timeout: Seconds one command may take (connect included) before it fails with
            ``CacheLayerError``; ``None`` waits forever.
        max_connections: Connections per server (per event loop for this asyncio layer).
        version_reuse: Seconds a confirmed namespace version is reused without reading it
            again: the longest another instance's ``clear`` takes to be seen here. ``0``
            reads it with every operation (every read then sees another instance's ``clear``
            at once, and every store costs one more round trip).
        read_batching: Let a stack merge concurrent reads of distinct keys into one
            multi-get: a read issued while another is in flight waits for it and goes with
            the next batch. A lone read is sent at once, as without batching
            (docs/perf-batching.md).
        batch_window: Seconds a batch leader waits for more callers before it sends (0:
            none; batches then form only behind a read in flight). At most 0.1.
        max_batch: Keys per batched multi-get at most (1 to 10,000).

    Raises:
        ValueError: On a bad argument (both or neither of ``client``/``servers``, a bad
            ``ttl``, ``prefix``, ``servers``, ``max_value_bytes`` or ``version_reuse``).
    """

    is_local = False
    # Methods are coroutines (ignored for them); the sync twin blocks and says so, so that an
    # asyncio stack runs it in worker threads.
    is_blocking = False
    # Every failure leaves this class as CacheLayerError: the stack calls get() directly.
    raises_layer_errors = True

    # unasync: begin async-only
    def __new__(cls, client: Any = None, *args: Any, **kwargs: Any) -> Any:
        """A ``SyncMemcachedLayer`` when ``client`` is a pymemcache client."""
        if client is not None and is_sync_client(client):
            return SyncMemcachedLayer(client, *args, **kwargs)
        return object.__new__(cls)

    # unasync: end async-only
    def __init__(
        self,
        client: MemcacheClient | None = None,
        servers: object = None,
        ttl: float | _dt.timedelta | None = 300,
        serializer: Serializer | None = None,
        name: str = "memcached",
        *,
        prefix: str = "layercache:",
        max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES,
        compression: str | None = None,
        compression_threshold: int = 1024,
        timeout: float | None = 5.0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        version_reuse: float = VERSION_REUSE,
        read_batching: bool = True,
        batch_window: float = 0.0,
        max_batch: int = 256,
    ) -> None:
        if (client is None) == (servers is None):
            raise ValueError("MemcachedLayer needs exactly one of client= or servers=")
        # Read by the stack's adapter, which batches concurrent reads (_async/batcher.py).
        # Stores are not coalesced (no set_batch): write_batching is not an option here.
        options = batch_options(read_batching, False, batch_window, max_batch)
        self.read_batching, self.batch_window, self.max_batch = (
            options.read_batching,
            options.batch_window,
            options.max_batch,
        )
        if not isinstance(prefix, str):
            raise ValueError(f"prefix must be a str, not {type(prefix).__name__}")
        if prefix:
            validate_prefix(prefix)
        if not isinstance(name, str) or not name:
            raise ValueError("name must be a non-empty str")
        if isinstance(max_value_bytes, bool) or not isinstance(max_value_bytes, int):
            raise ValueError(f"max_value_bytes must be an int, not {max_value_bytes!r}")
        if max_value_bytes < 1024:
            raise ValueError(f"max_value_bytes must be at least 1024, got {max_value_bytes}")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds or None: {timeout!r}")
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise ValueError(f"max_connections must be a positive int, not {max_connections!r}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be a positive int, not {max_connections!r}")
        if (
            isinstance(version_reuse, bool)
            or not isinstance(version_reuse, int | float)
            or not 0 <= version_reuse < math.inf
        ):
            raise ValueError(
                f"version_reuse must be a number of seconds >= 0, not {version_reuse!r}"
            )
        server_list = [] if servers is None else parse_servers(servers)
        self.name = name
        self.default_ttl = _coerce_ttl(ttl)
        self.prefix = prefix
        self.max_value_bytes = max_value_bytes
        self._servers = server_list
        # What a twin built from the same servers needs (see _sync_twin).
        self._options: dict[str, Any] = {
            "ttl": ttl,
            "serializer": serializer,
            "name": name,
            "prefix": prefix,
            "max_value_bytes": max_value_bytes,
            "compression": compression,
            "compression_threshold": compression_threshold,
            "timeout": timeout,
            "max_connections": max_connections,
            "version_reuse": version_reuse,
            "read_batching": read_batching,
            "batch_window": batch_window,
            "max_batch": max_batch,
        }
        codec = EntryCodec(
            serializer=serializer,
            compression=compression,
            compression_threshold=compression_threshold,
        )
        self._entries = StoredEntries(name, codec, max_value_bytes)
        self._errors = DriverErrors(name, failure_detail(max_value_bytes, self._unconfirm))
        self._owns_client = client is None
        self._client = AioMemcached(
            server_list, client, timeout=timeout, max_connections=max_connections
        )
        self._keys = KeyMap(prefix)
        self._version_key = self._keys.version_key
        # The namespace version last seen, and when (monotonic) it was last confirmed; it is
        # reused for version_reuse seconds after that.
        self._version: bytes | None = None
        self._confirmed = 0.0
        self._version_reuse = float(version_reuse)
        self._version_lock = threading.Lock()

    # unasync: begin async-only
    def _sync_twin(self) -> SyncMemcachedLayer:
        """The layer ``SyncCacheStack`` uses in place of this one (called once, when it is built).

        Raises:
            TypeError: This layer was built on an aiomcache ``client``, which threads cannot use.
        """
        if not self._servers:
            raise TypeError(
                f"{self!r} was built on an aiomcache client; SyncCacheStack needs "
                "MemcachedLayer(servers=...) or MemcachedLayer(client=<a pymemcache client>)"
            )
        return SyncMemcachedLayer(servers=self._servers, **self._options)

    # unasync: end async-only
    def __repr__(self) -> str:
        return (
            f"MemcachedLayer(name={self.name!r}, prefix={self.prefix!r}, ttl={self.default_ttl!r})"
        )

    @property
    def codec(self) -> EntryCodec:
        """The codec that turns entries into the stored bytes."""
        return self._entries.codec

    # -- the namespace version --------------------------------------------------------------------

    def _unconfirm(self) -> None:
        """After a failure the next read or store reads the version again (the server may
        have restarted empty, without the version key they would otherwise reuse)."""
        self._confirmed = 0.0

    def _seen(self, raw: bytes | None) -> bytes | None:
        """Take note of a version read from memcached; ``None`` if absent or not a number."""
        if raw is None or not raw.isdigit() or len(raw) > 20:
            return None
        with self._version_lock:  # threads of the sync twin: the version never goes back
            current = self._version
            if current is None or int(raw) >= int(current):
                self._version = raw
            self._confirmed = time.monotonic()
        return raw

    async def _start_version(self) -> bytes:
        """Create the version key when it is absent (first use, or evicted), or repair one that
        does not hold a number; return the version now in force."""
        floor = 0 if self._version is None else int(self._version)
        fresh = _fresh_version(floor)
        if await self._client.add(self._version_key, fresh, 0):
            return self._seen(fresh) or fresh
        found = await self._client.get_many([self._version_key])
        seen = self._seen(found.get(self._version_key))
        if seen is not None:
            return seen
        # Not a number (written by something else): replace it.
        await self._client.set(self._version_key, fresh, 0)
        return self._seen(fresh) or fresh

    async def _current_version(self, operation: str, reuse: bool) -> bytes:
        """The namespace version for a store (``reuse``: one confirmed within the last
        ``version_reuse`` seconds will do) or a delete (always read)."""
        version = self._version
        if (
            reuse
            and version is not None
            and time.monotonic() - self._confirmed < self._version_reuse
        ):
            return version
        with self._errors(operation):
            found = await self._client.get_many([self._version_key])
            seen = self._seen(found.get(self._version_key))
            return seen if seen is not None else await self._start_version()

    async def _read(self, keys: Sequence[str], operation: str) -> list[bytes | None]:
        """The stored bytes of ``keys`` in the current namespace: the data keys alone while the
        version is confirmed (``version_reuse``); else one multi-get with the version key, and
        a second one when the namespace changed since it was last seen."""
        try:
            version = self._version
            if version is not None and time.monotonic() - self._confirmed < self._version_reuse:
                # A miss is answered from this version too: reading the version again there
                # would put a second round trip on every cold miss (see the class doc).
                raw_keys = [self._keys.key(version, key) for key in keys]
                found = await self._client.get_many(
                    raw_keys if len(raw_keys) == 1 else list(dict.fromkeys(raw_keys))
                )
                return [found.get(raw_key) for raw_key in raw_keys]
            if version is None:
                version = await self._current_version(operation, reuse=False)
            raw_keys = [self._keys.key(version, key) for key in keys]
            found = await self._client.get_many(list(dict.fromkeys([self._version_key, *raw_keys])))
            seen = self._seen(found.get(self._version_key))
            if seen != version:
                version = seen if seen is not None else await self._start_version()
                raw_keys = [self._keys.key(version, key) for key in keys]
                found = await self._client.get_many(list(dict.fromkeys(raw_keys)))
        except Exception as exc:
            if isinstance(exc, CacheLayerError):
                raise
            raise self._errors.error(operation, exc) from exc
        return [found.get(raw_key) for raw_key in raw_keys]

    def _decode(self, key: str, raw: bytes | None, operation: str, now: float) -> Entry | None:
        if raw is None:
            return None
        entry = self._entries.decode(key, raw, operation)
        if entry is None:
            return None
        # memcached rounds expiry up to whole seconds: an entry past its windows is gone.
        expires_at = entry.expires_at
        if expires_at is not None and expires_at <= now:
            return None
        return entry

    # -- required methods --------------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        """Return the entry stored under ``key``, or ``None`` (absent, expired or unreadable).

        Raises:
            CacheLayerError: If memcached cannot be reached or fails.
        """
        version = self._version
        if version is not None and time.monotonic() - self._confirmed < self._version_reuse:
            # _read's first branch for one key (every L2 hit): no lists to build.
            raw_key = self._keys.key(version, key)
            try:
                raw = (await self._client.get_many([raw_key])).get(raw_key)
            except Exception as exc:
                if isinstance(exc, CacheLayerError):
                    raise
                raise self._errors.error("get", exc) from exc
        else:
            raw = (await self._read([key], "get"))[0]
        if raw is None:
            return None
        return self._decode(key, raw, "get", time.time())

    async def set(self, key: str, entry: Entry, ttl: float | None) -> None:
        """Store ``entry`` for ``ttl`` seconds (``None``: no expiry; ``<= 0``: delete it).

        Raises:
            CacheLayerError: If memcached fails.
            TypeError: If the value cannot be serialized (``UnserializableValueError``), or is
                too large (``MemcachedValueTooLargeError``, also a ``ValueError``).
        """
        if ttl is not None and ttl <= 0:
            await self.delete(key)
            return
        version = await self._current_version("set", reuse=True)
        raw_key = self._keys.key(version, key)
        data = self._entries.encode(entry, raw_key, "set")
        with self._errors("set"):
            await self._client.set(raw_key, data, exptime(ttl))

    async def delete(self, key: str) -> None:
        """Remove ``key`` from the current namespace (no error when absent).

        Raises:
            CacheLayerError: If memcached fails.
        """
        version = await self._current_version("delete", reuse=False)
        with self._errors("delete"):
            await self._client.delete_many([self._keys.key(version, key)])

    async def clear(self) -> None:
        """Start a new namespace (``incr`` of the version key): every key stored so far under
        this prefix becomes unreachable and ages out. Other prefixes are untouched.

        Raises:
            CacheLayerError: If memcached fails.
        """
        with self._errors("clear"):
            new = await self._client.incr(self._version_key, 1)
            if new is None:
                # Absent (first use, or evicted): a fresh version is above every older one.
                await self._start_version()
                new = await self._client.incr(self._version_key, 1)
            if new is not None:
                self._seen(str(new).encode("ascii"))

    # -- optional methods --------------------------------------------------------------------

    async def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        """Entries for ``keys`` in the same order (``None`` for misses): one multi-get per
        server (with the version key).

        Raises:
            CacheLayerError: If memcached fails.
        """
        if not keys:
            return []
        raws = await self._read(keys, "get_many")
        now = time.time()
        return [
            self._decode(key, raw, "get_many", now) for key, raw in zip(keys, raws, strict=True)
        ]

    async def get_batch(self, keys: Sequence[str]) -> list[Entry | None]:
        """The reads of several concurrent :meth:`get` calls in one multi-get per server
        (what the stack's read batching sends): like :meth:`get_many`, but a failure, or an
        unreadable value, is reported as operation ``"get"``, as each caller's own read would
        be.

        Raises:
            CacheLayerError: ``(name, "get")`` if memcached cannot be reached or fails.
        """
        raws = await self._read(keys, "get")
        now = time.time()
        return [self._decode(key, raw, "get", now) for key, raw in zip(keys, raws, strict=True)]

    async def set_many(self, items: Sequence[LayerItem]) -> None:
        """Store several entries (concurrent stores over the pools; pipelined per server and
        expiry time by the sync twin). Items with ``ttl <= 0`` are deleted.

        Raises:
            CacheLayerError: If memcached fails.
            TypeError: If a value cannot be serialized or is too large (nothing is stored).
        """
        if not items:
            return
        version = await self._current_version("set_many", reuse=True)
        stores: list[tuple[bytes, bytes, int]] = []
        removals: list[bytes] = []
        for key, entry, ttl in items:
            raw_key = self._keys.key(version, key)
            if ttl is not None and ttl <= 0:
                removals.append(raw_key)
            else:
                stores.append(
                    (raw_key, self._entries.encode(entry, raw_key, "set_many"), exptime(ttl))
                )
        with self._errors("set_many"):
            if stores:
                await self._client.set_many(stores)
            if removals:
                await self._client.delete_many(list(dict.fromkeys(removals)))

    async def delete_many(self, keys: Sequence[str]) -> None:
        """Remove ``keys`` from the current namespace.

        Raises:
            CacheLayerError: If memcached fails.
        """
        if not keys:
            return
        version = await self._current_version("delete_many", reuse=False)
        with self._errors("delete_many"):
            await self._client.delete_many(
                list(dict.fromkeys(self._keys.key(version, key) for key in keys))
            )

    async def has(self, key: str) -> bool:
        """Whether a readable, unexpired entry is stored under ``key``."""
        raw = (await self._read([key], "has"))[0]
        return self._decode(key, raw, "has", time.time()) is not None

    async def ttl(self, key: str) -> float | None:
        """Remaining lifetime of ``key`` in seconds as its entry's metadata says (the end of
        its last window; memcached cannot tell a key's TTL); ``None`` if absent or unexpiring."""
        now = time.time()
        entry = self._decode(key, (await self._read([key], "ttl"))[0], "ttl", now)
        if entry is None or entry.expires_at is None:
            return None
        return max(entry.expires_at - now, 0.0)

    async def ping(self) -> bool:
        """``True`` when every server answers (``version``).

        Raises:
            CacheLayerError: If one does not.
        """
        with self._errors("ping"):
            await self._client.version()
        return True

    def set_error_handler(self, handler: ErrorHandler | None) -> None:
        """Call ``handler(exc, context)`` when stored bytes are unreadable (they read as a miss).

        ``context`` holds ``layer``, ``key`` and ``operation``. Without a handler the layer
        logs a warning.
        """
        self._entries.error_handler.own = handler

    def add_error_handler(self, handler: ErrorHandler) -> Callable[[], None]:
        """Also call ``handler(exc, context)`` when stored bytes are unreadable; returns the
        function that removes it. Each stack using this layer adds its own."""
        return self._entries.error_handler.add(handler)

    async def aclose(self) -> None:
        """Close the clients this layer built (from ``servers``)."""
        if self._owns_client:
            with self._errors("aclose"):
                await self._client.aclose()


# unasync: begin async-only
# help() and inspect.signature() show __init__'s parameters, not __new__'s (*args, **kwargs).
MemcachedLayer.__signature__ = init_signature(MemcachedLayer.__init__)  # type: ignore[attr-defined]
# unasync: end async-only
