"""Settings of the example project: the only interesting part is ``CACHES``."""

from __future__ import annotations

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = True
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "example_site.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
USE_TZ = True

CACHES = {
    "default": {
        "BACKEND": "layercache.integrations.django.LayerCacheBackend",
        # Set LAYERCACHE_REDIS_URL (e.g. redis://127.0.0.1:6379/0) to add a Redis layer.
        "LOCATION": os.environ.get("LAYERCACHE_REDIS_URL", ""),
        "TIMEOUT": 300,
        "KEY_PREFIX": "example",
        "OPTIONS": {"MEMORY_MAX_SIZE": 10_000, "MEMORY_TTL": 60},
    }
}
