"""The sync stack's cold miss and what its fetch hand-off costs (issue 16), in one run.

A cold ``SyncCacheStack.get(key, fetcher)`` is a miss, a call of the fetcher and the store of
its value. Under a ``fetch_timeout`` (the stack default is 30 s) the fetcher runs on one of the
stack's worker threads while the caller waits for it at most that long (a thread cannot be
interrupted); with ``fetch_timeout=None`` it runs in the calling thread. The difference of the
two is what the hand-off to the worker costs.

Subjects, every call on a new key (so every call is a cold miss), a trivial fetcher returning
the 1 KiB value:

* **memory**: the floor ``dict`` miss + set; ``SyncCacheStack([MemoryLayer()])`` with
  ``fetch_timeout=None`` and with the default timeout.
* **redis**: the floor raw redis-py ``GET`` + ``json.dumps`` + ``SET PX``;
  ``SyncCacheStack([MemoryLayer(), RedisLayer(url=...)])`` (the sync Redis layer) with
  ``fetch_timeout=None`` and with the default timeout.
* **io**: ``SyncCacheStack([MemoryLayer()])`` whose fetcher makes one redis-py ``GET`` (an
  origin doing I/O: the worker blocks in it, the interpreter lock changes hands around it),
  ``fetch_timeout=None`` and default, against the ``GET`` alone.
* **memcached** (when a ``memcached`` binary is there): the floor pymemcache ``get`` +
  ``json.dumps`` + ``set``; ``SyncCacheStack([MemoryLayer(), SyncMemcachedLayer])`` with
  ``fetch_timeout=None`` and with the default timeout.
* **hand-off alone**: the primitive the sync loader bounds a fetch with
  (``with_timeout(fetcher, 30, workers)``) against calling the fetcher inline.

Subjects run in interleaved rounds (the order rotates every round), each round on fresh keys;
the median round is reported as wall time, the process's CPU time (all its threads: the
worker's share of a handed-off fetch included; not the server's) and the calling thread's CPU
time per call. Ratios are medians of per-round ratios (both sides measured in the same round):
each stack to its floor, and default timeout / ``fetch_timeout=None`` (the hand-off's share of
a cold miss).

``--compare-threads PATH`` adds, in the same run, each default-timeout stack and the bare
primitive on the thread primitives of another ``_primitives/threads.py`` (for instance the
version before a change: ``git show REV:src/layercache/_primitives/threads.py > old.py``), and
their ratios to the current ones: a before/after on one busy machine without two processes.

Usage: ``python -m bench.sync_cold [--quick] [--calls N] [--rounds R] [--json PATH]
[--compare-threads PATH]``

JSON keys, for each group ``G`` in ``memory``, ``redis``, ``io`` (and ``memcached`` when it
ran): ``G_default_ratio``, ``G_none_ratio``, ``G_handoff_ratio`` (wall) and the same with a
``_cpu`` suffix (process CPU); with ``--compare-threads`` also ``G_compare_ratio`` and
``G_compare_ratio_cpu`` (current / compared, default timeout) and ``handoff_compare_ratio``
(+ ``_cpu``); ``handoff_us`` and ``handoff_cpu_us`` (the primitive alone minus the inline
call); ``rows`` (``name``, ``wall_us``, ``cpu_us``, ``thread_cpu_us``).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import statistics
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.fixtures import VALUE, redis_server

INLINE = "fetcher called inline"
HANDOFF = "with_timeout(fetcher, 30, workers)"
COMPARED = " [compared threads.py]"
GROUPS = {
    "memory": ("floor: dict miss + set", "SyncCacheStack[Memory]"),
    "redis": ("floor: redis-py GET + json.dumps + SET PX", "SyncCacheStack[Memory, SyncRedis]"),
    "memcached": (
        "floor: pymemcache get + json.dumps + set",
        "SyncCacheStack[Memory, SyncMemcached]",
    ),
    "io": ("floor: the fetcher's redis-py GET alone", "SyncCacheStack[Memory], GET fetcher"),
}

# One sample per subject and round: (wall, process CPU, thread CPU) seconds per call.
Sample = tuple[float, float, float]


def fetch() -> Any:
    return VALUE


def none_name(group: str) -> str:
    return f"{GROUPS[group][1]} fetch_timeout=None"


def default_name(group: str) -> str:
    return f"{GROUPS[group][1]} fetch_timeout=30 (default)"


def load_threads(path: Path) -> ModuleType:
    """Another ``_primitives/threads.py``, loaded as a module of its own."""
    spec = importlib.util.spec_from_file_location("bench_compared_threads", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def use_compared(stack: Any, compared: ModuleType, exits: ExitStack) -> None:
    """Make ``stack``'s timed fetches run on ``compared``'s workers: the sync loader's
    ``with_timeout`` is replaced once by one that picks the module by the workers' class."""
    import layercache._sync.loader as loader

    current = loader.with_timeout
    if getattr(current, "compares", None) is not compared:

        def with_timeout(thunk: Callable[[], Any], timeout: float, workers: Any) -> Any:
            if isinstance(workers, compared.Workers):
                return compared.with_timeout(thunk, timeout, workers)
            return current(thunk, timeout, workers)

        with_timeout.compares = compared  # type: ignore[attr-defined]
        loader.with_timeout = with_timeout  # type: ignore[assignment]
    workers = compared.new_workers("layercache")
    stack._loader.workers = workers
    exits.callback(workers.close, 5.0)


def subjects(
    exits: ExitStack, port: int, memcached: Any, compared: ModuleType | None
) -> tuple[dict[str, Callable[[], Any]], list[Any]]:
    """Each subject is a call taking its next key itself; also what to clear between rounds
    (outside the timing)."""
    import redis

    from layercache import MemoryLayer, SyncCacheStack
    from layercache._primitives.threads import new_workers, with_timeout
    from layercache.redis import RedisLayer

    url = f"redis://127.0.0.1:{port}/0"
    counter = itertools.count()
    store: dict[str, Any] = {}
    raw = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5.0, socket_connect_timeout=5.0)
    exits.callback(raw.close)
    raw.set("sc:origin", b"origin row")

    def dict_floor() -> None:
        key = f"f{next(counter)}"
        if store.get(key) is None:
            store[key] = fetch()

    def redis_floor() -> None:
        key = f"sc:f:{next(counter)}"
        if raw.get(key) is None:
            raw.set(key, json.dumps(fetch()), px=600_000)

    def origin() -> Any:
        return raw.get("sc:origin")

    layers: dict[str, Callable[[str], list[Any]]] = {
        "memory": lambda tag: [MemoryLayer()],
        "redis": lambda tag: [MemoryLayer(), RedisLayer(url=url, ttl=600, prefix=f"sc:{tag}:")],
        "io": lambda tag: [MemoryLayer()],
    }
    floors: dict[str, Callable[[], Any]] = {
        "memory": dict_floor,
        "redis": redis_floor,
        "io": origin,
    }
    fetchers: dict[str, Callable[[], Any]] = {"io": origin}
    if memcached is not None:
        from pymemcache.client.base import Client

        from layercache.memcached import SyncMemcachedLayer

        servers = f"{memcached.host}:{memcached.port}"
        mc = Client((memcached.host, memcached.port), no_delay=True, default_noreply=False)
        exits.callback(mc.close)

        def memcached_floor() -> None:
            key = f"scf:{next(counter)}"
            if mc.get(key) is None:
                mc.set(key, json.dumps(fetch()).encode(), expire=600, noreply=False)

        layers["memcached"] = lambda tag: [
            MemoryLayer(),
            SyncMemcachedLayer(servers=servers, prefix=f"sc{tag}:", ttl=600),
        ]
        floors["memcached"] = memcached_floor

    def through(stack: Any, fetcher: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            return stack.get(f"k{next(counter)}", fetcher)

        return call

    calls: dict[str, Callable[[], Any]] = {}
    stacks: list[Any] = []
    for group, make in layers.items():
        fetcher = fetchers.get(group, fetch)
        none = SyncCacheStack(make("n"), fetch_timeout=None)
        default = SyncCacheStack(make("d"))
        stacks += [none, default]
        calls[GROUPS[group][0]] = floors[group]
        calls[none_name(group)] = through(none, fetcher)
        calls[default_name(group)] = through(default, fetcher)
        if compared is not None:
            other = SyncCacheStack(make("c"))
            use_compared(other, compared, exits)
            stacks.append(other)
            calls[default_name(group) + COMPARED] = through(other, fetcher)
    for stack in stacks:
        exits.callback(stack.close)
    workers = new_workers("bench-sync-cold")
    exits.callback(workers.close, 5.0)
    calls[INLINE] = fetch
    calls[HANDOFF] = lambda: with_timeout(fetch, 30.0, workers)
    if compared is not None:
        other_workers = compared.new_workers("bench-sync-cold-compared")
        exits.callback(other_workers.close, 5.0)
        calls[HANDOFF + COMPARED] = lambda: compared.with_timeout(fetch, 30.0, other_workers)
    cleanups = [store.clear, *(s.clear for s in stacks)]
    return calls, cleanups


def measure(
    calls: dict[str, Callable[[], Any]], cleanups: list[Any], n: int, rounds: int
) -> dict[str, list[Sample]]:
    """Per-call (wall, process CPU, thread CPU) of every subject in each of ``rounds``
    interleaved rounds."""
    names = list(calls)
    for name in names:  # warm up: connections, scripts, worker threads
        for _ in range(200):
            calls[name]()
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    for r in range(rounds):
        for cleanup in cleanups:
            cleanup()
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            call = calls[name]
            wall, cpu, own = time.perf_counter(), time.process_time(), time.thread_time()
            for _ in range(n):
                call()
            samples[name].append(
                (
                    (time.perf_counter() - wall) / n,
                    (time.process_time() - cpu) / n,
                    (time.thread_time() - own) / n,
                )
            )
    return samples


def median_of(rows: list[Sample], i: int) -> float:
    return statistics.median(s[i] for s in rows)


def paired(samples: dict[str, list[Sample]], a: str, b: str, i: int) -> float:
    """The median over the rounds of ``a``'s time / ``b``'s time in the same round."""
    return statistics.median(x[i] / y[i] for x, y in zip(samples[a], samples[b], strict=True))


def summarize(samples: dict[str, list[Sample]]) -> dict[str, Any]:
    """The ratios (wall and process CPU) and the rows, as the --json output."""
    out: dict[str, Any] = {}
    compared = HANDOFF + COMPARED in samples
    for group, (floor, _) in GROUPS.items():
        if floor not in samples:
            continue
        none, default = none_name(group), default_name(group)
        for suffix, i in (("", 0), ("_cpu", 1)):
            out[f"{group}_default_ratio{suffix}"] = paired(samples, default, floor, i)
            out[f"{group}_none_ratio{suffix}"] = paired(samples, none, floor, i)
            out[f"{group}_handoff_ratio{suffix}"] = paired(samples, default, none, i)
            if compared:
                out[f"{group}_compare_ratio{suffix}"] = paired(
                    samples, default, default + COMPARED, i
                )
    for suffix, i in (("", 0), ("_cpu", 1)):
        if compared:
            out[f"handoff_compare_ratio{suffix}"] = paired(samples, HANDOFF, HANDOFF + COMPARED, i)
    out["handoff_us"] = (median_of(samples[HANDOFF], 0) - median_of(samples[INLINE], 0)) * 1e6
    out["handoff_cpu_us"] = (median_of(samples[HANDOFF], 1) - median_of(samples[INLINE], 1)) * 1e6
    out["rows"] = [
        {
            "name": name,
            "wall_us": median_of(rows, 0) * 1e6,
            "cpu_us": median_of(rows, 1) * 1e6,
            "thread_cpu_us": median_of(rows, 2) * 1e6,
        }
        for name, rows in samples.items()
    ]
    return out


def report(samples: dict[str, list[Sample]], summary: dict[str, Any], n: int, rounds: int) -> None:
    floors: dict[str, str] = {INLINE: INLINE, HANDOFF: INLINE, HANDOFF + COMPARED: INLINE}
    for group, (floor, _) in GROUPS.items():
        for name in (floor, none_name(group), default_name(group), default_name(group) + COMPARED):
            floors[name] = floor
    print(f"sync cold miss: {rounds} rounds x {n} calls; µs per call (median round)")
    print(
        f"{'subject':86} {'wall':>8} {'cpu':>8} {'caller cpu':>11} "
        f"{'wall/floor':>11} {'cpu/floor':>10}"
    )
    for name, rows in samples.items():
        wall, cpu, own = (median_of(rows, i) for i in range(3))
        floor = floors[name]
        print(
            f"{name:86} {wall * 1e6:8.1f} {cpu * 1e6:8.1f} {own * 1e6:11.1f} "
            f"{paired(samples, name, floor, 0):10.2f}x {paired(samples, name, floor, 1):9.2f}x"
        )
    print()
    print("ratios are medians of per-round ratios; wall / process CPU")
    for group in GROUPS:
        if f"{group}_handoff_ratio" not in summary:
            continue
        line = (
            f"  {group:9} default/floor {summary[f'{group}_default_ratio']:5.2f}x "
            f"{summary[f'{group}_default_ratio_cpu']:5.2f}x   "
            f"None/floor {summary[f'{group}_none_ratio']:5.2f}x "
            f"{summary[f'{group}_none_ratio_cpu']:5.2f}x   "
            f"hand-off share (default/None) {summary[f'{group}_handoff_ratio']:5.2f}x "
            f"{summary[f'{group}_handoff_ratio_cpu']:5.2f}x"
        )
        if f"{group}_compare_ratio" in summary:
            line += (
                f"   current/compared {summary[f'{group}_compare_ratio']:5.2f}x "
                f"{summary[f'{group}_compare_ratio_cpu']:5.2f}x"
            )
        print(line)
    print(
        f"  the primitive alone: {summary['handoff_us']:.1f} µs wall, "
        f"{summary['handoff_cpu_us']:.1f} µs process CPU over an inline call"
        + (
            f"; current/compared {summary['handoff_compare_ratio']:.2f}x "
            f"{summary['handoff_compare_ratio_cpu']:.2f}x"
            if "handoff_compare_ratio" in summary
            else ""
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (few calls)")
    parser.add_argument("--calls", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the ratios here")
    parser.add_argument(
        "--compare-threads", type=Path, default=None, help="another _primitives/threads.py"
    )
    args = parser.parse_args()
    n = args.calls or (100 if args.quick else 500)
    rounds = args.rounds or (5 if args.quick else 31)
    compared = None if args.compare_threads is None else load_threads(args.compare_threads)
    with ExitStack() as exits:
        server = exits.enter_context(redis_server())
        try:
            from bench.memcached import memcached_server

            memcached = exits.enter_context(memcached_server())
        except Exception as exc:  # no memcached binary here: the group is left out
            print(f"(memcached group skipped: {exc!r})")
            memcached = None
        calls, cleanups = subjects(exits, server.port, memcached, compared)
        samples = measure(calls, cleanups, n, rounds)
    summary = summarize(samples)
    report(samples, summary, n, rounds)
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
