"""Event subscription and emission; a raising handler never breaks a cache operation."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

__all__ = ["EVENTS", "EventHub"]

EVENTS = frozenset(
    {
        "hit",
        "miss",
        "set",
        "delete",
        "stale_serve",
        "stampede_dedupe",
        "backfill",
        "warm",
        "invalidation",
        "error",
    }
)
# Async handlers run as tasks; past this many pending, new ones are dropped (and logged)
# rather than letting a slow handler grow memory without bound.
MAX_PENDING_HANDLER_TASKS = 1_000

Handler = Callable[[dict[str, Any]], Any]


class EventHub:
    """Handlers per event name. ``active`` is the set of names with at least one handler, so
    the hot path pays one set lookup when nobody listens."""

    def __init__(self, logger: logging.Logger) -> None:
        self._handlers: dict[str, list[Handler]] = {}
        self._logger = logger
        self._pending: set[asyncio.Task[Any]] = set()
        self.active: frozenset[str] = frozenset()
        # Called after every change of ``active`` (a stack caches what its hot path needs).
        self._watchers: list[Callable[[], None]] = []

    def watch(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after every change of :attr:`active`."""
        self._watchers.append(callback)

    def _set_active(self) -> None:
        self.active = frozenset(self._handlers)
        for callback in self._watchers:
            callback()

    def on(self, event: str, handler: Handler) -> Callable[[], None]:
        """Subscribe ``handler``; returns a function that unsubscribes it."""
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}; known: {', '.join(sorted(EVENTS))}")
        if not callable(handler):
            raise ValueError("handler must be callable")
        self._handlers.setdefault(event, []).append(handler)
        self._set_active()
        return lambda: self.off(event, handler)

    def off(self, event: str, handler: Handler) -> None:
        """Unsubscribe ``handler`` (no error when it was not subscribed)."""
        handlers = self._handlers.get(event)
        if handlers and handler in handlers:
            handlers.remove(handler)
            if not handlers:
                del self._handlers[event]
            self._set_active()

    def emit(self, event: str, payload: dict[str, Any]) -> None:
        """Call every handler of ``event`` with ``payload`` (plus ``"event"``)."""
        handlers = self._handlers.get(event)
        if not handlers:
            return
        payload["event"] = event
        for handler in list(handlers):
            try:
                result = handler(payload)
                if inspect.isawaitable(result):
                    self._schedule(event, result)
            except Exception:
                self._logger.exception("layercache: %s event handler raised", event)

    def _schedule(self, event: str, awaitable: Any) -> None:
        if len(self._pending) >= MAX_PENDING_HANDLER_TASKS:
            self._logger.warning("layercache: dropping %s handler; too many pending", event)
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            return

        async def run() -> None:
            try:
                await awaitable
            except Exception:
                self._logger.exception("layercache: async %s event handler raised", event)

        try:
            task = asyncio.get_running_loop().create_task(run())
        except RuntimeError:
            if inspect.iscoroutine(awaitable):
                awaitable.close()
            self._logger.warning("layercache: async %s handler needs a running loop", event)
            return
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def pending(self) -> list[asyncio.Task[Any]]:
        """Async handlers still running (``aclose`` waits for them, bounded)."""
        return list(self._pending)
