"""The one translation of redis-py failures into :class:`~layercache.CacheLayerError`.

Every Redis component of both twins (the layer, the bus, the single-flight coordinator, the
tag index; asyncio and sync) reports a failed command the same way: a ``CacheLayerError`` named
after the component and the operation, chained to the driver's exception (``__cause__``), so
the stack can skip its own wrapper and callers can tell an unreachable Redis from a mistake of
theirs. Plain code: no I/O, imported by both twins.
"""

from __future__ import annotations

from collections.abc import Callable

from .._error_handlers import DriverErrors, ErrorHandlers, call_error_handler
from ._clients import pool_exhausted

__all__ = ["DriverErrors", "ErrorHandlers", "call_error_handler", "pool_detail"]


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
