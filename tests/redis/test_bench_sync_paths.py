"""``python -m bench.sync_paths --quick`` runs end to end (timings are never asserted)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent

pytestmark = pytest.mark.redis


def test_quick_sync_paths_benchmark_runs(
    redis_server: Any,  # not used: it applies the suite's skip/fail rule for a missing binary
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.sync_paths import main

    out = tmp_path / "sync.json"
    assert main(["--quick", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["l1_ratio"] > 0
    assert data["l2_ratio"] > 0
    assert "layercache SyncCacheStack[SyncRedisLayer].get" in data["rows_us"]
    printed = capsys.readouterr().out
    assert "sync L1 hit / cachetools TTLCache hit" in printed
    assert "sync L2 hit / redis-py GET + json.loads" in printed
