"""Glob patterns with one meaning everywhere (memory, disk, Redis ``SCAN MATCH``).

The semantics are Redis's ``stringmatch``: ``*`` any run of characters (including none), ``?``
exactly one character, ``[abc]`` / ``[a-z]`` a class, ``[^a]`` a negated class, and ``\\x``
the character ``x`` literally. Matching is case-sensitive and covers the whole key.
"""

from __future__ import annotations

import re
from functools import lru_cache

from ._keys import validate_pattern

__all__ = ["compile_glob", "escape_glob", "glob_literal_prefix", "glob_match"]

_SPECIAL = frozenset("*?[]\\")


def escape_glob(text: str) -> str:
    """Escape ``text`` so it matches itself literally as a glob."""
    return "".join("\\" + ch if ch in _SPECIAL else ch for ch in text)


def glob_literal_prefix(pattern: str) -> str:
    """The literal text every match of ``pattern`` starts with (used to narrow scans)."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(pattern[i + 1])
            i += 2
            continue
        if ch in "*?[":
            break
        out.append(ch)
        i += 1
    return "".join(out)


@lru_cache(maxsize=512)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """Translate a glob into an anchored regular expression (cached, bounded)."""
    validate_pattern(pattern)
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
                    # Redis reads "[a-]" as the range a..']' (it never checks the end char),
                    # and the class then stays open: same here, so every layer agrees.
                    lo, hi = c, pattern[j + 2]
                    if lo > hi:
                        lo, hi = hi, lo
                    items.append(f"{re.escape(lo)}-{re.escape(hi)}")
                    j += 2
                else:
                    items.append(re.escape(c))
                j += 1
            # An unterminated class runs to the end of the pattern, as in Redis.
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


def glob_match(pattern: str, key: str) -> bool:
    """Whether ``key`` matches the glob ``pattern`` as a whole."""
    return compile_glob(pattern).fullmatch(key) is not None
