"""RedisLayer against a real redis-server (started by tests/conftest.py)."""

from __future__ import annotations

import asyncio
import os
import pickle
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio
import redis.exceptions

from _redis_server import RedisServer
from layercache._codec import MAGIC, CorruptEntryError, EntryCodec
from layercache._entry import Entry
from layercache._exceptions import CacheLayerError
from layercache.redis import RedisLayer
from layercache.redis._lease import TOMBSTONE_MAGIC
from layercache.serializers import MsgpackSerializer, PickleSerializer

pytestmark = pytest.mark.redis

MiB = 1024 * 1024
PREFIX = "t:"


def entry(value: Any, tags: tuple[str, ...] = ()) -> Entry:
    now = time.time()
    return Entry(value, now, now + 60, now + 120, None, tags)


@pytest.fixture
async def layer(redis_clean: RedisServer) -> AsyncIterator[RedisLayer]:
    created = RedisLayer(url=redis_clean.url, prefix=PREFIX)
    try:
        yield created
    finally:
        await created.aclose()


class Recorder:
    """An error handler that records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[BaseException, dict[str, Any]]] = []

    def __call__(self, exc: BaseException, context: dict[str, Any]) -> None:
        self.calls.append((exc, context))


# -- construction ------------------------------------------------------------------------


def test_needs_exactly_one_of_client_and_url(redis_server: RedisServer) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        RedisLayer()
    client = redis.asyncio.Redis(host=redis_server.host, port=redis_server.port)
    with pytest.raises(ValueError, match="exactly one"):
        RedisLayer(client=client, url=redis_server.url)


@pytest.mark.parametrize("ttl", [0, -1, "10", True, float("nan")])
def test_bad_ttl_is_refused(ttl: Any) -> None:
    with pytest.raises(ValueError, match="ttl"):
        RedisLayer(url="redis://127.0.0.1:1/0", ttl=ttl)


def test_bad_prefix_and_name_are_refused() -> None:
    with pytest.raises(ValueError, match="control character"):
        RedisLayer(url="redis://127.0.0.1:1/0", prefix="a\nb")
    with pytest.raises(ValueError, match="name"):
        RedisLayer(url="redis://127.0.0.1:1/0", name="")


def test_decoding_client_is_refused(redis_server: RedisServer) -> None:
    client = redis.asyncio.Redis(port=redis_server.port, decode_responses=True)
    with pytest.raises(ValueError, match="decode_responses=False"):
        RedisLayer(client=client)


def test_attributes() -> None:
    import datetime as dt

    created = RedisLayer(url="redis://127.0.0.1:1/0", ttl=dt.timedelta(minutes=2), name="shared")
    assert created.name == "shared"
    assert created.default_ttl == 120.0
    assert created.is_local is False
    assert RedisLayer(url="redis://127.0.0.1:1/0").default_ttl == 300.0
    assert RedisLayer(url="redis://127.0.0.1:1/0", ttl=None).default_ttl is None


def test_import_without_redis_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "try:\n    import layercache.redis\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'layercache-py[redis]'" in result.stdout
    # The core does not need redis at all.
    core = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['redis'] = None; import layercache"],
        capture_output=True,
        timeout=60,
    )
    assert core.returncode == 0, core.stderr


# -- basic operations --------------------------------------------------------------------


async def test_get_set_delete_round_trip(layer: RedisLayer, redis_client: Any) -> None:
    assert await layer.get("k") is None
    stored = entry({"name": "ada", "ids": [1, 2]}, tags=("user", "t:1"))
    await layer.set("k", stored, 60)
    assert await layer.get("k") == stored
    raw = await redis_client.get(b"t:k")
    assert raw is not None
    assert raw.startswith(MAGIC)
    await layer.delete("k")
    assert await layer.get("k") is None
    # With leases on (the default) a delete leaves a tombstone for lease_ttl, not an empty key.
    assert (await redis_client.get(b"t:k")).startswith(TOMBSTONE_MAGIC)
    assert 0 < await redis_client.pttl(b"t:k") <= 10_000
    await layer.delete("never-there")


async def test_negative_cache_entry_round_trips(layer: RedisLayer) -> None:
    stored = entry(None)
    await layer.set("none", stored, 10)
    assert await layer.get("none") == stored


async def test_set_ttl_none_zero_negative_and_tiny(layer: RedisLayer, redis_client: Any) -> None:
    await layer.set("forever", entry(1), None)
    assert await redis_client.pttl(b"t:forever") == -1
    assert await layer.ttl("forever") is None
    assert await layer.has("forever")

    await layer.set("timed", entry(1), 30)
    remaining = await layer.ttl("timed")
    assert remaining is not None
    assert 29 < remaining <= 30

    await layer.set("timed", entry(2), 0)
    assert not await layer.has("timed")
    await layer.set("forever", entry(2), -5)
    assert not await layer.has("forever")

    await layer.set("tiny", entry(3), 0.0001)  # rounds up to 1 ms, never PX 0
    assert await redis_client.pttl(b"t:tiny") in (-2, 0, 1)


async def test_ttl_of_missing_key_is_none(layer: RedisLayer) -> None:
    assert await layer.ttl("missing") is None
    assert await layer.has("missing") is False


async def test_unicode_keys(layer: RedisLayer, redis_client: Any) -> None:
    keys = ["café", "emoji:🎉", "ключ", "a b", "lone\ud800surrogate"]
    for key in keys:
        await layer.set(key, entry(key), 60)
    for key in keys:
        got = await layer.get(key)
        assert got is not None
        assert got.value == key
    assert sorted(await layer.keys()) == sorted(keys)
    assert await redis_client.exists("t:emoji:🎉".encode()) == 1


async def test_get_many_keeps_order_with_misses(layer: RedisLayer) -> None:
    await layer.set("a", entry("A"), 60)
    await layer.set("c", entry("C"), 60)
    results = await layer.get_many(["c", "missing", "a", "c", "zzz"])
    assert [r.value if r else None for r in results] == ["C", None, "A", "C", None]
    assert await layer.get_many([]) == []


async def test_set_many_with_mixed_ttls(layer: RedisLayer, redis_client: Any) -> None:
    await layer.set("gone", entry("old"), 60)
    await layer.set_many(
        [
            ("a", entry("A"), 60),
            ("b", entry("B"), None),
            ("gone", entry("new"), 0),
            ("c", entry("C"), 0.5),
        ]
    )
    assert (await layer.get("a")).value == "A"  # type: ignore[union-attr]
    assert (await layer.get("b")).value == "B"  # type: ignore[union-attr]
    assert await layer.get("gone") is None
    assert 0 < await redis_client.pttl(b"t:c") <= 500
    assert await redis_client.pttl(b"t:b") == -1
    assert 59_000 < await redis_client.pttl(b"t:a") <= 60_000
    await layer.set_many([])


async def test_set_many_is_one_round_trip_for_many_items(layer: RedisLayer) -> None:
    items = [(f"k{i}", entry(i), 60.0) for i in range(2000)]
    await layer.set_many(items)
    results = await layer.get_many([f"k{i}" for i in range(2000)])
    assert [r.value for r in results if r] == list(range(2000))


async def test_delete_many_in_batches(layer: RedisLayer) -> None:
    await layer.set_many([(f"k{i}", entry(i), 60.0) for i in range(1200)])
    await layer.set("keep", entry(0), 60)
    await layer.delete_many([f"k{i}" for i in range(1200)] + ["missing"])
    assert await layer.keys() == ["keep"]
    await layer.delete_many([])


async def test_size_ping_and_has(layer: RedisLayer, redis_client: Any) -> None:
    assert await layer.size() == 0
    await layer.set_many([(f"k{i}", entry(i), 60.0) for i in range(1500)])
    await redis_client.set(b"foreign", b"x")
    await redis_client.set(b"t2:k", b"x")
    assert await layer.size() == 1500
    assert await layer.ping() is True
    assert await layer.has("k7")


async def test_keys_pattern_limit_and_foreign_bytes(layer: RedisLayer, redis_client: Any) -> None:
    await layer.set_many([(f"user:{i}", entry(i), 60.0) for i in range(20)])
    await layer.set("post:1", entry(1), 60)
    await redis_client.set(b"t:\xff\xfe", b"not utf-8 key")
    await redis_client.set(b"other:user:1", b"foreign")
    assert sorted(await layer.keys("user:1?")) == sorted(f"user:{i}" for i in range(10, 20))
    assert len(await layer.keys("user:*", limit=5)) == 5
    assert await layer.keys(limit=0) == []
    assert len(await layer.keys()) == 21
    with pytest.raises(ValueError, match="limit"):
        await layer.keys(limit=-1)
    with pytest.raises(ValueError, match="pattern"):
        await layer.keys("")


# -- clear and prefix isolation ----------------------------------------------------------


async def test_clear_only_touches_its_prefix(redis_clean: RedisServer, redis_client: Any) -> None:
    layer_a = RedisLayer(client=redis_client, prefix="a:")
    layer_ab = RedisLayer(client=redis_client, prefix="ab:")
    await layer_a.set_many([(f"k{i}", entry(i), 60.0) for i in range(1100)])
    await layer_ab.set("k1", entry("ab"), 60)
    await redis_client.set(b"foreign", b"x")
    await redis_client.set(b"a", b"no colon")
    await layer_a.clear()
    assert await layer_a.size() == 0
    assert (await layer_ab.get("k1")).value == "ab"  # type: ignore[union-attr]
    assert await redis_client.get(b"foreign") == b"x"
    assert await redis_client.get(b"a") == b"no colon"
    await layer_a.aclose()  # does not close a client it was given
    assert await redis_client.ping()


async def test_glob_characters_in_prefix_are_literal(
    redis_clean: RedisServer, redis_client: Any
) -> None:
    layer = RedisLayer(client=redis_client, prefix="c[1]*?:")
    await layer.set("k", entry(1), 60)
    # Would match the unescaped pattern "c[1]*?:*".
    await redis_client.set(b"c1xx:k", b"foreign")
    await layer.clear()
    assert await layer.get("k") is None
    assert await redis_client.get(b"c1xx:k") == b"foreign"
    await layer.set("user:1", entry(1), 60)
    await redis_client.set(b"c1zz:user:2", b"foreign")
    assert await layer.delete_matching("user:*") == 1
    assert await redis_client.get(b"c1zz:user:2") == b"foreign"


async def test_empty_prefix_clear_is_refused_unless_allowed(
    redis_clean: RedisServer, redis_client: Any
) -> None:
    await redis_client.set(b"precious", b"data")
    unprefixed = RedisLayer(client=redis_client, prefix="")
    await unprefixed.set("k", entry(1), 60)
    assert await redis_client.exists(b"k") == 1
    with pytest.raises(ValueError, match="allow_unprefixed_clear"):
        await unprefixed.clear()
    assert await redis_client.get(b"precious") == b"data"
    allowed = RedisLayer(client=redis_client, prefix="", allow_unprefixed_clear=True)
    await allowed.clear()
    # Only the layer's all-fence (written by clear itself, never cleared) is left.
    assert await redis_client.keys() == [b"\x00fence:all"]


# -- delete_matching ---------------------------------------------------------------------


async def test_delete_matching_counts_and_spares_others(
    layer: RedisLayer, redis_client: Any
) -> None:
    await layer.set_many([(f"user:{i}", entry(i), 60.0) for i in range(1200)])
    await layer.set("users:1", entry(1), 60)
    await layer.set("post:1", entry(1), 60)
    await redis_client.set(b"user:5", b"foreign, unprefixed")
    await redis_client.set(b"t2:user:5", b"foreign, other prefix")
    assert await layer.delete_matching("user:*") == 1200
    assert sorted(await layer.keys()) == ["post:1", "users:1"]
    assert await redis_client.get(b"user:5") == b"foreign, unprefixed"
    assert await redis_client.get(b"t2:user:5") == b"foreign, other prefix"
    assert await layer.delete_matching("nothing:*") == 0


async def test_delete_matching_uses_character_semantics(layer: RedisLayer) -> None:
    # Redis's own matcher works on bytes: '?' and '[é]' would miss a 2-byte 'é'.
    for key in ["v:é", "v:e", "v:ab", "w:é1", "w:x1", "w:é22", "lit*:1", "lit:1"]:
        await layer.set(key, entry(key), 60)
    assert await layer.delete_matching("v:?") == 2
    assert sorted(await layer.keys("v:*")) == ["v:ab"]
    assert await layer.delete_matching("w:[é]?") == 1
    assert sorted(await layer.keys("w:*")) == ["w:x1", "w:é22"]
    assert await layer.delete_matching("lit\\*:1") == 1
    assert await layer.keys("lit*") == ["lit:1"]


async def test_delete_matching_rejects_bad_patterns(layer: RedisLayer) -> None:
    with pytest.raises(ValueError, match="pattern"):
        await layer.delete_matching("")
    with pytest.raises(ValueError, match="control"):
        await layer.delete_matching("a\x00*")


# -- foreign and corrupt data ------------------------------------------------------------

SIDE_EFFECTS: list[str] = []


def record(tag: str) -> str:
    SIDE_EFFECTS.append(tag)
    return tag


class Exploit:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (record, ("unpickled",))


@pytest.mark.parametrize(
    "raw",
    [
        b"hello",
        pickle.dumps(Exploit()),
        MAGIC + b"\x01\x00\x01",
        MAGIC + b"\x01\x00\x01[1,2]",
        MAGIC + b"\x01\x07\x01[]",
        MAGIC + b"\x01\x00\x03" + pickle.dumps(Exploit()),
    ],
    ids=["text", "pickle", "empty-body", "wrong-shape", "bad-compression", "unsigned-pickle"],
)
async def test_corrupt_or_foreign_bytes_read_as_miss_and_report(
    redis_clean: RedisServer, redis_client: Any, raw: bytes
) -> None:
    SIDE_EFFECTS.clear()
    recorder = Recorder()
    layers = [
        RedisLayer(client=redis_client, prefix=PREFIX),
        RedisLayer(client=redis_client, prefix=PREFIX, serializer=PickleSerializer("secret")),
    ]
    await redis_client.set(b"t:bad", raw)
    for layer in layers:
        layer.set_error_handler(recorder)
        assert await layer.get("bad") is None
        await layer.set("good", entry("fine"), 60)
        results = await layer.get_many(["good", "bad"])
        assert results[0] is not None
        assert results[1] is None
    assert SIDE_EFFECTS == []
    assert [ctx for _, ctx in recorder.calls] == [
        {"layer": "redis", "key": "bad", "operation": "get"},
        {"layer": "redis", "key": "bad", "operation": "get_many"},
    ] * 2
    assert all(isinstance(exc, CorruptEntryError) for exc, _ in recorder.calls)
    # The foreign value is left alone (it may not be ours to delete).
    assert await redis_client.get(b"t:bad") == raw


async def test_without_handler_corruption_is_logged(
    layer: RedisLayer, redis_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    await redis_client.set(b"t:bad", b"hello")
    assert await layer.get("bad") is None
    assert "unreadable value" in caplog.text


async def test_raising_error_handler_does_not_break_reads(
    layer: RedisLayer, redis_client: Any
) -> None:
    def broken(exc: BaseException, context: dict[str, Any]) -> None:
        raise RuntimeError("handler bug")

    layer.set_error_handler(broken)
    await redis_client.set(b"t:bad", b"hello")
    assert await layer.get("bad") is None


async def test_decompression_bomb_reads_as_miss(layer: RedisLayer, redis_client: Any) -> None:
    import zlib

    recorder = Recorder()
    layer.set_error_handler(recorder)
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b" " * MiB
    bomb = b"".join([packer.compress(block) for _ in range(80)] + [packer.flush()])
    await redis_client.set(b"t:bomb", MAGIC + b"\x01\x01\x01" + bomb)
    assert await layer.get("bomb") is None
    [(exc, context)] = recorder.calls
    assert "more than" in str(exc)
    assert context["key"] == "bomb"


async def test_unserializable_value_is_the_callers_error(layer: RedisLayer) -> None:
    # Not a CacheLayerError: the value, not Redis, is at fault (the stack must never take a
    # healthy layer out of service for it).
    with pytest.raises(TypeError, match=r"'redis' \(set\): the value cannot be serialized"):
        await layer.set("k", entry(object()), 60)
    with pytest.raises(TypeError, match=r"\(set_many\): the value cannot be serialized"):
        await layer.set_many([("k", entry(object()), 60)])


# -- serializers and compression through the layer ---------------------------------------


@pytest.mark.parametrize(
    "serializer",
    [None, MsgpackSerializer(), PickleSerializer(signing_secret="k")],
    ids=["json", "msgpack", "pickle"],
)
async def test_serializers_through_the_layer(
    redis_client: Any, serializer: Any, redis_clean: RedisServer
) -> None:
    import datetime as dt
    import uuid

    layer = RedisLayer(client=redis_client, prefix=PREFIX, serializer=serializer)
    value = {"when": dt.datetime(2024, 1, 2, 3, 4, 5), "id": uuid.uuid4(), "raw": b"\x00\x01"}
    await layer.set("k", entry(value), 60)
    got = await layer.get("k")
    assert got is not None
    assert got.value == value


@pytest.mark.parametrize("compression", ["gzip", "brotli", "zstd"])
async def test_compression_only_above_threshold(
    redis_client: Any, compression: str, redis_clean: RedisServer
) -> None:
    layer = RedisLayer(
        client=redis_client, prefix=PREFIX, compression=compression, compression_threshold=1024
    )
    await layer.set("small", entry("s" * 100), 60)
    await layer.set("big", entry("b" * 20_000), 60)
    small = await redis_client.get(b"t:small")
    big = await redis_client.get(b"t:big")
    assert small[:4] == MAGIC + b"\x01"
    assert small[4] == 0
    assert big[4] == {"gzip": 1, "brotli": 2, "zstd": 3}[compression]
    assert len(big) < 2000
    assert (await layer.get("big")).value == "b" * 20_000  # type: ignore[union-attr]
    # A layer configured without compression still reads compressed entries.
    plain = RedisLayer(client=redis_client, prefix=PREFIX)
    assert (await plain.get("big")).value == "b" * 20_000  # type: ignore[union-attr]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("serializer", "compression"),
    [("json", None), ("json", "zstd"), ("msgpack", None), ("msgpack", "gzip"), ("msgpack", "zstd")],
)
async def test_values_of_several_mib(
    redis_client: Any, serializer: str, compression: str | None, redis_clean: RedisServer
) -> None:
    layer = RedisLayer(
        client=redis_client,
        prefix=PREFIX,
        compression=compression,
        serializer=MsgpackSerializer() if serializer == "msgpack" else None,
    )
    noise = os.urandom(8 * MiB)  # incompressible (msgpack: stored plain even with compression)
    text = "lorem ipsum dolor " * (8 * MiB // 18)  # compressible
    started = time.perf_counter()
    await layer.set("noise", entry(noise), 60)
    await layer.set("text", entry(text), 60)
    got_noise = await layer.get("noise")
    got_text = await layer.get("text")
    elapsed = time.perf_counter() - started
    assert got_noise is not None
    assert got_noise.value == noise
    assert got_text is not None
    assert got_text.value == text
    stored_text = await redis_client.strlen(b"t:text")
    if compression is None:
        assert stored_text > 8 * MiB - 100
    else:
        assert stored_text < MiB
    assert elapsed < 10, f"8 MiB round trips took {elapsed:.2f}s"
    many = await layer.get_many(["noise", "text"])
    assert [m.value if m else None for m in many] == [noise, text]


# -- outages -----------------------------------------------------------------------------


async def test_errors_become_cache_layer_errors_while_server_is_down(
    redis_server: RedisServer, redis_clean: RedisServer
) -> None:
    layer = RedisLayer(url=redis_server.url, prefix=PREFIX, socket_timeout=2)
    await layer.set("k", entry(1), 60)
    operations: dict[str, Any] = {
        "get": lambda: layer.get("k"),
        "set": lambda: layer.set("k", entry(2), 60),
        "delete": lambda: layer.delete("k"),
        "clear": layer.clear,
        "get_many": lambda: layer.get_many(["k", "j"]),
        "set_many": lambda: layer.set_many([("k", entry(3), 60)]),
        "delete_many": lambda: layer.delete_many(["k"]),
        "delete_matching": lambda: layer.delete_matching("k*"),
        "keys": layer.keys,
        "has": lambda: layer.has("k"),
        "ttl": lambda: layer.ttl("k"),
        "size": layer.size,
        "ping": layer.ping,
    }
    redis_server.stop()
    try:
        for operation, call in operations.items():
            started = time.perf_counter()
            with pytest.raises(CacheLayerError) as info:
                await call()
            assert time.perf_counter() - started < 3, operation
            assert info.value.layer == "redis"
            assert info.value.operation == operation
            assert isinstance(info.value.__cause__, redis.exceptions.RedisError | OSError)
    finally:
        redis_server.start()
    # The same layer (and its pooled connections) recovers once the server is back.
    await layer.set("k", entry("back"), 60)
    assert (await layer.get("k")).value == "back"  # type: ignore[union-attr]
    await layer.aclose()


BUSY_SCRIPT = """
local start = redis.call('TIME')
while true do
  local now = redis.call('TIME')
  if (now[1] - start[1]) * 1000 + (now[2] - start[2]) / 1000 > tonumber(ARGV[1]) then
    return 1
  end
end
"""


async def test_read_timeout_is_a_cache_layer_error(redis_clean: RedisServer) -> None:
    layer = RedisLayer(url=redis_clean.url, prefix=PREFIX, socket_timeout=0.2)
    blocker = RedisLayer(url=redis_clean.url, prefix=PREFIX)
    try:
        await layer.ping()
        await blocker.ping()
        # A busy script blocks the single-threaded server for longer than the socket timeout
        # (and than one retry) of `layer`.

        async def block_server() -> Any:
            return await blocker.client.eval(BUSY_SCRIPT, 0, 700)

        sleeper = asyncio.create_task(block_server())
        await asyncio.sleep(0.05)
        with pytest.raises(CacheLayerError) as info:
            await layer.get("k")
        assert info.value.operation == "get"
        assert isinstance(info.value.__cause__, redis.exceptions.TimeoutError)
        assert await sleeper == 1
    finally:
        await layer.aclose()
        await blocker.aclose()


async def test_aclose_closes_only_an_owned_client(
    redis_clean: RedisServer, redis_client: Any
) -> None:
    owned = RedisLayer(url=redis_clean.url)
    await owned.ping()
    await owned.aclose()
    borrowed = RedisLayer(client=redis_client)
    await borrowed.aclose()
    assert await redis_client.ping()


def test_codec_is_exposed_for_inspection() -> None:
    layer = RedisLayer(url="redis://127.0.0.1:1/0", compression="zstd")
    assert isinstance(layer.codec, EntryCodec)
    assert layer.codec.compression == "zstd"
