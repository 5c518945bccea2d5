# DO NOT EDIT: generated from tests/stack/test_generations.py
# by scripts/unasync_tests.py. Change the async source and run
# `python scripts/unasync_tests.py`.
"""Key generations: every key stored as ``v{N}:key``; bumping invalidates all at once."""

from __future__ import annotations

import time

import pytest

from _twins_sync import pause
from layercache import MemoryLayer, SyncCacheStack


def wait_until(predicate: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        pause(0.005)


def test_keys_live_under_their_generation_and_a_bump_hides_them() -> None:
    memory = MemoryLayer()
    cache = SyncCacheStack([memory], generation=3)
    cache.set("user:1", "a")
    assert memory.keys() == ["v3:user:1"]
    assert cache.get("user:1") == "a"
    assert cache.get_many(["user:1"]) == ["a"]
    assert cache.has("user:1")
    assert cache.get_generation() == 3
    assert cache.bump_generation() == 4
    assert cache.get_generation() == 4
    assert cache.get("user:1") is None
    assert cache.get("user:1", lambda: "b") == "b"
    stored = memory.keys()
    assert "v4:user:1" in stored
    assert "v3:user:1" in stored  # no cleanup configured: old keys just age out


def test_generation_cleanup_deletes_the_old_generation_in_the_background() -> None:
    memory = MemoryLayer()
    cache = SyncCacheStack([memory], generation=1, generation_cleanup={"batch_size": 10})
    for i in range(50):
        cache.set(f"k{i}", i)
    cache.bump_generation()
    cache.set("k0", "new")
    wait_until(lambda: memory.keys() == ["v2:k0"])
    cache.close()


def test_patterns_and_prefixes_stay_inside_the_current_generation() -> None:
    memory = MemoryLayer()
    cache = SyncCacheStack([memory], generation=1)
    cache.set("a:1", 1)
    cache.set("b:1", 2)
    assert cache.invalidate_by_prefix("a:") == 1
    assert memory.keys() == ["v1:b:1"]


@pytest.mark.parametrize("bad", [-1, True, "1", 1.5])
def test_bad_generation_values_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="generation"):
        SyncCacheStack([MemoryLayer()], generation=bad)  # type: ignore[arg-type]
