"""Django settings for the backend tests: the example project's settings, configured once."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("django")

import django
from django.conf import settings
from django_support import FakeClock

_EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "django_project"
sys.path.insert(0, str(_EXAMPLE))

if not settings.configured:
    from example_site import settings as example_settings

    settings.configure(
        **{
            name: getattr(example_settings, name)
            for name in dir(example_settings)
            if name.isupper() and name != "INSTALLED_APPS"
        },
        # A model to cache (dj_testapp/models.py); unpickling a model instance needs its app.
        INSTALLED_APPS=[*example_settings.INSTALLED_APPS, "dj_testapp"],
    )
    django.setup()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
