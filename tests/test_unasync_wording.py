"""``scripts/unasync.py`` refuses async wording in the sync twins it generates.

Renaming fixes code, not prose: ``SyncCacheStack.wrap`` said it returned "a coroutine function",
and ``getattr(layer, "aclose") or getattr(layer, "close")`` became ``getattr(layer, "close") or
getattr(layer, "close")``. The generator now fails, naming ``file:line``, on any such word
outside an explicit ``# unasync: begin async-wording`` region.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def unasync() -> ModuleType:
    spec = importlib.util.spec_from_file_location("unasync_script", ROOT / "scripts" / "unasync.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FAKE_SOURCE = '''"""A module on asyncio."""


class Thing:
    """Thing for both twins; the asyncio twin names itself."""

    async def wrap(self) -> None:
        """Returns a coroutine function."""
        closer = getattr(self, "aclose", None) or getattr(self, "close", None)
        # unasync: begin async-wording
        # Cancellation (asyncio.wait_for swallows it on 3.10) must not keep the loop alive.
        # unasync: end async-wording
        await closer()
'''


def test_async_words_and_duplicated_operands_are_found(unasync: ModuleType) -> None:
    twin = unasync.convert(FAKE_SOURCE, unasync.RENAMES)
    found = {(number, hit) for number, hit, _ in unasync.async_wording(twin)}
    assert found == {
        (1, "asyncio"),
        (8, "coroutine"),
        (9, 'getattr(self, "close", None) or getattr(self, "close", None)'),
    }


@pytest.mark.parametrize(
    "line",
    [
        "await stack.get(key)",
        "async def fetch(): ...",
        "x = self.x or self.x",
        'mode = "a" or "a"',
        "# one stack per event loop",
        "the wrapper is awaited",
        "async with lock:",
    ],
)
def test_each_word_is_refused(unasync: ModuleType, line: str) -> None:
    assert unasync.async_wording(line + "\n")


@pytest.mark.parametrize(
    "line",
    [
        "await_all = 1",
        "it holds it or it never expires",
        "the asyncio twin raises the same class",
        "sync or async functions",
        "x = a or b",
    ],
)
def test_plain_prose_and_code_pass(unasync: ModuleType, line: str) -> None:
    assert unasync.async_wording(line + "\n") == []


def test_the_generator_exits_non_zero_naming_file_and_line(
    unasync: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    package = tmp_path / "src" / "layercache"
    (package / "_async").mkdir(parents=True)
    (package / "_async" / "thing.py").write_text(FAKE_SOURCE, encoding="utf-8")
    monkeypatch.setattr(unasync, "ROOT", tmp_path)
    monkeypatch.setattr(unasync, "PACKAGE", package)
    monkeypatch.setattr(
        unasync, "JOBS", (("_async/thing.py", "_sync/thing.py", unasync.RENAMES, ()),)
    )
    assert unasync.main([]) == 1
    err = capsys.readouterr().err
    assert "src/layercache/_sync/thing.py:10: 'coroutine'" in err  # the header adds 2 lines
    assert "(from src/layercache/_async/thing.py)" in err
    assert not (package / "_sync" / "thing.py").exists()  # nothing written
    assert unasync.main(["--check"]) == 1


def test_the_real_sync_twins_have_no_async_wording(unasync: ModuleType) -> None:
    wanted, _ = unasync.generate()
    problems = {
        str(path.relative_to(ROOT)): unasync.async_wording(text) for path, text in wanted.items()
    }
    assert {path: found for path, found in problems.items() if found} == {}


def test_the_script_itself_passes_on_the_tree() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "unasync.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert "async wording" not in result.stderr
