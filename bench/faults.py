"""Faults: a slow and a dead Redis, strict vs graceful (``python -m bench.faults``).

Reproduces the seed's table (L1 warm hit / L2 hit / cold miss while Redis is slow, strict vs
graceful degradation) with measured times, plus how long graceful mode takes to use Redis again
once it is back. Everything is real: a throwaway ``redis-server`` on a free 127.0.0.1 port and
a loopback TCP proxy in front of it (``tests/_tcp_proxy.py``) that delays every chunk by
``--latency`` seconds each way (500 ms) while the client's command timeout is ``--timeout``
(200 ms). The stack is ``CacheStack([MemoryLayer(), RedisLayer(url=<proxy>,
socket_timeout=0.2)])``, strict (the default) or with ``graceful_degradation={"retry_after": 1}``.

How each cell is measured (median of ``--samples`` runs, each timed on its own):

* **L1 warm hit**: the key is in memory; ``get(key, fetcher)`` with the slow proxy behind.
* **L2 hit (Redis slow)**: a new stack per sample; the key is written with the proxy fast, the
  memory layer is emptied, then latency is switched on and ``get(key, fetcher)`` is timed:
  strict raises ``CacheLayerError`` (timeout), graceful answers from the fetcher.
* **Cold miss (Redis slow)**: the same with a key that is nowhere.
* **Cold miss, Redis already skipped**: a second cold miss on the same stack right after the
  first failure (graceful mode now skips Redis until ``retry_after``; strict tries again).
* **Recovery**: a graceful stack serves a read every 10 ms through an outage (proxy refuses
  connections, or the server process is stopped) of 1.5 s plus a random part of
  ``retry_after`` (so the restore lands at a random point of the retry cycle); the figure is
  the time from Redis being back to the first read answered by Redis.
* **Replay**: after an outage during which ``--missed`` keys were deleted, the request that
  brings Redis back in service replays those deletes first; its duration is reported.

The fetcher answers at once, so a graceful figure is the cost of detecting the fault.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.fixtures import ROOT, environment, redis_server

PREFIX = "bench-faults:"


@dataclass
class Cell:
    """Samples of one (scenario, mode) cell: seconds, and how each call ended."""

    seconds: list[float] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)

    def add(self, seconds: float, outcome: str) -> None:
        self.seconds.append(seconds)
        self.outcomes.append(outcome)

    def render(self) -> str:
        """``✅ 201 ms (fetcher)`` / ``❌ CacheLayerError after 402 ms``; mixed outcomes listed."""
        median = statistics.median(self.seconds)
        kinds = sorted(set(self.outcomes))
        ok = all(o in ("value", "fetcher") for o in self.outcomes)
        how = {
            "value": "",
            "fetcher": " (fell back to fetcher)",
        }
        if ok and len(kinds) == 1:
            return f"✅ {_ms(median)}{how[kinds[0]]}"
        if not ok and len(kinds) == 1:
            return f"❌ {kinds[0]} after {_ms(median)}"
        counts = ", ".join(f"{k} x{self.outcomes.count(k)}" for k in kinds)
        return f"⚠️ {_ms(median)} ({counts})"


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    if ms < 0.1:
        return f"{ms * 1000:.1f} µs"
    if ms < 1:
        return f"{ms:.3f} ms"
    if ms < 10:
        return f"{ms:.1f} ms"
    return f"{ms:.0f} ms"


@contextlib.contextmanager
def _proxy(host: str, port: int) -> Iterator[Any]:
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from _tcp_proxy import TcpProxy  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    with TcpProxy(host, port) as proxy:
        yield proxy


class Bench:
    """One run: the server, the proxy and the settings."""

    def __init__(self, server: Any, proxy: Any, args: argparse.Namespace) -> None:
        self.server = server
        self.proxy = proxy
        self.args = args
        self._keys = 0

    def key(self) -> str:
        self._keys += 1
        return f"k{self._keys}"

    def stack(
        self, graceful: bool, url: str | None = None, retry_after: float | None = None
    ) -> Any:
        from layercache import CacheStack, MemoryLayer, RedisLayer

        kwargs: dict[str, Any] = {}
        if graceful:
            kwargs["graceful_degradation"] = {
                "retry_after": self.args.retry_after if retry_after is None else retry_after
            }
        layers = [
            MemoryLayer(ttl=600),
            RedisLayer(
                url=url or self.proxy.url,
                prefix=PREFIX,
                ttl=600,
                socket_timeout=self.args.timeout,
            ),
        ]
        return CacheStack(layers, **kwargs)

    async def timed_get(
        self, cache: Any, key: str, fetcher: Any, bounded: bool = True
    ) -> tuple[float, str]:
        """Time one ``get``; the outcome is ``value``, ``fetcher`` or the exception name.

        ``bounded`` wraps the call in ``asyncio.wait_for`` (a hang must not stall the run);
        L1 hits are timed without it, since its task costs more than the hit itself.
        """
        from layercache import CacheLayerError

        began = time.perf_counter()
        try:
            call = cache.get(key, fetcher)
            value = await (asyncio.wait_for(call, 10) if bounded else call)
        except CacheLayerError as exc:
            cause = exc.__cause__
            kind = "timeout" if cause is not None and "Timeout" in type(cause).__name__ else "error"
            return time.perf_counter() - began, f"CacheLayerError ({kind})"
        except Exception as exc:
            return time.perf_counter() - began, type(exc).__name__
        seconds = time.perf_counter() - began
        return seconds, "fetcher" if value == "from-fetcher" else "value"

    # ------------------------------------------------------------------ the slow table

    async def l1_warm_hit(self, graceful: bool) -> Cell:
        cell = Cell()
        self.proxy.reset()
        cache = self.stack(graceful)
        try:
            key = self.key()
            await cache.set(key, "cached")
            self.proxy.set_latency(self.args.latency)
            for _ in range(self.args.samples * 10):
                cell.add(*await self.timed_get(cache, key, _fetcher, bounded=False))
        finally:
            self.proxy.reset()
            await cache.aclose()
        return cell

    async def _fresh_stack_sample(
        self, graceful: bool, warm_redis: bool, then_again: bool
    ) -> list[tuple[float, str]]:
        """One sample on a new stack: optionally put the key in Redis only, then read it (and
        optionally a second cold key) through the slow proxy."""
        self.proxy.reset()
        cache = self.stack(graceful)
        try:
            key = self.key()
            if warm_redis:
                await cache.set(key, "cached")
                cache.layers[0].clear()  # only Redis holds it now: the read is an L2 hit
            self.proxy.set_latency(self.args.latency)
            results = [await self.timed_get(cache, key, _fetcher)]
            if then_again:
                results.append(await self.timed_get(cache, self.key(), _fetcher))
            return results
        finally:
            self.proxy.reset()
            await cache.aclose()

    async def slow_table(self) -> dict[str, dict[str, Cell]]:
        rows: dict[str, dict[str, Cell]] = {}
        modes = {"strict": False, "graceful": True}
        rows["L1 warm hit (Redis slow)"] = {m: await self.l1_warm_hit(g) for m, g in modes.items()}
        l2: dict[str, Cell] = {m: Cell() for m in modes}
        cold: dict[str, Cell] = {m: Cell() for m in modes}
        again: dict[str, Cell] = {m: Cell() for m in modes}
        for _ in range(self.args.samples):
            for mode, graceful in modes.items():
                (first,) = await self._fresh_stack_sample(graceful, True, False)
                l2[mode].add(*first)
                first, second = await self._fresh_stack_sample(graceful, False, True)
                cold[mode].add(*first)
                again[mode].add(*second)
        rows["L2 hit (Redis slow)"] = l2
        rows["Cold miss (Redis slow)"] = cold
        rows["Next cold miss right after (Redis slow)"] = again
        return rows

    # ------------------------------------------------------------------ recovery

    async def recovery(self, kind: str, rng: random.Random) -> list[float]:
        """Seconds from Redis being back to the first read Redis answers, per sample."""
        figures: list[float] = []
        for _ in range(self.args.recovery_samples):
            self.proxy.reset()
            if not self.server.is_running:
                self.server.start()
            url = self.server.url if kind == "server" else self.proxy.url
            cache = self.stack(True, url=url)
            try:
                await cache.set("probe", "p")
                memory = cache.layers[0]
                if kind == "server":
                    await asyncio.to_thread(self.server.stop)
                else:
                    self.proxy.cut("refuse")
                outage = 1.5 + rng.uniform(0, self.args.retry_after)
                began = time.perf_counter()
                while time.perf_counter() - began < outage:
                    memory.clear()
                    await asyncio.wait_for(cache.get("probe"), 10)
                    await asyncio.sleep(0.01)
                if kind == "server":
                    await asyncio.to_thread(self.server.start)
                    # A restarted server without persistence is empty: put the probe back
                    # (through the layer object itself, not the stack, which still skips it).
                    await cache.layers[1].set("probe", _entry("p"), None)
                else:
                    self.proxy.restore()
                back = time.perf_counter()
                hits = cache.get_metrics().layers["redis"].hits
                while cache.get_metrics().layers["redis"].hits == hits:
                    if time.perf_counter() - back > 10 * self.args.retry_after + 10:
                        raise RuntimeError(f"Redis never served again after the {kind} outage")
                    memory.clear()
                    await asyncio.wait_for(cache.get("probe"), 10)
                    await asyncio.sleep(0.01)
                figures.append(time.perf_counter() - back)
            finally:
                self.proxy.reset()
                await cache.aclose()
        return figures

    async def replay(self, missed: int) -> tuple[float, float]:
        """(seconds of the request that replays ``missed`` deletes, seconds of the next one)."""
        self.proxy.reset()
        retry_after = 0.3
        cache = self.stack(True, retry_after=retry_after)
        try:
            await cache.set_many([(f"r{i}", i) for i in range(missed)])
            await cache.set("probe", "p")
            self.proxy.cut("refuse")
            for i in range(missed):
                await cache.delete(f"r{i}")
            self.proxy.restore()
            status = cache.get_stats().layers[1]
            assert status.degraded_until is not None
            # Past retry_after, the next request probes Redis and replays what it missed.
            await asyncio.sleep(max(0.0, status.degraded_until - time.time()) + 0.01)
            memory = cache.layers[0]
            memory.clear()
            began = time.perf_counter()
            await cache.get("probe")
            first = time.perf_counter() - began
            if cache.get_stats().layers[1].degraded_until is not None:
                raise RuntimeError("the replaying request did not bring Redis back")
            memory.clear()
            began = time.perf_counter()
            await cache.get("probe")
            return first, time.perf_counter() - began
        finally:
            self.proxy.reset()
            await cache.aclose()


def _entry(value: Any) -> Any:
    from layercache._entry import Entry

    now = time.time()
    return Entry(value, now, now + 600, None, None, ())


async def _fetcher() -> str:
    return "from-fetcher"


def _markdown(
    args: argparse.Namespace,
    slow: dict[str, dict[str, Cell]],
    recovery: dict[str, list[float]],
    replay: tuple[int, float, float] | None,
) -> str:
    lat, tmo = round(args.latency * 1000), round(args.timeout * 1000)
    lines = [
        f"Redis slow: {lat} ms added each way by the proxy, client timeout {tmo} ms; "
        f'graceful = `graceful_degradation={{"retry_after": {args.retry_after:g}}}`. '
        f"Median of {args.samples} samples ({args.samples * 10} for L1 hits).",
        "",
        "| scenario | strict (default) | graceful |",
        "| --- | --- | --- |",
    ]
    for name, cells in slow.items():
        lines.append(f"| {name} | {cells['strict'].render()} | {cells['graceful'].render()} |")
    lines += [
        "",
        f"Time to recover after Redis returns (graceful, retry_after={args.retry_after:g} s, "
        "a read every 10 ms; from Redis being back to the first read Redis answers):",
        "",
        "| outage | median | min … max | samples |",
        "| --- | ---: | ---: | ---: |",
    ]
    names = {
        "proxy": "connections refused (proxy cut, then restored)",
        "server": "redis-server stopped, then started again",
    }
    for kind, figures in recovery.items():
        lines.append(
            f"| {names[kind]} | {_ms(statistics.median(figures))} | "
            f"{_ms(min(figures))} … {_ms(max(figures))} | {len(figures)} |"
        )
    if replay is not None:
        missed, first, next_one = replay
        lines += [
            "",
            f"Replay on recovery: after {missed:,} deletes missed during an outage, the request "
            f"that brings Redis back took {_ms(first)} (it replays them first); "
            f"the next one {_ms(next_one)}.",
        ]
    return "\n".join(lines)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__)
    parser.add_argument("--latency", type=float, default=0.5, help="seconds added each way")
    parser.add_argument("--timeout", type=float, default=0.2, help="RedisLayer socket_timeout")
    parser.add_argument("--retry-after", type=float, default=1.0, help="graceful retry_after")
    parser.add_argument("--samples", type=int, default=9, help="samples per slow-table cell")
    parser.add_argument("--recovery-samples", type=int, default=5, help="outages per kind")
    parser.add_argument("--missed", type=int, default=1000, help="deletes to replay (0: skip)")
    parser.add_argument("--quick", action="store_true", help="few samples (rough numbers)")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.recovery_samples, args.missed = 3, 1, min(args.missed, 100)
    return args


async def _run(args: argparse.Namespace, server: Any, proxy: Any) -> str:
    bench = Bench(server, proxy, args)
    rng = random.Random(7)
    slow = await bench.slow_table()
    recovery = {kind: await bench.recovery(kind, rng) for kind in ("proxy", "server")}
    replay = None
    if args.missed:
        first, next_one = await bench.replay(args.missed)
        replay = (args.missed, first, next_one)
    return _markdown(args, slow, recovery, replay)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: prints the Markdown tables to stdout."""
    args = parse(argv)
    # The stack logs each degradation and recovery as a warning: not part of the report.
    logging.getLogger("layercache").addHandler(logging.NullHandler())
    logging.getLogger("layercache").propagate = False
    env = environment()
    with redis_server() as server, _proxy(server.host, server.port) as proxy:
        markdown = asyncio.run(_run(args, server, proxy))
    print(
        f"Python {env['python']} on {env['platform']}, {env['cpus']} CPUs; "
        f"{env['redis_server']}; redis-py {env['versions'].get('redis')}\n"
    )
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
