"""Fixtures of the chaos suite: private ``redis-server`` processes and the soak switch.

Every chaos test starts its own server(s) on free loopback ports (``tests/_redis_server.py``)
instead of sharing the session server, because it kills, restarts or cuts them. Without a
``redis-server`` binary the tests are skipped locally and fail under ``CI=true`` (nothing in
this folder may skip on CI).

The soak: ``--chaos-soak`` (accepted when ``tests/chaos`` is named on the command line, since
pytest reads options only from the conftest files it loads at start-up) or ``LAYERCACHE_SOAK=1``
(works from anywhere) makes every test run longer and harder; see README.md for the figures.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from _components import redis_binary

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from _chaos_support import ChaosRedisServer, soak_requested

# A soaked test gets this much pytest-timeout head room on top of its own planned duration.
SOAK_TIMEOUT = 1800


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos-soak",
        action="store_true",
        default=False,
        help="run the chaos suite (tests/chaos) as a long soak instead of the CI-sized run",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A soak outlives the suite's 60 s per-test timeout: lift it for this folder's tests."""
    if not soak_requested(config):
        return
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.timeout(SOAK_TIMEOUT))


@pytest.fixture
def soak(request: pytest.FixtureRequest) -> bool:
    """``True`` in a soak run (longer runs, more seeds' worth of work per test)."""
    return soak_requested(request.config)


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., ChaosRedisServer]]:
    """Start private servers (``persist=`` as :class:`ChaosRedisServer`); all are stopped at
    the end of the test."""
    binary = redis_binary()
    started: list[ChaosRedisServer] = []

    def start(*, persist: bool = False) -> ChaosRedisServer:
        workdir = tmp_path / f"redis-{len(started)}"
        workdir.mkdir()
        server = ChaosRedisServer(binary, workdir=workdir, persist=persist)
        started.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def chaos_redis(redis_factory: Callable[..., ChaosRedisServer]) -> ChaosRedisServer:
    """One private, empty ``redis-server`` without persistence."""
    return redis_factory()
