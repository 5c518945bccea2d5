"""Write-behind: writes to non-local layers are queued and flushed in batches (asyncio).

``layercache/_sync/write_behind.py`` is the hand-written thread twin with the same names.
The queue holds one pending operation per key (``("set", payload)`` or ``("delete", None)``);
a later operation on a key replaces the earlier one, so a delete queued after a set wins and a
key is never written twice in one batch. A full queue makes the writer wait for a flush
(backpressure): nothing queued is ever dropped. ``aclose()`` flushes everything.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["PendingOp", "WriteBehindQueue"]

PendingOp = tuple[str, Any]
Flush = Callable[[list[tuple[str, PendingOp]]], Awaitable[None]]

logger = logging.getLogger("layercache.write_behind")


class WriteBehindQueue:
    """A coalescing queue flushed by one background task.

    Args:
        flush: Applies one batch of ``(key, op)`` to the layers. When it raises, the batch is
            put back at the front of the queue (except keys a newer operation superseded)
            and retried on the next interval: nothing is dropped.
        batch_size: Most operations per flush.
        flush_interval: Seconds a queued operation may wait before a flush starts.
        max_queue: Most pending operations; a writer past it waits for a flush.
    """

    def __init__(self, flush: Flush, batch_size: int, flush_interval: float, max_queue: int):
        self._flush = flush
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_queue = max_queue
        self._pending: OrderedDict[str, PendingOp] = OrderedDict()
        # The batch being written: still "pending" for readers until it has landed.
        self._inflight: dict[str, PendingOp] = {}
        self._wakeup = asyncio.Event()
        self._lock = asyncio.Lock()  # one flush at a time: batches land in queue order
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def pending(self, key: str) -> PendingOp | None:
        """The operation queued for ``key``, if any (reads consult it before lower layers)."""
        op = self._pending.get(key)
        return op if op is not None else self._inflight.get(key)

    async def discard(self, drop: Callable[[str], bool]) -> None:
        """Forget pending operations of keys ``drop`` selects (a clear or pattern
        invalidation supersedes them), after any batch being written has landed."""
        async with self._lock:
            for key in [k for k in self._pending if drop(k)]:
                del self._pending[key]

    def __len__(self) -> int:
        return len(self._pending)

    async def put(self, key: str, op: PendingOp) -> None:
        """Queue ``op`` for ``key`` (replacing a pending one); wait when the queue is full."""
        if self._closed:
            raise RuntimeError("write-behind queue is closed")
        pending = self._pending
        if key in pending:
            del pending[key]
        elif len(pending) >= self.max_queue:
            await self.flush_all()
        pending[key] = op
        task = self._task
        if task is None or task.done() or task.get_loop().is_closed():
            # The first flusher, or a new one on this loop after the loop the last one ran on
            # ended (a stack used from several asyncio.run() calls): an Event or a Lock of an
            # ended loop cannot be waited for on another, so they are made anew with it.
            self._wakeup = asyncio.Event()
            self._lock = asyncio.Lock()
            self._task = asyncio.get_running_loop().create_task(self._run())
        if len(pending) >= self.batch_size:
            self._wakeup.set()

    async def _run(self) -> None:
        while not self._closed:
            try:
                await asyncio.wait_for(self._wakeup.wait(), self.flush_interval)
            except asyncio.TimeoutError:
                pass
            self._wakeup.clear()
            try:
                if self._pending:
                    await self._flush_some(self.batch_size)
                # Full batches waiting go out at once, not one per interval.
                while len(self._pending) >= self.batch_size and not self._closed:
                    await self._flush_some(self.batch_size)
            except Exception:
                # Kept for the next interval; the stack has reported the failure.
                logger.warning("layercache: write-behind flush failed; retrying later")

    async def _flush_some(self, limit: int) -> None:
        async with self._lock:
            batch: list[tuple[str, PendingOp]] = []
            while self._pending and len(batch) < limit:
                batch.append(self._pending.popitem(last=False))
            if not batch:
                return
            self._inflight = dict(batch)
            try:
                await self._flush(batch)
            except BaseException:
                # Also when cancelled (the loop ends under a flush): nothing queued is lost.
                _requeue(self._pending, batch)
                raise
            finally:
                self._inflight = {}

    async def flush_all(self) -> None:
        """Flush every pending operation now, in batches, in queue order."""
        while self._pending:
            await self._flush_some(self.batch_size)

    async def aclose(self) -> None:
        """Flush everything and stop the background task (a failed flush raises)."""
        try:
            await self.flush_all()
        finally:
            self._closed = True
            task = self._task
            if (
                task is not None
                and not task.done()
                and task.get_loop() is asyncio.get_running_loop()
            ):
                self._wakeup.set()
                await asyncio.gather(task, return_exceptions=True)


def _requeue(pending: OrderedDict[str, PendingOp], batch: list[tuple[str, PendingOp]]) -> None:
    """Put a failed batch back at the front, in order, unless a newer op replaced a key."""
    for key, op in reversed(batch):
        if key not in pending:
            pending[key] = op
            pending.move_to_end(key, last=False)
