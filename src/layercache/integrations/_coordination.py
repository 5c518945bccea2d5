"""The Redis coordination options the framework integrations share (Django's ``OPTIONS``,
Flask's ``app.config``): the invalidation bus settings and the stack keyword arguments of the
bus, the shared tag index and the single-flight coordinator. Each integration names its own
settings and turns ``ValueError`` into its framework's configuration error."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["BUS_OPTIONS", "TAG_INDEXES", "bus_kwargs", "coordination_kwargs"]

# Keys of the bus setting's dict -> RedisInvalidationBus arguments (upper case, like the rest of
# Django's and Flask's configuration).
BUS_OPTIONS = {
    "CHANNEL": "channel",
    "SIGNING_SECRET": "signing_secret",
    "SOURCE_ID": "source_id",
    "REPLAY_WINDOW": "replay_window",
    "TIMEOUT": "timeout",
}
TAG_INDEXES = ("redis", "memory")


def bus_kwargs(value: Any, setting: str, default_channel: str) -> dict[str, Any] | None:
    """The bus setting (``True``, ``False``/``None`` or a dict of :data:`BUS_OPTIONS`) as
    ``RedisInvalidationBus`` keyword arguments (``None``: no bus).

    Raises:
        ValueError: Not a bool or a dict, or a dict with an unknown key (named by ``setting``).
    """
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{setting} must be True, False or a dict, not {value!r}")
    unknown = set(value) - set(BUS_OPTIONS)
    if unknown:
        raise ValueError(
            f"unknown {setting} keys: {', '.join(sorted(map(str, unknown)))} "
            f"(known: {', '.join(sorted(BUS_OPTIONS))})"
        )
    kwargs = {BUS_OPTIONS[name]: item for name, item in value.items()}
    kwargs.setdefault("channel", default_channel)
    return kwargs


def coordination_kwargs(
    client: Any,
    *,
    bus: Mapping[str, Any] | None,
    tag_index_prefix: str | None,
    single_flight_prefix: str | None,
    wrap_bus: Callable[[Any], Any] | None = None,
) -> dict[str, Any]:
    """Stack keyword arguments of the coordination components on ``client`` (a sync or an
    asyncio redis-py client: the classes return the matching twin).

    Args:
        client: The Redis layer's client (``decode_responses=False``, socket timeouts).
        bus: Bus keyword arguments (:func:`bus_kwargs`), or ``None`` for no bus.
        tag_index_prefix: The shared tag index's prefix, or ``None`` for the in-process one.
        single_flight_prefix: The coordinator's prefix, or ``None`` for no coordinator.
        wrap_bus: Applied to the bus before the stack gets it (Django's publish-only side).

    Raises:
        ValueError: A component refused its arguments.
    """
    kwargs: dict[str, Any] = {}
    if bus is None and tag_index_prefix is None and single_flight_prefix is None:
        return kwargs
    from ..redis.bus import RedisInvalidationBus
    from ..redis.single_flight import RedisSingleFlightCoordinator
    from ..redis.tag_index import RedisTagIndex

    if bus is not None:
        built = RedisInvalidationBus(client, **bus)
        kwargs["invalidation_bus"] = built if wrap_bus is None else wrap_bus(built)
        kwargs["broadcast_l1_invalidation"] = True
    if tag_index_prefix is not None:
        kwargs["tag_index"] = RedisTagIndex(client=client, prefix=tag_index_prefix)
    if single_flight_prefix is not None:
        kwargs["single_flight_coordinator"] = RedisSingleFlightCoordinator(
            client=client, prefix=single_flight_prefix
        )
    return kwargs
