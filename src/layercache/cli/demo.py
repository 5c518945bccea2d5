"""``layercache demo``: a measured walk through the layers, on the embedded default or Redis.

Every figure printed is measured in this run with :func:`time.perf_counter` (the median of
several runs where one run would be noise), and every claim is checked against the stack's
own events before it is printed: a failed check ends the demo with exit code 1 instead of
printing a wrong table.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import secrets
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from .._async.stack import CacheStack
from .._exceptions import CacheLayerError
from ..layers.disk import DiskLayer
from ..layers.memory import MemoryLayer
from ._common import CliError, check_redis_url, redact_url

__all__ = ["demo"]

DEFAULT_ORIGIN_LATENCY = 0.05
"""Seconds the simulated origin sleeps: a typical database round trip plus query."""
CALLERS = 100
"""Concurrent callers of one cold key in the stampede step."""
COLD_RUNS = 3
LOWER_RUNS = 15
L1_ROUNDS = 7
L1_BATCH = 1_000
REDIS_TIMEOUT = 3.0
"""Seconds to wait for Redis to connect or answer before giving up."""


@dataclass
class _Row:
    step: str
    seconds: float
    runs: str
    compare: bool = True
    """Show the speed-up over the origin (not for rows that run the origin)."""


class _Origin:
    """The simulated database: an async fetch that sleeps and counts its calls per key."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.calls: Counter[str] = Counter()

    def fetcher(self, key: str) -> Callable[[], Awaitable[dict[str, Any]]]:
        async def fetch() -> dict[str, Any]:
            self.calls[key] += 1
            await asyncio.sleep(self.latency)
            return {"key": key, "name": "Ada Lovelace", "plan": "pro", "seats": 12}

        return fetch


class _Events:
    """Records the stack's events while listening (not during L1 timing: a handler costs)."""

    NAMES = ("hit", "miss", "backfill", "stampede_dedupe")

    def __init__(self, cache: CacheStack) -> None:
        self._cache = cache
        self.seen: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def listening(self) -> Iterator[list[dict[str, Any]]]:
        self.seen = []
        unsubscribe = [self._cache.on(name, self.seen.append) for name in self.NAMES]
        try:
            yield self.seen
        finally:
            for off in unsubscribe:
                off()

    @staticmethod
    def of(events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
        return [e for e in events if e["event"] == name]


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise CliError(f"demo check failed: {what}")


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    if ms < 0.1:
        return f"{ms:.4f} ms"
    if ms < 10:
        return f"{ms:.3f} ms"
    return f"{ms:.1f} ms"


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a layer method directly, sync or async (blocking ones off the event loop)."""
    if getattr(getattr(fn, "__self__", None), "is_blocking", False):
        return await asyncio.to_thread(fn, *args)
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


class _Demo:
    def __init__(self, cache: CacheStack, origin: _Origin, run_prefix: str) -> None:
        self.cache = cache
        self.origin = origin
        self.run_prefix = run_prefix
        self.events = _Events(cache)
        self.layers: list[Any] = cache.layers
        self.names = [layer.name for layer in self.layers]
        self.memory = self.layers[0]
        self.findings: list[str] = []
        """What the stack's events and the layers confirmed, one line per step."""

    def key(self, name: str) -> str:
        return f"{self.run_prefix}{name}"

    async def cold_miss(self) -> tuple[_Row, str]:
        times = []
        for run in range(COLD_RUNS):
            key = self.key(f"user:{run}")
            with self.events.listening() as seen:
                began = time.perf_counter()
                await self.cache.get(key, self.origin.fetcher(key))
                times.append(time.perf_counter() - began)
            calls = self.origin.calls[key]
            _check(calls == 1, f"the cold key {key} was fetched {calls} times")
            _check(not _Events.of(seen, "hit"), f"the cold key {key} was a cache hit")
            for layer in self.layers:
                _check(await _call(layer.has, key), f"{layer.name} lacks {key} after the fetch")
        self.findings.append(
            f"cold miss: the origin ran once per key; value stored in {', '.join(self.names)}"
        )
        row = _Row("cold miss -> origin", statistics.median(times), str(COLD_RUNS), compare=False)
        return row, self.key("user:0")

    async def l1_hit(self, key: str) -> _Row:
        with self.events.listening() as seen:
            await self.cache.get(key)
        hits = [h["layer"] for h in _Events.of(seen, "hit")]
        _check(hits == [self.memory.name], f"expected a {self.memory.name} hit, saw {hits}")
        # Timed without event handlers: a subscribed handler would be part of the measurement.
        get = self.cache.get
        per_op = []
        for _ in range(L1_ROUNDS):
            began = time.perf_counter()
            for _ in range(L1_BATCH):
                await get(key)
            per_op.append((time.perf_counter() - began) / L1_BATCH)
        return _Row(
            f"L1 hit ({self.memory.name})", statistics.median(per_op), f"{L1_ROUNDS}x{L1_BATCH:,}"
        )

    async def lower_hit(self, key: str, index: int) -> _Row:
        """A hit in layer ``index`` after removing the key from every layer above it."""
        source = self.layers[index]
        above = self.layers[:index]
        times = []
        for _ in range(LOWER_RUNS):
            # Only the memory layer is emptied wholesale (it is this demo's own); shared
            # layers above the source lose just this key.
            self.memory.clear()
            for layer in above[1:]:
                await _call(layer.delete, key)
            with self.events.listening() as seen:
                began = time.perf_counter()
                await self.cache.get(key)
                times.append(time.perf_counter() - began)
            hits = [h["layer"] for h in _Events.of(seen, "hit")]
            _check(hits == [source.name], f"expected a {source.name} hit, saw {hits}")
            filled = sorted(b["to_layer"] for b in _Events.of(seen, "backfill"))
            expected = sorted(layer.name for layer in above)
            _check(filled == expected, f"the {source.name} hit backfilled {filled}, not {expected}")
            for layer in above:
                _check(await _call(layer.has, key), f"{layer.name} was not filled again")
        targets = ", ".join(layer.name for layer in above)
        self.findings.append(
            f"{source.name} hit: served by {source.name}, backfilled to {targets} "
            "(filled again, checked)"
        )
        return _Row(
            f"L{index + 1} hit ({source.name}) + backfill",
            statistics.median(times),
            str(LOWER_RUNS),
        )

    async def stampede(self) -> _Row:
        key = self.key("report:cold")
        fetch = self.origin.fetcher(key)
        with self.events.listening() as seen:
            began = time.perf_counter()
            values = await asyncio.gather(*(self.cache.get(key, fetch) for _ in range(CALLERS)))
            seconds = time.perf_counter() - began
        fetches = self.origin.calls[key]
        joined = len(_Events.of(seen, "stampede_dedupe"))
        _check(all(v == values[0] for v in values), "concurrent callers got different values")
        _check(fetches == 1, f"{CALLERS} concurrent callers caused {fetches} origin fetches")
        self.findings.append(
            f"{CALLERS} concurrent callers of a cold key: {fetches} origin fetch "
            f"({joined} joined it in flight)"
        )
        return _Row(f"{CALLERS} callers, one cold key", seconds, "1", compare=False)


def _render(console: Console, header: list[str], rows: list[_Row], findings: list[str]) -> None:
    def line(text: str = "", style: str | None = None) -> None:
        # soft_wrap: long lines are left to the terminal instead of being cut by rich.
        console.print(text, style=style, highlight=False, markup=False, soft_wrap=True)

    for text in header:
        line(text)
    line()
    origin = rows[0].seconds
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("step", no_wrap=True)
    table.add_column("time", justify="right", no_wrap=True)
    table.add_column("runs", justify="right", no_wrap=True)
    table.add_column("vs origin", justify="right", no_wrap=True)
    for row in rows:
        faster = f"{origin / row.seconds:,.0f}x faster" if row.compare and row.seconds else ""
        table.add_row(row.step, _ms(row.seconds), row.runs, faster)
    console.print(table)
    line()
    line("checked with the stack's events and the layers:")
    for finding in findings:
        line(f"  - {finding}")
    line()
    line("times: time.perf_counter around each get(), median of the runs;", style="dim")
    line(f"the {CALLERS} callers row is the wall time of all of them together", style="dim")


async def _open_redis(url: str, prefix: str) -> Any:
    try:
        from ..redis.layer import RedisLayer
    except ImportError as exc:
        raise CliError(
            "--redis needs the 'redis' extra: pip install 'layercache-py[redis]'"
        ) from exc
    try:
        layer = RedisLayer(url=url, prefix=prefix, socket_timeout=REDIS_TIMEOUT)
    except ValueError as exc:
        raise click.BadParameter(f"{redact_url(url)}: {exc}", param_hint="'--redis'") from exc
    try:
        await layer.ping()
    except CacheLayerError as exc:
        with contextlib.suppress(Exception):
            await layer.aclose()
        cause = exc.__cause__ or exc
        raise CliError(f"cannot reach Redis at {redact_url(url)}: {cause}") from exc
    return layer


async def _run(
    console: Console, redis_url: str | None, directory: Path, latency: float, where: str
) -> None:
    token = secrets.token_hex(4)
    run_prefix = f"demo-{token}:"
    memory = MemoryLayer(ttl=60)
    layers: list[Any] = [memory]
    redis: Any = None
    if redis_url is not None:
        redis = await _open_redis(redis_url, f"layercache-demo:{token}:")
        layers.append(redis)
    try:
        disk = DiskLayer(directory, ttl=3600)
    except OSError as exc:
        if redis is not None:
            with contextlib.suppress(Exception):
                await redis.aclose()
        raise CliError(f"cannot use {directory} for the disk layer: {exc}") from exc
    layers.append(disk)
    cache = CacheStack(layers)
    origin = _Origin(latency)
    run = _Demo(cache, origin, run_prefix)
    failed = True
    try:
        cold, key = await run.cold_miss()
        rows = [cold, await run.l1_hit(key)]
        for index in range(1, len(layers)):
            rows.append(await run.lower_hit(key, index))
        rows.append(await run.stampede())
        failed = False
    except CacheLayerError as exc:
        raise CliError(f"the demo failed: {exc.__cause__ or exc} (layer {exc.layer})") from exc
    finally:
        await _clean_up(cache, redis, run_prefix, quiet=failed)
    header = [f"layercache demo: {' -> '.join(run.names)}", f"  disk:   SQLite in {where}"]
    if redis is not None:
        header.append(
            f"  redis:  {redact_url(redis_url or '')} (keys under {redis.prefix}*, removed after)"
        )
    header.append(
        f"  origin: an async fetcher sleeping {latency * 1000:g} ms, standing in for a database"
    )
    _render(console, header, rows, run.findings)


async def _clean_up(cache: CacheStack, redis: Any, run_prefix: str, *, quiet: bool) -> None:
    """Remove this run's keys (Redis is shared; a --dir may be kept) and close the stack."""
    try:
        try:
            await cache.invalidate_by_prefix(run_prefix)
            if redis is not None:
                await redis.clear()  # only keys under this run's unique prefix
        finally:
            await cache.aclose()
    except CacheLayerError as exc:
        if not quiet:  # the error that stopped the demo matters more than this one
            raise CliError(f"could not clean up the demo keys: {exc.__cause__ or exc}") from exc


@click.command()
@click.option(
    "--redis",
    "redis_url",
    metavar="URL",
    callback=check_redis_url,
    help="Add a Redis layer between memory and disk (memory -> redis -> disk).",
)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory of the disk layer (default: a temporary directory, removed afterwards).",
)
@click.option(
    "--origin-latency",
    type=click.FloatRange(min=0, max=10),
    default=DEFAULT_ORIGIN_LATENCY,
    hidden=True,
    help="Seconds the simulated origin sleeps.",
)
def demo(redis_url: str | None, directory: Path | None, origin_latency: float) -> None:
    """Show the layers at work, with timings measured in this run.

    A cold miss runs a simulated origin, then come an L1 (memory) hit, a hit in each lower
    layer with backfill, and 100 concurrent callers of a cold key sharing one origin fetch.
    The default is embedded (memory + disk, no server needed).
    """
    console = Console(highlight=False)
    if directory is not None:
        asyncio.run(_run(console, redis_url, directory, origin_latency, str(directory)))
        return
    with tempfile.TemporaryDirectory(prefix="layercache-demo-") as tmp:
        asyncio.run(_run(console, redis_url, Path(tmp), origin_latency, "a temporary directory"))
