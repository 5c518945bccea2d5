"""``CacheNamespace``: a view of a stack with every key under ``prefix:`` (views nest)."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, overload

from .._exceptions import CacheMissError
from .._glob import escape_glob
from .._keys import (
    MAX_KEY_LENGTH,
    MAX_PREFIX_LENGTH,
    CallKey,
    ReceiverKind,
    receiver_kind,
    validate_key,
)
from .._keys import validate_pattern as _validate_pattern
from .._keys import validate_prefix as _validate_prefix
from .._metrics import CacheInspectResult
from .._options import CacheEntry, CacheEntryRequest
from .._typed import converter_for, return_type

if TYPE_CHECKING:
    from . import stack as stack_module
    from .stack import GetEntry, OptionsArg, SetEntry, WrapDecorator

__all__ = ["ANNOTATION", "CacheNamespace", "cached_decorator"]

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")
Fetcher = Callable[[], Any]
# wrap()'s default for type=: rebuild values as the function's return annotation.
ANNOTATION: Any = object()


def cached_decorator(
    get: Callable[..., Awaitable[Any]],
    prefix: str,
    key_resolver: Callable[..., str] | None,
    type: Any,
    options: Any,
) -> Callable[[Any], Any]:
    """The decorator of ``CacheStack.wrap(prefix)``: each call of the wrapped function goes
    through ``get(prefix:<arguments>, fetcher)``; see :meth:`CacheStack.wrap`."""
    named = type
    if named is not ANNOTATION and converter_for(named) is None:
        named = None  # Any, object, None: values as stored

    def decorate(func: Any) -> Any:
        # @wrap above @classmethod / @staticmethod: wrap the function, re-apply the
        # descriptor. Below them (or on a plain method) the first parameter tells.
        method: Any = None
        receiver: ReceiverKind = "none"
        if isinstance(func, classmethod):
            method, receiver, func = classmethod, "class", func.__func__
        elif isinstance(func, staticmethod):
            method, func = staticmethod, func.__func__
        elif callable(func):
            receiver = receiver_kind(func)
        if not callable(func):
            raise ValueError(f"wrap() needs a callable, not {func!r}")
        call_key = CallKey(func, receiver)
        result_type = named

        @functools.wraps(func)
        async def cached(*args: Any, **kwargs: Any) -> Any:
            nonlocal result_type
            if key_resolver is not None:
                suffix = key_resolver(*args, **kwargs)
                if not isinstance(suffix, str):
                    raise ValueError("key_resolver must return a str")
            else:
                suffix = call_key(args, kwargs)
            if result_type is ANNOTATION:
                # Resolved at the first call, not at decoration: the annotation may name a
                # class defined after the function (the method's own class, say).
                resolved = return_type(func)
                result_type = resolved if converter_for(resolved) is not None else None
            return await get(
                f"{prefix}:{suffix}",
                lambda: func(*args, **kwargs),
                type=result_type,
                options=options,
            )

        return cached if method is None else method(cached)

    return decorate


def _join(prefix: str, key: str) -> str:
    full = f"{prefix}:{key}"
    if len(full) > MAX_KEY_LENGTH:
        raise ValueError(
            f"key is {len(full)} characters long with its namespace; the limit is {MAX_KEY_LENGTH}"
        )
    return full


class CacheNamespace:
    """The :class:`CacheStack` API with every key under ``prefix:`` (nests)."""

    def __init__(self, stack: stack_module.CacheStack, prefix: str) -> None:
        _validate_prefix(prefix, limit=MAX_PREFIX_LENGTH)
        self._stack = stack
        self.prefix = prefix

    def _key(self, key: str) -> str:
        validate_key(key)
        return _join(self.prefix, key)

    @overload
    async def get(
        self,
        key: str,
        fetcher: Fetcher | None = None,
        *,
        type: type[T],
        options: OptionsArg = None,
        **kw: Any,
    ) -> T | None: ...

    @overload
    async def get(
        self,
        key: str,
        fetcher: Fetcher | None = None,
        *,
        type: Any = None,
        options: OptionsArg = None,
        **kw: Any,
    ) -> Any: ...

    async def get(
        self,
        key: str,
        fetcher: Fetcher | None = None,
        *,
        type: Any = None,
        options: OptionsArg = None,
        **kw: Any,
    ) -> Any:
        """:meth:`CacheStack.get` inside the namespace."""
        return await self._stack.get(self._key(key), fetcher, type=type, options=options, **kw)

    @overload
    async def get_or_raise(
        self,
        key: str,
        fetcher: Fetcher | None = None,
        *,
        type: type[T],
        options: OptionsArg = None,
        **kw: Any,
    ) -> T: ...

    @overload
    async def get_or_raise(
        self,
        key: str,
        fetcher: Fetcher | None = None,
        *,
        type: Any = None,
        options: OptionsArg = None,
        **kw: Any,
    ) -> Any: ...

    async def get_or_raise(
        self,
        key: str,
        fetcher: Fetcher | None = None,
        *,
        type: Any = None,
        options: OptionsArg = None,
        **kw: Any,
    ) -> Any:
        """:meth:`CacheStack.get_or_raise` inside the namespace."""
        value = await self.get(key, fetcher, type=type, options=options, **kw)
        if value is None:
            raise CacheMissError(key)
        return value

    async def get_many(self, entries: Iterable[GetEntry]) -> list[Any]:
        """:meth:`CacheStack.get_many` inside the namespace."""
        mapped: list[GetEntry] = []
        for item in entries:
            if isinstance(item, str):
                mapped.append(self._key(item))
            elif isinstance(item, CacheEntryRequest):
                mapped.append(CacheEntryRequest(self._key(item.key), item.fetcher, item.options))
            elif isinstance(item, tuple) and len(item) == 2:
                mapped.append((self._key(item[0]), item[1]))
            else:
                raise ValueError(f"invalid get_many entry {item!r}")
        return await self._stack.get_many(mapped)

    async def has(self, key: str) -> bool:
        """:meth:`CacheStack.has` inside the namespace."""
        return await self._stack.has(self._key(key))

    async def ttl(self, key: str) -> float | None:
        """:meth:`CacheStack.ttl` inside the namespace."""
        return await self._stack.ttl(self._key(key))

    async def inspect(self, key: str) -> CacheInspectResult | None:
        """:meth:`CacheStack.inspect` inside the namespace."""
        return await self._stack.inspect(self._key(key))

    async def set(self, key: str, value: Any, *, options: OptionsArg = None, **kw: Any) -> None:
        """:meth:`CacheStack.set` inside the namespace."""
        await self._stack.set(self._key(key), value, options=options, **kw)

    async def set_many(self, entries: Iterable[SetEntry]) -> None:
        """:meth:`CacheStack.set_many` inside the namespace."""
        mapped: list[SetEntry] = []
        for item in entries:
            if isinstance(item, CacheEntry):
                mapped.append(CacheEntry(self._key(item.key), item.value, item.options))
            elif isinstance(item, tuple) and len(item) == 2:
                mapped.append((self._key(item[0]), item[1]))
            else:
                raise ValueError(f"invalid set_many entry {item!r}")
        await self._stack.set_many(mapped)

    async def delete(self, key: str) -> None:
        """:meth:`CacheStack.delete` inside the namespace."""
        await self._stack.delete(self._key(key))

    async def delete_many(self, keys: Iterable[str]) -> None:
        """:meth:`CacheStack.delete_many` inside the namespace."""
        await self._stack.delete_many([self._key(k) for k in keys])

    async def clear(self) -> None:
        """Remove every key of this namespace (and only those)."""
        await self._stack.invalidate_by_prefix(self.prefix + ":")

    async def invalidate_by_tag(self, tag: str) -> int:
        """Tags are stack-wide: same as :meth:`CacheStack.invalidate_by_tag`."""
        return await self._stack.invalidate_by_tag(tag)

    async def invalidate_by_tags(
        self, tags: Iterable[str], mode: Literal["any", "all"] = "any"
    ) -> int:
        """Tags are stack-wide: same as :meth:`CacheStack.invalidate_by_tags`."""
        return await self._stack.invalidate_by_tags(tags, mode)

    async def invalidate_by_pattern(self, pattern: str) -> int:
        """Glob invalidation inside the namespace."""
        _validate_pattern(pattern)
        return await self._stack.invalidate_by_pattern(_join(escape_glob(self.prefix), pattern))

    async def invalidate_by_prefix(self, prefix: str) -> int:
        """Prefix invalidation inside the namespace."""
        _validate_prefix(prefix)
        return await self._stack.invalidate_by_prefix(_join(self.prefix, prefix))

    @overload
    def wrap(
        self,
        prefix: str,
        fn: None = None,
        *,
        key_resolver: Callable[..., str] | None = None,
        type: Any = ...,
        **opts: Any,
    ) -> WrapDecorator: ...

    # unasync: begin async-only
    @overload
    def wrap(
        self,
        prefix: str,
        fn: Callable[P, Awaitable[R]],
        *,
        key_resolver: Callable[..., str] | None = None,
        type: Any = ...,
        **opts: Any,
    ) -> Callable[P, Awaitable[R]]: ...

    # unasync: end async-only
    @overload
    def wrap(
        self,
        prefix: str,
        fn: Callable[P, R],
        *,
        key_resolver: Callable[..., str] | None = None,
        type: Any = ...,
        **opts: Any,
    ) -> Callable[P, Awaitable[R]]: ...

    def wrap(
        self,
        prefix: str,
        fn: Any = None,
        *,
        key_resolver: Callable[..., str] | None = None,
        type: Any = ANNOTATION,
        **opts: Any,
    ) -> Any:
        """:meth:`CacheStack.wrap` inside the namespace."""
        _validate_prefix(prefix, limit=MAX_PREFIX_LENGTH)
        return self._stack.wrap(
            _join(self.prefix, prefix), fn, key_resolver=key_resolver, type=type, **opts
        )

    def namespace(self, prefix: str) -> CacheNamespace:
        """A nested namespace: keys under ``self.prefix:prefix:``."""
        _validate_prefix(prefix, limit=MAX_PREFIX_LENGTH)
        return CacheNamespace(self._stack, _join(self.prefix, prefix))

    def on(self, event: str, handler: Callable[[dict[str, Any]], Any]) -> Callable[[], None]:
        """Events are stack-wide."""
        return self._stack.on(event, handler)

    def off(self, event: str, handler: Callable[[dict[str, Any]], Any]) -> None:
        """Events are stack-wide."""
        self._stack.off(event, handler)

    def __repr__(self) -> str:
        return f"CacheNamespace({self.prefix!r}, {self._stack!r})"
