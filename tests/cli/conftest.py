"""A Redis of the admin CLI tests' own, for tests that change its configuration
(requirepass, maxmemory-policy) and must not disturb the session server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from _components import redis_binary
from _redis_server import RedisServer


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of this module only: tests may reconfigure it (and must put it back)."""
    server = RedisServer(redis_binary(), workdir=Path(tmp_path_factory.mktemp("cli-redis")))
    server.start()
    try:
        yield server
    finally:
        server.stop()
