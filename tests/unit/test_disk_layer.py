"""DiskLayer: persistence, TTL, bounds, eviction order, corruption repair, threads, globs."""

from __future__ import annotations

import os
import sqlite3
import string
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layercache._codec import CorruptEntryError
from layercache._entry import Entry
from layercache._exceptions import CacheLayerError
from layercache._glob import glob_match
from layercache._types import CacheLayer
from layercache.layers.disk import DATABASE_NAME, DiskLayer

T0 = 1_700_000_000.0


class FakeClock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Handler:
    """Records what the layer reports to the stack's error handler."""

    def __init__(self) -> None:
        self.calls: list[tuple[BaseException, dict[str, Any]]] = []

    def __call__(self, exc: BaseException, context: dict[str, Any]) -> None:
        self.calls.append((exc, context))

    def reasons(self) -> list[Any]:
        return [context["reason"] for _, context in self.calls]


def entry(value: Any, clock: FakeClock | None = None) -> Entry:
    return Entry(value, stored_at=clock() if clock else T0, fresh_until=None)


def raw_rows(directory: Path) -> dict[str, Any]:
    """The table as another program sees it (no layer code involved)."""
    conn = sqlite3.connect(directory / DATABASE_NAME)
    try:
        return dict(conn.execute("SELECT key, value FROM entries").fetchall())
    finally:
        conn.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def handler() -> Handler:
    return Handler()


@pytest.fixture
def layer(tmp_path: Path, clock: FakeClock, handler: Handler) -> Iterator[DiskLayer]:
    disk = DiskLayer(tmp_path / "cache", clock=clock)
    disk.set_error_handler(handler)
    yield disk
    disk.close()


def test_satisfies_the_layer_protocol(layer: DiskLayer) -> None:
    assert isinstance(layer, CacheLayer)
    assert layer.is_local is True
    assert layer.is_blocking is True
    assert layer.name == "disk"
    assert layer.default_ttl is None


def test_round_trip_and_delete(layer: DiskLayer) -> None:
    stored = Entry({"a": [1, 2]}, T0, T0 + 50, T0 + 60, T0 + 70, ("t1", "t2"))
    layer.set("k", stored, None)
    assert layer.get("k") == stored
    assert layer.has("k")
    assert layer.size() == 1
    layer.delete("k")
    assert layer.get("k") is None
    assert not layer.has("k")
    layer.delete("k")  # absent: no error
    assert layer.size() == 0


def test_overwrite_keeps_one_row_and_the_byte_total_right(layer: DiskLayer) -> None:
    layer.set("k", entry("x" * 1000), None)
    big = layer.stored_bytes()
    layer.set("k", entry("y"), None)
    assert layer.get("k") == entry("y")
    assert layer.size() == 1
    assert layer.stored_bytes() < big - 900


def test_survives_a_restart(tmp_path: Path) -> None:
    first = DiskLayer(tmp_path)
    first.set("user:1", entry({"name": "Ada"}), None)
    first.set_many([("user:2", entry([1, 2, 3]), None), ("user:3", entry(None), 3600)])
    first.close()

    second = DiskLayer(tmp_path)
    try:
        assert second.get("user:1") == entry({"name": "Ada"})
        assert second.get("user:2") == entry([1, 2, 3])
        assert second.has("user:3")
        assert second.keys() == ["user:1", "user:2", "user:3"]
    finally:
        second.close()


def test_ttl_expiry_with_an_injected_clock(layer: DiskLayer, clock: FakeClock) -> None:
    layer.set("short", entry(1), 10)
    layer.set("forever", entry(2), None)
    assert layer.ttl("short") == pytest.approx(10)
    assert layer.ttl("forever") is None
    assert layer.ttl("absent") is None
    clock.advance(9.5)
    assert layer.get("short") == Entry(1, T0, T0 + 10)  # clipped to the storage lifetime
    assert layer.ttl("short") == pytest.approx(0.5)
    clock.advance(1)
    assert layer.get("short") is None
    assert not layer.has("short")
    assert layer.ttl("short") is None
    assert layer.keys() == ["forever"]
    assert layer.size() == 1


def test_entry_windows_bound_the_row_when_no_ttl_is_given(
    layer: DiskLayer, clock: FakeClock
) -> None:
    layer.set("k", Entry("v", T0, T0 + 5, T0 + 20), None)
    clock.advance(19)
    assert layer.get("k") is not None
    clock.advance(2)
    assert layer.get("k") is None


def test_non_positive_ttl_or_dead_entry_removes_the_key(layer: DiskLayer) -> None:
    layer.set("k", entry(1), None)
    layer.set("k", entry(2), 0)
    assert layer.get("k") is None
    layer.set("k", entry(1), None)
    layer.set("k", Entry(3, T0 - 10, T0 - 5), None)
    assert layer.get("k") is None


def test_expired_rows_are_purged_not_just_hidden(
    tmp_path: Path, clock: FakeClock, layer: DiskLayer
) -> None:
    layer.set_many([(f"old:{i}", entry(i), 5) for i in range(50)])
    clock.advance(120)  # past the purge interval
    layer.set("new", entry(0), None)
    assert set(raw_rows(tmp_path / "cache")) == {"new"}


def test_max_files_holds_after_many_writes(tmp_path: Path) -> None:
    disk = DiskLayer(tmp_path, max_files=200)
    try:
        for i in range(1500):
            disk.set(f"k{i}", entry(i), None)
            if i % 97 == 0:
                assert disk.size() <= 200
        disk.set_many([(f"batch{i}", entry(i), None) for i in range(500)])
        size = disk.size()
        assert 198 <= size <= 200  # 1% slack is evicted in one batch
        assert len(raw_rows(tmp_path)) == size
        assert disk.get("batch499") is not None  # the newest survive
        assert disk.get("k0") is None
    finally:
        disk.close()


def test_max_bytes_holds_after_many_writes(tmp_path: Path) -> None:
    disk = DiskLayer(tmp_path, max_bytes=20_000)
    try:
        for i in range(300):
            disk.set(f"k{i}", entry("x" * (i % 7) * 100), None)
            assert disk.stored_bytes() <= 20_000
        stored = raw_rows(tmp_path)
        assert sum(len(k.encode()) + len(v) for k, v in stored.items()) == disk.stored_bytes()
        assert disk.get("k299") is not None
        # One value larger than the whole bound is not cached (and does not flush the rest).
        disk.set("huge", entry("z" * 30_000), None)
        assert disk.get("huge") is None
        assert disk.get("k299") is not None
    finally:
        disk.close()


def test_least_recently_used_is_evicted_first(tmp_path: Path) -> None:
    disk = DiskLayer(tmp_path, max_files=3)
    try:
        for key in "abc":
            disk.set(key, entry(key), None)
        assert disk.get("a") is not None  # a is now the most recently used
        disk.set("d", entry("d"), None)
        assert sorted(disk.keys()) == ["a", "c", "d"]
        disk.set("c", entry("c2"), None)  # a rewrite counts as a use
        disk.set("e", entry("e"), None)
        assert sorted(disk.keys()) == ["c", "d", "e"]
        assert disk.evictions == 2
    finally:
        disk.close()


def test_recency_survives_a_restart(tmp_path: Path) -> None:
    disk = DiskLayer(tmp_path, max_files=3)
    for key in "abc":
        disk.set(key, entry(key), None)
    disk.get("a")
    disk.close()  # flushes the pending read recency
    disk = DiskLayer(tmp_path, max_files=3)
    try:
        disk.set("d", entry("d"), None)
        assert sorted(disk.keys()) == ["a", "c", "d"]
    finally:
        disk.close()


def test_expired_entries_are_evicted_before_live_ones(tmp_path: Path, clock: FakeClock) -> None:
    disk = DiskLayer(tmp_path, max_files=3, clock=clock)
    try:
        disk.set("a", entry("a"), None)
        disk.set("b", entry("b"), 5)
        disk.set("c", entry("c"), None)
        clock.advance(10)  # b expired, but within the purge interval: still a row
        disk.set("d", entry("d"), None)
        assert sorted(disk.keys()) == ["a", "c", "d"]
        assert disk.evictions == 0
    finally:
        disk.close()


def test_bounds_hold_across_two_connections(tmp_path: Path) -> None:
    # Two layers on one directory stand in for two processes: the totals live in the database.
    one = DiskLayer(tmp_path, max_files=40)
    two = DiskLayer(tmp_path, max_files=40)
    try:
        for i in range(60):
            one.set(f"one:{i}", entry(i), None)
            two.set(f"two:{i}", entry(i), None)
        assert one.size() == two.size() == len(raw_rows(tmp_path)) == 40
        assert two.get("one:59") == entry(59)
    finally:
        one.close()
        two.close()


def test_corrupt_entry_reads_as_a_miss_is_reported_and_removed(
    tmp_path: Path, layer: DiskLayer, handler: Handler
) -> None:
    layer.set("good", entry(1), None)
    layer.set("bad", entry(2), None)
    layer.set("text", entry(3), None)
    conn = sqlite3.connect(tmp_path / "cache" / DATABASE_NAME)
    conn.execute("UPDATE entries SET value = ? WHERE key = 'bad'", (b"\xc1LC\x01\x00\x01{garbage",))
    conn.execute("UPDATE entries SET value = 'not a blob' WHERE key = 'text'")
    conn.commit()
    conn.close()

    assert layer.get("bad") is None
    assert layer.get_many(["good", "text", "missing"]) == [entry(1), None, None]
    assert handler.reasons() == ["corrupt entry", "corrupt entry"]
    assert all(isinstance(exc, CorruptEntryError) for exc, _ in handler.calls)
    assert [context["key"] for _, context in handler.calls] == ["bad", "text"]
    assert [context["operation"] for _, context in handler.calls] == ["get", "get_many"]
    assert set(raw_rows(tmp_path / "cache")) == {"good"}
    assert layer.size() == 1


def _assert_repaired(directory: Path, handler: Handler, clock: FakeClock) -> None:
    disk = DiskLayer(directory, clock=clock)
    disk.set_error_handler(handler)
    try:
        assert disk.get("k") is None
        assert handler.reasons() == ["corrupt store"]
        assert isinstance(handler.calls[0][0], sqlite3.DatabaseError)
        assert (directory / (DATABASE_NAME + ".corrupt")).exists()
        disk.set("k", entry("again"), None)
        assert disk.get("k") == entry("again")
        assert disk.keys() == ["k"]
    finally:
        disk.close()
    reopened = DiskLayer(directory)
    try:
        assert reopened.get("k") == entry("again")
    finally:
        reopened.close()


def test_garbage_database_file_is_moved_aside_and_recreated(
    tmp_path: Path, handler: Handler, clock: FakeClock
) -> None:
    disk = DiskLayer(tmp_path)
    disk.set("k", entry("v"), None)
    disk.close()
    (tmp_path / DATABASE_NAME).write_bytes(os.urandom(64 * 1024))
    _assert_repaired(tmp_path, handler, clock)


def test_damaged_pages_are_detected_and_repaired(
    tmp_path: Path, handler: Handler, clock: FakeClock
) -> None:
    disk = DiskLayer(tmp_path)
    disk.set_many([(f"k{i}", entry("x" * 500), None) for i in range(200)])
    disk.close()
    path = tmp_path / DATABASE_NAME
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[page:] = os.urandom(len(data) - page)  # keep the header page, wreck every other one
    path.write_bytes(bytes(data))
    _assert_repaired(tmp_path, handler, clock)


def test_damage_found_after_opening_is_repaired_mid_operation(
    tmp_path: Path, handler: Handler, clock: FakeClock
) -> None:
    disk = DiskLayer(tmp_path)
    disk.set_many([(f"k{i}", entry("x" * 500), None) for i in range(200)])
    disk.close()
    path = tmp_path / DATABASE_NAME
    conn = sqlite3.connect(path)
    (totals_page,) = conn.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'totals'"
    ).fetchone()
    conn.close()
    data = bytearray(path.read_bytes())
    size = int.from_bytes(data[16:18], "big")
    for page in range(2, len(data) // size + 1):
        if page != totals_page:  # opening still succeeds; the first lookup hits the damage
            data[(page - 1) * size : page * size] = os.urandom(size)
    path.write_bytes(bytes(data))

    disk = DiskLayer(tmp_path, clock=clock)
    disk.set_error_handler(handler)
    try:
        assert disk.ping() is True
        assert handler.calls == []
        assert disk.get("k1") is None
        assert handler.reasons() == ["corrupt store"]
        assert handler.calls[0][1]["operation"] == "get"
        disk.set("k1", entry("again"), None)
        assert disk.get("k1") == entry("again")
    finally:
        disk.close()


def test_foreign_database_is_moved_aside(
    tmp_path: Path, handler: Handler, clock: FakeClock
) -> None:
    conn = sqlite3.connect(tmp_path / DATABASE_NAME)
    conn.execute("CREATE TABLE other (x)")
    conn.commit()
    conn.close()
    _assert_repaired(tmp_path, handler, clock)


def test_a_locked_database_is_a_layer_error_not_corruption(tmp_path: Path) -> None:
    disk = DiskLayer(tmp_path, busy_timeout=0)
    disk.set("k", entry(1), None)
    blocker = sqlite3.connect(tmp_path / DATABASE_NAME, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(CacheLayerError) as info:
            disk.set("k", entry(2), None)
        assert info.value.layer == "disk"
        assert info.value.operation == "set"
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert disk.get("k") == entry(1)  # nothing was wiped
    assert not (tmp_path / (DATABASE_NAME + ".corrupt")).exists()
    disk.close()


def test_closed_layer_refuses_calls(tmp_path: Path) -> None:
    disk = DiskLayer(tmp_path)
    disk.set("k", entry(1), None)
    disk.close()
    disk.close()  # idempotent
    with pytest.raises(CacheLayerError):
        disk.get("k")


def test_eight_threads(tmp_path: Path) -> None:
    disk = DiskLayer(tmp_path, max_files=300)
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        try:
            start.wait()
            for i in range(150):
                key = f"t{n}:{i}"
                disk.set(key, entry([n, i]), None)
                assert disk.get(key) == entry([n, i])
                disk.set("shared", entry(n), None)
                assert disk.get("shared") in [entry(m) for m in range(8)]
                if i % 10 == 0:
                    disk.set_many([(f"{key}:m{j}", entry(j), None) for j in range(5)])
                    assert disk.get_many([f"{key}:m{j}" for j in range(5)]) == [
                        entry(j) for j in range(5)
                    ]
                    disk.delete_matching(f"{key}:m*")
                    assert disk.keys(f"{key}:m*") == []
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=50)
    assert not errors, errors[:3]
    assert disk.size() <= 300
    assert len(raw_rows(tmp_path)) == disk.size()
    disk.close()


GLOB_KEYS = [
    "user:1",
    "user:2",
    "user:a",
    "user:*",
    "user:?",
    "user:10",
    "users",
    "usex:1",
    "a[b]",
    "a\\b",
    "ünïcode:1",
    "🙂:1",
    "🙂:22",
    "🙃:1",
]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("user:[^a]", {"user:1", "user:2", "user:*", "user:?"}),
        ("user:?", {"user:1", "user:2", "user:a", "user:*", "user:?"}),
        ("user:\\*", {"user:*"}),
        ("user:\\?", {"user:?"}),
        ("user:[0-9]*", {"user:1", "user:2", "user:10"}),
        ("user*", {"user:1", "user:2", "user:a", "user:*", "user:?", "user:10", "users"}),
        ("a\\[b\\]", {"a[b]"}),
        ("a\\\\b", {"a\\b"}),
        ("🙂:*", {"🙂:1", "🙂:22"}),
        ("?:1", {"🙂:1", "🙃:1"}),
        ("ünïcode:?", {"ünïcode:1"}),
        ("*:1", {"user:1", "usex:1", "ünïcode:1", "🙂:1", "🙃:1"}),
        ("nothing*", set()),
    ],
)
def test_delete_matching_glob_semantics(layer: DiskLayer, pattern: str, expected: set[str]) -> None:
    layer.set_many([(key, entry(key), None) for key in GLOB_KEYS])
    assert {k for k in GLOB_KEYS if glob_match(pattern, k)} == expected  # the oracle agrees
    assert set(layer.keys(pattern)) == expected
    assert layer.delete_matching(pattern) == len(expected)
    assert set(layer.keys()) == set(GLOB_KEYS) - expected


def test_delete_matching_counts_only_live_keys(layer: DiskLayer, clock: FakeClock) -> None:
    layer.set("p:1", entry(1), None)
    layer.set("p:2", entry(2), 5)
    clock.advance(10)
    assert layer.delete_matching("p:*") == 1
    assert layer.keys() == []


def test_keys_limit_and_order(layer: DiskLayer) -> None:
    layer.set_many([(f"k:{i:03}", entry(i), None) for i in range(20)])
    assert layer.keys("k:*", limit=5) == [f"k:{i:03}" for i in range(5)]
    assert layer.keys(limit=0) == []
    assert len(layer.keys()) == 20
    with pytest.raises(ValueError, match="limit"):
        layer.keys(limit=-1)


def test_a_pattern_with_a_literal_prefix_scans_only_that_range(layer: DiskLayer) -> None:
    layer.set_many([(f"z:{i}", entry(i), None) for i in range(3000)])
    layer.set_many([(f"p:{i}", entry(i), None) for i in range(5)])
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn = layer._conn  # white-box: count SQLite VM steps of the scan
    assert conn is not None
    conn.set_progress_handler(count, 100)
    try:
        assert layer.keys("p:[0-3]") == ["p:0", "p:1", "p:2", "p:3"]
    finally:
        conn.set_progress_handler(None, 0)
    # One fetch batch (256 rows) takes ~15 steps of 100 instructions; scanning on through
    # the 3000 z: keys would take ~180.
    assert steps < 60, steps


def test_bad_pattern_is_a_value_error(layer: DiskLayer) -> None:
    with pytest.raises(ValueError, match="pattern"):
        layer.delete_matching("")


@settings(max_examples=60, deadline=None)
@given(
    keys=st.lists(st.text(alphabet="ab*?[]^\\:é🙂", min_size=1, max_size=5), max_size=12),
    pattern=st.text(alphabet="ab*?[]^\\:é🙂", min_size=1, max_size=6),
)
def test_keys_agree_with_glob_match(keys: list[str], pattern: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        disk = DiskLayer(directory)
        try:
            disk.set_many([(key, entry(1), None) for key in keys])
            expected = sorted({k for k in keys if glob_match(pattern, k)})
            assert disk.keys(pattern) == expected
            assert disk.delete_matching(pattern) == len(expected)
            assert sorted(disk.keys()) == sorted(set(keys) - set(expected))
        finally:
            disk.close()


def test_unicode_and_emoji_keys(layer: DiskLayer) -> None:
    keys = ["ключ", "鍵:1", "🔑", "e\u0301", "\u00e9", "a b\u00a0c"]
    layer.set_many([(key, entry(key), None) for key in keys])
    assert layer.get_many(keys) == [entry(key) for key in keys]
    assert sorted(layer.keys()) == sorted(keys)


def test_several_mib_values(layer: DiskLayer) -> None:
    blob = os.urandom(3 * 1024 * 1024)
    text = "".join(string.ascii_letters[i % 52] for i in range(5 * 1024 * 1024))
    layer.set("blob", entry(blob), None)
    layer.set("text", entry(text), None)
    assert layer.get("blob") == entry(blob)
    assert layer.get("text") == entry(text)


def test_set_many_is_one_transaction_and_the_last_item_wins(layer: DiskLayer) -> None:
    layer.set_many([("a", entry(1), None), ("a", entry(2), None), ("b", entry(3), None)])
    assert layer.get_many(["b", "a", "b", "zz"]) == [entry(3), entry(2), entry(3), None]
    layer.set_many([("a", entry(9), None), ("a", entry(10), 0)])  # ends removed
    assert layer.get("a") is None
    with pytest.raises(TypeError):  # an unserializable value fails the batch before writing
        layer.set_many([("c", entry(1), None), ("d", entry(object()), None)])
    assert layer.get("c") is None


def test_delete_many_and_clear(layer: DiskLayer) -> None:
    layer.set_many([(f"k{i}", entry(i), None) for i in range(10)])
    layer.delete_many(["k1", "k2", "absent"])
    assert layer.size() == 8
    layer.clear()
    assert layer.size() == 0
    assert layer.keys() == []
    assert layer.stored_bytes() == 0


def test_ping(layer: DiskLayer) -> None:
    assert layer.ping() is True


def test_compression_round_trip(tmp_path: Path) -> None:
    disk = DiskLayer(tmp_path, compression="gzip", compression_threshold=64)
    try:
        disk.set("k", entry("abc" * 10_000), None)
        assert disk.get("k") == entry("abc" * 10_000)
        assert disk.stored_bytes() < 3_000
    finally:
        disk.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_files": 0}, "max_files"),
        ({"max_files": True}, "max_files"),
        ({"max_bytes": 0}, "max_bytes"),
        ({"ttl": -1}, "ttl"),
        ({"name": ""}, "name"),
        ({"compression": "lz4"}, "compression"),
        ({"busy_timeout": -1}, "busy_timeout"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DiskLayer(tmp_path, **kwargs)
