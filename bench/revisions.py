"""Compare two revisions of layercache in one run (issue 12: "no performance regression").

Usage::

    .venv/bin/python -m bench.revisions --old <git rev> [--new <path or git rev>]
        [--rounds N] [--slices N] [--processes N] [--target SECONDS] [--cpu N | --no-pin]
        [--quick] [--json PATH]

``--old`` is exported from this repository (``git archive <sha> src`` into a fresh
``/tmp/lc-rev-<sha>-*`` directory, removed at the end); ``--new`` defaults to this working tree's
``src/`` (a directory is used as is, anything else is exported like ``--old``). Two packages
named ``layercache`` cannot share a process, so each revision runs in its OWN worker process:
the same interpreter, ``PYTHONPATH=<revision>/src`` (ahead of the venv's editable install; the
worker checks where ``layercache`` really came from), and the same measuring code (this module
and ``bench/harness.py`` from the working tree). One throwaway ``redis-server`` (free loopback
port, no persistence) serves both; each revision uses its own key prefix.

Cases (the same scenarios as ``python -m bench --only l1,l2,concurrent,cold`` and
``python -m bench.sync_paths``, through the public API both revisions export):

* L1 hit: ``await CacheStack([MemoryLayer]).get(key)`` and ``SyncCacheStack([MemoryLayer]).get``
  on a warm key, per op.
* L2 hit: ``CacheStack([RedisLayer])``, bench's "memory(miss)+redis(hit)" (MemoryLayer cleared
  before every get, so the read goes to Redis and pays the backfill) and
  ``SyncCacheStack([RedisLayer])``, per op.
* 64 concurrent L2 readers (``CacheStack([RedisLayer])``, ``asyncio.gather``), ops/s.
* Stampede: 400 concurrent ``get(key, fetcher)`` on a cold key, the fetcher sleeping 5 ms, for
  ``CacheStack([MemoryLayer])`` and ``CacheStack([MemoryLayer, RedisLayer])``: time until every
  caller has its value (median of the stampedes of a sample) and fetcher calls per stampede.

Method: each worker builds its subjects, checks each one really hits, and calibrates a sample
to last about ``--target`` seconds (0.3). There are ``--processes`` (3) workers per revision and
round ``r`` uses pair ``r mod 3``: in a one-process A/A run one worker's 500 ns L1 hit was 3.5%
faster in every round (presumably its memory layout or hash seed), so the figures pool several
processes per side.
Each round goes case by case; a case's sample is cut
into ``--slices`` slices (10), and per slice the parent asks one worker and then the other
for one slice (ABBA order over slices, cases and rounds). Only one worker runs at a time, and
the two slices of a pair run back to back, so machine drift and other tenants' bursts land on
both revisions alike. A latency slice is preceded by a short re-warm-up and ``gc.collect()``
(as in ``bench/harness.py``) and also records the worker's CPU time per op. redis-server and
both workers are pinned to one CPU (``--cpu``, default the last allowed one; ``--no-pin`` to
turn it off): client and server take turns anyway, and without pinning the scheduler's choice
between same-CPU and cross-CPU wake-ups moved one worker's Redis round trips by up to 3x for
seconds at a time.

Table: per case the median slice figure of old and of new; "new vs old" is the median over the
pairs of slices of each pair's slowdown (new/old for times, old/new for ops/s: above 1 means
new is worse), "per-round min … max" the same median over one round's pairs (how far one round
alone could be off); a slowdown above 1.05, or more fetcher calls per stampede, is flagged. The
exit status is 0 either way: this is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bench.fixtures import ROOT, VALUE, redis_server
from bench.harness import Settings, Subject, calibrate, check, run_batch, run_batch_cpu

TTL = 3600
CONCURRENCY = 64
STAMPEDE_CALLERS = 400
FETCH_DELAY = 0.005
LIMIT = 1.05  # a slowdown above this is flagged (worse by more than 5%)


@dataclass(frozen=True)
class Case:
    """One measured figure."""

    key: str
    label: str
    unit: str
    scale: float  # raw value (seconds, or ops/s) times this is the displayed figure
    higher_is_better: bool = False


CASES = (
    Case("l1", "L1 hit: await CacheStack[MemoryLayer].get", "ns/op", 1e9),
    Case("l1_sync", "L1 hit: SyncCacheStack[MemoryLayer].get", "ns/op", 1e9),
    Case("l2", "L2 hit: await CacheStack[RedisLayer].get", "µs/op", 1e6),
    Case("l2_miss", "L2 hit: memory(miss)+redis(hit), L1 cleared per get", "µs/op", 1e6),
    Case("l2_sync", "L2 hit: SyncCacheStack[RedisLayer].get", "µs/op", 1e6),
    Case(
        "concurrent",
        f"{CONCURRENCY} concurrent L2 readers: CacheStack[RedisLayer]",
        "ops/s",
        1.0,
        higher_is_better=True,
    ),
    Case(
        "stampede",
        f"stampede: {STAMPEDE_CALLERS} cold gets, CacheStack[MemoryLayer]",
        "ms",
        1e3,
    ),
    Case(
        "stampede_redis",
        f"stampede: {STAMPEDE_CALLERS} cold gets, CacheStack[MemoryLayer, RedisLayer]",
        "ms",
        1e3,
    ),
)


def _log(message: str) -> None:
    print(f"[revisions {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Worker side: runs in a subprocess whose ``layercache`` is one revision's.
# --------------------------------------------------------------------------------------------


def _redis_layer_class() -> Any:
    """``RedisLayer`` wherever the revision exports it."""
    try:
        from layercache import RedisLayer
    except ImportError:
        from layercache.redis import RedisLayer
    return RedisLayer


async def _aclose(stack: Any) -> None:
    close = getattr(stack, "aclose", None) or stack.close
    result = close()
    if asyncio.iscoroutine(result):
        await result


@dataclass
class _Stampede:
    """A read-through of one cold key per stampede, with a counted, sleeping fetcher."""

    stack: Any
    prefix: str
    calls: int = 0
    serial: int = 0
    stampedes: int = 3  # per sample (calibrated)

    async def fetcher(self) -> Any:
        self.calls += 1
        await asyncio.sleep(FETCH_DELAY)
        return VALUE

    async def once(self) -> tuple[float, int]:
        """One stampede on a new key: (seconds until every caller has the value, fetches)."""
        self.serial += 1
        key = f"{self.prefix}{self.serial}"
        self.calls = 0
        stack, fetcher = self.stack, self.fetcher
        began = time.perf_counter()
        results = await asyncio.gather(*(stack.get(key, fetcher) for _ in range(STAMPEDE_CALLERS)))
        elapsed = time.perf_counter() - began
        if any(r != VALUE for r in results):
            raise AssertionError(f"{self.prefix}: a caller did not get the value")
        return elapsed, self.calls


@dataclass
class _Worker:
    """Every subject of one revision, built once and sampled on request."""

    settings: Settings
    latency: dict[str, Subject] = field(default_factory=dict)
    readers: Subject | None = None
    reader_iterations: int = 0
    stampedes: dict[str, _Stampede] = field(default_factory=dict)

    def build_sync(self, exits: ExitStack, url: str, prefix: str) -> None:
        """The sync stacks, built outside the event loop (as ``bench.sync_paths`` does)."""
        from layercache import MemoryLayer, SyncCacheStack

        l1 = SyncCacheStack([MemoryLayer(ttl=TTL)])
        exits.callback(l1.close)
        l1.set("l1", VALUE)
        l2 = SyncCacheStack([_redis_layer_class()(url=url, ttl=TTL, prefix=f"{prefix}sync:")])
        exits.callback(l2.close)
        l2.set("v", VALUE)
        self.latency["l1_sync"] = Subject("l1_sync", l1.get, "l1", is_async=False, expect=VALUE)
        self.latency["l2_sync"] = Subject("l2_sync", l2.get, "v", is_async=False, expect=VALUE)

    async def build_async(self, exits: AsyncExitStack, url: str, prefix: str) -> None:
        """The async stacks (same construction as ``bench/latency.py`` and ``stampede.py``)."""
        from layercache import CacheStack, MemoryLayer

        redis_layer = _redis_layer_class()

        l1 = CacheStack([MemoryLayer(ttl=TTL)])
        exits.push_async_callback(_aclose, l1)
        await l1.set("l1", VALUE)

        l2 = CacheStack([redis_layer(url=url, ttl=TTL, prefix=f"{prefix}lc:")])
        exits.push_async_callback(_aclose, l2)
        await l2.set("v", VALUE)

        memory = MemoryLayer(ttl=TTL)
        two = CacheStack([memory, redis_layer(url=url, ttl=TTL, prefix=f"{prefix}lc2:")])
        exits.push_async_callback(_aclose, two)
        await two.set("v", VALUE)

        async def memory_miss(key: str) -> Any:
            memory.clear()
            return await two.get(key)

        self.latency["l1"] = Subject("l1", l1.get, "l1", expect=VALUE)
        self.latency["l2"] = Subject("l2", l2.get, "v", expect=VALUE)
        self.latency["l2_miss"] = Subject("l2_miss", memory_miss, "v", expect=VALUE)
        self.readers = Subject("concurrent", l2.get, "v", expect=VALUE)

        cold = CacheStack([MemoryLayer(ttl=TTL)])
        exits.push_async_callback(_aclose, cold)
        cold_redis = CacheStack(
            [MemoryLayer(ttl=TTL), redis_layer(url=url, ttl=TTL, prefix=f"{prefix}cold:")]
        )
        exits.push_async_callback(_aclose, cold_redis)
        self.stampedes = {
            "stampede": _Stampede(cold, f"{prefix}stampede:"),
            "stampede_redis": _Stampede(cold_redis, f"{prefix}stampede-redis:"),
        }

    async def _readers_batch(self, n: int) -> float:
        assert self.readers is not None
        fn, arg = self.readers.fn, self.readers.arg

        async def reader() -> None:
            for _ in range(n):
                await fn(arg)

        began = time.perf_counter()
        await asyncio.gather(*(reader() for _ in range(CONCURRENCY)))
        return time.perf_counter() - began

    async def prepare(self) -> None:
        """Check every subject really hits, then size each sample to ``settings.target``."""
        for subject in self.latency.values():
            await check(subject)
            subject.iterations = await calibrate(subject, self.settings)
        assert self.readers is not None
        await check(self.readers)
        n, elapsed = 2, 0.0
        while elapsed < self.settings.warmup:
            elapsed = await self._readers_batch(n)
            n *= 2
        per_reader_op = elapsed / (n // 2)
        self.reader_iterations = max(2, int(self.settings.target / per_reader_op))
        for stampede in self.stampedes.values():
            elapsed, fetches = await stampede.once()
            if fetches != 1:
                _log(f"note: {stampede.prefix} first stampede ran the fetcher {fetches} times")
            stampede.stampedes = max(3, int(self.settings.target / elapsed))

    async def sample(self, key: str, slices: int) -> dict[str, Any]:
        """One slice (``1/slices`` of a sample) of one case, as raw totals."""
        if key in self.latency:
            subject = self.latency[key]
            n = max(1, subject.iterations // slices)
            await run_batch(subject, max(1, n // 20))  # re-warm after the other revision
            gc.collect()
            wall, cpu = await run_batch_cpu(subject, n)
            return {"ops": n, "wall": wall, "cpu": cpu}
        if key == "concurrent":
            n = max(1, self.reader_iterations // slices)
            await self._readers_batch(max(1, n // 20))
            gc.collect()
            return {"ops": CONCURRENCY * n, "wall": await self._readers_batch(n)}
        stampede = self.stampedes[key]
        gc.collect()
        times, fetches = [], []
        for _ in range(max(1, stampede.stampedes // slices)):
            elapsed, calls = await stampede.once()
            times.append(elapsed)
            fetches.append(calls)
        return {"times": times, "fetches": fetches}


def _worker(args: argparse.Namespace) -> int:
    """The worker's loop: one JSON request per stdin line, one JSON reply per line."""
    # Replies go to a private copy of stdout; anything else printed lands on stderr.
    replies: IO[str] = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    def reply(message: dict[str, Any]) -> None:
        replies.write(json.dumps(message) + "\n")

    import layercache

    origin = Path(layercache.__file__).resolve()
    expected = Path(args.src).resolve()
    if expected not in origin.parents:
        reply({"error": f"layercache imported from {origin}, not from {expected}"})
        return 2
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    settings = Settings(quick=False, rounds=1, target=args.target, warmup=args.warmup)
    worker = _Worker(settings)
    prefix = f"rev:{args.label}:"
    url = f"redis://{args.redis}/0"
    loop = asyncio.new_event_loop()
    try:
        with ExitStack() as sync_exits:
            worker.build_sync(sync_exits, url, prefix)
            async_exits = AsyncExitStack()
            try:
                loop.run_until_complete(worker.build_async(async_exits, url, prefix))
                loop.run_until_complete(worker.prepare())
                reply({"ready": True, "layercache": str(origin)})
                # The loop runs only during a slice: between slices (while the other revision
                # is measured) background tasks of either revision are paused alike.
                for line in sys.stdin:
                    request = json.loads(line)
                    if request.get("quit"):
                        break
                    reply(
                        loop.run_until_complete(worker.sample(request["case"], request["slices"]))
                    )
            finally:
                loop.run_until_complete(async_exits.aclose())
    finally:
        loop.close()
    reply({"bye": True})
    return 0


# --------------------------------------------------------------------------------------------
# Parent side: exports revisions, starts Redis and the workers, interleaves, reports.
# --------------------------------------------------------------------------------------------


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


@contextlib.contextmanager
def _exported(rev: str) -> Iterator[tuple[Path, str]]:
    """``<rev>:src`` extracted into a new ``/tmp/lc-rev-<sha>-*`` directory, removed on exit."""
    sha = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    target = Path(tempfile.mkdtemp(prefix=f"lc-rev-{sha[:12]}-", dir="/tmp"))
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", sha, "src"],
            capture_output=True,
            check=True,
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(target, filter="data")
            else:  # Python without extraction filters: our own repository's archive
                tar.extractall(target)
        yield target / "src", sha
    finally:
        shutil.rmtree(target, ignore_errors=True)


def _describe_tree() -> str:
    changed = _git("status", "--porcelain", "--", "src").splitlines()
    head = _git("rev-parse", "--short=12", "HEAD")
    if not changed:
        return f"working tree (clean, = {head})"
    return f"working tree (HEAD {head} + {len(changed)} changed/new paths under src/)"


@dataclass
class _Revision:
    """One side of the comparison and its worker processes."""

    label: str
    src: Path
    description: str
    processes: list[subprocess.Popen[str]] = field(default_factory=list)
    layercache: str = ""

    def ask(self, request: dict[str, Any], index: int) -> dict[str, Any]:
        """Send one request to worker ``index``; return its reply."""
        process = self.processes[index]
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write(json.dumps(request) + "\n")
        process.stdin.flush()
        line = process.stdout.readline()
        if not line:
            code = process.wait(timeout=30)
            raise RuntimeError(f"{self.label} worker exited ({code}) without a reply")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.label} worker: {reply['error']}")
        return reply


@contextlib.contextmanager
def _worker_process(
    revision: _Revision, redis: str, settings: Settings, cpu: int | None
) -> Iterator[None]:
    env = {**os.environ, "PYTHONPATH": str(revision.src)}
    command = [
        sys.executable,
        "-m",
        "bench.revisions",
        "--worker",
        "--label",
        f"{revision.label}{len(revision.processes)}",
        "--src",
        str(revision.src),
        "--redis",
        redis,
        "--target",
        repr(settings.target),
        "--warmup",
        repr(settings.warmup),
        *(["--cpu", str(cpu)] if cpu is not None else []),
    ]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    revision.processes.append(process)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        ready: dict[str, Any] = json.loads(line) if line else {"error": "no reply"}
        if "error" in ready:
            raise RuntimeError(f"{revision.label} worker did not start: {ready['error']}")
        revision.layercache = ready["layercache"]
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            assert process.stdin is not None
            process.stdin.write(json.dumps({"quit": True}) + "\n")
            process.stdin.close()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _slowdown(case: Case, old: float, new: float) -> float:
    """Above 1: new is worse (more time per op, or fewer ops/s)."""
    return old / new if case.higher_is_better else new / old


def _figure(case: Case, value: float) -> str:
    shown = value * case.scale
    if shown >= 1000:
        return f"{shown:,.0f}"
    return f"{shown:.1f}" if shown >= 10 else f"{shown:.2f}"


def summarize(samples: dict[str, dict[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Per case: the medians, the slowdown, its per-round spread and the verdict.

    The slowdown is the median over the pairs of slices (old and new run back to back) of
    each pair's slowdown: a burst of load from other processes lands on a pair or two and
    moves the median little. The per-round figures are the same median over one round's
    pairs; their min and max show how far one round alone could be off.
    """
    rows = []
    for case in CASES:
        old, new = samples["old"][case.key], samples["new"][case.key]
        pairs = list(zip(old, new, strict=True))
        slowdowns = [_slowdown(case, o["value"], n["value"]) for o, n in pairs]
        rounds = sorted({o["round"] for o in old})
        per_round = [
            statistics.median(
                x for x, (o, _) in zip(slowdowns, pairs, strict=True) if o["round"] == r
            )
            for r in rounds
        ]
        row: dict[str, Any] = {
            "case": case.key,
            "label": case.label,
            "unit": case.unit,
            "old": statistics.median(s["value"] for s in old) * case.scale,
            "new": statistics.median(s["value"] for s in new) * case.scale,
            "slowdown": statistics.median(slowdowns),
            "round_slowdowns": per_round,
        }
        if "cpu" in old[0]:
            row["cpu_old"] = statistics.median(s["cpu"] for s in old) * case.scale
            row["cpu_new"] = statistics.median(s["cpu"] for s in new) * case.scale
            row["cpu_slowdown"] = statistics.median(n["cpu"] / o["cpu"] for o, n in pairs)
        if "fetches" in old[0]:
            row["fetches_old"] = sorted({f for s in old for f in s["fetches"]})
            row["fetches_new"] = sorted({f for s in new for f in s["fetches"]})
        worse = row["slowdown"] > LIMIT
        fetches_worse = "fetches_new" in row and max(row["fetches_new"]) > max(row["fetches_old"])
        row["flag"] = worse or fetches_worse
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]], rounds: int, slices: int) -> list[str]:
    """The Markdown table of :func:`summarize`'s rows."""
    by_key = {case.key: case for case in CASES}
    lines = [
        f"| case ({rounds} rounds x {slices} slices) | unit | old | new | new vs old | per-round "
        "min … max | CPU new vs old | |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        case = by_key[row["case"]]
        spread = row["round_slowdowns"]
        cpu = f"{row['cpu_slowdown']:.3f}" if "cpu_slowdown" in row else "-"
        notes = []
        if case.higher_is_better:
            notes.append("old/new (higher is better)")
        if "fetches_old" in row:
            notes.append(
                f"fetcher calls per stampede: old {row['fetches_old']}, new {row['fetches_new']}"
            )
        if row["flag"]:
            notes.insert(0, f"**WORSE by more than {LIMIT - 1:.0%}**")
        lines.append(
            f"| {case.label} | {case.unit} | {_figure(case, row['old'] / case.scale)} "
            f"| {_figure(case, row['new'] / case.scale)} | {row['slowdown']:.3f} "
            f"| {min(spread):.3f} … {max(spread):.3f} | {cpu} | {'; '.join(notes)} |"
        )
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options (the ``--worker`` ones are internal)."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.revisions",
        description="Compare the hot paths of two layercache revisions in one run.",
    )
    parser.add_argument("--old", help="git revision to compare against (e.g. main, HEAD~1)")
    parser.add_argument(
        "--new",
        help="a directory (its src/, or itself if it holds layercache/) or a git revision "
        "(default: this working tree)",
    )
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds (default 9)")
    parser.add_argument(
        "--target", type=float, default=0.3, help="seconds per sample (default 0.3)"
    )
    parser.add_argument(
        "--slices",
        type=int,
        default=10,
        help="each sample is cut into this many slices, alternating old/new (default 10)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=3,
        help="worker processes per revision, one pair per round in turn (default 3)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--label", help=argparse.SUPPRESS)
    parser.add_argument("--src", help=argparse.SUPPRESS)
    parser.add_argument("--redis", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=float, default=0.1, help=argparse.SUPPRESS)
    parser.add_argument(
        "--cpu",
        type=int,
        help="the one CPU redis-server and both workers are pinned to (default: the last one "
        "this process may use)",
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="no pinning: let the scheduler place them"
    )
    args = parser.parse_args(argv)
    if not args.worker and not args.old:
        parser.error("--old is required")
    return args


def _new_side(new: str | None, exits: ExitStack) -> tuple[Path, str]:
    if new is None:
        return ROOT / "src", _describe_tree()
    path = Path(new)
    if path.is_dir():
        src = path / "src" if (path / "src" / "layercache").is_dir() else path
        if not (src / "layercache").is_dir():
            raise SystemExit(f"--new {new}: no layercache package in {src}")
        return src.resolve(), f"directory {src.resolve()}"
    src, sha = exits.enter_context(_exported(new))
    return src, f"{new} = {sha[:12]}"


def _slice_figure(case: Case, reply: dict[str, Any], round_no: int) -> dict[str, Any]:
    """One slice's figure: seconds per op (and CPU), ops/s, or the median stampede time."""
    if "times" in reply:
        return {
            "round": round_no,
            "value": statistics.median(reply["times"]),
            "fetches": reply["fetches"],
        }
    if case.higher_is_better:
        return {"round": round_no, "value": reply["ops"] / reply["wall"]}
    return {
        "round": round_no,
        "value": reply["wall"] / reply["ops"],
        "cpu": reply["cpu"] / reply["ops"],
    }


def _pin(server: Any, cpu: int | None) -> int | None:
    """Pin redis-server to one CPU (its pid from ``INFO server``); return that CPU.

    The workers are pinned to the same CPU. Client and server strictly take turns (request,
    reply), so nothing runs in parallel that could use a second CPU; what pinning removes is
    the scheduler's choice of same-CPU or cross-CPU wake-ups, which on a VM changes a Redis
    round trip by up to 3x, per process and for seconds at a time (an unpinned A/A run had
    one worker at ~50 µs and the other at ~90 µs per sync L2 hit).
    """
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    chosen = allowed[-1] if cpu is None else cpu
    info = server.command("INFO", "server").decode()
    pid = int(next(line for line in info.splitlines() if line.startswith("process_id:"))[11:])
    os.sched_setaffinity(pid, {chosen})
    return chosen


def _interleave(
    revisions: Sequence[_Revision],
    rounds: int,
    slices: int,
    progress: Callable[[str], None],
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Rounds x cases x slices; per slice one revision right after the other (ABBA order).

    Returns every slice's figure per revision and case; the i-th slices of old and new ran
    back to back, so they form a pair.
    """
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {
        r.label: {case.key: [] for case in CASES} for r in revisions
    }
    for round_no in range(rounds):
        process = round_no % len(revisions[0].processes)
        progress(f"round {round_no + 1}/{rounds} (worker pair {process})")
        for i, case in enumerate(CASES):
            for j in range(slices):
                forward = (round_no + i + j) % 2 == 0
                for revision in revisions if forward else list(reversed(revisions)):
                    reply = revision.ask({"case": case.key, "slices": slices}, process)
                    samples[revision.label][case.key].append(_slice_figure(case, reply, round_no))
    return samples


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the comparison; return the JSON document (rows, Markdown, what was compared)."""
    args = parse_args(argv)
    rounds, target, warmup = args.rounds, args.target, 0.1
    if args.quick:
        rounds, target, warmup = min(rounds, 2), min(target, 0.02), 0.005
    processes = max(1, min(args.processes, rounds))
    settings = Settings(quick=args.quick, rounds=rounds, target=target, warmup=warmup)
    with ExitStack() as exits:
        old_src, old_sha = exits.enter_context(_exported(args.old))
        old = _Revision("old", old_src, f"{args.old} = {old_sha[:12]}")
        new_src, new_description = _new_side(args.new, exits)
        new = _Revision("new", new_src, new_description)
        server = exits.enter_context(redis_server())
        redis = f"{server.host}:{server.port}"
        cpu = None if args.no_pin else _pin(server, args.cpu)
        _log(
            f"redis-server on {redis}, {'not pinned' if cpu is None else f'pinned to CPU {cpu}'}; "
            f"old: {old.description}; "
            f"new: {new.description}"
        )
        for _ in range(processes):
            for revision in (old, new):
                exits.enter_context(_worker_process(revision, redis, settings, cpu))
                _log(f"{revision.label} worker ready ({revision.layercache})")
        began = time.perf_counter()
        samples = _interleave((old, new), rounds, args.slices, _log)
        seconds = time.perf_counter() - began
    rows = summarize(samples)
    header = [
        f"old: {old.description}",
        f"new: {new.description}",
        f"{rounds} rounds, ~{target} s per sample in {args.slices} slices, "
        f"{processes} worker processes per revision, "
        f"{seconds:.0f} s of measurement; redis-server and workers "
        f"{'not pinned' if cpu is None else f'pinned to CPU {cpu}'}; "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs",
        "",
    ]
    markdown = "\n".join([*header, *table(rows, rounds, args.slices), ""])
    document = {
        "old": old.description,
        "new": new.description,
        "layercache": {"old": old.layercache, "new": new.layercache},
        "rounds": rounds,
        "target_seconds_per_sample": target,
        "slices": args.slices,
        "processes": processes,
        "cpu": cpu,
        "limit": LIMIT,
        "rows": rows,
        "samples": samples,
        "markdown": markdown,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    return document


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; prints the Markdown table and exits 0 even when a case is flagged."""
    args = parse_args(argv)
    if args.worker:
        return _worker(args)
    document = run(argv)
    print(document["markdown"])
    flagged = [row["label"] for row in document["rows"] if row["flag"]]
    if flagged:
        print(f"flagged (worse by more than {LIMIT - 1:.0%}): {', '.join(flagged)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
