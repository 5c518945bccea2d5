"""Finding the real components the tests start (shared by tests/conftest.py and the chaos
suite's conftest)."""

from __future__ import annotations

import os
import shutil

import pytest


def redis_binary() -> str:
    """``redis-server``'s path; skipped locally without it, a failure under ``CI=true``."""
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return binary
