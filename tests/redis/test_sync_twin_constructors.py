"""One class for both stacks: every asyncio Redis component returns its generated sync twin when
its first argument is a sync redis-py client (by position or by name), and help() /
inspect.signature() show the real __init__ parameters, not the (*args, **kwargs) of the
__new__ that picks the twin (redis/_clients.py: sync_twin_for_sync_clients)."""

from __future__ import annotations

import inspect
import pydoc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio

from _redis_server import RedisServer
from layercache.redis import (
    RedisInvalidationBus,
    RedisLayer,
    RedisSingleFlightCoordinator,
    RedisTagIndex,
    SyncRedisInvalidationBus,
    SyncRedisLayer,
    SyncRedisSingleFlightCoordinator,
    SyncRedisTagIndex,
)

pytestmark = pytest.mark.redis

# (asyncio class, its sync twin, the client parameter, parameters help() must show)
CLASSES: list[tuple[type, type, str, tuple[str, ...]]] = [
    (RedisLayer, SyncRedisLayer, "client", ("client", "url", "prefix", "lease_ttl")),
    (
        RedisInvalidationBus,
        SyncRedisInvalidationBus,
        "publisher",
        ("publisher", "subscriber", "url", "channel", "signing_secret"),
    ),
    (
        RedisSingleFlightCoordinator,
        SyncRedisSingleFlightCoordinator,
        "client",
        ("client", "url", "prefix", "lease"),
    ),
    (RedisTagIndex, SyncRedisTagIndex, "client", ("client", "url", "prefix", "key_ttl")),
]
IDS = [cls.__name__ for cls, *_ in CLASSES]


@pytest.mark.parametrize(("cls", "twin", "first", "shown"), CLASSES, ids=IDS)
def test_help_and_signature_show_the_real_parameters(
    cls: type, twin: type, first: str, shown: tuple[str, ...]
) -> None:
    for klass in (cls, twin):
        parameters = inspect.signature(klass).parameters
        assert next(iter(parameters)) == first, klass
        assert set(shown) <= set(parameters), klass
        assert "args" not in parameters
        assert "kwargs" not in parameters
        assert "self" not in parameters
        text = pydoc.render_doc(klass, renderer=pydoc.plaintext)
        assert all(f"{name}:" in text or f"{name}=" in text for name in shown), klass
    assert inspect.signature(cls).parameters == inspect.signature(twin).parameters


@pytest.fixture
def sync_client(redis_clean: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(host=redis_clean.host, port=redis_clean.port, socket_timeout=5)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
async def async_client(redis_clean: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis(host=redis_clean.host, port=redis_clean.port)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.mark.parametrize(("cls", "twin", "first", "shown"), CLASSES, ids=IDS)
def test_a_sync_client_by_position_or_by_name_makes_the_twin(
    cls: type, twin: type, first: str, shown: tuple[str, ...], sync_client: redis.Redis
) -> None:
    del shown
    for made in (cls(sync_client), cls(**{first: sync_client})):
        assert type(made) is twin
    assert type(twin(sync_client)) is twin


@pytest.mark.parametrize(("cls", "twin", "first", "shown"), CLASSES, ids=IDS)
async def test_an_asyncio_client_or_a_url_makes_the_class_itself(
    cls: type,
    twin: type,
    first: str,
    shown: tuple[str, ...],
    async_client: redis.asyncio.Redis,
    redis_clean: RedisServer,
) -> None:
    del twin, shown
    made: list[Any] = [cls(async_client), cls(**{first: async_client}), cls(url=redis_clean.url)]
    assert all(type(component) is cls for component in made)
    await made[-1].aclose()


def test_the_twin_gets_every_argument(sync_client: redis.Redis) -> None:
    layer = RedisLayer(sync_client, None, 7, "p:", name="n", lease_ttl=None)
    assert isinstance(layer, SyncRedisLayer)
    assert (layer.default_ttl, layer.prefix, layer.name, layer.lease_ttl) == (7.0, "p:", "n", None)
    bus = RedisInvalidationBus(sync_client, channel="c", source_id="me", max_keys=3)
    assert isinstance(bus, SyncRedisInvalidationBus)
    assert (bus.channel, bus.source_id, bus.max_keys) == ("c", "me", 3)


def test_arguments_are_still_checked(sync_client: redis.Redis) -> None:
    with pytest.raises(TypeError):
        RedisLayer(sync_client, unknown=1)
    with pytest.raises(ValueError, match="exactly one"):
        RedisTagIndex(sync_client, url="redis://127.0.0.1:1/0")
