"""The public API type-checks under ``mypy --strict`` as users write it, and rejects misuse."""

from __future__ import annotations

from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

ROOT = Path(__file__).resolve().parents[2]
CHECK_FILE = Path(__file__).with_name("check_public_api.py")

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private mypy cache: a run never depends on, or races with, another run's cache."""
    return tmp_path_factory.mktemp("mypy-cache")


def run_mypy(cache_dir: Path, *targets: str) -> tuple[str, int]:
    stdout, stderr, status = mypy_api.run(
        [
            "--strict",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(cache_dir),
            "--no-color-output",
            "--show-error-codes",
            *targets,
        ]
    )
    return stdout + stderr, status


def test_public_api_passes_mypy_strict(mypy_cache: Path) -> None:
    output, status = run_mypy(mypy_cache, str(CHECK_FILE))
    assert status == 0, output
    assert "Success: no issues found" in output


MISUSE = """
from layercache import CacheStack, MemoryLayer

def misuse(cache: CacheStack) -> None:
    name: str = cache.get_metrics().hits
    MemoryLayer(eviction="random")
    CacheStack([MemoryLayer()], write_policy="sometimes")
    rate: int = cache.get_hit_rate().overall
"""


def test_misuse_is_reported(mypy_cache: Path, tmp_path: Path) -> None:
    # The API is typed narrowly (not Any): each line of MISUSE is one error.
    snippet = tmp_path / "misuse.py"
    snippet.write_text(MISUSE, encoding="utf-8")
    output, status = run_mypy(mypy_cache, str(snippet))
    assert status == 1, output
    errors = [line for line in output.splitlines() if ": error:" in line]
    assert len(errors) == 4, output
    assert any('"eviction"' in line for line in errors), output
    assert any('"write_policy"' in line for line in errors), output
