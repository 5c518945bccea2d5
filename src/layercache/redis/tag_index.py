"""``RedisTagIndex``: the tag index shared by every instance that uses the same Redis and prefix.

Layout (names built in ``_keys.py``), for an index at ``prefix``:

* ``{prefix}:tag:<tag>``  set of the keys carrying ``tag``;
* ``{prefix}:key:<key>``  set of the tags of ``key``;
* ``{prefix}:keys:<n>``   known keys, sharded by the first 32 bits of SHA-1 of the key modulo
  ``known_keys_shards``, so that no single set holds every key and a pattern lookup walks
  several moderate sets with ``SSCAN``;
* ``{prefix}:expiry``     sorted set of tagged keys scored by their wall-clock expiry;
* ``{prefix}:layout``     the shard count the index was created with.

**Cluster strategy: one hash tag.** The braces make ``prefix`` the hash tag of every key, so
the whole index lives in one slot of a Redis Cluster. That is what lets one Lua script replace a
key's tags atomically: it reads the key's old tags, removes the key from the tag sets it left,
adds it to the new ones and updates its shard and expiry, and no other script can interleave.
Concurrent writers on different instances therefore never leave a key under stale tags, on a
single server or a cluster alike. The trade-off: one index is served by one master, so its
memory and its load are not spread over the cluster (a multi-key ``SUNION`` or ``SINTER`` is
possible for the same reason). An index holds only key and tag names, which is small next to
the values in the cache; deployments that outgrow one master can give independent parts of
their key space separate indexes (separate stacks with separate ``prefix`` values hash to
different slots). Splitting the families over slots would need a cross-slot protocol (a
key-level lock or an outbox replayed by a repair job) for every write; one slot keeps every
update a single atomic script. The same layout is used without a cluster, so an index can move
between the two without migration.

Nothing grows without bound: the tag sets of a key are replaced, not appended to; a key's
entries are removed when it is deleted, and expired when it is invalidated by tag
(:meth:`RedisTagIndex.expire`: no per-key read); a key recorded with an expiry (or with
``key_ttl``) is forgotten once that moment has passed, a few at a time before every key that
``record`` or ``record_many`` writes, and in batches by :meth:`RedisTagIndex.cleanup`. Every
command and reply is bounded: bulk removals and ``record_many`` run in batches, large tag sets
are read with ``SSCAN``, ``clear`` uses ``SCAN`` and ``UNLINK`` in batches.

**Bulk.** The scripts that record or forget many keys (``record_many``, ``remove``, the
expiry sweep and ``cleanup``) read each key's tags once and then change each tag set, each
known-keys shard and the expiry set with one command for all of the batch's keys (members
sent 1,000 at a time), not a few commands per key and tag. Their keys and tags travel as a
few newline-joined arguments (a valid key or tag holds no control character), not one argument
each: redis-py packs arguments one by one (docs/perf-tags.md).
"""

from __future__ import annotations

import functools
import hashlib
import math
import struct
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any, cast

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from .._glob import glob_match
from .._keys import _check_text, validate_key, validate_pattern, validate_prefix
from .._options import MAX_TAG_LENGTH, MAX_TAGS
from ._clients import DEFAULT_SOCKET_TIMEOUT, sync_twin_for_sync_clients, url_client
from ._errors import DriverErrors
from ._keys import (
    from_member,
    scan_match,
    tag_index_expiry,
    tag_index_key_set,
    tag_index_key_set_prefix,
    tag_index_layout,
    tag_index_match,
    tag_index_shard,
    tag_index_shard_of,
    tag_index_shard_prefix,
    tag_index_tag_set,
    tag_index_tag_set_prefix,
    to_member,
)
from ._keyspace import in_flight
from ._options import check_raw_client
from ._scripts import (
    TAG_INDEX_EXPIRE,
    TAG_INDEX_RECORD,
    TAG_INDEX_RECORD_MANY,
    TAG_INDEX_REMOVE,
)
from .layer import RedisClient

__all__ = ["RedisTagIndex"]

# Keys per remove script call: bounds both the command size and how long one call holds the
# server. The script reads each key's tags (one SMEMBERS per key) and then removes all of them
# with one command per tag set, per known-keys shard and for the expiry set.
_REMOVE_BATCH = 1000
# Keys per expire script call: per key one ZADD member and one SREM member per tag, no read,
# so a call of 2,000 keys holds the server about as long as a remove call of a few hundred.
_EXPIRE_BATCH = 2000
# Keys per record_many script call, and at most this many script arguments (a key with 64 tags
# takes 67): bounds the command size and how long one call holds the server, while 10,000 keys
# still take only 20 round trips. The script reads each key's tags (one SMEMBERS per key) and
# writes the tag sets, shards and expiry set with one command each for all of the batch.
_RECORD_BATCH = 500
_RECORD_BATCH_ARGS = 16_384
# Expired keys forgotten by each record() on the way: more than one, so a backlog shrinks while
# keys are being written, few enough to keep record() cheap.
_RECORD_SWEEP = 16
# Most members one SUNION/SINTER reply may carry; bigger results are streamed with SSCAN.
_REPLY_LIMIT = 10_000
# Tags per SCARD pipeline, per SUNION/SINTER command and per SMISMEMBER round.
_TAG_BATCH = 256
# COUNT hint of SSCAN/SCAN: few round trips, small replies.
_SCAN_COUNT = 1000
# Keys per UNLINK in clear().
_UNLINK_BATCH = 500
_MAX_SHARDS = 4096
_MAX_CLEANUP_BATCH = 10_000
_LAYOUT_ERROR = "LAYERCACHE_LAYOUT"


def _raw(value: bytes | str) -> bytes:
    # The client is checked for decode_responses=False, so replies are bytes; this narrows the
    # driver's bytes-or-str typing without trusting it blindly.
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# The shard rule of _keys.tag_index_shard_of (first 32 bits of SHA-1, big-endian), unrolled in
# RedisTagIndex._remove_batch: a removal of 10,000 keys computes 10,000 of them.
_FIRST_32_BITS = struct.Struct(">I").unpack_from


def _members(keys: Iterable[str]) -> list[bytes]:
    """The distinct stored forms of ``keys`` (:func:`to_member` of each, in order), without
    the keys that cannot have been recorded (a newline: never a valid key; the remove script
    splits its arguments at newlines). Keys without a newline are encoded all at once."""
    texts = keys if isinstance(keys, list | tuple) else list(keys)
    if not texts:
        return []
    joined = "\n".join(texts).encode("utf-8", "surrogatepass")
    if joined.count(b"\n") == len(texts) - 1:
        return list(dict.fromkeys(joined.split(b"\n")))
    return [m for m in dict.fromkeys(map(to_member, texts)) if b"\n" not in m]


def _texts(members: Iterable[bytes]) -> set[str]:
    """:func:`from_member` of each member (index members never hold a newline: decoded all at
    once)."""
    raws = list(members)
    if not raws:
        return set()
    joined = b"\n".join(raws)
    if joined.count(b"\n") != len(raws) - 1:
        return set(map(from_member, raws))
    return set(joined.decode("utf-8", "surrogatepass").split("\n"))


# unasync: begin async-only
@sync_twin_for_sync_clients("._sync_tag_index:SyncRedisTagIndex")
# unasync: end async-only
class RedisTagIndex:
    """Tag bookkeeping in Redis, shared by every instance using the same ``prefix``.

    It has the methods of the in-process ``InMemoryTagIndex``, so a stack takes it as
    ``tag_index=``. Unlike the in-process index it never evicts (``record`` returns ``[]``);
    entries go away when their key is removed or, with an expiry, when it has passed.

    Args:
        client: A ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster`` created with
            ``decode_responses=False`` (the default). The index does not close it.
        url: Instead of ``client`` (keyword-only; exactly one of the two): the index builds
            its own client as ``RedisLayer(url=...)`` does (usable from any loop, closed by
            :meth:`aclose`).
        prefix: Names the index; every Redis key of it starts with ``{prefix}:``, so on a
            cluster the whole index shares one slot (see the module documentation).
            Must not contain ``{`` or ``}``.
        known_keys_shards: How many sets the known keys are spread over (1 to 4096). Every
            instance using the index must use the same number; a mismatch is detected and
            fails the write with :class:`~layercache.CacheLayerError`.
        key_ttl: Default lifetime in seconds of a key's entries when ``record`` gets no
            ``expires_at``; ``None`` keeps such entries until the key is removed.

    Raises:
        ValueError: On a bad argument.
    """

    name = "tag-index"

    def __init__(
        self,
        client: RedisClient | None = None,
        *,
        url: str | None = None,
        prefix: str = "layercache:tag-index",
        known_keys_shards: int = 16,
        key_ttl: float | None = None,
    ) -> None:
        validate_prefix(prefix)
        if "{" in prefix or "}" in prefix:
            # The index's own braces make the prefix the cluster hash tag; braces inside it
            # would change which part of the name Redis hashes.
            raise ValueError(f"prefix must not contain '{{' or '}}': {prefix!r}")
        if (
            isinstance(known_keys_shards, bool)
            or not isinstance(known_keys_shards, int)
            or not 1 <= known_keys_shards <= _MAX_SHARDS
        ):
            raise ValueError(
                f"known_keys_shards must be an int from 1 to {_MAX_SHARDS}, "
                f"not {known_keys_shards!r}"
            )
        if key_ttl is not None and (
            isinstance(key_ttl, bool)
            or not isinstance(key_ttl, int | float)
            or not (key_ttl > 0 and math.isfinite(key_ttl))
        ):
            raise ValueError(f"key_ttl must be a positive number of seconds or None: {key_ttl!r}")
        if (client is None) == (url is None):
            raise ValueError("RedisTagIndex needs exactly one of client= or url=")
        if url is not None:
            client = url_client(url, socket_timeout=DEFAULT_SOCKET_TIMEOUT)
        assert client is not None
        check_raw_client(client, "RedisTagIndex needs a client created with decode_responses=False")
        self._client = client
        self._owns_client = url is not None
        self.prefix = prefix
        self.known_keys_shards = known_keys_shards
        self.key_ttl = None if key_ttl is None else float(key_ttl)
        self._is_cluster = isinstance(client, RedisCluster)
        self._needs_initialize = self._is_cluster
        self._shards_arg = str(known_keys_shards).encode("ascii")
        self._tag_prefix = tag_index_tag_set_prefix(prefix)
        self._key_prefix = tag_index_key_set_prefix(prefix)
        self._shard_prefix = tag_index_shard_prefix(prefix)
        self._expiry = tag_index_expiry(prefix)
        self._layout = tag_index_layout(prefix)
        self._record_script = client.register_script(TAG_INDEX_RECORD)
        self._record_many_script = client.register_script(TAG_INDEX_RECORD_MANY)
        self._remove_script = client.register_script(TAG_INDEX_REMOVE)
        self._expire_script = client.register_script(TAG_INDEX_EXPIRE)
        # Failures are CacheLayerError("tag-index", operation); RedisError, OSError, timeouts,
        # and anything else the client raises (redis-py's cluster client can leak an
        # AttributeError from a connection it closed under a concurrent command) are all
        # failures of the index, none a mistake of the caller.
        self._driver_errors = DriverErrors(self.name, self._layout_mismatch)

    def __repr__(self) -> str:
        return (
            f"RedisTagIndex(prefix={self.prefix!r}, "
            f"known_keys_shards={self.known_keys_shards}, key_ttl={self.key_ttl!r})"
        )

    @property
    def client(self) -> RedisClient:
        """The underlying redis-py client."""
        return self._client

    # -- plumbing ---------------------------------------------------------------------------

    def _layout_mismatch(self, exc: BaseException) -> str | None:
        """What a script's refusal of another shard count says (``None``: another failure)."""
        if not (isinstance(exc, ResponseError) and str(exc).startswith(_LAYOUT_ERROR)):
            return None
        return (
            f"{str(exc)[len(_LAYOUT_ERROR) :].strip()} (prefix {self.prefix!r}); "
            "every instance must use the same known_keys_shards"
        )

    async def _ready(self) -> None:
        """Let a cluster client learn the slot map before the first command.

        redis-py's async ``RedisCluster`` resolves a command's routing before it initializes
        itself; a burst of concurrent first commands then goes to one node, comes back MOVED,
        and the refresh it triggers closes connections other commands are still using. One
        explicit ``initialize()`` (idempotent, locked inside the client) avoids all of that.
        """
        if self._needs_initialize:
            await self._client.initialize()
            self._needs_initialize = False

    def _layout_args(self) -> list[bytes]:
        return [self._shards_arg, self._tag_prefix, self._key_prefix, self._shard_prefix]

    def _shard_of(self, member: bytes) -> bytes:
        return tag_index_shard(self.prefix, tag_index_shard_of(member, self.known_keys_shards))

    @staticmethod
    def _tags(tags: Iterable[str], most: int | None = MAX_TAGS) -> tuple[str, ...]:
        """``tags`` checked, without repeats; at most ``most`` of them (``None``: any number,
        for the tags of an invalidation rather than of one key)."""
        if isinstance(tags, str):
            raise ValueError("tags must be an iterable of str, not a single str")
        unique = tuple(dict.fromkeys(_check_text("tag", t, MAX_TAG_LENGTH) for t in tags))
        if most is not None and len(unique) > most:
            raise ValueError(f"at most {most} tags per key; got {len(unique)}")
        return unique

    async def _sscan(self, name: bytes, match: bytes | None = None) -> AsyncIterator[bytes]:
        async for raw in self._client.sscan_iter(name, match=match, count=_SCAN_COUNT):
            yield raw

    async def _cards(self, names: Sequence[bytes]) -> list[int]:
        cards: list[int] = []
        for chunk in _chunks(names, _TAG_BATCH):
            pipe = self._client.pipeline(transaction=False)
            for name in chunk:
                pipe.scard(name)
            cards.extend(int(n) for n in await pipe.execute())
        return cards

    # -- the InMemoryTagIndex methods ---------------------------------------------------------

    async def record(
        self, key: str, tags: Sequence[str], expires_at: float | None = None
    ) -> list[str]:
        """Replace ``key``'s tags (atomically: concurrent writers never mix two tag sets).

        No tags forget the key. A few keys whose expiry has passed are forgotten on the way.

        Args:
            key: The cache key.
            tags: Its tags now (duplicates are ignored; at most 64).
            expires_at: Wall-clock time (``time.time()`` seconds) after which no layer holds
                the value any more and its entries may be dropped; default ``now + key_ttl``,
                or never without ``key_ttl``.

        Returns:
            ``[]``: the index never evicts keys to stay bounded.

        Raises:
            ValueError: On a bad key, tag or expiry.
            CacheLayerError: If Redis fails, or the index uses another shard count.
        """
        now = time.time()
        wanted, expiry = self._checked(key, tags, expires_at, now)
        member = to_member(key)
        keys = [
            tag_index_key_set(self.prefix, key),
            self._shard_of(member),
            self._expiry,
            self._layout,
            *(tag_index_tag_set(self.prefix, tag) for tag in wanted),
        ]
        args: list[bytes | str] = [
            member,
            expiry,
            repr(now),
            str(_RECORD_SWEEP),
            *self._layout_args(),
            *(to_member(tag) for tag in wanted),
        ]
        with self._driver_errors("record"):
            await self._ready()
            await self._record_script(keys=keys, args=args)
        return []

    async def record_many(
        self, items: Iterable[tuple[str, Sequence[str], float | None]]
    ) -> list[str]:
        """Replace the tags of several keys: ``(key, tags, expires_at)`` each, as :meth:`record`.

        The result equals one :meth:`record` per item, in order (a key given twice ends with
        its last tags), in one script call per batch of up to 500 keys instead of one round
        trip per key. Each batch is atomic; the batches are not atomic together. Within a
        batch, the index's sets are written in bulk (one command per tag set, shard and the
        expiry set, the keys the per-key sweeps would forget forgotten at once), except when
        a key expires by now: then key by key, exactly as :meth:`record`.

        Returns:
            ``[]``: the index never evicts keys to stay bounded.

        Raises:
            ValueError: On a bad key, tag or expiry (checked for every item before Redis is
                touched).
            CacheLayerError: If Redis fails (batches before the failing one stay recorded),
                or the index uses another shard count.
        """
        now = time.time()
        # (member, expiry or "-", its tags newline-joined, how many): a key or tag never
        # holds a control character, so each script call gets a few joined arguments instead
        # of one per key and tag (which redis-py packs one by one).
        records: list[tuple[bytes, str, bytes, int]] = []
        # The joined tags of each tags tuple seen in this call: a bulk write usually repeats
        # a few tag tuples (one options object per kind of entry), checked once each.
        seen: dict[Any, tuple[bytes, int]] = {}
        for key, tags, expires_at in items:
            try:
                joined, count = seen[tags]
            except (KeyError, TypeError):  # new, or unhashable (a list)
                wanted = self._tags(tags)
                joined, count = b"\n".join(map(to_member, wanted)), len(wanted)
                if isinstance(tags, tuple):
                    seen[tags] = (joined, count)
            expiry = self._expiry_arg(expires_at, now)
            member = to_member(validate_key(key))
            records.append((member, "-" if expiry == b"" else str(expiry), joined, count))
        if not records:
            return []
        head: list[bytes | str] = [repr(now), str(_RECORD_SWEEP), *self._layout_args()]
        with self._driver_errors("record_many"):
            await self._ready()
            batch: list[tuple[bytes, str, bytes, int]] = []
            size = 0
            for record in records:
                # A key counts as its 3 fields and its tags (the bound of one call's size).
                weight = 3 + record[3]
                if batch and (len(batch) >= _RECORD_BATCH or size + weight > _RECORD_BATCH_ARGS):
                    await self._record_batch(head, batch)
                    batch, size = [], 0
                batch.append(record)
                size += weight
            await self._record_batch(head, batch)
        return []

    async def _record_batch(
        self, head: list[bytes | str], batch: list[tuple[bytes, str, bytes, int]]
    ) -> None:
        """One TAG_INDEX_RECORD_MANY call: the keys, expiries and tag-list numbers joined,
        then each distinct tag list of the batch once."""
        numbers: dict[bytes, int] = {}
        which: list[str] = []
        for _, _, joined, _ in batch:
            number = numbers.get(joined)
            if number is None:
                number = numbers[joined] = len(numbers) + 1
            which.append(str(number))
        args: list[bytes | str] = [
            *head,
            b"\n".join([member for member, _, _, _ in batch]),
            "\n".join([expiry for _, expiry, _, _ in batch]),
            "\n".join(which),
            *numbers,
        ]
        await self._record_many_script(keys=[self._expiry, self._layout], args=args)

    def _checked(
        self, key: str, tags: Sequence[str], expires_at: float | None, now: float
    ) -> tuple[tuple[str, ...], bytes | str]:
        """Validate one record: its unique tags and its expiry argument ('' for none)."""
        validate_key(key)
        return self._tags(tags), self._expiry_arg(expires_at, now)

    def _expiry_arg(self, expires_at: float | None, now: float) -> bytes | str:
        """A record's expiry as a script argument ('' for none), checked."""
        if expires_at is not None and (
            isinstance(expires_at, bool)
            or not isinstance(expires_at, int | float)
            or not math.isfinite(expires_at)
        ):
            raise ValueError(f"expires_at must be a finite wall-clock time, not {expires_at!r}")
        if expires_at is None and self.key_ttl is not None:
            expires_at = now + self.key_ttl
        return b"" if expires_at is None else repr(float(expires_at))

    async def remove(self, keys: Iterable[str]) -> None:
        """Forget ``keys`` (atomically per batch of 1,000 keys).

        Raises:
            CacheLayerError: If Redis fails, or the index uses another shard count.
        """
        members = _members(keys)
        shards = self.known_keys_shards
        with self._driver_errors("remove"):
            await self._ready()
            # Two batches in flight (the asyncio twin): the client groups one while the server
            # runs the other. The batches are independent (disjoint keys), each atomic.
            await in_flight(
                _chunks(members, _REMOVE_BATCH),
                functools.partial(self._remove_batch, shards=shards),
            )

    async def _remove_batch(self, members: Sequence[bytes], shards: int, due_by: str = "") -> int:
        """One TAG_INDEX_REMOVE call: the keys grouped by known-keys shard here (the script
        then computes no SHA-1 per key), each group's keys sent as one newline-joined
        argument; with ``due_by``, only the keys whose expiry is at or before it. Returns how
        many keys it forgot."""
        groups: list[list[bytes]] = [[] for _ in range(shards)]
        sha1 = hashlib.sha1
        first_32_bits = _FIRST_32_BITS
        for member in members:
            groups[first_32_bits(sha1(member).digest())[0] % shards].append(member)
        args: list[bytes | str] = [*self._layout_args(), due_by]
        for number, group in enumerate(groups):
            if group:
                args += [str(number), b"\n".join(group)]
        return int(await self._remove_script(keys=[self._expiry, self._layout], args=args))

    async def expire(self, keys: Iterable[str], tags: Sequence[str] = ()) -> int:
        """Take ``keys`` out of the sets of ``tags`` now and expire the rest of their entries
        (atomically per batch of 2,000 keys): the expiry sweep forgets them later.

        What a tag invalidation needs, at a fraction of :meth:`remove`'s cost: no key's tags
        are read. Once it returns, :meth:`keys_for_tags` of ``tags`` no longer finds the
        keys; their entries under other tags stay until the expiry sweep (a few before every
        :meth:`record`, in bulk in :meth:`record_many` and :meth:`cleanup`) forgets them, and
        may be found by those tags meanwhile, which costs a delete of a key that is gone, never
        a missed one. A key recorded again before the sweep keeps its new record (recording
        gives it a new expiry). Expired entries are what the index already holds for every
        key whose expiry has passed: bounded by the keys it held, and :meth:`size` counts them
        until they are forgotten.

        Returns:
            How many of ``keys`` had live entries: not already expired by an earlier
            ``expire`` (such a key, invalidated under another tag before the sweep forgot it,
            is not counted twice).

        Raises:
            ValueError: On a bad tag.
            CacheLayerError: If Redis fails, or the index uses another shard count.
        """
        joined_tags = b"\n".join(map(to_member, self._tags(tags, None)))
        members = _members(keys)
        with self._driver_errors("expire"):
            await self._ready()
            live: list[int] = []
            await in_flight(
                _chunks(members, _EXPIRE_BATCH),
                functools.partial(self._expire_batch, tags=joined_tags, live=live),
            )
        return sum(live)

    async def _expire_batch(self, members: Sequence[bytes], tags: bytes, live: list[int]) -> None:
        """One TAG_INDEX_EXPIRE call, the keys sent as one newline-joined argument."""
        live.append(
            int(
                await self._expire_script(
                    keys=[self._expiry, self._layout],
                    args=[*self._layout_args(), tags, b"\n".join(members)],
                )
            )
        )

    async def tags_of(self, key: str) -> tuple[str, ...]:
        """The tags ``key`` was recorded with, sorted (Redis sets keep no order).

        Raises:
            CacheLayerError: If Redis fails.
        """
        with self._driver_errors("tags_of"):
            await self._ready()
            raw = await self._client.smembers(tag_index_key_set(self.prefix, key))
        return tuple(sorted(from_member(_raw(t)) for t in raw))

    async def keys_for_tags(self, tags: Sequence[str], mode: str = "any") -> set[str]:
        """Keys carrying any (``mode="any"``) or all (``"all"``) of ``tags``.

        Small results come from one ``SUNION``/``SINTER`` per batch of tags; tag sets of more
        than 10,000 keys, and intersections over many tags, are streamed with ``SSCAN`` (and
        ``SMISMEMBER``), so no single command or reply is unbounded.

        Raises:
            ValueError: On a bad ``mode``.
            CacheLayerError: If Redis fails.
        """
        if mode not in ("any", "all"):
            raise ValueError(f"mode must be 'any' or 'all', not {mode!r}")
        names = [tag_index_tag_set(self.prefix, t) for t in dict.fromkeys(tags)]
        if not names:
            return set()
        with self._driver_errors("keys_for_tags"):
            await self._ready()
            if mode == "any":
                members = await self._union(names)
            else:
                members = await self._intersection(names)
        return _texts(members)

    async def _union(self, names: Sequence[bytes]) -> set[bytes]:
        result: set[bytes] = set()
        for chunk in _chunks(names, _TAG_BATCH):
            cards = await self._cards(chunk)
            group: list[bytes] = []
            size = 0
            for name, card in zip(chunk, cards, strict=True):
                if card == 0:
                    continue
                if card > _REPLY_LIMIT:
                    async for raw in self._sscan(name):
                        result.add(raw)
                    continue
                if group and size + card > _REPLY_LIMIT:
                    result.update(await self._members_of(group))
                    group, size = [], 0
                group.append(name)
                size += card
            if group:
                result.update(await self._members_of(group))
        return result

    async def _members_of(self, names: list[bytes]) -> Iterable[bytes]:
        """The union of a few tag sets (one command): SMEMBERS for one set, which the server
        answers without building the union in a temporary set as SUNION does."""
        raws: Any
        if len(names) == 1:
            raws = await self._client.smembers(names[0])
        else:
            raws = await self._client.sunion(names)
        # One reply holds one type: bytes, as the client is checked for (else converted).
        if raws and not isinstance(next(iter(raws)), bytes):
            return map(_raw, raws)
        return raws  # type: ignore[no-any-return]

    async def _intersection(self, names: Sequence[bytes]) -> set[bytes]:
        cards = await self._cards(names)
        if min(cards) == 0:
            return set()
        ordered = [name for _, name in sorted(zip(cards, names, strict=True))]
        if len(ordered) <= _TAG_BATCH and min(cards) <= _REPLY_LIMIT:
            # The reply is at most the smallest set.
            return set(map(_raw, await self._client.sinter(ordered)))
        # Walk the smallest set in pages and keep the members every other set has.
        smallest, others = ordered[0], ordered[1:]
        result: set[bytes] = set()
        page: list[bytes] = []
        async for raw in self._sscan(smallest):
            page.append(raw)
            if len(page) >= _SCAN_COUNT:
                result.update(await self._filter_members(page, others))
                page = []
        if page:
            result.update(await self._filter_members(page, others))
        return result

    async def _filter_members(self, page: list[bytes], others: Sequence[bytes]) -> list[bytes]:
        alive = page
        for chunk in _chunks(others, _TAG_BATCH):
            if not alive:
                break
            pipe = self._client.pipeline(transaction=False)
            for name in chunk:
                pipe.smismember(name, alive)
            replies = await pipe.execute()
            alive = [m for i, m in enumerate(alive) if all(int(r[i]) for r in replies)]
        return alive

    async def keys_matching(self, pattern: str) -> list[str]:
        """Tagged keys matching the glob ``pattern`` (the semantics of ``layercache._glob``).

        Each known-keys shard is walked with ``SSCAN``; the server-side ``MATCH`` only narrows
        the candidates, and :func:`~layercache._glob.glob_match` decides.

        Raises:
            ValueError: On an invalid pattern.
            CacheLayerError: If Redis fails.
        """
        validate_pattern(pattern)
        match = scan_match("", pattern)
        # SSCAN may return a member twice while Redis resizes the set; the dict drops repeats.
        found: dict[str, None] = {}
        with self._driver_errors("keys_matching"):
            await self._ready()
            for shard in range(self.known_keys_shards):
                async for raw in self._sscan(tag_index_shard(self.prefix, shard), match):
                    key = from_member(raw)
                    if glob_match(pattern, key):
                        found[key] = None
        return list(found)

    async def clear(self) -> None:
        """Forget everything: every Redis key under ``{prefix}:`` (SCAN + UNLINK in batches).

        Keys of other prefixes are left alone. Not atomic against writers recording at the
        same time (like clearing a layer).

        Raises:
            CacheLayerError: If Redis fails.
        """
        with self._driver_errors("clear"):
            await self._ready()
            batch: list[bytes] = []
            async for raw in self._client.scan_iter(
                match=tag_index_match(self.prefix), count=_SCAN_COUNT
            ):
                batch.append(raw)
                if len(batch) >= _UNLINK_BATCH:
                    await self._client.unlink(*batch)
                    batch = []
            if batch:
                await self._client.unlink(*batch)

    async def aclose(self) -> None:
        """Close the client if the index built it (from ``url``)."""
        if self._owns_client:
            with self._driver_errors("aclose"):
                await self._client.aclose()

    # -- housekeeping -------------------------------------------------------------------------

    async def cleanup(self, batch_size: int = 500) -> int:
        """Forget every key whose expiry has passed, ``batch_size`` keys per script call.

        The end time is fixed when the call starts, so it finishes even while keys keep
        expiring. Run it periodically when keys are recorded with an expiry and written
        rarely (``record`` already forgets a few expired keys each time).

        Returns:
            How many keys were forgotten.

        Raises:
            ValueError: On a bad ``batch_size``.
            CacheLayerError: If Redis fails, or the index uses another shard count.
        """
        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, int)
            or not 1 <= batch_size <= _MAX_CLEANUP_BATCH
        ):
            raise ValueError(
                f"batch_size must be an int from 1 to {_MAX_CLEANUP_BATCH}, not {batch_size!r}"
            )
        now = repr(time.time())
        total = 0
        with self._driver_errors("cleanup"):
            await self._ready()
            while True:
                # The due keys are read here and forgotten by the remove script, which keeps
                # any of them recorded again in between (its expiry moved on): the client
                # groups them by shard, so the server computes no SHA-1 per key (the sweep
                # inside record does; a third more work per key).
                # (A raw client: replies are bytes.)
                due = cast(
                    "list[bytes]",
                    await self._client.zrangebyscore(
                        self._expiry, "-inf", now, start=0, num=batch_size
                    ),
                )
                if due:
                    total += await self._remove_batch(due, self.known_keys_shards, now)
                if len(due) < batch_size:
                    return total

    async def size(self) -> int:
        """Number of tagged keys (the sum of the known-keys shards' sizes).

        Raises:
            CacheLayerError: If Redis fails.
        """
        names = [tag_index_shard(self.prefix, n) for n in range(self.known_keys_shards)]
        with self._driver_errors("size"):
            await self._ready()
            return sum(await self._cards(names))
