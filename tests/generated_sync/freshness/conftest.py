# DO NOT EDIT: generated from tests/freshness/conftest.py
# by scripts/unasync_tests.py. Change the async source and run
# `python scripts/unasync_tests.py`.
"""Fixtures of the freshness and resilience tests: stacks over memory, memory+disk and
memory+redis (real ``redis-server`` from tests/conftest.py), every layer on one fake clock."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twin_freshness_support import BuildStack, Env, RecordingWrapper, release_open_gates

from layercache import DiskLayer, MemoryLayer, SyncCacheStack
from layercache.testing import ManualClock

STACK_KINDS = ["memory", "memory+disk", "memory+redis"]
REDIS_PREFIX = "lc-fresh:"
_IDS = itertools.count()


@pytest.fixture(autouse=True)
def release_gates() -> Iterator[None]:
    """Release every Gate the test left held (it failed before its own ``release()``)."""
    yield
    release_open_gates()


@pytest.fixture
def clock() -> ManualClock:
    """A fake wall clock shared by the stack and its layers (starts at the real time)."""
    return ManualClock()


def _kind(request: pytest.FixtureRequest) -> tuple[str, Any]:
    # Resolved from a sync fixture: an async fixture cannot request the async Redis client
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


def _build(kind_client: tuple[str, Any], clock: ManualClock, tmp_path: Path, **kwargs: Any) -> Env:
    """Build a stack. Extra keywords: ``memory_ttl``, ``lower_ttl``, ``record`` (wrap every
    layer in a :class:`RecordingWrapper`, returned in ``env.extra["recorders"]``); the rest
    are stack options."""
    kind, client = kind_client
    memory_ttl = kwargs.pop("memory_ttl", 60)
    lower_ttl = kwargs.pop("lower_ttl", 3600)
    record = kwargs.pop("record", False)
    memory = MemoryLayer(ttl=memory_ttl, clock=clock)
    lower: Any = None
    extra: dict[str, Any] = {}
    if kind == "memory+disk":
        lower = DiskLayer(tmp_path / f"disk-{next(_IDS)}", ttl=lower_ttl, clock=clock)
    elif kind == "memory+redis":
        from layercache import RedisLayer

        extra["redis"] = client
        lower = RedisLayer(client=client, ttl=lower_ttl, prefix=REDIS_PREFIX)
    layers: list[Any] = [memory] if lower is None else [memory, lower]
    if record:
        layers = [RecordingWrapper(layer) for layer in layers]
        extra["recorders"] = layers
    cache = SyncCacheStack(layers, clock=clock, **kwargs)
    return Env(kind=kind, cache=cache, clock=clock, memory=memory, lower=lower, extra=extra)


def _factory(
    kind_client: tuple[str, Any], clock: ManualClock, tmp_path: Path
) -> Iterator[BuildStack]:
    built: list[Env] = []

    def build(**kwargs: Any) -> Env:
        env = _build(kind_client, clock, tmp_path, **kwargs)
        built.append(env)
        return env

    yield build
    release_open_gates()
    for env in built:
        env.cache.close()


@pytest.fixture
def build_stack(
    stack_kind: tuple[str, Any], clock: ManualClock, tmp_path: Path
) -> Iterator[BuildStack]:
    """Factory of stacks of every kind (parametrized); each one is closed afterwards."""
    yield from _factory(stack_kind, clock, tmp_path)


@pytest.fixture
def build_layered(
    layered_kind: tuple[str, Any], clock: ManualClock, tmp_path: Path
) -> Iterator[BuildStack]:
    """Factory of two-layer stacks (memory+disk, memory+redis)."""
    yield from _factory(layered_kind, clock, tmp_path)


@pytest.fixture
def build_memory(clock: ManualClock, tmp_path: Path) -> Iterator[BuildStack]:
    """Factory of memory-only stacks (behaviour that does not depend on the layers)."""
    yield from _factory(("memory", None), clock, tmp_path)


@pytest.fixture
def closing() -> Iterator[list[SyncCacheStack]]:
    """Stacks a test builds by hand (user layers): appended ones are closed afterwards."""
    stacks: list[SyncCacheStack] = []
    yield stacks
    release_open_gates()
    for cache in stacks:
        cache.close()
