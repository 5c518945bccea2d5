"""``examples/fastapi_app.py`` through FastAPI's ``TestClient``: alone (memory only), and as two
instances sharing a real Redis (an update on one reaches the other through the bus)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx2")  # what starlette's TestClient uses

from fastapi.testclient import TestClient

from _redis_server import RedisServer
from polling import eventually

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fastapi_app.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("layercache_example_fastapi_app", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the models' annotations through it
    spec.loader.exec_module(module)
    return module


def test_memory_only_reads_once_and_an_update_invalidates(example: ModuleType) -> None:
    db = example.SlowDatabase(delay=0.001)
    with TestClient(example.create_app(database=db)) as client:
        for _ in range(3):
            assert client.get("/products/1").json() == {"id": 1, "name": "teapot", "price": 20.0}
            assert len(client.get("/products").json()) == 3
        client.get("/products/2")
        assert db.reads == {"product:1": 1, "products": 1, "product:2": 1}
        updated = client.put("/products/1", json={"price": 12.5})
        assert updated.json() == {"id": 1, "name": "teapot", "price": 12.5}
        assert client.get("/products/1").json()["price"] == 12.5
        assert client.get("/products").json()[0]["price"] == 12.5
        client.get("/products/2")  # another product's entry is kept
        assert db.reads == {"product:1": 2, "products": 2, "product:2": 1}
        # A missing product is a 404, not cached.
        assert client.get("/products/9").status_code == 404
        assert client.get("/products/9").status_code == 404
        assert db.reads["product:9"] == 2
        assert client.put("/products/9", json={"price": 1}).status_code == 404
        stats = client.get("/stats").json()
        assert stats["hits"] >= 5


@pytest.mark.redis
def test_two_instances_share_redis_and_an_update_reaches_the_other(
    example: ModuleType, redis_clean: RedisServer
) -> None:
    db = example.SlowDatabase(delay=0.001)  # one database server behind both instances
    secret = "example-fastapi-secret-" + "x" * 32
    app_a = example.create_app(redis_clean.url, database=db, secret=secret)
    app_b = example.create_app(redis_clean.url, database=db, secret=secret)
    with TestClient(app_a) as a, TestClient(app_b) as b:
        for client in (a, b, a, b):
            assert client.get("/products/1").json()["price"] == 20.0
            assert [p["id"] for p in client.get("/products").json()] == [1, 2, 3]
        # b found a's entries in Redis: one database read per key.
        assert db.reads == {"product:1": 1, "products": 1}

        assert a.put("/products/1", json={"price": 12.5}).status_code == 200
        # b's memory layer drops its copies when the bus message arrives (milliseconds).
        eventually(
            lambda: b.get("/products/1").json()["price"] == 12.5,
            what="instance b reading the new price",
        )
        assert b.get("/products").json()[0]["price"] == 12.5
        assert a.get("/products/1").json()["price"] == 12.5
        assert a.get("/products").json()[0]["price"] == 12.5
        # One more read per key for the change, whichever instance made it.
        assert db.reads == {"product:1": 2, "products": 2}
