"""``python -m bench.observability --quick`` keeps working (issue 14's overhead benchmark).

Timings are never asserted (a shared CI machine is too noisy for 0.5 µs). What is: every
configuration yields a figure for both stacks, each subject really hit (the benchmark checks
it before timing), the recording rows really recorded spans, and the goal rows are marked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(120)
def test_quick_observability_benchmark(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.observability import GOAL_ROWS, run

    out = tmp_path / "out.json"
    document = run(["--quick", "--json", str(out)])
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(document["rows"]))

    configs = {
        "plain",
        "otel: no SDK",
        "otel: SDK, ALWAYS_OFF",
        "otel: non-recording parent",
        "otel: SDK, ALWAYS_OFF, root_spans",
        "otel: recording",
    }
    has_prometheus = document["scrape_seconds"] is not None
    if has_prometheus:
        configs.add("prometheus")
        assert document["scrape_seconds"] > 0
    rows = {row["subject"]: row for row in document["rows"]}
    expected = {
        f"{kind}: {config}" for kind in ("CacheStack", "SyncCacheStack") for config in configs
    }
    assert set(rows) == expected
    for row in rows.values():
        assert row["ns_per_op"] > 0
        assert (row["goal_ns"] is not None) == (row["config"] in GOAL_ROWS)
    assert rows["CacheStack: plain"]["overhead_ns"] == 0
    # Every get of the two recording subjects (and their re-warm-ups) ended one span.
    assert document["recorded_spans"] >= 2 * document["rounds"] * document["ops"]
    assert "| CacheStack: otel: no SDK |" in document["markdown"]
