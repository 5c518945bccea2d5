"""Option dataclasses and the single point where user input is coerced and range-checked.

Every option group lives here: :class:`CacheOptions`, :class:`AdaptiveTtl`,
:class:`CircuitBreaker` and :class:`RateLimit` (pure data; the code that acts on them imports
this module, never the other way round).

Entry points accept a :class:`CacheOptions` or an equivalent ``dict`` (or keyword arguments);
:func:`coerce_options` converts it once (``timedelta`` → seconds, iterables of tags → tuples)
and raises ``ValueError`` for out-of-range values and ``TypeError`` for unknown names, before
any layer is touched.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypeAlias, TypeVar

from ._keys import _check_text

__all__ = [
    "AdaptiveTtl",
    "CacheEntry",
    "CacheEntryRequest",
    "CacheOptions",
    "CircuitBreaker",
    "PerLayer",
    "RateLimit",
    "RateLimitScope",
    "TtlPolicy",
    "WriteBehindSettings",
    "coerce_circuit_breaker",
    "coerce_degradation",
    "coerce_early_refresh",
    "coerce_generation",
    "coerce_generation_cleanup",
    "coerce_options",
    "coerce_rate_limit",
    "coerce_write_behind",
    "merge_options",
    "seconds",
]

Seconds: TypeAlias = "int | float | _dt.timedelta"
PerLayer: TypeAlias = "float | dict[str, float]"
"""A number for every layer, or a dict from layer name to number."""
TtlPolicy: TypeAlias = "str | Mapping[str, Any] | Callable[[str, Any], float]"

_NAMED_POLICIES = ("until-midnight", "next-hour")
MAX_TAGS = 64
MAX_TAG_LENGTH = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheOptions:
    """Per-operation options; ``None`` means "use the stack default".

    Attributes:
        tags: Tags stored with the value (replacing the key's previous tags).
        ttl: Fresh lifetime in seconds (or ``timedelta``), or a dict from layer name to
            seconds; ``0`` means "do not store in that layer".
        ttl_policy: ``"until-midnight"``, ``"next-hour"``, ``{"align_to": seconds}`` or a
            callable ``(key, value) -> seconds``; overrides ``ttl``.
        ttl_jitter: ± random seconds added to each TTL (number or per-layer dict).
        negative_cache: Cache ``None`` results of the fetcher.
        negative_ttl: Lifetime of a negatively cached ``None`` (defaults to the TTL).
        should_cache: Predicate on the fetched value; ``False`` returns it without storing.
        fetch_timeout: Seconds a fetch may run before its waiters get ``FetchTimeoutError``.
        fetch_soft_timeout: Seconds after which waiters get a stale value (when one exists)
            while the fetch goes on in the background and updates the cache.
        stale_while_revalidate: Seconds past freshness during which the stale value is served
            at once while one background refresh runs (number or per-layer dict).
        stale_if_error: Seconds past freshness during which the stale value is served when the
            fetch fails, times out or its circuit is open (number or per-layer dict).
        sliding_ttl: A hit resets the TTL in every layer holding the key.
        refresh_ahead: A fresh hit with at most this many seconds left refreshes in the
            background.
        early_refresh: Probabilistic early refresh (XFetch): each fresh hit starts a
            background refresh with a chance that grows as expiry nears, weighted by how long
            the key's last fetch took. ``True`` is ``beta=1.0``; a positive number is the
            ``beta`` (above 1 refreshes earlier, below 1 later); ``False`` switches off a
            stack-wide default for this call.
        adaptive_ttl: :class:`AdaptiveTtl`: hot keys get longer TTLs on their next write.
        circuit_breaker: ``CircuitBreaker`` for this fetcher key (``False`` disables the
            stack default).
        fetcher_rate_limit: ``RateLimit`` on concurrent fetcher calls.
    """

    tags: tuple[str, ...] | None = None
    ttl: PerLayer | _dt.timedelta | None = None
    ttl_policy: TtlPolicy | None = None
    ttl_jitter: PerLayer | None = None
    negative_cache: bool | None = None
    negative_ttl: float | None = None
    should_cache: Callable[[Any], bool] | None = None
    fetch_timeout: float | None = None
    fetch_soft_timeout: float | None = None
    stale_while_revalidate: PerLayer | None = None
    stale_if_error: PerLayer | None = None
    sliding_ttl: bool | None = None
    refresh_ahead: float | None = None
    early_refresh: float | bool | None = None
    adaptive_ttl: AdaptiveTtl | Mapping[str, Any] | None = None
    circuit_breaker: Any = None
    fetcher_rate_limit: Any = None
    # Derived: whether a hit needs more than "return the value" (sliding, refresh-ahead, early
    # refresh, adaptive counting), so the L1 fast path tests one attribute.
    has_hit_work: bool = field(init=False, repr=False, compare=False, default=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "has_hit_work",
            bool(self.sliding_ttl or self.refresh_ahead or self.early_refresh or self.adaptive_ttl),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class AdaptiveTtl:
    """Longer TTLs for hot keys.

    A key read at least ``hot_after`` times since its last write gets ``step`` more seconds of
    TTL on its next write for every ``hot_after`` reads, up to ``max_ttl``.
    """

    hot_after: int = 5
    step: float = 60
    max_ttl: float = 3600

    def __post_init__(self) -> None:
        if isinstance(self.hot_after, bool) or not isinstance(self.hot_after, int):
            raise ValueError(
                f"adaptive_ttl hot_after must be a positive int, not {self.hot_after!r}"
            )
        if self.hot_after < 1:
            raise ValueError(
                f"adaptive_ttl hot_after must be a positive int, not {self.hot_after!r}"
            )
        object.__setattr__(self, "step", seconds("adaptive_ttl step", self.step, allow_zero=False))
        object.__setattr__(
            self, "max_ttl", seconds("adaptive_ttl max_ttl", self.max_ttl, allow_zero=False)
        )

    def ttl_for(self, base: float, reads: int) -> float:
        """The TTL for a key with ``base`` TTL read ``reads`` times since its last write."""
        if reads < self.hot_after:
            return base
        return max(base, min(base + self.step * (reads // self.hot_after), self.max_ttl))


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitBreaker:
    """Circuit breaker options of a fetcher (per cache key).

    Attributes:
        failure_threshold: Consecutive fetch failures that open the circuit (at least 1).
        cooldown: How long an open circuit fails fast before one probe is let through, in
            seconds or as a ``timedelta`` (stored as float seconds; must be positive).

    Raises:
        ValueError: On a non-integer or non-positive threshold, or a bad cooldown.
    """

    failure_threshold: int = 3
    cooldown: float | _dt.timedelta = 10.0

    def __post_init__(self) -> None:
        threshold = self.failure_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise ValueError(f"failure_threshold must be an int >= 1, not {threshold!r}")
        # Frozen dataclass: normalise the timedelta once, here, so every reader sees float.
        object.__setattr__(self, "cooldown", seconds("cooldown", self.cooldown, allow_zero=False))

    @property
    def cooldown_seconds(self) -> float:
        """``cooldown`` as float seconds (it always is after construction; typed for mypy)."""
        cooldown = self.cooldown
        return (
            cooldown
            if isinstance(cooldown, float)
            else seconds("cooldown", cooldown, allow_zero=False)
        )


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
            with ``FetcherQueueFullError``. Waiters are served first come, first served.

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


_OPTION_NAMES = frozenset(f.name for f in fields(CacheOptions) if f.init)


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One item of ``set_many``: a key, its value and optional per-entry options."""

    key: str
    value: Any
    options: CacheOptions | Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class CacheEntryRequest:
    """One item of ``get_many``: a key, an optional fetcher and optional options."""

    key: str
    fetcher: Callable[[], Any] | None = None
    options: CacheOptions | Mapping[str, Any] | None = None


G = TypeVar("G")


def coerce_group(name: str, cls: type[G], value: object) -> G | None:
    """Coerce an option group given as the dataclass ``cls``, a dict of its fields, ``True``
    (the defaults) or ``None``/``False`` (off).

    Raises:
        TypeError: A dict names a field ``cls`` does not have (like ``cls(foo=1)`` would).
        ValueError: A field value is out of range, or ``value`` is of another type.
    """
    if value is None or value is False:
        return None
    if value is True:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        allowed = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(value) - allowed
        if unknown:
            raise TypeError(f"unknown {name} option(s): {', '.join(sorted(map(str, unknown)))}")
        return cls(**value)
    raise ValueError(f"{name} must be a {cls.__name__}, a dict, True, False or None, not {value!r}")


def coerce_circuit_breaker(value: object) -> CircuitBreaker | None:
    """The ``circuit_breaker`` option, coerced by :func:`coerce_group` (``None``: no breaker)."""
    return coerce_group("circuit_breaker", CircuitBreaker, value)


def coerce_rate_limit(value: object) -> RateLimit | None:
    """The ``fetcher_rate_limit`` option, coerced by :func:`coerce_group` (``None``: no
    limit)."""
    return coerce_group("fetcher_rate_limit", RateLimit, value)


def seconds(name: str, value: object, *, allow_zero: bool = True) -> float:
    """Coerce a duration (number or ``timedelta``) to non-negative finite seconds."""
    if isinstance(value, _dt.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number of seconds or a timedelta, not {value!r}")
    result = float(value)
    if math.isnan(result) or math.isinf(result) or result < 0 or (not allow_zero and result == 0):
        bound = "positive" if not allow_zero else "non-negative"
        raise ValueError(f"{name} must be a finite, {bound} number of seconds, not {value!r}")
    return result


def coerce_early_refresh(value: object) -> float | Literal[False] | None:
    """The ``early_refresh`` option: ``True`` → ``beta=1.0``, a positive finite number → that
    ``beta``, ``False`` → ``False`` (off, also over a stack-wide default), ``None`` → ``None``
    (not set).

    Raises:
        ValueError: Zero, a negative, infinite or NaN number, or a value of another type.
    """
    if value is None or value is False:
        return value
    if value is True:
        return 1.0
    if isinstance(value, int | float):
        beta = float(value) if isinstance(value, float) or abs(value) < 2**53 else math.inf
        if beta > 0 and not math.isinf(beta):  # NaN fails ``beta > 0``
            return beta
    raise ValueError(
        "early_refresh must be True, False, None or a positive finite number (the beta: "
        f"1.0 is the default, above 1 refreshes earlier), not {value!r}"
    )


def _per_layer(name: str, value: object) -> PerLayer:
    if isinstance(value, Mapping):
        out: dict[str, float] = {}
        for layer, amount in value.items():
            if not isinstance(layer, str) or not layer:
                raise ValueError(f"{name} keys must be layer names, not {layer!r}")
            out[layer] = seconds(f"{name}[{layer!r}]", amount)
        return out
    return seconds(name, value)


def _tags(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        raise ValueError("tags must be an iterable of str, not a single str")
    if not isinstance(value, Iterable):
        raise ValueError(f"tags must be an iterable of str, not {value!r}")
    tags = tuple(dict.fromkeys(_check_text("tag", t, MAX_TAG_LENGTH) for t in value))
    if len(tags) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags per key; got {len(tags)}")
    return tags


def _ttl_policy(value: object) -> TtlPolicy:
    if callable(value):
        return value
    if isinstance(value, str):
        if value not in _NAMED_POLICIES:
            raise ValueError(
                f"ttl_policy must be one of {', '.join(_NAMED_POLICIES)}, a dict "
                f"{{'align_to': seconds}} or a callable; got {value!r}"
            )
        return value
    if isinstance(value, Mapping):
        if set(value) != {"align_to"}:
            raise ValueError(f"a ttl_policy dict takes exactly the key 'align_to'; got {value!r}")
        return {"align_to": seconds("ttl_policy['align_to']", value["align_to"], allow_zero=False)}
    raise ValueError(f"invalid ttl_policy {value!r}")


def coerce_options(options: CacheOptions | Mapping[str, Any] | None) -> CacheOptions | None:
    """Validate and normalise options given as a dataclass, a dict or ``None``."""
    if options is None:
        return None
    if isinstance(options, CacheOptions):
        raw: dict[str, Any] = {f: getattr(options, f) for f in _OPTION_NAMES}
    elif isinstance(options, Mapping):
        unknown = set(options) - _OPTION_NAMES
        if unknown:
            raise TypeError(f"unknown cache option(s): {', '.join(sorted(map(str, unknown)))}")
        raw = dict(options)
    else:
        raise TypeError(f"options must be a CacheOptions or a dict, not {type(options).__name__}")
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if value is None:
            continue
        if name == "tags":
            out[name] = _tags(value)
        elif name in ("ttl", "ttl_jitter"):
            out[name] = _per_layer(name, value)
        elif name == "ttl_policy":
            out[name] = _ttl_policy(value)
        elif name == "negative_cache":
            if not isinstance(value, bool):
                raise ValueError(f"negative_cache must be a bool, not {value!r}")
            out[name] = value
        elif name == "negative_ttl":
            out[name] = seconds(name, value)
        elif name in ("fetch_timeout", "fetch_soft_timeout"):
            out[name] = seconds(name, value, allow_zero=False)
        elif name in ("stale_while_revalidate", "stale_if_error"):
            out[name] = _per_layer(name, value)
        elif name == "sliding_ttl":
            if not isinstance(value, bool):
                raise ValueError(f"sliding_ttl must be a bool, not {value!r}")
            out[name] = value
        elif name == "refresh_ahead":
            out[name] = seconds(name, value, allow_zero=False)
        elif name == "early_refresh":
            # False is kept: it switches off a stack-wide default for this call.
            out[name] = coerce_early_refresh(value)
        elif name == "adaptive_ttl":
            adaptive = coerce_group(name, AdaptiveTtl, value)
            if adaptive is not None:
                out[name] = adaptive
        elif name == "circuit_breaker":
            # False is kept: it switches off a stack-wide breaker for this call.
            out[name] = False if value is False else coerce_circuit_breaker(value)
        elif name == "fetcher_rate_limit":
            out[name] = False if value is False else coerce_rate_limit(value)
        elif name == "should_cache":
            if not callable(value):
                raise ValueError("should_cache must be a callable taking the value")
            out[name] = value
    return CacheOptions(**out)


def merge_options(base: CacheOptions, override: CacheOptions | None) -> CacheOptions:
    """``override``'s set fields on top of ``base``."""
    if override is None:
        return base
    changes = {f: getattr(override, f) for f in _OPTION_NAMES if getattr(override, f) is not None}
    if not changes:
        return base
    merged = {f: getattr(base, f) for f in _OPTION_NAMES}
    merged.update(changes)
    return CacheOptions(**merged)


# -- the stack settings (CacheStack's constructor), coerced once before any I/O ---------------


def coerce_degradation(value: bool | Mapping[str, Any] | None) -> float | None:
    """``graceful_degradation`` → seconds a failed layer is skipped (``None``: off)."""
    if value is None or value is False:
        return None
    if value is True:
        return 10.0
    if isinstance(value, Mapping):
        unknown = set(value) - {"retry_after"}
        if unknown:
            raise ValueError(f"unknown graceful_degradation option(s): {sorted(unknown)}")
        return seconds(
            "graceful_degradation['retry_after']", value.get("retry_after", 10), allow_zero=False
        )
    raise ValueError(f"graceful_degradation must be a bool or a dict, not {value!r}")


def coerce_generation_cleanup(value: Mapping[str, Any] | bool | None) -> int | None:
    """``generation_cleanup`` → batch size of the background deletion (``None``: off)."""
    if value is None or value is False:
        return None
    if value is True:
        return 500
    if isinstance(value, Mapping):
        unknown = set(value) - {"batch_size"}
        if unknown:
            raise ValueError(f"unknown generation_cleanup option(s): {sorted(unknown)}")
        size = value.get("batch_size", 500)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"generation_cleanup batch_size must be a positive int, not {size!r}")
        return size
    raise ValueError(f"generation_cleanup must be a dict, a bool or None, not {value!r}")


def coerce_generation(generation: object) -> int | None:
    """``generation`` → a non-negative int, or ``None`` (generations off)."""
    if generation is None:
        return None
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
        raise ValueError(f"generation must be a non-negative int or None, not {generation!r}")
    return generation


@dataclass(frozen=True, slots=True)
class WriteBehindSettings:
    """``write_strategy="write-behind"`` with its ``write_behind`` options."""

    batch_size: int = 100
    flush_interval: float = 0.05
    max_queue: int = 10_000


def coerce_write_behind(
    strategy: str, settings: Mapping[str, Any] | None
) -> WriteBehindSettings | None:
    """``write_strategy`` / ``write_behind`` → the queue's settings (``None``: write-through)."""
    if strategy not in ("write-through", "write-behind"):
        raise ValueError(
            f"write_strategy must be 'write-through' or 'write-behind', not {strategy!r}"
        )
    if strategy == "write-through":
        if settings is not None:
            raise ValueError("write_behind settings need write_strategy='write-behind'")
        return None
    options = dict(settings or {})
    unknown = set(options) - {"batch_size", "flush_interval", "max_queue"}
    if unknown:
        raise ValueError(f"unknown write_behind option(s): {sorted(unknown)}")
    batch_size = options.get("batch_size", 100)
    max_queue = options.get("max_queue", 10_000)
    for name, number in (("batch_size", batch_size), ("max_queue", max_queue)):
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise ValueError(f"write_behind {name} must be a positive int, not {number!r}")
    interval = seconds(
        "write_behind['flush_interval']", options.get("flush_interval", 0.05), allow_zero=False
    )
    return WriteBehindSettings(batch_size, interval, max_queue)
