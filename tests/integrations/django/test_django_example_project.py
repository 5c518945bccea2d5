"""The example project in examples/django_project, driven by Django's test client."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.core.cache import cache
from django.test import Client


@pytest.fixture
def client() -> Iterator[Client]:
    cache.clear()
    yield Client()
    cache.clear()


def test_cache_page_serves_the_cached_render(client: Client) -> None:
    first = client.get("/page/")
    second = client.get("/page/")
    assert first.status_code == second.status_code == 200
    assert first.content.startswith(b"render #")
    assert second.content == first.content
    cache.clear()
    assert client.get("/page/").content != first.content


def test_low_level_api_and_tag_invalidation(client: Client) -> None:
    first = client.get("/products/1/").json()
    assert client.get("/products/1/").json() == first
    other = client.get("/products/2/").json()
    assert other["lookup"] != first["lookup"]
    assert client.get("/products/invalidate/").json() == {"removed": 2}
    assert client.get("/products/1/").json()["lookup"] > other["lookup"]
