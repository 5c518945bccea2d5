"""Concurrency helpers of the twin-able behaviour tests, asyncio flavour.

tests/stack/ and tests/freshness/ use these instead of ``asyncio`` directly, so that
``scripts/unasync_tests.py`` can generate their ``SyncCacheStack`` twin by renaming this module
to ``_twins_sync`` (same names, on real threads). ``spawn`` starts a concurrent caller,
``join`` / ``join_all`` wait for callers (bounded: a hang fails the test instead of blocking
it), ``Event`` / ``wait_event`` coordinate without sleeps, ``pause`` yields (polling steps).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

#: True in this module, False in ``_twins_sync``: for the few lines where the stacks differ.
ASYNC = True

#: Bound of every wait; generous, a passing test never gets near it.
DEADLINE = 5.0

Event = asyncio.Event
#: What a cancelled waiter raises (threads are never cancelled: never raised there).
Cancelled = asyncio.CancelledError
Handle = asyncio.Task


def spawn(fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> asyncio.Task[Any]:
    """Run ``fn(*args, **kwargs)`` concurrently (a task); ``join`` it for its result."""
    return asyncio.ensure_future(fn(*args, **kwargs))


async def join(handle: asyncio.Task[Any], timeout: float = DEADLINE) -> Any:
    """The result of a spawned call (its exception is raised); fails after ``timeout``."""
    # Not asyncio.wait_for: its TimeoutError would be confused with FetchTimeoutError (a
    # TimeoutError subclass) raised by the call itself.
    done, _ = await asyncio.wait({handle}, timeout=timeout)
    if not done:
        raise AssertionError(f"a spawned call did not finish within {timeout}s")
    return handle.result()


async def join_all(
    handles: Iterable[asyncio.Task[Any]],
    *,
    return_exceptions: bool = False,
    timeout: float = DEADLINE,
) -> list[Any]:
    """The results of spawned calls in order; with ``return_exceptions`` an exception is a
    result, otherwise the first one is raised (after every call finished)."""
    handles = list(handles)
    if not handles:
        return []
    _, pending = await asyncio.wait(handles, timeout=timeout)
    if pending:
        raise AssertionError(f"{len(pending)} spawned calls did not finish within {timeout}s")
    out: list[Any] = []
    for handle in handles:
        error = handle.exception()
        if error is not None and not return_exceptions:
            raise error
        out.append(error if error is not None else handle.result())
    return out


async def settles_within(handle: asyncio.Task[Any], timeout: float) -> bool:
    """Whether the spawned call finishes within ``timeout`` seconds (it is left running)."""
    done, _ = await asyncio.wait({handle}, timeout=timeout)
    return bool(done)


async def within(awaitable: Any, what: str, timeout: float = DEADLINE) -> Any:
    """Await ``awaitable`` but fail (instead of hanging) when it takes longer than ``timeout``."""
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()
        raise AssertionError(f"{what} did not finish within {timeout}s")
    return task.result()


async def wait_event(event: asyncio.Event, timeout: float = DEADLINE) -> None:
    """Wait until ``event`` is set; fail after ``timeout`` seconds."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"the event was not set within {timeout}s") from None


async def pause(seconds: float) -> None:
    """Yield to the other callers for ``seconds`` (0: just let them run)."""
    await asyncio.sleep(seconds)


def coroutine_function(value: Any) -> Callable[..., Awaitable[Any]]:
    """An ``async def`` returning ``value``: a real coroutine function in both test flavours
    (for the checks that the sync stack refuses one)."""

    async def fetch(*args: Any, **kwargs: Any) -> Any:
        return value

    return fetch
