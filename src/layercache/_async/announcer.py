"""The announcer: tells the other instances about changes through the invalidation bus.

Below everything that changes data (the stack's write and invalidation methods, the layer
set's and the tag keeper's replays all announce through it), above nothing but the bus. Under
graceful degradation an announcement that cannot be published is kept in a
:class:`~layercache._async.recovery.Backlog` (bounded: past the bound the backlog is fenced and
one ``clear`` is sent instead, which is always safe) and published again, oldest first, by the
next announcement or the bus's reconnect.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Iterable, Sequence
from typing import Any

from .._exceptions import LayerCacheError
from .._telemetry import Telemetry
from .._types import InvalidationBus, InvalidationMessage
from .recovery import Backlog, Item, catch_up

__all__ = ["Announcer"]

# Keys per invalidation message on a bus that does not say how many it takes (one that does,
# such as RedisInvalidationBus with its ``max_keys``, gets messages of that many).
_BUS_CHUNK = 1_000
# Announcements kept while the bus cannot publish, before they collapse into one "clear".
_MAX_UNSENT = 1_000

Change = tuple[str, str, Sequence[str]]
"""``(scope, operation, keys)``: one change to announce."""


class Announcer:
    """Publishes changes on ``bus`` (nothing at all without one)."""

    def __init__(
        self,
        bus: InvalidationBus | None,
        *,
        broadcast: bool,
        telemetry: Telemetry,
        retry_after: float | None,
    ) -> None:
        self.bus = bus
        # Keys per message: the bus's own bound (every instance uses the same, its docs say),
        # so a bulk invalidation goes out in as few messages as the receivers accept: each
        # message costs a receiver its own pass (a change of up to 1,024 keys is marked key
        # by key in its flight table, a larger one at once).
        limit = getattr(bus, "max_keys", None)
        self._chunk = (
            limit
            if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0
            else _BUS_CHUNK
        )
        # Whether writes are announced too (deletes, invalidations, clears and generation
        # bumps always are: a peer must never keep serving what was removed).
        self.broadcast = broadcast
        self._telemetry = telemetry
        self._retry_after = retry_after
        # Announcements that could not be published, oldest first (one flusher at a time).
        self.backlog = Backlog(_MAX_UNSENT)

    def _message(self, scope: str, operation: str, keys: Sequence[str], mode: str) -> Any:
        assert self.bus is not None
        return InvalidationMessage(
            source_id=self.bus.source_id,
            scope=scope,
            operation=operation,
            keys=tuple(keys),
            timestamp=time.time(),
            mode=mode,
        )

    async def announce(
        self, scope: str, operation: str, keys: Sequence[str], mode: str = "any"
    ) -> None:
        """Tell the other instances. Writes (``operation == "set"``) only under
        ``broadcast``. Large key sets go out in chunks so each message stays within the bus's
        bounds."""
        bus = self.bus
        if bus is None or (operation == "set" and not self.broadcast):
            return
        items = list(keys)
        step = self._chunk
        chunks = [items[i : i + step] for i in range(0, len(items), step)] or [[]]
        messages = [self._message(scope, operation, chunk, mode) for chunk in chunks]
        # Older announcements that failed go first, so the others hear them in order: behind
        # them in the (bounded) backlog.
        if self._keep(messages, only_behind=True):
            await self.flush()
            return
        for position, message in enumerate(messages):
            try:
                await self._publish(message)
            except LayerCacheError as exc:
                self._telemetry.report(exc, operation="bus.publish")
                if self._retry_after is None:
                    raise
                self._keep(messages[position:])
                return

    async def _publish(self, message: InvalidationMessage) -> None:
        """Publish one message (counted once sent)."""
        assert self.bus is not None
        await self.bus.publish(message)
        self._telemetry.metrics.bus_sent += 1

    async def announce_all(self, changes: Iterable[Change]) -> None:
        """:meth:`announce` each change, in order."""
        for scope, operation, keys in changes:
            await self.announce(scope, operation, keys)

    def _keep(self, messages: Sequence[Any], *, only_behind: bool = False) -> bool:
        """Keep announcements for later (``only_behind``: only if older ones are kept;
        returns whether they were)."""
        backlog = self.backlog
        with backlog.lock:
            if only_behind and not backlog.queue and not backlog.fenced:
                return False
            for message in messages:
                # Kept in pieces of at most 1,000 keys: the backlog's bound counts messages,
                # and so bounds the keys it holds (1,000 x 1,000) whatever the bus takes.
                keys = message.keys
                for start in range(0, max(len(keys), 1), _BUS_CHUNK):
                    piece = keys[start : start + _BUS_CHUNK]
                    if len(piece) != len(keys):
                        message = dataclasses.replace(message, keys=piece)
                    backlog.push(("message", message))
        return True

    async def flush(self) -> None:
        """Publish kept announcements, oldest first, until one fails again.

        One flusher at a time (two writes after an outage, or a write and the reconnect
        handler, would otherwise publish the head twice): a caller that finds a flush running
        leaves its messages kept, and the running flusher takes them, since it looks at the
        backlog under the same lock before it stops. Never raises for a failed announcement:
        the caller's change was applied.
        """
        backlog = self.backlog
        claim = 0 if self.bus is None else backlog.claim()
        if not claim:
            return
        try:
            await catch_up(
                backlog,
                fence=functools.partial(self._send, "clear", "clear"),
                replay=self._resend,
                batch_kind=None,
                limit=1,
            )
        except LayerCacheError as exc:
            self._telemetry.report(exc, operation="bus.publish")
        finally:
            backlog.release(claim)

    async def _send(self, scope: str, operation: str) -> list[Any]:
        await self._publish(self._message(scope, operation, (), "any"))
        return []

    async def _resend(self, batch: list[Item]) -> list[Any]:
        message = batch[0][1]
        try:
            await self._publish(
                InvalidationMessage(
                    source_id=message.source_id,
                    scope=message.scope,
                    operation=message.operation,
                    keys=message.keys,
                    timestamp=time.time(),  # a fresh stamp: receivers refuse stale ones
                    mode=message.mode,
                )
            )
        except LayerCacheError:
            raise
        except Exception as exc:
            # This message can never be sent (the bus refuses it): drop it, go on.
            self._telemetry.report(exc, operation="bus.publish")
        with self.backlog.lock:
            self.backlog.pop(batch)
        return []

    def pending(self) -> int:
        """Announcements kept for later (a fence counts as the one ``clear`` it sends)."""
        with self.backlog.lock:
            return len(self.backlog.queue) + (1 if self.backlog.fenced else 0)
