"""Key shapes of the Redis layer: prefixed keys and the ``SCAN MATCH`` patterns that find them.

Every Redis key the layer touches is built here, never with f-strings at call sites.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from .._glob import escape_glob
from .._keys import validate_prefix

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

    At most one ``*`` reaches the server: the literal text before the first wildcard, one
    ``*``, and the literal text after the last one. Redis servers before 6.2.11 / 7.0.9
    (CVE-2022-36021) match a pattern with many stars in time exponential in their number, so a
    hostile pattern from an admin endpoint could hang the *server*; one star is linear there
    too, and the client-side glob keeps the result exact.
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
    if out.count("*") > 1:
        first = out.index("*")
        last = len(out) - 1 - out[::-1].index("*")
        out = [*out[:first], "*", *out[last + 1 :]]
    return _to_bytes("".join(out))


# -- RedisTagIndex -------------------------------------------------------------------------------
#
# Every key of one tag index starts with ``{prefix}:``. The braces make ``prefix`` the Redis
# Cluster hash tag, so all of them live in one slot and one Lua script may update a key's tag
# set, the tag sets and the known-keys shards together (see tag_index.py for the trade-off).
# The families after ``{prefix}:`` start with distinct literals (``tag:``, ``key:``, ``keys:``,
# ``expiry``, ``layout``), so no tag or key text can make two families collide.

__all__ += [
    "tag_index_base",
    "tag_index_by_shard",
    "tag_index_expiry",
    "tag_index_key_set",
    "tag_index_key_set_prefix",
    "tag_index_layout",
    "tag_index_match",
    "tag_index_shard",
    "tag_index_shard_of",
    "tag_index_shard_prefix",
    "tag_index_tag_set",
    "tag_index_tag_set_prefix",
    "to_member",
    "from_member",
]


def tag_index_base(prefix: str) -> str:
    """``{prefix}:``, the hash-tagged start of every key of the tag index at ``prefix``."""
    return "{" + prefix + "}:"


def tag_index_tag_set_prefix(prefix: str) -> bytes:
    """Start of the tag sets' names (``{prefix}:tag:<tag>`` holds the keys carrying ``tag``)."""
    return _to_bytes(tag_index_base(prefix) + "tag:")


def tag_index_key_set_prefix(prefix: str) -> bytes:
    """Start of the key sets' names (``{prefix}:key:<key>`` holds the tags of ``key``)."""
    return _to_bytes(tag_index_base(prefix) + "key:")


def tag_index_shard_prefix(prefix: str) -> bytes:
    """Start of the known-keys shards' names (``{prefix}:keys:<n>``)."""
    return _to_bytes(tag_index_base(prefix) + "keys:")


def tag_index_tag_set(prefix: str, tag: str) -> bytes:
    """The set of keys carrying ``tag``."""
    return tag_index_tag_set_prefix(prefix) + _to_bytes(tag)


def tag_index_key_set(prefix: str, key: str) -> bytes:
    """The set of tags of ``key``."""
    return tag_index_key_set_prefix(prefix) + _to_bytes(key)


def tag_index_shard_of(member: bytes, shards: int) -> int:
    """The known-keys shard of a key (given as its stored bytes).

    The first 32 bits of SHA-1, modulo ``shards``: stable across processes (unlike ``hash()``)
    and computable inside a Lua script with ``redis.sha1hex``, which the cleanup script does.
    """
    return int.from_bytes(hashlib.sha1(member).digest()[:4], "big") % shards


def tag_index_by_shard(members: Iterable[bytes], shards: int) -> dict[int, list[bytes]]:
    """``members`` grouped by :func:`tag_index_shard_of` (the same rule, in one loop: a bulk
    removal groups 1,000 keys at a time)."""
    groups: dict[int, list[bytes]] = {}
    sha1 = hashlib.sha1
    from_bytes = int.from_bytes
    for member in members:
        number = from_bytes(sha1(member).digest()[:4], "big") % shards
        group = groups.get(number)
        if group is None:
            groups[number] = [member]
        else:
            group.append(member)
    return groups


def tag_index_shard(prefix: str, number: int) -> bytes:
    """The known-keys shard number ``number``."""
    return tag_index_shard_prefix(prefix) + str(number).encode("ascii")


def tag_index_expiry(prefix: str) -> bytes:
    """The sorted set of tagged keys scored by their wall-clock expiry."""
    return _to_bytes(tag_index_base(prefix) + "expiry")


def tag_index_layout(prefix: str) -> bytes:
    """The string holding the index's known-keys shard count (instances must agree on it)."""
    return _to_bytes(tag_index_base(prefix) + "layout")


def tag_index_match(prefix: str) -> bytes:
    """``SCAN MATCH`` pattern of every key of the tag index at ``prefix``."""
    return prefix_match(tag_index_base(prefix))


def to_member(text: str) -> bytes:
    """A key or tag as stored inside a Redis set."""
    return _to_bytes(text)


def from_member(raw: bytes) -> str:
    """Inverse of :func:`to_member`."""
    return raw.decode("utf-8", "surrogatepass")


# -- invalidation bus -------------------------------------------------------------------------

__all__ += ["invalidation_channel"]


def invalidation_channel(channel: str) -> bytes:
    """The pub/sub channel (plain or sharded) of the invalidation bus named ``channel``.

    The name is used verbatim: every instance that should hear the others must use the same
    one. In a cluster a sharded channel lives on the node owning its hash slot (``{...}`` hash
    tags apply as for keys).

    Raises:
        ValueError: If ``channel`` is empty, too long or contains control characters.
    """
    return _to_bytes(validate_prefix(channel))


# -- RedisSingleFlightCoordinator ---------------------------------------------------------------
#
# The lock of a key is ``prefix:lock:{key}``: the braces make the key itself the Redis Cluster
# hash tag, so locks of different keys spread over the slots while every script that touches a
# lock (it touches only that one key) runs on the node owning it. A prefix that contains its own
# ``{...}`` wins as the hash tag and puts every lock in one slot; that still works. Completion
# notices go to one plain pub/sub channel per prefix, carrying the key as the message.

__all__ += ["single_flight_channel", "single_flight_lock", "single_flight_message"]


def single_flight_lock(prefix: str, key: str) -> bytes:
    """The lock of ``key`` (``prefix:lock:{key}``)."""
    return _to_bytes(prefix + ":lock:{" + key + "}")


def single_flight_channel(prefix: str) -> bytes:
    """The pub/sub channel on which holders announce that a fetch finished (``prefix:done``)."""
    return _to_bytes(prefix + ":done")


def single_flight_message(key: str) -> bytes:
    """The completion notice for ``key`` (the key's bytes)."""
    return _to_bytes(key)


# Not "<channel>:generation": the default channel ("layercache:invalidation") starts with the
# default layer prefix ("layercache:"), so a stack's clear() (SCAN prefix* + UNLINK) deleted the
# shared counter, and an instance started afterwards went back to an older generation.
GENERATION_KEY_PREFIX = "layercache-generation:"


def generation_key(channel: str) -> bytes:
    """Where the key generation announced on the bus ``channel`` is stored (an integer):
    ``layercache-generation:<channel>``, outside every layer prefix that ends with ``:``."""
    return (GENERATION_KEY_PREFIX + channel).encode("utf-8", "surrogatepass")


__all__ += ["generation_key"]
