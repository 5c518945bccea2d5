"""A loopback TCP proxy for fault tests: latency, cut-offs and recovery in front of a real server.

The proxy runs its own asyncio event loop in a daemon thread, so the same object serves sync
tests, async tests (whose loop it never blocks for more than a control round trip) and the
benchmark scripts. Standard library only, like ``_redis_server.py``::

    with TcpProxy("127.0.0.1", server.port) as proxy:
        client = Redis.from_url(proxy.url, socket_timeout=0.2)
        proxy.set_latency(0.5)      # every chunk, both directions, arrives 0.5 s late
        proxy.cut("blackhole")      # drop every connection; new ones are accepted, then hang
        proxy.restore()             # forward again

Faults it injects:

* **latency**: each chunk read from one side is written to the other side ``latency`` seconds
  after it was read. Chunks are pipelined (not delayed one after the other), as on a slow link,
  and order is kept.
* **cut("refuse")**: current connections are reset; new connections are accepted and reset at
  once (the client sees ``ConnectionResetError`` / EOF straight away, as with a dead server).
* **cut("blackhole")**: current connections are reset (or, with ``close_existing=False``,
  stalled: bytes stop flowing but the sockets stay open); new connections are accepted and
  never answered, so only the client's own timeouts end the wait (a partition or a hung host).
* **restore()**: back to forwarding. Stalled connections resume and deliver the bytes they
  held (like TCP retransmissions after a partition heals: a command the client gave up on may
  still run). Connections accepted during a blackhole are reset instead: in a real partition
  they would never have connected, so nothing their client wrote may reach the server late.

If the upstream refuses a connection (the server is stopped), the client's connection is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Literal, TypeVar

__all__ = ["CutMode", "TcpProxy"]

CutMode = Literal["refuse", "blackhole"]
T = TypeVar("T")

_CHUNK = 65536
# Chunks in flight per direction before the proxy stops reading (TCP backpressure then applies).
_MAX_QUEUED_CHUNKS = 1024
# Bound of every control round trip into the proxy thread.
_CONTROL_TIMEOUT = 10.0


def _reset(writer: asyncio.StreamWriter | None) -> None:
    """Close a connection with a TCP reset (SO_LINGER 0): no graceful FIN, no buffered bytes."""
    if writer is None:
        return
    transport = writer.transport
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _Connection:
    """One client connection and, once connected, its upstream connection."""

    __slots__ = ("client", "task", "upstream")

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None

    def close_sockets(self) -> None:
        _reset(self.client)
        _reset(self.upstream)

    def reset(self) -> None:
        """Reset both sockets and stop the task that serves them."""
        self.close_sockets()
        if self.task is not None:
            self.task.cancel()


class TcpProxy:
    """Forward ``host:port`` (a free loopback port by default) to ``upstream_host:upstream_port``.

    Args:
        upstream_host: Host of the real server.
        upstream_port: Port of the real server.
        host: Address to listen on (loopback).
        port: Port to listen on (0: a free one, chosen at :meth:`start`).
        connect_timeout: Bound on connecting to the upstream for one client connection.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self._latency = 0.0
        # (gap in seconds, bytes per part): replies delivered in parts, a gap apart.
        self._pacing: tuple[float, int] = (0.0, _CHUNK)
        self._mode: CutMode | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        # Set while bytes may flow; cleared by a blackhole cut that stalls existing connections
        # and by any cut for connections accepted during it. Created on the proxy's loop.
        self._flowing: asyncio.Event | None = None
        self.accepted = 0  # connections accepted since start (including refused ones)

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """``redis://HOST:PORT/0`` for clients that should go through the proxy."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def address(self) -> tuple[str, int]:
        """The ``(host, port)`` the proxy listens on."""
        return self.host, self.port

    @property
    def latency(self) -> float:
        """Seconds added to every chunk in each direction."""
        return self._latency

    @property
    def mode(self) -> CutMode | None:
        """``None`` when forwarding, else the mode of the current cut."""
        return self._mode

    @property
    def active_connections(self) -> int:
        """Client connections currently open (forwarding, stalled or held)."""
        return len(self._connections)

    def start(self) -> TcpProxy:
        """Start the proxy thread and listen (idempotent). Returns ``self``."""
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=self._run, args=(loop,), name=f"tcp-proxy->{self.upstream_port}", daemon=True
        )
        self._loop, self._thread = loop, thread
        thread.start()
        try:
            self._call(self._listen())
        except BaseException:
            self.close()
            raise
        return self

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _listen(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def close(self) -> None:
        """Reset every connection, stop listening and stop the thread (idempotent)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if thread.is_alive():
            with contextlib.suppress(RuntimeError, TimeoutError):
                self._call(self._shutdown())
            loop.call_soon_threadsafe(loop.stop)
            thread.join(_CONTROL_TIMEOUT)
        self._loop = self._thread = None

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [c.task for c in self._connections if c.task is not None]
        self._reset_all()
        # Let the cancelled handlers finish so the loop closes without pending tasks.
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the proxy loop and wait for its result (from any other thread)."""
        if self._loop is None:
            coro.close()
            raise RuntimeError("the proxy is not running")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(_CONTROL_TIMEOUT)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"TcpProxy({self.host}:{self.port} -> {self.upstream_host}:{self.upstream_port}, "
            f"latency={self._latency}, mode={self._mode})"
        )

    # ------------------------------------------------------------------ controls

    def set_latency(self, seconds: float) -> None:
        """Delay every chunk by ``seconds`` in each direction (chunks read from now on)."""
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        self._latency = float(seconds)

    def set_pacing(self, gap: float, part: int = 16384) -> None:
        """Deliver at most ``part`` bytes at a time, ``gap`` seconds apart, in each direction
        (a slow link: a large reply reaches the client in parts). ``gap=0`` turns it off."""
        if gap < 0 or part < 1:
            raise ValueError("gap must be >= 0 and part >= 1")
        self._pacing = (float(gap), int(part))

    def cut(self, mode: CutMode = "refuse", *, close_existing: bool = True) -> None:
        """Cut the link. Returns once existing connections are reset (or stalled).

        Args:
            mode: ``"refuse"``: new connections are accepted and reset at once.
                ``"blackhole"``: new connections are accepted and never answered.
            close_existing: Reset current connections (default). ``False`` is only allowed with
                ``"blackhole"``: they stay open but stop carrying bytes until :meth:`restore`.
        """
        if mode not in ("refuse", "blackhole"):
            raise ValueError(f"mode must be 'refuse' or 'blackhole', not {mode!r}")
        if not close_existing and mode != "blackhole":
            raise ValueError("close_existing=False needs mode='blackhole'")
        self._call(self._cut(mode, close_existing))

    async def _cut(self, mode: CutMode, close_existing: bool) -> None:
        assert self._flowing is not None
        self._mode = mode
        self._flowing.clear()
        if close_existing:
            self._reset_all()

    def restore(self) -> None:
        """Forward again: new connections go through, stalled ones resume, held ones are reset."""
        self._call(self._restore())

    async def _restore(self) -> None:
        assert self._flowing is not None
        self._mode = None
        self._flowing.set()

    def drop_connections(self) -> None:
        """Reset every current connection without changing the mode."""
        self._call(self._drop())

    async def _drop(self) -> None:
        self._reset_all()

    def reset(self) -> None:
        """Back to a clean pass-through: no latency, no pacing, no cut, no open connections."""
        self._latency = 0.0
        self._pacing = (0.0, _CHUNK)
        self._call(self._reset_state())

    async def _reset_state(self) -> None:
        await self._restore()
        self._reset_all()

    def _reset_all(self) -> None:
        connections, self._connections = self._connections, set()
        for connection in connections:
            connection.reset()

    # ------------------------------------------------------------------ forwarding

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._mode == "refuse":
            _reset(writer)
            return
        connection = _Connection(writer)
        connection.task = asyncio.current_task()
        self._connections.add(connection)
        try:
            await self._serve(connection, reader)
        except (asyncio.CancelledError, OSError):
            pass
        finally:
            self._connections.discard(connection)
            connection.close_sockets()

    async def _serve(self, connection: _Connection, client_reader: asyncio.StreamReader) -> None:
        assert self._flowing is not None
        if not self._flowing.is_set():
            # Accepted during a blackhole: hold the socket without reading it until restore()
            # (or a cut/drop/close) and then reset it; see the module docstring.
            await self._flowing.wait()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.wait_for(
                asyncio.open_connection(self.upstream_host, self.upstream_port),
                self.connect_timeout,
            )
        except (OSError, asyncio.TimeoutError):
            return  # upstream down: the client sees its connection closed
        connection.upstream = upstream_writer
        if connection not in self._connections:  # reset while connecting
            _reset(upstream_writer)
            return
        pumps = [
            asyncio.ensure_future(self._pump(client_reader, upstream_writer)),
            asyncio.ensure_future(self._pump(upstream_reader, connection.client)),
        ]
        try:
            # Both directions end on EOF (half-closes are forwarded); an error in either one
            # ends the connection (the finally of _accept resets both sockets).
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        """Copy ``source`` to ``sink``, each chunk delivered ``latency`` after it was read."""
        loop = asyncio.get_running_loop()
        # None marks a read error: it is raised on the writing side, in order, after the
        # chunks read before it.
        queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue(_MAX_QUEUED_CHUNKS)

        async def read() -> None:
            while True:
                try:
                    data: bytes | None = await source.read(_CHUNK)
                except OSError:
                    data = None
                # An empty chunk is EOF; it travels through the queue so it keeps its place.
                await queue.put((loop.time() + self._latency, data))
                if not data:
                    return

        async def write() -> None:
            assert self._flowing is not None
            while True:
                due, data = await queue.get()
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._flowing.wait()
                if data is None:
                    raise ConnectionResetError("the other side of the proxy failed")
                if not data:
                    if sink.can_write_eof():
                        with contextlib.suppress(OSError):
                            sink.write_eof()
                    return
                gap, part = self._pacing
                if gap <= 0:
                    sink.write(data)
                    await sink.drain()
                    continue
                for start in range(0, len(data), part):
                    await asyncio.sleep(gap)
                    await self._flowing.wait()
                    sink.write(data[start : start + part])
                    await sink.drain()

        reader = asyncio.ensure_future(read())
        try:
            await write()
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
