"""scripts/check_imports.py: import circles among the package's modules are found (function-level
imports included, ``if TYPE_CHECKING:`` left out), and the real source has none."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "check_imports.py"


def write_package(root: Path, files: dict[str, str]) -> Path:
    package = root / "pkg"
    for name, text in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return package


def check(package: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(package)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


# One circle, b <-> sub.leaf; the imports that could close others do not run (TYPE_CHECKING).
BASE = {
    "__init__.py": "from .a import A\n",
    "a.py": """\
        from __future__ import annotations

        from typing import TYPE_CHECKING

        from . import b
        from .sub import leaf

        if TYPE_CHECKING:
            from .c import C  # never runs: no edge a -> c
        else:
            C = None

        A = 1
        """,
    "b.py": "import pkg.sub.leaf\n",
    "c.py": "from .a import A\n\nC = A\n",
    "sub/__init__.py": "",
    "sub/leaf.py": "import os\nfrom ..b import *  # noqa\n",
}


def test_a_package_without_circles_passes(tmp_path: Path) -> None:
    # Without leaf -> b.
    files = dict(BASE, **{"sub/leaf.py": "import os\n"})
    result = check(write_package(tmp_path, files))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_a_circle_through_a_function_level_import_is_reported(tmp_path: Path) -> None:
    result = check(write_package(tmp_path, BASE))
    # leaf -> b (``from ..b import *``) and b -> leaf (``import pkg.sub.leaf``).
    assert result.returncode == 1
    assert "import circle (2 modules): pkg.b, pkg.sub.leaf" in result.stdout
    assert "pkg.b -> pkg.sub.leaf" in result.stdout
    assert "pkg.sub.leaf -> pkg.b" in result.stdout
    assert "pkg.a" not in result.stdout  # the TYPE_CHECKING import made no circle with c

    files = dict(BASE)
    files["sub/leaf.py"] = "import os\n"
    files["c.py"] = "def later() -> None:\n    from pkg import a  # noqa\n"
    files["a.py"] = "from . import c\n\nA = 1\n"
    result = check(write_package(tmp_path / "nested", files))
    assert result.returncode == 1
    assert "import circle (2 modules): pkg.a, pkg.c" in result.stdout
    assert "pkg.c -> pkg.a  (" in result.stdout
    assert "c.py:2, in a function)" in result.stdout


def test_from_package_import_a_name_is_an_edge_to_the_package(tmp_path: Path) -> None:
    """``from . import NAME`` of a non-module is an edge to ``__init__.py``; of a module, to
    the module; and a module importing itself is a circle too."""
    files = {
        "__init__.py": "EXIT = 1\n\n\ndef main() -> None:\n    from .app import run  # noqa\n",
        "app.py": "from . import EXIT\nfrom . import tools\n\nrun = EXIT\n",
        "tools.py": "import pkg.tools\n",
    }
    result = check(write_package(tmp_path, files))
    assert result.returncode == 1
    assert "import circle (2 modules): pkg, pkg.app" in result.stdout
    assert "import circle (1 module): pkg.tools" in result.stdout
    assert "pkg.app -> pkg.tools" not in result.stdout


def test_the_source_has_no_import_circle() -> None:
    result = check(ROOT / "src" / "layercache")
    assert result.returncode == 0, result.stdout
