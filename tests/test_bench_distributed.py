"""``python -m bench.distributed --quick`` keeps working (real processes, a real redis-server it
starts itself). Timings are never asserted; what each scenario must show is: one origin fetch
per run with the coordinator and one per process without, every invalidation seen by the other
process, and the tag invalidation removing exactly the tagged keys (checked inside the bench)."""

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

    coordinated, alone = results["single_flight"]
    assert coordinated["coordinated"]
    assert not alone["coordinated"]
    assert coordinated["fetches"] == [1] * len(coordinated["runs"])
    assert alone["fetches"] == [4] * len(alone["runs"])

    rows = {row["operation"]: row for row in results["propagation"]["rows"]}
    assert set(rows) == {"delete", "set"}
    assert all(row["count"] == 200 for row in rows.values())
    assert all(0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"] for row in rows.values())
    assert results["propagation"]["raw_bus"]["received"] == 200

    backends = [row["backend"] for row in results["tags"]]
    assert backends[0] == "single server"
    assert all(row["keys"] == 1000 for row in results["tags"])
    assert "### Cross-process single-flight" in document["markdown"]
    assert (tmp_path / "out.json").exists()
