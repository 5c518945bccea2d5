"""Leases: what RedisLayer's conditional stores check, shared by both twins of the layer.

A fetch that read a key from Redis and then called the origin must not store its (older) value
after another instance changed the key (delete, set, tag or pattern invalidation, clear). The
layer makes that store conditional, checked atomically in Redis: the :class:`Lease` a read
returns says *when* the read ran (a lower bound of the server's clock) and *what* it saw. The
store succeeds only if the key still holds what was seen (deletes leave a tombstone instead of
an empty key, so "deleted meanwhile" is visible) and no fence (written by ``clear``,
``delete_matching`` and tag invalidations) is newer than the read.

Nothing here does I/O or depends on either twin: the asyncio layer and its generated sync twin
import it, so both hand out the same :class:`Lease` class (and :class:`CasToken`, what a read for
an optimistic update saw).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Final, NamedTuple

__all__ = [
    "FENCE_ALL",
    "FENCE_TAG",
    "INTERNAL_MARK",
    "REMEASURE_US",
    "TOMBSTONE_MAGIC",
    "CasToken",
    "Lease",
    "ServerClock",
    "fence_at_or_after",
    "monotonic_us",
]

# A deleted key holds these bytes followed by the server time of the delete (ascii decimal
# microseconds), ':' and the deleting call's random nonce (see LEASE_TOMBSTONE). ``\xc1LC``
# starts every entry (see _codec.py), so a tombstone is never a valid entry, and 0xC1 never
# starts UTF-8 text or a msgpack value written by someone else.
TOMBSTONE_MAGIC: Final = b"\xc1LT"
# What follows the layer's prefix in the names of its own bookkeeping keys. Cache keys are
# printable (validated by the stack), so no cache key starts with NUL and the two can never
# collide; every SCAN-based method skips keys starting with it.
INTERNAL_MARK: Final = "\x00"
# The fence of clear() and delete_matching(): every fetch that read before it is refused.
FENCE_ALL: Final = INTERNAL_MARK + "fence:all"
# Followed by a tag: the fence of an invalidation of that tag.
FENCE_TAG: Final = INTERNAL_MARK + "fence:tag:"

# An estimate of the server clock older than this is measured again (one TIME command).
REMEASURE_US: Final = 10_000_000
# Fixed part of the estimate's safety margin: covers the rounding of the two clocks.
_BASE_MARGIN_US: Final = 2_000
# Clocks drift apart by far less than 0.1% (NTP slews at most 0.05%): the margin grows by
# that share of the estimate's age.
_DRIFT_DIVISOR: Final = 1_000


def monotonic_us() -> int:
    """This process's monotonic clock in integer microseconds."""
    return time.monotonic_ns() // 1000


class Lease(NamedTuple):
    """What a read of one key saw, for a later :meth:`RedisLayer.set_leased` of it.

    Attributes:
        read_at: A lower bound of the Redis server's clock (integer microseconds since the
            epoch) at the moment the read ran on the server.
        observed: The raw bytes the read found (an entry, a tombstone, or whatever else was
            stored), ``None`` if the key was absent.
    """

    read_at: int
    observed: bytes | None


@dataclasses.dataclass(frozen=True, slots=True)
class CasToken:
    """What :meth:`RedisLayer.get_with_token` read, for a later
    :meth:`RedisLayer.compare_and_set` of the same key (memcached's ``gets``/``cas`` pattern).

    Opaque: take it from ``get_with_token`` and hand it back; it holds the exact bytes the read
    found, which the compare-and-set compares with what the key holds then (inside Redis).
    """

    observed: bytes = dataclasses.field(repr=False)


class ServerClock:
    """A lower bound of a Redis server's clock, computed locally without a round trip.

    One ``TIME`` reply ``T`` received at local monotonic time ``t1`` happened before ``t1``,
    so for any later local time ``t`` the server's clock is at least ``T + (t - t1)`` while
    both clocks advance at the same rate: ``offset = T - t1`` and the bound is
    ``t + offset - margin``. The margin covers rounding (2 ms) and drift (0.1% of the time
    since ``t1``); ``skew_us`` is subtracted as well on a cluster, where the bound must hold
    for every node's clock, not only the one that answered ``TIME``.

    The layer measures on first use and again once the measurement is older than 10 s. While
    one caller measures again, the others keep using the older measurement: with its grown
    margin it is still a lower bound, so nobody else waits for the new one.
    """

    __slots__ = ("_floor", "_skew_us", "_state", "refreshing")

    def __init__(self, skew_us: int = 0) -> None:
        self._skew_us = skew_us
        # (t1, offset) replaced as one tuple, so that threads read a consistent pair.
        self._state: tuple[int, int] | None = None
        self.refreshing = False
        # A server time known to have passed: see raise_floor.
        self._floor = 0

    def raise_floor(self, server_us: int) -> None:
        """Record that the server's clock has reached ``server_us`` (a fence this process
        wrote returned that time). A read sent after that runs later on the server, so the
        bound never needs to be below it: without this floor a fetch that reads right after
        this process's own invalidation (within the margin) would be refused its store.
        Single server only: on a cluster the fence's node is not the key's."""
        if server_us > self._floor:
            self._floor = server_us

    def read_at(self) -> int | None:
        """The bound now, or ``None`` when the layer must measure first (none yet, or the
        last one is older than 10 s and nobody is measuring)."""
        state = self._state
        if state is None:
            return None
        now = time.monotonic_ns() // 1000
        age = now - state[0]
        if age > REMEASURE_US and not self.refreshing:
            return None
        bound = now + state[1] - _BASE_MARGIN_US - age // _DRIFT_DIVISOR - self._skew_us
        return max(bound, self._floor)

    def update(self, t1_us: int, server_us: int) -> None:
        """Record one ``TIME`` reply (``server_us``) received at local time ``t1_us``."""
        self._state = (t1_us, server_us - t1_us)

    def update_from_reply(self, t1_us: int, reply: object) -> None:
        """Record redis-py's reply to ``TIME`` (``(seconds, microseconds)``; a cluster
        client's may be keyed by node) received at local time ``t1_us``."""
        pair: Any = next(iter(reply.values())) if isinstance(reply, dict) else reply
        seconds, micros = pair
        self.update(t1_us, int(seconds) * 1_000_000 + int(micros))


def fence_at_or_after(value: bytes | None, read_at: int) -> bool:
    """Whether a fence's stored value (server time in ascii microseconds) is ``>= read_at``.

    An absent fence, or bytes that are not a time, fence nothing.
    """
    if value is None:
        return False
    try:
        return int(value) >= read_at
    except ValueError:
        return False
