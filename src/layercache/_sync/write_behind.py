# DO NOT EDIT: generated from src/layercache/_async/write_behind.py by scripts/unasync.py.
# Change the async source and run `python scripts/unasync.py`.
"""Write-behind: writes to non-local layers are queued and flushed in batches.

Written once on the twin primitives (``layercache/_primitives/``): ``scripts/unasync.py``
generates the thread twin, whose flusher is a daemon thread instead of a task.

The queue holds one pending operation per key (``("set", payload)`` or ``("delete", None)``);
a later operation on a key replaces the earlier one, so a delete queued after a set wins and a
key is never written twice in one batch. A full queue makes the writer wait for a flush
(backpressure): nothing queued is ever dropped. ``close()`` flushes everything.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .._primitives.threads import (
    Mutex,
    Signal,
    Spawned,
    is_running,
    join_spawned,
    new_flight_lock,
    runs_here,
    spawn,
    wait_signal,
)

__all__ = ["PendingOp", "WriteBehindQueue"]

PendingOp = tuple[str, Any]
Flush = Callable[[list[tuple[str, PendingOp]]], None]

logger = logging.getLogger("layercache.write_behind")

# How long closing waits for the flusher to notice it is closed (it is idle by then: close
# flushed everything first).
_JOIN_TIMEOUT = 5.0


class WriteBehindQueue:
    """A coalescing queue flushed in the background (a task, or a thread in the thread twin).

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
        self._state = new_flight_lock()  # guards _pending, _inflight and _flusher
        self._flushing = Mutex()  # one flush at a time: batches land in queue order
        self._wakeup = Signal()
        self._flusher: Spawned | None = None
        self._closed = False

    def pending(self, key: str) -> PendingOp | None:
        """The operation queued for ``key``, if any (reads consult it before lower layers)."""
        with self._state:
            op = self._pending.get(key)
            return op if op is not None else self._inflight.get(key)

    def discard(self, drop: Callable[[str], bool]) -> None:
        """Forget pending operations of keys ``drop`` selects (a clear or pattern
        invalidation supersedes them), after any batch being written has landed."""
        with self._flushing:
            self._drop(drop)

    def _drop(self, drop: Callable[[str], bool]) -> None:
        with self._state:
            for key in [k for k in self._pending if drop(k)]:
                del self._pending[key]

    def __len__(self) -> int:
        return len(self._pending)

    def put(self, key: str, op: PendingOp) -> None:
        """Queue ``op`` for ``key`` (replacing a pending one); wait when the queue is full."""
        if self._closed:
            raise RuntimeError("write-behind queue is closed")
        while True:
            with self._state:
                pending = self._pending
                replaced = pending.pop(key, None) is not None
                if replaced or len(pending) < self.max_queue:
                    pending[key] = op  # a replaced key moves to the end
                    size = len(pending)
                    self._start_flusher()
                    break
            self.flush_all()
        if size >= self.batch_size:
            self._wakeup.set()

    def _start_flusher(self) -> None:
        # Caller holds _state (two writers never both start one).
        if is_running(self._flusher):
            return
        if self._flusher is not None:
            # The loop the last flusher ran on ended (a stack used from several runs of a
            # loop): a Signal or a Mutex bound to an ended loop cannot be waited for on
            # another, so they are made anew with the new flusher. (A flusher thread ends
            # only once the queue is closed.)
            self._wakeup = Signal()
            self._flushing = Mutex()
        self._flusher = spawn(self._run, "layercache-write-behind")

    def _run(self) -> None:
        while not self._closed:
            wait_signal(self._wakeup, self.flush_interval)
            self._wakeup.clear()
            try:
                if self._pending:
                    self._flush_some(self.batch_size)
                # Full batches waiting go out at once, not one per interval.
                while len(self._pending) >= self.batch_size and not self._closed:
                    self._flush_some(self.batch_size)
            except Exception:
                # Kept for the next interval; the stack has reported the failure.
                logger.warning("layercache: write-behind flush failed; retrying later")

    def _flush_some(self, limit: int) -> None:
        with self._flushing:
            with self._state:
                batch: list[tuple[str, PendingOp]] = []
                while self._pending and len(batch) < limit:
                    batch.append(self._pending.popitem(last=False))
                if not batch:
                    return
                self._inflight = dict(batch)
            try:
                self._flush(batch)
            except BaseException:
                # Also when the flusher is stopped under a flush: nothing queued is lost.
                with self._state:
                    _requeue(self._pending, batch)
                raise
            finally:
                with self._state:
                    self._inflight = {}

    def flush_all(self) -> None:
        """Flush every pending operation now, in batches, in queue order, and wait for a batch
        the flusher is writing: when it fails it is queued again, and flushed here."""
        while self._pending or self._inflight:
            if self._pending:
                self._flush_some(self.batch_size)
            else:
                with self._flushing:  # the flusher's batch has landed or is back
                    pass

    def close(self) -> None:
        """Flush everything and stop the flusher (a failed flush raises)."""
        try:
            self.flush_all()
        finally:
            self._closed = True
            flusher = self._flusher
            if flusher is not None and runs_here(flusher):
                self._wakeup.set()
                join_spawned(flusher, _JOIN_TIMEOUT)


def _requeue(pending: OrderedDict[str, PendingOp], batch: list[tuple[str, PendingOp]]) -> None:
    """Put a failed batch back at the front, in order, unless a newer op replaced a key."""
    for key, op in reversed(batch):
        if key not in pending:
            pending[key] = op
            pending.move_to_end(key, last=False)
