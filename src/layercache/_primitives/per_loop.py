"""One resource per running event loop (a driver's clients), closed on its own loop.

asyncio drivers (redis-py's asyncio client, aiomcache) bind their connections to the loop that
opened them. A component used from several loops in turn (a module-level stack and several
``asyncio.run()`` calls, a thread per loop) keeps one resource per loop here:

* made on first use in a loop, the loop last served one lookup away;
* closed on that loop when it shuts down (an async generator started up to its first yield:
  the loop's ``shutdown_asyncgens()`` runs its ``finally``), or, at the ``max_loops`` cap, the
  resource held longest is closed on its loop (scheduled there if it is another thread's);
* a loop closed without shutting its generators down (not ``asyncio.run``) is forgotten: its
  connections cannot be closed any more.

Used by :class:`layercache.redis._clients.LoopBoundClient` and the memcached driver.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar

__all__ = ["PerLoop"]

T = TypeVar("T")
logger = logging.getLogger("layercache")


class _Slot(Generic[T]):
    """One loop's resource and the generator that closes it when the loop shuts down."""

    __slots__ = ("resource", "watcher")

    def __init__(self, resource: T) -> None:
        self.resource = resource
        self.watcher: Any = None


class PerLoop(Generic[T]):
    """The running loop's own ``T``, made by ``make()`` and closed by ``close(resource)``.

    Args:
        make: Builds the resource for the running loop (no I/O: it runs under a lock).
        close: Closes one resource, awaited on its own loop; failures are logged, not raised.
        max_loops: Loops whose resources are kept at once.
        what: How log lines name the resource.
    """

    def __init__(
        self,
        make: Callable[[], T],
        close: Callable[[T], Awaitable[None]],
        *,
        max_loops: int,
        what: str,
    ) -> None:
        self._make = make
        self._close = close
        self.max_loops = max_loops
        self._what = what
        # Creation order: the oldest loop is the one evicted at the cap.
        self._slots: dict[asyncio.AbstractEventLoop, _Slot[T]] = {}
        # The last loop served and its resource: the common case is one lookup away.
        self._last: tuple[asyncio.AbstractEventLoop, T] | None = None
        # Loops in several threads may make their resources at once.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._slots)

    def current(self) -> T:
        """The running loop's resource, made on first use in that loop.

        Raises:
            RuntimeError: Outside a running event loop.
        """
        loop = asyncio.get_running_loop()
        last = self._last
        if last is not None and last[0] is loop:
            return last[1]
        slot = self._slots.get(loop)
        if slot is None:
            slot = self._open(loop)
        self._last = (loop, slot.resource)
        return slot.resource

    def _open(self, loop: asyncio.AbstractEventLoop) -> _Slot[T]:
        with self._lock:
            slot = self._slots.get(loop)
            if slot is not None:
                return slot
            for other in [other for other in self._slots if other.is_closed()]:
                # Closed without shutting down its generators (not asyncio.run): its
                # connections cannot be closed any more; forget them.
                self._release(other, self._slots.pop(other))
            while len(self._slots) >= self.max_loops:
                oldest = next(iter(self._slots))
                self._release(oldest, self._slots.pop(oldest))
            slot = _Slot(self._make())
            self._slots[loop] = slot
        if not getattr(loop, "_asyncgens_shutdown_called", False):
            slot.watcher = self._watch(loop, slot)
            # Started by hand up to its first yield (no await before it): from then on the
            # loop's shutdown_asyncgens() runs its finally block on the loop.
            try:
                slot.watcher.asend(None).send(None)
            except StopIteration:
                pass
        return slot

    async def _watch(self, loop: asyncio.AbstractEventLoop, slot: _Slot[T]) -> AsyncIterator[None]:
        try:
            yield
        finally:
            with self._lock:
                if self._slots.get(loop) is slot:
                    del self._slots[loop]
            last = self._last
            if last is not None and last[0] is loop:
                self._last = None
            if asyncio._get_running_loop() is loop and not loop.is_closed():
                try:
                    await self._close(slot.resource)
                except Exception:
                    logger.debug("closing a %s at loop shutdown failed", self._what, exc_info=True)

    def _release(self, loop: asyncio.AbstractEventLoop, slot: _Slot[T]) -> None:
        """Close a loop's resource on that loop (now if it is this thread's, else scheduled)."""
        if self._last is not None and self._last[0] is loop:
            self._last = None
        watcher, slot.watcher = slot.watcher, None
        if watcher is None:
            return
        if loop.is_closed():
            # Finish the generator here (its finally does not await on a foreign loop), so
            # that it never asks the closed loop to finalize it.
            try:
                watcher.aclose().send(None)
            except (StopIteration, RuntimeError):
                pass
            return
        try:
            loop.call_soon_threadsafe(loop.create_task, watcher.aclose())
        except RuntimeError:  # closed meanwhile
            pass

    async def aclose(self) -> None:
        """Close every loop's resource: this loop's now, the others' on their loops (a later
        use makes new ones)."""
        running = asyncio.get_running_loop()
        with self._lock:
            slots = list(self._slots.items())
            self._slots.clear()
            self._last = None
        for loop, slot in slots:
            if loop is running and slot.watcher is not None:
                watcher, slot.watcher = slot.watcher, None
                # Runs the finally block: closes the resource on this loop.
                await watcher.aclose()
            elif loop is running:
                await self._close(slot.resource)
            else:
                self._release(loop, slot)
