"""Shared inputs: the 1 KiB value, the throwaway redis-server, environment facts."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VALUE_SIZE = 1024


def make_value(size: int = VALUE_SIZE) -> dict[str, Any]:
    """A realistic JSON object whose compact ``json.dumps`` is exactly ``size`` bytes."""
    value: dict[str, Any] = {
        "id": 123456,
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "active": True,
        "score": 98.25,
        "roles": ["admin", "editor", "viewer"],
        "address": {"city": "London", "zip": "NW1 6XE", "country": "GB"},
        "bio": "",
    }
    base = len(json.dumps(value, separators=(",", ":")))
    value["bio"] = "x" * (size - base)
    assert len(json.dumps(value, separators=(",", ":"))) == size
    return value


VALUE = make_value()
VALUE_JSON = json.dumps(VALUE, separators=(",", ":")).encode()


@contextlib.contextmanager
def redis_server() -> Iterator[Any]:
    """A throwaway ``redis-server`` on a free 127.0.0.1 port (never 6379), stopped on exit.

    Reuses the test suite's launcher (``tests/_redis_server.py``, standard library only).
    """
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from _redis_server import RedisServer  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    server = RedisServer.launch()
    try:
        yield server
    finally:
        server.close()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """Facts that make a run interpretable later."""
    try:
        import redis.utils

        hiredis = bool(redis.utils.HIREDIS_AVAILABLE)
    except ImportError:
        hiredis = False
    try:
        out = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except OSError:
        out = "not found"
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "redis_server": out,
        "hiredis_parser": hiredis,
        "versions": {
            dist: _version(dist)
            for dist in (
                "layercache-py",
                "redis",
                "hiredis",
                "cashews",
                "aiocache",
                "dogpile.cache",
                "cachetools",
            )
        },
    }
