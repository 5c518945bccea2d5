"""The admin CLI run as a subprocess (``python -m layercache``), and what it printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def one_error_line(self) -> str:
        """The single ``Error: ...`` line on stderr (no traceback)."""
        lines = self.stderr.strip().splitlines()
        assert len(lines) == 1, self.stderr
        assert lines[0].startswith("Error: "), self.stderr
        assert "Traceback" not in self.stderr
        return lines[0]


def layercache(*args: str, env: dict[str, str] | None = None, stdin: Any = None) -> Run:
    """``python -m layercache ARGS`` in a fresh interpreter; stdin is /dev/null by default."""
    environment = {k: v for k, v in os.environ.items() if k != "LAYERCACHE_DEBUG"}
    environment.pop("LAYERCACHE_REDIS_URL", None)
    environment.update(env or {})
    done = subprocess.run(
        [sys.executable, "-m", "layercache", *args],
        capture_output=True,
        text=True,
        timeout=45,
        check=False,
        env=environment,
        stdin=subprocess.DEVNULL if stdin is None else stdin,
    )
    return Run(done.returncode, done.stdout, done.stderr)
