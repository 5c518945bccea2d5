"""Closing a write-behind queue while the flusher is writing its last batch.

Regression: ``flush_all`` (which ``aclose``/``close`` run) looked only at the operations still
queued. When the background flusher had just taken the last batch, the queue looked empty, so
closing returned at once; when that batch then failed it was put back into a closed queue that
nobody flushed again: the write was lost although closing "flushed everything".
"""

from __future__ import annotations

import asyncio
from typing import Any

from layercache._async.write_behind import PendingOp, WriteBehindQueue


async def test_close_waits_for_the_batch_in_flight_and_retries_it_when_it_fails() -> None:
    entered = asyncio.Event()
    release = asyncio.Event()
    calls = 0
    landed: dict[str, Any] = {}

    async def flush(batch: list[tuple[str, PendingOp]]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            entered.set()
            await release.wait()
            raise RuntimeError("the first flush fails")
        for key, (kind, value) in batch:
            if kind == "set":
                landed[key] = value

    queue = WriteBehindQueue(flush, batch_size=1, flush_interval=0.001, max_queue=8)
    await queue.put("a", ("set", 1))
    await asyncio.wait_for(entered.wait(), 5)  # the flusher holds the only batch now
    assert len(queue) == 0
    assert queue.pending("a") == ("set", 1)
    closing = asyncio.create_task(queue.aclose())
    for _ in range(5):
        await asyncio.sleep(0)  # let aclose() run as far as it goes before the batch lands
    release.set()
    await asyncio.wait_for(closing, 5)
    assert landed == {"a": 1}
    assert len(queue) == 0
    assert queue.pending("a") is None
