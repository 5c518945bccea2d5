"""The memcached commands the asyncio layer sends, on aiomcache.

Hand-written, like ``_primitives/aio.py``: the layer's logic (``layer.py``) is the single
source both twins are generated from, and this module and ``_sync_client.py`` (pymemcache)
are what they differ by. Both offer the same methods with the same meaning: bulk reads by
server, stores, ``add``, ``incr``, deletes and ``version``; every call bounded by ``timeout``.

aiomcache connections belong to the event loop that opened them. Built from ``servers``, this
keeps one set of clients per event loop, made on first use in that loop and closed when the
loop shuts down (``asyncio.run`` and ``asyncio.Runner`` close the loop's asynchronous
generators, and one per loop watches for that). A ``client`` you pass is used as given.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

try:
    import aiomcache
    from aiomcache.exceptions import ClientException
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "layercache.memcached needs the 'memcached' extra: pip install 'layercache-py[memcached]'"
    ) from exc

from .._primitives.per_loop import PerLoop
from ._common import group_by_node, node_labels

__all__ = ["AioMemcached", "MemcacheClient", "init_signature", "is_sync_client"]

logger = logging.getLogger("layercache.memcached")

T = TypeVar("T")

# What the asyncio layer accepts as ``client=``: an aiomcache client.
MemcacheClient = aiomcache.Client | aiomcache.FlagClient[Any]
# Keys per multi-get command.
GET_BATCH = 100
# Loops whose clients are kept at once.
MAX_LOOPS = 8
# asyncio.timeout() (Python 3.11+) bounds a call without a task of its own.
_HAS_TIMEOUT = sys.version_info >= (3, 11)


def is_sync_client(client: object) -> bool:
    """Whether ``client`` is a pymemcache client (the sync twin takes it)."""
    module = type(client).__module__
    return module == "pymemcache" or module.startswith("pymemcache.")


def init_signature(init: Callable[..., None]) -> inspect.Signature:
    """``__init__``'s signature without ``self``: what a class whose ``__new__`` takes
    ``(*args, **kwargs)`` should show in ``help()`` and ``inspect.signature()``."""
    signature = inspect.signature(init)
    return signature.replace(
        parameters=list(signature.parameters.values())[1:],
        return_annotation=inspect.Signature.empty,
    )


async def _raw_flagged(value: bytes, flags: int) -> bytes:
    # Items stored with flags by another program: hand back the bytes (the codec refuses them).
    return value


class AioMemcached:
    """memcached commands over one aiomcache client per server (per event loop).

    Args:
        servers: ``(host, port)`` pairs (keys spread by rendezvous hashing); ignored with
            ``client``.
        client: An aiomcache client used as given (never closed here).
        timeout: Seconds any one call may take (``None``: unbounded).
        max_connections: Connections per server and event loop.
    """

    def __init__(
        self,
        servers: Sequence[tuple[str, int]],
        client: Any = None,
        *,
        timeout: float | None,
        max_connections: int,
    ) -> None:
        self._servers = list(servers)
        self._given = client
        self.labels = node_labels(self._servers) if client is None else [b"client"]
        self.timeout = timeout
        self.max_connections = max_connections
        self._per_loop: PerLoop[list[Any]] = PerLoop(
            self._new_clients, _close_all, max_loops=MAX_LOOPS, what="memcached client"
        )

    # -- clients per loop ---------------------------------------------------------------------

    def _clients(self) -> list[Any]:
        if self._given is not None:
            return [self._given]
        return self._per_loop.current()

    def _new_clients(self) -> list[Any]:
        return [
            aiomcache.FlagClient(
                host,
                port,
                pool_size=self.max_connections,
                pool_minsize=1,
                get_flag_handler=_raw_flagged,
            )
            for host, port in self._servers
        ]

    async def aclose(self) -> None:
        """Close the clients built here: this loop's now, the others' on their loops."""
        await self._per_loop.aclose()

    # -- bounded calls ------------------------------------------------------------------------

    async def _bounded(self, client: Any, call: Callable[[], Awaitable[T]]) -> T:
        if self.timeout is None:
            return await call()
        try:
            if _HAS_TIMEOUT:
                # No task per call (wait_for's costs about 50 us on a 100 us round trip).
                async with asyncio.timeout(self.timeout):  # type: ignore[attr-defined,unused-ignore]
                    return await call()
            return await asyncio.wait_for(call(), self.timeout)
        except TimeoutError:
            # aiomcache puts a connection cancelled mid-reply back in its pool: drop the idle
            # ones so that no later command reads the rest of that reply.
            await _close_quietly(client)
            raise

    async def _on_node(self, index: int, call: Callable[[Any], Awaitable[T]]) -> T:
        client = self._clients()[index]
        return await self._bounded(client, lambda: call(client))

    async def _each_node(
        self, keys: Sequence[bytes], call: Callable[[Any, list[bytes]], Awaitable[T]]
    ) -> list[T]:
        def bind(batch: list[bytes]) -> Callable[[Any], Awaitable[T]]:
            return lambda client: call(client, batch)

        jobs = [
            self._on_node(index, bind(node_keys[start : start + GET_BATCH]))
            for index, node_keys in group_by_node(self.labels, keys).items()
            for start in range(0, len(node_keys), GET_BATCH)
        ]
        if len(jobs) == 1:
            return [await jobs[0]]
        return list(await asyncio.gather(*jobs))

    # -- commands -----------------------------------------------------------------------------

    async def get_many(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """The values found for ``keys`` (distinct), by key."""
        if len(self.labels) == 1 and len(keys) <= GET_BATCH:
            client = self._clients()[0]
            values = await self._bounded(client, lambda: client.multi_get(*keys))
            return {k: v for k, v in zip(keys, values, strict=True) if v is not None}

        async def fetch(client: Any, batch: list[bytes]) -> dict[bytes, bytes]:
            values = await client.multi_get(*batch)
            return {k: v for k, v in zip(batch, values, strict=True) if v is not None}

        found: dict[bytes, bytes] = {}
        for part in await self._each_node(keys, fetch):
            found.update(part)
        return found

    async def set(self, key: bytes, value: bytes, exptime: int) -> bool:
        """Store ``value`` (``exptime`` as memcached reads it); ``True`` when stored."""
        index = 0 if len(self.labels) == 1 else group_by_node(self.labels, [key]).popitem()[0]
        return await self._on_node(index, lambda c: c.set(key, value, exptime=exptime))

    async def set_many(self, items: Sequence[tuple[bytes, bytes, int]]) -> None:
        """Store every ``(key, value, exptime)``, concurrently over the pools."""

        async def one(key: bytes, value: bytes, exptime: int) -> None:
            await self.set(key, value, exptime)

        await asyncio.gather(*(one(*item) for item in items))

    async def add(self, key: bytes, value: bytes, exptime: int) -> bool:
        """Store ``value`` only if ``key`` is absent; ``True`` when stored."""
        index = 0 if len(self.labels) == 1 else group_by_node(self.labels, [key]).popitem()[0]
        return await self._on_node(index, lambda c: c.add(key, value, exptime=exptime))

    async def incr(self, key: bytes, delta: int) -> int | None:
        """Add ``delta`` to the decimal number under ``key``; ``None`` when absent."""
        index = 0 if len(self.labels) == 1 else group_by_node(self.labels, [key]).popitem()[0]

        async def incr(client: Any) -> int | None:
            try:
                return int(await client.incr(key, delta))
            except ClientException as exc:
                # aiomcache raises on NOT_FOUND instead of returning None.
                if len(exc.args) > 1 and exc.args[1] == b"NOT_FOUND":
                    return None
                raise

        return await self._on_node(index, incr)

    async def delete_many(self, keys: Sequence[bytes]) -> None:
        """Remove ``keys`` (absent ones are no error)."""

        async def delete(client: Any, batch: list[bytes]) -> None:
            for key in batch:
                await client.delete(key)

        if len(keys) == 1:
            index = 0 if len(self.labels) == 1 else group_by_node(self.labels, keys).popitem()[0]
            await self._on_node(index, lambda c: c.delete(keys[0]))
            return
        # One sequence of deletes per server and batch, the batches concurrently.
        await self._each_node(keys, delete)

    async def version(self) -> list[str]:
        """Every server's version (a round trip to each)."""
        clients = self._clients()
        replies = await asyncio.gather(
            *(self._bounded(client, client.version) for client in clients)
        )
        return [reply.decode("ascii", "replace") for reply in replies]


async def _close_quietly(client: Any) -> None:
    try:
        await client.close()
    except Exception:
        logger.debug("closing an aiomcache client failed", exc_info=True)


async def _close_all(clients: Sequence[Any]) -> None:
    for client in clients:
        await _close_quietly(client)
