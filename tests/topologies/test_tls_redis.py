"""TLS: ``rediss://`` URLs against real TLS-only redis-servers (``--port 0 --tls-port P``).

``tls_server`` checks nothing of its clients (the client verifies the server against the
test CA: ``ssl_ca_certs``); ``mtls_server`` runs with ``--tls-auth-clients yes`` (the client
also shows a certificate: ``ssl_certfile``, ``ssl_keyfile``). A stack with the layer, the bus,
the single-flight coordinator and the tag index works over TLS on both stacks; a plain-text
client, an untrusted server certificate and a missing client certificate each fail with a
``CacheLayerError`` chained to the driver's error, and ``connection_hint`` names the fix.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import pytest
import redis
import redis.exceptions
from _topology_servers import Certificates, SentinelSet, TlsRedisServer

from _redis_server import RedisServer
from layercache import (
    CacheLayerError,
    CacheStack,
    MemoryLayer,
    RedisInvalidationBus,
    RedisLayer,
    RedisSingleFlightCoordinator,
    RedisTagIndex,
    SyncCacheStack,
)
from layercache.redis import (
    SyncRedisInvalidationBus,
    SyncRedisSingleFlightCoordinator,
    SyncRedisTagIndex,
)
from layercache.redis._clients import connection_hint
from polling import eventually, eventually_async

pytestmark = pytest.mark.redis


def tls_url(
    server: TlsRedisServer, certificates: Certificates, *, client: bool, ca: Any = None
) -> str:
    """``rediss://`` with the CA (and the client's certificate and key when ``client``)."""
    query = f"ssl_ca_certs={quote(str(ca or certificates.ca))}"
    if client:
        query += f"&ssl_certfile={quote(str(certificates.client_cert))}"
        query += f"&ssl_keyfile={quote(str(certificates.client_key))}"
    return f"{server.url}?{query}"


def server_keys(server: Any) -> int:
    return int(server.command("DBSIZE"))


# -- stacks over TLS ----------------------------------------------------------------------------


class AsyncInstance:
    def __init__(self, url: str, names: str) -> None:
        self.memory = MemoryLayer(name="memory")
        self.stack = CacheStack(
            [self.memory, RedisLayer(url=url, prefix=f"{names}:")],
            invalidation_bus=RedisInvalidationBus(
                url=url, channel=f"{names}:bus", health_check_interval=0.25
            ),
            broadcast_l1_invalidation=True,
            tag_index=RedisTagIndex(url=url, prefix=f"{names}:tags"),
            single_flight_coordinator=RedisSingleFlightCoordinator(url=url, prefix=f"{names}:sf"),
        )


async def exercise_async(url: str, server: Any, names: str) -> None:
    one, two = AsyncInstance(url, names), AsyncInstance(url, names)
    calls = 0

    async def fetch() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return "secret value"

    async with one.stack, two.stack:
        got = await asyncio.gather(
            one.stack.get("k", fetch, tags=["t"]), two.stack.get("k", fetch, tags=["t"])
        )
        assert got == ["secret value", "secret value"]
        assert calls == 1  # the coordinator's lease, over TLS
        one.memory.clear()
        assert await one.stack.get("k") == "secret value"  # from Redis, over TLS
        assert server_keys(server) > 0
        assert await two.stack.invalidate_by_tag("t") == 1
        await eventually_async(lambda: one.memory.get("k") is None, what="peer L1 dropped")
        assert await one.stack.get("k") is None


async def test_a_stack_over_tls_with_the_ca(
    tls_server: TlsRedisServer, certificates: Certificates
) -> None:
    await exercise_async(tls_url(tls_server, certificates, client=False), tls_server, "a")


async def test_a_stack_over_tls_with_client_certificates(
    mtls_server: TlsRedisServer, certificates: Certificates
) -> None:
    await exercise_async(tls_url(mtls_server, certificates, client=True), mtls_server, "b")


async def test_a_stack_through_a_sentinel_set_that_speaks_tls_only(
    tls_sentinel_set: SentinelSet, certificates: Certificates
) -> None:
    """``rediss+sentinel://``: TLS to the sentinels and to the master they name."""
    url = tls_sentinel_set.url(scheme="rediss+sentinel")
    url += f"?ssl_ca_certs={quote(str(certificates.ca))}"
    await exercise_async(url, tls_sentinel_set.master, "c")


async def test_plain_text_to_tls_sentinels_fails_with_a_cache_layer_error(
    tls_sentinel_set: SentinelSet, certificates: Certificates
) -> None:
    url = tls_sentinel_set.url(scheme="rediss+sentinel")
    url += f"?ssl_ca_certs={quote(str(certificates.ca))}&sentinel_ssl=false"
    error = await layer_error(url, timeout=0.3)  # a TLS port waits for the rest of a record
    assert "No master found" in str(error.__cause__)


class SyncInstance:
    def __init__(self, url: str, names: str) -> None:
        self.memory = MemoryLayer(name="memory")
        self.stack = SyncCacheStack(
            [self.memory, RedisLayer(url=url, prefix=f"{names}:")],
            invalidation_bus=SyncRedisInvalidationBus(
                url=url, channel=f"{names}:bus", health_check_interval=0.25
            ),
            broadcast_l1_invalidation=True,
            tag_index=SyncRedisTagIndex(url=url, prefix=f"{names}:tags"),
            single_flight_coordinator=SyncRedisSingleFlightCoordinator(
                url=url, prefix=f"{names}:sf"
            ),
        )


@pytest.mark.parametrize("mutual", [False, True], ids=["ca", "client-certificates"])
def test_a_sync_stack_over_tls(
    tls_server: TlsRedisServer,
    mtls_server: TlsRedisServer,
    certificates: Certificates,
    mutual: bool,
) -> None:
    server = mtls_server if mutual else tls_server
    url = tls_url(server, certificates, client=mutual)
    names = f"s{int(mutual)}"
    one, two = SyncInstance(url, names), SyncInstance(url, names)
    with one.stack, two.stack:
        assert one.stack.get("k", lambda: {"v": 1}, tags=["t"]) == {"v": 1}
        assert two.stack.get("k") == {"v": 1}  # from Redis, over TLS
        assert one.memory.get("k") is not None
        assert two.stack.invalidate_by_tag("t") == 1
        eventually(lambda: one.memory.get("k") is None, what="peer L1 dropped")
        assert one.stack.get("k") is None


def test_a_sync_stack_through_a_sentinel_set_that_speaks_tls_only(
    tls_sentinel_set: SentinelSet, certificates: Certificates
) -> None:
    url = tls_sentinel_set.url(scheme="rediss+sentinel")
    url += f"?ssl_ca_certs={quote(str(certificates.ca))}"
    one, two = SyncInstance(url, "d"), SyncInstance(url, "d")
    with one.stack, two.stack:
        assert one.stack.get("k", lambda: "v", tags=["t"]) == "v"
        assert two.stack.get("k") == "v"
        assert server_keys(tls_sentinel_set.master) > 0
        assert two.stack.invalidate_by_tag("t") == 1
        eventually(lambda: one.memory.get("k") is None, what="peer L1 dropped")


# -- what fails, and how it says so -------------------------------------------------------------


async def layer_error(url: str, timeout: float = 2.0) -> CacheLayerError:
    """The error of one ``get`` through a ``RedisLayer(url=url)`` (no stack in between)."""
    layer = RedisLayer(url=url, socket_timeout=timeout)
    try:
        with pytest.raises(CacheLayerError) as caught:
            await layer.get("k")
    finally:
        await layer.aclose()
    error = caught.value
    assert error.layer == "redis"
    assert error.operation == "get"
    assert isinstance(
        error.__cause__, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError
    )
    return error


async def test_a_plain_text_client_on_a_tls_port_fails_with_a_cache_layer_error(
    tls_server: TlsRedisServer,
) -> None:
    url = f"redis://{tls_server.host}:{tls_server.port}/0"
    error = await layer_error(url)
    hint = connection_hint(url, error.__cause__)  # type: ignore[arg-type]
    assert hint is not None
    assert "rediss://" in hint


async def test_a_plain_text_stack_on_a_tls_port_degrades_to_its_fetcher(
    tls_server: TlsRedisServer,
) -> None:
    url = f"redis://{tls_server.host}:{tls_server.port}/0"
    stack = CacheStack(
        [MemoryLayer(), RedisLayer(url=url, socket_timeout=2.0)],
        graceful_degradation={"retry_after": 10},
    )
    errors: list[dict[str, Any]] = []
    stack.on("error", errors.append)
    async with stack:
        assert await stack.get("k", lambda: "from the fetcher") == "from the fetcher"
    assert errors
    assert any(isinstance(e.get("error"), CacheLayerError) for e in errors), errors


async def test_a_server_certificate_from_another_ca_is_refused(
    tls_server: TlsRedisServer, certificates: Certificates
) -> None:
    url = tls_url(tls_server, certificates, client=False, ca=certificates.other_ca)
    error = await layer_error(url)
    assert "CERTIFICATE_VERIFY_FAILED" in str(error.__cause__)
    hint = connection_hint(url, error.__cause__)  # type: ignore[arg-type]
    assert hint is not None
    assert "ssl_ca_certs" in hint


async def test_a_client_without_a_certificate_is_refused_by_tls_auth_clients_yes(
    mtls_server: TlsRedisServer, certificates: Certificates
) -> None:
    url = tls_url(mtls_server, certificates, client=False)
    error = await layer_error(url)
    hint = connection_hint(url, error.__cause__)  # type: ignore[arg-type]
    assert hint is not None, str(error.__cause__)
    assert "ssl_certfile" in hint
    # The same URL with the client's certificate is let in.
    layer = RedisLayer(url=tls_url(mtls_server, certificates, client=True))
    try:
        assert await layer.ping()
    finally:
        await layer.aclose()


async def test_a_tls_client_on_a_plain_text_port_fails_with_a_hint(
    redis_clean: RedisServer, certificates: Certificates
) -> None:
    url = f"rediss://{redis_clean.host}:{redis_clean.port}/0?ssl_ca_certs={certificates.ca}"
    # The plain-text server takes the TLS hello for the start of a command and waits for
    # the rest: the handshake times out.
    error = await layer_error(url, timeout=0.5)
    assert isinstance(error.__cause__, redis.exceptions.TimeoutError)
    hint = connection_hint(url, error.__cause__)  # type: ignore[arg-type]
    assert hint is not None
    assert "plain text" in hint


def test_the_sync_layer_fails_the_same_way_on_a_tls_port(tls_server: TlsRedisServer) -> None:
    url = f"redis://{tls_server.host}:{tls_server.port}/0"
    stack = SyncCacheStack([RedisLayer(url=url, socket_timeout=2.0)])
    with stack, pytest.raises(CacheLayerError) as caught:
        stack.get("k")
    cause = caught.value.__cause__
    assert isinstance(cause, redis.exceptions.ConnectionError)
    assert connection_hint(url, cause) is not None


def test_connection_hint_adds_nothing_to_other_failures() -> None:
    assert connection_hint(None, redis.ConnectionError("Connection reset by peer")) is None
    assert connection_hint("redis://h:1/0", ValueError("x")) is None
    assert connection_hint("redis://h:1/0", redis.ConnectionError("Connection refused")) is None
    with_certificate = "rediss://h:1/0?ssl_certfile=/c.pem&ssl_keyfile=/c.key"
    reset = redis.ConnectionError("Connection reset by peer")
    assert connection_hint(with_certificate, reset) is None
