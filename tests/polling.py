"""Bounded polling for tests: wait until a condition holds, fail after a deadline.

Never sleeps-and-hopes: the wait ends as soon as the condition holds, and a condition that
never holds fails the test with what it was waiting for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

DEADLINE = 10.0


def eventually(
    condition: Callable[[], bool],
    timeout: float = DEADLINE,
    what: str = "condition",
    interval: float = 0.005,
) -> None:
    """Poll ``condition`` until it holds; raise ``AssertionError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(interval)


async def eventually_async(
    condition: Callable[[], bool],
    timeout: float = DEADLINE,
    what: str = "condition",
    interval: float = 0.005,
) -> None:
    """:func:`eventually` for async tests (sleeps on the loop, never blocks it)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        await asyncio.sleep(interval)
