"""Probabilistic early refresh (XFetch): the decision rule and the fetch durations it weighs.

Vattani, Chierichetti and Lowenstein ("Optimal Probabilistic Cache Stampede Prevention",
VLDB 2015) show that refreshing a value early on a hit with probability

    P(refresh) = exp(-remaining / (delta * beta))

where ``remaining`` is the value's freshness left, ``delta`` how long recomputing it takes and
``beta`` a tuning factor (1 is their recommendation), is optimal among memoryless rules: a hot
key is refreshed a little before it expires, once, by one of its readers, and nobody waits. A
hit draws ``U`` uniform in ``(0, 1]`` and refreshes when ``delta * beta * -ln(U) >= remaining``
(the same event).

``delta`` is the key's last fetch duration measured here; a key this process never fetched
(its value came from another instance through a shared layer) uses the mean of the recent
fetches of the stack, or :data:`DEFAULT_DELTA` before the first one. Durations are measured on
the stack's clock, the one ``remaining`` is measured on (a fake clock in tests moves both).

Pure and synchronous; the loader calls :func:`should_refresh` on a hit and
:meth:`FetchDurations.record` after a fetch.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["DEFAULT_DELTA", "MEAN_WEIGHT", "FetchDurations", "should_refresh"]

DEFAULT_DELTA = 0.05
"""Seconds assumed for a fetch before this stack has timed any."""

MEAN_WEIGHT = 0.2
"""Weight of the newest duration in the stack's moving mean (the fallback ``delta``)."""

# ``random()`` returns multiples of 2**-53 below 1, so ``U = 1 - random()`` is at least 2**-53
# and ``-ln(U)`` at most 53 ln 2 (about 36.74): beyond that many ``delta * beta`` no draw can
# trigger, and none is taken (the hot path of a key far from expiry costs no random number).
_MAX_EXPONENT = 53 * math.log(2)


def should_refresh(remaining: float, delta: float, beta: float, draw: Callable[[], float]) -> bool:
    """Whether a hit with ``remaining`` seconds of freshness left refreshes now.

    ``draw`` returns a float uniform in ``[0, 1)`` (``random.random``); it is called once, and
    only when a refresh is possible at all (``remaining`` within 36.7 ``delta * beta``).
    ``remaining <= 0`` (expired) always refreshes; ``delta <= 0`` (a fetch that took no
    measurable time) never refreshes early.
    """
    if remaining <= 0:
        return True
    scale = delta * beta
    if scale <= 0 or remaining > scale * _MAX_EXPONENT:
        return False
    u = 1.0 - draw()  # (0, 1] for a draw in [0, 1)
    if u <= 0.0:  # a random source outside [0, 1): -ln(0) is infinite, refresh
        return True
    return scale * -math.log(u) >= remaining


class FetchDurations:
    """How long fetches took: the last duration of each key (bounded, least recently
    fetched dropped first) and a moving mean over all fetches of the stack.

    Reads take no lock (a dict lookup); writes do (the bound's bookkeeping), so the thread
    twin's callers may record and read concurrently.
    """

    __slots__ = ("_last", "_lock", "_max_entries", "mean")

    def __init__(self, max_entries: int) -> None:
        self._last: OrderedDict[str, float] = OrderedDict()
        self._max_entries = max_entries
        self._lock = threading.Lock()
        # The moving mean of every fetch timed here (None: none yet).
        self.mean: float | None = None

    def __len__(self) -> int:
        return len(self._last)

    def record(self, key: str | None, seconds: float) -> None:
        """A fetch took ``seconds`` (negative: the clock stepped back; counted as 0). With
        ``key`` it is also remembered as that key's ``delta``; the mean always moves."""
        seconds = max(seconds, 0.0)
        with self._lock:
            mean = self.mean
            self.mean = seconds if mean is None else mean + MEAN_WEIGHT * (seconds - mean)
            if key is None:
                return
            last = self._last
            last[key] = seconds
            last.move_to_end(key)
            if len(last) > self._max_entries:
                last.popitem(last=False)  # bounded; a forgotten key falls back to the mean

    def due(self, key: str, remaining: float, beta: float, draw: Callable[[], float]) -> bool:
        """:func:`should_refresh` with ``delta`` = :meth:`delta` of ``key``, in one call (the
        hit path of every key with early refresh runs this)."""
        seconds = self._last.get(key)
        if seconds is None:
            mean = self.mean
            seconds = DEFAULT_DELTA if mean is None else mean
        # The same steps as should_refresh(), inlined: a call costs as much as the rule.
        if remaining <= 0:
            return True
        scale = seconds * beta
        if scale <= 0 or remaining > scale * _MAX_EXPONENT:
            return False
        u = 1.0 - draw()
        if u <= 0.0:
            return True
        return scale * -math.log(u) >= remaining

    def delta(self, key: str) -> float:
        """The key's last fetch duration, else the stack's mean, else :data:`DEFAULT_DELTA`."""
        seconds = self._last.get(key)
        if seconds is not None:
            return seconds
        mean = self.mean
        return DEFAULT_DELTA if mean is None else mean
