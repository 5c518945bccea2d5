"""Helpers shared by the Django backend tests (the ``clock`` fixture is in conftest.py)."""

from __future__ import annotations

import time
from collections.abc import Callable


class FakeClock:
    """A wall clock that moves only when told (the backend's ``CLOCK`` option)."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes (a deadline, not a guess)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
