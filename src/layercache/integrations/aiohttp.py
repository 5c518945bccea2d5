"""An aiohttp middleware caching whole HTTP responses in a layercache stack.

```python
from aiohttp import web
from layercache import CacheStack, MemoryLayer
from layercache.integrations.aiohttp import cache_middleware

cache = CacheStack([MemoryLayer(ttl=60)])
app = web.Application(middlewares=[cache_middleware(cache, ttl=30, tags=["products"])])
# later, from application code: await cache.invalidate_by_tag("products")
```

The same rules as :class:`layercache.integrations.asgi.CacheMiddleware` (they live in
:mod:`layercache.integrations._http`); this module is the aiohttp plumbing. See
``docs/aiohttp.md``.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import functools
import time
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any

try:
    from aiohttp import web
    from aiohttp.abc import AbstractStreamWriter
    from multidict import CIMultiDict
except ImportError as exc:  # pragma: no cover - exercised by a test that hides aiohttp
    raise ImportError(
        "layercache.integrations.aiohttp needs aiohttp: pip install 'layercache-py[aiohttp]'"
    ) from exc

from .. import CacheNamespace, CacheOptions, CacheStack
from . import _http

__all__ = ["cache_middleware"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]

_OPERATION = "aiohttp"


class _Streamed(Exception):
    """Raised into a handler that starts a response of its own where nobody may receive it
    (a background refresh, or a ``HEAD`` request run as ``GET``)."""

    def __init__(self) -> None:
        super().__init__("a streamed response cannot be cached here")


class _Guard(AbstractStreamWriter):
    """The writer of the request a handler gets from the middleware.

    A handler that streams (``StreamResponse.prepare``) writes through it: the response is
    marked ``X-Cache: MISS`` and goes to the client, and the run is told at once that it
    will not be stored (so requests that joined the fetch do not wait for the stream). Where
    no client may receive it (``abort``), the handler is stopped before a byte is written.
    """

    def __init__(
        self, real: AbstractStreamWriter, on_start: Callable[[], bool] | None = None
    ) -> None:
        self.real = real
        self.on_start = on_start
        self.aborted = False
        self.started = False
        # What aiohttp sets up before the headers, applied to the real writer only once the
        # response is allowed to start (an aborted one must leave it untouched).
        self._length: int | None = real.length
        self._chunking = False
        self._compression: tuple[str, int | None] | None = None

    @property
    def buffer_size(self) -> int:
        return self.real.buffer_size if self.started else 0

    @buffer_size.setter
    def buffer_size(self, value: int) -> None:
        if self.started:
            self.real.buffer_size = value

    @property
    def output_size(self) -> int:
        return self.real.output_size if self.started else 0

    @output_size.setter
    def output_size(self, value: int) -> None:
        if self.started:
            self.real.output_size = value

    @property
    def length(self) -> int | None:
        return self.real.length if self.started else self._length

    @length.setter
    def length(self, value: int | None) -> None:
        if self.started:
            self.real.length = value
        else:
            self._length = value

    @property
    def transport(self) -> asyncio.WriteTransport | None:
        return self.real.transport

    async def write_headers(self, status_line: str, headers: CIMultiDict[str]) -> None:
        if self.aborted or (self.on_start is not None and not self.on_start()):
            self.aborted = True
            raise _Streamed
        self.started = True
        real = self.real
        real.length = self._length
        if self._compression is not None:
            real.enable_compression(*self._compression)
        if self._chunking:
            real.enable_chunking()
        headers.popall("X-Cache", None)
        headers.popall(_http.BYPASS_HEADER, None)
        headers["X-Cache"] = "MISS"
        await real.write_headers(status_line, headers)

    def send_headers(self) -> None:
        if self.started:
            self.real.send_headers()

    async def write(self, chunk: bytes | bytearray | memoryview) -> None:
        if not self.started:
            raise _Streamed
        await self.real.write(chunk)

    async def write_eof(self, chunk: bytes = b"") -> None:
        if not self.started:
            raise _Streamed
        await self.real.write_eof(chunk)

    async def drain(self) -> None:
        if self.started:
            await self.real.drain()

    def enable_compression(self, encoding: str = "deflate", strategy: int | None = None) -> None:
        if self.started:
            self.real.enable_compression(encoding, strategy)
        else:
            self._compression = (encoding, strategy)

    def enable_chunking(self) -> None:
        if self.started:
            self.real.enable_chunking()
        else:
            self._chunking = True


def _guarded(request: web.Request, guard: _Guard, method: str | None = None) -> web.Request | None:
    """A copy of ``request`` (as ``method``) whose responses are written through ``guard``;
    ``None`` when aiohttp refuses the copy (the body was already read)."""
    try:
        clone = request.clone() if method is None else request.clone(method=method)
    except RuntimeError:
        return None
    # aiohttp has no public way to watch a handler start its own response: the copy's writer
    # (an attribute aiohttp lets be set) is the guard, which forwards to the real one.
    clone._payload_writer = guard
    return clone


async def _call(handler: Handler, request: web.Request) -> web.StreamResponse:
    return await handler(request)


def _response_headers(response: web.StreamResponse) -> list[tuple[str, str]]:
    headers = [(name.lower(), value) for name, value in response.headers.items()]
    # Cookies join the headers only when aiohttp sends the response: count them here.
    headers.extend(("set-cookie", morsel.OutputString()) for morsel in response.cookies.values())
    return headers


def _mark_miss(response: web.StreamResponse) -> web.StreamResponse:
    if not response.prepared:
        response.headers.popall("X-Cache", None)
        response.headers.popall(_http.BYPASS_HEADER, None)
        response.headers["X-Cache"] = "MISS"
    return response


class _Run:
    """One request through the cache: at most one handler run, for a fetch."""

    def __init__(self, settings: _Settings, request: web.Request, handler: Handler) -> None:
        self.settings = settings
        self.request = request
        self.handler = handler
        self.head = request.method == "HEAD"
        self.waiting = False  # the request waits in cache.get (a foreground fetch)
        self.streaming = False  # the handler streams its response to this request's client
        self.decided: asyncio.Event | None = None
        self.task: asyncio.Task[web.StreamResponse] | None = None
        self.response: web.StreamResponse | None = None  # the handler's own, not streamed
        self.raised: BaseException | None = None  # an HTTPException below 500 it raised
        self.rerun = False  # the handler stopped without a response this request may use
        self.produced: Any = None  # what this run's fetch returned (stored or not)
        self.ran = False

    def _started(self) -> bool:
        """The handler starts streaming: allowed for a waiting ``GET`` only."""
        if self.head or not self.waiting:
            return False
        self.streaming = True
        assert self.decided is not None
        self.decided.set()
        return True

    def _pass(self) -> _http.Pass:
        self.produced = passed = _http.Pass(self)
        return passed

    async def fetch(self, base: str, expected: tuple[str, ...]) -> Any:
        """The fetcher: run the handler (a ``HEAD`` as ``GET``), return what belongs under
        the key being read (``base`` plus the vary part of ``expected``)."""
        if self.decided is not None:
            return _http.Pass(self)  # this request already ran the handler: never twice
        self.decided = decided = asyncio.Event()
        clone = _guarded(self.request, _Guard(self.request.writer, self._started), "GET")
        if clone is None:
            self.rerun = True
            return self._pass()
        self.task = task = asyncio.create_task(_call(self.handler, clone))
        waiter = asyncio.create_task(decided.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            waiter.cancel()
            if not self.streaming:
                task.cancel()
            raise
        waiter.cancel()
        if self.streaming:
            return self._pass()
        if task.cancelled():
            raise asyncio.CancelledError
        error = task.exception()
        if isinstance(error, _Streamed):
            self.rerun = True
            return self._pass()
        if isinstance(error, web.HTTPException) and error.status < 500:
            self.raised = error
            return self._pass()
        if error is not None:
            self.produced = failed = _http.AppFailed(self, error)
            raise failed
        response = task.result()
        if response.prepared or not isinstance(response, web.Response):
            # Prepared elsewhere, or a stream never prepared: this request's alone.
            self.response = response
            self.ran = True
            return self._pass()
        self.response = response
        self.ran = True
        return await self._verdict(response, base, expected)

    async def _verdict(self, response: web.Response, base: str, expected: tuple[str, ...]) -> Any:
        settings = self.settings
        headers = _response_headers(response)
        body = response.body
        verdict = _http.response_verdict(
            response.status,
            headers,
            ttl=settings.ttl,
            statuses=settings.statuses,
            respect_cache_control=settings.respect_cache_control,
            max_body_size=settings.max_body_size,
        )
        if verdict.error:
            self.produced = failed = _http.AppFailed(self, None)
            raise failed
        if verdict.reason is not None:
            return self._pass()
        if body is None:
            body = b""
        if not isinstance(body, bytes | bytearray) or len(body) > settings.max_body_size:
            return self._pass()  # a payload object (file, iterator), or too large
        now = settings.clock()
        entry = _http.freeze(response.status, headers, bytes(body), ttl=verdict.ttl, now=now)
        if verdict.vary == expected:
            self.produced = entry
            return entry
        cache = settings.cache
        if not expected:
            # First sight of a varying response: the plain key holds a marker naming the
            # varied headers, and the response goes under its varied key.
            varied = base + _http.vary_suffix(verdict.vary, _request_headers(self.request))
            await cache.set(
                settings.key_of(varied),
                entry,
                ttl=verdict.ttl,
                tags=settings.tags_for(self.request),
            )
            self.produced = marker = _http.vary_marker(verdict.vary, ttl=verdict.ttl, now=now)
            return marker
        # The handler changed what it varies on: forget the marker, store nothing now.
        await cache.delete(settings.key_of(base))
        return self._pass()


def _request_headers(request: web.BaseRequest) -> list[tuple[str, str]]:
    return [(name.lower(), value) for name, value in request.headers.items()]


class _Settings:
    """The middleware's options, checked once."""

    def __init__(
        self,
        cache: CacheStack | CacheNamespace,
        ttl: float | _dt.timedelta,
        tags: Iterable[str] | Callable[[web.Request], Iterable[str]] | None,
        key_resolver: Callable[[web.Request], str | None] | None,
        prefix: str,
        exclude: Iterable[str] | Callable[[web.Request], bool] | None,
        statuses: Collection[int] | None,
        max_body_size: int,
        respect_cache_control: bool,
        stale_while_revalidate: float | _dt.timedelta | None,
        stale_if_error: float | _dt.timedelta | None,
        vary_on_host: bool,
        clock: Callable[[], float],
    ) -> None:
        self.cache = cache
        checked = _http.check_settings(
            ttl=ttl,
            tags=tags,
            prefix=prefix,
            exclude=exclude,
            statuses=statuses,
            max_body_size=max_body_size,
            stale_while_revalidate=stale_while_revalidate,
            stale_if_error=stale_if_error,
        )
        self.ttl = checked.ttl
        self.tags = checked.tags
        self.key_resolver = key_resolver
        self.prefix = checked.prefix
        self.exclude_paths = checked.exclude_paths
        self.exclude_predicate = checked.exclude_predicate
        self.statuses = checked.statuses
        self.max_body_size = checked.max_body_size
        self.respect_cache_control = respect_cache_control
        self.vary_on_host = vary_on_host
        self.clock = clock
        self.options = checked.options
        # Built once for every cache.get (tags computed per request go as keyword options),
        # and the checked, decoded form of the responses read (see _http.ReadyMemo).
        self.stable_options: CacheOptions | None = checked.stable_options
        self.ready = _http.ReadyMemo()

    def excluded(self, request: web.Request) -> bool:
        if self.exclude_predicate is not None:
            return bool(self.exclude_predicate(request))
        return _http.path_excluded(self.exclude_paths, request.path)

    def base_key(self, request: web.Request) -> str | None:
        """The key text before any vary part (``None``: the key resolver declined)."""
        extra: str | None = None
        if self.key_resolver is not None:
            extra = self.key_resolver(request)
            if extra is None:
                return None
            if not isinstance(extra, str):
                raise TypeError(f"key_resolver must return a str, not {type(extra).__name__}")
        host: str | None = None
        if self.vary_on_host:
            value = request.headers.get("Host")
            host = None if value is None else value.lower()
        query = request.rel_url.raw_query_string
        return _http.build_key(self.prefix, request.path, query, host=host, extra=extra)

    def key_of(self, text: str) -> str:
        return _http.finish_key(self.prefix, text)

    def tags_for(self, request: web.Request) -> tuple[str, ...]:
        return _http.tags_of(self.tags, request)


async def _pass_through(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Run the handler for this request alone (its response is never stored), ``MISS``."""
    clone = _guarded(request, _Guard(request.writer))
    return _mark_miss(await handler(request if clone is None else clone))


class _Ready:
    """A stored response as a hit sends it (``Age`` and ``X-Cache`` are added per request)."""

    __slots__ = ("body", "expires", "headers", "size", "status", "stored_at")

    def __init__(self, stored: _http.StoredResponse) -> None:
        self.status = stored.status
        self.headers = _http.ready_headers(stored)
        self.body = stored.body
        self.stored_at = stored.stored_at
        self.expires = stored.stored_at + stored.ttl
        self.size = 2 * len(stored.body) + 256


def _hit(ready: _Ready, now: float) -> web.Response:
    headers: CIMultiDict[str] = CIMultiDict(ready.headers)
    age = now - ready.stored_at
    headers.add("age", str(int(age)) if age > 0 else "0")
    headers.add("x-cache", "STALE" if now >= ready.expires else "HIT")
    return web.Response(status=ready.status, headers=headers, body=ready.body)


async def _serve(
    settings: _Settings,
    request: web.Request,
    handler: Handler,
    base: str,
    headers: list[tuple[str, str]],
) -> web.StreamResponse:
    run = _Run(settings, request, handler)
    cache = settings.cache
    options = settings.stable_options
    keywords: dict[str, Any] = {}
    if options is None:
        tags = settings.tags_for(request)
        keywords = dict(settings.options, tags=tags) if tags else settings.options
    text = base
    expected: tuple[str, ...] = ()
    for _ in range(2):  # the plain key, then (a vary marker) the varied key
        key = settings.key_of(text)
        run.waiting = True
        try:
            value = await cache.get(
                key, functools.partial(run.fetch, base, expected), options=options, **keywords
            )
        except _http.AppFailed as failed:
            run.waiting = False
            if failed.owner is not run:
                return await _pass_through(request, handler)
            if failed.error is not None:
                raise failed.error from None
            assert run.response is not None
            return _mark_miss(run.response)
        except Exception as exc:
            # The cache failed (a layer, a timeout): the response must not.
            run.waiting = False
            _http.report(cache, exc, key, _OPERATION)
            return await _own_or_pass(run, request, handler)
        run.waiting = False
        if value is not None and value is run.produced and not isinstance(value, _http.Pass):
            assert run.response is not None
            return _mark_miss(run.response)
        if isinstance(value, _http.Pass):
            if value.owner is run:
                return await _own_or_pass(run, request, handler)
            return await _pass_through(request, handler)
        ready: _Ready | None = settings.ready.get(key, value)
        if ready is None:
            stored = _http.thaw(value)
            if stored is not None:
                ready = _Ready(stored)
                settings.ready.put(key, value, ready, ready.size)
        if ready is not None:
            return _hit(ready, settings.clock())
        names = _http.is_vary_marker(value) if not expected else None
        if names is not None:
            expected = names
            text = base + _http.vary_suffix(names, headers)
            continue
        if value is not None:
            # Foreign or outdated data under the key: drop it; the next request refills.
            await cache.delete(key)
        break
    return await _own_or_pass(run, request, handler)


async def _own_or_pass(run: _Run, request: web.Request, handler: Handler) -> web.StreamResponse:
    """What this request gets when nothing is served from the cache: its own handler run's
    response (streamed, buffered or raised), else a run of the handler of its own."""
    if run.streaming:
        assert run.task is not None
        return await run.task
    if run.raised is not None:
        raise run.raised
    if run.response is not None:
        return _mark_miss(run.response)
    return await _pass_through(request, handler)


def cache_middleware(
    cache: CacheStack | CacheNamespace,
    ttl: float | _dt.timedelta = 60,
    tags: Iterable[str] | Callable[[web.Request], Iterable[str]] | None = None,
    key_resolver: Callable[[web.Request], str | None] | None = None,
    *,
    prefix: str = "http",
    exclude: Iterable[str] | Callable[[web.Request], bool] | None = None,
    statuses: Collection[int] | None = None,
    max_body_size: int = _http.DEFAULT_MAX_BODY_SIZE,
    respect_cache_control: bool = False,
    stale_while_revalidate: float | _dt.timedelta | None = None,
    stale_if_error: float | _dt.timedelta | None = None,
    vary_on_host: bool = True,
    clock: Callable[[], float] = time.time,
) -> Middleware:
    """An aiohttp middleware caching whole ``GET``/``HEAD`` responses in a layercache stack.

    The options are those of :class:`layercache.integrations.asgi.CacheMiddleware`; the
    callables (``tags``, ``key_resolver``, ``exclude``) receive the ``web.Request``.

    Args:
        cache: A :class:`~layercache.CacheStack` (or a namespace of one).
        ttl: Freshness lifetime of stored responses, in seconds.
        tags: Tags stored with each response: an iterable of ``str``, or
            ``(request) -> tags``; ``await cache.invalidate_by_tag(tag)`` drops them.
        key_resolver: ``(request) -> str | None`` added to the key; ``None`` means "do not
            cache this request". With a resolver, requests carrying ``Authorization`` or
            ``Cookie`` are cached too: the resolver owns identity.
        prefix: Key prefix (default ``"http"``).
        exclude: Paths never cached (``"/admin"`` covers ``/admin/users``), or a predicate
            ``(request) -> bool``.
        statuses: Statuses that may be stored (within 200-399 only).
        max_body_size: Larger responses are not stored (default 1 MiB).
        respect_cache_control: Take the TTL from the response's ``s-maxage`` or ``max-age``.
        stale_while_revalidate: Seconds after expiry during which the stale response is
            served (``X-Cache: STALE``) while one background run refreshes it.
        stale_if_error: Seconds after expiry during which the stale response replaces a
            failed handler (an exception or a 5xx).
        vary_on_host: Put the ``Host`` header in the key (default ``True``).
        clock: Wall clock for ``Age`` and staleness (the stack's own when it has a fake one).
    """
    settings = _Settings(
        cache,
        ttl,
        tags,
        key_resolver,
        prefix,
        exclude,
        statuses,
        max_body_size,
        respect_cache_control,
        stale_while_revalidate,
        stale_if_error,
        vary_on_host,
        clock,
    )

    @web.middleware
    async def layercache_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        method = request.method
        if method != "GET" and method != "HEAD":
            return await handler(request)
        headers = _request_headers(request)
        if (
            _http.request_bypass(
                method, headers, credentials_allowed=settings.key_resolver is not None
            )
            is not None
            or "Upgrade" in request.headers  # a websocket (or other protocol) handshake
            or settings.excluded(request)
        ):
            return await handler(request)
        base = settings.base_key(request)
        if base is None:
            return await handler(request)
        return await _serve(settings, request, handler, base, headers)

    return layercache_middleware
