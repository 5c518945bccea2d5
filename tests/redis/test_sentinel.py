"""Redis Sentinel: a client from ``Sentinel.master_for`` works wherever a client is accepted.

A real ``redis-server --sentinel`` process monitors the session's real redis-server.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio.sentinel import Sentinel

from _redis_server import find_free_port
from layercache import (
    CacheStack,
    MemoryLayer,
    RedisInvalidationBus,
    RedisLayer,
    RedisSingleFlightCoordinator,
    RedisTagIndex,
)


@pytest.fixture(scope="module")
def sentinel(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    workdir: Path = tmp_path_factory.mktemp("sentinel")
    port = find_free_port()
    config = workdir / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
        f"sentinel monitor main 127.0.0.1 {redis_server.port} 1\n"
        "sentinel down-after-milliseconds main 5000\n"
    )
    binary = redis_server.binary
    process = subprocess.Popen(
        [binary, str(config), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import redis

        deadline = time.monotonic() + 10
        while True:
            try:
                probe = redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5)
                address = probe.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "main")
                probe.close()
                if address:
                    break
            except redis.RedisError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("redis sentinel did not come up")
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(10)


async def test_a_sentinel_managed_client_drives_every_component(
    sentinel: int, redis_clean: Any
) -> None:
    manager = Sentinel([("127.0.0.1", sentinel)], socket_timeout=1)
    client = manager.master_for("main")
    stack = CacheStack(
        [MemoryLayer(), RedisLayer(client=client, prefix="s:")],
        tag_index=RedisTagIndex(client=client, prefix="s:tags"),
        single_flight_coordinator=RedisSingleFlightCoordinator(client=client, prefix="s:sf"),
        invalidation_bus=RedisInvalidationBus(publisher=client, channel="s:bus"),
        broadcast_l1_invalidation=True,
    )
    async with stack:
        assert await stack.get("k", lambda: {"v": 1}, tags=["t"]) == {"v": 1}
        stack.layers[0].clear()
        assert await stack.get("k") == {"v": 1}  # served by Redis through the sentinel
        assert await stack.invalidate_by_tag("t") == 1
        assert await stack.get("k") is None
    await client.aclose()
    for connection in manager.sentinels:
        await connection.aclose()
