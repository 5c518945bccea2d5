"""Concurrency helpers of the twin-able behaviour tests, thread flavour.

The same names as tests/_twins_async.py, on real threads: ``scripts/unasync_tests.py`` renames
``_twins_async`` to ``_twins_sync`` in the generated ``SyncCacheStack`` suite
(tests/generated_sync/), so ``spawn`` starts a thread, ``Event`` is a ``threading.Event`` and
``pause`` sleeps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

#: False in this module, True in ``_twins_async``: for the few lines where the stacks differ.
ASYNC = False

#: Bound of every wait; generous, a passing test never gets near it.
DEADLINE = 5.0

Event = threading.Event


class Cancelled(BaseException):
    """Never raised: a thread is not cancelled (the asyncio twin: ``CancelledError``)."""


class Handle:
    """A call running in its own (daemon) thread: ``done()``, ``result(timeout)``."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]):
        self._fn, self._args, self._kwargs = fn, args, kwargs
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._fn(*self._args, **self._kwargs)
        except BaseException as exc:  # handed to the joining test thread
            self._error = exc

    def done(self) -> bool:
        """Whether the call has finished."""
        return not self._thread.is_alive()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; whether the call has finished."""
        self._thread.join(timeout)
        return self.done()

    def exception(self) -> BaseException | None:
        """The exception the finished call raised, or ``None``."""
        return self._error

    def result(self, timeout: float = 5.0) -> Any:
        """The call's value (its exception is raised); fails after ``timeout``."""
        if not self.wait(timeout):
            raise AssertionError(f"a spawned call did not finish within {timeout}s")
        if self._error is not None:
            raise self._error
        return self._value


def spawn(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Handle:
    """Run ``fn(*args, **kwargs)`` in a new thread; ``join`` it for its result."""
    return Handle(fn, args, kwargs)


def join(handle: Handle, timeout: float = DEADLINE) -> Any:
    """The result of a spawned call (its exception is raised); fails after ``timeout``."""
    return handle.result(timeout)


def join_all(
    handles: Iterable[Handle], *, return_exceptions: bool = False, timeout: float = DEADLINE
) -> list[Any]:
    """The results of spawned calls in order; with ``return_exceptions`` an exception is a
    result, otherwise the first one is raised (after every call finished)."""
    handles = list(handles)
    deadline = time.monotonic() + timeout
    for handle in handles:
        if not handle.wait(max(0.0, deadline - time.monotonic())):
            raise AssertionError(f"spawned calls did not finish within {timeout}s")
    out: list[Any] = []
    for handle in handles:
        error = handle.exception()
        if error is not None and not return_exceptions:
            raise error
        out.append(error if error is not None else handle.result())
    return out


def settles_within(handle: Handle, timeout: float) -> bool:
    """Whether the spawned call finishes within ``timeout`` seconds (it is left running)."""
    return handle.wait(timeout)


def within(value: Any, what: str, timeout: float = DEADLINE) -> Any:
    """The twin of the asyncio ``within``: a spawned call is joined with the bound; a plain
    value (the blocking call already returned) is passed through (the per-test timeout is then
    the hang guard)."""
    if isinstance(value, Handle):
        if not value.wait(timeout):
            raise AssertionError(f"{what} did not finish within {timeout}s")
        return value.result()
    return value


def wait_event(event: threading.Event, timeout: float = DEADLINE) -> None:
    """Wait until ``event`` is set; fail after ``timeout`` seconds."""
    if not event.wait(timeout):
        raise AssertionError(f"the event was not set within {timeout}s")


def pause(seconds: float) -> None:
    """Sleep ``seconds`` (0: just let the other threads run)."""
    time.sleep(seconds)


def coroutine_function(value: Any) -> Callable[..., Awaitable[Any]]:
    """An ``async def`` returning ``value`` (for the checks that the sync stack refuses one)."""

    async def fetch(*args: Any, **kwargs: Any) -> Any:
        return value

    return fetch
