"""GraphQL: ``cached_resolver``, a cache for Strawberry resolvers (and any resolver function).

```python
import strawberry
from layercache import CacheStack, MemoryLayer, RedisLayer
from layercache.integrations.graphql import cached_resolver

cache = CacheStack([MemoryLayer(ttl=30), RedisLayer(url="redis://localhost:6379/0")])

@strawberry.type
class Product:
    id: strawberry.ID
    name: str

@strawberry.type
class Query:
    @strawberry.field
    @cached_resolver(cache, "product", ttl=60, tags=["products"])
    async def product(self, info: strawberry.Info, id: strawberry.ID) -> Product | None:
        return await db.find_product(id)

schema = strawberry.Schema(query=Query)
```

The resolver's result is cached under ``prefix:`` plus its GraphQL arguments, rendered as
:meth:`CacheStack.wrap` renders a call (``product:"42"`` for ``id: "42"``; arguments with
defaults are part of the key, so ``products(limit: 10)`` and ``products`` with a default of 10
share one). The parameters a GraphQL server fills itself are left out: ``self`` / ``cls``
(first parameter), ``root``, ``info`` (by name, or annotated ``strawberry.Info`` or
graphql-core's ``GraphQLResolveInfo``) and ``strawberry.Parent[...]``; name others with
``exclude=`` (a graphql-core resolver's ``obj``, say). Input objects (dataclasses) are part of
the key by their fields, and ``strawberry.UNSET`` differs from ``None``.

``key_resolver`` replaces that rendering: it takes the resolver's own parameters (``info``
included, e.g. to key by user: ``key_resolver=lambda self, info, id: f"{info.context.user}:{id}"``)
and returns the text after ``prefix:``.

Results come back typed after a round trip through Redis: the resolver's return annotation
(``-> Product``, ``-> list[Product]``, ``-> Product | None``) rebuilds the stored data, as
``wrap`` does; ``type=`` names the type instead. The other keyword arguments are the stack's
per-operation options (``ttl``, ``tags``, ``stale_while_revalidate``...), fixed for the
resolver (tags are static: invalidate one entity with ``cache.delete("product:\\"42\\"")``).

Concurrent executions that resolve the same arguments on a cold key run the resolver once (the
stack's single-flight; across instances with a ``RedisSingleFlightCoordinator``).

With a :class:`~layercache.CacheStack` the decorated resolver is an ``async def`` (a plain
resolver runs in a worker thread): execute the schema with ``await schema.execute(...)``. With
a :class:`~layercache.SyncCacheStack` it stays a plain function, for ``schema.execute_sync``
(an ``async def`` resolver needs a ``CacheStack``). The decorated function keeps the resolver's
name, parameters and annotations, so the generated schema is unchanged.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import typing
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar, get_args, get_origin

from .. import CacheNamespace, CacheStack, SyncCacheNamespace, SyncCacheStack

__all__ = ["cached_resolver"]

F = TypeVar("F", bound=Callable[..., Any])
AnyCache = CacheStack | CacheNamespace | SyncCacheStack | SyncCacheNamespace

# Names the GraphQL server fills (never arguments of the query).
_RESERVED_NAMES = frozenset({"root", "info"})
_RECEIVER_NAMES = frozenset({"self", "cls"})
# Annotations of reserved parameters, when the annotation text cannot be evaluated.
_RESERVED_TEXT = frozenset({"Info", "GraphQLResolveInfo", "Parent"})


class _Unset(enum.Enum):
    """How ``strawberry.UNSET`` (an argument not given) enters a key: unlike ``None``."""

    UNSET = "UNSET"


class _Call:
    """The resolver's own call, carried to the fetch past the key (never rendered)."""

    __slots__ = ("args", "kwargs")

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.args = args
        self.kwargs = kwargs


@functools.cache
def _server_types() -> tuple[tuple[type, ...], Any, tuple[type, ...]]:
    """(info types, the UNSET value, Parent marker types) of the installed GraphQL servers."""
    infos: list[type] = []
    unset: Any = None
    parents: list[type] = []
    try:
        from graphql import GraphQLResolveInfo
    except ImportError:  # pragma: no cover - graphql-core comes with strawberry
        pass
    else:
        infos.append(GraphQLResolveInfo)
    try:
        import strawberry
    except ImportError:  # pragma: no cover - exercised without strawberry installed
        pass
    else:
        infos.append(strawberry.Info)
        unset = strawberry.UNSET
        parents.extend(type(mark) for mark in get_args(strawberry.Parent)[1:])
    return tuple(infos), unset, tuple(parents)


def _is_reserved_annotation(annotation: Any) -> bool:
    if isinstance(annotation, str):
        text = annotation.strip().split("[", 1)[0].rsplit(".", 1)[-1]
        return text in _RESERVED_TEXT
    infos, _, parents = _server_types()
    if get_origin(annotation) is typing.Annotated:
        if any(isinstance(mark, parents) for mark in annotation.__metadata__):
            return True
        annotation = get_args(annotation)[0]
    origin = get_origin(annotation) or annotation
    return isinstance(origin, type) and issubclass(origin, infos)


def _reserved(func: Callable[..., Any], params: list[inspect.Parameter]) -> set[str]:
    """Names of the parameters the server fills (left out of the key)."""
    names = {p.name for p in params if p.name in _RESERVED_NAMES}
    if params and params[0].name in _RECEIVER_NAMES:
        names.add(params[0].name)
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception:  # a forward reference not defined yet: judge the annotation text
        hints = {}
    for param in params:
        annotation = hints.get(param.name, param.annotation)
        if annotation is not inspect.Parameter.empty and _is_reserved_annotation(annotation):
            names.add(param.name)
    return names


def _key_value(value: Any) -> Any:
    """An argument as the key sees it: input objects by their fields, UNSET apart from None."""
    _, unset, _ = _server_types()
    if unset is not None and value is unset:
        return _Unset.UNSET
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _key_value(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_key_value(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _key_value(item) for key, item in value.items()}
    return value


def cached_resolver(
    cache: AnyCache,
    prefix: str,
    key_resolver: Callable[..., str] | None = None,
    *,
    exclude: Collection[str] = (),
    **options: Any,
) -> Callable[[F], F]:
    """Cache a GraphQL resolver's results by its arguments.

    Args:
        cache: A ``CacheStack`` (the resolver becomes ``async``; ``schema.execute``) or a
            ``SyncCacheStack`` (it stays sync; ``schema.execute_sync``), or a namespace of one.
        prefix: Keys are ``prefix:`` plus the rendered GraphQL arguments.
        key_resolver: Takes the resolver's parameters (``info`` included) and returns the
            text after ``prefix:``, instead of the rendered arguments.
        exclude: More parameter names to leave out of the key (``self``, ``cls``, ``root``,
            ``info`` and ``Info``/``Parent``-annotated parameters are left out already).
        options: ``type=`` (what results are rebuilt as; default: the return annotation) and
            the stack's per-operation options (``ttl``, ``tags``, ...).

    Raises:
        ValueError: a bad prefix or option (at decoration).
        TypeError: an ``async def`` resolver with a ``SyncCacheStack``; at call time, an
            argument that cannot be rendered into a key (pass ``key_resolver``).
    """
    if key_resolver is not None and not callable(key_resolver):
        raise ValueError("key_resolver must be callable")
    if isinstance(exclude, str):
        raise ValueError("exclude must be a collection of parameter names, not a str")
    excluded = frozenset(exclude)

    def decorate(resolver: F) -> F:
        descriptor: Any = None
        func: Any = resolver
        if isinstance(resolver, staticmethod | classmethod):
            descriptor, func = type(resolver), resolver.__func__
        if not callable(func):
            raise ValueError(f"cached_resolver needs a function, not {resolver!r}")
        wrapped = _decorate(cache, prefix, key_resolver, excluded, options, func)
        return typing.cast(F, wrapped if descriptor is None else descriptor(wrapped))

    return decorate


def _decorate(
    cache: AnyCache,
    prefix: str,
    key_resolver: Callable[..., str] | None,
    excluded: frozenset[str],
    options: dict[str, Any],
    func: Callable[..., Any],
) -> Callable[..., Any]:
    signature = inspect.signature(func)
    params = list(signature.parameters.values())
    skipped = _reserved(func, params) | excluded
    unknown = excluded - {p.name for p in params}
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in params):
        raise ValueError(f"exclude names no parameter of {func.__qualname__}: {sorted(unknown)}")
    keyed = [p for p in params if p.name not in skipped]
    is_async = inspect.iscoroutinefunction(func)

    # The function the stack wraps: the call rides along as a classmethod's ``cls`` (which
    # wrap() leaves out of the key), the GraphQL arguments follow, rendered as wrap renders
    # any call; ``__wrapped__`` lends it the resolver's return annotation (the result type).
    async def fetch_async(call: _Call, /, *_args: Any, **_kwargs: Any) -> Any:
        return await func(*call.args, **call.kwargs)

    def fetch_sync(call: _Call, /, *_args: Any, **_kwargs: Any) -> Any:
        return func(*call.args, **call.kwargs)

    fetch: Any = fetch_async if is_async else fetch_sync
    carrier = inspect.Parameter("__layercache_call__", inspect.Parameter.POSITIONAL_ONLY)
    fetch.__signature__ = inspect.Signature(
        [carrier, *(p.replace(annotation=inspect.Parameter.empty) for p in keyed)]
    )
    fetch.__wrapped__ = func
    fetch.__qualname__ = getattr(func, "__qualname__", fetch.__qualname__)
    fetch.__name__ = getattr(func, "__name__", fetch.__name__)

    resolve_key: Callable[..., str] | None = None
    if key_resolver is not None:
        user_resolver = key_resolver

        def resolve_key(call: _Call, /, *_args: Any, **_kwargs: Any) -> str:
            return user_resolver(*call.args, **call.kwargs)

    # (wrap() accepts a classmethod object, its typed overloads do not say so)
    as_classmethod: Any = classmethod(fetch)
    cached: Any = cache.wrap(prefix, as_classmethod, key_resolver=resolve_key, **options)
    cached = cached.__func__
    stack_is_async = inspect.iscoroutinefunction(cached)
    if is_async and not stack_is_async:
        raise TypeError(
            f"{func.__qualname__} is an async def: cache it with a CacheStack (a "
            "SyncCacheStack cannot await it)"
        )

    def arguments(
        args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[list[Any], dict[str, Any]]:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        positional: list[Any] = []
        named: dict[str, Any] = {}
        for param in keyed:
            value = bound.arguments[param.name]
            if param.kind is param.VAR_POSITIONAL:
                positional.extend(_key_value(v) for v in value)
            elif param.kind is param.VAR_KEYWORD:
                named.update((k, _key_value(v)) for k, v in value.items() if k not in excluded)
            elif param.kind is param.KEYWORD_ONLY:
                named[param.name] = _key_value(value)
            else:
                positional.append(_key_value(value))
        return positional, named

    if stack_is_async:

        @functools.wraps(func)
        async def resolve_async(*args: Any, **kwargs: Any) -> Any:
            positional, named = arguments(args, kwargs)
            return await cached(_Call(args, kwargs), *positional, **named)

        return resolve_async

    @functools.wraps(func)
    def resolve(*args: Any, **kwargs: Any) -> Any:
        positional, named = arguments(args, kwargs)
        return cached(_Call(args, kwargs), *positional, **named)

    return resolve
