# DO NOT EDIT: generated from tests/stack/test_context_propagation.py
# by scripts/unasync_tests.py. Change the async source and run
# `python scripts/unasync_tests.py`.
"""Fetchers see the caller's context variables wherever they run: inline, on a worker under a
fetch timeout, and in a background refresh (a request's trace span or tenant id must follow the
fetch it started, in the thread stack as in the asyncio one)."""

from __future__ import annotations

import contextvars

from twin_stack_support import StackEnv, eventually

from layercache import MemoryLayer, SyncCacheStack
from layercache.testing import ManualClock

REQUEST = contextvars.ContextVar("request", default="none")


def test_fetcher_under_a_timeout_sees_the_callers_context(memory_env: StackEnv) -> None:
    seen: list[str] = []

    def fetch() -> str:
        seen.append(REQUEST.get())
        return "v"

    REQUEST.set("req-1")
    assert memory_env.cache.get("k", fetch, fetch_timeout=5) == "v"
    assert seen == ["req-1"]


def test_background_refresh_sees_the_context_that_started_it(clock: ManualClock) -> None:
    cache = SyncCacheStack([MemoryLayer(ttl=10, clock=clock)], clock=clock)
    seen: list[str] = []

    def fetch() -> str:
        seen.append(REQUEST.get())
        return f"v{len(seen)}"

    try:
        REQUEST.set("req-a")
        assert cache.get("k", fetch, ttl=10, stale_while_revalidate=60) == "v1"
        clock.advance(11)
        REQUEST.set("req-b")
        assert cache.get("k", fetch, ttl=10, stale_while_revalidate=60) == "v1"  # stale
        eventually(lambda: len(seen) == 2, "the background refresh ran")
        assert seen == ["req-a", "req-b"]
    finally:
        cache.close()
