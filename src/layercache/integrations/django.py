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
- ``SERIALIZER``: how values are encoded, in every layer. ``"pickle"`` (default): like Django's
  own backends, any picklable value (model instances, ``cache_page`` responses, functions,
  classes), every get returns a copy, an unpicklable value raises ``pickle.PickleError``;
  each pickle is HMAC-SHA256 signed with a key derived from ``SECRET_KEY`` and ``PREFIX``
  (Django's ``salted_hmac``), and bytes that do not verify are never unpickled: they read as
  a miss, are reported (a ``layercache`` log warning) and deleted. Every process
  sharing the Redis needs the same ``SECRET_KEY``. ``"json"``: JSON types only (a tuple comes
  back as a list), never pickle; ``"msgpack"``; or a serializer object (``dumps`` to bytes,
  ``loads``), a class, or a dotted path to either.
- ``COMPRESSION``: the Redis layer's compression (default none).
- ``GRACEFUL_DEGRADATION``: the stack option (``True`` or ``{"retry_after": seconds}``).
- ``WRITE_POLICY``: ``"strict"`` (default) or ``"best-effort"``.
- ``CLOCK``: a zero-argument callable returning wall-clock seconds (tests inject a fake one).

Several processes (Redis ``LOCATION`` only):

- ``INVALIDATION_BUS``: ``True``, or a dict with any of ``CHANNEL`` (default ``PREFIX`` +
  ``"invalidation"``), ``SIGNING_SECRET`` (HMAC-sign every message and refuse unsigned ones;
  recommended), ``SOURCE_ID``, ``REPLAY_WINDOW`` and ``TIMEOUT`` (seconds). A ``set``,
  ``delete``, ``clear``, ``incr`` or tag invalidation in one process then drops the other
  processes' in-process copies within milliseconds, instead of after ``MEMORY_TTL``. The process
  subscribes once per configuration (see below), on a daemon thread named
  ``layercache-bus:<channel>`` (started when the engine is built, stopped by
  :meth:`LayerCacheBackend.shutdown`); the ``a*`` methods share its memory layer, so they publish
  on the same channel with the same identity but do not subscribe again. A ``SOURCE_ID`` set
  by hand must differ between processes (the default is unique per process).
- ``TAG_INDEX``: ``"redis"`` (the default with a Redis ``LOCATION``): the tag index lives in
  Redis under ``<PREFIX without its trailing ':'>-tag-index``, shared by every process, so
  ``invalidate_by_tag`` reaches keys other processes stored; ``"memory"``: each process indexes
  only what it stored itself.
- ``SINGLE_FLIGHT``: ``True`` makes ``get_or_set(key, callable)`` call the callable once across
  every process on a cold key (a Redis lock under ``<PREFIX without ':'>-single-flight``; the
  others wait for the value to appear, then read it).

A wrong option name or value raises ``ImproperlyConfigured`` when the backend is built.

One engine per process and configuration: Django builds one backend instance per thread (and, in
async code, per asyncio context). As its ``LocMemCache`` shares one store per ``LOCATION``, every
instance built in a process with the same ``LOCATION`` and ``OPTIONS`` shares one engine: the
memory layer (threads share L1 values), the Redis clients, the bus subscription, the tag index,
the lock that makes memory-only ``incr`` atomic across threads, and the counters' degradation
state. Options compare by value, except objects such as a serializer instance or a ``CLOCK``,
which compare by identity (the same object: the same engine). An instance itself keeps only
``KEY_PREFIX``, ``VERSION``, ``KEY_FUNCTION`` and ``TIMEOUT``. The ``a*`` methods run on an
asyncio side built on first use once per event loop (a :class:`~layercache.CacheStack` on the
shared memory layer, with its own redis.asyncio clients, never shared between loops); sync-only
code never builds one. A process keeps at most 64 engines; building one more shuts down the
least recently created one (its instances then transparently build it again).

``incr``/``decr`` with a Redis ``LOCATION`` are atomic across processes: the first Redis layer
is the authority of counters (compare-and-set on the stored entry). When that Redis is
unreachable:

- with ``GRACEFUL_DEGRADATION`` on, ``incr`` behaves as on an empty cache: it raises Django's
  ``ValueError`` for a missing key (never a connection error, so the site stays up) and never
  counts on a copy only this process holds (two processes would count apart, and a stale copy
  would overwrite Redis once it is back). A counter that was stored again meanwhile (the usual
  ``except ValueError: cache.set(key, 1)``) lives in memory only until Redis is back, where the
  stack's degradation rules drop it from Redis; counting starts again from there. While the stack
  keeps Redis out of service (``retry_after``), ``incr`` does not try it either.
- without it, ``incr`` raises :class:`~layercache.CacheLayerError`, like every other operation.

The async ``a*`` methods run on a :class:`~layercache.CacheStack` (one per event loop) that
shares the memory layer and tag index of the synchronous :class:`~layercache.SyncCacheStack` and
reaches the same Redis keys, instead of Django's default of hopping to a worker thread. The
memory layer holds the encoded bytes, as ``LocMemCache`` holds pickles: mutating a value after
``set``, or one a ``get`` returned, never changes the cached value.

Django calls :meth:`LayerCacheBackend.close` after every request; it keeps the engine open.
At process shutdown, :meth:`LayerCacheBackend.shutdown` closes the configuration's engine for
the whole process (stops the bus thread, releases the Redis connections) and removes it from the
registry; :meth:`LayerCacheBackend.ashutdown` does the same from async code and first awaits the
close of the running loop's asyncio side (asyncio sides of other loops still running are closed
on their loop, not awaited; those of finished loops are dropped). Any instance used afterwards
transparently builds a fresh engine on its next call.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

try:
    from django.core.cache.backends.base import (  # type: ignore[import-untyped]
        DEFAULT_TIMEOUT,
        BaseCache,
    )
except ImportError as exc:  # pragma: no cover - exercised only without Django
    raise ImportError(
        "layercache.integrations.django needs Django: pip install 'layercache-py[django]'"
    ) from exc

from .. import validate_key
from ._django_engine import Engine, engine_for, live_engine
from ._django_ops import UnreadableValueError

__all__ = ["LayerCacheBackend"]

# Keys layercache would refuse (too long, control characters) are stored under a digest; the
# marker also covers valid keys that happen to start with it, so the mapping stays injective.
_HASHED = "#sha256:"


def _stack_key(key: str) -> str:
    if not key.startswith(_HASHED):
        try:
            return validate_key(key)
        except ValueError:
            pass  # Django only warns about such keys; store them under their digest
    return _HASHED + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class LayerCacheBackend(BaseCache):  # type: ignore[misc]
    """Django cache backend reading an in-process layer first, then Redis (when configured).

    Every backend built with the same ``LOCATION`` and ``OPTIONS`` in one process shares one
    engine (memory layer, Redis clients, bus subscription), as Django's ``LocMemCache`` shares
    one store per ``LOCATION``; the instance itself holds only the key prefix, version, key
    function and default timeout.

    Args:
        server: ``LOCATION``: empty for memory only, or Redis URL(s) (a list, or a string
            separated by ``,`` or ``;``).
        params: The rest of the ``CACHES`` entry (``TIMEOUT``, ``KEY_PREFIX``, ``VERSION``,
            ``KEY_FUNCTION``, ``OPTIONS``).

    Raises:
        ImproperlyConfigured: On an unknown option, or an option value that cannot work.
    """

    def __init__(self, server: Any, params: Mapping[str, Any]) -> None:
        super().__init__(params)
        self._location = server
        self._options = dict(params.get("OPTIONS") or {})
        self._engine = engine_for(server, self._options)

    def _reopen(self) -> Engine:
        """The engine was shut down: the registry's live one (built again if need be)."""
        engine = self._engine = engine_for(self._location, self._options)
        return engine

    def _live(self) -> Engine:
        engine = self._engine
        return self._reopen() if engine.closed else engine

    def _engines_to_close(self) -> list[Engine]:
        """This instance's engine, and the configuration's live one if another instance has
        built it again since."""
        live = live_engine(self._engine.key)
        return [self._engine] if live in (None, self._engine) else [self._engine, live]

    # ------------------------------------------------------------------ keys and timeouts

    def _key(self, key: Any, version: int | None) -> str:
        made = self.make_and_validate_key(key, version=version)
        return _stack_key(str(made))

    def _seconds(self, timeout: Any) -> float | None:
        """Seconds to keep a value (``None`` = forever, ``<= 0`` = do not keep)."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        return None if timeout is None else float(timeout)

    # ------------------------------------------------------------------ sync API

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        """The cached value, or ``default`` on a miss (a cached ``None`` is returned as is)."""
        # The hot path stays a direct call (no step machinery on an L1 hit).
        engine = self._engine
        if engine.closed:
            engine = self._reopen()
        stack_key = self._key(key, version)
        data = engine.stack.get(stack_key)
        if data is None:
            return default
        try:
            return engine.ops.decode(data)
        except UnreadableValueError as exc:
            engine.run(engine.ops.drop(stack_key, exc, "get"))
            return default

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
        engine = self._live()
        data = engine.ops.encode(value)
        engine.run(engine.ops.write(self._key(key, version), data, self._seconds(timeout), tags))

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
        engine = self._live()
        key, data = self._key(key, version), engine.ops.encode(value)  # outside the lock
        return engine.run_atomic(engine.ops.add(key, data, self._seconds(timeout), tags))

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        """Give ``key`` a new timeout; whether it existed."""
        engine = self._live()
        return engine.run_atomic(engine.ops.touch(self._key(key, version), self._seconds(timeout)))

    def delete(self, key: Any, version: int | None = None) -> bool:
        """Remove ``key``; whether it was there."""
        engine = self._live()
        return engine.run_atomic(engine.ops.delete(self._key(key, version)))

    def has_key(self, key: Any, version: int | None = None) -> bool:
        """Whether ``key`` holds an unexpired value."""
        found: bool = self._live().stack.has(self._key(key, version))
        return found

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        """Add ``delta`` to the value, keeping its expiry and tags; the new value.

        With a Redis ``LOCATION`` the update is atomic across threads and processes: the
        stored envelope is read, incremented and written back with a compare-and-set on the
        first Redis layer (retried when another writer got in between), and this process's
        memory copy is dropped so that its next read sees the Redis value. Other processes'
        memory layers drop theirs through ``INVALIDATION_BUS``; without a bus they keep their
        copy until ``MEMORY_TTL`` passes, as after any write. Memory only, it is atomic across
        the threads of the process (they share one engine and its lock).

        Raises:
            ValueError: If ``key`` is absent (or expired); also while Redis is unreachable
                under ``GRACEFUL_DEGRADATION`` (see the module documentation).
            CacheLayerError: If Redis fails (without graceful degradation), or too many
                writers kept winning the race.
        """
        engine = self._live()
        steps = engine.ops.incr(self._key(key, version), key, delta)
        if engine.urls:
            return engine.run(steps)
        return engine.run_atomic(steps)

    def decr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        """Subtract ``delta``; ``ValueError`` if ``key`` is absent."""
        return self.incr(key, -delta, version=version)

    def get_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        """A dict of the keys found (cached ``None`` values included)."""
        engine = self._live()
        return engine.run(engine.ops.get_many({self._key(k, version): k for k in keys}))

    def set_many(
        self,
        data: Mapping[Any, Any],
        timeout: Any = DEFAULT_TIMEOUT,
        version: int | None = None,
        *,
        tags: Iterable[str] | None = None,
    ) -> list[Any]:
        """Store every item; returns the keys that failed (always ``[]``: failures raise)."""
        engine = self._live()
        return engine.run(engine.ops.set_many(*self._items(engine, data, timeout, version), tags))

    def _items(
        self, engine: Engine, data: Mapping[Any, Any], timeout: Any, version: int | None
    ) -> tuple[list[tuple[str, bytes]], float | None]:
        # Every value is encoded before the first is written: one that fails writes nothing.
        items = [(self._key(k, version), engine.ops.encode(v)) for k, v in data.items()]
        return items, self._seconds(timeout)

    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        """Remove several keys."""
        self._live().stack.delete_many([self._key(k, version) for k in keys])

    def clear(self) -> None:
        """Remove every key of this cache (the Redis layer clears only its prefix)."""
        self._live().stack.clear()

    def close(self, **kwargs: Any) -> None:
        """Called by Django at the end of each request: the engine lives as long as the process."""

    def shutdown(self) -> None:
        """Close this configuration's engine for the whole process: stop the invalidation bus
        thread, release the Redis connections (process shutdown, tests).

        Every backend of the same configuration (every thread's) shares the engine; one still
        used afterwards transparently builds a new one. Asyncio stacks of event loops still
        running are closed on their loop; :meth:`ashutdown` also awaits the current loop's.
        Django's :meth:`close` runs after every request and must leave the cache usable, so
        releasing connections is this separate call.
        """
        for engine in self._engines_to_close():
            engine.shutdown()

    def invalidate_by_tag(self, tag: str) -> int:
        """Delete every key stored with ``tag``; the number of keys removed."""
        removed: int = self._live().stack.invalidate_by_tag(tag)
        return removed

    def get_or_set(
        self, key: Any, default: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Any:
        """The cached value, or ``default`` (called if callable) stored with ``add``.

        With ``SINGLE_FLIGHT`` a callable ``default`` runs once across every process on a cold
        key; the other callers wait for its value and get it.
        """
        engine = self._live()
        return engine.run(
            engine.ops.get_or_set(self._key(key, version), default, self._seconds(timeout))
        )

    # ------------------------------------------------------------------ async API

    async def aget(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        """Async :meth:`get` on the running loop's asyncio stack."""
        engine = self._engine
        if engine.closed:
            engine = self._reopen()
        stack_key = self._key(key, version)
        data = await engine.async_side().stack.get(stack_key)
        if data is None:
            return default
        try:
            return engine.ops.decode(data)
        except UnreadableValueError as exc:
            await engine.arun(engine.ops.drop(stack_key, exc, "get"))
            return default

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
        engine = self._live()
        data = engine.ops.encode(value)
        await engine.arun(
            engine.ops.write(self._key(key, version), data, self._seconds(timeout), tags)
        )

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
        engine = self._live()
        key, data = self._key(key, version), engine.ops.encode(value)
        return await engine.arun_atomic(engine.ops.add(key, data, self._seconds(timeout), tags))

    async def atouch(
        self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        """Async :meth:`touch`."""
        engine = self._live()
        steps = engine.ops.touch(self._key(key, version), self._seconds(timeout))
        return await engine.arun_atomic(steps)

    async def adelete(self, key: Any, version: int | None = None) -> bool:
        """Async :meth:`delete`."""
        engine = self._live()
        return await engine.arun_atomic(engine.ops.delete(self._key(key, version)))

    async def ahas_key(self, key: Any, version: int | None = None) -> bool:
        """Async :meth:`has_key`."""
        found: bool = await self._live().async_side().stack.has(self._key(key, version))
        return found

    async def aincr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        """Async :meth:`incr` (atomic across processes with a Redis ``LOCATION``)."""
        engine = self._live()
        return await engine.arun_atomic(engine.ops.incr(self._key(key, version), key, delta))

    async def adecr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        """Async :meth:`decr`."""
        return await self.aincr(key, -delta, version=version)

    async def aget_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        """Async :meth:`get_many`."""
        engine = self._live()
        return await engine.arun(engine.ops.get_many({self._key(k, version): k for k in keys}))

    async def aset_many(
        self,
        data: Mapping[Any, Any],
        timeout: Any = DEFAULT_TIMEOUT,
        version: int | None = None,
        *,
        tags: Iterable[str] | None = None,
    ) -> list[Any]:
        """Async :meth:`set_many`."""
        engine = self._live()
        items = self._items(engine, data, timeout, version)
        return await engine.arun(engine.ops.set_many(*items, tags))

    async def adelete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        """Async :meth:`delete_many`."""
        stack = self._live().async_side().stack
        await stack.delete_many([self._key(k, version) for k in keys])

    async def aclear(self) -> None:
        """Async :meth:`clear`."""
        await self._live().async_side().stack.clear()

    async def aclose(self, **kwargs: Any) -> None:
        """Async :meth:`close` (nothing per request)."""

    async def ashutdown(self) -> None:
        """Async :meth:`shutdown`: close the running loop's asyncio stack and its Redis
        connections (on this loop, which they belong to), then the engine."""
        for engine in self._engines_to_close():
            await engine.aclose_side()
            # The engine joins the bus thread: not on the event loop.
            await asyncio.to_thread(engine.shutdown)

    async def ainvalidate_by_tag(self, tag: str) -> int:
        """Async :meth:`invalidate_by_tag`."""
        removed: int = await self._live().async_side().stack.invalidate_by_tag(tag)
        return removed

    async def aget_or_set(
        self, key: Any, default: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Any:
        """Async :meth:`get_or_set` (a callable ``default`` is called synchronously, or in a
        worker thread under ``SINGLE_FLIGHT``)."""
        engine = self._live()
        steps = engine.ops.get_or_set(self._key(key, version), default, self._seconds(timeout))
        return await engine.arun(steps)
