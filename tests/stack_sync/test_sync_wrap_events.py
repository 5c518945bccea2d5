"""SyncCacheStack wrap(), namespaces, events and metrics."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from stack_support import EventLog
from sync_stack_support import Held, Runner, SyncEnv, wait_until

from layercache import CacheMetrics, LayerMetrics, MemoryLayer, SyncCacheNamespace, SyncCacheStack
from layercache.testing import ManualClock


def test_wrap_bare_function(senv: SyncEnv) -> None:
    calls: list[int] = []

    def find_user(user_id: int) -> dict[str, int]:
        calls.append(user_id)
        return {"id": user_id}

    get_user = senv.cache.wrap("user", find_user)
    assert not inspect.iscoroutinefunction(get_user)
    assert get_user.__name__ == "find_user"
    assert get_user(123) == {"id": 123}
    assert get_user(123) == {"id": 123}
    assert get_user(7) == {"id": 7}
    assert calls == [123, 7]
    assert senv.cache.get("user:123") == {"id": 123}


def test_wrap_as_decorator_with_options(senv: SyncEnv) -> None:
    calls = 0

    @senv.cache.wrap("report", ttl=10, tags=["reports"])
    def report(day: int, *, region: str = "eu") -> str:
        nonlocal calls
        calls += 1
        return f"{day}-{region}"

    assert report(1, region="us") == "1-us"
    assert report(1, region="us") == "1-us"
    assert calls == 1
    assert senv.cache.get('report:1,region="us"') == "1-us"
    assert senv.cache.ttl('report:1,region="us"') == pytest.approx(10, abs=0.5)
    senv.cache.invalidate_by_tag("reports")
    assert report(1, region="us") == "1-us"
    assert calls == 2


def test_wrap_keys_never_collide(senv: SyncEnv) -> None:
    calls: list[tuple[object, ...]] = []

    def f(*args: object) -> str:
        calls.append(args)
        return repr(args)

    cached = senv.cache.wrap("f", f)
    results = [cached("a:b"), cached("a", "b"), cached(1), cached("1")]
    assert results == [repr(("a:b",)), repr(("a", "b")), repr((1,)), repr(("1",))]
    assert len(calls) == 4, "two different calls shared a cache key"
    for key in ('f:"a:b"', 'f:"a","b"', "f:1", 'f:"1"'):
        assert senv.cache.has(key), f"expected key {key!r}"
    for args in (("a:b",), ("a", "b"), (1,), ("1",)):
        assert cached(*args) == repr(args)
    assert len(calls) == 4


def test_wrap_kwargs_order_and_key_resolver(senv: SyncEnv) -> None:
    calls: list[int] = []

    def f(**kwargs: int) -> int:
        calls.append(0)
        return sum(kwargs.values())

    cached = senv.cache.wrap("kw", f)
    assert cached(b=2, a=1) == 3
    assert cached(a=1, b=2) == 3
    assert len(calls) == 1
    assert senv.cache.has("kw:a=1,b=2")

    def find(user_id: int, *, verbose: bool = False) -> int:
        calls.append(user_id)
        return user_id * 10

    resolved = senv.cache.wrap("user", find, key_resolver=lambda user_id, **_: f"id-{user_id}")
    assert resolved(5) == 50
    assert resolved(5, verbose=True) == 50
    assert calls == [0, 5]
    assert senv.cache.get("user:id-5") == 50


def test_namespace_keys_live_under_the_prefix(senv: SyncEnv) -> None:
    users = senv.cache.namespace("users")
    assert isinstance(users, SyncCacheNamespace)
    users.set("123", {"id": 123})
    assert senv.cache.get("users:123") == {"id": 123}
    assert users.get("123") == {"id": 123}
    assert users.get("absent") is None
    assert users.get("f", lambda: "fetched") == "fetched"
    assert senv.cache.get("users:f") == "fetched"
    assert users.has("123")
    users.delete("123")
    assert senv.cache.get("users:123") is None


def test_namespace_nests(senv: SyncEnv) -> None:
    posts = senv.cache.namespace("tenant:abc").namespace("posts")
    posts.set("1", "post one")
    assert senv.cache.get("tenant:abc:posts:1") == "post one"
    assert senv.in_layers("tenant:abc:posts:1") == senv.names


def test_namespace_clear_touches_only_that_namespace(senv: SyncEnv) -> None:
    senv.cache.set_many(
        [("a:1", 1), ("a:2", 2), ("a:x:3", 3), ("ab:1", 4), ("a", 5), ("b:a:1", 6), ("ab", 7)]
    )
    senv.cache.namespace("a").clear()
    for key in ("a:1", "a:2", "a:x:3"):
        assert senv.in_layers(key) == [], f"{key} survived namespace('a').clear()"
    for key, value in (("ab:1", 4), ("a", 5), ("b:a:1", 6), ("ab", 7)):
        assert senv.cache.get(key) == value, f"namespace('a').clear() removed {key}"


def test_namespace_with_glob_characters_is_literal(senv: SyncEnv) -> None:
    senv.cache.set_many([("t[1]:x", 1), ("t1:x", 2), ("t*:x", 3), ("tz:x", 4)])
    senv.cache.namespace("t[1]").clear()
    senv.cache.namespace("t*").invalidate_by_pattern("*")
    assert senv.cache.get("t[1]:x") is None
    assert senv.cache.get("t*:x") is None
    assert senv.cache.get("t1:x") == 2
    assert senv.cache.get("tz:x") == 4


def test_namespace_scopes_pattern_and_prefix_invalidation(senv: SyncEnv) -> None:
    ns = senv.cache.namespace("ns")
    ns.set_many([("user:1", 1), ("user:2", 2), ("post:1", 3)])
    senv.cache.set("user:1", "outside")
    ns.invalidate_by_pattern("user:*")
    assert ns.get_many(["user:1", "user:2", "post:1"]) == [None, None, 3]
    assert senv.cache.get("user:1") == "outside"
    ns.invalidate_by_prefix("post")
    assert ns.get("post:1") is None
    assert senv.cache.get("user:1") == "outside"
    ns.set("a", 1, ttl=30)
    assert ns.get_many(["a", ("b", lambda: 2), "c"]) == [1, 2, None]
    assert senv.cache.get("ns:b") == 2
    assert ns.ttl("a") == pytest.approx(30, abs=0.5)
    assert ns.inspect("a") is not None


@pytest.mark.parametrize("prefix", ["", "x" * 257, "bad\nprefix", "nul\x00", 5])
def test_namespace_rejects_bad_prefixes(smemory: SyncEnv, prefix: object) -> None:
    with pytest.raises(ValueError, match="prefix"):
        smemory.cache.namespace(prefix)  # type: ignore[arg-type]


def test_event_payloads(senv: SyncEnv) -> None:
    log = EventLog(senv.cache, "hit", "miss", "set", "delete")
    senv.cache.get("k")
    senv.cache.set("k", 1)
    senv.cache.get("k")
    senv.cache.delete("k")
    wait_until(lambda: len(log.events) >= 4, "four events")
    assert {"event": "miss", "key": "k"}.items() <= log.of("miss")[0].items()
    assert {"event": "set", "key": "k"}.items() <= log.of("set")[0].items()
    assert {"event": "hit", "key": "k", "layer": "memory"}.items() <= log.of("hit")[0].items()
    assert {"event": "delete", "key": "k"}.items() <= log.of("delete")[0].items()
    assert [e["event"] for e in log.events] == ["miss", "set", "hit", "delete"]


def test_off_and_unsubscribe(smemory: SyncEnv) -> None:
    first: list[dict[str, Any]] = []
    second: list[dict[str, Any]] = []
    unsubscribe = smemory.cache.on("miss", first.append)
    smemory.cache.on("miss", second.append)
    smemory.cache.get("a")
    wait_until(lambda: len(first) == 1 and len(second) == 1, "both handlers")
    unsubscribe()
    smemory.cache.off("miss", second.append)
    smemory.cache.get("b")
    probe: list[dict[str, Any]] = []
    smemory.cache.on("miss", probe.append)
    smemory.cache.get("c")
    wait_until(lambda: len(probe) == 1, "a later handler")
    assert len(first) == 1, "unsubscribe() did not remove the handler"
    assert len(second) == 1, "off() did not remove the handler"


def test_raising_handlers_never_break_operations(senv: SyncEnv) -> None:
    calls: list[str] = []

    def bad(payload: dict[str, Any]) -> None:
        calls.append("bad")
        raise RuntimeError("handler bug")

    good: list[dict[str, Any]] = []
    for name in ("hit", "miss", "set", "delete", "backfill"):
        senv.cache.on(name, bad)
    senv.cache.on("set", good.append)
    assert senv.cache.get("k", lambda: "v") == "v"
    assert senv.cache.get("k") == "v"
    senv.cache.set("k", "w")
    senv.cache.delete("k")
    assert senv.cache.get("k") is None
    wait_until(lambda: "bad" in calls and len(good) >= 1, "the handlers")


def test_stampede_dedupe_event(smemory: SyncEnv) -> None:
    log = EventLog(smemory.cache, "stampede_dedupe")
    fetch = Held("v")
    runners = [Runner(lambda: smemory.cache.get("hot", fetch)) for _ in range(3)]
    wait_until(lambda: len(log.of("stampede_dedupe")) == 2, "two dedupe events")
    fetch.release.set()
    assert [r.join() for r in runners] == ["v"] * 3
    assert all(e["key"] == "hot" for e in log.of("stampede_dedupe"))


def test_metrics_counters(senv: SyncEnv) -> None:
    cache = senv.cache
    metrics = cache.get_metrics()
    assert isinstance(metrics, CacheMetrics)
    assert (metrics.hits, metrics.misses, metrics.fetches) == (0, 0, 0)
    cache.get("a")
    cache.get("b", lambda: 1)
    cache.get("b")
    cache.get("b")
    metrics = cache.get_metrics()
    assert (metrics.hits, metrics.misses, metrics.fetches) == (2, 2, 1)
    for name in ("stale_hits", "refreshes", "write_failures", "stampede_dedupes", "evictions"):
        assert getattr(metrics, name) == 0, name
    assert set(metrics.layers) == set(senv.names)
    memory = metrics.layers["memory"]
    assert isinstance(memory, LayerMetrics)
    assert (memory.hits, memory.misses) == (2, 2)
    if senv.lower is not None:
        lower = metrics.layers[senv.lower.name]
        assert (lower.hits, lower.misses) == (0, 2)
        assert lower.latency.count >= 2
        assert 0 <= lower.latency.p50 <= lower.latency.p99


def test_metrics_lower_layer_hit_and_backfill(slayered: SyncEnv) -> None:
    slayered.cache.set("k", 1)
    slayered.memory.delete("k")
    before = slayered.cache.get_metrics()
    assert slayered.cache.get("k") == 1
    after = slayered.cache.get_metrics()
    lower = str(slayered.lower_name)
    assert after.hits - before.hits == 1
    assert after.misses - before.misses == 0
    assert after.backfills - before.backfills == 1
    assert after.layers["memory"].misses - before.layers["memory"].misses == 1
    assert after.layers[lower].hits - before.layers[lower].hits == 1


def test_reset_metrics(senv: SyncEnv) -> None:
    senv.cache.get("a", lambda: 1)
    senv.cache.get("a")
    senv.cache.reset_metrics()
    metrics = senv.cache.get_metrics()
    assert (metrics.hits, metrics.misses, metrics.fetches, metrics.backfills) == (0, 0, 0, 0)
    assert senv.cache.get_hit_rate().overall == 0
    senv.cache.get("a")
    senv.cache.get("absent")
    metrics = senv.cache.get_metrics()
    assert (metrics.hits, metrics.misses) == (1, 1)
    assert (metrics.layers["memory"].hits, metrics.layers["memory"].misses) == (1, 1)
    assert senv.cache.get_hit_rate().layers["memory"] == pytest.approx(0.5)


def test_evictions_are_counted(clock: ManualClock) -> None:
    memory = MemoryLayer(ttl=60, max_size=2, clock=clock)
    with SyncCacheStack([memory], clock=clock) as cache:
        for i in range(5):
            cache.set(f"e:{i}", i)
        assert cache.get_metrics().evictions == 3
