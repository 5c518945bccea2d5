"""The generated thread twins of rate_limit and write_behind under many threads switching every
microsecond (``sys.setswitchinterval(1e-6)``): the hand-off of a slot, the bounds, the one
flusher and the one flush at a time hold, and nothing queued is lost."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from layercache._exceptions import FetcherQueueFullError
from layercache._options import RateLimit
from layercache._sync.rate_limit import FetcherLimiter
from layercache._sync.write_behind import PendingOp, WriteBehindQueue
from polling import eventually

THREADS = 32
ROUNDS = 200


# Every test here runs with threads preempted every microsecond (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("fast_switching")


def run_threads(target: Callable[[int], None], count: int = THREADS) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def wrapped(i: int) -> None:
        try:
            start.wait(10)
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


class Gauge:
    """Concurrent holders per scope, and the most seen at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.current: dict[str, int] = {}
        self.peak: dict[str, int] = {}

    def enter(self, scope: str) -> None:
        with self.lock:
            now = self.current[scope] = self.current.get(scope, 0) + 1
            self.peak[scope] = max(self.peak.get(scope, 0), now)

    def leave(self, scope: str) -> None:
        with self.lock:
            self.current[scope] -= 1


def test_limiter_bounds_hold_with_mixed_limits_and_scopes() -> None:
    """Narrow and wide callers share keys (the head of a queue is never overtaken), a global
    scope runs beside them, and a bounded queue sheds load: every bucket ends empty."""
    limiter = FetcherLimiter(max_keys=3)
    narrow = RateLimit(max_concurrent=1, max_queue=THREADS)
    wide = RateLimit(max_concurrent=3, max_queue=THREADS)
    tight = RateLimit(max_concurrent=2, scope="global", max_queue=4)
    gauge = Gauge()
    shed = [0]
    done = [0]

    def worker(i: int) -> None:
        for n in range(ROUNDS):
            key = f"k{(i + n) % 3}"
            limit = narrow if (i + n) % 2 else wide
            with limiter.slot(key, limit):
                gauge.enter(key)
                time.sleep(0)
                gauge.leave(key)
            try:
                with limiter.slot(key, tight):
                    gauge.enter("global")
                    time.sleep(0)
                    gauge.leave("global")
            except FetcherQueueFullError:
                with gauge.lock:
                    shed[0] += 1
            with gauge.lock:
                done[0] += 1

    run_threads(worker)
    assert done[0] == THREADS * ROUNDS
    assert all(peak <= 3 for key, peak in gauge.peak.items() if key != "global")
    assert gauge.peak["global"] <= 2
    assert shed[0] < THREADS * ROUNDS  # some got through
    assert len(limiter) == 0
    for key in ("k0", "k1", "k2"):
        assert limiter.holders(key, narrow) == 0
        assert limiter.waiting(key, narrow) == 0


def test_limiter_hands_slots_over_in_arrival_order_under_contention() -> None:
    limiter = FetcherLimiter()
    one = RateLimit(max_concurrent=1, max_queue=THREADS)
    order: list[int] = []

    def worker(i: int) -> None:
        eventually(lambda: limiter.waiting("k", one) >= i, what=f"{i} queued before {i}")
        with limiter.slot("k", one):
            order.append(i)

    with limiter.slot("k", one):
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
        for thread in threads:
            thread.start()
        eventually(lambda: limiter.waiting("k", one) == THREADS, what="all queued")
    for thread in threads:
        thread.join(30)
    assert order == list(range(THREADS))
    assert len(limiter) == 0


class Store:
    """A flush target: applies batches, and fails when a flush overlaps another."""

    def __init__(self, fail_every: int = 0) -> None:
        self.data: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.flushing = 0
        self.overlaps = 0
        self.batches = 0
        self.fail_every = fail_every

    def flush(self, batch: list[tuple[str, PendingOp]]) -> None:
        with self.lock:
            self.flushing += 1
            self.overlaps += self.flushing > 1
            self.batches += 1
            fail = self.fail_every and self.batches % self.fail_every == 0
        try:
            time.sleep(0)
            if fail:
                raise RuntimeError("flush failed")
            keys = [key for key, _ in batch]
            assert len(keys) == len(set(keys))  # a key is written once per batch
            for key, (kind, value) in batch:
                if kind == "set":
                    self.data[key] = value
                else:
                    self.data.pop(key, None)
        finally:
            with self.lock:
                self.flushing -= 1


def flusher_threads() -> int:
    return sum(t.name == "layercache-write-behind" for t in threading.enumerate())


@pytest.mark.parametrize("fail_every", [0, 7])
def test_write_behind_loses_nothing_under_many_writers(fail_every: int) -> None:
    """Each thread writes and deletes its own keys many times through a small queue (every
    writer meets backpressure), while readers look at pending operations: one flush at a time,
    at most one flusher, and after close() each key holds its last operation."""
    store = Store(fail_every)
    before = flusher_threads()
    queue = WriteBehindQueue(store.flush, batch_size=4, flush_interval=0.001, max_queue=8)
    last: dict[str, Any] = {}
    last_lock = threading.Lock()
    most_flushers = [0]

    def worker(i: int) -> None:
        for n in range(ROUNDS):
            key = f"t{i}:{n % 5}"
            if n % 7 == 6:
                op: PendingOp = ("delete", None)
            else:
                op = ("set", (i, n))
            while True:
                try:
                    queue.put(key, op)
                    break
                except RuntimeError:  # a failed flush reached the writer: retry
                    continue
            with last_lock:
                last[key] = op
            seen = queue.pending(key)
            assert seen is None or seen[0] in ("set", "delete")
            most_flushers[0] = max(most_flushers[0], flusher_threads() - before)

    run_threads(worker)
    for _ in range(100):
        try:
            queue.close()
            break
        except RuntimeError:  # a failed flush is kept: close again
            continue
    assert len(queue) == 0
    assert store.overlaps == 0
    assert most_flushers[0] <= 1
    eventually(lambda: flusher_threads() <= before, what="the flusher thread ended")
    expected = {key: op[1] for key, op in last.items() if op[0] == "set"}
    assert store.data == expected


def test_write_behind_discard_during_flushes() -> None:
    """discard() waits for the batch in flight and then drops what it selects, while writers
    keep putting: every key ends either written by a later put or absent."""
    store = Store()
    queue = WriteBehindQueue(store.flush, batch_size=3, flush_interval=0.001, max_queue=6)
    stop = threading.Event()

    def discarder() -> None:
        while not stop.is_set():
            queue.discard(lambda k: k.endswith(":0"))
            time.sleep(0)

    side = threading.Thread(target=discarder)
    side.start()
    try:

        def worker(i: int) -> None:
            for n in range(40):
                queue.put(f"t{i}:{n % 3}", ("set", n))

        run_threads(worker, 16)
    finally:
        stop.set()
        side.join(10)
    queue.close()
    assert store.overlaps == 0
    assert len(queue) == 0
    for i in range(16):
        # Keys not discarded hold their last value; a discarded one, if present, an older
        # value that was flushed before the discard (never a newer one than the last put).
        assert store.data[f"t{i}:1"] == 37
        assert store.data[f"t{i}:2"] == 38
        assert store.data.get(f"t{i}:0", 39) <= 39
