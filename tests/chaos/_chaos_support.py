"""The chaos suite's shared model: an origin with a version history, and the staleness checker.

The origin stands in for the service's database. Every change of a key bumps its version
*before* the cache is told (write-then-invalidate, or write-then-set, as a service does) and is
recorded with two ``time.monotonic()`` stamps: when it began (origin updated) and when the
cache call *returned* to its caller. Changes of one key are serialized by the workload (a row
lock in a real database): without that, two writers could tell the cache in the opposite order
from the one they changed the origin in, and the cache could not be blamed for it.

Every read records when it started, when it ended and the version it got. The rule
(:func:`judge`): a read that started more than ``grace`` seconds after a change of its key
returned must not get a version older than that change. ``grace=0.5`` for several instances
(the bus needs a moment to reach the others), ``grace=0`` for one instance (its own changes are
visible to it the moment they return). Reads can be restricted to *settled windows* (no fault
running, every instance recovered): what happens during a fault is printed, not judged.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import math
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _redis_server import RedisServer, RedisServerError

__all__ = [
    "ChaosRedisServer",
    "Change",
    "Origin",
    "ProxyHost",
    "Raised",
    "Read",
    "Stale",
    "Verdict",
    "Window",
    "judge",
    "rss_bytes",
    "soak_requested",
]


class ChaosRedisServer(RedisServer):
    """A ``RedisServer`` that can also be SIGKILLed, and optionally persists every write.

    ``persist=True`` turns on the append-only file with ``appendfsync always``: a SIGKILL then
    loses nothing acknowledged, so a restarted server comes back with its old data (the case
    where a missed delete must be replayed before anyone reads the key). Without it (the
    default, like the session fixture) a restarted server is empty.
    """

    def __init__(self, *args: Any, persist: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.persist = persist

    def _arguments(self) -> list[str]:
        arguments = super()._arguments()
        if self.persist:
            position = arguments.index("--appendonly")
            arguments[position + 1] = "yes"
            arguments += ["--appendfsync", "always"]
        return arguments

    def command(self, *args: str | bytes, timeout: float = 5.0) -> bytes:
        """As the base class; a server still loading its append-only file answers ``LOADING``,
        which counts as "not ready yet" (an ``OSError``) so that :meth:`start` keeps waiting."""
        try:
            return super().command(*args, timeout=timeout)
        except RedisServerError as exc:
            if str(exc).startswith("LOADING"):
                raise OSError(str(exc)) from exc
            raise

    def kill(self) -> None:
        """SIGKILL the server (no shutdown, no final save) and reap it."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.kill()
        process.wait(10)


@dataclass(slots=True)
class Change:
    """One change of a key: its new version, what made it, when it began and returned."""

    version: int
    op: str
    instance: int
    began: float
    returned: float  # math.inf: the cache call raised (never judged against)


@dataclass(slots=True)
class Read:
    """One read: which key, on which instance, when, and the version (and origin-read time)
    of the value it got."""

    key: str
    instance: int
    started: float
    ended: float
    version: int
    read_at: float  # when the value's version was read from the origin (or written by set)


@dataclass(slots=True)
class Raised:
    """An operation that raised (under graceful degradation none may)."""

    op: str
    instance: int
    at: float
    error: str
    trace: str


@dataclass(frozen=True, slots=True)
class Window:
    """A settled period: reads that started at or after ``start`` and ended by ``end`` are
    judged."""

    start: float
    end: float


class Origin:
    """The database: one version per key and the history of every change (thread-safe)."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._lock = threading.Lock()
        self.versions: dict[str, int] = dict.fromkeys(keys, 0)
        self.history: dict[str, list[Change]] = {
            key: [Change(0, "initial", -1, -math.inf, -math.inf)] for key in self.versions
        }
        self.fetches = 0

    def value(self, key: str) -> dict[str, Any]:
        """The current row of ``key``: ``{"k": key, "v": version, "r": read time}``."""
        with self._lock:
            self.fetches += 1
            return {"k": key, "v": self.versions[key], "r": time.monotonic()}

    def bump(self, keys: Sequence[str]) -> float:
        """Change ``keys`` at the origin (the caller holds their locks); returns the time."""
        with self._lock:
            for key in keys:
                self.versions[key] += 1
            return time.monotonic()

    def record(
        self, keys: Sequence[str], op: str, instance: int, began: float, returned: float
    ) -> None:
        """The cache call that follows the change of ``keys`` returned (or raised: inf)."""
        with self._lock:
            for key in keys:
                self.history[key].append(Change(self.versions[key], op, instance, began, returned))

    def changes(self) -> int:
        return sum(len(h) - 1 for h in self.history.values())


@dataclass(slots=True)
class Stale:
    """A read judged stale, with what it missed."""

    read: Read
    required: int
    lateness: float  # seconds from the (first) missed change's return to the read's start
    missed: Change


@dataclass(slots=True)
class Verdict:
    judged: int = 0
    stale: list[Stale] = field(default_factory=list)

    @property
    def worst(self) -> float | None:
        return max((s.lateness for s in self.stale), default=None)

    def worst_text(self) -> str:
        worst = self.worst
        return "-" if worst is None else f"{worst:.3f}s"


class _KeyIndex:
    """Per key: returned times in order and the highest version returned by each."""

    def __init__(self, history: list[Change]) -> None:
        done = sorted((c.returned, c.version) for c in history if c.returned != math.inf)
        self.times = [t for t, _ in done]
        self.best: list[int] = []
        top = 0
        for _, version in done:
            top = max(top, version)
            self.best.append(top)
        self.history = history

    def required(self, before: float) -> int:
        """The highest version whose change returned at or before ``before``."""
        position = bisect.bisect_right(self.times, before)
        return self.best[position - 1] if position else 0


def judge(
    reads: Iterable[Read],
    history: dict[str, list[Change]],
    *,
    grace: float,
    windows: Sequence[Window] | None = None,
) -> Verdict:
    """Judge ``reads`` against ``history`` (see the module docstring).

    With ``windows``, only reads that started at or after a window's start and ended by its
    end are judged; without, every read is.
    """
    index = {key: _KeyIndex(changes) for key, changes in history.items()}
    starts = [w.start for w in windows] if windows is not None else []
    verdict = Verdict()
    for read in reads:
        if windows is not None:
            position = bisect.bisect_right(starts, read.started) - 1
            if position < 0 or read.ended > windows[position].end:
                continue
        verdict.judged += 1
        limit = read.started - grace
        keyed = index[read.key]
        required = keyed.required(limit)
        if read.version >= required:
            continue
        missed = min(
            (c for c in keyed.history if c.version > read.version and c.returned <= limit),
            key=lambda c: c.returned,
        )
        verdict.stale.append(Stale(read, required, read.started - missed.returned, missed))
    return verdict


def describe(stale: Stale, t0: float, who: str = "instance") -> str:
    """One stale read in words, times relative to ``t0`` (the run's start); ``who`` names
    what ``instance`` numbers (an instance, a thread)."""
    read, missed = stale.read, stale.missed
    return (
        f"{read.key} on {who} {read.instance}: read started {read.started - t0:.3f}s "
        f"ended {read.ended - t0:.3f}s got v{read.version} (origin read at "
        f"{read.read_at - t0:.3f}s), needed v{stale.required}; missed {missed.op} "
        f"v{missed.version} by {who} {missed.instance} began {missed.began - t0:.3f}s "
        f"returned {missed.returned - t0:.3f}s ({stale.lateness:.3f}s before the read)"
    )


def raised(op: str, instance: int, exc: BaseException) -> Raised:
    return Raised(
        op,
        instance,
        time.monotonic(),
        repr(exc),
        "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    )


def soak_requested(config: Any) -> bool:
    """Whether the long soak was asked for: ``--chaos-soak`` or ``LAYERCACHE_SOAK=1``."""
    try:
        option = bool(config.getoption("--chaos-soak"))
    except ValueError:  # unknown option: tests/chaos/conftest.py was not loaded at start-up
        option = False
    return option or os.environ.get("LAYERCACHE_SOAK") == "1"


def rss_bytes() -> int:
    """Resident set size of this process (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    import resource

    return pages * resource.getpagesize()


class ProxyHost:
    """Client of ``_proxy_host.py``: ``count`` proxies to ``upstream_port`` in a child process.

    Commands are asyncio-friendly (:meth:`command`), so the test's loop never blocks on them.
    """

    def __init__(self, upstream_port: int, count: int) -> None:
        script = Path(__file__).with_name("_proxy_host.py")
        self._process = subprocess.Popen(
            [sys.executable, str(script), str(upstream_port), str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            self.close()
            raise RuntimeError("the proxy host did not start")
        self.ports: list[int] = json.loads(line)
        self._lock = threading.Lock()

    def url(self, index: int) -> str:
        return f"redis://127.0.0.1:{self.ports[index]}/0"

    def _command_blocking(self, line: str) -> None:
        with self._lock:
            assert self._process.stdin is not None
            assert self._process.stdout is not None
            self._process.stdin.write(line + "\n")
            self._process.stdin.flush()
            answer = self._process.stdout.readline().strip()
        if answer != "ok":
            raise RuntimeError(f"proxy host: {line!r} -> {answer!r}")

    async def command(self, line: str) -> None:
        """Send ``cut I MODE`` / ``stall I`` / ``restore I`` and wait for its ``ok``."""
        await asyncio.to_thread(self._command_blocking, line)

    def close(self) -> None:
        process = self._process
        if process.poll() is None:
            try:
                assert process.stdin is not None
                process.stdin.write("quit\n")
                process.stdin.close()
                process.wait(10)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                process.kill()
                process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
