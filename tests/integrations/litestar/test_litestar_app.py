"""``LayerCacheStore`` as Litestar's response cache store, through Litestar's ``TestClient``:
one app, and two app instances sharing a real Redis (with the invalidation bus)."""

from __future__ import annotations

import asyncio
import time
from contextlib import ExitStack
from typing import Any

import pytest

pytest.importorskip("litestar")

from litestar import Litestar, Request, get, post
from litestar.config.response_cache import CACHE_FOREVER, ResponseCacheConfig
from litestar.params import FromPath
from litestar.testing import TestClient

from _redis_server import RedisServer
from layercache import CacheStack, MemoryLayer
from layercache.integrations.litestar import LayerCacheStore
from layercache.redis import RedisInvalidationBus, RedisLayer
from polling import eventually

pytestmark = pytest.mark.redis


class Instance:
    """One application instance (one process in production): its own stack and store."""

    def __init__(self, url: str | None) -> None:
        layers: list[Any] = [MemoryLayer(ttl=60)]
        options: dict[str, Any] = {}
        if url is not None:
            layers.append(RedisLayer(url=url, ttl=3600))
            options["invalidation_bus"] = RedisInvalidationBus(url=url, channel="litestar:inv")
        self.cache = CacheStack(layers, **options)
        self.store = LayerCacheStore(self.cache)
        self.calls: list[str] = []
        calls = self.calls

        @get("/products/{pid:int}", cache=True, sync_to_thread=False)
        def product(pid: FromPath[int]) -> dict[str, Any]:
            calls.append(f"product:{pid}")
            return {"id": pid, "name": f"product {pid}", "blob": "é\x00\u2603"}

        @get("/forever", cache=CACHE_FOREVER, sync_to_thread=False)
        def forever() -> str:
            calls.append("forever")
            return "kept"

        @get("/uncached", sync_to_thread=False)
        def uncached() -> str:
            calls.append("uncached")
            return "fresh"

        @post("/purge", status_code=200)
        async def purge(request: Request[Any, Any, Any]) -> None:
            await request.app.stores.get("response_cache").delete_all()

        self.app = Litestar(
            [product, forever, uncached, purge],
            stores={"response_cache": self.store.with_namespace("response_cache")},
            response_cache_config=ResponseCacheConfig(
                store="response_cache", default_expiration=30
            ),
            on_startup=[self.cache.start],
            on_shutdown=[self.cache.aclose],
        )


def test_handler_runs_once_then_the_store_answers() -> None:
    instance = Instance(None)
    with TestClient(instance.app) as client:
        first = client.get("/products/1")
        assert first.status_code == 200
        for _ in range(5):
            again = client.get("/products/1")
            assert again.status_code == 200
            assert again.json() == first.json()
            assert again.headers["content-type"] == first.headers["content-type"]
        assert client.get("/products/2").json()["id"] == 2
        assert client.get("/uncached").text == client.get("/uncached").text == "fresh"
        assert instance.calls == ["product:1", "product:2", "uncached", "uncached"]
        assert client.post("/purge").status_code == 200
        assert client.get("/products/1").json() == first.json()
        assert instance.calls[-1] == "product:1"


def test_cached_responses_live_in_the_stack_with_the_route_ttl(
    redis_clean: RedisServer,
) -> None:
    instance = Instance(redis_clean.url)
    with TestClient(instance.app) as client:
        assert client.get("/products/7?b=2&a=1").status_code == 200
        assert client.get("/forever").text == "kept"
    key = "layercache:LITESTAR:response_cache::GET/products/7a=1&b=2"
    assert int(redis_clean.command("EXISTS", key)) == 1
    assert 0 < int(redis_clean.command("TTL", key)) <= 30  # default_expiration
    # CACHE_FOREVER: no expiry of its own, the Redis layer's default TTL bounds it.
    forever_ttl = int(redis_clean.command("TTL", "layercache:LITESTAR:response_cache::GET/forever"))
    assert 30 < forever_ttl <= 3600


def test_two_instances_share_cached_responses_and_purges(redis_clean: RedisServer) -> None:
    first, second = Instance(redis_clean.url), Instance(redis_clean.url)
    with ExitStack() as stack:
        one = stack.enter_context(TestClient(first.app))
        two = stack.enter_context(TestClient(second.app))
        body = one.get("/products/1").json()
        # The second instance finds the first's response in Redis: its handler never runs.
        assert two.get("/products/1").json() == body
        assert two.get("/products/1").json() == body  # now from its own memory layer
        assert first.calls == ["product:1"]
        assert second.calls == []
        # A purge on the first drops the second's memory copy too (the bus), and Redis's.
        assert one.post("/purge").status_code == 200

        def second_renders_again() -> bool:
            assert two.get("/products/1").json() == body
            return second.calls == ["product:1"]

        eventually(second_renders_again, what="the purge reached the second instance")
        # ... whose fresh render the first instance now serves.
        assert one.get("/products/1").json() == body
        assert first.calls == ["product:1"]


async def test_stores_of_two_stacks_see_each_others_writes_and_deletes(
    redis_clean: RedisServer,
) -> None:
    def build() -> CacheStack:
        return CacheStack(
            [MemoryLayer(ttl=60), RedisLayer(url=redis_clean.url, ttl=3600)],
            invalidation_bus=RedisInvalidationBus(url=redis_clean.url, channel="litestar:inv"),
        )

    async with build() as first_cache, build() as second_cache:
        first = LayerCacheStore(first_cache).with_namespace("sessions")
        second = LayerCacheStore(second_cache).with_namespace("sessions")
        await first.set("abc", b"\x01session\xff", expires_in=100)
        assert await second.get("abc") == b"\x01session\xff"  # from Redis, now in its memory
        assert await second.expires_in("abc") in range(95, 101)
        await first.delete("abc")
        await _until_absent(second, "abc")
        await first.set("k1", b"1")
        await first.set("k2", b"2")
        assert await second.get("k1") == b"1"
        assert await second.get("k2") == b"2"
        await second.delete_all()
        await _until_absent(first, "k1")
        await _until_absent(first, "k2")


async def _until_absent(store: LayerCacheStore, key: str, timeout: float = 10.0) -> None:
    """Bounded polling: the bus drops the key from the store's memory layer within ``timeout``."""
    deadline = time.monotonic() + timeout
    while await store.get(key) is not None:
        if time.monotonic() > deadline:
            raise AssertionError(f"{key!r} still present in {store!r} after {timeout}s")
        await asyncio.sleep(0.005)
