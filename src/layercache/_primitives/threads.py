"""The thread primitives the generated sync twins run on: the same names as ``aio.py``
beside it (``scripts/unasync.py`` rewrites the async sources' imports of ``aio`` to this
module). Hand-written: this file and ``aio.py`` are the whole difference between the twins.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextvars
import inspect
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
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
FlightFuture = concurrent.futures.Future
Timeout = TimeoutError
Signal = threading.Event
# A lock held across blocking work (``with``): one thread at a time.
Mutex = threading.Lock
# What spawn() returns: a daemon thread.
Spawned = threading.Thread


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


def settle(
    future: concurrent.futures.Future[Any], value: Any = None, error: Exception | None = None
) -> None:
    """Hand ``value`` (or ``error``) to whoever waits on ``future``."""
    if future.done():
        return
    if error is None:
        future.set_result(value)
    else:
        future.set_exception(error)


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


def wait_future_for(future: concurrent.futures.Future[T], timeout: float) -> T:
    """:func:`wait_future` for at most ``timeout`` seconds, telling a timeout of the wait (the
    builtin ``TimeoutError``, raised here) from a ``TimeoutError`` the work raised itself
    (passed through unchanged: from Python 3.11 on both are the same class)."""
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError as exc:
        if future.done() and not future.cancelled() and future.exception() is exc:
            raise
        raise TimeoutError from None


def wait_launched(handles: Sequence[Any], timeout: float) -> None:
    """Wait up to ``timeout`` for work submitted to a stack's workers (background refreshes,
    generation cleanups); leaders run their own fetches in their threads (no handle)."""
    pending = [h for h in handles if isinstance(h, concurrent.futures.Future)]
    if pending:
        concurrent.futures.wait(pending, timeout)


def call_fetcher(fetcher: Callable[[], Any]) -> Any:
    """Call a sync fetcher; an async one is refused with a clear error."""
    if inspect.iscoroutinefunction(fetcher):
        raise TypeError("the sync stack needs a plain (non-async) fetcher")
    return fetcher()


class _DaemonPool:
    """A bounded pool of daemon threads, started as work arrives.

    Not ``ThreadPoolExecutor``: its threads are joined when the interpreter exits, so one fetch
    that never returns (abandoned by its caller after ``fetch_timeout``) would keep the process
    from ever exiting.
    """

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._queue: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], Any, Any] | None]
        self._queue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._closed = False
        start_over_after_fork(self)  # a forked child has none of the pool's threads

    def submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T] | None:
        """Queue ``fn(*args)``; ``None`` once the pool is shut down."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        # The work runs in the caller's context (its contextvars: a request's trace span, a
        # tenant id), as an asyncio task or asyncio.to_thread would run it.
        context = contextvars.copy_context()
        with self._lock:
            if self._closed:
                return None
            self._queue.put((future, context.run, (fn, *args)))
            # Each piece of work claims an idle thread or starts one, so none waits behind a
            # slow fetch while the pool has room (at the bound, it waits for a free thread).
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self._size:
                thread = threading.Thread(
                    target=self._work, name=f"{self._name}_{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        return future

    def _work(self) -> None:
        # A new thread was started for work already queued: it is not idle before that.
        started = True
        while True:
            if not started:
                with self._lock:
                    self._idle += 1  # claimed (decremented) by the submit of its next work
            started = False
            item = self._queue.get()
            if item is None:
                return
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to whoever waits on the future
                future.set_exception(exc)
            else:
                future.set_result(result)

    def shutdown(self, timeout: float) -> None:
        """Drop queued work, stop the threads once their current work ends; wait up to
        ``timeout`` for that (a thread still busy after it is abandoned: it is a daemon)."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancel()
        for _ in threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

    def _after_fork(self) -> None:
        """In a forked child: no thread of this pool exists; work queued in the parent (a
        refresh whose flight the child inherited) waits for the child's first thread."""
        pending = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                pending.append(item)
        self._lock = threading.Lock()
        self._queue = queue.SimpleQueue()
        for item in pending:
            self._queue.put(item)
        self._threads = []
        self._idle = 0


class _Call:
    """One bounded call handed to a :class:`_FetchPool` worker: what to run, in which context,
    and its outcome. ``done`` is a lock acquired when the call is made and released by the
    worker once ``result`` or ``error`` is set (a one-shot the caller waits on)."""

    __slots__ = ("args", "context", "done", "error", "fn", "result")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        # The work runs in the caller's context (its contextvars: a request's trace span, a
        # tenant id), as an asyncio task or asyncio.to_thread would run it.
        self.context = contextvars.copy_context()
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Lock()
        self.done.acquire()


# How a caller wakes an idle fetch worker: a write to a file descriptor the worker blocks
# reading. Not a lock: ``Lock.release()`` wakes the worker while the caller still holds the
# interpreter lock, so the worker wakes only to block again on the interpreter lock until the
# caller starts waiting (two wake-ups of the worker per call); ``os.write`` releases the
# interpreter lock around its system call, so the worker wakes once, to a free interpreter
# lock (measured in docs/perf-sync-memcached.md). An eventfd where there is one, else a pipe.
if hasattr(os, "eventfd"):

    def _wake_fds() -> tuple[int, int]:
        fd = os.eventfd(0, os.EFD_CLOEXEC)
        return fd, fd

    def _wake(fd: int) -> None:
        os.eventfd_write(fd, 1)

    def _sleep(fd: int) -> None:
        os.eventfd_read(fd)

else:  # pragma: no cover - platforms without eventfd (macOS, Windows)

    def _wake_fds() -> tuple[int, int]:
        return os.pipe()

    def _wake(fd: int) -> None:
        os.write(fd, b"\0")

    def _sleep(fd: int) -> None:
        os.read(fd, 1)


class _FetchWorker:
    """A thread of a :class:`_FetchPool`: idle, it blocks reading ``wake_r`` until a caller
    puts its call into ``call`` and writes to ``wake_w``."""

    __slots__ = ("call", "wake_r", "wake_w")

    def __init__(self) -> None:
        self.call: _Call | None = None
        self.wake_r, self.wake_w = _wake_fds()

    def close(self) -> None:
        os.close(self.wake_r)
        if self.wake_w != self.wake_r:
            os.close(self.wake_w)


# What _FetchPool.call returns once the pool is shut down: the caller runs the work itself.
_CLOSED: Any = object()
# A worker's next work when there is none: it goes idle.
_IDLE: Any = object()


class _FetchPool:
    """A bounded pool of daemon threads for calls a caller waits on for a bounded time.

    A call is handed straight to an idle worker (the last one to go idle: its stack is the
    warmest) through that worker's wake-up descriptor, and the caller blocks on the call's
    one-shot lock with the timeout, where a queue and a ``concurrent.futures.Future`` took a
    queue put, a condition variable's lock, a waiter lock made per wait and a notify, and woke
    the worker under the interpreter lock (measured in docs/perf-sync-memcached.md). Without
    an idle worker a new one starts (up to ``size``; each holds one descriptor, two on
    platforms without eventfd, closed when it stops); at the bound the call queues, and a
    caller that stops waiting takes its call back out of the queue (work nobody waits for is
    not started).

    Daemon threads, as in :class:`_DaemonPool`: an abandoned call never keeps the process from
    exiting. A child process forked from this one starts with no workers (see
    :func:`_after_fork_in_child`).
    """

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._lock = threading.Lock()
        self._idle: list[_FetchWorker] = []
        self._workers: list[_FetchWorker] = []
        self._threads: list[threading.Thread] = []
        self._started = 0
        self._queued: collections.deque[_Call] = collections.deque()
        self._closed = False
        start_over_after_fork(self)  # a forked child has none of the pool's threads

    def call(self, timeout: float, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a worker; raises the builtin ``TimeoutError`` once ``timeout``
        seconds have passed without its outcome (the work goes on, abandoned). The work's own
        exception (a ``TimeoutError`` too) is raised as it is. Returns :data:`_CLOSED` once
        the pool is shut down (the work was not run)."""
        call = _Call(fn, args)
        worker: _FetchWorker | None = None
        number = -1
        with self._lock:
            if self._closed:
                return _CLOSED  # type: ignore[no-any-return]
            if self._idle:
                worker = self._idle.pop()
            elif self._started < self._size:
                number = self._started
                self._started += 1
            else:
                self._queued.append(call)
        if worker is not None:
            worker.call = call
            _wake(worker.wake_w)
        elif number >= 0:
            self._start(call, number)
        try:
            finished = call.done.acquire(True, min(timeout, threading.TIMEOUT_MAX))
        except BaseException:  # interrupted (a signal handler raising in the main thread)
            self._withdraw(call)
            raise
        if not finished:
            self._withdraw(call)
            raise TimeoutError
        error = call.error
        if error is not None:
            call.error = None
            raise error
        return call.result  # type: ignore[no-any-return]

    def _start(self, call: _Call, number: int) -> None:
        """A new worker thread, with ``call`` as its first work (its place in the bound was
        taken under the lock)."""
        try:
            worker = _FetchWorker()
        except BaseException:
            with self._lock:
                self._started -= 1
            raise
        # The first call goes through the worker, not the thread's arguments (the thread
        # object would keep those, and the call's result, for as long as it runs).
        worker.call = call
        thread = threading.Thread(
            target=self._work, args=(worker,), name=f"{self._name}_{number}", daemon=True
        )
        with self._lock:
            self._threads.append(thread)
            self._workers.append(worker)
        try:
            thread.start()
        except BaseException:
            with self._lock:
                self._started -= 1
                self._threads.remove(thread)
                self._workers.remove(worker)
            worker.close()
            raise

    def _withdraw(self, call: _Call) -> None:
        """The caller stopped waiting: a call still queued is dropped (nobody wants it)."""
        with self._lock:
            try:
                self._queued.remove(call)
            except ValueError:
                pass  # running (or done): it finishes unobserved

    def _work(self, worker: _FetchWorker) -> None:
        lock = self._lock
        call, worker.call = worker.call, None
        try:
            while call is not None:
                try:
                    call.result = call.context.run(call.fn, *call.args)
                except BaseException as exc:  # handed to the caller waiting on the call
                    call.error = exc
                # The next work is found before this caller is let go: woken, it finds the
                # interpreter lock free (this thread blocks right after releasing it).
                with lock:
                    if self._queued:
                        after: _Call | None = self._queued.popleft()
                    elif self._closed:
                        after = None
                    else:
                        after = _IDLE
                        self._idle.append(worker)
                call.done.release()
                call = None
                if after is _IDLE:
                    _sleep(worker.wake_r)
                    after, worker.call = worker.call, None
                call = after
        finally:
            with lock:
                if worker in self._idle:  # only if _sleep failed: no caller may wake it now
                    self._idle.remove(worker)
                if worker in self._workers:
                    self._workers.remove(worker)
            worker.close()

    def shutdown(self, timeout: float) -> None:
        """Fail queued calls with ``CancelledError``, stop idle threads, let busy ones stop
        once their call ends; wait up to ``timeout`` for that (a thread still busy after it
        is abandoned: it is a daemon)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            queued = list(self._queued)
            self._queued.clear()
            threads = list(self._threads)
        for call in queued:
            call.error = concurrent.futures.CancelledError()
            call.done.release()
        for worker in idle:
            worker.call = None
            _wake(worker.wake_w)
        deadline = time.monotonic() + timeout
        for thread in threads:
            if thread is not threading.current_thread() and thread.ident is not None:
                thread.join(max(0.0, deadline - time.monotonic()))

    def _after_fork(self) -> None:
        """In a forked child: the workers are gone (only the forking thread was copied), so
        is whoever waited in the parent; their descriptors are closed, the pool starts empty."""
        for worker in self._workers:
            worker.close()
        self._lock = threading.Lock()
        self._idle = []
        self._workers = []
        self._threads = []
        self._started = 0
        self._queued = collections.deque()


class Workers:
    """The threads one stack owns: fetches bounded by a timeout (a thread cannot be
    interrupted, so the caller waits on a worker instead) and background refreshes.

    Two pools of daemon threads, created on first use, so a refresh burst never starves timed
    fetches. Both are bounded; ``close()`` of the stack shuts them down (work already running
    finishes, queued work is dropped: the stack waited for its refreshes before).
    """

    # Fetches in flight at once per stack (callers beyond it queue, still bounded by their
    # timeout), and background refreshes at once.
    FETCH_THREADS = 32
    REFRESH_THREADS = 8

    def __init__(self, name: str) -> None:
        self._fetch = _FetchPool(self.FETCH_THREADS, f"{name}-fetch")
        self._refresh = _DaemonPool(self.REFRESH_THREADS, f"{name}-refresh")

    def call(self, timeout: float, fn: Callable[[], T]) -> T:
        """``fn()`` on the fetch pool, waited for at most ``timeout`` seconds (the builtin
        ``TimeoutError`` after it); after ``close()``, in the calling thread (work racing the
        shutdown still runs, without new threads)."""
        result = self._fetch.call(timeout, fn)
        return fn() if result is _CLOSED else result

    def submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        """Run ``fn(*args)`` on the refresh pool; after ``close()``, in the calling thread."""
        future = self._refresh.submit(fn, *args)
        if future is not None:
            return future
        done: concurrent.futures.Future[T] = concurrent.futures.Future()
        try:
            done.set_result(fn(*args))
        except BaseException as exc:  # handed over like a pool thread would
            done.set_exception(exc)
        return done

    def close(self, timeout: float) -> None:
        """Shut both pools down, waiting up to ``timeout`` in all for their threads."""
        deadline = time.monotonic() + timeout
        self._fetch.shutdown(timeout)
        self._refresh.shutdown(max(0.0, deadline - time.monotonic()))


def new_workers(name: str) -> Workers:
    """The stack's workers (see :class:`Workers`)."""
    return Workers(name)


def with_timeout(thunk: Callable[[], T], timeout: float, workers: Workers) -> T:
    """Run ``thunk`` bounded by ``timeout``; raises the builtin ``TimeoutError``.

    A thread cannot be interrupted, so the work runs on one of the stack's worker threads and
    the caller stops waiting after ``timeout``; the abandoned work finishes in the background.
    """
    return workers.call(timeout, thunk)


def flight_scope() -> Any:
    """What in-flight work is shared within: every thread of the process (one scope)."""
    return None


def running_loop() -> Any:
    """Background work is bound to no loop here: threads live as long as the process."""
    return None


def loop_ended(loop: Any) -> bool:
    """Background threads never end with a loop."""
    return False


def new_flight_lock() -> threading.Lock:
    """A lock around state that threads change (check-and-register of a flight, a limiter's
    queues): a real lock."""
    return threading.Lock()


class Waiter:
    """One queued waiter's wake-up, handed to exactly that thread: it blocks on the second
    acquire of a lock of its own, acquired when the waiter is made and released by
    :meth:`wake` (cheaper than an ``Event``, and it wakes this thread alone). Made, woken and
    abandoned under the owner's :func:`new_flight_lock`; waited for outside it.

    ``granted`` tells, after an interrupted :meth:`wait` (a signal handler raising in the main
    thread), whether the waiter had been woken meanwhile (what it was handed must then be
    passed on). ``cancelled`` is always false: a thread cannot be cancelled while queued.
    """

    __slots__ = ("_lock", "granted")

    def __init__(self) -> None:
        self.granted = False
        self._lock = threading.Lock()
        self._lock.acquire()

    @property
    def cancelled(self) -> bool:
        """Never: a waiting thread leaves the queue itself, under the owner's lock."""
        return False

    def wake(self) -> None:
        """Let the waiting thread go."""
        self.granted = True
        self._lock.release()

    def wait(self) -> None:
        """Block until :meth:`wake`."""
        self._lock.acquire()

    def abandon(self) -> None:
        """The waiter leaves without having been woken: nothing to undo here."""


def launch_background(
    future: concurrent.futures.Future[Any],
    thunk: Callable[[], Any],
    on_done: Callable[[], None],
    workers: Workers,
) -> concurrent.futures.Future[threading.Thread | None]:
    """Run ``thunk`` on a thread the stack owns (background refreshes), settling ``future``."""
    return workers.submit(launch, future, thunk, on_done)


# -- the Redis coordination components' background work: daemon threads. A thread cannot be
# cancelled, so every loop run this way checks its component's stop flag at least once per
# poll interval, and stop_spawned joins it for a bounded time.


def spawn(thunk: Callable[[], None], name: str) -> threading.Thread:
    """Run ``thunk()`` on a new daemon thread named ``name``."""
    thread = threading.Thread(target=thunk, name=name, daemon=True)
    thread.start()
    return thread


def is_running(handle: threading.Thread | None) -> bool:
    """Whether a spawned thread is still running."""
    return handle is not None and handle.is_alive()


def stop_spawned(handle: threading.Thread, timeout: float) -> None:
    """Wait up to ``timeout`` for a spawned thread that was told to stop (its stop flag set)."""
    if handle is not threading.current_thread():
        handle.join(timeout)


def runs_here(handle: threading.Thread | None) -> bool:
    """Whether a spawned thread is still running and another thread than itself asks (a
    thread cannot wait for itself)."""
    return handle is not None and handle.is_alive() and handle is not threading.current_thread()


def join_spawned(handle: threading.Thread, timeout: float) -> None:
    """Wait up to ``timeout`` for a spawned thread that was told to stop to end."""
    if runs_here(handle):
        handle.join(timeout)


def pause(seconds: float) -> None:
    """Sleep (blocks this thread)."""
    time.sleep(seconds)


def wait_signal(signal: threading.Event, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``signal``; whether it was set."""
    return signal.wait(timeout)


def bounded(result: T, timeout: float) -> T:
    """The result of a call that was already made: a blocking driver call is bounded by the
    client's socket timeout (the asyncio twin bounds the awaitable by ``timeout``)."""
    return result


def check_component(component: Any, role: str, method: str) -> None:
    """Refuse a coordination component whose ``method`` is a coroutine function (built on a
    ``redis.asyncio`` client: it belongs to ``CacheStack``)."""
    if component is None:
        return
    if inspect.iscoroutinefunction(getattr(component, method, None)):
        raise TypeError(
            f"{role} {component!r} is asyncio-based (its {method}() is async); SyncCacheStack "
            "needs components built on sync redis-py clients (redis.Redis, redis.RedisCluster)"
        )
