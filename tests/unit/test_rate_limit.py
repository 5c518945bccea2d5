"""FetcherLimiter (asyncio and thread twins): limits, FIFO fairness, scopes, cancellation,
bounded queues and clean-up; plus RateLimit coercion."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from layercache._async.rate_limit import FetcherLimiter
from layercache._exceptions import FetcherQueueFullError, LayerCacheError
from layercache._options import RateLimit, coerce_rate_limit
from layercache._sync.rate_limit import FetcherLimiter as SyncFetcherLimiter

ONE = RateLimit(max_concurrent=1)
GLOBAL_ONE = RateLimit(max_concurrent=1, scope="global")


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Yield to the loop until ``predicate()`` holds (bounded)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate()`` from a thread until it holds (bounded)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.0005)


class Gauge:
    """Counts concurrent holders and remembers the maximum."""

    def __init__(self) -> None:
        self.current = 0
        self.peak = 0
        self.lock = threading.Lock()

    def enter(self) -> None:
        with self.lock:
            self.current += 1
            self.peak = max(self.peak, self.current)

    def leave(self) -> None:
        with self.lock:
            self.current -= 1


# == asyncio ====================================================================================


async def hold(limiter: FetcherLimiter, key: str, limit: RateLimit, release: asyncio.Event) -> None:
    async with limiter.slot(key, limit):
        await release.wait()


@pytest.mark.parametrize("max_concurrent", [1, 5])
async def test_max_concurrent_under_200_tasks(max_concurrent: int) -> None:
    limiter = FetcherLimiter()
    limit = RateLimit(max_concurrent=max_concurrent)
    gauge = Gauge()
    done = 0

    async def call() -> None:
        nonlocal done
        async with limiter.slot("k", limit):
            gauge.enter()
            for _ in range(3):
                await asyncio.sleep(0)
            gauge.leave()
            done += 1

    await asyncio.gather(*(call() for _ in range(200)))
    assert done == 200
    assert gauge.peak == max_concurrent
    assert len(limiter) == 0


async def test_fifo_wake_up_order() -> None:
    limiter = FetcherLimiter()
    release = asyncio.Event()
    holder = asyncio.create_task(hold(limiter, "k", ONE, release))
    await until(lambda: limiter.holders("k", ONE) == 1)
    order: list[int] = []

    async def call(i: int) -> None:
        async with limiter.slot("k", ONE):
            order.append(i)
            await asyncio.sleep(0)

    tasks = []
    for i in range(50):
        tasks.append(asyncio.create_task(call(i)))
        await until(lambda n=i + 1: limiter.waiting("k", ONE) == n)  # type: ignore[misc]
    release.set()
    await asyncio.gather(holder, *tasks)
    assert order == list(range(50))
    assert len(limiter) == 0


async def test_released_slot_is_handed_over_so_newcomers_cannot_overtake() -> None:
    limiter = FetcherLimiter()
    release = asyncio.Event()
    order: list[str] = []

    async def waiter(name: str) -> None:
        async with limiter.slot("k", ONE):
            order.append(name)
            await release.wait()

    async with limiter.slot("k", ONE):
        task = asyncio.create_task(waiter("queued"))
        await until(lambda: limiter.waiting("k", ONE) == 1)
    # Released without yielding: the slot already belongs to the queued waiter.
    assert limiter.holders("k", ONE) == 1
    assert limiter.waiting("k", ONE) == 0
    newcomer = asyncio.create_task(waiter("newcomer"))
    await until(lambda: limiter.waiting("k", ONE) == 1)  # the newcomer queues
    assert order == ["queued"]
    release.set()
    await asyncio.gather(task, newcomer)
    assert order == ["queued", "newcomer"]
    assert len(limiter) == 0


async def test_key_scope_limits_each_key_separately() -> None:
    limiter = FetcherLimiter()
    release = asyncio.Event()
    a = asyncio.create_task(hold(limiter, "a", ONE, release))
    b = asyncio.create_task(hold(limiter, "b", ONE, release))
    await until(lambda: limiter.holders("a", ONE) == 1 and limiter.holders("b", ONE) == 1)
    assert limiter.waiting("a", ONE) == limiter.waiting("b", ONE) == 0
    assert len(limiter) == 2
    release.set()
    await asyncio.gather(a, b)
    assert len(limiter) == 0


async def test_global_scope_limits_all_keys_together() -> None:
    limiter = FetcherLimiter()
    release = asyncio.Event()
    a = asyncio.create_task(hold(limiter, "a", GLOBAL_ONE, release))
    await until(lambda: limiter.holders("a", GLOBAL_ONE) == 1)
    b = asyncio.create_task(hold(limiter, "b", GLOBAL_ONE, release))
    await until(lambda: limiter.waiting("b", GLOBAL_ONE) == 1)
    # A key-scoped limit is a separate bucket: not blocked by the global one.
    async with limiter.slot("a", ONE):
        assert limiter.holders("a", ONE) == 1
    assert len(limiter) == 1
    release.set()
    await asyncio.gather(a, b)
    assert len(limiter) == 0


async def test_cancelled_waiter_leaves_the_queue() -> None:
    limiter = FetcherLimiter()
    release = asyncio.Event()
    holder = asyncio.create_task(hold(limiter, "k", ONE, release))
    await until(lambda: limiter.holders("k", ONE) == 1)
    order: list[int] = []

    async def call(i: int) -> None:
        async with limiter.slot("k", ONE):
            order.append(i)

    tasks = []
    for i in range(3):
        tasks.append(asyncio.create_task(call(i)))
        await until(lambda n=i + 1: limiter.waiting("k", ONE) == n)  # type: ignore[misc]
    tasks[1].cancel()
    await until(lambda: limiter.waiting("k", ONE) == 2)
    release.set()
    await asyncio.gather(holder, tasks[0], tasks[2])
    assert tasks[1].cancelled()
    assert order == [0, 2]
    assert len(limiter) == 0


async def test_cancelled_last_waiter_cleans_up() -> None:
    limiter = FetcherLimiter()
    release = asyncio.Event()
    holder = asyncio.create_task(hold(limiter, "k", ONE, release))
    await until(lambda: limiter.holders("k", ONE) == 1)
    waiter = asyncio.create_task(hold(limiter, "k", ONE, release))
    await until(lambda: limiter.waiting("k", ONE) == 1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limiter.waiting("k", ONE) == 0
    release.set()
    await holder
    assert len(limiter) == 0


async def test_waiter_cancelled_after_handover_passes_the_slot_on() -> None:
    limiter = FetcherLimiter()
    entered: list[str] = []

    async def call(name: str) -> None:
        async with limiter.slot("k", ONE):
            entered.append(name)

    async with limiter.slot("k", ONE):
        first = asyncio.create_task(call("first"))
        second = asyncio.create_task(call("second"))
        await until(lambda: limiter.waiting("k", ONE) == 2)
    # The slot was handed to ``first``, which has not resumed yet: cancel it now.
    assert limiter.holders("k", ONE) == 1
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await second
    assert entered == ["second"]
    assert len(limiter) == 0


async def test_cancelled_holder_hands_its_slot_to_the_next_waiter() -> None:
    limiter = FetcherLimiter()
    never = asyncio.Event()
    holder = asyncio.create_task(hold(limiter, "k", ONE, never))
    await until(lambda: limiter.holders("k", ONE) == 1)
    entered = asyncio.Event()

    async def call() -> None:
        async with limiter.slot("k", ONE):
            entered.set()

    waiter = asyncio.create_task(call())
    await until(lambda: limiter.waiting("k", ONE) == 1)
    holder.cancel()
    await asyncio.wait_for(entered.wait(), 5)
    await waiter
    assert holder.cancelled()
    assert len(limiter) == 0


async def test_timeout_while_waiting_does_not_leak() -> None:
    limiter = FetcherLimiter()
    release = asyncio.Event()
    holder = asyncio.create_task(hold(limiter, "k", ONE, release))
    await until(lambda: limiter.holders("k", ONE) == 1)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(hold(limiter, "k", ONE, release), 0.01)
    assert limiter.waiting("k", ONE) == 0
    release.set()
    await holder
    assert len(limiter) == 0


async def test_exception_in_body_releases() -> None:
    limiter = FetcherLimiter()
    with pytest.raises(RuntimeError, match="boom"):
        async with limiter.slot("k", ONE):
            raise RuntimeError("boom")
    assert len(limiter) == 0
    async with limiter.slot("k", ONE):
        assert limiter.holders("k", ONE) == 1


async def test_queue_full() -> None:
    limiter = FetcherLimiter()
    limit = RateLimit(max_concurrent=1, max_queue=2)
    release = asyncio.Event()
    tasks = [asyncio.create_task(hold(limiter, "k", limit, release))]
    await until(lambda: limiter.holders("k", limit) == 1)
    for n in (1, 2):
        tasks.append(asyncio.create_task(hold(limiter, "k", limit, release)))
        await until(lambda n=n: limiter.waiting("k", limit) == n)  # type: ignore[misc]
    with pytest.raises(FetcherQueueFullError) as caught:
        async with limiter.slot("k", limit):
            pytest.fail("must not enter")
    assert isinstance(caught.value, LayerCacheError)
    assert caught.value.key == "k"
    assert caught.value.max_queue == 2
    assert "2" in str(caught.value)
    # Another key has its own queue.
    async with limiter.slot("other", limit):
        pass
    release.set()
    await asyncio.gather(*tasks)
    assert len(limiter) == 0


async def test_max_queue_zero_never_waits() -> None:
    limiter = FetcherLimiter()
    limit = RateLimit(max_concurrent=2, max_queue=0)
    async with limiter.slot("k", limit), limiter.slot("k", limit):
        with pytest.raises(FetcherQueueFullError):
            await limiter.slot("k", limit).__aenter__()
    assert len(limiter) == 0


async def test_max_keys_refuses_new_keys_until_one_is_idle() -> None:
    limiter = FetcherLimiter(max_keys=2)
    async with limiter.slot("a", ONE), limiter.slot("b", ONE):
        with pytest.raises(FetcherQueueFullError, match="maximum of 2 keys"):
            await limiter.slot("c", ONE).__aenter__()
        async with limiter.slot("c", GLOBAL_ONE):  # the global bucket does not count
            assert len(limiter) == 3
    async with limiter.slot("c", ONE):
        assert len(limiter) == 1
    assert len(limiter) == 0


async def test_head_waiter_leaving_lets_a_wider_waiter_in() -> None:
    limiter = FetcherLimiter()
    three = RateLimit(max_concurrent=3)
    release = asyncio.Event()
    holder = asyncio.create_task(hold(limiter, "k", ONE, release))
    await until(lambda: limiter.holders("k", ONE) == 1)
    narrow = asyncio.create_task(hold(limiter, "k", ONE, release))
    await until(lambda: limiter.waiting("k", ONE) == 1)
    wide_entered = asyncio.Event()

    async def wide() -> None:
        async with limiter.slot("k", three):
            wide_entered.set()
            await release.wait()

    wide_task = asyncio.create_task(wide())
    await until(lambda: limiter.waiting("k", ONE) == 2)  # queued behind ``narrow``: FIFO
    assert not wide_entered.is_set()
    narrow.cancel()
    await asyncio.wait_for(wide_entered.wait(), 5)
    assert limiter.holders("k", ONE) == 2
    release.set()
    await asyncio.gather(holder, wide_task)
    assert len(limiter) == 0


async def test_slot_is_single_use() -> None:
    limiter = FetcherLimiter()
    slot = limiter.slot("k", ONE)
    async with slot:
        with pytest.raises(RuntimeError, match="single use"):
            await slot.__aenter__()


async def test_ten_thousand_waiters() -> None:
    limiter = FetcherLimiter()
    limit = RateLimit(max_concurrent=1, max_queue=20_000)
    order: list[int] = []

    async def call(i: int) -> None:
        async with limiter.slot("k", limit):
            order.append(i)

    started = time.perf_counter()
    async with limiter.slot("k", limit):
        tasks = [asyncio.create_task(call(i)) for i in range(10_000)]
        await until(lambda: limiter.waiting("k", limit) == 10_000)
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    assert order == list(range(10_000))
    assert len(limiter) == 0
    assert elapsed < 10  # linear: ~0.1 s here; a quadratic queue would take minutes


# == threads ====================================================================================

THREADS = 32


def run_threads(target: Callable[[int], None], count: int = THREADS) -> None:
    errors: list[BaseException] = []

    def wrapped(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive()
    if errors:
        raise errors[0]


@pytest.mark.parametrize("max_concurrent", [1, 4])
def test_sync_max_concurrent_under_32_threads(max_concurrent: int) -> None:
    limiter = SyncFetcherLimiter()
    limit = RateLimit(max_concurrent=max_concurrent)
    gauge = Gauge()
    start = threading.Barrier(THREADS)
    done = [0]

    def worker(_: int) -> None:
        start.wait(10)
        for _ in range(25):
            with limiter.slot("k", limit):
                gauge.enter()
                time.sleep(0)  # let other threads run while holding
                gauge.leave()
                with gauge.lock:
                    done[0] += 1

    run_threads(worker)
    assert done[0] == THREADS * 25
    assert 1 <= gauge.peak <= max_concurrent
    assert len(limiter) == 0


def test_sync_max_concurrent_slots_are_all_usable() -> None:
    limiter = SyncFetcherLimiter()
    limit = RateLimit(max_concurrent=4)
    together = threading.Barrier(4, timeout=5)

    def worker(_: int) -> None:
        with limiter.slot("k", limit):
            together.wait()  # breaks (fails the test) unless 4 hold at once

    run_threads(worker, 4)
    assert len(limiter) == 0


def test_sync_fifo_wake_up_order() -> None:
    limiter = SyncFetcherLimiter()
    order: list[int] = []

    def worker(i: int) -> None:
        with limiter.slot("k", ONE):
            order.append(i)

    threads = []
    with limiter.slot("k", ONE):
        for i in range(THREADS):
            thread = threading.Thread(target=worker, args=(i,))
            thread.start()
            threads.append(thread)
            wait_until(lambda n=i + 1: limiter.waiting("k", ONE) == n)  # type: ignore[misc]
    # Handed over on release: a newcomer now queues behind the 31 others.
    assert limiter.holders("k", ONE) == 1
    for thread in threads:
        thread.join(10)
    assert order == list(range(THREADS))
    assert len(limiter) == 0


def test_sync_key_and_global_scopes() -> None:
    limiter = SyncFetcherLimiter()
    gauge_key = Gauge()
    gauge_global = Gauge()
    start = threading.Barrier(THREADS)

    def worker(i: int) -> None:
        start.wait(10)
        for _ in range(10):
            with limiter.slot(f"k{i % 4}", GLOBAL_ONE):
                gauge_global.enter()
                time.sleep(0)
                gauge_global.leave()
            with limiter.slot(f"k{i % 4}", ONE):
                gauge_key.enter()
                time.sleep(0)
                gauge_key.leave()

    run_threads(worker)
    assert gauge_global.peak == 1  # one at a time across all keys
    assert 1 <= gauge_key.peak <= 4  # one per key, 4 keys
    assert len(limiter) == 0


def test_sync_different_keys_hold_at_once() -> None:
    limiter = SyncFetcherLimiter()
    together = threading.Barrier(4, timeout=5)

    def worker(i: int) -> None:
        with limiter.slot(f"k{i}", ONE):
            together.wait()

    run_threads(worker, 4)
    assert len(limiter) == 0


def test_sync_queue_full_and_max_keys() -> None:
    limiter = SyncFetcherLimiter(max_keys=2)
    limit = RateLimit(max_concurrent=1, max_queue=3)
    release = threading.Event()

    def worker(_: int) -> None:
        with limiter.slot("k", limit):
            release.wait(10)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    wait_until(lambda: limiter.holders("k", limit) == 1 and limiter.waiting("k", limit) == 3)
    with pytest.raises(FetcherQueueFullError), limiter.slot("k", limit):
        pytest.fail("must not enter")
    with limiter.slot("b", limit):
        with pytest.raises(FetcherQueueFullError, match="maximum of 2 keys"):
            limiter.slot("c", limit).__enter__()
        with limiter.slot("c", GLOBAL_ONE):
            assert len(limiter) == 3
    release.set()
    for thread in threads:
        thread.join(10)
    assert len(limiter) == 0


def test_sync_exception_in_body_releases() -> None:
    limiter = SyncFetcherLimiter()
    with pytest.raises(RuntimeError, match="boom"), limiter.slot("k", ONE):
        raise RuntimeError("boom")
    assert len(limiter) == 0
    slot = limiter.slot("k", ONE)
    with slot:
        assert limiter.holders("k", ONE) == 1
        with pytest.raises(RuntimeError, match="single use"):
            slot.__enter__()


def test_sync_wider_newcomer_queues_behind_a_narrow_waiter() -> None:
    limiter = SyncFetcherLimiter()
    three = RateLimit(max_concurrent=3)
    order: list[str] = []

    def call(name: str, limit: RateLimit) -> None:
        with limiter.slot("k", limit):
            order.append(name)

    with limiter.slot("k", ONE):
        narrow = threading.Thread(target=call, args=("narrow", ONE))
        narrow.start()
        wait_until(lambda: limiter.waiting("k", ONE) == 1)
        # A slot is free for a max_concurrent=3 caller, but FIFO: it queues.
        wide = threading.Thread(target=call, args=("wide", three))
        wide.start()
        wait_until(lambda: limiter.waiting("k", ONE) == 2)
        assert order == []
    # Released: narrow gets the slot, and wide (room for 3) goes along with it.
    narrow.join(5)
    wide.join(5)
    assert sorted(order) == ["narrow", "wide"]
    assert len(limiter) == 0


class Interrupted(Exception):
    pass


class _InterruptAfterHandover:
    """Stands in for a waiter's lock: the blocking acquire succeeds (the slot was handed
    over), then an interrupt arrives before the waiter returns."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls = 0

    def acquire(self) -> bool:
        self._lock.acquire()
        self._calls += 1
        if self._calls == 2:
            raise Interrupted
        return True

    def release(self) -> None:
        self._lock.release()


def test_sync_waiter_interrupted_after_handover_passes_the_slot_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from layercache._primitives import threads
    from layercache._sync import rate_limit

    class Waiter(threads.Waiter):
        def __init__(self) -> None:
            super().__init__()
            self._lock.release()
            self._lock = _InterruptAfterHandover()  # type: ignore[assignment]
            self._lock.acquire()

    limiter = SyncFetcherLimiter()
    entered: list[str] = []
    interrupted = threading.Event()

    def victim() -> None:
        try:
            with limiter.slot("k", ONE):
                entered.append("victim")
        except Interrupted:
            interrupted.set()

    def later() -> None:
        with limiter.slot("k", ONE):
            entered.append("later")

    with limiter.slot("k", ONE):
        monkeypatch.setattr(rate_limit, "Waiter", Waiter)
        first = threading.Thread(target=victim)
        first.start()
        wait_until(lambda: limiter.waiting("k", ONE) == 1)
        monkeypatch.undo()
        second = threading.Thread(target=later)
        second.start()
        wait_until(lambda: limiter.waiting("k", ONE) == 2)
    first.join(5)
    second.join(5)
    assert interrupted.is_set()
    assert entered == ["later"]
    assert len(limiter) == 0


@pytest.mark.skipif(sys.platform == "win32", reason="pthread_kill is POSIX")
def test_sync_interrupted_waiter_leaves_the_queue() -> None:
    """A signal (think KeyboardInterrupt) raised in a thread blocked in the queue."""
    assert threading.current_thread() is threading.main_thread()
    limiter = SyncFetcherLimiter()
    release = threading.Event()
    held = threading.Event()
    entered: list[str] = []

    def holder() -> None:
        with limiter.slot("k", ONE):
            held.set()
            release.wait(10)

    def later() -> None:
        with limiter.slot("k", ONE):
            entered.append("later")

    def raise_interrupted(signum: int, frame: Any) -> None:
        raise Interrupted

    def interrupt_main() -> None:
        wait_until(lambda: limiter.waiting("k", ONE) == 1)
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, raise_interrupted)
    try:
        holding = threading.Thread(target=holder)
        holding.start()
        assert held.wait(5)
        killer = threading.Thread(target=interrupt_main)
        killer.start()
        with pytest.raises(Interrupted), limiter.slot("k", ONE):
            pytest.fail("must not enter")
        killer.join(5)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert limiter.waiting("k", ONE) == 0
    after = threading.Thread(target=later)
    after.start()
    wait_until(lambda: limiter.waiting("k", ONE) == 1)
    release.set()
    holding.join(5)
    after.join(5)
    assert entered == ["later"]
    assert len(limiter) == 0


# == options ====================================================================================


def test_rate_limit_defaults() -> None:
    limit = RateLimit()
    assert (limit.max_concurrent, limit.scope, limit.max_queue) == (1, "key", 1000)


def test_coerce_rate_limit_shapes() -> None:
    assert coerce_rate_limit(None) is None
    assert coerce_rate_limit(False) is None
    assert coerce_rate_limit(True) == RateLimit()
    limit = RateLimit(max_concurrent=3, scope="global")
    assert coerce_rate_limit(limit) is limit
    assert coerce_rate_limit({"max_concurrent": 3, "scope": "global"}) == limit
    assert coerce_rate_limit({}) == RateLimit()


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("max_concurrent", 0),
        ("max_concurrent", -1),
        ("max_concurrent", 1.5),
        ("max_concurrent", True),
        ("max_concurrent", "2"),
        ("max_queue", -1),
        ("max_queue", 2.0),
        ("max_queue", None),
        ("scope", "keys"),
        ("scope", None),
    ],
)
def test_rate_limit_rejects_bad_values(field: str, bad: Any) -> None:
    with pytest.raises(ValueError, match=field):
        RateLimit(**{field: bad})
    with pytest.raises(ValueError, match=field):
        coerce_rate_limit({field: bad})


def test_coerce_rate_limit_unknown_name() -> None:
    with pytest.raises(TypeError, match="concurrency"):
        coerce_rate_limit({"concurrency": 2})


@pytest.mark.parametrize("bad", [1, "key", [("max_concurrent", 1)]])
def test_coerce_rate_limit_other_types(bad: Any) -> None:
    with pytest.raises(ValueError, match="fetcher_rate_limit"):
        coerce_rate_limit(bad)


@pytest.mark.parametrize("bad", [0, -5, True, 2.5])
def test_limiters_reject_bad_max_keys(bad: Any) -> None:
    with pytest.raises(ValueError, match="max_keys"):
        FetcherLimiter(max_keys=bad)
    with pytest.raises(ValueError, match="max_keys"):
        SyncFetcherLimiter(max_keys=bad)


def test_queue_full_error_pickles() -> None:
    import pickle

    error = FetcherQueueFullError("k", 5, "why")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.key, copy.max_queue, copy.message) == ("k", 5, "why")
    assert str(copy) == str(error)
