"""bench.hit_ratio's own parts: the Zipf samplers draw the distribution they claim, the traces
are reproducible, and the report renders the goals (timings are never asserted)."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture
def hit_ratio(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(ROOT))
    import bench.hit_ratio

    return bench.hit_ratio


def exact_pmf(n: int, s: float, v: float) -> list[float]:
    weights = [(v + k) ** -s for k in range(n)]
    total = sum(weights)
    return [w / total for w in weights]


def test_rejection_inversion_draws_the_zipf_distribution(hit_ratio: Any) -> None:
    n, s, v, draws = 40, 1.3, 3.0, 200_000
    sampler = hit_ratio.ZipfRejectionInversion(random.Random(1), s, v, n)
    counts = Counter(sampler.draw() for _ in range(draws))
    assert set(counts) <= set(range(n))
    for k, p in enumerate(exact_pmf(n, s, v)):
        # Within 5 standard deviations of the binomial count (or 30 draws for rare ranks).
        sigma = (draws * p * (1 - p)) ** 0.5
        assert abs(counts[k] - draws * p) <= max(5 * sigma, 30), (k, counts[k], draws * p)


def test_inverse_cdf_draws_the_zipf_distribution(hit_ratio: Any) -> None:
    n, s, draws = 30, 0.9, 200_000
    counts = Counter(hit_ratio.zipf_ranks(random.Random(2), n, s, draws))
    for k, p in enumerate(exact_pmf(n, s, 1.0)):
        sigma = (draws * p * (1 - p)) ** 0.5
        assert abs(counts[k] - draws * p) <= max(5 * sigma, 30), (k, counts[k], draws * p)


def test_traces_are_reproducible(hit_ratio: Any) -> None:
    assert hit_ratio.zipf_trace(5, 1_000, 1.0, 500) == hit_ratio.zipf_trace(5, 1_000, 1.0, 500)
    assert hit_ratio.recency_trace(6, 500) == hit_ratio.recency_trace(6, 500)
    mix = hit_ratio.one_hit_mix_trace(7, 2_000, keys=100)
    once = [key for key in mix if key.startswith("once:")]
    assert len(once) == len(set(once)) > 500
    loop = hit_ratio.loop_trace(10, 35)
    assert loop[:10] == loop[10:20] == [f"loop:{i}" for i in range(10)]


def test_hit_ratios_and_report_on_a_tiny_trace(hit_ratio: Any) -> None:
    factories = hit_ratio.subjects()
    trace = hit_ratio.Trace("tiny zipf", hit_ratio.zipf_trace(8, 2_000, 1.0, 5_000), (100,))
    rows = hit_ratio.hit_ratios([trace], factories, lambda message: None)
    ratios = rows[0]["hit_ratio"]
    assert set(ratios) == set(factories)
    assert all(0 <= ratio <= 100 for ratio in ratios.values())
    # Same trace, same LRU: cachetools and the plain OrderedDict LRU agree exactly.
    assert ratios[hit_ratio.CACHETOOLS] == ratios[hit_ratio.BARE_LRU]
    cost = {name: hit_ratio.Cost(name, [100.0, 110.0]) for name in factories}
    lines = hit_ratio.report(rows, cost, list(factories))
    text = "\n".join(lines)
    assert "### Hit ratio" in text
    assert "### Cost per operation" in text
    assert "### Goals" in text
    goals = hit_ratio.goals(rows, cost)
    assert any("CPU per op" in label for label, _, _ in goals)
