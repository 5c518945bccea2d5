"""Issue 3, point 1: stale-while-revalidate.

Past its fresh TTL and inside the window a value is returned at once while exactly one
background refresh runs (single-flighted with foreground fetches, bounded by
``background_refresh_timeout``, its failure never surfacing); past the window the read fetches
in the foreground.
"""

from __future__ import annotations

from typing import Any

from freshness_support import (
    BuildStack,
    EventLog,
    Gate,
    Value,
    eventually,
    eventually_async,
    within,
)

from _twins_async import join_all, spawn
from layercache import CacheStack, Entry

# Fresh for 10 s, then served stale (with a refresh) for 100 s more.
SWR: dict[str, Any] = {"ttl": 10, "stale_while_revalidate": 100}


async def test_stale_value_returned_at_once_with_exactly_one_refresh(
    build_stack: BuildStack,
) -> None:
    env = await build_stack()
    log = EventLog(env.cache, "stale_serve")
    await env.cache.set("k", "v1", **SWR)
    env.clock.advance(15)  # past fresh (10 s), inside the window (110 s)
    gate = Gate("v2")

    # 50 concurrent stale readers, the fetcher blocked: every read still returns at once.
    # 50 stale reads with a blocked fetcher.
    results = await join_all(
        [spawn(env.cache.get, "k", gate.fetch, **SWR) for _ in range(50)], timeout=2.0
    )
    assert results == ["v1"] * 50
    await gate.wait_started()
    assert gate.calls == 1, "50 stale readers must start exactly one background refresh"
    assert env.cache.get_stats().background_refreshes == 1

    stale = log.of("stale_serve")
    assert len(stale) == 50
    assert all(e["key"] == "k" and e["state"] == "stale-while-revalidate" for e in stale)
    assert {e["layer"] for e in stale} == {"memory"}
    metrics = env.cache.get_metrics()
    assert metrics.stale_hits == 50
    assert metrics.refreshes == 0, "counted before the refresh completed"

    # Still stale while the refresh runs: more readers neither wait nor start another one.
    assert await within(spawn(env.cache.get, "k", gate.fetch, **SWR), "a stale read") == "v1"
    assert gate.calls == 1

    refreshed_at = env.clock()
    gate.release()
    await eventually(
        lambda: env.cache.get_stats().background_refreshes == 0, "the refresh to finish"
    )
    assert env.cache.get_metrics().refreshes == 1
    # The refreshed value is served from now on, fresh, from every layer.
    assert await env.cache.get("k") == "v2"
    for entry in await env.entries("k"):
        assert entry is not None
        assert entry.value == "v2"
        assert entry.fresh_until is not None
        assert abs(entry.fresh_until - (refreshed_at + 10)) < 1e-3
    assert gate.calls == 1
    assert len(log.of("stale_serve")) == 51, "a fresh value is not a stale serve"


async def test_stale_value_only_in_lower_layer(build_layered: BuildStack) -> None:
    env = await build_layered()
    lower = env.lower_name
    log = EventLog(env.cache, "stale_serve")
    # L1 keeps the value a shorter stale window than the lower layer.
    opts: dict[str, Any] = {"ttl": 10, "stale_while_revalidate": {"memory": 5, lower: 100}}
    await env.cache.set("k", "v1", **opts)
    env.clock.advance(20)  # memory's copy is gone (15 s), the lower one is inside its window
    assert env.memory.get("k") is None
    gate = Gate("v2")
    assert await within(spawn(env.cache.get, "k", gate.fetch, **opts), "a stale read") == "v1"
    assert [(e["state"], e["layer"]) for e in log.of("stale_serve")] == [
        ("stale-while-revalidate", lower)
    ]
    await gate.wait_started()
    gate.release()
    await eventually(lambda: env.cache.get_stats().background_refreshes == 0, "the refresh")
    assert await env.layer_values("k") == ["v2", "v2"]


async def test_stale_read_without_fetcher_returns_stale_and_refreshes_nothing(
    build_stack: BuildStack,
) -> None:
    env = await build_stack()
    log = EventLog(env.cache, "stale_serve")
    await env.cache.set("k", "v1", **SWR)
    env.clock.advance(50)
    assert await env.cache.get("k") == "v1"
    assert env.cache.get_stats().background_refreshes == 0
    assert env.cache.get_metrics().fetches == 0
    assert log.states() == ["stale-while-revalidate"]


async def test_foreground_fetch_joins_the_running_refresh(build_stack: BuildStack) -> None:
    env = await build_stack()
    log = EventLog(env.cache, "stampede_dedupe")
    await env.cache.set("k", "v1", **SWR)
    env.clock.advance(15)
    gate = Gate("v2")
    assert await within(spawn(env.cache.get, "k", gate.fetch, **SWR), "a stale read") == "v1"
    await gate.wait_started()

    # Behind the stack's back the value disappears: the next reader needs a foreground fetch,
    # and it must share the refresh already running instead of calling its own fetcher.
    await env.drop_from_layers("k")
    other = Value("from-foreground")
    task = spawn(env.cache.get, "k", other.fetch, **SWR)
    await eventually(lambda: bool(log.of("stampede_dedupe")) or task.done(), "the join")
    assert not task.done(), "the foreground read did not wait for the running refresh"
    gate.release()
    assert await within(task, "the joined fetch") == "v2"
    assert other.calls == 0
    assert gate.calls == 1
    await eventually(lambda: env.cache.get_stats().background_refreshes == 0, "the refresh")
    assert await env.cache.get("k") == "v2"


async def test_stale_read_does_not_refresh_while_a_foreground_fetch_runs(
    build_memory: BuildStack,
) -> None:
    env = await build_memory()
    gate = Gate("v2")
    foreground = spawn(env.cache.get, "k", gate.fetch, **SWR)
    await gate.wait_started()
    # A stale copy appears (say, restored from a snapshot) while the cold fetch runs.
    now = env.clock()
    env.memory.set("k", Entry("old", now - 20, now - 5, now + 100), None)
    other = Value("from-refresh")
    assert await within(spawn(env.cache.get, "k", other.fetch, **SWR), "a stale read") == "old"
    assert env.cache.get_stats().background_refreshes == 0
    assert other.calls == 0, "a second fetch of the key started beside the running one"
    gate.release()
    assert await within(foreground, "the foreground fetch") == "v2"
    assert gate.calls == 1
    assert await env.cache.get("k") == "v2"


async def test_failing_refresh_never_surfaces_and_stale_stays_served(
    build_stack: BuildStack,
) -> None:
    env = await build_stack()
    await env.cache.set("k", "v1", **SWR)
    env.clock.advance(15)
    gate = Gate("v2")
    gate.error = RuntimeError("origin down")
    assert await within(spawn(env.cache.get, "k", gate.fetch, **SWR), "a stale read") == "v1"
    await gate.wait_started()
    gate.release()
    await eventually(lambda: gate.finished == 1, "the refresh to fail")
    await eventually(lambda: env.cache.get_stats().background_refreshes == 0, "the refresh")
    # Nothing reached a caller; the stale value is still there and still served.
    assert await env.cache.get("k") == "v1"
    assert await env.layer_values("k") == ["v1"] * len(env.layers)
    assert env.cache.get_metrics().refreshes == 0
    # The failed refresh left nothing behind: the next stale read refreshes again.
    good = Value("v3")
    assert await within(spawn(env.cache.get, "k", good.fetch, **SWR), "a stale read") == "v1"
    await eventually(lambda: env.cache.get_stats().background_refreshes == 0, "the refresh")
    assert good.calls == 1
    assert await env.cache.get("k") == "v3"


async def test_refresh_is_bounded_by_background_refresh_timeout(build_stack: BuildStack) -> None:
    env = await build_stack(background_refresh_timeout=0.2)
    await env.cache.set("k", "v1", **SWR)
    env.clock.advance(15)
    never = Gate("never")  # never released
    assert await within(spawn(env.cache.get, "k", never.fetch, **SWR), "a stale read") == "v1"
    await never.wait_started()
    assert env.cache.get_stats().background_refreshes == 1
    await eventually(
        lambda: env.cache.get_stats().background_refreshes == 0,
        "background_refresh_timeout (0.2 s) to end the refresh",
        timeout=3.0,
    )
    assert await env.cache.get("k") == "v1", "the stale value must survive a timed-out refresh"
    # The key is not held by the abandoned refresh: a new one runs and lands.
    good = Value("v2")
    assert await within(spawn(env.cache.get, "k", good.fetch, **SWR), "a stale read") == "v1"
    await eventually(lambda: env.cache.get_stats().background_refreshes == 0, "the refresh")
    assert good.calls == 1
    assert await env.cache.get("k") == "v2"
    never.release()


async def test_past_the_window_the_read_fetches_in_the_foreground(build_stack: BuildStack) -> None:
    env = await build_stack()
    log = EventLog(env.cache, "stale_serve")
    await env.cache.set("k", "v1", **SWR)
    env.clock.advance(111)  # past fresh (10) + window (100)
    gate = Gate("v2")
    task = spawn(env.cache.get, "k", gate.fetch, **SWR)
    await gate.wait_started()
    assert not task.done(), "past the window the reader must wait for the fetch"
    gate.release()
    assert await within(task, "the foreground fetch") == "v2"
    assert log.of("stale_serve") == []
    assert env.cache.get_metrics().stale_hits == 0
    assert env.cache.get_stats().background_refreshes == 0


async def test_stack_default_window(clock: Any, closing: list[CacheStack]) -> None:
    from layercache import MemoryLayer

    cache = CacheStack([MemoryLayer(ttl=10, clock=clock)], clock=clock, stale_while_revalidate=30)
    closing.append(cache)
    await cache.set("k", "v1")
    clock.advance(25)
    gate = Gate("v2")
    assert await within(spawn(cache.get, "k", gate.fetch), "a stale read") == "v1"
    await gate.wait_started()
    gate.release()
    await eventually(lambda: cache.get_stats().background_refreshes == 0, "the refresh")
    assert await cache.get("k") == "v2"
    clock.advance(41)  # past 10 + 30 of the refreshed value
    assert await cache.get("k") is None


async def test_refreshed_entry_keeps_its_window(build_stack: BuildStack) -> None:
    env = await build_stack()
    await env.cache.set("k", "v1", **SWR)
    env.clock.advance(15)
    gate = Gate("v2", hold=False)
    assert await env.cache.get("k", gate.fetch, **SWR) == "v1"
    await eventually(lambda: env.cache.get_stats().background_refreshes == 0, "the refresh")

    async def refreshed() -> bool:
        return bool(await env.cache.get("k") == "v2")

    await eventually_async(refreshed, "the refreshed value")
    env.clock.advance(50)  # stale again, inside the refreshed entry's own window
    assert await env.cache.get("k") == "v2"
