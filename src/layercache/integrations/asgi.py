"""A pure ASGI middleware caching whole HTTP responses (Starlette, FastAPI, any ASGI app).

```python
from fastapi import FastAPI
from layercache import CacheStack, MemoryLayer
from layercache.integrations.asgi import CacheMiddleware

cache = CacheStack([MemoryLayer(ttl=60)])
app = FastAPI()
app.add_middleware(CacheMiddleware, cache=cache, ttl=30, tags=["products"])
# later, from application code: await cache.invalidate_by_tag("products")
```

The rules (which requests and responses are cached, the key, the stored form) live in
:mod:`layercache.integrations._http`; this module is the ASGI plumbing and the flow. See
``docs/asgi.md`` for the full behaviour.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import functools
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, MutableMapping
from typing import Any

from .. import CacheNamespace, CacheOptions, CacheStack
from . import _http

__all__ = ["CacheMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_EMPTY_REQUEST: Message = {"type": "http.request", "body": b"", "more_body": False}
# Request headers that may keep a request away from the cache (``_http.request_bypass``
# decides); a request without any of them is not read header by header again.
_CHECKED_REQUEST_HEADERS = frozenset({b"authorization", b"cookie", b"range", b"cache-control"})
# Keys remembered per middleware (request parts -> key); past this many it starts over.
_KEY_MEMO = 4096


# The fetch flow's markers and helpers, shared with the aiohttp middleware.
_Pass = _http.Pass
_AppFailed = _http.AppFailed
_seconds = _http.seconds


class _Run:
    """One run of the application for a cache fetch: buffers the response until it is known
    to be storable; a response that is not is forwarded to the client as it comes (when the
    request that started the fetch still waits for it) and never shared."""

    def __init__(self, middleware: CacheMiddleware, scope: Scope, receive: Receive, send: Send):
        self.middleware = middleware
        self.scope = scope
        self.receive = receive
        self.send = send
        self.head = scope["method"] == "HEAD"
        self.waiting = False  # the request is waiting in cache.get (a foreground fetch)
        self.forwarding = False  # the response goes to the client as the app sends it
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.raw_start: Message | None = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.verdict: _http.Verdict | None = None
        self.complete = False
        self.decided: asyncio.Event | None = None
        self.task: asyncio.Task[None] | None = None
        self.produced: Any = None  # what this run's fetch returned (stored or not)
        self.ran = False  # the app ran to a complete buffered response for this request
        self.read_first = False

    # -- the application side ---------------------------------------------------------------

    async def app_receive(self) -> Message:
        if not self.read_first:
            self.read_first = True
            return dict(_EMPTY_REQUEST)
        if self.waiting or self.forwarding:
            while True:
                message = await self.receive()
                if message.get("type") != "http.request":
                    return message
        await asyncio.Event().wait()  # a background refresh has no client: wait until done
        raise AssertionError("unreachable")  # pragma: no cover

    async def app_send(self, message: Message) -> None:
        if self.forwarding:
            await self._forward(message)
            return
        if self.decided is not None and self.decided.is_set():
            return  # decided not storable with nobody to forward to: dropped
        kind = message.get("type")
        if kind == "http.response.start" and self.raw_start is None:
            self.raw_start = message
            self.status = int(message["status"])
            self.headers = [
                (bytes(name).decode("latin-1").lower(), bytes(value).decode("latin-1"))
                for name, value in message.get("headers", ())
            ]
            mw = self.middleware
            self.verdict = verdict = _http.response_verdict(
                self.status,
                self.headers,
                ttl=mw.ttl,
                statuses=mw.statuses,
                respect_cache_control=mw.respect_cache_control,
                max_body_size=mw.max_body_size,
            )
            if verdict.reason is not None and not verdict.error:
                await self._pass()
            return
        if kind == "http.response.body" and self.raw_start is not None:
            body = bytes(message.get("body", b""))
            self.size += len(body)
            if self.size > self.middleware.max_body_size:
                self.chunks.append(body)
                if self.verdict is not None and self.verdict.error:
                    self.verdict = _http.Verdict(0.0, "body too large")
                await self._pass(more_body=bool(message.get("more_body", False)))
                return
            if body:
                self.chunks.append(body)
            if not message.get("more_body", False):
                self.complete = True
                self._decide()
            return
        # A message the cache does not keep (trailers, pathsend, ...): not storable.
        self.verdict = _http.Verdict(0.0, f"message {kind}")
        await self._pass(extra=message)

    def _decide(self) -> None:
        assert self.decided is not None
        self.decided.set()

    async def _pass(self, *, more_body: bool = True, extra: Message | None = None) -> None:
        """Not storable: forward what came so far (and from now on) to a waiting client."""
        if self.waiting:
            self.forwarding = True
            self._decide()
            if self.raw_start is not None:
                await self._forward(self.raw_start)
            chunks, self.chunks = self.chunks, []
            for index, chunk in enumerate(chunks):
                last = index == len(chunks) - 1
                await self._forward(
                    {
                        "type": "http.response.body",
                        "body": chunk,
                        "more_body": more_body or not last,
                    }
                )
            if extra is not None:
                await self._forward(extra)
            return
        self._decide()

    async def _forward(self, message: Message) -> None:
        kind = message.get("type")
        if kind == "http.response.start":
            message = dict(message)
            message["headers"] = _with_x_cache(message.get("headers", ()), b"MISS")
        elif kind == "http.response.body" and self.head:
            if message.get("more_body", False):
                return
            message = {"type": "http.response.body", "body": b"", "more_body": False}
        await self.send(message)

    async def run_app(self) -> None:
        scope = self.scope
        if self.head:
            scope = dict(scope)
            scope["method"] = "GET"  # the stored response is the GET one, with its body
        await self.middleware.app(scope, self.app_receive, self.app_send)
        if not self.forwarding and not self.complete:
            self.verdict = _http.Verdict(0.0, "incomplete response")
            self._decide()

    # -- the cache side ---------------------------------------------------------------------

    async def fetch(self, base: str, expected: tuple[str, ...]) -> Any:
        """The fetcher: run the application, return what belongs under the key being read
        (``base`` plus the vary part of ``expected``)."""
        if self.decided is not None:
            # This request already ran the application once: never twice, never shared.
            return _Pass(self)
        self.decided = decided = asyncio.Event()
        self.task = task = asyncio.create_task(self.run_app())
        waiter = asyncio.create_task(decided.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            waiter.cancel()
            if not self.forwarding:
                task.cancel()
            raise
        waiter.cancel()
        if not decided.is_set():  # the application ended before any decision: it raised
            if task.cancelled():
                raise asyncio.CancelledError
            self.produced = failed = _AppFailed(self, task.exception())
            raise failed
        if self.forwarding:
            self.produced = passed = _Pass(self)
            return passed
        verdict = self.verdict
        if verdict is not None and verdict.error and self.complete:
            self.ran = True
            self.middleware.detach(task)
            self.produced = failed = _AppFailed(self, None)
            raise failed
        if verdict is None or verdict.reason is not None or not self.complete:
            if self.waiting:
                self.ran = self.complete
                self.middleware.detach(task)
            else:
                task.cancel()  # a background refresh that cannot be stored: stop it
            self.produced = passed = _Pass(self)
            return passed
        self.ran = True
        # What the application does after its last message (Starlette's background tasks)
        # goes on without holding the response back.
        self.middleware.detach(task)
        return await self._storable(base, expected, verdict)

    async def _storable(self, base: str, expected: tuple[str, ...], verdict: _http.Verdict) -> Any:
        mw = self.middleware
        now = mw.clock()
        entry = _http.freeze(
            self.status, self.headers, b"".join(self.chunks), ttl=verdict.ttl, now=now
        )
        if verdict.vary == expected:
            self.produced = entry
            return entry
        if not expected:
            # First sight of a varying response: the plain key holds a marker naming the
            # varied headers, and the response goes under its varied key.
            varied = base + _http.vary_suffix(verdict.vary, self.headers_in())
            await mw.cache.set(
                mw.key_of(varied), entry, ttl=verdict.ttl, tags=mw.tags_for(self.scope)
            )
            self.produced = marker = _http.vary_marker(verdict.vary, ttl=verdict.ttl, now=now)
            return marker
        # The application changed what it varies on: forget the marker, store nothing now.
        await mw.cache.delete(mw.key_of(base))
        self.produced = passed = _Pass(self)
        return passed

    def headers_in(self) -> list[tuple[str, str]]:
        return _request_headers(self.scope)

    def buffered_response(self) -> tuple[int, list[tuple[str, str]], bytes]:
        return self.status, self.headers, b"".join(self.chunks)


class _Ready:
    """A stored response in the form a hit sends: raw header pairs (``Age`` and ``X-Cache``
    are added per request), the body as bytes, and when it goes stale."""

    __slots__ = ("body", "expires", "headers", "size", "status", "stored_at")

    def __init__(self, stored: _http.StoredResponse) -> None:
        self.status = stored.status
        self.headers = [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in _http.ready_headers(stored)
        ]
        self.body = stored.body
        self.stored_at = stored.stored_at
        self.expires = stored.stored_at + stored.ttl
        self.size = 2 * len(stored.body) + 256


def _request_headers(scope: Scope) -> list[tuple[str, str]]:
    return [
        (bytes(name).decode("latin-1").lower(), bytes(value).decode("latin-1"))
        for name, value in scope.get("headers", ())
    ]


def _with_x_cache(headers: Iterable[Any], value: bytes) -> list[tuple[bytes, bytes]]:
    out = [
        (bytes(name), bytes(v))
        for name, v in headers
        if bytes(name).lower() not in (b"x-cache", b"x-cache-bypass")
    ]
    out.append((b"x-cache", value))
    return out


class CacheMiddleware:
    """Cache whole ``GET``/``HEAD`` responses of an ASGI application in a layercache stack.

    Args:
        app: The ASGI application.
        cache: A :class:`~layercache.CacheStack` (or a namespace of one).
        ttl: Freshness lifetime of stored responses, in seconds (one number for every layer).
        tags: Tags stored with each response: an iterable of ``str``, or a callable
            ``(scope) -> tags``; ``await cache.invalidate_by_tag(tag)`` drops them.
        key_resolver: ``(scope) -> str | None`` added to the key; ``None`` means "do not cache
            this request". With a resolver, requests carrying ``Authorization`` or ``Cookie``
            are cached too: the resolver owns identity (return the user's id, or ``None``).
        prefix: Key prefix (default ``"http"``).
        exclude: Paths never cached (a path matches itself and everything under it,
            ``"/admin"`` covers ``/admin/users``), or a predicate ``(scope) -> bool``.
        statuses: Statuses that may be stored (default
            :data:`~layercache.integrations._http.CACHEABLE_STATUSES`; within 200-399 only).
        max_body_size: Larger responses are passed through, not stored (default 1 MiB).
        respect_cache_control: Take the TTL from the response's ``s-maxage`` (first) or
            ``max-age``; 0 means not stored.
        stale_while_revalidate: Seconds after expiry during which the stale response is served
            (``X-Cache: STALE``) while one background request refreshes it.
        stale_if_error: Seconds after expiry during which the stale response replaces a failed
            application call (an exception or a 5xx).
        vary_on_host: Put the ``Host`` header in the key (default ``True``: an application
            serving several hosts never mixes them, and a forged ``Host`` cannot poison the
            entry others read).
        clock: Wall clock for ``Age`` and staleness; give the stack's own ``clock`` if it has
            a fake one (tests).
    """

    def __init__(
        self,
        app: ASGIApp,
        cache: CacheStack | CacheNamespace,
        ttl: float | _dt.timedelta = 60,
        tags: Iterable[str] | Callable[[Scope], Iterable[str]] | None = None,
        key_resolver: Callable[[Scope], str | None] | None = None,
        *,
        prefix: str = "http",
        exclude: Iterable[str] | Callable[[Scope], bool] | None = None,
        statuses: Collection[int] | None = None,
        max_body_size: int = _http.DEFAULT_MAX_BODY_SIZE,
        respect_cache_control: bool = False,
        stale_while_revalidate: float | _dt.timedelta | None = None,
        stale_if_error: float | _dt.timedelta | None = None,
        vary_on_host: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
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
        self._tasks: set[asyncio.Task[None]] = set()
        self.tags = checked.tags
        self.key_resolver = key_resolver
        self.prefix = checked.prefix
        self.exclude_paths = checked.exclude_paths
        self.exclude_predicate = checked.exclude_predicate
        self.statuses = checked.statuses
        self.max_body_size = checked.max_body_size
        self.respect_cache_control = respect_cache_control
        self.clock = clock
        self.vary_on_host = vary_on_host
        self.options: dict[str, Any] = checked.options
        # The hit path's allocations, made once: the options of every cache.get (with the
        # static tags; tags computed per request go as keyword options), the keys of the
        # requests seen, and the ready-to-send form of the responses read.
        self._options: CacheOptions | None = checked.stable_options
        self._keys: dict[tuple[Any, ...], tuple[str, str]] = {}
        self._ready = _http.ReadyMemo()

    # -- keys -------------------------------------------------------------------------------

    def excluded(self, scope: Scope) -> bool:
        if self.exclude_predicate is not None:
            return bool(self.exclude_predicate(scope))
        return _http.path_excluded(self.exclude_paths, scope.get("path", ""))

    def base_key(self, scope: Scope, request: Any) -> str | None:
        """The key text before any vary part (``None``: the key resolver declined)."""
        extra: str | None = None
        if self.key_resolver is not None:
            extra = self.key_resolver(request)
            if extra is None:
                return None
            if not isinstance(extra, str):
                raise TypeError(f"key_resolver must return a str, not {type(extra).__name__}")
        host: bytes | None = None
        if self.vary_on_host:
            for name, value in scope.get("headers", ()):
                if bytes(name).lower() == b"host":
                    host = bytes(value)
                    break
        return self._keys_for(scope, host, extra)[0]

    def _keys_for(self, scope: Scope, host: bytes | None, extra: str | None) -> tuple[str, str]:
        """The base key text of a request and its plain key (remembered per request parts:
        the same URL, host and key resolver part always build the same key)."""
        root_path = scope.get("root_path", "")
        path = scope.get("path", "")
        raw_query = scope.get("query_string", b"")
        memo: tuple[Any, ...] | None = (root_path, path, raw_query, host, extra)
        try:
            return self._keys[memo]  # type: ignore[index]
        except KeyError:
            pass
        except TypeError:  # an unhashable part (a bytearray query): not remembered
            memo = None
        query = bytes(raw_query).decode("latin-1")
        base = _http.build_key(
            self.prefix,
            root_path + path,
            query,
            host=None if host is None else host.decode("latin-1").lower(),
            extra=extra,
        )
        keys = (base, self.key_of(base))
        if memo is not None:
            if len(self._keys) >= _KEY_MEMO:
                self._keys.clear()
            self._keys[memo] = keys
        return keys

    def key_of(self, text: str) -> str:
        """A key text (base key, maybe plus a vary part) as a valid cache key."""
        return _http.finish_key(self.prefix, text)

    def detach(self, task: asyncio.Task[None]) -> None:
        """Let an application run finish on its own (its failures are reported)."""
        if task.done():
            self._report_task(task)
            return
        self._tasks.add(task)
        task.add_done_callback(self._report_task)

    def _report_task(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _report(self.cache, task.exception(), "asgi.application")  # type: ignore[arg-type]

    def tags_for(self, request: Any) -> tuple[str, ...]:
        return _http.tags_of(self.tags, request)

    # -- ASGI -------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if method != "GET" and method != "HEAD":
            await self.app(scope, receive, send)
            return
        # One pass over the raw headers: the Host, and whether any header may keep the
        # request away from the cache (only then are they all decoded and checked).
        host: bytes | None = None
        checked = False
        for name, value in scope.get("headers", ()):
            if name.__class__ is not bytes:
                name = bytes(name)
            lowered = name.lower()
            if lowered in _CHECKED_REQUEST_HEADERS:
                checked = True
            elif lowered == b"host" and host is None:
                host = bytes(value)
        if (
            checked
            and _http.request_bypass(
                method, _request_headers(scope), credentials_allowed=self.key_resolver is not None
            )
            is not None
        ) or self.excluded(scope):
            await self.app(scope, receive, send)
            return
        extra: str | None = None
        if self.key_resolver is not None:
            extra = self.key_resolver(scope)
            if extra is None:
                await self.app(scope, receive, send)
                return
            if not isinstance(extra, str):
                raise TypeError(f"key_resolver must return a str, not {type(extra).__name__}")
        base, key = self._keys_for(scope, host if self.vary_on_host else None, extra)
        await self._serve(scope, receive, send, base, key)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, base: str, key: str) -> None:
        run = _Run(self, scope, receive, send)
        cache = self.cache
        options = self._options
        keywords: dict[str, Any] = {}
        if options is None:
            tags = self.tags_for(scope)
            keywords = dict(self.options, tags=tags) if tags else self.options
        expected: tuple[str, ...] = ()
        for _ in range(2):  # the plain key, then (a vary marker) the varied key
            run.waiting = True
            try:
                value = await cache.get(
                    key, functools.partial(run.fetch, base, expected), options=options, **keywords
                )
            except _AppFailed as failed:
                run.waiting = False
                if failed.owner is run:
                    if run.forwarding:
                        await _finish(run)
                    elif failed.error is not None:
                        raise failed.error from None
                    else:
                        await self._send_buffered(run, send)
                    return
                await self._pass_through(scope, receive, send)
                return
            except Exception as exc:
                # The cache failed (a layer, a timeout): the response must not.
                run.waiting = False
                _report(self.cache, exc, key)
                if run.forwarding:
                    await _finish(run)
                elif run.ran:
                    await self._send_buffered(run, send)
                else:
                    await self._pass_through(scope, receive, send)
                return
            run.waiting = False
            if run.forwarding:
                await _finish(run)
                return
            if value is not None and value is run.produced:
                await self._send_buffered(run, send)
                return
            ready: _Ready | None = self._ready.get(key, value)
            if ready is None and not isinstance(value, _Pass):
                stored = _http.thaw(value)
                if stored is not None:
                    ready = _Ready(stored)
                    self._ready.put(key, value, ready, ready.size)
            if ready is not None:
                now = self.clock()
                age = now - ready.stored_at
                headers = ready.headers.copy()
                headers.append((b"age", b"%d" % (age if age > 0 else 0)))
                headers.append((b"x-cache", b"STALE" if now >= ready.expires else b"HIT"))
                await send(
                    {"type": "http.response.start", "status": ready.status, "headers": headers}
                )
                await send(
                    {
                        "type": "http.response.body",
                        "body": b"" if run.head else ready.body,
                        "more_body": False,
                    }
                )
                return
            if isinstance(value, _Pass):
                await self._pass_through(scope, receive, send)
                return
            names = _http.is_vary_marker(value) if not expected else None
            if names is not None:
                expected = names
                key = self.key_of(base + _http.vary_suffix(names, _request_headers(scope)))
                continue
            if value is not None:
                # Foreign or outdated data under the key: drop it; the next request refills.
                await cache.delete(key)
            break
        await self._pass_through(scope, receive, send)

    async def _send_buffered(self, run: _Run, send: Send) -> None:
        if run.raw_start is None:
            raise RuntimeError("the application returned without sending a response")
        status, headers, body = run.buffered_response()
        out = [(n, v) for n, v in headers if n != "x-cache" and n != "x-cache-bypass"]
        out.append(("x-cache", "MISS"))
        await _send(send, status, out, body, run.head)

    async def _pass_through(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the application for this request alone (its response is never stored)."""

        async def send_miss(message: Message) -> None:
            if message.get("type") == "http.response.start":
                message = dict(message)
                message["headers"] = _with_x_cache(message.get("headers", ()), b"MISS")
            await send(message)

        await self.app(scope, receive, send_miss)


async def _finish(run: _Run) -> None:
    assert run.task is not None
    await run.task


async def _send(
    send: Send, status: int, headers: list[tuple[str, str]], body: bytes, head: bool
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else body, "more_body": False})


def _report(cache: Any, exc: BaseException, key: str) -> None:
    _http.report(cache, exc, key, "asgi")
