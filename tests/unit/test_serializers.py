"""Serializers: round-trips (Hypothesis), tagged types, escaping, and refusal of unsafe input."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json
import pickle
import sys
import uuid
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layercache.serializers import (
    JsonSerializer,
    MsgpackSerializer,
    PickleSerializer,
    Serializer,
)

# -- strategies -------------------------------------------------------------------------------

timezones = st.one_of(
    st.none(),
    st.just(dt.timezone.utc),
    st.integers(min_value=-23 * 60, max_value=23 * 60).map(
        lambda m: dt.timezone(dt.timedelta(minutes=m))
    ),
)
datetimes = st.datetimes(timezones=timezones)
times = st.times(timezones=timezones)
decimals = st.decimals(allow_nan=False)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(),
    st.binary(),
    datetimes,
    st.dates(),
    times,
    st.uuids(),
    decimals,
)
dict_keys = st.one_of(st.text(), st.sampled_from(["__lc__", "v", "t"]), st.integers())
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.tuples(children, children),
        st.dictionaries(dict_keys, children, max_size=5),
    ),
    max_leaves=25,
)


def as_lists(value: Any) -> Any:
    """What a value looks like after a trip through JSON/msgpack: tuples become lists."""
    if isinstance(value, tuple | list):
        return [as_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: as_lists(v) for k, v in value.items()}
    return value


# -- dataclasses used by the tests --------------------------------------------------------------


@dataclasses.dataclass
class User:
    id: int
    name: str
    joined: dt.date | None = None


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: int
    norm: int = dataclasses.field(init=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", abs(self.x) + abs(self.y))


@dataclasses.dataclass
class Team:
    lead: User
    members: list[User]
    point: Point


@dataclasses.dataclass
class Validated:
    age: int

    def __post_init__(self) -> None:
        if self.age < 0:
            raise ValueError("age must be >= 0")


SIDE_EFFECTS: list[str] = []


def record_side_effect(tag: str) -> str:
    SIDE_EFFECTS.append(tag)
    return tag


class Exploit:
    """Unpickling this calls record_side_effect: a stand-in for arbitrary code execution."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (record_side_effect, ("unpickled!",))


def all_serializers() -> list[Serializer]:
    return [
        JsonSerializer(types=[User, Point, Team]),
        MsgpackSerializer(types=[User, Point, Team]),
        PickleSerializer(signing_secret="s3cret"),
    ]


# -- protocol and ids ------------------------------------------------------------------------


def test_serializers_satisfy_protocol_with_distinct_stable_ids() -> None:
    serializers = all_serializers()
    for serializer in serializers:
        assert isinstance(serializer, Serializer)
        assert 0 <= serializer.format_id <= 255
    assert [s.format_id for s in serializers] == [1, 2, 3]


# -- round-trip properties ---------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(values)
def test_json_round_trip(value: Any) -> None:
    serializer = JsonSerializer()
    data = serializer.dumps(value)
    assert isinstance(data, bytes)
    assert serializer.loads(data) == as_lists(value)


@settings(max_examples=300, deadline=None)
@given(values)
def test_msgpack_round_trip(value: Any) -> None:
    serializer = MsgpackSerializer()
    assert serializer.loads(serializer.dumps(value)) == as_lists(value)


@settings(max_examples=200, deadline=None)
@given(values)
def test_pickle_round_trip_keeps_tuples(value: Any) -> None:
    serializer = PickleSerializer(signing_secret=b"k")
    assert serializer.loads(serializer.dumps(value)) == value


@pytest.mark.parametrize("serializer", all_serializers(), ids=lambda s: type(s).__name__)
def test_extra_types_keep_their_type(serializer: Serializer) -> None:
    value = {
        "naive": dt.datetime(2024, 2, 29, 23, 59, 58, 123456),
        "aware": dt.datetime(2024, 3, 31, 1, 30, tzinfo=dt.timezone(dt.timedelta(hours=-3))),
        "date": dt.date(1999, 12, 31),
        "time": dt.time(7, 8, 9, 10),
        "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "decimal": decimal.Decimal("-0.000123400"),
        "bytes": b"\x00\xff\xc1LC",
        "int_keys": {1: "a", 2: "b"},
    }
    back = serializer.loads(serializer.dumps(value))
    assert back == value
    for name, item in value.items():
        assert type(back[name]) is type(item), name
    # Decimal keeps its exponent, not just its value.
    assert str(back["decimal"]) == "-0.000123400"
    assert back["aware"].utcoffset() == dt.timedelta(hours=-3)
    assert back["naive"].tzinfo is None


@pytest.mark.parametrize("serializer", all_serializers()[:2], ids=lambda s: type(s).__name__)
def test_zoneinfo_datetime_comes_back_as_same_instant_and_offset(serializer: Serializer) -> None:
    value = dt.datetime(2024, 7, 1, 12, 0, tzinfo=ZoneInfo("Europe/Paris"))
    back = serializer.loads(serializer.dumps(value))
    assert back == value
    assert back.utcoffset() == dt.timedelta(hours=2)


def test_json_tuples_become_lists_except_as_dict_keys() -> None:
    serializer = JsonSerializer()
    back = serializer.loads(serializer.dumps({"t": (1, (2, 3)), (1, "a"): "tuple key"}))
    assert back == {"t": [1, [2, 3]], (1, "a"): "tuple key"}


def test_json_output_is_plain_json_for_plain_values() -> None:
    serializer = JsonSerializer()
    data = serializer.dumps({"a": [1, 2.5, "é", None, True]})
    assert json.loads(data) == {"a": [1, 2.5, "é", None, True]}
    assert data == '{"a":[1,2.5,"é",null,true]}'.encode()


def test_json_lone_surrogate_survives() -> None:
    serializer = JsonSerializer()
    assert serializer.loads(serializer.dumps("a\ud800b")) == "a\ud800b"


# -- tag-key escaping ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        {"__lc__": "datetime", "v": "2024-01-01T00:00:00"},
        {"__lc__": "bytes", "v": "AAAA"},
        {"__lc__": "dataclass", "t": "tests.User", "v": {"id": 1}},
        {"__lc__": "escaped", "v": {"__lc__": "escaped", "v": {}}},
        {"__lc__": "unknown-tag"},
        {"__lc__": None},
        [{"__lc__": "map", "v": [[1, 2]]}],
    ],
)
def test_json_user_dicts_with_tag_key_round_trip_unharmed(value: Any) -> None:
    serializer = JsonSerializer(types=[User])
    assert serializer.loads(serializer.dumps(value)) == value


# -- dataclasses -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [JsonSerializer, MsgpackSerializer])
def test_registered_dataclasses_are_rebuilt(kind: type[JsonSerializer]) -> None:
    serializer = kind(types=[User, Point, Team])
    team = Team(
        lead=User(1, "ada", dt.date(1815, 12, 10)),
        members=[User(2, "bob"), User(3, "__lc__")],
        point=Point(3, -4),
    )
    back = serializer.loads(serializer.dumps(team))
    assert back == team
    assert type(back) is Team
    assert type(back.lead) is User
    assert back.point.norm == 7


@pytest.mark.parametrize("kind", [JsonSerializer, MsgpackSerializer])
def test_unregistered_dataclasses_decode_as_plain_dicts(kind: type[JsonSerializer]) -> None:
    writer = kind(types=[User])
    reader = kind(types=[Point])  # does not know User
    back = reader.loads(writer.dumps({"u": User(1, "ada")}))
    assert back == {"u": {"id": 1, "name": "ada", "joined": None}}


def impostor(target: type, **fields: Any) -> Any:
    """A dataclass instance stored under ``target``'s name but built without its checks."""
    cls = dataclasses.make_dataclass("Impostor", list(fields))
    cls.__qualname__ = target.__qualname__
    cls.__module__ = target.__module__
    return cls(**fields)


@pytest.mark.parametrize("kind", [JsonSerializer, MsgpackSerializer])
def test_stale_dataclass_schema_is_a_decode_error(kind: type[JsonSerializer]) -> None:
    data = kind().dumps(impostor(User, id=1, nickname="x"))
    with pytest.raises(ValueError, match="unknown fields"):
        kind(types=[User]).loads(data)
    missing = kind().dumps(impostor(User, id=1))
    with pytest.raises(ValueError, match="cannot rebuild"):
        kind(types=[User]).loads(missing)


@pytest.mark.parametrize("kind", [JsonSerializer, MsgpackSerializer])
def test_dataclass_validation_runs_on_decode(kind: type[JsonSerializer]) -> None:
    data = kind().dumps(impostor(Validated, age=-1))
    with pytest.raises(ValueError, match="age must be"):
        kind(types=[Validated]).loads(data)


def test_types_must_be_dataclasses() -> None:
    with pytest.raises(ValueError, match="dataclass types"):
        JsonSerializer(types=[dict])
    with pytest.raises(ValueError, match="dataclass types"):
        MsgpackSerializer(types=[User(1, "x")])  # type: ignore[list-item]


def test_json_never_imports_or_evaluates_type_names() -> None:
    serializer = JsonSerializer()
    payload = b'{"__lc__":"dataclass","t":"os.system","v":{"command":"echo pwned"}}'
    assert serializer.loads(payload) == {"command": "echo pwned"}
    assert "pwned" not in sys.modules


# -- malformed input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{",
        b"\xff\xfe",
        b'{"__lc__":"nope","v":"x"}',
        b'{"__lc__":"datetime","v":"not a date"}',
        b'{"__lc__":"datetime","v":5}',
        b'{"__lc__":"bytes","v":"***"}',
        b'{"__lc__":"decimal","v":"1.2.3"}',
        b'{"__lc__":"uuid","v":"xyz"}',
        b'{"__lc__":"map","v":5}',
        b'{"__lc__":"map","v":[[[1],2],[{"a":1},3]]}',
        b'{"__lc__":"escaped","v":[]}',
        b'{"__lc__":"dataclass","t":5,"v":{}}',
        b'{"__lc__":"datetime"}',
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_json_malformed_input_raises_value_error(data: bytes) -> None:
    # Only the type is the contract here; the messages come from json, base64, datetime...
    with pytest.raises(ValueError):  # noqa: PT011
        JsonSerializer().loads(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        b"\x92\x01",
        b"\x01\x02",
        b"\xd4\x63\x00",
        b"\xc7\x01\x06\xff",
        b"\xc7\x02\x07ab",
        b"\xc7\x01\x01\xff",
    ],
)
def test_msgpack_malformed_input_raises_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        MsgpackSerializer().loads(data)


@pytest.mark.parametrize("kind", [JsonSerializer, MsgpackSerializer])
def test_unsupported_types_raise_type_error(kind: type[JsonSerializer]) -> None:
    with pytest.raises(TypeError, match="cannot encode"):
        kind().dumps({"x": object()})


def test_msgpack_ints_beyond_64_bits_round_trip() -> None:
    serializer = MsgpackSerializer()
    value = {2**70: -(2**64), "n": [2**64, -(2**63) - 1, 2**63 - 1]}
    assert serializer.loads(serializer.dumps(value)) == value


def test_msgpack_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "msgpack", None)
    with pytest.raises(ImportError, match=r"pip install 'layercache-py\[msgpack\]'"):
        MsgpackSerializer()


# -- pickle signing ----------------------------------------------------------------------------


@pytest.mark.parametrize("secret", ["", b"", None, 123])
def test_pickle_requires_a_non_empty_secret(secret: Any) -> None:
    with pytest.raises(ValueError, match="signing_secret"):
        PickleSerializer(signing_secret=secret)


def test_pickle_repr_hides_the_secret() -> None:
    assert "hunter2" not in repr(PickleSerializer(signing_secret="hunter2"))


@pytest.fixture
def no_side_effects() -> Any:
    SIDE_EFFECTS.clear()
    yield
    assert SIDE_EFFECTS == [], "a payload was unpickled"


@pytest.mark.usefixtures("no_side_effects")
def test_pickle_refuses_unsigned_payload() -> None:
    with pytest.raises(ValueError, match="refusing to unpickle"):
        PickleSerializer(signing_secret="k").loads(pickle.dumps(Exploit()))


@pytest.mark.usefixtures("no_side_effects")
def test_pickle_refuses_payload_signed_with_another_secret() -> None:
    data = PickleSerializer(signing_secret="attacker").dumps(Exploit())
    with pytest.raises(ValueError, match="signature mismatch"):
        PickleSerializer(signing_secret="k").loads(data)


@pytest.mark.usefixtures("no_side_effects")
def test_pickle_refuses_tampered_payload() -> None:
    serializer = PickleSerializer(signing_secret="k")
    data = bytearray(serializer.dumps({"admin": False}))
    data[-3] ^= 0x01
    with pytest.raises(ValueError, match="signature mismatch"):
        serializer.loads(bytes(data))


@pytest.mark.usefixtures("no_side_effects")
@pytest.mark.parametrize("data", [b"", b"\x01", b"\x01" + b"\x00" * 32, b"\x02" + b"\x00" * 40])
def test_pickle_refuses_short_or_unknown_payloads(data: bytes) -> None:
    with pytest.raises(ValueError, match="refusing to unpickle"):
        PickleSerializer(signing_secret="k").loads(data)


def test_pickle_with_right_secret_unpickles_and_str_equals_bytes_secret() -> None:
    SIDE_EFFECTS.clear()
    data = PickleSerializer(signing_secret="k").dumps(Exploit())
    # Same secret given as bytes verifies the same signature: the trusted path does unpickle.
    assert PickleSerializer(signing_secret=b"k").loads(data) == "unpickled!"
    assert SIDE_EFFECTS == ["unpickled!"]
    SIDE_EFFECTS.clear()


def test_pickle_unpicklable_value_is_type_error() -> None:
    with pytest.raises(TypeError, match="cannot pickle"):
        PickleSerializer(signing_secret="k").dumps(lambda: None)


@pytest.mark.parametrize(
    "value",
    [2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 10**40, [1, {"a": -(10**30)}]],
)
def test_json_integers_beyond_64_bits_round_trip_exactly(value: object) -> None:
    # The fast decoder (orjson) would read a 65-bit literal back as a float: such integers are
    # written as tagged text, and come back as the same int.
    serializer = JsonSerializer()
    assert serializer.loads(serializer.dumps(value)) == value


def test_json_values_orjson_refuses_fall_back_to_the_stdlib_parser() -> None:
    serializer = JsonSerializer()
    back = serializer.loads(serializer.dumps([float("inf"), "lone \udc80 surrogate"]))
    assert back[0] == float("inf")
    assert back[1] == "lone \udc80 surrogate"
    nan = serializer.loads(serializer.dumps(float("nan")))
    assert nan != nan
