# DO NOT EDIT: generated from tests/stack/test_options.py
# by scripts/unasync_tests.py. Change the async source and run
# `python scripts/unasync_tests.py`.
"""Per-operation options: tags, ttl, ttl_policy, ttl_jitter, negative caching, should_cache."""

from __future__ import annotations

import datetime as dt

import pytest
from twin_stack_support import ABSENT, Counter, StackEnv, lcall

from layercache import MemoryLayer, SyncCacheStack
from layercache.testing import ManualClock


def test_tags_are_replaced_on_every_set(env: StackEnv) -> None:
    env.cache.set("k", 1, tags=["a"])
    env.cache.set("k", 2, tags=["b"])
    env.cache.invalidate_by_tag("a")
    assert env.cache.get("k") == 2, "the old tag still invalidated the new value"
    env.cache.invalidate_by_tag("b")
    assert env.cache.get("k") is None
    env.cache.set("k", 3, tags=["c"])
    env.cache.set("k", 4)  # no tags given = no tags
    env.cache.invalidate_by_tag("c")
    assert env.cache.get("k") == 4
    result = env.cache.inspect("k")
    assert result is not None
    assert tuple(result.tags) == ()


def test_tags_given_to_get_belong_to_the_fetched_value(env: StackEnv) -> None:
    env.cache.get("k", lambda: "v", tags=["from-get"])
    env.cache.invalidate_by_tag("from-get")
    assert env.in_layers("k") == []


def test_ttl_number(env: StackEnv) -> None:
    env.cache.set("k", "v", ttl=10)
    env.clock.advance(9)
    assert env.cache.get("k") == "v"
    env.clock.advance(2)
    assert env.cache.get("k") is None, "value outlived its ttl"


def test_ttl_timedelta(env: StackEnv) -> None:
    env.cache.set("k", "v", ttl=dt.timedelta(minutes=1))
    assert env.cache.ttl("k") == pytest.approx(60, abs=0.5)


def test_ttl_on_get_applies_to_the_fetched_value(env: StackEnv) -> None:
    fetch = Counter("v")
    env.cache.get("k", fetch, ttl=5)
    env.clock.advance(4)
    env.cache.get("k", fetch)
    assert fetch.calls == 1
    env.clock.advance(2)
    env.cache.get("k", fetch)
    assert fetch.calls == 2, "the fetched value outlived the ttl given to get()"


def test_ttl_per_layer_dict(layered: StackEnv) -> None:
    lower = layered.lower_name
    assert lower is not None
    fetch = Counter("v")
    assert layered.cache.get("k", fetch, ttl={"memory": 5, lower: 100}) == "v"
    assert lcall(layered.memory, "ttl", "k") == pytest.approx(5, abs=0.5)
    layered.clock.advance(6)
    assert layered.memory.get("k") is None
    assert layered.cache.get("k", fetch) == "v", "the lower layer's longer ttl was lost"
    assert fetch.calls == 1
    layered.clock.advance(95)
    assert layered.cache.get("k", fetch) == "v"
    assert fetch.calls == 2


def test_ttl_dict_missing_layer_uses_layer_default(build_layered) -> None:  # type: ignore[no-untyped-def]
    env: StackEnv = build_layered(memory_ttl=20, lower_ttl=3600)
    env.cache.set("k", "v", ttl={"memory": 5})
    lower = env.lower
    assert lower is not None
    env.clock.advance(6)
    assert env.memory.get("k") is None
    assert env.cache.get("k") == "v", "a layer absent from the dict keeps its default ttl"


def test_ttl_zero_for_one_layer_skips_it(layered: StackEnv) -> None:
    lower = layered.lower_name
    assert lower is not None
    layered.cache.set("k", "v", ttl={"memory": 0, lower: 60})
    assert layered.in_layers("k") == [lower]
    layered.cache.set("j", "v", ttl={"memory": 60, lower: 0})
    assert layered.in_layers("j") == ["memory"]


def test_ttl_zero_stores_nowhere(env: StackEnv) -> None:
    env.cache.set("k", "v", ttl=0)
    assert env.in_layers("k") == []
    fetch = Counter("v")
    assert env.cache.get("j", fetch, ttl=0) == "v"
    assert env.cache.get("j", fetch, ttl=0) == "v"
    assert fetch.calls == 2


def _at(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc).timestamp()


def _seconds_to_local_boundary(now: float, unit: str) -> float:
    local = dt.datetime.fromtimestamp(now).astimezone()
    if unit == "day":
        boundary = (local + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        boundary = (local + dt.timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    return boundary.timestamp() - now


def test_ttl_policy_until_midnight(env: StackEnv) -> None:
    env.clock.now = _at("2031-03-14T22:30:00")
    env.cache.set("daily", "report", ttl_policy="until-midnight")
    remaining = env.cache.ttl("daily")
    assert remaining is not None
    # Midnight of the stack's time zone: UTC by default (or the machine's local zone).
    candidates = [5400.0, _seconds_to_local_boundary(env.clock.now, "day")]
    assert min(abs(remaining - c) for c in candidates) < 1, (remaining, candidates)
    env.clock.advance(remaining + 1)
    assert env.cache.get("daily") is None


def test_ttl_policy_next_hour(env: StackEnv) -> None:
    env.clock.now = _at("2031-03-14T10:59:30")
    env.cache.set("hourly", "rollup", ttl_policy="next-hour")
    remaining = env.cache.ttl("hourly")
    assert remaining is not None
    candidates = [30.0, _seconds_to_local_boundary(env.clock.now, "hour")]
    assert min(abs(remaining - c) for c in candidates) < 1, (remaining, candidates)
    env.clock.advance(31)
    assert env.cache.get("hourly") is None


def test_ttl_policy_align_to(env: StackEnv) -> None:
    env.clock.now = 2_000_000_120.5  # 20.5 s past a multiple of 300
    expected = 300 - (env.clock.now % 300)
    env.cache.set("aligned", "v", ttl_policy={"align_to": 300})
    assert env.cache.ttl("aligned") == pytest.approx(expected, abs=0.5)


def test_ttl_policy_callable(env: StackEnv) -> None:
    seen: list[tuple[str, object]] = []

    def policy(key: str, value: object) -> float:
        seen.append((key, value))
        return 30 if key.startswith("hot:") else 300

    env.cache.set("hot:1", {"v": 1}, ttl_policy=policy)
    env.cache.get("cold:1", lambda: "fetched", ttl_policy=policy)
    assert env.cache.ttl("hot:1") == pytest.approx(30, abs=0.5)
    assert env.cache.ttl("cold:1") == pytest.approx(300, abs=0.5)
    assert ("hot:1", {"v": 1}) in seen
    assert ("cold:1", "fetched") in seen


def test_ttl_jitter_stays_within_bounds_and_spreads(clock: ManualClock) -> None:
    memory = MemoryLayer(ttl=60, clock=clock)
    with SyncCacheStack([memory], clock=clock) as cache:
        ttls = []
        for i in range(200):
            cache.set(f"j:{i}", i, ttl=100, ttl_jitter=10)
            remaining = cache.ttl(f"j:{i}")
            assert remaining is not None
            ttls.append(remaining)
        assert min(ttls) >= 90 - 0.01, min(ttls)
        assert max(ttls) <= 110 + 0.01, max(ttls)
        assert max(ttls) - min(ttls) > 5, "jitter did not spread the expiries"
        assert len({round(t, 3) for t in ttls}) > 50


def test_ttl_jitter_per_layer_dict(layered: StackEnv) -> None:
    lower = layered.lower
    assert lower is not None
    now = layered.clock()
    lower_ttls = set()
    for i in range(30):
        layered.cache.set(f"j:{i}", i, ttl=100, ttl_jitter={lower.name: 10})
        # The memory layer is not in the dict: no jitter there.
        assert lcall(layered.memory, "ttl", f"j:{i}") == pytest.approx(100, abs=0.5)
        entry = lcall(lower, "get", f"j:{i}")
        assert entry is not None
        assert 90 - 0.01 <= entry.fresh_until - now <= 110 + 0.01
        lower_ttls.add(round(entry.fresh_until - now, 3))
    assert len(lower_ttls) > 5, "the lower layer's jitter did not spread expiries"


def test_stack_wide_ttl_jitter(clock: ManualClock) -> None:
    memory = MemoryLayer(ttl=60, clock=clock)
    with SyncCacheStack([memory], clock=clock, ttl_jitter=5) as cache:
        ttls = set()
        for i in range(50):
            cache.set(f"j:{i}", i, ttl=50)
            remaining = cache.ttl(f"j:{i}")
            assert remaining is not None
            assert 45 - 0.01 <= remaining <= 55 + 0.01
            ttls.add(round(remaining, 3))
        assert len(ttls) > 10


def test_negative_cache_and_negative_ttl(env: StackEnv) -> None:
    fetch = Counter(None)
    assert env.cache.get("nothing", fetch, negative_cache=True, negative_ttl=5) is None
    assert env.cache.get("nothing", fetch, negative_cache=True, negative_ttl=5) is None
    assert fetch.calls == 1, "a negatively cached None was fetched again"
    env.clock.advance(6)
    assert env.cache.get("nothing", fetch, negative_cache=True, negative_ttl=5) is None
    assert fetch.calls == 2, "the negative entry outlived negative_ttl"


def test_none_is_not_cached_by_default(env: StackEnv) -> None:
    fetch = Counter(None)
    assert env.cache.get("nothing", fetch) is None
    assert env.cache.get("nothing", fetch) is None
    assert fetch.calls == 2
    assert env.in_layers("nothing") == []


def test_stack_wide_negative_caching(build_stack) -> None:  # type: ignore[no-untyped-def]
    env: StackEnv = build_stack(negative_caching=True, negative_ttl=5)
    fetch = Counter(None)
    env.cache.get("n", fetch)
    env.cache.get("n", fetch)
    assert fetch.calls == 1
    env.clock.advance(6)
    env.cache.get("n", fetch)
    assert fetch.calls == 2
    # The per-operation option overrides the stack default.
    other = Counter(None)
    env.cache.get("m", other, negative_cache=False)
    env.cache.get("m", other, negative_cache=False)
    assert other.calls == 2


def test_negative_cached_none_raises_in_get_or_raise(memory_env: StackEnv) -> None:
    from layercache import CacheMissError

    memory_env.cache.get("n", lambda: None, negative_cache=True)
    with pytest.raises(CacheMissError):
        memory_env.cache.get_or_raise("n", lambda: "never", negative_cache=True)


def test_should_cache(env: StackEnv) -> None:
    def ok(value: dict[str, int]) -> bool:
        return value["status"] == 200

    bad = Counter({"status": 500})
    assert env.cache.get("api", bad, should_cache=ok) == {"status": 500}
    assert env.in_layers("api") == [], "should_cache=False still stored the value"
    good = Counter({"status": 200})
    assert env.cache.get("api", good, should_cache=ok) == {"status": 200}
    assert env.layer_values("api") == [{"status": 200}] * len(env.layers)
    assert env.cache.get("api", good, should_cache=ok) == {"status": 200}
    assert good.calls == 1


def test_options_as_dataclass_or_dict(env: StackEnv) -> None:
    from layercache import CacheOptions

    env.cache.set("a", 1, options=CacheOptions(ttl=7, tags=("t",)))
    env.cache.set("b", 2, options={"ttl": 8, "tags": ["t"]})
    assert env.cache.ttl("a") == pytest.approx(7, abs=0.5)
    assert env.cache.ttl("b") == pytest.approx(8, abs=0.5)
    env.cache.invalidate_by_tag("t")
    assert env.layer_values("a") == [ABSENT] * len(env.layers)
    assert env.layer_values("b") == [ABSENT] * len(env.layers)
