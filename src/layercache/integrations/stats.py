"""The stats endpoint: ``get_stats()`` as JSON, and a live HTML dashboard (ASGI, WSGI, Django).

```python
from fastapi import FastAPI
from layercache import CacheStack, MemoryLayer
from layercache.integrations.stats import stats_asgi_app

cache = CacheStack([MemoryLayer(ttl=60)])
app = FastAPI()
app.mount("/cache-stats", stats_asgi_app(cache, token="s3cret"))
```

``GET`` with ``Accept: application/json`` or ``?format=json`` answers everything
``cache.get_stats()`` holds as JSON (plus ``time``, the server's wall clock); any other ``GET``
answers one self-contained HTML page (inline script and style, no external asset, a strict
``Content-Security-Policy`` with a per-response nonce) that polls that JSON every ``refresh``
seconds. ``HEAD`` is answered like ``GET`` without a body; other methods get 405.

Only the stack's public API is used: ``get_stats()``, and ``on("hit")`` / ``off("hit")`` for
the top keys when ``show_keys=True`` (a bounded space-saving count of 100 keys). With
``show_keys=False`` (the default) no key ever appears in the JSON or the page: the degradation
history's error texts are reduced to the error's type, since an error's text may quote a key.
See ``docs/stats-dashboard.md``.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import math
import re
import secrets
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any, Protocol
from urllib.parse import parse_qsl, quote

from .. import __name__ as _package
from . import _stats_page

__all__ = [
    "StatsASGIApp",
    "StatsEndpoint",
    "StatsWSGIApp",
    "TopKeys",
    "stats_asgi_app",
    "stats_django_view",
    "stats_wsgi_app",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Keys counted by the heavy-hitter summary (``show_keys=True``).
TOP_KEY_COUNTERS = 100
#: Keys listed in the JSON and on the page, most hits first.
TOP_KEYS_SHOWN = 20
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
_ERROR_TYPE = re.compile(r"[A-Za-z_][\w.]*")


class StatsSource(Protocol):
    """What the endpoint needs of a stack: ``CacheStack``, ``SyncCacheStack`` (or a namespace)."""

    def get_stats(self) -> Any: ...

    def on(self, event: str, handler: Callable[[dict[str, Any]], Any]) -> Callable[[], None]: ...

    def off(self, event: str, handler: Callable[[dict[str, Any]], Any]) -> None: ...


class TopKeys:
    """A bounded heavy-hitter count of keys (the space-saving algorithm).

    At most ``capacity`` keys are tracked. A key not tracked when the table is full replaces
    the key with the smallest count and inherits that count (as its possible over-count,
    ``error``). Every key hit more than ``total / capacity`` times is in the table, and its
    count exceeds its true hits by at most its ``error``. Thread-safe.
    """

    def __init__(self, capacity: int = TOP_KEY_COUNTERS) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._counts: dict[str, list[int]] = {}  # key -> [count, error]
        # count -> the keys with that count (a dict as an ordered set), and the smallest count:
        # every update, eviction included, is O(1).
        self._buckets: dict[int, dict[str, None]] = {}
        self._min = 0
        self._lock = threading.Lock()

    def _move(self, key: str, old: int, new: int) -> None:
        buckets = self._buckets
        if old:
            bucket = buckets[old]
            del bucket[key]
            if not bucket:
                del buckets[old]
                if self._min == old:
                    self._min = new
        buckets.setdefault(new, {})[key] = None

    def record(self, key: str) -> None:
        """Count one hit of ``key``."""
        with self._lock:
            counts = self._counts
            slot = counts.get(key)
            if slot is not None:
                slot[0] += 1
                self._move(key, slot[0] - 1, slot[0])
                return
            if len(counts) < self.capacity:
                counts[key] = [1, 0]
                self._move(key, 0, 1)
                self._min = 1
                return
            floor = self._min
            smallest = next(iter(self._buckets[floor]))
            del counts[smallest]
            counts[key] = [floor + 1, floor]
            bucket = self._buckets[floor]
            del bucket[smallest]
            if not bucket:
                del self._buckets[floor]
                self._min = floor + 1
            self._buckets.setdefault(floor + 1, {})[key] = None

    def top(self, limit: int = TOP_KEYS_SHOWN) -> list[dict[str, Any]]:
        """The ``limit`` keys with the most hits: ``{"key", "hits", "error"}``, most first."""
        with self._lock:
            items = [(key, slot[0], slot[1]) for key, slot in self._counts.items()]
        items.sort(key=lambda item: (-item[1], item[0]))
        return [{"key": k, "hits": hits, "error": err} for k, hits, err in items[:limit]]

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()
            self._buckets.clear()
            self._min = 0

    def __len__(self) -> int:
        return len(self._counts)


def _plain(value: Any) -> Any:
    """Dataclasses, mappings and sequences as JSON data (a non-finite float is ``None``)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def error_type(text: str | None) -> str | None:
    """``"ConnectionError('... key ...')"`` -> ``"ConnectionError"``: the type without the text."""
    if text is None:
        return None
    match = _ERROR_TYPE.match(text)
    return match.group(0) if match else "error"


def _rate(hits: Any, misses: Any) -> float:
    total = hits + misses
    return hits / total if total else 0.0


def _check_token(token: str | None) -> bytes | None:
    if token is None:
        return None
    if not isinstance(token, str) or not token:
        raise ValueError("token must be a non-empty str or None")
    if any(ord(ch) < 0x21 or ord(ch) > 0x7E for ch in token):
        raise ValueError("token must be printable ASCII without spaces (it travels in a header)")
    return token.encode("ascii")


class StatsEndpoint:
    """The framework-free part: options, the JSON snapshot, the page and request handling.

    ``stats_asgi_app``, ``stats_wsgi_app`` and ``stats_django_view`` wrap one of these.
    ``close()`` unsubscribes the top-keys counter from the stack (``show_keys=True`` only).
    """

    def __init__(
        self,
        cache: StatsSource,
        *,
        token: str | None = None,
        show_keys: bool = False,
        refresh: float = 2.0,
        title: str = "layercache",
    ) -> None:
        if not callable(getattr(cache, "get_stats", None)):
            raise TypeError("cache must be a CacheStack or SyncCacheStack (it has no get_stats)")
        if isinstance(refresh, bool) or not isinstance(refresh, (int, float)):
            raise ValueError("refresh must be a number of seconds")
        if not math.isfinite(refresh) or not 0.1 <= refresh <= 3600:
            raise ValueError("refresh must be within 0.1 and 3600 seconds")
        if not isinstance(title, str) or not title or len(title) > 200:
            raise ValueError("title must be a non-empty str of at most 200 characters")
        self.cache = cache
        self._token = _check_token(token)
        self.show_keys = bool(show_keys)
        self.refresh = float(refresh)
        self.title = title
        self.top_keys: TopKeys | None = None
        self._unsubscribe: Callable[[], None] | None = None
        if self.show_keys:
            self.top_keys = TopKeys()
            self._unsubscribe = cache.on("hit", self._on_hit)

    def _on_hit(self, payload: dict[str, Any]) -> None:
        key = payload.get("key")
        if isinstance(key, str) and self.top_keys is not None:
            self.top_keys.record(key)

    def close(self) -> None:
        """Stop counting hits per key (the stack keeps no reference to this endpoint)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    # -- data ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything ``get_stats()`` holds as JSON data, plus ``time``, the overall
        ``hit_rate`` and each layer's ``hit_rate`` (both computed from the same snapshot,
        with ``get_hit_rate()``'s definitions), and ``top_keys`` when ``show_keys``."""
        stats = self.cache.get_stats()
        data: dict[str, Any] = {"time": time.time()}
        data.update(_plain(stats))
        metrics = data.get("metrics") or {}
        data["hit_rate"] = _rate(metrics.get("hits", 0), metrics.get("misses", 0))
        for layer in (metrics.get("layers") or {}).values():
            layer["hit_rate"] = _rate(layer.get("hits", 0), layer.get("misses", 0))
        if not self.show_keys:
            for event in data.get("degradations") or ():
                if isinstance(event, dict) and "error" in event:
                    event["error"] = error_type(event["error"])
        bounds = getattr(sys.modules[_package], "LATENCY_BUCKETS", None)
        if bounds is not None:
            data["latency_buckets"] = _plain(bounds)
        data["show_keys"] = self.show_keys
        data["refresh"] = self.refresh
        data["title"] = self.title
        if self.top_keys is not None:
            data["top_keys"] = self.top_keys.top()
        return data

    def json_body(self) -> bytes:
        return json.dumps(self.snapshot(), separators=(",", ":"), allow_nan=False).encode()

    def page(self, json_url: str, nonce: str, token: str | None) -> bytes:
        config = {
            "json_url": json_url,
            "refresh": self.refresh,
            "token": token,
            "title": self.title,
            "show_keys": self.show_keys,
            "initial": self.snapshot(),
        }
        return _stats_page.render(self.title, nonce, config).encode()

    # -- requests --------------------------------------------------------------------------

    def authorized(self, authorization: str | None, query_token: str | None) -> bool:
        expected = self._token
        if expected is None:
            return True
        if authorization is not None:
            scheme, _, credential = authorization.strip().partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(
                credential.strip().encode("utf-8", "surrogateescape"), expected
            ):
                return True
        return query_token is not None and hmac.compare_digest(
            query_token.encode("utf-8", "surrogateescape"), expected
        )

    def respond(
        self,
        method: str,
        path: str,
        query: str,
        headers: Iterable[tuple[str, str]],
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """``(status, headers, body)`` for one request. ``path`` is the path the client asked
        for (mount prefix included, decoded); ``headers`` are ``(lower-case name, value)``."""
        common = [
            ("cache-control", "no-store"),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
        ]
        if method not in ("GET", "HEAD"):
            return self._small(405, "method not allowed\n", [*common, ("allow", "GET, HEAD")])
        authorization: str | None = None
        accept = ""
        for name, value in headers:
            if name == "authorization":
                authorization = value
            elif name == "accept":
                accept = f"{accept},{value}" if accept else value
        params = parse_qsl(query, keep_blank_values=True)
        query_token = next((v for k, v in params if k == "token"), None)
        if not self.authorized(authorization, query_token):
            return self._small(
                401, "unauthorized\n", [*common, ("www-authenticate", 'Bearer realm="layercache"')]
            )
        fmt = next((v for k, v in params if k == "format"), None)
        wants_json = fmt == "json" or (fmt is None and "application/json" in accept.lower())
        if wants_json:
            body = self.json_body()
            out = [
                ("content-type", "application/json"),
                ("content-security-policy", "default-src 'none'; frame-ancestors 'none'"),
                *common,
            ]
        else:
            nonce = secrets.token_urlsafe(18)
            json_url = quote(path.encode("utf-8", "surrogateescape"), safe=_PATH_SAFE)
            json_url = f"{json_url or '/'}?format=json"
            body = self.page(json_url, nonce, self._token.decode() if self._token else None)
            out = [
                ("content-type", "text/html; charset=utf-8"),
                ("content-security-policy", csp(nonce)),
                ("x-frame-options", "DENY"),
                *common,
            ]
        out.append(("content-length", str(len(body))))
        return 200, out, b"" if method == "HEAD" else body

    @staticmethod
    def _small(
        status: int, text: str, headers: list[tuple[str, str]]
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        body = text.encode()
        return (
            status,
            [
                ("content-type", "text/plain; charset=utf-8"),
                ("content-length", str(len(body))),
                *headers,
            ],
            body,
        )


def csp(nonce: str) -> str:
    """The dashboard's policy: nothing loads but the inline script and style carrying
    ``nonce``, and the JSON polls to the same origin."""
    return (
        "default-src 'none'; "
        f"script-src 'nonce-{nonce}'; "
        f"style-src 'nonce-{nonce}'; "
        "connect-src 'self'; img-src 'none'; font-src 'none'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


# -- ASGI -----------------------------------------------------------------------------------


class StatsASGIApp:
    """An ASGI 3 application serving the stats JSON and dashboard (see the module)."""

    def __init__(self, endpoint: StatsEndpoint) -> None:
        self.endpoint = endpoint

    def close(self) -> None:
        self.endpoint.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if kind != "http":
            if kind == "websocket":
                await receive()
                await send({"type": "websocket.close", "code": 1003})
            return
        root = str(scope.get("root_path") or "")
        path = str(scope.get("path") or "")
        full = path if path.startswith(root) else root + path
        query = bytes(scope.get("query_string") or b"").decode("latin-1")
        headers = [
            (bytes(name).decode("latin-1").lower(), bytes(value).decode("latin-1"))
            for name, value in scope.get("headers") or ()
        ]
        status, out, body = self.endpoint.respond(
            str(scope.get("method", "GET")), full, query, headers
        )
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(n.encode("latin-1"), v.encode("latin-1")) for n, v in out],
            }
        )
        await send({"type": "http.response.body", "body": body})


def stats_asgi_app(
    cache: StatsSource,
    *,
    token: str | None = None,
    show_keys: bool = False,
    refresh: float = 2.0,
    title: str = "layercache",
) -> StatsASGIApp:
    """The stats JSON and dashboard as an ASGI app: ``app.mount("/cache-stats", ...)``."""
    return StatsASGIApp(
        StatsEndpoint(cache, token=token, show_keys=show_keys, refresh=refresh, title=title)
    )


# -- WSGI -----------------------------------------------------------------------------------

_REASONS = {200: "OK", 401: "Unauthorized", 405: "Method Not Allowed"}


class StatsWSGIApp:
    """A WSGI application serving the stats JSON and dashboard (see the module)."""

    def __init__(self, endpoint: StatsEndpoint) -> None:
        self.endpoint = endpoint

    def close(self) -> None:
        self.endpoint.close()

    def __call__(
        self, environ: Mapping[str, Any], start_response: Callable[..., Any]
    ) -> list[bytes]:
        raw = str(environ.get("SCRIPT_NAME", "")) + str(environ.get("PATH_INFO", ""))
        # WSGI strings carry the request's bytes as latin-1 characters.
        path = raw.encode("latin-1", "replace").decode("utf-8", "surrogateescape")
        headers = []
        if "HTTP_AUTHORIZATION" in environ:
            headers.append(("authorization", str(environ["HTTP_AUTHORIZATION"])))
        if "HTTP_ACCEPT" in environ:
            headers.append(("accept", str(environ["HTTP_ACCEPT"])))
        status, out, body = self.endpoint.respond(
            str(environ.get("REQUEST_METHOD", "GET")),
            path,
            str(environ.get("QUERY_STRING", "")),
            headers,
        )
        start_response(f"{status} {_REASONS.get(status, '')}", out)
        return [body]


def stats_wsgi_app(
    cache: StatsSource,
    *,
    token: str | None = None,
    show_keys: bool = False,
    refresh: float = 2.0,
    title: str = "layercache",
) -> StatsWSGIApp:
    """The stats JSON and dashboard as a WSGI app (Flask: ``DispatcherMiddleware``)."""
    return StatsWSGIApp(
        StatsEndpoint(cache, token=token, show_keys=show_keys, refresh=refresh, title=title)
    )


# -- Django ---------------------------------------------------------------------------------


def stats_django_view(
    cache: StatsSource,
    *,
    token: str | None = None,
    show_keys: bool = False,
    refresh: float = 2.0,
    title: str = "layercache",
) -> Callable[[Any], Any]:
    """The stats JSON and dashboard as a Django view: ``path("cache-stats/", view)``.

    CSRF-exempt (it changes nothing; other methods than GET/HEAD get 405). ``view.endpoint``
    is the :class:`StatsEndpoint` (``view.endpoint.close()`` stops the top-keys count).
    """
    try:
        from django.http import HttpResponse  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "stats_django_view needs Django: pip install layercache-py[django]"
        ) from exc
    endpoint = StatsEndpoint(cache, token=token, show_keys=show_keys, refresh=refresh, title=title)

    def view(request: Any) -> Any:
        headers = []
        authorization = request.META.get("HTTP_AUTHORIZATION")
        if authorization is not None:
            headers.append(("authorization", str(authorization)))
        accept = request.META.get("HTTP_ACCEPT")
        if accept is not None:
            headers.append(("accept", str(accept)))
        status, out, body = endpoint.respond(
            str(request.method),
            str(request.path),
            str(request.META.get("QUERY_STRING", "")),
            headers,
        )
        response = HttpResponse(body, status=status)
        for name, value in out:
            response[name] = value
        return response

    view.csrf_exempt = True  # type: ignore[attr-defined]
    view.endpoint = endpoint  # type: ignore[attr-defined]
    return view
