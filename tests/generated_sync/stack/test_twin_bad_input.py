# DO NOT EDIT: generated from tests/stack/test_bad_input.py
# by scripts/unasync_tests.py. Change the async source and run
# `python scripts/unasync_tests.py`.
"""Bad input raises before any layer is touched; emoji keys and large values work."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twin_stack_support import RecordingLayer, StackEnv, lcall

from layercache import CacheEntry, CacheEntryRequest, MemoryLayer, SyncCacheStack
from layercache.testing import ManualClock

BAD_KEYS: list[object] = [
    "",
    "x" * 1025,
    "nul\x00key",
    "new\nline",
    "tab\tkey",
    "del\x7fkey",
    "nel\x85key",
    "esc\x1bkey",
    123,
    None,
    b"bytes",
    3.5,
]


class Spy(RecordingLayer):
    """A recording layer that is also L1, so every stack path would reach it."""


@pytest.fixture
def spied(clock: ManualClock) -> Iterator[tuple[SyncCacheStack, Spy, Spy]]:
    top, bottom = Spy("top"), Spy("bottom")
    cache = SyncCacheStack([top, bottom], clock=clock)
    yield cache, top, bottom
    cache.close()


KeyOp = Callable[[SyncCacheStack, Any], object]

KEY_OPERATIONS: dict[str, KeyOp] = {
    "get": lambda c, k: c.get(k),
    "get+fetcher": lambda c, k: c.get(k, lambda: 1),
    "get_or_raise": lambda c, k: c.get_or_raise(k, lambda: 1),
    "get_many": lambda c, k: c.get_many(["ok", k]),
    "get_many+pair": lambda c, k: c.get_many([("ok", lambda: 1), (k, lambda: 1)]),
    "get_many+request": lambda c, k: c.get_many([CacheEntryRequest("ok"), CacheEntryRequest(k)]),
    "has": lambda c, k: c.has(k),
    "ttl": lambda c, k: c.ttl(k),
    "inspect": lambda c, k: c.inspect(k),
    "set": lambda c, k: c.set(k, 1),
    "set_many": lambda c, k: c.set_many([("ok", 1), (k, 2)]),
    "set_many+entry": lambda c, k: c.set_many([CacheEntry("ok", 1), CacheEntry(k, 2)]),
    "delete": lambda c, k: c.delete(k),
    "delete_many": lambda c, k: c.delete_many(["ok", k]),
    "namespace.get": lambda c, k: c.namespace("ns").get(k),
    "namespace.set": lambda c, k: c.namespace("ns").set(k, 1),
}


@pytest.mark.parametrize("operation", list(KEY_OPERATIONS))
@pytest.mark.parametrize("key", BAD_KEYS, ids=lambda k: repr(k)[:20])
def test_invalid_keys_raise_before_any_layer_is_touched(
    spied: tuple[SyncCacheStack, Spy, Spy], operation: str, key: object
) -> None:
    cache, top, bottom = spied
    with pytest.raises(ValueError, match="key"):
        KEY_OPERATIONS[operation](cache, key)
    assert top.calls == [], f"{operation} touched a layer before rejecting {key!r}"
    assert bottom.calls == []


def test_longest_valid_key_and_unicode_keys_work(spied: tuple[SyncCacheStack, Spy, Spy]) -> None:
    cache, top, _ = spied
    for key in ("x" * 1024, "emoji:🎉🔥", "nbsp\u00a0key", "ключ", "日本語"):
        cache.set(key, key)
        assert cache.get(key) == key
    assert ("set", "x" * 1024) in top.calls


BAD_PATTERNS: list[object] = ["", "x" * 1025, "a\x00*", "a\n*", "\x7f*", "\x85*", 7, None]


@pytest.mark.parametrize("pattern", BAD_PATTERNS, ids=lambda p: repr(p)[:20])
def test_invalid_patterns_and_prefixes(
    spied: tuple[SyncCacheStack, Spy, Spy], pattern: object
) -> None:
    cache, top, bottom = spied
    with pytest.raises(ValueError, match="pattern"):
        cache.invalidate_by_pattern(pattern)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prefix"):
        cache.invalidate_by_prefix(pattern)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pattern"):
        cache.namespace("ns").invalidate_by_pattern(pattern)  # type: ignore[arg-type]
    assert top.calls == bottom.calls == []


def test_invalid_tags(spied: tuple[SyncCacheStack, Spy, Spy]) -> None:
    cache, top, bottom = spied
    with pytest.raises(ValueError, match="tag"):
        cache.invalidate_by_tag("")
    with pytest.raises(ValueError, match="tag"):
        cache.set("k", 1, tags="not-a-list")
    with pytest.raises(ValueError, match="tag"):
        cache.set("k", 1, tags=["ok", "bad\ntag"])
    assert top.calls == bottom.calls == []


BAD_OPTIONS: list[dict[str, Any]] = [
    {"ttl": -1},
    {"ttl": float("nan")},
    {"ttl": float("inf")},
    {"ttl": "10"},
    {"ttl": dt.timedelta(seconds=-5)},
    {"ttl": {"top": -1}},
    {"ttl": {"top": 5, "bottom": "x"}},
    {"negative_ttl": -1},
    {"ttl_jitter": -1},
    {"ttl_jitter": {"top": -2}},
    {"ttl_policy": "tomorrow"},
    {"ttl_policy": {"align_to": 0}},
    {"ttl_policy": {"align_to": -60}},
    {"ttl_policy": {"every": 60}},
    {"negative_cache": "yes"},
    {"should_cache": "not callable"},
]


@pytest.mark.parametrize("options", BAD_OPTIONS, ids=repr)
def test_bad_option_values_raise_value_error_untouched(
    spied: tuple[SyncCacheStack, Spy, Spy], options: dict[str, Any]
) -> None:
    cache, top, bottom = spied
    # The message names the offending option.
    name = next(iter(options))
    with pytest.raises(ValueError, match=name):
        cache.set("k", 1, **options)
    with pytest.raises(ValueError, match=name):
        cache.get("k", lambda: 1, **options)
    with pytest.raises(ValueError, match=name):
        cache.set_many([CacheEntry("k", 1, options=options)])
    with pytest.raises(ValueError, match=name):
        cache.get_many([CacheEntryRequest("k", lambda: 1, options=options)])
    with pytest.raises(ValueError, match=name):
        cache.wrap("w", lambda: 1, **options)()
    assert top.calls == bottom.calls == []


def test_unknown_options_raise_type_error(spied: tuple[SyncCacheStack, Spy, Spy]) -> None:
    cache, top, bottom = spied
    with pytest.raises(TypeError):
        cache.set("k", 1, tll=5)
    with pytest.raises(TypeError):
        cache.get("k", lambda: 1, bogus=True)
    with pytest.raises(TypeError):
        cache.set_many([CacheEntry("k", 1, options={"tll": 5})])
    with pytest.raises(TypeError):
        cache.get_many([CacheEntryRequest("k", options={"tll": 5})])
    with pytest.raises(TypeError):
        cache.wrap("w", lambda: 1, tll=5)
    assert top.calls == bottom.calls == []


def test_bad_stack_construction(clock: ManualClock) -> None:
    with pytest.raises(ValueError, match="layer"):
        SyncCacheStack([])
    with pytest.raises(ValueError, match="name"):
        SyncCacheStack([MemoryLayer(), MemoryLayer()])  # both named "memory"
    with pytest.raises(TypeError, match="bogus_option"):
        SyncCacheStack([MemoryLayer()], bogus_option=1)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="fetch_timeout"):
        SyncCacheStack([MemoryLayer()], fetch_timeout=-1)
    with pytest.raises(ValueError, match="negative_ttl"):
        SyncCacheStack([MemoryLayer()], negative_ttl=-1)
    with pytest.raises(ValueError, match="write_policy"):
        SyncCacheStack([MemoryLayer()], write_policy="sometimes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [{"eviction": "random"}, {"ttl": -1}, {"max_size": 0}, {"max_size": -5}, {"max_bytes": 0}],
    ids=repr,
)
def test_bad_memory_layer_options(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        MemoryLayer(**kwargs)


def test_emoji_keys_through_every_stack(env: StackEnv) -> None:
    key = "emoji:🎉🔥:ключ:日本"
    assert env.cache.get(key, lambda: {"party": "🎉"}) == {"party": "🎉"}
    assert env.in_layers(key) == [layer.name for layer in env.layers]
    if env.lower is not None:
        lcall(env.memory, "delete", key)
    assert env.cache.get(key) == {"party": "🎉"}
    env.cache.invalidate_by_prefix("emoji:🎉")
    assert env.in_layers(key) == []


def test_several_mib_value(env: StackEnv) -> None:
    blob = os.urandom(3 * 1024 * 1024).hex()  # 6 MiB of text
    value = {"blob": blob, "meta": [1, 2, 3]}
    assert env.cache.get("big", lambda: value) == value
    assert env.in_layers("big") == [layer.name for layer in env.layers]
    if env.lower is not None:
        lcall(env.memory, "delete", "big")
    assert env.cache.get("big") == value, "the large value did not round-trip"
    env.cache.set("big2", value)
    if env.lower is not None:
        lcall(env.memory, "delete", "big2")
    assert env.cache.get("big2") == value


def test_per_layer_dict_naming_an_unknown_layer_is_refused() -> None:
    from layercache import MemoryLayer, SyncCacheStack

    cache = SyncCacheStack([MemoryLayer(name="memory")])
    with pytest.raises(ValueError, match="memroy"):
        cache.get("k", lambda: 1, ttl={"memroy": 5})
    with pytest.raises(ValueError, match="unknown layer"):
        SyncCacheStack([MemoryLayer()], ttl_jitter={"redis": 1})
    assert cache.get("k") is None
