"""``python -m bench.distributed --quick`` keeps working (real processes, a real redis-server it
starts itself). Timings are never asserted; what each scenario must show is: one origin fetch
per run with the coordinator and one per process without, every invalidation seen by the other
process, and the tag invalidation removing exactly the tagged keys (checked inside the bench).
Each scenario runs for CacheStack and for SyncCacheStack with the sync components, and the
propagation also across kinds (async writer -> sync reader and back)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.mark.timeout(120)
def test_quick_distributed_benchmark(
    monkeypatch: pytest.MonkeyPatch, redis_server: object, tmp_path: Path
) -> None:
    # redis_server: only for its skip/fail rule when redis-server is missing.
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.distributed import run

    argv = ["--quick", "--json", str(tmp_path / "out.json")]
    if shutil.which("redis-cli") is None:
        argv.append("--skip-cluster")
    document = run(argv)
    results = document["results"]

    single_flight = {(row["kind"], row["coordinated"]): row for row in results["single_flight"]}
    assert set(single_flight) == {(k, c) for k in ("async", "sync") for c in (True, False)}
    for (_, coordinated), row in single_flight.items():
        # One origin fetch per run for all 4 processes with the coordinator, one per process
        # (25 callers, or 25 threads, share it in-process) without.
        assert row["fetches"] == [1 if coordinated else 4] * len(row["runs"])

    rows = {(r["writer"], r["reader"], r["operation"]): r for r in results["propagation"]["rows"]}
    pairs = [("async", "async"), ("sync", "sync"), ("async", "sync"), ("sync", "async")]
    assert set(rows) == {(w, r, op) for w, r in pairs for op in ("delete", "set")}
    assert all(row["count"] == 200 for row in rows.values())
    assert all(0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"] for row in rows.values())
    assert results["propagation"]["raw_bus"]["received"] == 200

    tags = [(row["kind"], row["backend"]) for row in results["tags"]]
    assert tags[:2] == [("async", "single server"), ("sync", "single server")]
    assert all(row["keys"] == 1000 for row in results["tags"])
    markdown = document["markdown"]
    assert "### Cross-process single-flight" in markdown
    assert "SyncCacheStack (25 threads) + RedisSingleFlightCoordinator" in markdown
    assert "sync/async" in markdown
    assert (tmp_path / "out.json").exists()
