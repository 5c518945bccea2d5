"""Per-key circuit breakers for fetchers: pure bookkeeping, no I/O, shared by both stacks.

The options (:class:`~layercache._options.CircuitBreaker`) live in ``_options.py`` with every
other option group; this module is the per-key registry only.

A key's circuit is *closed* (fetches go through), *open* (fetches fail fast until the cooldown
ends) or *half-open* (the cooldown ended: exactly one caller is let through as a probe, the
others keep failing fast until the probe reports). The stack asks :meth:`CircuitRegistry.
before_fetch` before it calls a fetcher and reports the outcome with ``record_success`` /
``record_failure``; what to do on ``"reject"`` (serve stale or raise ``CircuitOpenError``) is the
stack's business.

Bounded: a closed key with no failure counted has no state at all, and at most ``max_entries``
keys are remembered (see :class:`CircuitRegistry` for what eviction means).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Literal, TypeAlias

from ._options import CircuitBreaker, seconds

__all__ = ["CircuitDecision", "CircuitRegistry", "CircuitStateName"]

CircuitDecision: TypeAlias = Literal["allow", "probe", "reject"]
"""What ``before_fetch`` tells the caller: fetch, fetch as the one probe, or fail fast."""
CircuitStateName: TypeAlias = Literal["closed", "open", "half-open"]


class _State:
    """One remembered key. ``open_until``/``probe_deadline`` only matter once it tripped."""

    __slots__ = ("failures", "open_until", "probe_deadline")

    def __init__(self, failures: int, open_until: float = 0.0) -> None:
        self.failures = failures
        self.open_until = open_until
        # Set while the one half-open probe is in flight: until then every other caller is
        # rejected. A deadline rather than a flag so a probe whose caller vanished without
        # reporting cannot keep the circuit shut forever.
        self.probe_deadline: float | None = None


class CircuitRegistry:
    """Circuit state of many keys, O(1) per call and bounded.

    Keys that are closed with no failure counted are not stored. Keys with failures but still
    closed live in one LRU, tripped keys (open or half-open) in another; when more than
    ``max_entries`` keys are remembered, the least recently used *closed* one is forgotten
    first (it only loses a partial failure count); when the only closed one is the key just
    counted, the least recently used *tripped* one goes instead, so a newly failing key can
    still open its circuit while the registry is full of open ones.

    Evicting a tripped key closes its circuit: its next fetch reaches the origin again. That
    is the safe direction (the breaker fails open, never rejecting a healthy fetcher) and the
    cost is bounded: a still-failing origin re-opens the circuit after ``failure_threshold``
    more failures. The alternative, refusing to evict open keys, would let an outage of many
    keys grow the registry without bound.

    Thread-safe (one lock, held for O(1) work), so the thread stack can share it; on one event
    loop the lock is never contended.

    Args:
        max_entries: At most this many keys are remembered (>= 1).
        clock: Seconds, monotonic enough for cooldowns (the stack passes its clock so tests
            can advance time).
        probe_lease: Seconds after which a half-open probe that never reported (its caller
            was cancelled without calling :meth:`release_probe`) is presumed lost and the next
            caller becomes the probe. Should exceed the longest fetch timeout.
    """

    __slots__ = ("_clock", "_counting", "_lock", "_max_entries", "_probe_lease", "_tripped")

    def __init__(
        self,
        max_entries: int = 100_000,
        *,
        clock: Callable[[], float] = time.monotonic,
        probe_lease: float = 60.0,
    ) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be an int >= 1, not {max_entries!r}")
        self._max_entries = max_entries
        self._clock = clock
        self._probe_lease = seconds("probe_lease", probe_lease, allow_zero=False)
        self._counting: OrderedDict[str, _State] = OrderedDict()  # closed, failures > 0
        self._tripped: OrderedDict[str, _State] = OrderedDict()  # open or half-open
        self._lock = threading.Lock()

    def before_fetch(self, key: str, options: CircuitBreaker) -> CircuitDecision:
        """Decide whether a fetch of ``key`` may run.

        Args:
            key: The cache key the fetcher serves.
            options: The breaker options of this operation (the decision depends only on the
                recorded state; accepted so every call site passes the same arguments).

        Returns:
            ``"allow"`` (closed: fetch), ``"probe"`` (half-open: this caller is the single
            probe and must report with ``record_success``, ``record_failure`` or
            ``release_probe``) or ``"reject"`` (open, or another probe is in flight).
        """
        with self._lock:
            state = self._tripped.get(key)
            if state is None:
                return "allow"
            self._tripped.move_to_end(key)
            now = self._clock()
            if now < state.open_until:
                return "reject"
            if state.probe_deadline is not None and now < state.probe_deadline:
                return "reject"
            state.probe_deadline = now + self._probe_lease
            return "probe"

    def record_success(self, key: str) -> bool:
        """A fetch of ``key`` succeeded: the circuit closes and its state is dropped.

        Any success closes it, including that of a fetch started before the circuit opened:
        the fetcher demonstrably works. Returns whether a tripped circuit closed.
        """
        with self._lock:
            if self._tripped.pop(key, None) is None:
                self._counting.pop(key, None)
                return False
            return True

    def record_failure(self, key: str, options: CircuitBreaker) -> bool:
        """A fetch of ``key`` failed (raised or timed out).

        Closed: one more consecutive failure; at ``options.failure_threshold`` the circuit
        opens for ``options.cooldown``. Half-open (a probe failed, or the cooldown is over):
        it re-opens for another cooldown. Open: counted, the cooldown is not extended (the
        failure is from a fetch that started before the circuit opened). Returns whether a
        closed circuit opened.
        """
        cooldown = options.cooldown_seconds
        with self._lock:
            now = self._clock()
            state = self._tripped.get(key)
            if state is not None:
                self._tripped.move_to_end(key)
                state.failures += 1
                if state.probe_deadline is not None or now >= state.open_until:
                    state.open_until = now + cooldown
                    state.probe_deadline = None
                return False
            state = self._counting.pop(key, None)
            failures = 1 if state is None else state.failures + 1
            opened = failures >= options.failure_threshold
            if opened:
                self._tripped[key] = _State(failures, now + cooldown)
            elif state is None:
                self._counting[key] = _State(failures)
            else:
                state.failures = failures
                self._counting[key] = state  # re-inserted at the most recent end
            self._evict(key)
            return opened

    def release_probe(self, key: str) -> None:
        """The probe of ``key`` ended without an outcome (its caller was cancelled, or it was
        served without fetching): the next caller may probe at once. No-op otherwise."""
        with self._lock:
            state = self._tripped.get(key)
            if state is not None:
                state.probe_deadline = None

    def state(self, key: str) -> CircuitStateName:
        """``"closed"``, ``"open"`` or ``"half-open"`` (cooldown over, probing allowed or
        under way) for ``key``."""
        with self._lock:
            state = self._tripped.get(key)
            if state is None:
                return "closed"
            return "open" if self._clock() < state.open_until else "half-open"

    def failures(self, key: str) -> int:
        """Consecutive failures counted for ``key`` (0 when nothing is remembered)."""
        with self._lock:
            state = self._tripped.get(key) or self._counting.get(key)
            return 0 if state is None else state.failures

    def open_keys(self) -> int:
        """How many keys are open or half-open (for stats)."""
        return len(self._tripped)

    def clear(self) -> None:
        """Forget every key (every circuit closes)."""
        with self._lock:
            self._counting.clear()
            self._tripped.clear()

    def __len__(self) -> int:
        """How many keys are remembered (at most ``max_entries``)."""
        return len(self._counting) + len(self._tripped)

    def _evict(self, fresh: str) -> None:
        # Caller holds the lock. At most one key was added, so at most one goes. The key just
        # counted is never the victim: with the registry full of open keys, a newly failing
        # key would otherwise lose its count at once and could never open.
        if len(self._counting) + len(self._tripped) <= self._max_entries:
            return
        if self._counting and next(iter(self._counting)) != fresh:
            self._counting.popitem(last=False)
        else:
            # More than max_entries >= 1 keys are stored, so one of them is not ``fresh``.
            self._tripped.popitem(last=False)
