"""What every command that touches Redis shares: the connection options, the client built from
them, and the translation of driver failures into one ``Error: ...`` line.

Options (:func:`redis_options`): ``--redis URL`` (or ``LAYERCACHE_REDIS_URL``, which keeps a
password out of the process list), ``--cluster`` (a Redis Cluster; detected by itself when the
server says it is a cluster node), ``--require-tls`` (refuse anything but ``rediss://``),
``--tls-ca/--tls-cert/--tls-key`` (files for ``rediss://``; a client certificate for mutual
TLS) and ``--timeout``.

URLs: ``redis://``, ``rediss://``, ``unix://`` and a Sentinel-managed master,
``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]``
(``rediss+sentinel://`` for TLS to the sentinels and the master). The URL is printed only
through :func:`~layercache.cli._common.redact_url`, and any password in it is scrubbed from the
driver's error messages too.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import click
import redis
from redis.cluster import RedisCluster
from redis.sentinel import Sentinel

from .._exceptions import LayerCacheError
from ._common import CliError, redact_url

__all__ = [
    "URL_ENV",
    "RedisTarget",
    "SyncClient",
    "is_cluster",
    "masters",
    "redis_errors",
    "redis_options",
]

URL_ENV = "LAYERCACHE_REDIS_URL"
"""Environment variable read when ``--redis`` is not given."""

_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")
_TLS_SCHEMES = ("rediss", "rediss+sentinel")
DEFAULT_TIMEOUT = 5.0

SyncClient = redis.Redis | RedisCluster


def _secrets_of(url: str) -> list[str]:
    """The passwords in ``url`` (userinfo and ``password``-like query values), to scrub."""
    found: list[str] = []
    try:
        parts = urlsplit(url)
        if parts.password:
            found.extend({parts.password, unquote(parts.password)})
        for name, values in parse_qs(parts.query).items():
            if "password" in name.lower():
                found.extend(values)
    except ValueError:
        pass
    return [s for s in found if s]


@dataclass(frozen=True)
class RedisTarget:
    """Where a command connects, and how (built by :func:`redis_options`)."""

    url: str
    cluster: bool = False
    require_tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    timeout: float = DEFAULT_TIMEOUT

    @property
    def shown(self) -> str:
        """The URL with its password replaced by ``***``."""
        return redact_url(self.url)

    @property
    def scheme(self) -> str:
        try:
            return urlsplit(self.url).scheme.lower()
        except ValueError:
            return ""

    @property
    def uses_tls(self) -> bool:
        return self.scheme in _TLS_SCHEMES

    def scrub(self, text: str) -> str:
        """``text`` with every password of the URL replaced by ``***``."""
        for secret in _secrets_of(self.url):
            text = text.replace(secret, "***")
        return text

    def check(self) -> None:
        """Refuse an unusable URL, and a plain one under ``--require-tls``.

        Raises:
            CliError: With the redacted URL.
        """
        if self.scheme not in _SCHEMES:
            raise CliError(
                f"expected a redis://, rediss://, unix:// or redis+sentinel:// URL, "
                f"got {self.shown!r}"
            )
        if self.require_tls and not self.uses_tls:
            raise CliError(
                f"--require-tls: refusing {self.shown!r}; use a rediss:// "
                "(or rediss+sentinel://) URL"
            )
        if (self.tls_ca or self.tls_cert or self.tls_key) and not self.uses_tls:
            raise CliError(
                f"--tls-ca/--tls-cert/--tls-key need a rediss:// URL, not {self.shown!r}"
            )
        if bool(self.tls_cert) != bool(self.tls_key):
            raise CliError("--tls-cert and --tls-key go together")

    @property
    def is_loopback(self) -> bool:
        """Whether the (first) host is this machine (or a unix socket)."""
        if self.scheme == "unix":
            return True
        try:
            netloc = urlsplit(self.url).netloc.rpartition("@")[2]
        except ValueError:
            return False
        first = netloc.split(",")[0]
        host = first.rsplit(":", 1)[0] if not first.startswith("[") else first[1:].split("]")[0]
        if host in ("localhost", ""):
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    # -- clients ---------------------------------------------------------------------------

    def _tls_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if self.tls_ca:
            options["ssl_ca_certs"] = self.tls_ca
        if self.tls_cert:
            options["ssl_certfile"] = self.tls_cert
            options["ssl_keyfile"] = self.tls_key
        return options

    def _common(self) -> dict[str, Any]:
        return {
            "decode_responses": False,
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
            **self._tls_options(),
        }

    def connect(self) -> SyncClient:
        """A sync client (``redis.Redis`` or ``redis.cluster.RedisCluster``), checked with a
        ``PING`` (a cluster node is detected by ``INFO cluster`` and reopened as a cluster).

        Raises:
            CliError: If the URL is refused or the server cannot be reached.
        """
        self.check()
        with redis_errors(self, "connect"):
            if self.scheme.endswith("+sentinel"):
                client: SyncClient = self._sentinel_client()
            elif self.cluster:
                client = RedisCluster.from_url(self.url, **self._common())
            else:
                client = redis.Redis.from_url(self.url, **self._common())
            client.ping()
            if isinstance(client, redis.Redis) and not self.scheme.endswith("+sentinel"):
                info = client.info("cluster")
                if int(info.get("cluster_enabled", 0)) == 1:
                    client.close()
                    client = RedisCluster.from_url(self.url, **self._common())
                    client.ping()
        return client

    def _sentinel_client(self) -> redis.Redis:
        parts = urlsplit(self.url)
        netloc = parts.netloc
        userinfo, at, hosts = netloc.rpartition("@")
        username = password = None
        if at:
            user, colon, secret = userinfo.partition(":")
            username = unquote(user) or None
            password = unquote(secret) if colon else None
        nodes: list[tuple[str, int]] = []
        for item in hosts.split(","):
            host, _, port = item.rpartition(":") if item.count(":") == 1 else (item, "", "")
            nodes.append((host or item, int(port) if port else 26379))
        path = [p for p in parts.path.split("/") if p]
        if not path:
            raise CliError(f"a redis+sentinel:// URL names the service: {self.shown!r}")
        service = unquote(path[0])
        db = int(path[1]) if len(path) > 1 else 0
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        tls = self.uses_tls
        sentinel_kwargs: dict[str, Any] = {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
        }
        if query.get("sentinel_password"):
            sentinel_kwargs["password"] = query["sentinel_password"]
        if query.get("sentinel_username"):
            sentinel_kwargs["username"] = query["sentinel_username"]
        if tls:
            sentinel_kwargs.update({"ssl": True, **self._tls_options()})
        node_options: dict[str, Any] = {**self._common(), "db": db}
        if tls:
            node_options["ssl"] = True
        make: Any = Sentinel  # redis-py leaves Sentinel untyped
        sentinel = make(nodes, sentinel_kwargs=sentinel_kwargs, **node_options)
        client: redis.Redis = sentinel.master_for(
            service, username=username, password=password, **node_options
        )
        return client


def is_cluster(client: SyncClient) -> bool:
    return isinstance(client, RedisCluster)


def masters(client: SyncClient) -> list[tuple[str, redis.Redis]]:
    """``(name, client)`` of every master: the one server, or each cluster primary."""
    if isinstance(client, RedisCluster):
        cluster: Any = client  # get_primaries is untyped in redis-py
        found = []
        for node in cluster.get_primaries():
            connection = cluster.get_redis_connection(node)
            found.append((f"{node.host}:{node.port}", connection))
        return sorted(found)
    kwargs = client.connection_pool.connection_kwargs
    name = kwargs.get("path") or f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
    return [(str(name), client)]


def _one_line(text: str) -> str:
    return " ".join(text.split())


@contextlib.contextmanager
def redis_errors(target: RedisTarget, doing: str) -> Iterator[None]:
    """Turn a driver failure (or a ``LayerCacheError``) into a :class:`CliError` naming the
    redacted URL, with any password scrubbed from the driver's message."""
    try:
        yield
    except CliError:
        raise
    except (redis.exceptions.RedisError, OSError, LayerCacheError) as exc:
        detail = target.scrub(_one_line(str(exc))) or type(exc).__name__
        raise CliError(f"Redis at {target.shown} ({doing}): {detail}") from None


_OPTIONS: list[Callable[[Callable[..., Any]], Callable[..., Any]]] = [
    click.option(
        "--redis",
        "redis_url",
        required=True,
        envvar=URL_ENV,
        metavar="URL",
        help=f"Redis URL (redis://, rediss://, unix://, redis+sentinel://); env {URL_ENV}.",
    ),
    click.option(
        "--cluster",
        is_flag=True,
        help="Connect as a Redis Cluster client (detected by itself for cluster nodes).",
    ),
    click.option(
        "--require-tls",
        is_flag=True,
        help="Refuse any URL that is not rediss:// (exit 1).",
    ),
    click.option("--tls-ca", type=click.Path(dir_okay=False), help="CA bundle for rediss://."),
    click.option(
        "--tls-cert", type=click.Path(dir_okay=False), help="Client certificate (mutual TLS)."
    ),
    click.option("--tls-key", type=click.Path(dir_okay=False), help="Client certificate's key."),
    click.option(
        "--timeout",
        "redis_timeout",
        type=click.FloatRange(min=0.05, max=600),
        default=DEFAULT_TIMEOUT,
        show_default=True,
        help="Seconds to wait for Redis to connect or answer.",
    ),
]


def redis_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the shared connection options to a click command; it receives ``target``
    (a checked :class:`RedisTarget`) instead of them."""

    @functools.wraps(command)
    def wrapper(
        *args: Any,
        redis_url: str,
        cluster: bool,
        require_tls: bool,
        tls_ca: str | None,
        tls_cert: str | None,
        tls_key: str | None,
        redis_timeout: float,
        **kwargs: Any,
    ) -> Any:
        target = RedisTarget(
            url=redis_url,
            cluster=cluster,
            require_tls=require_tls,
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
            timeout=redis_timeout,
        )
        target.check()
        return command(*args, target=target, **kwargs)

    decorated: Callable[..., Any] = wrapper
    for option in reversed(_OPTIONS):
        decorated = option(decorated)
    return decorated
