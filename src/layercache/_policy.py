"""TTL arithmetic: per-layer resolution, policies and jitter. Pure and synchronous."""

from __future__ import annotations

import datetime as _dt
import random
from collections.abc import Mapping
from typing import Any

from ._entry import Entry
from ._options import CacheOptions, PerLayer, seconds

__all__ = ["build_entry", "per_layer_value", "policy_ttl"]


def per_layer_value(value: PerLayer | None, layer: str, default: float | None) -> float | None:
    """The number for ``layer`` out of a number-or-dict option."""
    if value is None:
        return default
    if isinstance(value, dict):
        return value.get(layer, default)
    return value


def policy_ttl(policy: Any, key: str, value: Any, now: float, tz: _dt.tzinfo) -> float:
    """Seconds until the boundary a ``ttl_policy`` names, measured from wall time ``now``."""
    if callable(policy):
        return seconds("ttl_policy result", policy(key, value))
    if isinstance(policy, Mapping):
        step = float(policy["align_to"])
        remaining = step - (now % step)
        return remaining
    current = _dt.datetime.fromtimestamp(now, tz)
    if policy == "until-midnight":
        boundary = (current + _dt.timedelta(days=1)).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
    else:  # "next-hour"
        boundary = (current + _dt.timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    return max(boundary.timestamp() - now, 0.0)


def build_entry(
    key: str,
    value: Any,
    options: CacheOptions,
    layer: str,
    layer_default: float | None,
    now: float,
    *,
    tz: _dt.tzinfo = _dt.timezone.utc,
    rng: random.Random | None = None,
) -> Entry | None:
    """The entry to store in ``layer``, or ``None`` when the TTL says "do not store here"."""
    if options.ttl_policy is not None:
        ttl: float | None = policy_ttl(options.ttl_policy, key, value, now, tz)
    else:
        ttl = per_layer_value(options.ttl, layer, layer_default)
    if value is None and options.negative_ttl is not None:
        ttl = options.negative_ttl
    if ttl is None:
        return Entry(value, now, None, tags=options.tags or ())
    jitter = per_layer_value(options.ttl_jitter, layer, None)
    if jitter:
        offset = (rng or random).uniform(-jitter, jitter)
        # Jitter spreads expiries; it never turns a positive TTL into "expired at once".
        ttl = max(ttl + offset, ttl / 10)
    if ttl <= 0:
        return None
    return Entry(value, now, now + ttl, tags=options.tags or ())
