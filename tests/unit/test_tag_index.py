"""The in-process tag index, alone and behind a CacheStack (its bound must never lose a key)."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layercache import CacheEntry, CacheStack, DiskLayer, Entry, InMemoryTagIndex, MemoryLayer
from layercache.testing import ManualClock

# -- the index alone ------------------------------------------------------------------------------


async def test_any_and_all() -> None:
    index = InMemoryTagIndex()
    index.record("k1", ["a", "b"])
    index.record("k2", ["b", "c"])
    index.record("k3", ["c"])
    assert index.keys_for_tags(["a"]) == {"k1"}
    assert index.keys_for_tags(["b"]) == {"k1", "k2"}
    assert index.keys_for_tags(["a", "c"], "any") == {"k1", "k2", "k3"}
    assert index.keys_for_tags(["b", "c"], "all") == {"k2"}
    assert index.keys_for_tags(["a", "c"], "all") == set()
    assert index.keys_for_tags(["b", "unknown"], "all") == set()
    assert index.keys_for_tags(["unknown"]) == set()
    assert index.keys_for_tags([]) == set()
    assert index.keys_for_tags([], "all") == set()


async def test_results_are_copies() -> None:
    index = InMemoryTagIndex()
    index.record("k1", ["a"])
    result = index.keys_for_tags(["a"], "all")
    result.add("intruder")
    assert index.keys_for_tags(["a"], "all") == {"k1"}
    assert index.keys_for_tags(["a"]) == {"k1"}


async def test_record_replaces_the_tags() -> None:
    index = InMemoryTagIndex()
    index.record("k", ["a", "b"])
    assert index.record("k", ["c"]) == []
    assert index.tags_of("k") == ("c",)
    assert index.keys_for_tags(["a", "b"]) == set()
    assert index.keys_for_tags(["c"]) == {"k"}
    index.record("k", [])  # no tags: the key leaves the index
    assert index.tags_of("k") == ()
    assert index.keys_for_tags(["c"]) == set()
    assert len(index) == 0


async def test_remove_clear_and_glob() -> None:
    index = InMemoryTagIndex()
    for key in ("user:1", "user:2", "post:1"):
        index.record(key, ["t"])
    assert sorted(index.keys_matching("user:*")) == ["user:1", "user:2"]
    index.remove(["user:1", "absent"])
    assert index.keys_for_tags(["t"]) == {"user:2", "post:1"}
    index.clear()
    assert len(index) == 0
    assert index.keys_for_tags(["t"]) == set()


async def test_bound_evicts_the_oldest_recorded_key() -> None:
    index = InMemoryTagIndex(max_keys=3)
    for key in ("k1", "k2", "k3"):
        assert index.record(key, ["t"]) == []
    assert index.record("k4", ["t"]) == ["k1"]
    assert len(index) == 3
    assert index.keys_for_tags(["t"]) == {"k2", "k3", "k4"}
    index.record("k2", ["u"])  # re-recording makes k2 the newest
    assert index.record("k5", ["t"]) == ["k3"]
    assert index.keys_for_tags(["t"]) == {"k4", "k5"}
    assert index.record("k4", ["t", "u"]) == []  # replacing never evicts
    assert len(index) == 3


@pytest.mark.parametrize("bad", [0, -1, 1.5, "10", None])
def test_bound_must_be_a_positive_int(bad: Any) -> None:
    with pytest.raises(ValueError, match="max_keys"):
        InMemoryTagIndex(max_keys=bad)


# A model of the index: key -> tags in recording order, bounded the same way.
ops = st.lists(
    st.tuples(
        st.sampled_from(["record", "record", "record", "remove"]),
        st.sampled_from([f"k{i}" for i in range(8)]),
        st.lists(st.sampled_from("abcd"), max_size=3, unique=True),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(ops=ops, bound=st.integers(min_value=1, max_value=6))
def test_index_matches_a_model(ops: list[tuple[str, str, list[str]]], bound: int) -> None:
    async def run() -> None:
        index = InMemoryTagIndex(max_keys=bound)
        model: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        for op, key, tags in ops:
            if op == "remove":
                index.remove([key])
                model.pop(key, None)
                continue
            evicted = index.record(key, tags)
            model.pop(key, None)
            expected: list[str] = []
            if tags:
                model[key] = tuple(tags)
                while len(model) > bound:
                    expected.append(model.popitem(last=False)[0])
            assert evicted == expected
            assert len(index) == len(model) <= bound
            for tag_set in (["a"], ["b", "c"], ["a", "b", "c", "d"]):
                wanted = set(tag_set)
                any_keys = {k for k, t in model.items() if wanted & set(t)}
                all_keys = {k for k, t in model.items() if wanted <= set(t)}
                assert index.keys_for_tags(tag_set, "any") == any_keys
                assert index.keys_for_tags(tag_set, "all") == all_keys
        for key in model:
            assert index.tags_of(key) == model[key]

    asyncio.run(run())


batches = st.lists(
    st.lists(
        st.tuples(
            st.sampled_from([f"k{i}" for i in range(8)]),
            st.lists(st.sampled_from("abcd"), max_size=3, unique=True),
        ),
        max_size=10,
    ),
    max_size=6,
)


@settings(max_examples=200, deadline=None)
@given(batches=batches, bound=st.integers(min_value=1, max_value=6))
def test_record_many_equals_one_record_per_key(
    batches: list[list[tuple[str, list[str]]]], bound: int
) -> None:
    async def run() -> None:
        batched = InMemoryTagIndex(max_keys=bound)
        one_by_one = InMemoryTagIndex(max_keys=bound)
        for batch in batches:
            expected: list[str] = []
            for key, tags in batch:
                expected.extend(one_by_one.record(key, tags))
            assert batched.record_many([(k, t, None) for k, t in batch]) == expected
            assert batched._key_tags == one_by_one._key_tags
            assert batched._tag_keys == one_by_one._tag_keys

    asyncio.run(run())


# -- behind a CacheStack: a bounded index must never let invalidation miss a key -----------------


def _stack(bound: int) -> tuple[CacheStack, list[MemoryLayer]]:
    clock = ManualClock()
    layers = [
        MemoryLayer(ttl=3600, name="l1", clock=clock),
        MemoryLayer(ttl=3600, name="l2", clock=clock),
    ]
    return CacheStack(layers, clock=clock, max_tag_index_keys=bound), layers


def _holders(layers: list[MemoryLayer], key: str) -> list[str]:
    return [layer.name for layer in layers if layer.get(key) is not None]


async def test_evicted_index_entry_is_deleted_from_every_layer() -> None:
    cache, layers = _stack(3)
    for i in range(1, 4):
        await cache.set(f"k{i}", i, tags=["t"])
    await cache.set("plain", 0)  # untagged keys do not count against the bound
    await cache.set("k4", 4, tags=["other"])
    assert _holders(layers, "k1") == [], "k1 left the index, so it must leave the layers"
    assert _holders(layers, "plain") == ["l1", "l2"]
    for key in ("k2", "k3", "k4"):
        assert _holders(layers, key) == ["l1", "l2"]
    assert await cache.get("k1") is None
    assert await cache.invalidate_by_tag("t") == 2
    assert _holders(layers, "k2") == _holders(layers, "k3") == []
    assert _holders(layers, "k4") == ["l1", "l2"]
    await cache.aclose()


async def test_eviction_through_set_many_and_fetch() -> None:
    cache, layers = _stack(3)
    await cache.set_many([CacheEntry(f"m{i}", i, options={"tags": ["t"]}) for i in range(5)])
    assert [k for k in (f"m{i}" for i in range(5)) if _holders(layers, k)] == ["m2", "m3", "m4"]
    assert await cache.get("f", lambda: "fetched", tags=["t"]) == "fetched"
    assert _holders(layers, "m2") == []
    assert await cache.invalidate_by_tag("t") == 3
    assert all(_holders(layers, k) == [] for k in ("m3", "m4", "f"))
    await cache.aclose()


operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("set"),
            st.sampled_from([f"k{i}" for i in range(10)]),
            st.lists(st.sampled_from("abc"), max_size=2, unique=True),
        ),
        st.tuples(
            st.just("fetch"),
            st.sampled_from([f"k{i}" for i in range(10)]),
            st.lists(st.sampled_from("abc"), max_size=2, unique=True),
        ),
        st.tuples(st.just("delete"), st.sampled_from([f"k{i}" for i in range(10)]), st.just([])),
        st.tuples(st.just("invalidate"), st.just(""), st.lists(st.sampled_from("abc"), max_size=1)),
    ),
    max_size=30,
)


@settings(max_examples=100, deadline=None)
@given(ops=operations, bound=st.integers(min_value=1, max_value=4))
def test_invalidate_by_tag_never_misses_a_cached_key(
    ops: list[tuple[str, str, list[str]]], bound: int
) -> None:
    async def run() -> None:
        cache, layers = _stack(bound)
        for op, key, tags in ops:
            if op == "set":
                await cache.set(key, key, tags=tags)
            elif op == "fetch":
                await cache.get(key, lambda: "fetched", tags=tags)
            elif op == "delete":
                await cache.delete(key)
            elif tags:
                await cache.invalidate_by_tag(tags[0])
            _check_bounded(layers, bound)
        for tag in "abc":
            await cache.invalidate_by_tag(tag)
            for layer in layers:
                for key in layer.keys("*"):
                    stored = layer.get(key)
                    assert isinstance(stored, Entry)
                    assert tag not in stored.tags, f"{key} with tag {tag} survived in {layer.name}"
        await cache.aclose()

    asyncio.run(run())


def _check_bounded(layers: list[MemoryLayer], bound: int) -> None:
    for layer in layers:
        tagged = [k for k in layer.keys("*") if (e := layer.get(k)) is not None and e.tags]
        assert len(tagged) <= bound, f"{layer.name} holds {len(tagged)} tagged keys > {bound}"


async def test_invalidate_by_tag_after_a_restart_finds_backfilled_keys(tmp_path: Path) -> None:
    clock = ManualClock()
    first = CacheStack(
        [MemoryLayer(clock=clock), DiskLayer(tmp_path / "disk", ttl=3600, clock=clock)],
        clock=clock,
    )
    await first.set("k", "v", tags=["t"])
    await first.aclose()
    # A new process: empty memory and tag index, same disk.
    memory = MemoryLayer(clock=clock)
    second = CacheStack([memory, DiskLayer(tmp_path / "disk", ttl=3600, clock=clock)], clock=clock)
    try:
        assert await second.get("k") == "v"
        assert memory.get("k") is not None
        await second.invalidate_by_tag("t")
        assert await second.get("k") is None
    finally:
        await second.aclose()
