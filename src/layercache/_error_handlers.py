"""Where remote layers and coordination components report the failures they absorb: plain
code shared by the Redis and memcached drivers (no driver import)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from ._types import ErrorHandler

__all__ = ["ErrorHandlers", "call_error_handler"]


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
