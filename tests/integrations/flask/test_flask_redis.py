"""The Flask extension with ``LAYERCACHE_URL``: memory + a real Redis, shared by two apps."""

from __future__ import annotations

from typing import Any

from flask import Flask

from layercache import MemoryLayer, SyncRedisLayer
from layercache.integrations.flask import LayerCache


def build(url: str, calls: list[str]) -> tuple[Flask, LayerCache]:
    app = Flask(__name__)
    app.config["LAYERCACHE_URL"] = url
    ext = LayerCache(app)

    @app.get("/report")
    @ext.cached(ttl=60)
    def report() -> str:
        calls.append("report")
        return "expensive"

    return app, ext


def test_layercache_url_builds_memory_and_redis_and_shares_across_apps(redis_clean: Any) -> None:
    calls: list[str] = []
    first_app, first = build(redis_clean.url, calls)
    second_app, second = build(redis_clean.url, calls)
    try:
        with first_app.app_context():
            layers = first.stack.layers
            assert isinstance(layers[0], MemoryLayer)
            assert isinstance(layers[1], SyncRedisLayer)
        miss = first_app.test_client().get("/report")
        assert miss.headers["X-Cache"] == "MISS"
        # Another app (another process in production) finds the response in Redis.
        hit = second_app.test_client().get("/report")
        assert hit.headers["X-Cache"] == "HIT"
        assert hit.get_data(as_text=True) == "expensive"
        assert calls == ["report"]
        assert int(redis_clean.command("DBSIZE")) >= 1
    finally:
        first.close()
        second.close()
