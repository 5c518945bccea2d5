"""FastAPI: ``@cached(cache, ...)``, a route decorator caching an endpoint's return value.

```python
from fastapi import FastAPI
from layercache import CacheStack, MemoryLayer
from layercache.integrations.fastapi import cached

cache = CacheStack([MemoryLayer(ttl=60)])
app = FastAPI()

@app.get("/products/{product_id}")
@cached(cache, ttl=60, tags=lambda args: [f"product:{args['product_id']}", "products"])
async def product(product_id: int, q: str | None = None) -> Product: ...
```

``cached`` sits *below* the route decorator. The decorated endpoint keeps the endpoint's
signature (``functools.wraps``: ``inspect.signature`` and ``__wrapped__``), so FastAPI sees the
same parameters: dependency injection (``Depends``, ``Query``, ``Path``, ``Body``, ``Header``...)
and the OpenAPI schema are unchanged. FastAPI resolves the parameters first; the decorator then
looks up ``<prefix>:<arguments>`` in the stack and runs the endpoint only on a miss, once however
many requests wait for the same cold key (the stack's single-flight; across processes with a
``RedisSingleFlightCoordinator``).

Keys
    ``<prefix>:<name>=<value>,...``: the parameters in signature order, each value rendered as
    unambiguous text (strings quoted, so ``"1"`` and ``1`` differ). The default prefix is
    ``fastapi:<module>.<qualname>`` of the endpoint (the same in every instance of an app built
    from the same code, so instances sharing Redis share entries); ``prefix=`` names it. Keys
    longer than the stack's limit become ``<prefix>:#<sha256>``.

    Plain data is part of the key: ``None``, bools, numbers, strings, bytes, enums, ``Decimal``,
    ``UUID``, dates and times, lists, tuples, sets and dicts of them, Pydantic models and
    dataclasses (their fields), and any object with a ``__cache_key__()`` method (its result).
    Any other value is **left out of the key**: ``Request``, ``Response``, ``WebSocket``,
    ``BackgroundTasks``, ``SecurityScopes``, ``UploadFile``, the stack itself, a database session
    from ``Depends(get_db)``... A dependency whose result decides the response (the current
    user) must give plain data (the user's id, a Pydantic model) or the object must define
    ``__cache_key__``; otherwise pass ``key_resolver``.

    ``key_resolver(arguments) -> str`` replaces the rendered arguments: ``arguments`` is a
    read-only mapping of every parameter name to the value FastAPI resolved (objects included,
    e.g. ``arguments["request"].headers`` when the endpoint declares ``request: Request``).

Values
    The endpoint's return value is cached as returned and comes back typed: a value read from
    a remote layer (Redis stores the model's fields) is rebuilt as the endpoint's return
    annotation (``-> Product``, ``-> list[Product]``), as ``CacheStack.wrap`` does; ``type=``
    names the type instead (e.g. the route's ``response_model`` when the endpoint has no
    annotation), ``type=None`` returns values as stored. A returned ``Response`` object is never
    cached (nor shared with concurrent requests: each runs the endpoint). Side effects of the
    endpoint (headers set on an injected ``Response``, background tasks) happen only when it runs.

The stack
    ``cache`` is a ``CacheStack`` (or ``CacheNamespace``), or a callable giving one per request:
    either the dependency the endpoint declares (``cache: CacheStack = Depends(get_cache)``,
    whose resolved value is used) or a function of no arguments (``lambda: app.state.cache``).
    The first suits the lifespan recipe of the documentation (``docs/fastapi.md``), where the
    stack is built when the application starts.

Sync (``def``) endpoints work: the decorated endpoint is a coroutine function, and the endpoint
itself runs in Starlette's thread pool on a miss (as FastAPI would run it), so waiting requests
hold no thread.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import types
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, ParamSpec, Protocol, TypeVar, cast, overload

try:
    import pydantic
    from fastapi import params as fastapi_params
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import Response
except ImportError as exc:  # pragma: no cover - exercised by a test that hides fastapi
    raise ImportError(
        "layercache.integrations.fastapi needs FastAPI: pip install 'layercache-py[fastapi]'"
    ) from exc

from .. import (
    CacheNamespace,
    CacheOptions,
    CacheStack,
    SyncCacheNamespace,
    SyncCacheStack,
    key_part,
    validate_key,
    validate_prefix,
)

__all__ = ["cached"]

P = ParamSpec("P")
R = TypeVar("R")
Arguments = Mapping[str, Any]
CacheLike = CacheStack | CacheNamespace
_ANNOTATION: Any = object()
DEFAULT_PREFIX = "fastapi"


class CachedDecorator(Protocol):
    """What :func:`cached` returns: a decorator keeping the endpoint's signature (the result
    is always a coroutine function; a sync endpoint runs in the thread pool on a miss)."""

    @overload
    def __call__(self, endpoint: Callable[P, Awaitable[R]], /) -> Callable[P, Awaitable[R]]: ...

    @overload
    def __call__(self, endpoint: Callable[P, R], /) -> Callable[P, Awaitable[R]]: ...


class _Uncacheable:
    """What a fetch returns for a result that must be neither stored nor shared."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<uncacheable result>"


_UNCACHEABLE = _Uncacheable()


class _NotPlain(Exception):
    """A value that is not plain data (left out of the key)."""


def cached(
    cache: CacheLike | Callable[..., Any],
    ttl: Any = None,
    tags: Iterable[str] | Callable[[Arguments], Iterable[str]] = (),
    key_resolver: Callable[[Arguments], str] | None = None,
    *,
    prefix: str | None = None,
    type: Any = _ANNOTATION,
    **options: Any,
) -> CachedDecorator:
    """Cache a FastAPI endpoint's return value; see the module documentation.

    Args:
        cache: The stack, or a callable giving it (a dependency the endpoint declares with
            ``Depends(cache)``, or a function of no arguments called per request).
        ttl: Lifetime in seconds (or a per-layer dict); ``None``: the stack's default.
        tags: Tags stored with the value, or ``(arguments) -> tags``;
            ``await stack.invalidate_by_tag(tag)`` drops every value carrying one.
        key_resolver: ``(arguments) -> str`` replacing the rendered arguments in the key.
        prefix: The key prefix (default ``fastapi:<module>.<qualname>``).
        type: The type values are rebuilt as (default: the endpoint's return annotation;
            ``None``: as stored).
        **options: Other per-operation options of ``CacheStack.get`` (``stale_while_revalidate``,
            ``fetch_timeout``, ``should_cache``...).

    Raises:
        TypeError: ``cache`` is a synchronous stack or not a stack at all, an unknown option,
            the decorated object is not a function (or is a generator function).
        ValueError: a bad ``prefix``, ``tags`` given as one string.
    """
    if isinstance(cache, SyncCacheStack | SyncCacheNamespace):
        raise TypeError(
            "cached() needs an async CacheStack (FastAPI endpoints run on the event loop), "
            f"not {builtins_type(cache).__name__}"
        )
    if not isinstance(cache, CacheStack | CacheNamespace) and not callable(cache):
        raise TypeError(
            f"cache must be a CacheStack, a CacheNamespace or a callable giving one, not {cache!r}"
        )
    if key_resolver is not None and not callable(key_resolver):
        raise TypeError("key_resolver must be callable")
    if prefix is not None:
        validate_prefix(prefix)
    tag_fn: Callable[[Arguments], Iterable[str]] | None = None
    static_tags: tuple[str, ...] = ()
    if callable(tags):
        tag_fn = tags
    elif isinstance(tags, str):
        raise ValueError("tags must be an iterable of str, not a single str")
    else:
        static_tags = tuple(tags)
    user_should_cache = options.pop("should_cache", None)
    if ttl is not None:
        options["ttl"] = ttl
    CacheOptions(**options)  # unknown option names fail here, not at the first request

    def should_cache(value: Any) -> bool:
        if value is _UNCACHEABLE:
            return False
        return user_should_cache is None or bool(user_should_cache(value))

    options["should_cache"] = should_cache

    def decorate(endpoint: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
        if not callable(endpoint):
            raise TypeError(f"cached() decorates a function, not {endpoint!r}")
        target = inspect.unwrap(endpoint)
        if inspect.isgeneratorfunction(target) or inspect.isasyncgenfunction(target):
            raise TypeError("cached() cannot cache a generator (streaming) endpoint")
        is_async = _is_coroutine_function(endpoint)
        signature = inspect.signature(endpoint)
        key_prefix = prefix if prefix is not None else _default_prefix(endpoint)
        plan: _Plan | None = None

        async def call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if is_async:
                return await endpoint(*args, **kwargs)
            return await run_in_threadpool(endpoint, *args, **kwargs)

        @functools.wraps(endpoint)
        async def cached_endpoint(*args: Any, **kwargs: Any) -> Any:
            nonlocal plan
            if plan is None:
                plan = _Plan(endpoint, signature, cache, type)
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments: Arguments = types.MappingProxyType(bound.arguments)
            stack = plan.stack(arguments)
            if key_resolver is not None:
                suffix = key_resolver(arguments)
                if not isinstance(suffix, str):
                    raise TypeError(
                        f"key_resolver must return a str, not {builtins_type(suffix).__name__}"
                    )
            else:
                suffix = _render_arguments(arguments)
            key = _key(key_prefix, suffix)
            opts = dict(options)
            opts["tags"] = static_tags if tag_fn is None else _tags(tag_fn(arguments))
            ran: list[Any] = []

            async def fetch() -> Any:
                result = await call(args, kwargs)
                if isinstance(result, Response):
                    ran.append(result)
                    return _UNCACHEABLE
                return result

            value = await stack.get(key, fetch, type=plan.result_type, **opts)
            if value is _UNCACHEABLE:
                # A response object: this request's own, or (another request ran the endpoint
                # and got one) run the endpoint for this request too.
                return ran[0] if ran else await call(args, kwargs)
            return value

        return cached_endpoint

    return cast(CachedDecorator, decorate)


builtins_type = type  # the parameter named ``type`` shadows the builtin inside cached()


class _Plan:
    """What the first call of an endpoint resolves: the result type and where the stack comes
    from (resolved late: annotations may name classes defined after the endpoint)."""

    __slots__ = ("_fixed", "_param", "_provider", "result_type")

    def __init__(
        self,
        endpoint: Callable[..., Any],
        signature: inspect.Signature,
        cache: CacheLike | Callable[..., Any],
        named_type: Any,
    ) -> None:
        self.result_type: Any = (
            _annotation_type(endpoint) if named_type is _ANNOTATION else named_type
        )
        self._fixed: CacheLike | None = None
        self._param: str | None = None
        self._provider: Callable[[], Any] | None = None
        if isinstance(cache, CacheStack | CacheNamespace):
            self._fixed = cache
            return
        self._param = _dependency_parameter(endpoint, signature, cache)
        if self._param is None:
            self._provider = cache

    def stack(self, arguments: Arguments) -> CacheLike:
        if self._fixed is not None:
            return self._fixed
        if self._param is not None:
            found = arguments[self._param]
        else:
            assert self._provider is not None
            found = self._provider()
        if not isinstance(found, CacheStack | CacheNamespace):
            raise TypeError(
                "the cache given to cached() must be (or give) a CacheStack or a "
                f"CacheNamespace, not {builtins_type(found).__name__}"
            )
        return found


def _is_coroutine_function(endpoint: Callable[..., Any]) -> bool:
    target: Any = endpoint
    while isinstance(target, functools.partial):
        target = target.func
    if inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(inspect.unwrap(target)):
        return True
    call = getattr(target, "__call__", None)  # noqa: B004 - a callable object's method
    return call is not None and inspect.iscoroutinefunction(call)


def _default_prefix(endpoint: Callable[..., Any]) -> str:
    module = getattr(endpoint, "__module__", None) or "endpoint"
    name = getattr(endpoint, "__qualname__", None) or builtins_type(endpoint).__qualname__
    return f"{DEFAULT_PREFIX}:{module}.{name}"


def _shim() -> None:  # pragma: no cover - never called: its code object hosts an annotation
    pass


def _resolve(annotation: Any, endpoint: Callable[..., Any]) -> Any:
    """A string annotation evaluated in the endpoint's module (only that one annotation)."""
    if not isinstance(annotation, str):
        return annotation
    target = inspect.unwrap(endpoint)
    shim = types.FunctionType(_shim.__code__, getattr(target, "__globals__", {}))
    shim.__annotations__ = {"return": annotation}
    return typing.get_type_hints(shim, include_extras=True)["return"]


def _annotation_type(endpoint: Callable[..., Any]) -> Any:
    """The endpoint's return annotation when values can be rebuilt as it, else ``None``."""
    annotation = inspect.signature(endpoint).return_annotation
    if annotation is inspect.Signature.empty:
        return None
    try:
        annotation = _resolve(annotation, endpoint)
    except Exception as exc:
        raise TypeError(
            f"cannot resolve the return annotation of {_default_prefix(endpoint)!r} ({exc}); "
            "pass type= to cached() (type=None returns values as stored)"
        ) from exc
    if annotation in (None, builtins_type(None), Any, object) or _mentions_response(annotation):
        return None
    try:
        pydantic.TypeAdapter(annotation)
    except Exception:  # FastAPI accepts it with response_model=None: values as stored
        return None
    return annotation


def _mentions_response(annotation: Any) -> bool:
    if isinstance(annotation, builtins_type) and issubclass(annotation, Response):
        return True
    return any(_mentions_response(arg) for arg in typing.get_args(annotation))


def _depends_on(marker: Any, cache: Any) -> bool:
    return isinstance(marker, fastapi_params.Depends) and marker.dependency is cache


def _dependency_parameter(
    endpoint: Callable[..., Any], signature: inspect.Signature, cache: Any
) -> str | None:
    """The parameter declared as ``Depends(cache)`` (default or ``Annotated``), if any."""
    for name, param in signature.parameters.items():
        if _depends_on(param.default, cache):
            return name
        annotation = param.annotation
        if isinstance(annotation, str):
            try:
                annotation = _resolve(annotation, endpoint)
            except Exception:  # FastAPI reports annotations it cannot resolve itself
                continue
        if typing.get_origin(annotation) is typing.Annotated and any(
            _depends_on(meta, cache) for meta in annotation.__metadata__
        ):
            return name
    return None


def _tags(found: Iterable[str]) -> tuple[str, ...]:
    if isinstance(found, str):
        raise ValueError("tags must be an iterable of str, not a single str")
    return tuple(found)


# ---------------------------------------------------------------------- keys


def _plain(value: Any) -> str:
    """Unambiguous text of plain data: the core's :func:`layercache.key_part`, which also
    renders, here, what has ``__cache_key__``, Pydantic models and dataclasses."""
    return key_part(value, _rich)


def _rich(value: Any) -> str:
    """Values beyond the core's plain data (inside containers too); anything else is not
    plain (left out of the key)."""
    hook = getattr(builtins_type(value), "__cache_key__", None)
    if hook is not None:
        key = hook(value)
        if not isinstance(key, str):
            raise TypeError(f"__cache_key__ must return a str, not {builtins_type(key).__name__}")
        return "@" + json.dumps(key, ensure_ascii=False)
    if isinstance(value, pydantic.BaseModel):
        fields = {name: getattr(value, name) for name in builtins_type(value).model_fields}
        return builtins_type(value).__name__ + _plain(fields)
    if dataclasses.is_dataclass(value) and not isinstance(value, builtins_type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return builtins_type(value).__name__ + _plain(fields)
    raise _NotPlain


def _render_arguments(arguments: Arguments) -> str:
    parts: list[str] = []
    for name, value in arguments.items():
        try:
            parts.append(f"{name}={_plain(value)}")
        except _NotPlain:
            continue  # an object (request, session, the stack...): not part of the key
    return ",".join(parts)


def _key(prefix: str, suffix: str) -> str:
    key = f"{prefix}:{suffix}"
    try:
        return validate_key(key)
    except ValueError:
        # Too long or not plain text: a digest keeps it valid and still distinct.
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        return validate_key(f"{prefix}:#{digest}")
