"""The warmer: ``warm()``'s bounded, prioritised fetches of keys not yet fresh.

The stack hands it the entries already validated (stored keys, coerced options), highest
priority first. A fixed number of workers take them in that order, so at most ``concurrency``
fetchers run at once; a key fresh in some layer is skipped without calling its fetcher; any
other goes through the loader exactly as a ``get`` miss would (single-flight, breaker, rate
limit, timeouts, the writer's stores and tags; a fetch invalidated meanwhile is not stored).
Calls go down only: loader, writer (its one-layer read), telemetry.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from .._options import CacheOptions
from .._primitives.aio import join_spawned, spawn, stop_spawned
from .._telemetry import Telemetry
from .._warming import WarmSummary
from .layer_set import LayerSet
from .loader import Loader
from .writer import Writer

__all__ = ["WarmPlan", "Warmer"]

# One entry of a warm-up: the stored key, its fetcher and its options.
WarmPlan = tuple[str, Callable[[], Any], CacheOptions]
# How long the caller waits for a worker, at most (fetches are bounded by fetch_timeout).
_JOIN_TIMEOUT = 1e9
_STOP_TIMEOUT = 5.0


class _Run:
    """The state of one warm-up, shared by its workers (every field under ``lock``)."""

    def __init__(self, total: int) -> None:
        self.lock = threading.Lock()
        self.next = 0
        self.done = 0
        self.total = total
        self.warmed = 0
        self.skipped = 0
        self.errors: list[tuple[str, Exception]] = []
        self.stop = False


class Warmer:
    """Runs ``warm()`` for one stack."""

    def __init__(
        self,
        *,
        layers: LayerSet,
        writer: Writer,
        loader: Loader,
        telemetry: Telemetry,
        clock: Callable[[], float],
    ) -> None:
        self._layers = layers
        self._writer = writer
        self._loader = loader
        self._telemetry = telemetry
        self._clock = clock

    async def _is_fresh(self, key: str) -> bool:
        """Whether some layer holds a fresh value of ``key`` (read with ``get``'s rules)."""
        for adapter in self._layers.adapters:
            entry = await self._writer.peek(adapter, key)
            if entry is not None and entry.is_fresh(self._clock()):
                return True
        return False

    async def warm(
        self,
        plan: Sequence[WarmPlan],
        *,
        concurrency: int,
        continue_on_error: bool,
        progress: Callable[[int, int], Any] | None,
    ) -> WarmSummary:
        """Warm the keys of ``plan`` (in its order) with at most ``concurrency`` fetches at
        once; raises the first fetcher error (after the running fetches end) unless
        ``continue_on_error``."""
        began = time.perf_counter()
        run = _Run(len(plan))

        def report(key: str, outcome: str, error: Exception | None = None) -> None:
            with run.lock:
                if outcome == "warmed":
                    run.warmed += 1
                elif outcome == "skipped":
                    run.skipped += 1
                else:
                    assert error is not None
                    run.errors.append((key, error))
                    if not continue_on_error:
                        run.stop = True  # no new entry starts; running ones finish
                run.done += 1
                done = run.done
                # Called under the lock: the callback sees done counts in order.
                if progress is not None:
                    try:
                        progress(done, run.total)
                    except Exception as exc:
                        self._telemetry.report(exc, operation="warm.progress", key=key)

        async def work() -> None:
            while True:
                with run.lock:
                    if run.stop or run.next >= len(plan):
                        return
                    key, fetcher, opts = plan[run.next]
                    run.next += 1
                try:
                    if await self._is_fresh(key):
                        report(key, "skipped")
                        continue
                    await self._loader.load(key, fetcher, opts)
                except Exception as exc:
                    report(key, "failed", exc)
                    continue
                self._telemetry.emit("warm", {"key": key})
                report(key, "warmed")

        workers = min(concurrency, len(plan))
        handles = [spawn(work, f"layercache-warm-{n}") for n in range(workers)]
        try:
            for handle in handles:
                await join_spawned(handle, _JOIN_TIMEOUT)
        except BaseException:
            with run.lock:
                run.stop = True
            for handle in handles:
                await stop_spawned(handle, _STOP_TIMEOUT)
            raise
        if run.errors and not continue_on_error:
            raise run.errors[0][1]
        return WarmSummary(
            warmed=run.warmed,
            failed=len(run.errors),
            skipped=run.skipped,
            duration=time.perf_counter() - began,
            errors=tuple(run.errors),
        )
