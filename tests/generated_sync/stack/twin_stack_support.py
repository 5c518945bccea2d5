# DO NOT EDIT: generated from tests/stack/stack_support.py
# by scripts/unasync_tests.py. Change the async source and run
# `python scripts/unasync_tests.py`.
"""Helpers shared by the SyncCacheStack behaviour tests (imported as a plain module)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from _twins_sync import pause
from layercache import Entry, SyncCacheStack
from layercache._glob import glob_match
from layercache.testing import ManualClock

# The fake wall clock starts at real time so entries look ordinary to remote layers whose own
# expiry runs on real time (Redis, disk); tests only ever move it forward.


def lcall(layer: Any, method: str, *args: Any) -> Any:
    """Call a layer method directly (sync or async), bypassing the stack."""
    result = getattr(layer, method)(*args)
    return result


def eventually(predicate: Callable[[], bool], what: str, timeout: float = 2.0) -> None:
    """Bounded polling: wait until ``predicate()`` holds, fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        pause(0.001)


class Counter:
    """Counts calls of a fetcher and returns a value derived from the call number."""

    def __init__(self, value: Any = "value") -> None:
        self.calls = 0
        self.value = value

    def __call__(self) -> Any:
        self.calls += 1
        return self.value


class RecordingLayer:
    """A user-written synchronous layer (plain dict) that records every method call."""

    is_local = False

    def __init__(self, name: str = "recording", ttl: float | None = None) -> None:
        self.name = name
        self.default_ttl = ttl
        self.data: dict[str, Entry] = {}
        self.calls: list[tuple[str, Any]] = []

    def get(self, key: str) -> Entry | None:
        self.calls.append(("get", key))
        return self.data.get(key)

    def set(self, key: str, entry: Entry, ttl: float | None) -> None:
        self.calls.append(("set", key))
        self.data[key] = entry

    def delete(self, key: str) -> None:
        self.calls.append(("delete", key))
        self.data.pop(key, None)

    def clear(self) -> None:
        self.calls.append(("clear", None))
        self.data.clear()

    def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        self.calls.append(("get_many", list(keys)))
        return [self.data.get(k) for k in keys]

    def set_many(self, items: Sequence[tuple[str, Entry, float | None]]) -> None:
        self.calls.append(("set_many", [k for k, _, _ in items]))
        for key, entry, _ttl in items:
            self.data[key] = entry

    def delete_many(self, keys: Sequence[str]) -> None:
        self.calls.append(("delete_many", list(keys)))
        for key in keys:
            self.data.pop(key, None)

    def delete_matching(self, pattern: str) -> int:
        self.calls.append(("delete_matching", pattern))
        doomed = [k for k in self.data if glob_match(pattern, k)]
        for key in doomed:
            del self.data[key]
        return len(doomed)

    def keys(self, pattern: str | None = None, limit: int | None = None) -> list[str]:
        self.calls.append(("keys", pattern))
        out = [k for k in self.data if pattern is None or glob_match(pattern, k)]
        return out if limit is None else out[:limit]

    def has(self, key: str) -> bool:
        self.calls.append(("has", key))
        return key in self.data

    def ttl(self, key: str) -> float | None:
        self.calls.append(("ttl", key))
        return None


class EventLog:
    """Subscribes to events and keeps their payloads in order."""

    def __init__(self, cache: Any, *names: str) -> None:
        self.events: list[dict[str, Any]] = []
        for name in names:
            cache.on(name, self.events.append)

    def of(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == name]


@dataclass
class StackEnv:
    """A stack under test plus direct handles on its layers and its fake clock."""

    kind: str
    cache: SyncCacheStack
    clock: ManualClock
    memory: Any
    lower: Any | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> list[Any]:
        return [self.memory] if self.lower is None else [self.memory, self.lower]

    @property
    def lower_name(self) -> str | None:
        return None if self.lower is None else str(self.lower.name)

    def in_layers(self, key: str) -> list[str]:
        """Names of the layers that physically hold ``key`` right now."""
        return [layer.name for layer in self.layers if lcall(layer, "get", key) is not None]

    def layer_values(self, key: str) -> list[Any]:
        """The value each layer holds for ``key`` (a marker object for "absent")."""
        out = []
        for layer in self.layers:
            entry = lcall(layer, "get", key)
            out.append(ABSENT if entry is None else entry.value)
        return out


ABSENT = type("Absent", (), {"__repr__": lambda self: "<absent>"})()


class AsyncRecordingLayer:
    """The recording layer with ``async`` methods (every optional one), yielding on each call."""

    is_local = False

    def __init__(self, name: str = "async-recording", ttl: float | None = None) -> None:
        self.inner = RecordingLayer(name, ttl)
        self.name = name
        self.default_ttl = ttl

    @property
    def calls(self) -> list[tuple[str, Any]]:
        return self.inner.calls

    def get(self, key: str) -> Entry | None:
        pause(0)
        return self.inner.get(key)

    def set(self, key: str, entry: Entry, ttl: float | None) -> None:
        pause(0)
        self.inner.set(key, entry, ttl)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def clear(self) -> None:
        self.inner.clear()

    def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        return self.inner.get_many(keys)

    def set_many(self, items: Sequence[tuple[str, Entry, float | None]]) -> None:
        self.inner.set_many(items)

    def delete_many(self, keys: Sequence[str]) -> None:
        self.inner.delete_many(keys)

    def delete_matching(self, pattern: str) -> int:
        return self.inner.delete_matching(pattern)

    def keys(self, pattern: str | None = None, limit: int | None = None) -> list[str]:
        return self.inner.keys(pattern, limit)


class MinimalLayer:
    """Only the four required methods (sync); no optional capability at all."""

    is_local = False

    def __init__(self, name: str = "minimal") -> None:
        self.name = name
        self.default_ttl = None
        self.data: dict[str, Entry] = {}

    def get(self, key: str) -> Entry | None:
        return self.data.get(key)

    def set(self, key: str, entry: Entry, ttl: float | None) -> None:
        self.data[key] = entry

    def delete(self, key: str) -> None:
        self.data.pop(key, None)

    def clear(self) -> None:
        self.data.clear()
