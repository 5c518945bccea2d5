"""Cache snapshots: the format, its validation, signing, and atomic files.

A snapshot is a JSON-serialisable ``dict``::

    {"format": "layercache-snapshot", "version": 1, "created_at": 1718000000.0,
     "entries": [{"key": "user:1", "value": {...}, "ttl": 290.5, "stale_ttl": None,
                  "error_ttl": None, "tags": ["users"]}, ...]}

``value`` is the value as :class:`~layercache.serializers.JsonSerializer` encodes it: plain JSON
for JSON's own types, tagged objects (``{"__lc__": "datetime", "v": "..."}``) for the others
(``datetime``, ``Decimal``, ``UUID``, ``bytes``...), so every one of them comes back as its own
type. ``ttl`` is the remaining fresh lifetime in seconds (``None``: no expiry), ``stale_ttl`` and
``error_ttl`` the remaining seconds until the end of the stale-while-revalidate and
stale-if-error windows (``None``: no window).

A file holds the snapshot as UTF-8 JSON, or, signed with a secret, the envelope
``{"format": "layercache-snapshot-signed", "version": 1, "algorithm": "hmac-sha256",
"signature": <hex>, "payload": <the snapshot as a JSON string>}`` where the signature is
HMAC-SHA256 of the UTF-8 bytes of ``payload``. Reading a signed file without the secret, an
unsigned file *with* a secret, or a bad signature raises ``ValueError``.

Everything here is pure standard library and never unpickles or evaluates what it reads.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ._keys import validate_key
from ._options import coerce_options
from ._signing import coerce_secret
from .serializers import JsonSerializer

__all__ = [
    "FORMAT",
    "MAX_BYTES",
    "MAX_ENTRIES",
    "SIGNED_FORMAT",
    "VERSION",
    "SnapshotEntry",
    "coerce_base_dir",
    "decode_value",
    "dumps_snapshot",
    "encode_value",
    "loads_snapshot",
    "make_snapshot",
    "read_snapshot",
    "resolve_snapshot_path",
    "snapshot_entries",
    "validate_snapshot",
    "write_snapshot",
]

FORMAT = "layercache-snapshot"
SIGNED_FORMAT = "layercache-snapshot-signed"
VERSION = 1
ALGORITHM = "hmac-sha256"
# Default bounds of one snapshot: the number of entries, and its size as JSON text in bytes.
MAX_ENTRIES = 1_000_000
MAX_BYTES = 256 * 1024 * 1024

_ENTRY_FIELDS = frozenset({"key", "value", "ttl", "stale_ttl", "error_ttl", "tags"})
_SNAPSHOT_FIELDS = frozenset({"format", "version", "created_at", "entries"})
_SIGNED_FIELDS = frozenset({"format", "version", "algorithm", "signature", "payload"})
_SERIALIZER = JsonSerializer()

BaseDir = str | os.PathLike[str] | Literal[False] | None


@dataclass(frozen=True, slots=True)
class SnapshotEntry:
    """One validated entry of a snapshot, its value decoded.

    Attributes:
        key: The key (its user form: without a generation's ``v{N}:``).
        value: The decoded value.
        ttl: Remaining fresh seconds (``None``: no expiry).
        stale_ttl: Remaining seconds of the stale-while-revalidate window (``None``: none).
        error_ttl: Remaining seconds of the stale-if-error window (``None``: none).
        tags: The value's tags.
    """

    key: str
    value: Any
    ttl: float | None
    stale_ttl: float | None = None
    error_ttl: float | None = None
    tags: tuple[str, ...] = ()


# ---------------------------------------------------------------------------- values


def encode_value(value: Any) -> Any:
    """``value`` as the JSON tree the JsonSerializer stores (tagged types kept).

    Raises:
        ValueError: The JsonSerializer cannot encode the value.
    """
    try:
        return json.loads(_SERIALIZER.dumps(value))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(
            f"a value of type {type(value).__qualname__} cannot be put in a snapshot: {exc}"
        ) from exc


def decode_value(tree: Any) -> Any:
    """The value a JSON tree from :func:`encode_value` stands for.

    Raises:
        ValueError: A malformed tagged value.
    """
    try:
        data = json.dumps(tree, separators=(",", ":")).encode("ascii")
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"not a JSON value: {exc}") from exc
    return _SERIALIZER.loads(data)


# ---------------------------------------------------------------------------- structure


def make_snapshot(
    entries: Iterable[SnapshotEntry], *, created_at: float | None = None
) -> dict[str, Any]:
    """A snapshot ``dict`` of ``entries`` (values encoded).

    Raises:
        ValueError: A value the JsonSerializer cannot encode (the message names its key).
    """
    out: list[dict[str, Any]] = []
    for entry in entries:
        try:
            value = encode_value(entry.value)
        except ValueError as exc:
            raise ValueError(f"key {entry.key!r}: {exc}") from None
        out.append(
            {
                "key": entry.key,
                "value": value,
                "ttl": entry.ttl,
                "stale_ttl": entry.stale_ttl,
                "error_ttl": entry.error_ttl,
                "tags": list(entry.tags),
            }
        )
    return {
        "format": FORMAT,
        "version": VERSION,
        "created_at": time.time() if created_at is None else float(created_at),
        "entries": out,
    }


def _number(where: str, value: Any, *, optional: bool) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where} must be a number{' or null' if optional else ''}, not {value!r}")
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"{where} must be finite, not {value!r}")
    return result


def _bounds(max_entries: int, max_bytes: int) -> None:
    for name, bound in (("max_entries", max_entries), ("max_bytes", max_bytes)):
        if isinstance(bound, bool) or not isinstance(bound, int) or bound < 1:
            raise ValueError(f"{name} must be a positive int, not {bound!r}")


def snapshot_entries(
    snapshot: Any, *, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES
) -> list[SnapshotEntry]:
    """Validate ``snapshot`` completely and return its entries, values decoded.

    Checks the structure, every field's type, keys and tags (the rules of ``set``), that no
    key appears twice, every value (decoded), and the bounds: at most ``max_entries`` entries
    and ``max_bytes`` bytes as JSON text.

    Raises:
        ValueError: On the first problem, with a message saying what and where.
    """
    _bounds(max_entries, max_bytes)
    if not isinstance(snapshot, Mapping):
        raise ValueError(f"a snapshot is a JSON object, not {type(snapshot).__name__}")
    if snapshot.get("format") == SIGNED_FORMAT:
        raise ValueError("this is a signed snapshot file's envelope: read it with its secret")
    if snapshot.get("format") != FORMAT:
        raise ValueError(f"not a layercache snapshot (format {snapshot.get('format')!r})")
    if snapshot.get("version") != VERSION or isinstance(snapshot.get("version"), bool):
        raise ValueError(
            f"unsupported snapshot version {snapshot.get('version')!r} (this reads {VERSION})"
        )
    unknown = set(snapshot) - _SNAPSHOT_FIELDS
    missing = _SNAPSHOT_FIELDS - set(snapshot)
    if missing:
        raise ValueError(f"snapshot is missing {sorted(missing)} (truncated?)")
    if unknown:
        raise ValueError(f"snapshot has unknown fields {sorted(unknown)}")
    _number("created_at", snapshot["created_at"], optional=False)
    raw_entries = snapshot["entries"]
    if not isinstance(raw_entries, list):
        raise ValueError("snapshot 'entries' must be a list")
    if len(raw_entries) > max_entries:
        raise ValueError(
            f"snapshot has {len(raw_entries)} entries, more than the bound of {max_entries}"
        )
    try:
        size = len(json.dumps(snapshot, separators=(",", ":")).encode("utf-8", "surrogatepass"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"snapshot is not JSON-serialisable: {exc}") from None
    if size > max_bytes:
        raise ValueError(f"snapshot is {size} bytes as JSON, more than the bound of {max_bytes}")
    seen: set[str] = set()
    out: list[SnapshotEntry] = []
    for index, item in enumerate(raw_entries):
        where = f"entries[{index}]"
        if not isinstance(item, Mapping):
            raise ValueError(f"{where} must be an object")
        if "key" not in item or "value" not in item:
            raise ValueError(f"{where} needs 'key' and 'value'")
        unknown = set(item) - _ENTRY_FIELDS
        if unknown:
            raise ValueError(f"{where} has unknown fields {sorted(unknown)}")
        key = item["key"]
        try:
            validate_key(key)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: invalid key: {exc}") from None
        if key in seen:
            raise ValueError(f"{where}: key {key!r} appears twice")
        seen.add(key)
        ttl = _number(f"{where}.ttl", item.get("ttl"), optional=True)
        stale = _number(f"{where}.stale_ttl", item.get("stale_ttl"), optional=True)
        error = _number(f"{where}.error_ttl", item.get("error_ttl"), optional=True)
        tags_raw = item.get("tags", [])
        if not isinstance(tags_raw, list):
            raise ValueError(f"{where}.tags must be a list of strings")
        try:
            coerced = coerce_options({"tags": tags_raw})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}.tags: {exc}") from None
        tags = coerced.tags if coerced is not None and coerced.tags else ()
        try:
            value = decode_value(item["value"])
        except ValueError as exc:
            raise ValueError(f"{where}.value (key {key!r}): {exc}") from None
        out.append(SnapshotEntry(key, value, ttl, stale, error, tuple(tags)))
    return out


def validate_snapshot(
    snapshot: Any, *, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES
) -> None:
    """Raise ``ValueError`` unless ``snapshot`` is a valid snapshot within the bounds (see
    :func:`snapshot_entries`)."""
    snapshot_entries(snapshot, max_entries=max_entries, max_bytes=max_bytes)


# ---------------------------------------------------------------------------- text and signing


def _signature(secret: bytes, payload: bytes) -> str:
    return hmac.new(secret, payload, hashlib.sha256).hexdigest()


def dumps_snapshot(snapshot: Mapping[str, Any], *, secret: str | bytes | None = None) -> bytes:
    """The file bytes of ``snapshot`` (validated first): UTF-8 JSON, or the signed envelope.

    Raises:
        ValueError: An invalid snapshot, or an empty secret.
    """
    validate_snapshot(snapshot)
    payload = json.dumps(snapshot, ensure_ascii=True, separators=(",", ":"))
    if secret is None:
        return payload.encode("ascii")
    key = coerce_secret(secret)
    envelope = {
        "format": SIGNED_FORMAT,
        "version": VERSION,
        "algorithm": ALGORITHM,
        "signature": _signature(key, payload.encode("utf-8")),
        "payload": payload,
    }
    return json.dumps(envelope, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def loads_snapshot(
    data: bytes,
    *,
    secret: str | bytes | None = None,
    max_entries: int = MAX_ENTRIES,
    max_bytes: int = MAX_BYTES,
) -> dict[str, Any]:
    """Parse and validate a snapshot file's bytes (checking its signature with ``secret``).

    Raises:
        ValueError: Not valid UTF-8 JSON (truncated or corrupt), a signed file without the
            secret, an unsigned one with a secret, a bad signature, or an invalid snapshot.
    """
    _bounds(max_entries, max_bytes)
    # The signed envelope adds the hex signature and escapes the payload's quotes: allow it.
    if len(data) > 2 * max_bytes + 4096:
        raise ValueError(f"snapshot file is {len(data)} bytes, more than the bound of {max_bytes}")
    try:
        text = data.decode("utf-8")
        parsed = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(
            f"snapshot file is not valid JSON (truncated or corrupt?): {exc}"
        ) from None
    if isinstance(parsed, dict) and parsed.get("format") == SIGNED_FORMAT:
        if secret is None:
            raise ValueError("snapshot file is signed: give the secret to read it")
        if set(parsed) != _SIGNED_FIELDS:
            raise ValueError(f"signed snapshot envelope has fields {sorted(parsed)}")
        if parsed["version"] != VERSION or parsed["algorithm"] != ALGORITHM:
            raise ValueError(
                f"unsupported signed snapshot (version {parsed['version']!r}, "
                f"algorithm {parsed['algorithm']!r})"
            )
        payload, signature = parsed["payload"], parsed["signature"]
        if not isinstance(payload, str) or not isinstance(signature, str):
            raise ValueError("signed snapshot envelope: payload and signature must be strings")
        expected = _signature(coerce_secret(secret), payload.encode("utf-8", "surrogatepass"))
        if not hmac.compare_digest(expected, signature.lower()):
            raise ValueError("snapshot signature does not match: wrong secret or altered file")
        try:
            parsed = json.loads(payload)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise ValueError(f"signed snapshot payload is not valid JSON: {exc}") from None
    elif secret is not None:
        raise ValueError("snapshot file is not signed, but a secret was given: refusing it")
    validate_snapshot(parsed, max_entries=max_entries, max_bytes=max_bytes)
    assert isinstance(parsed, dict)
    return parsed


# ---------------------------------------------------------------------------- files


def resolve_snapshot_path(path: str | os.PathLike[str], base_dir: BaseDir = None) -> Path:
    """The real path of a snapshot file, confined to ``base_dir``.

    ``base_dir`` ``None``: the current working directory; ``False``: no confinement. A relative
    ``path`` is taken relative to ``base_dir`` (to the working directory without one). Symlinks
    and ``..`` are resolved first, so neither can lead out of ``base_dir``.

    Raises:
        ValueError: The path resolves outside ``base_dir``, or names a directory.
    """
    if isinstance(path, bytes) or not isinstance(path, str | os.PathLike):
        raise ValueError(f"a snapshot path is a str or os.PathLike, not {type(path).__name__}")
    raw = Path(path)
    if str(raw) in ("", "."):
        raise ValueError("a snapshot path must name a file")
    if base_dir is False:
        resolved = raw.resolve()
    else:
        base = Path.cwd().resolve() if base_dir is None else Path(base_dir).resolve()
        resolved = (base / raw).resolve()  # an absolute ``raw`` replaces ``base``
        if not resolved.is_relative_to(base) or resolved == base:
            raise ValueError(
                f"snapshot path {str(path)!r} resolves outside snapshot_base_dir {str(base)!r}"
            )
    if resolved.is_dir():
        raise ValueError(f"snapshot path {str(path)!r} is a directory")
    return resolved


def coerce_base_dir(value: Any) -> Path | Literal[False]:
    """The ``snapshot_base_dir`` stack option: ``None`` (or ``True``) is the current working
    directory now, ``False`` lifts the confinement, a path is resolved now (symlinks too).

    Raises:
        ValueError: Any other value.
    """
    if value is False:
        return False
    if value is None or value is True:
        return Path.cwd().resolve()
    if isinstance(value, str | os.PathLike) and not isinstance(value, bytes):
        if str(value) == "":
            raise ValueError("snapshot_base_dir must not be empty (False lifts it)")
        return Path(value).resolve()
    raise ValueError(f"snapshot_base_dir must be a path, None or False, not {value!r}")


def write_snapshot(
    snapshot: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    secret: str | bytes | None = None,
    base_dir: BaseDir = None,
) -> Path:
    """Write ``snapshot`` to ``path`` atomically; returns the real path written.

    The bytes go to a temporary file in the same directory, which is flushed, fsynced and
    renamed over ``path`` (then the directory is fsynced): a reader sees the old file or the
    new one, never a part. ``secret`` signs the file (HMAC-SHA256).

    Raises:
        ValueError: An invalid snapshot, or a path outside ``base_dir`` (see
            :func:`resolve_snapshot_path`).
        OSError: The file could not be written (nothing is left behind).
    """
    target = resolve_snapshot_path(path, base_dir)
    data = dumps_snapshot(snapshot, secret=secret)
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
    try:
        dir_fd = os.open(target.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - platforms without directory fds
        return target
    try:
        os.fsync(dir_fd)
    except OSError:  # pragma: no cover - file systems that refuse a directory fsync
        pass
    finally:
        os.close(dir_fd)
    return target


def read_snapshot(
    path: str | os.PathLike[str],
    *,
    secret: str | bytes | None = None,
    base_dir: BaseDir = None,
    max_entries: int = MAX_ENTRIES,
    max_bytes: int = MAX_BYTES,
) -> dict[str, Any]:
    """Read and fully validate a snapshot file (see :func:`loads_snapshot`).

    Raises:
        ValueError: A path outside ``base_dir``, a file over the bounds, a corrupt,
            truncated, unsigned-but-expected, signed-but-unexpected or mis-signed file.
        OSError: The file cannot be read (``FileNotFoundError`` when it does not exist).
    """
    _bounds(max_entries, max_bytes)
    target = resolve_snapshot_path(path, base_dir)
    # O_NOFOLLOW: a symlink put in place after the path was resolved is refused, not followed.
    fd = os.open(target, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as handle:
        limit = 2 * max_bytes + 4096
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(
            f"snapshot file {str(path)!r} is larger than the bound of {max_bytes} bytes"
        )
    return loads_snapshot(data, secret=secret, max_entries=max_entries, max_bytes=max_bytes)
