"""The serializer protocol and the format ids that tag encoded entries."""

from __future__ import annotations

import dataclasses
import inspect
import sys
from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

__all__ = ["JSON_FORMAT_ID", "MSGPACK_FORMAT_ID", "NOT_A_MODEL", "PICKLE_FORMAT_ID", "Serializer"]

# Format ids are written into every stored entry (see layercache._codec); they must never be
# renumbered, or entries written by an older release would decode with the wrong serializer.
JSON_FORMAT_ID = 1
MSGPACK_FORMAT_ID = 2
PICKLE_FORMAT_ID = 3


@runtime_checkable
class Serializer(Protocol):
    """Turns values into bytes and back.

    ``format_id`` is a small integer (0-255) stored beside the bytes so that a reader can tell
    which serializer wrote them; it must be stable across releases. ``loads`` receives bytes
    that may come from anywhere (another program writing to the same Redis, a damaged file): it
    must raise an exception on malformed input and must never execute code taken from it.
    """

    @property
    def format_id(self) -> int:
        """Stable one-byte id of the wire format."""
        ...

    def dumps(self, obj: Any) -> bytes:
        """Encode ``obj``; raise ``TypeError`` for values the format cannot represent."""
        ...

    def loads(self, data: bytes) -> Any:
        """Decode ``data``; raise ``ValueError`` (or another exception) when it is malformed."""
        ...


def type_name(cls: type) -> str:
    """The name a dataclass is stored under: ``module.QualName``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def dataclass_registry(owner: str, types: Iterable[type]) -> dict[str, type]:
    """Map stored names to the dataclass types a serializer may rebuild."""
    registry: dict[str, type] = {}
    for cls in types:
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise ValueError(f"{owner}(types=...) accepts dataclass types, got {cls!r}")
        registry[type_name(cls)] = cls
    return registry


def dataclass_values(obj: Any) -> dict[str, Any]:
    """A dataclass instance's fields as stored: every field, except one set outside
    ``__init__`` whose value is a method bound to the instance (behaviour, not data: a
    Strawberry type's resolver field is such a dataclass field)."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if not field.init and inspect.ismethod(value) and value.__self__ is obj:
            continue
        values[field.name] = value
    return values


def build_dataclass(cls: type, values: dict[str, Any]) -> Any:
    """Rebuild ``cls`` through its ``__init__``; a schema mismatch raises ``ValueError``."""
    declared = {f.name: f for f in dataclasses.fields(cls)}
    unknown = values.keys() - declared.keys()
    if unknown:
        raise ValueError(f"stored {cls.__qualname__} has unknown fields {sorted(unknown)!r}")
    init_args = {k: v for k, v in values.items() if declared[k].init}
    try:
        obj = cls(**init_args)
    except TypeError as exc:
        raise ValueError(f"cannot rebuild {cls.__qualname__}: {exc}") from exc
    for name, value in values.items():
        if not declared[name].init:
            # object.__setattr__ also works for frozen dataclasses.
            object.__setattr__(obj, name, value)
    return obj


#: Returned by :func:`dump_model` for a value that is not a Pydantic model.
NOT_A_MODEL: Any = object()


def dump_model(obj: Any) -> Any:
    """A Pydantic (v2) model as plain JSON data, or :data:`NOT_A_MODEL`.

    ``model_dump(mode="json", by_alias=True, round_trip=True)``: datetimes, UUIDs, decimals
    and enums become JSON text and numbers, which the model validates back from (``get(...,
    type=Model)`` or ``wrap``'s return annotation rebuilds it). Pydantic is never imported
    here: a value can only be one of its models when the application imported it already.

    Raises:
        TypeError: The model has a field Pydantic cannot dump as JSON.
    """
    pydantic = sys.modules.get("pydantic")
    if pydantic is None:
        return NOT_A_MODEL
    base = getattr(pydantic, "BaseModel", None)
    if base is None or not isinstance(obj, base) or not hasattr(obj, "model_dump"):
        return NOT_A_MODEL
    try:
        return obj.model_dump(mode="json", by_alias=True, round_trip=True)
    except ValueError as exc:  # PydanticSerializationError
        raise TypeError(f"cannot dump {type(obj).__qualname__} as JSON: {exc}") from exc
