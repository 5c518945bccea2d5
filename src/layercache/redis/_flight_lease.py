"""Plain pieces of the Redis single-flight coordinator, shared by both twins: its statistics,
the outcomes of waiting for another instance's fetch, and lock tokens (no I/O)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

__all__ = ["Found", "MustFetch", "SingleFlightStats", "TakenOver", "new_token"]


@dataclass
class SingleFlightStats:
    """Counters of one coordinator (monotonic; read them, do not write them).

    Attributes:
        acquired: Locks taken (first callers and takeovers).
        fetches: ``fetch()`` calls made while holding the lock.
        takeovers: Locks taken by a waiter after the holder died or failed.
        waits: Calls that found the lock held and waited.
        shared_hits: Calls answered by ``read_shared()`` (waiters, and holders whose re-check
            found a value another instance had just stored).
        notifications: Completion notices received for keys with local waiters.
        timeouts: Waiters that reached ``timeout`` and fetched by themselves.
        degraded: Calls that fell back to a direct ``fetch()`` because Redis failed.
        renewals: Lease renewals of holders.
        lock_lost: Renewals or releases that found the lock gone or held by another token.
        renew_failures: Lease renewals that failed (Redis error or slowness).
        release_failures: Releases that failed (the lease then expires by itself).
        subscriptions: Confirmed (re)subscriptions of the notification channel.
        subscription_errors: Failures of the notification subscription (it reconnects).
    """

    acquired: int = 0
    fetches: int = 0
    takeovers: int = 0
    waits: int = 0
    shared_hits: int = 0
    notifications: int = 0
    timeouts: int = 0
    degraded: int = 0
    renewals: int = 0
    lock_lost: int = 0
    renew_failures: int = 0
    release_failures: int = 0
    subscriptions: int = 0
    subscription_errors: int = 0


class MustFetch:
    """Outcome of waiting: the caller must fetch (lock-free), no value to return."""


class TakenOver:
    """Outcome of waiting: the caller took the lock over with ``token``."""

    __slots__ = ("token",)

    def __init__(self, token: bytes) -> None:
        self.token = token


class Found:
    """Outcome of waiting: the shared layers hold ``value``."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def new_token() -> bytes:
    # 128 random bits: two callers never share a token, so compare-and-delete is exact.
    return secrets.token_hex(16).encode("ascii")
