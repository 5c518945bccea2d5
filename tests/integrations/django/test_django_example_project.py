"""The example project in examples/django_project, driven by Django's test client."""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import cache
from django.test import Client, override_settings

from layercache.integrations.django import LayerCacheBackend


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


@pytest.mark.redis
def test_redis_settings_share_pages_and_invalidate_other_processes(
    redis_clean: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from example_site import settings as example_settings

    monkeypatch.setenv("LAYERCACHE_REDIS_URL", redis_clean.url)
    redis_settings = importlib.reload(example_settings)
    try:
        entry = redis_settings.CACHES["default"]
        assert entry["OPTIONS"]["INVALIDATION_BUS"]
        params = {name: value for name, value in entry.items() if name != "LOCATION"}
        # Stands for a second process: equal settings would share this process's engine, so it
        # gets a bus identity of its own, as another process has.
        bus = {**params["OPTIONS"]["INVALIDATION_BUS"], "SOURCE_ID": "other-process"}
        params["OPTIONS"] = {**params["OPTIONS"], "INVALIDATION_BUS": bus}
        other = LayerCacheBackend(entry["LOCATION"], params)
        with override_settings(CACHES=redis_settings.CACHES):
            try:
                client = Client()
                first = client.get("/page/")
                assert client.get("/page/").content == first.content  # pickled into Redis
                product = client.get("/products/1/").json()
                key = "product:1"
                assert other.get(key) == product
                other.set(key, {"id": 1, "lookup": -1}, tags=["products"])
                # The bus dropped this process's memory copy: the view sees the new value.
                deadline = time.monotonic() + 5
                while client.get("/products/1/").json()["lookup"] != -1:
                    assert time.monotonic() < deadline, "the invalidation never arrived"
                    time.sleep(0.005)
                # The tag index in Redis knows the key the other process wrote.
                assert client.get("/products/invalidate/").json() == {"removed": 1}
            finally:
                cache.shutdown()
                other.shutdown()
    finally:
        monkeypatch.delenv("LAYERCACHE_REDIS_URL")
        importlib.reload(example_settings)
