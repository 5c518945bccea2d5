"""Invalidation propagation delay between two processes over ``RedisInvalidationBus``.

``python -m bench.bus_latency [--messages N] [--json PATH]`` starts a throwaway
``redis-server`` on a free 127.0.0.1 port, subscribes a bus in this process, and starts a second
Python process that publishes N messages through its own bus, paced ``--interval`` seconds apart
(so what is measured is the delay of one message, not a queue). The delay of a message is the
wall-clock time this process handed it to ``on_message`` minus the ``timestamp`` the publisher
put in it: serialisation, signing, Redis, verification and parsing included. Both processes run
on the same machine, so they share the clock.

Scenarios: signed single-key messages (the common case), signed 1,000-key messages (the stack's
chunk size for bulk deletes), unsigned single-key messages.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-0123456789abcdef0123456789abcdef"


@dataclass(frozen=True)
class Scenario:
    """One way of publishing."""

    name: str
    keys_per_message: int
    signed: bool


SCENARIOS = (
    Scenario("signed, 1 key", 1, True),
    Scenario("signed, 1,000 keys", 1000, True),
    Scenario("unsigned, 1 key", 1, False),
)


def _percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    index = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def summarise(delays: list[float]) -> dict[str, float]:
    """p50, p99, max and mean of ``delays`` (seconds), in milliseconds."""
    ordered = sorted(delays)
    return {
        "p50_ms": _percentile(ordered, 0.50) * 1000,
        "p99_ms": _percentile(ordered, 0.99) * 1000,
        "max_ms": ordered[-1] * 1000,
        "mean_ms": statistics.fmean(ordered) * 1000,
    }


# -- the publishing process --------------------------------------------------------------------


async def _publish(args: argparse.Namespace) -> None:
    import redis.asyncio

    from layercache._types import InvalidationMessage
    from layercache.redis.bus import RedisInvalidationBus

    client = redis.asyncio.Redis.from_url(args.publish)
    bus = RedisInvalidationBus(
        client, channel=args.channel, signing_secret=args.secret or None, max_keys=10_000
    )
    try:
        for i in range(args.count):
            keys = tuple(f"bench:{i}:{j}" for j in range(args.keys))
            await bus.publish(
                InvalidationMessage(
                    source_id=bus.source_id,
                    scope="keys",
                    operation="delete",
                    keys=keys,
                    timestamp=time.time(),
                )
            )
            await asyncio.sleep(args.interval)  # pacing, not synchronisation
    finally:
        await bus.aclose()
        await client.aclose()


# -- the receiving process ---------------------------------------------------------------------


async def measure(
    url: str,
    *,
    count: int,
    keys_per_message: int = 1,
    signed: bool = True,
    interval: float = 0.002,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """Receive ``count`` messages published by a second process; return the delay figures.

    Returns:
        ``received``, ``count`` and :func:`summarise`'s figures.

    Raises:
        RuntimeError: If the publisher fails or not every message arrives before ``timeout``.
    """
    import redis.asyncio

    from layercache._types import InvalidationMessage
    from layercache.redis.bus import RedisInvalidationBus

    channel = f"bench:bus:{uuid.uuid4().hex}"
    secret = SECRET if signed else ""
    client = redis.asyncio.Redis.from_url(url)
    bus = RedisInvalidationBus(
        client, channel=channel, signing_secret=secret or None, max_keys=10_000
    )
    delays: list[float] = []
    seen: set[str] = set()
    done = asyncio.Event()
    errors: list[BaseException] = []

    async def on_message(message: InvalidationMessage) -> None:
        delays.append(time.time() - message.timestamp)
        seen.add(message.keys[0])
        if len(seen) >= count:
            done.set()

    async def on_reconnect() -> None:
        errors.append(RuntimeError("the subscriber reconnected during the measurement"))

    def on_error(exc: BaseException, context: dict[str, Any]) -> None:
        errors.append(exc)

    process: asyncio.subprocess.Process | None = None
    try:
        await bus.start(on_message, on_reconnect, on_error)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH")) if p
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.bus_latency",
            "--publish",
            url,
            "--channel",
            channel,
            "--count",
            str(count),
            "--keys",
            str(keys_per_message),
            "--interval",
            str(interval),
            "--secret",
            secret,
            cwd=ROOT,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not done.is_set():
            if process.returncode not in (None, 0):
                raise RuntimeError(f"the publisher exited with {process.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"received {len(seen)} of {count} messages in {timeout}s")
            try:
                await asyncio.wait_for(done.wait(), 0.2)
            except asyncio.TimeoutError:
                pass
        returncode = await asyncio.wait_for(process.wait(), 30)
        if returncode != 0:
            raise RuntimeError(f"the publisher exited with {returncode}")
    finally:
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
        await bus.aclose()
        await client.aclose()
    if errors:
        raise RuntimeError(f"the bus reported {errors[0]!r}")
    return {"count": count, "received": len(seen), **summarise(delays)}


def run(messages: int, interval: float) -> dict[str, Any]:
    """Every scenario against a throwaway redis-server; returns rows and a Markdown table."""
    from bench.fixtures import environment, redis_server

    rows: list[dict[str, Any]] = []
    with redis_server() as server:
        for scenario in SCENARIOS:
            count = messages if scenario.keys_per_message == 1 else max(1, messages // 10)
            figures = asyncio.run(
                measure(
                    server.url,
                    count=count,
                    keys_per_message=scenario.keys_per_message,
                    signed=scenario.signed,
                    interval=interval,
                )
            )
            rows.append({"scenario": scenario.name, **figures})
    lines = [
        "| scenario | messages | p50 (ms) | p99 (ms) | max (ms) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r['scenario']} | {r['count']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} "
        f"| {r['max_ms']:.3f} |"
        for r in rows
    ]
    return {"rows": rows, "markdown": "\n".join(lines), "environment": environment()}


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (also the publisher process, with ``--publish``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=2000, help="single-key messages")
    parser.add_argument("--interval", type=float, default=0.002, help="seconds between sends")
    parser.add_argument("--json", type=Path, help="also write the results here")
    # The publisher process's arguments.
    parser.add_argument("--publish", help=argparse.SUPPRESS)
    parser.add_argument("--channel", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--keys", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--secret", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.publish:
        asyncio.run(_publish(args))
        return 0
    result = run(args.messages, args.interval)
    print(result["markdown"])
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
