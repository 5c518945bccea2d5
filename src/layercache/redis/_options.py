"""Checks and conversions of the Redis components' options, shared by both twins (plain code)."""

from __future__ import annotations

import datetime as _dt
import math

__all__ = [
    "MIN_LEASE_TTL",
    "check_raw_client",
    "coerce_ttl",
    "lease_options",
    "milliseconds",
    "positive_seconds",
]

# Shortest lease_ttl: a fetch (and the lease check of its store) must fit in it, and the
# tombstones and fences it also sets the lifetime of must outlive a round trip comfortably.
MIN_LEASE_TTL = 0.1


def coerce_ttl(ttl: float | _dt.timedelta | None) -> float | None:
    """A storage lifetime in seconds (``None``: no expiry).

    Raises:
        ValueError: If ``ttl`` is not ``None``, a ``timedelta`` or a positive number.
    """
    if ttl is None:
        return None
    if isinstance(ttl, _dt.timedelta):
        ttl = ttl.total_seconds()
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl > 0:
        raise ValueError(f"ttl must be a positive number of seconds or None, got {ttl!r}")
    return float(ttl)


def milliseconds(ttl: float) -> int:
    """``ttl`` seconds as a ``PX`` argument."""
    # Round up so that a tiny positive TTL still stores the value (PX 0 is an error).
    return max(1, math.ceil(ttl * 1000))


def positive_seconds(name: str, value: object) -> float:
    """``value``, a positive finite number of seconds, as a float.

    Raises:
        ValueError: Otherwise (naming the option ``name``).
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def lease_options(lease_ttl: float | None, clock_skew: float) -> tuple[int | None, int]:
    """``lease_ttl`` and ``clock_skew`` checked, in integer microseconds.

    Raises:
        ValueError: If ``lease_ttl`` is neither ``None`` nor a finite number of seconds of at
            least :data:`MIN_LEASE_TTL`, ``clock_skew`` is not a positive finite number, or
            ``clock_skew`` is not below ``lease_ttl``.
    """

    def number(value: object) -> bool:
        return (
            not isinstance(value, bool)
            and isinstance(value, int | float)
            and math.isfinite(value)
            and value > 0
        )

    if lease_ttl is not None and not (number(lease_ttl) and lease_ttl >= MIN_LEASE_TTL):
        raise ValueError(
            f"lease_ttl must be None or a finite number of seconds >= {MIN_LEASE_TTL}, "
            f"got {lease_ttl!r}"
        )
    if not number(clock_skew):
        raise ValueError(f"clock_skew must be a positive finite number, got {clock_skew!r}")
    if lease_ttl is not None and clock_skew >= lease_ttl:
        # On a cluster every lease starts clock_skew old: none could ever be stored.
        raise ValueError(
            f"clock_skew ({clock_skew!r}) must be smaller than lease_ttl ({lease_ttl!r})"
        )
    return (
        None if lease_ttl is None else round(lease_ttl * 1_000_000),
        round(clock_skew * 1_000_000),
    )


def check_raw_client(client: object, message: str) -> None:
    """Refuse a redis-py client that decodes responses (the components read raw bytes).

    Raises:
        ValueError: ``message``, if ``client`` was created with ``decode_responses=True``.
    """
    encoder = getattr(client, "get_encoder", None)
    if encoder is not None and getattr(encoder(), "decode_responses", False):
        raise ValueError(message)
