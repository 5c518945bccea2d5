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


# -- a real three-master Redis Cluster ----------------------------------------------------------

__all__ += ["RedisCluster3"]


class _ClusterNode(RedisServer):
    """A cluster-enabled server that waits for nobody: ``redis-cli --cluster create`` assigns its
    slots (the one-node ``RedisServer(cluster=True)`` would take all 16384 itself)."""

    def __init__(self, binary: str, workdir: Path, start_timeout: float) -> None:
        super().__init__(binary, workdir=workdir, start_timeout=start_timeout, cluster=True)

    def _cluster_ready(self) -> bool:
        return True


class RedisCluster3:
    """Three ``redis-server --cluster-enabled yes`` masters on free loopback ports, joined by
    ``redis-cli --cluster create ... --cluster-replicas 0`` (about 5461 slots each).

    Each node has its own working directory and cluster bus port. :meth:`start` returns once
    every node reports ``cluster_state:ok`` with all 16384 slots assigned and all three nodes
    known (bounded polling, ``start_timeout``); :meth:`close` stops them all.

    Args:
        binary: Path of ``redis-server`` (default: found on ``PATH``).
        cli: Path of ``redis-cli`` (default: next to ``binary``, else found on ``PATH``).
        workdir: Parent directory for the nodes' directories (default: a new temporary one).
        start_timeout: Seconds allowed for the whole cluster to come up.
    """

    size = 3

    def __init__(
        self,
        binary: str | None = None,
        cli: str | None = None,
        workdir: str | Path | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        found = binary or shutil.which("redis-server")
        if found is None:
            raise RedisServerError("redis-server not found on PATH")
        sibling = Path(found).with_name("redis-cli")
        found_cli = cli or (str(sibling) if sibling.exists() else shutil.which("redis-cli"))
        if found_cli is None:
            raise RedisServerError("redis-cli not found on PATH")
        self.binary = found
        self.cli = found_cli
        self.start_timeout = start_timeout
        self._own_workdir = workdir is None
        self.workdir = Path(
            workdir if workdir is not None else tempfile.mkdtemp(prefix="redis-cluster3-")
        )
        self.nodes = [
            _ClusterNode(found, self._node_dir(i), start_timeout) for i in range(self.size)
        ]

    def _node_dir(self, index: int) -> Path:
        path = self.workdir / f"node{index}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @classmethod
    def launch(cls, **kwargs: object) -> RedisCluster3:
        """Create and start a cluster."""
        cluster = cls(**kwargs)  # type: ignore[arg-type]
        cluster.start()
        return cluster

    @property
    def host(self) -> str:
        """The loopback address every node listens on."""
        return _HOST

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every master."""
        return [(node.host, node.port) for node in self.nodes]

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT`` of the first master (a cluster client discovers the rest)."""
        return f"redis://{_HOST}:{self.nodes[0].port}"

    def async_client(self, **kwargs: object) -> object:
        """A new ``redis.asyncio.RedisCluster`` on this cluster (the caller closes it).

        ``kwargs`` go to the client (``decode_responses=False`` is redis-py's default). redis-py
        is imported here so this module stays standard-library only.
        """
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in self.startup_nodes],
            **kwargs,  # type: ignore[arg-type]
        )

    def start(self) -> None:
        """Start the nodes, create the cluster and wait until every node reports it healthy."""
        deadline = time.monotonic() + self.start_timeout
        try:
            for node in self.nodes:
                node.start()
            self._create(deadline)
            self._wait_ok(deadline)
        except BaseException:
            self.stop()
            raise

    def _create(self, deadline: float) -> None:
        command = [
            self.cli,
            "--cluster",
            "create",
            *(f"{host}:{port}" for host, port in self.startup_nodes),
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        ]
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                stdin=subprocess.DEVNULL,
                timeout=max(1.0, deadline - time.monotonic()),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RedisServerError("redis-cli --cluster create did not finish in time") from exc
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")
            raise RedisServerError(f"redis-cli --cluster create failed: {output[-2000:]}")

    def _healthy(self, node: RedisServer) -> bool:
        info = node.command("CLUSTER", "INFO")
        return (
            b"cluster_state:ok" in info
            and b"cluster_slots_assigned:16384" in info
            and f"cluster_known_nodes:{self.size}".encode() in info
        )

    def _wait_ok(self, deadline: float) -> None:
        delay = 0.01
        while True:
            with contextlib.suppress(OSError, RedisServerError):
                if all(self._healthy(node) for node in self.nodes):
                    return
            if time.monotonic() >= deadline:
                raise RedisServerError(
                    f"the 3-node cluster was not ok within {self.start_timeout}s: "
                    + " | ".join(node.log_tail(3) for node in self.nodes)
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def flushall(self) -> None:
        """Delete every key on every master."""
        for node in self.nodes:
            node.flushall()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop(timeout)

    def close(self) -> None:
        """Stop every node and remove a temporary working directory."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RedisCluster3:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
