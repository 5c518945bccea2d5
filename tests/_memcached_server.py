"""Start and stop a throwaway ``memcached`` on a free loopback port (tests and benchmarks).

Standard library only, so bench/ can use it with nothing but ``sys.path`` pointing here::

    with MemcachedServer.launch() as server:
        print(server.address)
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from types import TracebackType

__all__ = ["MemcachedServer", "MemcachedServerError", "find_free_port"]

_HOST = "127.0.0.1"


class MemcachedServerError(RuntimeError):
    """The server did not start, answer, or stop in time."""


def find_free_port(host: str = _HOST) -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class MemcachedServer:
    """One ``memcached -l 127.0.0.1 -p PORT -U 0`` process (TCP only).

    The port is chosen once, so :meth:`stop` then :meth:`start` (or :meth:`restart`) brings the
    server back where clients expect it (an outage; memcached comes back empty).

    Args:
        binary: Path of ``memcached`` (default: found on ``PATH``).
        port: Port to use (default: a free one).
        memory_mb: Memory limit (``-m``).
        item_size: Item size limit (``-I``), e.g. ``"1m"``; ``None``: memcached's default (1 MiB).
        start_timeout: Seconds to wait for the server to answer ``version``.
        threads: Worker threads (``-t``); ``None``: memcached's default (4). A benchmark uses 1,
            so that every connection is served by the same thread (which thread a connection
            lands on otherwise changes its latency run to run).
    """

    def __init__(
        self,
        binary: str | None = None,
        port: int | None = None,
        memory_mb: int = 64,
        item_size: str | None = None,
        start_timeout: float = 10.0,
        threads: int | None = None,
    ) -> None:
        found = binary or shutil.which("memcached")
        if found is None:
            raise MemcachedServerError("memcached not found on PATH")
        self.binary = found
        self.host = _HOST
        self.port = port if port is not None else find_free_port()
        self.memory_mb = memory_mb
        self.item_size = item_size
        self.start_timeout = start_timeout
        self.threads = threads
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def launch(cls, **kwargs: object) -> MemcachedServer:
        """Create and start a server."""
        server = cls(**kwargs)  # type: ignore[arg-type]
        server.start()
        return server

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The process id while running."""
        return self._process.pid if self.is_running and self._process is not None else None

    @property
    def is_running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server (no-op if running) and wait until it answers ``version``."""
        if self.is_running:
            return
        args = [self.binary, "-l", self.host, "-p", str(self.port), "-U", "0"]
        args += ["-m", str(self.memory_mb)]
        if self.item_size is not None:
            args += ["-I", self.item_size]
        if self.threads is not None:
            args += ["-t", str(self.threads)]
        if os.geteuid() == 0:
            # memcached refuses to run as root without naming the user to run as.
            args += ["-u", "root"]
        self._process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + self.start_timeout
        delay = 0.005
        while True:
            if self._process.poll() is not None:
                err = self._process.stderr.read() if self._process.stderr else b""
                code = self._process.returncode
                text = err.decode(errors="replace")
                raise MemcachedServerError(f"memcached exited with {code}: {text}")
            try:
                if self.command(b"version").startswith(b"VERSION"):
                    return
            except OSError:
                pass
            if time.monotonic() >= deadline:
                self.kill()
                raise MemcachedServerError(f"memcached did not answer within {self.start_timeout}s")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def kill(self, timeout: float = 10.0) -> None:
        """Kill the server (SIGKILL: an outage, not a shutdown) and wait for it to exit."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
            process.wait(timeout)
        if process.stderr is not None:
            process.stderr.close()

    stop = kill

    def restart(self) -> None:
        """Kill, then start again on the same port (empty)."""
        self.kill()
        self.start()

    def command(self, line: bytes, data: bytes | None = None, timeout: float = 5.0) -> bytes:
        """Send one text-protocol command (plus a data block) on a fresh connection and return
        the first reply line without its CRLF (for ``get``: the whole reply up to ``END``)."""
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            payload = line + b"\r\n"
            if data is not None:
                payload += data + b"\r\n"
            sock.sendall(payload)
            reader = sock.makefile("rb")
            if line.startswith((b"get ", b"gets ")):
                reply = b""
                while not reply.endswith(b"END\r\n"):
                    chunk = reader.readline()
                    if not chunk:
                        raise OSError("connection closed by memcached")
                    reply += chunk
                return reply
            reply = reader.readline()
            if not reply.endswith(b"\r\n"):
                raise OSError("connection closed by memcached")
            return reply[:-2]

    def flush_all(self) -> None:
        """Empty the server."""
        if self.command(b"flush_all") != b"OK":
            raise MemcachedServerError("flush_all failed")

    def set_raw(self, key: bytes, data: bytes, flags: int = 0, exptime: int = 0) -> None:
        """Store ``data`` under ``key`` as another program would (bypassing the layer)."""
        line = b"set %s %d %d %d" % (key, flags, exptime, len(data))
        reply = self.command(line, data)
        if reply != b"STORED":
            raise MemcachedServerError(f"set failed: {reply!r}")

    def get_raw(self, key: bytes) -> bytes | None:
        """The bytes stored under ``key`` (``None``: absent)."""
        reply = self.command(b"get " + key)
        if reply == b"END\r\n":
            return None
        header, _, rest = reply.partition(b"\r\n")
        size = int(header.split()[3])
        return rest[:size]

    def stats(self) -> dict[str, str]:
        """The server's ``stats``."""
        with socket.create_connection((self.host, self.port), timeout=5.0) as sock:
            sock.sendall(b"stats\r\n")
            reader = sock.makefile("rb")
            found: dict[str, str] = {}
            while True:
                line = reader.readline()
                if not line or line == b"END\r\n":
                    return found
                parts = line.decode().split()
                if len(parts) >= 3:
                    found[parts[1]] = parts[2]

    def __enter__(self) -> MemcachedServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()
