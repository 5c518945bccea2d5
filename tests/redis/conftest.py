"""Fixtures shared by the Redis test modules of this folder."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.cluster

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


@pytest.fixture(params=["single", "cluster3"])
def sync_backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """``backend`` with sync clients (redis.Redis / redis.RedisCluster): the sync test modules
    use it as their ``backend``."""
    if request.param == "single":
        server = request.getfixturevalue("redis_clean")

        def make() -> Any:
            return redis.Redis(host=server.host, port=server.port, socket_timeout=5)

    else:
        cluster = request.getfixturevalue("redis_cluster3")
        cluster.flushall()

        def make() -> Any:
            return redis.RedisCluster(
                startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in cluster.startup_nodes],
                socket_timeout=5,
            )

    created = Backend(request.param, make)
    try:
        yield created
    finally:
        for client in created.clients:
            client.close()
