"""CacheStack writes and invalidation, checked against every layer directly."""

from __future__ import annotations

import pytest
from stack_support import ABSENT, StackEnv

from layercache import CacheEntry, CacheOptions


async def _all_absent(env: StackEnv, *keys: str) -> None:
    for key in keys:
        assert await env.in_layers(key) == [], f"{key!r} still stored in {await env.in_layers(key)}"


async def _all_present(env: StackEnv, *keys: str) -> None:
    names = [layer.name for layer in env.layers]
    for key in keys:
        assert await env.in_layers(key) == names, f"{key!r} only in {await env.in_layers(key)}"


async def test_set_writes_every_layer(env: StackEnv) -> None:
    await env.cache.set("s", {"x": [1, 2]})
    assert await env.layer_values("s") == [{"x": [1, 2]}] * len(env.layers)
    await env.cache.set("s", "replaced")
    assert await env.layer_values("s") == ["replaced"] * len(env.layers)
    assert await env.cache.get("s") == "replaced"


async def test_set_many_pairs_and_cache_entries(env: StackEnv) -> None:
    await env.cache.set_many(
        [
            ("p:1", 1),
            CacheEntry("p:2", {"two": 2}),
            CacheEntry("p:3", [3], options={"ttl": 5, "tags": ["three"]}),
            CacheEntry("p:4", "four", options=CacheOptions(ttl=50, tags=("four",))),
        ]
    )
    assert await env.cache.get_many(["p:1", "p:2", "p:3", "p:4"]) == [1, {"two": 2}, [3], "four"]
    await _all_present(env, "p:1", "p:2", "p:3", "p:4")
    assert await env.cache.ttl("p:3") == pytest.approx(5, abs=0.5)
    assert await env.cache.ttl("p:4") == pytest.approx(50, abs=0.5)
    await env.cache.invalidate_by_tag("three")
    await _all_absent(env, "p:3")
    await _all_present(env, "p:4")
    env.clock.advance(51)
    assert await env.cache.get("p:4") is None
    await env.cache.set_many([])


async def test_delete(env: StackEnv) -> None:
    await env.cache.set("d", 1)
    await env.cache.set("d:child", 2)
    await env.cache.delete("d")
    await _all_absent(env, "d")
    await _all_present(env, "d:child")
    assert await env.cache.get("d") is None
    await env.cache.delete("never-there")


async def test_delete_many(env: StackEnv) -> None:
    await env.cache.set_many([("a", 1), ("b", 2), ("c", 3)])
    await env.cache.delete_many(["a", "c", "absent"])
    await _all_absent(env, "a", "c")
    await _all_present(env, "b")
    await env.cache.delete_many([])


async def test_clear(env: StackEnv) -> None:
    await env.cache.set_many([(f"c:{i}", i) for i in range(5)])
    await env.cache.set("tagged", 1, tags=["t"])
    await env.cache.clear()
    await _all_absent(env, *[f"c:{i}" for i in range(5)], "tagged")
    assert await env.cache.get("c:1") is None
    # The stack is usable afterwards and the tag index forgot the cleared keys.
    await env.cache.set("tagged", 2)
    await env.cache.invalidate_by_tag("t")
    assert await env.cache.get("tagged") == 2


async def test_clear_leaves_foreign_redis_keys(build_stack) -> None:  # type: ignore[no-untyped-def]
    env: StackEnv = await build_stack()
    if env.kind != "memory+redis":
        pytest.skip("redis-specific")
    client = env.extra["redis"]
    await client.set("foreign:key", b"not ours")
    await env.cache.set("ours", 1)
    await env.cache.clear()
    assert await client.get("foreign:key") == b"not ours", (
        "clear() touched a key outside the prefix"
    )
    await _all_absent(env, "ours")


async def test_invalidate_by_tag(env: StackEnv) -> None:
    await env.cache.set("user:1", "u1", tags=["user", "user:1"])
    await env.cache.set("user:1:posts", "p1", tags=["user:1"])
    await env.cache.set("user:2", "u2", tags=["user", "user:2"])
    await env.cache.set("untagged", "x")
    await env.cache.invalidate_by_tag("user:1")
    await _all_absent(env, "user:1", "user:1:posts")
    await _all_present(env, "user:2", "untagged")
    await env.cache.invalidate_by_tag("user")
    await _all_absent(env, "user:2")
    await _all_present(env, "untagged")
    await env.cache.invalidate_by_tag("no-such-tag")


async def test_invalidate_by_tags_any_and_all(env: StackEnv) -> None:
    await env.cache.set("xy", 1, tags=["x", "y"])
    await env.cache.set("x", 2, tags=["x"])
    await env.cache.set("y", 3, tags=["y"])
    await env.cache.set("z", 4, tags=["z"])
    await env.cache.invalidate_by_tags(["x", "y"], mode="all")
    await _all_absent(env, "xy")
    await _all_present(env, "x", "y", "z")
    await env.cache.invalidate_by_tags(["x", "z"], mode="any")
    await _all_absent(env, "x", "z")
    await _all_present(env, "y")
    await env.cache.invalidate_by_tags(["y"])  # default mode is "any"
    await _all_absent(env, "y")


async def test_invalidate_by_tags_rejects_unknown_mode(env: StackEnv) -> None:
    with pytest.raises(ValueError, match="mode"):
        await env.cache.invalidate_by_tags(["x"], mode="some")  # type: ignore[arg-type]


async def test_invalidate_by_pattern(env: StackEnv) -> None:
    keys = ["user:1", "user:2", "user:10", "users", "post:1", "a*b", "aXb", "🎉:1"]
    await env.cache.set_many([(k, k) for k in keys])
    await env.cache.invalidate_by_pattern("user:?")
    await _all_absent(env, "user:1", "user:2")
    await _all_present(env, "user:10", "users", "post:1", "a*b", "aXb")
    await env.cache.invalidate_by_pattern("a\\*b")
    await _all_absent(env, "a*b")
    await _all_present(env, "aXb")
    await env.cache.invalidate_by_pattern("[pu]*1*")
    await _all_absent(env, "user:10", "post:1")
    await _all_present(env, "users", "🎉:1")
    await env.cache.invalidate_by_pattern("🎉:*")
    await _all_absent(env, "🎉:1")
    await env.cache.invalidate_by_pattern("*")
    await _all_absent(env, *keys)


async def test_invalidate_by_prefix(env: StackEnv) -> None:
    keys = ["user:1", "user:10", "user:1:posts", "user:2", "user", "a*b", "ab", "🎉x", "🎉y"]
    await env.cache.set_many([(k, k) for k in keys])
    await env.cache.invalidate_by_prefix("user:1")
    await _all_absent(env, "user:1", "user:10", "user:1:posts")
    await _all_present(env, "user:2", "user", "a*b", "ab")
    # A prefix is literal text, never a glob.
    await env.cache.invalidate_by_prefix("a*")
    await _all_absent(env, "a*b")
    await _all_present(env, "ab")
    await env.cache.invalidate_by_prefix("🎉")
    await _all_absent(env, "🎉x", "🎉y")
    assert await env.layer_values("user:2") == ["user:2"] * len(env.layers)
    assert ABSENT not in await env.layer_values("ab")


async def test_a_value_the_lower_layer_cannot_serialize_is_the_callers_error(
    build_layered,  # type: ignore[no-untyped-def]
) -> None:
    # A TypeError for the caller, not a failure of the layer: even under graceful degradation
    # the layer stays in service (a later write reaches it), and no layer keeps the rejected
    # value, so every reader goes on reading the old one.
    env: StackEnv = await build_layered(graceful_degradation=True)
    lower = env.layers[1].name
    await env.cache.set("k", "old")
    await env.cache.set_many([("m", "old")])
    with pytest.raises(TypeError, match="cannot be serialized"):
        await env.cache.set("k", object())
    with pytest.raises(TypeError, match="cannot be serialized"):
        await env.cache.set_many([("m", object()), ("other", "fine")])
    for key in ("k", "m"):
        assert await env.in_layers(key) == [lower]
        assert await env.cache.get(key) == "old"
    await env.cache.set("after", "good")
    assert await env.in_layers("after") == [layer.name for layer in env.layers]
