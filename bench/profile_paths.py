"""Where layercache's time goes on the L1-hit and L2-hit paths.

Two complementary views (``python -m bench.profile_paths``):

* **Ablation**: the hit path taken apart into its building blocks, each timed with the same
  interleaved harness as the benchmark (so the differences between rows are the cost of each
  layer of the onion: stack orchestration, layer, codec, serializer, driver, client timeout).
* **cProfile** of a loop of hits (``--cprofile``): which functions carry the self time. cProfile
  inflates tiny functions, so read it for *where*, and the ablation for *how much*.

For line-level sampling without instrumentation overhead, run the spin loop under py-spy::

    py-spy record --format raw -o /tmp/l2.txt -- \
        python -m bench.profile_paths --spin l2 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import time
from contextlib import AsyncExitStack
from typing import Any

from bench.fixtures import VALUE, VALUE_JSON, redis_server
from bench.harness import Settings, Subject, measure_latency
from bench.report import latency_table

TTL = 3600


async def _l1(exits: AsyncExitStack) -> tuple[list[Subject], Any]:
    from layercache import CacheStack, MemoryLayer

    key = "bench:l1"
    store = {key: VALUE}
    memory = MemoryLayer(ttl=TTL)
    stack = CacheStack([memory])
    exits.push_async_callback(stack.aclose)
    await stack.set(key, VALUE)
    lookup = memory.lookup

    async def dict_get(k: str) -> Any:
        return store.get(k)

    async def minimal(k: str) -> Any:
        # The least an async L1 hit can do: clock, lookup, freshness check.
        now = time.time()
        entry = lookup(k, now)
        if entry is not None and (entry.fresh_until is None or now < entry.fresh_until):
            return entry.value
        return None

    now = time.time()
    rows = [
        Subject("a. floor: awaited dict lookup", dict_get, key),
        Subject("b. minimal async: time.time + lookup + fresh check", minimal, key),
        Subject("c. CacheStack.get (L1 hit)", stack.get, key),
        Subject("d. sync MemoryLayer.lookup(key, now)", lambda k: lookup(k, now), key, False),
        Subject("e. sync MemoryLayer.get(key)", memory.get, key, False),
        Subject("f. sync time.time()", lambda _: time.time(), None, False),
        Subject("g. sync key check (isprintable + len)", _key_ok, key, False),
    ]
    return rows, (stack.get, key)


def _key_ok(key: Any) -> bool:
    return type(key) is str and 0 < len(key) <= 1024 and key.isprintable()


async def _l2(exits: AsyncExitStack, host: str, port: int) -> tuple[list[Subject], Any]:
    import redis.asyncio as aioredis

    from layercache import CacheStack, RedisLayer

    url = f"redis://{host}:{port}/0"
    raw = aioredis.Redis(host=host, port=port)
    exits.push_async_callback(raw.aclose)
    raw_t = aioredis.Redis(host=host, port=port, socket_timeout=5.0)
    exits.push_async_callback(raw_t.aclose)
    layer = RedisLayer(url=url, ttl=TTL, prefix="prof:")
    stack = CacheStack([layer])
    exits.push_async_callback(stack.aclose)
    await stack.set("v", VALUE)
    await raw.set("raw:v", VALUE_JSON)
    stored = await raw.get("prof:v")
    assert stored is not None
    codec = layer.codec
    serializer = codec.serializer
    body = stored[6:]
    tree = json.loads(body)

    async def raw_get(k: str) -> Any:
        return json.loads(await raw.get(k))  # type: ignore[arg-type]

    async def raw_get_t(k: str) -> Any:
        return json.loads(await raw_t.get(k))  # type: ignore[arg-type]

    async def raw_get_bytes(k: str) -> Any:
        return await raw.get(k)

    decode_tree = serializer._decode  # type: ignore[attr-defined]
    rows = [
        Subject("a. floor: GET + json.loads", raw_get, "raw:v"),
        Subject("b. GET only (no json.loads)", raw_get_bytes, "raw:v"),
        Subject("c. floor with socket_timeout=5", raw_get_t, "raw:v"),
        Subject("d. RedisLayer.get (direct)", layer.get, "v"),
        Subject("e. CacheStack[RedisLayer].get", stack.get, "v"),
        Subject("f. sync EntryCodec.decode(bytes)", codec.decode, stored, False),
        Subject("g. sync JsonSerializer.loads(body)", serializer.loads, body, False),
        Subject("h. sync json.loads(body)", json.loads, body, False),
        Subject("i. sync JsonSerializer._decode(tree)", decode_tree, tree, False),
    ]
    return rows, (stack.get, "v")


async def _spin(target: tuple[Any, Any], seconds: float) -> int:
    fn, arg = target
    deadline = time.perf_counter() + seconds
    count = 0
    while time.perf_counter() < deadline:
        for _ in range(1000):
            await fn(arg)
        count += 1000
    return count


async def _cprofile(name: str, target: tuple[Any, Any], seconds: float, top: int) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    await _spin(target, seconds)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    print(f"## cProfile, {name} hit path ({seconds}s of gets), by self time\n")
    print(out.getvalue())


async def _main(args: argparse.Namespace, host_port: tuple[str, int] | None) -> None:
    settings = Settings(quick=False, rounds=5, target=args.target, warmup=0.05, slices=5)
    async with AsyncExitStack() as exits:
        l1_rows, l1_target = await _l1(exits)
        l2_rows: list[Subject] = []
        l2_target = None
        if host_port is not None:
            l2_rows, l2_target = await _l2(exits, *host_port)
        targets = {"l1": l1_target, "l2": l2_target}
        if args.spin:
            count = await _spin(targets[args.spin], args.seconds)
            print(f"spun {count} gets on the {args.spin} path")
            return
        if args.cprofile:
            for name, target in targets.items():
                if target is not None:
                    await _cprofile(name, target, args.seconds, args.top)
            return
        await measure_latency(l1_rows, settings)
        print("\n".join(latency_table("L1 hit, taken apart", l1_rows, l1_rows[0].name)))
        if l2_rows:
            await measure_latency(l2_rows, settings)
            print("\n".join(latency_table("L2 hit, taken apart", l2_rows, l2_rows[0].name)))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bench.profile_paths``."""
    parser = argparse.ArgumentParser(prog="python -m bench.profile_paths")
    parser.add_argument("--cprofile", action="store_true", help="cProfile both hit paths")
    parser.add_argument("--spin", choices=("l1", "l2"), help="just loop gets (for py-spy)")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--target", type=float, default=0.3, help="seconds per ablation sample")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--no-redis", action="store_true")
    args = parser.parse_args(argv)
    if args.no_redis:
        asyncio.run(_main(args, None))
        return 0
    with redis_server() as server:
        asyncio.run(_main(args, (server.host, server.port)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
