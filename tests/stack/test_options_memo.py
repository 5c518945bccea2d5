"""Per-call options are validated once per distinct set, never skipped (issue 13's hot path)."""

from __future__ import annotations

import pytest

from layercache import CacheOptions, CacheStack, MemoryLayer


async def test_the_same_options_are_validated_once_and_still_applied() -> None:
    cache = CacheStack([MemoryLayer()])
    for i in range(3):
        assert await cache.get(f"k{i}", lambda: "v", ttl=60, tags=["t"]) == "v"
    assert len(cache._memo) == 1  # one entry for the three calls
    assert await cache.ttl("k0") == pytest.approx(60, abs=1)
    assert await cache.invalidate_by_tag("t") == 3  # the tags were applied each time


async def test_equal_values_of_another_type_are_validated_on_their_own() -> None:
    cache = CacheStack([MemoryLayer()])
    assert await cache.get("a", lambda: "v", negative_cache=True) == "v"
    with pytest.raises(ValueError, match="negative_cache"):
        await cache.get("b", lambda: "v", negative_cache=1)  # 1 == True, but not a bool
    with pytest.raises(ValueError, match="ttl"):
        await cache.get("c", lambda: "v", ttl=-1)
    with pytest.raises(ValueError, match="ttl"):
        await cache.get("c", lambda: "v", ttl=-1)  # refused again: failures are not kept


async def test_an_options_object_is_remembered_by_identity_and_the_memo_is_bounded() -> None:
    cache = CacheStack([MemoryLayer()])
    options = CacheOptions(ttl=30)
    await cache.get("a", lambda: "v", options=options)
    await cache.get("b", lambda: "v", options=options)
    assert len(cache._memo) == 1
    for i in range(1000):
        await cache.get("x", lambda: "v", ttl=i + 1)
    assert len(cache._memo) <= 256
    # Unhashable values (a per-layer dict) work, unremembered.
    assert await cache.get("d", lambda: "v", ttl={"memory": 5}) == "v"
