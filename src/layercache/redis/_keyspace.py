"""``KeySpace``: commands over many keys, the same on a single server and on a cluster.

SCAN in pages, UNLINK in batches, and Lua scripts that loop over their ``KEYS``: on a single
server one call carries a batch of keys; on a cluster (keys of different slots cannot share a
script) one ``EVALSHA`` per hash slot with all the keys of that slot, sent in pipelines of up
to 500 keys (UNLINK is split per slot by the cluster client itself). A cluster client
loads its slot map once, before its first command. The Redis layer uses it;
``scripts/unasync.py`` generates the sync twin, ``_sync_keyspace.py``, from ``_keyspace.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from redis.crc import key_slot
from redis.exceptions import NoScriptError

from .._primitives.aio import gather
from ._errors import DriverErrors
from ._scripts import LEASE_LIVE, LEASE_UNLINK_LIVE

T = TypeVar("T")

__all__ = ["IN_FLIGHT", "SCAN_COUNT", "UNLINK_BATCH", "KeySpace", "in_flight"]

# SCAN hint: large enough to keep round trips few, small enough that one reply stays small.
SCAN_COUNT = 1000
# Keys per UNLINK or per script batch: bounds both the command size and how long one call
# holds the server.
UNLINK_BATCH = 500
# Batches of one bulk call in flight at once (see in_flight): two keep the server busy while
# the client prepares the next batch, with one connection more than one after the other.
IN_FLIGHT = 2


async def in_flight(
    batches: Iterable[T], send: Callable[[T], Awaitable[Any]], width: int = IN_FLIGHT
) -> None:
    """``send`` every batch, ``width`` of them in flight at once on the asyncio twin (each on
    a connection of its own), one after the other on the thread twin.

    For bulk calls of independent batches (disjoint keys, each atomic on its own): a batch's
    arguments are made in ``send``, just before it goes out, so the client prepares the next
    batch while the server runs the previous one, instead of both waiting for each other. The
    first failure propagates once the batches in flight have ended; no batch starts after
    it.
    """
    pending = iter(batches)
    failed: list[BaseException] = []

    async def worker() -> None:
        for batch in pending:
            if failed:
                return
            try:
                await send(batch)
            except BaseException as exc:
                failed.append(exc)
                raise

    await gather([worker] * width)


class KeySpace:
    """Multi-key commands of one redis-py client (see the module documentation).

    Args:
        client: The client (a cluster client when ``is_cluster``), used as given.
        is_cluster: Whether ``client`` is a cluster client.
        errors: The owner's driver-error translation (for :meth:`ready`).
    """

    def __init__(self, client: Any, is_cluster: bool, errors: DriverErrors) -> None:
        self._client = client
        self._is_cluster = is_cluster
        self._errors = errors
        # A fresh RedisCluster client routes its first commands before it knows the slot
        # map; a burst of them then races its MOVED-triggered refresh (redis-py 8.1). Load
        # the slot map once, before the first command (a hot path tests ``pending`` before it
        # calls ready()).
        self.pending = is_cluster
        self._pending_lock = asyncio.Lock() if is_cluster else None
        self._live_script = client.register_script(LEASE_LIVE)
        self._unlink_live_script = client.register_script(LEASE_UNLINK_LIVE)

    async def ready(self) -> None:
        """Load a cluster client's slot map if it was not yet (once; no-op on a server).

        Raises:
            CacheLayerError: ``(owner, "initialize")`` if that fails.
        """
        if not self.pending:
            return
        assert self._pending_lock is not None
        async with self._pending_lock:
            if not self.pending:
                return
            with self._errors("initialize"):
                await self._client.initialize()
            self.pending = False

    async def evalsha(
        self, script: str, sha: str, keys: Sequence[bytes], args: Sequence[Any]
    ) -> Any:
        """One call of ``script`` (its SHA-1 hex ``sha``) straight through ``EVALSHA``, loaded
        again when the server lost it (a restart, ``SCRIPT FLUSH``). redis-py's Script object
        costs about 20 us more per call (measured against a plain ``SET``: 262 vs 250 us with
        it, 242 vs 250 without): for the scripts on the path of every fetch."""
        # Looked up per call (a client built from a URL hands out the current one), typed loosely:
        # redis-py types execute_command differently in its two clients.
        execute: Any = self._client.execute_command
        try:
            return await execute("EVALSHA", sha, len(keys), *keys, *args)
        except NoScriptError:
            await self._client.script_load(script)
            return await execute("EVALSHA", sha, len(keys), *keys, *args)

    async def scan(self, match: bytes, count: int = SCAN_COUNT) -> AsyncIterator[bytes]:
        """Every key matching ``match`` (SCAN: every primary of a cluster, one server else);
        a key may come twice while Redis resizes its table."""
        async for raw in self._client.scan_iter(match=match, count=count):
            yield raw

    async def batches(
        self,
        match: bytes,
        keep: Callable[[bytes], bool] | None = None,
        size: int = UNLINK_BATCH,
        count: int = SCAN_COUNT,
    ) -> AsyncIterator[list[bytes]]:
        """The scanned keys matching ``match`` that ``keep`` accepts (all without it), in
        non-empty lists of at most ``size``."""
        batch: list[bytes] = []
        async for raw in self.scan(match, count):
            if keep is not None and not keep(raw):
                continue
            batch.append(raw)
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch

    async def unlink(self, keys: Sequence[bytes]) -> int:
        """UNLINK ``keys`` (a cluster client splits the command per slot itself)."""
        return int(await self._client.unlink(*keys)) if keys else 0

    async def each_key(self, script: Any, keys: Sequence[bytes], args: Sequence[Any]) -> list[Any]:
        """Run a script that loops over its KEYS on ``keys``; its replies, one per call (see
        :meth:`_calls`)."""
        return [reply for _, reply in await self._calls(script, keys, args)]

    async def _calls(
        self, script: Any, keys: Sequence[bytes], args: Sequence[Any]
    ) -> list[tuple[Sequence[int], Any]]:
        """Run a script that loops over its KEYS on ``keys``: per call, the positions in
        ``keys`` of the keys it got, and its reply.

        On a single server one call per batch of 500 keys. On a cluster keys of different
        slots cannot share a script: the keys are grouped by hash slot (all of them, so keys
        of one slot share a call however far apart they are given), one call per slot (or
        per 500 keys of a slot), and the calls go out in pipelines of up to 500 keys
        (redis-py sends each node its part at once).
        """
        calls: list[tuple[Sequence[int], Any]] = []
        if not self._is_cluster:
            for start in range(0, len(keys), UNLINK_BATCH):
                batch = range(start, min(start + UNLINK_BATCH, len(keys)))
                calls.append((batch, await script(keys=keys[start : batch.stop], args=args)))
            return calls
        by_slot: dict[int, list[int]] = {}
        for i, key in enumerate(keys):  # (the keys are bytes: no encoding to do)
            by_slot.setdefault(key_slot(key), []).append(i)
        pipeline: list[list[int]] = []
        size = 0
        for positions in by_slot.values():
            for start in range(0, len(positions), UNLINK_BATCH):
                group = positions[start : start + UNLINK_BATCH]
                if pipeline and size + len(group) > UNLINK_BATCH:
                    calls.extend(await self._pipelined_script(script, keys, pipeline, args))
                    pipeline, size = [], 0
                pipeline.append(group)
                size += len(group)
        if pipeline:
            calls.extend(await self._pipelined_script(script, keys, pipeline, args))
        return calls

    async def _pipelined_script(
        self, script: Any, keys: Sequence[bytes], groups: list[list[int]], args: Sequence[Any]
    ) -> list[tuple[list[int], Any]]:
        """One EVALSHA per group of positions in ``keys`` (keys of one slot), in one cluster
        pipeline; a node that lost the script (restart, SCRIPT FLUSH) gets it loaded and only
        its calls are sent again."""
        replies: list[Any] = [None] * len(groups)
        pending = list(range(len(groups)))
        for attempt in range(2):
            pipe = self._client.pipeline(transaction=False)
            for g in pending:
                members = [keys[i] for i in groups[g]]
                pipe.execute_command("EVALSHA", script.sha, len(members), *members, *args)
            results = await pipe.execute(raise_on_error=False)
            missing: list[int] = []
            for g, result in zip(pending, results, strict=True):
                if isinstance(result, NoScriptError) and attempt == 0:
                    missing.append(g)
                elif isinstance(result, BaseException):
                    raise result
                else:
                    replies[g] = result
            if not missing:
                break
            # SCRIPT LOAD goes to every primary of a cluster client.
            await self._client.script_load(script.script)
            pending = missing
        return list(zip(groups, replies, strict=True))

    async def live(self, raws: Sequence[bytes]) -> list[bool]:
        """Which of these keys hold something other than a tombstone (see _lease.py)."""
        if not raws:
            return []
        flags = [False] * len(raws)
        for positions, reply in await self._calls(self._live_script, raws, []):
            for i, flag in zip(positions, reply, strict=True):
                flags[i] = bool(int(flag))
        return flags

    async def unlink_live(self, raws: Sequence[bytes]) -> int:
        """UNLINK these keys; how many of them were not tombstones."""
        if not raws:
            return 0
        return sum(int(n) for n in await self.each_key(self._unlink_live_script, raws, []))
