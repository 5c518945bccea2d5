"""EntryCodec: round-trips, the wire header, compression choice, and rejection of bad bytes."""

from __future__ import annotations

import json
import os
import sys
import tracemalloc
import zlib
from collections.abc import Callable
from typing import Any

import brotli
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from layercache._codec import MAGIC, CorruptEntryError, EntryCodec
from layercache._entry import Entry
from layercache.serializers import JsonSerializer, MsgpackSerializer, PickleSerializer

COMPRESSIONS = [None, "gzip", "brotli", "zstd"]
COMPRESSION_BYTE = {None: 0, "gzip": 1, "brotli": 2, "zstd": 3}
MiB = 1024 * 1024


def header(compression: int = 0, serializer: int = 1, version: int = 1) -> bytes:
    return MAGIC + bytes((version, compression, serializer))


def json_body(fields: Any) -> bytes:
    return json.dumps(fields).encode()


# -- round-trip properties ----------------------------------------------------------------

times = st.floats(min_value=0, max_value=4e9, allow_nan=False)
json_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(), st.binary()
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)
entries = st.builds(
    Entry,
    value=json_values,
    stored_at=times,
    fresh_until=st.none() | times,
    stale_until=st.none() | times,
    error_until=st.none() | times,
    tags=st.lists(st.text(), max_size=4).map(tuple),
)


@settings(max_examples=150, deadline=None)
@given(
    entry=entries,
    compression=st.sampled_from(COMPRESSIONS),
    threshold=st.sampled_from([0, 1, 64, 1024]),
    serializer=st.sampled_from(
        [JsonSerializer(), MsgpackSerializer(), PickleSerializer(signing_secret="k")]
    ),
)
def test_round_trip(entry: Entry, compression: str | None, threshold: int, serializer: Any) -> None:
    codec = EntryCodec(serializer, compression=compression, compression_threshold=threshold)
    data = codec.encode(entry)
    assert data[:3] == MAGIC
    assert data[3] == 1
    assert data[5] == serializer.format_id
    assert codec.decode(data) == entry


@settings(max_examples=200, deadline=None)
@given(entry=entries, compression=st.sampled_from(COMPRESSIONS), data=st.data())
def test_any_truncation_or_bit_flip_is_corrupt_or_decodes(
    entry: Entry, compression: str | None, data: st.DataObject
) -> None:
    codec = EntryCodec(compression=compression, compression_threshold=0)
    encoded = codec.encode(entry)
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    with pytest.raises(CorruptEntryError):
        codec.decode(encoded[:cut])
    flipped = bytearray(encoded)
    position = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    flipped[position] ^= data.draw(st.integers(min_value=1, max_value=255))
    # A flipped byte may still decode (say, a digit of a number), but never raises anything else.
    try:
        result = codec.decode(bytes(flipped))
    except CorruptEntryError:
        return
    assert isinstance(result, Entry)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=200), compression=st.sampled_from([0, 1, 2, 3, 4, 255]))
def test_random_bodies_never_raise_anything_but_corrupt(body: bytes, compression: int) -> None:
    for serializer in (JsonSerializer(), MsgpackSerializer(), PickleSerializer(signing_secret="k")):
        codec = EntryCodec(serializer)
        try:
            result = codec.decode(header(compression, serializer.format_id) + body)
        except CorruptEntryError:
            continue
        assert isinstance(result, Entry)


def test_tags_and_timestamps_come_back_with_their_types() -> None:
    codec = EntryCodec()
    back = codec.decode(codec.encode(Entry({"a": 1}, 10, 20, None, 30, ("x", "y"))))
    assert back == Entry({"a": 1}, 10.0, 20.0, None, 30.0, ("x", "y"))
    assert isinstance(back.tags, tuple)
    assert isinstance(back.stored_at, float)


def test_bytearray_and_memoryview_input_decode() -> None:
    codec = EntryCodec()
    data = codec.encode(Entry("v", 1.0, None))
    assert codec.decode(bytearray(data)) == codec.decode(memoryview(data)) == Entry("v", 1.0, None)


def test_unserializable_value_raises_type_error() -> None:
    with pytest.raises(TypeError):
        EntryCodec().encode(Entry(object(), 1.0, None))


# -- compression choice ---------------------------------------------------------------------


@pytest.mark.parametrize("compression", COMPRESSIONS[1:])
def test_compression_only_at_or_above_threshold(compression: str) -> None:
    codec = EntryCodec(compression=compression, compression_threshold=1024)
    small = codec.encode(Entry("a" * 100, 1.0, None))
    assert small[4] == 0
    assert codec.decode(small).value == "a" * 100
    big = codec.encode(Entry("a" * 5000, 1.0, None))
    assert big[4] == COMPRESSION_BYTE[compression]
    assert len(big) < 1000
    assert codec.decode(big).value == "a" * 5000


@pytest.mark.parametrize("compression", COMPRESSIONS[1:])
def test_threshold_is_measured_on_the_serialized_body(compression: str) -> None:
    codec = EntryCodec(compression=compression, compression_threshold=1024)
    plain = EntryCodec()
    # Find a value whose serialized body is exactly at the threshold.
    for n in range(900, 1100):
        body_size = len(plain.encode(Entry("a" * n, 1.0, None))) - 6
        if body_size == 1024:
            break
    else:  # pragma: no cover
        pytest.fail("no value of body size 1024")
    assert codec.encode(Entry("a" * n, 1.0, None))[4] == COMPRESSION_BYTE[compression]
    assert codec.encode(Entry("a" * (n - 1), 1.0, None))[4] == 0


@pytest.mark.parametrize("compression", COMPRESSIONS[1:])
def test_incompressible_body_is_stored_plain(compression: str) -> None:
    # msgpack stores bytes raw (JSON would base64 them, which compresses a little).
    codec = EntryCodec(MsgpackSerializer(), compression=compression, compression_threshold=0)
    noise = os.urandom(4096)
    data = codec.encode(Entry(noise, 1.0, None))
    assert data[4] == 0
    assert codec.decode(data).value == noise


def test_reader_decodes_any_algorithm_whatever_its_own() -> None:
    entry = Entry("z" * 10_000, 1.0, None)
    reader = EntryCodec(compression=None)
    for compression in COMPRESSIONS[1:]:
        data = EntryCodec(compression=compression, compression_threshold=0).encode(entry)
        assert reader.decode(data) == entry


# -- malformed input ----------------------------------------------------------------------

GOOD_FIELDS: list[Any] = ["v", 1.0, 2.0, None, None, ["t"]]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "bad magic"),
        (b"hello", "bad magic"),
        (b"\x80\x04\x95pickle", "bad magic"),
        (MAGIC, "too short"),
        (MAGIC + b"\x01\x00", "too short"),
        (b"XLC\x01\x00\x01" + json_body(GOOD_FIELDS), "bad magic"),
        (header(version=2) + json_body(GOOD_FIELDS), "version 2"),
        (header(version=0) + json_body(GOOD_FIELDS), "version 0"),
        (header(compression=9) + json_body(GOOD_FIELDS), "unknown compression id 9"),
        (header(serializer=2) + json_body(GOOD_FIELDS), "serializer id 2"),
        (header(serializer=77) + json_body(GOOD_FIELDS), "serializer id 77"),
        (header() + b"", "does not deserialize"),
        (header() + b"{not json", "does not deserialize"),
        (header() + json_body({"a": 1}), "wrong shape"),
        (header() + json_body(GOOD_FIELDS[:5]), "wrong shape"),
        (header() + json_body([*GOOD_FIELDS, 1]), "wrong shape"),
        (header() + json_body(["v", "1", None, None, None, []]), "stored_at"),
        (header() + json_body(["v", True, None, None, None, []]), "stored_at"),
        (header() + json_body(["v", None, None, None, None, []]), "stored_at"),
        (header() + json_body(["v", 1, "2", None, None, []]), "timestamps"),
        (header() + json_body(["v", 1, None, [], None, []]), "timestamps"),
        (header() + json_body(["v", 1, None, None, False, []]), "timestamps"),
        (header() + json_body(["v", 1, None, None, None, "tags"]), "tags"),
        (header() + json_body(["v", 1, None, None, None, [1]]), "tags"),
        (header() + b'["v",NaN,null,null,null,[]]', "stored_at"),
        (header() + json_body(["v", 10**400, None, None, None, []]), "out of range"),
        (header(compression=1) + b"not gzip", "gzip body does not decompress"),
        (header(compression=2) + b"not brotli", "brotli body does not decompress"),
        (header(compression=3) + b"not zstd", "zstd body does not decompress"),
    ],
)
def test_malformed_entries_are_corrupt(data: bytes, message: str) -> None:
    with pytest.raises(CorruptEntryError, match=message):
        EntryCodec().decode(data)


def test_corrupt_entry_error_is_a_value_error() -> None:
    assert issubclass(CorruptEntryError, ValueError)


def test_non_bytes_input_is_corrupt() -> None:
    with pytest.raises(CorruptEntryError, match="expected bytes"):
        EntryCodec().decode("text")  # type: ignore[arg-type]


@pytest.mark.parametrize("compression", COMPRESSIONS[1:])
def test_trailing_or_missing_compressed_bytes_are_corrupt(compression: str) -> None:
    codec = EntryCodec(compression=compression, compression_threshold=0)
    data = codec.encode(Entry("x" * 50_000, 1.0, None))
    with pytest.raises(CorruptEntryError):
        codec.decode(data[:-4])
    if compression != "zstd":  # zstd ignores bytes after its frame (harmless)
        with pytest.raises(CorruptEntryError):
            codec.decode(data + b"junk")


def test_pickle_entry_from_another_secret_is_corrupt_and_not_unpickled() -> None:
    foreign = EntryCodec(PickleSerializer(signing_secret="theirs")).encode(Entry(1, 1.0, None))
    with pytest.raises(CorruptEntryError, match="signature mismatch"):
        EntryCodec(PickleSerializer(signing_secret="ours")).decode(foreign)


# -- decompression bombs ------------------------------------------------------------------


def _gzip_stream(total: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\x00" * MiB
    parts = [packer.compress(block) for _ in range(total // MiB)]
    return b"".join([*parts, packer.flush()])


def _brotli_stream(total: int) -> bytes:
    packer: Any = brotli.Compressor(quality=5)
    block = b"\x00" * MiB
    parts = [packer.process(block) for _ in range(total // MiB)]
    return b"".join([*parts, packer.finish()])


def _zstd_stream(total: int, *, with_size: bool) -> bytes:
    packer = zstandard.ZstdCompressor(level=3, write_content_size=with_size)
    if with_size:
        return bytes(packer.compress(b"\x00" * total))
    chunker: Any = packer.chunker()
    parts = [bytes(p) for _ in range(total // MiB) for p in chunker.compress(b"\x00" * MiB)]
    parts.extend(bytes(p) for p in chunker.finish())
    return b"".join(parts)


BOMBS: dict[str, tuple[int, Callable[[int], bytes]]] = {
    "gzip": (1, _gzip_stream),
    "brotli": (2, _brotli_stream),
    "zstd-sized": (3, lambda n: _zstd_stream(n, with_size=True)),
    "zstd-unsized": (3, lambda n: _zstd_stream(n, with_size=False)),
}


@pytest.mark.parametrize("kind", list(BOMBS))
def test_decompression_bomb_is_rejected_without_allocating_it(kind: str) -> None:
    compression, make = BOMBS[kind]
    bomb = header(compression) + make(64 * MiB)
    assert len(bomb) < 2 * MiB
    codec = EntryCodec(max_decompressed_size=MiB)
    tracemalloc.start()
    try:
        with pytest.raises(CorruptEntryError, match="more than 1048576 bytes"):
            codec.decode(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The bound (1 MiB) plus one output step and the bytearray's slack; never the 64 MiB.
    assert peak < 4 * MiB, f"peak {peak} bytes"


@pytest.mark.parametrize("compression", COMPRESSIONS[1:])
def test_body_exactly_at_the_bound_decodes(compression: str) -> None:
    value = "q" * 100_000
    data = EntryCodec(compression=compression, compression_threshold=0).encode(
        Entry(value, 1.0, None)
    )
    body_size = len(EntryCodec().encode(Entry(value, 1.0, None))) - 6
    assert EntryCodec(max_decompressed_size=body_size).decode(data).value == value
    with pytest.raises(CorruptEntryError, match="more than"):
        EntryCodec(max_decompressed_size=body_size - 1).decode(data)


# -- configuration and extras -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"compression": "lz4"}, "unknown compression"),
        ({"compression_threshold": -1}, "compression_threshold"),
        ({"max_decompressed_size": 0}, "max_decompressed_size"),
    ],
)
def test_bad_configuration(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EntryCodec(**kwargs)


def test_serializer_with_bad_format_id_is_refused() -> None:
    class Weird(JsonSerializer):
        format_id = 300

    with pytest.raises(ValueError, match="format_id"):
        EntryCodec(Weird())


@pytest.mark.parametrize(("compression", "module"), [("brotli", "brotli"), ("zstd", "zstandard")])
def test_missing_compression_package_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, compression: str, module: str
) -> None:
    data = EntryCodec(compression=compression, compression_threshold=0).encode(
        Entry("y" * 5000, 1.0, None)
    )
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=r"pip install 'layercache-py\[compression\]'"):
        EntryCodec(compression=compression)
    # A reader without the package treats such an entry as unreadable, not as a crash.
    with pytest.raises(CorruptEntryError, match=r"layercache-py\[compression\]"):
        EntryCodec().decode(data)


def test_gzip_needs_no_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "brotli", None)
    monkeypatch.setitem(sys.modules, "zstandard", None)
    codec = EntryCodec(compression="gzip", compression_threshold=0)
    assert codec.decode(codec.encode(Entry("g" * 3000, 1.0, None))).value == "g" * 3000


def test_zstd_frame_without_size_decodes_and_truncation_is_detected() -> None:
    body = EntryCodec().encode(Entry("w" * 20_000, 1.0, None))[6:]
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(body)
    assert zstandard.frame_content_size(frame) == -1
    data = header(3) + frame
    assert EntryCodec().decode(data).value == "w" * 20_000
    with pytest.raises(CorruptEntryError, match="zstd body does not decompress"):
        EntryCodec().decode(data[:-3])


def test_serializer_is_fixed_for_the_codecs_life() -> None:
    """decode's fast path compares a whole header built from the serializer's id once: the
    serializer cannot be swapped under it."""
    codec = EntryCodec()
    with pytest.raises(AttributeError):
        codec.serializer = MsgpackSerializer()  # type: ignore[misc]
    entry = Entry("v", 1.0, 2.0)
    assert codec.decode(codec.encode(entry)) == entry


@pytest.mark.parametrize("stored_at", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_times_leave_the_fast_path_for_the_checked_one(stored_at: str) -> None:
    """decode's inline fast path takes finite float times only; anything else gets the full
    checks (NaN is corrupt; an infinite time is a number, as it always was)."""
    codec = EntryCodec()
    data = codec.encode(Entry("v", 1.0, 2.0)).replace(b"1.0,2.0", f"{stored_at},2.0".encode())
    if stored_at == "NaN":
        with pytest.raises(CorruptEntryError, match="stored_at"):
            codec.decode(data)
    else:
        assert codec.decode(data).stored_at == float(stored_at)
