"""Threads a SyncCacheStack owns: timed fetches and background refreshes run on the stack's own
bounded pools, and close() leaves none of them behind."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

from sync_stack_support import Held

from layercache import MemoryLayer, SyncCacheStack
from layercache.testing import ManualClock
from polling import eventually


def _stack_threads(before: set[threading.Thread] | None = None) -> list[str]:
    """Worker threads alive now (started after ``before``: other tests' stacks may have
    abandoned fetches still blocked in theirs)."""
    return [
        t.name
        for t in threading.enumerate()
        if t.name.startswith(("layercache-fetch", "layercache-refresh"))
        and (before is None or t not in before)
    ]


def test_timed_fetches_and_refreshes_run_on_the_stacks_threads_and_stop_on_close() -> None:
    before = set(threading.enumerate())
    clock = ManualClock()
    cache = SyncCacheStack([MemoryLayer(ttl=60, clock=clock)], clock=clock, fetch_timeout=5)
    seen: list[str] = []

    def fetch() -> str:
        seen.append(threading.current_thread().name)
        return "v1"

    assert cache.get("k", fetch, ttl=10, stale_while_revalidate=60) == "v1"
    # fetch_timeout: the fetcher ran on a worker of this stack (the caller waited on it).
    assert len(seen) == 1
    assert seen[0].startswith("layercache-fetch")
    clock.advance(11)
    refresh = Held("v2")
    # Stale: served at once while a background refresh runs on the refresh pool.
    assert cache.get("k", refresh, ttl=10, stale_while_revalidate=60) == "v1"
    eventually(refresh.started.is_set, what="the background refresh to start")
    assert any(name.startswith("layercache-refresh") for name in _stack_threads(before))
    refresh.release.set()
    eventually(lambda: cache.get("k") == "v2", what="the refreshed value")
    cache.close()
    assert _stack_threads(before) == [], "close() left worker threads running"


def test_two_stacks_have_separate_workers() -> None:
    first = SyncCacheStack([MemoryLayer(ttl=60)], fetch_timeout=5)
    second = SyncCacheStack([MemoryLayer(ttl=60)], fetch_timeout=5)
    try:
        assert first.get("a", lambda: 1) == 1
        assert second.get("a", lambda: 2) == 2
        first.close()
        # Closing one stack does not stop the other's workers.
        assert second.get("b", lambda: threading.current_thread().name).startswith(
            "layercache-fetch"
        )
    finally:
        first.close()
        second.close()


def test_a_fetch_abandoned_after_its_timeout_does_not_keep_the_process_alive() -> None:
    # A fetcher that never returns is abandoned by its caller after fetch_timeout; its worker
    # thread is a daemon, so the interpreter still exits (ThreadPoolExecutor's would be joined).
    script = textwrap.dedent(
        """
        import threading
        from layercache import FetchTimeoutError, MemoryLayer, SyncCacheStack

        cache = SyncCacheStack([MemoryLayer()], fetch_timeout=0.2)
        try:
            cache.get("k", threading.Event().wait)
        except FetchTimeoutError:
            print("timed out", flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "timed out"
