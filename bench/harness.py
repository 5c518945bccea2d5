"""Timing machinery shared by the scenarios.

Methodology, in one place so every library is measured the same way:

* Every subject is a pair ``(fn, arg)``; one operation is ``await fn(arg)`` (async) or
  ``fn(arg)`` (sync). The same loop runs every library, so loop overhead is shared and the
  awaited-dict floor shows how much of a number is the harness itself.
* Calibration doubles a batch until ``warmup`` seconds have passed (this is also the warm-up),
  then fixes the per-subject iteration count so one timed batch lasts about ``target`` seconds.
* ``rounds`` rounds (5 in a full run). A round cuts each subject's batch into ``slices``
  slices and runs them interleaved (subject A slice 1, B slice 1, ..., A slice 2, ...), each
  after a short re-warm-up, in an order rotated every pass. Drift of a shared machine (other
  tenants, CPU frequency, the Redis server's own scheduling) thus lands on every library
  alike instead of biasing the one measured last. A round's sample is its total time over
  its total operations.
* The reported figure is the median over the rounds of the per-operation time.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

AsyncOp = Callable[[Any], Awaitable[Any]]
SyncOp = Callable[[Any], Any]


@dataclass(frozen=True)
class Settings:
    """How long and how often to measure (``--quick`` shrinks every figure)."""

    quick: bool
    rounds: int
    target: float
    warmup: float
    concurrency: int = 64
    stampede_callers: int = 75
    fetch_delay: float = 0.05
    stampede_rounds: int = 3
    memory_entries: int = 100_000
    slices: int = 10

    @classmethod
    def full(cls) -> Settings:
        """Defaults of a recorded run."""
        return cls(quick=False, rounds=5, target=0.5, warmup=0.1)

    @classmethod
    def smoke(cls) -> Settings:
        """A run of a few seconds that exercises every code path."""
        return cls(
            quick=True,
            rounds=3,
            target=0.01,
            warmup=0.005,
            stampede_rounds=1,
            memory_entries=5_000,
            slices=1,
        )


@dataclass
class Subject:
    """One library configuration measured in a latency scenario.

    Attributes:
        name: Row label.
        fn: The operation; called with ``arg``.
        arg: The operation's argument (usually the key).
        is_async: Whether ``fn`` returns an awaitable.
        note: Short remark printed next to the row.
        expect: If not ``None``, the value one operation must return (checked once: a
            benchmark of a silent miss would be worthless).
    """

    name: str
    fn: Callable[[Any], Any]
    arg: Any
    is_async: bool = True
    note: str = ""
    expect: Any = None
    iterations: int = 0
    samples: list[float] = field(default_factory=list)
    cpu_samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        """Median of the samples (seconds per op, or ops/s for throughput scenarios)."""
        return statistics.median(self.samples)

    @property
    def cpu_median(self) -> float | None:
        """Median of this process's CPU seconds per op (latency scenarios only)."""
        return statistics.median(self.cpu_samples) if self.cpu_samples else None


async def run_batch(subject: Subject, n: int) -> float:
    """Run ``n`` operations back to back; return the elapsed seconds."""
    return (await run_batch_cpu(subject, n))[0]


async def run_batch_cpu(subject: Subject, n: int) -> tuple[float, float]:
    """Run ``n`` operations back to back; return (wall seconds, process CPU seconds).

    The CPU time is the client's own work per operation: unlike wall time it excludes the
    wait for the Redis server and most of the noise of other tenants of a shared machine.
    """
    fn, arg = subject.fn, subject.arg
    if subject.is_async:
        cpu, began = time.process_time(), time.perf_counter()
        for _ in range(n):
            await fn(arg)
        return time.perf_counter() - began, time.process_time() - cpu
    cpu, began = time.process_time(), time.perf_counter()
    for _ in range(n):
        fn(arg)
    return time.perf_counter() - began, time.process_time() - cpu


async def check(subject: Subject) -> None:
    """Fail loudly if the subject's operation does not return what it should."""
    if subject.expect is None:
        return
    result = subject.fn(subject.arg)
    if subject.is_async:
        result = await result
    if result != subject.expect:
        raise AssertionError(f"{subject.name}: expected a hit, got {str(result)[:80]!r}")


async def calibrate(subject: Subject, settings: Settings) -> int:
    """Warm up and return the iteration count of a batch lasting about ``settings.target``."""
    n, done, elapsed = 1, 0, 0.0
    while elapsed < settings.warmup:
        elapsed += await run_batch(subject, n)
        done += n
        n *= 2
    per_op = elapsed / done
    return max(10, int(settings.target / per_op))


def _passes(subjects: Sequence[Subject], settings: Settings) -> list[list[Subject]]:
    """One round's interleaved schedule: ``slices`` passes over every subject, rotated."""
    count = len(subjects)
    return [[*subjects[p % count :], *subjects[: p % count]] for p in range(settings.slices)]


async def measure_latency(subjects: Sequence[Subject], settings: Settings) -> None:
    """Fill ``subject.samples`` with per-operation seconds, interleaved over rounds."""
    for subject in subjects:
        await check(subject)
        subject.iterations = await calibrate(subject, settings)
    for _ in range(settings.rounds):
        spent = {id(s): 0.0 for s in subjects}
        cpu = {id(s): 0.0 for s in subjects}
        done = {id(s): 0 for s in subjects}
        for order in _passes(subjects, settings):
            for subject in order:
                n = max(1, subject.iterations // settings.slices)
                await run_batch(subject, max(1, n // 20))  # re-warm after other libraries
                gc.collect()
                wall, used = await run_batch_cpu(subject, n)
                spent[id(subject)] += wall
                cpu[id(subject)] += used
                done[id(subject)] += n
        for subject in subjects:
            subject.samples.append(spent[id(subject)] / done[id(subject)])
            subject.cpu_samples.append(cpu[id(subject)] / done[id(subject)])


async def _concurrent_async(subject: Subject, tasks: int, n: int) -> float:
    fn, arg = subject.fn, subject.arg

    async def worker() -> None:
        for _ in range(n):
            await fn(arg)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return time.perf_counter() - began


def _concurrent_threads(subject: Subject, tasks: int, n: int, pool: ThreadPoolExecutor) -> float:
    fn, arg = subject.fn, subject.arg

    def worker() -> None:
        for _ in range(n):
            fn(arg)

    began = time.perf_counter()
    futures = [pool.submit(worker) for _ in range(tasks)]
    for future in futures:
        future.result()
    return time.perf_counter() - began


async def measure_throughput(subjects: Sequence[Subject], settings: Settings) -> None:
    """Fill ``subject.samples`` with ops/s of ``settings.concurrency`` concurrent readers.

    Async subjects run as that many tasks on the one event loop (``asyncio.gather``); sync
    subjects as that many threads (the pool is created up front so thread start-up is not
    timed).
    """
    tasks = settings.concurrency
    with ThreadPoolExecutor(max_workers=tasks) as pool:

        async def batch(subject: Subject, n: int) -> float:
            if subject.is_async:
                return await _concurrent_async(subject, tasks, n)
            return await asyncio.to_thread(_concurrent_threads, subject, tasks, n, pool)

        for subject in subjects:
            await check(subject)
            n, elapsed = 2, 0.0
            while elapsed < settings.warmup:
                elapsed = await batch(subject, n)
                n *= 2
            ops_per_s = tasks * (n // 2) / elapsed
            subject.iterations = max(2, int(settings.target * ops_per_s / tasks))
        for _ in range(settings.rounds):
            spent = {id(s): 0.0 for s in subjects}
            done = {id(s): 0 for s in subjects}
            for order in _passes(subjects, settings):
                for subject in order:
                    n = max(1, subject.iterations // settings.slices)
                    await batch(subject, max(1, n // 20))
                    gc.collect()
                    spent[id(subject)] += await batch(subject, n)
                    done[id(subject)] += tasks * n
            for subject in subjects:
                subject.samples.append(done[id(subject)] / spent[id(subject)])
