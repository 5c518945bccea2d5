"""The exception tree users can rely on: every name importable from ``layercache``, and every
exception the library raises on purpose a ``LayerCacheError`` (the caller's own errors aside)."""

from __future__ import annotations

from pathlib import Path

import pytest

import layercache
from layercache import CacheStack, LayerCacheError, MemoryLayer, UnserializableValueError


def test_unserializable_value_error_is_public_and_still_a_type_error() -> None:
    from layercache._codec import UnserializableValueError as private

    assert private is UnserializableValueError
    assert "UnserializableValueError" in layercache.__all__
    assert issubclass(UnserializableValueError, TypeError)
    # The caller's error, like ValueError for bad input: never a layer failure.
    assert not issubclass(UnserializableValueError, LayerCacheError)


def test_public_names_are_sorted_and_resolve() -> None:
    assert layercache.__all__ == sorted(layercache.__all__)
    assert len(set(layercache.__all__)) == len(layercache.__all__)
    for name in layercache.__all__:
        assert getattr(layercache, name) is not None


async def test_an_unserializable_value_is_caught_by_the_public_name(tmp_path: Path) -> None:
    from layercache import DiskLayer

    cache = CacheStack([MemoryLayer(), DiskLayer(tmp_path)])
    try:
        with pytest.raises(UnserializableValueError, match="cannot be serialized"):
            await cache.set("k", object())
        with pytest.raises(TypeError):  # the pre-export way of catching it still works
            await cache.set("k", object())
    finally:
        await cache.aclose()


async def test_a_dropped_bus_message_is_a_layercache_error() -> None:
    pytest.importorskip("redis")
    import redis.asyncio as aioredis

    from layercache.redis.bus import RedisInvalidationBus, RejectedMessageError

    assert issubclass(RejectedMessageError, LayerCacheError)
    assert issubclass(RejectedMessageError, ValueError)  # as before: `except ValueError` holds
    client = aioredis.Redis(host="127.0.0.1", port=1)  # never connects: decode is local
    bus = RedisInvalidationBus(client)
    try:
        with pytest.raises(LayerCacheError, match=r"dropped \(malformed\)") as caught:
            bus.decode(b"not json")
        assert isinstance(caught.value, RejectedMessageError)
        assert caught.value.reason == "malformed"
    finally:
        await client.aclose()


def test_cache_layer_error_names_the_cause_and_its_message() -> None:
    """redis-py 8's repr of a ConnectionError is "network:ConnectionError", without the text
    that says what failed: the layer error shows the type and the message."""
    import redis

    from layercache import CacheLayerError

    error = CacheLayerError("redis", "get")
    error.__cause__ = redis.ConnectionError(
        "Error 111 connecting to 127.0.0.1:1. Connection refused."
    )
    assert str(error) == (
        "layer 'redis' failed during get: ConnectionError: "
        "Error 111 connecting to 127.0.0.1:1. Connection refused."
    )

    class Silent(Exception):
        pass

    quiet = CacheLayerError("disk", "set")
    quiet.__cause__ = Silent()
    assert str(quiet) == "layer 'disk' failed during set: Silent()"
