"""bench/memcached.py keeps working: its --quick run reports every row and ratio (timings are
never asserted: they depend on the machine)."""

from __future__ import annotations

from pathlib import Path

import pytest

from _memcached_server import MemcachedServer

ROOT = Path(__file__).resolve().parent.parent.parent


def test_quick_run_reports_every_subject(
    memcached_server: MemcachedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.memcached import main

    document = main(["--quick"])
    results, ratios = document["results"], document["ratios"]
    assert len(results) == 12
    assert all(seconds > 0 for seconds in results.values())
    assert set(ratios) == {name for name in results if "Stack" in name}
    assert all(ratio > 0 for ratio in ratios.values())
