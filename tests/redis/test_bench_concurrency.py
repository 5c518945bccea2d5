"""``python -m bench.concurrency --quick`` runs end to end (timings are never asserted)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent

pytestmark = pytest.mark.redis


def test_quick_concurrency_benchmark_runs(
    redis_server: Any,  # not used: it applies the suite's skip/fail rule for a missing binary
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.concurrency import main

    out = tmp_path / "concurrency.json"
    assert main(["--quick", "--keys", "256", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data["goals"]) >= {"async_c64_vs_raw", "async_c1_on_vs_off", "sync_c64_vs_raw"}
    names = [row["name"] for row in data["async_c64"]]
    assert "layercache CacheStack[RedisLayer]" in names
    assert "cashews redis://" in names
    batched = next(r for r in data["async_c64"] if r["name"] == "layercache CacheStack[RedisLayer]")
    assert batched["keys_per_mget"] > 1  # the reads really were batched
    printed = capsys.readouterr().out
    assert "64 concurrent L2 reads: layercache ops/s / raw" in printed
