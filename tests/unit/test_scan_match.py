"""The ``SCAN MATCH`` pattern sent to Redis: a superset of the glob, with at most one star.

Redis servers before 6.2.11 / 7.0.9 match many-star patterns in exponential time
(CVE-2022-36021): a hostile ``invalidate_by_pattern`` could hang the server itself. The client
confirms every candidate with the exact glob, so the server pattern only has to be a superset.
"""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from layercache._glob import compile_glob
from layercache.redis._keys import scan_match

ALPHABET = "ab:*?[]^-\\"
KEY_ALPHABET = "ab:" + string.digits


def unescaped_stars(pattern: str) -> int:
    count, i = 0, 0
    while i < len(pattern):
        if pattern[i] == "\\":
            i += 2
            continue
        count += pattern[i] == "*"
        i += 1
    return count


@settings(max_examples=1500, deadline=None)
@given(st.text(ALPHABET, min_size=1, max_size=14), st.text(KEY_ALPHABET, max_size=12))
def test_server_pattern_is_a_superset_with_one_star(pattern: str, key: str) -> None:
    server = scan_match("p:", pattern).decode()
    assert unescaped_stars(server) <= 1
    if compile_glob(pattern).matches(key):
        assert compile_glob(server).matches("p:" + key), (pattern, key, server)


def test_selective_parts_are_kept() -> None:
    assert scan_match("lc:", "user:*:profile") == b"lc:user:*:profile"
    assert scan_match("lc:", "*:*:profile") == b"lc:*:profile"
    assert scan_match("lc:", "*a" * 30 + "*b") == b"lc:*b"
    assert scan_match("lc:", "user:\\*:x*y") == b"lc:user:\\*:x*y"
