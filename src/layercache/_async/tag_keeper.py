"""The tag keeper: the tag index under graceful degradation.

A shared tag index (``RedisTagIndex``) can be out of reach while the layers answer. Then,
like a layer, it is skipped until ``retry_after``, what it missed is remembered in its
:class:`~layercache._async.recovery.Backlog` (bounded; repeated records of a key cost one
entry) and replayed when it answers again. The replay *returns* the keys whose values must go
and the changes to announce (:class:`TagReplay`): deleting values everywhere is the writer's
(write-behind routing), announcing the announcer's.

Removals, patterns and clears are not remembered: one replayed after another instance wrote
the key again would erase that newer entry, and the next invalidation of its tags would miss
its value. A removal that never happens leaves the index an entry too many (an invalidation
then deletes a key that is gone, or one that moved to other tags: harmless), until the entry's
own expiry.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from .._exceptions import LayerCacheError
from .._telemetry import Telemetry
from .flights import Flights, among
from .layer_set import REPLAY_BATCH, LayerSet
from .recovery import Backlog, Item, catch_up
from .tag_index import TagIndexAdapter

__all__ = ["TagKeeper", "TagReplay"]

# Operations the index may miss (in keys) before it is fenced.
_MAX_MISSED = 10_000


class TagReplay:
    """What a replay of the tag index did, for the writer to finish: ``deletes`` (keys
    invalidated meanwhile, already forgotten by the index, whose values go everywhere),
    ``evicted`` (keys the index dropped to keep its bound), ``changes`` (to announce, in
    order) and whether the index is back in service (``recovered``)."""

    __slots__ = ("changes", "deletes", "evicted", "recovered")

    def __init__(self) -> None:
        self.deletes: list[list[str]] = []
        self.evicted: list[str] = []
        self.changes: list[tuple[str, str, Sequence[str]]] = []
        self.recovered = False


class TagKeeper:
    """The stack's tag index and its health."""

    def __init__(
        self,
        index: TagIndexAdapter,
        *,
        layers: LayerSet,
        flights: Flights,
        telemetry: Telemetry,
        clock: Callable[[], float],
    ) -> None:
        self.index = index
        self._layers = layers
        self._flights = flights
        self._telemetry = telemetry
        self._clock = clock
        self.retry_after = layers.retry_after
        self.backlog = Backlog(_MAX_MISSED)
        # The records at the backlog's tail, by key (see remember).
        self._tail: dict[str, list[Any]] = {}
        # Whether what the index missed may concern values in a shared layer (see remember).
        self.missed_shared = False

    @property
    def down(self) -> bool:
        """Whether the index is out of service (what it is asked is remembered)."""
        return self.backlog.down_until is not None

    def failed(self, operation: str, error: LayerCacheError) -> None:
        """An index operation failed: skip the index until ``retry_after`` from now."""
        assert self.retry_after is not None
        with self.backlog.lock:
            self.backlog.down_until = self._clock() + self.retry_after
        self._telemetry.report(error, operation=f"tag_index.{operation}")

    def remember(self, missed: Item | list[Item], shared: bool = True) -> None:
        """Record what the index missed, one entry per key among consecutive records (the
        last record of a key wins): repeated fetches of a key during an outage cost one
        entry, not one each. ``shared``: the operation may concern values in a shared layer
        (``False`` for a fetch's record whose value reached no shared layer: if the backlog
        overflows, the fence then clears the local layers only, so a read-heavy Redis outage
        never clears Redis)."""
        backlog = self.backlog
        with backlog.lock:  # a replay may be taking items off the queue meanwhile
            if backlog.down_until is None:
                # A replay finished between this caller's decision and now: it would never
                # see what is queued here. Due at once, so the next tag operation replays it.
                backlog.down_until = self._clock()
            tail = self._tail
            for kind, arg in missed if isinstance(missed, list) else [missed]:
                if kind in ("remove", "pattern", "clear"):
                    continue  # not replayed (see the module's docstring)
                if shared:
                    self.missed_shared = True
                if kind != "record":
                    tail.clear()  # records after another operation are ordered after it
                    if not backlog.push((kind, arg)):
                        tail.clear()
                    continue
                # Not while a replay runs: it may be sending that very entry.
                held = None if backlog.probing else tail.get(arg[0])
                if held is not None:
                    held[1:] = arg[1:]
                    continue
                # A mutable record (the key's later records update it in place); the replay
                # recognises backlog items by identity.
                holder = list(arg)
                if backlog.push((kind, holder)):
                    tail[arg[0]] = holder
                else:
                    tail.clear()

    async def recover(self, urgent: bool = False) -> TagReplay | None:
        """Replay what the index missed once ``retry_after`` passed (``urgent``: at once);
        ``None`` when it was not tried (too early, or another caller replays). A fenced index
        (it missed too much to replay) is cleared together with the layers whose tags it no
        longer knows: the shared ones only if one of them got such a value."""
        backlog = self.backlog
        until = backlog.down_until
        replay = TagReplay()
        if until is None:
            replay.recovered = True
            return replay
        claim = 0 if self._clock() < until and not urgent else backlog.claim()
        if not claim:
            return None
        try:
            await catch_up(
                backlog,
                fence=functools.partial(self._fence, replay),
                replay=functools.partial(self._replay, replay),
                batch_kind="record",
                limit=REPLAY_BATCH,
            )
        except LayerCacheError as exc:
            # What was replayed before the failure is in ``replay``: the writer finishes it.
            assert self.retry_after is not None
            backlog.fail(self._clock() + self.retry_after)
            self._telemetry.report(exc, operation="tag_index.recover")
            return replay
        finally:
            backlog.release(claim)
        with backlog.lock:
            if backlog.down_until is None:
                self.missed_shared = False
        replay.recovered = True
        return replay

    async def _fence(self, replay: TagReplay) -> list[Any]:
        # The index lost track of what was tagged meanwhile: drop every value it may not
        # know. Only once it answers again (the fence is restored if this fails). The index
        # itself is kept: what it knows of other instances' keys still holds.
        await self.index.probe()
        with self.backlog.lock:
            everywhere = self.missed_shared
            self.missed_shared = False
            self._tail.clear()
        layers = self._layers
        targets = layers.adapters if everywhere else layers.local
        with self._flights.changing_all():
            await layers.run("tag_index.fence", targets, lambda a: a.clear())
        if everywhere:
            replay.changes.append(("clear", "clear", ()))
        return []

    async def _replay(self, replay: TagReplay, batch: list[Item]) -> list[Any]:
        backlog = self.backlog
        kind, arg = batch[0]
        if kind == "record":
            # Batched records leave the backlog only once the call succeeded.
            replay.evicted.extend(await self.index.record_many([tuple(r) for _, r in batch]))
            with backlog.lock:
                for _, record in backlog.pop(batch):
                    key = record[0]
                    if self._tail.get(key) is record:
                        del self._tail[key]
            return []
        # The only other kind remembered. Its keys are resolved now, so a key written again
        # since is deleted too: more than needed, never too little. In the order of
        # invalidate_by_tags: the fences first, the index entries before the values (an
        # entry removed after the value's delete could be a newer fetch's record, made after
        # that delete, whose value then escapes).
        assert kind == "invalidate", kind
        tags, mode = arg
        await self._layers.fence_tags(tags)
        keys = sorted(await self.index.keys_for_tags(list(tags), mode))
        if keys:
            # The values go whatever the removal's outcome: one that failed may still have
            # run (its reply lost to a reset, or delivered late by a stalled link), and the
            # retried replay would then no longer find these keys, while their values stayed
            # in the shared layers, unknown to the index.
            replay.deletes.append(keys)
            replay.changes.append(("keys", "invalidate", keys))
            with self._flights.changing(among(keys), keys):
                await self.index.forget_invalidated(keys, tags)
        with backlog.lock:
            backlog.pop(batch)
        return []
