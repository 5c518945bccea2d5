"""bench/memcached.py keeps working: its --quick run reports every row and ratio, wall and CPU
(timings are never asserted: they depend on the machine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _memcached_server import MemcachedServer

ROOT = Path(__file__).resolve().parent.parent.parent


def test_quick_run_reports_every_subject(
    memcached_server: MemcachedServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.memcached import main

    out = tmp_path / "memcached.json"
    assert main(["--quick", "--json", str(out)]) == 0
    document = json.loads(out.read_text())
    rows, ratios = document["rows_us"], document["ratios"]
    assert len(rows) == 12
    assert all(row["wall"] > 0 and row["cpu"] > 0 for row in rows.values())
    assert set(ratios) == {name for name in rows if "Stack" in name}
    assert all(ratio["wall"] > 0 and ratio["cpu"] > 0 for ratio in ratios.values())
    concurrent = document["concurrent"]
    assert len(concurrent["rows"]) == 3
    assert all(row["ops_per_s"] > 0 for row in concurrent["rows"].values())
    assert concurrent["keys_per_multi_get"] > 1  # the concurrent reads really were batched
    printed = capsys.readouterr().out
    assert "| sync L2 hit: SyncCacheStack[Memory, Memcached] |" in printed
    assert "CacheStack[Memcached], batched |" in printed
