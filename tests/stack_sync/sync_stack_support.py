"""Helpers of the SyncCacheStack behaviour tests (imported as a plain module)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stack_support import ABSENT

from layercache import SyncCacheStack
from layercache.testing import ManualClock


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Bounded polling: wait until ``predicate()`` holds, fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.001)


class SyncCounter:
    """A plain fetcher that counts its calls (thread-safe) and returns a fixed value."""

    def __init__(self, value: Any = "value") -> None:
        self.calls = 0
        self.value = value
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        with self._lock:
            self.calls += 1
        return self.value


class Held:
    """A fetcher that blocks on a ``threading.Event`` until released (bounded) and counts calls."""

    def __init__(self, value: Any = "value", error: BaseException | None = None) -> None:
        self.value = value
        self.error = error
        self.started = threading.Event()
        self.release = threading.Event()
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        with self._lock:
            self.calls += 1
        self.started.set()
        if not self.release.wait(5):
            raise AssertionError("Held fetch was never released")
        if self.error is not None:
            raise self.error
        return self.value


class Runner:
    """Runs a call on a thread and keeps its result or exception."""

    def __init__(self, func: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(func,), daemon=True)
        self.thread.start()

    def _run(self, func: Callable[[], Any]) -> None:
        try:
            self.result = func()
        except BaseException as exc:
            self.error = exc

    def join(self) -> Any:
        """Wait (bounded) and return the result, re-raising the call's exception."""
        self.thread.join(5)
        assert not self.thread.is_alive(), "the call did not finish"
        if self.error is not None:
            raise self.error
        return self.result


@dataclass
class SyncEnv:
    """A SyncCacheStack under test plus its (sync) layers and its fake clock."""

    kind: str
    cache: SyncCacheStack
    clock: ManualClock
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> list[Any]:
        return list(self.cache.layers)

    @property
    def memory(self) -> Any:
        return self.cache.layers[0]

    @property
    def lower(self) -> Any | None:
        layers = self.cache.layers
        return layers[1] if len(layers) > 1 else None

    @property
    def lower_name(self) -> str | None:
        return None if self.lower is None else str(self.lower.name)

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def in_layers(self, key: str) -> list[str]:
        """Names of the layers that physically hold ``key`` right now."""
        return [layer.name for layer in self.layers if layer.get(key) is not None]

    def layer_values(self, key: str) -> list[Any]:
        """The value each layer holds for ``key`` (``ABSENT`` when it holds none)."""
        out = []
        for layer in self.layers:
            entry = layer.get(key)
            out.append(ABSENT if entry is None else entry.value)
        return out
