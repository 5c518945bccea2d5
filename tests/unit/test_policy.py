"""TTL arithmetic: per-layer TTLs, negative TTL, jitter, time policies, and the Entry envelope."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import random
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from layercache import CacheStack, MemoryLayer
from layercache._entry import Entry
from layercache._options import CacheOptions, coerce_options
from layercache._policy import build_entry, per_layer_value, policy_ttl
from layercache.testing import ManualClock

NOW = 1_700_000_000.25
UTC = dt.timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")


def opts(**kwargs: Any) -> CacheOptions:
    """Options as the stack sees them: coerced from keyword arguments."""
    options = coerce_options(kwargs)
    assert options is not None
    return options


def utc(text: str) -> float:
    """Epoch seconds of an ISO time given in UTC."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# -- build_entry: TTL resolution -------------------------------------------------------------------


def test_number_ttl_applies_to_every_layer() -> None:
    for layer in ("memory", "redis"):
        entry = build_entry("k", "v", opts(ttl=30), layer, 3600, NOW)
        assert entry is not None
        assert entry.fresh_until == NOW + 30
        assert entry.stored_at == NOW
        assert entry.value == "v"


def test_per_layer_ttl_dict_with_fallback_to_the_layer_default() -> None:
    options = opts(ttl={"memory": 30, "redis": 600})
    memory = build_entry("k", 1, options, "memory", 60, NOW)
    redis = build_entry("k", 1, options, "redis", 300, NOW)
    disk = build_entry("k", 1, options, "disk", 3600, NOW)
    assert memory is not None
    assert memory.fresh_until == NOW + 30
    assert redis is not None
    assert redis.fresh_until == NOW + 600
    assert disk is not None
    assert disk.fresh_until == NOW + 3600


def test_timedelta_ttl_is_seconds() -> None:
    entry = build_entry("k", 1, opts(ttl=dt.timedelta(minutes=2)), "memory", None, NOW)
    assert entry is not None
    assert entry.fresh_until == NOW + 120


def test_no_ttl_anywhere_means_no_expiry() -> None:
    entry = build_entry("k", 1, CacheOptions(), "memory", None, NOW)
    assert entry is not None
    assert entry.fresh_until is None
    assert entry.expires_at is None
    assert entry.storage_ttl(NOW + 10**9) is None


def test_ttl_zero_means_do_not_store_in_that_layer() -> None:
    assert build_entry("k", 1, opts(ttl=0), "memory", 60, NOW) is None
    options = opts(ttl={"memory": 0, "redis": 60})
    assert build_entry("k", 1, options, "memory", 60, NOW) is None
    assert build_entry("k", 1, options, "redis", 60, NOW) is not None


def test_layer_default_of_zero_means_do_not_store() -> None:
    assert build_entry("k", 1, CacheOptions(), "memory", 0, NOW) is None


def test_tags_are_carried_by_the_entry() -> None:
    entry = build_entry("k", 1, opts(tags=["a", "b", "a"]), "memory", 60, NOW)
    assert entry is not None
    assert entry.tags == ("a", "b")


def test_negative_ttl_applies_to_none_values_only() -> None:
    options = opts(ttl=600, negative_ttl=5)
    negative = build_entry("k", None, options, "memory", 60, NOW)
    positive = build_entry("k", 0, options, "memory", 60, NOW)
    assert negative is not None
    assert negative.fresh_until == NOW + 5
    assert positive is not None
    assert positive.fresh_until == NOW + 600
    assert build_entry("k", None, opts(negative_ttl=0), "memory", 60, NOW) is None


def test_negative_ttl_overrides_a_time_policy() -> None:
    options = opts(ttl_policy="until-midnight", negative_ttl=7)
    entry = build_entry("k", None, options, "memory", 60, NOW)
    assert entry is not None
    assert entry.fresh_until == NOW + 7


def test_per_layer_value() -> None:
    assert per_layer_value(None, "m", 5.0) == 5.0
    assert per_layer_value(3.0, "m", 5.0) == 3.0
    assert per_layer_value({"m": 1.0}, "m", 5.0) == 1.0
    assert per_layer_value({"m": 1.0}, "r", None) is None


# -- jitter ---------------------------------------------------------------------------------------


@settings(max_examples=300)
@given(
    ttl=st.floats(min_value=0.001, max_value=1e6),
    jitter=st.floats(min_value=0, max_value=1e6),
    seed=st.integers(min_value=0, max_value=2**32),
)
@example(ttl=10.0, jitter=100.0, seed=0)  # jitter larger than the TTL
def test_jitter_stays_within_bounds(ttl: float, jitter: float, seed: int) -> None:
    entry = build_entry(
        "k", 1, opts(ttl=ttl, ttl_jitter=jitter), "memory", None, NOW, rng=random.Random(seed)
    )
    assert entry is not None, "jitter must never drop a positive TTL"
    assert entry.fresh_until is not None
    effective = entry.fresh_until - NOW
    slack = 1e-6 * max(1.0, ttl + jitter)  # float rounding of NOW + ttl
    assert max(ttl - jitter, ttl / 10) - slack <= effective <= ttl + jitter + slack
    again = build_entry(
        "k", 1, opts(ttl=ttl, ttl_jitter=jitter), "memory", None, NOW, rng=random.Random(seed)
    )
    assert again == entry, "the same seed must give the same jitter"


def test_jitter_spreads_both_ways_and_per_layer() -> None:
    rng = random.Random(7)
    options = opts(ttl=100, ttl_jitter={"memory": 10})
    spread = set()
    for _ in range(200):
        entry = build_entry("k", 1, options, "memory", None, NOW, rng=rng)
        assert entry is not None
        assert entry.fresh_until is not None
        spread.add(entry.fresh_until - NOW)
        redis = build_entry("k", 1, options, "redis", None, NOW, rng=rng)
        assert redis is not None
        assert redis.fresh_until == NOW + 100, "no jitter configured for this layer"
    assert min(spread) < 95
    assert max(spread) > 105
    assert all(90 <= s <= 110 for s in spread)


def test_jitter_without_ttl_keeps_no_expiry() -> None:
    entry = build_entry("k", 1, opts(ttl_jitter=5), "memory", None, NOW, rng=random.Random(1))
    assert entry is not None
    assert entry.fresh_until is None


def test_ttl_zero_with_jitter_is_still_not_stored() -> None:
    rng = random.Random(3)
    options = opts(ttl={"memory": 0, "redis": 60}, ttl_jitter=5)
    stored = [build_entry("k", 1, options, "memory", 60, NOW, rng=rng) for _ in range(20)]
    assert stored == [None] * 20

    async def through_the_stack() -> bool:
        clock = ManualClock(NOW)
        memory = MemoryLayer(ttl=60, clock=clock)
        cache = CacheStack([memory], clock=clock, ttl_jitter=5, rng=random.Random(3))
        for i in range(20):
            await cache.set(f"k{i}", i, ttl=0)
        return memory.size() == 0

    assert asyncio.run(through_the_stack())


# -- time policies (pure) -----------------------------------------------------------------------


def _next_boundary(now: float, tz: dt.tzinfo, policy: str) -> float:
    """Brute force: the first instant after ``now`` where the local clock starts a new hour
    (shows ``hh:00:00``, or its hour changes across a gap) or a new date (``until-midnight``).

    Every zone's offset is a multiple of 15 minutes, so boundaries fall on 15-minute UTC steps.
    """
    step = 900
    t = math.floor(now / step) * step + step
    for _ in range(4 * 27):
        local = dt.datetime.fromtimestamp(t, tz)
        before = dt.datetime.fromtimestamp(t - 1, tz)
        if policy == "until-midnight":
            if local.date() != before.date():
                return float(t)
        elif local.minute == 0 or local.hour != before.hour:
            return float(t)
        t += step
    raise AssertionError("no boundary within 27 hours")


# Whole milliseconds: datetime rounds to microseconds (see test_next_boundary_just_before_it).
YEAR_2024 = st.integers(
    min_value=int(utc("2024-01-01T00:00:00")) * 1000,
    max_value=int(utc("2025-01-01T00:00:00")) * 1000,
).map(lambda ms: ms / 1000)
DST_ZONES = ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "America/Santiago"]


@settings(max_examples=200, deadline=None)
@given(now=YEAR_2024, zone=st.sampled_from(["UTC", "Asia/Kolkata", "Asia/Kathmandu", *DST_ZONES]))
@example(now=utc("2024-03-30T12:00:00"), zone="Europe/Berlin")  # the 23-hour day
@example(now=utc("2024-10-26T23:30:00"), zone="Europe/Berlin")  # the 25-hour day
@example(now=utc("2024-04-07T02:30:00"), zone="America/Santiago")  # DST ends at midnight
@example(now=utc("2024-09-08T02:30:00"), zone="America/Santiago")  # 00:00 does not exist
def test_until_midnight_is_the_next_local_midnight(now: float, zone: str) -> None:
    tz = ZoneInfo(zone)
    ttl = policy_ttl("until-midnight", "k", 1, now, tz)
    assert now + ttl == _next_boundary(now, tz, "until-midnight")


@settings(max_examples=200, deadline=None)
@given(now=YEAR_2024, zone=st.sampled_from(["UTC", "Asia/Kolkata", "Asia/Kathmandu"]))
def test_next_hour_without_dst(now: float, zone: str) -> None:
    tz = ZoneInfo(zone)
    ttl = policy_ttl("next-hour", "k", 1, now, tz)
    # An hour lasts 90 minutes where Lord Howe falls back half an hour (01:00 to 02:00 LHST).
    assert 0 < ttl <= (5400 if zone == "Australia/Lord_Howe" else 3600)
    assert now + ttl == _next_boundary(now, tz, "next-hour")


# Every DST zone, Lord Howe's half-hour shift included (and its pinned cases below).
WHOLE_HOUR_DST_ZONES = DST_ZONES


@settings(max_examples=200, deadline=None)
@given(now=YEAR_2024, zone=st.sampled_from(WHOLE_HOUR_DST_ZONES))
# First pass through the repeated hour: the clock shows hh:00 again at the change.
@example(now=utc("2024-10-27T00:30:00"), zone="Europe/Berlin")
@example(now=utc("2024-10-27T00:00:40"), zone="Europe/Berlin")
@example(now=utc("2024-11-03T05:00:01"), zone="America/New_York")
@example(now=utc("2024-04-07T02:30:00"), zone="America/Santiago")
# Lord Howe springs forward half an hour (02:00 -> 02:30): hour 02 starts at the change.
@example(now=utc("2024-10-05T14:30:00"), zone="Australia/Lord_Howe")
@example(now=utc("2024-10-05T15:00:00"), zone="Australia/Lord_Howe")
@example(now=utc("2024-04-06T14:00:00"), zone="Australia/Lord_Howe")  # the 90-minute hour
# Second pass, and the skipped hour.
@example(now=utc("2024-10-27T01:30:00"), zone="Europe/Berlin")
@example(now=utc("2024-03-31T00:59:59"), zone="Europe/Berlin")
def test_next_hour_with_dst(now: float, zone: str) -> None:
    tz = ZoneInfo(zone)
    ttl = policy_ttl("next-hour", "k", 1, now, tz)
    # An hour lasts 90 minutes where Lord Howe falls back half an hour (01:00 to 02:00 LHST).
    assert 0 < ttl <= (5400 if zone == "Australia/Lord_Howe" else 3600)
    assert now + ttl == _next_boundary(now, tz, "next-hour")


@pytest.mark.parametrize(
    "start", ["2024-04-06T15:15:00", "2024-04-06T15:29:00", "2024-10-05T15:56:00"]
)
def test_next_hour_with_a_half_hour_dst_shift(start: str) -> None:
    tz = ZoneInfo("Australia/Lord_Howe")
    now = utc(start)
    ttl = policy_ttl("next-hour", "k", 1, now, tz)
    assert now + ttl == _next_boundary(now, tz, "next-hour")


@pytest.mark.parametrize("policy", ["next-hour", "until-midnight"])
def test_next_boundary_just_before_it(policy: str) -> None:
    now = 1735689599.9999998  # 2024-12-31T23:59:59.9999998 UTC
    assert policy_ttl(policy, "k", 1, now, UTC) < 1e-6


@settings(max_examples=300)
@given(
    now=st.floats(min_value=0, max_value=4e9),
    step=st.integers(min_value=1, max_value=7 * 86400),
)
@example(now=3600.0, step=3600)  # exactly on a boundary: a whole step, never 0
def test_align_to_lands_exactly_on_a_multiple_of_the_step(now: float, step: int) -> None:
    ttl = policy_ttl({"align_to": step}, "k", 1, now, UTC)
    assert 0 < ttl <= step
    boundary = now + ttl
    assert boundary % step == 0
    assert boundary == (math.floor(now / step) + 1) * step


def test_align_to_is_relative_to_the_epoch_not_the_zone() -> None:
    # 2024-06-01 12:00 UTC; a day-long step lands on UTC midnight whatever the zone.
    now = utc("2024-06-01T12:00:00")
    for tz in (UTC, BERLIN):
        assert now + policy_ttl({"align_to": 86400}, "k", 1, now, tz) == utc("2024-06-02T00:00:00")


# -- time policies through a CacheStack (ttl_policy_timezone, fake clock) -----------------------


async def _stored_fresh_until(
    start: float, zone: str | dt.tzinfo, value: Any = "v", **options: Any
) -> tuple[float | None, float | None]:
    """``set`` with a fake clock; returns the stored fresh_until and the stack's ``ttl()``."""
    clock = ManualClock(start)
    memory = MemoryLayer(ttl=60, clock=clock)
    cache = CacheStack([memory], clock=clock, ttl_policy_timezone=zone)
    await cache.set("k", value, **options)
    entry = memory.get("k")
    assert isinstance(entry, Entry)
    remaining = await cache.ttl("k")
    await cache.aclose()
    return entry.fresh_until, remaining


@pytest.mark.parametrize(
    ("start", "zone", "policy", "boundary"),
    [
        # UTC
        ("2024-06-01T13:45:10.5", "UTC", "until-midnight", "2024-06-02T00:00:00"),
        ("2024-06-01T13:45:10.5", "UTC", "next-hour", "2024-06-01T14:00:00"),
        ("2024-06-01T00:00:00", "UTC", "until-midnight", "2024-06-02T00:00:00"),
        # Berlin, summer (CEST, UTC+2): local midnight is 22:00 UTC
        ("2024-06-01T13:45:10.5", "Europe/Berlin", "until-midnight", "2024-06-01T22:00:00"),
        # the day DST starts (23 hours): 2024-03-31 00:00 CET = 03-30 23:00 UTC
        ("2024-03-30T12:00:00", "Europe/Berlin", "until-midnight", "2024-03-30T23:00:00"),
        ("2024-03-31T10:00:00", "Europe/Berlin", "until-midnight", "2024-03-31T22:00:00"),
        # next-hour across the gap: 01:30 CET -> 03:00 CEST (01:00 UTC)
        ("2024-03-31T00:30:00", "Europe/Berlin", "next-hour", "2024-03-31T01:00:00"),
        ("2024-03-31T01:30:00", "Europe/Berlin", "next-hour", "2024-03-31T02:00:00"),
        # the day DST ends (25 hours): 2024-10-28 00:00 CET = 10-27 23:00 UTC
        ("2024-10-26T23:30:00", "Europe/Berlin", "until-midnight", "2024-10-27T23:00:00"),
        ("2024-10-27T12:00:00", "Europe/Berlin", "until-midnight", "2024-10-27T23:00:00"),
        # second pass through the repeated hour: 02:30 CET -> 03:00 CET
        ("2024-10-27T01:30:00", "Europe/Berlin", "next-hour", "2024-10-27T02:00:00"),
    ],
)
async def test_policy_through_the_stack_lands_on_the_boundary(
    start: str, zone: str, policy: str, boundary: str
) -> None:
    fresh_until, remaining = await _stored_fresh_until(utc(start), zone, ttl_policy=policy)
    assert fresh_until == utc(boundary)
    assert remaining == utc(boundary) - utc(start)


async def test_policy_timezone_accepts_a_tzinfo() -> None:
    fresh_until, _ = await _stored_fresh_until(
        utc("2024-06-01T13:45:10"), BERLIN, ttl_policy="until-midnight"
    )
    assert fresh_until == utc("2024-06-01T22:00:00")


async def test_next_hour_in_the_first_pass_of_the_repeated_hour() -> None:
    # 00:30 UTC = 02:30 CEST; the clock next shows a full hour at 01:00 UTC (02:00 CET).
    fresh_until, _ = await _stored_fresh_until(
        utc("2024-10-27T00:30:00"), "Europe/Berlin", ttl_policy="next-hour"
    )
    assert fresh_until == utc("2024-10-27T01:00:00")


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin"])
async def test_align_to_through_the_stack(zone: str) -> None:
    start = utc("2024-10-27T00:31:07.75")
    fresh_until, _ = await _stored_fresh_until(start, zone, ttl_policy={"align_to": 300})
    assert fresh_until == utc("2024-10-27T00:35:00")


async def test_policy_overrides_ttl_and_the_layer_default() -> None:
    start = utc("2024-06-01T23:59:00")
    fresh_until, _ = await _stored_fresh_until(start, "UTC", ttl=5, ttl_policy="until-midnight")
    assert fresh_until == utc("2024-06-02T00:00:00")


async def test_callable_policy_gets_key_and_value() -> None:
    seen: list[tuple[str, Any]] = []

    def policy(key: str, value: Any) -> float:
        seen.append((key, value))
        return 42 if value == "short" else 4200

    fresh_until, remaining = await _stored_fresh_until(NOW, "UTC", "short", ttl_policy=policy)
    assert fresh_until == NOW + 42
    assert remaining == 42
    assert seen == [("k", "short")]
    fresh_until, _ = await _stored_fresh_until(NOW, "UTC", "long", ttl_policy=policy)
    assert fresh_until == NOW + 4200


def test_callable_policy_results_are_checked() -> None:
    def entry_for(result: Any) -> Entry | None:
        return build_entry("k", 1, opts(ttl_policy=lambda k, v: result), "memory", 60, NOW)

    timed = entry_for(dt.timedelta(seconds=90))
    assert timed is not None
    assert timed.fresh_until == NOW + 90
    assert entry_for(0) is None
    for bad in (-1, math.nan, math.inf, "10", None, True):
        with pytest.raises(ValueError, match="ttl_policy result"):
            entry_for(bad)


# -- Entry ----------------------------------------------------------------------------------------


def test_expires_at_is_the_end_of_the_last_window() -> None:
    assert Entry(1, NOW, NOW + 10).expires_at == NOW + 10
    assert Entry(1, NOW, NOW + 10, NOW + 20).expires_at == NOW + 20
    assert Entry(1, NOW, NOW + 10, NOW + 20, NOW + 30).expires_at == NOW + 30
    assert Entry(1, NOW, NOW + 10, None, NOW + 15).expires_at == NOW + 15
    assert Entry(1, NOW, NOW + 10, NOW + 5).expires_at == NOW + 10  # a window inside fresh
    assert Entry(1, NOW, None, NOW + 20).expires_at is None  # never stale: never expires


def test_freshness_and_usability() -> None:
    entry = Entry(1, NOW, NOW + 10, NOW + 20)
    assert entry.is_fresh(NOW + 9.999)
    assert not entry.is_fresh(NOW + 10)
    assert entry.is_usable(NOW + 19.999)
    assert not entry.is_usable(NOW + 20)
    forever = Entry(1, NOW, None)
    assert forever.is_fresh(NOW + 1e12)
    assert forever.is_usable(NOW + 1e12)


def test_storage_ttl() -> None:
    entry = Entry(1, NOW, NOW + 10, NOW + 25)
    assert entry.storage_ttl(NOW) == 25
    assert entry.storage_ttl(NOW + 20) == 5
    assert entry.storage_ttl(NOW + 30) == 0.0  # never negative
    assert Entry(1, NOW, None).storage_ttl(NOW) is None


def test_clipped_returns_the_same_entry_when_it_ends_in_time() -> None:
    entry = Entry(1, NOW, NOW + 10, NOW + 20, tags=("t",))
    assert entry.clipped(NOW + 20) is entry
    assert entry.clipped(NOW + 100) is entry


def test_clipped_cuts_every_window() -> None:
    entry = Entry("v", NOW, NOW + 10, NOW + 20, NOW + 30, tags=("t",))
    cut = entry.clipped(NOW + 15)
    assert (cut.fresh_until, cut.stale_until, cut.error_until) == (NOW + 10, NOW + 15, NOW + 15)
    assert (cut.value, cut.stored_at, cut.tags) == ("v", NOW, ("t",))
    assert cut.expires_at == NOW + 15
    earlier = entry.clipped(NOW + 5)
    assert (earlier.fresh_until, earlier.stale_until, earlier.error_until) == (NOW + 5,) * 3
    assert entry.fresh_until == NOW + 10, "the original is not modified"


def test_clipped_gives_an_endless_entry_an_end() -> None:
    cut = Entry("v", NOW, None).clipped(NOW + 60)
    assert cut.fresh_until == NOW + 60
    assert cut.stale_until is None
    assert cut.error_until is None
    assert cut.expires_at == NOW + 60


optional_time = st.none() | st.floats(min_value=0, max_value=1000)


@given(
    fresh=optional_time,
    stale=optional_time,
    error=optional_time,
    deadline=st.floats(min_value=0, max_value=1000),
)
def test_clipped_properties(
    fresh: float | None, stale: float | None, error: float | None, deadline: float
) -> None:
    entry = Entry("v", 0.0, fresh, stale, error)
    cut = entry.clipped(deadline)
    assert cut.expires_at is not None
    assert cut.expires_at <= max(deadline, entry.expires_at or 0)
    if entry.expires_at is None or entry.expires_at > deadline:
        assert cut.expires_at == deadline
    for before, after in (
        (entry.fresh_until, cut.fresh_until),
        (entry.stale_until, cut.stale_until),
        (entry.error_until, cut.error_until),
    ):
        if before is not None:
            assert after is not None
            assert after <= before
    assert cut.clipped(deadline) is cut, "clipping is idempotent"
    assert cut.storage_ttl(0.0) == cut.expires_at
