"""Flask extension: a ``SyncCacheStack`` per application and a ``@cached`` decorator for views.

```python
from flask import Flask
from layercache.integrations.flask import LayerCache

cache = LayerCache()

def create_app() -> Flask:
    app = Flask(__name__)
    app.config["LAYERCACHE_URL"] = "redis://localhost:6379/0"  # absent: memory only
    cache.init_app(app)
    return app

@app.get("/products/<int:pid>")
@cache.cached(ttl=60, tags=lambda req: [f"product:{req.view_args['pid']}"])
def product(pid: int) -> dict[str, object]: ...
```

Configuration read by ``init_app`` when no ``stack`` is given:

- ``LAYERCACHE_URL``: a Redis URL (``redis://``, ``rediss://``, ``unix://``); the stack is
  ``[MemoryLayer, RedisLayer(url=...)]``. Absent or empty: ``[MemoryLayer]`` only.
- ``LAYERCACHE_TTL``: default lifetime in seconds of cached responses (and of the layers the
  extension builds). Default 300.
- ``LAYERCACHE_PREFIX``: prefix of the keys of cached views. Default ``"flask"``.
- ``LAYERCACHE_MEMORY_MAX_SIZE``: bound of the in-process layer, in entries. Default 10 000.
- ``LAYERCACHE_MAX_BODY_SIZE``: larger response bodies are served but not cached. Default 8 MiB.
- ``LAYERCACHE_STACK_OPTIONS``: a mapping of extra ``SyncCacheStack`` keyword arguments.

Flask has no application-shutdown hook (``teardown_appcontext`` runs after every request), so
the extension registers nothing per request: call ``ext.close()`` when the process shuts down
(e.g. from ``atexit`` or your WSGI server's worker-exit hook) to close the stacks it built. A
stack passed in by the caller is the caller's to close.
"""

from __future__ import annotations

import contextvars
import hashlib
import threading
from collections.abc import Callable, Collection, Iterable, Mapping
from functools import wraps
from typing import Any, TypeVar, cast
from urllib.parse import quote, urlencode

try:
    from flask import Flask, Request, Response, current_app, has_app_context, request
except ImportError as exc:  # pragma: no cover - exercised by a test that hides flask
    raise ImportError(
        "layercache.integrations.flask needs Flask: pip install 'layercache-py[flask]'"
    ) from exc

from .._keys import validate_key, validate_prefix
from .._sync.stack import SyncCacheStack
from ..layers.memory import MemoryLayer

__all__ = ["LayerCache"]

F = TypeVar("F", bound=Callable[..., Any])

EXTENSION_NAME = "layercache"
DEFAULT_TTL: float = 300
DEFAULT_PREFIX = "flask"
DEFAULT_MEMORY_MAX_SIZE = 10_000
DEFAULT_MAX_BODY_SIZE = 8 * 1024 * 1024
_CACHED_METHODS = frozenset({"GET", "HEAD"})
_CREDENTIAL_HEADERS = ("Authorization", "Cookie")
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
# Characters kept verbatim when re-quoting the decoded path: the RFC 3986 path characters.
# Re-quoting keeps keys printable (``request.path`` is percent-decoded and may hold controls).
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


class _Uncacheable:
    """Marker a fetch returns for a response that must not be stored (nor shared)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<uncacheable response>"


_UNCACHEABLE = _Uncacheable()


def _is_cacheable_value(value: Any) -> bool:
    return value is not _UNCACHEABLE


class _AppState:
    """What ``init_app`` stores in ``app.extensions["layercache"]``."""

    __slots__ = ("extension", "max_body_size", "prefix", "stack", "ttl")

    def __init__(
        self,
        extension: LayerCache,
        stack: SyncCacheStack,
        *,
        ttl: float | None,
        prefix: str,
        max_body_size: int,
    ) -> None:
        self.extension = extension
        self.stack = stack
        self.ttl = ttl
        self.prefix = prefix
        self.max_body_size = max_body_size


class LayerCache:
    """Flask extension giving each application a ``SyncCacheStack`` and cached views.

    Follows Flask's extension convention: ``LayerCache(app)`` or ``ext = LayerCache()`` then
    ``ext.init_app(app)`` for every application (per-application state lives in
    ``app.extensions["layercache"]``).

    Args:
        app: The application to initialise right away (optional).
        stack: A ready ``SyncCacheStack`` shared by every application this extension is
            initialised on. Without it, ``init_app`` builds one per application from
            ``app.config`` (see the module documentation).
    """

    def __init__(self, app: Flask | None = None, *, stack: SyncCacheStack | None = None) -> None:
        if stack is not None and not isinstance(stack, SyncCacheStack):
            raise TypeError(
                f"stack must be a SyncCacheStack (Flask views are synchronous), "
                f"not {type(stack).__name__}"
            )
        self._stack = stack
        self._app = app
        self._owned: list[SyncCacheStack] = []
        self._lock = threading.Lock()
        if app is not None:
            self.init_app(app)

    # ------------------------------------------------------------------ setup

    def init_app(self, app: Flask) -> None:
        """Attach the extension to ``app`` (builds its stack from ``app.config`` if needed).

        Raises:
            ValueError: an invalid configuration value.
            RuntimeError: ``app`` already has a layercache extension.
        """
        if EXTENSION_NAME in app.extensions:
            raise RuntimeError("this application already has a layercache extension")
        config = app.config
        ttl = _config_ttl(config.get("LAYERCACHE_TTL", DEFAULT_TTL))
        prefix = config.get("LAYERCACHE_PREFIX", DEFAULT_PREFIX)
        validate_prefix(prefix)
        max_body_size = config.get("LAYERCACHE_MAX_BODY_SIZE", DEFAULT_MAX_BODY_SIZE)
        if not isinstance(max_body_size, int) or max_body_size < 0:
            raise ValueError(
                f"LAYERCACHE_MAX_BODY_SIZE must be a non-negative int, not {max_body_size!r}"
            )
        stack = self._stack
        if stack is None:
            stack = _build_stack(config, ttl)
            with self._lock:
                self._owned.append(stack)
        app.extensions[EXTENSION_NAME] = _AppState(
            self, stack, ttl=ttl, prefix=prefix, max_body_size=max_body_size
        )

    @property
    def stack(self) -> SyncCacheStack:
        """The stack of the current application (or of the only one this extension knows).

        Raises:
            RuntimeError: outside an application context with no way to tell which
                application's stack is meant, or the application was not initialised.
        """
        return self._state().stack

    def close(self) -> None:
        """Close the stacks this extension built from configuration. Idempotent.

        A stack passed to the constructor belongs to the caller and is left open.
        """
        with self._lock:
            owned, self._owned = self._owned, []
        errors: list[BaseException] = []
        for stack in owned:
            try:
                stack.close()
            except Exception as exc:  # close the others before reporting
                errors.append(exc)
        if errors:
            raise errors[0]

    def _state(self) -> _AppState:
        if has_app_context():
            app = cast(Flask, current_app._get_current_object())  # type: ignore[attr-defined]
        elif self._app is not None:
            app = self._app
        elif self._stack is not None:
            raise RuntimeError(
                "layercache: no application context; use `with app.app_context():` "
                "(the extension was not bound to one application)"
            )
        else:
            raise RuntimeError(
                "layercache: working outside of an application context; "
                "use `with app.app_context():`"
            )
        state = app.extensions.get(EXTENSION_NAME)
        if not isinstance(state, _AppState) or state.extension is not self:
            raise RuntimeError(
                f"layercache: the application {app.name!r} was not initialised with this "
                "extension (call ext.init_app(app))"
            )
        return state

    # ------------------------------------------------------------------ views

    def cached(
        self,
        ttl: float | None = None,
        tags: Iterable[str] | Callable[[Request], Iterable[str]] = (),
        key_resolver: Callable[[Request], str] | None = None,
        *,
        cache_authenticated: bool = False,
        statuses: Collection[int] | None = None,
    ) -> Callable[[F], F]:
        """Decorator caching a view's status, headers and body.

        Only ``GET`` and ``HEAD`` requests are cached. The key is the method, the full path and
        the query string with its parameters sorted by name (``?b=2&a=1`` and ``?a=1&b=2`` share
        an entry), plus ``key_resolver(request)`` when given. Concurrent requests for the same
        cold key run the view once (the stack's single-flight). Responses carry
        ``X-Cache: HIT`` when served from the cache and ``X-Cache: MISS`` when the view ran.

        Never cached: responses to requests carrying ``Authorization`` or ``Cookie`` (unless
        ``cache_authenticated=True``, in which case ``key_resolver`` should tell users apart),
        statuses outside ``statuses`` (default: 2xx), responses setting cookies, responses with
        ``Cache-Control: no-store`` or ``private``, ``Vary: *``, streamed or pass-through
        responses (``send_file``) and bodies over ``LAYERCACHE_MAX_BODY_SIZE``. Other ``Vary``
        headers are not part of the key: add what they name to ``key_resolver``.

        The view runs on the stack's fetch thread (bounded by ``fetch_timeout``) inside a copy
        of the request's context, so ``request``, ``g`` and ``current_app`` work as usual.

        Args:
            ttl: Lifetime in seconds (default: ``LAYERCACHE_TTL``).
            tags: Tags stored with the response, or a callable ``(request) -> tags``;
                ``ext.stack.invalidate_by_tag(tag)`` drops every response carrying one.
            key_resolver: ``(request) -> str`` appended to the key.
            cache_authenticated: Also cache responses to requests carrying credentials.
            statuses: Status codes that may be cached (default: 200-299).
        """
        allowed: Callable[[int], bool]
        if statuses is None:

            def allowed(status: int) -> bool:
                return 200 <= status < 300

        else:
            frozen = frozenset(statuses)
            if not all(isinstance(s, int) for s in frozen):
                raise ValueError(f"statuses must be ints, not {statuses!r}")

            def allowed(status: int) -> bool:
                return status in frozen

        if ttl is not None and (not isinstance(ttl, int | float) or ttl <= 0):
            raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
        tag_fn: Callable[[Request], Iterable[str]] | None = None
        static_tags: tuple[str, ...] = ()
        if callable(tags):
            tag_fn = tags
        elif isinstance(tags, str):
            raise ValueError("tags must be an iterable of str, not a single str")
        else:
            static_tags = tuple(tags)

        def decorate(view: F) -> F:
            @wraps(view)
            def wrapper(*args: Any, **kwargs: Any) -> Response:
                def run_view() -> Response:
                    return current_app.make_response(view(*args, **kwargs))

                if request.method not in _CACHED_METHODS or (
                    not cache_authenticated
                    and any(name in request.headers for name in _CREDENTIAL_HEADERS)
                ):
                    return run_view()
                state = self._state()
                # The real object, not the proxy: resolvers may keep it past the request.
                req = cast(Request, request._get_current_object())  # type: ignore[attr-defined]
                key = _request_key(state.prefix, req, key_resolver)
                opts: dict[str, Any] = {"should_cache": _is_cacheable_value}
                effective_ttl = ttl if ttl is not None else state.ttl
                if effective_ttl is not None:
                    opts["ttl"] = effective_ttl
                opts["tags"] = static_tags if tag_fn is None else tuple(tag_fn(req))
                # The stack may run the fetch on one of its threads (fetch_timeout): carry the
                # request's context variables (Flask's request and app contexts) there.
                context = contextvars.copy_context()
                ran: list[Response] = []

                def fetch() -> Any:
                    response = context.run(run_view)
                    ran.append(response)
                    return _freeze(response, allowed, state.max_body_size)

                value = state.stack.get(key, fetch, **opts)
                if ran:
                    response = ran[0]  # this request ran the view: serve its own response
                    response.headers["X-Cache"] = "MISS"
                    return response
                if value is _UNCACHEABLE or not _valid_payload(value):
                    # Another request's uncacheable response (e.g. one setting a cookie) is
                    # never shared: run the view for this request too. A stored value of
                    # another shape (foreign data) is dropped so the next request refills it.
                    if value is not _UNCACHEABLE:
                        state.stack.delete(key)
                    response = run_view()
                    response.headers["X-Cache"] = "MISS"
                    return response
                return _thaw(value)

            return cast(F, wrapper)

        return decorate


# ---------------------------------------------------------------------- helpers


def _config_ttl(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"LAYERCACHE_TTL must be a positive number of seconds, not {value!r}")
    return float(value)


def _build_stack(config: Mapping[str, Any], ttl: float | None) -> SyncCacheStack:
    max_size = config.get("LAYERCACHE_MEMORY_MAX_SIZE", DEFAULT_MEMORY_MAX_SIZE)
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
        raise ValueError(f"LAYERCACHE_MEMORY_MAX_SIZE must be a positive int, not {max_size!r}")
    options = config.get("LAYERCACHE_STACK_OPTIONS") or {}
    if not isinstance(options, Mapping):
        raise ValueError("LAYERCACHE_STACK_OPTIONS must be a mapping of SyncCacheStack options")
    layers: list[Any] = [MemoryLayer(ttl=ttl, max_size=max_size)]
    url = config.get("LAYERCACHE_URL")
    if url:
        if not isinstance(url, str) or not url.startswith(_REDIS_SCHEMES):
            raise ValueError(f"LAYERCACHE_URL must be a Redis URL (redis://...), not {url!r}")
        # Imported here: a memory-only application does not need the redis extra.
        from layercache import RedisLayer

        redis_ttl: float | None = ttl if ttl is not None else DEFAULT_TTL
        layers.append(RedisLayer(url=url, ttl=redis_ttl))
    return SyncCacheStack(layers, **dict(options))


def _request_key(prefix: str, req: Request, key_resolver: Callable[[Request], str] | None) -> str:
    path = quote(req.script_root + req.path, safe=_PATH_SAFE)
    # Sort by parameter name only: a stable sort keeps repeated parameters (?a=2&a=1) in
    # their order, which getlist() exposes to the view.
    query = urlencode(sorted(req.args.items(multi=True), key=lambda item: item[0]))
    key = f"{prefix}:{req.method}:{path}?{query}"
    if key_resolver is not None:
        extra = key_resolver(req)
        if not isinstance(extra, str):
            raise TypeError(f"key_resolver must return a str, not {type(extra).__name__}")
        key = f"{key}|{extra}"
    try:
        validate_key(key)
    except ValueError:
        # Too long or not plain text: a digest keeps it valid and still distinct.
        key = f"{prefix}:sha256:{hashlib.sha256(key.encode('utf-8', 'surrogatepass')).hexdigest()}"
    return key


def _freeze(
    response: Response, allowed: Callable[[int], bool], max_body_size: int
) -> dict[str, Any] | _Uncacheable:
    """The response as a plain, serialisable dict, or the marker when it must not be stored."""
    if not allowed(response.status_code) or response.is_streamed or response.direct_passthrough:
        return _UNCACHEABLE
    headers = response.headers
    if "Set-Cookie" in headers:
        return _UNCACHEABLE
    cache_control = response.cache_control
    if cache_control.no_store or cache_control.private:
        return _UNCACHEABLE
    if "*" in response.vary:
        return _UNCACHEABLE
    if response.content_length is not None and response.content_length > max_body_size:
        return _UNCACHEABLE
    body = response.get_data()
    if len(body) > max_body_size:
        return _UNCACHEABLE
    return {
        "status": response.status_code,
        "headers": [[name, value] for name, value in headers.items() if name != "X-Cache"],
        "body": body,
    }


def _valid_payload(value: Any) -> bool:
    """Whether a stored value has the shape ``_freeze`` writes (layers may hold foreign data)."""
    if not isinstance(value, dict):
        return False
    status, headers, body = value.get("status"), value.get("headers"), value.get("body")
    return (
        isinstance(status, int)
        and 100 <= status <= 999
        and isinstance(body, bytes)
        and isinstance(headers, list | tuple)
        and all(
            isinstance(h, list | tuple)
            and len(h) == 2
            and isinstance(h[0], str)
            and isinstance(h[1], str)
            for h in headers
        )
    )


def _thaw(payload: Mapping[str, Any]) -> Response:
    response = current_app.response_class(
        payload["body"],
        status=payload["status"],
        headers=[(name, value) for name, value in payload["headers"]],
    )
    response.headers["X-Cache"] = "HIT"
    return response
