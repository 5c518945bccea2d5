"""The layer contract (``layercache.testing``) over every shipped layer and user-written layers."""

from __future__ import annotations

import asyncio
import time
import unittest
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from layercache import DiskLayer, Entry, MemoryLayer
from layercache._glob import glob_match
from layercache.testing import (
    CONTRACT_CHECKS,
    LayerContractTests,
    ManualClock,
    run_layer_contract,
)

# --- shipped layers ---------------------------------------------------------------------------


class TestMemoryLayerLru(LayerContractTests):
    uses_manual_clock = True

    def make_layer(self) -> MemoryLayer:
        return MemoryLayer(ttl=60, eviction="lru", clock=self.clock or time.time)


class TestMemoryLayerLfu(LayerContractTests):
    uses_manual_clock = True

    def make_layer(self) -> MemoryLayer:
        return MemoryLayer(ttl=60, eviction="lfu", clock=self.clock or time.time)


class TestMemoryLayerFifo(LayerContractTests):
    uses_manual_clock = True

    def make_layer(self) -> MemoryLayer:
        return MemoryLayer(ttl=60, eviction="fifo", clock=self.clock or time.time)


class TestMemoryLayerBytesBound(LayerContractTests):
    uses_manual_clock = True

    def make_layer(self) -> MemoryLayer:
        return MemoryLayer(
            ttl=None, max_size=10_000, max_bytes=64 * 1024 * 1024, clock=self.clock or time.time
        )


class TestMemoryLayerRealClock(LayerContractTests):
    """The memory layer on the real clock: expiry by bounded polling."""

    def make_layer(self) -> MemoryLayer:
        return MemoryLayer(ttl=60)


class TestDiskLayer(LayerContractTests):
    @pytest.fixture(autouse=True)
    def _directory(self, tmp_path: Path) -> None:
        self.directory = tmp_path / "disk"

    def make_layer(self) -> DiskLayer:
        return DiskLayer(self.directory)


@pytest.mark.redis
class TestRedisLayer(LayerContractTests):
    @pytest.fixture(autouse=True)
    def _client(self, redis_client: Any) -> None:
        self.client = redis_client

    def make_layer(self) -> Any:
        from layercache import RedisLayer

        return RedisLayer(client=self.client, prefix="contract:")

    async def close_layer(self, layer: Any) -> None:
        # The client belongs to the fixture; a layer built with client= must not need closing,
        # but closing it must not break the fixture's client either.
        await layer.aclose()
        assert await self.client.ping()


@pytest.mark.redis
class TestRedisLayerForeignKeys(LayerContractTests):
    """Keys outside the layer's prefix are invisible to it (and survive clear())."""

    @pytest.fixture(autouse=True)
    async def _client(self, redis_client: Any) -> None:
        self.client = redis_client
        await redis_client.set("foreign:1", b"\x00not an entry")
        await redis_client.set("other-prefix:user:1", b"{}")

    def make_layer(self) -> Any:
        from layercache import RedisLayer

        return RedisLayer(client=self.client, prefix="mine:", name="cache-redis")

    async def close_layer(self, layer: Any) -> None:
        assert await self.client.get("foreign:1") == b"\x00not an entry"
        assert await self.client.get("other-prefix:user:1") == b"{}"
        await layer.aclose()


# --- user-written layers ----------------------------------------------------------------------


class SyncDictLayer:
    """A user-written layer: plain methods over a dict, every optional method, injected clock."""

    is_local = True

    def __init__(self, clock: Any = time.time, name: str = "sync-dict") -> None:
        self.name = name
        self.default_ttl: float | None = 60
        self._clock = clock
        self._data: dict[str, tuple[Entry, float | None]] = {}

    def _live(self, key: str) -> Entry | None:
        item = self._data.get(key)
        if item is None:
            return None
        entry, deadline = item
        if deadline is not None and self._clock() >= deadline:
            del self._data[key]
            return None
        return entry

    def get(self, key: str) -> Entry | None:
        return self._live(key)

    def set(self, key: str, entry: Entry, ttl: float | None) -> None:
        self._data[key] = (entry, None if ttl is None else self._clock() + ttl)

    def delete(self, key: str) -> None:
        self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()

    def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        return [self._live(k) for k in keys]

    def set_many(self, items: Sequence[tuple[str, Entry, float | None]]) -> None:
        for key, entry, ttl in items:
            self.set(key, entry, ttl)

    def delete_many(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.delete(key)

    def delete_matching(self, pattern: str) -> int:
        doomed = [k for k in list(self._data) if self._live(k) and glob_match(pattern, k)]
        for key in doomed:
            del self._data[key]
        return len(doomed)

    def keys(self, pattern: str | None = None, limit: int | None = None) -> list[str]:
        found = [
            k
            for k in list(self._data)
            if self._live(k) is not None and (pattern is None or glob_match(pattern, k))
        ]
        return found if limit is None else found[:limit]

    def has(self, key: str) -> bool:
        return self._live(key) is not None

    def ttl(self, key: str) -> float | None:
        if self._live(key) is None:
            return None
        deadline = self._data[key][1]
        return None if deadline is None else deadline - self._clock()

    def size(self) -> int:
        return len(self.keys())

    def ping(self) -> bool:
        return True


class AsyncDictLayer:
    """The same store with ``async`` methods (yielding to the loop on every call)."""

    is_local = False

    def __init__(self, clock: Any = time.time) -> None:
        self.name = "async-dict"
        self.default_ttl: float | None = None
        self._inner = SyncDictLayer(clock)
        self.closed = False

    async def get(self, key: str) -> Entry | None:
        await asyncio.sleep(0)
        return self._inner.get(key)

    async def set(self, key: str, entry: Entry, ttl: float | None) -> None:
        await asyncio.sleep(0)
        self._inner.set(key, entry, ttl)

    async def delete(self, key: str) -> None:
        await asyncio.sleep(0)
        self._inner.delete(key)

    async def clear(self) -> None:
        self._inner.clear()

    async def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        return self._inner.get_many(keys)

    async def set_many(self, items: Sequence[tuple[str, Entry, float | None]]) -> None:
        self._inner.set_many(items)

    async def delete_many(self, keys: Sequence[str]) -> None:
        self._inner.delete_many(keys)

    async def delete_matching(self, pattern: str) -> int:
        return self._inner.delete_matching(pattern)

    async def keys(self, pattern: str | None = None, limit: int | None = None) -> list[str]:
        return self._inner.keys(pattern, limit)

    async def has(self, key: str) -> bool:
        return self._inner.has(key)

    async def ttl(self, key: str) -> float | None:
        return self._inner.ttl(key)

    async def size(self) -> int:
        return self._inner.size()

    async def ping(self) -> bool:
        return True

    async def aclose(self) -> None:
        self.closed = True


class MinimalAsyncLayer:
    """Only the required methods, async; optional checks are skipped."""

    name = "minimal"
    default_ttl = None
    is_local = False

    def __init__(self) -> None:
        self._data: dict[str, Entry] = {}
        self._deadlines: dict[str, float] = {}

    async def get(self, key: str) -> Entry | None:
        deadline = self._deadlines.get(key)
        if deadline is not None and time.monotonic() >= deadline:
            self._data.pop(key, None)
        return self._data.get(key)

    async def set(self, key: str, entry: Entry, ttl: float | None) -> None:
        self._data[key] = entry
        if ttl is None:
            self._deadlines.pop(key, None)
        else:
            self._deadlines[key] = time.monotonic() + ttl

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)

    async def clear(self) -> None:
        self._data.clear()


class TestSyncUserLayer(LayerContractTests):
    uses_manual_clock = True

    def make_layer(self) -> SyncDictLayer:
        return SyncDictLayer(self.clock)


class TestAsyncUserLayer(LayerContractTests):
    uses_manual_clock = True

    async def make_layer(self) -> AsyncDictLayer:  # an async factory is allowed too
        return AsyncDictLayer(self.clock)


class TestMinimalAsyncUserLayer(LayerContractTests):
    expiry_ttl = 0.1

    def make_layer(self) -> MinimalAsyncLayer:
        return MinimalAsyncLayer()


# --- the runners themselves -------------------------------------------------------------------


async def test_run_layer_contract_function_passes_a_good_layer() -> None:
    clock = ManualClock()
    report = await run_layer_contract(lambda: SyncDictLayer(clock), clock=clock)
    assert report.failed == {}
    assert set(report.passed) == set(CONTRACT_CHECKS)


async def test_run_layer_contract_reports_skipped_optional_methods() -> None:
    report = await run_layer_contract(MinimalAsyncLayer, expiry_ttl=0.05, large_value_size=1024)
    assert "get_many" in report.skipped
    assert "keys" in report.skipped
    assert {"get_miss", "round_trip_values", "ttl_expiry", "clear"} <= set(report.passed)


class _ForgetfulLayer(SyncDictLayer):
    """Broken on purpose: delete does nothing, get_many drops misses, keys ignore the pattern."""

    def delete(self, key: str) -> None:
        pass

    def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        return [e for e in super().get_many(keys) if e is not None]

    def keys(self, pattern: str | None = None, limit: int | None = None) -> list[str]:
        return super().keys(None, None)


class _LossyLayer(SyncDictLayer):
    """Broken on purpose: stores tags as a list, floats as ints, never expires."""

    def set(self, key: str, entry: Entry, ttl: float | None) -> None:
        value = int(entry.value) if isinstance(entry.value, float) else entry.value
        copy = Entry(value, entry.stored_at, entry.fresh_until, tags=list(entry.tags))  # type: ignore[arg-type]
        super().set(key, copy, None)


async def test_run_layer_contract_catches_broken_layers() -> None:
    clock = ManualClock()
    with pytest.raises(AssertionError) as info:
        await run_layer_contract(lambda: _ForgetfulLayer(clock), clock=clock)
    message = str(info.value)
    for check in ("delete", "get_many", "keys", "delete_absent", "keys_independent"):
        assert f"--- {check}\n" in message, f"the contract missed the broken {check}"
    assert "--- round_trip_values\n" not in message

    with pytest.raises(AssertionError) as info:
        await run_layer_contract(lambda: _LossyLayer(clock), clock=clock)
    message = str(info.value)
    for check in ("round_trip_values", "round_trip_metadata", "ttl_expiry"):
        assert f"--- {check}\n" in message, f"the contract missed the broken {check}"


def test_contract_runs_under_unittest() -> None:
    class MemoryUnitTests(LayerContractTests, unittest.IsolatedAsyncioTestCase):
        uses_manual_clock = True

        def make_layer(self) -> MemoryLayer:
            return MemoryLayer(clock=self.clock or time.time)

    class BrokenUnitTests(LayerContractTests, unittest.IsolatedAsyncioTestCase):
        uses_manual_clock = True

        def make_layer(self) -> _ForgetfulLayer:
            return _ForgetfulLayer(self.clock)

    loader = unittest.TestLoader()
    good = unittest.TestResult()
    loader.loadTestsFromTestCase(MemoryUnitTests).run(good)
    assert good.testsRun == len(CONTRACT_CHECKS)
    assert good.wasSuccessful(), good.failures + good.errors
    bad = unittest.TestResult()
    loader.loadTestsFromTestCase(BrokenUnitTests).run(bad)
    assert len(bad.failures) >= 3
