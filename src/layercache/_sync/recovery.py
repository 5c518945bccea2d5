# DO NOT EDIT: generated from src/layercache/_async/recovery.py by scripts/unasync.py.
# Change the async source and run `python scripts/unasync.py`.
"""The one recovery mechanism: remember what a target missed, probe it, replay, fence past a bound.

Three targets use it, each with its own :class:`Backlog`: a degraded layer (the writes and
invalidations it missed), the shared tag index (the records and invalidations it missed) and
the invalidation bus (the announcements it could not publish). What differs between them is
what an item is and how it is replayed; the rules are the same and live here:

* one replay at a time per target (:meth:`Backlog.claim`), so nothing is replayed twice;
* items leave the queue only once replayed, recognised by identity, so an item queued or a
  fence raised meanwhile is never lost (:meth:`Backlog.pop`);
* past the bound the queue is dropped and the target *fenced*: recovery starts with the
  target's fence action (clear what it may hold), which is always safe;
* the target is back in service only when its queue is empty, decided under the lock that
  also guards remembering (:meth:`Backlog.finish`), so an item remembered at the last moment
  is replayed, never stranded;
* :func:`catch_up` returns what it changed: the owner announces it (nothing calls back up).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["Backlog", "catch_up"]

Item = tuple[str, Any]
"""``(kind, argument)``: one missed operation."""


class Backlog:
    """What one target missed while out of reach, oldest first, bounded by ``bound`` (in the
    units ``weigh`` gives each item: keys for a bulk delete).

    ``down_until``: the wall time the target may be probed again (``None``: in service).
    ``lock`` guards every field; owners take it to remember items with their own rules.
    """

    __slots__ = (
        "_claims",
        "_holder",
        "bound",
        "down_until",
        "fenced",
        "lock",
        "probing",
        "queue",
        "size",
        "weigh",
    )

    def __init__(self, bound: int, weigh: Callable[[Item], int] | None = None) -> None:
        self.bound = bound
        self.weigh = weigh
        self.down_until: float | None = None
        self.queue: deque[Item] = deque()
        self.size = 0
        self.fenced = False
        self.probing = False
        self._claims = 0  # claims made so far: each replay's own token
        self._holder = 0  # the token of the replay under way
        self.lock = threading.Lock()

    def _weight(self, item: Item) -> int:
        return 1 if self.weigh is None else self.weigh(item)

    def claim(self) -> int:
        """The right to replay, one caller at a time: a token (true) to :meth:`release` with,
        or ``0`` when a replay is under way."""
        with self.lock:
            if self.probing:
                return 0
            self.probing = True
            self._claims += 1
            self._holder = self._claims
            return self._holder

    def push(self, item: Item) -> bool:
        """Queue ``item`` (the lock held); past the bound, fence instead (``False``).

        Also while fenced: the fence action may be running already, and covers only what
        was missed before it began."""
        weight = self._weight(item)
        if self.size + weight > self.bound:
            self.fence()
            return False
        self.queue.append(item)
        self.size += weight
        return True

    def fence(self) -> None:
        """Forget the queue: the target is cleared when it recovers (the lock held)."""
        self.queue.clear()
        self.size = 0
        self.fenced = True

    def reset(self) -> None:
        """Forget the queue and the fence (the lock held)."""
        self.queue.clear()
        self.size = 0
        self.fenced = False

    def next_batch(self, kind: str | None, limit: int) -> list[Item]:
        """What to replay next: consecutive items of ``kind`` (replayed as one bulk call, up to
        ``limit`` by weight), or the one item at the head."""
        with self.lock:
            queue = self.queue
            if not queue or kind is None or queue[0][0] != kind:
                return [queue[0]] if queue else []
            batch: list[Item] = []
            total = 0
            for item in queue:
                if item[0] != kind or total >= limit:
                    break
                batch.append(item)
                total += self._weight(item)
            return batch

    def pop(self, batch: Sequence[Item]) -> list[Item]:
        """Take replayed items off the head (the lock held), unless a fence replaced them
        meanwhile: what is queued then is newer and stays. By identity (each item is new)."""
        popped: list[Item] = []
        queue = self.queue
        for item in batch:
            if not queue or queue[0] is not item:
                break
            popped.append(queue.popleft())
            self.size -= self._weight(item)
        return popped

    def finish(self) -> bool:
        """Back in service if nothing is left to replay (then released; else ``False``)."""
        with self.lock:
            if self.queue or self.fenced:
                return False
            self.down_until = None
            self.probing = False
            self._holder = 0
            return True

    def fail(self, until: float | None) -> None:
        """The replay failed: probe again at ``until``."""
        with self.lock:
            self.down_until = until
            self.probing = False
            self._holder = 0

    def release(self, claim: int) -> None:
        """Give up the replay right of ``claim`` (idempotent). After :meth:`finish` or
        :meth:`fail` released it, another caller may hold a newer claim: left alone."""
        with self.lock:
            if self._holder == claim:
                self.probing = False
                self._holder = 0


def catch_up(
    backlog: Backlog,
    *,
    fence: Callable[[], list[Any]],
    replay: Callable[[list[Item]], list[Any]],
    batch_kind: str | None,
    limit: int,
    probe: Callable[[], Any] | None = None,
    tail: Callable[[], bool] | None = None,
) -> list[Any]:
    """Replay ``backlog`` (claimed by the caller) until it is empty; returns the changes the
    replay made, for the owner to announce. Raises what a step raises (the owner decides what
    counts as "still down": it then calls :meth:`Backlog.fail`).

    ``probe``: asked first; ``fence``: run when the target is fenced (the queue was dropped:
    it clears the target, and resets the owner's own bookkeeping of the queue);
    ``replay``: one batch (consecutive ``batch_kind`` items, or one item), which it pops itself
    once applied; ``tail``: work to do once the queue is empty (``True``: it did some, look
    again).
    """
    changes: list[Any] = []
    if probe is not None:
        probe()
    while True:
        if backlog.fenced:
            # What was queued before now is covered by the fence action; what is remembered
            # while it runs stays queued and is replayed after it. Failed: fenced again.
            with backlog.lock:
                backlog.reset()
            try:
                changes.extend(fence())
            except BaseException:
                with backlog.lock:
                    backlog.fence()
                raise
            continue
        batch = backlog.next_batch(batch_kind, limit)
        if batch:
            changes.extend(replay(batch))
            continue
        if tail is not None and tail():
            continue
        if backlog.finish():
            return changes
