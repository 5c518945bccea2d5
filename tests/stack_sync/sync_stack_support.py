"""Helpers of the thread-only SyncCacheStack tests (imported as a plain module)."""

from __future__ import annotations

import threading
from typing import Any


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
