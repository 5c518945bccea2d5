"""JSON serializer (the default): the standard library only, plus a few tagged extra types."""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import decimal
import json
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from ._base import (
    JSON_FORMAT_ID,
    NOT_A_MODEL,
    build_dataclass,
    dataclass_registry,
    dataclass_values,
    dump_model,
    type_name,
)

__all__ = ["JsonSerializer"]

try:  # orjson parses the same JSON 2-3x faster; optional (installed with the redis extra)
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised where orjson is absent
    _orjson = None  # type: ignore[assignment]


def _loads(data: bytes) -> Any:
    """``json.loads`` semantics, through orjson when it is installed.

    orjson refuses a few things the standard library accepts and ``dumps`` may produce (NaN and
    Infinity, integers beyond 64 bits, lone surrogates): those fall back to ``json.loads``, so
    the result never depends on which parser ran.
    """
    if _orjson is not None and type(data) is bytes:
        try:
            return _orjson.loads(data)
        except _orjson.JSONDecodeError:
            pass
    return json.loads(data)


# Extra types travel as a JSON object carrying this key. A user dict that itself has this key is
# wrapped in an "esc" object so it can never be mistaken for a tagged value.
_TAG = "__lc__"
_TAG_BYTES = b'"__lc__"'
_INT_MIN = -(2**63)
_INT_MAX = 2**63 - 1
_SEPARATORS = (",", ":")


def _hashable(value: Any) -> Any:
    # Only hashable values can be dict keys, so a list met as a decoded key was a tuple.
    if type(value) is list:
        return tuple(_hashable(v) for v in value)
    return value


class JsonSerializer:
    """Encode values as UTF-8 JSON, with round-trips for common non-JSON types.

    Besides JSON's own types (``None``, ``bool``, ``int``, ``float``, ``str``, ``list``,
    ``dict``) it round-trips ``datetime.datetime`` (naive and aware), ``datetime.date``,
    ``datetime.time``, ``uuid.UUID``, ``decimal.Decimal``, ``bytes`` (``bytearray`` and
    ``memoryview`` come back as ``bytes``), dicts with non-string keys, and dataclass instances.
    Pydantic (v2) models are encoded as their ``model_dump(mode="json", by_alias=True)`` and
    decode as that plain data (``get(..., type=Model)`` rebuilds the model).

    Caveats, all inherent to JSON:

    * tuples come back as lists (except as dict keys, where they come back as tuples);
    * an aware datetime comes back with a fixed-offset ``datetime.timezone`` (the same instant
      and offset, but a ``zoneinfo`` name is not kept); ``fold`` is not kept;
    * ``str``/``int``/``float`` subclasses (enums included) come back as the base type.

    Dataclasses are stored with their ``module.QualName``. They are rebuilt (through their
    ``__init__``, so ``__post_init__`` validation runs) only when their class was registered
    with ``types=``; any other dataclass decodes as a plain ``dict`` of its fields. Nothing is
    ever imported or evaluated on the strength of the stored bytes.

    Args:
        types: Dataclass types that may be rebuilt on decode.

    Raises:
        ValueError: If an entry of ``types`` is not a dataclass type.
    """

    format_id = JSON_FORMAT_ID

    def __init__(self, types: Iterable[type] = ()) -> None:
        self._types = dataclass_registry("JsonSerializer", types)

    def __repr__(self) -> str:
        return f"JsonSerializer(types={list(self._types.values())!r})"

    def dumps(self, obj: Any) -> bytes:
        """Encode ``obj`` as UTF-8 JSON.

        Raises:
            TypeError: If ``obj`` holds a value of an unsupported type.
        """
        tree = self._encode(obj)
        # surrogatepass: a lone surrogate in a str survives (json.loads decodes bytes the same way).
        return json.dumps(tree, ensure_ascii=False, separators=_SEPARATORS).encode(
            "utf-8", "surrogatepass"
        )

    def loads(self, data: bytes) -> Any:
        """Decode bytes produced by :meth:`dumps`.

        Raises:
            ValueError: If ``data`` is not valid JSON or holds a malformed tagged value.
        """
        try:
            decoded = _loads(data)
            # Tagged values and escaped user dicts always carry the tag as a JSON key; bytes
            # without it decode to exactly what json.loads gives, so skip the tree walk.
            if isinstance(data, bytes) and _TAG_BYTES not in data:
                return decoded
            return self._decode(decoded)
        except ValueError:
            raise
        except (TypeError, KeyError, AttributeError, RecursionError) as exc:
            raise ValueError(f"malformed JSON payload: {exc!r}") from exc

    # -- encoding -------------------------------------------------------------------------

    def _encode(self, obj: Any) -> Any:
        kind = type(obj)
        if obj is None or kind is str or kind is float or kind is bool:
            return obj
        if kind is int:
            # Integers beyond 64 bits travel as text: orjson (the fast decoder) would read
            # them back as floats.
            return obj if _INT_MIN <= obj <= _INT_MAX else {_TAG: "int", "v": str(obj)}
        if kind is list or kind is tuple:
            return [self._encode(item) for item in obj]
        if kind is dict:
            return self._encode_dict(obj)
        if isinstance(obj, int) and not _INT_MIN <= obj <= _INT_MAX:
            return {_TAG: "int", "v": str(int(obj))}
        if isinstance(obj, str | int | float):
            return obj
        # datetime is a subclass of date: test it first.
        if isinstance(obj, _dt.datetime):
            return {_TAG: "datetime", "v": obj.isoformat()}
        if isinstance(obj, _dt.date):
            return {_TAG: "date", "v": obj.isoformat()}
        if isinstance(obj, _dt.time):
            return {_TAG: "time", "v": obj.isoformat()}
        if isinstance(obj, uuid.UUID):
            return {_TAG: "uuid", "v": str(obj)}
        if isinstance(obj, decimal.Decimal):
            return {_TAG: "decimal", "v": str(obj)}
        if isinstance(obj, bytes | bytearray | memoryview):
            return {_TAG: "bytes", "v": base64.b64encode(obj).decode("ascii")}
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            fields = dataclass_values(obj)
            return {_TAG: "dataclass", "t": type_name(type(obj)), "v": self._encode_dict(fields)}
        if isinstance(obj, Mapping):
            return self._encode_dict(obj)
        if isinstance(obj, list | tuple):
            return [self._encode(item) for item in obj]
        dumped = dump_model(obj)
        if dumped is not NOT_A_MODEL:
            return self._encode(dumped)
        raise TypeError(f"JsonSerializer cannot encode a value of type {kind.__qualname__}")

    def _encode_dict(self, obj: Mapping[Any, Any]) -> Any:
        if all(type(k) is str for k in obj):
            body = {k: self._encode(v) for k, v in obj.items()}
            return {_TAG: "escaped", "v": body} if _TAG in body else body
        return {_TAG: "map", "v": [[self._encode(k), self._encode(v)] for k, v in obj.items()]}

    # -- decoding -------------------------------------------------------------------------

    def _decode(self, node: Any) -> Any:
        kind = type(node)
        if kind is list:
            return [self._decode(item) for item in node]
        if kind is not dict:
            return node
        if _TAG not in node:
            return {k: self._decode(v) for k, v in node.items()}
        tag = node[_TAG]
        payload = node["v"]
        if tag == "escaped":
            if type(payload) is not dict:
                raise ValueError("malformed escaped object")
            return {k: self._decode(v) for k, v in payload.items()}
        if tag == "map":
            return {_hashable(self._decode(k)): self._decode(v) for k, v in payload}
        if tag == "dataclass":
            return self._decode_dataclass(node["t"], self._decode(payload))
        if type(payload) is not str:
            raise ValueError(f"malformed tagged value {tag!r}")
        if tag == "datetime":
            return _dt.datetime.fromisoformat(payload)
        if tag == "date":
            return _dt.date.fromisoformat(payload)
        if tag == "time":
            return _dt.time.fromisoformat(payload)
        if tag == "uuid":
            return uuid.UUID(payload)
        if tag == "decimal":
            try:
                return decimal.Decimal(payload)
            except decimal.InvalidOperation as exc:
                raise ValueError(f"malformed decimal {payload[:40]!r}") from exc
        if tag == "bytes":
            return base64.b64decode(payload, validate=True)
        if tag == "int":
            return int(payload)
        raise ValueError(f"unknown tagged value {str(tag)[:40]!r}")

    def _decode_dataclass(self, name: Any, fields: Any) -> Any:
        if type(name) is not str or type(fields) is not dict:
            raise ValueError("malformed dataclass value")
        cls = self._types.get(name)
        if cls is None:
            return fields
        return build_dataclass(cls, fields)
