"""Fair, bounded limit on concurrent fetcher calls (threads).

Hand-written twin of ``layercache/_async/rate_limit.py`` with the same names: ``with
limiter.slot(key, limit):`` blocks where the asyncio version awaits. Same design: a bucket per
scope counts its holders and queues its waiters in arrival order; a released slot is handed
directly to the first waiter, which alone is woken (each waiter blocks on its own pre-acquired
lock). Bounded by ``RateLimit.max_queue`` waiters per bucket and ``max_keys`` key buckets; past
either the call fails with :class:`FetcherQueueFullError`. An idle bucket is deleted at once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from types import TracebackType

from .._exceptions import FetcherQueueFullError
from .._options import RateLimit

__all__ = ["FetcherLimiter", "FetcherSlot"]


class _Waiter:
    __slots__ = ("granted", "lock", "max_concurrent")

    def __init__(self, max_concurrent: int) -> None:
        self.max_concurrent = max_concurrent
        self.granted = False
        # Acquired now, released by whoever hands the slot over: the waiting thread blocks on
        # its second acquire. Cheaper than an Event and wakes exactly this thread.
        self.lock = threading.Lock()
        self.lock.acquire()


class _Bucket:
    __slots__ = ("holders", "name", "waiters")

    def __init__(self, name: str | None) -> None:
        self.name = name  # the key, or None for the global bucket
        self.holders = 0
        self.waiters: OrderedDict[_Waiter, None] = OrderedDict()


class FetcherSlot:
    """One use of a slot: ``with limiter.slot(key, limit):`` (single use)."""

    __slots__ = ("_bucket", "_key", "_limit", "_limiter")

    def __init__(self, limiter: FetcherLimiter, key: str, limit: RateLimit) -> None:
        self._limiter = limiter
        self._key = key
        self._limit = limit
        self._bucket: _Bucket | None = None

    def __enter__(self) -> None:
        if self._bucket is not None:
            raise RuntimeError("a fetcher slot is single use")
        self._bucket = self._limiter._acquire(self._key, self._limit)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        bucket, self._bucket = self._bucket, None
        if bucket is not None:
            self._limiter._release(bucket)


class FetcherLimiter:
    """Per-key or global concurrency limits on fetcher calls, FIFO-fair and bounded.

    Thread-safe.

    Args:
        max_keys: At most this many keys are limited at once (>= 1); the ``"global"``
            bucket does not count.
    """

    __slots__ = ("_buckets", "_global", "_lock", "_max_keys")

    def __init__(self, max_keys: int = 100_000) -> None:
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise ValueError(f"max_keys must be an int >= 1, not {max_keys!r}")
        self._max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}
        self._global: _Bucket | None = None
        self._lock = threading.Lock()

    def slot(self, key: str, limit: RateLimit) -> FetcherSlot:
        """A slot for one fetcher call of ``key``: ``with limiter.slot(key, limit):``.

        Entering blocks (first come, first served) until fewer than ``limit.max_concurrent``
        calls of the scope run; leaving (normally or by an exception) frees the slot for the
        next waiter.

        Raises:
            FetcherQueueFullError: On entering, when ``limit.max_queue`` callers already wait
                in the scope, or ``max_keys`` keys are already limited.
        """
        return FetcherSlot(self, key, limit)

    def holders(self, key: str, limit: RateLimit) -> int:
        """Calls holding a slot in the scope of ``key`` under ``limit``."""
        with self._lock:
            bucket = self._find(key, limit)
            return 0 if bucket is None else bucket.holders

    def waiting(self, key: str, limit: RateLimit) -> int:
        """Callers queued for a slot in the scope of ``key`` under ``limit``."""
        with self._lock:
            bucket = self._find(key, limit)
            return 0 if bucket is None else len(bucket.waiters)

    def __len__(self) -> int:
        """Scopes currently tracked (keys with a holder or a waiter, plus the global one)."""
        with self._lock:
            return len(self._buckets) + (self._global is not None)

    def _find(self, key: str, limit: RateLimit) -> _Bucket | None:
        return self._global if limit.scope == "global" else self._buckets.get(key)

    def _bucket_for(self, key: str, limit: RateLimit) -> _Bucket:
        # Caller holds the lock.
        if limit.scope == "global":
            if self._global is None:
                self._global = _Bucket(None)
            return self._global
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                raise FetcherQueueFullError(
                    key,
                    limit.max_queue,
                    f"the limiter already tracks its maximum of {self._max_keys} keys",
                )
            bucket = self._buckets[key] = _Bucket(key)
        return bucket

    def _acquire(self, key: str, limit: RateLimit) -> _Bucket:
        with self._lock:
            bucket = self._bucket_for(key, limit)
            if not bucket.waiters and bucket.holders < limit.max_concurrent:
                bucket.holders += 1
                return bucket
            if len(bucket.waiters) >= limit.max_queue:
                self._discard_if_idle(bucket)
                raise FetcherQueueFullError(key, limit.max_queue)
            waiter = _Waiter(limit.max_concurrent)
            bucket.waiters[waiter] = None
        try:
            waiter.lock.acquire()
        except BaseException:
            # Interrupted while queued (KeyboardInterrupt in the main thread): leave the
            # queue, or pass the slot on when it was handed over meanwhile.
            with self._lock:
                if waiter.granted:
                    self._release_locked(bucket)
                else:
                    bucket.waiters.pop(waiter, None)
                    self._wake(bucket)
                    self._discard_if_idle(bucket)
            raise
        return bucket

    def _release(self, bucket: _Bucket) -> None:
        with self._lock:
            self._release_locked(bucket)

    def _release_locked(self, bucket: _Bucket) -> None:
        bucket.holders -= 1
        self._wake(bucket)
        self._discard_if_idle(bucket)

    @staticmethod
    def _wake(bucket: _Bucket) -> None:
        # Caller holds the lock.
        waiters = bucket.waiters
        while waiters:
            waiter = next(iter(waiters))
            if bucket.holders >= waiter.max_concurrent:
                return  # the head cannot go yet, and nobody may overtake it
            del waiters[waiter]
            bucket.holders += 1
            waiter.granted = True
            waiter.lock.release()

    def _discard_if_idle(self, bucket: _Bucket) -> None:
        # Caller holds the lock.
        if bucket.holders or bucket.waiters:
            return
        if bucket.name is None:
            if self._global is bucket:
                self._global = None
        elif self._buckets.get(bucket.name) is bucket:
            del self._buckets[bucket.name]
