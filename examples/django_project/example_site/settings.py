"""Settings of the example project: the only interesting part is ``CACHES``."""

from __future__ import annotations

import os
from typing import Any

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = True
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "example_site.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
USE_TZ = True

# Set LAYERCACHE_REDIS_URL (e.g. redis://127.0.0.1:6379/0) to add a Redis layer shared by every
# process, with the invalidation bus that keeps their memory layers consistent.
REDIS_URL = os.environ.get("LAYERCACHE_REDIS_URL", "")

CACHE_OPTIONS: dict[str, Any] = {"MEMORY_MAX_SIZE": 10_000, "MEMORY_TTL": 60}
if REDIS_URL:
    # Values are pickles signed with a key derived from SECRET_KEY (the default "SERIALIZER":
    # "pickle"; cache_page stores HttpResponse objects, which JSON cannot hold), so every
    # process sharing the Redis needs the same SECRET_KEY. Keep secrets out of the code in
    # production.
    _SECRET = os.environ.get("LAYERCACHE_SECRET", SECRET_KEY)
    CACHE_OPTIONS.update(
        {
            # A set/delete/clear/incr/tag invalidation in one process drops the other
            # processes' memory copies at once (Redis pub/sub, signed messages).
            "INVALIDATION_BUS": {"SIGNING_SECRET": _SECRET},
            # The tag index already lives in Redis by default ("TAG_INDEX": "redis").
            # "SINGLE_FLIGHT": True,  # get_or_set(key, callable): one call across processes
            "GRACEFUL_DEGRADATION": True,  # a Redis outage degrades to memory, never a 500
        }
    )

CACHES = {
    "default": {
        "BACKEND": "layercache.integrations.django.LayerCacheBackend",
        "LOCATION": REDIS_URL,  # "" = memory only
        "TIMEOUT": 300,
        "KEY_PREFIX": "example",
        "OPTIONS": CACHE_OPTIONS,
    }
}
