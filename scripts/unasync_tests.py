"""Generate the SyncCacheStack twin of the CacheStack behaviour suites.

``tests/stack/`` and ``tests/freshness/`` are written for the asyncio ``CacheStack``; this
script turns them into the same suites for ``SyncCacheStack`` under ``tests/generated_sync/``
with ``convert()`` of scripts/unasync.py (``async``/``await`` removed, ``Awaitable[X]`` → ``X``,
``# unasync: begin async-only`` regions dropped) and the rename table below. The tests' own
concurrency goes through tests/_twins_async.py, renamed to tests/_twins_sync.py (the same
names on real threads), so the generated suite runs real threads.

Test modules get a ``twin_`` basename prefix (module basenames are unique across tests/), and
so do the support modules (the rename table rewrites their imports). The output is normalised
with the project's ruff (unused imports left by the dropped regions removed, imports sorted,
formatted), so it passes ``ruff check`` / ``ruff format --check`` like every other file.
``--check`` exits 1 when a generated file is stale (or one is left over).

Usage: python scripts/unasync_tests.py [--check]
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from unasync import convert, write_or_check  # noqa: E402  (scripts/ is not a package)

TESTS = ROOT / "tests"
OUT = TESTS / "generated_sync"
SUITES = ("stack", "freshness")
SUPPORT_MODULES = ("stack_support", "freshness_support")

RENAMES = {
    "CacheStack": "SyncCacheStack",
    "CacheNamespace": "SyncCacheNamespace",
    "aclose": "close",
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "AsyncIterator": "Iterator",
    "redis_client": "redis_sync_client",
    "_twins_async": "_twins_sync",
    **{name: f"twin_{name}" for name in SUPPORT_MODULES},
}

HEADER = (
    "# DO NOT EDIT: generated from tests/{source}\n"
    "# by scripts/unasync_tests.py. Change the async source and run\n"
    "# `python scripts/unasync_tests.py`.\n"
)


def _ruff() -> str:
    venv = Path(sys.executable).parent / "ruff"
    return str(venv) if venv.exists() else "ruff"


def _normalise(text: str, target: Path) -> str:
    """The project's ruff applied to ``text`` as if it were ``target`` (same config)."""
    name = str(target.relative_to(ROOT))
    fixed = subprocess.run(
        [
            *(_ruff(), "check", "--quiet", "--fix", "--unsafe-fixes", "--exit-zero"),
            # Imports left unused by the dropped regions, import order after the renames,
            # ``for x in gen: yield x`` (an ``async for`` in the source) -> ``yield from``.
            *("--select", "F401,I001,UP028"),
            *("--stdin-filename", name, "-"),
        ],
        input=text,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    return subprocess.run(
        [_ruff(), "format", "--quiet", "--stdin-filename", name, "-"],
        input=fixed,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout


def _target_name(name: str) -> str:
    if name.startswith("test_"):
        return "test_twin_" + name[len("test_") :]
    stem = name.removesuffix(".py")
    if stem in SUPPORT_MODULES:
        return f"twin_{name}"
    return name


def wanted_files() -> dict[Path, str]:
    """Every generated file and its content."""
    out: dict[Path, str] = {}
    for suite in SUITES:
        for source in sorted((TESTS / suite).glob("*.py")):
            rel = source.relative_to(TESTS)
            target = OUT / suite / _target_name(source.name)
            text = convert(source.read_text(encoding="utf-8"), RENAMES)
            # A module docstring stays the first statement: the header goes above it.
            text = HEADER.format(source=rel.as_posix()) + text
            out[target] = _normalise(text, target)
    return out


def main(argv: list[str]) -> int:
    wanted = wanted_files()
    existing = set(OUT.rglob("*.py")) if OUT.exists() else set()
    return write_or_check(
        wanted, "--check" in argv, "python scripts/unasync_tests.py", existing - set(wanted)
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
