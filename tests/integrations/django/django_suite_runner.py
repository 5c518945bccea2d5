"""Run Django's own ``BaseCacheTests`` (tests/cache/tests.py) against one cache configuration.

Used by test_django_suite.py, one process per configuration (Django's settings are global)::

    python django_suite_runner.py DJANGO_TESTS_DIR CONFIG REDIS_URL OUT_JSON

``DJANGO_TESTS_DIR`` is the ``tests/`` directory of Django's source distribution (its
``cache`` package is imported from there, never copied into this repository). ``CONFIG``:

- ``layercache-memory``: ``LayerCacheBackend`` with an empty ``LOCATION`` (memory only);
- ``layercache-redis``: ``LayerCacheBackend`` with ``REDIS_URL`` as ``LOCATION``;
- ``django-redis``: Django's own ``RedisCache`` on ``REDIS_URL`` (its ``RedisCacheTests``),
  the baseline.

Each configuration gets the cache aliases Django's suite expects (``default``, ``prefix``,
``v2``, ``custom_key``, ``custom_key2``) from Django's own ``caches_setting_for_tests``; the
culling aliases are excluded for every configuration here, as Django excludes them for its
Redis and memcached backends (no ``MAX_ENTRIES``), so its cull tests skip themselves.

``EXPECTED_FAILURES`` lists, per configuration, the tests known to fail and why; they are
marked ``unittest.expectedFailure`` (an unexpected success is reported as such). The result is
written to ``OUT_JSON``: per test, its outcome and message.
"""

from __future__ import annotations

import json
import sys
import time
import unittest
from pathlib import Path
from typing import Any

_LAYERCACHE = "layercache.integrations.django.LayerCacheBackend"
_DJANGO_REDIS = "django.core.cache.backends.redis.RedisCache"
# Django's suite excludes these aliases (MAX_ENTRIES culling) for backends that do not cull.
_NO_CULLING = {"cull", "zero_cull"}

# configuration -> {test name: why it is expected to fail}. Empty: every test passes or skips.
EXPECTED_FAILURES: dict[str, dict[str, str]] = {
    "layercache-memory": {},
    "layercache-redis": {},
    "django-redis": {},
}


def _configure(tests_dir: str, redis_url: str) -> None:
    from django.conf import settings

    sys.path.insert(0, tests_dir)
    caches: dict[str, Any] = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    }
    if redis_url:
        # cache.tests reads settings.CACHES at import to decide whether RedisCacheTests run.
        caches["django-redis"] = {"BACKEND": _DJANGO_REDIS, "LOCATION": redis_url}
    settings.configure(
        SECRET_KEY="django-suite-harness",
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        INSTALLED_APPS=["cache"],  # Django's tests/cache app: its Poll model
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        CACHES=caches,
        USE_TZ=False,
    )
    import django

    django.setup()


def _suite(config: str, redis_url: str) -> unittest.TestSuite:
    from cache import tests as django_cache_tests
    from django.test import TestCase, override_settings

    loader = unittest.TestLoader()
    if config == "django-redis":
        case: type = django_cache_tests.RedisCacheTests
    else:
        location = redis_url if config == "layercache-redis" else ""
        caches = django_cache_tests.caches_setting_for_tests(
            BACKEND=_LAYERCACHE, LOCATION=location, exclude=_NO_CULLING
        )
        case = override_settings(CACHES=caches)(
            type(
                "LayerCacheBackendTests",
                (django_cache_tests.BaseCacheTests, TestCase),
                {"__module__": __name__},
            )
        )
    for name, reason in EXPECTED_FAILURES[config].items():
        test = getattr(case, name)
        test.__doc__ = f"expected failure: {reason}"
        setattr(case, name, unittest.expectedFailure(test))
    return loader.loadTestsFromTestCase(case)


def _base_tests() -> set[str]:
    from cache import tests as django_cache_tests

    return {name for name in dir(django_cache_tests.BaseCacheTests) if name.startswith("test_")}


class _Result(unittest.TextTestResult):
    """Records one outcome per test (a failed subtest fails its test)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outcomes: dict[str, dict[str, str]] = {}

    def _record(self, test: Any, outcome: str, detail: str = "") -> None:
        name = getattr(test, "test_case", test)._testMethodName
        previous = self.outcomes.get(name)
        if previous is None or previous["outcome"] == "passed":
            self.outcomes[name] = {"outcome": outcome, "detail": detail[-2000:]}

    def addSuccess(self, test: Any) -> None:
        super().addSuccess(test)
        self._record(test, "passed")

    def addFailure(self, test: Any, err: Any) -> None:
        super().addFailure(test, err)
        self._record(test, "failed", self._exc_info_to_string(err, test))

    def addError(self, test: Any, err: Any) -> None:
        super().addError(test, err)
        self._record(test, "error", self._exc_info_to_string(err, test))

    def addSkip(self, test: Any, reason: str) -> None:
        super().addSkip(test, reason)
        self._record(test, "skipped", reason)

    def addExpectedFailure(self, test: Any, err: Any) -> None:
        super().addExpectedFailure(test, err)
        self._record(test, "expected failure", self._exc_info_to_string(err, test))

    def addUnexpectedSuccess(self, test: Any) -> None:
        super().addUnexpectedSuccess(test)
        self._record(test, "unexpected success")

    def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            self._record(test, "failed" if failed else "error", self._exc_info_to_string(err, test))


def main() -> int:
    tests_dir, config, redis_url, out = sys.argv[1:5]
    _configure(tests_dir, redis_url)
    from django.test.runner import DiscoverRunner
    from django.test.utils import setup_test_environment, teardown_test_environment

    started = time.monotonic()
    setup_test_environment()
    runner = DiscoverRunner(verbosity=0, interactive=False)
    databases = runner.setup_databases()
    try:
        suite = _suite(config, redis_url)
        result = unittest.TextTestRunner(stream=sys.stderr, verbosity=0, resultclass=_Result).run(
            suite
        )
    finally:
        runner.teardown_databases(databases)
        teardown_test_environment()
    assert isinstance(result, _Result)
    base = _base_tests()
    report = {
        "config": config,
        "seconds": round(time.monotonic() - started, 1),
        "tests": {
            name: {**outcome, "base": name in base} for name, outcome in result.outcomes.items()
        },
        "expected_failures": EXPECTED_FAILURES[config],
    }
    Path(out).write_text(json.dumps(report, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
