"""A Django cache backend on top of layercache: ``LayerCacheBackend``.

Configure it in ``settings.CACHES``::

    CACHES = {
        "default": {
            "BACKEND": "layercache.integrations.django.LayerCacheBackend",
            "LOCATION": "",  # "" = memory only; a Redis URL (or list) adds a Redis layer
            "TIMEOUT": 300,
            "KEY_PREFIX": "myapp",
            "OPTIONS": {"MEMORY_MAX_SIZE": 10_000, "MEMORY_TTL": 30},
        }
    }

Behaviour follows Django's built-in backends (``make_key``/``validate_key``, ``KEY_PREFIX``,
``VERSION``, ``KEY_FUNCTION``, ``add``, ``incr``/``decr``, ``touch``, ``None`` values, timeouts
``None`` = forever and ``0``/negative = expire at once). Extras beyond Django's API:
``set(..., tags=[...])`` / ``aset(..., tags=[...])`` and ``invalidate_by_tag(tag)`` /
``ainvalidate_by_tag(tag)``.

``OPTIONS`` (all optional):

- ``MEMORY_MAX_SIZE``, ``MEMORY_MAX_BYTES``, ``MEMORY_EVICTION``: the in-process layer's bounds.
- ``MEMORY_TTL``: cap in seconds on how long the in-process layer keeps a value (shorter than the
  Django timeout keeps L1 fresh across processes); default: the Django timeout.
- ``PREFIX``: Redis key prefix of the Redis layer (default ``"layercache:"``).
- ``SERIALIZER``, ``COMPRESSION``: the Redis layer's (default: JSON, no compression). JSON keeps
  JSON types only (a tuple comes back as a list); to cache arbitrary objects such as the
  responses of ``cache_page`` use ``PickleSerializer(signing_secret=...)``.
- ``GRACEFUL_DEGRADATION``: the stack option (``True`` or ``{"retry_after": seconds}``).
- ``WRITE_POLICY``: ``"strict"`` (default) or ``"best-effort"``.
- ``CLOCK``: a zero-argument callable returning wall-clock seconds (tests inject a fake one).

The async ``a*`` methods run on a :class:`~layercache.CacheStack` that shares the same layers
and tag index as the synchronous :class:`~layercache.SyncCacheStack`, instead of Django's default
of hopping to a worker thread. Values in the memory layer are kept by reference (as with any
in-process cache of objects, do not mutate a value you got back).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

try:
    from django.core.cache.backends.base import (  # type: ignore[import-untyped]
        DEFAULT_TIMEOUT,
        BaseCache,
    )
    from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - exercised only without Django
    raise ImportError(
        "layercache.integrations.django needs Django: pip install 'layercache-py[django]'"
    ) from exc

from .._async.stack import CacheStack
from .._codec import CorruptEntryError
from .._entry import Entry
from .._exceptions import CacheLayerError
from .._keys import validate_key
from .._options import CacheEntry
from .._sync.stack import SyncCacheStack
from ..layers.memory import MemoryLayer

__all__ = ["LayerCacheBackend"]

_KNOWN_OPTIONS = frozenset(
    {
        "MEMORY_MAX_SIZE",
        "MEMORY_MAX_BYTES",
        "MEMORY_EVICTION",
        "MEMORY_TTL",
        "PREFIX",
        "SERIALIZER",
        "COMPRESSION",
        "GRACEFUL_DEGRADATION",
        "WRITE_POLICY",
        "CLOCK",
    }
)
# Keys layercache would refuse (too long, control characters) are stored under a digest; the
# marker also covers valid keys that happen to start with it, so the mapping stays injective.
_HASHED = "#sha256:"
# incr/decr on Redis is an optimistic compare-and-set loop; each lost race re-reads the value.
# Bounded, with a short jittered back-off so that a burst of writers spreads out instead of
# colliding again at once (worst case about a second before CacheLayerError).
_INCR_ATTEMPTS = 200
_INCR_BACKOFF_CAP = 0.005


def _incr_backoff(attempt: int) -> float:
    # Jitter only spreads retries over time; it needs no cryptographic randomness.
    return random.random() * min(_INCR_BACKOFF_CAP, 0.0002 * (attempt + 1))


def _stack_key(key: str) -> str:
    if not key.startswith(_HASHED):
        try:
            return validate_key(key)
        except ValueError:
            pass  # Django only warns about such keys; store them under their digest
    return _HASHED + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class _SharedTagIndex:
    """Async face of the sync stack's in-process tag index, so both stacks see the same tags."""

    def __init__(self, index: Any, lock: threading.Lock) -> None:
        self._index = index
        self._lock = lock

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._index, name)
        lock = self._lock

        async def call(*args: Any, **kwargs: Any) -> Any:
            # In-memory bookkeeping only: no I/O, so a plain lock never blocks the loop long.
            with lock:
                return method(*args, **kwargs)

        return call


class _LockedTagIndex:
    """The sync stack's view of the shared index, under the same lock as the async view."""

    def __init__(self, index: Any, lock: threading.Lock) -> None:
        self._index = index
        self._lock = lock

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._index, name)
        lock = self._lock

        def call(*args: Any, **kwargs: Any) -> Any:
            with lock:
                return method(*args, **kwargs)

        return call


def _split_locations(location: Any) -> list[str]:
    if not location:
        return []
    if isinstance(location, str):
        return [part.strip() for part in location.replace(";", ",").split(",") if part.strip()]
    if isinstance(location, Sequence):
        return [str(part) for part in location if part]
    raise ImproperlyConfigured(f"LOCATION must be a str or a list of str, not {location!r}")


def _redis_layers(urls: list[str], options: Mapping[str, Any]) -> tuple[list[Any], list[Any]]:
    """(sync layers, async layers) for the Redis URLs: the same keys seen through two clients."""
    try:
        from ..redis._sync_layer import SyncRedisLayer
        from ..redis.layer import RedisLayer
    except ImportError as exc:
        raise ImproperlyConfigured(
            "a Redis LOCATION needs redis-py: pip install 'layercache-py[redis]'"
        ) from exc
    shared = {
        "ttl": None,  # the backend passes every finite Django timeout explicitly
        "prefix": options.get("PREFIX", "layercache:"),
        "serializer": options.get("SERIALIZER"),
        "compression": options.get("COMPRESSION"),
    }
    sync_layers: list[Any] = []
    async_layers: list[Any] = []
    # The first URL's layer is the counter authority of incr/decr (see LayerCacheBackend.incr).
    for i, url in enumerate(urls):
        name = "redis" if i == 0 else f"redis{i}"
        sync_layers.append(SyncRedisLayer(url=url, name=name, **shared))
        async_layers.append(RedisLayer(url=url, name=name, **shared))
    return sync_layers, async_layers


class LayerCacheBackend(BaseCache):  # type: ignore[misc]
    """Django cache backend reading an in-process layer first, then Redis (when configured).

    Args:
        server: ``LOCATION``: empty for memory only, or Redis URL(s) (a list, or a string
            separated by ``,`` or ``;``).
        params: The rest of the ``CACHES`` entry (``TIMEOUT``, ``KEY_PREFIX``, ``VERSION``,
            ``KEY_FUNCTION``, ``OPTIONS``).
    """

    def __init__(self, server: Any, params: Mapping[str, Any]) -> None:
        super().__init__(params)
        options = dict(params.get("OPTIONS") or {})
        unknown = set(options) - _KNOWN_OPTIONS
        if unknown:
            raise ImproperlyConfigured(
                f"unknown LayerCacheBackend OPTIONS: {', '.join(sorted(unknown))}"
            )
        clock: Callable[[], float] = options.get("CLOCK") or time.time
        self._clock = clock
        memory_ttl = options.get("MEMORY_TTL")
        # Layers keep values forever by default; every finite Django timeout is passed
        # explicitly per write, so "TIMEOUT: None" really means forever.
        memory = MemoryLayer(
            ttl=memory_ttl,
            max_size=options.get("MEMORY_MAX_SIZE"),
            eviction=options.get("MEMORY_EVICTION", "lru"),
            max_bytes=options.get("MEMORY_MAX_BYTES"),
            clock=clock,
        )
        self._caps: dict[str, float | None] = {"memory": memory_ttl}
        self._memory = memory
        urls = _split_locations(server)
        sync_layers: list[Any] = [memory]
        async_layers: list[Any] = [memory]
        self._remote_sync: list[Any] = []
        self._remote_async: list[Any] = []
        if urls:
            remote_sync, remote_async = _redis_layers(urls, options)
            sync_layers += remote_sync
            async_layers += remote_async
            self._remote_sync = remote_sync
            self._remote_async = remote_async
            for layer in remote_sync:
                self._caps[layer.name] = None
            from ..redis._scripts import COUNTER_COMPARE_AND_SET

            # Registered once per client; redis-py calls it by SHA and reloads on NOSCRIPT.
            self._cas_sync = remote_sync[0].client.register_script(COUNTER_COMPARE_AND_SET)
            self._cas_async = remote_async[0].client.register_script(COUNTER_COMPARE_AND_SET)
        self._all_local = not urls
        stack_options: dict[str, Any] = {
            "clock": clock,
            "write_policy": options.get("WRITE_POLICY", "strict"),
            "graceful_degradation": options.get("GRACEFUL_DEGRADATION"),
        }
        self._stack = SyncCacheStack(sync_layers, **stack_options)
        tag_lock = threading.Lock()
        shared_index = self._stack._tags
        self._stack._tags = _LockedTagIndex(shared_index, tag_lock)
        self._astack = CacheStack(
            async_layers, tag_index=_SharedTagIndex(shared_index, tag_lock), **stack_options
        )
        # Serialises the read-modify-write operations (add, incr, touch, delete's result).
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ keys and timeouts

    def _key(self, key: Any, version: int | None) -> str:
        made = self.make_and_validate_key(key, version=version)
        return _stack_key(str(made))

    def _seconds(self, timeout: Any) -> float | None:
        """Seconds to keep a value (``None`` = forever, ``<= 0`` = do not keep)."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        return None if timeout is None else float(timeout)

    def _ttl(self, seconds: float | None) -> dict[str, float] | None:
        """Per-layer TTL option: the Django timeout, capped by a layer's own cap."""
        if seconds is None:
            return None  # every layer's default: its cap, or forever
        return {
            name: seconds if cap is None else min(seconds, cap) for name, cap in self._caps.items()
        }

    def _write_kwargs(self, seconds: float | None, tags: Iterable[str] | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        ttl = self._ttl(seconds)
        if ttl is not None:
            kwargs["ttl"] = ttl
        if tags:
            kwargs["tags"] = list(tags)
        return kwargs

    # ------------------------------------------------------------------ sync API

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        """The cached value, or ``default`` on a miss (a cached ``None`` is returned as is)."""
        box = self._stack.get(self._key(key, version))
        # Values are boxed in a one-item list so that a cached None differs from a miss.
        return default if box is None else box[0]

    def set(
        self,
        key: Any,
        value: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        version: int | None = None,
        *,
        tags: Iterable[str] | None = None,
    ) -> None:
        """Store ``value``; ``tags`` (an extra) makes it reachable by :meth:`invalidate_by_tag`."""
        self._set(self._key(key, version), value, self._seconds(timeout), tags)

    def _set(self, key: str, value: Any, seconds: float | None, tags: Iterable[str] | None) -> None:
        if seconds is not None and seconds <= 0:
            self._stack.delete(key)
            return
        self._stack.set(key, [value], **self._write_kwargs(seconds, tags))

    def add(
        self,
        key: Any,
        value: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        version: int | None = None,
        *,
        tags: Iterable[str] | None = None,
    ) -> bool:
        """Store ``value`` only if ``key`` is absent; whether it was stored."""
        stack_key = self._key(key, version)
        with self._lock:
            if self._stack.has(stack_key):
                return False
            self._set(stack_key, value, self._seconds(timeout), tags)
            return True

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        """Give ``key`` a new timeout; whether it existed."""
        stack_key = self._key(key, version)
        with self._lock:
            info = self._stack.inspect(stack_key)
            box = self._stack.get(stack_key)
            if box is None:
                return False
            tags = info.tags if info is not None else ()
            self._set(stack_key, box[0], self._seconds(timeout), tags)
            return True

    def delete(self, key: Any, version: int | None = None) -> bool:
        """Remove ``key``; whether it was there."""
        stack_key = self._key(key, version)
        with self._lock:
            existed = self._stack.has(stack_key)
            self._stack.delete(stack_key)
            return existed

    def has_key(self, key: Any, version: int | None = None) -> bool:
        """Whether ``key`` holds an unexpired value."""
        return self._stack.has(self._key(key, version))

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        """Add ``delta`` to the value, keeping its expiry and tags; the new value.

        With a Redis ``LOCATION`` the update is atomic across threads and processes: the
        stored envelope is read, incremented and written back with a compare-and-set on the
        first Redis layer (retried when another writer got in between), and this process's
        memory copy is dropped so that its next read sees the Redis value. Other processes'
        memory layers keep their copy until ``MEMORY_TTL`` passes, as after any write.

        Raises:
            ValueError: If ``key`` is absent (or expired).
            CacheLayerError: If Redis fails, or too many writers kept winning the race.
        """
        stack_key = self._key(key, version)
        if self._remote_sync:
            return self._redis_incr(stack_key, key, delta)
        with self._lock:
            box = self._stack.get(stack_key)
            if box is None:
                raise ValueError(f"Key '{key}' not found")
            new_value = box[0] + delta
            info = self._stack.inspect(stack_key)
            remaining = info.fresh_ttl if info is not None else None
            tags = info.tags if info is not None else ()
            if remaining is not None and remaining <= 0:
                raise ValueError(f"Key '{key}' not found")
            self._set(stack_key, new_value, remaining, tags)
            return new_value

    def _incremented(self, stack_key: str, key: Any, raw: Any, delta: int) -> tuple[Any, Entry]:
        """(new value, new entry) from the bytes ``raw`` read from the first Redis layer.

        Only the value changes: stored_at, the expiry times and the tags are kept as stored.
        """
        layer = self._remote_sync[0]
        entry: Entry | None = None
        if raw is not None:
            try:
                entry = layer.codec.decode(raw)
            except CorruptEntryError:
                entry = None  # unreadable bytes hold no number to add to: "not found"
        if entry is None or not entry.is_fresh(self._clock()):
            # Redis is the authority: a copy only this process's memory still holds is stale.
            self._memory.delete(stack_key)
            raise ValueError(f"Key '{key}' not found")
        box = entry.value
        if not isinstance(box, list) or len(box) != 1:
            raise ValueError(f"Key '{key}' does not hold a value stored by this backend")
        new_value = box[0] + delta
        return new_value, dataclasses.replace(entry, value=[new_value])

    def _encode_counter(self, entry: Entry) -> bytes:
        layer = self._remote_sync[0]
        try:
            data: bytes = layer.codec.encode(entry)
        except Exception as exc:
            raise CacheLayerError(layer.name, "incr", f"value cannot be serialized: {exc}") from exc
        return data

    def _redis_incr(self, stack_key: str, key: Any, delta: int) -> Any:
        layer = self._remote_sync[0]
        raw_key = layer._key(stack_key)
        for attempt in range(_INCR_ATTEMPTS):
            with layer._driver_errors("incr"):
                raw = layer.client.get(raw_key)
            new_value, entry = self._incremented(stack_key, key, raw, delta)
            data = self._encode_counter(entry)
            with layer._driver_errors("incr"):
                replaced = self._cas_sync(keys=[raw_key], args=[raw, data])
            if replaced:
                self._memory.delete(stack_key)
                now = self._clock()
                for other in self._remote_sync[1:]:
                    # Copies for the other Redis layers; the first one alone is atomic.
                    other.set(stack_key, entry, entry.storage_ttl(now))
                return new_value
            time.sleep(_incr_backoff(attempt))
        raise CacheLayerError(layer.name, "incr", "too many concurrent writers; gave up")

    def decr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        """Subtract ``delta``; ``ValueError`` if ``key`` is absent."""
        return self.incr(key, -delta, version=version)

    def get_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        """A dict of the keys found (cached ``None`` values included)."""
        wanted = {self._key(k, version): k for k in keys}
        if not wanted:
            return {}
        boxes = self._stack.get_many(list(wanted))
        return {wanted[k]: box[0] for k, box in zip(wanted, boxes, strict=True) if box is not None}

    def set_many(
        self,
        data: Mapping[Any, Any],
        timeout: Any = DEFAULT_TIMEOUT,
        version: int | None = None,
        *,
        tags: Iterable[str] | None = None,
    ) -> list[Any]:
        """Store every item; returns the keys that failed (always ``[]``: failures raise)."""
        seconds = self._seconds(timeout)
        items = [(self._key(k, version), v) for k, v in data.items()]
        if seconds is not None and seconds <= 0:
            self._stack.delete_many([k for k, _ in items])
            return []
        kwargs = self._write_kwargs(seconds, tags)
        self._stack.set_many([CacheEntry(k, [v], options=kwargs or None) for k, v in items])
        return []

    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        """Remove several keys."""
        self._stack.delete_many([self._key(k, version) for k in keys])

    def clear(self) -> None:
        """Remove every key of this cache (the Redis layer clears only its prefix)."""
        self._stack.clear()

    def close(self, **kwargs: Any) -> None:
        """Called by Django at the end of each request: the stacks live as long as the process."""

    def shutdown(self) -> None:
        """Close the synchronous stack and its Redis connections (process shutdown, tests).

        Django's :meth:`close` runs after every request and must leave the cache usable, so
        releasing connections is this separate call. Async code calls :meth:`ashutdown` too.
        """
        self._stack.close()

    def invalidate_by_tag(self, tag: str) -> int:
        """Delete every key stored with ``tag``; the number of keys removed."""
        return self._stack.invalidate_by_tag(tag)

    def get_or_set(
        self, key: Any, default: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Any:
        """The cached value, or ``default`` (called if callable) stored with ``add``."""
        missing = object()
        value = self.get(key, missing, version=version)
        if value is missing:
            if callable(default):
                default = default()
            self.add(key, default, timeout=timeout, version=version)
            # Another writer may have won the add: return what the cache holds now.
            value = self.get(key, default, version=version)
        return value

    # ------------------------------------------------------------------ async API

    async def aget(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        """Async :meth:`get` on the asyncio stack."""
        box = await self._astack.get(self._key(key, version))
        return default if box is None else box[0]

    async def aset(
        self,
        key: Any,
        value: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        version: int | None = None,
        *,
        tags: Iterable[str] | None = None,
    ) -> None:
        """Async :meth:`set`."""
        await self._aset(self._key(key, version), value, self._seconds(timeout), tags)

    async def _aset(
        self, key: str, value: Any, seconds: float | None, tags: Iterable[str] | None
    ) -> None:
        if seconds is not None and seconds <= 0:
            await self._astack.delete(key)
            return
        await self._astack.set(key, [value], **self._write_kwargs(seconds, tags))

    async def aadd(
        self,
        key: Any,
        value: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        version: int | None = None,
        *,
        tags: Iterable[str] | None = None,
    ) -> bool:
        """Async :meth:`add`."""
        if self._all_local:
            # Memory only: no I/O inside, so the thread lock is held for microseconds.
            return self.add(key, value, timeout, version, tags=tags)
        stack_key = self._key(key, version)
        if await self._astack.has(stack_key):
            return False
        await self._aset(stack_key, value, self._seconds(timeout), tags)
        return True

    async def atouch(
        self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        """Async :meth:`touch`."""
        if self._all_local:
            return self.touch(key, timeout, version)
        stack_key = self._key(key, version)
        info = await self._astack.inspect(stack_key)
        box = await self._astack.get(stack_key)
        if box is None:
            return False
        tags = info.tags if info is not None else ()
        await self._aset(stack_key, box[0], self._seconds(timeout), tags)
        return True

    async def adelete(self, key: Any, version: int | None = None) -> bool:
        """Async :meth:`delete`."""
        stack_key = self._key(key, version)
        existed = await self._astack.has(stack_key)
        await self._astack.delete(stack_key)
        return existed

    async def ahas_key(self, key: Any, version: int | None = None) -> bool:
        """Async :meth:`has_key`."""
        return await self._astack.has(self._key(key, version))

    async def aincr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        """Async :meth:`incr` (atomic across processes with a Redis ``LOCATION``)."""
        if self._all_local:
            return self.incr(key, delta, version)
        stack_key = self._key(key, version)
        layer = self._remote_async[0]
        raw_key = layer._key(stack_key)
        for attempt in range(_INCR_ATTEMPTS):
            with layer._driver_errors("incr"):
                raw = await layer.client.get(raw_key)
            new_value, entry = self._incremented(stack_key, key, raw, delta)
            data = self._encode_counter(entry)
            with layer._driver_errors("incr"):
                replaced = await self._cas_async(keys=[raw_key], args=[raw, data])
            if replaced:
                self._memory.delete(stack_key)
                now = self._clock()
                for other in self._remote_async[1:]:
                    await other.set(stack_key, entry, entry.storage_ttl(now))
                return new_value
            await asyncio.sleep(_incr_backoff(attempt))
        raise CacheLayerError(layer.name, "incr", "too many concurrent writers; gave up")

    async def adecr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        """Async :meth:`decr`."""
        return await self.aincr(key, -delta, version=version)

    async def aget_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        """Async :meth:`get_many`."""
        wanted = {self._key(k, version): k for k in keys}
        if not wanted:
            return {}
        boxes = await self._astack.get_many(list(wanted))
        return {wanted[k]: box[0] for k, box in zip(wanted, boxes, strict=True) if box is not None}

    async def aset_many(
        self,
        data: Mapping[Any, Any],
        timeout: Any = DEFAULT_TIMEOUT,
        version: int | None = None,
        *,
        tags: Iterable[str] | None = None,
    ) -> list[Any]:
        """Async :meth:`set_many`."""
        seconds = self._seconds(timeout)
        items = [(self._key(k, version), v) for k, v in data.items()]
        if seconds is not None and seconds <= 0:
            await self._astack.delete_many([k for k, _ in items])
            return []
        kwargs = self._write_kwargs(seconds, tags)
        await self._astack.set_many([CacheEntry(k, [v], options=kwargs or None) for k, v in items])
        return []

    async def adelete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        """Async :meth:`delete_many`."""
        await self._astack.delete_many([self._key(k, version) for k in keys])

    async def aclear(self) -> None:
        """Async :meth:`clear`."""
        await self._astack.clear()

    async def aclose(self, **kwargs: Any) -> None:
        """Async :meth:`close` (nothing per request)."""

    async def ashutdown(self) -> None:
        """Close the asyncio stack and its Redis connections (on the loop that used them)."""
        await self._astack.aclose()

    async def ainvalidate_by_tag(self, tag: str) -> int:
        """Async :meth:`invalidate_by_tag`."""
        return await self._astack.invalidate_by_tag(tag)

    async def aget_or_set(
        self, key: Any, default: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Any:
        """Async :meth:`get_or_set` (a callable ``default`` is called synchronously)."""
        missing = object()
        value = await self.aget(key, missing, version=version)
        if value is missing:
            if callable(default):
                default = default()
            await self.aadd(key, default, timeout=timeout, version=version)
            value = await self.aget(key, default, version=version)
        return value
