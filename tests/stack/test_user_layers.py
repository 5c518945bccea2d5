"""User-written layers (sync, async, minimal) plug into CacheStack; L1 hits stay in L1."""

from __future__ import annotations

from typing import Any

import pytest
from stack_support import AsyncRecordingLayer, EventLog, MinimalLayer, RecordingLayer, lcall

from _twins_async import ASYNC, coroutine_function
from layercache import CacheStack, MemoryLayer
from layercache.testing import ManualClock


@pytest.mark.parametrize("layer_class", [RecordingLayer, AsyncRecordingLayer])
async def test_user_layer_full_flow(clock: ManualClock, layer_class: Any) -> None:
    memory = MemoryLayer(clock=clock)
    user = layer_class(name="user-layer")
    async with CacheStack([memory, user], clock=clock) as cache:
        assert await cache.get("k", lambda: {"v": 1}, tags=["t"]) == {"v": 1}
        assert (await lcall(user, "get", "k")).value == {"v": 1}
        memory.delete("k")
        assert await cache.get("k") == {"v": 1}
        assert memory.get("k") is not None, "not backfilled from the user layer"
        await cache.set_many([("p:1", 1), ("p:2", 2), ("q:1", 3)])
        await cache.invalidate_by_pattern("p:*")
        assert await cache.get_many(["p:1", "p:2", "q:1"]) == [None, None, 3]
        await cache.invalidate_by_prefix("q:")
        assert await lcall(user, "get", "q:1") is None
        await cache.invalidate_by_tag("t")
        assert await lcall(user, "get", "k") is None
        await cache.set("c", 1)
        await cache.clear()
        assert await lcall(user, "get", "c") is None


async def test_a_layer_with_async_methods(clock: ManualClock) -> None:
    # A real ``async def get`` in both flavours: the asyncio stack awaits it; the sync stack
    # cannot, and refuses the layer when it is built.
    layer = MinimalLayer("async-get")
    layer.get = coroutine_function(None)  # type: ignore[method-assign]
    if ASYNC:
        async with CacheStack([MemoryLayer(clock=clock), layer], clock=clock) as cache:
            assert await cache.get("k") is None
            assert await cache.get("k", lambda: 1) == 1
    else:
        with pytest.raises(TypeError, match="async"):
            CacheStack([MemoryLayer(clock=clock), layer], clock=clock)


async def test_minimal_user_layer(clock: ManualClock) -> None:
    memory = MemoryLayer(clock=clock)
    minimal = MinimalLayer()
    async with CacheStack([memory, minimal], clock=clock) as cache:
        await cache.set_many([("a", 1), ("b", 2)])
        assert set(minimal.data) == {"a", "b"}
        memory.clear()
        assert await cache.get_many(["a", "b", "c"]) == [1, 2, None]
        assert await cache.has("a")
        await cache.delete_many(["a"])
        assert "a" not in minimal.data
        await cache.set("t", 1, tags=["x"])
        await cache.invalidate_by_tag("x")
        assert "t" not in minimal.data
        await cache.clear()
        assert minimal.data == {}


async def test_l1_hit_never_reaches_lower_layers(clock: ManualClock) -> None:
    memory = MemoryLayer(clock=clock)
    remote = RecordingLayer("remote")
    async with CacheStack([memory, remote], clock=clock) as cache:
        await cache.set("k", "v")
        remote.calls.clear()
        for _ in range(10):
            assert await cache.get("k") == "v"
        assert await cache.get("k", lambda: "other") == "v"
        assert remote.calls == []


async def test_layer_reported_errors_become_error_events(clock: ManualClock) -> None:
    class CorruptLayer(MinimalLayer):
        def __init__(self) -> None:
            super().__init__("corrupt")
            self.handler: Any = None

        def set_error_handler(self, handler: Any) -> None:
            self.handler = handler

        def get(self, key: str) -> None:
            # Corrupt bytes read as a miss and are reported, never raised.
            self.handler(ValueError("bad bytes"), {"key": key})
            return None

    layer = CorruptLayer()
    async with CacheStack([MemoryLayer(clock=clock), layer], clock=clock) as cache:
        log = EventLog(cache, "error")
        assert await cache.get("k") is None
        assert await cache.get("j", lambda: "fetched") == "fetched"
        errors = log.of("error")
        assert len(errors) == 2
        assert isinstance(errors[0]["error"], ValueError)
        assert errors[0]["context"]["key"] == "k"
        assert cache.get_metrics().errors == 2
