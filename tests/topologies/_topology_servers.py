"""Real production topologies for the tests: a Redis Sentinel set and a TLS ``redis-server``.

Standard library only (redis-py is not imported here), like ``tests/_redis_server.py`` whose
``RedisServer`` both build on:

- :class:`SentinelSet`: one master, one replica and three sentinels (``redis-server
  --sentinel``, the same binary) on free loopback ports, quorum 2, small down-after and
  failover timeouts so that a failover takes a few seconds. :meth:`SentinelSet.start` returns
  once the replica is in sync and every sentinel knows the replica and the two other
  sentinels (a failover then has its quorum and a candidate).
- :func:`make_certificates`: a CA, a server certificate for 127.0.0.1 and a client
  certificate, made with the ``openssl`` command-line tool.
- :class:`TlsRedisServer`: a ``redis-server`` that speaks TLS only (``--port 0
  --tls-port P``), optionally requiring client certificates (``--tls-auth-clients yes``).
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from _redis_server import RedisServer, RedisServerError, _encode_command, find_free_port

__all__ = [
    "Certificates",
    "SentinelSet",
    "TlsRedisServer",
    "make_certificates",
]

_HOST = "127.0.0.1"
SERVICE = "mymaster"


def _read_reply(reader: object) -> bytes | list[object]:
    """One RESP2 reply: simple strings, integers and bulk strings as bytes, arrays as lists."""
    line: bytes = reader.readline()  # type: ignore[attr-defined]
    if not line.endswith(b"\r\n"):
        raise OSError("connection closed by the server")
    kind, rest = line[:1], line[1:-2]
    if kind == b"-":
        raise RedisServerError(rest.decode(errors="replace"))
    if kind == b"$":
        size = int(rest)
        return b"" if size < 0 else reader.read(size + 2)[:-2]  # type: ignore[attr-defined,no-any-return]
    if kind == b"*":
        size = int(rest)
        return [] if size < 0 else [_read_reply(reader) for _ in range(size)]
    return rest


def _query(
    port: int, args: tuple[str | bytes, ...], tls: Certificates | None
) -> bytes | list[object]:
    """One command over a fresh connection (TLS with the client certificate when ``tls``)."""
    with socket.create_connection((_HOST, port), timeout=5.0) as raw:
        if tls is None:
            raw.sendall(_encode_command(*args))
            return _read_reply(raw.makefile("rb"))
        context = ssl.create_default_context(cafile=str(tls.ca))
        context.load_cert_chain(str(tls.client_cert), str(tls.client_key))
        with context.wrap_socket(raw, server_hostname=_HOST) as sock:
            sock.sendall(_encode_command(*args))
            return _read_reply(sock.makefile("rb"))


def _tls_options(tls: Certificates, port: int) -> dict[str, str]:
    """A TLS-only listener on ``port`` that also replicates (and, for a sentinel, talks to
    the others and to the data nodes) over TLS; clients are not asked for certificates."""
    return {
        "port": "0",
        "tls-port": str(port),
        "tls-cert-file": str(tls.server_cert),
        "tls-key-file": str(tls.server_key),
        "tls-ca-cert-file": str(tls.ca),
        "tls-replication": "yes",
        "tls-auth-clients": "no",
    }


def _pairs(reply: object) -> dict[str, str]:
    """A flat ``[name, value, ...]`` reply (SENTINEL MASTER/REPLICAS rows) as a dict."""
    assert isinstance(reply, list)
    items = [item.decode() if isinstance(item, bytes) else str(item) for item in reply]
    return dict(zip(items[::2], items[1::2], strict=True))


class _ConfiguredNode(RedisServer):
    """A ``redis-server`` started from a config file of its own (Sentinel rewrites the
    instances' configs when it reconfigures them) plus extra options."""

    def __init__(
        self, binary: str, workdir: Path, extra: dict[str, str], tls: Certificates | None
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(binary, workdir=workdir)
        self.tls = tls
        self.extra = extra if tls is None else {**extra, **_tls_options(tls, self.port)}
        self.config = workdir / "redis.conf"
        self.config.touch()

    def _arguments(self) -> list[str]:
        base = super()._arguments()
        if self.tls is not None:  # the plain port goes: --port 0 comes with the TLS options
            at = base.index("--port")
            del base[at : at + 2]
        options = [part for name, value in self.extra.items() for part in (f"--{name}", value)]
        return [str(self.config), *base, *options]

    def command(self, *args: str | bytes, timeout: float = 5.0) -> bytes:
        reply = _query(self.port, args, self.tls)
        if not isinstance(reply, bytes):
            raise RedisServerError(f"unexpected reply {reply!r}")
        return reply

    def kill(self) -> None:
        """SIGKILL: the process dies at once, as in a crash (no shutdown, no goodbye)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)

    def query(self, *args: str) -> bytes | list[object]:
        """A command whose reply may be an array."""
        return _query(self.port, args, self.tls)


class _Sentinel:
    """One ``redis-server sentinel.conf --sentinel`` process."""

    def __init__(self, binary: str, workdir: Path, tls: Certificates | None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.tls = tls
        self.binary = binary
        self.workdir = workdir
        self.port = find_free_port()
        self.myid = secrets.token_hex(20)
        self.config = workdir / "sentinel.conf"
        self._process: subprocess.Popen[bytes] | None = None

    def configure(self, master_port: int, settings: str, peers: list[_Sentinel]) -> None:
        """Write the config: the master to watch, and the other sentinels by their ids (known
        from the start instead of after a few hello messages, 2 s apart)."""
        known = "".join(
            f"sentinel known-sentinel {SERVICE} {_HOST} {peer.port} {peer.myid}\n"
            for peer in peers
            if peer is not self
        )
        listen = {"port": str(self.port)} if self.tls is None else _tls_options(self.tls, self.port)
        self.config.write_text(
            "".join(f"{name} {value}\n" for name, value in listen.items())
            + f"bind {_HOST}\ndir {self.workdir}\nsentinel myid {self.myid}\n"
            f"sentinel announce-ip {_HOST}\nsentinel announce-port {self.port}\n"
            f"sentinel monitor {SERVICE} {_HOST} {master_port} 2\n{settings}{known}"
        )

    def start(self) -> None:
        log = (self.workdir / "sentinel.log").open("ab")
        try:
            self._process = subprocess.Popen(
                [self.binary, str(self.config), "--sentinel"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()

    @property
    def exited(self) -> bool:
        return self._process is not None and self._process.poll() is not None

    def query(self, *args: str) -> bytes | list[object]:
        return _query(self.port, args, self.tls)

    def master_port(self) -> int | None:
        """The master's port this sentinel reports (``None`` while it has none)."""
        reply = self.query("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        if not isinstance(reply, list) or len(reply) != 2:
            return None
        port = reply[1]
        return int(port) if isinstance(port, bytes) else None

    def log_tail(self, lines: int = 15) -> str:
        path = self.workdir / "sentinel.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


class SentinelSet:
    """One master, one replica, three sentinels watching ``mymaster`` with quorum 2.

    ``down_after_ms`` is how long the master must be silent before a sentinel thinks it down;
    ``failover_timeout_ms`` bounds a failover attempt (and the wait before a retry).
    """

    def __init__(
        self,
        binary: str,
        workdir: Path,
        *,
        down_after_ms: int = 500,
        failover_timeout_ms: int = 4000,
        start_timeout: float = 20.0,
        tls: Certificates | None = None,
    ) -> None:
        self.workdir = workdir
        self.tls = tls
        self.start_timeout = start_timeout
        # A full sync starts at once (diskless, default delay 5 s) on either node as master.
        fast_sync = {"repl-diskless-sync": "yes", "repl-diskless-sync-delay": "0"}
        self.master = _ConfiguredNode(binary, workdir / "master", fast_sync, tls)
        self.replica = _ConfiguredNode(
            binary,
            workdir / "replica",
            {
                **fast_sync,
                "replicaof": f"{_HOST} {self.master.port}",
                "replica-announce-ip": _HOST,
            },
            tls,
        )
        settings = (
            f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}\n"
            f"sentinel failover-timeout {SERVICE} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        self.sentinels = [_Sentinel(binary, workdir / f"sentinel{i}", tls) for i in range(3)]
        for sentinel in self.sentinels:
            sentinel.configure(self.master.port, settings, self.sentinels)

    @property
    def nodes(self) -> list[_ConfiguredNode]:
        return [self.master, self.replica]

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [(_HOST, sentinel.port) for sentinel in self.sentinels]

    def url(self, db: int = 0, scheme: str = "redis+sentinel", auth: str = "") -> str:
        """``redis+sentinel://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/mymaster/db``."""
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinel_addresses)
        return f"{scheme}://{auth}{hosts}/{SERVICE}/{db}"

    def start(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        try:
            self.master.start()
            self.replica.start()
            self._wait(deadline, "the replica in sync", self._replica_synced)
            for sentinel in self.sentinels:
                sentinel.start()
            self._wait(deadline, "every sentinel to know the whole set", self._sentinels_ready)
        except BaseException:
            self.close()
            raise

    def _replica_synced(self) -> bool:
        info = self.replica.command("INFO", "replication")
        return b"master_link_status:up" in info

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            if sentinel.exited:
                raise RedisServerError(f"a sentinel exited: {sentinel.log_tail()}")
            master = _pairs(sentinel.query("SENTINEL", "MASTER", SERVICE))
            if int(master.get("num-other-sentinels", "0")) < 2:
                return False
            replicas = sentinel.query("SENTINEL", "REPLICAS", SERVICE)
            assert isinstance(replicas, list)
            rows = [_pairs(row) for row in replicas]
            # A replica it has INFO from, linked to the master: a failover can promote it.
            if not any(
                row.get("flags") == "slave" and row.get("master-link-status") == "ok"
                for row in rows
            ):
                return False
            if sentinel.master_port() != self.master.port:
                return False
        return True

    def _wait(self, deadline: float, what: str, condition: object) -> None:
        delay = 0.01
        while True:
            with contextlib.suppress(OSError, RedisServerError, ValueError):
                if condition():  # type: ignore[operator]
                    return
            if time.monotonic() >= deadline:
                tails = " | ".join(s.log_tail(3) for s in self.sentinels)
                raise RedisServerError(f"timed out waiting for {what}: {tails}")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def reported_master_ports(self) -> set[int | None]:
        """The master port each sentinel reports now."""
        ports: set[int | None] = set()
        for sentinel in self.sentinels:
            try:
                ports.add(sentinel.master_port())
            except (OSError, RedisServerError):
                ports.add(None)
        return ports

    def node_on(self, port: int) -> _ConfiguredNode:
        return next(node for node in self.nodes if node.port == port)

    def is_master(self, node: _ConfiguredNode) -> bool:
        """Whether ``node`` says ``role:master`` (and is running)."""
        try:
            return b"role:master" in node.command("INFO", "replication")
        except (OSError, RedisServerError):
            return False

    def failover(self) -> None:
        """``SENTINEL FAILOVER mymaster`` on the first sentinel (no agreement needed)."""
        reply = self.sentinels[0].query("SENTINEL", "FAILOVER", SERVICE)
        if reply != b"OK":
            raise RedisServerError(f"SENTINEL FAILOVER answered {reply!r}")

    def close(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for node in self.nodes:
            node.close()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> SentinelSet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- TLS ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    """PEM files: the CA, the server's certificate and key (for 127.0.0.1), a client's."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    # A second CA that signed nothing here: trusting only it must fail verification.
    other_ca: Path


def _openssl(openssl: str, *args: str) -> None:
    done = subprocess.run(
        [openssl, *args], capture_output=True, stdin=subprocess.DEVNULL, check=False, timeout=30
    )
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.decode(errors='replace')}")


def _make_ca(openssl: str, directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    _openssl(
        openssl,
        *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
        *("-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2"),
        *("-subj", f"/CN=layercache test {name}"),
        *("-addext", "basicConstraints=critical,CA:TRUE"),
        *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
        *("-addext", "subjectKeyIdentifier=hash"),
    )
    return cert, key


def _make_leaf(
    openssl: str, directory: Path, name: str, usage: str, ca: tuple[Path, Path]
) -> tuple[Path, Path]:
    key, csr, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
    extensions = directory / f"{name}.ext"
    extensions.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage={usage}\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    _openssl(
        openssl,
        *("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
        *("-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}"),
    )
    _openssl(
        openssl,
        *("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1])),
        *("-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(extensions)),
    )
    return cert, key


def make_certificates(openssl: str, directory: Path) -> Certificates:
    """A CA and the certificates it signs, for the tests' TLS servers and clients."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _make_ca(openssl, directory, "ca")
    other_ca, _ = _make_ca(openssl, directory, "other-ca")
    server = _make_leaf(openssl, directory, "server", "serverAuth", ca)
    client = _make_leaf(openssl, directory, "client", "clientAuth", ca)
    return Certificates(ca[0], server[0], server[1], client[0], client[1], other_ca)


class TlsRedisServer(RedisServer):
    """A ``redis-server`` listening on TLS only (``port`` is its TLS port).

    Args:
        binary: ``redis-server``.
        workdir: Its directory.
        certificates: From :func:`make_certificates`.
        require_client_certificates: ``--tls-auth-clients yes`` (else ``no``).
    """

    def __init__(
        self,
        binary: str,
        workdir: Path,
        certificates: Certificates,
        *,
        require_client_certificates: bool,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(binary, workdir=workdir)
        self.certificates = certificates
        self.require_client_certificates = require_client_certificates

    @property
    def url(self) -> str:
        """``rediss://127.0.0.1:PORT/0`` (the CA and client files go in the query)."""
        return f"rediss://{self.host}:{self.port}/0"

    def _arguments(self) -> list[str]:
        certificates = self.certificates
        options = {
            "port": "0",  # no plain-text port
            "tls-port": str(self.port),
            "tls-cert-file": str(certificates.server_cert),
            "tls-key-file": str(certificates.server_key),
            "tls-ca-cert-file": str(certificates.ca),
            "tls-auth-clients": "yes" if self.require_client_certificates else "no",
            "bind": self.host,
            "save": "",
            "appendonly": "no",
            "daemonize": "no",
            "dir": str(self.workdir),
        }
        return [part for name, value in options.items() for part in (f"--{name}", value)]

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.certificates.ca))
        context.load_cert_chain(
            str(self.certificates.client_cert), str(self.certificates.client_key)
        )
        return context

    def command(self, *args: str | bytes, timeout: float = 5.0) -> bytes:
        """One command over a fresh TLS connection (with the client certificate)."""
        with (
            socket.create_connection((self.host, self.port), timeout=timeout) as raw,
            self._context().wrap_socket(raw, server_hostname=self.host) as sock,
        ):
            sock.sendall(_encode_command(*args))
            reply = _read_reply(sock.makefile("rb"))
        if not isinstance(reply, bytes):
            raise RedisServerError(f"unexpected reply {reply!r}")
        return reply
