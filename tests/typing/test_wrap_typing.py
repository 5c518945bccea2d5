"""wrap() is typed with ParamSpec on both stacks: signatures kept, wrong arguments reported."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_typing import run_mypy

pytest.importorskip("mypy.api")

CHECK_FILE = Path(__file__).with_name("check_wrap_typing.py")

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mypy-cache-wrap")


def test_wrap_keeps_signatures_under_mypy_strict(mypy_cache: Path) -> None:
    output, status = run_mypy(mypy_cache, str(CHECK_FILE))
    assert status == 0, output
    lines = CHECK_FILE.read_text(encoding="utf-8").splitlines()
    expected = {
        number: line.split("# revealed:", 1)[1].strip()
        for number, line in enumerate(lines, start=0)  # the comment follows its reveal_type
        if "# revealed:" in line
    }
    revealed = {
        int(line.split(":")[1]): line.split('Revealed type is "', 1)[1].rstrip('"')
        for line in output.splitlines()
        if "Revealed type is" in line
    }
    assert expected, "no reveal_type expectations found"
    for number, want in expected.items():
        got = revealed.get(number, "<no reveal_type on the line above>")
        got = got.replace("check_wrap_typing.", "").replace("typing.", "").replace("builtins.", "")
        assert got == want, f"line {number}: {got!r} != {want!r}\n{output}"


WRONG_CALLS = """
from layercache import CacheStack, SyncCacheStack

async def load(user_id: int) -> str:
    return str(user_id)

def load_sync(user_id: int) -> str:
    return str(user_id)

async def misuse(cache: CacheStack, sync_cache: SyncCacheStack) -> None:
    cached = cache.wrap("u", load)
    await cached("not-an-int")
    await cached(1, 2)
    length: int = await cached(1)
    sync_cached = sync_cache.wrap("u")(load_sync)
    sync_cached(user_id="x")
"""


def test_wrong_arguments_to_a_wrapped_function_are_reported(
    mypy_cache: Path, tmp_path: Path
) -> None:
    snippet = tmp_path / "wrong_calls.py"
    snippet.write_text(WRONG_CALLS, encoding="utf-8")
    output, status = run_mypy(mypy_cache, str(snippet))
    assert status == 1, output
    errors = [line for line in output.splitlines() if ": error:" in line]
    assert len(errors) == 4, output
    assert sum('incompatible type "str"; expected "int"' in line for line in errors) == 2, output
    assert any("Too many arguments" in line for line in errors), output
    assert any("Incompatible types in assignment" in line for line in errors), output
