"""``layercache export`` / ``import`` run as subprocesses against a real redis-server.

Values written by a stack's RedisLayer are exported to a file and imported into another
prefix, or into the flushed server, and read back through a stack with their types, TTLs and
tags; signed files, refused URLs and bad files write nothing.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from _redis_server import RedisServer
from layercache import RedisLayer, SyncCacheStack, SyncRedisTagIndex
from layercache.snapshots import read_snapshot

VALUES: dict[str, Any] = {
    "user:1": {"name": "Ada", "born": dt.date(1815, 12, 10), "id": uuid.UUID(int=1)},
    "price": decimal.Decimal("19.99"),
    "blob": b"\x00\x01\xfe",
    "when": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
    "list": [1, 2.5, "three", None],
    "emoji 🌍": "héllo",
}


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    def error_line(self) -> str:
        lines = self.stderr.strip().splitlines()
        assert len(lines) == 1, self.stderr
        assert lines[0].startswith("Error: "), self.stderr
        return lines[0]


def layercache(*args: str, env: dict[str, str] | None = None) -> Run:
    environment = {k: v for k, v in os.environ.items() if k != "LAYERCACHE_DEBUG"}
    environment.pop("LAYERCACHE_REDIS_URL", None)
    environment.update(env or {})
    done = subprocess.run(
        [sys.executable, "-m", "layercache", *args],
        capture_output=True,
        text=True,
        timeout=45,
        check=False,
        env=environment,
        stdin=subprocess.DEVNULL,
    )
    return Run(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def stacks(redis_clean: RedisServer) -> Iterator[Any]:
    """Builds sync stacks over one RedisLayer (and a RedisTagIndex) on the clean server."""
    built: list[SyncCacheStack] = []

    def build(prefix: str) -> SyncCacheStack:
        cache = SyncCacheStack(
            [RedisLayer(url=redis_clean.url, prefix=prefix, ttl=3600)],
            tag_index=SyncRedisTagIndex(url=redis_clean.url, prefix=f"{prefix}tags"),
        )
        built.append(cache)
        return cache

    yield build
    for cache in built:
        cache.close()


def _fill(cache: SyncCacheStack) -> None:
    for key, value in VALUES.items():
        cache.set(key, value, ttl=500, tags=["all", f"k:{len(key)}"])
    cache.set("windows", "w", ttl=100, stale_while_revalidate=50)


def _read_back(cache: SyncCacheStack) -> None:
    for key, value in VALUES.items():
        got = cache.get(key)
        assert got == value, key
        assert type(got) is type(value), key
        info = cache.inspect(key)
        assert info is not None
        assert info.tags == ("all", f"k:{len(key)}")
        assert info.fresh_ttl is not None
        assert 490 < info.fresh_ttl <= 500
    info = cache.inspect("windows")
    assert info is not None
    assert info.fresh_ttl is not None
    assert info.stale_ttl is not None
    assert info.stale_ttl - info.fresh_ttl == pytest.approx(50, abs=0.5)


def _dbsize(server: RedisServer) -> int:
    import redis

    client = redis.Redis.from_url(server.url)
    try:
        return int(client.dbsize())
    finally:
        client.close()


def test_export_then_import_into_another_prefix(
    redis_clean: RedisServer, stacks: Any, tmp_path: Path
) -> None:
    _fill(stacks("app:"))
    snap = tmp_path / "app.json"
    run = layercache("export", "--redis", redis_clean.url, "--prefix", "app:", str(snap), "--json")
    assert run.code == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["entries"] == len(VALUES) + 1
    assert out["signed"] is False
    snapshot = read_snapshot(snap, base_dir=False)
    assert sorted(e["key"] for e in snapshot["entries"]) == sorted([*VALUES, "windows"])
    run = layercache(
        "import", "--redis", redis_clean.url, "--prefix", "copy:", str(snap), "--yes", "--json"
    )
    assert run.code == 0, run.stderr
    assert json.loads(run.stdout)["entries"] == len(VALUES) + 1
    _read_back(stacks("copy:"))


def test_import_into_a_flushed_redis_records_tags(
    redis_clean: RedisServer, stacks: Any, tmp_path: Path
) -> None:
    _fill(stacks("app:"))
    snap = tmp_path / "app.json"
    assert layercache("export", "--redis", redis_clean.url, "--prefix", "app:", str(snap)).code == 0
    redis_clean.flushall()
    assert _dbsize(redis_clean) == 0
    run = layercache(
        "import",
        "--redis",
        redis_clean.url,
        "--prefix",
        "app:",
        "--tag-index-prefix",
        "app:tags",
        str(snap),
        "--yes",
    )
    assert run.code == 0, run.stderr
    assert run.stdout == ""  # without --json the summary goes to stderr
    assert "imported 7 entries" in run.stderr
    cache = stacks("app:")
    _read_back(cache)
    # The tag index knows the imported keys: an invalidation by tag reaches them.
    assert cache.invalidate_by_tag("all") == len(VALUES)
    assert all(cache.get(key) is None for key in VALUES)
    assert cache.get("windows") == "w"


def test_signed_export_and_import(redis_clean: RedisServer, stacks: Any, tmp_path: Path) -> None:
    _fill(stacks("app:"))
    snap = tmp_path / "signed.json"
    secret = {"LC_SNAPSHOT_SECRET": "correct horse"}
    run = layercache(
        "export",
        "--redis",
        redis_clean.url,
        "--prefix",
        "app:",
        "--secret-env",
        "LC_SNAPSHOT_SECRET",
        str(snap),
        env=secret,
    )
    assert run.code == 0, run.stderr
    assert "correct horse" not in snap.read_text("utf-8")
    assert json.loads(snap.read_text("utf-8"))["format"] == "layercache-snapshot-signed"
    base = ["import", "--redis", redis_clean.url, "--prefix", "copy:", str(snap), "--yes"]
    refused = [
        (layercache(*base), "signed: give the secret"),
        (
            layercache(
                *base, "--secret-env", "LC_SNAPSHOT_SECRET", env={"LC_SNAPSHOT_SECRET": "x"}
            ),
            "signature does not match",
        ),
        (layercache(*base, "--secret-env", "LC_UNSET_VARIABLE"), "not set or empty"),
    ]
    before = _dbsize(redis_clean)
    for run, message in refused:
        assert run.code == 1
        assert message in run.error_line()
        assert _dbsize(redis_clean) == before  # nothing written
    run = layercache(*base, "--secret-env", "LC_SNAPSHOT_SECRET", env=secret)
    assert run.code == 0, run.stderr
    _read_back(stacks("copy:"))


def test_bad_files_urls_and_unconfirmed_imports_write_nothing(
    redis_clean: RedisServer, stacks: Any, tmp_path: Path
) -> None:
    _fill(stacks("app:"))
    snap = tmp_path / "app.json"
    assert layercache("export", "--redis", redis_clean.url, "--prefix", "app:", str(snap)).code == 0
    data = snap.read_bytes()
    truncated = tmp_path / "truncated.json"
    truncated.write_bytes(data[: len(data) // 2])
    before = _dbsize(redis_clean)
    url = redis_clean.url
    cases = [
        (["import", "--redis", url, "--prefix", "c:", str(truncated), "--yes"], "not valid JSON"),
        (["import", "--redis", url, "--prefix", "c:", str(snap)], "pass --yes"),  # not a tty
        (["import", "--redis", url, "--prefix", "c:", str(tmp_path / "nope.json")], "no such"),
        (
            ["import", "--redis", url, "--require-tls", "--prefix", "c:", str(snap), "--yes"],
            "--require-tls",
        ),
        (["export", "--redis", url, "--require-tls", str(tmp_path / "x.json")], "--require-tls"),
    ]
    for args, message in cases:
        run = layercache(*args)
        assert run.code == 1, (args, run.stderr)
        assert message in run.error_line(), args
        assert "Traceback" not in run.stderr
    assert _dbsize(redis_clean) == before
    assert not (tmp_path / "x.json").exists()
    # A usage error is exit 2.
    assert layercache("import", "--redis", url).code == 2


def test_export_of_an_empty_prefix_and_password_redaction(
    redis_clean: RedisServer, tmp_path: Path
) -> None:
    snap = tmp_path / "empty.json"
    # (The server has no password; redis-py's AUTH is accepted by it as the default user.)
    url = redis_clean.url.replace("redis://", "redis://user:hunter2@")
    run = layercache("export", "--redis", url, "--prefix", "none:", str(snap), "--json")
    assert "hunter2" not in run.stderr + run.stdout
    if run.code == 0:
        assert json.loads(run.stdout)["redis"].startswith("redis://user:***@")
    else:
        assert "***" in run.error_line()
    run = layercache("export", "--redis", redis_clean.url, "--prefix", "none:", str(snap), "--json")
    assert run.code == 0, run.stderr
    assert json.loads(run.stdout)["entries"] == 0
    assert read_snapshot(snap, base_dir=False)["entries"] == []
