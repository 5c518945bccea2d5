"""bench/xfetch.py keeps working: a tiny in-process run writes its table and JSON.

Timings are never asserted (they depend on the machine): only that every configuration ran,
read the hot key and called the origin.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_quick_xfetch_benchmark_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.xfetch import main

    out = tmp_path / "xfetch.json"
    argv = ["--quick", "--no-redis", "--ttl", "0.2", "--periods", "2", "--callers", "5"]
    assert main([*argv, "--origin-ms", "10", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    modes = [row["mode"] for row in rows]
    assert modes == [
        "plain TTL",
        "refresh_ahead=0.1",
        "early_refresh=True (beta 1)",
        "cashews @cache.early (early_ttl 0.9 TTL)",
    ]
    for row in rows:
        assert row["requests"] > 0
        assert row["origin_calls"] >= 1
    assert rows[0]["waited"] >= 1, "plain TTL: the expiry makes somebody wait"
    assert rows[-1]["waited"] is None  # the peer keeps no such count
    assert "| early_refresh=True (beta 1) |" in capsys.readouterr().out
