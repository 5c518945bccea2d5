"""TTL arithmetic: per-layer resolution, policies and jitter. Pure and synchronous."""

from __future__ import annotations

import datetime as _dt
import math
import random
from collections.abc import Mapping
from typing import Any

from ._entry import Entry, MetaCache
from ._options import CacheOptions, PerLayer, seconds

__all__ = ["build_entry", "per_layer_value", "policy_ttl"]


def per_layer_value(
    value: PerLayer | _dt.timedelta | None, layer: str, default: float | None
) -> float | None:
    """The number for ``layer`` out of a number-or-dict option."""
    if value is None:
        return default
    if isinstance(value, _dt.timedelta):  # only before coerce_options has run
        return value.total_seconds()
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
    # Whole seconds: fromtimestamp() rounds to the microsecond, and a time a fraction of a
    # microsecond before a boundary would round onto it and pick the boundary after.
    current = _dt.datetime.fromtimestamp(math.floor(now), tz)
    if policy == "until-midnight":
        boundary = (current + _dt.timedelta(days=1)).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        return max(boundary.timestamp() - now, 0.0)
    # "next-hour": the first instant after ``now`` at which the local clock shows hh:00:00.
    # Wall arithmetic (``current + 1h``) skips or repeats boundaries around DST changes (and
    # some zones shift by 30 minutes), so try the next few wall hours in both folds and keep
    # the earliest one that really exists and lies ahead.
    hour_start = current.replace(minute=0, second=0, microsecond=0, fold=0)
    best: float | None = None
    for step in range(3):
        wall = (hour_start.replace(tzinfo=None) + _dt.timedelta(hours=step)).replace(tzinfo=tz)
        for fold in (0, 1):
            candidate = wall.replace(fold=fold)
            stamp = candidate.timestamp()
            shown = _dt.datetime.fromtimestamp(stamp, tz)
            if stamp <= now:
                continue
            exists = shown.replace(tzinfo=None) == wall.replace(tzinfo=None)
            # A wall hour skipped in part (Lord Howe springs from 02:00 to 02:30) starts at
            # the transition itself: the first instant whose clock shows that hour.
            starts_hour = _dt.datetime.fromtimestamp(stamp - 1, tz).hour != shown.hour
            if exists or starts_hour:
                best = stamp if best is None else min(best, stamp)
    if best is None:  # pragma: no cover - no zone skips three hours at once
        return 3600.0
    return best - now


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
    reads: int = 0,
    metas: MetaCache | None = None,
) -> Entry | None:
    """The entry to store in ``layer``, or ``None`` when the TTL says "do not store here".

    ``metas`` shares the entry's metadata with entries built just before (see
    :class:`MetaCache`); without it every entry gets its own.
    """
    if options.ttl_policy is not None:
        ttl: float | None = policy_ttl(options.ttl_policy, key, value, now, tz)
    else:
        ttl = per_layer_value(options.ttl, layer, layer_default)
    if value is None and options.negative_ttl is not None:
        ttl = options.negative_ttl
    if ttl is None:
        if metas is not None:
            return Entry.of(value, metas.meta(layer, now, None, None, None, options.tags or ()))
        return Entry(value, now, None, tags=options.tags or ())
    if ttl <= 0:
        return None  # "not stored in this layer"; jitter never turns that into a store
    adaptive = options.adaptive_ttl
    if reads and adaptive is not None and not isinstance(adaptive, Mapping):
        ttl = adaptive.ttl_for(ttl, reads)
    jitter = per_layer_value(options.ttl_jitter, layer, None)
    if jitter:
        offset = (rng or random).uniform(-jitter, jitter)
        # Jitter spreads expiries; it never turns a positive TTL into "expired at once".
        ttl = max(ttl + offset, ttl / 10)
    if ttl <= 0:
        return None
    stale = per_layer_value(options.stale_while_revalidate, layer, None)
    error = per_layer_value(options.stale_if_error, layer, None)
    if metas is not None:
        return Entry.of(value, metas.meta(layer, now, ttl, stale, error, options.tags or ()))
    fresh_until = now + ttl
    return Entry(
        value,
        now,
        fresh_until,
        fresh_until + stale if stale else None,
        fresh_until + error if error else None,
        options.tags or (),
    )
