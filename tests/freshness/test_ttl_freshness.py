"""Issue 3, point 3: sliding TTL, refresh-ahead, adaptive TTL and the clock-aligned policies.

TTLs are checked on the entries the layers physically hold (``fresh_until``), under a fake
clock shared by the stack, the memory layer and the disk layer.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from freshness_support import BuildStack, EventLog, Gate, Value, eventually, lcall, within

from _twins_async import join_all, spawn
from layercache._options import AdaptiveTtl
from layercache.testing import ManualClock

# Entries cross Redis and SQLite as encoded floats: compare times to the millisecond.
EPS = 1e-3


def remaining(entry: Any, now: float) -> float:
    assert entry is not None, "the layer does not hold the key"
    assert entry.fresh_until is not None
    return float(entry.fresh_until - now)


# ---------------------------------------------------------------------------- sliding TTL


async def test_sliding_hit_extends_every_layer(build_stack: BuildStack) -> None:
    env = await build_stack()
    t0 = env.clock()
    await env.cache.set("k", "v", ttl=100, stale_while_revalidate=20, stale_if_error=30)
    env.clock.advance(50)
    assert await env.cache.get("k", sliding_ttl=True, ttl=100) == "v"
    entries = await env.entries("k")
    assert len(entries) == len(env.layers)
    for layer, entry in zip(env.layers, entries, strict=True):
        assert entry is not None, f"{layer.name} lost the key"
        assert entry.fresh_until == pytest.approx(t0 + 150, abs=EPS), layer.name
        # The windows move with the fresh TTL.
        assert entry.stale_until == pytest.approx(t0 + 170, abs=EPS), layer.name
        assert entry.error_until == pytest.approx(t0 + 180, abs=EPS), layer.name

    env.clock.advance(60)  # t0 + 110: the original value would have expired at t0 + 100
    fetch = Value("refetched")
    if env.lower is not None:
        # Straight from the lower layer: it was extended too, not only the layer hit.
        await lcall(env.memory, "delete", "k")
    assert await env.cache.get("k", fetch.fetch) == "v"
    assert fetch.calls == 0
    assert env.cache.get_metrics().stale_hits == 0, "the extended value must be fresh"


async def test_sliding_hit_in_the_lower_layer_extends_both(build_layered: BuildStack) -> None:
    env = await build_layered()
    t0 = env.clock()
    await env.cache.set("k", "v", ttl=100)
    await lcall(env.memory, "delete", "k")
    env.clock.advance(50)
    assert await env.cache.get("k", sliding_ttl=True, ttl=100) == "v"
    for entry in await env.entries("k"):
        assert remaining(entry, env.clock()) == pytest.approx(100, abs=EPS)
    assert remaining((await env.entries("k"))[1], t0) == pytest.approx(150, abs=EPS)


async def test_no_write_while_less_than_a_tenth_of_the_ttl_elapsed(build_stack: BuildStack) -> None:
    env = await build_stack(record=True)
    recorders = env.extra["recorders"]
    await env.cache.set("k", "v", ttl=100)
    for recorder in recorders:
        recorder.writes.clear()

    env.clock.advance(5)
    assert await env.cache.get("k", sliding_ttl=True, ttl=100) == "v"
    env.clock.advance(4.9)  # 9.9 s of 100 s used: still negligible
    assert await env.cache.get("k", sliding_ttl=True, ttl=100) == "v"
    assert [r.writes for r in recorders] == [[]] * len(recorders), "negligible extension written"

    env.clock.advance(0.2)  # 10.1 s used: worth a write, in every layer
    assert await env.cache.get("k", sliding_ttl=True, ttl=100) == "v"
    assert [r.writes for r in recorders] == [["k"]] * len(recorders)
    for entry in await env.entries("k"):
        assert remaining(entry, env.clock()) == pytest.approx(100, abs=EPS)

    for recorder in recorders:
        recorder.writes.clear()
    for _ in range(5):  # five more reads within 5 s of that write: no write at all
        env.clock.advance(1)
        assert await env.cache.get("k", sliding_ttl=True, ttl=100) == "v"
    assert [r.writes for r in recorders] == [[]] * len(recorders)


async def test_negligible_extension_is_judged_per_layer(build_layered: BuildStack) -> None:
    """Short L1 TTL, long lower TTL: sliding L1 must not write the lower layer on every read.

    At 5 s after the write, memory (TTL 10 s) has used half of its TTL and is extended; the
    lower layer (TTL 1000 s) has used 0.5 % of its TTL, a negligible extension: no write.
    """
    env = await build_layered(memory_ttl=10, lower_ttl=1000, record=True)
    memory_rec, lower_rec = env.extra["recorders"]
    t0 = env.clock()
    await env.cache.set("k", "v")  # each layer with its own default TTL
    memory_rec.writes.clear()
    lower_rec.writes.clear()
    env.clock.advance(5)
    assert await env.cache.get("k", sliding_ttl=True) == "v"
    assert memory_rec.writes == ["k"]
    assert remaining(env.memory.get("k"), env.clock()) == pytest.approx(10, abs=EPS)
    lower_entry = await lcall(env.lower, "get", "k")
    assert lower_entry.fresh_until >= t0 + 1000 - EPS
    assert lower_rec.writes == [], (
        "the lower layer was rewritten although only 0.5% of its TTL had elapsed"
    )


async def test_sliding_does_not_store_into_a_layer_not_holding_the_key(
    build_layered: BuildStack,
) -> None:
    """``ttl={lower: 0}`` means "not stored there": a sliding read must not put it there."""
    env = await build_layered()
    lower = env.lower_name
    await env.cache.set("k", "v", ttl={"memory": 100, lower: 0})
    assert await lcall(env.lower, "get", "k") is None
    env.clock.advance(50)
    assert await env.cache.get("k", sliding_ttl=True) == "v"
    assert remaining(env.memory.get("k"), env.clock()) == pytest.approx(60, abs=EPS)
    assert await lcall(env.lower, "get", "k") is None, (
        "sliding TTL wrote the key into a layer that did not hold it"
    )


# ---------------------------------------------------------------------------- refresh-ahead


async def test_refresh_ahead_refreshes_once_near_expiry(build_stack: BuildStack) -> None:
    env = await build_stack()
    log = EventLog(env.cache, "stale_serve")
    opts: dict[str, Any] = {"ttl": 100, "refresh_ahead": 20}
    assert await env.cache.get("k", Value("v1").fetch, **opts) == "v1"
    gate = Gate("v2")

    env.clock.advance(75)  # 25 s left: not yet
    assert await env.cache.get("k", gate.fetch, **opts) == "v1"
    assert env.cache.get_stats().background_refreshes == 0
    env.clock.advance(10)  # 15 s left: one background refresh, readers do not wait
    assert await env.cache.get("k", **opts) == "v1", "no fetcher: nothing to refresh with"
    assert env.cache.get_stats().background_refreshes == 0
    # 20 reads with a blocked refresh.
    results = await join_all([spawn(env.cache.get, "k", gate.fetch, **opts) for _ in range(20)])
    assert results == ["v1"] * 20
    await gate.wait_started()
    assert gate.calls == 1
    assert env.cache.get_stats().background_refreshes == 1
    env.clock.advance(1)
    assert await within(spawn(env.cache.get, "k", gate.fetch, **opts), "a read") == "v1"
    assert gate.calls == 1, "a second refresh started while the first was running"

    refreshed_at = env.clock()
    gate.release()
    await eventually(lambda: env.cache.get_stats().background_refreshes == 0, "the refresh")
    assert env.cache.get_metrics().refreshes == 1
    for entry in await env.entries("k"):
        assert entry is not None
        assert entry.value == "v2"
        assert entry.fresh_until == pytest.approx(refreshed_at + 100, abs=EPS)
    # Plenty of TTL again: no refresh.
    again = Value("v3")
    assert await env.cache.get("k", again.fetch, **opts) == "v2"
    assert env.cache.get_stats().background_refreshes == 0
    assert again.calls == 0
    assert log.of("stale_serve") == [], "refresh-ahead serves fresh values"


async def test_refresh_ahead_failure_keeps_the_value(build_memory: BuildStack) -> None:
    env = await build_memory()
    opts: dict[str, Any] = {"ttl": 100, "refresh_ahead": 20}
    await env.cache.set("k", "v1", ttl=100)
    env.clock.advance(90)
    gate = Gate()
    gate.error = RuntimeError("origin down")
    gate.release()
    assert await env.cache.get("k", gate.fetch, **opts) == "v1"
    await eventually(lambda: env.cache.get_stats().background_refreshes == 0, "the refresh")
    assert gate.calls == 1
    assert await env.cache.get("k") == "v1"


# ---------------------------------------------------------------------------- adaptive TTL

ADAPTIVE: dict[str, Any] = {"hot_after": 3, "step": 60, "max_ttl": 300}


async def test_adaptive_ttl_arithmetic_on_the_next_write(build_stack: BuildStack) -> None:
    env = await build_stack()

    async def write_and_measure(value: str) -> list[float]:
        now = env.clock()
        await env.cache.set("k", value, ttl=100, adaptive_ttl=ADAPTIVE)
        return [round(remaining(e, now), 3) for e in await env.entries("k")]

    layers = len(env.layers)
    assert await write_and_measure("v0") == [100.0] * layers
    for _ in range(7):  # 7 reads: 2 full rounds of hot_after=3
        assert await env.cache.get("k", adaptive_ttl=ADAPTIVE) == "v0"
    assert await write_and_measure("v1") == [220.0] * layers  # 100 + 2 * 60
    # The write reset the counter.
    assert await write_and_measure("v2") == [100.0] * layers
    for _ in range(2):  # below hot_after
        await env.cache.get("k", adaptive_ttl=ADAPTIVE)
    assert await write_and_measure("v3") == [100.0] * layers
    for _ in range(3):  # exactly hot_after
        await env.cache.get("k", adaptive_ttl=ADAPTIVE)
    assert await write_and_measure("v4") == [160.0] * layers
    for _ in range(30):  # 100 + 10 * 60 = 700, capped by max_ttl
        await env.cache.get("k", adaptive_ttl=ADAPTIVE)
    assert await write_and_measure("v5") == [300.0] * layers


async def test_adaptive_ttl_applies_to_the_next_fetch(build_stack: BuildStack) -> None:
    env = await build_stack(adaptive_ttl=AdaptiveTtl(hot_after=2, step=30, max_ttl=1000))
    fetch = Value("v")
    assert await env.cache.get("k", fetch.fetch, ttl=100) == "v"
    for _ in range(5):  # 5 // 2 = 2 steps
        assert await env.cache.get("k", fetch.fetch, ttl=100) == "v"
    env.clock.advance(101)
    now = env.clock()
    assert await env.cache.get("k", fetch.fetch, ttl=100) == "v"
    assert fetch.calls == 2
    for entry in await env.entries("k"):
        assert remaining(entry, now) == pytest.approx(160, abs=EPS)


async def test_adaptive_profiles_are_bounded_by_max_profile_entries(
    build_memory: BuildStack,
) -> None:
    env = await build_memory(max_profile_entries=10)
    keys = [f"k{i}" for i in range(100)]
    for key in keys:
        await env.cache.set(key, key, ttl=100, adaptive_ttl=ADAPTIVE)
    for key in keys:  # every key hot (hot_after reads each), in order
        for _ in range(3):
            assert await env.cache.get(key, adaptive_ttl=ADAPTIVE) == key
    now = env.clock()
    lengthened = []
    for key in keys:
        await env.cache.set(key, key, ttl=100, adaptive_ttl=ADAPTIVE)
        if remaining(env.memory.get(key), now) > 100 + EPS:
            lengthened.append(key)
    assert len(lengthened) == 10, f"{len(lengthened)} read profiles survived, bound is 10"


# ---------------------------------------------------------------------------- TTL policies


def _at(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


@pytest.mark.parametrize(
    ("zone", "now", "policy", "expected"),
    [
        # 21:00 CET: three hours to Berlin's midnight (four to UTC's).
        ("Europe/Berlin", "2024-01-15T20:00:00+00:00", "until-midnight", 3 * 3600),
        (None, "2024-01-15T20:00:00+00:00", "until-midnight", 4 * 3600),
        # Spring forward: 00:30 CET on 31 March, the local day has 23 hours.
        ("Europe/Berlin", "2024-03-30T23:30:00+00:00", "until-midnight", 22.5 * 3600),
        ("Europe/Berlin", "2024-01-15T20:15:30+00:00", "next-hour", 2670),
        # A half-hour zone: the next local hh:00 is 20:30 UTC.
        ("Asia/Kolkata", "2024-01-15T20:15:30+00:00", "next-hour", 870),
        (None, "2024-01-15T20:03:20+00:00", {"align_to": 300}, 100),
    ],
)
async def test_ttl_policy_in_a_time_zone(
    build_stack: BuildStack,
    clock: ManualClock,
    zone: str | None,
    now: str,
    policy: Any,
    expected: float,
) -> None:
    clock.now = _at(now)
    zone_opt = {} if zone is None else {"ttl_policy_timezone": zone}
    env = await build_stack(**zone_opt)
    await env.cache.set("k", "v", ttl_policy=policy)
    assert await env.cache.ttl("k") == pytest.approx(expected, abs=EPS)
    for entry in await env.entries("k"):
        assert remaining(entry, clock.now) == pytest.approx(expected, abs=EPS)
    # The same through a fetch.
    assert await env.cache.get("f", Value("x").fetch, ttl_policy=policy) == "x"
    for entry in await env.entries("f"):
        assert remaining(entry, clock.now) == pytest.approx(expected, abs=EPS)
    clock.advance(expected - 0.5)
    assert await env.cache.get("k") == "v"
    clock.advance(1)
    assert await env.cache.get("k") is None, "the value outlived its policy boundary"
