"""The XFetch rule and its bookkeeping (layercache._early_refresh), and the option's coercion.

Counts are exact: a seeded random source, and the expected count is the rule written out
again (``delta * beta * -ln(1 - u) >= r``) on the same seed; it must also lie within four
standard deviations of ``n * exp(-r / (delta * beta))``, the probability the paper gives.
"""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from layercache._early_refresh import DEFAULT_DELTA, MEAN_WEIGHT, FetchDurations, should_refresh
from layercache._options import CacheOptions, coerce_early_refresh, coerce_options, merge_options


class Counting:
    """A draw function that counts its calls."""

    def __init__(self, value: float = 0.5) -> None:
        self.value = value
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.value


@pytest.mark.parametrize(
    ("remaining", "delta", "beta"),
    [(0.01, 0.05, 1.0), (0.05, 0.05, 1.0), (0.2, 0.05, 1.0), (3.0, 1.0, 1.0), (3.0, 1.0, 2.0),
     (3.0, 1.0, 0.5), (0.5, 2.0, 1.0)],
)  # fmt: skip
def test_refresh_frequency_is_exp_of_minus_r_over_delta_beta(
    remaining: float, delta: float, beta: float
) -> None:
    n, seed = 20_000, 1602
    source, replay = random.Random(seed), random.Random(seed)
    got = sum(should_refresh(remaining, delta, beta, source.random) for _ in range(n))
    expected = sum(delta * beta * -math.log(1.0 - replay.random()) >= remaining for _ in range(n))
    assert got == expected
    p = math.exp(-remaining / (delta * beta))
    assert abs(got - n * p) <= 4 * math.sqrt(n * p * (1 - p)) + 1


def test_the_chance_grows_as_expiry_nears() -> None:
    counts = []
    for remaining in (2.0, 1.0, 0.5, 0.25, 0.1):
        source = random.Random(7)
        counts.append(sum(should_refresh(remaining, 0.5, 1.0, source.random) for _ in range(5000)))
    assert counts == sorted(counts)
    assert len(set(counts)) == len(counts)


def test_no_draw_where_the_answer_is_known() -> None:
    draw = Counting()
    assert should_refresh(0.0, 1.0, 1.0, draw)  # expired
    assert should_refresh(-5.0, 1.0, 1.0, draw)
    assert not should_refresh(0.1, 0.0, 1.0, draw)  # a fetch that took no time
    # -ln(U) is at most 53 ln 2 (U >= 2**-53): farther than that many delta * beta, never.
    assert not should_refresh(37.0, 1.0, 1.0, draw)
    assert not should_refresh(370.0, 10.0, 1.0, draw)
    assert draw.calls == 0
    assert not should_refresh(36.0, 1.0, 1.0, draw)
    assert draw.calls == 1


def test_the_extreme_draws() -> None:
    # The largest draw random() can return: U = 2**-53, -ln(U) = 36.7.
    top = 1.0 - 2.0**-53
    assert should_refresh(36.7, 1.0, 1.0, lambda: top)
    assert not should_refresh(36.8, 1.0, 1.0, lambda: top)
    assert not should_refresh(1e-9, 1.0, 1.0, lambda: 0.0)  # U = 1: -ln(U) = 0
    # A source outside [0, 1) does not raise (log(0)): infinitely early, refresh.
    assert should_refresh(1.0, 1.0, 1.0, lambda: 1.0)


@given(
    remaining=st.floats(min_value=1e-6, max_value=1e6),
    delta=st.floats(min_value=0.0, max_value=1e3),
    beta=st.floats(min_value=1e-3, max_value=1e3),
    draw=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_the_rule_matches_its_definition(
    remaining: float, delta: float, beta: float, draw: float
) -> None:
    expected = delta * beta * -math.log(1.0 - draw) >= remaining
    assert should_refresh(remaining, delta, beta, lambda: draw) == expected


# ---------------------------------------------------------------------------- durations


def test_durations_per_key_and_the_fallbacks() -> None:
    durations = FetchDurations(max_entries=3)
    assert durations.delta("k") == DEFAULT_DELTA
    durations.record(None, 2.0)  # a fetch of a key without early refresh: the mean only
    assert durations.delta("k") == 2.0
    assert len(durations) == 0
    durations.record("k", 1.0)
    assert durations.delta("k") == 1.0
    assert durations.mean == pytest.approx(2.0 + MEAN_WEIGHT * (1.0 - 2.0))
    durations.record("k", -3.0)  # the clock stepped back: no time
    assert durations.delta("k") == 0.0
    assert durations.delta("other") == durations.mean


def test_durations_are_bounded_least_recently_fetched_first() -> None:
    durations = FetchDurations(max_entries=3)
    for i, key in enumerate("abcd"):
        durations.record(key, float(i + 1))
    assert len(durations) == 3
    assert durations.delta("a") == durations.mean, "the oldest key was dropped"
    durations.record("b", 9.0)  # fetched again: now the newest
    durations.record("e", 5.0)
    assert durations.delta("b") == 9.0
    assert durations.delta("c") == durations.mean
    for i in range(10_000):
        durations.record(f"k{i}", 0.1)
    assert len(durations) == 3


# ---------------------------------------------------------------------------- the option


@pytest.mark.parametrize(
    ("given_value", "stored"),
    [(True, 1.0), (False, False), (None, None), (1, 1.0), (2, 2.0), (0.5, 0.5), (1e-9, 1e-9)],
)
def test_option_values(given_value: object, stored: object) -> None:
    assert coerce_early_refresh(given_value) == stored
    assert type(coerce_early_refresh(given_value)) is type(stored)


@pytest.mark.parametrize(
    "bad",
    [0, 0.0, -0.0, -1, math.nan, math.inf, -math.inf, "1", b"1", [1.0], {}, 2**2000],
    ids=lambda value: repr(value)[:12],
)
def test_bad_option_values(bad: object) -> None:
    with pytest.raises(ValueError, match="early_refresh must be"):
        coerce_early_refresh(bad)
    with pytest.raises(ValueError, match="early_refresh must be"):
        coerce_options({"early_refresh": bad})


@given(st.floats(min_value=1e-300, max_value=1e300))
def test_any_positive_finite_beta_is_kept(beta: float) -> None:
    assert coerce_early_refresh(beta) == beta


def test_false_overrides_a_default_and_counts_as_no_hit_work() -> None:
    on = coerce_options({"early_refresh": True})
    off = coerce_options({"early_refresh": False})
    assert on is not None
    assert off is not None
    assert on.has_hit_work
    assert not off.has_hit_work
    merged = merge_options(on, off)
    assert merged.early_refresh is False
    assert not merged.has_hit_work
    assert merge_options(on, CacheOptions()).early_refresh == 1.0


@given(
    remaining=st.floats(min_value=-1.0, max_value=1e4),
    delta=st.floats(min_value=0.0, max_value=1e2),
    beta=st.floats(min_value=1e-3, max_value=1e3),
    draw=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    known=st.booleans(),
)
def test_due_is_the_rule_with_the_keys_delta(
    remaining: float, delta: float, beta: float, draw: float, known: bool
) -> None:
    durations = FetchDurations(max_entries=10)
    durations.record("k" if known else None, delta)
    expected = should_refresh(remaining, durations.delta("k"), beta, lambda: draw)
    assert durations.due("k", remaining, beta, lambda: draw) == expected
