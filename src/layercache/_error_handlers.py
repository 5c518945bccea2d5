"""How remote layers and coordination components report failures: the translation of driver
errors into ``CacheLayerError`` (:class:`DriverErrors`), and where absorbed failures go
(:class:`ErrorHandlers`). Plain code shared by the Redis and memcached drivers (no driver
import)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ._exceptions import CacheLayerError, UnserializableValueError
from ._types import ErrorHandler

__all__ = ["DriverErrors", "ErrorHandlers", "call_error_handler"]


def call_error_handler(
    handler: ErrorHandler | None,
    exc: BaseException,
    context: dict[str, Any],
    logger: logging.Logger,
    broken: str,
) -> bool:
    """Hand ``exc`` and ``context`` to a component's error handler; ``False`` without one
    (the caller logs instead).

    A handler that raises is logged (``broken``, with its traceback), never propagated: a
    broken handler must not turn what it is told about (a harmless miss, a dropped message, a
    fallback) into a failure, nor stop a background loop.
    """
    if not handler:
        return False
    try:
        handler(exc, context)
    except Exception:
        logger.exception(broken)
    return True


class ErrorHandlers:
    """Where a component reports the failures it absorbs: the handler its owner set
    (``set_error_handler``) and one per stack using it (``add_error_handler``, removed when
    that stack closes). A stack never replaces a handler: one component may serve several
    stacks, and each hears of its failures. Falsy when there is none (the caller logs)."""

    __slots__ = ("_added", "_lock", "own")

    def __init__(self) -> None:
        self.own: ErrorHandler | None = None
        self._added: tuple[ErrorHandler, ...] = ()
        self._lock = threading.Lock()

    def add(self, handler: ErrorHandler) -> Callable[[], None]:
        """Add ``handler``; returns the function that removes it again."""
        with self._lock:
            self._added = (*self._added, handler)

        def remove() -> None:
            with self._lock:
                kept = list(self._added)
                if handler in kept:
                    kept.remove(handler)
                self._added = tuple(kept)

        return remove

    def __bool__(self) -> bool:
        return self.own is not None or bool(self._added)

    def __call__(self, exc: BaseException, context: dict[str, Any]) -> None:
        handlers = (self.own, *self._added) if self.own is not None else self._added
        failed: BaseException | None = None
        for handler in handlers:
            try:
                handler(exc, dict(context))
            except Exception as error:  # the others still hear of it
                failed = failed or error
        if failed is not None:
            raise failed


class DriverErrors:
    """Turns what the driver raises into ``CacheLayerError(name, operation[, detail])``.

    ``with errors("set"): ...`` translates inside the block; ``errors.error("get", exc)`` is
    the error itself, for hot paths that use a bare ``try`` (a generator-based context manager
    costs about a microsecond). ``CacheLayerError`` and ``UnserializableValueError`` (the
    caller's value, not the component, is at fault) pass through unchanged. ``BaseException``
    (cancellation, ``KeyboardInterrupt``) is never caught. Everything else the client raises is
    a failure of the component: the driver's errors, ``OSError``, timeouts, and the odd surprise
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
