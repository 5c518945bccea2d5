"""Fair, bounded limit on concurrent fetcher calls.

Written once on the twin primitives (``layercache/_primitives/``): ``scripts/unasync.py``
generates the thread twin, where ``async with limiter.slot(key, limit):`` blocks instead.

Design: a *bucket* per scope (one per cache key for ``scope="key"``, one for the whole limiter
for ``scope="global"``) counts its holders and keeps its waiters in arrival order. A released
slot is handed directly to the first waiter (its count never drops in between), so a newcomer
cannot overtake the queue and exactly one waiter is woken per release (each waits on a
:class:`Waiter` of its own): no thundering herd, no polling. Waiters sit in an ``OrderedDict``
so one that leaves (cancelled, or interrupted by a signal) is removed in O(1) wherever it is.
A bucket with no holder and no waiter is deleted at once. Every change of the buckets happens
under one lock that is never held while waiting (none is needed on one loop).

Bounds: ``RateLimit.max_queue`` waiters per bucket, ``max_keys`` key buckets at once. Past
either, the call fails with :class:`FetcherQueueFullError` rather than waiting on yet another
(unbounded) queue: load shedding is the point of a rate limit. Buckets only exist while a
fetch of their key runs or waits, so ``max_keys`` bounds simultaneous fetches of distinct keys,
not the key space.
"""

from __future__ import annotations

from collections import OrderedDict
from types import TracebackType

from .._exceptions import FetcherQueueFullError
from .._options import RateLimit
from .._primitives.aio import Waiter, new_flight_lock

__all__ = ["FetcherLimiter", "FetcherSlot"]


class _Bucket:
    __slots__ = ("holders", "name", "waiters")

    def __init__(self, name: str | None) -> None:
        self.name = name  # the key, or None for the global bucket
        self.holders = 0
        # Waiter -> the max_concurrent it asked for (options may differ per call).
        self.waiters: OrderedDict[Waiter, int] = OrderedDict()


class FetcherSlot:
    """One use of a slot: ``async with limiter.slot(key, limit):`` (single use)."""

    __slots__ = ("_bucket", "_key", "_limit", "_limiter")

    def __init__(self, limiter: FetcherLimiter, key: str, limit: RateLimit) -> None:
        self._limiter = limiter
        self._key = key
        self._limit = limit
        self._bucket: _Bucket | None = None

    async def __aenter__(self) -> None:
        if self._bucket is not None:
            raise RuntimeError("a fetcher slot is single use")
        self._bucket = await self._limiter._acquire(self._key, self._limit)

    async def __aexit__(
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

    The thread twin is thread-safe; the asyncio twin serves the tasks of one loop (the
    stack's).

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
        self._lock = new_flight_lock()

    def slot(self, key: str, limit: RateLimit) -> FetcherSlot:
        """A slot for one fetcher call of ``key``: ``async with limiter.slot(key, limit):``.

        Entering waits (first come, first served) until fewer than ``limit.max_concurrent``
        calls of the scope run; leaving (normally, or by an exception) frees the slot for the
        next waiter. A waiter that leaves the queue (cancelled, or interrupted) gives up its
        place, and passes the slot on if it was handed one meanwhile.

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

    async def _acquire(self, key: str, limit: RateLimit) -> _Bucket:
        with self._lock:
            bucket = self._bucket_for(key, limit)
            if not bucket.waiters and bucket.holders < limit.max_concurrent:
                bucket.holders += 1
                return bucket
            if len(bucket.waiters) >= limit.max_queue:
                self._discard_if_idle(bucket)
                raise FetcherQueueFullError(key, limit.max_queue)
            waiter = Waiter()
            bucket.waiters[waiter] = limit.max_concurrent
        try:
            await waiter.wait()
        except BaseException:
            # Left the queue (cancelled, or a signal handler raised in a blocked thread).
            with self._lock:
                if waiter.granted:
                    # The slot was handed over before the waiter could return: pass it on
                    # rather than leak it.
                    self._release_locked(bucket)
                else:
                    waiter.abandon()
                    bucket.waiters.pop(waiter, None)
                    # Leaving the head of the queue may let the next waiter (with a larger
                    # max_concurrent) in.
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
            if waiter.cancelled:
                # Gone before its turn; it has not removed itself yet. Drop it here.
                del waiters[waiter]
                continue
            if bucket.holders >= waiters[waiter]:
                return  # the head cannot go yet, and nobody may overtake it
            del waiters[waiter]
            bucket.holders += 1
            waiter.wake()

    def _discard_if_idle(self, bucket: _Bucket) -> None:
        # Caller holds the lock.
        if bucket.holders or bucket.waiters:
            return
        if bucket.name is None:
            if self._global is bucket:
                self._global = None
        elif self._buckets.get(bucket.name) is bucket:
            del self._buckets[bucket.name]
