"""The memcached commands the sync layer sends, on pymemcache.

Hand-written, like ``_primitives/threads.py``: the twin of ``_aio_client.py`` (same methods,
same meaning), which the generated ``_sync_layer.py`` imports in place of it. Built from
``servers``, one pool of pymemcache base ``Client`` connections per server (:class:`_Pool`:
every thread takes a connection of its own, at most ``max_connections`` per server; callers
beyond them wait for a free one, at most ``timeout``), with ``timeout`` as the connect and
socket timeout; keys are spread over the servers by the same rendezvous hashing as the
asyncio twin's. A ``client`` you pass (a pymemcache ``Client``, ``PooledClient`` or
``HashClient``) is used as given.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

try:
    from pymemcache.client.base import Client  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "layercache.memcached needs the 'memcached' extra: pip install 'layercache-py[memcached]'"
    ) from exc

from ._common import group_by_node, node_labels

__all__ = ["MemcacheClient", "SyncMemcached"]

logger = logging.getLogger("layercache.memcached")

# What the sync layer accepts as ``client=``: a pymemcache client.
MemcacheClient = Any
# Keys per multi-get command.
GET_BATCH = 100


class _Pool:
    """One server's connections: pymemcache base ``Client`` objects, at most ``size``.

    Taking a free one costs one uncontended lock (no pymemcache ``PooledClient``, whose own
    pool adds a lock, a generator context manager and a bounded queue to every command); a
    thread that finds all ``size`` in use waits on a condition, each release waking one. A
    connection whose command failed is closed and its place freed (as ``PooledClient`` does
    with ``destroy_on_fail``): it may hold half a reply.
    """

    __slots__ = ("_created", "_free", "_lock", "_make", "_released", "_size", "_waiting", "closed")

    def __init__(self, size: int, make: Callable[[], Any]) -> None:
        self._size = size
        self._make = make
        self._free: list[Any] = []
        self._created = 0
        self._lock = threading.Lock()
        self._released = threading.Condition(self._lock)
        self._waiting = 0
        self.closed = False

    def take(self, timeout: float | None) -> Any:
        """A connection for the caller alone, waiting at most ``timeout`` (``None``: forever)
        for one; ``None`` when none became free in time."""
        with self._lock:
            if self._free:
                return self._free.pop()
            if self._created >= self._size:
                deadline = None if timeout is None else time.monotonic() + timeout
                self._waiting += 1
                try:
                    while not self._free and self._created >= self._size:
                        left = None if deadline is None else deadline - time.monotonic()
                        if left is not None and left <= 0:
                            return None
                        self._released.wait(left)
                finally:
                    self._waiting -= 1
                if self._free:
                    return self._free.pop()
            self._created += 1
        try:
            return self._make()  # connects on its first command
        except BaseException:
            self._forget()
            raise

    def give(self, client: Any) -> None:
        """Hand a connection back after a command that completed."""
        with self._lock:
            if not self.closed:
                self._free.append(client)
                if self._waiting:
                    self._released.notify()
                return
        _close_quietly(client)  # the pool closed meanwhile
        self._forget()

    def discard(self, client: Any) -> None:
        """Close a connection whose command failed and free its place."""
        _close_quietly(client)
        self._forget()

    def _forget(self) -> None:
        with self._lock:
            self._created -= 1
            if self._waiting:
                self._released.notify()

    def close(self) -> None:
        """Close the idle connections; those in use are closed when they come back."""
        with self._lock:
            self.closed = True
            idle, self._free = self._free, []
            self._created -= len(idle)
        for client in idle:
            _close_quietly(client)


def _close_quietly(client: Any) -> None:
    try:
        client.close()
    except Exception:
        logger.debug("closing a pymemcache client failed", exc_info=True)


class SyncMemcached:
    """memcached commands over one pymemcache pooled client per server.

    Args:
        servers: ``(host, port)`` pairs (keys spread by rendezvous hashing); ignored with
            ``client``.
        client: A pymemcache client used as given (never closed here).
        timeout: Connect and socket timeout in seconds (``None``: unbounded).
        max_connections: Connections per server.
    """

    def __init__(
        self,
        servers: Sequence[tuple[str, int]],
        client: Any = None,
        *,
        timeout: float | None,
        max_connections: int,
    ) -> None:
        self.timeout = timeout
        self.max_connections = max_connections
        # One pool per server (None: a given client, used as it is configured).
        self._pools: list[_Pool] | None = None
        self._given: Any = client
        if client is not None:
            self.labels = [b"client"]
        else:
            self._pools = [_Pool(max_connections, self._maker(server)) for server in servers]
            self.labels = node_labels(servers)

    def _maker(self, server: tuple[str, int]) -> Callable[[], Any]:
        timeout = self.timeout

        def make() -> Any:
            return Client(
                server,
                connect_timeout=timeout,
                timeout=timeout,
                no_delay=True,
                default_noreply=False,
            )

        return make

    def _index(self, key: bytes) -> int:
        return 0 if len(self.labels) == 1 else group_by_node(self.labels, [key]).popitem()[0]

    def _on(self, index: int, command: str, *args: Any, **kwargs: Any) -> Any:
        """``command(*args, **kwargs)`` on a connection of server ``index`` reserved for the
        caller (plain code, no context manager: this is every command's path)."""
        pools = self._pools
        if pools is None:
            return getattr(self._given, command)(*args, **kwargs)
        pool = pools[index]
        client = pool.take(self.timeout)
        if client is None:
            raise TimeoutError(
                f"every one of max_connections={self.max_connections} to a memcached server "
                f"stayed busy for timeout={self.timeout}s"
            )
        try:
            result = getattr(client, command)(*args, **kwargs)
        except BaseException:
            pool.discard(client)
            raise
        pool.give(client)
        return result

    def _on_node(self, key: bytes, command: str, *args: Any, **kwargs: Any) -> Any:
        return self._on(self._index(key), command, key, *args, **kwargs)

    def close(self) -> None:
        """Close the connections built here (a given client is left open)."""
        for pool in self._pools or ():
            pool.close()

    # -- commands -----------------------------------------------------------------------------

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """The values found for ``keys`` (distinct), by key."""
        if len(self.labels) == 1 and len(keys) <= GET_BATCH:
            # One server, one command (every single-key read): no grouping.
            found: dict[bytes, bytes] = self._on(0, "get_many", keys)
            return found
        found = {}
        for index, node_keys in group_by_node(self.labels, keys).items():
            for start in range(0, len(node_keys), GET_BATCH):
                batch = node_keys[start : start + GET_BATCH]
                found.update(self._on(index, "get_many", batch))
        return found

    def set(self, key: bytes, value: bytes, exptime: int) -> bool:
        """Store ``value`` (``exptime`` as memcached reads it); ``True`` when stored."""
        return bool(self._on_node(key, "set", value, expire=exptime, noreply=False))

    def set_many(self, items: Sequence[tuple[bytes, bytes, int]]) -> None:
        """Store every ``(key, value, exptime)``: one pipelined ``set_many`` per server and
        expiry time."""
        groups: dict[tuple[int, int], dict[bytes, bytes]] = {}
        for key, value, exptime in items:
            groups.setdefault((self._index(key), exptime), {})[key] = value
        for (index, exptime), values in groups.items():
            self._on(index, "set_many", values, expire=exptime, noreply=False)

    def add(self, key: bytes, value: bytes, exptime: int) -> bool:
        """Store ``value`` only if ``key`` is absent; ``True`` when stored."""
        return bool(self._on_node(key, "add", value, expire=exptime, noreply=False))

    def incr(self, key: bytes, delta: int) -> int | None:
        """Add ``delta`` to the decimal number under ``key``; ``None`` when absent."""
        result = self._on_node(key, "incr", delta, noreply=False)
        return None if result is None else int(result)

    def delete_many(self, keys: Sequence[bytes]) -> None:
        """Remove ``keys`` (absent ones are no error)."""
        if len(keys) == 1:
            self._on_node(keys[0], "delete", noreply=False)
            return
        for index, node_keys in group_by_node(self.labels, keys).items():
            self._on(index, "delete_many", node_keys, noreply=False)

    def version(self) -> list[str]:
        """Every server's version (a round trip to each)."""
        replies = [self._on(index, "version") for index in range(len(self.labels))]
        return [
            reply.decode("ascii", "replace") if isinstance(reply, bytes) else str(reply)
            for reply in replies
        ]
