# DO NOT EDIT: generated from src/layercache/_async/assembly.py by scripts/unasync.py.
# Change the async source and run `python scripts/unasync.py`.
"""Builds a stack's collaborators from its settings, once: coerced at the boundary, then wired.

``SyncCacheStack.__init__`` keeps the public signature and hands its arguments here; what comes
back is every collaborator, each owning its state, wired so that calls go one way (see
``docs/architecture.md``): stack → reader → loader → writer → tag keeper → layer set →
adapters; the bus link → layer set, flights, tag index; everyone → announcer, telemetry.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from .. import _types
from .._options import (
    CacheOptions,
    coerce_degradation,
    coerce_generation,
    coerce_generation_cleanup,
    coerce_options,
    coerce_write_behind,
    seconds,
)
from .._primitives.threads import check_component, new_workers
from .._tag_index import InMemoryTagIndex
from .._telemetry import Telemetry
from ..snapshots import coerce_base_dir
from .announcer import Announcer
from .bus_link import BusLink
from .flights import Flights
from .layer_set import LayerSet
from .loader import Loader
from .reader import Reader
from .snapshots import Snapshotter
from .tag_index import TagIndexAdapter
from .tag_keeper import TagKeeper
from .warmer import Warmer
from .writer import Writer

__all__ = ["Parts", "assemble"]

# The stack arguments that are per-call option defaults (``CacheOptions`` names).
_DEFAULTS = {
    "negative_caching": "negative_cache",
    "negative_ttl": "negative_ttl",
    "fetch_timeout": "fetch_timeout",
    "ttl_jitter": "ttl_jitter",
    "stale_while_revalidate": "stale_while_revalidate",
    "stale_if_error": "stale_if_error",
    "fetch_soft_timeout": "fetch_soft_timeout",
    "adaptive_ttl": "adaptive_ttl",
    "early_refresh": "early_refresh",
    "circuit_breaker": "circuit_breaker",
    "fetcher_rate_limit": "fetcher_rate_limit",
}


class Parts:
    """One stack's collaborators."""

    __slots__ = (
        "announcer",
        "components",
        "defaults",
        "flights",
        "layers",
        "link",
        "loader",
        "reader",
        "snapshot_base_dir",
        "snapshots",
        "tag_index",
        "telemetry",
        "unreport",
        "warmer",
        "writer",
    )

    def __init__(self, **parts: Any) -> None:
        for name, value in parts.items():
            setattr(self, name, value)

    announcer: Announcer
    components: list[Any]
    defaults: CacheOptions
    flights: Flights
    layers: LayerSet
    link: BusLink
    loader: Loader
    reader: Reader
    snapshot_base_dir: Path | Literal[False]
    snapshots: Snapshotter
    tag_index: TagIndexAdapter
    telemetry: Telemetry
    unreport: list[Any]
    warmer: Warmer
    writer: Writer


def assemble(settings: Mapping[str, Any]) -> Parts:
    """Validate every setting of ``SyncCacheStack`` (named as its parameters) before any I/O and
    build the collaborators."""
    s = settings
    profiles = s["max_profile_entries"]
    if not isinstance(profiles, int) or isinstance(profiles, bool) or profiles < 1:
        raise ValueError("max_profile_entries must be a positive int")
    tz = s["ttl_policy_timezone"]
    if isinstance(tz, str):
        from zoneinfo import ZoneInfo

        tz = ZoneInfo(tz)
    bus = s["invalidation_bus"]
    coordinator = s["single_flight_coordinator"]
    broadcast = s["broadcast_l1_invalidation"]
    if broadcast and bus is None:
        raise ValueError("broadcast_l1_invalidation=True needs an invalidation_bus")
    # A component built on the other kind of Redis client cannot work here: refuse it now
    # rather than on the first miss.
    check_component(coordinator, "single_flight_coordinator", "run")
    check_component(bus, "invalidation_bus", "publish")
    defaults = coerce_options({option: s[name] for name, option in _DEFAULTS.items()})
    assert defaults is not None
    retry_after = coerce_degradation(s["graceful_degradation"])
    snapshot_base_dir = coerce_base_dir(s["snapshot_base_dir"])
    clock = s["clock"]
    adapters = LayerSet.bind(s["layers"])
    telemetry = Telemetry([a.name for a in adapters], s["logger"], s["metrics"])
    announcer = Announcer(
        bus,
        broadcast=bus is not None if broadcast is None else bool(broadcast),
        telemetry=telemetry,
        retry_after=retry_after,
    )
    layer_set = LayerSet(
        adapters,
        telemetry=telemetry,
        announcer=announcer,
        clock=clock,
        retry_after=retry_after,
        write_policy=s["write_policy"],
    )
    flights = Flights()
    index = s["tag_index"]
    tags = TagIndexAdapter(
        index if index is not None else InMemoryTagIndex(s["max_tag_index_keys"])
    )
    keeper = TagKeeper(tags, layers=layer_set, flights=flights, telemetry=telemetry, clock=clock)
    writer = Writer(
        layers=layer_set,
        tags=keeper,
        flights=flights,
        announcer=announcer,
        telemetry=telemetry,
        clock=clock,
        rng=s["rng"],
        tz=tz,
        write_behind=coerce_write_behind(s["write_strategy"], s["write_behind"]),
        max_profile_entries=profiles,
    )
    # The coordinator is never reconfigured: this stack's lease terms go with each call.
    lease = s["single_flight_lease"]
    renew = s["single_flight_renew_interval"]
    terms: dict[str, float] = {}
    if lease is not None:
        terms["lease"] = seconds("single_flight_lease", lease, allow_zero=False)
    if renew is not None:
        terms["renew_interval"] = seconds("single_flight_renew_interval", renew, allow_zero=False)
        if renew is not None and terms["renew_interval"] >= terms.get("lease", float("inf")):
            raise ValueError(
                f"single_flight_renew_interval ({terms['renew_interval']}) must be shorter "
                f"than single_flight_lease ({terms['lease']})"
            )
    unreport: list[Any] = []
    if isinstance(coordinator, _types.ReportsErrors):
        unreport.append(
            coordinator.add_error_handler(lambda error, ctx: telemetry.report(error, **ctx))
        )
    loader = Loader(
        writer=writer,
        layers=layer_set,
        flights=flights,
        telemetry=telemetry,
        clock=clock,
        coordinator=coordinator,
        coordinator_terms=terms,
        single_flight_timeout=seconds(
            "single_flight_timeout", s["single_flight_timeout"], allow_zero=False
        ),
        single_flight_poll=seconds("single_flight_poll", s["single_flight_poll"], allow_zero=False),
        stampede_prevention=s["stampede_prevention"],
        background_refresh_timeout=seconds(
            "background_refresh_timeout", s["background_refresh_timeout"], allow_zero=False
        ),
        fetch_timeout=defaults.fetch_timeout,
        max_profile_entries=profiles,
        workers=new_workers("layercache"),
        rng=s["rng"],
    )
    reader = Reader(
        layers=layer_set,
        writer=writer,
        loader=loader,
        flights=flights,
        telemetry=telemetry,
        clock=clock,
    )
    link = BusLink(
        bus,
        announcer=announcer,
        layers=layer_set,
        flights=flights,
        tags=tags,
        telemetry=telemetry,
        workers=loader.workers,
        generation=coerce_generation(s["generation"]),
        cleanup_batch=coerce_generation_cleanup(s["generation_cleanup"]),
    )
    return Parts(
        announcer=announcer,
        # Closed with the stack (after the layers' users, before the layers).
        components=[c for c in (bus, coordinator) if isinstance(c, _types.SyncClosable)],
        unreport=unreport,
        warmer=Warmer(
            layers=layer_set, writer=writer, loader=loader, telemetry=telemetry, clock=clock
        ),
        defaults=defaults,
        flights=flights,
        layers=layer_set,
        link=link,
        loader=loader,
        reader=reader,
        snapshot_base_dir=snapshot_base_dir,
        snapshots=Snapshotter(layers=layer_set, writer=writer, clock=clock),
        tag_index=tags,
        telemetry=telemetry,
        writer=writer,
    )
