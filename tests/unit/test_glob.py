"""Glob semantics: examples, properties, and agreement with a real Redis ``KEYS`` / ``SCAN MATCH``.

Our globs follow Redis's ``stringmatchlen`` (``src/util.c``) applied to *characters*; Redis
applies it to *bytes*. The agreement property therefore maps every non-ASCII character of its
alphabet to an unused ASCII character that sorts after all the others (``😀`` -> ``~``) before
asking Redis: the mapping preserves equality and order, so ranges and classes mean the same on
both sides, and any disagreement is one of parsing. The byte/character difference itself is
pinned by :func:`test_non_ascii_is_matched_per_character_unlike_redis`.
"""

from __future__ import annotations

import re
import string
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from _redis_server import RedisServer
from layercache._glob import Glob, compile_glob, escape_glob, glob_literal_prefix, glob_match

# -- examples ---------------------------------------------------------------------------------

MATCHES = [
    ("*", "anything"),
    ("user:*", "user:"),
    ("user:*", "user:123"),
    ("user:?", "user:1"),
    ("*:*", "a:b:c"),
    ("a*b*c", "aXXbYYc"),
    ("a**b", "ab"),
    ("[abc]", "b"),
    ("[a-c]", "b"),
    ("[c-a]", "b"),  # a reversed range is swapped, as in Redis
    ("[^a]", "b"),
    ("[^a-c]", "d"),
    ("\\*", "*"),
    ("\\?", "?"),
    ("\\[a]", "[a]"),
    ("a\\", "a\\"),  # a trailing backslash is a literal backslash
    ("[\\]]", "]"),  # an escaped ] inside a class
    ("[\\-]", "-"),
    ("[-a]", "-"),  # a leading - is literal
    ("[a-b-]", "-"),  # a - after a complete range is literal
    ("[^", "x"),  # unterminated negated empty class: any one character
    ("[^]", "x"),
    ("[ab", "a"),  # an unterminated class runs to the end of the pattern
    ("[a-", "-"),
    ("ключ:*", "ключ:1"),
    ("emoji:?", "emoji:🎉"),
    ("[🎉🔥]", "🔥"),
    ("*", "\u00a0"),
    ("a.b", "a.b"),  # regex metacharacters are literal
    ("(a|b)+$", "(a|b)+$"),
]

NON_MATCHES = [
    ("user:?", "user:12"),
    ("user:?", "user:"),
    ("user:*", "users"),
    ("User:*", "user:1"),  # case-sensitive
    ("[abc]", "d"),
    ("[^a]", "a"),
    ("[]", "x"),  # an empty class matches nothing
    ("[]", "[]"),
    ("[", "["),  # an unterminated empty class matches nothing either
    ("\\*", "a"),
    ("a.b", "aXb"),
    ("a", "ab"),  # the whole key must match
    ("b", "ab"),
    ("[ab", "[ab"),
    ("?", ""),
]


@pytest.mark.parametrize(("pattern", "key"), MATCHES)
def test_matches(pattern: str, key: str) -> None:
    assert glob_match(pattern, key)


@pytest.mark.parametrize(("pattern", "key"), NON_MATCHES)
def test_does_not_match(pattern: str, key: str) -> None:
    assert not glob_match(pattern, key)


def test_newline_free_dot_all_semantics() -> None:
    # The regex is compiled with DOTALL: ``?`` and ``*`` must match any character, including
    # those a regex ``.`` would refuse (keys cannot hold \n, but U+2028 is allowed).
    assert glob_match("a?b", "a\u2028b")
    assert glob_match("a*", "a\u2028\u2029")


@pytest.mark.parametrize("pattern", ["", "a\nb", "\x7f", "x" * 1025])
def test_invalid_patterns_raise_value_error(pattern: str) -> None:
    with pytest.raises(ValueError, match="pattern"):
        glob_match(pattern, "k")


def test_compile_glob_gives_a_matcher() -> None:
    glob = compile_glob("user:*:[0-9]")
    assert isinstance(glob, Glob)
    assert glob.matches("user:ab:7")
    assert not glob.matches("user:ab:x")
    assert repr(glob) == "Glob('user:*:[0-9]')"


def test_compile_cache_is_bounded() -> None:
    compile_glob.cache_clear()
    for i in range(600):
        compile_glob(f"k:{i}:*")
    info = compile_glob.cache_info()
    assert info.currsize <= 512
    assert info.maxsize == 512


# -- properties of escape_glob and glob_literal_prefix --------------------------------------------

# Keys are any text without control characters (C0, DEL, C1).
key_chars = st.characters(blacklist_categories=("Cc", "Cs"))
keys = st.text(key_chars, min_size=1, max_size=40)
# A glob-heavy alphabet makes the interesting cases (metacharacters, ranges) frequent.
GLOB_ALPHABET = ["a", "b", "x", "*", "?", "[", "]", "^", "-", "\\", ":", "😀"]
glob_text = st.text(st.sampled_from(GLOB_ALPHABET), min_size=1, max_size=10)


@given(keys)
@example("*?[]\\")
@example("\\")
@example("[a-z]")
def test_escape_glob_matches_exactly_itself(text: str) -> None:
    pattern = escape_glob(text)
    assert glob_match(pattern, text)
    assert glob_literal_prefix(pattern) == text


@given(glob_text, glob_text)
def test_escape_glob_matches_nothing_else(text: str, other: str) -> None:
    if other != text:
        assert not glob_match(escape_glob(text), other)


def _instantiate(pattern: str, data: st.DataObject) -> str:
    """A key built to match ``pattern`` (where one exists; unknown classes give ``None``)."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            out.append(data.draw(st.text(st.sampled_from(GLOB_ALPHABET), max_size=3)))
        elif ch == "?":
            out.append(data.draw(st.sampled_from(GLOB_ALPHABET)))
        elif ch == "\\" and i + 1 < n:
            i += 1
            out.append(pattern[i])
        elif ch == "[":
            # Pick a character, whatever the class says: the property only uses real matches.
            out.append(data.draw(st.sampled_from(GLOB_ALPHABET)))
            close = pattern.find("]", i + 2)
            i = n if close < 0 else close
        else:
            out.append(ch)
        i += 1
    return "".join(out) or "a"


@given(glob_text, st.data())
@settings(max_examples=300)
def test_literal_prefix_is_a_prefix_of_every_match(pattern: str, data: st.DataObject) -> None:
    prefix = glob_literal_prefix(pattern)
    candidates = [_instantiate(pattern, data) for _ in range(3)]
    candidates += data.draw(st.lists(glob_text, max_size=5))
    for key in candidates:
        if glob_match(pattern, key):
            assert key.startswith(prefix), (pattern, key, prefix)


@given(keys, st.sampled_from(["*", "?*", "*?", ""]))
def test_literal_prefix_of_escaped_text_plus_wildcard(text: str, suffix: str) -> None:
    assert glob_literal_prefix(escape_glob(text) + suffix) == text


# -- agreement with a real Redis ------------------------------------------------------------------

# Order-preserving stand-ins for the non-ASCII characters of the alphabet (see module docstring).
_TO_REDIS = str.maketrans({"😀": "~"})
_FROM_REDIS = str.maketrans({"~": "😀"})
_GLOB_DB = 9  # the fixtures' other tests use db 0; FLUSHDB here never touches their keys


@pytest.fixture(scope="module")
def redis_glob_db(redis_server: RedisServer) -> Iterator[Any]:
    """A sync client on a database of the session redis-server that only this module uses."""
    import redis

    if not redis_server.is_running:
        redis_server.start()
    client = redis.Redis(host=redis_server.host, port=redis_server.port, db=_GLOB_DB)
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


def _redis_matches(client: Any, pattern: str, keys: list[str]) -> tuple[set[str], set[str]]:
    """Keys of ``keys`` that Redis ``KEYS pattern`` and ``SCAN MATCH pattern`` return."""
    client.flushdb()
    client.mset({k.encode(): b"1" for k in keys})
    raw_pattern = pattern.encode()
    by_keys = {k.decode() for k in client.keys(raw_pattern)}
    by_scan = {k.decode() for k in client.scan_iter(match=raw_pattern, count=1000)}
    return by_keys, by_scan


def _has_range_ending_in_bracket(pattern: str) -> bool:
    # Ranges ending in "]" now follow Redis too (test_range_to_bracket_agrees_with_redis), so
    # no pattern is excluded from the comparison any more.
    return False


# Whole constructs as tokens make classes, ranges and escapes frequent (plain characters alone
# rarely produce a range with a key that tells the two matchers apart).
_TOKENS = ["[", "[^", "]", "a-b", "b-a", "a-😀", "\\", "\\]", "\\-", "*", "?"]
redis_patterns = (
    st.lists(st.sampled_from(GLOB_ALPHABET) | st.sampled_from(_TOKENS), min_size=1, max_size=6)
    .map("".join)
    .filter(lambda p: not _has_range_ending_in_bracket(p))
)


@pytest.mark.redis
@settings(max_examples=200, deadline=None)
@given(
    pattern=redis_patterns,
    keys=st.lists(
        st.text(st.sampled_from(GLOB_ALPHABET), min_size=1, max_size=6), max_size=12, unique=True
    ),
)
@example(pattern="[a-", keys=["a-"])
@example(pattern="[^", keys=["[^"])
@example(pattern="[\\", keys=["\\\\"])
@example(pattern="a\\", keys=["a\\\\"])
@example(pattern="[]a]", keys=["a]", "]a]"])
@example(pattern="[b-a]x", keys=["ax", "bx", "xx"])
@example(pattern="[a-😀]", keys=[])
@example(pattern="*a*?*", keys=["ab", "ba", "xa", "axb"])
def test_glob_match_agrees_with_redis(redis_glob_db: Any, pattern: str, keys: list[str]) -> None:
    # Every single character is always a key, so any class or range difference shows up.
    keys = list(dict.fromkeys([*GLOB_ALPHABET, pattern, *keys]))
    redis_keys = [k.translate(_TO_REDIS) for k in keys]
    by_keys, by_scan = _redis_matches(redis_glob_db, pattern.translate(_TO_REDIS), redis_keys)
    expected = {k.translate(_FROM_REDIS) for k in by_keys}
    ours = {k for k in keys if glob_match(pattern, k)}
    assert ours == expected, f"pattern {pattern!r}: ours {sorted(ours)}, Redis {sorted(expected)}"
    assert by_scan == by_keys


@pytest.mark.redis
@pytest.mark.parametrize(
    "pattern", ["[a-]", "[a-]]", "x[b-]y]", "[^a-]"], ids=["a-", "a-]]", "in-text", "negated"]
)
def test_range_to_bracket_agrees_with_redis(redis_glob_db: Any, pattern: str) -> None:
    keys = ["a", "-", "]", "^", "_", "`", "b", "a]", "-]", "xa", "xy", "x-y]", "xby]", "x_"]
    by_keys, _ = _redis_matches(redis_glob_db, pattern, keys)
    ours = {k for k in keys if glob_match(pattern, k)}
    assert ours == by_keys


@pytest.mark.redis
def test_non_ascii_is_matched_per_character_unlike_redis(redis_glob_db: Any) -> None:
    """By design we match characters, Redis matches UTF-8 bytes (RedisLayer filters locally)."""
    keys = ["😀", "é", "a"]
    by_keys, _ = _redis_matches(redis_glob_db, "?", keys)
    assert by_keys == {"a"}
    assert {k for k in keys if glob_match("?", k)} == set(keys)
    by_keys, _ = _redis_matches(redis_glob_db, "????", keys)
    assert by_keys == {"😀"}  # four bytes
    assert not glob_match("????", "😀")
    by_keys, _ = _redis_matches(redis_glob_db, "[😀]", keys)
    assert by_keys == set()
    assert glob_match("[😀]", "😀")


@given(st.text(string.ascii_letters + string.digits + ":_-", min_size=1, max_size=20))
def test_plain_text_is_its_own_glob(text: str) -> None:
    assert glob_match(text, text)
    assert glob_literal_prefix(text) == text


# -- the linear matcher against the former regex translation ----------------------------------


def _regex_oracle(pattern: str) -> re.Pattern[str]:
    """The former implementation (one regex, ``.*`` per star): exact, but exponential.

    Kept as the reference the backtracking-free matcher must agree with; patterns given to it
    here stay small, so its backtracking stays cheap.
    """
    parts: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            parts.append(".*")
        elif ch == "?":
            parts.append(".")
        elif ch == "\\" and i + 1 < n:
            i += 1
            parts.append(re.escape(pattern[i]))
        elif ch == "[":
            j = i + 1
            negate = j < n and pattern[j] == "^"
            if negate:
                j += 1
            items: list[str] = []
            while j < n and pattern[j] != "]":
                c = pattern[j]
                if c == "\\" and j + 1 < n:
                    j += 1
                    items.append(re.escape(pattern[j]))
                elif j + 2 < n and pattern[j + 1] == "-":
                    lo, hi = c, pattern[j + 2]
                    if lo > hi:
                        lo, hi = hi, lo
                    items.append(f"{re.escape(lo)}-{re.escape(hi)}")
                    j += 2
                else:
                    items.append(re.escape(c))
                j += 1
            body = "".join(items)
            if not body:
                parts.append("[^\\s\\S]" if not negate else "[\\s\\S]")
            else:
                parts.append(f"[{'^' if negate else ''}{body}]")
            i = j
        else:
            parts.append(re.escape(ch))
        i += 1
    return re.compile("".join(parts), re.DOTALL)


oracle_patterns = st.lists(
    st.sampled_from(GLOB_ALPHABET) | st.sampled_from(_TOKENS), min_size=1, max_size=8
).map("".join)
oracle_keys = st.text(st.sampled_from([*GLOB_ALPHABET, "c", "_"]), max_size=12)


def _key_for(pattern: str, data: st.DataObject) -> str:
    """Mostly keys built to match (so matches are common), else any key."""
    if data.draw(st.booleans()):
        return _instantiate(pattern, data)
    return data.draw(oracle_keys)


@settings(max_examples=1500, deadline=None)
@given(oracle_patterns, st.data())
@example("*a*?*", None)
@example("a*b*a", None)
@example("*[a-", None)
@example("[^]*", None)
@example("**", None)
@example("*\\", None)
def test_matches_the_former_regex_translation(pattern: str, data: st.DataObject | None) -> None:
    glob = compile_glob(pattern)
    oracle = _regex_oracle(pattern)
    keys = ["", *GLOB_ALPHABET, pattern, "ab", "aab", "aba", "baab", "xa", "]a]"]
    if data is not None:
        keys += [_key_for(pattern, data) for _ in range(6)]
    for key in keys:
        expected = oracle.fullmatch(key) is not None
        assert glob.matches(key) == expected, (pattern, key, expected)


def _hostile() -> tuple[str, str]:
    return "*a" * 30 + "*b", "a" * 1000


def test_hostile_pattern_is_fast() -> None:
    """30 stars against 1000 characters: the former regex ran for minutes (killed at 120 s)."""
    pattern, key = _hostile()
    started = time.perf_counter()
    assert not glob_match(pattern, key)
    assert not glob_match("*?" * 500 + "b", key)
    assert not glob_match("*[a]" * 250 + "*[b]", key)
    assert glob_match(pattern, key[:-1] + "b")
    assert time.perf_counter() - started < 1.0


def test_worst_case_grows_with_pattern_times_key() -> None:
    """The longest allowed pattern against the longest allowed key stays well under a second."""
    pattern = "*" + "a*" * 511 + "b"  # 1024 characters
    key = "a" * 1024
    started = time.perf_counter()
    assert not glob_match(pattern, key)
    assert time.perf_counter() - started < 1.0


@pytest.mark.redis
async def test_a_hostile_pattern_cannot_hang_any_layer(
    redis_clean: RedisServer, tmp_path: Any
) -> None:
    """End to end: the stack, the memory, disk and Redis layers (``SCAN MATCH`` on the server,
    then our matcher on each candidate) and the tag index all finish at once."""
    from layercache import CacheStack, DiskLayer, MemoryLayer, RedisLayer

    cache = CacheStack(
        [MemoryLayer(), RedisLayer(url=redis_clean.url), DiskLayer(tmp_path / "disk")]
    )
    pattern, key = _hostile()
    try:
        await cache.set(key, 1, tags=["t"])
        await cache.set(key[:-1] + "b", 2, tags=["t"])
        started = time.perf_counter()
        assert await cache.invalidate_by_pattern(pattern) == 1
        elapsed = time.perf_counter() - started
        assert await cache.get(key) == 1
        assert await cache.get(key[:-1] + "b") is None
    finally:
        await cache.aclose()
    assert elapsed < 5.0
