"""Litestar: ``LayerCacheStore``, a Litestar ``Store`` backed by a ``CacheStack``.

```python
from litestar import Litestar, get
from litestar.config.response_cache import ResponseCacheConfig
from layercache import CacheStack, MemoryLayer, RedisLayer
from layercache.integrations.litestar import LayerCacheStore

cache = CacheStack([MemoryLayer(ttl=30), RedisLayer(url="redis://localhost:6379/0")])
store = LayerCacheStore(cache)

@get("/products/{pid:int}", cache=60)
async def product(pid: int) -> dict[str, int]: ...

app = Litestar(
    [product],
    stores={"response_cache": store.with_namespace("response_cache")},
    response_cache_config=ResponseCacheConfig(store="response_cache"),
    on_shutdown=[cache.aclose],
)
```

The store keeps Litestar's ``Store`` contract: values are ``bytes`` (a ``str`` is stored UTF-8
encoded), ``expires_in`` is seconds or a ``timedelta``, ``get(key, renew_for=...)`` extends an
expiring value, ``with_namespace`` gives an isolated child whose ``delete_all`` removes only
its own keys and its children's (a parent's ``delete_all`` removes its children's too).

Layout of the stack keys: a namespace path is its segments joined by ``:`` (``LITESTAR``,
``LITESTAR:response_cache``) and a value lives under ``<path>::<key>``
(``LITESTAR:response_cache::GET/products/1``). ``:`` (and ``#``, ``%``) in a namespace name is
percent-encoded, so a key can never be mistaken for another namespace's. A key the stack
refuses (control characters, longer than the key limit) is stored under ``<path>:#<sha256>``
instead of failing the request. ``delete_all`` is one prefix invalidation of ``<path>:``: it
reaches every layer, and every instance through the stack's invalidation bus.

``expires_in=None`` stores the value for the layers' own default TTLs (``None`` for a layer
that never expires, as ``MemoryLayer(ttl=None)``; then ``expires_in(key)`` returns ``-1``). An
explicit ``expires_in`` sets the TTL of every layer, without stale windows or jitter (a store's
expiry is exact). ``renew_for`` rewrites the value with the new TTL after reading it: unlike
Litestar's ``RedisStore`` Lua script it is two steps, so a ``delete`` landing between them is
undone (the session or cache entry lives ``renew_for`` longer).

Several Litestar instances sharing Redis (``RedisLayer``) share the cached responses; give the
stack a ``RedisInvalidationBus`` so a ``delete``/``delete_all`` on one drops the others' memory
copies at once. The stack is the caller's: close it on shutdown (``on_shutdown=[cache.aclose]``).
"""

from __future__ import annotations

import hashlib
import math
from datetime import timedelta
from typing import TYPE_CHECKING, Any

try:
    from litestar.exceptions import ImproperlyConfiguredException
    from litestar.stores.base import NamespacedStore
except ImportError as exc:  # pragma: no cover - exercised without litestar installed
    raise ImportError(
        "layercache.integrations.litestar needs Litestar: pip install 'layercache-py[litestar]'"
    ) from exc

from .. import CacheNamespace, CacheStack, validate_key, validate_prefix

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["DEFAULT_NAMESPACE", "LayerCacheStore"]

DEFAULT_NAMESPACE = "LITESTAR"
# Per-operation options of every write: a store's expiry is exact (no stale window, no jitter).
_EXACT: dict[str, Any] = {"stale_while_revalidate": 0, "stale_if_error": 0, "ttl_jitter": 0}
_ESCAPES = str.maketrans({"%": "%25", ":": "%3A", "#": "%23"})


def _segment(namespace: object) -> str:
    if not isinstance(namespace, str) or not namespace:
        raise ValueError(f"a namespace must be a non-empty str, not {namespace!r}")
    try:
        validate_prefix(namespace)  # no control characters
    except ValueError as exc:
        raise ValueError(f"invalid namespace {namespace!r}: {exc}") from None
    return namespace.translate(_ESCAPES)


def _seconds(name: str, value: int | float | timedelta) -> float:
    amount = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(amount, bool) or not isinstance(amount, int | float) or math.isnan(amount):
        raise ValueError(f"{name} must be a number of seconds or a timedelta, not {value!r}")
    if amount < 0:
        raise ValueError(f"{name} must not be negative, not {value!r}")
    return float(amount)


class LayerCacheStore(NamespacedStore):
    """A Litestar ``Store`` (and ``NamespacedStore``) over a :class:`~layercache.CacheStack`.

    Args:
        cache: The stack (or a namespace of one) holding the values. It is not closed by the
            store: close it in the application's ``on_shutdown``.
        namespace: The root namespace (default ``"LITESTAR"``, as Litestar's ``RedisStore``).
            ``None``: keys are used as given (useful to share them with other code) and
            ``delete_all`` is refused, as it would have nothing to delimit it.

    Raises:
        ValueError: an empty namespace or one with control characters.
    """

    __slots__ = ("_cache", "_path")

    def __init__(
        self, cache: CacheStack | CacheNamespace, *, namespace: str | None = DEFAULT_NAMESPACE
    ) -> None:
        self._cache = cache
        self._path: str | None = None if namespace is None else _segment(namespace)
        self.namespace: str | None = namespace

    @property
    def cache(self) -> CacheStack | CacheNamespace:
        """The stack the values live in."""
        return self._cache

    def with_namespace(self, namespace: str) -> Self:
        """A store over the same stack in the child namespace ``namespace``.

        Its keys are isolated from this store's; this store's ``delete_all`` also deletes the
        child's values, the child's ``delete_all`` deletes only its own (and its children's).
        """
        child = _segment(namespace)
        store = type(self)(self._cache, namespace=None)
        store._path = child if self._path is None else f"{self._path}:{child}"
        store.namespace = namespace if self.namespace is None else f"{self.namespace}_{namespace}"
        return store

    def _key(self, key: str) -> str:
        if not isinstance(key, str):
            raise TypeError(f"a store key must be a str, not {type(key).__name__}")
        full = key if self._path is None else f"{self._path}::{key}"
        try:
            return validate_key(full)
        except ValueError:
            pass
        digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        if self._path is None:
            return f"#{digest}"
        return f"{self._path}:#{digest}"

    async def set(
        self, key: str, value: str | bytes, expires_in: int | timedelta | None = None
    ) -> None:
        """Store ``value`` (a ``str`` is stored UTF-8 encoded) for ``expires_in`` seconds.

        ``None`` (or ``0``): the layers' own default TTLs.

        Raises:
            ValueError: a negative ``expires_in``.
            TypeError: ``value`` is neither ``bytes`` nor ``str``.
        """
        if isinstance(value, str):
            data = value.encode("utf-8")
        elif isinstance(value, bytes | bytearray | memoryview):
            data = bytes(value)
        else:
            raise TypeError(f"a store value must be bytes or str, not {type(value).__name__}")
        options: dict[str, Any] = dict(_EXACT)
        if expires_in is not None:
            seconds = _seconds("expires_in", expires_in)
            if seconds > 0:
                options["ttl"] = seconds
        await self._cache.set(self._key(key), data, **options)

    async def get(self, key: str, renew_for: int | timedelta | None = None) -> bytes | None:
        """The value of ``key``, or ``None`` when absent or expired.

        ``renew_for``: when the value has an expiry, it expires ``renew_for`` seconds from now
        instead (a value without expiry is left as it is).
        """
        renew = 0.0 if renew_for is None else _seconds("renew_for", renew_for)
        full = self._key(key)
        value = await self._cache.get(full)
        if not isinstance(value, bytes):
            return None  # absent (or something else lives under the key: not ours)
        if renew > 0 and await self._cache.ttl(full) is not None:
            await self._cache.set(full, value, ttl=renew, **_EXACT)
        return value

    async def delete(self, key: str) -> None:
        """Delete ``key`` (nothing happens when it is absent)."""
        await self._cache.delete(self._key(key))

    async def delete_all(self) -> None:
        """Delete every value of this namespace and of its child namespaces.

        Raises:
            ImproperlyConfiguredException: the store has no namespace.
        """
        if self._path is None:
            raise ImproperlyConfiguredException(
                "Cannot perform delete operation: No namespace configured"
            )
        await self._cache.invalidate_by_prefix(f"{self._path}:")

    async def exists(self, key: str) -> bool:
        """Whether ``key`` holds an unexpired value."""
        return await self._cache.has(self._key(key))

    async def expires_in(self, key: str) -> int | None:
        """Seconds until ``key`` expires (rounded up), ``-1`` when it never expires, ``None``
        when it is absent."""
        found = await self._cache.inspect(self._key(key))
        if found is None or found.is_stale:
            return None
        if found.fresh_ttl is None:
            return -1
        return math.ceil(found.fresh_ttl)

    def __repr__(self) -> str:
        return f"LayerCacheStore({self._cache!r}, namespace={self.namespace!r})"
