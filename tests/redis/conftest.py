"""Fixtures shared by the Redis test modules of this folder."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

sys.path.insert(0, str(Path(__file__).parent))

from tag_index_support import Backend


@pytest.fixture(params=["single", "cluster3"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """Each test twice: on a single server (``redis_clean``) and on the three-master cluster
    (``redis_cluster3``); the clients it opened are closed afterwards. (The sync tag-index
    module defines its own ``backend`` with sync clients, which overrides this one there.)"""
    if request.param == "single":
        server = request.getfixturevalue("redis_clean")

        def make() -> Any:
            return redis.asyncio.Redis(host=server.host, port=server.port)

    else:
        cluster = request.getfixturevalue("redis_cluster3")
        cluster.flushall()
        make = cluster.async_client
    created = Backend(request.param, make)
    try:
        yield created
    finally:
        for client in created.clients:
            await client.aclose()
