"""One ``CacheStack`` used from several event loops (issue 10, point 2, the in-flight part).

An asyncio future can only be awaited on the loop that created it; the stack used to keep one
in-flight table for the process, so a caller on a second loop joined the first loop's fetch
and failed (``attached to a different loop``), or a second ``asyncio.run()`` found flights of
a closed loop. In-flight reads and fetches are now kept per loop, and a change marks the
flights of every loop.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from layercache import CacheStack, MemoryLayer

CALLERS = 50


def run_in_thread(target: Any) -> list[BaseException]:
    errors: list[BaseException] = []

    def main() -> None:
        try:
            target()
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    thread = threading.Thread(target=main)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    return errors


def test_two_loops_in_two_threads_share_one_stack() -> None:
    stack = CacheStack([MemoryLayer()])
    both_fetching = threading.Barrier(2)
    fetches: list[int] = []
    results: list[Any] = []

    async def burst(loop_id: int) -> None:
        async def origin() -> str:
            fetches.append(loop_id)
            # Both loops are inside a fetch of the same key at the same time.
            await asyncio.to_thread(both_fetching.wait, 10)
            return "value"

        results.extend(await asyncio.gather(*(stack.get("k", origin) for _ in range(CALLERS))))

    errors: list[BaseException] = []
    threads = [
        threading.Thread(
            target=lambda i=i: errors.extend(run_in_thread(lambda: asyncio.run(burst(i))))
        )
        for i in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    assert results == ["value"] * (2 * CALLERS)
    assert sorted(fetches) == [0, 1]  # one fetch per loop, never a cross-loop join
    assert len(stack._flights) == 0


def test_consecutive_asyncio_runs() -> None:
    stack = CacheStack([MemoryLayer()])
    calls = 0

    async def origin() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        return calls

    async def burst(key: str) -> list[Any]:
        return await asyncio.gather(*(stack.get(key, origin) for _ in range(CALLERS)))

    assert asyncio.run(burst("a")) == [1] * CALLERS
    assert asyncio.run(burst("b")) == [2] * CALLERS
    assert asyncio.run(burst("a")) == [1] * CALLERS  # an L1 hit on a third loop
    asyncio.run(stack.aclose())


def test_a_change_marks_the_flights_of_every_loop() -> None:
    """A delete on one loop keeps a fetch running on another loop from storing its value."""
    stack = CacheStack([MemoryLayer()])
    fetching = threading.Event()
    deleted = threading.Event()

    async def slow_fetch() -> None:
        async def origin() -> str:
            fetching.set()
            await asyncio.to_thread(deleted.wait, 10)
            return "old"

        assert await stack.get("k", origin) == "old"

    async def delete() -> None:
        await asyncio.to_thread(fetching.wait, 10)
        await stack.delete("k")
        deleted.set()

    errors: list[BaseException] = []
    fetcher = threading.Thread(
        target=lambda: errors.extend(run_in_thread(lambda: asyncio.run(slow_fetch())))
    )
    fetcher.start()
    errors.extend(run_in_thread(lambda: asyncio.run(delete())))
    fetcher.join(30)
    assert not errors, errors

    async def read() -> Any:
        return await stack.get("k")

    assert asyncio.run(read()) is None  # the fetch that started before the delete stored nothing
