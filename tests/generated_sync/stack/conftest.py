# DO NOT EDIT: generated from tests/stack/conftest.py
# by scripts/unasync_tests.py. Change the async source and run
# `python scripts/unasync_tests.py`.
"""Fixtures of the SyncCacheStack behaviour tests: stacks over memory, memory+disk, memory+redis."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twin_stack_support import StackEnv

from layercache import DiskLayer, MemoryLayer, SyncCacheStack
from layercache.testing import ManualClock

STACK_KINDS = ["memory", "memory+disk", "memory+redis"]
REDIS_PREFIX = "lc-stack:"
_DISK_IDS = itertools.count()

BuildStack = Callable[..., StackEnv]


@pytest.fixture
def clock() -> ManualClock:
    """A fake wall clock shared by the stack and its memory layer."""
    return ManualClock()


def _build(
    stack_kind: tuple[str, Any], clock: ManualClock, tmp_path: Path, **kwargs: Any
) -> StackEnv:
    kind, client = stack_kind
    memory_ttl = kwargs.pop("memory_ttl", 60)
    lower_ttl = kwargs.pop("lower_ttl", 3600)
    memory = MemoryLayer(ttl=memory_ttl, clock=clock)
    lower: Any = None
    extra: dict[str, Any] = {}
    if kind == "memory+disk":
        lower = DiskLayer(tmp_path / f"disk-{next(_DISK_IDS)}", ttl=lower_ttl)
    elif kind == "memory+redis":
        from layercache import RedisLayer

        extra["redis"] = client
        lower = RedisLayer(client=client, ttl=lower_ttl, prefix=REDIS_PREFIX)
    layers = [memory] if lower is None else [memory, lower]
    cache = SyncCacheStack(layers, clock=clock, **kwargs)
    return StackEnv(kind=kind, cache=cache, clock=clock, memory=memory, lower=lower, extra=extra)


def _kind(request: pytest.FixtureRequest) -> tuple[str, Any]:
    # Resolved from a *sync* fixture: an async fixture cannot request the (async) Redis client
    # fixture dynamically from inside the running loop.
    if request.param == "memory+redis":
        return request.param, request.getfixturevalue("redis_sync_client")
    return request.param, None


@pytest.fixture(params=STACK_KINDS)
def stack_kind(request: pytest.FixtureRequest) -> tuple[str, Any]:
    """Every stack kind, with its Redis client when it has one."""
    return _kind(request)


@pytest.fixture(params=["memory+disk", "memory+redis"])
def layered_kind(request: pytest.FixtureRequest) -> tuple[str, Any]:
    """The stack kinds with a lower layer."""
    return _kind(request)


@pytest.fixture
def build_stack(
    stack_kind: tuple[str, Any], clock: ManualClock, tmp_path: Path
) -> Iterator[BuildStack]:
    """Factory of stacks of the parametrized kind; every stack it built is closed afterwards."""
    built: list[StackEnv] = []

    def build(**kwargs: Any) -> StackEnv:
        env = _build(stack_kind, clock, tmp_path, **kwargs)
        built.append(env)
        return env

    yield build
    for env in built:
        env.cache.close()


@pytest.fixture
def env(build_stack: BuildStack) -> StackEnv:
    """A stack of the parametrized kind with default options."""
    return build_stack()


@pytest.fixture
def build_layered(
    layered_kind: tuple[str, Any], clock: ManualClock, tmp_path: Path
) -> Iterator[BuildStack]:
    """Factory of two-layer stacks (memory+disk, memory+redis)."""
    built: list[StackEnv] = []

    def build(**kwargs: Any) -> StackEnv:
        env = _build(layered_kind, clock, tmp_path, **kwargs)
        built.append(env)
        return env

    yield build
    for env in built:
        env.cache.close()


@pytest.fixture
def layered(build_layered: BuildStack) -> StackEnv:
    """A two-layer stack (memory+disk or memory+redis) with default options."""
    return build_layered()


@pytest.fixture
def memory_env(clock: ManualClock, tmp_path: Path) -> Iterator[StackEnv]:
    """A memory-only stack (for behaviour that does not depend on the layers)."""
    memory = MemoryLayer(ttl=60, clock=clock)
    cache = SyncCacheStack([memory], clock=clock)
    yield StackEnv(kind="memory", cache=cache, clock=clock, memory=memory, lower=None)
    cache.close()
