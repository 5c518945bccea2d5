"""Start and stop a throwaway ``redis-server`` on a free loopback port (tests and benchmarks).

Standard library only, so bench/ can use it with nothing but ``sys.path`` pointing here::

    with RedisServer.launch() as server:
        print(server.url)
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["RedisServer", "RedisServerError", "find_free_port"]

_HOST = "127.0.0.1"


class RedisServerError(RuntimeError):
    """The server did not start, answer, or stop in time."""


def find_free_port(host: str = _HOST) -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _encode_command(*args: str | bytes) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class RedisServer:
    """One ``redis-server`` process, without persistence, bound to 127.0.0.1.

    The port is chosen once, so :meth:`stop` then :meth:`start` (or :meth:`restart`) brings the
    server back where clients expect it: fault tests use this to simulate an outage.

    Args:
        binary: Path of ``redis-server`` (default: found on ``PATH``).
        port: Port to use (default: a free one).
        workdir: Directory for the server's log (default: a new temporary directory).
        start_timeout: Seconds to wait for the server to answer ``PING``.
        cluster: Run as a one-node Redis Cluster owning all 16384 slots (cross-slot rules
            apply as in a real cluster, so it exercises a cluster client's key splitting).
    """

    def __init__(
        self,
        binary: str | None = None,
        port: int | None = None,
        workdir: str | Path | None = None,
        start_timeout: float = 10.0,
        cluster: bool = False,
    ) -> None:
        found = binary or shutil.which("redis-server")
        if found is None:
            raise RedisServerError("redis-server not found on PATH")
        self.binary = found
        self.host = _HOST
        self.port = port if port is not None else find_free_port()
        self._own_workdir = workdir is None
        self.workdir = Path(workdir if workdir is not None else tempfile.mkdtemp(prefix="redis-"))
        self.start_timeout = start_timeout
        self.cluster = cluster
        # The cluster bus defaults to port + 10000, which may be taken or past 65535: pick it.
        self.cluster_bus_port = find_free_port() if cluster else None
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def launch(cls, **kwargs: object) -> RedisServer:
        """Create and start a server."""
        server = cls(**kwargs)  # type: ignore[arg-type]
        server.start()
        return server

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def is_running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server (no-op if running) and wait until it answers ``PING``."""
        if self.is_running:
            return
        log = (self.workdir / "redis.log").open("ab")
        try:
            self._process = subprocess.Popen(
                [self.binary, *self._arguments()],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        self._wait_ready()

    def _arguments(self) -> list[str]:
        options = {
            "port": str(self.port),
            "bind": self.host,
            "save": "",  # no RDB snapshots
            "appendonly": "no",
            "daemonize": "no",
            "dir": str(self.workdir),
        }
        if self.cluster:
            # A fresh node config on every start: the node then forgets its slots, and start()
            # assigns them again.
            config = self.workdir / f"nodes-{self.port}.conf"
            config.unlink(missing_ok=True)
            options["cluster-enabled"] = "yes"
            options["cluster-config-file"] = config.name
            options["cluster-port"] = str(self.cluster_bus_port)
        return [part for name, value in options.items() for part in (f"--{name}", value)]

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        delay = 0.005
        while True:
            if self._process is not None and self._process.poll() is not None:
                raise RedisServerError(
                    f"redis-server exited with {self._process.returncode}: {self.log_tail()}"
                )
            with contextlib.suppress(OSError):
                if self.command("PING") == b"PONG" and self._cluster_ready():
                    return
            if time.monotonic() >= deadline:
                self.stop()
                raise RedisServerError(f"redis-server did not answer within {self.start_timeout}s")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _cluster_ready(self) -> bool:
        if not self.cluster:
            return True
        info = self.command("CLUSTER", "INFO")
        if b"cluster_slots_assigned:0" in info:
            self.command("CLUSTER", "ADDSLOTSRANGE", "0", "16383")
            return False
        return b"cluster_state:ok" in info

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``) and wait for it to exit."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def restart(self) -> None:
        """Stop, then start again on the same port."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and remove a temporary working directory."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def command(self, *args: str | bytes, timeout: float = 5.0) -> bytes:
        """Send one command over a fresh connection and return its reply.

        Simple strings, integers and bulk strings are returned as bytes; an error reply raises
        :class:`RedisServerError`. (Enough for PING, FLUSHALL, CLUSTER INFO and the like.)
        """
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock:
            sock.sendall(_encode_command(*args))
            reader = sock.makefile("rb")
            line = reader.readline()
            if not line.endswith(b"\r\n"):
                raise OSError("connection closed by redis-server")
            kind, rest = line[:1], line[1:-2]
            if kind == b"-":
                raise RedisServerError(rest.decode(errors="replace"))
            if kind == b"$":
                size = int(rest)
                return b"" if size < 0 else reader.read(size + 2)[:-2]
            return rest

    def flushall(self) -> None:
        """Delete every key of every database."""
        reply = self.command("FLUSHALL")
        if reply != b"OK":
            raise RedisServerError(f"FLUSHALL answered {reply!r}")

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server log (for error messages)."""
        path = self.workdir / "redis.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
