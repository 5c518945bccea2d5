"""The redis-py clients the library builds from a URL: one per event loop, waiting pools.

redis.asyncio connections belong to the event loop that opened them: a client used from a
second loop fails ("attached to a different loop", "Event loop is closed"), which is what
every second ``asyncio.run()`` or FastAPI ``TestClient`` session does with a module-level
stack. So a component built from ``url=`` holds a :class:`LoopBoundClient`: it stands for
the running loop's own client, made on first use in that loop and closed when that loop shuts
down (``asyncio.run`` and ``asyncio.Runner`` close the loop's asynchronous generators, and
one per loop watches for that), with at most ``max_loops`` loops' clients kept.

The pools wait for a free connection instead of raising ``MaxConnectionsError`` at the
limit, bounded by the socket timeout: the asyncio one is a :class:`WaitingConnectionPool`
(redis-py's ``BlockingConnectionPool`` costs about 18% more per command even when a
connection is free; this one takes the plain pool's path then and waits only when full), the
sync one its threaded counterpart :class:`SyncWaitingConnectionPool` (redis-py's sync
``BlockingConnectionPool`` passes every connection through a ``LifoQueue``, a Python
condition variable, on every command). The sync twins get one
client for every thread from :func:`sync_url_client` (redis-py's sync pool is thread-safe);
``scripts/unasync.py`` renames ``url_client`` to it.

Besides redis-py's ``redis://``, ``rediss://`` and ``unix://`` URLs, a Sentinel-managed master
is named by ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]``
(``rediss+sentinel://`` for TLS; query options as below): the client is
``Sentinel(...).master_for(service)`` on a waiting pool, and it asks the sentinels for the
master's address whenever it opens a connection and, at most every ``master_check_interval``
seconds, before a command on an open one (a connection to a master that moved is dropped and
the command retried on the new master). Options in the query string: ``sentinel_username``,
``sentinel_password`` (the sentinels' own credentials: the ones before ``@`` are the data
nodes'), ``sentinel_ssl`` (``rediss+sentinel://`` speaks TLS to the sentinels too unless this
is false), ``master_check_interval`` (seconds, default 1; 0: never), and what redis-py's URLs
accept (``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``, ``db``, ...)
for the data nodes. docs/topologies.md has the whole story.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast
from urllib.parse import parse_qs, unquote

import redis
import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection as AsyncSSLConnection
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelConnectionPool
from redis.asyncio.sentinel import SentinelManagedConnection as AsyncSentinelManagedConnection
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.connection import URL_QUERY_ARGUMENT_PARSERS, SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

from .._primitives.per_loop import PerLoop

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_SOCKET_TIMEOUT",
    "MAX_LOOPS",
    "SENTINEL_SCHEMES",
    "LoopBoundClient",
    "SentinelTarget",
    "connection_hint",
    "fast_reads",
    "init_signature",
    "is_sentinel_url",
    "parse_sentinel_url",
    "pool_exhausted",
    "read_pubsub",
    "sync_fast_reads",
    "sync_read_pubsub",
    "sync_twin_for_sync_clients",
    "sync_url_client",
    "url_client",
]

logger = logging.getLogger("layercache.redis")

# Connections per pool (per event loop; per process for the sync twin). A cache command takes
# well under a millisecond on a local network, so 50 connections serve tens of thousands of
# commands a second, and callers beyond them wait their turn instead of failing; more would
# mostly multiply the server's client count (every worker process of every instance holds a
# pool, and Redis refuses clients beyond ``maxclients``, 10,000 by default).
DEFAULT_MAX_CONNECTIONS = 50
# Socket timeout of the clients the coordination components (bus, single-flight coordinator,
# tag index) build from ``url=``: RedisLayer's default.
DEFAULT_SOCKET_TIMEOUT = 5.0
# Event loops whose clients are kept at once. Loops that shut down drop theirs; this bounds a
# program that keeps many loops alive (one per thread) without ever closing them.
MAX_LOOPS = 8
# What redis-py's BlockingConnectionPool raises when no connection became free in time.
_NO_CONNECTION = "No connection available."


def _pool_options(url: str, socket_timeout: float | None, max_connections: int) -> dict[str, Any]:
    if isinstance(max_connections, bool) or not isinstance(max_connections, int):
        raise ValueError(f"max_connections must be a positive int, not {max_connections!r}")
    if max_connections < 1:
        raise ValueError(f"max_connections must be a positive int, not {max_connections!r}")
    return {
        "decode_responses": False,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "max_connections": max_connections,
        # How long a caller waits for a free connection when all are busy.
        "timeout": socket_timeout,
    }


# One quick retry reconnects a pooled connection the server dropped (restart, idle timeout);
# more would only stall callers while Redis is really down, and the stack's degradation
# handling is the place to wait out an outage.
def _backoff() -> ExponentialBackoff:
    return ExponentialBackoff(cap=0.1, base=0.01)


# -- Reads past redis-py's per-command machinery ---------------------------------------------
#
# A redis-py command passes through about 130 Python calls: the command's argument packing,
# the retry wrapper, response callbacks, observability hooks (two connection-count records per
# command in redis-py 8), the pool's process-id check and, on every checkout, a poll of the
# socket ("has the connection unread data?": three system calls). For the cache's hottest
# commands, GET and MGET of keys that are already bytes, the pools below skip all of that for
# connections whose last command they ran themselves, to its end: such a connection is known
# to hold no unread reply, so it is parked on the pool's ``_ready`` list and taken again
# without the checks. Everything else (a connection fresh from the pool, any failure, a fork)
# goes through redis-py's own checked path. A parked connection is still in the pool's in-use
# set: ``disconnect()`` closes it with the rest, and a caller that finds the pool full takes a
# parked one before it waits.


def _pack_mget(keys: Sequence[bytes]) -> bytes:
    parts = [b"*%d\r\n$4\r\nMGET\r\n" % (len(keys) + 1)]
    parts.extend(b"$%d\r\n%b\r\n" % (len(key), key) for key in keys)
    return b"".join(parts)


# Pools with parked connections: a forked child must never use its parent's sockets.
_PARKING: weakref.WeakSet[Any] = weakref.WeakSet()


def _forget_parked() -> None:
    for pool in list(_PARKING):
        pool._ready = []


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parked)


class WaitingConnectionPool(aioredis.ConnectionPool):
    """redis-py's asyncio ``ConnectionPool``, except that a caller finding every connection
    busy waits (up to ``timeout`` seconds) for one to be released instead of failing.

    While a connection is free it costs what the plain pool costs; only callers that find the
    pool full queue, first come first served: each release wakes the oldest waiter and keeps
    the connection for it (a caller arriving meanwhile queues behind, so a task that releases
    and at once asks again cannot take the connection back, again and again, while a waiter
    starves). A waiter that times out gets the ``ConnectionError`` redis-py's
    ``BlockingConnectionPool`` raises. One pool serves one event loop (as every redis.asyncio
    pool does).
    """

    def __init__(self, *, timeout: float | None = None, **kwargs: Any) -> None:
        self._ready: list[Any] = []  # parked connections (see above), set before reset()
        super().__init__(**kwargs)
        self.timeout = timeout
        self._waiters: deque[asyncio.Future[None]] = deque()
        # Waiters woken for a connection that have not taken it yet: newcomers queue behind.
        self._handoffs = 0
        _PARKING.add(self)

    def reset(self) -> None:
        super().reset()  # type: ignore[no-untyped-call]
        self._ready = []

    async def fast_get(self, key: bytes) -> Any:
        """``GET key`` (bytes or ``None``) on a parked connection when there is one."""
        return await self._fast(b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n" % (len(key), key))

    async def fast_mget(self, keys: Sequence[bytes]) -> Any:
        """``MGET keys`` (a list of bytes or ``None``) likewise."""
        return await self._fast(_pack_mget(keys))

    async def _fast(self, packed: bytes) -> Any:
        ready = self._ready
        parked = bool(ready) and not self._waiters and not self._handoffs
        conn = ready.pop() if parked else await self.get_connection()
        try:
            await conn.send_packed_command(packed)
            reply = await conn.read_response()
        except ResponseError:
            self._park(conn)  # an error reply was read to its end: the connection is fine
            raise
        except BaseException as exc:
            # Unknown state (cancelled mid-reply, dropped, timed out): never parked again.
            await conn.disconnect(nowait=True)
            await self.release(conn)
            if parked and isinstance(exc, RedisConnectionError):
                # A parked connection the server dropped (restart, idle timeout): once more
                # on a checked one, as redis-py's retry would.
                return await self._fast(packed)
            raise
        self._park(conn)
        return reply

    def _park(self, conn: Any) -> None:
        self._ready.append(conn)
        if self._waiters:
            self._wake_one()  # a caller waits for a connection: it takes this one

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if not self._waiters and not self._handoffs:  # nobody queued ahead of this caller
            if self._ready:
                return self._ready.pop()  # parked: known to be clean, and in the in-use set
            try:
                return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
            except MaxConnectionsError:
                pass  # every connection is in use: wait for a release
        loop = asyncio.get_running_loop()
        deadline = None if self.timeout is None else loop.time() + self.timeout
        first = False  # a woken waiter that lost its connection keeps its place
        while True:
            waiter: asyncio.Future[None] = loop.create_future()
            if first:
                self._waiters.appendleft(waiter)
            else:
                self._waiters.append(waiter)
            try:
                if deadline is None:
                    await waiter
                else:
                    await asyncio.wait_for(waiter, max(0.0, deadline - loop.time()))
            except BaseException as exc:
                self._give_up(waiter)
                if isinstance(exc, asyncio.TimeoutError):
                    raise RedisConnectionError(_NO_CONNECTION) from None
                raise
            self._handoffs -= 1  # woken: the connection kept for it is taken now
            try:
                if self._ready:
                    conn = self._ready.pop()
                else:
                    conn = await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
            except MaxConnectionsError:
                first = True
                continue  # nothing free after all (a connection was dropped): wait again
            except BaseException:
                self._wake_one()  # woken for a connection it will not take: pass it on
                raise
            if self._waiters and self._has_room():
                self._wake_one()  # more than one connection came free meanwhile
            return conn

    def _has_room(self) -> bool:
        """Whether a connection is free or may be opened (redis-py's pool bookkeeping)."""
        if self._ready or getattr(self, "_available_connections", None):
            return True
        in_use = len(getattr(self, "_in_use_connections", ()))
        return in_use < self.max_connections

    def _give_up(self, waiter: asyncio.Future[None]) -> None:
        """A waiter leaves (timed out, cancelled) without taking a connection: a release
        that had already woken it goes on to the next waiter; otherwise it leaves the queue."""
        if waiter.done() and not waiter.cancelled():
            self._handoffs -= 1
            self._wake_one()
            return
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass  # already taken off the queue by a release that skipped it

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._handoffs += 1
                return

    async def release(self, connection: Any) -> None:
        await super().release(connection)
        if self._waiters:
            self._wake_one()


class SyncWaitingConnectionPool(redis.ConnectionPool):
    """redis-py's sync ``ConnectionPool``, except that a thread finding every connection busy
    waits (up to ``timeout`` seconds) for one to be released instead of failing.

    While a connection is free it costs what the plain pool costs (a release checks one
    deque more); only threads that find the pool full queue, first come first served: only
    the thread at the head of the queue takes a released connection, and a thread arriving
    while others queue goes behind them (so a thread that releases and at once asks again
    cannot take the connection back, again and again, while a waiter starves). A waiter
    that times out gets the ``ConnectionError`` redis-py's ``BlockingConnectionPool``
    raises. Thread-safe, like the plain pool.
    """

    def __init__(self, *, timeout: float | None = None, **kwargs: Any) -> None:
        self._ready: list[Any] = []  # parked connections (see above), set before reset()
        super().__init__(**kwargs)
        self.timeout = timeout
        self._released = threading.Condition(threading.Lock())
        # The waiting threads' tickets, oldest first, and releases so far (the head retries
        # when it changed): both changed under ``_released``.
        self._queue: deque[object] = deque()
        self._releases = 0
        _PARKING.add(self)

    def reset(self) -> None:
        super().reset()
        self._ready = []

    def fast_get(self, key: bytes) -> Any:
        """``GET key`` (bytes or ``None``) on a parked connection when there is one.

        Thread-safe without a lock: a parked connection is taken with one ``list.pop``."""
        return self._fast(b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n" % (len(key), key))

    def fast_mget(self, keys: Sequence[bytes]) -> Any:
        """``MGET keys`` (a list of bytes or ``None``) likewise."""
        return self._fast(_pack_mget(keys))

    def _fast(self, packed: bytes) -> Any:
        conn = None
        if not self._queue:  # nobody queued ahead of this thread
            try:
                conn = self._ready.pop()
            except IndexError:
                pass
        parked = conn is not None
        if conn is None:
            conn = self.get_connection()
        try:
            conn.send_packed_command((packed,))
            reply = conn.read_response()
        except ResponseError:
            self._park(conn)  # an error reply was read to its end: the connection is fine
            raise
        except BaseException as exc:
            # Unknown state (interrupted mid-reply, dropped, timed out): never parked again.
            conn.disconnect()
            self.release(conn)
            if parked and isinstance(exc, RedisConnectionError):
                # A parked connection the server dropped (restart, idle timeout): once more
                # on a checked one, as redis-py's retry would.
                return self._fast(packed)
            raise
        if self._queue:
            self._park(conn)
        else:
            self._ready.append(conn)  # _park() without waiters, inlined (the L2 hit path)
        return reply

    def _park(self, conn: Any) -> None:
        self._ready.append(conn)
        self._wake_head()

    def _wake_head(self) -> None:
        """A connection came free: the thread at the head of the queue takes it. (A thread
        queues before it looks for a free connection, so one freed before that is seen.)"""
        if self._queue:
            with self._released:
                self._releases += 1
                self._released.notify_all()

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if not self._queue:  # nobody queued ahead of this thread
            try:
                return self._ready.pop()  # parked: known to be clean, and in the in-use set
            except IndexError:
                pass
            try:
                return super().get_connection(*args, **kwargs)
            except MaxConnectionsError:
                pass  # every connection is in use: queue for a release
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        ticket = object()
        released = self._released
        with released:
            self._queue.append(ticket)
        try:
            while True:
                with released:
                    while self._queue[0] is not ticket:  # not this thread's turn yet
                        if not self._wait(deadline):
                            raise RedisConnectionError(_NO_CONNECTION) from None
                    # A release after this read of the count wakes this thread, or (if it
                    # came first) its connection is taken by the attempt below.
                    seen = self._releases
                try:
                    conn = self._ready.pop()
                except IndexError:
                    try:
                        conn = super().get_connection(*args, **kwargs)
                    except MaxConnectionsError:
                        conn = None
                if conn is not None:
                    return conn
                with released:
                    while self._releases == seen:
                        if not self._wait(deadline):
                            raise RedisConnectionError(_NO_CONNECTION) from None
        finally:
            with released:
                head = self._queue[0] is ticket
                self._queue.remove(ticket)
                if head and self._queue:
                    released.notify_all()  # the next thread's turn

    def _wait(self, deadline: float | None) -> bool:
        """Wait on ``_released`` (held) until notified or ``deadline``; ``False`` past it."""
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return False
        self._released.wait(left)
        return True

    def release(self, connection: Any) -> None:
        super().release(connection)
        self._wake_head()


# -- Sentinel URLs ------------------------------------------------------------------------------

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
DEFAULT_SENTINEL_PORT = 26379
# How often (seconds, per pool) a Sentinel URL's client asks whether the master moved; 0: never
# (then only a failed connection, or the demoted master's refusals, lead to the new one).
DEFAULT_MASTER_CHECK_INTERVAL = 1.0
# Query options that configure the connections to the sentinels, not to the data nodes.
_SENTINEL_OPTIONS = frozenset({"sentinel_username", "sentinel_password", "sentinel_ssl"})
# redis-py's parsers of its URLs' query options (db, socket_timeout, ssl_check_hostname, ...).
_QUERY_PARSERS = cast("Mapping[str, Callable[[str], Any]]", URL_QUERY_ARGUMENT_PARSERS)
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def is_sentinel_url(url: object) -> bool:
    """Whether ``url`` is a ``redis+sentinel://`` or ``rediss+sentinel://`` URL."""
    return isinstance(url, str) and url.partition("://")[0].lower() in SENTINEL_SCHEMES


def _redacted(url: str) -> str:
    """``url`` with the password of its user part (and of its query) hidden."""
    scheme, sep, rest = url.partition("://")
    authority, slash, tail = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.partition(":")[0] + ":***"
    path, question, query = tail.partition("?")
    if question:
        query = "&".join(
            f"{part.partition('=')[0]}=***" if "password" in part.partition("=")[0] else part
            for part in query.split("&")
        )
    return f"{scheme}{sep}{userinfo}{at}{hosts}{slash}{path}{question}{query}"


@dataclass(frozen=True)
class SentinelTarget:
    """What a Sentinel URL names: the sentinels, the monitored service and the options of the
    connections to the master (``connection``) and to the sentinels (``sentinel``)."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    tls: bool
    connection: Mapping[str, Any] = field(repr=False)
    sentinel: Mapping[str, Any] = field(repr=False)
    master_check_interval: float = DEFAULT_MASTER_CHECK_INTERVAL


def _sentinel_address(text: str, url: str) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:port
        host, bracket, port_text = text[1:].partition("]")
        if not bracket or (port_text and not port_text.startswith(":")):
            raise ValueError(f"bad sentinel address {text!r} in {_redacted(url)!r}")
        port_text = port_text[1:]
    else:
        host, _, port_text = text.partition(":")
    host = unquote(host)
    if not host:
        raise ValueError(f"a sentinel address without a host in {_redacted(url)!r}")
    if not port_text:
        return host, DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad sentinel port {port_text!r} in {_redacted(url)!r}")
    return host, int(port_text)


def _flag(name: str, value: str, url: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ValueError(f"{name} must be true or false in {_redacted(url)!r}, not {value!r}")


def _seconds(name: str, value: str, url: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise ValueError(f"{name} must be seconds >= 0 in {_redacted(url)!r}, not {value!r}")
    return seconds


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Parse ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]``
    (or ``rediss+sentinel://``; see the module doc for the query options).

    Raises:
        ValueError: On anything else (the message shows the URL without its passwords).
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SENTINEL_SCHEMES:
        raise ValueError(f"not a redis+sentinel:// URL: {_redacted(url)!r}")
    tls = scheme.lower() == "rediss+sentinel"
    rest = rest.partition("#")[0]
    rest, _, query = rest.partition("?")
    authority, _, path = rest.partition("/")
    userinfo, at, hosts = authority.rpartition("@")
    if not hosts:
        raise ValueError(f"a Sentinel URL needs host:port of its sentinels: {_redacted(url)!r}")
    sentinels = tuple(_sentinel_address(part, url) for part in hosts.split(","))
    segments = [unquote(segment) for segment in path.split("/")] if path else []
    if not segments or not segments[0] or len(segments) > 2:
        raise ValueError(
            f"a Sentinel URL names its service as /service_name[/db]: {_redacted(url)!r}"
        )
    connection: dict[str, Any] = {}
    if len(segments) == 2 and segments[1]:
        if not segments[1].isdigit():
            raise ValueError(f"the database must be a number in {_redacted(url)!r}")
        connection["db"] = int(segments[1])
    if at:
        username, colon, password = userinfo.partition(":")
        if username:
            connection["username"] = unquote(username)
        if colon and password:
            connection["password"] = unquote(password)
    sentinel: dict[str, Any] = {}
    sentinel_tls = tls
    master_check_interval = DEFAULT_MASTER_CHECK_INTERVAL
    for name, values in parse_qs(query, keep_blank_values=False, strict_parsing=False).items():
        value = values[-1]
        if name == "sentinel_ssl":
            sentinel_tls = _flag(name, value, url)
        elif name == "master_check_interval":
            master_check_interval = _seconds(name, value, url)
        elif name in _SENTINEL_OPTIONS:
            sentinel[name.removeprefix("sentinel_")] = value
        elif name in _QUERY_PARSERS:
            try:
                connection[name] = _QUERY_PARSERS[name](value)
            except (TypeError, ValueError):
                raise ValueError(f"bad value for {name!r} in {_redacted(url)!r}") from None
        else:
            connection[name] = value
    if tls:
        connection["ssl"] = True
    if sentinel_tls:
        sentinel["ssl"] = True
        for name, value in connection.items():
            if name.startswith("ssl_"):
                sentinel.setdefault(name, value)
    return SentinelTarget(sentinels, segments[0], tls, connection, sentinel, master_check_interval)


def _sentinel_options(
    target: SentinelTarget, socket_timeout: float | None, retry: Any
) -> dict[str, Any]:
    """Connection options for the sentinels themselves. No retries: the master's lookup
    already moves on to the next sentinel (redis-py's default, three retries with backoff per
    sentinel, made a lookup with three silent sentinels take twelve socket timeouts)."""
    return {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "retry": retry,
        **target.sentinel,
    }


class _CheckedSentinelConnection(AsyncSentinelManagedConnection):
    """A connection to the Sentinel-managed master that, before sending, makes sure the
    master has not moved (asked of the sentinels at most every ``master_check_interval``
    seconds per pool): one that has is dropped with a ``ConnectionError``, so the command is
    retried on a new connection to the new master, and a pub/sub subscribes again there.

    redis-py's own Sentinel connections find the master only when they connect: after a
    ``SENTINEL FAILOVER`` the old master keeps answering until the sentinels demote it
    (about ten seconds later), and pooled connections keep writing to it what the demotion
    then throws away, while subscribers listen on the wrong server."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if self.is_connected:
            moved_to = await self.connection_pool.master_moved((self.host, self.port))
            if moved_to is not None:
                await self.disconnect()
                raise RedisConnectionError(
                    f"the master of {self.connection_pool.service_name!r} moved to "
                    f"{moved_to[0]}:{moved_to[1]}"
                )
        await super().send_packed_command(command, check_health)


class _CheckedSentinelSSLConnection(_CheckedSentinelConnection, AsyncSSLConnection):
    """:class:`_CheckedSentinelConnection` over TLS."""


class _WaitingSentinelPool(AsyncSentinelConnectionPool, WaitingConnectionPool):
    """A Sentinel-managed master's pool whose callers wait for a free connection (as
    :class:`WaitingConnectionPool`'s do) and whose connections follow a moved master."""

    def __init__(
        self,
        service_name: str,
        sentinel_manager: Any,
        *,
        master_check_interval: float = DEFAULT_MASTER_CHECK_INTERVAL,
        **kwargs: Any,
    ) -> None:
        tls = kwargs.pop("ssl", False)
        kwargs["connection_class"] = (
            _CheckedSentinelSSLConnection if tls else _CheckedSentinelConnection
        )
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]
        self.master_check_interval = master_check_interval
        self._master_checked = time.monotonic()

    async def master_moved(self, address: tuple[str, int]) -> tuple[str, int] | None:
        """The master's address if it is no longer ``address`` (``None`` while it is, or
        while the sentinels cannot say)."""
        if self.master_check_interval <= 0:
            return None
        now = time.monotonic()
        if now - self._master_checked >= self.master_check_interval:
            self._master_checked = now
            try:
                # Also drops idle connections to a master that moved.
                await self.get_master_address()  # type: ignore[no-untyped-call]
            except (RedisConnectionError, RedisTimeoutError):
                return None  # no sentinel answers, or none knows a healthy master: go on
        return _moved(self.master_address, address)


def _moved(master: Any, address: tuple[str, int]) -> tuple[str, int] | None:
    if master is None or (master[0], int(master[1])) == (address[0], int(address[1])):
        return None
    return str(master[0]), int(master[1])


class _AsyncSentinelMaster(aioredis.Redis):
    """The master's client made from a Sentinel URL: closing it closes the connections to
    the sentinels it asked too (they belong to it alone)."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            manager = getattr(self.connection_pool, "sentinel_manager", None)
            if manager is not None:
                await manager.aclose()


class _SyncCheckedSentinelConnection(SentinelManagedConnection):
    """The sync twin of :class:`_CheckedSentinelConnection`."""

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if self.is_connected:
            # redis-py hands its sync connections a proxy of the pool.
            pool = self.connection_pool.connection_pool_ref()
            moved_to = None if pool is None else pool.master_moved((self.host, self.port))
            if moved_to is not None:
                self.disconnect()  # type: ignore[no-untyped-call]
                raise RedisConnectionError(
                    f"the master of {pool.service_name!r} moved to {moved_to[0]}:{moved_to[1]}"
                )
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


class _SyncCheckedSentinelSSLConnection(_SyncCheckedSentinelConnection, SSLConnection):
    """:class:`_SyncCheckedSentinelConnection` over TLS."""


class _BlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """A Sentinel-managed master's pool whose callers wait for a free connection and whose
    connections follow a moved master."""

    def __init__(
        self,
        service_name: str,
        sentinel_manager: Any,
        *,
        master_check_interval: float = DEFAULT_MASTER_CHECK_INTERVAL,
        **kwargs: Any,
    ) -> None:
        tls = kwargs.pop("ssl", False)
        kwargs["connection_class"] = (
            _SyncCheckedSentinelSSLConnection if tls else _SyncCheckedSentinelConnection
        )
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]
        self.master_check_interval = master_check_interval
        self._master_checked = time.monotonic()
        self._check_lock = threading.Lock()

    def master_moved(self, address: tuple[str, int]) -> tuple[str, int] | None:
        """The sync twin of :meth:`_WaitingSentinelPool.master_moved` (one thread asks the
        sentinels; the others use what it found)."""
        if self.master_check_interval <= 0:
            return None
        now = time.monotonic()
        if now - self._master_checked >= self.master_check_interval and self._check_lock.acquire(
            blocking=False
        ):
            try:
                self._master_checked = now
                self.get_master_address()  # type: ignore[no-untyped-call]
            except (RedisConnectionError, RedisTimeoutError):
                return None
            finally:
                self._check_lock.release()
        return _moved(self.master_address, address)


class _SyncSentinelMaster(redis.Redis):
    """The sync twin of :class:`_AsyncSentinelMaster`."""

    def close(self) -> None:
        try:
            super().close()
        finally:
            manager = getattr(self.connection_pool, "sentinel_manager", None)
            if manager is not None:
                manager.close()


def _async_sentinel_client(
    target: SentinelTarget, socket_timeout: float | None, max_connections: int
) -> aioredis.Redis:
    manager = AsyncSentinel(  # type: ignore[no-untyped-call, unused-ignore]
        list(target.sentinels),
        sentinel_kwargs=_sentinel_options(target, socket_timeout, AsyncRetry(NoBackoff(), 0)),
    )
    options = _pool_options("", socket_timeout, max_connections)
    options.update(target.connection)
    client = manager.master_for(
        target.service_name,
        redis_class=_AsyncSentinelMaster,
        connection_pool_class=_WaitingSentinelPool,
        master_check_interval=target.master_check_interval,
        retry=AsyncRetry(_backoff(), retries=1),
        **options,
    )
    return cast("aioredis.Redis", client)


def _sync_sentinel_client(
    target: SentinelTarget, socket_timeout: float | None, max_connections: int
) -> redis.Redis:
    manager = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]
        list(target.sentinels),
        sentinel_kwargs=_sentinel_options(target, socket_timeout, Retry(NoBackoff(), 0)),
    )
    options = _pool_options("", socket_timeout, max_connections)
    options.update(target.connection)
    client = manager.master_for(  # type: ignore[no-untyped-call, unused-ignore]
        target.service_name,
        redis_class=_SyncSentinelMaster,
        connection_pool_class=_BlockingSentinelPool,
        master_check_interval=target.master_check_interval,
        retry=Retry(_backoff(), retries=1),
        **options,
    )
    return cast("redis.Redis", client)


# -- what a failed connection probably means -----------------------------------------------------


def connection_hint(url: str | None, exc: BaseException) -> str | None:
    """A likely cause and fix of a failed connection made from ``url`` (a plain-text client on
    a TLS-only port, a certificate that is not trusted, a missing client certificate), or
    ``None`` when there is nothing to add. For the ``detail`` of a component's errors:
    redis-py 8's exceptions show only their class in ``repr()``."""
    if url is None or not isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError):
        return None
    scheme = url.partition("://")[0].lower()
    text = str(exc)
    lowered = text.lower()
    if "certificate required" in lowered:
        return (
            "the server requires a client certificate: add ssl_certfile= and ssl_keyfile= "
            "to the rediss:// URL"
        )
    if "certificate_verify_failed" in lowered:
        return (
            "the server's certificate is not trusted: add ssl_ca_certs=<the CA's PEM file> "
            "to the rediss:// URL"
        )
    tls = scheme in ("rediss", "rediss+sentinel")
    if tls and ("wrong version number" in lowered or "record layer failure" in lowered):
        return "the TLS handshake failed: the server may speak plain text here (redis://)"
    if tls and isinstance(exc, RedisTimeoutError) and "connecting" in lowered:
        # A plain-text server reads the TLS hello as the start of a command, and waits.
        return (
            "no answer to the TLS handshake: the server may speak plain text here (redis://), "
            "or be unreachable"
        )
    plain_closed = "reset by peer" in lowered or "closed by server" in lowered
    if tls and plain_closed and "ssl_certfile=" not in url:
        # TLS 1.3: the server checks the client's certificate after the handshake, and its
        # alert may arrive as a reset.
        return (
            "the server closed the TLS connection: if it requires client certificates "
            "(tls-auth-clients yes), add ssl_certfile= and ssl_keyfile= to the URL"
        )
    if scheme in ("redis", "redis+sentinel") and plain_closed:
        return (
            "the server closed a plain-text connection: if it speaks TLS only, use a rediss:// URL"
        )
    return None


def new_async_client(url: str, socket_timeout: float | None, max_connections: int) -> Any:
    """One ``redis.asyncio.Redis`` on its own waiting pool (usable from one event loop)."""
    if is_sentinel_url(url):
        return _async_sentinel_client(parse_sentinel_url(url), socket_timeout, max_connections)
    pool = WaitingConnectionPool.from_url(
        url,
        retry=AsyncRetry(_backoff(), retries=1),
        **_pool_options(url, socket_timeout, max_connections),
    )
    return aioredis.Redis.from_pool(pool)


def sync_url_client(
    url: str, *, socket_timeout: float | None, max_connections: int = DEFAULT_MAX_CONNECTIONS
) -> redis.Redis:
    """A sync ``redis.Redis`` on a waiting pool, shared by every thread (``url`` may be a
    Sentinel URL: see the module doc)."""
    if is_sentinel_url(url):
        return _sync_sentinel_client(parse_sentinel_url(url), socket_timeout, max_connections)
    pool = SyncWaitingConnectionPool.from_url(
        url,
        retry=Retry(_backoff(), retries=1),
        **_pool_options(url, socket_timeout, max_connections),
    )
    return redis.Redis.from_pool(pool)


def _fast_pool(client: Any, kind: type) -> Any:
    """``client``'s pool when the fast reads apply: a pool of exactly ``kind`` (not a Sentinel
    pool, which checks where the master is on checkout)."""
    pool = getattr(client, "connection_pool", None)
    return pool if type(pool) is kind else None


def fast_reads(
    client: Any,
) -> tuple[Callable[[bytes], Awaitable[Any]], Callable[[Sequence[bytes]], Awaitable[Any]]]:
    """The ``GET`` and ``MGET`` a layer reads with: past redis-py's per-command machinery on
    a client built here from a URL (see above), the client's own commands on any other."""
    if isinstance(client, LoopBoundClient):
        return client.fast_get, client.fast_mget
    return client.get, client.mget


def sync_fast_reads(
    client: Any,
) -> tuple[Callable[[bytes], Any], Callable[[Sequence[bytes]], Any]]:
    """:func:`fast_reads` of the sync twins (one client, one pool, for every thread)."""
    pool = _fast_pool(client, SyncWaitingConnectionPool)
    if pool is not None:
        return pool.fast_get, pool.fast_mget
    return client.get, client.mget


async def read_pubsub(pubsub: Any, wait: float, timeout: float, sharded: bool = False) -> Any:
    """The next pub/sub reply, or ``None`` when none has come within ``wait`` seconds
    (``sharded``: of a cluster's sharded pub/sub).

    redis-py's asyncio pub/sub answers ``None`` when its read times out and keeps what it has
    read of a reply for the next read, so ``wait`` can bound the read itself (``timeout`` is
    for the sync twin, below)."""
    if sharded:
        return await pubsub.get_sharded_message(timeout=wait)
    return await pubsub.get_message(timeout=wait)


def sync_read_pubsub(pubsub: Any, wait: float, timeout: float, sharded: bool = False) -> Any:
    """:func:`read_pubsub` of the sync twins: wait up to ``wait`` for a reply to begin, then
    up to ``timeout`` for the rest of it.

    redis-py's sync pub/sub (8.x) bounds the whole read by ``get_message``'s timeout: a reply
    that began within it and whose rest comes later (a large message over a slow or loaded
    link, or any message read ahead with ``wait=0``) times the read out, and redis-py then
    reconnects and subscribes again by itself. The message is lost, and the bus takes the
    new subscription for a lost connection. A cluster's sharded pub/sub reads through one
    pub/sub per node; with one node subscribed (a bus: one channel) its connection is
    watched the same way."""
    if sharded:
        read = pubsub.get_sharded_message
        nodes = list(getattr(pubsub, "node_pubsub_mapping", {}).values())
        if len(nodes) != 1:
            return read(timeout=wait)
        connection = nodes[0].connection
    else:
        read = pubsub.get_message
        connection = pubsub.connection
    if connection is not None and not connection.can_read(timeout=wait):
        return None
    return read(timeout=timeout)


def url_client(
    url: str, *, socket_timeout: float | None, max_connections: int = DEFAULT_MAX_CONNECTIONS
) -> aioredis.Redis:
    """A client usable from any event loop: a :class:`LoopBoundClient` (typed as what it
    stands for)."""
    client = LoopBoundClient(url, socket_timeout=socket_timeout, max_connections=max_connections)
    return cast("aioredis.Redis", client)


def init_signature(init: Callable[..., None]) -> inspect.Signature:
    """The signature of a class whose ``__new__`` takes ``(*args, **kwargs)`` (to pick the sync
    twin): ``__init__``'s, without ``self``, for ``help()`` and ``inspect.signature()``."""
    signature = inspect.signature(init)
    return signature.replace(
        parameters=list(signature.parameters.values())[1:],
        return_annotation=inspect.Signature.empty,
    )


_Class = TypeVar("_Class", bound=type)


def sync_twin_for_sync_clients(twin: str) -> Callable[[_Class], _Class]:
    """Class decorator of the asyncio Redis components: one class for both stacks.

    Called with a sync redis-py client (``redis.Redis``, ``redis.RedisCluster``) as its first
    argument, by position or by name, the decorated class returns its generated sync twin
    ``twin`` (``"module:Class"``, the module relative to this package, imported then: the twin
    imports the asyncio module) built with the same arguments; otherwise an instance of
    itself, as usual. ``help()`` and ``inspect.signature()`` show ``__init__``'s parameters,
    not the ``(*args, **kwargs)`` of the ``__new__`` this adds.
    """
    module_name, _, class_name = twin.partition(":")

    def decorate(cls: _Class) -> _Class:
        signature = init_signature(cls.__dict__["__init__"])
        first = next(iter(signature.parameters))

        def __new__(klass: type, *args: Any, **kwargs: Any) -> Any:
            client = args[0] if args else kwargs.get(first)
            if isinstance(client, redis.Redis | redis.RedisCluster):
                module = importlib.import_module(module_name, __package__)
                return getattr(module, class_name)(*args, **kwargs)
            return object.__new__(klass)

        __new__.__doc__ = f"A ``{class_name}`` when ``{first}`` is a sync redis-py client."
        setattr(cls, "__new__", staticmethod(__new__))  # noqa: B010 - mypy refuses cls.__new__ =
        setattr(cls, "__signature__", signature)  # noqa: B010
        return cls

    return decorate


def pool_exhausted(exc: BaseException) -> bool:
    """Whether ``exc`` says that every connection of a waiting pool stayed busy too long."""
    return isinstance(exc, RedisConnectionError) and str(exc) == _NO_CONNECTION


class LoopBoundClient:
    """Stands for the running event loop's own ``redis.asyncio.Redis`` (see the module doc).

    Attribute access is forwarded to that client, made on first use in the loop. Lua scripts
    registered here run on the caller's loop's client. There is no single connection pool, so
    ``connection_pool`` is absent.

    Args:
        url: The server's URL.
        socket_timeout: Socket connect and read timeout, and the bound on waiting for a free
            connection.
        max_connections: Connections per loop.
        max_loops: Loops whose clients are kept at once; the client of the loop that has held
            one longest is closed (on its loop) to make room.
    """

    def __init__(
        self,
        url: str,
        *,
        socket_timeout: float | None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_loops: int = MAX_LOOPS,
    ) -> None:
        _pool_options(url, socket_timeout, max_connections)  # checks the arguments now
        self._url = url
        self._socket_timeout = socket_timeout
        self.max_connections = max_connections
        # Checked once, here: a bad URL fails at construction, not on the first command.
        if is_sentinel_url(url):
            parse_sentinel_url(url)
            template: Any = aioredis.ConnectionPool(decode_responses=False)
        else:
            template = aioredis.ConnectionPool.from_url(url, decode_responses=False)
        self._encoder = template.get_encoder()
        self._clients: PerLoop[Any] = PerLoop(
            lambda: new_async_client(self._url, self._socket_timeout, self.max_connections),
            _close_client,
            max_loops=max_loops,
            what="Redis client",
        )

    def __repr__(self) -> str:
        return (
            f"LoopBoundClient(loops={len(self._clients)}, max_connections={self.max_connections})"
        )

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "connection_pool":
            # No single pool (AsyncScript then asks get_encoder()); dunders are not forwarded.
            raise AttributeError(name)
        return getattr(self.current(), name)

    @property
    def max_loops(self) -> int:
        """Loops whose clients are kept at once (settable)."""
        return self._clients.max_loops

    @max_loops.setter
    def max_loops(self, value: int) -> None:
        self._clients.max_loops = value

    @property
    def loops(self) -> int:
        """How many loops' clients are held."""
        return len(self._clients)

    def get_encoder(self) -> Any:
        """The encoder of every client made here (what ``register_script`` needs)."""
        return self._encoder

    def register_script(self, script: str | bytes) -> Any:
        """A Lua script that runs on the calling loop's client (redis-py's ``AsyncScript``)."""
        from redis.commands.core import AsyncScript

        return AsyncScript(self, script)  # type: ignore[arg-type]

    async def fast_get(self, key: bytes) -> Any:
        """``GET key`` on the running loop's client, past redis-py's per-command machinery
        (see above) unless it is a Sentinel client."""
        client = self._clients.current()
        pool = _fast_pool(client, WaitingConnectionPool)
        if pool is None:
            return await client.get(key)
        return await pool.fast_get(key)

    async def fast_mget(self, keys: Sequence[bytes]) -> Any:
        """``MGET keys`` likewise."""
        client = self._clients.current()
        pool = _fast_pool(client, WaitingConnectionPool)
        if pool is None:
            return await client.mget(keys)
        return await pool.fast_mget(keys)

    def current(self) -> Any:
        """The running loop's client, made on first use in that loop.

        Raises:
            RuntimeError: Outside a running event loop.
        """
        return self._clients.current()

    async def aclose(self) -> None:
        """Close every loop's client: this loop's now, the others' on their loops (a later
        command opens new connections, as redis-py's own clients do)."""
        await self._clients.aclose()


async def _close_client(client: Any) -> None:
    await client.aclose()
