"""``layercache demo`` and the command line's exit codes and error reporting."""

from __future__ import annotations

import functools
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result

from layercache import DiskLayer
from layercache.cli._app import cli
from layercache.cli._common import redact_url

# The simulated origin normally sleeps 50 ms; 10 ms keeps these tests fast.
FAST = ["--origin-latency", "0.01"]
TIME = r"\d+\.\d+ ms"


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="layercache")


def run_module(*args: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real entry point (``python -m layercache``) in a fresh interpreter."""
    argv = [sys.executable, "-c", code] if code else [sys.executable, "-m", "layercache", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def closed_port() -> int:
    """A loopback port nothing listens on: bound, then released."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def assert_one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in stderr
    return lines[0]


def test_help_lists_every_command() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    commands = (
        "demo",
        "stats",
        "keys",
        "inspect",
        "invalidate",
        "migrate-tag-index",
        "doctor",
        "export",
        "import",
    )
    for name in commands:
        assert re.search(rf"^\s+{name}\s", result.output, re.MULTILINE), name


def test_embedded_demo_shows_layers_timings_and_one_fetch() -> None:
    result = invoke("demo", *FAST)
    assert result.exit_code == 0, result.output + result.stderr
    out = result.stdout
    assert result.stderr == ""
    assert "memory -> disk" in out
    assert re.search(rf"cold miss -> origin\s+{TIME}\s+3\b", out)
    assert re.search(rf"L1 hit \(memory\)\s+{TIME}", out)
    assert re.search(rf"L2 hit \(disk\) \+ backfill\s+{TIME}", out)
    assert "disk hit: served by disk, backfilled to memory" in out
    # One origin fetch is the claim. How many callers joined the flight rather than finding the
    # stored value depends on timing (a caller whose disk read ends after the store hits disk).
    joined = re.search(r"100 concurrent callers of a cold key: 1 origin fetch \((\d+) joined", out)
    assert joined is not None, out
    assert 1 <= int(joined.group(1)) <= 99
    # Measured, not invented: an L1 hit is far faster than the 10 ms origin.
    l1 = re.search(rf"L1 hit \(memory\)\s+({TIME})", out)
    assert l1 is not None
    assert float(l1.group(1).split()[0]) < 1.0


def test_demo_in_a_given_directory_removes_its_keys(tmp_path: Path) -> None:
    directory = tmp_path / "demo-disk"
    result = invoke("demo", "--dir", str(directory), *FAST)
    assert result.exit_code == 0, result.output + result.stderr
    assert str(directory) in result.stdout
    layer = DiskLayer(directory)
    try:
        assert layer.size() == 0
    finally:
        layer.close()


@pytest.mark.redis
def test_demo_with_redis_shows_the_redis_hit_and_cleans_up(redis_clean: Any) -> None:
    result = invoke("demo", "--redis", redis_clean.url, *FAST)
    assert result.exit_code == 0, result.output + result.stderr
    out = result.stdout
    assert "memory -> redis -> disk" in out
    assert re.search(rf"L2 hit \(redis\) \+ backfill\s+{TIME}", out)
    assert re.search(rf"L3 hit \(disk\) \+ backfill\s+{TIME}", out)
    assert "redis hit: served by redis, backfilled to memory" in out
    assert "disk hit: served by disk, backfilled to memory, redis" in out
    assert "100 concurrent callers of a cold key: 1 origin fetch" in out
    # Its keys are gone. What remains is at most the fence its clear() put up (a NUL after
    # the prefix, never a cache key; it expires after the layer's lease_ttl): see RedisLayer.
    with redis.Redis.from_url(redis_clean.url) as client:
        left = client.keys("*")
    assert all(b"\x00fence:" in key for key in left), left


def test_unreachable_redis_is_one_line_and_exit_1() -> None:
    url = f"redis://:s3cret@127.0.0.1:{closed_port()}/0"
    proc = run_module("demo", "--redis", url)
    assert proc.returncode == 1
    line = assert_one_error_line(proc.stderr)
    assert line.startswith("Error: cannot reach Redis at redis://:***@127.0.0.1:")
    assert "s3cret" not in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize(
    "args",
    [["demo", "--no-such-option"], ["demo", "--redis", "http://127.0.0.1:6379"], ["nope"]],
)
def test_usage_errors_exit_2_with_one_line(args: list[str]) -> None:
    result = invoke(*args)
    assert result.exit_code == 2
    assert_one_error_line(result.stderr)
    assert "--help" in result.stderr


def test_usage_error_through_the_module_entry_point() -> None:
    proc = run_module("demo", "--origin-latency", "-1")
    assert proc.returncode == 2
    assert "--origin-latency" in assert_one_error_line(proc.stderr)


def test_unexpected_failure_is_one_line_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(*args: Any) -> None:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr("layercache.cli.demo._run", broken)
    result = invoke("demo")
    assert result.exit_code == 1
    line = assert_one_error_line(result.stderr)
    assert "RuntimeError: boom second line" in line


def test_missing_cli_extra_names_the_install_command() -> None:
    # sys.modules[name] = None makes ``import click`` fail as if it were not installed.
    code = "import sys; sys.modules['click'] = None; from layercache.cli import main; main()"
    proc = run_module(code=code)
    assert proc.returncode == 1
    line = assert_one_error_line(proc.stderr)
    assert "pip install 'layercache-py[cli]'" in line


def test_redact_url_hides_passwords() -> None:
    assert redact_url("redis://user:pw@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact_url("redis://:pw@host/0") == "redis://:***@host/0"
    assert "pw" not in redact_url("redis://host/0?password=pw&db=1")
    assert redact_url("redis://host:6379/0") == "redis://host:6379/0"
    # A Sentinel URL: the data nodes' password and the sentinels' own one.
    sentinel = "redis+sentinel://:pw@h1:26379,h2:26379/mymaster/0?sentinel_password=spw&db=1"
    assert redact_url(sentinel) == (
        "redis+sentinel://:***@h1:26379,h2:26379/mymaster/0?sentinel_password=***&db=1"
    )


def test_a_failed_claim_ends_the_demo_with_exit_1(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without single-flight every caller fetches: the demo must refuse to print its table.
    from layercache import CacheStack

    monkeypatch.setattr(
        "layercache.cli.demo.CacheStack",
        functools.partial(CacheStack, stampede_prevention=False),
    )
    result = invoke("demo", *FAST)
    assert result.exit_code == 1
    line = assert_one_error_line(result.stderr)
    # Every caller fetches on its own; a caller that reads the layers after an early fetch
    # has stored its value may find it, so "many", not exactly 100.
    match = re.search(r"100 concurrent callers caused (\d+) origin fetches", line)
    assert match is not None, line
    assert int(match.group(1)) > 1
    assert "L1 hit" not in result.stdout
