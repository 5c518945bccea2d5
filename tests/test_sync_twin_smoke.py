"""The generated thread-based twin runs the same orchestration (issue 5 builds it out).

These checks keep ``scripts/unasync.py`` honest: the generated ``SyncCacheStack`` must work, not
only type-check.
"""

from __future__ import annotations

import threading
import time

from layercache import MemoryLayer
from layercache._sync.stack import SyncCacheStack


def wait_until(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        time.sleep(0.002)


def test_32_threads_on_a_cold_key_cause_one_fetch() -> None:
    cache = SyncCacheStack([MemoryLayer()])
    calls = 0
    gate = threading.Event()

    def fetch() -> int:
        nonlocal calls
        calls += 1
        gate.wait(5)
        return 42

    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get("k", fetch))) for _ in range(32)
    ]
    for thread in threads:
        thread.start()
    wait_until(lambda: cache.get_metrics().stampede_dedupes == 31)
    gate.set()
    for thread in threads:
        thread.join(5)
    assert results == [42] * 32
    assert calls == 1


def test_stale_while_revalidate_refreshes_on_a_stack_thread() -> None:
    now = [1000.0]
    clock = lambda: now[0]  # noqa: E731
    cache = SyncCacheStack([MemoryLayer(clock=clock)], clock=clock, stale_while_revalidate=60)
    values = iter([1, 2])
    cache.get("k", lambda: next(values), ttl=10)
    now[0] += 20
    assert cache.get("k", lambda: next(values), ttl=10) == 1  # stale, at once
    wait_until(lambda: cache.get("k") == 2)
    assert cache.get_stats().background_refreshes == 0


def test_write_behind_flushes_on_close() -> None:
    class Remote:
        name, default_ttl, is_local = "remote", 300, False

        def __init__(self) -> None:
            self.data: dict[str, object] = {}

        def get(self, key: str) -> object:
            return self.data.get(key)

        def set(self, key: str, entry: object, ttl: float | None) -> None:
            self.data[key] = entry

        def delete(self, key: str) -> None:
            self.data.pop(key, None)

        def clear(self) -> None:
            self.data.clear()

    remote = Remote()
    with SyncCacheStack(
        [MemoryLayer(), remote],
        write_strategy="write-behind",
        write_behind={"flush_interval": 60},
    ) as cache:
        for i in range(50):
            cache.set(f"k{i}", i)
        cache.delete("k0")
    assert sorted(remote.data) == sorted(f"k{i}" for i in range(1, 50))
