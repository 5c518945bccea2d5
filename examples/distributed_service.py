"""A service instance whose cache is shared with every other instance (plain asyncio).

Every process of the service builds one Redis client and one ``CacheStack`` at start-up
(:func:`open_instance`) and keeps them for its lifetime:

* ``MemoryLayer`` (L1, per process) in front of ``RedisLayer`` (L2, shared);
* ``RedisSingleFlightCoordinator``: a cold key costs one origin call across all instances;
* ``RedisInvalidationBus`` signed with the secret from ``LAYERCACHE_INVALIDATION_SECRET``: a
  delete, invalidation or clear on one instance drops the keys from every other instance's
  L1 (always announced with a bus), and so does a write (``broadcast_l1_invalidation``, on by
  default with a bus; spelled out below);
* ``RedisTagIndex``: tags are known to every instance, so ``invalidate_by_tag`` anywhere reaches
  keys written anywhere;
* graceful degradation: when Redis fails, requests are served from L1 and the origin; the
  shared tag index and the bus degrade the same way and catch up when Redis is back (see
  docs/distributed.md, "What happens when");
* a key generation stored in Redis: ``bump_generation()`` on one instance retires every key on
  all of them (after a deploy that changes what a cached value looks like).

Two ways to run it, against a Redis you own:

* ``python examples/distributed_service.py redis://127.0.0.1:6379/0`` runs a demo of two
  instances in this one process, sharing a fake database; it writes only under a random
  ``shop-demo-...`` prefix and removes its keys at the end. Exit code 0 when every step behaved
  as described, 1 otherwise.
* ``LAYERCACHE_INVALIDATION_SECRET=... python examples/distributed_service.py
  redis://127.0.0.1:6379/0 --serve 127.0.0.1:8080`` runs one instance as a (line-based TCP)
  service until SIGTERM or SIGINT; start several on different ports and talk to them with
  ``nc 127.0.0.1 8080``: ``product 1``, ``catalogue 7``, ``price 1 25``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from layercache import (
    CacheStack,
    MemoryLayer,
    RedisInvalidationBus,
    RedisLayer,
    RedisSingleFlightCoordinator,
    RedisTagIndex,
)

# -- construction: the part to copy into a service ----------------------------------------------


def make_client(url: str) -> aioredis.Redis:
    """The one Redis client of this process, shared by the layer and every component.

    ``decode_responses`` stays ``False`` (the components store bytes). Short timeouts and a
    single quick retry make a dead Redis fail fast; redis-py's default (10 retries with
    backoff) would stall every request for seconds before graceful degradation can step in.
    """
    return aioredis.Redis.from_url(
        url,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), retries=1),
    )


def build_cache(
    client: aioredis.Redis, *, app: str, secret: str, source_id: str | None = None
) -> CacheStack:
    """This instance's cache; every instance of ``app`` must use the same names and secret.

    Args:
        client: The shared client (never closed by the cache or its components).
        app: Namespace of every Redis key and channel of this deployment.
        secret: The bus's HMAC secret (at least 32 random bytes), the same on every instance.
        source_id: This instance's name on the bus; the default (host:pid:random) is unique,
            which is what matters: a bus ignores messages carrying its own ``source_id``.
    """
    return CacheStack(
        [
            MemoryLayer(ttl=60, max_size=10_000),
            RedisLayer(client=client, prefix=f"{app}:cache:", ttl=3600),
        ],
        single_flight_coordinator=RedisSingleFlightCoordinator(
            client=client, prefix=f"{app}:singleflight"
        ),
        single_flight_lease=30,  # a holder that dies blocks its key for at most this long
        single_flight_timeout=5,  # no caller waits longer for another instance's fetch
        invalidation_bus=RedisInvalidationBus(
            publisher=client,
            channel=f"{app}:invalidation",
            signing_secret=secret,
            source_id=source_id,
        ),
        broadcast_l1_invalidation=True,
        tag_index=RedisTagIndex(
            client=client,
            prefix=f"{app}:tag-index",
            known_keys_shards=16,  # every instance must use the same count
            key_ttl=3600,  # the longest TTL of any layer: index entries cannot outlive it
        ),
        graceful_degradation={"retry_after": 5},
        generation=1,  # the stored generation wins if another instance bumped it already
        generation_cleanup={"batch_size": 500},
    )


class Database:
    """Stands in for the origin (SQL, an HTTP API): a little slow, and it counts its loads.

    Its rows live in a Redis hash (``key``), so that every instance, in any process, sees the
    same data; a real service would query its database here.
    """

    SEED: ClassVar[dict[int, dict[str, Any]]] = {
        1: {"id": 1, "name": "Desk lamp", "price": 30.0, "vendor": 7},
        2: {"id": 2, "name": "Bulb", "price": 4.5, "vendor": 7},
        3: {"id": 3, "name": "Chair", "price": 80.0, "vendor": 9},
    }

    def __init__(self, client: aioredis.Redis, key: str) -> None:
        self._client = client
        self._key = key
        self._seeded = False
        self.loads = 0

    async def _query(self) -> None:
        self.loads += 1
        await asyncio.sleep(0.05)  # the origin's latency
        if not self._seeded:
            for row in self.SEED.values():  # HSETNX: never overwrites another instance's edit
                await self._client.hsetnx(self._key, str(row["id"]), json.dumps(row))
            self._seeded = True

    async def load_product(self, product_id: int) -> dict[str, Any] | None:
        await self._query()
        raw = await self._client.hget(self._key, str(product_id))
        return None if raw is None else dict(json.loads(raw))

    async def load_catalogue(self, vendor_id: int) -> list[dict[str, Any]]:
        await self._query()
        rows = [json.loads(raw) for raw in await self._client.hvals(self._key)]
        return sorted((r for r in rows if r["vendor"] == vendor_id), key=lambda r: r["id"])

    async def save_price(self, product_id: int, price: float) -> int | None:
        """Update a price; returns the product's vendor (``None``: no such product)."""
        product = await self.load_product(product_id)
        if product is None:
            return None
        product["price"] = price
        await self._client.hset(self._key, str(product_id), json.dumps(product))
        return int(product["vendor"])


class ProductService:
    """The application code: reads go through the cache, writes invalidate it."""

    def __init__(self, cache: CacheStack, db: Database) -> None:
        self.cache = cache
        self.db = db

    async def product(self, product_id: int) -> dict[str, Any] | None:
        product: dict[str, Any] | None = await self.cache.get(
            f"product:{product_id}", lambda: self.db.load_product(product_id), tags=["products"]
        )
        return product

    async def catalogue(self, vendor_id: int) -> list[dict[str, Any]]:
        catalogue: list[dict[str, Any]] = await self.cache.get(
            f"vendor:{vendor_id}:catalogue",
            lambda: self.db.load_catalogue(vendor_id),
            tags=[f"vendor:{vendor_id}"],
        )
        return catalogue

    async def update_price(self, product_id: int, price: float) -> bool:
        """Write to the database, then invalidate; every instance drops these keys from its
        L1 (the bus) and from Redis (shared). Returns ``False`` for an unknown product."""
        vendor = await self.db.save_price(product_id, price)
        if vendor is None:
            return False
        await self.cache.delete(f"product:{product_id}")
        await self.cache.invalidate_by_tag(f"vendor:{vendor}")
        return True

    async def release_new_format(self) -> int:
        """After a deploy that changes what cached values look like: retire every key."""
        return await self.cache.bump_generation()


@contextlib.asynccontextmanager
async def open_instance(
    url: str, *, app: str, secret: str, source_id: str | None = None
) -> AsyncIterator[ProductService]:
    """One instance's lifetime: client, cache, service; everything closed on the way out.

    ``async with cache`` subscribes to the bus before the first request (and adopts a
    generation another instance stored); leaving it lets in-flight fetches finish (bounded),
    stops the subscriber and the background tasks and closes the layers. The client is ours
    to close: no component closes a client it was given.
    """
    client = make_client(url)
    try:
        async with build_cache(client, app=app, secret=secret, source_id=source_id) as cache:
            yield ProductService(cache, Database(client, f"{app}:fake-database"))
    finally:
        await client.aclose()


async def handle_connection(
    service: ProductService, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """One client connection: ``product ID``, ``catalogue VENDOR``, ``price ID PRICE``."""
    try:
        while line := await reader.readline():
            match line.decode(errors="replace").split():
                case ["product", product_id] if product_id.isdigit():
                    reply = json.dumps(await service.product(int(product_id)))
                case ["catalogue", vendor_id] if vendor_id.isdigit():
                    reply = json.dumps(await service.catalogue(int(vendor_id)))
                case ["price", product_id, price] if product_id.isdigit():
                    found = await service.update_price(int(product_id), float(price))
                    reply = "ok" if found else "error: no such product"
                case _:
                    reply = "error: product ID | catalogue VENDOR | price ID PRICE"
            writer.write(reply.encode() + b"\n")
            await writer.drain()
    except (ConnectionError, ValueError) as exc:
        writer.write(f"error: {exc}\n".encode())
    finally:
        writer.close()


async def serve(url: str, host: str, port: int) -> None:
    """A service process's main: one instance for the process's lifetime, closed on
    SIGTERM/SIGINT (the cache lets fetches in flight finish and unsubscribes cleanly)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    secret = os.environ["LAYERCACHE_INVALIDATION_SECRET"]  # the same on every instance
    async with open_instance(url, app="shop", secret=secret) as service:
        server = await asyncio.start_server(
            functools.partial(handle_connection, service), host, port
        )
        async with server:
            print(f"serving on {host}:{port}", flush=True)
            await stop.wait()


# -- the demo: two instances in one process ---------------------------------------------------
#
# (Its one extra import is local, so that everything above is the service and nothing else.)


class DemoFailure(Exception):
    """A step did not behave as the demo says it should."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise DemoFailure(message)


async def in_memory(service: ProductService, key: str) -> bool:
    """Whether ``key`` is in this instance's own L1."""
    found = await service.cache.inspect(key)
    return found is not None and "memory" in found.found_in_layers


async def wait_for(predicate: Any, what: str, timeout: float = 5.0) -> None:
    """Bounded polling (the bus is asynchronous: the other instance hears of a change a
    fraction of a millisecond to a few milliseconds later)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            raise DemoFailure(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.005)


async def demo(url: str) -> None:
    import secrets

    secret = os.environ.get("LAYERCACHE_INVALIDATION_SECRET")
    if secret is None:
        secret = secrets.token_hex(32)
        print("LAYERCACHE_INVALIDATION_SECRET is not set: this demo uses a random one-off secret")
    app = f"shop-demo-{secrets.token_hex(4)}"
    async with (
        open_instance(url, app=app, secret=secret, source_id=f"{app}:a") as a,
        open_instance(url, app=app, secret=secret, source_id=f"{app}:b") as b,
    ):

        def loads() -> int:
            return a.db.loads + b.db.loads

        heard: list[tuple[list[str], str]] = []

        def on_invalidation(event: dict[str, Any]) -> None:
            heard.append((event["keys"], event["source_id"]))

        b.cache.on("invalidation", on_invalidation)

        # 1. A cold key requested by 10 callers on each instance: one database load.
        values = await asyncio.gather(*(s.product(1) for s in (a, b) for _ in range(10)))
        expect(all(v == values[0] for v in values), "callers got different values")
        print(f"cold key: 20 concurrent requests on 2 instances -> {loads()} database load(s)")
        expect(loads() == 1, "the cold key was loaded more than once")

        # 2. B holds product 1 and vendor 7's catalogue in its own memory.
        await b.catalogue(7)
        expect(await in_memory(b, "product:1"), "B's L1 does not hold product:1")
        expect(await in_memory(b, "vendor:7:catalogue"), "B's L1 lacks the catalogue")

        # 3. A changes a price: B's L1 copies go away, B reads the new price.
        expect(await a.update_price(1, 25.0), "product 1 is missing")

        async def b_dropped_both() -> bool:
            return not await in_memory(b, "product:1") and not await in_memory(
                b, "vendor:7:catalogue"
            )

        await wait_for(b_dropped_both, "B dropping the changed keys")
        stored = f"v{b.cache.get_generation()}:product:1"  # events carry the stored key
        seen = [(keys, src) for keys, src in heard if stored in keys]
        expect(bool(seen), f"B heard no invalidation of {stored}")
        keys, source = seen[0]
        print(f"instance b saw the invalidation of {keys} from {source.rsplit(':', 1)[-1]}")
        product = await b.product(1)
        expect(product is not None and product["price"] == 25.0, f"B read {product}")
        print(f"instance b now reads price {product['price'] if product else None}")

        # 4. A new generation on A: B moves too, old keys are unreachable (and cleaned up).
        before = b.cache.get_generation()
        generation = await a.release_new_format()

        async def b_moved() -> bool:
            return b.cache.get_generation() == generation

        await wait_for(b_moved, "B adopting the new generation")
        print(f"generation: instance a bumped {before} -> {generation}, instance b follows")
        before_loads = loads()
        await b.product(1)
        expect(loads() == before_loads + 1, "the new generation still served an old key")

        # Leave nothing behind in the Redis we were given.
        await a.cache.clear()
        client = make_client(url)
        try:
            # The shared generation lives outside the cache's prefix (clear() keeps it).
            await client.delete(f"layercache-generation:{app}:invalidation", f"{app}:fake-database")
        finally:
            await client.aclose()
    print("ok: both instances closed cleanly")


def main(argv: list[str]) -> int:
    usage = f"usage: {argv[0]} redis://HOST:PORT/DB [--serve HOST:PORT]"
    if len(argv) == 2:
        try:
            asyncio.run(demo(argv[1]))
        except DemoFailure as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            return 1
        return 0
    if len(argv) == 4 and argv[2] == "--serve":
        host, _, port = argv[3].rpartition(":")
        if not port.isdigit():
            print(usage, file=sys.stderr)
            return 2
        asyncio.run(serve(argv[1], host or "127.0.0.1", int(port)))
        return 0
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
