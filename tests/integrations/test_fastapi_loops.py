"""A module-level stack in a FastAPI app, through two ``TestClient`` sessions (issue 10, point 2).

Each ``TestClient`` session runs the app on its own event loop (anyio's blocking portal),
which the second session used to break: the Redis clients were bound to the first session's
loop ("Event loop is closed", "attached to a different loop").
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx2")  # what starlette's TestClient uses (httpx is deprecated there)

from fastapi import FastAPI
from fastapi.testclient import TestClient

from _redis_server import RedisServer
from layercache import CacheStack, MemoryLayer
from layercache.redis import (
    RedisInvalidationBus,
    RedisLayer,
    RedisSingleFlightCoordinator,
    RedisTagIndex,
)

pytestmark = pytest.mark.redis


def make_app(url: str) -> tuple[FastAPI, CacheStack, list[int]]:
    # The README's shape: one stack, built once, shared by every request.
    cache = CacheStack(
        [MemoryLayer(ttl=60), RedisLayer(url=url, ttl=3600)],
        invalidation_bus=RedisInvalidationBus(url=url, channel="fastapi:inv"),
        single_flight_coordinator=RedisSingleFlightCoordinator(url=url, prefix="fastapi:sf"),
        tag_index=RedisTagIndex(url=url, prefix="fastapi:tags"),
    )
    loads: list[int] = []
    app = FastAPI()

    @app.get("/users/{user_id}")
    async def user(user_id: int) -> dict[str, Any]:
        async def load() -> dict[str, Any]:
            loads.append(user_id)
            return {"id": user_id}

        value: dict[str, Any] = await cache.get(f"user:{user_id}", load, tags=["users"])
        return value

    @app.delete("/users")
    async def drop_users() -> dict[str, int]:
        return {"dropped": await cache.invalidate_by_tag("users")}

    return app, cache, loads


def test_two_test_client_sessions_share_one_stack(redis_clean: RedisServer) -> None:
    app, cache, loads = make_app(redis_clean.url)
    expected = [[1, 2, 1], [1, 2, 1, 2, 1]]  # session 2: user 1 is still in Redis
    for session in range(2):
        with TestClient(app) as client:
            for user_id in (1, 2):
                response = client.get(f"/users/{user_id}")
                assert response.status_code == 200, response.text
                assert response.json() == {"id": user_id}
            assert client.delete("/users").status_code == 200
            assert client.get("/users/1").json() == {"id": 1}
        # Each loaded where Redis had no copy (first use, after the invalidation).
        assert loads == expected[session]
    redis_layer: Any = cache.layers[1]
    assert redis_layer.client.loops == 0  # each session's loop closed its client
