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

Several processes (gunicorn workers; ``LAYERCACHE_URL`` only), as the Django backend's options
of the same names:

- ``LAYERCACHE_INVALIDATION_BUS``: ``True``, or a dict with any of ``CHANNEL`` (default
  ``"layercache-<LAYERCACHE_PREFIX>-invalidation"``), ``SIGNING_SECRET`` (HMAC-sign every message
  and refuse unsigned ones; recommended), ``SOURCE_ID`` (default: unique per process; one set by
  hand must differ between processes), ``REPLAY_WINDOW`` and ``TIMEOUT`` (seconds). A write,
  delete or tag invalidation in one worker then drops the other workers' in-process copies
  within milliseconds, instead of after their TTL. Each process subscribes on its first use of
  the stack, on a daemon thread named ``layercache-bus:<channel>``.
- ``LAYERCACHE_TAG_INDEX``: ``"redis"`` (the default with a URL): the tag index lives in Redis
  under ``layercache-<LAYERCACHE_PREFIX>-tag-index``, shared by every worker, so
  ``ext.invalidate_by_tag(tag)`` drops responses other workers cached; ``"memory"``: each
  worker knows only the keys it stored itself.
- ``LAYERCACHE_SINGLE_FLIGHT``: ``True``: a cold cached view renders once across every worker
  (a Redis lock under ``layercache-<LAYERCACHE_PREFIX>-single-flight``; the others wait for the
  response to appear in Redis, then serve it). Default ``False``.

These Redis names are outside the Redis layer's ``layercache:`` prefix, so ``stack.clear()``
never deletes them. They cannot be combined with the same components passed through
``LAYERCACHE_STACK_OPTIONS``; a wrong value, an unknown ``LAYERCACHE_INVALIDATION_BUS`` key or any
of them without ``LAYERCACHE_URL`` raises ``ValueError`` in ``init_app``.

Fork safety (``gunicorn --preload`` imports the application, then forks the workers): threads
and pub/sub connections do not survive ``fork()``. A stack the extension built remembers the
process that built it; the first use in another process (a forked worker) builds a fresh stack
there (empty memory layer, own Redis connections, own bus subscription and listener threads),
and the inherited one is left alone (it belongs to the parent). A stack passed to the
constructor is the caller's: it is used as is in every process.

Flask has no application-shutdown hook (``teardown_appcontext`` runs after every request), so
the extension registers nothing per request: call ``ext.close()`` when the process shuts down
(e.g. from ``atexit`` or your WSGI server's worker-exit hook) to close the stacks it built in
that process (it stops their bus and single-flight threads). A stack passed in by the caller
is the caller's to close.
"""

from __future__ import annotations

import contextvars
import hashlib
import os
import threading
import weakref
from collections.abc import Callable, Collection, Iterable, Mapping
from functools import wraps
from typing import Any, Literal, TypeVar, cast
from urllib.parse import quote, urlencode

try:
    from flask import Flask, Request, Response, current_app, has_app_context, request
except ImportError as exc:  # pragma: no cover - exercised by a test that hides flask
    raise ImportError(
        "layercache.integrations.flask needs Flask: pip install 'layercache-py[flask]'"
    ) from exc

from .. import SyncCacheStack, validate_key, validate_prefix
from ..layers.memory import MemoryLayer
from ._coordination import TAG_INDEXES, bus_kwargs, coordination_kwargs

__all__ = ["LayerCache"]

F = TypeVar("F", bound=Callable[..., Any])

EXTENSION_NAME = "layercache"
DEFAULT_TTL: float = 300
DEFAULT_PREFIX = "flask"
DEFAULT_MEMORY_MAX_SIZE = 10_000
DEFAULT_MAX_BODY_SIZE = 8 * 1024 * 1024
_CACHED_METHODS = frozenset({"GET", "HEAD"})
_CREDENTIAL_HEADERS = ("Authorization", "Cookie")
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://", "rediss+sentinel://")
# Stack options the coordination keys set: given both ways, which one wins would be a guess.
_COORDINATION_OPTIONS = {
    "invalidation_bus": "LAYERCACHE_INVALIDATION_BUS",
    "broadcast_l1_invalidation": "LAYERCACHE_INVALIDATION_BUS",
    "tag_index": "LAYERCACHE_TAG_INDEX",
    "single_flight_coordinator": "LAYERCACHE_SINGLE_FLIGHT",
}
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


class _Plan:
    """What building an application's stack needs, checked once by ``init_app``; a forked
    worker builds its own stack from it."""

    __slots__ = ("bus", "max_size", "options", "prefix", "single_flight", "tag_index", "ttl", "url")

    def __init__(self, config: Mapping[str, Any], ttl: float | None, prefix: str) -> None:
        max_size = config.get("LAYERCACHE_MEMORY_MAX_SIZE", DEFAULT_MEMORY_MAX_SIZE)
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise ValueError(f"LAYERCACHE_MEMORY_MAX_SIZE must be a positive int, not {max_size!r}")
        options = config.get("LAYERCACHE_STACK_OPTIONS") or {}
        if not isinstance(options, Mapping):
            raise ValueError("LAYERCACHE_STACK_OPTIONS must be a mapping of SyncCacheStack options")
        url = config.get("LAYERCACHE_URL") or None
        if url is not None and (not isinstance(url, str) or not url.startswith(_REDIS_SCHEMES)):
            scheme = url.split("://", 1)[0] if isinstance(url, str) else type(url).__name__
            raise ValueError(
                "LAYERCACHE_URL must be a Redis URL (redis://, rediss://, unix:// or "
                f"redis+sentinel://), not one starting with {scheme!r}"
            )
        self.ttl = ttl
        self.prefix = prefix
        self.max_size: int = max_size
        self.options: dict[str, Any] = dict(options)
        self.url: str | None = url
        self.bus = _bus_options(config.get("LAYERCACHE_INVALIDATION_BUS"), prefix)
        tag_index = config.get("LAYERCACHE_TAG_INDEX")
        if tag_index is None:
            # An explicit tag_index stack option keeps working as before.
            tag_index = "redis" if url and "tag_index" not in self.options else "memory"
        elif tag_index not in TAG_INDEXES:
            raise ValueError(f"LAYERCACHE_TAG_INDEX must be 'redis' or 'memory', not {tag_index!r}")
        self.tag_index: str = tag_index
        single_flight = config.get("LAYERCACHE_SINGLE_FLIGHT", False)
        if not isinstance(single_flight, bool):
            raise ValueError(
                f"LAYERCACHE_SINGLE_FLIGHT must be True or False, not {single_flight!r}"
            )
        self.single_flight = single_flight
        wanted = [
            name
            for name, on in (
                ("LAYERCACHE_INVALIDATION_BUS", self.bus is not None),
                ("LAYERCACHE_TAG_INDEX='redis'", tag_index == "redis"),
                ("LAYERCACHE_SINGLE_FLIGHT", single_flight),
            )
            if on
        ]
        if wanted and url is None:
            raise ValueError(f"{', '.join(wanted)} needs a LAYERCACHE_URL")
        for option, key in _COORDINATION_OPTIONS.items():
            if option in self.options and config.get(key) not in (None, False):
                raise ValueError(
                    f"LAYERCACHE_STACK_OPTIONS[{option!r}] conflicts with {key}: set one of them"
                )

    def build(self) -> SyncCacheStack:
        """A new stack (no thread started: the bus subscribes on the stack's first use)."""
        memory = MemoryLayer(ttl=self.ttl, max_size=self.max_size)
        if self.url is None:
            return SyncCacheStack([memory], **self.options)
        # Imported here: a memory-only application does not need the redis extra.
        from ..redis import SyncRedisLayer

        redis_ttl: float | None = self.ttl if self.ttl is not None else DEFAULT_TTL
        # The sync layer itself (not RedisLayer, which SyncCacheStack would swap for one): the
        # coordination components share its sync client.
        redis = SyncRedisLayer(url=self.url, ttl=redis_ttl)
        try:
            extra = self._coordination(redis.client)
            return SyncCacheStack([memory, redis], **self.options, **extra)
        except BaseException:
            redis.close()  # its connection pool (nothing is connected yet)
            raise

    def _coordination(self, client: Any) -> dict[str, Any]:
        """Stack keyword arguments of the Redis coordination components, on the Redis layer's
        client (decode_responses=False, socket timeouts): none of them owns a connection
        besides the bus's pub/sub one, which it closes."""
        redis_tags = self.tag_index == "redis"
        try:
            return coordination_kwargs(
                client,
                bus=self.bus,
                tag_index_prefix=_side_name(self.prefix, "tag-index") if redis_tags else None,
                single_flight_prefix=(
                    _side_name(self.prefix, "single-flight") if self.single_flight else None
                ),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"LAYERCACHE_INVALIDATION_BUS: {exc}") from exc


class _AppState:
    """What ``init_app`` stores in ``app.extensions["layercache"]``."""

    __slots__ = (
        "__weakref__",
        "_lock",
        "_pid",
        "_stack",
        "extension",
        "max_body_size",
        "plan",
        "prefix",
        "ttl",
    )

    def __init__(
        self,
        extension: LayerCache,
        stack: SyncCacheStack,
        *,
        ttl: float | None,
        prefix: str,
        max_body_size: int,
        plan: _Plan | None,
    ) -> None:
        self.extension = extension
        self._stack = stack
        self._pid = os.getpid()
        self.plan = plan  # None: the caller's stack, used as is in every process
        self.ttl = ttl
        self.prefix = prefix
        self.max_body_size = max_body_size
        self._lock = threading.Lock()
        _fork_aware.add(self)

    @property
    def stack(self) -> SyncCacheStack:
        """This process's stack: a forked worker builds its own on first use."""
        if self.plan is None or self._pid == os.getpid():
            return self._stack
        with self._lock:
            pid = os.getpid()
            if self._pid != pid:
                # The inherited stack's threads did not survive the fork and its pub/sub
                # connection is the parent's: never use (nor close) it here.
                self._stack = self.extension._build(self.plan)
                self._pid = pid
            return self._stack

    def _after_fork_in_child(self) -> None:
        # A lock some other thread held at fork() time stays held forever in the child.
        self._lock = threading.Lock()


# Every live state and extension, to renew their locks in a forked child.
_fork_aware: weakref.WeakSet[Any] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for item in list(_fork_aware):
        item._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


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
        # The stacks built from configuration, with the pid of the process that built them.
        self._owned: list[tuple[int, SyncCacheStack]] = []
        self._lock = threading.Lock()
        _fork_aware.add(self)
        if app is not None:
            self.init_app(app)

    # ------------------------------------------------------------------ setup

    def init_app(self, app: Flask) -> None:
        """Attach the extension to ``app`` (builds its stack from ``app.config`` if needed).

        The stack is built here (so configuration errors surface now) but starts no thread
        and opens no connection: each process subscribes to the invalidation bus on its first
        use of the stack, and a forked worker builds its own stack (see the module
        documentation).

        Raises:
            ValueError: an invalid configuration value (including a coordination option
                without ``LAYERCACHE_URL``).
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
        plan: _Plan | None = None
        if stack is None:
            plan = _Plan(config, ttl, prefix)
            stack = self._build(plan)
        app.extensions[EXTENSION_NAME] = _AppState(
            self, stack, ttl=ttl, prefix=prefix, max_body_size=max_body_size, plan=plan
        )

    def _build(self, plan: _Plan) -> SyncCacheStack:
        """A stack built from configuration, closed by :meth:`close` in this process."""
        stack = plan.build()
        with self._lock:
            self._owned.append((os.getpid(), stack))
        return stack

    def _after_fork_in_child(self) -> None:
        # A lock some other thread held at fork() time stays held forever in the child.
        self._lock = threading.Lock()

    @property
    def stack(self) -> SyncCacheStack:
        """The stack of the current application (or of the only one this extension knows).

        Raises:
            RuntimeError: outside an application context with no way to tell which
                application's stack is meant, or the application was not initialised.
        """
        return self._state().stack

    def invalidate_by_tag(self, tag: str) -> int:
        """Drop every cached response (and value) stored with ``tag``, in every worker when
        ``LAYERCACHE_TAG_INDEX`` is ``"redis"``; the current application's stack.

        Returns:
            How many keys carried the tag.
        """
        return self.stack.invalidate_by_tag(tag)

    def invalidate_by_tags(self, tags: Iterable[str], mode: Literal["any", "all"] = "any") -> int:
        """Drop what carries any (``mode="any"``) or all (``"all"``) of ``tags``; see
        :meth:`invalidate_by_tag`.

        Returns:
            How many keys were dropped.
        """
        return self.stack.invalidate_by_tags(tags, mode)

    def close(self) -> None:
        """Close the stacks this extension built from configuration in this process (their bus
        subscription, single-flight listener and Redis connections). Idempotent.

        Stacks inherited from a parent process (``fork()``) are forgotten, not closed: their
        threads and connections belong to the parent. A stack passed to the constructor
        belongs to the caller and is left open.
        """
        with self._lock:
            owned, self._owned = self._owned, []
        pid = os.getpid()
        errors: list[BaseException] = []
        for built_in, stack in owned:
            if built_in != pid:
                continue
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
                ``ext.invalidate_by_tag(tag)`` drops every response carrying one.
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


def _side_name(prefix: str, what: str) -> str:
    # Outside the Redis layer's "layercache:" prefix, so clear() and key scans never meet the
    # coordination keys; scoped by LAYERCACHE_PREFIX like the cached views.
    return f"layercache-{prefix}-{what}"


def _bus_options(value: Any, prefix: str) -> dict[str, Any] | None:
    """``LAYERCACHE_INVALIDATION_BUS`` -> bus keyword arguments (``None``: no bus)."""
    return bus_kwargs(value, "LAYERCACHE_INVALIDATION_BUS", _side_name(prefix, "invalidation"))


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
