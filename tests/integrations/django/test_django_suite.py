"""Django's OWN cache test suite (``BaseCacheTests``) against ``LayerCacheBackend``.

Django's ``tests/cache/tests.py`` is not part of the installed package and is not copied into
this repository: the source distribution of the installed Django version is downloaded from
PyPI (``pip download django==<version> --no-binary :all: --no-deps``) once, and its
``tests/cache`` package extracted into a cache directory (``$LAYERCACHE_DJANGO_TESTS_CACHE``,
default ``~/.cache/layercache-django-tests``). Without it the tests skip locally; under
``CI=true`` that is a failure.

Each configuration runs in a process of its own (django_suite_runner.py; Django's settings are
global): ``LayerCacheBackend`` memory only, ``LayerCacheBackend`` on a Redis ``LOCATION`` (the
session's redis-server), and, as the baseline in the same harness, Django's own ``RedisCache``
(its ``RedisCacheTests``). The two Redis runs go in parallel on separate databases.

What is compared: every ``BaseCacheTests`` test passes on our backend, except those listed in
``django_suite_runner.EXPECTED_FAILURES`` with a reason (none today); a test skips on ours only
where it skips for Django's ``RedisCache`` too (culling: no ``MAX_ENTRIES``).
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import django
import pytest

_RUNNER = Path(__file__).with_name("django_suite_runner.py")
_CULLING = {"test_cull", "test_zero_cull", "test_cull_delete_when_store_empty"}
_CULLING_REASON = "Culling isn't implemented."
_RUN_TIMEOUT = 50.0


def _unavailable(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"Django's cache test suite is required under CI=true: {message}")
    pytest.skip(message)


def _cache_root() -> Path:
    configured = os.environ.get("LAYERCACHE_DJANGO_TESTS_CACHE")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "layercache-django-tests"


def _extract_cache_tests(sdist: Path, version: str, target: Path) -> None:
    """Extract ``django-<version>/tests/cache/*.py`` (nothing else) into ``target/cache``."""
    member_dir = f"django-{version}/tests/cache/"
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".extract-"))
    try:
        out = staging / "cache"
        out.mkdir()
        with tarfile.open(sdist) as archive:
            for member in archive.getmembers():
                name = member.name
                if not (name.startswith(member_dir) and member.isfile()):
                    continue
                relative = name[len(member_dir) :]
                if "/" in relative or not relative.endswith(".py"):
                    continue  # only the package's own modules, never a path elsewhere
                source = archive.extractfile(member)
                assert source is not None
                (out / relative).write_bytes(source.read())
        if not (out / "tests.py").is_file() or not (out / "models.py").is_file():
            raise FileNotFoundError(f"{sdist.name} has no tests/cache/tests.py and models.py")
        target.mkdir(parents=True, exist_ok=True)
        try:
            (staging / "cache").rename(target / "cache")
        except OSError:
            if not (target / "cache" / "tests.py").is_file():  # not a concurrent extraction
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@pytest.fixture(scope="session")
def django_tests_dir() -> Path:
    """Django's ``tests/`` directory holding its ``cache`` test package, for this version."""
    version = django.__version__
    tests_dir = _cache_root() / version / "tests"
    if (tests_dir / "cache" / "tests.py").is_file():
        return tests_dir
    tests_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as download:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            f"django=={version}",
            "--no-binary",
            ":all:",
            "--no-deps",
            "--quiet",
            "--dest",
            download,
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            _unavailable(f"pip download of django=={version} failed: {exc!r}")
        if done.returncode != 0:
            _unavailable(f"pip download of django=={version} failed: {done.stderr[-1000:]}")
        sdists = list(Path(download).glob(f"[Dd]jango-{version}.tar.gz"))
        if not sdists:
            _unavailable(f"no source distribution of django=={version} was downloaded")
        try:
            _extract_cache_tests(sdists[0], version, tests_dir)
        except (OSError, tarfile.TarError) as exc:
            _unavailable(f"the source distribution of django=={version}: {exc}")
    return tests_dir


def _run(tests_dir: Path, configs: dict[str, str], workdir: Path) -> dict[str, dict[str, Any]]:
    """Run each configuration (name -> Redis URL) in its own process, all at once."""
    procs = {}
    for config, url in configs.items():
        procs[config] = subprocess.Popen(
            [sys.executable, str(_RUNNER), str(tests_dir), config, url, str(workdir / config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    reports = {}
    try:
        for config, proc in procs.items():
            output, _ = proc.communicate(timeout=_RUN_TIMEOUT)
            assert proc.returncode == 0, f"{config}: the runner failed:\n{output[-4000:]}"
            reports[config] = json.loads((workdir / config).read_text())
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return reports


@pytest.fixture(scope="session")
def memory_report(
    django_tests_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("django-suite-memory")
    return _run(django_tests_dir, {"layercache-memory": ""}, workdir)["layercache-memory"]


@pytest.fixture(scope="session")
def redis_reports(
    django_tests_dir: Path, redis_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, dict[str, Any]]]:
    if not redis_server.is_running:
        redis_server.start()
    base = f"redis://{redis_server.host}:{redis_server.port}"
    workdir = tmp_path_factory.mktemp("django-suite-redis")
    # Separate databases: RedisCache.clear() is FLUSHDB. Its own test_redis_pool_options
    # expects the database to come from OPTIONS, so its URL names none (database 0).
    yield _run(django_tests_dir, {"layercache-redis": f"{base}/1", "django-redis": base}, workdir)
    redis_server.flushall()


def _counts(report: dict[str, Any], base_only: bool = True) -> dict[str, int]:
    outcomes = collections.Counter(
        test["outcome"] for test in report["tests"].values() if test["base"] or not base_only
    )
    return dict(sorted(outcomes.items()))


def _problems(report: dict[str, Any]) -> list[str]:
    """Tests that neither passed, nor skipped for culling, nor failed as listed."""
    expected = report["expected_failures"]
    found = []
    for name, test in sorted(report["tests"].items()):
        outcome = test["outcome"]
        if outcome == "passed" and name not in expected:
            continue
        if outcome == "skipped" and name in _CULLING and test["detail"] == _CULLING_REASON:
            continue
        if outcome == "expected failure" and name in expected:
            continue
        found.append(f"{name}: {outcome}\n{test['detail']}")
    return found


def _table(reports: dict[str, dict[str, Any]]) -> str:
    lines = ["configuration: BaseCacheTests outcomes (seconds)"]
    for config, report in reports.items():
        lines.append(f"  {config}: {_counts(report)} ({report['seconds']} s)")
    return "\n".join(lines)


def test_django_suite_source_is_available(django_tests_dir: Path) -> None:
    # First in the module: the one-time download is set up (and timed) here.
    assert (django_tests_dir / "cache" / "tests.py").is_file()
    assert (django_tests_dir / "cache" / "models.py").is_file()


def test_django_base_cache_tests_memory_only(memory_report: dict[str, Any]) -> None:
    print(_table({"layercache-memory": memory_report}))
    assert _problems(memory_report) == []
    tests = memory_report["tests"]
    assert all(test["base"] for test in tests.values())
    assert {name for name, test in tests.items() if test["outcome"] == "skipped"} == _CULLING
    assert len(tests) >= 50  # the whole of BaseCacheTests ran, not a subset


@pytest.mark.redis
def test_django_base_cache_tests_redis_location_beside_django_redis_cache(
    redis_reports: dict[str, dict[str, Any]],
) -> None:
    ours, django_redis = redis_reports["layercache-redis"], redis_reports["django-redis"]
    print(_table(redis_reports))
    assert _problems(ours) == []
    # The same BaseCacheTests ran on both, with the same skips (Django's RedisCache also
    # skips culling); RedisCacheTests' own extra tests are Django-client specific.
    base = {name for name, test in django_redis["tests"].items() if test["base"]}
    assert set(ours["tests"]) == base
    for outcome in ("passed", "skipped"):
        assert {n for n, t in ours["tests"].items() if t["outcome"] == outcome} == {
            n for n in base if django_redis["tests"][n]["outcome"] == outcome
        }, outcome
