# DO NOT EDIT: generated from tests/stack/test_snapshots.py
# by scripts/unasync_tests.py. Change the async source and run
# `python scripts/unasync_tests.py`.
"""export_state / import_state and persist_to_file / restore_from_file.

Round trips through every stack kind (memory, memory+disk, memory+redis): values keep their
types through JSON text, TTL windows and tags survive, bad snapshots and files import nothing,
paths cannot leave ``snapshot_base_dir``. The SyncCacheStack twin is generated.
"""

from __future__ import annotations

import copy
import datetime as dt
import decimal
import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from twin_stack_support import StackEnv

from conftest import BuildStack
from layercache import MemoryLayer, SyncCacheStack
from layercache.snapshots import FORMAT, read_snapshot, validate_snapshot

VALUES: dict[str, Any] = {
    "t:str": "héllo 🌍",
    "t:int": 42,
    "t:bigint": 2**80,
    "t:float": 1.25,
    "t:bool": False,
    "t:list": [1, "two", [3.5, None]],
    "t:dict": {"a": {"b": [1, 2]}, "__lc__": "a user key that looks like a tag"},
    "t:intkeys": {1: "one", 2: "two"},
    "t:datetime": dt.datetime(2024, 5, 6, 7, 8, 9, 123456),
    "t:aware": dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone(dt.timedelta(hours=2))),
    "t:date": dt.date(2024, 2, 29),
    "t:time": dt.time(23, 59, 1),
    "t:decimal": decimal.Decimal("12345.678901234567890"),
    "t:uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "t:bytes": b"\x00\xffbinary",
    "t:nested": {"when": dt.date(2020, 1, 1), "ids": [uuid.UUID(int=7)], "raw": b"x"},
}


def _absent(env: StackEnv, *keys: str) -> None:
    for key in keys:
        assert env.in_layers(key) == [], f"{key!r} stored in {env.in_layers(key)}"


def _export_as_json_text(env: StackEnv) -> dict[str, Any]:
    """export_state() through JSON text, as a file or a network hop would carry it."""
    snapshot = env.cache.export_state()
    return json.loads(json.dumps(snapshot))  # type: ignore[no-any-return]


def test_values_keep_their_types_through_json_text(env: StackEnv) -> None:
    env.cache.set_many(list(VALUES.items()))
    snapshot = _export_as_json_text(env)
    assert snapshot["format"] == FORMAT
    assert snapshot["version"] == 1
    assert sorted(e["key"] for e in snapshot["entries"]) == sorted(VALUES)
    env.cache.clear()
    _absent(env, *VALUES)
    assert env.cache.import_state(snapshot) == len(VALUES)
    names = [layer.name for layer in env.layers]
    for key, value in VALUES.items():
        got = env.cache.get(key)
        assert got == value, key
        assert type(got) is type(value), key
        assert env.in_layers(key) == names, key
        for stored in env.layer_values(key):
            assert stored == value, key
            assert type(stored) is type(value), key


def test_remaining_ttls_and_windows_survive(env: StackEnv) -> None:
    env.cache.set("w", "v", ttl=100, stale_while_revalidate=20, stale_if_error=50)
    env.cache.set("plain", "p", ttl=40)
    env.cache.set("gone", "g", ttl=10)
    env.clock.advance(30)
    snapshot = _export_as_json_text(env)
    by_key = {e["key"]: e for e in snapshot["entries"]}
    assert "gone" not in by_key  # past its fresh TTL: not exported
    assert by_key["w"]["ttl"] == pytest.approx(70, abs=0.01)
    assert by_key["w"]["stale_ttl"] == pytest.approx(90, abs=0.01)
    assert by_key["w"]["error_ttl"] == pytest.approx(120, abs=0.01)
    assert by_key["plain"]["ttl"] == pytest.approx(10, abs=0.01)
    assert by_key["plain"]["stale_ttl"] is None
    env.cache.clear()
    env.clock.advance(5)  # time passes between export and import: the TTL counts from import
    assert env.cache.import_state(snapshot) == 2
    info = env.cache.inspect("w")
    assert info is not None
    assert info.fresh_ttl == pytest.approx(70, abs=0.01)
    assert info.stale_ttl == pytest.approx(90, abs=0.01)
    assert info.error_ttl == pytest.approx(120, abs=0.01)
    env.clock.advance(11)
    assert env.cache.get("plain") is None  # 10 s of freshness were left
    assert env.cache.ttl("w") == pytest.approx(59, abs=0.01)


def test_expired_entries_are_skipped_on_import(env: StackEnv) -> None:
    snapshot = {
        "format": FORMAT,
        "version": 1,
        "created_at": 0.0,
        "entries": [
            {
                "key": "e:past",
                "value": 1,
                "ttl": -5.0,
                "stale_ttl": None,
                "error_ttl": None,
                "tags": [],
            },
            {
                "key": "e:zero",
                "value": 2,
                "ttl": 0,
                "stale_ttl": None,
                "error_ttl": None,
                "tags": [],
            },
            {
                "key": "e:live",
                "value": 3,
                "ttl": 30,
                "stale_ttl": None,
                "error_ttl": None,
                "tags": [],
            },
            {
                "key": "e:forever",
                "value": 4,
                "ttl": None,
                "stale_ttl": None,
                "error_ttl": None,
                "tags": [],
            },
        ],
    }
    assert env.cache.import_state(snapshot) == 2
    _absent(env, "e:past", "e:zero")
    assert env.cache.get_many(["e:live", "e:forever"]) == [3, 4]


def test_tags_survive_and_invalidate_after_import(env: StackEnv) -> None:
    env.cache.set("u:1", {"id": 1}, tags=["users", "team:a"])
    env.cache.set("u:2", {"id": 2}, tags=["users"])
    env.cache.set("p:1", {"id": 9}, tags=["posts"])
    snapshot = _export_as_json_text(env)
    assert {e["key"]: e["tags"] for e in snapshot["entries"]} == {
        "u:1": ["users", "team:a"],
        "u:2": ["users"],
        "p:1": ["posts"],
    }
    env.cache.clear()
    env.cache.import_state(snapshot)
    info = env.cache.inspect("u:1")
    assert info is not None
    assert info.tags == ("users", "team:a")
    assert env.cache.invalidate_by_tag("users") == 2
    _absent(env, "u:1", "u:2")
    assert env.cache.get("p:1") == {"id": 9}


def test_generation_keys_are_exported_in_their_user_form(build_stack: BuildStack) -> None:
    env = build_stack(generation=3)
    env.cache.set("g:1", "one")
    snapshot = env.cache.export_state()
    assert [e["key"] for e in snapshot["entries"]] == ["g:1"]
    env.cache.bump_generation()  # the old keys become unreachable
    assert env.cache.get("g:1") is None
    env.cache.import_state(snapshot)
    assert env.in_layers("v4:g:1") == [layer.name for layer in env.layers]
    assert env.cache.get("g:1") == "one"
    # Only the current generation's keys are exported.
    assert [e["key"] for e in (env.cache.export_state())["entries"]] == ["g:1"]


def _good_snapshot() -> dict[str, Any]:
    entry: dict[str, Any] = {
        "value": 1,
        "ttl": 60,
        "stale_ttl": None,
        "error_ttl": None,
        "tags": [],
    }
    return {
        "format": FORMAT,
        "version": 1,
        "created_at": 1.0,
        "entries": [{**entry, "key": "ok:1"}, {**entry, "key": "ok:2"}, {**entry, "key": "ok:3"}],
    }


def _broken(change: Any) -> dict[str, Any]:
    snapshot = _good_snapshot()
    change(snapshot)
    return snapshot


# Each breaks the snapshot in its LAST entry (or its frame): a partial import would show.
BROKEN = {
    "wrong format": lambda s: s.update(format="something-else"),
    "future version": lambda s: s.update(version=2),
    "no entries (truncated)": lambda s: s.pop("entries"),
    "entries not a list": lambda s: s.update(entries={"a": 1}),
    "unknown field": lambda s: s.update(extra=1),
    "bad key": lambda s: s["entries"][-1].update(key="bad\nkey"),
    "empty key": lambda s: s["entries"][-1].update(key=""),
    "key not a str": lambda s: s["entries"][-1].update(key=5),
    "duplicate key": lambda s: s["entries"][-1].update(key="ok:1"),
    "ttl a string": lambda s: s["entries"][-1].update(ttl="60"),
    "ttl a bool": lambda s: s["entries"][-1].update(ttl=True),
    "ttl infinite": lambda s: s["entries"][-1].update(ttl=float("inf")),
    "tags a string": lambda s: s["entries"][-1].update(tags="users"),
    "tag not a str": lambda s: s["entries"][-1].update(tags=[1]),
    "malformed tagged value": lambda s: s["entries"][-1].update(
        value={"__lc__": "decimal", "v": 5}
    ),
    "unknown tagged type": lambda s: s["entries"][-1].update(value={"__lc__": "pickle", "v": "x"}),
    "entry missing value": lambda s: s["entries"][-1].pop("value"),
    "entry not an object": lambda s: s["entries"].append(["k", 1]),
    "entry unknown field": lambda s: s["entries"][-1].update(pickled="..."),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_bad_snapshot_imports_nothing(env: StackEnv, name: str) -> None:
    snapshot = _broken(BROKEN[name])
    with pytest.raises(ValueError, match=r"."):
        validate_snapshot(snapshot)
    with pytest.raises(ValueError, match=r"."):
        env.cache.import_state(snapshot)
    _absent(env, "ok:1", "ok:2", "ok:3")
    assert env.cache.import_state(_good_snapshot()) == 3  # the intact one imports


def test_size_bounds_are_enforced_with_a_clear_error(env: StackEnv) -> None:
    with pytest.raises(ValueError, match="3 entries, more than the bound of 2"):
        env.cache.import_state(_good_snapshot(), max_entries=2)
    with pytest.raises(ValueError, match="bytes as JSON, more than the bound of 100"):
        env.cache.import_state(_good_snapshot(), max_bytes=100)
    _absent(env, "ok:1", "ok:2", "ok:3")
    env.cache.set_many([("b:1", 1), ("b:2", 2)])
    with pytest.raises(ValueError, match="more than 1 keys"):
        env.cache.export_state(max_entries=1)
    with pytest.raises(ValueError, match="more than the bound of 50"):
        env.cache.export_state(max_bytes=50)
    with pytest.raises(ValueError, match="max_entries"):
        env.cache.import_state(_good_snapshot(), max_entries=0)


def test_a_value_json_cannot_carry_fails_the_export_naming_its_key(
    memory_env: StackEnv,
) -> None:
    # Only the memory layer holds arbitrary objects (the others serialize them).
    memory_env.cache.set("odd", object())
    with pytest.raises(ValueError, match="'odd'"):
        memory_env.cache.export_state()


# ---------------------------------------------------------------------------- files

ESCAPED = r"outside snapshot_base_dir|is a directory|name a file"


def _make_dir(base: Path) -> None:
    base.mkdir(exist_ok=True)  # a test's temporary directory (plain code: no loop to block)


def _file_env(build_stack: BuildStack, base: Path, **kwargs: Any) -> StackEnv:
    _make_dir(base)
    env = build_stack(snapshot_base_dir=base, **kwargs)
    env.cache.set("f:1", {"when": dt.date(2024, 1, 2)}, tags=["files"], ttl=300)
    env.cache.set("f:2", decimal.Decimal("0.1"), ttl=300)
    return env


def test_persist_and_restore_round_trip(build_stack: BuildStack, tmp_path: Path) -> None:
    base = tmp_path / "snaps"
    env = _file_env(build_stack, base)
    env.cache.persist_to_file("state.json")
    written = base / "state.json"
    assert json.loads(written.read_text("utf-8"))["format"] == FORMAT
    env.cache.persist_to_file(base / "state.json")  # overwritten atomically
    assert sorted(os.listdir(base)) == ["state.json"]  # no temp file left behind
    env.cache.clear()
    assert env.cache.restore_from_file("state.json") == 2
    assert env.cache.get("f:1") == {"when": dt.date(2024, 1, 2)}
    assert env.cache.get("f:2") == decimal.Decimal("0.1")
    assert env.cache.invalidate_by_tag("files") == 1


def test_signed_files(build_stack: BuildStack, tmp_path: Path) -> None:
    base = tmp_path / "snaps"
    env = _file_env(build_stack, base)
    env.cache.persist_to_file("signed.json", secret="s3cret")
    env.cache.persist_to_file("plain.json")
    envelope = json.loads((base / "signed.json").read_text("utf-8"))
    assert envelope["format"] == "layercache-snapshot-signed"
    assert envelope["algorithm"] == "hmac-sha256"
    forged = copy.deepcopy(envelope)
    forged["payload"] = envelope["payload"].replace('"f:2"', '"f:X"')
    (base / "forged.json").write_text(json.dumps(forged), "utf-8")
    env.cache.clear()
    cases = [
        ("signed.json", None, "signed: give the secret"),
        ("signed.json", "wrong", "signature does not match"),
        ("signed.json", b"s3cret!", "signature does not match"),
        ("forged.json", "s3cret", "signature does not match"),
        ("plain.json", "s3cret", "not signed, but a secret was given"),
    ]
    for name, secret, message in cases:
        with pytest.raises(ValueError, match=message):
            env.cache.restore_from_file(name, secret=secret)
        _absent(env, "f:1", "f:2", "f:X")
    assert env.cache.restore_from_file("signed.json", secret=b"s3cret") == 2
    assert env.cache.get("f:2") == decimal.Decimal("0.1")


def test_corrupt_and_truncated_files_import_nothing(
    build_stack: BuildStack, tmp_path: Path
) -> None:
    base = tmp_path / "snaps"
    env = _file_env(build_stack, base)
    env.cache.persist_to_file("good.json")
    env.cache.persist_to_file("good-signed.json", secret="k")
    data = (base / "good.json").read_bytes()
    signed = (base / "good-signed.json").read_bytes()
    (base / "truncated.json").write_bytes(data[: len(data) - 20])
    (base / "truncated-signed.json").write_bytes(signed[: len(signed) // 2])
    (base / "garbage.json").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (base / "empty.json").write_bytes(b"")
    (base / "not-a-snapshot.json").write_text('{"hello": "world"}', "utf-8")
    env.cache.clear()
    for name, secret in [
        ("truncated.json", None),
        ("truncated-signed.json", "k"),
        ("garbage.json", None),
        ("empty.json", None),
        ("not-a-snapshot.json", None),
    ]:
        with pytest.raises(ValueError, match=r"JSON|snapshot"):
            env.cache.restore_from_file(name, secret=secret)
        _absent(env, "f:1", "f:2")
    with pytest.raises(FileNotFoundError):
        env.cache.restore_from_file("missing.json")
    with pytest.raises(ValueError, match="more than the bound of 10"):
        read_snapshot(base / "good.json", base_dir=base, max_bytes=10)


def test_paths_cannot_escape_the_base_dir(build_stack: BuildStack, tmp_path: Path) -> None:
    base = tmp_path / "snaps"
    outside = tmp_path / "outside"
    outside.mkdir()
    env = _file_env(build_stack, base)
    (base / "sub").mkdir()
    (base / "link-out").symlink_to(outside, target_is_directory=True)
    (base / "file-link.json").symlink_to(outside / "target.json")
    escapes = [
        "../escape.json",
        "sub/../../escape.json",
        str(outside / "abs.json"),
        outside / "abs.json",
        "link-out/through-link.json",
        "file-link.json",  # a (dangling) symlink to a file outside
        "/etc/passwd",
        ".",
        "sub",
    ]
    for path in escapes:
        with pytest.raises(ValueError, match=ESCAPED):
            env.cache.persist_to_file(path)
        with pytest.raises(ValueError, match=ESCAPED):
            env.cache.restore_from_file(path)
    assert sorted(os.listdir(outside)) == []
    # Inside the base (also through a symlink that stays inside) is fine.
    (base / "link-in").symlink_to(base / "sub", target_is_directory=True)
    env.cache.persist_to_file("link-in/inside.json")
    assert (base / "sub" / "inside.json").is_file()
    assert env.cache.restore_from_file(base / "sub" / "inside.json") == 2


def test_false_lifts_the_confinement(build_stack: BuildStack, tmp_path: Path) -> None:
    env = build_stack(snapshot_base_dir=False)
    env.cache.set("free", 1)
    target = tmp_path / "anywhere" / ".." / "free.json"
    (tmp_path / "anywhere").mkdir()
    env.cache.persist_to_file(target)
    assert (tmp_path / "free.json").is_file()
    env.cache.clear()
    assert env.cache.restore_from_file(str(tmp_path / "free.json")) == 1


def test_the_default_base_dir_is_the_working_directory_at_construction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.chdir(home)
    cache = SyncCacheStack([MemoryLayer()])
    try:
        monkeypatch.chdir(tmp_path)
        cache.set("cwd", 1)
        # Relative paths are taken inside the base: the file lands in ``home``, not the cwd.
        cache.persist_to_file("rel.json")
        assert (home / "rel.json").is_file()
        assert not (tmp_path / "rel.json").exists()
        with pytest.raises(ValueError, match="outside snapshot_base_dir"):
            cache.persist_to_file(tmp_path / "rel.json")
    finally:
        cache.close()
    for bad in (123, b"bytes", ""):
        with pytest.raises(ValueError, match="snapshot_base_dir"):
            SyncCacheStack([MemoryLayer()], snapshot_base_dir=bad)  # type: ignore[arg-type]
