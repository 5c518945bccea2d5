"""Choose the DiskLayer storage by measurement: one file per key vs. one SQLite database.

Both candidates are minimal but honest implementations of what the layer needs:

* ``files``: one file per key under ``ab/cdef...`` (SHA-256 of the key), written atomically with
  a temp file + ``os.replace`` (``--fsync`` adds ``os.fsync`` before the rename), and an
  in-memory recency index rebuilt by scanning the directory at startup (needed for bounds).
* ``sqlite``: the schema ``DiskLayer`` uses: one table (key, value, expires_at, size,
  last_access), an index on ``last_access`` for eviction and a partial one on ``expires_at``
  for purging, running totals kept by triggers, WAL mode, ``synchronous=NORMAL``.

Measured: set of 1 KiB values, get hit, get miss, a set at the ``max_files`` bound (each one
evicts), and startup with 10,000 entries (open + first read, which rebuilds the index for
``files``). Run::

    python bench/disk_storage.py [--entries 10000] [--fsync]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import os
import shutil
import sqlite3
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

VALUE = os.urandom(1024)
_HEADER = struct.Struct("<dI")  # expires_at (NaN: never), key length


class FileStore:
    """One file per key; recency kept in memory (rebuilt from mtimes at startup)."""

    def __init__(self, root: Path, max_files: int, fsync: bool) -> None:
        self.root = root
        self.max_files = max_files
        self.fsync = fsync
        self.index: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.bytes = 0
        self._counter = 0
        root.mkdir(parents=True, exist_ok=True)
        found: list[tuple[float, str, int]] = []
        for sub in os.scandir(root):
            if not sub.is_dir():
                continue
            for item in os.scandir(sub.path):
                if item.name.endswith(".tmp"):
                    continue
                # The key is inside the file: the name is only its hash.
                with open(item.path, "rb") as fh:
                    head = fh.read(_HEADER.size)
                    _, key_len = _HEADER.unpack(head)
                    key = fh.read(key_len).decode()
                st = item.stat()
                found.append((st.st_mtime, key, st.st_size))
        found.sort()
        for _, key, size in found:
            self.index[key] = size
            self.bytes += size

    def _path(self, key: str) -> Path:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.root / digest[:2] / digest[2:]

    def set(self, key: str, value: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(exist_ok=True)
        raw_key = key.encode()
        self._counter += 1
        tmp = path.parent / f"{os.getpid()}-{self._counter}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(_HEADER.pack(float("nan"), len(raw_key)))
            fh.write(raw_key)
            fh.write(value)
            if self.fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        size = _HEADER.size + len(raw_key) + len(value)
        old = self.index.pop(key, None)
        if old is not None:
            self.bytes -= old
        self.index[key] = size
        self.bytes += size
        while len(self.index) > self.max_files:
            victim, victim_size = self.index.popitem(last=False)
            self.bytes -= victim_size
            with contextlib.suppress(FileNotFoundError):
                os.remove(self._path(victim))

    def get(self, key: str) -> bytes | None:
        try:
            with open(self._path(key), "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return None
        expires_at, key_len = _HEADER.unpack_from(data)
        raw_key = key.encode()
        if data[_HEADER.size : _HEADER.size + key_len] != raw_key:
            return None
        if expires_at == expires_at and expires_at <= time.time():  # not NaN and past
            return None
        if key in self.index:
            self.index.move_to_end(key)
        return data[_HEADER.size + key_len :]

    def close(self) -> None:
        pass


SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL,
    expires_at REAL,
    size INTEGER NOT NULL,
    last_access INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_last_access ON entries (last_access);
CREATE INDEX IF NOT EXISTS entries_expires_at ON entries (expires_at)
    WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS totals (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    count INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
INSERT OR IGNORE INTO totals (id, count, bytes) VALUES (0, 0, 0);
CREATE TRIGGER IF NOT EXISTS entries_insert AFTER INSERT ON entries BEGIN
    UPDATE totals SET count = count + 1, bytes = bytes + NEW.size WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS entries_delete AFTER DELETE ON entries BEGIN
    UPDATE totals SET count = count - 1, bytes = bytes - OLD.size WHERE id = 0;
END;
CREATE TRIGGER IF NOT EXISTS entries_resize AFTER UPDATE OF size ON entries BEGIN
    UPDATE totals SET bytes = bytes + NEW.size - OLD.size WHERE id = 0;
END;
"""


class SqliteStore:
    """One SQLite database in WAL mode; bounds from trigger-maintained totals."""

    # Evicting one row per write costs a B-tree rebalance and a WAL page per commit; evicting
    # ~1% of the bound at once amortises that (see --evict-batch).
    evict_batch = -1  # -1: ~1% of max_files (what DiskLayer does); 0: exactly the excess

    def __init__(self, root: Path, max_files: int, fsync: bool) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.max_files = max_files
        if self.evict_batch < 0:
            self.slack = min(256, max_files // 100)
        else:
            self.slack = self.evict_batch
        self.conn = sqlite3.connect(root / "cache.sqlite3", isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        self.conn.executescript(SCHEMA)
        # The first read proves the database is usable (what a real startup needs).
        self.conn.execute("SELECT count, bytes FROM totals WHERE id = 0").fetchone()

    def set(self, key: str, value: bytes) -> None:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            (top,) = c.execute("SELECT COALESCE(MAX(last_access), 0) FROM entries").fetchone()
            c.execute(
                "INSERT INTO entries (key, value, expires_at, size, last_access)"
                " VALUES (?, ?, NULL, ?, ?) ON CONFLICT (key) DO UPDATE SET"
                " value = excluded.value, expires_at = excluded.expires_at,"
                " size = excluded.size, last_access = excluded.last_access",
                (key, value, len(value) + len(key), top + 1),
            )
            (count,) = c.execute("SELECT count FROM totals WHERE id = 0").fetchone()
            if count > self.max_files:
                c.execute(
                    "DELETE FROM entries WHERE key IN"
                    " (SELECT key FROM entries ORDER BY last_access LIMIT ?)",
                    (count - self.max_files + self.slack,),
                )
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def get(self, key: str) -> bytes | None:
        row = self.conn.execute(
            "SELECT value, expires_at FROM entries WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        if row[1] is not None and row[1] <= time.time():
            return None
        value: bytes = row[0]
        return value

    def close(self) -> None:
        self.conn.close()


class LayerStore:
    """The real ``DiskLayer`` (codec + JSON included), for the end-to-end column."""

    def __init__(self, root: Path, max_files: int, fsync: bool) -> None:
        from layercache._entry import Entry
        from layercache.layers.disk import DiskLayer

        self.layer = DiskLayer(root, max_files=max_files)
        # A 1 KiB str: JSON would base64 bytes, which measures the serializer, not storage.
        self.entry = Entry("v" * 1024, time.time(), None)
        if fsync:
            raise SystemExit("--fsync is not supported for DiskLayer (synchronous=NORMAL)")

    def set(self, key: str, value: bytes) -> None:
        self.layer.set(key, self.entry, None)

    def get(self, key: str) -> object:
        return self.layer.get(key)

    def close(self) -> None:
        self.layer.close()


Store = FileStore | SqliteStore | LayerStore
Factory = Callable[[Path, int, bool], Store]


def rate(n: int, fn: Callable[[int], object]) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - start)


def measure_once(
    name: str, factory: Factory, base: Path, entries: int, fsync: bool
) -> dict[str, float]:
    root = base / name
    shutil.rmtree(root, ignore_errors=True)
    # Bound well above the data set so plain sets never evict.
    store = factory(root, entries * 10, fsync)
    results: dict[str, float] = {}
    results["set 1 KiB"] = rate(entries, lambda i: store.set(f"key:{i}", VALUE))
    results["get hit"] = rate(entries, lambda i: store.get(f"key:{i}"))
    results["get miss"] = rate(entries, lambda i: store.get(f"absent:{i}"))
    store.close()

    start = time.perf_counter()
    store = factory(root, entries, fsync)
    store.get("key:0")
    results["startup (ms)"] = (time.perf_counter() - start) * 1000

    # At the bound: every new key pushes out an old one.
    results["set at bound"] = rate(entries // 2, lambda i: store.set(f"new:{i}", VALUE))
    store.close()
    shutil.rmtree(root, ignore_errors=True)
    return results


def measure(
    name: str, factory: Factory, base: Path, entries: int, fsync: bool, repeat: int
) -> dict[str, float]:
    """Best of ``repeat`` runs (highest rate, lowest startup time)."""
    runs = [measure_once(name, factory, base, entries, fsync) for _ in range(repeat)]
    return {op: (min if op.endswith("(ms)") else max)(run[op] for run in runs) for op in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs")
    parser.add_argument("--fsync", action="store_true", help="fsync files / synchronous=FULL")
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    parser.add_argument(
        "--evict-batch",
        type=int,
        default=-1,
        help="sqlite: rows evicted beyond the excess (-1: ~1%% of the bound, 0: exact)",
    )
    args = parser.parse_args()
    SqliteStore.evict_batch = args.evict_batch
    base = Path(args.dir or tempfile.mkdtemp(prefix="layercache-bench-"))
    columns: dict[str, Factory] = {"files": FileStore, "sqlite": SqliteStore}
    if not args.fsync:
        columns["DiskLayer"] = LayerStore
    try:
        results = {
            name: measure(name, factory, base, args.entries, args.fsync, args.repeat)
            for name, factory in columns.items()
        }
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    print(
        f"entries={args.entries} value=1 KiB fsync={args.fsync} "
        f"evict_batch={args.evict_batch} best of {args.repeat}"
    )
    header = f"{'operation':<20}" + "".join(f"{name:>12}" for name in results)
    print(header + f"{'sqlite/files':>14}")
    files, db = results["files"], results["sqlite"]
    for op in files:
        label = op if op.endswith("(ms)") else op + " ops/s"
        fmt = "{:>12.1f}" if op.endswith("(ms)") else "{:>12,.0f}"
        cells = "".join(fmt.format(column[op]) for column in results.values())
        print(f"{label:<20}{cells}{db[op] / files[op]:>13.2f}x")


if __name__ == "__main__":
    main()
