"""SyncCacheStack writes and invalidation, checked against every layer directly."""

from __future__ import annotations

import pytest
from stack_support import ABSENT
from sync_stack_support import SyncEnv

from layercache import CacheEntry, CacheOptions


def _all_absent(env: SyncEnv, *keys: str) -> None:
    for key in keys:
        assert env.in_layers(key) == [], f"{key!r} still stored in {env.in_layers(key)}"


def _all_present(env: SyncEnv, *keys: str) -> None:
    for key in keys:
        assert env.in_layers(key) == env.names, f"{key!r} only in {env.in_layers(key)}"


def test_set_writes_every_layer(senv: SyncEnv) -> None:
    senv.cache.set("s", {"x": [1, 2]})
    assert senv.layer_values("s") == [{"x": [1, 2]}] * len(senv.layers)
    senv.cache.set("s", "replaced")
    assert senv.layer_values("s") == ["replaced"] * len(senv.layers)
    assert senv.cache.get("s") == "replaced"


def test_set_many_pairs_and_cache_entries(senv: SyncEnv) -> None:
    senv.cache.set_many(
        [
            ("p:1", 1),
            CacheEntry("p:2", {"two": 2}),
            CacheEntry("p:3", [3], options={"ttl": 5, "tags": ["three"]}),
            CacheEntry("p:4", "four", options=CacheOptions(ttl=50, tags=("four",))),
        ]
    )
    assert senv.cache.get_many(["p:1", "p:2", "p:3", "p:4"]) == [1, {"two": 2}, [3], "four"]
    _all_present(senv, "p:1", "p:2", "p:3", "p:4")
    assert senv.cache.ttl("p:3") == pytest.approx(5, abs=0.5)
    assert senv.cache.ttl("p:4") == pytest.approx(50, abs=0.5)
    senv.cache.invalidate_by_tag("three")
    _all_absent(senv, "p:3")
    _all_present(senv, "p:4")
    senv.clock.advance(51)
    assert senv.cache.get("p:4") is None
    senv.cache.set_many([])


def test_delete(senv: SyncEnv) -> None:
    senv.cache.set("d", 1)
    senv.cache.set("d:child", 2)
    senv.cache.delete("d")
    _all_absent(senv, "d")
    _all_present(senv, "d:child")
    assert senv.cache.get("d") is None
    senv.cache.delete("never-there")


def test_delete_many(senv: SyncEnv) -> None:
    senv.cache.set_many([("a", 1), ("b", 2), ("c", 3)])
    senv.cache.delete_many(["a", "c", "absent"])
    _all_absent(senv, "a", "c")
    _all_present(senv, "b")
    senv.cache.delete_many([])


def test_clear(senv: SyncEnv) -> None:
    senv.cache.set_many([(f"c:{i}", i) for i in range(5)])
    senv.cache.set("tagged", 1, tags=["t"])
    senv.cache.clear()
    _all_absent(senv, *[f"c:{i}" for i in range(5)], "tagged")
    assert senv.cache.get("c:1") is None
    # Usable afterwards, and the tag index forgot the cleared keys.
    senv.cache.set("tagged", 2)
    senv.cache.invalidate_by_tag("t")
    assert senv.cache.get("tagged") == 2


def test_clear_leaves_foreign_redis_keys(senv: SyncEnv) -> None:
    if senv.kind != "memory+redis":
        pytest.skip("redis-specific")
    import redis

    server = senv.extra["server"]
    with redis.Redis(host=server.host, port=server.port) as client:
        client.set("foreign:key", b"not ours")
        senv.cache.set("ours", 1)
        senv.cache.clear()
        assert client.get("foreign:key") == b"not ours", "clear() touched a key outside the prefix"
    _all_absent(senv, "ours")


def test_invalidate_by_tag(senv: SyncEnv) -> None:
    senv.cache.set("user:1", "u1", tags=["user", "user:1"])
    senv.cache.set("user:1:posts", "p1", tags=["user:1"])
    senv.cache.set("user:2", "u2", tags=["user", "user:2"])
    senv.cache.set("untagged", "x")
    senv.cache.invalidate_by_tag("user:1")
    _all_absent(senv, "user:1", "user:1:posts")
    _all_present(senv, "user:2", "untagged")
    senv.cache.invalidate_by_tag("user")
    _all_absent(senv, "user:2")
    _all_present(senv, "untagged")
    senv.cache.invalidate_by_tag("no-such-tag")


def test_invalidate_by_tags_any_and_all(senv: SyncEnv) -> None:
    senv.cache.set("xy", 1, tags=["x", "y"])
    senv.cache.set("x", 2, tags=["x"])
    senv.cache.set("y", 3, tags=["y"])
    senv.cache.set("z", 4, tags=["z"])
    senv.cache.invalidate_by_tags(["x", "y"], mode="all")
    _all_absent(senv, "xy")
    _all_present(senv, "x", "y", "z")
    senv.cache.invalidate_by_tags(["x", "z"], mode="any")
    _all_absent(senv, "x", "z")
    _all_present(senv, "y")
    senv.cache.invalidate_by_tags(["y"])
    _all_absent(senv, "y")
    with pytest.raises(ValueError, match="mode"):
        senv.cache.invalidate_by_tags(["x"], mode="some")  # type: ignore[arg-type]


def test_invalidate_by_pattern(senv: SyncEnv) -> None:
    keys = ["user:1", "user:2", "user:10", "users", "post:1", "a*b", "aXb", "🎉:1"]
    senv.cache.set_many([(k, k) for k in keys])
    senv.cache.invalidate_by_pattern("user:?")
    _all_absent(senv, "user:1", "user:2")
    _all_present(senv, "user:10", "users", "post:1", "a*b", "aXb")
    senv.cache.invalidate_by_pattern("a\\*b")
    _all_absent(senv, "a*b")
    _all_present(senv, "aXb")
    senv.cache.invalidate_by_pattern("[pu]*1*")
    _all_absent(senv, "user:10", "post:1")
    _all_present(senv, "users", "🎉:1")
    senv.cache.invalidate_by_pattern("🎉:*")
    _all_absent(senv, "🎉:1")
    senv.cache.invalidate_by_pattern("*")
    _all_absent(senv, *keys)


def test_invalidate_by_prefix(senv: SyncEnv) -> None:
    keys = ["user:1", "user:10", "user:1:posts", "user:2", "user", "a*b", "ab", "🎉x", "🎉y"]
    senv.cache.set_many([(k, k) for k in keys])
    senv.cache.invalidate_by_prefix("user:1")
    _all_absent(senv, "user:1", "user:10", "user:1:posts")
    _all_present(senv, "user:2", "user", "a*b", "ab")
    senv.cache.invalidate_by_prefix("a*")  # literal text, never a glob
    _all_absent(senv, "a*b")
    _all_present(senv, "ab")
    senv.cache.invalidate_by_prefix("🎉")
    _all_absent(senv, "🎉x", "🎉y")
    assert senv.layer_values("user:2") == ["user:2"] * len(senv.layers)
    assert ABSENT not in senv.layer_values("ab")
