"""The benchmark suite keeps working: its quick, in-process part runs end to end.

Timings are never asserted (they depend on the machine); what is asserted is that every
scenario produced rows, the goal ratios are reported, and layercache's single-flight held
(75 concurrent cold gets, one origin fetch).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_quick_in_process_benchmark_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.report import GOALS, LC_COLD
    from bench.run import run

    out = tmp_path / "bench.json"
    document = run(
        ["--quick", "--no-redis", "--only", "l1,l2,concurrent,cold,memory", "--json", str(out)]
    )

    assert json.loads(out.read_text())["ratios"] == json.loads(json.dumps(document["ratios"]))
    ratios = document["ratios"]
    assert set(ratios) >= {goal.key for goal in GOALS}
    assert ratios["l1_hit_vs_cashews_mem"]["value"] > 0
    assert ratios["bytes_per_entry_vs_cashews"]["value"] > 0
    assert ratios["bytes_per_int_entry_vs_cashews"]["value"] > 0
    assert ratios["l2_hit_vs_raw_redis"]["value"] is None  # needs Redis: not run here
    assert ratios["cold_gets_origin_fetches"]["value"] == 1

    results = document["results"]
    assert {row["name"] for row in results["l1_hit"]} >= {
        "layercache CacheStack[MemoryLayer]",
        "cashews mem://",
        "aiocache SimpleMemoryCache",
    }
    cold = {row["name"]: row["fetches"] for row in results["cold_gets"]}
    assert cold[LC_COLD] == [1]
    assert cold["no cache"] == [75]  # the scenario really is a stampede
    assert all(row["bytes_per_entry"] > 0 for row in results["bytes_per_entry"])
    assert all(row["bytes_per_entry"] > 0 for row in results["bytes_per_int_entry"])
    assert "### Goals" in document["markdown"]
