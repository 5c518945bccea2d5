"""Scenario 4: 75 concurrent cold gets of one key whose origin fetch takes 50 ms.

What is counted is how many times the origin ran. Async subjects start all callers at once
with ``asyncio.gather``; dogpile (a sync library) gets one thread per caller, released
together by a barrier. Each run uses a new key, so every run starts cold.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from bench.fixtures import VALUE
from bench.harness import Settings

TTL = 3600


@dataclass
class Counter:
    """Origin calls (thread-safe: dogpile's creators run in worker threads)."""

    n: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def hit(self) -> None:
        with self.lock:
            self.n += 1


@dataclass
class StampedeSubject:
    """A way to read one key with an origin behind it.

    ``build(counter, delay)`` returns the read: ``async (key) -> value`` or, with
    ``threads=True``, a blocking ``(key) -> value`` called from one thread per caller.
    """

    name: str
    build: Callable[[Counter, float], Awaitable[Callable[[str], Any]]]
    threads: bool = False
    note: str = ""
    fetches: list[int] = field(default_factory=list)
    elapsed: list[float] = field(default_factory=list)


def _async_origin(counter: Counter, delay: float) -> Callable[..., Awaitable[Any]]:
    async def origin(key: str) -> Any:
        counter.hit()
        await asyncio.sleep(delay)
        return VALUE

    return origin


def subjects(exits: AsyncExitStack, redis_url: str | None) -> list[StampedeSubject]:
    """Every library's best-known way to read-through, plus the uncached origin."""
    from aiocache import Cache as AioCacheFactory  # type: ignore[import-untyped]
    from aiocache import cached, cached_stampede
    from cashews import Cache
    from dogpile.cache import make_region

    from layercache import CacheStack, MemoryLayer, RedisLayer

    async def no_cache(counter: Counter, delay: float) -> Callable[[str], Any]:
        return _async_origin(counter, delay)

    def layercache(with_redis: bool) -> Callable[[Counter, float], Awaitable[Any]]:
        async def build(counter: Counter, delay: float) -> Callable[[str], Any]:
            layers: list[Any] = [MemoryLayer(ttl=TTL)]
            if with_redis:
                assert redis_url is not None
                layers.append(RedisLayer(url=redis_url, ttl=TTL, prefix="bench:cold:"))
            stack = CacheStack(layers)
            exits.push_async_callback(stack.aclose)
            origin = _async_origin(counter, delay)

            async def get(key: str) -> Any:
                return await stack.get(key, lambda: origin(key))

            return get

        return build

    def cashews(url: str, **decorator: Any) -> Callable[[Counter, float], Awaitable[Any]]:
        async def build(counter: Counter, delay: float) -> Callable[[str], Any]:
            cache = Cache()
            if url.startswith("redis"):
                cache.setup(url, max_connections=128)
            else:
                cache.setup(url)
            exits.push_async_callback(cache.close)
            return cache(ttl=TTL, **decorator)(_async_origin(counter, delay))

        return build

    def aiocache(
        decorator: Any, backend: str, **kwargs: Any
    ) -> Callable[[Counter, float], Awaitable[Any]]:
        async def build(counter: Counter, delay: float) -> Callable[[str], Any]:
            if backend == "redis":
                assert redis_url is not None
                host, port = redis_url.split("//")[1].split("/")[0].split(":")
                kwargs.update(endpoint=host, port=int(port))
            wrapped = decorator(ttl=TTL, cache=AioCacheFactory.get_scheme_class(backend), **kwargs)
            fn = wrapped(_async_origin(counter, delay))
            exits.push_async_callback(fn.cache.close)
            return fn  # type: ignore[no-any-return]

        return build

    def dogpile(backend: str) -> Callable[[Counter, float], Awaitable[Any]]:
        async def build(counter: Counter, delay: float) -> Callable[[str], Any]:
            arguments: dict[str, Any] = {}
            if backend == "dogpile.cache.redis":
                assert redis_url is not None
                arguments = {"url": redis_url, "redis_expiration_time": TTL * 2}
            region = make_region().configure(backend, expiration_time=TTL, arguments=arguments)

            def creator() -> Any:
                counter.hit()
                time.sleep(delay)
                return VALUE

            def get(key: str) -> Any:
                return region.get_or_create(key, creator)

            return get

        return build

    out = [
        StampedeSubject("no cache", no_cache, note="every caller runs the origin"),
        StampedeSubject("layercache CacheStack[MemoryLayer]", layercache(False)),
        StampedeSubject("cashews mem:// @cache", cashews("mem://"), note="default: protected=True"),
        StampedeSubject(
            "cashews mem:// @cache(protected=False)", cashews("mem://", protected=False)
        ),
        StampedeSubject(
            "cashews mem:// @cache(lock=True, protected=False)",
            cashews("mem://", lock=True, protected=False),
        ),
        StampedeSubject("aiocache @cached (memory)", aiocache(cached, "memory")),
        StampedeSubject(
            "aiocache @cached_stampede (memory)", aiocache(cached_stampede, "memory", lease=2)
        ),
        StampedeSubject(
            "dogpile get_or_create (memory, threads)",
            dogpile("dogpile.cache.memory"),
            threads=True,
        ),
    ]
    if redis_url is not None:
        out[2:2] = [StampedeSubject("layercache CacheStack[Memory, Redis]", layercache(True))]
        out += [
            StampedeSubject(
                "cashews redis:// @cache(lock=True, protected=False)",
                cashews(redis_url, lock=True, protected=False),
            ),
            StampedeSubject(
                "aiocache @cached_stampede (redis)", aiocache(cached_stampede, "redis", lease=2)
            ),
            StampedeSubject(
                "dogpile get_or_create (redis, threads)",
                dogpile("dogpile.cache.redis"),
                threads=True,
            ),
        ]
    return out


async def _run_once(subject: StampedeSubject, settings: Settings, key: str) -> None:
    counter = Counter()
    get = await subject.build(counter, settings.fetch_delay)
    callers = settings.stampede_callers
    if subject.threads:
        barrier = threading.Barrier(callers)

        def caller() -> Any:
            barrier.wait()
            return get(key)

        def run_threads() -> list[Any]:
            with ThreadPoolExecutor(max_workers=callers) as pool:
                futures = [pool.submit(caller) for _ in range(callers)]
                return [f.result() for f in futures]

        began = time.perf_counter()
        results = await asyncio.to_thread(run_threads)
    else:
        began = time.perf_counter()
        results = await asyncio.gather(*(get(key) for _ in range(callers)))
    subject.elapsed.append(time.perf_counter() - began)
    if any(r != VALUE for r in results):
        raise AssertionError(f"{subject.name}: a caller did not get the value")
    subject.fetches.append(counter.n)


async def measure(items: list[StampedeSubject], settings: Settings) -> None:
    """Run each subject ``settings.stampede_rounds`` times, interleaved, each on a fresh key."""
    for round_no in range(settings.stampede_rounds):
        shift = round_no % len(items)
        for i, subject in enumerate([*items[shift:], *items[:shift]]):
            await _run_once(subject, settings, f"bench:cold:{round_no}:{i}:{subject.name}")
