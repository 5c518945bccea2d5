"""``python -m bench.revisions --quick`` keeps working (issue 12's comparison harness).

Timings are never asserted. What is: each side really imports its own exported copy of
``layercache`` (not the venv's editable install of this tree), every case yields a figure per
side, the stampede ran the fetcher once per stampede on both sides, and the exported copies
are gone afterwards.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def _head() -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.timeout(120)
def test_quick_revision_comparison(
    monkeypatch: pytest.MonkeyPatch, redis_server: object, tmp_path: Path
) -> None:
    # redis_server: only for its skip/fail rule when redis-server is missing.
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.revisions import CASES, run

    out = tmp_path / "out.json"
    document = run(["--quick", "--old", "HEAD", "--new", "HEAD", "--json", str(out)])

    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(document["rows"]))
    sha = _head()[:12]
    assert document["old"] == document["new"] == f"HEAD = {sha}"
    for side in ("old", "new"):
        origin = Path(document["layercache"][side])
        assert origin.name == "__init__.py"
        assert origin.parent.parent.parent.name.startswith(f"lc-rev-{sha}-")
        assert not origin.parent.exists()  # the export was removed at the end

    rows = {row["case"]: row for row in document["rows"]}
    assert set(rows) == {case.key for case in CASES}
    for row in rows.values():
        assert row["old"] > 0
        assert row["new"] > 0
        assert row["slowdown"] > 0
        assert len(row["round_slowdowns"]) == document["rounds"]
    for key in ("stampede", "stampede_redis"):
        assert rows[key]["fetches_old"] == rows[key]["fetches_new"] == [1]
    assert "| L1 hit: await CacheStack[MemoryLayer].get |" in document["markdown"]
