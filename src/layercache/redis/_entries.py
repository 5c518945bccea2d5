"""What the Redis layer stores: entries as codec bytes, and what it does with bytes that are
not one. Plain code (no I/O), shared by both twins of the layer."""

from __future__ import annotations

import logging
from typing import Any

from .._codec import CorruptEntryError, EntryCodec
from .._entry import Entry
from .._exceptions import UnserializableValueError
from ._errors import ErrorHandlers, call_error_handler
from ._lease import TOMBSTONE_MAGIC

__all__ = ["StoredEntries"]

logger = logging.getLogger("layercache.redis")


class StoredEntries:
    """Entries to stored bytes and back, for the layer called ``name``.

    Bytes that are not an entry (written by another program, or damaged) read as a miss and
    are reported to :attr:`error_handler` (a warning is logged without one); they are never
    unpickled or evaluated. A delete's tombstone reads as a miss too, and is not reported.
    """

    __slots__ = ("codec", "error_handler", "name")

    def __init__(self, name: str, codec: EntryCodec) -> None:
        self.name = name
        self.codec = codec
        self.error_handler = ErrorHandlers()

    def decode(self, key: str, raw: Any, operation: str) -> Entry | None:
        """The entry in ``raw`` read from ``key``, or ``None`` (a tombstone, unreadable)."""
        try:
            return self.codec.decode(raw)
        except CorruptEntryError as exc:
            # Checked only here, off the hit path: a tombstone is a delete, not damage.
            if raw[:3] == TOMBSTONE_MAGIC:
                return None
            self._report(exc, {"layer": self.name, "key": key, "operation": operation})
            return None

    def encode(self, entry: Entry, operation: str) -> bytes:
        """The bytes that store ``entry``.

        Raises:
            UnserializableValueError: If the value cannot be serialized. The caller's value,
                not the layer, is at fault: not a ``CacheLayerError``, so the stack never takes
                a healthy Redis out of service for it (graceful degradation) and the caller
                always hears of it.
        """
        try:
            return self.codec.encode(entry)
        except UnserializableValueError as exc:
            raise UnserializableValueError(f"layer {self.name!r} ({operation}): {exc}") from (
                exc.__cause__ or exc
            )

    def _report(self, exc: BaseException, context: dict[str, Any]) -> None:
        # A broken handler must not turn a harmless miss into a failed read.
        broken = f"error handler of layer {self.name} raised"
        if not call_error_handler(self.error_handler, exc, context, logger, broken):
            logger.warning("unreadable value in %s for key %r: %s", self.name, context["key"], exc)
