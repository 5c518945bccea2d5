"""The memcached commands the sync layer sends, on pymemcache.

Hand-written, like ``_primitives/threads.py``: the twin of ``_aio_client.py`` (same methods,
same meaning), which the generated ``_sync_layer.py`` imports in place of it. Built from
``servers``, one pymemcache ``PooledClient`` per server (thread-safe: every thread takes a
pooled connection) with ``timeout`` as its connect and socket timeout; keys are spread over
the servers by the same rendezvous hashing as the asyncio twin's. pymemcache's pool raises
``RuntimeError`` when a thread finds every connection taken, so a count of free connections
per server (:class:`_Slots`) makes callers beyond ``max_connections`` wait for a free one
instead (at most ``timeout``). A
``client`` you pass (a pymemcache ``Client``, ``PooledClient`` or ``HashClient``) is used as
given.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

try:
    from pymemcache.client.base import PooledClient  # type: ignore[import-untyped]
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


class _Slots:
    """The free connections of one server: taking one while some are free costs one
    uncontended lock (a ``BoundedSemaphore`` costs several, and a notify per release); only
    callers that find none wait, each woken by a release."""

    __slots__ = ("_free", "_lock", "_released", "_waiting")

    def __init__(self, size: int) -> None:
        self._free = size
        self._lock = threading.Lock()
        self._released = threading.Condition(self._lock)
        self._waiting = 0

    def take(self, timeout: float | None) -> bool:
        """Reserve a connection, waiting at most ``timeout`` (``None``: forever) for one;
        ``False`` when none became free in time."""
        with self._lock:
            if self._free > 0:
                self._free -= 1
                return True
            deadline = None if timeout is None else time.monotonic() + timeout
            self._waiting += 1
            try:
                while self._free <= 0:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._released.wait(left)
                self._free -= 1
                return True
            finally:
                self._waiting -= 1

    def give(self) -> None:
        """Hand a reserved connection back (waking one waiter, if any)."""
        with self._lock:
            self._free += 1
            if self._waiting:
                self._released.notify()


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
        # Free connections per server (None: a given client, used as it is configured).
        self._free: list[_Slots] | None = None
        if client is not None:
            self._clients: list[Any] = [client]
            self._owned = False
            self.labels = [b"client"]
        else:
            self._free = [_Slots(max_connections) for _ in servers]
            self._clients = [
                PooledClient(
                    server,
                    connect_timeout=timeout,
                    timeout=timeout,
                    no_delay=True,
                    max_pool_size=max_connections,
                    default_noreply=False,
                )
                for server in servers
            ]
            self._owned = True
            self.labels = node_labels(servers)

    def _index(self, key: bytes) -> int:
        return 0 if len(self._clients) == 1 else group_by_node(self.labels, [key]).popitem()[0]

    def _on(self, index: int, command: str, *args: Any, **kwargs: Any) -> Any:
        """Server ``index``'s client's ``command(*args, **kwargs)``, with one of its
        connections reserved for the caller (a plain try/finally: every command's path)."""
        free = None if self._free is None else self._free[index]
        if free is not None and not free.take(self.timeout):
            raise TimeoutError(
                f"every one of max_connections={self.max_connections} to a memcached server "
                f"stayed busy for timeout={self.timeout}s"
            )
        try:
            return getattr(self._clients[index], command)(*args, **kwargs)
        finally:
            if free is not None:
                free.give()

    def _on_node(self, key: bytes, command: str, *args: Any, **kwargs: Any) -> Any:
        return self._on(self._index(key), command, key, *args, **kwargs)

    def close(self) -> None:
        """Close the clients built here."""
        if self._owned:
            for client in self._clients:
                try:
                    client.close()
                except Exception:
                    logger.debug("closing a pymemcache client failed", exc_info=True)

    # -- commands -----------------------------------------------------------------------------

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """The values found for ``keys`` (distinct), by key."""
        if len(self._clients) == 1 and len(keys) <= GET_BATCH:
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
        replies = [self._on(index, "version") for index in range(len(self._clients))]
        return [
            reply.decode("ascii", "replace") if isinstance(reply, bytes) else str(reply)
            for reply in replies
        ]
