"""Shared by the server-assisted invalidation tests (test_tracking.py, test_sync_tracking.py):
the bytes a foreign writer stores, and the history checker."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from layercache._codec import EntryCodec
from layercache._entry import Entry

PREFIX = "trk:"
TRACKING_SOURCE = "redis:client-tracking"
CHECKER_KEYS = ("c0", "c1", "c2")


def encoded(value: Any, ttl: float = 300.0) -> bytes:
    """The bytes a RedisLayer stores for ``value`` (fresh for ``ttl`` seconds): what a foreign
    writer that knows the format (another service, a migration script) SETs with a raw
    client."""
    now = time.time()
    return EntryCodec().encode(Entry(value, now, now + ttl))


@dataclass
class Op:
    """One change: when it began, the values after it, when each stack applied it."""

    started: float
    after: dict[str, Any]
    arrived: list[float] = field(default_factory=list)


@dataclass
class Read:
    """One read through a stack."""

    stack: int
    key: str
    started: float
    finished: float
    value: Any


def check_history(ops: list[Op], reads: list[Read]) -> int:
    """Fail on a read that returned a replaced value; returns how many reads were checked.

    A read that started once op i had been applied by its stack (and before op i+1 began)
    may return op i's value of its key, or that of any later op that began before the read
    ended; never an older one.
    """
    checked = 0
    for position, op in enumerate(ops):
        following = ops[position + 1].started if position + 1 < len(ops) else float("inf")
        for read in reads:
            if not op.arrived[read.stack] <= read.started < following:
                continue
            allowed = [op.after[read.key]] + [
                later.after[read.key]
                for later in ops[position + 1 :]
                if later.started <= read.finished
            ]
            checked += 1
            assert read.value in allowed, (
                f"stack {read.stack} read {read.key}={read.value!r} at {read.started:.6f}, "
                f"after the change to {op.after[read.key]!r} arrived at "
                f"{op.arrived[read.stack]:.6f} (op {position})"
            )
    return checked
