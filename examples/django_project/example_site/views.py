"""Two cached views: one whole-page (``cache_page``), one with the low-level cache API."""

from __future__ import annotations

import itertools

from django.core.cache import cache
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import cache_page

# Stands in for an expensive computation; the counter shows how often it really ran.
_renders = itertools.count(1)
_lookups = itertools.count(1)


@cache_page(60)
def cached_page(request: HttpRequest) -> HttpResponse:
    """A page rendered at most once a minute per URL."""
    return HttpResponse(f"render #{next(_renders)}")


def product(request: HttpRequest, product_id: int) -> JsonResponse:
    """A product read through the cache, tagged so that one call invalidates all products."""
    key = f"product:{product_id}"
    data = cache.get(key)
    if data is None:
        data = {"id": product_id, "lookup": next(_lookups)}
        cache.set(key, data, timeout=120, tags=["products"])
    return JsonResponse(data)


def invalidate_products(request: HttpRequest) -> JsonResponse:
    """Drop every cached product (tag invalidation through the backend)."""
    return JsonResponse({"removed": cache.invalidate_by_tag("products")})
