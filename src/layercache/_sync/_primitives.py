"""The thread primitives the generated sync orchestration runs on (same names as
``layercache/_async/_primitives.py``). Hand-written: this file is the whole difference
between the twins."""

from __future__ import annotations

import concurrent.futures
import inspect
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = [
    "Cancelled",
    "FlightFuture",
    "bind_method",
    "call_fetcher",
    "gather",
    "gather_settled",
    "launch",
    "launch_background",
    "new_flight_lock",
    "new_future",
    "stack_layer",
    "wait_future",
    "wait_launched",
    "with_timeout",
]

T = TypeVar("T")
FlightFuture = concurrent.futures.Future


class Cancelled(BaseException):
    """Never raised in the sync world; keeps ``except Cancelled`` clauses meaningful."""


def bind_method(fn: Callable[..., Any], blocking: bool) -> Callable[..., Any]:
    """A layer method called directly (the sync stack refuses async layers)."""
    if inspect.iscoroutinefunction(fn):
        raise TypeError(
            f"{getattr(fn, '__qualname__', fn)!r} is async; the sync stack needs a layer "
            "with plain methods (use CacheStack for async layers)"
        )
    return fn


def stack_layer(layer: Any) -> Any:
    """The layer the sync stack calls: a layer's sync twin when it offers one.

    ``RedisLayer(url=...)`` is an asyncio layer; its ``_sync_twin()`` builds the equivalent
    ``SyncRedisLayer`` (or raises ``TypeError`` when it was built on an asyncio client). Any
    other layer is used as given (and refused by :func:`bind_method` if its methods are async).
    """
    twin = getattr(layer, "_sync_twin", None)
    return twin() if callable(twin) else layer


def is_async_callable(fn: Any) -> bool:
    """Whether ``fn`` is a coroutine function."""
    return inspect.iscoroutinefunction(fn)


def gather(thunks: Sequence[Callable[[], T]]) -> list[T]:
    """Run the thunks one after another; the first error propagates."""
    return [t() for t in thunks]


def gather_settled(thunks: Sequence[Callable[[], T]]) -> list[T | Exception]:
    """Run every thunk; each result is a value or the ``Exception`` it raised."""
    out: list[T | Exception] = []
    for thunk in thunks:
        try:
            out.append(thunk())
        except Exception as exc:
            out.append(exc)
    return out


def new_future() -> concurrent.futures.Future[Any]:
    """A future the single-flight waiters (other threads) share."""
    return concurrent.futures.Future()


def launch(
    future: concurrent.futures.Future[Any],
    thunk: Callable[[], Any],
    on_done: Callable[[], None],
) -> threading.Thread | None:
    """Run ``thunk`` in the calling (leader) thread, settling ``future`` for the followers."""
    try:
        value = thunk()
    except BaseException as exc:
        future.set_exception(exc)
        on_done()
        return None
    future.set_result(value)
    on_done()
    return None


def wait_future(future: concurrent.futures.Future[Any]) -> Any:
    """Block until the shared future is settled."""
    return future.result()


def wait_launched(handles: Sequence[Any], timeout: float) -> None:
    """Leaders run their fetches in their own threads; nothing to wait for here."""


def call_fetcher(fetcher: Callable[[], Any]) -> Any:
    """Call a sync fetcher; an async one is refused with a clear error."""
    if inspect.iscoroutinefunction(fetcher):
        raise TypeError("the sync stack needs a plain (non-async) fetcher")
    return fetcher()


_TIMEOUT_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def with_timeout(thunk: Callable[[], T], timeout: float) -> T:
    """Run ``thunk`` bounded by ``timeout``; raises the builtin ``TimeoutError``.

    A thread cannot be interrupted, so the work runs in a pool thread and the caller stops
    waiting after ``timeout``; the abandoned work finishes in the background.
    """
    global _TIMEOUT_POOL
    with _POOL_LOCK:
        if _TIMEOUT_POOL is None:
            _TIMEOUT_POOL = concurrent.futures.ThreadPoolExecutor(
                max_workers=32, thread_name_prefix="layercache-fetch"
            )
    future = _TIMEOUT_POOL.submit(thunk)
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        raise TimeoutError from None


def new_flight_lock() -> threading.Lock:
    """Threads race on check-and-register of a flight: a real lock."""
    return threading.Lock()


_BACKGROUND_POOL: concurrent.futures.ThreadPoolExecutor | None = None


def launch_background(
    future: concurrent.futures.Future[Any],
    thunk: Callable[[], Any],
    on_done: Callable[[], None],
) -> concurrent.futures.Future[threading.Thread | None]:
    """Run ``thunk`` on a thread the stack owns (background refreshes), settling ``future``."""
    global _BACKGROUND_POOL
    with _POOL_LOCK:
        if _BACKGROUND_POOL is None:
            _BACKGROUND_POOL = concurrent.futures.ThreadPoolExecutor(
                max_workers=8, thread_name_prefix="layercache-refresh"
            )
    return _BACKGROUND_POOL.submit(launch, future, thunk, on_done)
