"""The batcher on its own (``_async/batcher.py`` and its generated thread twin): who leads,
what a batch carries, and that no caller is ever stranded. The calls it batches are plain
functions here; the Redis behaviour is tested on a real server in tests/stack/test_l2_batching.py.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from layercache import CacheLayerError, CacheStack, Entry
from layercache._async.batcher import MAX_LANES, Batcher, own_copy
from layercache._sync.batcher import Batcher as ThreadBatcher


class Calls:
    """``one`` and ``many`` that answer ``item * 10`` after a release, recording each call."""

    def __init__(self) -> None:
        self.singles: list[Any] = []
        self.bulks: list[list[Any]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.release_many = asyncio.Event()
        self.release_many.set()
        self.fail: Any = None  # makes the exception each failing call raises

    async def one(self, item: Any) -> Any:
        self.singles.append(item)
        await self.release.wait()
        if self.fail is not None:
            raise self.fail()
        return item * 10

    async def many(self, items: list[Any]) -> list[Any]:
        self.bulks.append(list(items))
        await self.release_many.wait()
        if self.fail is not None:
            raise self.fail()
        return [item * 10 for item in items]


async def _queue_behind_one(batcher: Batcher, calls: Calls, items: list[Any]) -> list[Any]:
    """The first item's call in flight (held), the rest queued behind it; then released."""
    calls.release.clear()
    tasks = [asyncio.ensure_future(batcher.submit(item)) for item in items]
    await asyncio.sleep(0)
    calls.release.set()
    return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)


async def test_a_lone_call_goes_alone_and_callers_behind_it_share_one() -> None:
    calls = Calls()
    batcher = Batcher(calls.one, calls.many)
    assert await batcher.submit(1) == 10
    assert (calls.singles, calls.bulks) == ([1], [])
    assert await _queue_behind_one(batcher, calls, [2, 3, 4, 5]) == [20, 30, 40, 50]
    assert calls.singles == [1, 2]
    assert calls.bulks == [[3, 4, 5]]


async def test_equal_items_are_read_once_and_batches_are_capped() -> None:
    calls = Calls()
    batcher = Batcher(calls.one, calls.many, max_batch=4, dedupe=True)
    items = [0, 1, 1, 2, 1, 3, 4, 5, 6, 6]
    assert await _queue_behind_one(batcher, calls, items) == [i * 10 for i in items]
    # 9 queued: 4 + 4 + 1, each batch with its repeats sent once; a batch of one goes alone.
    assert calls.bulks == [[1, 2], [3, 4, 5, 6]]
    assert calls.singles == [0, 6]


async def test_a_failed_batch_fails_each_caller_with_its_own_error() -> None:
    calls = Calls()
    batcher = Batcher(calls.one, calls.many)
    cause = ConnectionError("reset")

    def failure() -> CacheLayerError:
        error = CacheLayerError("redis", "get")
        error.__cause__ = cause
        return error

    calls.fail = failure
    results = await _queue_behind_one(batcher, calls, [1, 2, 3, 4])
    assert all(isinstance(r, CacheLayerError) for r in results)
    assert len({id(r) for r in results}) == 4  # never one shared instance
    assert all((r.layer, r.operation, r.__cause__) == ("redis", "get", cause) for r in results)
    # The lane is idle again: the next call goes alone.
    calls.fail = None
    assert await batcher.submit(7) == 70


def test_own_copy() -> None:
    error = CacheLayerError("redis", "get", "pool exhausted")
    error.__cause__ = OSError("x")
    copy = own_copy(error)
    assert copy is not error
    assert (copy.layer, copy.operation, copy.message, copy.__cause__) == (
        "redis",
        "get",
        "pool exhausted",
        error.__cause__,
    )
    other = ValueError("v")
    assert own_copy(other) is other


async def test_per_item_outcomes_fail_only_their_caller() -> None:
    bad = ValueError("cannot store 2")
    gate = asyncio.Event()

    async def one(item: Any) -> None:
        await gate.wait()

    async def many(items: list[Any]) -> list[Any]:
        return [bad if item == 2 else None for item in items]

    batcher = Batcher(one, many, per_item=True)
    tasks = [asyncio.ensure_future(batcher.submit(i)) for i in range(4)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*tasks, return_exceptions=True) == [None, None, bad, None]


async def test_a_cancelled_waiter_is_skipped_and_a_cancelled_leader_hands_over() -> None:
    calls = Calls()
    batcher = Batcher(calls.one, calls.many)
    calls.release.clear()
    calls.release_many.clear()
    tasks = [asyncio.ensure_future(batcher.submit(i)) for i in range(6)]
    await asyncio.sleep(0)  # 0 in flight, 1..5 queued
    tasks[1].cancel()  # first in the queue: it would have led
    tasks[3].cancel()
    calls.release.set()
    for _ in range(100):
        if calls.bulks:
            break
        await asyncio.sleep(0)
    assert calls.bulks == [[2, 4, 5]]  # 2 leads; the cancelled callers are left out
    tasks[2].cancel()  # the leader, while its batch is held: 4 and 5 go again
    await asyncio.sleep(0)
    calls.release_many.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
    assert results[0] == 0
    assert [isinstance(results[i], asyncio.CancelledError) for i in (1, 2, 3)] == [True] * 3
    assert results[4:] == [40, 50]
    assert calls.bulks == [[2, 4, 5], [4, 5]]


async def test_a_window_collects_callers_before_the_first_call() -> None:
    calls = Calls()
    batcher = Batcher(calls.one, calls.many, window=0.05)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(5)))
    assert results == [0, 10, 20, 30, 40]
    assert (calls.singles, calls.bulks) == ([], [[0, 1, 2, 3, 4]])
    assert await batcher.submit(9) == 90  # alone after its window: a single call
    assert calls.singles == [9]


async def test_beyond_the_queue_bound_callers_call_alone() -> None:
    calls = Calls()
    batcher = Batcher(calls.one, calls.many, max_batch=1)  # 16 queued callers at most
    items = list(range(40))
    assert await _queue_behind_one(batcher, calls, items) == [i * 10 for i in items]
    assert len(calls.singles) + sum(len(b) for b in calls.bulks) == 40
    assert len(calls.singles) >= 40 - 16


def test_lanes_of_finished_event_loops_are_dropped() -> None:
    calls = Calls()
    batcher = Batcher(calls.one, calls.many)

    async def once() -> int:
        calls.release = asyncio.Event()
        calls.release.set()
        return int(await batcher.submit(1))

    for _ in range(MAX_LANES + 10):
        assert asyncio.run(once()) == 10
    assert len(batcher._lanes) <= MAX_LANES


@pytest.fixture
def fast_switching() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def test_threads_share_calls_and_each_gets_its_own_result(fast_switching: None) -> None:
    lock = threading.Lock()
    bulks: list[list[int]] = []

    def one(item: int) -> int:
        time.sleep(0.002)
        return item * 10

    def many(items: list[int]) -> list[int]:
        with lock:
            bulks.append(list(items))
        time.sleep(0.002)
        return [item * 10 for item in items]

    batcher = ThreadBatcher(one, many, max_batch=8)  # type: ignore[arg-type]
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def caller(n: int) -> None:
        try:
            results[n] = [batcher.submit(n * 100 + i) for i in range(30)]
        except BaseException as exc:  # reported to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(t.is_alive() for t in threads)
    assert not errors
    for n in range(24):
        assert results[n] == [(n * 100 + i) * 10 for i in range(30)]
    assert bulks
    assert max(len(b) for b in bulks) <= 8
    assert not batcher._lanes[None].busy
    assert not batcher._lanes[None].queue


class BulkLayer:
    """A remote user layer with ``get_many`` (held until released), counting its calls."""

    is_local = False
    name = "remote"
    default_ttl = None

    def __init__(self, wrong_length: bool = False, batching: bool = True) -> None:
        self.read_batching = batching
        self.store: dict[str, Entry] = {}
        self.bulk_reads: list[list[str]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.wrong_length = wrong_length

    async def get(self, key: str) -> Entry | None:
        await self.release.wait()
        return self.store.get(key)

    async def get_many(self, keys: list[str]) -> list[Entry | None]:
        self.bulk_reads.append(list(keys))
        found = [self.store.get(k) for k in keys]
        return found[:-1] if self.wrong_length else found

    async def set(self, key: str, entry: Entry, ttl: float | None) -> None:
        self.store[key] = entry

    async def delete(self, key: str) -> None:
        self.store.pop(key, None)

    async def clear(self) -> None:
        self.store.clear()


async def _burst(layer: BulkLayer, keys: list[str]) -> list[Any]:
    cache = CacheStack([layer])
    try:
        await cache.set_many([(k, k.upper()) for k in keys])
        layer.release.clear()
        tasks = [asyncio.ensure_future(cache.get(k)) for k in keys]
        await asyncio.sleep(0)
        layer.release.set()
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
    finally:
        await cache.aclose()


async def test_a_user_layer_with_get_many_is_batched_unless_it_says_no() -> None:
    keys = [f"k{i}" for i in range(6)]
    batched = BulkLayer()
    assert await _burst(batched, keys) == [k.upper() for k in keys]
    assert batched.bulk_reads == [keys[1:]]
    plain = BulkLayer(batching=False)
    assert await _burst(plain, keys) == [k.upper() for k in keys]
    assert plain.bulk_reads == []


async def test_a_bulk_read_with_the_wrong_number_of_results_fails_its_callers() -> None:
    keys = [f"k{i}" for i in range(4)]
    results = await _burst(BulkLayer(wrong_length=True), keys)
    assert results[0] == "K0"  # alone: its own get
    for result in results[1:]:  # 3 keys asked, 2 answered
        assert isinstance(result, CacheLayerError)
        assert (result.layer, result.operation) == ("remote", "get")
        assert "a bulk get returned 2 results for 3 items" in str(result)
