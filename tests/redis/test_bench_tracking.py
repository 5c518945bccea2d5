"""``python -m bench.tracking`` runs end to end (timings are never asserted)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent

pytestmark = pytest.mark.redis


def test_quick_tracking_benchmark_runs(
    redis_server: Any,  # not used: it applies the suite's skip/fail rule for a missing binary
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.tracking import main

    out = tmp_path / "tracking.json"
    argv = ["--quick", "--changes", "20", "--storm-writes", "2000", "--json", str(out)]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert len(data["propagation"]) == 5
    for row in data["propagation"]:
        assert row["count"] == 20
        assert row["p50_ms"] > 0
    assert {r["mode"] for r in data["write_cost"]} == {"plain", "bus", "tracking", "raw"}
    tracking = next(r for r in data["write_cost"] if r["mode"] == "tracking")
    assert tracking["redis_reads_per_write"] > 0  # our own writes come back
    printed = capsys.readouterr().out
    assert "tracking: raw redis-py SET" in printed
    assert "What tracking costs a local write" in printed
