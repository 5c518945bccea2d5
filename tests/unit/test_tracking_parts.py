"""The parts of server-assisted invalidation that need no server: the payload parser and its
bounds (redis/_tracking.py), and ``Flights.outdating`` (a shared layer reported a change: reads
are invalidated, fetches only outdated), in both twins of the flight table."""

from __future__ import annotations

from typing import Any

import pytest

from layercache._async.flights import JOIN_FETCH, LEAD
from layercache._async.flights import Flights as AsyncFlights
from layercache._sync.flights import Flights as SyncFlights
from layercache.redis._tracking import (
    FLUSH,
    TRACKING_CHANNEL,
    TrackingBatch,
    enable_tracking_args,
    parse_invalidation,
    push_as_message,
)
from layercache.redis.bus import RedisInvalidationBus, RejectedMessageError

P = b"app:"


def parse(data: object, max_keys: int = 100, max_bytes: int = 10_000) -> Any:
    return parse_invalidation(data, P, max_keys=max_keys, max_bytes=max_bytes)


def test_keys_under_the_prefix_map_back_to_stack_keys() -> None:
    assert parse([b"app:user:1", b"app:v3:user:2", "app:é".encode()]) == (
        "user:1",
        "v3:user:2",
        "é",
    )


def test_what_cannot_be_a_stack_key_is_skipped() -> None:
    assert parse([b"other:1", b"app:\xff\xfe", b"app:\x00fence:all", b"app:" + b"x" * 5000]) == ()
    assert parse([]) == ()


def test_nil_and_oversized_lists_drop_everything() -> None:
    assert parse(None) is FLUSH
    assert parse([b"app:k"] * 101) is FLUSH  # more keys than max_keys
    assert parse([b"app:" + b"x" * 600] * 20, max_bytes=10_000) is FLUSH  # more bytes
    assert parse([b"app:k", 7]) is FLUSH  # no server sends that: the safe answer


@pytest.mark.parametrize("data", [b"", b"app:k", "app:k", 3, {"k": 1}, (b"app:k",)])
def test_anything_but_a_list_or_nil_is_a_publish_and_is_rejected(data: object) -> None:
    with pytest.raises(RejectedMessageError) as caught:
        parse(data)
    assert caught.value.reason == "malformed"


def test_rejecting_a_huge_publish_costs_nothing_per_byte() -> None:
    with pytest.raises(RejectedMessageError) as caught:
        parse(b"\xff" * 50_000_000)
    assert len(str(caught.value)) < 500


def test_a_batch_is_bounded_and_turns_into_a_flush() -> None:
    batch = TrackingBatch(max_keys=3)
    assert not batch
    batch.add(("a", "b"))
    batch.add(("b",))
    assert list(batch.keys) == ["a", "b"]
    batch.add(("c", "d"))
    assert batch.flush
    assert not batch.keys
    assert batch.messages == 3
    batch.add(("e",))
    assert not batch.keys  # a flush stays a flush
    flushed = TrackingBatch(max_keys=3)
    flushed.add(FLUSH)
    assert flushed.flush


def test_the_tracking_command_and_the_push_shape() -> None:
    assert enable_tracking_args(7, b"app:") == (
        b"CLIENT",
        b"TRACKING",
        b"ON",
        b"REDIRECT",
        7,
        b"BCAST",
        b"PREFIX",
        b"app:",
    )
    assert b"PREFIX" not in enable_tracking_args(7, b"")
    assert push_as_message([b"invalidate", [b"app:k"]]) == [
        b"message",
        TRACKING_CHANNEL,
        [b"app:k"],
    ]
    assert push_as_message([b"invalidate", None])[2] is None
    assert push_as_message(b"odd")[2] == b""


async def test_the_bus_refuses_a_bad_track_prefix() -> None:
    import redis.asyncio

    client = redis.asyncio.Redis()  # never connects
    with pytest.raises(ValueError, match="track_prefix must be a str"):
        RedisInvalidationBus(client, track_prefix=b"app:")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="control character"):
        RedisInvalidationBus(client, track_prefix="app:\n")
    bus = RedisInvalidationBus(client, track_prefix="")
    assert bus.track_prefix == ""
    assert "track_prefix=''" in repr(bus)
    await client.aclose()


# -- Flights.outdating -------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["async", "sync"])
async def test_outdating_invalidates_reads_and_outdates_fetches(flavour: str) -> None:
    flights: Any = AsyncFlights() if flavour == "async" else SyncFlights()
    running, fetch = flights.join_fetch("k", ())
    assert running is None
    action, read = flights.join_read("r", fetching=False)
    assert action == LEAD
    epoch = flights.epoch
    with flights.outdating(["k", "r"]):
        assert flights.changed_since("k", epoch)
    assert read.invalidated
    assert fetch.outdated
    assert not fetch.invalidated  # what it stored in the shared layers stands
    written: list[str] = []
    # Its in-process write is skipped, and reported as not changed (so nothing is taken back).
    assert flights.unless_changed(fetch, lambda: written.append("k"))
    assert written == []
    # No later caller joins it: a new fetch, and a reader does not wait for the old one.
    again, newer = flights.join_fetch("k", ())
    assert again is None
    assert newer is not fetch
    action, _ = flights.join_read("k", fetching=True)
    assert action == JOIN_FETCH  # the new fetch, which began after the report
    assert flights.unless_changed(newer, lambda: written.append("k"))
    assert written == ["k"]


@pytest.mark.parametrize("flavour", ["async", "sync"])
async def test_outdating_everything(flavour: str) -> None:
    flights: Any = AsyncFlights() if flavour == "async" else SyncFlights()
    _, fetch = flights.join_fetch("a", ())
    _, read = flights.join_read("b", fetching=False)
    epoch = flights.epoch
    with flights.outdating(None):
        pass
    assert fetch.outdated
    assert read.invalidated
    assert flights.changed_since("anything", epoch)
    assert not flights.changed_since("anything", flights.epoch)
