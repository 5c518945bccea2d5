"""Values and keys at memcached's limits, against a real memcached: items over the 1 MiB limit
refused with a clear error (or stored compressed), hostile bytes under our keys read as a miss
(never unpickled), TTLs over 30 days, and the key mapping."""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path
from typing import Any

import pytest

from _memcached_server import MemcachedServer
from layercache import CacheStack, Entry, MemoryLayer, SyncCacheStack, UnserializableValueError
from layercache.memcached import MemcachedLayer, MemcachedValueTooLargeError, SyncMemcachedLayer
from layercache.memcached._common import KeyMap, exptime, parse_servers

MiB = 1024 * 1024


def entry(value: Any, ttl: float | None = 600) -> Entry:
    now = time.time()
    return Entry(value, now, None if ttl is None else now + ttl)


def raw_key(server: MemcachedServer, prefix: str, key: str) -> bytes:
    version = server.get_raw(f"{prefix}version".encode())
    assert version is not None, "the layer has not created its namespace version yet"
    return KeyMap(prefix).key(version, key)


async def test_value_over_the_item_limit_is_refused(
    memcached: MemcachedServer, prefix: str
) -> None:
    layer = MemcachedLayer(servers=memcached.address, prefix=prefix)
    sync_layer = SyncMemcachedLayer(servers=memcached.address, prefix=prefix)
    huge = entry(os.urandom(MiB).hex())  # 2 MiB of incompressible-ish text
    try:
        await layer.set("small", entry("ok"), 60)
        with pytest.raises(MemcachedValueTooLargeError, match="max_value_bytes=1048576") as caught:
            await layer.set("huge", huge, 60)
        assert "compression=" in str(caught.value)
        assert isinstance(caught.value, UnserializableValueError | ValueError)
        with pytest.raises(MemcachedValueTooLargeError):
            await layer.set_many([("a", entry("a"), 60), ("huge", huge, 60)])
        with pytest.raises(MemcachedValueTooLargeError):
            sync_layer.set("huge", huge, 60)
        assert await layer.get("huge") is None
        assert await layer.get("a") is None  # set_many refused before sending anything
        assert (await layer.get("small")).value == "ok"  # type: ignore[union-attr]
        # Just under the limit is stored.
        fits = entry("x" * (MiB - 4096))
        await layer.set("fits", fits, 60)
        assert (await layer.get("fits")).value == fits.value  # type: ignore[union-attr]
    finally:
        await layer.aclose()
        sync_layer.close()


async def test_compression_brings_a_large_value_under_the_limit(
    memcached: MemcachedServer, prefix: str
) -> None:
    layer = MemcachedLayer(servers=memcached.address, prefix=prefix, compression="gzip")
    value = "abcdefgh" * (3 * MiB // 8)  # 3 MiB, compresses well
    try:
        await layer.set("big", entry(value), 60)
        assert (await layer.get("big")).value == value  # type: ignore[union-attr]
        stored = memcached.get_raw(raw_key(memcached, prefix, "big"))
        assert stored is not None
        assert len(stored) < MiB // 10
        with pytest.raises(MemcachedValueTooLargeError, match="even with gzip"):
            await layer.set("noise", entry(os.urandom(2 * MiB).hex()), 60)
    finally:
        await layer.aclose()


async def test_stack_with_a_huge_value_keeps_memcached_in_service(
    memcached: MemcachedServer, prefix: str
) -> None:
    """The caller hears of the refused value; graceful degradation does not take a healthy
    memcached out of service for it."""
    layer = MemcachedLayer(servers=memcached.address, prefix=prefix)
    cache = CacheStack([MemoryLayer(), layer], graceful_degradation=True)
    try:
        with pytest.raises(MemcachedValueTooLargeError):
            await cache.set("huge", os.urandom(MiB).hex())
        status = next(s for s in cache.get_stats().layers if s.name == "memcached")
        assert status.degraded_until is None
        await cache.set("next", 1)
        assert (await layer.get("next")).value == 1  # type: ignore[union-attr]
    finally:
        await cache.aclose()


class _Bomb:
    """Unpickling this creates a file: proof that nothing unpickled it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (Path.touch, (self.path,))


async def test_hostile_bytes_read_as_a_miss_never_unpickled(
    memcached: MemcachedServer, prefix: str, tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled"
    layer = MemcachedLayer(servers=memcached.address, prefix=prefix)
    cache = CacheStack([layer])
    errors: list[dict[str, Any]] = []
    cache.on("error", errors.append)
    sync_layer = SyncMemcachedLayer(servers=memcached.address, prefix=prefix)
    sync_errors: list[Any] = []
    sync_layer.set_error_handler(lambda exc, ctx: sync_errors.append((exc, ctx)))
    try:
        await layer.set("seed", entry(1), 60)  # creates the namespace version
        payloads = {
            "pickle": pickle.dumps(_Bomb(marker)),
            "junk": b"\x00\xffnot an entry",
            "empty": b"",
            "magic-ish": b"\xc1LC\x01\x00\x00garbage",
        }
        for name, data in payloads.items():
            memcached.set_raw(raw_key(memcached, prefix, name), data)
        memcached.set_raw(raw_key(memcached, prefix, "flagged"), pickle.dumps(1), flags=1)
        keys = [*payloads, "flagged"]
        for key in keys:
            assert await cache.get(key) is None, key
            assert sync_layer.get(key) is None, key
        assert await cache.get_many(keys) == [None] * len(keys)
        assert not marker.exists()
        reported = {e["context"]["key"] for e in errors if e["context"].get("layer") == "memcached"}
        assert reported == set(keys), errors
        assert {ctx["key"] for _, ctx in sync_errors} == set(keys)
    finally:
        await cache.aclose()
        sync_layer.close()


async def test_ttl_over_30_days(memcached: MemcachedServer, prefix: str) -> None:
    """memcached reads an exptime over 30 days as a unix time: sent as one, the entry lives."""
    days_40 = 40 * 24 * 3600.0
    layer = MemcachedLayer(servers=memcached.address, prefix=prefix)
    cache = SyncCacheStack([SyncMemcachedLayer(servers=memcached.address, prefix=prefix)])
    try:
        await layer.set("long", entry("v", ttl=days_40), days_40)
        assert (await layer.get("long")).value == "v"  # type: ignore[union-attr]
        remaining = await layer.ttl("long")
        assert remaining is not None
        assert days_40 - 60 < remaining <= days_40
        cache.set("sync-long", "w", ttl=days_40)
        assert cache.get("sync-long") == "w"
        assert memcached.get_raw(raw_key(memcached, prefix, "sync-long")) is not None
        assert exptime(days_40, lambda: 1_000_000.0) == 1_000_000 + int(days_40)
        assert exptime(30 * 24 * 3600.0) == 30 * 24 * 3600
        assert exptime(0.2) == 1
        assert exptime(None) == 0
    finally:
        await layer.aclose()
        cache.close()


def test_key_mapping() -> None:
    keys = KeyMap("app:")
    assert keys.key(b"7", "user:1") == b"app:7:user:1"
    assert keys.key(b"7", "ключ") == "app:7:ключ".encode()
    spaced = keys.key(b"7", "with space")
    assert spaced.startswith(b"app:7#")
    assert len(spaced) == len(b"app:7#") + 64
    assert keys.key(b"7", "with  space") != spaced
    long_a, long_b = keys.key(b"7", "x" * 300), keys.key(b"7", "x" * 299 + "y")
    assert long_a != long_b
    assert max(len(long_a), len(long_b)) <= 250
    # Exactly 250 bytes stays readable; one more is hashed.
    fits = "k" * (250 - len("app:7:"))
    assert keys.key(b"7", fits) == f"app:7:{fits}".encode()
    assert keys.key(b"7", fits + "k").startswith(b"app:7#")
    # Another namespace version, another key.
    assert keys.key(b"8", "with space") != spaced
    # A prefix memcached cannot take: everything hashed, still distinct and stable.
    odd = KeyMap("my app:")
    assert odd.key(b"1", "a").startswith(b"layercache#")
    assert odd.key(b"1", "a") != odd.key(b"1", "b")
    assert odd.key(b"1", "a") == KeyMap("my app:").key(b"1", "a")
    assert odd.version_key != odd.key(b"1", "a")
    assert keys.version_key == b"app:version"


def test_arguments() -> None:
    assert parse_servers("127.0.0.1:11311") == [("127.0.0.1", 11311)]
    assert parse_servers(["a", ("b", 2), "[::1]:3"]) == [("a", 11211), ("b", 2), ("::1", 3)]
    for bad in ([], "a:b", ["a:1", "a:1"], 5, [("a", 0)]):
        with pytest.raises(ValueError, match="server"):
            parse_servers(bad)
    with pytest.raises(ValueError, match="exactly one"):
        MemcachedLayer()
    with pytest.raises(ValueError, match="max_value_bytes"):
        MemcachedLayer(servers="a:1", max_value_bytes=10)
    with pytest.raises(ValueError, match="ttl"):
        MemcachedLayer(servers="a:1", ttl=0)


async def test_sync_stack_refuses_a_layer_on_an_aiomcache_client(
    memcached: MemcachedServer,
) -> None:
    import aiomcache

    client = aiomcache.Client(memcached.host, memcached.port)
    layer = MemcachedLayer(client=client)
    try:
        assert type(layer) is MemcachedLayer
        with pytest.raises(TypeError, match="aiomcache client"):
            SyncCacheStack([layer])
        assert await layer.ping() is True
    finally:
        await client.close()
