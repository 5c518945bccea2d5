"""The Django backend's ``LOCATION`` and ``OPTIONS``, turned into layercache objects.

Every check raises Django's ``ImproperlyConfigured`` when the backend is built. Also here: the
value serializer (``SERIALIZER``) with its signing key derived from ``SECRET_KEY``, the Redis
layers and coordination components of one side (synchronous, or one event loop's), and the
canonical form of a configuration that keys the process-wide engine registry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
from django.utils.crypto import salted_hmac  # type: ignore[import-untyped]
from django.utils.module_loading import import_string  # type: ignore[import-untyped]

from .. import InvalidationMessage
from ..serializers import JsonSerializer, PickleSerializer
from ._coordination import TAG_INDEXES, bus_kwargs, coordination_kwargs

__all__ = [
    "PublishOnlyBus",
    "canonical",
    "check_options",
    "coordination",
    "prefix_of",
    "redis_layers",
    "retry_after",
    "signing_key",
    "split_locations",
    "uses_default_pickle",
    "value_serializer",
]

KNOWN_OPTIONS = frozenset(
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
# Salt of the key derived from SECRET_KEY (Django's salted_hmac), with the Redis PREFIX as the
# value: a derived key is never SECRET_KEY itself, and each PREFIX (store) signs with its own.
SIGNING_SALT = "layercache.integrations.django.LayerCacheBackend.SERIALIZER"


def prefix_of(options: Mapping[str, Any]) -> str:
    """The Redis layer's key prefix."""
    prefix: str = options.get("PREFIX", "layercache:")
    return prefix


def split_locations(location: Any) -> list[str]:
    """``LOCATION`` as a list of Redis URLs (empty: memory only)."""
    if not location:
        return []
    if isinstance(location, str):
        return [part.strip() for part in location.replace(";", ",").split(",") if part.strip()]
    if isinstance(location, Sequence):
        return [str(part) for part in location if part]
    raise ImproperlyConfigured(f"LOCATION must be a str or a list of str, not {location!r}")


def retry_after(value: Any) -> float | None:
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


def check_options(options: Mapping[str, Any], remote: bool) -> tuple[str, bool]:
    """Validate the multi-process options: (tag index kind, single flight)."""
    unknown = set(options) - KNOWN_OPTIONS
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


def redis_layers(urls: list[str], options: Mapping[str, Any], asyncio_side: bool) -> list[Any]:
    """The Redis layers of one side (sync, or asyncio): the same keys seen through its clients."""
    layer_class: Any
    try:
        if asyncio_side:
            from .. import RedisLayer

            layer_class = RedisLayer
        else:
            from .. import SyncRedisLayer

            layer_class = SyncRedisLayer
    except ImportError as exc:
        raise ImproperlyConfigured(
            "a Redis LOCATION needs redis-py: pip install 'layercache-py[redis]'"
        ) from exc
    shared = {
        "ttl": None,  # the backend passes every finite Django timeout explicitly
        "prefix": prefix_of(options),
        # The envelope only: values arrive as bytes already encoded by the backend's SERIALIZER
        # (see Operations.encode), so the layer never unpickles what it reads.
        "serializer": JsonSerializer(),
        "compression": options.get("COMPRESSION"),
    }
    # The first URL's layer is the counter authority of incr/decr (see LayerCacheBackend.incr).
    return [
        layer_class(url=url, name="redis" if i == 0 else f"redis{i}", **shared)
        for i, url in enumerate(urls)
    ]


class PublishOnlyBus:
    """An asyncio stack's invalidation bus: it publishes, but never subscribes.

    Every stack of an engine shares one memory layer, and the synchronous stack's subscriber
    already applies what other processes announce to it. It carries the sync bus's
    ``source_id``, so that subscriber ignores what this process publishes.
    """

    def __init__(self, bus: Any) -> None:
        self.bus = bus

    @property
    def source_id(self) -> str:
        """The identity shared with the synchronous bus."""
        source_id: str = self.bus.source_id
        return source_id

    async def start(self, on_message: Any, on_reconnect: Any, on_error: Any) -> None:
        """Nothing to start: the synchronous bus holds this process's subscription."""

    async def publish(self, message: InvalidationMessage) -> None:
        """Publish ``message`` on the shared channel."""
        await self.bus.publish(message)

    async def aclose(self) -> None:
        """Close the wrapped bus (it never subscribed; its client belongs to the Redis layer)."""
        await self.bus.aclose()


def coordination(
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
    prefix = prefix_of(options)
    bus = _bus_options(options.get("INVALIDATION_BUS"), prefix)
    if bus is not None and source_id is not None:
        bus["source_id"] = source_id
    try:
        return coordination_kwargs(
            client,
            bus=bus,
            tag_index_prefix=_side_prefix(prefix, "tag-index") if tag_index == "redis" else None,
            single_flight_prefix=_side_prefix(prefix, "single-flight") if flight else None,
            wrap_bus=None if source_id is None else PublishOnlyBus,
        )
    except ValueError as exc:
        raise ImproperlyConfigured(f"LayerCacheBackend OPTIONS: {exc}") from exc


# ---------------------------------------------------------------------- values
#
# Like Django's own backends, the backend stores every value encoded (by default pickled), in
# every layer: a get returns a copy (as LocMemCache), an unpicklable value raises pickle's own
# error before anything is written, and the memory layer and Redis hold the same bytes. Pickles
# are HMAC-signed, so bytes written into Redis by anyone without the key are never unpickled.


def signing_key(options: Mapping[str, Any]) -> bytes:
    """The pickle signing key: ``HMAC-SHA256(sha256(salt + SECRET_KEY), PREFIX)``."""
    from django.conf import settings  # type: ignore[import-untyped]

    try:
        secret = settings.SECRET_KEY
    except ImproperlyConfigured as exc:
        raise ImproperlyConfigured(
            f"{exc} LayerCacheBackend signs its pickled values with a key derived from "
            "SECRET_KEY; set it (the same in every process sharing the cache), or choose "
            "OPTIONS['SERIALIZER'] = 'json'."
        ) from exc
    digest: bytes = salted_hmac(
        SIGNING_SALT, str(prefix_of(options)), secret=secret, algorithm="sha256"
    ).digest()
    return digest


def uses_default_pickle(options: Mapping[str, Any]) -> bool:
    """Whether values are pickled (and signed): ``SERIALIZER`` absent or ``"pickle"``."""
    return options.get("SERIALIZER") in (None, "pickle")


def value_serializer(options: Mapping[str, Any], key: bytes | None) -> Any:
    """``SERIALIZER`` -> the object encoding values (``dumps`` to bytes, ``loads``).

    ``"pickle"`` (default): :class:`~layercache.PickleSerializer` signed with ``key`` (derived
    from ``SECRET_KEY``); ``"json"``: :class:`~layercache.JsonSerializer`; ``"msgpack"``:
    :class:`~layercache.MsgpackSerializer`; a dotted path to a class (instantiated without
    arguments, as Django's ``RedisCache`` does) or to an instance; a class; an instance.
    """
    spec = options.get("SERIALIZER")
    if uses_default_pickle(options):
        assert key is not None
        return PickleSerializer(signing_secret=key)
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


def canonical(value: Any) -> str:
    """A repr of a configuration value that is equal for equal settings.

    Plain data compares by value (dicts whatever their order); any other object (a serializer,
    a ``CLOCK``) by identity: the same object maps to the same engine, another one to another.
    The engine keeps the options, so an id in a live key is never reused.
    """
    if value is None or isinstance(value, str | bytes | int | float | bool):
        return repr(value)
    if isinstance(value, Mapping):
        items = sorted((canonical(k), canonical(v)) for k, v in value.items())
        return "{" + ", ".join(f"{k}: {v}" for k, v in items) + "}"
    if isinstance(value, list | tuple):
        return f"{type(value).__name__}[{', '.join(map(canonical, value))}]"
    return f"<{type(value).__module__}.{type(value).__qualname__} at {id(value):#x}>"
