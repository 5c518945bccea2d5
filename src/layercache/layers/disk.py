"""The persistent disk layer: one SQLite database (stdlib ``sqlite3``) in a directory.

SQLite was chosen over one file per key by measurement (``bench/disk_storage.py``, numbers in
``docs/disk-layer.md``): 3-4x faster reads, faster writes, and a startup that does not scan the
directory. Its transactions also give atomic writes and crash safety for free.

Layout: one table ``entries(key, value, expires_at, size, last_access)``, an index on
``last_access`` (eviction order) and a partial index on ``expires_at`` (purging). A ``totals``
row kept by triggers holds the entry count and byte total, so checking the bounds is O(1) and
stays right when several processes share the directory. ``last_access`` is a sequence number,
not a time: a fake or coarse clock can never make eviction order ambiguous.

The methods are plain and blocking (``is_blocking = True``): the async stack runs them in a
worker thread, the sync stack calls them directly. One lock serialises use of the single
connection, so the layer is safe to share across threads.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import closing, suppress
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

from .._codec import CorruptEntryError, EntryCodec
from .._entry import Entry
from .._exceptions import CacheLayerError
from .._glob import compile_glob, glob_literal_prefix
from .._types import ErrorHandler
from ..serializers import Serializer

__all__ = ["DATABASE_NAME", "DiskLayer"]

logger = logging.getLogger("layercache.disk")

DATABASE_NAME = "layercache.sqlite3"
"""File name of the database inside the layer's directory."""

_SCHEMA_VERSION = 1
# SQLite result codes (primary code = low byte of the extended code) that mean the file is
# damaged or is not a database at all; every other error is a backend failure, not corruption.
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
_CORRUPTION_TEXT = ("malformed", "not a database", "file is encrypted")
# Host parameters per statement stay far below SQLite's historical limit of 999.
_CHUNK = 500
# Reads record recency in memory and it is written with the next write transaction (eviction
# only happens on writes, so that is exactly when it is needed). A read-only burst flushes it
# once this many keys are pending, keeping the buffer bounded.
_MAX_PENDING_TOUCHES = 1024
# Expired rows are purged at most this often (clock seconds), at most _PURGE_BATCH per write,
# so one write never pays for a whole backlog.
_PURGE_INTERVAL = 60.0
_PURGE_BATCH = 1000
# Evicting one row per write costs a B-tree rebalance and fresh WAL pages on every commit;
# evicting ~1% of the bound at once amortises it (measured: 12k -> 19k sets/s at the bound).
_EVICT_SLACK_MAX = 256

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS entries (
        key TEXT PRIMARY KEY NOT NULL,
        value BLOB NOT NULL,
        expires_at REAL,
        size INTEGER NOT NULL,
        last_access INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS entries_last_access ON entries (last_access)",
    """CREATE INDEX IF NOT EXISTS entries_expires_at ON entries (expires_at)
        WHERE expires_at IS NOT NULL""",
    """CREATE TABLE IF NOT EXISTS totals (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        count INTEGER NOT NULL,
        bytes INTEGER NOT NULL
    )""",
    "INSERT OR IGNORE INTO totals (id, count, bytes) VALUES (0, 0, 0)",
    """CREATE TRIGGER IF NOT EXISTS entries_insert AFTER INSERT ON entries BEGIN
        UPDATE totals SET count = count + 1, bytes = bytes + NEW.size WHERE id = 0;
    END""",
    """CREATE TRIGGER IF NOT EXISTS entries_delete AFTER DELETE ON entries BEGIN
        UPDATE totals SET count = count - 1, bytes = bytes - OLD.size WHERE id = 0;
    END""",
    """CREATE TRIGGER IF NOT EXISTS entries_resize AFTER UPDATE OF size ON entries BEGIN
        UPDATE totals SET bytes = bytes + NEW.size - OLD.size WHERE id = 0;
    END""",
    f"PRAGMA user_version = {_SCHEMA_VERSION}",
)

_UPSERT = (
    "INSERT INTO entries (key, value, expires_at, size, last_access) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
    " expires_at = excluded.expires_at, size = excluded.size,"
    " last_access = excluded.last_access"
)

T = TypeVar("T")
_Row: TypeAlias = "tuple[str, bytes, float | None, int]"
"""An encoded item ready to write: key, value bytes, expires_at, size."""
_Removal: TypeAlias = "tuple[str]"
"""A key to delete in the same transaction (an item that must not be stored)."""


class _ForeignStoreError(sqlite3.DatabaseError):
    """The file is a database, but not one this layer wrote (unknown schema or version)."""


def _rows(cursor: sqlite3.Cursor, batch: int = 256) -> Iterator[Any]:
    """Rows of ``cursor`` fetched in batches (memory stays bounded on big scans)."""
    while True:
        rows = cursor.fetchmany(batch)
        if not rows:
            return
        yield from rows


def _is_corruption(exc: sqlite3.Error) -> bool:
    if isinstance(exc, _ForeignStoreError):
        return True
    if not isinstance(exc, sqlite3.DatabaseError) or isinstance(
        exc, sqlite3.OperationalError | sqlite3.IntegrityError | sqlite3.ProgrammingError
    ):
        # Locked, busy, I/O, read-only and disk-full errors are OperationalError: the store
        # may be fine, so they must surface as failures instead of wiping the cache.
        return False
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if isinstance(code, int):
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(exc).lower()
    return any(fragment in text for fragment in _CORRUPTION_TEXT)


# Connections must not be used across fork(): a child would share the parent's file offsets
# and locks. After a fork, every live layer drops its connection in the child (without
# closing it: closing could checkpoint and delete the parent's WAL) and reopens lazily.
_LIVE_LAYERS: weakref.WeakSet[DiskLayer] = weakref.WeakSet()
_ABANDONED: list[sqlite3.Connection] = []


def _after_fork_in_child() -> None:
    for layer in list(_LIVE_LAYERS):
        layer._forget_connection_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class DiskLayer:
    """A persistent, bounded layer stored in one SQLite database under ``directory``.

    Values survive process restarts; every write is one atomic transaction. A stored entry
    that cannot be decoded reads as a miss, is reported to the error handler and removed; a
    database file that is damaged or foreign is moved aside to ``<name>.corrupt`` (replacing
    an older one), reported, and recreated empty. Bounds are enforced on every write from
    running totals, evicting the least recently used entries (expired ones first) in small
    batches, never by scanning the store.

    Args:
        directory: Directory holding the database; created (mode 0o700) if missing.
        ttl: Default lifetime in seconds of values stored here (``None``: no expiry).
        max_files: Most entries kept.
        max_bytes: Optional bound on the stored bytes (encoded values plus keys).
        name: Layer name used in per-layer options, metrics and events.
        serializer: Serializer of the values (default: JSON); see :mod:`layercache.serializers`.
        compression: ``"gzip"``, ``"brotli"``, ``"zstd"`` or ``None``.
        compression_threshold: Encoded values shorter than this are stored uncompressed.
        clock: Wall clock in seconds; inject a fake one in tests.
        busy_timeout: Seconds to wait for another process holding the database lock.
    """

    is_local = True
    is_blocking = True

    def __init__(
        self,
        directory: str | os.PathLike[str],
        ttl: float | None = None,
        max_files: int = 10_000,
        max_bytes: int | None = None,
        name: str = "disk",
        serializer: Serializer | None = None,
        compression: str | None = None,
        compression_threshold: int = 1024,
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 5.0,
    ) -> None:
        if ttl is not None and (not isinstance(ttl, int | float) or ttl < 0):
            raise ValueError(f"ttl must be a non-negative number of seconds or None, not {ttl!r}")
        if not isinstance(max_files, int) or isinstance(max_files, bool) or max_files < 1:
            raise ValueError(f"max_files must be a positive int, not {max_files!r}")
        if max_bytes is not None and (
            not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1
        ):
            raise ValueError(f"max_bytes must be a positive int or None, not {max_bytes!r}")
        if not isinstance(name, str) or not name:
            raise ValueError("name must be a non-empty str")
        if not isinstance(busy_timeout, int | float) or busy_timeout < 0:
            raise ValueError(f"busy_timeout must be a non-negative number, not {busy_timeout!r}")
        self.name = name
        self.default_ttl: float | None = ttl
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.directory = Path(directory)
        self.path = self.directory / DATABASE_NAME
        self.evictions = 0
        self._codec = EntryCodec(
            serializer=serializer,
            compression=compression,
            compression_threshold=compression_threshold,
        )
        self._clock = clock
        self._busy_timeout = float(busy_timeout)
        # Small bounds are kept exactly; large ones give up to 1% for batching.
        self._file_slack = min(_EVICT_SLACK_MAX, max_files // 100)
        self._byte_slack = max_bytes // 100 if max_bytes is not None else 0
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._touched: dict[str, None] = {}
        self._next_purge = 0.0
        self._error_handler: ErrorHandler | None = None
        self._reports: list[tuple[BaseException, dict[str, Any]]] = []
        # Fail on a bad directory now, not at the first cache call; the database itself opens
        # lazily so that damage found while opening reaches the stack's error handler.
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        _LIVE_LAYERS.add(self)

    # -- connection management --------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self._busy_timeout,
            isolation_level=None,  # explicit BEGIN IMMEDIATE / COMMIT only
            check_same_thread=False,  # guarded by self._lock
        )
        try:
            # auto_vacuum only takes effect on a new, empty file; it lets clear() give space
            # back without a full VACUUM.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("PRAGMA journal_mode = WAL").fetchone()
            # In WAL mode NORMAL never corrupts the database; a power cut may lose the last
            # commits, which a cache can afford in exchange for no fsync per write.
            conn.execute("PRAGMA synchronous = NORMAL")
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version == 0:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    # Another process may have created the schema while we waited.
                    (version,) = conn.execute("PRAGMA user_version").fetchone()
                    if version == 0:
                        tables = conn.execute(
                            "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
                        ).fetchone()[0]
                        if tables:
                            raise _ForeignStoreError("database holds tables of another program")
                        for statement in _SCHEMA:
                            conn.execute(statement)
                        version = _SCHEMA_VERSION
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            if version != _SCHEMA_VERSION:
                raise _ForeignStoreError(f"unknown schema version {version}")
            if conn.execute("SELECT count FROM totals WHERE id = 0").fetchone() is None:
                raise _ForeignStoreError("totals row missing")
        except BaseException:
            conn.close()
            raise
        return conn

    def _connection(self, operation: str) -> sqlite3.Connection:
        """The open connection (opening, and repairing a damaged file, on first use)."""
        if self._closed:
            raise CacheLayerError(self.name, operation, "the layer is closed")
        conn = self._conn
        if conn is not None:
            return conn
        try:
            try:
                conn = self._connect()
            except sqlite3.Error as exc:
                if not _is_corruption(exc):
                    raise
                self._move_aside(exc, operation)
                conn = self._connect()
        except sqlite3.Error as exc:
            raise CacheLayerError(self.name, operation) from exc
        self._conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(sqlite3.Error):  # closing a damaged database may fail; nothing to keep
                conn.close()

    def _move_aside(self, exc: BaseException, operation: str) -> None:
        """Replace a damaged or foreign database with a fresh one (caller holds the lock)."""
        self._drop_connection()
        self._touched.clear()
        aside = self.path.with_name(self.path.name + ".corrupt")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            pass
        except OSError:
            # Could not rename (e.g. a read-only aside): remove instead, never keep the damage.
            self.path.unlink(missing_ok=True)
        # The journal files belong to the damaged database; left in place they would be
        # replayed into the new one.
        for suffix in ("-wal", "-shm", "-journal"):
            self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
        logger.warning("disk layer %r: damaged database moved to %s: %r", self.name, aside, exc)
        self._reports.append(
            (
                exc,
                {
                    "layer": self.name,
                    "operation": operation,
                    "reason": "corrupt store",
                    "path": str(self.path),
                },
            )
        )

    def _forget_connection_after_fork(self) -> None:
        if self._conn is not None:
            _ABANDONED.append(self._conn)
        self._conn = None
        self._lock = threading.Lock()
        self._touched = {}

    def _run(self, operation: str, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` under the lock, translating errors and repairing a damaged store.

        The one place where ``sqlite3`` errors become :class:`CacheLayerError`. Corruption is
        repaired once (the database is recreated empty) and ``work`` retried: a read then
        misses and a write lands in the new database.
        """
        try:
            with self._lock:
                for attempt in range(2):
                    conn = self._connection(operation)
                    try:
                        return work(conn)
                    except sqlite3.Error as exc:
                        if conn.in_transaction:
                            with suppress(sqlite3.Error):
                                conn.execute("ROLLBACK")
                        if attempt == 0 and _is_corruption(exc):
                            self._move_aside(exc, operation)
                            continue
                        raise CacheLayerError(self.name, operation) from exc
                    except BaseException:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        raise
                raise AssertionError("unreachable")  # pragma: no cover
        finally:
            if self._reports:
                self._deliver_reports()

    def _deliver_reports(self) -> None:
        # Called without the lock held, so a handler may use the layer again.
        with self._lock:
            reports, self._reports = self._reports, []
        handler = self._error_handler
        for exc, context in reports:
            if handler is None:
                logger.warning("disk layer %r: %s: %r", self.name, context.get("reason"), exc)
                continue
            try:
                handler(exc, context)
            except Exception:  # a broken handler must not break a cache call
                logger.exception("disk layer %r: error handler failed", self.name)

    def _report_corrupt_entry(self, key: str, exc: BaseException, operation: str) -> None:
        self._reports.append(
            (
                exc,
                {"layer": self.name, "operation": operation, "key": key, "reason": "corrupt entry"},
            )
        )

    # -- write-transaction helpers (caller holds the lock and the connection) ---------------

    def _begin_write(self, conn: sqlite3.Connection) -> int:
        """Start a write transaction, flush pending read recency; return the top sequence."""
        conn.execute("BEGIN IMMEDIATE")
        # MAX over the index is O(log n) and, inside the write lock, safe across processes.
        (top,) = conn.execute("SELECT COALESCE(MAX(last_access), 0) FROM entries").fetchone()
        top = int(top)
        if self._touched:
            keys = list(self._touched)
            self._touched.clear()
            conn.executemany(
                "UPDATE entries SET last_access = ? WHERE key = ?",
                [(top + i, key) for i, key in enumerate(keys, 1)],
            )
            top += len(keys)
        return top

    def _purge_expired(self, conn: sqlite3.Connection, now: float, limit: int) -> int:
        cursor = conn.execute(
            "DELETE FROM entries WHERE rowid IN (SELECT rowid FROM entries"
            " WHERE expires_at IS NOT NULL AND expires_at <= ? LIMIT ?)",
            (now, limit),
        )
        return max(cursor.rowcount, 0)

    def _enforce_bounds(self, conn: sqlite3.Connection, now: float, newest: int) -> None:
        """Purge and evict until the bounds hold (rows newer than ``newest`` are kept last)."""
        if now >= self._next_purge:
            self._next_purge = now + _PURGE_INTERVAL
            self._purge_expired(conn, now, _PURGE_BATCH)
        count, total = conn.execute("SELECT count, bytes FROM totals WHERE id = 0").fetchone()
        max_bytes = self.max_bytes
        if count <= self.max_files and (max_bytes is None or total <= max_bytes):
            return
        # Expired rows go before live ones, whatever their recency.
        if self._purge_expired(conn, now, _PURGE_BATCH):
            count, total = conn.execute("SELECT count, bytes FROM totals WHERE id = 0").fetchone()
            if count <= self.max_files and (max_bytes is None or total <= max_bytes):
                return
        # Soft targets leave a little room so the next writes do not evict again; rows written
        # by this transaction are evicted only if the hard bound itself requires it.
        soft_count = self.max_files - self._file_slack if count > self.max_files else count
        soft_bytes = total
        if max_bytes is not None and total > max_bytes:
            soft_bytes = max_bytes - self._byte_slack
        victims: list[tuple[str]] = []
        cursor = conn.execute("SELECT key, size, last_access FROM entries ORDER BY last_access")
        with closing(cursor):
            for key, size, seq in _rows(cursor):
                over_hard = count > self.max_files or (max_bytes is not None and total > max_bytes)
                over_soft = seq <= newest and (count > soft_count or total > soft_bytes)
                if not (over_hard or over_soft):
                    break
                victims.append((key,))
                count -= 1
                total -= size
        conn.executemany("DELETE FROM entries WHERE key = ?", victims)
        self.evictions += len(victims)

    def _prepare(self, key: str, entry: Entry, ttl: float | None, now: float) -> _Row | None:
        """Encode one item (outside the lock); ``None`` means "remove the key instead"."""
        if ttl is not None:
            if ttl <= 0:
                return None
            entry = entry.clipped(now + ttl)
        elif entry.expires_at is not None and entry.expires_at <= now:
            return None
        blob = self._codec.encode(entry)
        size = len(key.encode()) + len(blob)
        if self.max_bytes is not None and size > self.max_bytes:
            # A single value larger than the whole bound is not cached here at all.
            return None
        return (key, blob, entry.expires_at, size)

    def _write(self, conn: sqlite3.Connection, rows: Sequence[_Row | _Removal], now: float) -> None:
        top = self._begin_write(conn)
        writes = []
        removals = []
        # The last item of a key wins, as if the items were applied in order.
        for row in {row[0]: row for row in rows}.values():
            if len(row) == 1:
                removals.append(row)
            else:
                top += 1
                writes.append((*row, top))
        if removals:
            conn.executemany("DELETE FROM entries WHERE key = ?", removals)
        if writes:
            conn.executemany(_UPSERT, writes)
            self._enforce_bounds(conn, now, top - len(writes))
        conn.execute("COMMIT")

    def _flush_touches(self, conn: sqlite3.Connection) -> None:
        self._begin_write(conn)
        conn.execute("COMMIT")

    def _touch(self, conn: sqlite3.Connection, key: str) -> None:
        touched = self._touched
        touched.pop(key, None)
        touched[key] = None
        if len(touched) >= _MAX_PENDING_TOUCHES:
            self._flush_touches(conn)

    def _decode(
        self, conn: sqlite3.Connection, key: str, row: Any, now: float, operation: str
    ) -> Entry | None:
        """Turn a ``(value, expires_at)`` row into an entry; drop expired or corrupt rows."""
        raw, expires_at = row
        if expires_at is not None and expires_at <= now:
            conn.execute(
                "DELETE FROM entries WHERE key = ? AND expires_at <= ?",
                (key, now),
            )
            return None
        try:
            if not isinstance(raw, bytes):
                raise CorruptEntryError(f"stored value is {type(raw).__name__}, not bytes")
            entry = self._codec.decode(raw)
        except CorruptEntryError as exc:
            # Compare the value so a concurrent rewrite of the key by another process is kept.
            conn.execute("DELETE FROM entries WHERE key = ? AND value = ?", (key, raw))
            self._report_corrupt_entry(key, exc, operation)
            return None
        self._touch(conn, key)
        return entry

    # -- the layer protocol -----------------------------------------------------------------

    def get(self, key: str) -> Entry | None:
        """Return the entry stored under ``key``, or ``None`` (missing, expired or corrupt)."""

        def work(conn: sqlite3.Connection) -> Entry | None:
            now = self._clock()
            row = conn.execute(
                "SELECT value, expires_at FROM entries WHERE key = ?", (key,)
            ).fetchone()
            if row is None:
                return None
            return self._decode(conn, key, row, now, "get")

        return self._run("get", work)

    def set(self, key: str, entry: Entry, ttl: float | None) -> None:
        """Store ``entry`` for at most ``ttl`` seconds (``None``: as long as the entry lives)."""
        now = self._clock()
        row: _Row | _Removal | None = self._prepare(key, entry, ttl, now)
        if row is None:
            row = (key,)
        rows = [row]
        self._run("set", lambda conn: self._write(conn, rows, now))

    def set_many(self, items: Sequence[tuple[str, Entry, float | None]]) -> None:
        """Store several ``(key, entry, ttl)`` items in one transaction."""
        now = self._clock()
        rows: list[_Row | _Removal] = []
        for key, entry, ttl in items:
            row = self._prepare(key, entry, ttl, now)
            rows.append((key,) if row is None else row)
        if rows:
            self._run("set_many", lambda conn: self._write(conn, rows, now))

    def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        """Entries for ``keys`` in order (``None`` for misses)."""
        keys = list(keys)
        if not keys:
            return []

        def work(conn: sqlite3.Connection) -> list[Entry | None]:
            now = self._clock()
            unique = list(dict.fromkeys(keys))
            found: dict[str, Entry | None] = {}
            for start in range(0, len(unique), _CHUNK):
                chunk = unique[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    f"SELECT key, value, expires_at FROM entries WHERE key IN ({marks})", chunk
                ).fetchall()
                for key, raw, expires_at in rows:
                    found[key] = self._decode(conn, key, (raw, expires_at), now, "get_many")
            return [found.get(key) for key in keys]

        return self._run("get_many", work)

    def delete(self, key: str) -> None:
        """Remove ``key`` if present."""
        self._run("delete", lambda conn: conn.execute("DELETE FROM entries WHERE key = ?", (key,)))

    def delete_many(self, keys: Iterable[str]) -> None:
        """Remove every key in ``keys`` (one transaction)."""
        rows = [(key,) for key in keys]
        if not rows:
            return

        def work(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("DELETE FROM entries WHERE key = ?", rows)
            conn.execute("COMMIT")

        self._run("delete_many", work)

    def clear(self) -> None:
        """Remove every entry (and give the freed pages back to the file system)."""

        def work(conn: sqlite3.Connection) -> None:
            self._touched.clear()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("DELETE FROM entries")
            conn.execute("COMMIT")
            conn.execute("PRAGMA incremental_vacuum").fetchall()

        self._run("clear", work)

    def _scan(
        self, conn: sqlite3.Connection, pattern: str | None
    ) -> Generator[tuple[str, float | None], None, None]:
        """Yield ``(key, expires_at)`` of keys matching ``pattern``, in key order.

        SQLite's GLOB has another syntax (``[!a]`` negation, no escapes), so SQL only narrows
        the scan to the pattern's literal prefix (a range of the primary-key index: UTF-8
        byte order equals code point order) and Python applies the real glob.
        """
        if pattern is None:
            cursor = conn.execute("SELECT key, expires_at FROM entries ORDER BY key")
            glob = None
            prefix = ""
        else:
            glob = compile_glob(pattern)
            prefix = glob_literal_prefix(pattern)
            cursor = conn.execute(
                "SELECT key, expires_at FROM entries WHERE key >= ? ORDER BY key", (prefix,)
            )
        with closing(cursor):
            for key, expires_at in _rows(cursor):
                if not key.startswith(prefix):
                    return
                if glob is None or glob.matches(key):
                    yield key, expires_at

    def keys(self, pattern: str | None = None, limit: int | None = None) -> list[str]:
        """Keys holding a live entry, optionally filtered by a glob, at most ``limit``."""
        if pattern is not None:
            compile_glob(pattern)  # validates: a bad pattern is a ValueError, not a layer error
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit must be a non-negative int or None, not {limit!r}")

        def work(conn: sqlite3.Connection) -> list[str]:
            now = self._clock()
            out: list[str] = []
            if limit == 0:
                return out
            # closing(): stopping at the limit must end the SELECT at once, or its open read
            # snapshot would hold back WAL checkpoints.
            with closing(self._scan(conn, pattern)) as matches:
                for key, expires_at in matches:
                    if expires_at is not None and expires_at <= now:
                        continue
                    out.append(key)
                    if limit is not None and len(out) >= limit:
                        break
            return out

        return self._run("keys", work)

    def delete_matching(self, pattern: str) -> int:
        """Remove every key matching the glob ``pattern``; return how many live keys went."""
        compile_glob(pattern)

        def work(conn: sqlite3.Connection) -> int:
            now = self._clock()
            conn.execute("BEGIN IMMEDIATE")
            matched = list(self._scan(conn, pattern))
            conn.executemany("DELETE FROM entries WHERE key = ?", [(k,) for k, _ in matched])
            conn.execute("COMMIT")
            if matched:
                conn.execute("PRAGMA incremental_vacuum").fetchall()
            return sum(1 for _, expires_at in matched if expires_at is None or expires_at > now)

        return self._run("delete_matching", work)

    def has(self, key: str) -> bool:
        """Whether a live entry is stored under ``key`` (its bytes are not decoded)."""

        def work(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT expires_at FROM entries WHERE key = ?", (key,)).fetchone()
            return row is not None and (row[0] is None or row[0] > self._clock())

        return self._run("has", work)

    def ttl(self, key: str) -> float | None:
        """Remaining storage lifetime of ``key`` in seconds (``None``: absent or no expiry)."""

        def work(conn: sqlite3.Connection) -> float | None:
            row = conn.execute("SELECT expires_at FROM entries WHERE key = ?", (key,)).fetchone()
            if row is None or row[0] is None:
                return None
            remaining = float(row[0]) - self._clock()
            return remaining if remaining > 0 else None

        return self._run("ttl", work)

    def size(self) -> int:
        """Number of live entries (O(1) total minus the not-yet-purged expired ones)."""

        def work(conn: sqlite3.Connection) -> int:
            (count,) = conn.execute("SELECT count FROM totals WHERE id = 0").fetchone()
            (expired,) = conn.execute(
                "SELECT count(*) FROM entries WHERE expires_at IS NOT NULL AND expires_at <= ?",
                (self._clock(),),
            ).fetchone()
            return int(count) - int(expired)

        return self._run("size", work)

    def stored_bytes(self) -> int:
        """Bytes counted against ``max_bytes`` (encoded values plus keys, expired included)."""
        return self._run(
            "stored_bytes",
            lambda conn: int(conn.execute("SELECT bytes FROM totals WHERE id = 0").fetchone()[0]),
        )

    def ping(self) -> bool:
        """``True`` when the database answers; raises :class:`CacheLayerError` otherwise."""
        return self._run(
            "ping", lambda conn: conn.execute("SELECT 1 FROM totals").fetchone() is not None
        )

    def set_error_handler(self, handler: ErrorHandler | None) -> None:
        """Register the callable told about corrupt entries and repaired databases."""
        self._error_handler = handler

    def close(self) -> None:
        """Persist pending recency and close the database (idempotent)."""
        with self._lock:
            if self._closed:
                return
            conn = self._conn
            if conn is not None and self._touched:
                try:
                    self._flush_touches(conn)
                except sqlite3.Error:  # recency is a hint; losing it is harmless
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
            self._drop_connection()
            self._closed = True
        _LIVE_LAYERS.discard(self)

    def __repr__(self) -> str:
        return (
            f"DiskLayer(directory={str(self.directory)!r}, name={self.name!r}, "
            f"ttl={self.default_ttl!r}, max_files={self.max_files}, max_bytes={self.max_bytes})"
        )
