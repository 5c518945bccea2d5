"""The asyncio primitives the orchestration is written against.

``threads.py`` beside it defines the same names for threads. ``scripts/unasync.py`` turns the
async sources (``_async/*.py`` and the Redis coordination components) into their sync twins by
renaming, and rewrites their imports of this module to ``threads``, so the logic exists once.
Everything here is small on purpose: it is the whole difference between the twins.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from .forking import start_over_after_fork

__all__ = [
    "Cancelled",
    "FlightFuture",
    "Mutex",
    "Signal",
    "Spawned",
    "Timeout",
    "Waiter",
    "Workers",
    "bind_method",
    "bounded",
    "call_fetcher",
    "check_component",
    "flight_scope",
    "gather",
    "gather_settled",
    "is_async_callable",
    "is_running",
    "join_spawned",
    "launch",
    "launch_background",
    "loop_ended",
    "new_flight_lock",
    "new_future",
    "new_workers",
    "pause",
    "running_loop",
    "runs_here",
    "settle",
    "spawn",
    "stack_layer",
    "start_over_after_fork",
    "stop_spawned",
    "wait_future",
    "wait_future_for",
    "wait_launched",
    "wait_signal",
    "with_timeout",
]

T = TypeVar("T")
Cancelled = asyncio.CancelledError
FlightFuture = asyncio.Future
# What a bounded wait raises (``asyncio.TimeoutError`` is the builtin only from Python 3.11 on).
Timeout = asyncio.TimeoutError
# From Python 3.11 on asyncio's TimeoutError is the builtin one; on 3.10 it is its own class.
_TIMEOUT_IS_BUILTIN: bool = issubclass(asyncio.TimeoutError, TimeoutError)
# A flag tasks wait on.
Signal = asyncio.Event
# A lock held across awaits (``async with``): one task at a time, in arrival order.
Mutex = asyncio.Lock
# What spawn() returns: a task of the running loop.
Spawned = asyncio.Task[None]


def bind_method(fn: Callable[..., Any], blocking: bool) -> Callable[..., Awaitable[Any]]:
    """A layer method as a coroutine function: awaited, run in a thread, or called directly."""
    if inspect.iscoroutinefunction(fn):
        return fn
    if blocking:

        async def in_thread(*args: Any) -> Any:
            return await asyncio.to_thread(fn, *args)

        return in_thread

    async def direct(*args: Any) -> Any:
        result = fn(*args)
        if inspect.isawaitable(result):
            result = await result
        return result

    return direct


def stack_layer(layer: Any) -> Any:
    """The layer the asyncio stack calls: the one it was given."""
    return layer


def is_async_callable(fn: Any) -> bool:
    """Whether ``fn`` is a coroutine function (an async layer method)."""
    return inspect.iscoroutinefunction(fn)


async def gather(thunks: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run the thunks concurrently; the first error propagates."""
    if len(thunks) == 1:
        return [await thunks[0]()]
    return list(await asyncio.gather(*(t() for t in thunks)))


async def gather_settled(thunks: Sequence[Callable[[], Awaitable[T]]]) -> list[T | Exception]:
    """Run the thunks concurrently; each result is a value or the ``Exception`` it raised."""
    if len(thunks) == 1:
        try:
            return [await thunks[0]()]
        except Exception as exc:
            return [exc]
    results = await asyncio.gather(*(t() for t in thunks), return_exceptions=True)
    out: list[T | Exception] = []
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, Exception):
            raise result  # cancellation and interpreter exits are never "settled"
        out.append(result)
    return out


def new_future() -> asyncio.Future[Any]:
    """A future the single-flight waiters share."""
    return asyncio.get_running_loop().create_future()


def settle(future: asyncio.Future[Any], value: Any = None, error: Exception | None = None) -> None:
    """Hand ``value`` (or ``error``) to whoever waits on ``future``; an error nobody waits
    for is not reported as lost."""
    if future.done():
        return
    if error is None:
        future.set_result(value)
    else:
        future.set_exception(error)
        future.exception()


def launch(
    future: asyncio.Future[Any],
    thunk: Callable[[], Awaitable[Any]],
    on_done: Callable[[], None],
) -> asyncio.Task[None]:
    """Run ``thunk`` as a task that settles ``future`` and then calls ``on_done``."""

    async def run() -> None:
        try:
            value = await thunk()
        except BaseException as exc:
            if not future.done():
                if isinstance(exc, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(exc)
                    # Mark the error as retrieved: with no waiter left it is not "lost".
                    future.exception()
            on_done()
            if not isinstance(exc, Exception):
                raise
            return
        if not future.done():
            future.set_result(value)
        on_done()

    return asyncio.get_running_loop().create_task(run())


async def wait_future(future: asyncio.Future[Any]) -> Any:
    """Wait for a shared future; cancelling this waiter does not cancel it for the others."""
    return await asyncio.shield(future)


async def _wait_for(awaitable: Awaitable[T], timeout: float) -> T:
    """``asyncio.wait_for`` raising the builtin ``TimeoutError`` (Python 3.10's
    ``asyncio.TimeoutError`` is its own class; from 3.11 on it is the builtin, and a
    ``TimeoutError`` the awaitable raised itself passes through unchanged)."""
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        if _TIMEOUT_IS_BUILTIN:
            raise
        raise TimeoutError from None


async def wait_future_for(future: asyncio.Future[Any], timeout: float) -> Any:
    """:func:`wait_future` for at most ``timeout`` seconds (then the builtin ``TimeoutError``;
    the future goes on for the others)."""
    return await _wait_for(asyncio.shield(future), timeout)


async def wait_launched(handles: Sequence[asyncio.Task[Any]], timeout: float) -> None:
    """Wait up to ``timeout`` for launched work, then cancel what is left.

    Only this loop's unfinished work is waited for: a task of another loop cannot be awaited
    here (a stack used from several loops), and one of a closed loop never finishes.
    """
    loop = asyncio.get_running_loop()
    handles = [h for h in handles if not h.done() and h.get_loop() is loop]
    if not handles:
        return
    _, late = await asyncio.wait(handles, timeout=timeout)
    for task in late:
        task.cancel()


async def call_fetcher(fetcher: Callable[[], Any]) -> Any:
    """Run a fetcher without blocking the loop.

    An ``async def`` fetcher is awaited. A plain callable runs in a worker thread; when it
    merely returns an awaitable (``lambda: db.find(1)``), that awaitable is awaited here.
    """
    if inspect.iscoroutinefunction(fetcher):
        return await fetcher()
    result = await asyncio.to_thread(fetcher)
    if inspect.isawaitable(result):
        result = await result
    return result


class Workers:
    """The threads a sync stack owns; on asyncio, work runs as tasks of the loop instead."""

    async def aclose(self, timeout: float) -> None:
        """Nothing to stop (the thread twin shuts its pool down)."""


def new_workers(name: str) -> Workers:
    """The stack's workers (see :class:`Workers`)."""
    return Workers()


async def with_timeout(thunk: Callable[[], Awaitable[T]], timeout: float, workers: Workers) -> T:
    """``await thunk()`` bounded by ``timeout``; raises the builtin ``TimeoutError``."""
    return await _wait_for(thunk(), timeout)


def flight_scope() -> asyncio.AbstractEventLoop | None:
    """What in-flight work is shared within: the running event loop (an asyncio future can
    only be awaited on the loop that made it)."""
    return asyncio._get_running_loop()


def new_flight_lock() -> contextlib.nullcontext[None]:
    """A lock around state changed without an await in between (check-and-register of a
    flight, a limiter's queues): none is needed on one event loop (the thread twin's is real)."""
    return contextlib.nullcontext()


class Waiter:
    """One queued waiter's wake-up, handed to exactly that waiter (a future of the running
    loop; the thread twin blocks on a lock of its own). Made, woken and abandoned under the
    owner's :func:`new_flight_lock`; waited for outside it.

    ``granted`` tells, after an interrupted :meth:`wait`, whether the waiter had been woken
    (what it was handed must then be passed on); ``cancelled``, whether a waiter still queued
    is gone (its task was cancelled: skip it, it removes itself when it resumes).
    """

    __slots__ = ("_future", "granted")

    def __init__(self) -> None:
        self._future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.granted = False

    @property
    def cancelled(self) -> bool:
        """Whether the waiter left (cancelled) before it was woken."""
        return self._future.done() and not self.granted

    def wake(self) -> None:
        """Let the waiter go (it must not be :attr:`cancelled`)."""
        self.granted = True
        self._future.set_result(None)

    async def wait(self) -> None:
        """Wait until :meth:`wake` (cancelling the waiting task cancels the waiter)."""
        await self._future

    def abandon(self) -> None:
        """The waiter leaves without having been woken (after an interrupted :meth:`wait`)."""
        self._future.cancel()


def launch_background(
    future: asyncio.Future[Any],
    thunk: Callable[[], Awaitable[Any]],
    on_done: Callable[[], None],
    workers: Workers,
) -> asyncio.Task[None]:
    """Like :func:`launch`; on asyncio every launch already runs in the background."""
    return launch(future, thunk, on_done)


# -- the Redis coordination components' background work (bus subscriber, single-flight notice
# listener, lease renewal): a task on this loop here, a daemon thread in the sync twin.


def spawn(thunk: Callable[[], Coroutine[Any, Any, None]], name: str) -> asyncio.Task[None]:
    """Run ``thunk()`` in the background (a task on the running loop)."""
    return asyncio.get_running_loop().create_task(thunk(), name=name)


def is_running(handle: asyncio.Task[None] | None) -> bool:
    """Whether a spawned piece of work is still running (a task of a closed loop is not, even
    if the loop was closed without cancelling it)."""
    return handle is not None and not handle.done() and not handle.get_loop().is_closed()


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The loop background work started now would be bound to (``None`` in the thread twin)."""
    return asyncio._get_running_loop()


def loop_ended(loop: asyncio.AbstractEventLoop | None) -> bool:
    """Whether background work bound to ``loop`` (from :func:`running_loop`) is gone with it."""
    return loop is not None and loop.is_closed()


async def stop_spawned(handle: asyncio.Task[None], timeout: float) -> None:
    """Stop spawned work and wait for it to end (cancelled here; ``timeout`` bounds the
    thread twin's join, which waits for the work to notice its stop flag)."""
    handle.cancel()
    # asyncio.wait never raises the task's own CancelledError, so cancelling *this* task while
    # it waits still propagates instead of being swallowed.
    await asyncio.wait({handle})


def runs_here(handle: asyncio.Task[None] | None) -> bool:
    """Whether spawned work is still running where the caller can wait for it: a task of the
    running loop (one of another loop cannot be awaited here, one of a closed loop never
    ends)."""
    return (
        handle is not None
        and not handle.done()
        and handle.get_loop() is asyncio._get_running_loop()
    )


async def join_spawned(handle: asyncio.Task[None], timeout: float) -> None:
    """Wait up to ``timeout`` for spawned work that was told to stop to end by itself (not
    cancelled, unlike :func:`stop_spawned`); only work that :func:`runs_here` is waited for."""
    if runs_here(handle):
        await asyncio.wait({handle}, timeout=timeout)


async def pause(seconds: float) -> None:
    """Sleep (a task yields the loop; the thread twin blocks)."""
    await asyncio.sleep(seconds)


async def wait_signal(signal: asyncio.Event, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``signal``; whether it was set."""
    if signal.is_set():
        return True
    try:
        await asyncio.wait_for(signal.wait(), timeout)
    except asyncio.TimeoutError:
        return False
    return True


async def bounded(awaitable: Awaitable[T], timeout: float) -> T:
    """``await awaitable`` bounded by ``timeout`` (raises :data:`Timeout`).

    The thread twin receives the call's result, already computed: a blocking driver call is
    bounded by the client's socket timeout instead.
    """
    return await asyncio.wait_for(awaitable, timeout)


def check_component(component: Any, role: str, method: str) -> None:
    """Refuse a coordination component whose ``method`` is not a coroutine function (a sync
    component, built on a sync redis-py client, belongs to ``SyncCacheStack``)."""
    if component is None:
        return
    if not inspect.iscoroutinefunction(getattr(component, method, None)):
        raise TypeError(
            f"{role} {component!r} is not asyncio-based (its {method}() is not async); "
            "CacheStack needs components built on redis.asyncio clients "
            "(use SyncCacheStack for ones built on sync clients)"
        )
