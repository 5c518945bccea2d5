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
  a miss, are reported (``layercache`` log warning, ``error`` event) and deleted. Every process
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
import contextlib
import dataclasses
import hashlib
import logging
import random
import threading
import time
import types
import weakref
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from typing import Any, TypeVar

try:
    from django.core.cache.backends.base import (  # type: ignore[import-untyped]
        DEFAULT_TIMEOUT,
        BaseCache,
    )
    from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
    from django.utils.crypto import salted_hmac  # type: ignore[import-untyped]
    from django.utils.module_loading import import_string  # type: ignore[import-untyped]
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
from ..serializers import JsonSerializer, PickleSerializer
from ._coordination import TAG_INDEXES, bus_kwargs, coordination_kwargs

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
        self.stack: Any = targets["stack"]

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
    try:
        return bus_kwargs(value, "INVALIDATION_BUS", f"{prefix}invalidation")
    except ValueError as exc:
        raise ImproperlyConfigured(str(exc)) from exc


def _check_options(options: Mapping[str, Any], remote: bool) -> tuple[str, bool]:
    """Validate the multi-process options: (tag index kind, single flight)."""
    unknown = set(options) - _KNOWN_OPTIONS
    if unknown:
        raise ImproperlyConfigured(
            f"unknown LayerCacheBackend OPTIONS: {', '.join(sorted(map(str, unknown)))}"
        )
    _bus_options(options.get("INVALIDATION_BUS"), "")  # its shape, before where it may work
    tag_index = options.get("TAG_INDEX", "redis" if remote else "memory")
    if tag_index not in TAG_INDEXES:
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


def _redis_layers(urls: list[str], options: Mapping[str, Any], asyncio_side: bool) -> list[Any]:
    """The Redis layers of one side (sync, or asyncio): the same keys seen through its clients."""
    layer_class: Any
    try:
        if asyncio_side:
            from ..redis.layer import RedisLayer

            layer_class = RedisLayer
        else:
            from ..redis._sync_layer import SyncRedisLayer

            layer_class = SyncRedisLayer
    except ImportError as exc:
        raise ImproperlyConfigured(
            "a Redis LOCATION needs redis-py: pip install 'layercache-py[redis]'"
        ) from exc
    shared = {
        "ttl": None,  # the backend passes every finite Django timeout explicitly
        "prefix": options.get("PREFIX", "layercache:"),
        # The envelope only: values arrive as bytes already encoded by the backend's SERIALIZER
        # (see _Engine.encode), so the layer never unpickles what it reads.
        "serializer": JsonSerializer(),
        "compression": options.get("COMPRESSION"),
    }
    # The first URL's layer is the counter authority of incr/decr (see LayerCacheBackend.incr).
    return [
        layer_class(url=url, name="redis" if i == 0 else f"redis{i}", **shared)
        for i, url in enumerate(urls)
    ]


def _coordination(
    options: Mapping[str, Any],
    client: Any,
    tag_index: str,
    flight: bool,
    source_id: str | None = None,
) -> dict[str, Any]:
    """Stack keyword arguments of the Redis coordination components of one side, built on the
    first Redis layer's client (decode_responses=False, socket timeouts).

    The synchronous side is built first (``source_id`` ``None``) and owns the subscription; an
    asyncio side gets that bus's ``source_id`` and a publish-only bus.
    """
    prefix = options.get("PREFIX", "layercache:")
    bus = _bus_options(options.get("INVALIDATION_BUS"), prefix)
    if bus is not None and source_id is not None:
        bus["source_id"] = source_id
    try:
        return coordination_kwargs(
            client,
            bus=bus,
            tag_index_prefix=_side_prefix(prefix, "tag-index") if tag_index == "redis" else None,
            single_flight_prefix=_side_prefix(prefix, "single-flight") if flight else None,
            wrap_bus=None if source_id is None else _PublishOnlyBus,
        )
    except ValueError as exc:
        raise ImproperlyConfigured(f"LayerCacheBackend OPTIONS: {exc}") from exc


def _side(
    stack: Any, remote: list[Any], extra: Mapping[str, Any], sleeper: Any, atomic: Any
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


# ---------------------------------------------------------------------- values
#
# Like Django's own backends, the backend stores every value encoded (by default pickled), in
# every layer: a get returns a copy (as LocMemCache), an unpicklable value raises pickle's own
# error before anything is written, and the memory layer and Redis hold the same bytes. Pickles
# are HMAC-signed, so bytes written into Redis by anyone without the key are never unpickled.

# Salt of the key derived from SECRET_KEY (Django's salted_hmac), with the Redis PREFIX as the
# value: a derived key is never SECRET_KEY itself, and each PREFIX (store) signs with its own.
_SIGNING_SALT = "layercache.integrations.django.LayerCacheBackend.SERIALIZER"
_MISSING: Any = object()


class _UnreadableValueError(ValueError):
    """Stored bytes that do not decode (forged, signed with another key, or from an older
    format): the key reads as a miss."""


def _signing_key(options: Mapping[str, Any]) -> bytes:
    """The pickle signing key: ``HMAC-SHA256(sha256(salt + SECRET_KEY), PREFIX)``."""
    from django.conf import settings  # type: ignore[import-untyped]

    prefix = options.get("PREFIX", "layercache:")
    try:
        secret = settings.SECRET_KEY
    except ImproperlyConfigured as exc:
        raise ImproperlyConfigured(
            f"{exc} LayerCacheBackend signs its pickled values with a key derived from "
            "SECRET_KEY; set it (the same in every process sharing the cache), or choose "
            "OPTIONS['SERIALIZER'] = 'json'."
        ) from exc
    digest: bytes = salted_hmac(
        _SIGNING_SALT, str(prefix), secret=secret, algorithm="sha256"
    ).digest()
    return digest


def _uses_default_pickle(options: Mapping[str, Any]) -> bool:
    return options.get("SERIALIZER") in (None, "pickle")


def _value_serializer(options: Mapping[str, Any], signing_key: bytes | None) -> Any:
    """``SERIALIZER`` -> the object encoding values (``dumps`` to bytes, ``loads``).

    ``"pickle"`` (default): :class:`~layercache.PickleSerializer` signed with the key derived
    from ``SECRET_KEY``; ``"json"``: :class:`~layercache.JsonSerializer`; ``"msgpack"``:
    :class:`~layercache.MsgpackSerializer`; a dotted path to a class (instantiated without
    arguments, as Django's ``RedisCache`` does) or to an instance; a class; an instance.
    """
    spec = options.get("SERIALIZER")
    if _uses_default_pickle(options):
        assert signing_key is not None
        return PickleSerializer(signing_secret=signing_key)
    if spec == "json":
        return JsonSerializer()
    try:
        if spec == "msgpack":
            from ..serializers import MsgpackSerializer

            return MsgpackSerializer()
        if isinstance(spec, str):
            spec = import_string(spec)
        if isinstance(spec, type):
            spec = spec()
    except (ImportError, TypeError) as exc:  # not importable, or a class needing arguments
        raise ImproperlyConfigured(f"SERIALIZER {options.get('SERIALIZER')!r}: {exc}") from exc
    if not (callable(getattr(spec, "dumps", None)) and callable(getattr(spec, "loads", None))):
        raise ImproperlyConfigured(
            "SERIALIZER must be 'pickle', 'json', 'msgpack', or a serializer (an object with "
            f"dumps and loads, or a dotted path to one or its class), not {spec!r}"
        )
    return spec


# ---------------------------------------------------------------------- the process-wide engine
#
# Django's CacheHandler builds one backend per thread (and per asyncio context). Like its
# LocMemCache, which shares one dict per LOCATION, every backend built with the same
# configuration shares one engine: the memory layer, the Redis clients, the bus subscription.

# Bound of the registry; past it the least recently created engine is shut down.
_MAX_ENGINES = 64
_engines: dict[tuple[str, str, str], _Engine] = {}  # insertion order = creation order
_engines_lock = threading.Lock()


def _canonical(value: Any) -> str:
    """A repr of a configuration value that is equal for equal settings.

    Plain data compares by value (dicts whatever their order); any other object (a serializer,
    a ``CLOCK``) by identity: the same object maps to the same engine, another one to another.
    The engine keeps the options, so an id in a live key is never reused.
    """
    if value is None or isinstance(value, str | bytes | int | float | bool):
        return repr(value)
    if isinstance(value, Mapping):
        items = sorted((_canonical(k), _canonical(v)) for k, v in value.items())
        return "{" + ", ".join(f"{k}: {v}" for k, v in items) + "}"
    if isinstance(value, list | tuple):
        return f"{type(value).__name__}[{', '.join(map(_canonical, value))}]"
    return f"<{type(value).__module__}.{type(value).__qualname__} at {id(value):#x}>"


def _engine_for(location: Any, options: dict[str, Any]) -> _Engine:
    """The live engine of this configuration, built (and registered) on first use.

    The signing key is derived from ``SECRET_KEY`` here, so a changed ``SECRET_KEY`` (tests'
    ``override_settings``) gets an engine of its own; only a digest of it is in the key.
    """
    signing_key = _signing_key(options) if _uses_default_pickle(options) else None
    fingerprint = "" if signing_key is None else hashlib.sha256(signing_key).hexdigest()
    key = (_canonical(location), _canonical(options), fingerprint)
    evicted: list[_Engine] = []
    with _engines_lock:
        engine = _engines.get(key)
        if engine is not None and not engine.closed:
            return engine
        # Built under the lock: two threads asking at once must not both subscribe.
        engine = _Engine(key, location, options, signing_key)
        _engines[key] = engine
        while len(_engines) > _MAX_ENGINES:
            evicted.append(_engines.pop(next(iter(_engines))))
    for old in evicted:
        old.shutdown()  # outside the lock: it joins the bus thread
    return engine


class _Engine:
    """Everything one configuration needs, once per process: the memory layer, the synchronous
    stack and its Redis clients, the bus subscription, the counter state, and one asyncio side
    per event loop (built on first use of an ``a*`` method on that loop)."""

    def __init__(
        self,
        key: tuple[str, str, str],
        location: Any,
        options: dict[str, Any],
        signing_key: bytes | None,
    ) -> None:
        self.key = key
        self.closed = False
        self.options = options  # also keeps alive the objects whose id is in the key
        urls = _split_locations(location)
        self.tag_index, self.single_flight = _check_options(options, bool(urls))
        self.serializer = _value_serializer(options, signing_key)
        self.urls = urls
        clock: Callable[[], float] = options.get("CLOCK") or time.time
        self.clock = clock
        memory_ttl = options.get("MEMORY_TTL")
        # Layers keep values forever by default; every finite Django timeout is passed
        # explicitly per write, so "TIMEOUT: None" really means forever.
        self.memory = MemoryLayer(
            ttl=memory_ttl,
            max_size=options.get("MEMORY_MAX_SIZE"),
            eviction=options.get("MEMORY_EVICTION", "lru"),
            max_bytes=options.get("MEMORY_MAX_BYTES"),
            clock=clock,
        )
        self.caps: dict[str, float | None] = {"memory": memory_ttl}
        self.retry_after = _retry_after(options.get("GRACEFUL_DEGRADATION"))
        # incr/decr skip Redis until then after a connection failure (graceful degradation).
        self.counter_down_until = 0.0
        self.stack_options: dict[str, Any] = {
            "clock": clock,
            "write_policy": options.get("WRITE_POLICY", "strict"),
            "graceful_degradation": options.get("GRACEFUL_DEGRADATION"),
        }
        self.remote_sync: list[Any] = []
        extra: dict[str, Any] = {}
        if urls:
            self.remote_sync = _redis_layers(urls, options, asyncio_side=False)
            for layer in self.remote_sync:
                self.caps[layer.name] = None
            extra = _coordination(
                options, self.remote_sync[0].client, self.tag_index, self.single_flight
            )
        self.all_local = not urls
        self.stack = SyncCacheStack([self.memory, *self.remote_sync], **self.stack_options, **extra)
        self.bus: Any = extra.get("invalidation_bus")
        self._tag_lock = threading.Lock()
        self._local_tags: Any = None
        if "tag_index" not in extra:
            # One in-process index for the sync stack and every asyncio stack, behind one lock.
            self._local_tags = self.stack._tags
            self.stack._tags = _LockedTagIndex(self._local_tags, self._tag_lock)
        # Serialises the read-modify-write operations (add, incr, touch, delete's result).
        self.lock = threading.RLock()
        self.sync = _side(self.stack, self.remote_sync, extra, time, self.run_atomic)
        self._sides: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Side] = (
            weakref.WeakKeyDictionary()
        )
        self._sides_lock = threading.Lock()
        if self.bus is not None:
            self._subscribe()

    def _subscribe(self) -> None:
        """Subscribe now, before this process caches anything in memory.

        The synchronous stack would subscribe on its own first operation, but the asyncio
        stacks share its memory layer and only publish: an ``a*`` call coming first would
        fill memory that nothing listens for yet.
        Under graceful degradation a failure is reported and the bus keeps retrying (it drops
        the memory layer once subscribed, as it may have missed messages); without it, the
        failure is raised and the stack closed, so no retrying thread is left behind.
        """
        try:
            self.stack._ensure_bus()
        except BaseException:
            self.closed = True
            self.stack.close()
            raise

    # ------------------------------------------------------------------ asyncio sides

    def async_side(self) -> _Side:
        """The running event loop's side (a redis.asyncio client never serves two loops)."""
        loop = asyncio.get_running_loop()
        side = self._sides.get(loop)
        return side if side is not None else self._new_async_side(loop)

    def _new_async_side(self, loop: asyncio.AbstractEventLoop) -> _Side:
        with self._sides_lock:
            side = self._sides.get(loop)
            if side is not None:
                return side
            # A side keeps its loop alive (its connections refer to it), so a finished loop's
            # entry would never leave the weak dictionary by itself (async_to_sync runs every
            # call on a new loop): forget them here; their connections cannot be used again.
            for finished in [old for old in self._sides if old.is_closed()]:
                del self._sides[finished]
            remote: list[Any] = []
            extra: dict[str, Any] = {}
            if self.urls:
                remote = _redis_layers(self.urls, self.options, asyncio_side=True)
                source_id = self.bus.source_id if self.bus is not None else None
                client = remote[0].client
                # A layer built from a URL holds a client standing for each loop's own
                # (LoopBoundClient); this side serves one loop: its components take that
                # loop's concrete client (the bus accepts no other).
                current = getattr(client, "current", None)
                if callable(current):
                    client = current()
                extra = _coordination(
                    self.options, client, self.tag_index, self.single_flight, source_id
                )
            if "tag_index" not in extra:
                extra["tag_index"] = _SharedTagIndex(self._local_tags, self._tag_lock)
            stack = CacheStack([self.memory, *remote], **self.stack_options, **extra)
            side = _side(stack, remote, extra, asyncio, self.arun_atomic)
            self._sides[loop] = side
            return side

    async def aclose_side(self) -> None:
        """Close the running loop's side (its Redis connections); the engine stays open."""
        with self._sides_lock:
            side = self._sides.pop(asyncio.get_running_loop(), None)
        if side is not None:
            await side.stack.aclose()

    # ------------------------------------------------------------------ lifecycle

    def shutdown(self) -> None:
        """Close the engine for the whole process and forget it (idempotent).

        Backends still holding it build a fresh one on their next call. The asyncio sides of
        loops still running are closed on their own loop (not awaited); those of finished loops
        are dropped.
        """
        with _engines_lock:
            if self.closed:
                return
            self.closed = True
            if _engines.get(self.key) is self:
                del _engines[self.key]
        with self._sides_lock:
            sides = list(self._sides.items())
            self._sides.clear()
        for loop, side in sides:
            if loop.is_running() and not loop.is_closed():
                future = asyncio.run_coroutine_threadsafe(side.stack.aclose(), loop)
                future.add_done_callback(_log_close_failure)
        self.stack.close()

    # ------------------------------------------------------------------ drivers

    def run(self, steps: _Steps[_T]) -> _T:
        """Run ``steps`` on the synchronous stack and clients."""
        side = self.sync
        reply, failed = None, False
        while not isinstance(step := _advance(steps, reply, failed), _Done):
            fn, guard = side.prepare(step)
            try:
                with guard:
                    reply, failed = fn(*step.args, **step.kwargs), False
            except Exception as exc:
                reply, failed = exc, True
        result: _T = step.value
        return result

    async def arun(self, steps: _Steps[_T]) -> _T:
        """Run ``steps`` on the running loop's asyncio stack and clients."""
        side = self.async_side()
        reply, failed = None, False
        while not isinstance(step := _advance(steps, reply, failed), _Done):
            fn, guard = side.prepare(step)
            try:
                with guard:
                    reply = fn(*step.args, **step.kwargs)
                    reply, failed = (reply if step.plain else await reply), False
            except Exception as exc:
                reply, failed = exc, True
        result: _T = step.value
        return result

    def run_atomic(self, steps: _Steps[_T]) -> _T:
        """Run ``steps`` under the engine's lock (every thread's backends share it)."""
        with self.lock:
            return self.run(steps)

    async def arun_atomic(self, steps: _Steps[_T]) -> _T:
        """Async :meth:`run_atomic`."""
        if self.all_local:
            # Memory only: no I/O inside, so the thread lock is held for microseconds, and the
            # operation is atomic against the synchronous callers too.
            return self.run_atomic(steps)
        return await self.arun(steps)

    # ------------------------------------------------------------------ values

    def encode(self, value: Any) -> bytes:
        """``value`` as the bytes every layer stores (called before any lock or I/O).

        Raises:
            pickle.PickleError: (or whatever else ``pickle`` raises) If the default serializer
                cannot pickle ``value``: pickle's own error, as Django's backends raise it.
            TypeError: If another serializer cannot encode ``value``.
        """
        try:
            data = self.serializer.dumps(value)
        except TypeError as exc:
            # PickleSerializer reports pickle's error as a TypeError caused by it; Django's
            # backends (and its test suite) raise pickle's own error.
            if isinstance(self.serializer, PickleSerializer) and exc.__cause__ is not None:
                raise exc.__cause__ from None
            raise
        if not isinstance(data, bytes):
            raise TypeError(
                f"SERIALIZER {self.serializer!r} returned {type(data).__name__}, not bytes"
            )
        return data

    def decode(self, data: Any) -> Any:
        """The value in ``data`` read from the stack.

        Raises:
            _UnreadableValueError: If ``data`` does not decode (a signature that does not
                verify is refused before anything is unpickled).
        """
        if not isinstance(data, bytes):
            # Not written by this version of the backend (older entries held a list).
            raise _UnreadableValueError(f"not an encoded value ({type(data).__name__})")
        try:
            return self.serializer.loads(data)
        except Exception as exc:
            raise _UnreadableValueError(str(exc)) from exc

    def drop(self, key: str, error: _UnreadableValueError, operation: str) -> _Steps[None]:
        """Report an unreadable value and delete it everywhere, so that it reads as a miss
        (a copy backfilled into memory included) and the next ``add`` can store the key."""
        _logger.warning("layercache: unreadable value for key %r dropped (%s)", key, error)
        yield _Call("stack", "_report", (error,), {"key": key, "operation": operation}, plain=True)
        yield _Call("stack", "delete", (key,))

    def read(self, key: str, data: Any, operation: str) -> _Steps[Any]:
        """The value of ``data`` read under ``key``: ``_MISSING`` for a miss or an unreadable
        value (reported and deleted)."""
        if data is None:
            return _MISSING
        try:
            return self.decode(data)
        except _UnreadableValueError as exc:
            yield from self.drop(key, exc, operation)
            return _MISSING

    # ------------------------------------------------------------------ timeouts

    def ttl(self, seconds: float | None) -> dict[str, float] | None:
        """Per-layer TTL option: the Django timeout, capped by a layer's own cap."""
        if seconds is None:
            return None  # every layer's default: its cap, or forever
        return {
            name: seconds if cap is None else min(seconds, cap) for name, cap in self.caps.items()
        }

    def write_kwargs(self, seconds: float | None, tags: Iterable[str] | None) -> dict[str, Any]:
        """The stack's keyword arguments of a write."""
        kwargs: dict[str, Any] = {}
        ttl = self.ttl(seconds)
        if ttl is not None:
            kwargs["ttl"] = ttl
        if tags:
            kwargs["tags"] = list(tags)
        return kwargs

    # ------------------------------------------------------------------ operations (steps)
    #
    # Keys are the stack keys, already made by the backend (its KEY_PREFIX, VERSION, ...);
    # ``key`` where given is the caller's key, for error messages. ``data`` is a value encoded
    # by :meth:`encode` (never None, so a cached None differs from a miss).

    def write(
        self, key: str, data: bytes, seconds: float | None, tags: Iterable[str] | None
    ) -> _Steps[None]:
        """Store (or, for a timeout <= 0, delete) ``key``."""
        if seconds is not None and seconds <= 0:
            yield _Call("stack", "delete", (key,))
        else:
            # A write that raises leaves no layer holding the value (the stack drops it).
            yield _Call("stack", "set", (key, data), self.write_kwargs(seconds, tags))

    def add(
        self, key: str, data: bytes, seconds: float | None, tags: Iterable[str] | None
    ) -> _Steps[bool]:
        """Store ``data`` if ``key`` is absent."""
        if (yield _Call("stack", "has", (key,))):
            return False
        yield from self.write(key, data, seconds, tags)
        return True

    def touch(self, key: str, seconds: float | None) -> _Steps[bool]:
        """Store ``key``'s value (its bytes, as stored) again with a new timeout."""
        info = yield _Call("stack", "inspect", (key,))
        data = yield _Call("stack", "get", (key,))
        if data is None:
            return False
        yield from self.write(key, data, seconds, info.tags if info is not None else ())
        return True

    def delete(self, key: str) -> _Steps[bool]:
        """Delete ``key``; whether it was there."""
        existed: bool = yield _Call("stack", "has", (key,))
        yield _Call("stack", "delete", (key,))
        return existed

    def get_many(self, wanted: Mapping[str, Any]) -> _Steps[dict[Any, Any]]:
        """The values found, by caller's key (``wanted``: stack key -> caller's key)."""
        if not wanted:
            return {}
        found = yield _Call("stack", "get_many", (list(wanted),))
        values: dict[Any, Any] = {}
        for key, data in zip(wanted, found, strict=True):
            value = yield from self.read(key, data, "get_many")
            if value is not _MISSING:
                values[wanted[key]] = value
        return values

    def set_many(
        self, items: list[tuple[str, bytes]], seconds: float | None, tags: Iterable[str] | None
    ) -> _Steps[list[Any]]:
        """Store every (stack key, encoded value)."""
        if seconds is not None and seconds <= 0:
            yield _Call("stack", "delete_many", ([k for k, _ in items],))
            return []
        kwargs = self.write_kwargs(seconds, tags)
        yield _Call(
            "stack", "set_many", ([CacheEntry(k, v, options=kwargs or None) for k, v in items],)
        )
        return []

    def get_or_set(self, stack_key: str, default: Any, seconds: float | None) -> _Steps[Any]:
        """The cached value, or ``default`` (called if callable) stored with :meth:`add`."""
        data = yield _Call("stack", "get", (stack_key,))
        value = yield from self.read(stack_key, data, "get_or_set")
        if value is not _MISSING:
            return value
        if callable(default):
            if self.single_flight and (seconds is None or seconds > 0):
                fetch = default

                def encoded() -> bytes:
                    return self.encode(fetch())

                # The stack's single flight: one call of the callable across every process.
                data = yield _Call(
                    "stack", "get", (stack_key, encoded), self.write_kwargs(seconds, None)
                )
                value = yield from self.read(stack_key, data, "get_or_set")
                if value is not _MISSING:
                    return value
            default = default()
        data = self.encode(default)  # before the lock: pickling may take a while
        yield _Call("atomic", "run", (self.add(stack_key, data, seconds, None),))
        # Another writer may have won the add: return what the cache holds now.
        data = yield _Call("stack", "get", (stack_key,))
        value = yield from self.read(stack_key, data, "get_or_set")
        return default if value is _MISSING else value

    def incr(self, stack_key: str, key: Any, delta: int) -> _Steps[Any]:
        """Add ``delta`` to the value under ``stack_key``; the new value."""
        if self.remote_sync:
            return (yield from self._redis_incr(stack_key, key, delta))
        data = yield _Call("stack", "get", (stack_key,))
        value = yield from self.read(stack_key, data, "incr")
        if value is _MISSING:
            raise _not_found(key)
        new_value = value + delta
        info = yield _Call("stack", "inspect", (stack_key,))
        remaining = info.fresh_ttl if info is not None else None
        if remaining is not None and remaining <= 0:
            raise _not_found(key)
        yield from self.write(
            stack_key, self.encode(new_value), remaining, info.tags if info else ()
        )
        return new_value

    def _incremented(self, stack_key: str, key: Any, raw: Any, delta: int) -> tuple[Any, Entry]:
        """(new value, new entry) from the bytes ``raw`` read from the first Redis layer.

        Only the value changes: stored_at, the expiry times and the tags are kept as stored.
        """
        layer = self.remote_sync[0]
        entry: Entry | None = None
        if raw is not None:
            try:
                entry = layer.codec.decode(raw)
            except CorruptEntryError:
                entry = None  # unreadable bytes hold no number to add to: "not found"
        if entry is None or not entry.is_fresh(self.clock()):
            # Redis is the authority: a copy only this process's memory still holds is stale.
            self.memory.delete(stack_key)
            raise _not_found(key)
        try:
            value = self.decode(entry.value)
        except _UnreadableValueError as exc:
            # Forged or foreign bytes hold no number to add to: "not found", as for a get.
            self.memory.delete(stack_key)
            raise _not_found(key) from exc
        new_value = value + delta
        return new_value, dataclasses.replace(entry, value=self.encode(new_value))

    def _encode_counter(self, entry: Entry) -> bytes:
        layer = self.remote_sync[0]
        try:
            data: bytes = layer.codec.encode(entry)
        except Exception as exc:
            raise CacheLayerError(layer.name, "incr", f"value cannot be serialized: {exc}") from exc
        return data

    def _counter_down(self, stack_key: str) -> _Steps[bool]:
        """Graceful degradation: whether the counter authority is out of service (this
        process saw it fail recently, or the stack is skipping it and cannot recover it yet)."""
        if self.clock() < self.counter_down_until:
            return True
        name = self.remote_sync[0].name
        for _ in range(2):
            stats = yield _Call("stack", "get_stats", plain=True)
            until = next(s.degraded_until for s in stats.layers if s.name == name)
            if until is None:
                return False
            if self.clock() < until:
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
            if self.retry_after is None or exc.__cause__ is None:
                raise
            self.counter_down_until = self.clock() + self.retry_after
            _logger.warning("layercache: incr could not reach Redis (%r)", exc.__cause__)
            raise _not_found(key) from exc

    def _after_write(self, call: _Call) -> _Steps[None]:
        """A follow-up of a counter already written: under graceful degradation a failure is
        logged, not raised (the increment happened; raising would invite a second one)."""
        try:
            yield call
        except CacheLayerError as exc:
            if self.retry_after is None:
                raise
            _logger.warning("layercache: incr follow-up %s failed (%r)", call.target, exc)

    def _redis_incr(self, stack_key: str, key: Any, delta: int) -> _Steps[Any]:
        if self.retry_after is not None and (yield from self._counter_down(stack_key)):
            raise _not_found(key)
        layer = self.remote_sync[0]
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
                self.memory.delete(stack_key)
                now = self.clock()
                for i in range(1, len(self.remote_sync)):
                    # Copies for the other Redis layers; the first one alone is atomic.
                    yield from self._after_write(
                        _Call(f"redis{i}", "set", (stack_key, entry, entry.storage_ttl(now)))
                    )
                if self.bus is not None:
                    message = InvalidationMessage(
                        source_id=self.bus.source_id,
                        scope="keys",
                        operation="set",
                        keys=(stack_key,),
                        timestamp=time.time(),
                    )
                    yield from self._after_write(_Call("bus", "publish", (message,)))
                return new_value
            yield _Call("clock", "sleep", (_incr_backoff(attempt),))
        raise CacheLayerError(layer.name, "incr", "too many concurrent writers; gave up")


def _log_close_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        _logger.warning("layercache: closing an asyncio stack failed (%r)", future.exception())


# ---------------------------------------------------------------------- the backend


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
        self._engine = _engine_for(server, self._options)

    def _reopen(self) -> _Engine:
        """The engine was shut down: the registry's live one (built again if need be)."""
        engine = self._engine = _engine_for(self._location, self._options)
        return engine

    def _live(self) -> _Engine:
        engine = self._engine
        return self._reopen() if engine.closed else engine

    def _engines_to_close(self) -> list[_Engine]:
        """This instance's engine, and the configuration's live one if another instance has
        built it again since."""
        live = _engines.get(self._engine.key)
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
            return engine.decode(data)
        except _UnreadableValueError as exc:
            engine.run(engine.drop(stack_key, exc, "get"))
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
        data = engine.encode(value)
        engine.run(engine.write(self._key(key, version), data, self._seconds(timeout), tags))

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
        key, data = self._key(key, version), engine.encode(value)  # outside the lock
        return engine.run_atomic(engine.add(key, data, self._seconds(timeout), tags))

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        """Give ``key`` a new timeout; whether it existed."""
        engine = self._live()
        return engine.run_atomic(engine.touch(self._key(key, version), self._seconds(timeout)))

    def delete(self, key: Any, version: int | None = None) -> bool:
        """Remove ``key``; whether it was there."""
        engine = self._live()
        return engine.run_atomic(engine.delete(self._key(key, version)))

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
        steps = engine.incr(self._key(key, version), key, delta)
        if engine.remote_sync:
            return engine.run(steps)
        return engine.run_atomic(steps)

    def decr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        """Subtract ``delta``; ``ValueError`` if ``key`` is absent."""
        return self.incr(key, -delta, version=version)

    def get_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        """A dict of the keys found (cached ``None`` values included)."""
        engine = self._live()
        return engine.run(engine.get_many({self._key(k, version): k for k in keys}))

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
        return engine.run(engine.set_many(*self._items(engine, data, timeout, version), tags))

    def _items(
        self, engine: _Engine, data: Mapping[Any, Any], timeout: Any, version: int | None
    ) -> tuple[list[tuple[str, bytes]], float | None]:
        # Every value is encoded before the first is written: one that fails writes nothing.
        items = [(self._key(k, version), engine.encode(v)) for k, v in data.items()]
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
            engine.get_or_set(self._key(key, version), default, self._seconds(timeout))
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
            return engine.decode(data)
        except _UnreadableValueError as exc:
            await engine.arun(engine.drop(stack_key, exc, "get"))
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
        data = engine.encode(value)
        await engine.arun(engine.write(self._key(key, version), data, self._seconds(timeout), tags))

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
        key, data = self._key(key, version), engine.encode(value)
        return await engine.arun_atomic(engine.add(key, data, self._seconds(timeout), tags))

    async def atouch(
        self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        """Async :meth:`touch`."""
        engine = self._live()
        steps = engine.touch(self._key(key, version), self._seconds(timeout))
        return await engine.arun_atomic(steps)

    async def adelete(self, key: Any, version: int | None = None) -> bool:
        """Async :meth:`delete`."""
        engine = self._live()
        return await engine.arun_atomic(engine.delete(self._key(key, version)))

    async def ahas_key(self, key: Any, version: int | None = None) -> bool:
        """Async :meth:`has_key`."""
        found: bool = await self._live().async_side().stack.has(self._key(key, version))
        return found

    async def aincr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        """Async :meth:`incr` (atomic across processes with a Redis ``LOCATION``)."""
        engine = self._live()
        return await engine.arun_atomic(engine.incr(self._key(key, version), key, delta))

    async def adecr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        """Async :meth:`decr`."""
        return await self.aincr(key, -delta, version=version)

    async def aget_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        """Async :meth:`get_many`."""
        engine = self._live()
        return await engine.arun(engine.get_many({self._key(k, version): k for k in keys}))

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
        return await engine.arun(engine.set_many(*items, tags))

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
        steps = engine.get_or_set(self._key(key, version), default, self._seconds(timeout))
        return await engine.arun(steps)
