"""The bus link: the subscription to the invalidation bus, remote changes, and key generations.

It starts the bus's subscriber (on first use, and again on a new loop when the loop it ran on
has ended), applies what other instances announce to this instance's local layers (and its
per-instance tag index), drops the local layers when the subscription was lost, and owns the
key generation (adopted from a bump here or elsewhere; the old generation's keys deleted in
the background). It calls down into the layer set, the flight table, the tag index and the
announcer; nothing calls it but the stack.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from .._exceptions import LayerCacheError
from .._glob import compile_glob, escape_glob
from .._primitives.aio import launch_background, loop_ended, new_future, running_loop
from .._telemetry import Telemetry
from .._types import GenerationStore, InvalidationBus, InvalidationMessage
from .announcer import Announcer
from .flights import Flight, Flights, among
from .layer_set import LayerSet
from .tag_index import TagIndexAdapter

__all__ = ["BusLink"]

# The scope of the messages a bus makes of a shared layer's own change reports (Redis client
# tracking: RedisInvalidationBus(track_prefix=...)); the bus's wire format has no such scope.
TRACKING_SCOPE = "tracking"


class BusLink:
    """This instance's end of the invalidation bus, and its key generation."""

    def __init__(
        self,
        bus: InvalidationBus | None,
        *,
        announcer: Announcer,
        layers: LayerSet,
        flights: Flights,
        tags: TagIndexAdapter,
        telemetry: Telemetry,
        workers: Any,
        generation: int | None,
        cleanup_batch: int | None,
    ) -> None:
        self.bus = bus
        self._announcer = announcer
        self._layers = layers
        self._flights = flights
        # A per-instance tag index resolves a peer's tag invalidation here.
        self._local_tags = None if tags.is_shared else tags
        _check_track_prefix(bus, layers)
        self._telemetry = telemetry
        self._workers = workers
        self._store: GenerationStore | None = bus if isinstance(bus, GenerationStore) else None
        self.generation = generation
        self._cleanup_batch = cleanup_batch
        self._cleanups: list[Any] = []
        self.started = bus is None
        # unasync: begin async-wording
        # The loop the bus's subscriber runs on: it ends with that loop, and the next one to
        # use the stack subscribes again (a module-level stack and several asyncio.run()
        # calls). The lock guards the restart: threads may each run a loop.
        # unasync: end async-wording
        self._loop: Any = None
        self._lock = threading.Lock()

    def needs_start(self) -> bool:
        """Whether :meth:`start` has work to do (a cheap test for every operation)."""
        return not self.started or loop_ended(self._loop)

    async def start(self) -> None:
        """Subscribe on first use (the constructor does no I/O), and again on this loop when
        the loop the subscriber ran on has ended."""
        with self._lock:
            if self.started and not loop_ended(self._loop):
                return
            restarted = self.started
            self.started = True
            self._loop = running_loop()
        assert self.bus is not None
        try:
            if restarted:
                # Nobody listened since the loop the subscriber ran on ended: what was
                # announced meanwhile is lost, as after a reconnect. The local copies go
                # first; concurrent callers do not wait for the subscription (as on the first
                # start), and a drop after it would void the fetches they started meanwhile.
                self._telemetry.log(
                    logging.INFO,
                    "layercache: bus subscriber moves to a new loop",
                    operation="bus.start",
                )
                await self._layers.run("bus.restart", self._layers.local, lambda a: a.clear())
            await self.bus.start(self._on_message, self._on_reconnect, self._on_error)
            if self.generation is not None and self._store is not None:
                # Bumps announced while this instance was down are in Redis: adopt them.
                stored = await self._store.load_generation()
                if stored is not None:
                    self.adopt(int(stored))
        except Exception as exc:
            # The bus keeps trying to subscribe by itself (and calls on_reconnect when it
            # succeeds), so this is reported once, never retried from here.
            self._telemetry.report(exc, operation="bus.start")
            if self._layers.retry_after is None:
                raise

    # ------------------------------------------------------------------ remote changes

    async def _on_message(self, message: InvalidationMessage) -> None:
        """Another instance changed something: drop it from this instance's local layers."""
        if message.scope == TRACKING_SCOPE:
            await self._on_tracked(message)
            return
        self._telemetry.metrics.bus_received += 1
        try:
            await self._apply(message)
        except Exception as exc:  # never let one message break the subscriber
            self._telemetry.report(exc, operation="bus.apply", scope=message.scope)
        if self._telemetry.wants("invalidation"):
            self._telemetry.emit(
                "invalidation", {"keys": list(message.keys), "source_id": message.source_id}
            )

    async def _apply(self, message: InvalidationMessage) -> None:
        layers = self._layers
        local = layers.local
        tags = self._local_tags
        scope = message.scope
        if scope == "keys":
            keys = list(message.keys)
            with self._flights.changing(among(keys), keys):
                if tags is not None:
                    await tags.remove(keys)
                if keys:
                    await layers.run("bus", local, lambda a: a.delete_many(keys))
        elif scope == "tags":
            wanted = set(message.keys)
            mode = message.mode

            def hit(_key: str, flight: Flight) -> bool:
                if mode == "all":
                    return wanted.issubset(flight.tags)
                return not wanted.isdisjoint(flight.tags)

            with self._flights.changing(hit):
                if tags is not None:
                    # A per-instance index resolves the tags here; a shared index was already
                    # emptied by the publisher, which also sends the resolved keys.
                    found = sorted(await tags.keys_for_tags(list(message.keys), mode))
                    if found:
                        await tags.remove(found)
                        await layers.run("bus", local, lambda a: a.delete_many(found))
        elif scope in ("pattern", "prefix"):
            pattern = message.keys[0]
            if scope == "prefix":
                pattern = escape_glob(pattern) + "*"
            glob = compile_glob(pattern)
            with self._flights.changing(lambda k, _: glob.matches(k)):
                if tags is not None:
                    await tags.forget_matching(pattern)
                await layers.run("bus", local, lambda a: a.delete_matching(pattern))
        elif scope == "clear":
            with self._flights.changing_all():
                if tags is not None:
                    await tags.clear()
                await layers.run("bus", local, lambda a: a.clear())
        elif scope == "generation":
            self.adopt(int(message.keys[0]))

    async def _on_tracked(self, message: InvalidationMessage) -> None:
        """The shared layer reports changed keys (anyone's change, this instance's included):
        only the local copies go. The keys keep their tags (their values, if any, are still
        in the shared layer), and fetches of them keep what they stored there (see
        ``Flights.outdating``)."""
        layers = self._layers
        local = layers.local
        keys: list[str] | None = None if message.operation == "clear" else list(message.keys)
        try:
            with self._flights.outdating(keys):
                if keys is None:
                    await layers.run("bus.tracking", local, lambda a: a.clear())
                elif keys:
                    await layers.run("bus.tracking", local, lambda a: a.delete_many(keys))
        except Exception as exc:  # never let one message break the subscriber
            self._telemetry.report(exc, operation="bus.tracking", scope=message.scope)
        if self._telemetry.wants("invalidation"):
            self._telemetry.emit(
                "invalidation", {"keys": list(message.keys), "source_id": message.source_id}
            )

    async def _on_reconnect(self) -> None:
        """The subscriber was cut off and may have missed invalidations: drop local data."""
        self._telemetry.log(
            logging.WARNING,
            "layercache: invalidation bus reconnected; dropping local layers",
            operation="bus.reconnect",
        )
        # The local copies go first: nothing that fails later (a flush of kept announcements
        # to a bus that dropped again) may leave them serving values changed elsewhere.
        try:
            with self._flights.changing_all():
                await self._layers.run("bus.reconnect", self._layers.local, lambda a: a.clear())
        finally:
            await self._announcer.flush()

    def _on_error(self, error: BaseException, context: dict[str, Any]) -> None:
        context = {"operation": "bus", **context}
        if context["operation"] == "bus.receive":
            self._telemetry.metrics.bus_rejected += 1  # a message dropped unapplied
        self._telemetry.report(error, **context)

    # ------------------------------------------------------------------ generations

    async def bump(self) -> int:
        """A new generation: stored where every instance finds it (when the bus can store
        it), adopted here, and announced."""
        new = (self.generation or 0) + 1
        if self._store is not None:
            new = int(await self._store.bump_generation(new))
        self.adopt(new)
        if self.bus is not None:
            await self._announcer.announce("generation", "bump", (str(new),))
        return new

    def adopt(self, generation: int) -> None:
        """Move to ``generation`` (never back): every running fetch and read counts as
        changed, and the old generation's keys are deleted in the background if asked."""
        old = self.generation
        if old is not None and generation <= old:
            return
        self.generation = generation
        self._flights.mark_all()
        if old is not None and self._cleanup_batch is not None:
            self._start_cleanup(old)

    def _start_cleanup(self, generation: int) -> None:
        """Delete generation ``generation``'s keys in the background, ``batch_size`` keys per
        bulk delete with a pause between batches (a layer that cannot list its keys deletes
        them with its own ``delete_matching``)."""
        pattern = escape_glob(f"v{generation}:") + "*"
        batch_size = self._cleanup_batch
        assert batch_size is not None

        async def purge() -> int:
            total = 0
            for adapter in self._layers.adapters:
                try:
                    total += await adapter.delete_matching_in_batches(pattern, batch_size)
                except LayerCacheError as exc:
                    self._telemetry.report(exc, operation="generation_cleanup", layer=adapter.name)
            return total

        # Keep a reference: a task nobody holds may be collected before it finishes.
        self._cleanups = [h for h in self._cleanups if not h.done()]
        self._cleanups.append(launch_background(new_future(), purge, lambda: None, self._workers))

    def cleanups(self) -> list[Any]:
        """The background cleanups still running (the stack waits for them on close)."""
        return list(self._cleanups)


def _check_track_prefix(bus: InvalidationBus | None, layers: LayerSet) -> None:
    """Refuse a bus that tracks a prefix none of the shared layers stores its keys under:
    it would report nothing, and the local copies would never drop.

    Raises:
        ValueError: ``track_prefix`` differs from every shared layer's ``prefix`` (layers
            without a ``prefix`` attribute are not looked at; none: nothing to check).
    """
    track = getattr(bus, "track_prefix", None)
    if not isinstance(track, str):
        return
    prefixes = [
        prefix
        for adapter in layers.shared
        if isinstance(prefix := getattr(adapter.layer, "prefix", None), str)
    ]
    if prefixes and track not in prefixes:
        raise ValueError(
            f"the invalidation bus tracks the prefix {track!r}, but the shared layers store "
            f"their keys under {prefixes!r}: give track_prefix the RedisLayer's prefix"
        )
