"""Option coercion: dicts, dataclasses, timedeltas, and every refused value, before any I/O."""

from __future__ import annotations

import datetime as dt
import decimal
import math
from dataclasses import fields
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from layercache import CacheEntry, CacheEntryRequest, CacheOptions, CacheStack, Entry, MemoryLayer
from layercache._options import MAX_TAGS, coerce_options, merge_options, seconds


def coerced(**kwargs: Any) -> CacheOptions:
    options = coerce_options(kwargs)
    assert options is not None
    return options


# -- accepted shapes ----------------------------------------------------------------------------


def test_none_is_no_options() -> None:
    assert coerce_options(None) is None


def test_empty_dict_gives_all_defaults() -> None:
    options = coerced()
    assert all(getattr(options, f.name) is None for f in fields(CacheOptions) if f.init)
    assert options.has_hit_work is False


def test_dict_and_dataclass_coerce_alike() -> None:
    policy = {"align_to": dt.timedelta(minutes=5)}
    as_dict = coerce_options(
        {"tags": ["a", "b"], "ttl": dt.timedelta(minutes=1), "ttl_policy": policy}
    )
    # CacheOptions.ttl is annotated PerLayer (no timedelta), but a timedelta is accepted.
    minute: Any = dt.timedelta(minutes=1)
    as_dataclass = coerce_options(CacheOptions(tags=("a", "b"), ttl=minute, ttl_policy=policy))
    assert as_dict == as_dataclass
    assert as_dict is not None
    assert as_dict.ttl == 60.0
    assert isinstance(as_dict.ttl, float)
    assert as_dict.ttl_policy == {"align_to": 300.0}
    assert as_dict.tags == ("a", "b")


@pytest.mark.parametrize("name", ["ttl", "ttl_jitter", "negative_ttl", "fetch_timeout"])
@pytest.mark.parametrize(
    ("given_value", "expected"),
    [(5, 5.0), (2.5, 2.5), (dt.timedelta(milliseconds=1500), 1.5), (dt.timedelta(days=1), 86400.0)],
)
def test_durations_become_float_seconds(name: str, given_value: Any, expected: float) -> None:
    value = getattr(coerced(**{name: given_value}), name)
    assert value == expected
    assert type(value) is float


def test_per_layer_dicts_are_coerced_per_value() -> None:
    options = coerced(ttl={"memory": dt.timedelta(seconds=30), "redis": 600}, ttl_jitter={"m": 1})
    assert options.ttl == {"memory": 30.0, "redis": 600.0}
    assert options.ttl_jitter == {"m": 1.0}


@pytest.mark.parametrize("name", ["ttl", "ttl_jitter", "negative_ttl"])
def test_zero_is_allowed_where_it_means_something(name: str) -> None:
    assert getattr(coerced(**{name: 0}), name) == 0.0


def test_named_and_callable_policies_pass_through() -> None:
    def policy(key: str, value: Any) -> float:
        return 1.0

    assert coerced(ttl_policy="until-midnight").ttl_policy == "until-midnight"
    assert coerced(ttl_policy="next-hour").ttl_policy == "next-hour"
    assert coerced(ttl_policy=policy).ttl_policy is policy


def test_flags_and_predicates() -> None:
    def predicate(value: Any) -> bool:
        return value is not None

    options = coerced(negative_cache=False, should_cache=predicate)
    assert options.negative_cache is False
    assert options.should_cache is predicate


def test_none_values_mean_use_the_default() -> None:
    assert coerced(ttl=None, tags=None, negative_cache=None) == CacheOptions()


@given(
    st.one_of(
        st.integers(min_value=0, max_value=10**12),
        st.floats(min_value=0, max_value=1e12),
        st.timedeltas(min_value=dt.timedelta(0), max_value=dt.timedelta(days=10_000)),
    )
)
def test_seconds_accepts_every_finite_non_negative_duration(value: Any) -> None:
    result = seconds("ttl", value)
    expected = value.total_seconds() if isinstance(value, dt.timedelta) else float(value)
    assert result == expected
    assert type(result) is float


@given(
    st.one_of(
        st.integers(max_value=-1),
        st.floats(max_value=-1e-300),
        st.timedeltas(max_value=dt.timedelta(microseconds=-1)),
    )
)
def test_seconds_refuses_every_negative_duration(value: Any) -> None:
    with pytest.raises(ValueError, match="ttl"):
        seconds("ttl", value)


# -- unknown names ------------------------------------------------------------------------------


def test_unknown_option_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="tll"):
        coerce_options({"ttl": 1, "tll": 2})


@pytest.mark.parametrize("name", ["ttl_ms", "stale", "TTL", "expire"])
def test_unknown_option_names(name: str) -> None:
    with pytest.raises(TypeError, match="unknown cache option"):
        coerce_options({name: 1})


@pytest.mark.parametrize("options", [[("ttl", 1)], "ttl=1", 5, (1,)])
def test_options_of_the_wrong_kind_are_a_type_error(options: Any) -> None:
    with pytest.raises(TypeError, match="options must be"):
        coerce_options(options)


# -- out-of-range values ------------------------------------------------------------------------

BAD_DURATIONS = [
    -1,
    -0.001,
    -1e-300,
    math.nan,
    math.inf,
    -math.inf,
    True,
    False,
    "10",
    b"10",
    [10],
    decimal.Decimal("1"),
    complex(1, 0),
    dt.timedelta(seconds=-1),
    object(),
]


@pytest.mark.parametrize("name", ["ttl", "ttl_jitter", "negative_ttl", "fetch_timeout"])
@pytest.mark.parametrize("value", BAD_DURATIONS, ids=repr)
def test_bad_durations_are_value_errors(name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=name):
        coerce_options({name: value})


@pytest.mark.parametrize("name", ["ttl", "ttl_jitter"])
@pytest.mark.parametrize("value", [-1, math.nan, math.inf, True, "5"], ids=repr)
def test_bad_per_layer_values_are_value_errors(name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"{name}\['memory'\]"):
        coerce_options({name: {"redis": 5, "memory": value}})


@pytest.mark.parametrize("name", ["ttl", "ttl_jitter"])
@pytest.mark.parametrize("layer", ["", 1, None, ("memory",)], ids=repr)
def test_bad_per_layer_names_are_value_errors(name: str, layer: Any) -> None:
    with pytest.raises(ValueError, match="layer names"):
        coerce_options({name: {layer: 5}})


@pytest.mark.parametrize("name", ["negative_ttl", "fetch_timeout"])
def test_per_layer_dict_is_refused_where_not_supported(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        coerce_options({name: {"memory": 5}})


@pytest.mark.parametrize("value", [0, 0.0, dt.timedelta(0)], ids=repr)
def test_fetch_timeout_must_be_positive(value: Any) -> None:
    with pytest.raises(ValueError, match="fetch_timeout"):
        coerce_options({"fetch_timeout": value})


@pytest.mark.parametrize(
    "policy",
    [
        "midnight",
        "",
        "NEXT-HOUR",
        0,
        3600,
        1.5,
        [],
        {"align_to": 0},
        {"align_to": -60},
        {"align_to": math.nan},
        {"align_to": math.inf},
        {"align_to": True},
        {"align_to": "60"},
        {"align": 60},
        {"align_to": 60, "offset": 5},
        {},
    ],
    ids=repr,
)
def test_bad_ttl_policies_are_value_errors(policy: Any) -> None:
    with pytest.raises(ValueError, match="ttl_policy"):
        coerce_options({"ttl_policy": policy})


@pytest.mark.parametrize("value", [1, 0, "yes", "true", [True]], ids=repr)
def test_negative_cache_must_be_a_bool(value: Any) -> None:
    with pytest.raises(ValueError, match="negative_cache"):
        coerce_options({"negative_cache": value})


@pytest.mark.parametrize("value", [True, 1, "callable"], ids=repr)
def test_should_cache_must_be_callable(value: Any) -> None:
    with pytest.raises(ValueError, match="should_cache"):
        coerce_options({"should_cache": value})


# -- tags ---------------------------------------------------------------------------------------


def test_tags_are_deduplicated_in_order() -> None:
    assert coerced(tags=["b", "a", "b", "c", "a"]).tags == ("b", "a", "c")
    assert coerced(tags=(t for t in ["x", "y"])).tags == ("x", "y")
    assert coerced(tags=[]).tags == ()
    assert coerced(tags=["tenant:🎉", "a b"]).tags == ("tenant:🎉", "a b")


def test_single_string_is_refused_as_tags() -> None:
    # A str is an iterable of characters: tags="user" would silently mean ("u", "s", "e", "r").
    with pytest.raises(ValueError, match="single str"):
        coerce_options({"tags": "user"})


@pytest.mark.parametrize("tags", [5, 1.5, True, object()], ids=repr)
def test_non_iterable_tags_are_refused(tags: Any) -> None:
    with pytest.raises(ValueError, match="tags must be an iterable"):
        coerce_options({"tags": tags})


def test_tag_count_bound() -> None:
    assert len(coerced(tags=[f"t{i}" for i in range(MAX_TAGS)]).tags or ()) == MAX_TAGS
    assert coerced(tags=["same"] * (MAX_TAGS * 3)).tags == ("same",)
    with pytest.raises(ValueError, match=f"at most {MAX_TAGS} tags"):
        coerce_options({"tags": [f"t{i}" for i in range(MAX_TAGS + 1)]})


@pytest.mark.parametrize(
    "tag",
    ["", "a\x00", "\n", "tab\tbed", "\x7f", "c1\x85", "x" * 257, 1, None, b"bytes"],
    ids=repr,
)
def test_bad_tags_are_refused(tag: Any) -> None:
    with pytest.raises(ValueError, match="tag"):
        coerce_options({"tags": ["ok", tag]})


def test_tag_length_limit_is_256() -> None:
    assert coerced(tags=["x" * 256]).tags == ("x" * 256,)


def test_bytes_are_not_tags() -> None:
    with pytest.raises(ValueError, match="tag"):
        coerce_options({"tags": b"ab"})


# -- merge_options --------------------------------------------------------------------------------


def test_merge_takes_only_the_fields_the_override_sets() -> None:
    base = coerced(ttl=60, negative_cache=True, fetch_timeout=30)
    override = coerced(ttl=5, tags=["t"])
    merged = merge_options(base, override)
    assert (merged.ttl, merged.tags, merged.negative_cache, merged.fetch_timeout) == (
        5.0,
        ("t",),
        True,
        30.0,
    )
    assert merge_options(base, None) is base
    assert merge_options(base, CacheOptions()) is base


# -- through the stack: refused before any layer is touched ---------------------------------------


class TouchLayer:
    """A user layer that records every call."""

    is_local = False
    default_ttl = None

    def __init__(self) -> None:
        self.name = "touch"
        self.calls: list[str] = []

    def get(self, key: str) -> Entry | None:
        self.calls.append("get")
        return None

    def set(self, key: str, entry: Entry, ttl: float | None) -> None:
        self.calls.append("set")

    def delete(self, key: str) -> None:
        self.calls.append("delete")

    def clear(self) -> None:
        self.calls.append("clear")


BAD_OPTIONS: list[tuple[dict[str, Any], str]] = [
    ({"ttl": -1}, "ttl"),
    ({"ttl": math.nan}, "ttl"),
    ({"ttl": {"nope": 5}}, "unknown layer"),  # a per-layer dict naming no layer of the stack
    ({"ttl_jitter": {"nope": 1}}, "unknown layer"),
    ({"tags": "single"}, "single str"),
    ({"tags": ["bad\x00tag"]}, "control character"),
    ({"ttl_policy": "midnight"}, "ttl_policy"),
    ({"fetch_timeout": 0}, "fetch_timeout"),
    ({"negative_ttl": math.inf}, "negative_ttl"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_OPTIONS, ids=repr)
async def test_stack_refuses_bad_options_before_touching_a_layer(
    bad: dict[str, Any], message: str
) -> None:
    layer = TouchLayer()
    memory = MemoryLayer()
    cache = CacheStack([memory, layer])
    with pytest.raises(ValueError, match=message):
        await cache.set("k", 1, **bad)
    with pytest.raises(ValueError, match=message):
        await cache.get("k", lambda: 1, **bad)
    with pytest.raises(ValueError, match=message):
        await cache.get("k", lambda: 1, options=bad)
    with pytest.raises(ValueError, match=message):
        await cache.set_many([("ok", 1), CacheEntry("k", 1, options=bad)])
    with pytest.raises(ValueError, match=message):
        await cache.get_many(["ok", CacheEntryRequest("k", lambda: 1, options=bad)])
    with pytest.raises(ValueError, match=message):
        cache.wrap("fn", lambda: 1, **bad)
    assert layer.calls == []
    assert memory.size() == 0


async def test_stack_refuses_unknown_options_with_type_error() -> None:
    layer = TouchLayer()
    cache = CacheStack([layer])
    with pytest.raises(TypeError, match="tll"):
        await cache.get("k", lambda: 1, tll=5)
    with pytest.raises(TypeError, match="tll"):
        await cache.set("k", 1, options={"tll": 5})
    with pytest.raises(TypeError):
        await cache.set("k", 1, options={"ttl": 5}, ttl=5)  # both ways at once
    assert layer.calls == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fetch_timeout": 0},
        {"fetch_timeout": -1},
        {"negative_ttl": -1},
        {"ttl_jitter": math.nan},
        {"ttl_jitter": {"nope": 1}},
        {"write_policy": "sometimes"},
        {"max_profile_entries": 0},
        {"max_tag_index_keys": 0},
    ],
    ids=repr,
)
def test_stack_constructor_refuses_bad_defaults(kwargs: dict[str, Any]) -> None:
    name = next(iter(kwargs))
    expected = "max_keys" if name == "max_tag_index_keys" else name
    with pytest.raises(ValueError, match=expected):
        CacheStack([MemoryLayer()], **kwargs)


def test_stack_constructor_refuses_unknown_keywords() -> None:
    with pytest.raises(TypeError):
        CacheStack([MemoryLayer()], ttl=5)  # type: ignore[call-arg]
