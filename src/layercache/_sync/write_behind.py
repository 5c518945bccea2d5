"""Write-behind for the thread-based stack (twin of ``layercache/_async/write_behind.py``).

Same names and semantics: one pending operation per key, later operations replace earlier
ones, a full queue makes the writer flush (backpressure), ``close()`` flushes everything. The
flusher is a daemon thread the stack owns.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

__all__ = ["PendingOp", "WriteBehindQueue"]

PendingOp = tuple[str, Any]
Flush = Callable[[list[tuple[str, PendingOp]]], None]

logger = logging.getLogger("layercache.write_behind")


class WriteBehindQueue:
    """A coalescing queue flushed by one background thread."""

    def __init__(self, flush: Flush, batch_size: int, flush_interval: float, max_queue: int):
        self._flush = flush
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_queue = max_queue
        self._pending: OrderedDict[str, PendingOp] = OrderedDict()
        # The batch being written: still "pending" for readers until it has landed.
        self._inflight: dict[str, PendingOp] = {}
        self._state = threading.Lock()  # guards _pending
        self._flushing = threading.Lock()  # one flush at a time
        self._wakeup = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def pending(self, key: str) -> PendingOp | None:
        """The operation queued for ``key``, if any."""
        with self._state:
            op = self._pending.get(key)
            return op if op is not None else self._inflight.get(key)

    def discard(self, drop: Callable[[str], bool]) -> None:
        """Forget pending operations of keys ``drop`` selects, after the batch in flight."""
        with self._flushing, self._state:
            for key in [k for k in self._pending if drop(k)]:
                del self._pending[key]

    def __len__(self) -> int:
        return len(self._pending)

    def put(self, key: str, op: PendingOp) -> None:
        """Queue ``op`` for ``key``; flush first when the queue is full."""
        if self._closed:
            raise RuntimeError("write-behind queue is closed")
        while True:
            with self._state:
                pending = self._pending
                if key in pending:
                    del pending[key]
                if key in pending or len(pending) < self.max_queue:
                    pending[key] = op
                    size = len(pending)
                    break
            self.flush_all()
        with self._state:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="layercache-write-behind", daemon=True
                )
                self._thread.start()
        if size >= self.batch_size:
            self._wakeup.set()

    def _run(self) -> None:
        while not self._closed:
            self._wakeup.wait(self.flush_interval)
            self._wakeup.clear()
            try:
                self._flush_some(self.batch_size)
                while len(self._pending) >= self.batch_size and not self._closed:
                    self._flush_some(self.batch_size)
            except Exception:
                logger.warning("layercache: write-behind flush failed; retrying later")

    def _flush_some(self, limit: int) -> None:
        with self._flushing:
            with self._state:
                batch: list[tuple[str, PendingOp]] = []
                while self._pending and len(batch) < limit:
                    batch.append(self._pending.popitem(last=False))
                self._inflight = dict(batch)
            if not batch:
                return
            try:
                self._flush(batch)
            except Exception:
                with self._state:
                    _requeue(self._pending, batch)
                raise
            finally:
                with self._state:
                    self._inflight = {}

    def flush_all(self) -> None:
        """Flush every pending operation now."""
        while self._pending:
            self._flush_some(self.batch_size)

    def close(self) -> None:
        """Flush everything and stop the flusher thread (a failed flush raises)."""
        try:
            self.flush_all()
        finally:
            self._closed = True
            self._wakeup.set()
            thread = self._thread
            if thread is not None:
                thread.join(5)


def _requeue(pending: OrderedDict[str, PendingOp], batch: list[tuple[str, PendingOp]]) -> None:
    """Put a failed batch back at the front, in order, unless a newer op replaced a key."""
    for key, op in reversed(batch):
        if key not in pending:
            pending[key] = op
            pending.move_to_end(key, last=False)
