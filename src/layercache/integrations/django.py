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

Several processes (Redis ``LOCATION`` only):

- ``INVALIDATION_BUS``: ``True``, or a dict with any of ``CHANNEL`` (default ``PREFIX`` +
  ``"invalidation"``), ``SIGNING_SECRET`` (HMAC-sign every message and refuse unsigned ones;
  recommended), ``SOURCE_ID``, ``REPLAY_WINDOW`` and ``TIMEOUT`` (seconds). A ``set``,
  ``delete``, ``clear``, ``incr`` or tag invalidation in one process then drops the other
  processes' in-process copies within milliseconds, instead of after ``MEMORY_TTL``. Each backend
  instance subscribes once, on a daemon thread named ``layercache-bus:<channel>`` (started on
  first use, stopped by :meth:`LayerCacheBackend.shutdown`); the ``a*`` methods share its memory
  layer, so they publish on the same channel with the same identity but do not subscribe again.
- ``TAG_INDEX``: ``"redis"`` (the default with a Redis ``LOCATION``): the tag index lives in
  Redis under ``<PREFIX without its trailing ':'>-tag-index``, shared by every process, so
  ``invalidate_by_tag`` reaches keys other processes stored; ``"memory"``: each process indexes
  only what it stored itself.
- ``SINGLE_FLIGHT``: ``True`` makes ``get_or_set(key, callable)`` call the callable once across
  every process on a cold key (a Redis lock under ``<PREFIX without ':'>-single-flight``; the
  others wait for the value to appear, then read it).

A wrong option name or value raises ``ImproperlyConfigured`` when the backend is built.

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

The async ``a*`` methods run on a :class:`~layercache.CacheStack` that shares the same layers
and tag index as the synchronous :class:`~layercache.SyncCacheStack`, instead of Django's default
of hopping to a worker thread. Values in the memory layer are kept by reference (as with any
in-process cache of objects, do not mutate a value you got back).

Django calls :meth:`LayerCacheBackend.close` after every request; it keeps the backend usable.
Release the connections and stop the bus thread with :meth:`LayerCacheBackend.shutdown` (and
:meth:`LayerCacheBackend.ashutdown` when the ``a*`` methods were used) at process shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import random
import threading
import time
import types
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from typing import Any, TypeVar

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
from .._types import InvalidationMessage
from ..layers.memory import MemoryLayer

__all__ = ["LayerCacheBackend"]

_T = TypeVar("_T")
_logger = logging.getLogger("layercache")

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
        "INVALIDATION_BUS",
        "TAG_INDEX",
        "SINGLE_FLIGHT",
    }
)
# INVALIDATION_BUS dict keys -> RedisInvalidationBus arguments.
_BUS_OPTIONS = {
    "CHANNEL": "channel",
    "SIGNING_SECRET": "signing_secret",
    "SOURCE_ID": "source_id",
    "REPLAY_WINDOW": "replay_window",
    "TIMEOUT": "timeout",
}
_TAG_INDEXES = ("redis", "memory")
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


def _not_found(key: Any) -> ValueError:
    return ValueError(f"Key '{key}' not found")


# ---------------------------------------------------------------------- one body, two drivers
#
# Every operation is written once, as a generator that yields the I/O it needs (_Call) and
# receives the result. _run performs those calls on the synchronous side (SyncCacheStack, sync
# Redis clients, time.sleep); _arun awaits them on the asyncio side (CacheStack, asyncio clients,
# asyncio.sleep). A failed call is thrown back into the generator at its yield.


@dataclasses.dataclass(frozen=True)
class _Call:
    """One I/O step: ``<side's target>.<method>(*args, **kwargs)``.

    ``guard`` names the Redis operation for calls made on a raw client: its driver errors become
    ``CacheLayerError`` as inside the layer. ``plain`` calls are synchronous on both sides.
    """

    target: str
    method: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    guard: str | None = None
    plain: bool = False


_Steps = Generator[_Call, Any, _T]


class _Done:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _advance(steps: _Steps[Any], reply: Any, failed: bool) -> _Call | _Done:
    """Send the last call's result (or throw its error) into ``steps``: its next call or end."""
    try:
        return steps.throw(reply) if failed else steps.send(reply)
    except StopIteration as done:
        return _Done(done.value)


class _Side:
    """What the steps run against on one side: targets by name, and the counter layer."""

    def __init__(self, targets: dict[str, Any], counter: Any) -> None:
        self.targets = targets
        self.counter = counter

    def prepare(self, call: _Call) -> tuple[Callable[..., Any], Any]:
        """The callable of ``call`` and the context its errors pass through."""
        fn = getattr(self.targets[call.target], call.method)
        if call.guard is None:
            return fn, contextlib.nullcontext()
        return fn, self.counter._driver_errors(call.guard)


class _PublishOnlyBus:
    """The asyncio stack's invalidation bus: it publishes, but never subscribes.

    Both stacks share one memory layer, and the synchronous stack's subscriber already applies
    what other processes announce to it. It carries the sync bus's ``source_id``, so that
    subscriber ignores what this process publishes.
    """

    def __init__(self, bus: Any) -> None:
        self._bus = bus

    @property
    def source_id(self) -> str:
        """The identity shared with the synchronous bus."""
        source_id: str = self._bus.source_id
        return source_id

    async def start(self, on_message: Any, on_reconnect: Any, on_error: Any) -> None:
        """Nothing to start: the synchronous bus holds this process's subscription."""

    async def publish(self, message: InvalidationMessage) -> None:
        """Publish ``message`` on the shared channel."""
        await self._bus.publish(message)

    async def aclose(self) -> None:
        """Close the wrapped bus (it never subscribed; its client belongs to the Redis layer)."""
        await self._bus.aclose()


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


# ---------------------------------------------------------------------- configuration


def _split_locations(location: Any) -> list[str]:
    if not location:
        return []
    if isinstance(location, str):
        return [part.strip() for part in location.replace(";", ",").split(",") if part.strip()]
    if isinstance(location, Sequence):
        return [str(part) for part in location if part]
    raise ImproperlyConfigured(f"LOCATION must be a str or a list of str, not {location!r}")


def _retry_after(value: Any) -> float | None:
    """Seconds a failed layer is skipped under ``GRACEFUL_DEGRADATION`` (``None``: off); the
    stack validates the value itself."""
    if value is None or value is False:
        return None
    if isinstance(value, Mapping):
        retry = value.get("retry_after", 10)
        return float(retry) if isinstance(retry, int | float) else None
    return 10.0


def _side_prefix(prefix: str, what: str) -> str:
    # Outside the Redis layer's own prefix, so clear() and key scans never meet these keys.
    return f"{prefix.rstrip(':') or 'layercache'}-{what}"


def _bus_options(value: Any, prefix: str) -> dict[str, Any] | None:
    """``INVALIDATION_BUS`` -> bus keyword arguments (``None``: no bus)."""
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, Mapping):
        raise ImproperlyConfigured(f"INVALIDATION_BUS must be True, False or a dict, not {value!r}")
    unknown = set(value) - set(_BUS_OPTIONS)
    if unknown:
        raise ImproperlyConfigured(
            f"unknown INVALIDATION_BUS keys: {', '.join(sorted(map(str, unknown)))} "
            f"(known: {', '.join(sorted(_BUS_OPTIONS))})"
        )
    kwargs = {_BUS_OPTIONS[name]: item for name, item in value.items()}
    kwargs.setdefault("channel", f"{prefix}invalidation")
    return kwargs


def _check_options(options: Mapping[str, Any], remote: bool) -> tuple[str, bool]:
    """Validate the multi-process options: (tag index kind, single flight)."""
    unknown = set(options) - _KNOWN_OPTIONS
    if unknown:
        raise ImproperlyConfigured(
            f"unknown LayerCacheBackend OPTIONS: {', '.join(sorted(map(str, unknown)))}"
        )
    _bus_options(options.get("INVALIDATION_BUS"), "")  # its shape, before where it may work
    tag_index = options.get("TAG_INDEX", "redis" if remote else "memory")
    if tag_index not in _TAG_INDEXES:
        raise ImproperlyConfigured(f"TAG_INDEX must be 'redis' or 'memory', not {tag_index!r}")
    single_flight = options.get("SINGLE_FLIGHT", False)
    if not isinstance(single_flight, bool):
        raise ImproperlyConfigured(f"SINGLE_FLIGHT must be True or False, not {single_flight!r}")
    if not remote:
        wanted = [
            name
            for name, on in (
                ("INVALIDATION_BUS", options.get("INVALIDATION_BUS") not in (None, False)),
                ("TAG_INDEX='redis'", tag_index == "redis"),
                ("SINGLE_FLIGHT", single_flight),
            )
            if on
        ]
        if wanted:
            raise ImproperlyConfigured(f"{', '.join(wanted)} needs a Redis LOCATION")
    return tag_index, single_flight


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


def _coordination(
    options: Mapping[str, Any], sync_client: Any, async_client: Any, tag_index: str, flight: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Stack keyword arguments (sync, async) of the Redis coordination components, built on
    the first Redis layer's clients (decode_responses=False, socket timeouts)."""
    prefix = options.get("PREFIX", "layercache:")
    bus_kwargs = _bus_options(options.get("INVALIDATION_BUS"), prefix)
    sync_kwargs: dict[str, Any] = {}
    async_kwargs: dict[str, Any] = {}
    if bus_kwargs is None and tag_index != "redis" and not flight:
        return sync_kwargs, async_kwargs
    from ..redis.bus import RedisInvalidationBus
    from ..redis.single_flight import RedisSingleFlightCoordinator
    from ..redis.tag_index import RedisTagIndex

    try:
        if bus_kwargs is not None:
            # The factories return the sync twins when given a sync client.
            bus = RedisInvalidationBus(publisher=sync_client, **bus_kwargs)
            bus_kwargs["source_id"] = bus.source_id
            sync_kwargs.update(invalidation_bus=bus, broadcast_l1_invalidation=True)
            async_bus = RedisInvalidationBus(publisher=async_client, **bus_kwargs)
            async_kwargs.update(
                invalidation_bus=_PublishOnlyBus(async_bus), broadcast_l1_invalidation=True
            )
        if tag_index == "redis":
            tags_prefix = _side_prefix(prefix, "tag-index")
            sync_kwargs["tag_index"] = RedisTagIndex(client=sync_client, prefix=tags_prefix)
            async_kwargs["tag_index"] = RedisTagIndex(client=async_client, prefix=tags_prefix)
        if flight:
            flight_prefix = _side_prefix(prefix, "single-flight")
            sync_kwargs["single_flight_coordinator"] = RedisSingleFlightCoordinator(
                client=sync_client, prefix=flight_prefix
            )
            async_kwargs["single_flight_coordinator"] = RedisSingleFlightCoordinator(
                client=async_client, prefix=flight_prefix
            )
    except ValueError as exc:
        raise ImproperlyConfigured(f"LayerCacheBackend OPTIONS: {exc}") from exc
    return sync_kwargs, async_kwargs


class LayerCacheBackend(BaseCache):  # type: ignore[misc]
    """Django cache backend reading an in-process layer first, then Redis (when configured).

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
        options = dict(params.get("OPTIONS") or {})
        urls = _split_locations(server)
        tag_index, single_flight = _check_options(options, bool(urls))
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
        self._retry_after = _retry_after(options.get("GRACEFUL_DEGRADATION"))
        # incr/decr skip Redis until then after a connection failure (graceful degradation).
        self._counter_down_until = 0.0
        self._single_flight = single_flight
        remote_sync: list[Any] = []
        remote_async: list[Any] = []
        stack_options: dict[str, Any] = {
            "clock": clock,
            "write_policy": options.get("WRITE_POLICY", "strict"),
            "graceful_degradation": options.get("GRACEFUL_DEGRADATION"),
        }
        sync_extra: dict[str, Any] = {}
        async_extra: dict[str, Any] = {}
        if urls:
            remote_sync, remote_async = _redis_layers(urls, options)
            for layer in remote_sync:
                self._caps[layer.name] = None
            sync_extra, async_extra = _coordination(
                options, remote_sync[0].client, remote_async[0].client, tag_index, single_flight
            )
        self._remote_sync = remote_sync
        self._all_local = not urls
        self._stack = SyncCacheStack([memory, *remote_sync], **stack_options, **sync_extra)
        if "tag_index" not in async_extra:
            # One in-process index for both stacks, behind one lock.
            tag_lock = threading.Lock()
            shared_index = self._stack._tags
            self._stack._tags = _LockedTagIndex(shared_index, tag_lock)
            async_extra["tag_index"] = _SharedTagIndex(shared_index, tag_lock)
        self._astack = CacheStack([memory, *remote_async], **stack_options, **async_extra)
        # Serialises the read-modify-write operations (add, incr, touch, delete's result).
        self._lock = threading.RLock()
        self._sync = self._side(self._stack, remote_sync, sync_extra, time, self._run_atomic)
        self._async = self._side(
            self._astack, remote_async, async_extra, asyncio, self._arun_atomic
        )
        if "invalidation_bus" in sync_extra:
            self._subscribe()

    def _subscribe(self) -> None:
        """Subscribe now, before this process caches anything in memory.

        The stack would subscribe on its first read miss or write, but not on reads that
        never take that path (``get_many``, ``has_key``): their copies would then miss every
        invalidation. The asyncio stack relies on this subscription too (it only publishes).
        Under graceful degradation a failure is reported and the bus keeps retrying (it drops
        the memory layer once subscribed, as it may have missed messages); without it, the
        failure is raised and the stack closed, so no retrying thread is left behind.
        """
        try:
            self._stack._ensure_bus()
        except BaseException:
            self._stack.close()
            raise

    def _side(
        self,
        stack: Any,
        remote: list[Any],
        extra: Mapping[str, Any],
        sleeper: Any,
        atomic: Callable[..., Any],
    ) -> _Side:
        targets: dict[str, Any] = {
            "stack": stack,
            "clock": sleeper,
            "bus": extra.get("invalidation_bus"),
            "atomic": types.SimpleNamespace(run=atomic),
        }
        targets.update((f"redis{i}", layer) for i, layer in enumerate(remote))
        if remote:
            from ..redis._scripts import COUNTER_COMPARE_AND_SET

            targets["counter"] = remote[0].client
            # Registered once per client; redis-py calls it by SHA and reloads on NOSCRIPT.
            targets["cas"] = remote[0].client.register_script(COUNTER_COMPARE_AND_SET)
        return _Side(targets, remote[0] if remote else None)

    # ------------------------------------------------------------------ drivers

    def _run(self, steps: _Steps[_T]) -> _T:
        """Run ``steps`` on the synchronous stack and clients."""
        reply, failed = None, False
        while not isinstance(step := _advance(steps, reply, failed), _Done):
            fn, guard = self._sync.prepare(step)
            try:
                with guard:
                    reply, failed = fn(*step.args, **step.kwargs), False
            except Exception as exc:
                reply, failed = exc, True
        result: _T = step.value
        return result

    async def _arun(self, steps: _Steps[_T]) -> _T:
        """Run ``steps`` on the asyncio stack and clients."""
        reply, failed = None, False
        while not isinstance(step := _advance(steps, reply, failed), _Done):
            fn, guard = self._async.prepare(step)
            try:
                with guard:
                    reply = fn(*step.args, **step.kwargs)
                    reply, failed = (reply if step.plain else await reply), False
            except Exception as exc:
                reply, failed = exc, True
        result: _T = step.value
        return result

    def _run_atomic(self, steps: _Steps[_T]) -> _T:
        with self._lock:
            return self._run(steps)

    async def _arun_atomic(self, steps: _Steps[_T]) -> _T:
        if self._all_local:
            # Memory only: no I/O inside, so the thread lock is held for microseconds, and the
            # operation is atomic against the synchronous callers too.
            return self._run_atomic(steps)
        return await self._arun(steps)

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

    # ------------------------------------------------------------------ operations (steps)

    def _write(
        self, key: str, value: Any, seconds: float | None, tags: Iterable[str] | None
    ) -> _Steps[None]:
        if seconds is not None and seconds <= 0:
            yield _Call("stack", "delete", (key,))
        else:
            # Values are boxed in a one-item list so that a cached None differs from a miss.
            yield _Call("stack", "set", (key, [value]), self._write_kwargs(seconds, tags))

    def _add(
        self, key: str, value: Any, seconds: float | None, tags: Iterable[str] | None
    ) -> _Steps[bool]:
        if (yield _Call("stack", "has", (key,))):
            return False
        yield from self._write(key, value, seconds, tags)
        return True

    def _touch(self, key: str, seconds: float | None) -> _Steps[bool]:
        info = yield _Call("stack", "inspect", (key,))
        box = yield _Call("stack", "get", (key,))
        if box is None:
            return False
        yield from self._write(key, box[0], seconds, info.tags if info is not None else ())
        return True

    def _delete(self, key: str) -> _Steps[bool]:
        existed: bool = yield _Call("stack", "has", (key,))
        yield _Call("stack", "delete", (key,))
        return existed

    def _get_many(self, keys: Iterable[Any], version: int | None) -> _Steps[dict[Any, Any]]:
        wanted = {self._key(k, version): k for k in keys}
        if not wanted:
            return {}
        boxes = yield _Call("stack", "get_many", (list(wanted),))
        return {wanted[k]: box[0] for k, box in zip(wanted, boxes, strict=True) if box is not None}

    def _set_many(
        self,
        data: Mapping[Any, Any],
        timeout: Any,
        version: int | None,
        tags: Iterable[str] | None,
    ) -> _Steps[list[Any]]:
        seconds = self._seconds(timeout)
        items = [(self._key(k, version), v) for k, v in data.items()]
        if seconds is not None and seconds <= 0:
            yield _Call("stack", "delete_many", ([k for k, _ in items],))
            return []
        kwargs = self._write_kwargs(seconds, tags)
        yield _Call(
            "stack", "set_many", ([CacheEntry(k, [v], options=kwargs or None) for k, v in items],)
        )
        return []

    def _get_or_set(self, key: Any, default: Any, timeout: Any, version: int | None) -> _Steps[Any]:
        stack_key = self._key(key, version)
        box = yield _Call("stack", "get", (stack_key,))
        if box is not None:
            return box[0]
        seconds = self._seconds(timeout)
        if callable(default):
            if self._single_flight and (seconds is None or seconds > 0):
                fetch = default

                def boxed() -> list[Any]:
                    return [fetch()]

                # The stack's single flight: one call of the callable across every process.
                box = yield _Call(
                    "stack", "get", (stack_key, boxed), self._write_kwargs(seconds, None)
                )
                return box[0]
            default = default()
        yield _Call("atomic", "run", (self._add(stack_key, default, seconds, None),))
        # Another writer may have won the add: return what the cache holds now.
        box = yield _Call("stack", "get", (stack_key,))
        return default if box is None else box[0]

    def _incr(self, key: Any, delta: int, version: int | None) -> _Steps[Any]:
        stack_key = self._key(key, version)
        if self._remote_sync:
            return (yield from self._redis_incr(stack_key, key, delta))
        box = yield _Call("stack", "get", (stack_key,))
        if box is None:
            raise _not_found(key)
        new_value = box[0] + delta
        info = yield _Call("stack", "inspect", (stack_key,))
        remaining = info.fresh_ttl if info is not None else None
        if remaining is not None and remaining <= 0:
            raise _not_found(key)
        yield from self._write(stack_key, new_value, remaining, info.tags if info else ())
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
            raise _not_found(key)
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

    def _counter_down(self, stack_key: str) -> _Steps[bool]:
        """Graceful degradation: whether the counter authority is out of service (this
        backend saw it fail recently, or the stack is skipping it and cannot recover it yet)."""
        if self._clock() < self._counter_down_until:
            return True
        name = self._remote_sync[0].name
        for _ in range(2):
            stats = yield _Call("stack", "get_stats", plain=True)
            until = next(s.degraded_until for s in stats.layers if s.name == name)
            if until is None:
                return False
            if self._clock() < until:
                return True
            # Due for a retry: any query of the key lets the stack probe the layer and replay
            # what it missed (deletes included) before incr may read a counter there again.
            yield _Call("stack", "inspect", (stack_key,))
        return True

    def _counter_call(self, key: Any, call: _Call) -> _Steps[Any]:
        """A Redis call of incr; under graceful degradation a failure reads as "not found"."""
        try:
            return (yield call)
        except CacheLayerError as exc:
            if self._retry_after is None or exc.__cause__ is None:
                raise
            self._counter_down_until = self._clock() + self._retry_after
            _logger.warning("layercache: incr could not reach Redis (%r)", exc.__cause__)
            raise _not_found(key) from exc

    def _after_write(self, call: _Call) -> _Steps[None]:
        """A follow-up of a counter already written: under graceful degradation a failure is
        logged, not raised (the increment happened; raising would invite a second one)."""
        try:
            yield call
        except CacheLayerError as exc:
            if self._retry_after is None:
                raise
            _logger.warning("layercache: incr follow-up %s failed (%r)", call.target, exc)

    def _redis_incr(self, stack_key: str, key: Any, delta: int) -> _Steps[Any]:
        if self._retry_after is not None and (yield from self._counter_down(stack_key)):
            raise _not_found(key)
        layer = self._remote_sync[0]
        raw_key = layer._key(stack_key)  # the same on both sides: same prefix and key codec
        for attempt in range(_INCR_ATTEMPTS):
            raw = yield from self._counter_call(
                key, _Call("counter", "get", (raw_key,), guard="incr")
            )
            new_value, entry = self._incremented(stack_key, key, raw, delta)
            data = self._encode_counter(entry)
            cas = _Call(
                "cas", "__call__", (), {"keys": [raw_key], "args": [raw, data]}, guard="incr"
            )
            if (yield from self._counter_call(key, cas)):
                self._memory.delete(stack_key)
                now = self._clock()
                for i in range(1, len(self._remote_sync)):
                    # Copies for the other Redis layers; the first one alone is atomic.
                    yield from self._after_write(
                        _Call(f"redis{i}", "set", (stack_key, entry, entry.storage_ttl(now)))
                    )
                if self._sync.targets["bus"] is not None:
                    message = InvalidationMessage(
                        source_id=self._sync.targets["bus"].source_id,
                        scope="keys",
                        operation="set",
                        keys=(stack_key,),
                        timestamp=time.time(),
                    )
                    yield from self._after_write(_Call("bus", "publish", (message,)))
                return new_value
            yield _Call("clock", "sleep", (_incr_backoff(attempt),))
        raise CacheLayerError(layer.name, "incr", "too many concurrent writers; gave up")

    # ------------------------------------------------------------------ sync API

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        """The cached value, or ``default`` on a miss (a cached ``None`` is returned as is)."""
        # The hot path stays a direct call (no step machinery on an L1 hit).
        box = self._stack.get(self._key(key, version))
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
        self._run(self._write(self._key(key, version), value, self._seconds(timeout), tags))

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
        key = self._key(key, version)
        return self._run_atomic(self._add(key, value, self._seconds(timeout), tags))

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        """Give ``key`` a new timeout; whether it existed."""
        return self._run_atomic(self._touch(self._key(key, version), self._seconds(timeout)))

    def delete(self, key: Any, version: int | None = None) -> bool:
        """Remove ``key``; whether it was there."""
        return self._run_atomic(self._delete(self._key(key, version)))

    def has_key(self, key: Any, version: int | None = None) -> bool:
        """Whether ``key`` holds an unexpired value."""
        found: bool = self._stack.has(self._key(key, version))
        return found

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        """Add ``delta`` to the value, keeping its expiry and tags; the new value.

        With a Redis ``LOCATION`` the update is atomic across threads and processes: the
        stored envelope is read, incremented and written back with a compare-and-set on the
        first Redis layer (retried when another writer got in between), and this process's
        memory copy is dropped so that its next read sees the Redis value. Other processes'
        memory layers drop theirs through ``INVALIDATION_BUS``; without a bus they keep their
        copy until ``MEMORY_TTL`` passes, as after any write.

        Raises:
            ValueError: If ``key`` is absent (or expired); also while Redis is unreachable
                under ``GRACEFUL_DEGRADATION`` (see the module documentation).
            CacheLayerError: If Redis fails (without graceful degradation), or too many
                writers kept winning the race.
        """
        if self._remote_sync:
            return self._run(self._incr(key, delta, version))
        return self._run_atomic(self._incr(key, delta, version))

    def decr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        """Subtract ``delta``; ``ValueError`` if ``key`` is absent."""
        return self.incr(key, -delta, version=version)

    def get_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        """A dict of the keys found (cached ``None`` values included)."""
        return self._run(self._get_many(keys, version))

    def set_many(
        self,
        data: Mapping[Any, Any],
        timeout: Any = DEFAULT_TIMEOUT,
        version: int | None = None,
        *,
        tags: Iterable[str] | None = None,
    ) -> list[Any]:
        """Store every item; returns the keys that failed (always ``[]``: failures raise)."""
        return self._run(self._set_many(data, timeout, version, tags))

    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        """Remove several keys."""
        self._stack.delete_many([self._key(k, version) for k in keys])

    def clear(self) -> None:
        """Remove every key of this cache (the Redis layer clears only its prefix)."""
        self._stack.clear()

    def close(self, **kwargs: Any) -> None:
        """Called by Django at the end of each request: the stacks live as long as the process."""

    def shutdown(self) -> None:
        """Close the synchronous stack: stop the invalidation bus thread, release the Redis
        connections (process shutdown, tests).

        Django's :meth:`close` runs after every request and must leave the cache usable, so
        releasing connections is this separate call. Async code calls :meth:`ashutdown` too.
        """
        self._stack.close()

    def invalidate_by_tag(self, tag: str) -> int:
        """Delete every key stored with ``tag``; the number of keys removed."""
        removed: int = self._stack.invalidate_by_tag(tag)
        return removed

    def get_or_set(
        self, key: Any, default: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Any:
        """The cached value, or ``default`` (called if callable) stored with ``add``.

        With ``SINGLE_FLIGHT`` a callable ``default`` runs once across every process on a cold
        key; the other callers wait for its value and get it.
        """
        return self._run(self._get_or_set(key, default, timeout, version))

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
        await self._arun(self._write(self._key(key, version), value, self._seconds(timeout), tags))

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
        key = self._key(key, version)
        return await self._arun_atomic(self._add(key, value, self._seconds(timeout), tags))

    async def atouch(
        self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        """Async :meth:`touch`."""
        return await self._arun_atomic(self._touch(self._key(key, version), self._seconds(timeout)))

    async def adelete(self, key: Any, version: int | None = None) -> bool:
        """Async :meth:`delete`."""
        return await self._arun_atomic(self._delete(self._key(key, version)))

    async def ahas_key(self, key: Any, version: int | None = None) -> bool:
        """Async :meth:`has_key`."""
        found: bool = await self._astack.has(self._key(key, version))
        return found

    async def aincr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        """Async :meth:`incr` (atomic across processes with a Redis ``LOCATION``)."""
        return await self._arun_atomic(self._incr(key, delta, version))

    async def adecr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        """Async :meth:`decr`."""
        return await self.aincr(key, -delta, version=version)

    async def aget_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        """Async :meth:`get_many`."""
        return await self._arun(self._get_many(keys, version))

    async def aset_many(
        self,
        data: Mapping[Any, Any],
        timeout: Any = DEFAULT_TIMEOUT,
        version: int | None = None,
        *,
        tags: Iterable[str] | None = None,
    ) -> list[Any]:
        """Async :meth:`set_many`."""
        return await self._arun(self._set_many(data, timeout, version, tags))

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
        removed: int = await self._astack.invalidate_by_tag(tag)
        return removed

    async def aget_or_set(
        self, key: Any, default: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Any:
        """Async :meth:`get_or_set` (a callable ``default`` is called synchronously, or in a
        worker thread under ``SINGLE_FLIGHT``)."""
        return await self._arun(self._get_or_set(key, default, timeout, version))
