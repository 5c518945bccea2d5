"""A small products service on FastAPI: cached routes, tag invalidation on update, and several
instances sharing Redis.

Run one instance (memory only):

    pip install 'layercache-py[fastapi]' uvicorn
    python examples/fastapi_app.py --port 8000

then ``curl localhost:8000/products/1`` twice (the second answer is immediate: the slow
"database" is read once), ``curl -X PUT localhost:8000/products/1 -H 'content-type:
application/json' -d '{"price": 12.5}'`` (updates and invalidates ``product:1`` and
``products``) and ``curl localhost:8000/products/1`` again (the new price).

Several instances (processes, machines) share Redis: each keeps a memory layer in front of
Redis, and an update on one instance drops the entry from every instance's memory layer
through the invalidation bus, within milliseconds:

    python examples/fastapi_app.py --port 8000 --redis redis://127.0.0.1:6379/0
    python examples/fastapi_app.py --port 8001 --redis redis://127.0.0.1:6379/0

(or ``LAYERCACHE_URL=redis://... uvicorn fastapi_app:app``; ``LAYERCACHE_SECRET`` signs the bus
messages). A cold product requested on both instances at once is read from the database once
(the Redis single-flight coordinator). ``create_app(redis_url, database=...)`` builds an
instance in code (the tests build two, sharing one database).

The "database" is a dict in the process with a delay on every call, and counts its reads.
With several processes each has its own copy here: a real service would share a database
server, so the invalidation makes every instance read the new row.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel

from layercache import CacheStack, MemoryLayer
from layercache.integrations.fastapi import cached


class Product(BaseModel):
    id: int
    name: str
    price: float


class ProductUpdate(BaseModel):
    name: str | None = None
    price: float | None = None


class SlowDatabase:
    """The products table: a dict, a delay on every call, and a count of reads per key."""

    def __init__(self, delay: float = 0.05) -> None:
        self.delay = delay
        self.rows = {
            1: Product(id=1, name="teapot", price=20.0),
            2: Product(id=2, name="kettle", price=35.0),
            3: Product(id=3, name="mug", price=6.5),
        }
        self.reads: Counter[str] = Counter()

    async def get(self, product_id: int) -> Product | None:
        self.reads[f"product:{product_id}"] += 1
        await asyncio.sleep(self.delay)
        row = self.rows.get(product_id)
        return None if row is None else row.model_copy()

    async def all(self) -> list[Product]:
        self.reads["products"] += 1
        await asyncio.sleep(self.delay)
        return [row.model_copy() for row in self.rows.values()]

    async def update(self, product_id: int, change: ProductUpdate) -> Product | None:
        await asyncio.sleep(self.delay)
        row = self.rows.get(product_id)
        if row is None:
            return None
        self.rows[product_id] = row = row.model_copy(update=change.model_dump(exclude_none=True))
        return row.model_copy()


def build_stack(redis_url: str | None, secret: str | None = None) -> CacheStack:
    """Memory only, or memory in front of Redis with what several instances need: the
    invalidation bus, the tag index in Redis and single flight across instances."""
    memory = MemoryLayer(ttl=60, max_size=10_000)
    if not redis_url:
        return CacheStack([memory])
    from layercache.redis import (
        RedisInvalidationBus,
        RedisLayer,
        RedisSingleFlightCoordinator,
        RedisTagIndex,
    )

    return CacheStack(
        [memory, RedisLayer(url=redis_url, ttl=600)],
        invalidation_bus=RedisInvalidationBus(
            url=redis_url, channel="products:invalidation", signing_secret=secret
        ),
        tag_index=RedisTagIndex(url=redis_url, prefix="products:tags"),
        single_flight_coordinator=RedisSingleFlightCoordinator(
            url=redis_url, prefix="products:single-flight"
        ),
    )


def get_cache(request: Request) -> CacheStack:
    """The dependency giving routes the application's stack (built by the lifespan)."""
    cache: CacheStack = request.app.state.cache
    return cache


def get_database(request: Request) -> SlowDatabase:
    database: SlowDatabase = request.app.state.database
    return database


Cache = Annotated[CacheStack, Depends(get_cache)]
Database = Annotated[SlowDatabase, Depends(get_database)]


def create_app(
    redis_url: str | None = None,
    *,
    database: SlowDatabase | None = None,
    secret: str | None = None,
) -> FastAPI:
    """One instance of the service: memory only without ``redis_url``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The stack lives as long as the application: subscribed to the bus before the first
        # request, closed (connections, bus) at shutdown.
        async with build_stack(redis_url, secret) as stack:
            app.state.cache = stack
            yield

    app = FastAPI(title="products", lifespan=lifespan)
    app.state.database = database if database is not None else SlowDatabase()

    @app.get("/products")
    @cached(get_cache, prefix="products", ttl=30, tags=["products"])
    async def list_products(cache: Cache, db: Database) -> list[Product]:
        return await db.all()

    @app.get("/products/{product_id}")
    @cached(
        get_cache,
        prefix="product",
        ttl=60,
        tags=lambda args: [f"product:{args['product_id']}"],
    )
    async def product(product_id: int, cache: Cache, db: Database) -> Product:
        found = await db.get(product_id)
        if found is None:  # raised, not cached: the next request asks the database again
            raise HTTPException(status_code=404, detail="no such product")
        return found

    @app.put("/products/{product_id}")
    async def update_product(
        product_id: int, change: ProductUpdate, cache: Cache, db: Database
    ) -> Product:
        updated = await db.update(product_id, change)
        if updated is None:
            raise HTTPException(status_code=404, detail="no such product")
        # Every instance drops both: the product's page and the list showing it.
        await cache.invalidate_by_tags([f"product:{product_id}", "products"])
        return updated

    @app.get("/stats")
    async def stats(cache: Cache, db: Database) -> dict[str, Any]:
        metrics = cache.get_metrics()
        return {"hits": metrics.hits, "misses": metrics.misses, "reads": dict(db.reads)}

    return app


# ``uvicorn fastapi_app:app``: configured from the environment.
app = create_app(
    os.environ.get("LAYERCACHE_URL") or None, secret=os.environ.get("LAYERCACHE_SECRET")
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--redis", help="a Redis URL shared by every instance")
    args = parser.parse_args()
    import uvicorn

    url = args.redis or os.environ.get("LAYERCACHE_URL") or None
    uvicorn.run(
        create_app(url, secret=os.environ.get("LAYERCACHE_SECRET")), host=args.host, port=args.port
    )


if __name__ == "__main__":
    main()
