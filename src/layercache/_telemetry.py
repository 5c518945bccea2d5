"""Telemetry: events, metrics, logging and tracing behind a few calls, for both stacks.

Every collaborator of a stack reports through one :class:`Telemetry`; it is the one place that
asks whether an event has listeners (``wants``), so an event nobody listens to costs one set
lookup and builds no payload, and the one place that talks to the stack's
:class:`~layercache.OperationTracer` (none by default: each tracing point then costs one
attribute test). It calls nobody but the event handlers, the metrics recorder, the logger and
the tracer. Plain code: the asyncio and thread stacks share it.

Log lines never carry a key: they carry ``key_hash`` (see :func:`key_hash`) among their
structured ``extra`` fields (``operation``, ``key_hash``, ``layer``, ``duration``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from ._events import EventHub
from ._metrics import DEGRADATION_HISTORY, DegradationEvent, MetricsRecorder
from ._types import OperationTracer

__all__ = ["Telemetry", "key_hash", "resolve_logger"]

# A context manager that does nothing, shared by every tracing point when no tracer is set.
_NO_SPAN: contextlib.nullcontext[None] = contextlib.nullcontext()


def _ignore(_seconds: float) -> None:
    """The timer of a stack whose metrics are disabled."""


def key_hash(key: str | None) -> str | None:
    """A short stable digest of ``key`` for log lines (keys may hold personal data)."""
    if key is None:
        return None
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def resolve_logger(logger: logging.Logger | bool | None) -> logging.Logger:
    """The stack's logger: a ``Logger`` as given; ``True`` or ``None``: ``layercache``'s;
    ``False``: one that logs nothing."""
    if logger is None or logger is True:
        return logging.getLogger("layercache")
    if logger is False:
        silent = logging.getLogger("layercache.silenced")
        silent.disabled = True
        silent.propagate = False
        return silent
    if isinstance(logger, logging.Logger):
        return logger
    raise ValueError(f"logger must be a logging.Logger, True or False; got {logger!r}")


def _extra(
    operation: str | None, key: str | None, layer: str | None, duration: float | None
) -> dict[str, Any]:
    return {
        "operation": operation,
        "key_hash": key_hash(key),
        "layer": layer,
        "duration": duration,
    }


class Telemetry:
    """Counters (``metrics``), events (``events``), the logger and the tracer of one stack."""

    __slots__ = ("_history", "enabled", "events", "logger", "metrics", "tracer")

    def __init__(
        self, layer_names: list[str], logger: logging.Logger | bool | None, enabled: bool
    ) -> None:
        self.logger = resolve_logger(logger)
        self.metrics = MetricsRecorder(layer_names)
        self.events = EventHub(self.logger)
        # Whether latencies are timed (counters are always kept: they cost an addition).
        self.enabled = enabled
        self.tracer: OperationTracer | None = None
        self._history: deque[DegradationEvent] = deque(maxlen=DEGRADATION_HISTORY)

    # ------------------------------------------------------------------ logging

    def log(
        self,
        level: int,
        message: str,
        *args: Any,
        operation: str | None = None,
        key: str | None = None,
        layer: str | None = None,
        duration: float | None = None,
    ) -> None:
        """One log line with the structured fields; costs one level test when disabled."""
        logger = self.logger
        if logger.isEnabledFor(level):
            logger.log(level, message, *args, extra=_extra(operation, key, layer, duration))

    def debug(self, message: str, *args: Any, **fields: Any) -> None:
        """A debug line about one layer decision (see :meth:`log` for ``fields``)."""
        self.log(logging.DEBUG, message, *args, **fields)

    # ------------------------------------------------------------------ events, metrics

    def wants(self, event: str) -> bool:
        """Whether ``event`` has a listener (build its payload only then)."""
        return event in self.events.active

    def emit(self, event: str, payload: dict[str, Any]) -> None:
        """Hand ``payload`` to the listeners of ``event`` (if any)."""
        if event in self.events.active:
            self.events.emit(event, payload)

    def timer(self, layer: str, operation: str) -> Callable[[float], None]:
        """A recorder of ``layer``'s ``operation`` latencies for a hot path to hold (a no-op
        when metrics are disabled)."""
        if not self.enabled:
            return _ignore
        return self.metrics.timer(layer, operation)

    def report(self, error: BaseException, **context: Any) -> None:
        """An error the caller did not see (it was absorbed): counted under its operation and
        an ``error`` event."""
        self.metrics.error(context.get("operation"))
        if "error" in self.events.active:
            self.events.emit("error", {"error": error, "context": context})

    def layer_error(self, layer: str, error: BaseException, context: dict[str, Any]) -> None:
        """Handler given to layers that turn a bad stored value into a miss."""
        operation = context.get("operation") or "get"
        self.metrics.error(operation)
        self.log(
            logging.WARNING,
            "layercache: layer %s reported %r",
            layer,
            error,
            operation=operation,
            key=context.get("key"),
            layer=layer,
        )
        if "error" in self.events.active:
            self.events.emit("error", {"error": error, "context": {"layer": layer, **context}})

    def hit(self, key: str, layer: str) -> None:
        """A read answered from ``layer`` (below L1: the L1 path counts inline)."""
        self.metrics.hits += 1
        if self.logger.isEnabledFor(logging.DEBUG):  # the common case builds no arguments
            self.log(
                logging.DEBUG, "layercache: hit in %s", layer, operation="get", key=key, layer=layer
            )
        if self.tracer is not None:
            self.tracer.outcome("hit", layer)
        if "hit" in self.events.active:
            self.events.emit("hit", {"key": key, "layer": layer})

    def miss(self, key: str) -> None:
        """A read that found no usable value anywhere."""
        self.metrics.misses += 1
        if self.tracer is not None:
            self.tracer.outcome("miss", None)
        if "miss" in self.events.active:
            self.events.emit("miss", {"key": key})

    def stale(self, key: str, state: str, layer: str) -> None:
        """A stale value served (``state``: which window allowed it)."""
        self.metrics.stale_hits += 1
        self.debug(
            "layercache: serving a stale value from %s (%s)",
            layer,
            state,
            operation="get",
            key=key,
            layer=layer,
        )
        tracer = self.tracer
        if tracer is not None:
            tracer.outcome("stale", layer)
            tracer.event("stale_serve", {"key": key, "state": state, "layer": layer})
        if "stale_serve" in self.events.active:
            self.events.emit("stale_serve", {"key": key, "state": state, "layer": layer})

    def dedupe(self, key: str) -> None:
        """A caller joined a fetch already running for ``key`` (stampede prevented)."""
        self.metrics.stampede_dedupes += 1
        if self.tracer is not None:
            self.tracer.event("stampede_dedupe", {"key": key})
        if "stampede_dedupe" in self.events.active:
            self.events.emit("stampede_dedupe", {"key": key})

    def fetched(self, key: str, seconds: float) -> None:
        """One origin fetch finished (successfully or not) after ``seconds``."""
        if self.enabled:
            self.metrics.fetch_latency.observe(seconds)
        self.debug("layercache: fetched", operation="fetch", key=key, duration=seconds)

    # ------------------------------------------------------------------ tracing

    def operation(
        self, name: str, key: str | None = None
    ) -> contextlib.AbstractContextManager[Any]:
        """The tracer's span around a public operation (nothing without a tracer)."""
        tracer = self.tracer
        return _NO_SPAN if tracer is None else tracer.operation(name, key)

    def layer_call(
        self, layer: str, operation: str, remote: bool = True
    ) -> contextlib.AbstractContextManager[Any]:
        """The tracer's span around a call to a ``remote`` (non-local) layer (nothing without
        a tracer, or for a local layer)."""
        tracer = self.tracer
        if tracer is None or not remote:
            return _NO_SPAN
        return tracer.layer_call(layer, operation)

    def fetch(self, key: str) -> contextlib.AbstractContextManager[Any]:
        """The tracer's span around an origin fetch (nothing without a tracer)."""
        tracer = self.tracer
        return _NO_SPAN if tracer is None else tracer.fetch(key)

    def trace_event(self, name: str, attributes: Mapping[str, Any]) -> None:
        """A span event on the current span (nothing without a tracer)."""
        tracer = self.tracer
        if tracer is not None:
            tracer.event(name, attributes)

    # ------------------------------------------------------------------ state changes

    def degraded(
        self, layer: str, operation: str, error: BaseException, skip_for: float, at: float
    ) -> None:
        """``layer`` failed at ``at`` (the stack's clock) and is skipped for ``skip_for``
        seconds (once per outage)."""
        cause = error.__cause__ or error
        self._history.append(DegradationEvent(layer, "degraded", at, operation, repr(cause)))
        self.log(
            logging.WARNING,
            "layercache: layer %s failed during %s (%r); skipping it for %gs",
            layer,
            operation,
            cause,
            skip_for,
            operation=operation,
            layer=layer,
        )
        self.trace_event(
            "degraded",
            {"layer": layer, "operation": operation, "error": repr(cause), "retry_after": skip_for},
        )

    def recovered(self, layer: str, at: float) -> None:
        """``layer`` caught up with what it missed and serves again (at ``at``)."""
        self._history.append(DegradationEvent(layer, "recovered", at))
        self.log(logging.INFO, "layercache: layer %s recovered", layer, layer=layer)
        self.trace_event("recovered", {"layer": layer})

    def circuit(self, key: str, state: str) -> None:
        """The circuit breaker of ``key``'s fetcher opened or closed again."""
        if state == "open":
            self.log(
                logging.WARNING,
                "layercache: circuit opened for a fetcher after repeated failures",
                operation="fetch",
                key=key,
            )
        else:
            self.log(logging.INFO, "layercache: circuit closed again", operation="fetch", key=key)
        self.trace_event("circuit_open" if state == "open" else "circuit_closed", {"key": key})

    def degradations(self) -> tuple[DegradationEvent, ...]:
        """The recent degradations and recoveries, oldest first."""
        return tuple(self._history)
