"""The one translation of redis-py failures into :class:`~layercache.CacheLayerError`.

Every Redis component of both twins (the layer, the bus, the single-flight coordinator, the
tag index; asyncio and sync) reports a failed command the same way: a ``CacheLayerError`` named
after the component and the operation, chained to the driver's exception (``__cause__``), so
the stack can skip its own wrapper and callers can tell an unreachable Redis from a mistake of
theirs. Plain code: no I/O, imported by both twins.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .._error_handlers import ErrorHandlers, call_error_handler
from .._exceptions import CacheLayerError, UnserializableValueError
from ._clients import pool_exhausted

__all__ = ["DriverErrors", "ErrorHandlers", "call_error_handler", "pool_detail"]


class DriverErrors:
    """Turns what the driver raises into ``CacheLayerError(name, operation[, detail])``.

    ``with errors("set"): ...`` translates inside the block; ``errors.error("get", exc)`` is
    the error itself, for hot paths that use a bare ``try`` (a generator-based context manager
    costs about a microsecond). ``CacheLayerError`` and ``UnserializableValueError`` (the
    caller's value, not the component, is at fault) pass through unchanged. ``BaseException``
    (cancellation, ``KeyboardInterrupt``) is never caught. Everything else the client raises is
    a failure of the component: ``RedisError``, ``OSError``, timeouts, and the odd surprise
    (a closed loop, an ``AttributeError`` from a connection redis-py closed under a concurrent
    command).

    Args:
        name: The component's name in the error (a layer's ``name``, ``"bus"``...).
        detail: Says more about some failures (``None``: nothing to add); e.g. a pool that
            stayed busy too long, or a tag index of another layout.
    """

    __slots__ = ("_detail", "name")

    def __init__(self, name: str, detail: Callable[[BaseException], str | None] | None = None):
        self.name = name
        self._detail = detail

    def error(self, operation: str, exc: BaseException) -> CacheLayerError:
        """The ``CacheLayerError`` for the driver failure ``exc`` (the caller chains it)."""
        detail = None if self._detail is None else self._detail(exc)
        if detail is None:
            return CacheLayerError(self.name, operation)
        return CacheLayerError(self.name, operation, detail)

    @contextmanager
    def __call__(self, operation: str) -> Iterator[None]:
        try:
            yield
        except (CacheLayerError, UnserializableValueError):
            raise
        except Exception as exc:
            raise self.error(operation, exc) from exc


def pool_detail(
    url_given: bool, max_connections: int, socket_timeout: float | None
) -> Callable[[BaseException], str | None]:
    """The ``detail`` of :class:`DriverErrors` for a component on a waiting connection pool:
    what a pool that stayed busy too long means (its own, built from ``url``, or the given
    client's)."""

    def detail(exc: BaseException) -> str | None:
        if not pool_exhausted(exc):
            return None
        if not url_given:
            return "no free connection in the given client's pool within its timeout"
        return (
            f"every one of max_connections={max_connections} stayed busy "
            f"for socket_timeout={socket_timeout}s"
        )

    return detail
