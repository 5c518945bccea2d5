"""Glob patterns with one meaning everywhere (memory, disk, Redis ``SCAN MATCH``).

The semantics are Redis's ``stringmatch``: ``*`` any run of characters (including none), ``?``
exactly one character, ``[abc]`` / ``[a-z]`` a class, ``[^a]`` a negated class, and ``\\x``
the character ``x`` literally. Matching is case-sensitive and covers the whole key.

Patterns come from admin tools and HTTP endpoints, so matching must never backtrack without
bound: a glob is *not* translated to a ``.*`` per star (``"*a*a*...*b"`` against a long key
would try every way of splitting the key between the stars and run for minutes). The stars cut
the pattern into segments that each match a fixed number of characters; the first segment must
match at the start, the last at the end, and every middle segment is placed at its leftmost
match after the previous one, once and for all (leftmost is always safe: it leaves the most
room to what follows). The regex expresses that commitment with atomic lookaheads (see
:func:`_translate`), so one match costs O(len(pattern) x len(key)) at worst and stays in C.
"""

from __future__ import annotations

import re
from functools import lru_cache

from ._keys import validate_pattern

__all__ = ["Glob", "compile_glob", "escape_glob", "glob_literal_prefix", "glob_match"]

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


def _class_atom(pattern: str, start: int) -> tuple[str, int]:
    """The regex for the class opening at ``pattern[start] == "["`` and the index of its ``]``.

    Redis's reading: ``^`` right after ``[`` negates; ``\\x`` is ``x``; ``a-z`` is a range
    (reversed ranges are swapped, and ``[a-]`` is the range ``a..]`` with the class still
    open, since Redis never checks the end character); an unterminated class runs to the end
    of the pattern; an empty class matches nothing (negated: any one character).
    """
    n = len(pattern)
    j = start + 1
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
        return ("[\\s\\S]" if negate else "[^\\s\\S]"), j
    return f"[{'^' if negate else ''}{body}]", j


def _segments(pattern: str) -> list[str]:
    """The pattern cut at its stars: one regex per segment, each matching a fixed number of
    characters (literals, ``.`` and classes only: no repetition, no alternation)."""
    segments: list[list[str]] = [[]]
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            segments.append([])
        elif ch == "?":
            segments[-1].append(".")
        elif ch == "\\" and i + 1 < n:
            i += 1
            segments[-1].append(re.escape(pattern[i]))
        elif ch == "[":
            atom, i = _class_atom(pattern, i)
            segments[-1].append(atom)
        else:
            segments[-1].append(re.escape(ch))
        i += 1
    return ["".join(atoms) for atoms in segments]


def _translate(pattern: str) -> str:
    """The backtracking-free regex of a glob (see the module docstring).

    ``head (?=(?P<s1>.*?mid1))(?P=s1) (?=(?P<s2>.*?mid2))(?P=s2) ... .*tail``: a lookahead is
    atomic in Python's ``re`` (once it matched, the engine never backtracks into it), so each
    middle segment is placed at its leftmost match and that choice is final; the backreference
    then consumes what the lookahead saw. Only the last star backtracks, over one position per
    character with a fixed-length tail.
    """
    segments = _segments(pattern)
    if len(segments) == 1:
        return segments[0]
    parts = [segments[0]]
    for index, middle in enumerate(segments[1:-1]):
        if middle:  # "**" leaves empty segments: nothing to place
            parts.append(f"(?=(?P<s{index}>.*?{middle}))(?P=s{index})")
    parts.append(".*" + segments[-1])
    return "".join(parts)


class Glob:
    """A compiled glob; :meth:`matches` costs O(len(pattern) x len(key)) at worst."""

    __slots__ = ("_regex", "pattern")

    def __init__(self, pattern: str) -> None:
        validate_pattern(pattern)
        self.pattern = pattern
        self._regex = re.compile(_translate(pattern), re.DOTALL)

    def matches(self, key: str) -> bool:
        """Whether ``key`` matches the glob as a whole."""
        return self._regex.fullmatch(key) is not None

    def __repr__(self) -> str:
        return f"Glob({self.pattern!r})"


@lru_cache(maxsize=512)
def compile_glob(pattern: str) -> Glob:
    """Compile a glob (cached, bounded); a bad pattern is a ``ValueError``."""
    return Glob(pattern)


def glob_match(pattern: str, key: str) -> bool:
    """Whether ``key`` matches the glob ``pattern`` as a whole."""
    return compile_glob(pattern).matches(key)
