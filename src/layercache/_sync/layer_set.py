# DO NOT EDIT: generated from src/layercache/_async/layer_set.py by scripts/unasync.py.
# Change the async source and run `python scripts/unasync.py`.
"""The layer set: the adapters in order, fan-out under the write policy, degrade, remember, replay.

It owns each layer's degradation state (its :class:`~layercache._async.recovery.Backlog`):
a layer that fails under graceful degradation is skipped until ``retry_after``, what it misses
meanwhile is remembered (bounded), and the first caller after ``retry_after`` probes it and
replays what it missed before it serves again. What a replay changed in a shared layer is
handed to the announcer, below it (the layer set never calls up into the stack).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any

from .._entry import Entry
from .._exceptions import CacheLayerError, LayerCacheError
from .._metrics import LayerHealth, LayerStatus
from .._primitives.threads import gather, gather_settled
from .._telemetry import Telemetry
from .adapter import MAX_MISSED, LayerAdapter
from .announcer import Announcer
from .recovery import Item, catch_up

__all__ = ["REPLAY_BATCH", "LayerSet"]

# Keys per bulk delete when a recovered layer catches up.
REPLAY_BATCH = 1_000
_WRITE_POLICIES = ("strict", "best-effort")


class LayerSet:
    """The stack's layers, fastest first, and everything about their failures."""

    @staticmethod
    def bind(layers: Sequence[Any]) -> list[LayerAdapter]:
        """The layers bound into adapters, fastest first; refuses what is not a layer list."""
        if isinstance(layers, str | bytes) or not isinstance(layers, Sequence):
            raise ValueError("layers must be a sequence of cache layers, fastest first")
        if not layers:
            raise ValueError("a SyncCacheStack needs at least one layer")
        adapters = [LayerAdapter(layer, i) for i, layer in enumerate(layers)]
        names = [a.name for a in adapters]
        if len(set(names)) != len(names):
            raise ValueError(f"layer names must be unique; got {names}")
        return adapters

    def __init__(
        self,
        adapters: list[LayerAdapter],
        *,
        telemetry: Telemetry,
        announcer: Announcer,
        clock: Callable[[], float],
        retry_after: float | None,
        write_policy: str,
    ) -> None:
        if write_policy not in _WRITE_POLICIES:
            raise ValueError(f"write_policy must be one of {_WRITE_POLICIES}; got {write_policy!r}")
        self.adapters = adapters
        names = [a.name for a in adapters]
        self.names = frozenset(names)
        self.local = [a for a in self.adapters if a.is_local]
        self.shared = [a for a in self.adapters if not a.is_local]
        # The layers whose stores are conditional (RedisLayer's leases).
        self.leased = [a for a in self.adapters if a.leases]
        self.retry_after = retry_after
        self.write_policy = write_policy
        self._telemetry = telemetry
        self._announcer = announcer
        self._clock = clock
        # Undone when the stack closes: a layer may outlive it, or serve another stack.
        self._unreport = [
            adapter.report_to(functools.partial(telemetry.layer_error, adapter.name))
            for adapter in self.adapters
        ]
        for adapter in self.adapters:
            adapter.telemetry = telemetry

    # ------------------------------------------------------------------ fan-out

    def run(
        self,
        operation: str,
        layers: Sequence[LayerAdapter],
        make: Callable[[LayerAdapter], Any],
        missed: Item | None = None,
        succeeded_elsewhere: bool = False,
    ) -> None:
        """Run one operation on several layers concurrently under the write policy.

        ``missed`` describes what a layer that cannot take part must catch up on when it
        recovers (graceful degradation): ``("delete", keys)``, ``("pattern", glob)``,
        ``("clear", None)`` or ``("refill", keys)``. Degraded layers are skipped (and told), a
        layer that fails now is degraded (and told); without graceful degradation failures
        follow the write policy.
        """
        if not layers:
            return
        targets = list(layers)
        if self.retry_after is not None:
            targets = []
            for adapter in layers:
                if adapter.backlog.down_until is not None and not self.usable(adapter):
                    if missed is not None:
                        self.remember(adapter, missed)
                    continue
                targets.append(adapter)
            if not targets:
                return
        results = gather_settled([functools.partial(make, a) for a in targets])
        failures: list[tuple[LayerAdapter, Exception]] = [
            (a, r) for a, r in zip(targets, results, strict=True) if isinstance(r, Exception)
        ]
        if not failures:
            return
        for _, failure in failures:
            if not isinstance(failure, LayerCacheError):
                raise failure  # a programming error, not a layer failure: never swallow it
        self._telemetry.metrics.write_failures += len(failures)
        if self.retry_after is not None:
            for adapter, failure in failures:
                self.degrade(adapter, failure, operation)
                if missed is not None:
                    self.remember(adapter, missed)
            return
        for _, failure in failures:
            self._telemetry.report(failure, operation=operation)
        # best-effort: fail only when every layer failed, the synchronously written ones too.
        if self.write_policy == "strict" or (
            len(failures) == len(targets) and not succeeded_elsewhere
        ):
            raise failures[0][1]

    def fence_tags(self, tags: Sequence[str]) -> None:
        """Put up the fences of ``tags`` in the layers with conditional stores: a fetch of a
        key with one of them that read before now is refused its store."""
        if self.leased:
            self.run("invalidate_by_tags", self.leased, lambda a: a.fence_tags(tags))

    @staticmethod
    def direct_write(adapter: LayerAdapter, key: str, entry: Entry, ttl: float | None) -> None:
        """Write to a synchronous local layer with a plain call."""
        assert adapter.direct_set is not None
        try:
            adapter.direct_set(key, entry, ttl)
        except LayerCacheError:
            raise
        except Exception as exc:
            raise CacheLayerError(adapter.name, "set") from exc

    def entry_or_miss(self, adapter: LayerAdapter, key: str, raw: Any) -> Entry | None:
        """``raw`` if it is an entry; anything else a layer returned is reported, a miss."""
        if raw is None or isinstance(raw, Entry):
            return raw
        # A user layer returned something that is not an envelope: never hand it out as data.
        self._telemetry.report(
            TypeError(f"layer {adapter.name!r} returned {type(raw).__name__}, not an Entry"),
            layer=adapter.name,
            key=key,
            operation="get",
        )
        return None

    # ------------------------------------------------------------------ degradation

    def degrade(self, adapter: LayerAdapter, error: Exception, operation: str) -> None:
        """Skip ``adapter`` until ``retry_after`` from now (graceful degradation)."""
        assert self.retry_after is not None
        until = self._clock() + self.retry_after
        backlog = adapter.backlog
        with backlog.lock:
            first = backlog.down_until is None
            backlog.down_until = until
        if first:
            adapter.degraded_since = until - self.retry_after
            self._telemetry.degraded(
                adapter.name, operation, error, self.retry_after, adapter.degraded_since
            )
        self._telemetry.report(error, layer=adapter.name, operation=operation, degraded_until=until)

    def remember(self, adapter: LayerAdapter, missed: Item) -> None:
        """Record what a degraded layer missed; past the bound (in keys), fence it instead."""
        kind, arg = missed
        backlog = adapter.backlog
        with backlog.lock:  # a replay may be taking items off the queue meanwhile
            if backlog.down_until is None:
                # A replay finished between this caller's decision and now: it would never
                # see what is queued here. Due at once, so the next caller replays it.
                backlog.down_until = self._clock()
            if kind == "refill":
                refills = adapter.refills
                for key in arg:
                    refills[key] = None
                    refills.move_to_end(key)
                while len(refills) > MAX_MISSED:
                    # Forgetting a refill costs nothing but freshness: the layer keeps a
                    # value that no change touched.
                    refills.popitem(last=False)
                return
            pending = adapter.missed_keys
            if kind == "delete" and not backlog.probing:
                # One entry per key: every missed operation is a removal, and removals
                # commute, so a key already waiting to be removed needs no second entry
                # (except while a replay runs: it may have sent that entry already).
                arg = tuple(k for k in arg if k not in pending)
                if not arg:
                    return
            if kind == "clear":
                # A clear supersedes everything missed before it.
                backlog.queue.clear()
                backlog.size = 0
                pending.clear()
            # A new tuple: the replay recognises its items by identity.
            if not backlog.push((kind, arg)):
                pending.clear()
            elif kind == "delete":
                pending.update(arg)

    def usable(self, adapter: LayerAdapter) -> bool:
        """Whether a degraded layer may be used now: probe it once ``retry_after`` passed,
        replay what it missed, and only then put it back in service."""
        backlog = adapter.backlog
        until = backlog.down_until
        if until is None:
            return True
        claim = 0 if self._clock() < until else backlog.claim()
        if not claim:
            return False
        try:
            # Operations arriving during the replay are still remembered (the layer counts as
            # degraded until its queue is empty), and replayed in order by this loop.
            replayed = catch_up(
                backlog,
                probe=functools.partial(self._ping, adapter),
                fence=functools.partial(self._fence, adapter),
                replay=functools.partial(self._replay, adapter),
                batch_kind="delete",
                limit=REPLAY_BATCH,
                tail=functools.partial(self._drop_refills, adapter),
            )
        except Exception as exc:
            assert self.retry_after is not None
            backlog.fail(self._clock() + self.retry_after)
            self._telemetry.report(exc, layer=adapter.name, operation="recover")
            return False
        finally:
            backlog.release(claim)
        adapter.degraded_since = None
        self._telemetry.recovered(adapter.name, self._clock())
        if replayed and not adapter.is_local:
            # The other instances heard of these changes when they were made (or when kept
            # announcements were flushed), possibly before this shared layer had them: a peer
            # that re-read the key from it in between holds the old value in its L1 again.
            # Now that the shared layer has caught up, say it once more.
            self._announcer.announce_all(replayed)
        return True

    @staticmethod
    def _ping(adapter: LayerAdapter) -> None:
        if not adapter.ping():
            raise CacheLayerError(adapter.name, "ping", "the layer reports itself unhealthy")

    @staticmethod
    def _fence(adapter: LayerAdapter) -> list[Any]:
        with adapter.backlog.lock:
            adapter.missed_keys.clear()
            adapter.refills.clear()
        adapter.clear()
        return [("clear", "clear", ())]

    @staticmethod
    def _replay(adapter: LayerAdapter, batch: list[Item]) -> list[Any]:
        kind, arg = batch[0]
        if kind == "delete":
            # Consecutive deletes go out together, in bulk calls of bounded size.
            keys = [key for _, chunk in batch for key in chunk]
            for start in range(0, len(keys), REPLAY_BATCH):
                adapter.delete_many(keys[start : start + REPLAY_BATCH])
            change: tuple[str, str, Sequence[str]] = ("keys", "delete", keys)
        elif kind == "pattern":
            adapter.delete_matching(arg)
            change = ("pattern", "invalidate", (arg,))
        else:
            adapter.clear()
            change = ("clear", "clear", ())
        backlog = adapter.backlog
        with backlog.lock:
            for popped_kind, popped in backlog.pop(batch):
                if popped_kind == "delete":
                    adapter.missed_keys.difference_update(popped)
        return [change]

    @staticmethod
    def _drop_refills(adapter: LayerAdapter) -> bool:
        """Keys refetched while the layer was away: its older copies go (not announced: no
        change, the other instances' copies are as good as before)."""
        backlog = adapter.backlog
        with backlog.lock:
            refilled = list(itertools.islice(adapter.refills, REPLAY_BATCH))
        if not refilled:
            return False
        adapter.delete_many(refilled)
        with backlog.lock:
            for key in refilled:
                adapter.refills.pop(key, None)
        return True

    # ------------------------------------------------------------------ status

    def status(self) -> list[LayerStatus]:
        """Every layer's name, locality and degradation."""
        return [
            LayerStatus(
                a.name,
                a.is_local,
                a.backlog.down_until,
                a.degraded_since if a.backlog.down_until is not None else None,
                a.backlog.size,
            )
            for a in self.adapters
        ]

    def evictions(self) -> int:
        """Evictions the layers report (the memory layer's bound)."""
        return sum(a.evictions() for a in self.adapters)

    def health(self, timer: Callable[[], float]) -> list[LayerHealth]:
        """Probe every layer; never raises."""

        def probe(adapter: LayerAdapter) -> LayerHealth:
            began = timer()
            try:
                healthy = adapter.ping()
                error = None if healthy else "ping returned false"
            except Exception as exc:
                healthy, error = False, str(exc.__cause__ or exc)
            return LayerHealth(adapter.name, healthy, timer() - began, error)

        return gather([functools.partial(probe, a) for a in self.adapters])

    def close(self) -> list[BaseException]:
        """Close every layer; returns the failures."""
        for undo in self._unreport:
            if undo is not None:
                undo()
        errors: list[BaseException] = []
        for adapter in self.adapters:
            try:
                adapter.close()
            except CacheLayerError as exc:
                errors.append(exc)
        return errors
