"""``python -m bench.tagged_writes`` runs end to end (timings are never asserted; the cluster
rows are left out here: they need ``redis-cli`` and take longer)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent

pytestmark = pytest.mark.redis


def test_quick_tagged_writes_benchmark_runs(
    redis_server: Any,  # not used: it applies the suite's skip/fail rule for a missing binary
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.tagged_writes import main

    out = tmp_path / "tagged.json"
    argv = ["--keys", "200", "--rounds", "1", "--no-cluster", "--per-key", "--json", str(out)]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert set(data["ratios"]) == {"async", "sync"}
    for values in data["ratios"].values():
        assert values["tagged_vs_untagged"] > 0
        assert values["tagged_memory_index_vs_untagged"] > 0
        assert values["per_key_vs_untagged"] > 0
        assert values["invalidate_s"] > 0
    assert data["ratios"]["async"]["peer_empty_s"] > 0
    assert data["ratios"]["async"]["invalidate_vs_floor"] > 0
    printed = capsys.readouterr().out
    assert "async: tagged (RedisTagIndex) / untagged set_many" in printed
    assert "sync: tagged (InMemoryTagIndex) / untagged set_many" in printed
    assert "async: invalidate_by_tag, RedisTagIndex + bus" in printed
