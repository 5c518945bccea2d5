"""Key shapes of the Redis layer: prefixed keys and the ``SCAN MATCH`` patterns that find them.

Every Redis key the layer touches is built here, never with f-strings at call sites.
"""

from __future__ import annotations

from .._glob import escape_glob

__all__ = ["encode_key", "prefix_match", "scan_match", "strip_prefix"]


def _to_bytes(text: str) -> bytes:
    # surrogatepass: keys are validated against control characters only, so a lone surrogate
    # can reach us; it must map to bytes (and back, in strip_prefix) rather than crash the call.
    return text.encode("utf-8", "surrogatepass")


def encode_key(prefix: str, key: str) -> bytes:
    """The Redis key under which ``key`` is stored."""
    return _to_bytes(prefix + key)


def strip_prefix(prefix: bytes, raw: bytes) -> str | None:
    """The cache key of the Redis key ``raw``, or ``None`` if ``raw`` is not one of ours."""
    if not raw.startswith(prefix):
        return None
    try:
        return raw[len(prefix) :].decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return None


def prefix_match(prefix: str) -> bytes:
    """``SCAN MATCH`` pattern of every key under ``prefix``."""
    return _to_bytes(escape_glob(prefix) + "*")


def scan_match(prefix: str, pattern: str) -> bytes:
    """A ``SCAN MATCH`` pattern matching (at least) every key under ``prefix`` whose un-prefixed
    part matches the glob ``pattern``.

    Redis matches bytes, our globs match characters: ``?`` or ``[é]`` in Redis stand for one
    *byte*, so they would miss multi-byte UTF-8 characters. The server pattern therefore widens
    ``?`` to ``*`` and everything from the first ``[`` on to ``*``, keeping the literal parts
    that make the scan selective; callers confirm each candidate with
    :func:`layercache._glob.glob_match`.
    """
    out = [escape_glob(prefix)]
    star = False
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            if i + 1 < n:
                out.append(pattern[i : i + 2])
                i += 2
            else:
                out.append("\\\\")  # a trailing backslash is literal in both matchers
                i += 1
            star = False
            continue
        if ch in "*?[":
            if not star:
                out.append("*")
                star = True
            if ch == "[":
                break
            i += 1
            continue
        out.append(ch)
        star = False
        i += 1
    return _to_bytes("".join(out))
