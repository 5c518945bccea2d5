"""A tiny Flask app with cached views and tag-based invalidation.

Run it (memory only, or with Redis behind the memory layer):

    python examples/flask_app.py
    LAYERCACHE_URL=redis://127.0.0.1:6379/0 python examples/flask_app.py

then ``curl -i localhost:5000/products/1`` twice (``X-Cache: MISS`` then ``HIT``),
``curl -X POST localhost:5000/products/1/price -d price=12.5`` (updates and invalidates), and
``curl -i localhost:5000/products/1`` again (``MISS`` with the new price).

With ``LAYERCACHE_URL`` the app also turns on what several worker processes need (e.g.
``LAYERCACHE_URL=... gunicorn -w 4 --preload 'flask_app:create_app()'``): the invalidation bus
(signed with ``LAYERCACHE_SECRET`` when set), the tag index in Redis and single flight, so an
invalidation in one worker reaches every worker's memory layer and a cold page renders once.

The "database" is a SQLite file (``PRODUCTS_DATABASE``, default
``layercache-example-products.sqlite3`` in the temporary directory) that every worker opens: a
price changed through one worker is the price every worker reads, as with a real database
server. (A dict in the module would be one copy per worker: the cache would then be invalidated
correctly everywhere and the other workers would still render their own, old, data.)
"""

from __future__ import annotations

import atexit
import os
import sqlite3
import tempfile
from contextlib import closing
from typing import Any

from flask import Flask, abort, jsonify, request
from flask.typing import ResponseReturnValue

from layercache.integrations.flask import LayerCache

cache = LayerCache()

# The "database", shared by every worker process. ``lookups`` counts this process's reads, to
# show the cache works.
SEED = [(1, "teapot", 20.0), (2, "kettle", 35.0)]
lookups = {"count": 0}


def connect(path: str) -> sqlite3.Connection:
    """A connection to the products database (one per request: cheap for SQLite)."""
    db = sqlite3.connect(path, timeout=5)
    db.row_factory = sqlite3.Row
    return db


def init_db(path: str) -> None:
    """Create and seed the database once; every worker runs this, only the first one writes."""
    with closing(connect(path)) as db, db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS products (id INTEGER PRIMARY KEY, name TEXT, price REAL)"
        )
        db.executemany("INSERT OR IGNORE INTO products VALUES (?, ?, ?)", SEED)


def _product_tags(req: Any) -> list[str]:
    return ["products", f"product:{req.view_args['pid']}"]


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the application (tests pass their own ``config``)."""
    app = Flask(__name__)
    app.config["LAYERCACHE_TTL"] = 60
    app.config["DATABASE"] = os.environ.get(
        "PRODUCTS_DATABASE",
        os.path.join(tempfile.gettempdir(), "layercache-example-products.sqlite3"),
    )
    if os.environ.get("LAYERCACHE_URL"):
        app.config["LAYERCACHE_URL"] = os.environ["LAYERCACHE_URL"]
        # Several workers: tell the others about invalidations (sign them when a secret is
        # set), index tags in Redis (the default with a URL), render a cold page once.
        secret = os.environ.get("LAYERCACHE_SECRET")
        app.config["LAYERCACHE_INVALIDATION_BUS"] = {"SIGNING_SECRET": secret} if secret else True
        app.config["LAYERCACHE_TAG_INDEX"] = "redis"
        app.config["LAYERCACHE_SINGLE_FLIGHT"] = True
    app.config.update(config or {})
    database = app.config["DATABASE"]
    init_db(database)
    cache.init_app(app)

    @app.get("/products")
    @cache.cached(tags=["products"])
    def list_products() -> ResponseReturnValue:
        lookups["count"] += 1
        with closing(connect(database)) as db:
            rows = db.execute("SELECT id, name, price FROM products ORDER BY id").fetchall()
        return jsonify([dict(row) for row in rows])

    @app.get("/products/<int:pid>")
    @cache.cached(ttl=30, tags=_product_tags)
    def show_product(pid: int) -> ResponseReturnValue:
        lookups["count"] += 1
        with closing(connect(database)) as db:
            row = db.execute("SELECT id, name, price FROM products WHERE id = ?", (pid,)).fetchone()
        if row is None:
            abort(404)  # not cached: only 2xx responses are
        return jsonify(dict(row))

    @app.post("/products/<int:pid>/price")
    def set_price(pid: int) -> ResponseReturnValue:
        price = float(request.form["price"])
        with closing(connect(database)) as db, db:  # the inner ``db`` commits
            updated = db.execute("UPDATE products SET price = ? WHERE id = ?", (price, pid))
        if updated.rowcount == 0:
            abort(404)
        # Every cached response showing this product (its page and the list) goes at once, in
        # every worker when the app runs with Redis.
        dropped = cache.invalidate_by_tags([f"product:{pid}", "products"], mode="any")
        return jsonify({"invalidated": dropped})

    return app


if __name__ == "__main__":
    application = create_app()
    atexit.register(cache.close)  # Flask has no shutdown hook: close the stacks at exit
    application.run()
