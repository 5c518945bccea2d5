"""The ASGI app that ``python -m bench.http`` serves with uvicorn (one worker).

Routes (every body is the same 1 KiB JSON object, ``bench.fixtures.VALUE_JSON``):

- ``/hard``: a hard-coded JSON response (pre-encoded bytes: the floor of a Starlette route).
- ``/origin/{item}``: uncached; the origin sleeps ``--origin-ms`` (5 ms) and is counted.
- ``/cached/{item}``: the same origin behind ``layercache.integrations.asgi.CacheMiddleware``.
- ``/burst/{item}`` and ``/burst-origin/{item}``: the cached and the uncached route again, each
  behind a counter of requests in flight, for the cold burst (kept off the measured routes so
  the counter costs them nothing).
- ``/_stats``: JSON, per path: origin calls, peak concurrent origin runs, peak requests in flight;
  and whether the middleware is present.

Run it as a module from the repository root: ``python -m bench.http_app --layers memory`` (or
``--layers memory+redis --redis-url URL``); never as ``python bench/http_app.py``, where
``bench/http.py`` would shadow the standard library's ``http``. It binds a free 127.0.0.1 port
itself, listens, then prints ``listening on PORT`` (connections made from then on wait in the
backlog until uvicorn accepts them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from bench.fixtures import VALUE_JSON

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CACHE_TTL = 3600
LAYERS = ("memory", "memory+redis")


def middleware_class() -> Any:
    """``CacheMiddleware`` when the integration exists, else ``None`` (the harness predates it)."""
    try:
        from layercache.integrations.asgi import (  # type: ignore[import-not-found,unused-ignore]
            CacheMiddleware,
        )
    except ImportError:
        return None
    return CacheMiddleware


class Counters:
    """What the bench reads back through ``/_stats``."""

    def __init__(self) -> None:
        self.origin_calls: defaultdict[str, int] = defaultdict(int)
        self.origin_running: defaultdict[str, int] = defaultdict(int)
        self.origin_peak: defaultdict[str, int] = defaultdict(int)
        self.requests_in_flight: defaultdict[str, int] = defaultdict(int)
        self.requests_peak: defaultdict[str, int] = defaultdict(int)

    def as_json(self) -> dict[str, Any]:
        paths = sorted(set(self.origin_calls) | set(self.requests_peak))
        return {
            path: {
                "origin_calls": self.origin_calls.get(path, 0),
                "origin_peak_concurrency": self.origin_peak.get(path, 0),
                "requests_peak_in_flight": self.requests_peak.get(path, 0),
            }
            for path in paths
        }


class InFlight:
    """Pure ASGI wrapper: the peak number of requests in flight per path."""

    def __init__(self, app: ASGIApp, counters: Counters) -> None:
        self.app = app
        self.counters = counters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        counters = self.counters
        counters.requests_in_flight[path] += 1
        counters.requests_peak[path] = max(
            counters.requests_peak[path], counters.requests_in_flight[path]
        )
        try:
            await self.app(scope, receive, send)
        finally:
            counters.requests_in_flight[path] -= 1


def build_stack(layers: str, redis_url: str | None) -> Any:
    """``CacheStack[MemoryLayer]`` or ``CacheStack[MemoryLayer, RedisLayer]``."""
    from layercache import CacheStack, MemoryLayer

    if layers == "memory":
        return CacheStack([MemoryLayer(ttl=CACHE_TTL, max_size=10_000)])
    if layers == "memory+redis":
        if not redis_url:
            raise SystemExit("error: --layers memory+redis needs --redis-url")
        from layercache import RedisLayer

        return CacheStack(
            [
                MemoryLayer(ttl=CACHE_TTL, max_size=10_000),
                RedisLayer(url=redis_url, ttl=CACHE_TTL, prefix="bench-http:"),
            ]
        )
    raise SystemExit(f"error: unknown --layers {layers!r} (choose from {', '.join(LAYERS)})")


def build_app(cache: Any, *, origin_delay: float = 0.005, counters: Counters | None = None) -> Any:
    """The Starlette app; ``cache`` is a ``CacheStack`` (or ``None``: no cached routes)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Mount, Route

    counters = counters if counters is not None else Counters()
    middleware = middleware_class() if cache is not None else None

    async def hard(request: Request) -> Response:
        return Response(VALUE_JSON, media_type="application/json")

    async def origin(request: Request) -> Response:
        path = request.url.path
        counters.origin_calls[path] += 1
        counters.origin_running[path] += 1
        counters.origin_peak[path] = max(counters.origin_peak[path], counters.origin_running[path])
        try:
            await asyncio.sleep(origin_delay)
        finally:
            counters.origin_running[path] -= 1
        return Response(VALUE_JSON, media_type="application/json")

    async def stats(request: Request) -> Response:
        document = {"middleware": middleware is not None, "paths": counters.as_json()}
        return Response(json.dumps(document), media_type="application/json")

    def origin_app() -> Any:
        return Starlette(routes=[Route("/{item}", origin)])

    routes: list[Any] = [
        Route("/hard", hard),
        Route("/origin/{item}", origin),
        Route("/_stats", stats),
        Mount("/burst-origin", app=InFlight(origin_app(), counters)),
    ]
    if middleware is not None:
        routes.append(Mount("/cached", app=middleware(origin_app(), cache, ttl=CACHE_TTL)))
        routes.append(
            Mount("/burst", app=InFlight(middleware(origin_app(), cache, ttl=CACHE_TTL), counters))
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        if cache is None:
            yield
            return
        async with cache:
            yield

    return Starlette(routes=routes, lifespan=lifespan)


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m bench.http_app", description=__doc__)
    parser.add_argument("--layers", choices=LAYERS, default="memory")
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--origin-ms", type=float, default=5.0)
    args = parser.parse_args(argv)

    app = build_app(build_stack(args.layers, args.redis_url), origin_delay=args.origin_ms / 1000)
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only when proto says
    # TCP; without it every response waits ~40 ms on Nagle + delayed ACK (1.4k req/s).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, workers=1, log_level="warning", access_log=False, lifespan="on", backlog=4096
    )
    sock.listen(4096)
    print(f"listening on {port}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
