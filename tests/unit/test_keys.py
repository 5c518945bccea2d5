"""Key validation and the collision-free rendering of ``wrap()`` call arguments."""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from layercache._keys import (
    MAX_KEY_LENGTH,
    render_call_key,
    validate_key,
    validate_pattern,
    validate_prefix,
)

# -- validate_key ---------------------------------------------------------------------------------

CONTROL_CHARS = [chr(c) for c in [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]]


@pytest.mark.parametrize(
    "key",
    [
        "k",
        "user:123",
        "emoji:🎉🔥",
        "👩\u200d👩\u200d👧",  # ZWJ sequence (format characters are not control characters)
        "ключ",
        "日本語のキー",
        "e\u0301",  # combining accent
        "a\u00a0nbsp",  # not printable for str.isprintable(), still allowed
        "line\u2028separator",
        " leading and trailing ",
        "x" * MAX_KEY_LENGTH,
        "🎉" * MAX_KEY_LENGTH,  # the limit counts characters, not UTF-8 bytes
    ],
)
def test_valid_keys_are_returned_unchanged(key: str) -> None:
    assert validate_key(key) is key


def test_empty_key_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        validate_key("")


@pytest.mark.parametrize("length", [MAX_KEY_LENGTH + 1, 10 * MAX_KEY_LENGTH])
def test_too_long_key_is_refused(length: int) -> None:
    with pytest.raises(ValueError, match="1024"):
        validate_key("k" * length)


@pytest.mark.parametrize("char", CONTROL_CHARS, ids=[f"U+{ord(c):04X}" for c in CONTROL_CHARS])
@pytest.mark.parametrize("where", ["alone", "start", "middle", "end"])
def test_every_control_character_is_refused(char: str, where: str) -> None:
    key = {"alone": char, "start": char + "key", "middle": "k" + char + "y", "end": "key" + char}
    with pytest.raises(ValueError, match="control character"):
        validate_key(key[where])


@pytest.mark.parametrize("key", [b"bytes", 123, 1.5, None, ["k"], ("k",), bytearray(b"k")])
def test_non_str_key_is_refused(key: object) -> None:
    with pytest.raises(ValueError, match="must be a str"):
        validate_key(key)


def test_str_subclass_is_accepted_through_the_slow_path() -> None:
    class Key(str):
        pass

    assert validate_key(Key("k")) == "k"


@given(
    st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=MAX_KEY_LENGTH)
)
def test_any_text_without_control_characters_is_a_key(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize("key", ["\ud800", "a\udfffb", "emoji:\ud83d"], ids=ascii)
def test_lone_surrogates_are_refused(key: str) -> None:
    # Not text: they cannot be encoded to UTF-8 for Redis or disk.
    with pytest.raises(ValueError, match="surrogate"):
        validate_key(key)


@given(
    st.text(min_size=0, max_size=20),
    st.sampled_from(CONTROL_CHARS),
    st.text(min_size=0, max_size=20),
)
def test_any_text_with_a_control_character_is_refused(before: str, char: str, after: str) -> None:
    with pytest.raises(ValueError, match="control character"):
        validate_key(before + char + after)


def test_pattern_and_prefix_validation_share_the_rules() -> None:
    assert validate_pattern("user:*") == "user:*"
    assert validate_prefix("tenant:🎉") == "tenant:🎉"
    with pytest.raises(ValueError, match="pattern"):
        validate_pattern("a\x00")
    with pytest.raises(ValueError, match="prefix"):
        validate_prefix("")
    with pytest.raises(ValueError, match="256"):
        validate_prefix("p" * 257, limit=256)


# -- render_call_key: documented shapes ----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        ((123,), {}, "123"),
        (("123",), {}, '"123"'),
        (("a:b",), {}, '"a:b"'),
        (("a", "b"), {}, '"a","b"'),
        ((1, "x"), {"z": 2, "a": None}, '1,"x",a=null,z=2'),
        ((True, False, None), {}, "true,false,null"),
        ((1.0, -0.0, math.inf), {}, "1.0,-0.0,inf"),
        (((1, ("a",)),), {}, '(1,("a"))'),
        (([1, ["a"]],), {}, '[1,["a"]]'),
        ((set(),), {}, "s{}"),
        (({},), {}, "{}"),
        ((), {}, ""),
        (("ключ 🎉",), {}, '"ключ 🎉"'),
    ],
)
def test_rendering_shapes(args: tuple[Any, ...], kwargs: dict[str, Any], expected: str) -> None:
    assert render_call_key(args, kwargs) == expected


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (((1,), {}), ((True,), {})),
        (((1,), {}), ((1.0,), {})),
        (((0,), {}), ((False,), {})),
        (((True,), {}), ((1.0,), {})),
        (((0.0,), {}), ((-0.0,), {})),
        (((1,), {}), (("1",), {})),
        (((None,), {}), (("null",), {})),
        (((True,), {}), (("true",), {})),
        ((("a,b",), {}), (("a", "b"), {})),
        ((((1, 2),), {}), ((1, 2), {})),
        ((((),), {}), ((), {})),
        ((("a=1",), {}), ((), {"a": 1})),
        (((), {"a": "1,b=2"}), ((), {"a": "1", "b": 2})),
        (((1,), {}), ((), {"_": 1})),
    ],
)
def test_known_lookalikes_render_differently(
    a: tuple[tuple[Any, ...], dict[str, Any]], b: tuple[tuple[Any, ...], dict[str, Any]]
) -> None:
    assert render_call_key(*a) != render_call_key(*b)


# -- render_call_key: injectivity property ------------------------------------------------------

scalars = (
    st.integers()
    | st.booleans()
    | st.none()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.sampled_from([0, 1, -1, 0.0, -0.0, 1.0, True, False, "", "0", "1", "true", "null"])
)
values = st.recursive(
    scalars, lambda inner: st.tuples(inner) | st.lists(inner, max_size=3).map(tuple), max_leaves=8
)
# Identifiers, and the odd names f(**user_dict) can pass (quotes, "=", ",", spaces).
kwarg_names = st.from_regex(r"[a-z_][a-z0-9_]{0,4}", fullmatch=True) | st.text(
    st.sampled_from('ab=,"\\ 1'), min_size=1, max_size=4
)
calls = st.tuples(
    st.lists(values, max_size=3).map(tuple), st.dictionaries(kwarg_names, values, max_size=3)
)


def _canonical(value: Any) -> Any:
    """Identity by type and value: 1, True and 1.0 differ; all NaNs are one value."""
    if isinstance(value, tuple):
        return ("tuple", tuple(_canonical(v) for v in value))
    if isinstance(value, float):
        return ("float", repr(value))  # repr tells -0.0 from 0.0 and makes nan == nan
    return (type(value).__name__, value)


def _canonical_call(call: tuple[tuple[Any, ...], dict[str, Any]]) -> Any:
    args, kwargs = call
    return (_canonical(args), tuple(sorted((k, _canonical(v)) for k, v in kwargs.items())))


@settings(max_examples=200)
@given(st.lists(calls, min_size=2, max_size=12))
@example([((1,), {}), ((True,), {}), ((1.0,), {}), (("1",), {})])
@example([((float("nan"),), {}), ((float("nan"),), {}), ((-0.0,), {}), ((0.0,), {})])
def test_distinct_calls_render_distinctly(call_list: list[Any]) -> None:
    seen: dict[str, Any] = {}
    for call in call_list:
        rendered = render_call_key(*call)
        canonical = _canonical_call(call)
        if rendered in seen:
            assert seen[rendered] == canonical, f"{rendered!r} renders both {call!r} and another"
        seen[rendered] = canonical


@given(calls)
def test_rendering_is_deterministic_and_a_valid_key_suffix(
    call: tuple[tuple[Any, ...], dict[str, Any]],
) -> None:
    args, kwargs = call
    rendered = render_call_key(args, kwargs)
    assert render_call_key(args, dict(reversed(list(kwargs.items())))) == rendered
    assert len(rendered) <= 200
    validate_key("prefix:" + rendered)


def test_keyword_names_cannot_forge_other_arguments() -> None:
    # f(**user_dict) can pass any str as a keyword name.
    assert render_call_key((), {"a=1,b": 2}) != render_call_key((), {"a": 1, "b": 2})
    assert render_call_key((), {'"a"': 1}) != render_call_key(("a",), {})


# -- render_call_key: long renderings are hashed ------------------------------------------------


def test_rendering_of_200_characters_is_kept_verbatim() -> None:
    text = render_call_key(("x" * 198,), {})
    assert len(text) == 200
    assert text == '"' + "x" * 198 + '"'


def test_longer_rendering_is_replaced_by_its_sha256() -> None:
    verbatim = '"' + "x" * 199 + '"'
    text = render_call_key(("x" * 199,), {})
    assert text == "#" + hashlib.sha256(verbatim.encode()).hexdigest()
    assert render_call_key(("x" * 199,), {}) == text
    assert render_call_key(("x" * 200,), {}) != text


@given(st.text(min_size=201, max_size=400), st.text(min_size=201, max_size=400))
def test_hashed_renderings_stay_distinct(a: str, b: str) -> None:
    if a != b:
        assert render_call_key((a,), {}) != render_call_key((b,), {})
    assert render_call_key((a,), {}).startswith("#")
    assert len(render_call_key((a,), {})) == 65


@pytest.mark.parametrize(
    "char",
    [
        "\x85",
        "\x9f",
        "\ud800",
    ],
    ids=ascii,
)
def test_unkeyable_character_in_a_string_forces_hashing(char: str) -> None:
    # JSON (ensure_ascii=False) leaves C1 characters and lone surrogates unescaped; a key may
    # not contain them, so the text must be hashed.
    text = render_call_key(("a" + char,), {})
    assert text.startswith("#")
    validate_key("p:" + text)


def test_rendering_is_stable_across_processes_and_hash_seeds() -> None:
    # Sets and dicts are rendered sorted, so str hash randomisation must not change keys.
    code = (
        "from layercache._keys import render_call_key\n"
        "args = (frozenset({'alpha', 'beta', 'gamma', 'delta'}), {'b': 1, 'a': {'y', 'x'}})\n"
        "print(render_call_key(args, {'k': 'x' * 300}))\n"
        "print(render_call_key(args, {}))\n"
    )
    outputs = set()
    for seed in ("1", "2", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        outputs.add(result.stdout)
    assert len(outputs) == 1
    hashed, plain = outputs.pop().splitlines()
    assert hashed.startswith("#")
    assert plain == 's{"alpha","beta","delta","gamma"},{"a":s{"x","y"},"b":1}'
