"""Typed values (layercache._typed): rebuilding decoded values as the type the caller named.

Both rebuilds are covered: through ``pydantic.TypeAdapter`` (Pydantic installed, the default)
and the standard-library one that runs without Pydantic (``use_pydantic=False``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import functools
import subprocess
import sys
import typing
import uuid
from collections.abc import Awaitable
from typing import Any, Literal, Optional, Union

import pydantic
import pytest

from layercache._typed import (
    StoredValueTypeError,
    _pydantic,
    build_converter,
    converter_for,
    return_type,
)
from layercache.serializers import JsonSerializer, MsgpackSerializer


@dataclasses.dataclass(frozen=True)
class Address:
    city: str
    zip: str = "00000"


@dataclasses.dataclass
class Person:
    name: str
    address: Address
    tags: list[str] = dataclasses.field(default_factory=list)
    born: dt.date | None = None


@dataclasses.dataclass
class Node:
    label: str
    children: list[Node] = dataclasses.field(default_factory=list)


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Order(pydantic.BaseModel):
    id: uuid.UUID
    placed_at: dt.datetime
    total: decimal.Decimal
    color: Color = Color.RED
    note: str | None = None


class Aliased(pydantic.BaseModel):
    user_id: int = pydantic.Field(alias="userId")


MODES = [pytest.param(None, id="pydantic"), pytest.param(False, id="stdlib")]


def convert(tp: Any, value: Any, use_pydantic: bool | None) -> Any:
    converter = build_converter(tp, use_pydantic=use_pydantic)
    assert converter is not None
    return converter(value)


def order() -> Order:
    return Order(
        id=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        placed_at=dt.datetime(2026, 5, 1, 12, 30, tzinfo=dt.timezone.utc),
        total=decimal.Decimal("19.90"),
        color=Color.BLUE,
    )


def person() -> Person:
    return Person("Ada", Address("London", "N1"), ["x"], dt.date(1815, 12, 10))


# -- nothing to convert -------------------------------------------------------------------------


@pytest.mark.parametrize("tp", [Any, object, None, type(None)])
def test_any_object_and_none_need_no_converter(tp: Any) -> None:
    assert converter_for(tp) is None


@pytest.mark.parametrize("bad", [5, "User", Person("a", Address("b"))])
def test_a_non_type_is_refused(bad: Any) -> None:
    with pytest.raises(TypeError, match="must be a type"):
        converter_for(bad)


# -- dataclasses (both rebuilds) ----------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_nested_dataclass_from_its_fields(mode: bool | None) -> None:
    fields = {
        "name": "Ada",
        "address": {"city": "London", "zip": "N1"},
        "tags": ["x"],
        "born": dt.date(1815, 12, 10),
    }
    assert convert(Person, fields, mode) == person()


@pytest.mark.parametrize("mode", MODES)
def test_through_the_serializers(mode: bool | None) -> None:
    for serializer in (JsonSerializer(), MsgpackSerializer()):
        decoded = serializer.loads(serializer.dumps(person()))
        assert decoded != person(), "an unregistered dataclass decodes as its fields"
        assert convert(Person, decoded, mode) == person()


@pytest.mark.parametrize("mode", MODES)
def test_recursive_dataclass(mode: bool | None) -> None:
    tree = Node("root", [Node("a"), Node("b", [Node("c")])])
    decoded = JsonSerializer().loads(JsonSerializer().dumps(tree))
    assert convert(Node, decoded, mode) == tree


@pytest.mark.parametrize("mode", MODES)
def test_containers_of_dataclasses(mode: bool | None) -> None:
    raw = {"city": "Paris", "zip": "75001"}
    assert convert(list[Address], [raw, raw], mode) == [Address("Paris", "75001")] * 2
    assert convert(dict[str, Address], {"home": raw}, mode) == {"home": Address("Paris", "75001")}
    assert convert(tuple[Address, int], [raw, 3], mode) == (Address("Paris", "75001"), 3)
    assert convert(Optional[Address], None, mode) is None  # noqa: UP045 (Optional on purpose)
    assert convert(Address | None, raw, mode) == Address("Paris", "75001")
    assert convert(Union[int, Address], raw, mode) == Address("Paris", "75001")  # noqa: UP007


@pytest.mark.parametrize("mode", MODES)
def test_enums_literals_and_scalars(mode: bool | None) -> None:
    assert convert(Color, "blue", mode) is Color.BLUE
    assert convert(Literal["a", "b"], "b", mode) == "b"
    assert convert(float, 3, mode) == 3.0
    assert convert(set[int], [1, 2], mode) == {1, 2}
    assert convert(typing.Annotated[int, "meta"], 4, mode) == 4


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("tp", "value"),
    [
        (Address, {"zip": "1"}),  # a required field is missing
        (Address, ["London"]),
        (list[Address], {"city": "x"}),
        (Color, "green"),
        (Literal["a"], "b"),
        (int, "seven"),
        (Address | None, 5),
    ],
)
def test_a_value_that_does_not_validate_raises_stored_value_type_error(
    mode: bool | None, tp: Any, value: Any
) -> None:
    with pytest.raises(StoredValueTypeError, match="not a valid"):
        convert(tp, value, mode)


def test_stdlib_ignores_unknown_stored_fields() -> None:
    # A field removed from the class since the value was stored: like Pydantic's default.
    assert convert(Address, {"city": "x", "gone": 1}, False) == Address("x")


def test_without_pydantic_an_unsupported_type_says_which_extra() -> None:
    with pytest.raises(TypeError, match=r"layercache-py\[pydantic\]"):
        build_converter(typing.TypedDict("TD", {"a": int}), use_pydantic=False)


def test_without_pydantic_installed_dataclasses_still_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "pydantic", None)  # import pydantic -> ImportError
    _pydantic.cache_clear()
    try:
        converter = build_converter(list[Address])
        assert converter is not None
        assert converter([{"city": "x"}]) == [Address("x")]
        assert JsonSerializer().dumps(Address("x")), "the serializers need no pydantic"
    finally:
        _pydantic.cache_clear()


def test_importing_the_library_does_not_import_pydantic() -> None:
    code = (
        "import sys, layercache\n"
        "from layercache.serializers import JsonSerializer, MsgpackSerializer\n"
        "JsonSerializer().dumps({'a': 1}), MsgpackSerializer().dumps({'a': 1})\n"
        "assert 'pydantic' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- Pydantic models --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "serializer", [JsonSerializer(), MsgpackSerializer()], ids=["json", "msgpack"]
)
def test_pydantic_models_round_trip_through_the_serializers(serializer: Any) -> None:
    value = {"one": [order(), order()], "none": None}
    decoded = serializer.loads(serializer.dumps(value))
    assert decoded["one"][0]["total"] == "19.90", "a model is stored as model_dump(mode='json')"
    rebuilt = convert(dict[str, list[Order] | None], decoded, None)
    assert rebuilt == value
    assert isinstance(rebuilt["one"][0].placed_at, dt.datetime)
    assert isinstance(rebuilt["one"][0].id, uuid.UUID)
    assert isinstance(rebuilt["one"][0].total, decimal.Decimal)


def test_aliased_models_round_trip() -> None:
    serializer = JsonSerializer()
    decoded = serializer.loads(serializer.dumps(Aliased(userId=7)))
    assert decoded == {"userId": 7}
    assert convert(Aliased, decoded, None) == Aliased(userId=7)


def test_pydantic_validation_error_is_a_stored_value_type_error() -> None:
    with pytest.raises(StoredValueTypeError):
        convert(Order, {"id": "not-a-uuid", "placed_at": "x", "total": "1"}, None)


def test_the_stored_bytes_never_name_the_class() -> None:
    # A payload claiming to be some other dataclass is rebuilt only as the type asked for.
    serializer = JsonSerializer()
    planted = b'{"__lc__":"dataclass","t":"os.Popen","v":{"city":"x"}}'
    decoded = serializer.loads(planted)
    assert decoded == {"city": "x"}
    assert convert(Address, decoded, None) == Address("x")


# -- the fast path --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_value_of_the_type_is_returned_unchanged(mode: bool | None) -> None:
    values: list[tuple[Any, Any]] = [
        (Person, person()),
        (list[Address], [Address("a"), Address("b")]),
        (dict[str, Address], {"k": Address("a")}),
        (Address | None, None),
        (tuple[int, ...], (1, 2)),
        (int, 5),
    ]
    if mode is None:
        values.append((list[Order], [order()]))
    for tp, value in values:
        assert convert(tp, value, mode) is value, tp


def test_converters_are_cached_per_type() -> None:
    assert converter_for(list[Address]) is converter_for(list[Address])
    # Unhashable metadata: built each time, still works.
    unhashable = typing.Annotated[int, ["unhashable"]]
    converter = converter_for(unhashable)
    assert converter is not None
    assert converter(3) == 3


# -- return annotations ---------------------------------------------------------------------------


def test_return_type_of_sync_and_async_functions() -> None:
    async def a() -> list[Person]:
        return []

    def s() -> Address | None:
        return None

    def awaitable() -> Awaitable[Order]:
        raise NotImplementedError

    def bare():  # type: ignore[no-untyped-def]
        return 1

    assert return_type(a) == list[Person]
    assert return_type(s) == Address | None
    assert return_type(awaitable) is Order
    assert return_type(bare) is Any
    assert return_type(functools.partial(s)) == Address | None


def test_only_the_return_annotation_is_evaluated() -> None:
    namespace: dict[str, Any] = {}
    exec(  # a module whose parameter annotation names a TYPE_CHECKING-only class
        "from __future__ import annotations\n"
        "from dataclasses import dataclass\n"
        "@dataclass\nclass Out:\n    x: int\n"
        "def f(arg: OnlyForTypeCheckers) -> Out: ...\n"
        "def g() -> Missing: ...\n",
        namespace,
    )
    assert return_type(namespace["f"]) is namespace["Out"]
    with pytest.raises(TypeError, match="type="):
        return_type(namespace["g"])
