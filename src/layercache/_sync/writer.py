# DO NOT EDIT: generated from src/layercache/_async/writer.py by scripts/unasync.py.
# Change the async source and run `python scripts/unasync.py`.
"""The writer: entries per layer, writes, backfills, deletes everywhere, write-behind, tags.

Every change to stored data goes through here: a caller's ``set``, a fetch's store (first to
the layers with conditional stores, then the rest, and into L1 only if the key did not change
meanwhile), a backfill of a lower layer's hit, a delete or invalidation in every layer, the
rollback of a write that failed, and the write-behind queue's batches. It keeps the tag index
in step (through the tag keeper) and finishes the tag index's replays. It calls down into the
layer set, the tag keeper, the flight table and the announcer.
"""

from __future__ import annotations

import datetime as _dt
import functools
import random
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar

from .._codec import UnserializableValueError
from .._entry import Entry, MetaCache
from .._exceptions import CacheLayerError, LayerCacheError
from .._glob import compile_glob
from .._options import CacheOptions, WriteBehindSettings
from .._policy import build_entry
from .._tag_index import TagRecord
from .._telemetry import Telemetry
from .adapter import LayerAdapter
from .announcer import Announcer
from .flights import Flight, Flights, among, no_flight
from .layer_set import LayerSet
from .recovery import Item
from .tag_keeper import TagKeeper, TagReplay
from .write_behind import WriteBehindQueue

__all__ = ["Writer"]

T = TypeVar("T")
# A value to store: the key, the value, and its options.
Planned = tuple[LayerAdapter, Entry | None]


def _latest_expiry(plan: Sequence[Planned]) -> float | None:
    """The last moment any layer may still hold the value (``None``: some layer never
    expires it); the shared tag index forgets the key after that."""
    latest = 0.0
    for _, entry in plan:
        if entry is None:
            continue
        if entry.expires_at is None:
            return None
        latest = max(latest, entry.expires_at)
    return latest or None


class Writer:
    """Writes and removals in every layer, with the tag index kept in step."""

    def __init__(
        self,
        *,
        layers: LayerSet,
        tags: TagKeeper,
        flights: Flights,
        announcer: Announcer,
        telemetry: Telemetry,
        clock: Callable[[], float],
        rng: random.Random | None,
        tz: _dt.tzinfo,
        write_behind: WriteBehindSettings | None,
        max_profile_entries: int,
    ) -> None:
        self._layers = layers
        self.tags = tags
        self._flights = flights
        self._announcer = announcer
        self._telemetry = telemetry
        self._clock = clock
        self._rng = rng
        self._tz = tz
        # Entries written together share their metadata (bounded by the layers).
        self._metas = MetaCache()
        self._max_profiles = max_profile_entries
        self.behind = (
            None
            if write_behind is None
            else WriteBehindQueue(
                self._flush_behind,
                write_behind.batch_size,
                write_behind.flush_interval,
                write_behind.max_queue,
            )
        )
        # Adaptive TTL: reads per key since its last write, oldest first (bounded).
        self._reads: OrderedDict[str, int] = OrderedDict()
        self._reads_lock = threading.Lock()

    # ------------------------------------------------------------------ entries

    def count_read(self, key: str) -> None:
        """One more read of ``key`` since its last write (adaptive TTL)."""
        reads = self._reads
        with self._reads_lock:
            reads[key] = reads.get(key, 0) + 1
            reads.move_to_end(key)
            if len(reads) > self._max_profiles:
                reads.popitem(last=False)  # the least recently read profile: bounded

    def entries_for(self, key: str, value: Any, opts: CacheOptions, now: float) -> list[Planned]:
        """The entry each layer stores for ``value`` (``None``: not stored there)."""
        # Adaptive TTL: the reads counted since the last write lengthen this write's TTL.
        reads = 0
        if opts.adaptive_ttl is not None:
            with self._reads_lock:
                reads = self._reads.pop(key, 0)
        return [
            (
                adapter,
                build_entry(
                    key,
                    value,
                    opts,
                    adapter.name,
                    adapter.default_ttl,
                    now,
                    tz=self._tz,
                    rng=self._rng,
                    reads=reads,
                    metas=self._metas,
                ),
            )
            for adapter in self._layers.adapters
        ]

    # ------------------------------------------------------------------ one value

    def _store_leased(
        self, key: str, writes: Sequence[Planned], flight: Flight, tags: Sequence[str], now: float
    ) -> bool:
        """A fetch's conditional stores (layers with leases), before any other layer is
        written: ``False`` when one refused it (the key, or one of its tags, changed since
        the read the fetch began from), and then nothing else is stored."""
        leases = flight.leases or {}
        refused: list[str] = []
        by_name = {a.name: e for a, e in writes if a.leases and e is not None}
        targets = [a for a, e in writes if a.leases and e is not None]

        def write(adapter: LayerAdapter) -> None:
            entry = by_name[adapter.name]
            lease = leases.get(adapter.index)
            if lease is None:
                return  # it gave no lease (it was down): it does not get this value
            if not adapter.set_leased(key, entry, entry.storage_ttl(now), lease, tags):
                refused.append(adapter.name)

        self._layers.run(
            "set", targets, write, succeeded_elsewhere=len(targets) < len(writes)
        )
        if refused:
            self._telemetry.debug(
                "layercache: the key changed in %s during its fetch; the fetched value is not "
                "stored",
                ", ".join(refused),
                operation="set",
                key=key,
            )
            return False
        return True

    def store(self, key: str, value: Any, opts: CacheOptions, flight: Flight | None) -> None:
        """Write ``value`` to every layer, then record its tags (``flight``: the fetch whose
        value this is; ``None`` for a caller's ``set``)."""
        layers = self._layers
        now = self._clock()
        plan = self.entries_for(key, value, opts, now)
        writes = [(a, e) for a, e in plan if e is not None]
        skipped = [a for a, e in plan if e is None]
        leased_stored = False
        behind = self.behind
        tags = opts.tags or ()
        expires = _latest_expiry(plan)
        # Changes of the key from here on keep this fetch's value out of L1 (unless_changed):
        # one of them may forget the key in the tag index after the record below.
        epoch = self._flights.epoch
        if flight is not None:
            # A fetch's tags are recorded before its value is stored anywhere. An invalidation
            # of one of them that resolves keys after this record finds the key and deletes
            # what is stored; one that resolved before it had put up its fences and marked
            # this flight before that, so the conditional stores below are refused and L1 is
            # not written. (Recorded after the stores, a value stored in Redis between the
            # fence and the record escaped the invalidation until the fetch removed it.)
            # A value that will reach no shared layer (all down) lives in local layers only.
            reached_shared = behind is not None or any(
                a.degraded_until is None for a in layers.shared
            )
            self._record(key, tags, expires, reached_shared)
        if flight is not None and layers.leased and behind is None:
            # A fetch's value goes to the layers with conditional stores first, and nowhere
            # if one of them refuses it: it may be older than a change made meanwhile.
            if not self._store_leased(key, writes, flight, opts.tags or (), now):
                return
            others = [(a, e) for a, e in writes if not a.leases]
            leased_stored = len(others) < len(writes)
            writes = others
        by_name = {a.name: e for a, e in writes}
        failed: set[str] = set()

        def write(adapter: LayerAdapter) -> None:
            entry = by_name[adapter.name]
            assert entry is not None
            try:
                adapter.set(key, entry, entry.storage_ttl(now))
            except Exception:
                failed.add(adapter.name)
                raise

        def drop(adapter: LayerAdapter) -> None:
            adapter.delete(key)

        remote = [a for a, _ in writes if a.direct_set is None]
        direct = [(a, e) for a, e in writes if a.direct_set is not None]

        def write_direct() -> None:
            for adapter, entry in direct:
                assert entry is not None
                layers.direct_write(adapter, key, entry, entry.storage_ttl(now))

        if flight is None:
            write_direct()
        elif not self._flights.unless_changed(flight, write_direct, key, epoch):
            # Changed since the fetch began, or since its record: the value goes nowhere more.
            # (A change under way may have forgotten the key in the tag index after the
            # record: written now, the value would be out of reach of invalidate_by_tag.)
            # A conditional store of an invalidated fetch that went through before the change
            # reached Redis is taken back: the change may not have removed it. One that
            # began before this fetch did not invalidate it: the fetch read the new row, and
            # the change removes (or has refused) the conditional store itself.
            if leased_stored and flight.invalidated:
                with self._flights.changing(no_flight, (key,)):
                    self.delete_everywhere([key])
            return
        if behind is not None:
            # Write-behind: non-local layers get the write from the queue, in a later batch.
            queued: dict[str, tuple[Entry, float | None] | None] = {}
            for adapter, planned in plan:
                if not adapter.is_local:
                    queued[adapter.name] = (
                        None if planned is None else (planned, planned.storage_ttl(now))
                    )
            remote = [a for a in remote if a.is_local]
            skipped = [a for a in skipped if a.is_local]
            behind.put(key, ("set", queued))
        wrote_directly = len(remote) < len(writes)
        # A layer that misses a write must drop the key when it recovers, since it may hold
        # an older value. A fetch's store is a refill, not a change: remembered apart, in a
        # bounded set that forgets its oldest keys instead of fencing the layer (counting
        # every refill during an outage under read load would pass the bound in a second
        # and clear the whole layer on recovery).
        missed = ("delete" if flight is None else "refill", (key,))
        try:
            layers.run("set", remote, write, missed, succeeded_elsewhere=wrote_directly)
        except Exception:
            self.forget_failed_write([key], failed)
            raise
        # ttl=0 for a layer means "not stored there": remove an older value it may hold.
        if skipped:
            layers.run("set", skipped, drop, missed)
        if flight is None:
            self._record(key, tags, expires, True)
        if tags and self.tags.down and behind is None:
            # The index could not take this value's tags now: a tagged value in a shared layer
            # that the index does not know would escape another instance's invalidation of
            # its tags. It stays in the local layers only (its record is replayed when the
            # index is back); the shared copies go (a removal: always safe).
            # (A degraded layer got no copy: its missed write is remembered already.)
            self._unshare("set", [key])
        if flight is not None and flight.invalidated:
            # The key was invalidated while our writes were in flight; the invalidation may
            # have landed before them, so remove what we just wrote. Removing it is a change
            # of the key too: a read that picked our value up from a lower layer meanwhile
            # must not backfill it after this (newer fetches are not invalidated: they read
            # the origin after the invalidation).
            with self._flights.changing(no_flight, (key,)):
                self.delete_everywhere([key])
        self._telemetry.emit("set", {"key": key})

    def _unshare(self, operation: str, keys: list[str]) -> None:
        """Remove ``keys`` from the shared layers that are up (a write whose tags the index
        could not take: its values stay in the local layers only)."""
        layers = self._layers
        shared = [a for a in layers.shared if a.degraded_until is None]
        if len(keys) == 1:
            key = keys[0]
            layers.run(operation, shared, lambda a: a.delete(key), ("delete", (key,)))
        else:
            layers.run(
                operation, shared, lambda a: a.delete_many(keys), ("delete", tuple(keys))
            )

    def _record(
        self, key: str, tags: Sequence[str], expires: float | None, shared: bool
    ) -> None:
        """Record one key's tags (under the index's degradation policy); the keys the index
        evicted to keep its bound lose their values too."""
        evicted: list[str] = self.tag_op(
            "record",
            functools.partial(self.tags.index.record, key, tags, expires),
            [],
            ("record", (key, tags, expires)),
            shared,
        )
        if evicted:
            self.drop_evicted(evicted)

    # ------------------------------------------------------------------ many values

    def store_many(self, items: Sequence[tuple[str, Any, CacheOptions]]) -> None:
        """Store several values (a caller's ``set_many``); one bulk write per layer."""
        layers = self._layers
        now = self._clock()
        per_layer: dict[str, list[tuple[str, Entry, float | None]]] = {
            a.name: [] for a in layers.adapters
        }
        dropped: dict[str, list[str]] = {a.name: [] for a in layers.adapters}
        written = {key for key, _, _ in items}
        for key, value, opts in items:
            for adapter, entry in self.entries_for(key, value, opts, now):
                if entry is None:
                    dropped[adapter.name].append(key)
                else:
                    per_layer[adapter.name].append((key, entry, entry.storage_ttl(now)))
        failed: set[str] = set()

        def write(adapter: LayerAdapter) -> None:
            try:
                if per_layer[adapter.name]:
                    adapter.set_many(per_layer[adapter.name])
            except Exception:
                failed.add(adapter.name)
                raise
            if dropped[adapter.name]:
                adapter.delete_many(dropped[adapter.name])

        targets: Sequence[LayerAdapter] = layers.adapters
        behind = self.behind
        if behind is not None:
            shared_names = [a.name for a in layers.shared]
            queued: dict[str, dict[str, tuple[Entry, float | None] | None]] = {
                key: dict.fromkeys(shared_names) for key, _, _ in items
            }
            for name in shared_names:
                for key, entry, ttl in per_layer[name]:
                    queued[key][name] = (entry, ttl)
            for key, payload in queued.items():
                behind.put(key, ("set", payload))
            targets = layers.local
        try:
            layers.run("set_many", targets, write, ("delete", tuple(written)))
        except Exception:
            self.forget_failed_write(sorted(written), failed)
            raise
        expiries: dict[str, float | None] = {}
        for planned in per_layer.values():
            for key, stored, _ in planned:
                known = expiries.get(key, 0.0)
                until = stored.expires_at
                expiries[key] = None if known is None or until is None else max(known, until)
        # One batched index call for every key (one round trip per chunk on Redis, not one
        # per key); a down index remembers each key's record for the replay.
        records: list[TagRecord] = [
            (key, opts.tags or (), expiries.get(key)) for key, _, opts in items
        ]
        evicted: list[str] = self.tag_op(
            "record",
            functools.partial(self.tags.index.record_many, records),
            [],
            [("record", record) for record in records],
        )
        if self.tags.down and behind is None:
            # As in store(): tagged values the index could not record now stay in the local
            # layers only; their shared copies go (another instance's invalidation of their
            # tags would miss them until the records are replayed).
            tagged = [key for key, tags, _ in records if tags]
            if tagged:
                self._unshare("set_many", tagged)
        if evicted:
            self.drop_evicted(evicted)
        if self._telemetry.wants("set"):
            for key, _, _ in items:
                self._telemetry.emit("set", {"key": key})

    def forget_failed_write(self, keys: Sequence[str], failed: Collection[str]) -> None:
        """A write raised to its caller: a layer failed under the strict write policy, or
        refused the value itself (one it cannot serialize: the caller's error, for which no
        layer is degraded). The layers that failed keep what they had; the others (the memory
        layer, written first) drop the keys, so that no reader, in this instance or another,
        sees a value the caller was told was not stored."""
        with self._flights.changing(no_flight, keys):
            for adapter in self._layers.adapters:
                if adapter.name in failed:
                    continue
                try:
                    adapter.delete_many(list(keys))
                except LayerCacheError as exc:
                    self._telemetry.report(exc, operation="set.rollback", layer=adapter.name)

    # ------------------------------------------------------------------ removals

    def delete_everywhere(self, keys: Sequence[str]) -> None:
        """Remove ``keys`` from every layer (through the write-behind queue for the shared
        ones, so a delete after a queued set of the key wins)."""
        if not keys:
            return
        layers = self._layers
        targets: Sequence[LayerAdapter] = layers.adapters
        behind = self.behind
        if behind is not None:
            for key in keys:
                behind.put(key, ("delete", None))
            targets = layers.local
        if len(keys) == 1:
            key = keys[0]
            layers.run("delete", targets, lambda a: a.delete(key), ("delete", (key,)))
        else:
            layers.run(
                "delete", targets, lambda a: a.delete_many(keys), ("delete", tuple(keys))
            )

    def drop_evicted(self, keys: list[str]) -> None:
        """Keys the tag index forgot to stay within its bound: their values go too, since no
        invalidation could reach them any more; on every instance when the index is shared
        (the others would never hear those keys named again)."""
        with self._flights.changing(among(keys), keys):
            self.delete_everywhere(keys)
        if self.tags.index.is_shared:
            self._announcer.announce("keys", "delete", keys)

    def delete(self, keys: list[str]) -> None:
        """Remove ``keys`` (already marked as changing) from the index, then every layer.

        Every removal forgets the keys in the tag index *before* it deletes them from the
        layers: a key written again in between (a fetch that started after the change) keeps
        the tags it records, while the other order would erase them and leave its value out
        of reach of the next ``invalidate_by_tag``. A key written before the layer delete is
        deleted; its index entry then points at nothing, which costs nothing."""
        self.tag_op(
            "remove", functools.partial(self.tags.index.remove, keys), None, ("remove", keys)
        )
        self.delete_everywhere(keys)

    def clear(self) -> None:
        """Remove everything (already marked as changing): queue, index, every layer."""
        if self.behind is not None:
            self.behind.discard(lambda _k: True)
        self.tag_op("clear", self.tags.index.clear, None, ("clear", None))
        layers = self._layers
        layers.run("clear", layers.adapters, lambda a: a.clear(), ("clear", None))

    def invalidate_tags(self, tags: Sequence[str], mode: str) -> tuple[list[str], int]:
        """Delete the keys carrying any/all of ``tags`` (the change already marked for
        fetches with those tags); returns them and how many the index still knew as live
        (see :meth:`TagIndexAdapter.forget_invalidated`)."""
        layers = self._layers
        # In Redis itself, on every instance: the tags' fences go up before the keys are
        # resolved, so a fetch of a tagged key that read before now is refused its store, or
        # stored early enough to be resolved and deleted here.
        layers.fence_tags(tags)
        keys: set[str] = self.tag_op(
            "keys_for_tags",
            functools.partial(self.tags.index.keys_for_tags, list(tags), mode),
            set(),
            ("invalidate", (tuple(tags), mode)),
        )
        if self.tags.down:
            # The index is out of reach: which keys carry the tags is unknown until it comes
            # back (the invalidation is replayed then). Local layers are cheap to refill, so
            # drop them now rather than serve a value the caller just invalidated.
            layers.run("invalidate_by_tags", layers.local, lambda a: a.clear())
        ordered = sorted(keys)
        # Fetches of the keys found run with other tags (or none): mark them too.
        known = len(ordered)
        with self._flights.changing(among(keys), ordered):
            if ordered:
                # As in delete(): the index entries go before the values. The index forgets
                # them the cheap way a tag invalidation allows (no per-key read).
                live: int | None = self.tag_op(
                    "remove",
                    functools.partial(self.tags.index.forget_invalidated, ordered, tags),
                    None,
                    ("remove", ordered),
                )
                if live is not None:
                    known = live
                self.delete_everywhere(ordered)
        return ordered, known

    def invalidate_pattern(self, pattern: str) -> int:
        """Delete the keys matching a glob (the change already marked); returns how many
        the layer that removed the most removed."""
        glob = compile_glob(pattern)
        counts: list[int] = []

        def purge(adapter: LayerAdapter) -> None:
            counts.append(adapter.delete_matching(pattern))

        if self.behind is not None:
            self.behind.discard(lambda k: glob.matches(k))
        self.tag_op(
            "keys_matching",
            functools.partial(self.tags.index.forget_matching, pattern),
            None,
            ("pattern", pattern),
        )
        layers = self._layers
        layers.run("invalidate_by_pattern", layers.adapters, purge, ("pattern", pattern))
        return max(counts, default=0)

    # ------------------------------------------------------------------ tag index

    def tag_op(
        self,
        operation: str,
        call: Callable[[], T],
        default: T,
        missed: Item | list[Item],
        shared: bool = True,
    ) -> T:
        """Run a tag index operation under the degradation policy.

        Strict: its failure raises. Graceful: a failing (shared) index is skipped until
        ``retry_after`` like a layer, what it missed is remembered (bounded) and replayed when
        it answers again, and the caller gets ``default``: a Redis outage never fails a cache
        operation through the tag index. ``missed`` is one operation, or a list of them (a
        bulk call is remembered per key, so the bound counts keys).
        """
        keeper = self.tags
        if keeper.retry_after is None:
            return call()
        if keeper.down:
            # A record that follows a value written to a shared layer asks the index at once
            # instead of waiting out retry_after: that layer answered, so the index (usually
            # on the same Redis) likely does too, and a tagged value in Redis that the index
            # does not know would escape another instance's invalidation of its tags.
            replay = keeper.recover(urgent=operation == "record" and shared)
            if replay is not None:
                self._finish_replay(replay)
            if replay is None or not replay.recovered:
                keeper.remember(missed, shared)
                return default
        try:
            return call()
        except LayerCacheError as exc:
            keeper.failed(operation, exc)
            keeper.remember(missed, shared)
            return default

    def _finish_replay(self, replay: TagReplay) -> None:
        """What a replay of the tag index leaves to the writer: the values of the keys it
        invalidated and evicted go everywhere, then its changes are announced (a shared index
        resolves keys for everyone: nobody else will ever name them again)."""
        for keys in replay.deletes:
            with self._flights.changing(among(keys), keys):
                self.delete_everywhere(keys)
        if replay.evicted:
            self.drop_evicted(replay.evicted)
        self._announcer.announce_all(replay.changes)

    # ------------------------------------------------------------------ write-behind

    def _flush_behind(self, batch: list[tuple[str, tuple[str, Any]]]) -> None:
        """Apply one write-behind batch: one bulk write and one bulk delete per layer."""
        targets = self._layers.shared
        sets: dict[str, list[tuple[str, Entry, float | None]]] = {a.name: [] for a in targets}
        deletes: dict[str, list[str]] = {a.name: [] for a in targets}
        for key, (kind, payload) in batch:
            for adapter in targets:
                item = payload.get(adapter.name) if kind == "set" else None
                if item is None:
                    deletes[adapter.name].append(key)
                else:
                    sets[adapter.name].append((key, item[0], item[1]))
        rejected: list[str] = []

        def apply(adapter: LayerAdapter) -> None:
            items = sets[adapter.name]
            if items:
                try:
                    adapter.set_many(items)
                except UnserializableValueError:
                    # One value the layer cannot serialize must not block the queue forever
                    # (a retried batch would fail the same way): write the others one by one
                    # and remove the rejected keys everywhere (below).
                    for key, entry, ttl in items:
                        try:
                            adapter.set(key, entry, ttl)
                        except UnserializableValueError as exc:
                            rejected.append(key)
                            self._telemetry.report(exc, operation="write_behind", key=key)
            if deletes[adapter.name]:
                adapter.delete_many(deletes[adapter.name])

        keys = tuple(key for key, _ in batch)
        # Raises only when the write policy says the batch failed; the queue then keeps it
        # for a retry (under graceful degradation a down layer remembers it for replay).
        self._layers.run("write_behind", targets, apply, ("delete", keys))
        if rejected:
            # The caller's set returned long ago, and this instance's memory layer holds the
            # value: drop it from every layer, so that every instance reads the key afresh.
            self.forget_failed_write(sorted(set(rejected)), ())

    def queued(self, adapter: LayerAdapter, key: str) -> tuple[bool, Entry | None]:
        """A pending write-behind operation answers reads of shared layers first."""
        assert self.behind is not None
        op = self.behind.pending(key)
        if op is None:
            return False, None
        kind, payload = op
        item = payload.get(adapter.name) if kind == "set" else None
        return True, None if item is None else item[0]

    # ------------------------------------------------------------------ reads of one layer

    def peek(self, adapter: LayerAdapter, key: str) -> Entry | None:
        """One layer's entry with the rules of ``get``: a degraded layer is skipped (or
        recovered first), a failure degrades it under graceful degradation, and a queued
        write-behind operation answers before the layer."""
        layers = self._layers
        if adapter.backlog.down_until is not None and not layers.usable(adapter):
            return None
        if self.behind is not None and not adapter.is_local:
            queued, raw = self.queued(adapter, key)
            if queued:
                return raw
        try:
            raw = adapter.get(key)
        except CacheLayerError as exc:
            if layers.retry_after is None:
                raise
            layers.degrade(adapter, exc, "get")
            return None
        return layers.entry_or_miss(adapter, key, raw)

    # ------------------------------------------------------------------ backfill

    def backfill(
        self,
        key: str,
        entry: Entry,
        targets: Sequence[LayerAdapter],
        source: str,
        now: float,
        epoch: int | None = None,
    ) -> None:
        """Copy a lower layer's hit into the layers above it, each with its own TTL.

        ``epoch``: when the value was read. The in-process layers are then written only if
        the key did not change since, in one step with that check (a change landing between
        a check and the write would leave the value it replaced in L1 after it returned);
        nothing is backfilled if it did.
        """
        layers = self._layers

        def copy_for(adapter: LayerAdapter) -> tuple[Entry, float | None]:
            own_ttl = adapter.default_ttl
            copy = entry if own_ttl is None else entry.clipped(now + own_ttl)
            return copy, copy.storage_ttl(now)

        def fill(adapter: LayerAdapter) -> None:
            copy, ttl = copy_for(adapter)
            if ttl is None or ttl > 0:
                adapter.set(key, copy, ttl)

        remote = [a for a in targets if a.direct_set is None]
        direct = [a for a in targets if a.direct_set is not None]

        def write_direct() -> None:
            for adapter in direct:
                copy, ttl = copy_for(adapter)
                if ttl is None or ttl > 0:
                    layers.direct_write(adapter, key, copy, ttl)

        if epoch is None:
            write_direct()
        elif not self._flights.unless_changed_since(key, epoch, write_direct):
            return
        if remote:
            layers.run("backfill", remote, fill)
        if entry.tags:
            # The index may not know this key (written by another process, or before a
            # restart of this one): learn its tags so invalidate_by_tag reaches the copies.
            evicted: list[str] = self.tag_op(
                "record",
                functools.partial(self.tags.index.record, key, entry.tags, entry.expires_at),
                [],
                # Not remembered when the index is down: the writer of the entry recorded its
                # tags (and remembers that record itself), this only re-learns them.
                [],
            )
            if evicted:
                self.drop_evicted(evicted)
        self._telemetry.metrics.backfills += len(targets)
        if self._telemetry.wants("backfill"):
            for adapter in targets:
                self._telemetry.emit(
                    "backfill", {"key": key, "from_layer": source, "to_layer": adapter.name}
                )

    def undo_late_backfill(
        self, keys: Sequence[str], targets: Sequence[LayerAdapter], epoch: int
    ) -> None:
        """Drop backfilled copies of keys that changed while they were written.

        The check before a backfill and its write are not one step: a write or delete that
        lands between them (from another thread or task) is followed by the backfill of the
        value it replaced. Looking again afterwards closes that: a change marked before this
        look is undone here, a change marked after it writes (or deletes) after the backfill.
        Dropping a newer value in passing costs only a miss.
        """
        late = [key for key in keys if self._flights.changed_since(key, epoch)]
        if late:
            self._layers.run(
                "backfill", targets, lambda a: a.delete_many(late), ("delete", tuple(late))
            )

    def backfill_many(
        self, fills: Sequence[tuple[str, Entry]], targets: Sequence[LayerAdapter], now: float
    ) -> None:
        """Copy several lower-layer hits into the layers above, one bulk write per layer."""

        def fill(adapter: LayerAdapter) -> None:
            items: list[tuple[str, Entry, float | None]] = []
            for key, entry in fills:
                own = adapter.default_ttl
                copy = entry if own is None else entry.clipped(now + own)
                ttl = copy.storage_ttl(now)
                if ttl is None or ttl > 0:
                    items.append((key, copy, ttl))
            if items:
                adapter.set_many(items)

        self._layers.run("backfill", targets, fill)
        self._telemetry.metrics.backfills += len(fills) * len(targets)

    def close(self) -> list[BaseException]:
        """Flush the write-behind queue (nothing queued is lost on a graceful shutdown)."""
        if self.behind is None:
            return []
        try:
            self.behind.close()
        except LayerCacheError as exc:
            return [exc]  # reported after the layers are closed
        return []
