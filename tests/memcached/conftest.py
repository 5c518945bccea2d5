"""Fixtures of the memcached layer's tests: a real ``memcached`` on a free loopback port.

Without the ``memcached`` binary (or aiomcache/pymemcache) the tests are skipped locally and
fail under ``CI=true``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator

import pytest

from _memcached_server import MemcachedServer


def memcached_binary() -> str:
    """``memcached``'s path; skipped locally without it, a failure under ``CI=true``."""
    binary = shutil.which("memcached")
    if binary is None:
        message = "memcached is not installed (apt-get install memcached)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return binary


def _require_drivers() -> None:
    for module in ("aiomcache", "pymemcache"):
        try:
            __import__(module)
        except ImportError:
            message = f"{module} is not installed (pip install 'layercache-py[memcached]')"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)


@pytest.fixture(scope="session")
def memcached_server() -> Iterator[MemcachedServer]:
    """One memcached for the session (keys of each test live under their own prefix)."""
    binary = memcached_binary()
    _require_drivers()
    server = MemcachedServer.launch(binary=binary)
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def memcached(memcached_server: MemcachedServer) -> MemcachedServer:
    """The session's memcached, restarted if a test killed it."""
    memcached_server.start()
    return memcached_server


@pytest.fixture
def own_memcached() -> Iterator[MemcachedServer]:
    """A memcached of this test alone (to kill and restart)."""
    binary = memcached_binary()
    _require_drivers()
    server = MemcachedServer.launch(binary=binary)
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def prefix() -> str:
    """A prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:12]}:"
