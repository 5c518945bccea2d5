"""Helpers of the freshness and resilience tests (imported as a plain module).

Fetchers here are controlled by ``Event``s (tests/_twins_async.py, threads in the generated sync
twin), never by sleeps: a test releases a fetch when it wants it to finish, and waits for
background work with bounded polling (:func:`eventually`).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from _twins_async import Cancelled, Event, pause, wait_event
from _twins_async import within as within
from layercache import CacheStack, Entry
from layercache._glob import glob_match
from layercache.testing import ManualClock

# Bound of every wait for background work; generous, a passing test never gets near it.
DEADLINE = 3.0

# Every Gate made by the running test: released when it ends (conftest.py), so a test failing
# before its own release() leaves no fetch blocked (a blocked thread would outlive the test).
OPEN_GATES: list[Gate] = []


def release_open_gates() -> None:
    """Release every Gate still held (at the end of a test, before its stacks are closed)."""
    while OPEN_GATES:
        OPEN_GATES.pop().release()


async def lcall(layer: Any, method: str, *args: Any) -> Any:
    """Call a layer method directly (sync or async), bypassing the stack."""
    result = getattr(layer, method)(*args)
    # unasync: begin async-only
    if inspect.isawaitable(result):
        result = await result
    # unasync: end async-only
    return result


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    """Bounded polling: wait until ``predicate()`` holds, fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await pause(0.001)


async def eventually_async(
    predicate: Callable[[], Any], what: str, timeout: float = DEADLINE
) -> None:
    """:func:`eventually` for a predicate that must be awaited (it reads layers)."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await pause(0.001)


class Gate:
    """An ``async`` fetcher that blocks on an ``Event`` until the test releases it.

    ``fetch`` is a bound coroutine method, so the stack awaits it on the loop (no worker
    thread). Every call records itself and sets ``started``; released calls return ``value``
    (or raise ``error`` when one is set). ``hold=False`` makes calls return at once.
    """

    def __init__(self, value: Any = "fetched", *, hold: bool = True) -> None:
        self.value = value
        self.error: BaseException | None = None
        self.calls = 0
        self.finished = 0
        self.cancelled = 0
        self.started = Event()
        self._released = Event()
        if not hold:
            self._released.set()
        OPEN_GATES.append(self)

    async def fetch(self) -> Any:
        self.calls += 1
        self.started.set()
        try:
            await self._released.wait()
        except Cancelled:
            self.cancelled += 1
            raise
        self.finished += 1
        if self.error is not None:
            raise self.error
        return self.value

    def release(self) -> None:
        self._released.set()

    async def wait_started(self) -> None:
        await wait_event(self.started)


class Failing:
    """An ``async`` fetcher that raises ``error`` (the same object every time) and counts."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error if error is not None else RuntimeError("origin down")
        self.calls = 0

    async def fetch(self) -> Any:
        self.calls += 1
        # The same object every time (tests check identity), without the previous traceback.
        raise self.error.with_traceback(None)


class Value:
    """An ``async`` fetcher that returns ``value`` at once and counts its calls."""

    def __init__(self, value: Any = "fetched") -> None:
        self.value = value
        self.calls = 0

    async def fetch(self) -> Any:
        self.calls += 1
        return self.value


class EventLog:
    """Subscribes to events and keeps their payloads in order."""

    def __init__(self, cache: Any, *names: str) -> None:
        self.events: list[dict[str, Any]] = []
        for name in names:
            cache.on(name, self.events.append)

    def of(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == name]

    def states(self) -> list[str]:
        return [e["state"] for e in self.of("stale_serve")]


class RecordingWrapper:
    """Wraps a real layer and records its writes (``set`` / ``set_many`` keys).

    Everything else is forwarded unchanged (``lookup`` too, so a wrapped memory layer keeps
    the L1 fast path); the recording methods keep the wrapped method's sync/async kind, so the
    stack adapts to the wrapper exactly as it would to the layer.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.writes: list[str] = []
        self.set = self._recording(inner.set, single=True)
        if hasattr(inner, "set_many"):
            self.set_many = self._recording(inner.set_many, single=False)

    def _recording(self, method: Callable[..., Any], *, single: bool) -> Callable[..., Any]:
        def note(arg: Any) -> None:
            if single:
                self.writes.append(arg)
            else:
                self.writes.extend(key for key, _, _ in arg)

        if inspect.iscoroutinefunction(method):

            async def async_recorder(arg: Any, *rest: Any) -> Any:
                note(arg)
                return await method(arg, *rest)

            return async_recorder

        def recorder(arg: Any, *rest: Any) -> Any:
            note(arg)
            return method(arg, *rest)

        return recorder

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class LayerDown(ConnectionError):
    """The driver error a :class:`FlakyLayer` raises while it is "down"."""


class FlakyLayer:
    """A user-written synchronous layer (a dict) whose operations fail on demand.

    ``fail`` is the set of operation names that raise :class:`LayerDown` (``"*"``: all).
    Every call is recorded in ``calls`` as ``(operation, argument)``, failing ones too.
    """

    is_local = False

    def __init__(self, name: str = "flaky", ttl: float | None = None) -> None:
        self.name = name
        self.default_ttl = ttl
        self.data: dict[str, Entry] = {}
        self.calls: list[tuple[str, Any]] = []
        self.fail: set[str] = set()

    def down(self, *operations: str) -> None:
        self.fail = set(operations) if operations else {"*"}

    def up(self) -> None:
        self.fail = set()

    def _enter(self, operation: str, arg: Any) -> None:
        self.calls.append((operation, arg))
        if "*" in self.fail or operation in self.fail:
            raise LayerDown(f"{self.name} is down ({operation})")

    def ops(self, *names: str) -> list[tuple[str, Any]]:
        return [c for c in self.calls if not names or c[0] in names]

    def get(self, key: str) -> Entry | None:
        self._enter("get", key)
        return self.data.get(key)

    def set(self, key: str, entry: Entry, ttl: float | None) -> None:
        self._enter("set", key)
        self.data[key] = entry

    def delete(self, key: str) -> None:
        self._enter("delete", key)
        self.data.pop(key, None)

    def clear(self) -> None:
        self._enter("clear", None)
        self.data.clear()

    def get_many(self, keys: Sequence[str]) -> list[Entry | None]:
        self._enter("get_many", list(keys))
        return [self.data.get(k) for k in keys]

    def set_many(self, items: Sequence[tuple[str, Entry, float | None]]) -> None:
        self._enter("set_many", [k for k, _, _ in items])
        for key, entry, _ in items:
            self.data[key] = entry

    def delete_many(self, keys: Sequence[str]) -> None:
        self._enter("delete_many", list(keys))
        for key in keys:
            self.data.pop(key, None)

    def delete_matching(self, pattern: str) -> int:
        self._enter("delete_matching", pattern)
        doomed = [k for k in self.data if glob_match(pattern, k)]
        for key in doomed:
            del self.data[key]
        return len(doomed)

    def keys(self, pattern: str | None = None, limit: int | None = None) -> list[str]:
        self._enter("keys", pattern)
        out = [k for k in self.data if pattern is None or glob_match(pattern, k)]
        return out if limit is None else out[:limit]

    def ping(self) -> bool:
        self._enter("ping", None)
        return True

    def values(self) -> dict[str, Any]:
        return {k: e.value for k, e in self.data.items()}


BuildStack = Callable[..., Awaitable["Env"]]
"""A fixture-made factory: ``await build(**stack_options)`` returns an :class:`Env`."""

ABSENT = type("Absent", (), {"__repr__": lambda self: "<absent>"})()


@dataclass
class Env:
    """A stack under test plus direct handles on its layers and its fake clock.

    ``memory`` and ``lower`` are the real layers (never a recording wrapper), so tests can
    read what each layer physically holds.
    """

    kind: str
    cache: CacheStack
    clock: ManualClock
    memory: Any
    lower: Any | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def lower_name(self) -> str:
        assert self.lower is not None, "a two-layer stack was expected"
        return str(self.lower.name)

    @property
    def layers(self) -> list[Any]:
        return [self.memory] if self.lower is None else [self.memory, self.lower]

    async def entries(self, key: str) -> list[Entry | None]:
        """The entry each layer holds for ``key`` (``None`` where absent)."""
        return [await lcall(layer, "get", key) for layer in self.layers]

    async def layer_values(self, key: str) -> list[Any]:
        """The value each layer holds for ``key`` (:data:`ABSENT` where absent)."""
        return [ABSENT if e is None else e.value for e in await self.entries(key)]

    async def drop_from_layers(self, key: str) -> None:
        """Make ``key`` vanish from every layer behind the stack's back, as an eviction or an
        expiry would. (A Redis layer's ``delete`` is a change: its tombstone refuses the
        store of a fetch in flight. An eviction is not, so the Redis key is unlinked.)"""
        for layer in self.layers:
            if hasattr(layer, "client") and hasattr(layer, "prefix"):
                await lcall(layer.client, "unlink", (layer.prefix + key).encode())
            else:
                await lcall(layer, "delete", key)
