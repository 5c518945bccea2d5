"""warm(): priorities, the concurrency bound, skipping fresh keys, errors, progress, events.

Runs over every stack kind (memory, memory+disk, memory+redis); the SyncCacheStack twin is
generated (scripts/unasync_tests.py) and runs the same checks on real threads.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from stack_support import EventLog, StackEnv, eventually

from _twins_async import Event, join, spawn, wait_event
from conftest import BuildStack
from layercache import WarmEntry, WarmSummary


class Gauge:
    """Counts fetchers running at once (from any thread) and remembers the most seen."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.started: list[str] = []

    def enter(self, key: str) -> None:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.started.append(key)

    def leave(self) -> None:
        with self.lock:
            self.running -= 1


async def test_warm_stores_every_key_like_get_with_its_options(env: StackEnv) -> None:
    log = EventLog(env.cache, "warm")
    summary = await env.cache.warm(
        [
            WarmEntry("w:1", lambda: {"n": 1}, options={"ttl": 120, "tags": ["warm"]}),
            ("w:2", lambda: [2]),
        ]
    )
    assert isinstance(summary, WarmSummary)
    assert (summary.warmed, summary.failed, summary.skipped) == (2, 0, 0)
    assert summary.errors == ()
    assert summary.duration >= 0
    names = [layer.name for layer in env.layers]
    assert await env.in_layers("w:1") == names
    assert await env.layer_values("w:2") == [[2]] * len(names)
    info = await env.cache.inspect("w:1")
    assert info is not None
    assert info.tags == ("warm",)
    assert info.fresh_ttl == pytest.approx(120, abs=0.5)
    assert sorted(e["key"] for e in log.events) == ["w:1", "w:2"]
    # The tags were recorded: an invalidation reaches the warmed key.
    assert await env.cache.invalidate_by_tag("warm") == 1
    assert await env.in_layers("w:1") == []


async def test_fresh_keys_are_skipped_without_calling_their_fetcher(env: StackEnv) -> None:
    await env.cache.set("fresh", "old", ttl=30)
    await env.cache.set("expired", "old", ttl=10)
    env.clock.advance(20)
    calls: list[str] = []

    def fetcher_for(key: str) -> Any:
        def fetch() -> str:
            calls.append(key)
            return "new"

        return fetch

    summary = await env.cache.warm(
        [(k, fetcher_for(k)) for k in ("fresh", "expired", "absent")], concurrency=1
    )
    assert (summary.warmed, summary.skipped, summary.failed) == (2, 1, 0)
    assert calls == ["expired", "absent"]
    assert await env.cache.get("fresh") == "old"
    assert await env.cache.get("expired") == "new"
    assert await env.cache.get("absent") == "new"


async def test_higher_priority_first_and_equal_priorities_keep_their_order(
    env: StackEnv,
) -> None:
    gauge = Gauge()

    def fetcher_for(key: str) -> Any:
        def fetch() -> str:
            gauge.enter(key)
            gauge.leave()
            return key

        return fetch

    specs = [("low-a", 0), ("high", 5), ("low-b", 0), ("mid", 1), ("low-c", 0), ("neg", -3)]
    progress: list[tuple[int, int]] = []
    summary = await env.cache.warm(
        [WarmEntry(k, fetcher_for(k), priority=p) for k, p in specs],
        concurrency=1,
        progress=lambda done, total: progress.append((done, total)),
    )
    assert summary.warmed == 6
    assert gauge.started == ["high", "mid", "low-a", "low-b", "low-c", "neg"]
    assert progress == [(n, 6) for n in range(1, 7)]


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_at_most_concurrency_fetchers_run_at_once(
    build_stack: BuildStack, concurrency: int
) -> None:
    env = await build_stack()
    gauge = Gauge()
    gate = Event()

    def fetcher_for(key: str) -> Any:
        async def fetch() -> str:
            gauge.enter(key)
            try:
                await wait_event(gate)
            finally:
                gauge.leave()
            return key

        return fetch

    keys = [f"c:{n}" for n in range(8)]
    handle = spawn(env.cache.warm, [(k, fetcher_for(k)) for k in keys], concurrency=concurrency)
    # The workers fill up to the bound, and stay there while the fetches are held.
    await eventually(lambda: gauge.running == concurrency, "the bound's worth of fetchers")
    # The first entries in order were taken (threads may start them in any order).
    assert sorted(gauge.started) == keys[:concurrency]
    gate.set()
    summary = await join(handle)
    assert summary.warmed == 8
    assert gauge.most == concurrency
    assert sorted(gauge.started) == keys
    assert await env.cache.get_many(keys) == keys


async def test_concurrency_below_one_is_refused_before_any_fetch(env: StackEnv) -> None:
    calls: list[int] = []
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="concurrency"):
            await env.cache.warm([("k", lambda: calls.append(1))], concurrency=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="control character"):
        await env.cache.warm([("bad\nkey", lambda: calls.append(1))])
    with pytest.raises(ValueError, match="not callable"):
        await env.cache.warm([("k", "not callable")])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="priority"):
        await env.cache.warm([WarmEntry("k", lambda: 1, priority="high")])  # type: ignore[arg-type]
    assert calls == []
    empty = await env.cache.warm([])
    assert (empty.warmed, empty.failed, empty.skipped) == (0, 0, 0)


async def test_a_fetcher_error_is_raised_after_the_running_fetches_settle(env: StackEnv) -> None:
    first_done = Event()
    slow_started = Event()
    calls: list[str] = []

    async def boom() -> str:
        calls.append("fail")
        # Fails only once the other worker runs its fetch.
        await wait_event(slow_started)
        raise LookupError("origin down")

    async def slow() -> str:
        calls.append("slow")
        slow_started.set()
        # Ends only once the failure was counted (progress runs after each entry).
        await wait_event(first_done)
        return "slow value"

    def late() -> str:
        calls.append("late")
        return "late value"

    entries = [
        WarmEntry("fail", boom, priority=3),
        WarmEntry("slow", slow, priority=2),
        WarmEntry("late-1", late, priority=1),
        WarmEntry("late-2", late, priority=0),
    ]
    with pytest.raises(LookupError, match="origin down"):
        await env.cache.warm(entries, concurrency=2, progress=lambda d, t: first_done.set())
    # The fetch already running when the error came finished and stored; none started after.
    assert sorted(calls) == ["fail", "slow"]
    assert await env.cache.get("slow") == "slow value"
    assert await env.in_layers("late-1") == []
    assert await env.in_layers("fail") == []


async def test_continue_on_error_counts_failures_and_warms_the_rest(env: StackEnv) -> None:
    def boom() -> str:
        raise LookupError("no such row")

    summary = await env.cache.warm(
        [("ok:1", lambda: 1), ("bad", boom), ("ok:2", lambda: 2)],
        concurrency=2,
        continue_on_error=True,
    )
    assert (summary.warmed, summary.failed, summary.skipped) == (2, 1, 0)
    assert [key for key, _ in summary.errors] == ["bad"]
    assert isinstance(summary.errors[0][1], LookupError)
    assert await env.cache.get_many(["ok:1", "ok:2", "bad"]) == [1, 2, None]


async def test_a_progress_callback_that_raises_does_not_stop_the_warm_up(env: StackEnv) -> None:
    errors = EventLog(env.cache, "error")

    def bad_progress(done: int, total: int) -> None:
        raise RuntimeError("progress bar broke")

    summary = await env.cache.warm([("p:1", lambda: 1), ("p:2", lambda: 2)], progress=bad_progress)
    assert summary.warmed == 2
    assert len(errors.events) == 2
    assert all(isinstance(e["error"], RuntimeError) for e in errors.events)


async def test_warm_under_a_generation_stores_the_rendered_key(build_stack: BuildStack) -> None:
    env = await build_stack(generation=7)
    await env.cache.warm([("g", lambda: "value")])
    assert await env.in_layers("v7:g") == [layer.name for layer in env.layers]
    assert await env.cache.get("g") == "value"
    summary = await env.cache.warm([("g", lambda: "other")])
    assert summary.skipped == 1
