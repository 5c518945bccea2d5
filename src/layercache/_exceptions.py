"""The exceptions layercache raises on purpose.

Tree::

    LayerCacheError
    ├── CacheMissError(key)              get_or_raise found nothing
    ├── CacheLayerError(layer, operation) a layer failed; __cause__ is the driver error
    ├── CircuitOpenError(key)            a fetcher's circuit breaker is open
    ├── FetchTimeoutError(key, timeout)  a fetch outlived fetch_timeout
    ├── FetcherQueueFullError(key, max_queue) too many callers wait for a rate-limited fetcher
    └── RejectedMessageError(reason, detail) a bus message was dropped (also a ValueError;
                                          in layercache.redis.bus, reported to on_error)

    TypeError
    └── UnserializableValueError         the serializer cannot encode a value you gave

Bad input (keys, patterns, option values) raises the built-in ``ValueError``; a value the
serializer cannot encode raises ``UnserializableValueError``, a ``TypeError`` and deliberately
*not* a ``LayerCacheError``: it is the caller's error, so no layer is degraded or reported as
failed for it and it reaches the caller unchanged (``except TypeError`` catches it).
A fetcher's own exception is never wrapped: it reaches every waiting caller unchanged.
"""

from __future__ import annotations

__all__ = [
    "CacheLayerError",
    "CacheMissError",
    "CircuitOpenError",
    "FetchTimeoutError",
    "FetcherQueueFullError",
    "LayerCacheError",
    "UnserializableValueError",
]


class LayerCacheError(Exception):
    """Base class of every exception layercache raises on purpose."""


class CacheMissError(LayerCacheError, KeyError):
    """``get_or_raise`` found no value and had no fetcher (or the fetcher returned ``None``)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        return f"cache miss for key {self.key!r}"


class CacheLayerError(LayerCacheError):
    """A layer failed during ``operation``; ``__cause__`` holds the driver's exception."""

    def __init__(self, layer: str, operation: str, message: str | None = None) -> None:
        super().__init__(layer, operation)
        self.layer = layer
        self.operation = operation
        self.message = message

    def __str__(self) -> str:
        text = f"layer {self.layer!r} failed during {self.operation}"
        if self.message:
            text += f": {self.message}"
        elif self.__cause__ is not None:
            # The type and the message: a driver exception's repr may show neither (redis-py
            # 8 renders ConnectionError as "network:ConnectionError", without its text).
            cause = self.__cause__
            detail = str(cause)
            text += f": {type(cause).__name__}: {detail}" if detail else f": {cause!r}"
        return text


class CircuitOpenError(LayerCacheError):
    """The circuit breaker of this fetcher is open and no stale value can be served."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        return f"circuit open for key {self.key!r}"


class FetchTimeoutError(LayerCacheError, TimeoutError):
    """A fetch outlived ``fetch_timeout`` and no stale value could be served."""

    def __init__(self, key: str, timeout: float) -> None:
        super().__init__(key, timeout)
        self.key = key
        self.timeout = timeout

    def __str__(self) -> str:
        return f"fetch for key {self.key!r} timed out after {self.timeout:g}s"


class FetcherQueueFullError(LayerCacheError):
    """A fetcher call could not even queue: ``max_queue`` callers already wait for its scope
    (or the limiter already tracks its maximum number of keys)."""

    def __init__(self, key: str, max_queue: int, message: str | None = None) -> None:
        super().__init__(key, max_queue, message)
        self.key = key
        self.max_queue = max_queue
        self.message = message

    def __str__(self) -> str:
        if self.message:
            return f"fetcher queue full for key {self.key!r}: {self.message}"
        return f"fetcher queue full for key {self.key!r} ({self.max_queue} callers already wait)"


class UnserializableValueError(TypeError):
    """The serializer cannot encode a value: the caller's error, not a failure of the layer
    (the stack passes it through unchanged and never degrades a layer for it)."""
