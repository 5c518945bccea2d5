"""Telemetry: events, metrics and logging behind a few calls, for both stacks.

Every collaborator of a stack reports through one :class:`Telemetry`; it is the one place that
asks whether an event has listeners (``wants``), so an event nobody listens to costs one set
lookup and builds no payload. It calls nobody but the event handlers, the metrics recorder and
the logger. Plain code: the asyncio and thread stacks share it.
"""

from __future__ import annotations

import logging
from typing import Any

from ._events import EventHub
from ._metrics import MetricsRecorder

__all__ = ["Telemetry"]


class Telemetry:
    """Counters (``metrics``), events (``events``) and the logger of one stack."""

    __slots__ = ("enabled", "events", "logger", "metrics")

    def __init__(
        self, layer_names: list[str], logger: logging.Logger | None, enabled: bool
    ) -> None:
        self.logger = logger or logging.getLogger("layercache")
        self.metrics = MetricsRecorder(layer_names)
        self.events = EventHub(self.logger)
        # Whether latencies are timed (counters are always kept: they cost an addition).
        self.enabled = enabled

    def wants(self, event: str) -> bool:
        """Whether ``event`` has a listener (build its payload only then)."""
        return event in self.events.active

    def emit(self, event: str, payload: dict[str, Any]) -> None:
        """Hand ``payload`` to the listeners of ``event`` (if any)."""
        if event in self.events.active:
            self.events.emit(event, payload)

    def observe(self, layer: str, seconds: float) -> None:
        """One timed operation of ``layer`` (only when metrics are enabled)."""
        if self.enabled:
            self.metrics.observe(layer, seconds)

    def report(self, error: BaseException, **context: Any) -> None:
        """An error the caller did not see (it was absorbed): counted and an ``error`` event."""
        self.metrics.errors += 1
        if "error" in self.events.active:
            self.events.emit("error", {"error": error, "context": context})

    def layer_error(self, layer: str, error: BaseException, context: dict[str, Any]) -> None:
        """Handler given to layers that turn a bad stored value into a miss."""
        self.metrics.errors += 1
        self.logger.warning("layercache: layer %s reported %r (%s)", layer, error, context)
        if "error" in self.events.active:
            self.events.emit("error", {"error": error, "context": {"layer": layer, **context}})

    def hit(self, key: str, layer: str) -> None:
        """A read answered from ``layer`` (below L1: the L1 path counts inline)."""
        self.metrics.hits += 1
        self.logger.debug("layercache: %s hit in %s", key, layer)
        if "hit" in self.events.active:
            self.events.emit("hit", {"key": key, "layer": layer})

    def miss(self, key: str) -> None:
        """A read that found no usable value anywhere."""
        self.metrics.misses += 1
        if "miss" in self.events.active:
            self.events.emit("miss", {"key": key})

    def stale(self, key: str, state: str, layer: str) -> None:
        """A stale value served (``state``: which window allowed it)."""
        self.metrics.stale_hits += 1
        self.logger.debug("layercache: serving stale %s from %s (%s)", key, layer, state)
        if "stale_serve" in self.events.active:
            self.events.emit("stale_serve", {"key": key, "state": state, "layer": layer})

    def degraded(self, layer: str, operation: str, error: BaseException, skip_for: float) -> None:
        """``layer`` failed and is skipped for ``skip_for`` seconds (logged once per outage)."""
        self.logger.warning(
            "layercache: layer %s failed during %s (%r); skipping it for %gs",
            layer,
            operation,
            error.__cause__ or error,
            skip_for,
        )

    def recovered(self, layer: str) -> None:
        """``layer`` caught up with what it missed and serves again."""
        self.logger.warning("layercache: layer %s recovered", layer)
