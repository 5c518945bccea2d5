"""The memcached commands the asyncio layer sends, on aiomcache.

Hand-written, like ``_primitives/aio.py``: the layer's logic (``layer.py``) is the single
source both twins are generated from, and this module and ``_sync_client.py`` (pymemcache)
are what they differ by. Both offer the same methods with the same meaning: bulk reads by
server, stores, ``add``, ``incr``, deletes and ``version``; every call bounded by ``timeout``.

aiomcache connections belong to the event loop that opened them. Built from ``servers``, this
keeps one set of clients per event loop, made on first use in that loop and closed when the
loop shuts down (``asyncio.run`` and ``asyncio.Runner`` close the loop's asynchronous
generators, and one per loop watches for that). A ``client`` you pass is used as given.

The ``timeout`` of each call is kept by one watchdog per event loop (:class:`_Deadlines`, on
Python 3.11+), not by a timer per call: ``asyncio.timeout()`` pushes a timer onto the loop's
heap and cancels it on every call, which measured several microseconds per read, a large part
of an L2 hit's cost over the raw client. A call still fails with ``TimeoutError`` once it has
taken ``timeout``, at most :data:`DEADLINE_TICK` seconds later.
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
# Task.cancelling()/uncancel() (Python 3.11+) let a watchdog tell its own cancellation from
# another; 3.10 bounds each call with asyncio.wait_for instead.
_HAS_UNCANCEL = sys.version_info >= (3, 11)
# How often the watchdog looks for calls past their deadline (at most this late).
DEADLINE_TICK = 0.05


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


class _Deadlines:
    """The deadlines of one event loop's calls: each call registers its task and deadline;
    one timer, armed while calls are registered, wakes every ``tick`` seconds and cancels the
    tasks past their deadline. Cheaper per call than a timer per call (a dict entry instead of
    a heap push and a cancelled handle).

    Only touched from its own loop (no lock). Bounded by the calls in flight on that loop.
    """

    __slots__ = ("_calls", "_expired", "_handle", "_loop", "tick")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self.tick = min(DEADLINE_TICK, timeout / 4)
        self._calls: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._handle: asyncio.TimerHandle | None = None

    def enter(self, task: asyncio.Task[Any], deadline: float) -> None:
        self._calls[task] = deadline
        if self._handle is None:
            self._handle = self._loop.call_at(self._loop.time() + self.tick, self._check)

    def leave(self, task: asyncio.Task[Any]) -> bool:
        """Forget ``task``'s call; ``True`` if this watchdog had cancelled it and the call
        ended without raising the cancellation (it swallowed it): the caller undoes it."""
        self._calls.pop(task, None)
        if task in self._expired:
            self._expired.discard(task)
            return True
        return False

    def expired(self, task: asyncio.Task[Any]) -> bool:
        """Whether this watchdog cancelled ``task`` (forgotten once asked)."""
        if task in self._expired:
            self._expired.discard(task)
            return True
        return False

    def _check(self) -> None:
        now = self._loop.time()
        late = [task for task, deadline in self._calls.items() if deadline <= now]
        for task in late:
            del self._calls[task]
            self._expired.add(task)
            task.cancel()
        self._handle = self._loop.call_at(now + self.tick, self._check) if self._calls else None

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class _LoopClients:
    """One event loop's clients (one per server) and the watchdog of their calls."""

    __slots__ = ("clients", "deadlines", "loop")

    def __init__(self, clients: list[Any], timeout: float | None) -> None:
        self.loop = asyncio.get_running_loop()
        self.clients = clients
        self.deadlines = (
            _Deadlines(self.loop, timeout) if timeout is not None and _HAS_UNCANCEL else None
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
        self._per_loop: PerLoop[_LoopClients] = PerLoop(
            self._new_clients, _close_all, max_loops=MAX_LOOPS, what="memcached client"
        )
        # A given client serves one loop: its watchdog is that loop's (made on first use).
        self._given_state: _LoopClients | None = None

    # -- clients per loop ---------------------------------------------------------------------

    def _state(self) -> _LoopClients:
        if self._given is None:
            return self._per_loop.current()
        state = self._given_state
        if state is None or state.loop is not asyncio.get_running_loop():
            if state is not None and state.deadlines is not None:
                state.deadlines.close()
            state = self._given_state = _LoopClients([self._given], self.timeout)
        return state

    def _new_clients(self) -> _LoopClients:
        return _LoopClients(
            [
                aiomcache.FlagClient(
                    host,
                    port,
                    pool_size=self.max_connections,
                    pool_minsize=1,
                    get_flag_handler=_raw_flagged,
                )
                for host, port in self._servers
            ],
            self.timeout,
        )

    async def aclose(self) -> None:
        """Close the clients built here: this loop's now, the others' on their loops."""
        state, self._given_state = self._given_state, None
        if state is not None and state.deadlines is not None:
            state.deadlines.close()
        await self._per_loop.aclose()

    # -- bounded calls ------------------------------------------------------------------------

    async def _bounded(
        self, state: _LoopClients, client: Any, call: Callable[[], Awaitable[T]]
    ) -> T:
        timeout = self.timeout
        if timeout is None:
            return await call()
        deadlines = state.deadlines
        if deadlines is None:  # Python 3.10: a task per call (wait_for)
            try:
                return await asyncio.wait_for(call(), timeout)
            except TimeoutError:
                await _close_quietly(client)
                raise
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()  # type: ignore[attr-defined,unused-ignore]
        deadlines.enter(task, state.loop.time() + timeout)
        try:
            return await call()
        except asyncio.CancelledError:
            if deadlines.expired(task) and (
                task.uncancel() <= cancelling  # type: ignore[attr-defined,unused-ignore]
            ):
                # The watchdog's cancellation, not the caller's. aiomcache puts a connection
                # cancelled mid-reply back in its pool: drop the idle ones so that no later
                # command reads the rest of that reply.
                await _close_quietly(client)
                raise TimeoutError from None
            raise
        finally:
            if deadlines.leave(task):
                task.uncancel()  # type: ignore[attr-defined,unused-ignore]

    async def _on_node(self, index: int, call: Callable[[Any], Awaitable[T]]) -> T:
        state = self._state()
        client = state.clients[index]
        return await self._bounded(state, client, lambda: call(client))

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
            state = self._state()
            client = state.clients[0]
            values = await self._bounded(state, client, lambda: client.multi_get(*keys))
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
        state = self._state()
        replies = await asyncio.gather(
            *(self._bounded(state, client, client.version) for client in state.clients)
        )
        return [reply.decode("ascii", "replace") for reply in replies]


async def _close_quietly(client: Any) -> None:
    try:
        await client.close()
    except Exception:
        logger.debug("closing an aiomcache client failed", exc_info=True)


async def _close_all(state: _LoopClients) -> None:
    if state.deadlines is not None:
        state.deadlines.close()
    for client in state.clients:
        await _close_quietly(client)
