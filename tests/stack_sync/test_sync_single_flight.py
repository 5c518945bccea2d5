"""Thread-only single-flight behaviour of SyncCacheStack.

The shared behaviour (one fetch per cold key across 100 threads, errors reaching every waiter,
fetch timeouts) lives in the generated twin tests/generated_sync/stack/test_twin_single_flight.py;
what is here has no asyncio counterpart, or asserts what the twin does not.
"""

from __future__ import annotations

import threading

import pytest
from stack_support import RecordingLayer

from layercache import FetchTimeoutError, SyncCacheStack


def test_a_fetch_abandoned_after_its_timeout_stores_nothing_when_it_returns() -> None:
    # A thread cannot be cancelled: the timed-out fetch goes on on a worker thread of the
    # stack. When it finally returns, its value must be dropped, not written to the layers.
    # A user layer, because close() of a MemoryLayer would drop what was stored.
    layer = RecordingLayer("recording")
    cache = SyncCacheStack([layer])
    release = threading.Event()
    returned = threading.Event()

    def late() -> str:
        release.wait(5)
        returned.set()
        return "late"

    try:
        with pytest.raises(FetchTimeoutError):
            cache.get("slow", late, fetch_timeout=0.05)
        release.set()
    finally:
        # close() joins the stack's worker threads: whatever the abandoned fetch led to is done.
        cache.close()
    assert returned.is_set(), "the abandoned fetch did not return before close()"
    assert "slow" not in layer.data
    assert ("set", "slow") not in layer.calls
