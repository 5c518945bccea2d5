"""Per-operation options over SyncCacheStack with a fake clock."""

from __future__ import annotations

import datetime as dt

import pytest
from stack_support import ABSENT, EventLog
from sync_stack_support import Held, SyncCounter, SyncEnv, wait_until

from layercache import CacheMissError, CacheOptions


class OriginError(Exception):
    pass


def test_tags_are_replaced_on_every_set(senv: SyncEnv) -> None:
    senv.cache.set("k", 1, tags=["a"])
    senv.cache.set("k", 2, tags=["b"])
    senv.cache.invalidate_by_tag("a")
    assert senv.cache.get("k") == 2, "the old tag still invalidated the new value"
    senv.cache.invalidate_by_tag("b")
    assert senv.cache.get("k") is None
    senv.cache.set("k", 3, tags=["c"])
    senv.cache.set("k", 4)
    senv.cache.invalidate_by_tag("c")
    assert senv.cache.get("k") == 4
    result = senv.cache.inspect("k")
    assert result is not None
    assert tuple(result.tags) == ()


def test_ttl_number_and_timedelta(senv: SyncEnv) -> None:
    senv.cache.set("k", "v", ttl=10)
    senv.clock.advance(9)
    assert senv.cache.get("k") == "v"
    senv.clock.advance(2)
    assert senv.cache.get("k") is None, "value outlived its ttl"
    senv.cache.set("m", "v", ttl=dt.timedelta(minutes=1))
    assert senv.cache.ttl("m") == pytest.approx(60, abs=0.5)


def test_ttl_on_get_applies_to_the_fetched_value(senv: SyncEnv) -> None:
    fetch = SyncCounter("v")
    senv.cache.get("k", fetch, ttl=5)
    senv.clock.advance(4)
    senv.cache.get("k", fetch)
    assert fetch.calls == 1
    senv.clock.advance(2)
    senv.cache.get("k", fetch)
    assert fetch.calls == 2, "the fetched value outlived the ttl given to get()"


def test_ttl_per_layer_dict(slayered: SyncEnv) -> None:
    lower = slayered.lower_name
    assert lower is not None
    fetch = SyncCounter("v")
    assert slayered.cache.get("k", fetch, ttl={"memory": 5, lower: 100}) == "v"
    assert slayered.memory.ttl("k") == pytest.approx(5, abs=0.5)
    slayered.clock.advance(6)
    assert slayered.memory.get("k") is None
    assert slayered.cache.get("k", fetch) == "v", "the lower layer's longer ttl was lost"
    assert fetch.calls == 1
    slayered.clock.advance(95)
    assert slayered.cache.get("k", fetch) == "v"
    assert fetch.calls == 2


def test_ttl_zero_for_one_layer_skips_it(slayered: SyncEnv) -> None:
    lower = slayered.lower_name
    assert lower is not None
    slayered.cache.set("k", "v", ttl={"memory": 0, lower: 60})
    assert slayered.in_layers("k") == [lower]
    slayered.cache.set("j", "v", ttl={"memory": 60, lower: 0})
    assert slayered.in_layers("j") == ["memory"]


def test_ttl_zero_stores_nowhere(senv: SyncEnv) -> None:
    senv.cache.set("k", "v", ttl=0)
    assert senv.in_layers("k") == []
    fetch = SyncCounter("v")
    assert senv.cache.get("j", fetch, ttl=0) == "v"
    assert senv.cache.get("j", fetch, ttl=0) == "v"
    assert fetch.calls == 2


def test_negative_cache_and_negative_ttl(senv: SyncEnv) -> None:
    fetch = SyncCounter(None)
    assert senv.cache.get("nothing", fetch, negative_cache=True, negative_ttl=5) is None
    assert senv.cache.get("nothing", fetch, negative_cache=True, negative_ttl=5) is None
    assert fetch.calls == 1, "a negatively cached None was fetched again"
    senv.clock.advance(6)
    assert senv.cache.get("nothing", fetch, negative_cache=True, negative_ttl=5) is None
    assert fetch.calls == 2, "the negative entry outlived negative_ttl"


def test_none_is_not_cached_by_default(senv: SyncEnv) -> None:
    fetch = SyncCounter(None)
    assert senv.cache.get("nothing", fetch) is None
    assert senv.cache.get("nothing", fetch) is None
    assert fetch.calls == 2
    assert senv.in_layers("nothing") == []


def test_stack_wide_negative_caching(build_sync) -> None:  # type: ignore[no-untyped-def]
    env: SyncEnv = build_sync(negative_caching=True, negative_ttl=5)
    fetch = SyncCounter(None)
    env.cache.get("n", fetch)
    env.cache.get("n", fetch)
    assert fetch.calls == 1
    env.clock.advance(6)
    env.cache.get("n", fetch)
    assert fetch.calls == 2
    other = SyncCounter(None)
    env.cache.get("m", other, negative_cache=False)
    env.cache.get("m", other, negative_cache=False)
    assert other.calls == 2


def test_negative_cached_none_raises_in_get_or_raise(smemory: SyncEnv) -> None:
    smemory.cache.get("n", lambda: None, negative_cache=True)
    with pytest.raises(CacheMissError):
        smemory.cache.get_or_raise("n", lambda: "never", negative_cache=True)


def test_should_cache(senv: SyncEnv) -> None:
    def ok(value: dict[str, int]) -> bool:
        return value["status"] == 200

    bad = SyncCounter({"status": 500})
    assert senv.cache.get("api", bad, should_cache=ok) == {"status": 500}
    assert senv.in_layers("api") == [], "should_cache=False still stored the value"
    good = SyncCounter({"status": 200})
    assert senv.cache.get("api", good, should_cache=ok) == {"status": 200}
    assert senv.layer_values("api") == [{"status": 200}] * len(senv.layers)
    assert senv.cache.get("api", good, should_cache=ok) == {"status": 200}
    assert good.calls == 1


def test_options_as_dataclass_or_dict(senv: SyncEnv) -> None:
    senv.cache.set("a", 1, options=CacheOptions(ttl=7, tags=("t",)))
    senv.cache.set("b", 2, options={"ttl": 8, "tags": ["t"]})
    assert senv.cache.ttl("a") == pytest.approx(7, abs=0.5)
    assert senv.cache.ttl("b") == pytest.approx(8, abs=0.5)
    senv.cache.invalidate_by_tag("t")
    assert senv.layer_values("a") == [ABSENT] * len(senv.layers)
    assert senv.layer_values("b") == [ABSENT] * len(senv.layers)


def test_stale_while_revalidate_returns_stale_at_once(senv: SyncEnv) -> None:
    opts = {"ttl": 10, "stale_while_revalidate": 60}
    assert senv.cache.get("k", lambda: "v1", **opts) == "v1"
    senv.clock.advance(20)
    refresh = Held("v2")
    # The refresh is held on a stack thread: the caller still gets the stale value at once.
    assert senv.cache.get("k", refresh, **opts) == "v1"
    assert refresh.started.wait(5), "no background refresh was started"
    assert senv.cache.get("k", refresh, **opts) == "v1", "a second stale read"
    refresh.release.set()
    wait_until(
        lambda: senv.layer_values("k") == ["v2"] * len(senv.layers),
        "the background refresh to store v2 in every layer",
    )
    assert senv.cache.get("k") == "v2"
    assert refresh.calls == 1, "concurrent stale reads started more than one refresh"


def test_stale_if_error_serves_the_stale_value(senv: SyncEnv) -> None:
    log = EventLog(senv.cache, "stale_serve")
    opts = {"ttl": 10, "stale_if_error": 100}
    senv.cache.set("k", "v1", **opts)
    senv.clock.advance(15)

    def failing() -> str:
        raise OriginError("db down")

    assert senv.cache.get("k", failing, **opts) == "v1"
    wait_until(lambda: len(log.of("stale_serve")) == 1, "a stale_serve event")
    senv.clock.advance(100)
    with pytest.raises(OriginError):
        senv.cache.get("k", failing, **opts)
