"""The byte encoding of an :class:`~layercache.Entry`, shared by the Redis and disk layers.

Wire format (version 1)::

    offset  size  field
    0       3     magic b"\\xc1LC"   (0xC1 never starts valid UTF-8 text, nor a msgpack value)
    3       1     format version (1)
    4       1     compression: 0 none, 1 gzip, 2 brotli, 3 zstd
    5       1     serializer format id (see layercache.serializers)
    6       ...   body: the serializer's encoding of
                  [value, stored_at, fresh_until, stale_until, error_until, [tags...]],
                  compressed when the compression byte is not 0

Decoding treats its input as untrusted: anything that is not exactly such an entry raises
:class:`CorruptEntryError`, and decompression stops as soon as the output would exceed
``max_decompressed_size``, so a small "bomb" never allocates past that bound.
"""

from __future__ import annotations

import math
import zlib
from math import isfinite
from typing import Any, Final

from ._entry import Entry
from ._exceptions import UnserializableValueError
from .serializers import JsonSerializer, Serializer

__all__ = ["COMPRESSIONS", "CorruptEntryError", "EntryCodec", "UnserializableValueError"]

MAGIC: Final = b"\xc1LC"
VERSION: Final = 1
HEADER_SIZE: Final = len(MAGIC) + 3

_NONE, _GZIP, _BROTLI, _ZSTD = 0, 1, 2, 3
COMPRESSIONS: Final = {"gzip": _GZIP, "brotli": _BROTLI, "zstd": _ZSTD}
_COMPRESSION_NAMES: Final = {v: k for k, v in COMPRESSIONS.items()}

# Output is produced in steps this large, so the bound is overshot by at most about one step.
_STEP: Final = 64 * 1024
_GZIP_WBITS: Final = 16 + zlib.MAX_WBITS
_COMPRESSION_EXTRA = "pip install 'layercache-py[compression]'"


class CorruptEntryError(ValueError):
    """Stored bytes are not a valid entry (foreign, damaged, truncated, or too large)."""


def _import_brotli() -> Any:
    try:
        import brotli
    except ImportError as exc:
        raise ImportError(
            f"brotli compression needs the 'compression' extra: {_COMPRESSION_EXTRA}"
        ) from exc
    if not hasattr(brotli.Decompressor, "can_accept_more_data"):
        # Older releases cannot bound a decompression's output; refuse rather than risk a bomb.
        raise ImportError(
            f"brotli >= 1.2 is required for bounded decompression: {_COMPRESSION_EXTRA}"
        )
    return brotli


def _import_zstd() -> Any:
    try:
        import zstandard
    except ImportError as exc:
        raise ImportError(
            f"zstd compression needs the 'compression' extra: {_COMPRESSION_EXTRA}"
        ) from exc
    return zstandard


class EntryCodec:
    """Encode entries to bytes and decode them back, with optional compression.

    Args:
        serializer: Serializer of the entry body; default :class:`JsonSerializer`.
        compression: ``None``, ``"gzip"``, ``"brotli"`` or ``"zstd"`` (the last two need the
            ``compression`` extra).
        compression_threshold: Bodies shorter than this many bytes are stored uncompressed.
            A compressed body that is not smaller than the plain one is also stored plain.
        max_decompressed_size: Largest body decompression may produce; larger ones are
            rejected as corrupt without being allocated.

    Raises:
        ValueError: On an unknown compression name or a negative bound.
        ImportError: When the chosen compression's package is missing.
    """

    __slots__ = (
        "_brotli",
        "_compression_id",
        "_plain_header",
        "_serializer",
        "_zstd",
        "_zstd_compressor",
        "compression",
        "compression_threshold",
        "max_decompressed_size",
    )

    def __init__(
        self,
        serializer: Serializer | None = None,
        compression: str | None = None,
        compression_threshold: int = 1024,
        max_decompressed_size: int = 64 * 1024 * 1024,
    ) -> None:
        if compression is not None and compression not in COMPRESSIONS:
            raise ValueError(
                f"unknown compression {compression!r}; choose None, 'gzip', 'brotli' or 'zstd'"
            )
        if compression_threshold < 0:
            raise ValueError("compression_threshold must be >= 0")
        if max_decompressed_size <= 0:
            raise ValueError("max_decompressed_size must be > 0")
        self._serializer: Serializer = serializer if serializer is not None else JsonSerializer()
        fid = self._serializer.format_id
        if not (isinstance(fid, int) and 0 <= fid <= 255):
            raise ValueError(f"serializer format_id must be an int in 0..255, got {fid!r}")
        # The header of an uncompressed entry of this serializer: what decode's fast path
        # compares a whole header with (the serializer is fixed for the codec's life).
        self._plain_header = MAGIC + bytes((VERSION, _NONE, fid))
        self.compression = compression
        self.compression_threshold = compression_threshold
        self.max_decompressed_size = max_decompressed_size
        self._compression_id = _NONE if compression is None else COMPRESSIONS[compression]
        # Only the configured algorithm's package is required to encode, but any entry in the
        # store may have been written with another algorithm: those import lazily on decode.
        self._brotli: Any = _import_brotli() if compression == "brotli" else None
        self._zstd: Any = _import_zstd() if compression == "zstd" else None
        self._zstd_compressor: Any = None

    @property
    def serializer(self) -> Serializer:
        """The serializer of entry bodies (fixed when the codec is built)."""
        return self._serializer

    def __repr__(self) -> str:
        return (
            f"EntryCodec(serializer={self.serializer!r}, compression={self.compression!r}, "
            f"compression_threshold={self.compression_threshold}, "
            f"max_decompressed_size={self.max_decompressed_size})"
        )

    # -- encoding -------------------------------------------------------------------------

    def encode(self, entry: Entry) -> bytes:
        """Encode ``entry`` (header + possibly compressed serialized body).

        Raises:
            UnserializableValueError: If the entry's value cannot be serialized.
        """
        try:
            body = self._serializer.dumps(
                [
                    entry.value,
                    entry.stored_at,
                    entry.fresh_until,
                    entry.stale_until,
                    entry.error_until,
                    list(entry.tags),
                ]
            )
        except Exception as exc:
            raise UnserializableValueError(
                f"the value cannot be serialized by {type(self._serializer).__name__}: {exc!r}"
            ) from exc
        method = _NONE
        if self._compression_id != _NONE and len(body) >= self.compression_threshold:
            packed = self._compress(body)
            # Incompressible data (already compressed media, random bytes) is kept plain.
            if len(packed) < len(body):
                body, method = packed, self._compression_id
        if method == _NONE:
            return self._plain_header + body
        return MAGIC + bytes((VERSION, method, self._serializer.format_id)) + body

    def _compress(self, body: bytes) -> bytes:
        if self._compression_id == _GZIP:
            compressor = zlib.compressobj(6, zlib.DEFLATED, _GZIP_WBITS)
            return compressor.compress(body) + compressor.flush()
        if self._compression_id == _BROTLI:
            # Quality 5 is far faster than the default 11 for a small loss of ratio: a cache
            # compresses on every write.
            return bytes(self._brotli.compress(body, quality=5))
        if self._zstd_compressor is None:
            self._zstd_compressor = self._zstd.ZstdCompressor(level=3, write_content_size=True)
        return bytes(self._zstd_compressor.compress(body))

    # -- decoding -------------------------------------------------------------------------

    def decode(self, data: bytes | bytearray | memoryview) -> Entry:
        """Decode bytes produced by :meth:`encode`.

        Raises:
            CorruptEntryError: If ``data`` is not a well-formed entry of this codec's serializer,
                or decompresses past ``max_decompressed_size``.
        """
        # Fast path (every L2 hit): bytes holding an uncompressed entry of this serializer,
        # the whole header checked by one comparison. Anything else takes the checked path.
        if data.__class__ is bytes and data[:HEADER_SIZE] == self._plain_header:
            try:
                fields = self._serializer.loads(data[HEADER_SIZE:])
            except Exception as exc:
                raise CorruptEntryError(f"entry body does not deserialize: {exc}") from exc
            # The common shape checked inline (as in _entry_from_fields, which checks the rest):
            # float times (``t - t == 0.0`` is false for inf and nan), no windows, no tags.
            if fields.__class__ is list and len(fields) == 6:
                value, stored_at, fresh_until, stale_until, error_until, tags = fields
                if (
                    stored_at.__class__ is float
                    and stored_at - stored_at == 0.0
                    and (
                        fresh_until is None
                        or (fresh_until.__class__ is float and fresh_until - fresh_until == 0.0)
                    )
                    and stale_until is None
                    and error_until is None
                    and tags.__class__ is list
                    and not tags
                ):
                    return Entry(value, stored_at, fresh_until)
            return _entry_from_fields(fields)
        return self._decode_checked(data)

    def _decode_checked(self, data: bytes | bytearray | memoryview) -> Entry:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise CorruptEntryError(f"expected bytes, got {type(data).__name__}")
        view = bytes(data) if not isinstance(data, bytes) else data
        if len(view) < HEADER_SIZE or view[: len(MAGIC)] != MAGIC:
            raise CorruptEntryError("not a layercache entry (bad magic or too short)")
        version, method, fid = view[3], view[4], view[5]
        if version != VERSION:
            raise CorruptEntryError(f"unsupported entry format version {version}")
        if fid != self._serializer.format_id:
            raise CorruptEntryError(
                f"entry was written by serializer id {fid}, this codec uses "
                f"{self._serializer.format_id}"
            )
        body = view[HEADER_SIZE:]
        if method != _NONE:
            body = self._decompress(method, body)
        try:
            fields = self._serializer.loads(body)
        except Exception as exc:
            raise CorruptEntryError(f"entry body does not deserialize: {exc}") from exc
        return _entry_from_fields(fields)

    def _decompress(self, method: int, body: bytes) -> bytes:
        limit = self.max_decompressed_size
        try:
            if method == _GZIP:
                return _gunzip_bounded(body, limit)
            if method == _BROTLI:
                if self._brotli is None:
                    self._brotli = _import_brotli()
                return _unbrotli_bounded(self._brotli, body, limit)
            if method == _ZSTD:
                if self._zstd is None:
                    self._zstd = _import_zstd()
                return _unzstd_bounded(self._zstd, body, limit)
        except CorruptEntryError:
            raise
        except ImportError as exc:
            # Another writer used an algorithm this process lacks: unreadable here, not fatal.
            raise CorruptEntryError(str(exc)) from exc
        except Exception as exc:  # zlib.error, brotli.error, zstandard.ZstdError, ...
            name = _COMPRESSION_NAMES.get(method, "?")
            raise CorruptEntryError(f"{name} body does not decompress: {exc}") from exc
        raise CorruptEntryError(f"unknown compression id {method}")


def _too_large(limit: int) -> CorruptEntryError:
    return CorruptEntryError(f"entry decompresses to more than {limit} bytes")


def _gunzip_bounded(body: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(_GZIP_WBITS)
    out = bytearray()
    pending = body
    while not inflater.eof:
        # max_length caps what zlib produces per call; the rest of the input waits in
        # unconsumed_tail, so memory never grows past the bound plus one step.
        chunk = inflater.decompress(pending, min(_STEP, limit - len(out) + 1))
        pending = inflater.unconsumed_tail
        if not chunk and not pending:
            raise CorruptEntryError("gzip body is truncated")
        out += chunk
        if len(out) > limit:
            raise _too_large(limit)
    if inflater.unused_data:
        raise CorruptEntryError("trailing bytes after the gzip body")
    return bytes(out)


def _unbrotli_bounded(brotli: Any, body: bytes, limit: int) -> bytes:
    decompressor = brotli.Decompressor()
    out = bytearray()
    chunk = decompressor.process(body, output_buffer_limit=_STEP)
    while True:
        out += chunk
        if len(out) > limit:
            raise _too_large(limit)
        if decompressor.is_finished():
            return bytes(out)
        # With output_buffer_limit the decoder hands output out in pieces; empty input asks
        # for the next piece. No output while it wants more input means the body is cut short.
        chunk = decompressor.process(b"", output_buffer_limit=_STEP)
        if not chunk and decompressor.can_accept_more_data():
            raise CorruptEntryError("brotli body is truncated")


def _unzstd_bounded(zstandard: Any, body: bytes, limit: int) -> bytes:
    declared = zstandard.frame_content_size(body)
    if declared > limit:
        raise _too_large(limit)
    decompressor = zstandard.ZstdDecompressor()
    if declared >= 0:
        # The frame states its size (our writer always does): zstd allocates exactly that and
        # fails if the content does not match it.
        return bytes(decompressor.decompress(body))
    # A frame without a size (not written by us): read it in bounded steps...
    reader = decompressor.stream_reader(body, read_across_frames=False)
    out = bytearray()
    while chunk := reader.read(min(_STEP, limit - len(out) + 1)):
        out += chunk
        if len(out) > limit:
            raise _too_large(limit)
    # ...then, since a stream reader does not report a frame cut short, check the frame is
    # complete; its size is now known to be within the bound.
    decompressor.decompress(body, max_output_size=max(len(out), 1))
    return bytes(out)


def _is_number(value: Any) -> bool:
    return (type(value) is float and not math.isnan(value)) or (
        isinstance(value, int) and not isinstance(value, bool)
    )


def _is_time_or_none(value: Any) -> bool:
    return value is None or _is_number(value)


def _entry_from_fields(fields: Any) -> Entry:
    # Fast path for the common shape (float times, no windows, no tags); anything else takes
    # the fully checked path below.
    if type(fields) is list and len(fields) == 6:
        value, stored_at, fresh_until, stale_until, error_until, tags = fields
        if (
            type(stored_at) is float
            and isfinite(stored_at)
            and (fresh_until is None or (type(fresh_until) is float and isfinite(fresh_until)))
            and stale_until is None
            and error_until is None
            and type(tags) is list
            and not tags
        ):
            return Entry(value, stored_at, fresh_until)
    if not isinstance(fields, list | tuple) or len(fields) != 6:
        raise CorruptEntryError("entry body has the wrong shape")
    value, stored_at, fresh_until, stale_until, error_until, tags = fields
    if not _is_number(stored_at):
        raise CorruptEntryError("entry stored_at is not a number")
    if not (
        _is_time_or_none(fresh_until)
        and _is_time_or_none(stale_until)
        and _is_time_or_none(error_until)
    ):
        raise CorruptEntryError("entry timestamps are not numbers")
    if not isinstance(tags, list | tuple) or not all(type(t) is str for t in tags):
        raise CorruptEntryError("entry tags are not a list of strings")
    try:
        return Entry(
            value=value,
            stored_at=float(stored_at),
            fresh_until=None if fresh_until is None else float(fresh_until),
            stale_until=None if stale_until is None else float(stale_until),
            error_until=None if error_until is None else float(error_until),
            tags=tuple(tags),
        )
    except OverflowError as exc:  # an int timestamp too large for a float
        raise CorruptEntryError("entry timestamp out of range") from exc
