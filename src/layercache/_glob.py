"""Glob patterns with one meaning everywhere (memory, disk, Redis ``SCAN MATCH``).

The semantics are Redis's ``stringmatch``: ``*`` any run of characters (including none), ``?``
exactly one character, ``[abc]`` / ``[a-z]`` a class, ``[^a]`` a negated class, and ``\\x``
the character ``x`` literally. Matching is case-sensitive and covers the whole key.

Patterns come from admin tools and HTTP endpoints, so matching must never backtrack: a glob
is *not* one regular expression with a ``.*`` per star (``"*a*a*...*b"`` against a long key
would run for minutes). Instead the stars cut the pattern into segments that each match a
fixed number of characters; the first segment must match at the start, the last at the end,
and every middle segment is placed at its leftmost match after the previous one (leftmost is
always safe: it leaves the most room to what follows). Each segment is a small regex with no
repetition, so one attempt costs at most its length and the whole match is
O(len(pattern) x len(key)) in the worst case.
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


def _segments(pattern: str) -> list[list[str]]:
    """The pattern cut at its stars: one list of one-character regex atoms per segment."""
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
    return segments


def _compile(atoms: list[str]) -> re.Pattern[str]:
    return re.compile("".join(atoms), re.DOTALL)


class Glob:
    """A compiled glob; :meth:`matches` costs O(len(pattern) x len(key)) at worst."""

    __slots__ = (
        "_head",
        "_head_size",
        "_middle",
        "_min_size",
        "_tail",
        "_tail_size",
        "_whole",
        "pattern",
    )

    def __init__(self, pattern: str) -> None:
        validate_pattern(pattern)
        self.pattern = pattern
        segments = _segments(pattern)
        self._middle = tuple(_compile(s) for s in segments[1:-1] if s)
        self._whole: re.Pattern[str] | None = None
        if not self._middle:
            # At most one star that matters: one regex with at most one ``.*`` does the whole
            # match in C, and backtracks over that one star only (O(len(key) x len(tail))).
            atoms = segments[0] if len(segments) == 1 else [*segments[0], ".*", *segments[-1]]
            self._whole = _compile(atoms)
        self._head = _compile(segments[0])
        self._head_size = len(segments[0])
        self._tail = _compile(segments[-1])
        self._tail_size = len(segments[-1])
        self._min_size = sum(len(s) for s in segments)

    def matches(self, key: str) -> bool:
        """Whether ``key`` matches the glob as a whole."""
        if self._whole is not None:
            return self._whole.fullmatch(key) is not None
        end = len(key) - self._tail_size  # where the tail must start
        if end < self._min_size - self._tail_size or self._head.match(key) is None:
            return False
        position = self._head_size
        for segment in self._middle:
            # Leftmost placement, never reaching into the tail's characters.
            found = segment.search(key, position, end)
            if found is None:
                return False
            position = found.end()
        return self._tail.fullmatch(key, end) is not None

    def __repr__(self) -> str:
        return f"Glob({self.pattern!r})"


@lru_cache(maxsize=512)
def compile_glob(pattern: str) -> Glob:
    """Compile a glob (cached, bounded); a bad pattern is a ``ValueError``."""
    return Glob(pattern)


def glob_match(pattern: str, key: str) -> bool:
    """Whether ``key`` matches the glob ``pattern`` as a whole."""
    return compile_glob(pattern).matches(key)
