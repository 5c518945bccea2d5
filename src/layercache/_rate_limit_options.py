"""``fetcher_rate_limit`` options and their error, shared by the asyncio and thread limiters
(``layercache/_async/rate_limit.py`` and ``layercache/_sync/rate_limit.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

from ._exceptions import FetcherQueueFullError
from ._options import coerce_group

__all__ = ["FetcherQueueFullError", "RateLimit", "RateLimitScope", "coerce_rate_limit"]

RateLimitScope: TypeAlias = Literal["key", "global"]
_SCOPES = ("key", "global")


def _count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, not {value!r}")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimit:
    """Limit on concurrent fetcher calls.

    Attributes:
        max_concurrent: Fetcher calls that may run at once in the scope (>= 1).
        scope: ``"key"`` (per cache key) or ``"global"`` (one limit for the whole stack).
        max_queue: Callers that may wait for a slot in the scope (>= 0); one more fails
            with :class:`FetcherQueueFullError`. Waiters are served first come, first served.

    Raises:
        ValueError: On a value out of range or of the wrong type.
    """

    max_concurrent: int = 1
    scope: RateLimitScope = "key"
    max_queue: int = 1000

    def __post_init__(self) -> None:
        _count("max_concurrent", self.max_concurrent, 1)
        _count("max_queue", self.max_queue, 0)
        if self.scope not in _SCOPES:
            raise ValueError(f"scope must be 'key' or 'global', not {self.scope!r}")


def coerce_rate_limit(value: object) -> RateLimit | None:
    """Validate a ``fetcher_rate_limit`` option.

    Args:
        value: A :class:`RateLimit`, a ``dict`` of its fields, ``True`` (the defaults), or
            ``None`` / ``False`` (no limit).

    Returns:
        The options, or ``None`` when fetchers are not limited.

    Raises:
        ValueError: On a bad field value or a value of another type.
        TypeError: On a dict with an unknown field name (like ``RateLimit(foo=1)``).
    """
    return coerce_group("fetcher_rate_limit", RateLimit, value)
