"""MessagePack serializer (the ``msgpack`` extra), with the JSON serializer's extra types."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import uuid
from collections.abc import Iterable
from typing import Any

from ._base import (
    MSGPACK_FORMAT_ID,
    NOT_A_MODEL,
    build_dataclass,
    dataclass_registry,
    dataclass_values,
    dump_model,
    type_name,
)

__all__ = ["MsgpackSerializer"]

# Extension type codes; stored in the data, so never renumber them.
_EXT_DATETIME = 1
_EXT_DATE = 2
_EXT_TIME = 3
_EXT_UUID = 4
_EXT_DECIMAL = 5
_EXT_DATACLASS = 6
_EXT_INT = 7


class MsgpackSerializer:
    """Encode values as MessagePack; faster and smaller than JSON for most values.

    Round-trips the same extra types as :class:`~layercache.serializers.JsonSerializer`
    (``datetime`` naive and aware, ``date``, ``time``, ``UUID``, ``Decimal``, registered
    dataclasses, other dataclasses as plain dicts) through MessagePack extension types. ``bytes``
    and non-string dict keys (``int``, ``float``, ``bool``, ``None``, ``bytes``) are native.
    Pydantic (v2) models are encoded as their ``model_dump(mode="json", by_alias=True)`` and
    decode as that plain data (``get(..., type=Model)`` rebuilds the model).

    Integers beyond 64 bits travel as an extension type. Caveats: tuples come back as lists,
    and so cannot be dict keys; an aware datetime comes back with a fixed-offset timezone.

    Args:
        types: Dataclass types that may be rebuilt on decode.

    Raises:
        ImportError: If ``msgpack`` is not installed.
        ValueError: If an entry of ``types`` is not a dataclass type.
    """

    format_id = MSGPACK_FORMAT_ID

    def __init__(self, types: Iterable[type] = ()) -> None:
        try:
            import msgpack
        except ImportError as exc:
            raise ImportError(
                "MsgpackSerializer needs the 'msgpack' extra: pip install 'layercache-py[msgpack]'"
            ) from exc
        self._msgpack: Any = msgpack
        self._types = dataclass_registry("MsgpackSerializer", types)

    def __repr__(self) -> str:
        return f"MsgpackSerializer(types={list(self._types.values())!r})"

    def dumps(self, obj: Any) -> bytes:
        """Encode ``obj`` as MessagePack.

        Raises:
            TypeError: If ``obj`` holds a value of an unsupported type.
        """
        return bytes(self._msgpack.packb(obj, default=self._default, use_bin_type=True))

    def loads(self, data: bytes) -> Any:
        """Decode bytes produced by :meth:`dumps`.

        Raises:
            ValueError: If ``data`` is not one well-formed MessagePack value.
        """
        try:
            return self._unpack(data)
        except ValueError:
            raise
        except Exception as exc:  # msgpack raises a mix of types for malformed input
            raise ValueError(f"malformed MessagePack payload: {exc!r}") from exc

    def _unpack(self, data: bytes) -> Any:
        # strict_map_key=False: int keys are legitimate values; raw=False: str stays str.
        return self._msgpack.unpackb(
            data, ext_hook=self._ext_hook, raw=False, strict_map_key=False, use_list=True
        )

    def _default(self, obj: Any) -> Any:
        ext = self._msgpack.ExtType
        if isinstance(obj, _dt.datetime):
            return ext(_EXT_DATETIME, obj.isoformat().encode("ascii"))
        if isinstance(obj, _dt.date):
            return ext(_EXT_DATE, obj.isoformat().encode("ascii"))
        if isinstance(obj, _dt.time):
            return ext(_EXT_TIME, obj.isoformat().encode("ascii"))
        if isinstance(obj, uuid.UUID):
            return ext(_EXT_UUID, obj.bytes)
        if isinstance(obj, decimal.Decimal):
            return ext(_EXT_DECIMAL, str(obj).encode("ascii"))
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            fields = dataclass_values(obj)
            return ext(_EXT_DATACLASS, self.dumps([type_name(type(obj)), fields]))
        if isinstance(obj, memoryview):
            return obj.tobytes()
        if isinstance(obj, int):
            # msgpack integers stop at 64 bits; larger ones travel as decimal text.
            return ext(_EXT_INT, str(int(obj)).encode("ascii"))
        dumped = dump_model(obj)
        if dumped is not NOT_A_MODEL:
            return dumped
        raise TypeError(f"MsgpackSerializer cannot encode a value of type {type(obj).__qualname__}")

    def _ext_hook(self, code: int, data: bytes) -> Any:
        if code == _EXT_DATETIME:
            return _dt.datetime.fromisoformat(data.decode("ascii"))
        if code == _EXT_DATE:
            return _dt.date.fromisoformat(data.decode("ascii"))
        if code == _EXT_TIME:
            return _dt.time.fromisoformat(data.decode("ascii"))
        if code == _EXT_UUID:
            return uuid.UUID(bytes=data)
        if code == _EXT_DECIMAL:
            try:
                return decimal.Decimal(data.decode("ascii"))
            except decimal.InvalidOperation as exc:
                raise ValueError("malformed decimal") from exc
        if code == _EXT_DATACLASS:
            decoded = self._unpack(data)
            if not (
                type(decoded) is list
                and len(decoded) == 2
                and type(decoded[0]) is str
                and type(decoded[1]) is dict
            ):
                raise ValueError("malformed dataclass value")
            cls = self._types.get(decoded[0])
            return decoded[1] if cls is None else build_dataclass(cls, decoded[1])
        if code == _EXT_INT:
            text = data.decode("ascii")
            if not text.lstrip("-").isdigit():
                raise ValueError("malformed integer")
            return int(text)
        raise ValueError(f"unknown MessagePack extension type {code}")
