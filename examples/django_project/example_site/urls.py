"""URLs of the example project."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("page/", views.cached_page),
    path("products/<int:product_id>/", views.product),
    path("products/invalidate/", views.invalidate_products),
]
