"""The one recovery mechanism (``_async/recovery.py``): Backlog + catch_up.

Layers, the tag index and the bus all replay through it, so its rules are checked here on
their own: one replay at a time, items popped only once replayed (by identity), a fence that
covers what was missed before it and keeps what is missed while it runs, a failed fence raised
again, and "back in service" decided under the lock that guards remembering.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from layercache._async.recovery import Backlog, catch_up


def weigh(item: tuple[str, Any]) -> int:
    kind, arg = item
    return len(arg) if kind == "delete" else 1


async def replay_into(log: list[Any], backlog: Backlog, during: Any = None) -> Any:
    async def replay(batch: list[tuple[str, Any]]) -> list[Any]:
        if during is not None:
            await during(batch)
        log.append([item[1] for item in batch])
        with backlog.lock:
            backlog.pop(batch)
        return [("replayed", len(batch))]

    return replay


async def test_consecutive_items_of_a_kind_replay_as_one_batch_in_order() -> None:
    backlog = Backlog(100, weigh)
    with backlog.lock:
        for item in [
            ("delete", ("a",)),
            ("delete", ("b", "c")),
            ("pattern", "x*"),
            ("delete", ("d",)),
        ]:
            assert backlog.push(item)
    backlog.down_until = 1.0
    assert backlog.claim()
    log: list[Any] = []
    changes = await catch_up(
        backlog,
        fence=lambda: pytest.fail("not fenced"),  # type: ignore[arg-type,return-value]
        replay=await replay_into(log, backlog),
        batch_kind="delete",
        limit=10,
    )
    assert log == [[("a",), ("b", "c")], ["x*"], [("d",)]]
    assert changes == [("replayed", 2), ("replayed", 1), ("replayed", 1)]
    assert backlog.down_until is None
    assert not backlog.probing
    assert backlog.size == 0


async def test_one_replay_at_a_time() -> None:
    backlog = Backlog(10)
    first = backlog.claim()
    assert first
    assert not backlog.claim()
    backlog.release(first)
    second = backlog.claim()
    assert second
    backlog.release(first)  # a stale release (its replay finished already) is ignored
    assert not backlog.claim()


async def test_past_the_bound_the_queue_becomes_a_fence() -> None:
    backlog = Backlog(3, weigh)
    with backlog.lock:
        assert backlog.push(("delete", ("a", "b")))
        assert not backlog.push(("delete", ("c", "d")))  # 4 keys > 3: fenced
    assert backlog.fenced
    assert not backlog.queue
    assert backlog.size == 0


async def test_what_is_missed_while_the_fence_runs_is_replayed_after_it() -> None:
    backlog = Backlog(10)
    with backlog.lock:
        backlog.push(("delete", ("before",)))
        backlog.fence()
    backlog.down_until = 1.0
    assert backlog.claim()
    order: list[str] = []

    async def fence() -> list[Any]:
        order.append("fence")
        with backlog.lock:  # remembered while the clear is in flight: not covered by it
            backlog.push(("delete", ("during",)))
        await asyncio.sleep(0)
        return [("clear",)]

    log: list[Any] = []
    changes = await catch_up(
        backlog, fence=fence, replay=await replay_into(log, backlog), batch_kind=None, limit=1
    )
    assert order == ["fence"]
    assert log == [[("during",)]]  # "before" was covered by the fence
    assert changes == [("clear",), ("replayed", 1)]
    assert backlog.down_until is None


async def test_a_failed_fence_is_raised_and_the_target_stays_fenced() -> None:
    backlog = Backlog(10)
    with backlog.lock:
        backlog.fence()
    assert backlog.claim()

    async def fence() -> list[Any]:
        with backlog.lock:
            backlog.push(("delete", ("during",)))
        raise ConnectionError("still down")

    with pytest.raises(ConnectionError):
        await catch_up(
            backlog,
            fence=fence,
            replay=await replay_into([], backlog),
            batch_kind=None,
            limit=1,
        )
    assert backlog.fenced  # the next recovery clears again (covering "during" too)
    assert not backlog.queue
    backlog.fail(5.0)
    assert backlog.down_until == 5.0
    assert not backlog.probing


async def test_an_item_remembered_during_a_replay_is_replayed_by_that_replay() -> None:
    """finish() decides "back in service" under the lock remembering takes: an item pushed
    after the replay's last look is still seen, never stranded in a backlog nobody replays."""
    backlog = Backlog(10)
    with backlog.lock:
        backlog.push(("delete", ("first",)))
    backlog.down_until = 1.0
    assert backlog.claim()
    pushed = False

    async def during(batch: list[Any]) -> None:
        nonlocal pushed
        if not pushed:
            pushed = True
            with backlog.lock:
                backlog.push(("delete", ("late",)))

    log: list[Any] = []
    await catch_up(
        backlog,
        fence=lambda: pytest.fail("not fenced"),  # type: ignore[arg-type,return-value]
        replay=await replay_into(log, backlog, during),
        batch_kind=None,
        limit=1,
    )
    assert log == [[("first",)], [("late",)]]
    assert backlog.down_until is None


async def test_pop_stops_at_an_item_a_fence_replaced() -> None:
    backlog = Backlog(10)
    first = ("delete", ("a",))
    with backlog.lock:
        backlog.push(first)
    batch = backlog.next_batch(None, 1)
    with backlog.lock:
        backlog.fence()  # the queue was replaced while the batch was replayed
        newer = ("delete", ("b",))
        backlog.push(newer)
        assert backlog.pop(batch) == []
    assert list(backlog.queue) == [newer]


async def test_the_tail_step_runs_until_it_has_nothing_left() -> None:
    backlog = Backlog(10)
    backlog.down_until = 1.0
    assert backlog.claim()
    refills = ["a", "b", "c"]
    dropped: list[str] = []

    async def tail() -> bool:
        if not refills:
            return False
        dropped.append(refills.pop(0))
        return True

    await catch_up(
        backlog,
        fence=lambda: pytest.fail("not fenced"),  # type: ignore[arg-type,return-value]
        replay=await replay_into([], backlog),
        batch_kind=None,
        limit=1,
        tail=tail,
    )
    assert dropped == ["a", "b", "c"]
    assert backlog.down_until is None


def test_threads_remembering_during_replays_lose_nothing(fast_switching: None) -> None:
    """The thread twin under preemption every microsecond: 8 threads remember 400 items
    each while replayers keep catching up. Every item is replayed exactly once (no fence:
    the bound is above the total), and the backlog ends empty and in service."""
    import threading

    from layercache._sync.recovery import Backlog as SyncBacklog
    from layercache._sync.recovery import catch_up as sync_catch_up

    backlog = SyncBacklog(100_000)
    replayed: list[Any] = []
    replay_lock = threading.Lock()

    def replay(batch: list[tuple[str, Any]]) -> list[Any]:
        with replay_lock:
            replayed.extend(item[1] for item in batch)
        with backlog.lock:
            backlog.pop(batch)
        return []

    def run_replay() -> None:
        claim = backlog.claim()
        if claim:
            try:
                sync_catch_up(
                    backlog,
                    fence=lambda: [],
                    replay=replay,
                    batch_kind="x",
                    limit=7,
                )
            finally:
                backlog.release(claim)

    def remember(thread: int) -> None:
        for i in range(400):
            with backlog.lock:
                if backlog.down_until is None:
                    backlog.down_until = 0.0
                assert backlog.push(("x", (thread, i)))
            if i % 25 == 0:
                run_replay()

    threads = [threading.Thread(target=remember, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive()
    run_replay()
    assert sorted(replayed) == sorted((t, i) for t in range(8) for i in range(400))
    assert not backlog.queue
    assert backlog.size == 0
    assert backlog.down_until is None
    assert not backlog.probing
