"""HTTP benchmark: ``python -m bench.http [--quick] [--json PATH] [--no-redis | --redis-url URL]``.

uvicorn (one worker, its own process, a free 127.0.0.1 port) serves ``bench/http_app.py``, a
Starlette app with three measured routes that return the same 1 KiB JSON body:

1. ``/hard``: a hard-coded JSON response (the ceiling of this server on this machine);
2. ``/origin/1``: uncached, the origin sleeps 5 ms;
3. ``/cached/1``: the same origin behind ``layercache.integrations.asgi.CacheMiddleware``,
   primed first (so warm: every measured request is a hit).

Each is driven by ``wrk --latency`` at 64 connections for 10 s (``--quick``: 1 s), in that order
after a short warm-up, in one run; req/s, p50 and p99 come from wrk. Then the cold burst: 500
connections are opened and used once first, then one request is written on each of them at once
for one cold URL; the app counts the origin calls (goal: 1 for the cached route; the uncached
route is measured the same way as the stampede reference) and the peak number of requests in
flight (how concurrent the burst really was at the server).

The whole set runs twice: ``CacheStack[MemoryLayer]`` and ``CacheStack[MemoryLayer,
RedisLayer]`` (a throwaway ``redis-server`` from ``bench.fixtures``, or ``--redis-url``).

``wrk`` is the Debian package: installed with ``apt-get`` when missing and running as root;
otherwise the bench stops with one line saying so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.fixtures import ROOT, environment, redis_server

GOAL_RATIO = 0.9
GOAL_BURST_FETCHES = 1
HOST = "127.0.0.1"

# wrk prints this line at the end (its Lua ``done`` hook): exact counters and percentiles in µs.
WRK_SCRIPT = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeout_errors":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
"""


class BenchError(Exception):
    """A set-up failure, reported as one line."""


# -- wrk ---------------------------------------------------------------------------------------


def ensure_wrk() -> str:
    """The path of ``wrk``, installed with apt-get when missing and running as root."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing wrk with apt-get ...", file=sys.stderr, flush=True)
        if _apt_get("install", "-y", "-qq", "wrk") != 0:
            _apt_get("update", "-qq")
            _apt_get("install", "-y", "-qq", "wrk")
        found = shutil.which("wrk")
        if found:
            return found
        raise BenchError("wrk is missing and 'apt-get install wrk' failed; install wrk and rerun")
    raise BenchError("wrk is missing (need root to apt-get it): run 'apt-get install wrk' first")


def _apt_get(*args: str) -> int:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    quiet = subprocess.DEVNULL
    return subprocess.run(
        ["apt-get", *args], stdout=quiet, stderr=quiet, env=env, check=False
    ).returncode


@dataclass
class WrkResult:
    """One wrk run."""

    route: str
    path: str
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]
    server_cpu_us: float | None = None  # uvicorn's CPU time (user + system) per request


def run_wrk(
    wrk: str, script: Path, url: str, *, route: str, path: str, seconds: float, args: Any
) -> WrkResult:
    command = [
        wrk,
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=seconds + 60
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if done.returncode != 0 or line is None:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise BenchError(f"wrk failed on {url}: {detail[-1] if detail else done.returncode}")
    data = json.loads(line.removeprefix("WRKJSON "))
    secs = data["duration_us"] / 1e6
    errors = {k.removesuffix("_errors"): v for k, v in data.items() if k.endswith("_errors")}
    return WrkResult(
        route=route,
        path=path,
        requests=data["requests"],
        seconds=secs,
        rps=data["requests"] / secs if secs else 0.0,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        errors=errors,
    )


# -- a minimal HTTP/1.1 client (raw streams: nothing between the burst and the socket) ----------


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "content-length" not in headers:
        raise BenchError(f"response without content-length: {lines[0]}")
    body = await reader.readexactly(int(headers["content-length"]))
    return status, headers, body


def request_bytes(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nAccept: */*\r\n\r\n".encode()


async def fetch(port: int, path: str, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    try:
        writer.write(request_bytes(path))
        return await asyncio.wait_for(read_response(reader), timeout)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def burst(port: int, path: str, count: int) -> dict[str, Any]:
    """``count`` open, used connections; then one request for ``path`` on each, written at once."""
    opening = asyncio.gather(*(asyncio.open_connection(HOST, port) for _ in range(count)))
    opened = await asyncio.wait_for(opening, 60)
    try:
        for _, writer in opened:  # every connection served once: the server has set it up
            writer.write(request_bytes("/hard"))
        await asyncio.wait_for(asyncio.gather(*(read_response(r) for r, _ in opened)), 60)
        request = request_bytes(path)
        started = time.perf_counter()
        for _, writer in opened:
            writer.write(request)
        replying = asyncio.gather(*(read_response(reader) for reader, _ in opened))
        replies = await asyncio.wait_for(replying, 60)
        elapsed = time.perf_counter() - started
    finally:
        for _, writer in opened:
            writer.close()
    statuses = Counter(status for status, _, _ in replies)
    x_cache = Counter(headers.get("x-cache", "-") for _, headers, _ in replies)
    return {
        "requests": count,
        "seconds": elapsed,
        "statuses": dict(statuses),
        "x_cache": dict(x_cache),
        "bodies_identical": len({body for _, _, body in replies}) == 1,
    }


async def stats(port: int) -> dict[str, Any]:
    _, _, body = await fetch(port, "/_stats")
    result: dict[str, Any] = json.loads(body)
    return result


# -- the app alone: ASGI calls in this process, no server, no socket ---------------------------


async def app_cost(
    layers: str, redis_url: str | None, *, rounds: int, calls: int
) -> dict[str, Any]:
    """µs per request of ``/hard`` and ``/cached/1`` (warm), calling the app directly.

    Rounds alternate the two routes; the median round is kept. This is the part of a request
    that the app and ``CacheMiddleware`` own (uvicorn's parsing and the socket excluded), and it
    is far less sensitive to other tenants than req/s.
    """
    from bench.http_app import build_app, build_stack

    cache = build_stack(layers, redis_url)
    app = build_app(cache)
    request = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> dict[str, Any]:
        return request

    def scope(path: str) -> dict[str, Any]:
        return {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", f"{HOST}:8000".encode()), (b"accept", b"*/*")],
            "client": (HOST, 50000),
            "server": (HOST, 8000),
            "state": {},
        }

    async def call(path: str) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope(path), receive, send)
        return sent

    timings: dict[str, list[float]] = {"/hard": [], "/cached/1": []}
    async with cache:
        await call("/cached/1")
        start = (await call("/cached/1"))[0]
        if (b"x-cache", b"HIT") not in start["headers"]:
            raise BenchError(f"in-process /cached/1 did not hit: {start}")
        for _ in range(rounds):
            for path, times in timings.items():
                began = time.perf_counter()
                for _ in range(calls):
                    await call(path)
                times.append((time.perf_counter() - began) / calls * 1e6)
    median = {path: sorted(times)[len(times) // 2] for path, times in timings.items()}
    return {"rounds": rounds, "calls": calls, "us_per_request": median}


# -- the server --------------------------------------------------------------------------------


@contextlib.contextmanager
def serve(layers: str, redis_url: str | None) -> Iterator[tuple[int, int]]:
    """uvicorn + ``bench.http_app`` in a child process; yields (port, pid), stops it on exit."""
    command = [sys.executable, "-m", "bench.http_app", "--layers", layers]
    if redis_url:
        command += ["--redis-url", redis_url]
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr)
        assert process.stdout is not None
        try:
            ready, _, _ = select.select([process.stdout], [], [], 60)
            line = process.stdout.readline().decode() if ready else ""
            if not line.startswith("listening on "):
                process.kill()
                process.wait()
                stderr.seek(0)
                lines = stderr.read().decode(errors="replace").strip().splitlines()
                raise BenchError(f"the app did not start: {lines[-1] if lines else 'no output'}")
            yield int(line.split()[-1]), process.pid
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            process.stdout.close()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``; else ``None``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- one configuration -------------------------------------------------------------------------


@dataclass
class ConfigResult:
    """Everything measured against one stack configuration."""

    layers: str
    middleware: bool
    runs: list[WrkResult] = field(default_factory=list)
    bursts: dict[str, dict[str, Any]] = field(default_factory=dict)
    in_process: dict[str, Any] = field(default_factory=dict)


def measure(layers: str, redis_url: str | None, wrk: str, script: Path, args: Any) -> ConfigResult:
    seconds = 1.0 if args.quick else args.duration
    token = uuid.uuid4().hex[:8]
    with serve(layers, redis_url) as (port, pid):
        base = f"http://{HOST}:{port}"
        status, _, body = asyncio.run(fetch(port, "/hard"))
        if status != 200 or not body:
            raise BenchError(f"/hard answered {status}")
        middleware = bool(asyncio.run(stats(port))["middleware"])
        result = ConfigResult(layers=layers, middleware=middleware)
        print(f"[{layers}] uvicorn on port {port}; warm-up", file=sys.stderr, flush=True)
        run_wrk(wrk, script, f"{base}/hard", route="warm-up", path="/hard", seconds=1, args=args)

        routes = [("hard-coded JSON", "/hard"), ("uncached, 5 ms origin", "/origin/1")]
        if middleware:
            for _ in range(2):  # prime: the first request stores, the second must hit
                status, headers, _ = asyncio.run(fetch(port, "/cached/1"))
            if status != 200 or headers.get("x-cache") != "HIT":
                raise BenchError(f"/cached/1 not warm: {status} X-Cache={headers.get('x-cache')}")
            routes.insert(1, ("CacheMiddleware, warm", "/cached/1"))
        for route, path in routes:
            print(f"[{layers}] wrk {path} for {seconds:g} s", file=sys.stderr, flush=True)
            cpu_before = cpu_seconds(pid)
            done = run_wrk(
                wrk, script, base + path, route=route, path=path, seconds=seconds, args=args
            )
            cpu_after = cpu_seconds(pid)
            if cpu_before is not None and cpu_after is not None and done.requests:
                done.server_cpu_us = (cpu_after - cpu_before) / done.requests * 1e6
            result.runs.append(done)

        targets = [("uncached", f"/burst-origin/{token}")]
        if middleware:
            targets.insert(0, ("cached", f"/burst/{token}"))
        for name, path in targets:
            print(f"[{layers}] burst {args.burst} x {path}", file=sys.stderr, flush=True)
            outcome = asyncio.run(burst(port, path, args.burst))
            counted = asyncio.run(stats(port))["paths"].get(path, {})
            result.bursts[name] = {"path": path, **outcome, **counted}
    if middleware:
        print(f"[{layers}] in-process ASGI cost", file=sys.stderr, flush=True)
        rounds, calls = (3, 2_000) if args.quick else (5, 20_000)
        result.in_process = asyncio.run(app_cost(layers, redis_url, rounds=rounds, calls=calls))
    return result


# -- report ------------------------------------------------------------------------------------


def _ratio(value: float, reference: float) -> float | None:
    return value / reference if reference else None


def _cpu_ratio(hard: WrkResult, run: WrkResult) -> float | None:
    """Throughput ratio implied by server CPU per request (hard-coded's CPU / this route's)."""
    if hard.server_cpu_us is None or not run.server_cpu_us:
        return None
    return hard.server_cpu_us / run.server_cpu_us


def markdown(configs: list[ConfigResult], meta: dict[str, Any]) -> str:
    out = [
        f"wrk {meta['wrk_version']}: {meta['threads']} thread(s), {meta['connections']} "
        f"connections, {meta['seconds']:g} s per route; uvicorn {meta['uvicorn']} (1 worker, "
        f"{meta['loop']} loop, {meta['http']} HTTP parser), Starlette {meta['starlette']}",
        "",
        "| stack | route | req/s | p50 ms | p99 ms | x hard-coded | server CPU µs/req "
        "| x hard-coded (CPU) | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for config in configs:
        hard = next(run for run in config.runs if run.path == "/hard")
        for run in config.runs:
            ratio = _ratio(run.rps, hard.rps)
            cpu = "-" if run.server_cpu_us is None else f"{run.server_cpu_us:.0f}"
            cpu_ratio = _cpu_ratio(hard, run)
            shown = "-" if cpu_ratio is None else f"{cpu_ratio:.3f}"
            out.append(
                f"| {config.layers} | {run.route} | {run.rps:,.0f} | {run.p50_ms:.2f} "
                f"| {run.p99_ms:.2f} | {ratio:.3f} | {cpu} | {shown} | {sum(run.errors.values())} |"
            )
        if not config.middleware:
            out.append(f"| {config.layers} | CacheMiddleware | (not available yet) | | | | | | |")
    out += [
        "",
        "Cold burst: one request on each of N open connections, written at once, one cold URL.",
        "",
        "| stack | route | requests | origin calls | peak in flight | peak origin runs "
        "| X-Cache | statuses | seconds |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | --- | ---: |",
    ]
    for config in configs:
        for name, b in config.bursts.items():
            x_cache = ", ".join(f"{k} {v}" for k, v in sorted(b["x_cache"].items()))
            statuses = ", ".join(f"{k}: {v}" for k, v in sorted(b["statuses"].items()))
            out.append(
                f"| {config.layers} | {name} | {b['requests']} | {b.get('origin_calls', 0)} "
                f"| {b.get('requests_peak_in_flight', 0)} | {b.get('origin_peak_concurrency', 0)} "
                f"| {x_cache} | {statuses} | {b['seconds']:.3f} |"
            )
    costs = [config for config in configs if config.in_process]
    if costs:
        out += [
            "",
            "The app alone, called in-process (no uvicorn, no socket): µs per request, median of "
            f"{costs[0].in_process['rounds']} alternating rounds of "
            f"{costs[0].in_process['calls']:,} calls.",
            "",
            "| stack | hard-coded JSON µs | CacheMiddleware, warm µs | difference µs |",
            "| --- | ---: | ---: | ---: |",
        ]
        for config in costs:
            us = config.in_process["us_per_request"]
            out.append(
                f"| {config.layers} | {us['/hard']:.1f} | {us['/cached/1']:.1f} "
                f"| {us['/cached/1'] - us['/hard']:.1f} |"
            )
    goals = goal_rows(configs)
    if goals:
        out += [
            "",
            "| goal | stack | target | measured | met |",
            "| --- | --- | ---: | ---: | --- |",
        ]
        for goal in goals:
            measured = goal["value"]
            shown = "-" if measured is None else f"{measured:.3g}"
            out.append(
                f"| {goal['goal']} | {goal['layers']} | {goal['target']} | {shown} "
                f"| {'yes' if goal['met'] else 'no'} |"
            )
    return "\n".join(out)


def goal_rows(configs: list[ConfigResult]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for config in configs:
        if not config.middleware:
            continue
        runs = {run.path: run for run in config.runs}
        ratio = _ratio(runs["/cached/1"].rps, runs["/hard"].rps)
        rows.append(
            {
                "goal": "cached / hard-coded req/s",
                "layers": config.layers,
                "target": f">= {GOAL_RATIO}",
                "value": ratio,
                "met": ratio is not None and ratio >= GOAL_RATIO,
            }
        )
        cpu_ratio = _cpu_ratio(runs["/hard"], runs["/cached/1"])
        rows.append(
            {
                "goal": "cached / hard-coded, by server CPU per request (noise-resistant)",
                "layers": config.layers,
                "target": f">= {GOAL_RATIO}",
                "value": cpu_ratio,
                "met": cpu_ratio is not None and cpu_ratio >= GOAL_RATIO,
            }
        )
        calls = config.bursts["cached"].get("origin_calls")
        rows.append(
            {
                "goal": "cold burst origin calls",
                "layers": config.layers,
                "target": f"{GOAL_BURST_FETCHES}",
                "value": calls,
                "met": calls == GOAL_BURST_FETCHES,
            }
        )
    return rows


def _version(dist: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def run(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.http", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 s per route (smoke run)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per route")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--burst", type=int, default=500, help="requests in the cold burst")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--no-redis", action="store_true", help="MemoryLayer only")
    group.add_argument("--redis-url", default=None, help="use this Redis instead of starting one")
    args = parser.parse_args(argv)

    wrk = ensure_wrk()
    version = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    meta = {
        "wrk_version": (version.stdout or version.stderr).split()[1],
        "threads": args.threads,
        "connections": args.connections,
        "seconds": 1.0 if args.quick else args.duration,
        "uvicorn": _version("uvicorn"),
        "starlette": _version("starlette"),
        "loop": "uvloop" if _importable("uvloop") else "asyncio",
        "http": "httptools" if _importable("httptools") else "h11",
        "burst": args.burst,
    }
    configs: list[ConfigResult] = []
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "report.lua"
        script.write_text(WRK_SCRIPT)
        configs.append(measure("memory", None, wrk, script, args))
        if not args.no_redis:
            with contextlib.ExitStack() as stack:
                url = args.redis_url or stack.enter_context(redis_server()).url
                configs.append(measure("memory+redis", url, wrk, script, args))
    document = {
        "meta": meta,
        "environment": environment(),
        "configs": [asdict(config) for config in configs],
        "goals": goal_rows(configs),
        "markdown": markdown(configs, meta),
    }
    if args.json:
        args.json.write_text(json.dumps(document, indent=2))
    return document


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def main(argv: list[str] | None = None) -> int:
    try:
        document = run(argv)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(document["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
