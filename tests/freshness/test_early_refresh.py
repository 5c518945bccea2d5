"""Issue 16: ``early_refresh`` (XFetch, probabilistic early expiration).

A fresh hit with ``r`` seconds of freshness left refreshes in the background when
``delta * beta * -ln(U) >= r`` (``U`` uniform in ``(0, 1]``, ``delta`` the key's last fetch
duration). Everything runs on the fake clock: a fetch "takes" ``delta`` seconds by advancing
it, and the stack's ``rng`` is seeded (counts are exact) or scripted (:class:`FixedDraw`: every
hit draws the same ``-ln(U)``, so a refresh happens exactly when ``delta * beta * that >= r``).
"""

from __future__ import annotations

import functools
import math
import random
from typing import Any

import pytest
from freshness_support import BuildStack, Failing, Gate, Value, eventually, within

from _twins_async import join_all, spawn
from layercache import CacheStack, CircuitBreaker, MemoryLayer
from layercache._early_refresh import DEFAULT_DELTA


class FixedDraw(random.Random):
    """A random source whose every draw gives ``-ln(U) == exponent`` (``U = 1 - random()``)."""

    def __init__(self, exponent: float) -> None:
        super().__init__(0)
        self.value = 1.0 - math.exp(-exponent)
        self.draws = 0

    def random(self) -> float:
        self.draws += 1
        return self.value


ALWAYS = 30.0  # -ln(U) of a draw that refreshes whenever r <= 30 * delta * beta


class Slow:
    """A fetcher that takes ``seconds`` on the fake clock and returns ``value``."""

    def __init__(self, clock: Any, seconds: float, value: Any = "v") -> None:
        self.clock = clock
        self.seconds = seconds
        self.value = value
        self.calls = 0

    async def fetch(self) -> Any:
        self.calls += 1
        self.clock.advance(self.seconds)
        return self.value


async def settled(cache: Any) -> None:
    """Wait (bounded) until no background refresh is running."""
    await eventually(lambda: cache.get_stats().background_refreshes == 0, "the refreshes")


# ---------------------------------------------------------------------------- options


BAD = [0, 0.0, -1, -0.5, math.nan, math.inf, -math.inf, "1", [1], 10**400]


@pytest.mark.parametrize("bad", BAD, ids=[f"{type(v).__name__}-{i}" for i, v in enumerate(BAD)])
async def test_bad_values_are_rejected(build_memory: BuildStack, bad: Any) -> None:
    env = await build_memory()
    await env.cache.set("k", "v")
    with pytest.raises(ValueError, match="early_refresh must be"):
        await env.cache.get("k", Value().fetch, early_refresh=bad)
    with pytest.raises(ValueError, match="early_refresh must be"):
        CacheStack([MemoryLayer()], early_refresh=bad)


async def test_true_is_beta_one_and_false_switches_a_stack_default_off(
    build_memory: BuildStack,
) -> None:
    # r = 0.9 s, delta = 1 s, -ln(U) = 1: beta 1 refreshes (1 >= 0.9), beta 0.5 does not.
    env = await build_memory(early_refresh=True, rng=FixedDraw(1.0))
    slow = Slow(env.clock, 1.0)
    await env.cache.get("k", slow.fetch, ttl=100)
    env.clock.advance(99.1)
    again = Value("v2")
    assert await env.cache.get("k", again.fetch, early_refresh=False) == "v"
    assert await env.cache.get("k", again.fetch, early_refresh=0.5) == "v"
    await settled(env.cache)
    assert again.calls == 0
    assert await env.cache.get("k", again.fetch) == "v", "the stack default: beta 1.0"
    await settled(env.cache)
    assert again.calls == 1
    assert await env.cache.get("k") == "v2"


# ---------------------------------------------------------------------------- the rule


async def test_the_chance_grows_as_expiry_nears(build_memory: BuildStack) -> None:
    """Exact counts with a seeded random source: ``N`` keys per distance from expiry, each
    fetched once in 1 s (its ``delta``), read once at ``r`` seconds before it expires. The
    counts are those of the rule replayed on the same seed, close to ``N * exp(-r)``, and
    grow as ``r`` shrinks."""
    seed, n, distances = 1602, 300, (3.0, 1.5, 0.75, 0.3)
    env = await build_memory(rng=random.Random(seed))
    env.clock.now = 1_000_000.0
    # Every key expires at the same boundary, however long the priming took.
    opts: dict[str, Any] = {"ttl_policy": {"align_to": 10_000.0}, "early_refresh": 1.0}
    boundary = 1_010_000.0
    slow = Slow(env.clock, 1.0)
    for r in distances:
        for i in range(n):
            await env.cache.get(f"{r}:{i}", slow.fetch, **opts)
    assert env.clock() < boundary - max(distances)
    replay = random.Random(seed)
    counts: list[int] = []
    for r in distances:
        env.clock.now = boundary - r
        remaining = boundary - env.clock()
        refresh = Value("new")
        for i in range(n):
            assert await env.cache.get(f"{r}:{i}", refresh.fetch, **opts) == "v"
        await settled(env.cache)
        expected = sum(1.0 * -math.log(1.0 - replay.random()) >= remaining for _ in range(n))
        assert refresh.calls == expected, f"r={r}"
        p = math.exp(-remaining)
        assert abs(expected - n * p) <= 4 * math.sqrt(n * p * (1 - p)), f"r={r}"
        counts.append(refresh.calls)
    assert counts == sorted(counts), counts
    assert len(set(counts)) == len(counts), counts


async def test_delta_is_the_keys_last_fetch_duration(build_memory: BuildStack) -> None:
    # -ln(U) = 1 on every draw: a key refreshes exactly when delta * beta >= r.
    env = await build_memory(rng=FixedDraw(1.0))
    opts: dict[str, Any] = {"ttl": 100, "early_refresh": 1.0}
    start = env.clock()
    await env.cache.get("slow", Slow(env.clock, 2.0).fetch, **opts)
    # Took 0.5 s, stored at start + 2.5: expires with "slow", at start + 102.
    await env.cache.get("quick", Slow(env.clock, 0.5).fetch, ttl=99.5, early_refresh=1.0)
    refresh = Value("new")
    env.clock.now = start + 102 - 2.1  # 2.1 s left
    assert await env.cache.get("slow", refresh.fetch, **opts) == "v"
    env.clock.advance(0.2)  # 1.9 s left: 2 s of fetch does not fit any more
    assert refresh.calls == 0
    assert await env.cache.get("slow", refresh.fetch, **opts) == "v"
    await settled(env.cache)
    assert refresh.calls == 1
    # "quick" has 1.9 s left too, but its own fetch took 0.5 s: not yet; with beta 4
    # (4 * 0.5 = 2 >= 1.9) it refreshes.
    quick = Value("new")
    assert await env.cache.get("quick", quick.fetch, **opts) == "v"
    await settled(env.cache)
    assert quick.calls == 0
    assert await env.cache.get("quick", quick.fetch, ttl=100, early_refresh=4) == "v"
    await settled(env.cache)
    assert quick.calls == 1


async def test_an_unknown_delta_is_the_stack_mean_else_a_small_default(
    build_memory: BuildStack,
) -> None:
    """A value this stack never fetched (written by ``set`` here, or by another instance into
    a shared layer) is weighted by the mean of the stack's fetches, or the default."""
    env = await build_memory(rng=FixedDraw(1.0))
    opts: dict[str, Any] = {"ttl": 100, "early_refresh": 1.0}
    await env.cache.set("k", "v", ttl=100)
    refresh = Value("new")
    env.clock.advance(100 - DEFAULT_DELTA * 1.5)
    assert await env.cache.get("k", refresh.fetch, **opts) == "v"
    await settled(env.cache)
    assert refresh.calls == 0, "no fetch timed yet: the default delta"
    env.clock.advance(DEFAULT_DELTA)  # half the default left
    assert await env.cache.get("k", refresh.fetch, **opts) == "v"
    await settled(env.cache)
    assert refresh.calls == 1

    # The mean moves a fifth of the way to each new duration: that refresh took 0 s (the
    # first duration: the mean), a fetch of another key 3 s, so the mean is 0.6 s.
    await env.cache.get("other", Slow(env.clock, 3.0).fetch, ttl=1000)
    await env.cache.set("m", "v", ttl=100)
    env.clock.advance(100 - 0.7)
    other = Value("new")
    assert await env.cache.get("m", other.fetch, **opts) == "v"
    await settled(env.cache)
    assert other.calls == 0
    env.clock.advance(0.2)  # 0.5 s left, within the 0.6 s mean
    assert await env.cache.get("m", other.fetch, **opts) == "v"
    await settled(env.cache)
    assert other.calls == 1


@pytest.mark.parametrize(("bound", "refreshed"), [(3, True), (2, False)])
async def test_the_durations_are_bounded_by_max_profile_entries(
    build_memory: BuildStack, bound: int, refreshed: bool
) -> None:
    """Three keys fetched: with room for two durations the first key's is dropped and it falls
    back to the stack mean (2 s, then 0 s twice: 1.28 s), too short for 1.9 s left."""
    env = await build_memory(rng=FixedDraw(1.0), max_profile_entries=bound)
    opts: dict[str, Any] = {"ttl": 100, "early_refresh": 1.0}
    start = env.clock()
    await env.cache.get("a", Slow(env.clock, 2.0).fetch, **opts)
    for key in ("b", "c"):
        await env.cache.get(key, Slow(env.clock, 0.0).fetch, **opts)
    env.clock.now = start + 102 - 1.9
    refresh = Value("new")
    assert await env.cache.get("a", refresh.fetch, **opts) == "v"
    await settled(env.cache)
    assert refresh.calls == (1 if refreshed else 0)


async def test_values_without_a_ttl_never_refresh_early(build_stack: BuildStack) -> None:
    env = await build_stack(memory_ttl=None, lower_ttl=None, rng=FixedDraw(ALWAYS))
    await env.cache.get("k", Slow(env.clock, 5.0).fetch, early_refresh=1.0)
    env.clock.advance(10**6)
    refresh = Value("new")
    for _ in range(50):
        assert await env.cache.get("k", refresh.fetch, early_refresh=1.0) == "v"
    await settled(env.cache)
    assert refresh.calls == 0


async def test_negative_cached_values_refresh_early_too(build_memory: BuildStack) -> None:
    """A cached ``None`` is a value like any other: a hot missing key is refreshed before its
    negative TTL ends instead of making its readers wait then."""
    env = await build_memory(rng=FixedDraw(1.0))
    opts: dict[str, Any] = {"ttl": 100, "negative_cache": True, "negative_ttl": 10}
    missing = Slow(env.clock, 1.0, value=None)
    assert await env.cache.get("k", missing.fetch, early_refresh=True, **opts) is None
    env.clock.advance(9.5)
    found = Value("found")
    assert await env.cache.get("k", found.fetch, early_refresh=True, **opts) is None
    await settled(env.cache)
    assert found.calls == 1
    assert await env.cache.get("k") == "found"


# ---------------------------------------------------------------------------- the refresh


async def test_the_refresh_runs_in_the_background_once(build_stack: BuildStack) -> None:
    """Many readers near expiry: one refresh, nobody waits for it, the value is replaced."""
    env = await build_stack(rng=FixedDraw(ALWAYS))
    opts: dict[str, Any] = {"ttl": 100, "early_refresh": 1.0}
    await env.cache.get("k", Slow(env.clock, 1.0, "v1").fetch, **opts)
    gate = Gate("v2")
    env.clock.advance(100 - 20.0)  # 20 s left, 30 * delta = 30 s: every draw refreshes
    results = await within(
        join_all([spawn(env.cache.get, "k", gate.fetch, **opts) for _ in range(50)]),
        "50 reads during the refresh",
    )
    assert results == ["v1"] * 50
    await gate.wait_started()
    assert gate.calls == 1
    assert env.cache.get_stats().background_refreshes == 1
    metrics = env.cache.get_metrics()
    assert (metrics.misses, metrics.stampede_dedupes) == (1, 0), "a reader joined the fetch"
    gate.release()
    await settled(env.cache)
    assert gate.calls == 1
    for entry in await env.entries("k"):
        assert entry is not None
        assert entry.value == "v2"
        assert entry.fresh_until == pytest.approx(env.clock() + 100, abs=1e-3)


def _reached_origin_or_idle(cache: CacheStack, gate: Gate) -> bool:
    """The origin was called, or no refresh is running (none was started)."""
    return gate.calls > 0 or cache.get_stats().background_refreshes == 0


async def test_one_refresh_per_period_and_no_reader_waits(build_stack: BuildStack) -> None:
    """Steady load over several TTL periods: readers every 50 ms, 10 at a time; each fetch
    takes 0.3 s. Each period ends with exactly one refresh, started before expiry, and no
    reader ever misses or waits."""
    env = await build_stack(rng=random.Random(16))
    ttl, delta, periods = 4.0, 0.3, 5
    opts: dict[str, Any] = {"ttl": ttl, "early_refresh": 1.0}
    await env.cache.get("k", Slow(env.clock, delta, "v0").fetch, **opts)
    for period in range(1, periods + 1):
        gate = Gate(f"v{period}")
        expires = env.clock() + ttl + 1.0
        for entry in await env.entries("k"):
            assert entry is not None
            assert entry.fresh_until is not None
            expires = min(expires, entry.fresh_until)
        while gate.calls == 0:
            env.clock.advance(0.05)
            assert env.clock() < expires, f"period {period}: no refresh before expiry"
            reads = [spawn(env.cache.get, "k", gate.fetch, **opts) for _ in range(10)]
            assert await within(join_all(reads), "10 reads") == [f"v{period - 1}"] * 10
            # A refresh these reads started first reads the shared layer (for a newer value)
            # and takes its leases: let it reach the origin before the clock moves on, or a
            # slow round trip would pass for "no refresh yet".
            await eventually(
                functools.partial(_reached_origin_or_idle, env.cache, gate),
                "a started refresh reaching the origin",
            )
        started_left = expires - env.clock()
        assert started_left > delta, f"period {period}: refresh started too late"
        env.clock.advance(delta)  # the fetch takes delta; readers go on meanwhile
        reads = [spawn(env.cache.get, "k", gate.fetch, **opts) for _ in range(20)]
        assert await within(join_all(reads), "reads during the refresh") == [f"v{period - 1}"] * 20
        assert gate.calls == 1
        gate.release()
        await settled(env.cache)
        assert gate.calls == 1, f"period {period}: {gate.calls} fetches"
        assert await env.cache.get("k", gate.fetch, **opts) == f"v{period}"
    metrics = env.cache.get_metrics()
    assert metrics.misses == 1, "only the first read missed"
    assert metrics.stampede_dedupes == 0, "a reader waited on a fetch"
    assert metrics.fetches == periods + 1


async def test_an_open_circuit_stops_the_refresh(build_memory: BuildStack) -> None:
    env = await build_memory(rng=FixedDraw(ALWAYS))
    breaker = CircuitBreaker(failure_threshold=1, cooldown=1000)
    failing = Failing()
    with pytest.raises(RuntimeError):
        await env.cache.get("k", failing.fetch, circuit_breaker=breaker)
    await env.cache.set("k", "v", ttl=100)
    env.clock.advance(99)
    for _ in range(5):
        read = env.cache.get("k", failing.fetch, circuit_breaker=breaker, early_refresh=1)
        assert await read == "v"
    await settled(env.cache)
    assert failing.calls == 1, "a refresh reached the origin through an open circuit"


async def test_a_stuck_refresh_is_bounded_and_the_value_stays(build_memory: BuildStack) -> None:
    env = await build_memory(rng=FixedDraw(ALWAYS), background_refresh_timeout=0.05)
    opts: dict[str, Any] = {"ttl": 100, "early_refresh": 1.0}
    await env.cache.get("k", Slow(env.clock, 1.0).fetch, **opts)
    env.clock.advance(99)
    gate = Gate("never")
    assert await env.cache.get("k", gate.fetch, **opts) == "v"
    await gate.wait_started()
    await settled(env.cache)  # ended by background_refresh_timeout, not by the gate
    assert gate.finished == 0
    assert await env.cache.get("k") == "v"
