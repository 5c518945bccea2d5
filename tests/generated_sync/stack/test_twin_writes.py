# DO NOT EDIT: generated from tests/stack/test_writes.py
# by scripts/unasync_tests.py. Change the async source and run
# `python scripts/unasync_tests.py`.
"""SyncCacheStack writes and invalidation, checked against every layer directly."""

from __future__ import annotations

import pytest
from twin_stack_support import ABSENT, StackEnv

from layercache import CacheEntry, CacheOptions


def _all_absent(env: StackEnv, *keys: str) -> None:
    for key in keys:
        assert env.in_layers(key) == [], f"{key!r} still stored in {env.in_layers(key)}"


def _all_present(env: StackEnv, *keys: str) -> None:
    names = [layer.name for layer in env.layers]
    for key in keys:
        assert env.in_layers(key) == names, f"{key!r} only in {env.in_layers(key)}"


def test_set_writes_every_layer(env: StackEnv) -> None:
    env.cache.set("s", {"x": [1, 2]})
    assert env.layer_values("s") == [{"x": [1, 2]}] * len(env.layers)
    env.cache.set("s", "replaced")
    assert env.layer_values("s") == ["replaced"] * len(env.layers)
    assert env.cache.get("s") == "replaced"


def test_set_many_pairs_and_cache_entries(env: StackEnv) -> None:
    env.cache.set_many(
        [
            ("p:1", 1),
            CacheEntry("p:2", {"two": 2}),
            CacheEntry("p:3", [3], options={"ttl": 5, "tags": ["three"]}),
            CacheEntry("p:4", "four", options=CacheOptions(ttl=50, tags=("four",))),
        ]
    )
    assert env.cache.get_many(["p:1", "p:2", "p:3", "p:4"]) == [1, {"two": 2}, [3], "four"]
    _all_present(env, "p:1", "p:2", "p:3", "p:4")
    assert env.cache.ttl("p:3") == pytest.approx(5, abs=0.5)
    assert env.cache.ttl("p:4") == pytest.approx(50, abs=0.5)
    env.cache.invalidate_by_tag("three")
    _all_absent(env, "p:3")
    _all_present(env, "p:4")
    env.clock.advance(51)
    assert env.cache.get("p:4") is None
    env.cache.set_many([])


def test_delete(env: StackEnv) -> None:
    env.cache.set("d", 1)
    env.cache.set("d:child", 2)
    env.cache.delete("d")
    _all_absent(env, "d")
    _all_present(env, "d:child")
    assert env.cache.get("d") is None
    env.cache.delete("never-there")


def test_delete_many(env: StackEnv) -> None:
    env.cache.set_many([("a", 1), ("b", 2), ("c", 3)])
    env.cache.delete_many(["a", "c", "absent"])
    _all_absent(env, "a", "c")
    _all_present(env, "b")
    env.cache.delete_many([])


def test_clear(env: StackEnv) -> None:
    env.cache.set_many([(f"c:{i}", i) for i in range(5)])
    env.cache.set("tagged", 1, tags=["t"])
    env.cache.clear()
    _all_absent(env, *[f"c:{i}" for i in range(5)], "tagged")
    assert env.cache.get("c:1") is None
    # The stack is usable afterwards and the tag index forgot the cleared keys.
    env.cache.set("tagged", 2)
    env.cache.invalidate_by_tag("t")
    assert env.cache.get("tagged") == 2


def test_clear_leaves_foreign_redis_keys(build_stack) -> None:  # type: ignore[no-untyped-def]
    env: StackEnv = build_stack()
    if env.kind != "memory+redis":
        pytest.skip("redis-specific")
    client = env.extra["redis"]
    client.set("foreign:key", b"not ours")
    env.cache.set("ours", 1)
    env.cache.clear()
    assert client.get("foreign:key") == b"not ours", "clear() touched a key outside the prefix"
    _all_absent(env, "ours")


def test_invalidate_by_tag(env: StackEnv) -> None:
    env.cache.set("user:1", "u1", tags=["user", "user:1"])
    env.cache.set("user:1:posts", "p1", tags=["user:1"])
    env.cache.set("user:2", "u2", tags=["user", "user:2"])
    env.cache.set("untagged", "x")
    env.cache.invalidate_by_tag("user:1")
    _all_absent(env, "user:1", "user:1:posts")
    _all_present(env, "user:2", "untagged")
    env.cache.invalidate_by_tag("user")
    _all_absent(env, "user:2")
    _all_present(env, "untagged")
    env.cache.invalidate_by_tag("no-such-tag")


def test_invalidate_by_tags_any_and_all(env: StackEnv) -> None:
    env.cache.set("xy", 1, tags=["x", "y"])
    env.cache.set("x", 2, tags=["x"])
    env.cache.set("y", 3, tags=["y"])
    env.cache.set("z", 4, tags=["z"])
    env.cache.invalidate_by_tags(["x", "y"], mode="all")
    _all_absent(env, "xy")
    _all_present(env, "x", "y", "z")
    env.cache.invalidate_by_tags(["x", "z"], mode="any")
    _all_absent(env, "x", "z")
    _all_present(env, "y")
    env.cache.invalidate_by_tags(["y"])  # default mode is "any"
    _all_absent(env, "y")


def test_invalidate_by_tags_rejects_unknown_mode(env: StackEnv) -> None:
    with pytest.raises(ValueError, match="mode"):
        env.cache.invalidate_by_tags(["x"], mode="some")  # type: ignore[arg-type]


def test_invalidate_by_pattern(env: StackEnv) -> None:
    keys = ["user:1", "user:2", "user:10", "users", "post:1", "a*b", "aXb", "🎉:1"]
    env.cache.set_many([(k, k) for k in keys])
    env.cache.invalidate_by_pattern("user:?")
    _all_absent(env, "user:1", "user:2")
    _all_present(env, "user:10", "users", "post:1", "a*b", "aXb")
    env.cache.invalidate_by_pattern("a\\*b")
    _all_absent(env, "a*b")
    _all_present(env, "aXb")
    env.cache.invalidate_by_pattern("[pu]*1*")
    _all_absent(env, "user:10", "post:1")
    _all_present(env, "users", "🎉:1")
    env.cache.invalidate_by_pattern("🎉:*")
    _all_absent(env, "🎉:1")
    env.cache.invalidate_by_pattern("*")
    _all_absent(env, *keys)


def test_invalidate_by_prefix(env: StackEnv) -> None:
    keys = ["user:1", "user:10", "user:1:posts", "user:2", "user", "a*b", "ab", "🎉x", "🎉y"]
    env.cache.set_many([(k, k) for k in keys])
    env.cache.invalidate_by_prefix("user:1")
    _all_absent(env, "user:1", "user:10", "user:1:posts")
    _all_present(env, "user:2", "user", "a*b", "ab")
    # A prefix is literal text, never a glob.
    env.cache.invalidate_by_prefix("a*")
    _all_absent(env, "a*b")
    _all_present(env, "ab")
    env.cache.invalidate_by_prefix("🎉")
    _all_absent(env, "🎉x", "🎉y")
    assert env.layer_values("user:2") == ["user:2"] * len(env.layers)
    assert ABSENT not in env.layer_values("ab")


def test_a_value_the_lower_layer_cannot_serialize_is_the_callers_error(
    build_layered,  # type: ignore[no-untyped-def]
) -> None:
    # A TypeError for the caller, not a failure of the layer: even under graceful degradation
    # the layer stays in service (a later write reaches it), and no layer keeps the rejected
    # value, so every reader goes on reading the old one.
    env: StackEnv = build_layered(graceful_degradation=True)
    lower = env.layers[1].name
    env.cache.set("k", "old")
    env.cache.set_many([("m", "old")])
    with pytest.raises(TypeError, match="cannot be serialized"):
        env.cache.set("k", object())
    with pytest.raises(TypeError, match="cannot be serialized"):
        env.cache.set_many([("m", object()), ("other", "fine")])
    for key in ("k", "m"):
        assert env.in_layers(key) == [lower]
        assert env.cache.get(key) == "old"
    env.cache.set("after", "good")
    assert env.in_layers("after") == [layer.name for layer in env.layers]
