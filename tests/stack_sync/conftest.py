"""Fixtures of the SyncCacheStack behaviour tests: memory, memory+disk, memory+redis stacks."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Reuse the async suite's non-async helpers (ABSENT, EventLog, RecordingLayer) without editing them.
sys.path.insert(0, str(Path(__file__).parent.parent / "stack"))
sys.path.insert(0, str(Path(__file__).parent))

from sync_stack_support import SyncEnv

from layercache import DiskLayer, MemoryLayer, SyncCacheStack
from layercache.testing import ManualClock

STACK_KINDS = ["memory", "memory+disk", "memory+redis"]
REDIS_PREFIX = "lc-sync-stack:"
_DISK_IDS = itertools.count()

BuildSync = Callable[..., SyncEnv]


@pytest.fixture
def clock() -> ManualClock:
    """A fake wall clock shared by the stack and its memory layer."""
    return ManualClock()


def _kind(request: pytest.FixtureRequest) -> tuple[str, Any]:
    if request.param == "memory+redis":
        return request.param, request.getfixturevalue("redis_clean")
    return request.param, None


@pytest.fixture(params=STACK_KINDS)
def sync_kind(request: pytest.FixtureRequest) -> tuple[str, Any]:
    """Every stack kind, with the Redis server when it has one."""
    return _kind(request)


@pytest.fixture(params=["memory+disk", "memory+redis"])
def sync_layered_kind(request: pytest.FixtureRequest) -> tuple[str, Any]:
    """The stack kinds with a lower layer."""
    return _kind(request)


def _factory(
    kind_server: tuple[str, Any], clock: ManualClock, tmp_path: Path
) -> tuple[BuildSync, list[SyncEnv]]:
    built: list[SyncEnv] = []

    def build(**kwargs: Any) -> SyncEnv:
        kind, server = kind_server
        memory_ttl = kwargs.pop("memory_ttl", 60)
        lower_ttl = kwargs.pop("lower_ttl", 3600)
        layers: list[Any] = [MemoryLayer(ttl=memory_ttl, clock=clock)]
        extra: dict[str, Any] = {}
        if kind == "memory+disk":
            layers.append(DiskLayer(tmp_path / f"disk-{next(_DISK_IDS)}", ttl=lower_ttl))
        elif kind == "memory+redis":
            from layercache import RedisLayer

            extra["server"] = server
            layers.append(RedisLayer(url=server.url, ttl=lower_ttl, prefix=REDIS_PREFIX))
        env = SyncEnv(kind=kind, cache=SyncCacheStack(layers, clock=clock, **kwargs), clock=clock)
        env.extra.update(extra)
        built.append(env)
        return env

    return build, built


@pytest.fixture
def build_sync(
    sync_kind: tuple[str, Any], clock: ManualClock, tmp_path: Path
) -> Iterator[BuildSync]:
    """Factory of sync stacks of the parametrized kind; every one is closed afterwards."""
    build, built = _factory(sync_kind, clock, tmp_path)
    yield build
    for env in built:
        env.cache.close()


@pytest.fixture
def senv(build_sync: BuildSync) -> SyncEnv:
    """A sync stack of the parametrized kind with default options."""
    return build_sync()


@pytest.fixture
def build_sync_layered(
    sync_layered_kind: tuple[str, Any], clock: ManualClock, tmp_path: Path
) -> Iterator[BuildSync]:
    """Factory of two-layer sync stacks (memory+disk, memory+redis)."""
    build, built = _factory(sync_layered_kind, clock, tmp_path)
    yield build
    for env in built:
        env.cache.close()


@pytest.fixture
def slayered(build_sync_layered: BuildSync) -> SyncEnv:
    """A two-layer sync stack with default options."""
    return build_sync_layered()


@pytest.fixture
def smemory(clock: ManualClock) -> Iterator[SyncEnv]:
    """A memory-only sync stack."""
    cache = SyncCacheStack([MemoryLayer(ttl=60, clock=clock)], clock=clock)
    yield SyncEnv(kind="memory", cache=cache, clock=clock)
    cache.close()
