"""Fixtures for the production-topology tests: a real Sentinel set and TLS redis-servers.

``sentinel_set`` (module) is one master, one replica and three sentinels (quorum 2) shared by
the tests that do not fail it over; ``sentinel_clean`` empties its master before a test.
``fresh_sentinel_set`` (function) is a set of its own for a test that fails it over.
``certificates`` (session) are a CA, a server and a client certificate made with ``openssl``;
``tls_server`` (module) is a TLS-only redis-server that verifies the server side only
(``--tls-auth-clients no``), ``mtls_server`` one that requires client certificates;
``tls_sentinel_set`` (module) is a Sentinel set that speaks TLS only.
Without ``redis-server`` or ``openssl`` these tests are skipped locally and fail under
``CI=true``.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _topology_servers import Certificates, SentinelSet, TlsRedisServer, make_certificates

from _components import redis_binary


def openssl_binary() -> str:
    found = shutil.which("openssl")
    if found is None:
        message = "openssl is not installed (apt-get install openssl)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def sentinel_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    """A running Sentinel set for the whole module (not failed over by its tests)."""
    topology = SentinelSet(redis_binary(), tmp_path_factory.mktemp("sentinel-set"))
    topology.start()
    try:
        yield topology
    finally:
        topology.close()


@pytest.fixture
def sentinel_clean(sentinel_set: SentinelSet) -> SentinelSet:
    """The module's Sentinel set with an empty master (the replica follows)."""
    sentinel_set.master.flushall()
    return sentinel_set


@pytest.fixture
def fresh_sentinel_set(tmp_path: Path) -> Iterator[SentinelSet]:
    """A Sentinel set of this test's own (it may fail it over or kill its master)."""
    topology = SentinelSet(redis_binary(), tmp_path / "sentinel-set")
    topology.start()
    try:
        yield topology
    finally:
        topology.close()


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate."""
    return make_certificates(openssl_binary(), tmp_path_factory.mktemp("tls-certificates"))


def _tls_server(
    tmp_path_factory: pytest.TempPathFactory, certificates: Certificates, *, mutual: bool
) -> Iterator[TlsRedisServer]:
    server = TlsRedisServer(
        redis_binary(),
        tmp_path_factory.mktemp("redis-tls"),
        certificates,
        require_client_certificates=mutual,
    )
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory, certificates: Certificates
) -> Iterator[TlsRedisServer]:
    """A TLS-only redis-server (no plain port) that does not ask for client certificates."""
    yield from _tls_server(tmp_path_factory, certificates, mutual=False)


@pytest.fixture(scope="module")
def mtls_server(
    tmp_path_factory: pytest.TempPathFactory, certificates: Certificates
) -> Iterator[TlsRedisServer]:
    """A TLS-only redis-server started with ``--tls-auth-clients yes``."""
    yield from _tls_server(tmp_path_factory, certificates, mutual=True)


@pytest.fixture(scope="module")
def tls_sentinel_set(
    tmp_path_factory: pytest.TempPathFactory, certificates: Certificates
) -> Iterator[SentinelSet]:
    """A Sentinel set on TLS only: master, replica and sentinels listen on TLS ports, and
    replicate and talk to each other over TLS (``tls-replication yes``)."""
    topology = SentinelSet(
        redis_binary(), tmp_path_factory.mktemp("tls-sentinel-set"), tls=certificates
    )
    topology.start()
    try:
        yield topology
    finally:
        topology.close()
