"""A model like the one Django's cache suite caches (``Poll`` with an expensive default)."""

from __future__ import annotations

from typing import Any

from django.db import models  # type: ignore[import-untyped]


def expensive_calculation() -> int:
    """A field default whose calls are counted: unpickling must never call it."""
    expensive_calculation.runs += 1  # type: ignore[attr-defined]
    return 1000 + expensive_calculation.runs  # type: ignore[attr-defined, no-any-return]


expensive_calculation.runs = 0  # type: ignore[attr-defined]


class Poll(models.Model):  # type: ignore[misc]
    """A model instance to cache."""

    question: Any = models.CharField(max_length=200)
    score: Any = models.IntegerField(default=expensive_calculation)

    class Meta:
        app_label = "dj_testapp"
