"""Shared fixtures: a real ``redis-server`` for the tests that need one.

``redis_server`` (session) starts one server on a free 127.0.0.1 port; ``redis_clean``
(function) empties it before each test (and restarts it if a fault test left it stopped);
``redis_client`` (function) is a ``redis.asyncio.Redis`` connected to it
(``redis_sync_client``: a sync ``redis.Redis``). ``redis_cluster``
(session) is a one-node Redis Cluster for cluster-client tests. ``redis_proxy`` (function) is a
``TcpProxy`` (tests/_tcp_proxy.py) in front of the emptied session server, for fault tests:
latency, cut-offs, recovery. Without a
``redis-server`` binary those tests are skipped locally and fail under ``CI=true``.
"""

from __future__ import annotations

import gc
import os
import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

sys.path.insert(0, str(Path(__file__).parent))

from _components import redis_binary
from _redis_server import RedisServer
from _tcp_proxy import TcpProxy

# Property tests assert behaviour, never time: no per-example deadline (Hypothesis' default of
# 200 ms failed a glob property once on a loaded 2-CPU machine, with no counterexample).
settings.register_profile("layercache", deadline=None)
settings.load_profile("layercache")


# -- unclosed connections are reported where they were left --------------------------------------

_GC_EACH_TEST = os.environ.get("LAYERCACHE_GC_EACH_TEST") == "1"


@pytest.fixture(scope="module", autouse=True)
def _collect_garbage_after_each_module() -> Iterator[None]:
    """A full garbage collection after each test module.

    A connection nobody closed (redis-py's "unclosed Connection" ``ResourceWarning``, an error
    under ``filterwarnings = error``) is reported when the collector frees it, and that can be
    many modules later: in the whole suite, tests/typing runs mypy in this process, which
    leaves the collector's thresholds at (200000, 30, 30), and the next full collection was
    the ``gc.collect()`` Hypothesis makes before its first test (tests/unit/test_codec.py).
    Here it is reported at the teardown of the module's last test, and thresholds a module
    changed are put back. ``LAYERCACHE_GC_EACH_TEST=1`` collects after every test too, to name the
    test (about 50 ms a test).
    """
    thresholds = gc.get_threshold()
    yield
    gc.collect()
    gc.set_threshold(*thresholds)


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test() -> Iterator[None]:
    yield
    if _GC_EACH_TEST:
        gc.collect()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A ``redis-server`` for the whole session (``host``, ``port``, ``url``, ``stop()``,
    ``start()``, ``restart()``; the port survives a restart)."""
    server = RedisServer(redis_binary(), workdir=tmp_path_factory.mktemp("redis-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_clean(redis_server: RedisServer) -> RedisServer:
    """The session server, running and empty."""
    if not redis_server.is_running:
        redis_server.start()
    redis_server.flushall()
    return redis_server


@pytest.fixture
async def redis_client(redis_clean: RedisServer) -> AsyncIterator[Any]:
    """A ``redis.asyncio.Redis`` (bytes replies) on the empty session server."""
    import redis.asyncio

    client = redis.asyncio.Redis(host=redis_clean.host, port=redis_clean.port)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def redis_sync_client(redis_clean: RedisServer) -> Iterator[Any]:
    """A sync ``redis.Redis`` (bytes replies) on the empty session server (the twin of
    ``redis_client`` in the generated SyncCacheStack suites, tests/generated_sync/)."""
    import redis

    client = redis.Redis.from_url(redis_clean.url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_cluster_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A one-node Redis Cluster owning every slot (cross-slot rules apply as in a real one)."""
    server = RedisServer(
        redis_binary(), workdir=tmp_path_factory.mktemp("redis-cluster"), cluster=True
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def redis_cluster_client(redis_cluster_server: RedisServer) -> AsyncIterator[Any]:
    """A ``redis.asyncio.RedisCluster`` on the (emptied) one-node cluster."""
    from redis.asyncio.cluster import RedisCluster

    if not redis_cluster_server.is_running:
        redis_cluster_server.start()
    redis_cluster_server.flushall()
    client = RedisCluster(host=redis_cluster_server.host, port=redis_cluster_server.port)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def _redis_proxy_session(redis_server: RedisServer) -> Iterator[TcpProxy]:
    proxy = TcpProxy(redis_server.host, redis_server.port)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
def redis_proxy(redis_clean: RedisServer, _redis_proxy_session: TcpProxy) -> Iterator[TcpProxy]:
    """A ``TcpProxy`` in front of the (running, emptied) session server: ``url``,
    ``set_latency(s)``, ``cut("refuse" | "blackhole")``, ``restore()``.

    Reset before and after each test (no latency, no cut, no open connections), and the server
    is started again if the test stopped it.
    """
    proxy = _redis_proxy_session
    proxy.reset()
    try:
        yield proxy
    finally:
        proxy.reset()
        if not redis_clean.is_running:
            redis_clean.start()


# -- a real three-master Redis Cluster ----------------------------------------------------------


def _redis_cli_binary(server_binary: str) -> str:
    sibling = Path(server_binary).with_name("redis-cli")
    found = str(sibling) if sibling.exists() else shutil.which("redis-cli")
    if found is None:
        message = "redis-cli is not installed (apt-get install redis-tools)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="session")
def redis_cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real Redis Cluster of three masters on free loopback ports (``RedisCluster3`` in
    tests/_redis_server.py): ``startup_nodes``, ``url``, ``async_client(**kwargs)`` (a new
    ``redis.asyncio.RedisCluster``; close it), ``flushall()``. Skipped without ``redis-server``
    / ``redis-cli`` locally, a failure under ``CI=true``."""
    from _redis_server import RedisCluster3

    binary = redis_binary()
    cluster = RedisCluster3(
        binary,
        _redis_cli_binary(binary),
        workdir=tmp_path_factory.mktemp("redis-cluster3"),
    )
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def redis_cluster3_client(redis_cluster3: Any) -> AsyncIterator[Any]:
    """A ``redis.asyncio.RedisCluster`` on the (emptied) three-master cluster, initialized.

    ``initialize()`` first: redis-py's asyncio cluster client routes commands sent before it
    has loaded the slot map to one node, and a concurrent burst of them can fail (see
    tests/redis/test_redis_layer_cluster3.py).
    """
    redis_cluster3.flushall()
    client = redis_cluster3.async_client()
    await client.initialize()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Preempt threads every microsecond (``sys.setswitchinterval``), so races between them
    show up in a test run instead of in production."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)
