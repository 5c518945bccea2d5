# unasync: begin async-wording
"""Coalescing of concurrent single-key calls to one remote layer into bulk calls.

A remote layer answers a bulk call (Redis ``MGET``, a pipeline of ``SET``) for about the cost
of one single-key call: the client's own work per command, not the round trip, is what limits
a busy process. The adapter puts a :class:`Batcher` in front of a layer's ``get`` (and
``get_leased``, and ``set``) so that concurrent callers share bulk calls ("natural batching"):

* a caller that finds no call of its kind in flight to the layer calls it at once, alone,
  exactly as without the batcher (nothing is added at concurrency 1 but a flag test);
* callers arriving while a call is in flight queue up;
* when the call in flight returns, the first queued caller is woken to lead the next one: it
  takes everything queued (up to ``max_batch`` items), sends it as one bulk call, and hands
  every other caller its own result. Duplicate keys of a read batch are read once.

Batches never mix callers of different event loops (an asyncio future belongs to its loop):
each loop has its own lane (the threaded twin has one, shared by its threads). With
``window`` (seconds), a leader waits that long before it sends, to collect more callers:
latency traded for fewer round trips, off by default.

Failures: a bulk call that fails fails every caller of the batch, each with an exception of
its own (a ``CacheLayerError`` is copied per caller, chained to the same driver error), as if
each had made its own call and it had failed the same way. A bulk write reports outcomes per
item (one unserializable value fails only its own caller). A caller cancelled while queued
leaves (its item is skipped); a cancelled leader never strands the callers of its batch: they
go back to the head of the queue and the next one leads.
"""
# unasync: end async-wording

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .._exceptions import CacheLayerError
from .._primitives.aio import Waiter, flight_scope, loop_ended, pause

__all__ = ["DEFAULT_MAX_BATCH", "MAX_LANES", "Batcher", "own_copy"]

# Items of one bulk call at most (a read batch of 1 KiB values is then a 256 KiB reply).
DEFAULT_MAX_BATCH = 256
# Lanes (loops using one layer at once) kept; callers of a loop beyond it call alone.
MAX_LANES = 64
# Callers queued per lane at most, in batches of max_batch: beyond it a caller calls alone.
QUEUE_BATCHES = 16
# A queued caller that is to call alone after all (the queue is full).
_ALONE: Any = object()


def own_copy(exc: Exception) -> Exception:
    """An exception for one more caller of a failed batch: a ``CacheLayerError`` is copied
    (same layer, operation and message, chained to the same cause), so that callers never
    raise one shared instance (its traceback and context would be mixed by each raise);
    anything else is handed over as it is."""
    if type(exc) is CacheLayerError:
        copy = CacheLayerError(exc.layer, exc.operation, exc.message)
        copy.__cause__ = exc.__cause__
        copy.__suppress_context__ = True
        return copy
    return exc


class _Slot:
    """One queued caller: its item, how it is woken, and what it is handed."""

    __slots__ = ("error", "item", "lead", "result", "waiter")

    def __init__(self, item: Any, waiter: Waiter | None) -> None:
        self.item = item
        # Every queued caller has one; only a leader that went alone has none.
        self.waiter: Any = waiter
        self.lead = False
        self.result: Any = None
        self.error: Exception | None = None


class _Lane:
    """The calls of one loop (or of every thread, in the threaded twin): whether one is in
    flight, and the callers queued behind it."""

    __slots__ = ("busy", "queue")

    def __init__(self) -> None:
        self.busy = False
        self.queue: deque[_Slot] = deque()


class Batcher:
    """Merges concurrent calls of ``one(item)`` into calls of ``many(items)``.

    Args:
        one: The single-item call (a layer's ``get``), used by a caller alone.
        many: The bulk call: one result per item, in order. With ``per_item`` an item's
            result may be the ``Exception`` that item alone failed with (a bulk write).
        max_batch: Items per bulk call at most.
        window: Seconds a leader waits for more callers before it sends (0: none).
        per_item: Whether ``many`` reports failures per item.
        dedupe: Whether equal items of a batch are sent once (reads; never writes, whose
            order matters).
    """

    def __init__(
        self,
        one: Callable[[Any], Awaitable[Any]],
        many: Callable[[list[Any]], Awaitable[Sequence[Any]]],
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        window: float = 0.0,
        per_item: bool = False,
        dedupe: bool = False,
    ) -> None:
        self._one = one
        self._many = many
        self.max_batch = max_batch
        self.window = window
        self._per_item = per_item
        self._dedupe = dedupe
        self._max_queue = QUEUE_BATCHES * max_batch
        # Lane state (busy, queue) changes under this lock. One loop's lane is only touched
        # by its own tasks, but the threaded twin's is shared by every thread; a real lock in
        # both (uncontended, it costs less than a no-op context manager written in Python),
        # never held across a suspension. It also guards the lanes table.
        self._lock = threading.Lock()
        # scope (a loop; None in the threaded twin) -> lane; the last one looked up.
        self._lanes: dict[Any, _Lane] = {}
        self._last: tuple[Any, _Lane] | None = None
        # Bulk calls made, and items they carried (read by tests and benchmarks).
        self.batches = 0
        self.batched_items = 0

    # ------------------------------------------------------------------ lanes

    def _lane(self) -> _Lane | None:
        """The running scope's lane; ``None`` when ``MAX_LANES`` other loops hold one."""
        scope = flight_scope()
        lane = self._lanes.get(scope)
        if lane is None:
            with self._lock:
                lane = self._lanes.get(scope)
                if lane is None:
                    if len(self._lanes) >= MAX_LANES:
                        # Idle lanes and those of closed loops hold nothing: drop them.
                        for other, held in list(self._lanes.items()):
                            if not held.busy or loop_ended(other):
                                del self._lanes[other]
                    if len(self._lanes) >= MAX_LANES:
                        return None
                    lane = self._lanes[scope] = _Lane()
        self._last = (scope, lane)
        return lane

    # ------------------------------------------------------------------ calls

    async def submit(self, item: Any) -> Any:
        """``one(item)``'s result, from a call of its own or from a batch."""
        scope = flight_scope()
        last = self._last
        lane = last[1] if last is not None and last[0] is scope else self._lane()
        if lane is None:
            return await self._one(item)
        slot: Any = None
        with self._lock:
            if not lane.busy:
                lane.busy = True
            elif len(lane.queue) < self._max_queue:
                slot = _Slot(item, Waiter())
                lane.queue.append(slot)
            else:
                slot = _ALONE
        if slot is None:
            if self.window:
                return await self._run_batch(lane, _Slot(item, None), self.window)
            try:
                return await self._one(item)
            finally:
                with self._lock:
                    if lane.queue:
                        self._pass_on_locked(lane)
                    else:
                        lane.busy = False
        if slot is _ALONE:
            return await self._one(item)
        # Queued: wait for a result, or to lead the next batch.
        waiter = slot.waiter
        try:
            await waiter.wait()
        except BaseException:
            with self._lock:
                granted = waiter.granted
                if not granted:
                    waiter.abandon()
                    if slot in lane.queue:
                        lane.queue.remove(slot)
            if granted and slot.lead:
                # Woken to lead, then cancelled before it could: the next caller leads.
                self._pass_on(lane)
            raise
        if slot.lead:
            return await self._run_batch(lane, slot, 0.0)
        if slot.error is not None:
            raise slot.error
        return slot.result

    async def _run_batch(self, lane: _Lane, own: _Slot, window: float) -> Any:
        """Lead one call for ``own`` and the callers queued behind it; hand them their
        results; pass the lead on. Returns ``own``'s result."""
        batch = [own]
        try:
            if window:
                await pause(window)
            with self._lock:
                queue = lane.queue
                while queue and len(batch) < self.max_batch:
                    other = queue.popleft()
                    if not other.waiter.cancelled:
                        batch.append(other)
            if len(batch) == 1:
                alone = True
                result = await self._one(own.item)
            else:
                alone = False
                outcomes = await self._call_many([s.item for s in batch])
        except Exception as exc:
            with self._lock:
                for other in batch[1:]:
                    if not other.waiter.cancelled:
                        other.error = own_copy(exc)
                        other.waiter.wake()
            self._pass_on(lane)
            raise
        except BaseException:
            # Cancelled (or interrupted) before the others had their results: they queue
            # again at the head, in order, and the next one leads.
            with self._lock:
                lane.queue.extendleft(reversed([s for s in batch[1:] if not s.waiter.cancelled]))
            self._pass_on(lane)
            raise
        if alone:
            self._pass_on(lane)
            return result
        per_item = self._per_item
        with self._lock:
            for other, outcome in zip(batch[1:], outcomes[1:], strict=True):
                if other.waiter.cancelled:
                    continue
                if per_item and isinstance(outcome, Exception):
                    other.error = outcome
                else:
                    other.result = outcome
                other.waiter.wake()
        # The lead is passed on once the others have run: callers that come straight back
        # for their next key queue up first and go together, instead of this leader's own
        # next call finding the lane idle and going alone while they queue behind it
        # (batches would alternate between one key and all the others).
        try:
            await pause(0)
        finally:
            self._pass_on(lane)
        mine = outcomes[0]
        if per_item and isinstance(mine, Exception):
            raise mine
        return mine

    async def _call_many(self, items: list[Any]) -> list[Any]:
        """One bulk call for ``items``: one outcome per item, in order."""
        self.batches += 1
        self.batched_items += len(items)
        if self._dedupe:
            unique = list(dict.fromkeys(items))
            if len(unique) < len(items):
                found = dict(zip(unique, await self._many(unique), strict=True))
                return [found[item] for item in items]
        outcomes = list(await self._many(items))
        if len(outcomes) != len(items):
            raise RuntimeError(f"a bulk call returned {len(outcomes)} results for {len(items)}")
        return outcomes

    def _pass_on(self, lane: _Lane) -> None:
        """The call in flight is done: wake the first queued caller to lead the next one,
        or mark the lane idle."""
        with self._lock:
            self._pass_on_locked(lane)

    @staticmethod
    def _pass_on_locked(lane: _Lane) -> None:
        queue = lane.queue
        while queue:
            following = queue.popleft()
            if not following.waiter.cancelled:
                following.lead = True
                following.waiter.wake()
                return
        lane.busy = False
