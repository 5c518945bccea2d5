"""``RedisLayer``: a shared cache layer on redis-py's asyncio client (or cluster client)."""

# This module is the single source of the Redis layer's logic: scripts/unasync.py generates
# _sync_layer.py (SyncRedisLayer, on redis-py's sync client) from it. Code only the async class
# has sits between "unasync: begin async-only" / "unasync: end async-only" markers.

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

try:
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import RedisCluster
    from redis.exceptions import NoScriptError
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "layercache.redis needs the 'redis' extra: pip install 'layercache-py[redis]'"
    ) from exc

from .._batching import batch_options
from .._codec import EntryCodec
from .._entry import Entry
from .._exceptions import CacheLayerError
from .._glob import glob_match
from .._keys import validate_pattern, validate_prefix
from .._types import ErrorHandler, LayerItem
from ..serializers import Serializer
from ._clients import DEFAULT_MAX_CONNECTIONS, fast_reads, sync_twin_for_sync_clients, url_client
from ._entries import StoredEntries
from ._errors import DriverErrors, pool_detail
from ._keys import encode_key, prefix_match, scan_match, strip_prefix
from ._keyspace import SCAN_COUNT, UNLINK_BATCH, KeySpace, in_flight
from ._lease import (
    FENCE_ALL,
    FENCE_TAG,
    INTERNAL_MARK,
    CasToken,
    Lease,
    ServerClock,
    fence_at_or_after,
    monotonic_us,
)
from ._options import check_raw_client, coerce_ttl, lease_options, milliseconds
from ._scripts import (
    COUNTER_COMPARE_AND_SET,
    LEASE_FENCE,
    LEASE_PEEK,
    LEASE_SET,
    LEASE_TOMBSTONE,
    LEASE_UNDO,
)

# unasync: begin async-only
from ._sync_layer import SyncRedisLayer

# unasync: end async-only

__all__ = ["CasToken", "Lease", "RedisLayer"]

logger = logging.getLogger("layercache.redis")

# The store script's SHA-1, as Redis names it (EVALSHA without redis-py's Script object).
_LEASE_SET_SHA = hashlib.sha1(LEASE_SET.encode("utf-8")).hexdigest()

RedisClient = aioredis.Redis | RedisCluster
# One store of a fetched value: (key, entry, ttl, lease, tags), as set_leased takes them.
LeasedItem = tuple[str, Entry, float | None, Lease, Sequence[str]]


# unasync: begin async-only
@sync_twin_for_sync_clients("._sync_layer:SyncRedisLayer")
# unasync: end async-only
class RedisLayer:
    """A cache layer stored in Redis, shared by every process that uses the same prefix.

    One class for both stacks. ``RedisLayer(client=<redis.Redis or redis.RedisCluster>)`` (a
    sync client) returns a :class:`~layercache.redis.SyncRedisLayer`, the generated sync twin
    of this class, which :class:`~layercache.SyncCacheStack` calls directly (redis-py's sync
    client is thread-safe through its connection pool). ``RedisLayer(url=...)`` is this asyncio
    layer; given to ``SyncCacheStack`` it is swapped, once at construction, for a
    ``SyncRedisLayer`` with the same URL and options that owns its own sync client (closed by
    the stack's ``close()``). A ``RedisLayer`` built on an asyncio ``client`` is refused by
    ``SyncCacheStack`` with a ``TypeError``.

    redis.asyncio connections belong to the event loop that opened them. Built from ``url``,
    the layer keeps one client per event loop, made on first use in that loop and closed when
    the loop shuts down (``asyncio.run``, ``asyncio.Runner``), at most 8 loops at once: one
    layer serves any number of ``asyncio.run()`` calls, test clients, and threads running
    their own loops. A ``client`` you pass is used as given, so the layer then works on the
    loop that client was first used on only.

    Values are stored as :class:`~layercache._codec.EntryCodec` bytes under ``prefix + key``.
    Bytes under a key that are not such an entry (written by another program, or damaged) read
    as a miss and are reported to the error handler; they are never unpickled or evaluated.

    Args:
        client: A ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster`` created with
            ``decode_responses=False`` (the default). The layer uses it as given and does not
            close it.
        url: A ``redis://``/``rediss://``/``unix://`` URL, or ``redis+sentinel://`` /
            ``rediss+sentinel://`` (a Sentinel set; docs/topologies.md); the layer builds
            (and closes in :meth:`aclose`) its own client on a pool of at most
            ``max_connections`` connections. hiredis is used for parsing when installed.
            Exactly one of ``client`` and ``url`` is required.
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
        lease_ttl: Seconds that tombstones and fences live, and the longest a fetch may run
            and still store its value with :meth:`set_leased` (see "Conditional stores"
            below). ``None`` turns the mechanism off: deletes UNLINK, nothing is fenced, and
            :meth:`set_leased` is a plain store.
        clock_skew: With a cluster client, the most that two nodes' clocks may differ by, in
            seconds (lease times from one node are compared with fences written by another).
            Ignored on a single server.
        read_batching: Let a stack merge concurrent reads of distinct keys into bulk reads
            (one ``MGET``; on a cluster one ``MGET`` per slot, one pipeline per node): a read
            issued while another is in flight waits for it and goes with the next batch. A
            lone read is sent at once, as without batching (docs/perf-batching.md).
        write_batching: Likewise merge concurrent stores (``set``) into one pipeline.
        batch_window: Seconds a batch leader waits for more callers before it sends (0:
            none; batches then form only behind a call in flight). At most 0.1.
        max_batch: Keys per bulk read or write at most (1 to 10,000).

    Conditional stores (leases): a fetch that read a key (:meth:`get_leased`, :meth:`lease`)
    and then called the origin stores with :meth:`set_leased`, which refuses, atomically in
    Redis, when anything changed the key since that read: a set, a delete (deletes leave a
    tombstone, read as absent everywhere, for ``lease_ttl``), a tag invalidation
    (:meth:`fence_tags`), :meth:`delete_matching` or :meth:`clear` (both fence every key), or
    when the read is ``lease_ttl`` or more in the past. The layer's own bookkeeping keys
    (``prefix + "\\x00fence:..."``) never show in :meth:`keys` or :meth:`size` and survive
    :meth:`clear`.

    Raises:
        ValueError: On a bad argument (both or neither of ``client``/``url``, a bad ``ttl``,
            ``prefix``, ``lease_ttl`` or ``clock_skew``, a client that decodes responses).
    """

    is_local = False
    # Methods are coroutines (ignored for them); the sync twin blocks and says so, so that an
    # asyncio stack runs it in worker threads.
    is_blocking = False
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
        lease_ttl: float | None = 10.0,
        clock_skew: float = 0.25,
        read_batching: bool = True,
        write_batching: bool = True,
        batch_window: float = 0.0,
        max_batch: int = 256,
    ) -> None:
        if (client is None) == (url is None):
            raise ValueError("RedisLayer needs exactly one of client= or url=")
        lease_ttl_us, clock_skew_us = lease_options(lease_ttl, clock_skew)
        # Read by the stack's adapter, which batches concurrent calls (_async/batcher.py).
        (self.read_batching, self.write_batching, self.batch_window, self.max_batch) = (
            batch_options(read_batching, write_batching, batch_window, max_batch)
        )
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
            "lease_ttl": lease_ttl,
            "clock_skew": clock_skew,
            "read_batching": read_batching,
            "write_batching": write_batching,
            "batch_window": batch_window,
            "max_batch": max_batch,
        }
        self.default_ttl = coerce_ttl(ttl)
        self.prefix = prefix
        self.allow_unprefixed_clear = allow_unprefixed_clear
        self._prefix_bytes = prefix.encode("utf-8", "surrogatepass")
        codec = EntryCodec(
            serializer=serializer,
            compression=compression,
            compression_threshold=compression_threshold,
        )
        self._entries = StoredEntries(name, codec)
        # The one place where driver failures become CacheLayerError (redis/_errors.py).
        detail = pool_detail(url is not None, max_connections, socket_timeout)
        self._driver_errors = DriverErrors(name, detail)
        if url is not None:
            # A waiting pool: callers beyond max_connections queue for at most socket_timeout
            # instead of failing.
            self._client: RedisClient = url_client(
                url, socket_timeout=socket_timeout, max_connections=max_connections
            )
            self._owns_client = True
        else:
            assert client is not None
            check_raw_client(
                client, "RedisLayer needs a client created with decode_responses=False"
            )
            self._client = client
            self._owns_client = False
        self._is_cluster = isinstance(self._client, RedisCluster)
        # GET and MGET of the read paths (redis/_clients.py: past redis-py's per-command
        # machinery on a client built here).
        self._read_one, self._read_many = fast_reads(self._client)
        # Multi-key commands, and a cluster client's slot map loaded before its first command.
        self._keyspace = KeySpace(self._client, self._is_cluster, self._driver_errors)
        # Leases (see _lease.py). None: the mechanism is off.
        self.lease_ttl = None if lease_ttl is None else float(lease_ttl)
        self._lease_ttl_us = lease_ttl_us
        self._lease_px = None if lease_ttl_us is None else max(1, -(-lease_ttl_us // 1000))
        # On a cluster the bound must hold for every node's clock, not only the one that
        # answers TIME.
        self._clock = ServerClock(clock_skew_us if self._is_cluster else 0)
        self._internal_prefix = self._prefix_bytes + INTERNAL_MARK.encode("ascii")
        self._fence_all = self._key(FENCE_ALL)
        self._tombstone_script = self._client.register_script(LEASE_TOMBSTONE)
        self._fence_script = self._client.register_script(LEASE_FENCE)
        self._undo_script = self._client.register_script(LEASE_UNDO)
        self._peek_script = self._client.register_script(LEASE_PEEK)
        self._cas_script = self._client.register_script(COUNTER_COMPARE_AND_SET)

    # unasync: begin async-only
    def _sync_twin(self) -> SyncRedisLayer:
        """The layer ``SyncCacheStack`` uses in place of this one (called once, when it is built).

        Raises:
            TypeError: This layer was built on an asyncio ``client``, which threads cannot use.
        """
        if self._url is None:
            raise TypeError(
                f"{self!r} was built on an asyncio client; SyncCacheStack needs "
                "RedisLayer(url=...) or RedisLayer(client=redis.Redis(...)) (a sync client)"
            )
        return SyncRedisLayer(url=self._url, **self._options)

    # unasync: end async-only
    def __repr__(self) -> str:
        return f"RedisLayer(name={self.name!r}, prefix={self.prefix!r}, ttl={self.default_ttl!r})"

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
        return self._entries.codec

    # -- plumbing ---------------------------------------------------------------------------

    def _key(self, key: str) -> bytes:
        return encode_key(self.prefix, key)

    def _is_cache_key(self, raw: bytes) -> bool:
        """Whether a scanned key is a cache key, not the layer's own bookkeeping (a fence)."""
        return not raw.startswith(self._internal_prefix)

    def _tag_fence(self, tag: str) -> bytes:
        return self._key(FENCE_TAG + tag)

    async def _measure_clock(self, operation: str) -> int:
        """Measure the server clock (one TIME) and return the new lower bound."""
        clock = self._clock
        clock.refreshing = True
        try:
            with self._driver_errors(operation):
                reply = await self._client.time()
            clock.update_from_reply(monotonic_us(), reply)
        finally:
            clock.refreshing = False
        read_at = clock.read_at()
        assert read_at is not None  # just measured
        return read_at

    async def _write_fences(self, keys: Sequence[bytes]) -> None:
        replies = await self._keyspace.each_key(self._fence_script, keys, [self._lease_px])
        if not self._is_cluster and replies:
            # Reads sent from now on run after these fences: they are not older than them.
            self._clock.raise_floor(max(int(reply) for reply in replies) + 1)

    # -- required methods --------------------------------------------------------------------

    async def get(self, key: str) -> Entry | None:
        """Return the entry stored under ``key``, or ``None`` (absent or unreadable).

        Raises:
            CacheLayerError: If Redis cannot be reached or fails.
        """
        if self._keyspace.pending:
            await self._keyspace.ready()
        # Inline try (not the _driver_errors context manager): this is the L2 hit path, and a
        # generator-based context manager costs about a microsecond per call.
        try:
            raw = await self._read_one(self._key(key))
        except Exception as exc:
            if isinstance(exc, CacheLayerError):
                raise
            raise self._driver_errors.error("get", exc) from exc
        if raw is None:
            return None
        return self._entries.decode(key, raw, "get")

    async def set(self, key: str, entry: Entry, ttl: float | None) -> None:
        """Store ``entry`` for ``ttl`` seconds (``None``: no expiry; ``<= 0``: UNLINK it, no
        tombstone).

        Raises:
            CacheLayerError: If Redis fails.
            TypeError: If the value cannot be serialized.
        """
        await self._keyspace.ready()
        if ttl is not None and ttl <= 0:
            with self._driver_errors("set"):
                await self._client.unlink(self._key(key))
            return
        data = self._entries.encode(entry, "set")
        with self._driver_errors("set"):
            if ttl is None:
                await self._client.set(self._key(key), data)
            else:
                await self._client.set(self._key(key), data, px=milliseconds(ttl))

    async def delete(self, key: str) -> None:
        """Remove ``key`` (no error when absent).

        With leases on (``lease_ttl``), a tombstone takes the value's place for ``lease_ttl``:
        it reads as absent everywhere, and a fetch that read the key before this delete cannot
        store its value over it (:meth:`set_leased`).
        """
        await self._keyspace.ready()
        with self._driver_errors("delete"):
            await self._remove([self._key(key)])

    async def _remove(self, raw_keys: Sequence[bytes]) -> None:
        """Delete keys: tombstones with leases on, a plain UNLINK without."""
        if self._lease_px is None:
            await self._keyspace.unlink(raw_keys)
        elif len(raw_keys) == 1:
            # One key needs no pipeline, even on a cluster.
            await self._tombstone_script(keys=raw_keys, args=self._tombstone_args())
        else:
            await self._keyspace.each_key(self._tombstone_script, raw_keys, self._tombstone_args())

    def _tombstone_args(self) -> list[Any]:
        """The tombstone script's arguments: the lifetime, and a fresh random nonce, which
        makes the call's tombstones bytes no earlier read saw (see LEASE_TOMBSTONE)."""
        return [self._lease_px, os.urandom(8).hex()]

    async def _tombstone_joined(self, keys: Sequence[str]) -> None:
        """Tombstones for ``keys`` on a single server, in batches of 500, each batch's Redis
        keys sent as one newline-joined argument: redis-py packs every argument on its own,
        which cost about as much client time as the rest of a bulk delete. A cache key never
        holds a newline; a batch with one (a key not validated by a stack) goes as KEYS."""
        prefix = self.prefix

        async def send(batch: Sequence[str]) -> None:
            joined = (prefix + ("\n" + prefix).join(batch)).encode("utf-8", "surrogatepass")
            if joined.count(b"\n") != len(batch) - 1 or (not prefix and "" in batch):
                await self._remove([self._key(k) for k in batch])
            else:
                await self._tombstone_script(keys=[], args=[*self._tombstone_args(), joined])

        # Two batches in flight (the asyncio twin): the server always has the next one.
        await in_flight(
            (keys[start : start + UNLINK_BATCH] for start in range(0, len(keys), UNLINK_BATCH)),
            send,
        )

    async def clear(self) -> None:
        """Remove every key under this layer's prefix (SCAN + UNLINK in batches).

        With leases on, the all-fence is written first (and waited for): a fetch that read any
        key before it cannot store afterwards, and a store that slipped in before it is seen by
        the scan. The fences themselves stay.

        Raises:
            ValueError: If the prefix is empty and ``allow_unprefixed_clear`` is false.
            CacheLayerError: If Redis fails.
        """
        await self._keyspace.ready()
        if not self.prefix and not self.allow_unprefixed_clear:
            raise ValueError(
                "RedisLayer.clear() with an empty prefix would delete every key of the "
                "database; pass allow_unprefixed_clear=True to allow it"
            )
        with self._driver_errors("clear"):
            if self._lease_px is not None:
                await self._write_fences([self._fence_all])
            async for batch in self._keyspace.batches(
                prefix_match(self.prefix), self._is_cache_key
            ):
                await self._keyspace.unlink(batch)

    # -- optional methods --------------------------------------------------------------------

    async def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        """Entries for ``keys`` in the same order (``None`` for misses), in one round trip.

        Raises:
            CacheLayerError: If Redis fails.
        """
        await self._keyspace.ready()
        if not keys:
            return []
        raw_keys = [self._key(k) for k in keys]
        with self._driver_errors("get_many"):
            if self._is_cluster:
                # Keys of different slots cannot share one MGET: the cluster client splits it.
                values = await self._client.mget_nonatomic(raw_keys)  # type: ignore[union-attr]
            else:
                values = await self._read_many(raw_keys)
        return [
            None if raw is None else self._entries.decode(key, raw, "get_many")
            for key, raw in zip(keys, values, strict=True)
        ]

    async def get_batch(self, keys: Sequence[str]) -> list[Entry | None]:
        """The reads of several concurrent :meth:`get` calls, in one round trip (what the
        stack's read batching sends): like :meth:`get_many`, but a failure, or an unreadable
        value, is reported as operation ``"get"``, as each caller's own read would be.

        Raises:
            CacheLayerError: ``(name, "get")`` if Redis cannot be reached or fails.
        """
        if self._keyspace.pending:
            await self._keyspace.ready()
        decode = self._entries.decode
        return [
            None if raw is None else decode(key, raw, "get")
            for key, raw in zip(keys, await self._read_raw(keys), strict=True)
        ]

    async def get_leased_batch(self, keys: Sequence[str]) -> list[tuple[Entry | None, Lease]]:
        """The reads of several concurrent :meth:`get_leased` calls, in one round trip.

        One lease time, taken before the bulk read is sent, serves every key: like each
        single read's, it is a lower bound of the server clock when the read runs.

        Raises:
            CacheLayerError: ``(name, "get")`` if Redis cannot be reached or fails.
        """
        if self._keyspace.pending:
            await self._keyspace.ready()
        read_at = self._clock.read_at() if self._lease_ttl_us is not None else 0
        if read_at is None:
            read_at = await self._measure_clock("get")
        decode = self._entries.decode
        return [
            (None, Lease(read_at, None))
            if raw is None
            else (decode(key, raw, "get"), Lease(read_at, raw))
            for key, raw in zip(keys, await self._read_raw(keys), strict=True)
        ]

    async def _read_raw(self, keys: Sequence[str]) -> list[Any]:
        """The stored bytes (or ``None``) of ``keys``: one ``MGET`` on a server; on a cluster
        one ``MGET`` per slot, sent as one pipeline per node by the cluster client. Failures
        are reported as operation ``"get"``."""
        raw_keys = [self._key(k) for k in keys]
        try:
            if self._is_cluster:
                return list(await self._client.mget_nonatomic(raw_keys))  # type: ignore[union-attr]
            return list(await self._read_many(raw_keys))
        except Exception as exc:
            if isinstance(exc, CacheLayerError):
                raise
            raise self._driver_errors.error("get", exc) from exc

    async def set_batch(self, items: Sequence[LayerItem]) -> list[Exception | None]:
        """The stores of several concurrent :meth:`set` calls, in one pipeline (not a
        transaction; on a cluster one per node): one outcome per item, ``None`` when stored,
        else the exception that item's own :meth:`set` would have raised (a value that
        cannot be serialized fails its own item only, as does an error reply to its
        command). Items are applied in order.

        Raises:
            CacheLayerError: ``(name, "set")`` if Redis cannot be reached or fails as a whole.
        """
        await self._keyspace.ready()
        outcomes: list[Exception | None] = [None] * len(items)
        sent: list[int] = []
        pipe = self._client.pipeline(transaction=False)
        for position, (key, entry, ttl) in enumerate(items):
            raw_key = self._key(key)
            if ttl is not None and ttl <= 0:
                pipe.execute_command("UNLINK", raw_key)
                sent.append(position)
                continue
            try:
                data = self._entries.encode(entry, "set")
                expiry = () if ttl is None else ("PX", milliseconds(ttl))
            except Exception as exc:  # this item's own failure (UnserializableValueError)
                outcomes[position] = exc
                continue
            pipe.execute_command("SET", raw_key, data, *expiry)
            sent.append(position)
        if not sent:
            return outcomes
        with self._driver_errors("set"):
            replies = await pipe.execute(raise_on_error=False)
        for position, reply in zip(sent, replies, strict=True):
            if isinstance(reply, Exception):
                failure = self._driver_errors.error("set", reply)
                failure.__cause__ = reply
                outcomes[position] = failure
        return outcomes

    async def set_many(self, items: Sequence[LayerItem]) -> None:
        """Store several entries in one pipeline (not a transaction).

        Raises:
            CacheLayerError: If Redis fails.
            TypeError: If a value cannot be serialized.
        """
        await self._keyspace.ready()
        if not items:
            return
        encoded = [
            (
                self._key(key),
                None if ttl is not None and ttl <= 0 else self._entries.encode(entry, "set_many"),
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
                    pipe.execute_command("SET", raw_key, data, "PX", milliseconds(ttl))
            await pipe.execute()

    async def delete_many(self, keys: Sequence[str]) -> None:
        """Remove ``keys`` in batches of 500 (tombstones with leases on, as :meth:`delete`;
        else UNLINK)."""
        await self._keyspace.ready()
        with self._driver_errors("delete_many"):
            if self._lease_px is not None and not self._is_cluster:
                await self._tombstone_joined(keys)
                return
            for start in range(0, len(keys), UNLINK_BATCH):
                await self._remove([self._key(k) for k in keys[start : start + UNLINK_BATCH]])

    async def purge_many(self, keys: Sequence[str]) -> None:
        """Remove ``keys`` for good (UNLINK in batches of 500, never a tombstone): for keys
        nobody reads or fetches any more, such as a retired generation's. A tombstone would
        only hold memory for ``lease_ttl``."""
        await self._keyspace.ready()
        with self._driver_errors("purge_many"):
            for start in range(0, len(keys), UNLINK_BATCH):
                await self._keyspace.unlink(
                    [self._key(k) for k in keys[start : start + UNLINK_BATCH]]
                )

    async def delete_matching(self, pattern: str) -> int:
        """Remove every key of this layer matching the glob ``pattern``; return how many.

        Keys are streamed from SCAN and deleted in batches, never all held in memory. Each
        candidate is checked against the pattern on this side, so Redis's byte-wise matching
        never decides what gets deleted. With leases on, the all-fence is written first, as
        :meth:`clear` does. Tombstones removed on the way are not counted.

        Raises:
            ValueError: If ``pattern`` is not a valid pattern.
            CacheLayerError: If Redis fails.
        """
        await self._keyspace.ready()
        validate_pattern(pattern)
        deleted = 0
        with self._driver_errors("delete_matching"):
            if self._lease_px is not None:
                await self._write_fences([self._fence_all])

            def matches(raw: bytes) -> bool:
                key = strip_prefix(self._prefix_bytes, raw)
                return (
                    key is not None
                    and not key.startswith(INTERNAL_MARK)
                    and glob_match(pattern, key)
                )

            async for batch in self._keyspace.batches(scan_match(self.prefix, pattern), matches):
                deleted += await self._keyspace.unlink_live(batch)
        return deleted

    async def keys(self, pattern: str | None = None, limit: int | None = None) -> list[str]:
        """Keys of this layer (without the prefix), optionally filtered by a glob.

        Args:
            pattern: Glob the keys must match; ``None`` for every key.
            limit: Stop after this many keys; ``None`` for no limit.

        Raises:
            ValueError: On an invalid pattern or a negative limit.
            CacheLayerError: If Redis fails.
        """
        await self._keyspace.ready()
        if pattern is not None:
            validate_pattern(pattern)
        if limit is not None and (isinstance(limit, bool) or limit < 0):
            raise ValueError(f"limit must be None or >= 0, got {limit!r}")
        if limit == 0:
            return []
        match = prefix_match(self.prefix) if pattern is None else scan_match(self.prefix, pattern)
        # SCAN may return a key twice while Redis resizes its table; the dict drops repeats.
        found: dict[str, None] = {}
        # Candidates are checked for tombstones in batches (one script or pipeline each).
        batch: dict[bytes, str] = {}
        with self._driver_errors("keys"):
            async for raw in self._keyspace.scan(match):
                key = strip_prefix(self._prefix_bytes, raw)
                if (
                    key is None
                    or key.startswith(INTERNAL_MARK)
                    or (pattern is not None and not glob_match(pattern, key))
                    or key in found
                ):
                    continue
                batch[raw] = key
                wanted = SCAN_COUNT if limit is None else min(SCAN_COUNT, limit - len(found))
                if len(batch) >= wanted:
                    await self._keep_live(batch, found)
                    batch = {}
                    if limit is not None and len(found) >= limit:
                        break
            await self._keep_live(batch, found)
        return list(found)[:limit]

    async def _keep_live(self, batch: dict[bytes, str], found: dict[str, None]) -> None:
        for key, live in zip(batch.values(), await self._keyspace.live(list(batch)), strict=True):
            if live:
                found[key] = None

    async def has(self, key: str) -> bool:
        """Whether a value is stored under ``key`` (its content is not checked; a tombstone
        is not a value)."""
        await self._keyspace.ready()
        with self._driver_errors("has"):
            return int(await self._peek_script(keys=[self._key(key)])) != -2

    async def ttl(self, key: str) -> float | None:
        """Remaining storage lifetime of ``key`` in seconds; ``None`` if absent or unexpiring."""
        await self._keyspace.ready()
        with self._driver_errors("ttl"):
            remaining = int(await self._peek_script(keys=[self._key(key)]))
        # PTTL: -2 absent (or a tombstone), -1 no expiry.
        return remaining / 1000 if remaining >= 0 else None

    async def size(self) -> int:
        """Number of keys under the prefix (a SCAN; approximate while keys change)."""
        await self._keyspace.ready()
        count = 0
        match = prefix_match(self.prefix)
        with self._driver_errors("size"):
            async for batch in self._keyspace.batches(match, self._is_cache_key, SCAN_COUNT):
                count += sum(await self._keyspace.live(batch))
        return count

    # -- leases (conditional stores) ---------------------------------------------------------

    async def get_leased(self, key: str) -> tuple[Entry | None, Lease]:
        """:meth:`get`, plus the :class:`Lease` a later :meth:`set_leased` of ``key`` needs.

        The lease's time is computed locally before the GET is sent (a lower bound of the
        server clock when the GET runs), so this costs a plain GET, a clock read and a tuple;
        once every 10 s a caller waits for one TIME command that measures the clock again.
        Failures and unreadable values are reported as operation ``"get"``: it is one.

        Raises:
            CacheLayerError: If Redis cannot be reached or fails.
        """
        if self._keyspace.pending:
            await self._keyspace.ready()
        read_at = self._clock.read_at() if self._lease_ttl_us is not None else 0
        if read_at is None:
            read_at = await self._measure_clock("get")
        # Bytes (the client is checked for decode_responses=False) or None.
        raw: Any
        try:
            raw = await self._read_one(self._key(key))
        except Exception as exc:
            if isinstance(exc, CacheLayerError):
                raise
            raise self._driver_errors.error("get", exc) from exc
        if raw is None:
            return None, Lease(read_at, None)
        return self._entries.decode(key, raw, "get"), Lease(read_at, raw)

    async def lease(self, key: str) -> Lease:
        """The :class:`Lease` of ``key`` for a fetch that read nothing before (a background
        refresh): what :meth:`get_leased` observes, without decoding it. With leases off
        (``lease_ttl=None``) no command is sent.

        Raises:
            CacheLayerError: If Redis cannot be reached or fails.
        """
        if self._lease_ttl_us is None:
            return Lease(0, None)
        await self._keyspace.ready()
        read_at = self._clock.read_at()
        if read_at is None:
            read_at = await self._measure_clock("lease")
        raw: Any
        with self._driver_errors("lease"):
            raw = await self._read_one(self._key(key))
        return Lease(read_at, raw)

    async def set_leased(
        self, key: str, entry: Entry, ttl: float | None, lease: Lease, tags: Sequence[str]
    ) -> bool:
        """Store ``entry`` for ``ttl`` seconds only if nothing changed ``key`` since ``lease``.

        Stored when, checked atomically in Redis: the lease is younger than ``lease_ttl``
        (server clock); the key is absent or holds exactly the bytes the lease observed (a
        delete's tombstone or another write differs); and neither the all-fence (``clear``,
        ``delete_matching``) nor the fence of any of ``tags`` (:meth:`fence_tags`) is as new as
        the lease. On a cluster the fences live in other slots: the value is stored first,
        then the fences are read, and a store a fence refuses is taken back (removed unless
        something replaced it meanwhile). Every invalidation writes its fence before it looks
        for keys, so either it finds the stored value or the fence read finds the fence.

        Args:
            key: The cache key.
            entry: The fetched entry.
            ttl: Storage lifetime in seconds, ``None`` for none; ``<= 0`` stores nothing.
            lease: From :meth:`get_leased` or :meth:`lease` of the same key on this layer.
            tags: The entry's tags (their fences are checked).

        Returns:
            ``True`` when stored (or nothing was to be stored), ``False`` when refused. With
            leases off (``lease_ttl=None``) a plain store, always ``True``.

        Raises:
            CacheLayerError: If Redis fails.
            TypeError: If the value cannot be serialized.
        """
        await self._keyspace.ready()
        if ttl is not None and ttl <= 0:
            return True
        data = self._entries.encode(entry, "set_leased")
        raw_key = self._key(key)
        if self._lease_ttl_us is None:
            with self._driver_errors("set_leased"):
                if ttl is None:
                    await self._client.set(raw_key, data)
                else:
                    await self._client.set(raw_key, data, px=milliseconds(ttl))
            return True
        observed = "" if lease.observed is None else hashlib.sha1(lease.observed).hexdigest()
        px = "" if ttl is None else str(milliseconds(ttl))
        args: list[bytes | str | int] = [lease.read_at, self._lease_ttl_us, observed, data, px]
        fences = [self._fence_all, *(self._tag_fence(t) for t in dict.fromkeys(tags))]
        with self._driver_errors("set_leased"):
            if not self._is_cluster:
                return await self._store_leased([raw_key, *fences], args) == 1
            if await self._store_leased([raw_key], args) != 1:
                return False
            try:
                values = await self._client.mget_nonatomic(fences)  # type: ignore[union-attr]
            except BaseException:
                # Unchecked: take the store back rather than risk keeping a stale value.
                await self._undo_quietly(raw_key, data)
                raise
            if not any(fence_at_or_after(value, lease.read_at) for value in values):
                return True
            await self._undo_script(keys=[raw_key], args=[hashlib.sha1(data).hexdigest()])
            return False

    async def _store_leased(self, keys: Sequence[bytes], args: Sequence[Any]) -> int:
        # The store of every fetch: a bare EVALSHA (see KeySpace.evalsha).
        return int(await self._keyspace.evalsha(LEASE_SET, _LEASE_SET_SHA, keys, args))

    async def set_leased_batch(self, items: Sequence[LeasedItem]) -> list[bool | Exception]:
        """The stores of several concurrent :meth:`set_leased` calls (what the stack's write
        batching sends), each checked as its own: one pipeline of the store script (not a
        transaction; on a cluster one per node). One outcome per item: ``True`` stored (or
        nothing to store), ``False`` refused, or the exception that item's own
        :meth:`set_leased` would have raised (a value that cannot be serialized, an error
        reply to its command). Items are applied in order.

        On a cluster, as for one store, the values go first and the fences after: one read
        of every fence the stored items name (one ``MGET`` per slot, pipelined per node);
        each store a fence refuses is taken back (removed unless something replaced it),
        and that item is ``False``. If that read fails, every stored item is taken back and
        fails.

        Raises:
            CacheLayerError: ``(name, "set_leased")`` if Redis cannot be reached or fails as
                a whole.
        """
        await self._keyspace.ready()
        outcomes: list[bool | Exception] = [True] * len(items)
        leases_on = self._lease_ttl_us is not None
        fence_all = self._fence_all
        cluster = self._is_cluster
        # Per store sent: its position, key, bytes, and the read time and fences to check.
        sent: list[tuple[int, bytes, bytes, int, list[bytes]]] = []
        commands: list[tuple[Any, ...]] = []
        for position, (key, entry, ttl, lease, tags) in enumerate(items):
            if ttl is not None and ttl <= 0:
                continue
            try:
                data = self._entries.encode(entry, "set_leased")
            except Exception as exc:  # this item's own failure (UnserializableValueError)
                outcomes[position] = exc
                continue
            raw_key = self._key(key)
            px = None if ttl is None else milliseconds(ttl)
            if not leases_on:
                expiry = () if px is None else ("PX", px)
                commands.append(("SET", raw_key, data, *expiry))
                sent.append((position, raw_key, data, 0, []))
                continue
            observed = "" if lease.observed is None else hashlib.sha1(lease.observed).hexdigest()
            args = (lease.read_at, self._lease_ttl_us, observed, data, "" if px is None else px)
            fences = [fence_all, *(self._tag_fence(t) for t in dict.fromkeys(tags))]
            keys = (raw_key,) if cluster else (raw_key, *fences)
            commands.append(("EVALSHA", _LEASE_SET_SHA, len(keys), *keys, *args))
            sent.append((position, raw_key, data, lease.read_at, fences))
        if not sent:
            return outcomes
        with self._driver_errors("set_leased"):
            replies = await self._pipelined(commands, LEASE_SET)
        stored: list[tuple[int, bytes, bytes, int, list[bytes]]] = []
        for store, reply in zip(sent, replies, strict=True):
            position = store[0]
            if isinstance(reply, Exception):
                failure = self._driver_errors.error("set_leased", reply)
                failure.__cause__ = reply
                outcomes[position] = failure
            elif leases_on:
                outcomes[position] = int(reply) == 1
                if cluster and int(reply) == 1:
                    stored.append(store)
        if stored:
            await self._check_fences(stored, outcomes)
        return outcomes

    async def _pipelined(self, commands: list[tuple[Any, ...]], script: str) -> list[Any]:
        """``commands`` in one pipeline (``raise_on_error=False``: an error reply is that
        command's result); those whose node lost ``script`` (``EVALSHA`` refused after a
        restart or ``SCRIPT FLUSH``) are sent again once it is loaded."""
        replies: list[Any] = [None] * len(commands)
        pending = list(range(len(commands)))
        for attempt in range(2):
            pipe = self._client.pipeline(transaction=False)
            for i in pending:
                pipe.execute_command(*commands[i])
            results = await pipe.execute(raise_on_error=False)
            missing: list[int] = []
            for i, result in zip(pending, results, strict=True):
                if attempt == 0 and isinstance(result, NoScriptError):
                    missing.append(i)
                else:
                    replies[i] = result
            if not missing:
                break
            # SCRIPT LOAD goes to every primary of a cluster client.
            await self._client.script_load(script)
            pending = missing
        return replies

    async def _check_fences(
        self,
        stored: list[tuple[int, bytes, bytes, int, list[bytes]]],
        outcomes: list[bool | Exception],
    ) -> None:
        """The cluster's second step of :meth:`set_leased_batch`: read the fences of the
        stored items (each at most once) and take back the stores they refuse."""
        names = list(dict.fromkeys(fence for store in stored for fence in store[4]))
        try:
            values = await self._client.mget_nonatomic(names)  # type: ignore[union-attr]
        except BaseException as exc:
            # Unchecked: take the stores back rather than risk keeping stale values.
            undo = [(store[1], store[2]) for store in stored]
            try:
                await self._undo_many(undo)
            except Exception:
                logger.warning("%s: could not take back %d unchecked stores", self.name, len(undo))
            if not isinstance(exc, Exception):
                raise
            for store in stored:
                failure = self._driver_errors.error("set_leased", exc)
                failure.__cause__ = exc
                outcomes[store[0]] = failure
            return
        fence_at = dict(zip(names, values, strict=True))
        refused = [
            store
            for store in stored
            if any(fence_at_or_after(fence_at[fence], store[3]) for fence in store[4])
        ]
        if not refused:
            return
        for store in refused:
            outcomes[store[0]] = False
        try:
            await self._undo_many([(store[1], store[2]) for store in refused])
        except Exception as exc:
            # As one store's: a refused store that could not be taken back fails.
            for store in refused:
                failure = self._driver_errors.error("set_leased", exc)
                failure.__cause__ = exc
                outcomes[store[0]] = failure

    async def _undo_many(self, stores: list[tuple[bytes, bytes]]) -> None:
        """Take back stores (key, stored bytes): one pipeline of the undo script."""
        sha = self._undo_script.sha
        commands = [
            ("EVALSHA", sha, 1, raw_key, hashlib.sha1(data).hexdigest()) for raw_key, data in stores
        ]
        for reply in await self._pipelined(commands, LEASE_UNDO):
            if isinstance(reply, Exception):
                raise reply

    async def _undo_quietly(self, raw_key: bytes, data: bytes) -> None:
        try:
            await self._undo_script(keys=[raw_key], args=[hashlib.sha1(data).hexdigest()])
        except Exception:
            logger.warning("%s: could not take back an unchecked store of %r", self.name, raw_key)

    # -- optimistic updates (read, change, compare-and-set) --------------------------------------

    async def get_with_token(self, key: str) -> tuple[Entry, CasToken] | None:
        """The entry under ``key`` and a :class:`CasToken` for :meth:`compare_and_set` of it.

        One GET, read and decoded as :meth:`get` does: ``None`` when the key is absent, deleted
        (a tombstone) or unreadable (then reported to the error handler as operation
        ``"get_with_token"``). The entry is returned whether or not it is still fresh: the
        caller decides (``entry.is_fresh(now)``).

        Raises:
            CacheLayerError: If Redis cannot be reached or fails.
        """
        await self._keyspace.ready()
        raw: Any
        with self._driver_errors("get_with_token"):
            raw = await self._read_one(self._key(key))
        if raw is None:
            return None
        entry = self._entries.decode(key, raw, "get_with_token")
        return None if entry is None else (entry, CasToken(raw))

    async def compare_and_set(self, key: str, token: CasToken, entry: Entry) -> bool:
        """Replace the value of ``key`` with ``entry`` only if ``key`` still holds exactly what
        the :meth:`get_with_token` that returned ``token`` read; atomic in Redis (one script).

        The key keeps its remaining storage lifetime (``PTTL``; none stays none). An optimistic
        update, such as a counter's increment, loops: ``get_with_token``, compute the new entry,
        ``compare_and_set``, and on ``False`` read again (with a short random backoff under
        contention). A replaced value is a change like any other write: a fetch that read the
        key before cannot store over it (:meth:`set_leased`).

        Returns:
            ``True`` when replaced; ``False`` when the key changed, was deleted or expired
            since that read (nothing was written).

        Raises:
            CacheLayerError: If Redis cannot be reached or fails.
            TypeError: If the value cannot be serialized (``UnserializableValueError``).
        """
        await self._keyspace.ready()
        data = self._entries.encode(entry, "compare_and_set")
        with self._driver_errors("compare_and_set"):
            replaced = await self._cas_script(keys=[self._key(key)], args=[token.observed, data])
        return int(replaced) == 1

    async def fence_tags(self, tags: Sequence[str]) -> None:
        """Refuse the stores of every fetch of a key with one of ``tags`` that read before
        now (the fence lives ``lease_ttl``). Call it before looking up the tags' keys. No-op
        with leases off.

        Raises:
            ValueError: If ``tags`` is a single str.
            CacheLayerError: If Redis fails.
        """
        if isinstance(tags, str):
            raise ValueError("tags must be a sequence of str, not a single str")
        if self._lease_px is None or not tags:
            return
        await self._keyspace.ready()
        with self._driver_errors("fence_tags"):
            await self._write_fences([self._tag_fence(t) for t in dict.fromkeys(tags)])

    async def ping(self) -> bool:
        """``True`` when Redis answers.

        Raises:
            CacheLayerError: If it does not.
        """
        await self._keyspace.ready()
        with self._driver_errors("ping"):
            await self._client.ping()
        return True

    def set_error_handler(self, handler: ErrorHandler | None) -> None:
        """Call ``handler(exc, context)`` when stored bytes are unreadable (they read as a miss).

        ``context`` holds ``layer``, ``key`` and ``operation``. Without a handler the layer
        logs a warning.
        """
        self._entries.error_handler.own = handler

    def add_error_handler(self, handler: ErrorHandler) -> Callable[[], None]:
        """Also call ``handler(exc, context)`` when stored bytes are unreadable (beside the
        handler set with :meth:`set_error_handler`); returns the function that removes it.
        Each stack using this layer adds its own, so a layer may serve several stacks."""
        return self._entries.error_handler.add(handler)

    async def aclose(self) -> None:
        """Close the client if this layer created it (from ``url``)."""
        if self._owns_client:
            with self._driver_errors("aclose"):
                await self._client.aclose()
