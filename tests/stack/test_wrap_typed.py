"""Typed values: a value reads back as the same type from every layer (issue 10, point 3).

Two stacks share one lower layer (a disk directory, or Redis through the real server), the way
two instances of a service do: instance A fetches and stores, instance B reads the value from
the shared layer and must get the dataclass / Pydantic model back, not the ``dict`` the
serializer wrote. ``wrap`` takes the type from the function's return annotation; ``get`` and
``get_or_raise`` from ``type=``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pydantic
import pytest
from stack_support import EventLog, lcall

from layercache import (
    CacheStack,
    DiskLayer,
    JsonSerializer,
    MemoryLayer,
    MsgpackSerializer,
    RedisLayer,
)

SERIALIZERS = {"json": JsonSerializer, "msgpack": MsgpackSerializer}


@dataclasses.dataclass(frozen=True)
class Address:
    city: str
    zip: str = "00000"


@dataclasses.dataclass
class Person:
    name: str
    address: Address
    tags: list[str]
    born: dt.date | None = None


class Order(pydantic.BaseModel):
    id: uuid.UUID
    placed_at: dt.datetime
    total: decimal.Decimal
    note: str | None = None


def make_order(n: int) -> Order:
    return Order(
        id=uuid.UUID(int=n),
        placed_at=dt.datetime(2026, 1, n % 28 + 1, 9, 30, tzinfo=dt.timezone.utc),
        total=decimal.Decimal(f"{n}.10"),
    )


def make_person(n: int) -> Person:
    return Person(f"p{n}", Address("Paris", f"{75000 + n}"), ["a", "b"], dt.date(1990, 1, 2))


CALLS: list[str] = []


async def load_person(n: int) -> Person:
    CALLS.append("person")
    return make_person(n)


async def load_order(n: int) -> Order:
    CALLS.append("order")
    return make_order(n)


async def load_orders(n: int) -> list[Order]:
    CALLS.append("orders")
    return [make_order(n), make_order(n + 1)]


async def load_order_map(n: int) -> dict[str, Order]:
    CALLS.append("order_map")
    return {"first": make_order(n), "second": make_order(n + 1)}


async def load_maybe_order(n: int) -> Order | None:
    CALLS.append("maybe")
    return make_order(n) if n else None


def load_address(n: int) -> Address:
    CALLS.append("address")
    return Address(f"city{n}")


CASES = {
    "dataclass": (load_address, Address("city3")),
    "nested-dataclass": (load_person, make_person(3)),
    "pydantic-model": (load_order, make_order(3)),
    "list-of-models": (load_orders, [make_order(3), make_order(4)]),
    "dict-of-models": (load_order_map, {"first": make_order(3), "second": make_order(4)}),
    "optional-model": (load_maybe_order, make_order(3)),
}


def assert_same_types(got: Any, want: Any) -> None:
    """``got == want`` and of the very same types all the way down."""
    assert got == want
    assert type(got) is type(want), f"{type(got).__name__} is not {type(want).__name__}"
    if isinstance(want, list):
        for g, w in zip(got, want, strict=True):
            assert_same_types(g, w)
    elif isinstance(want, dict):
        for k in want:
            assert_same_types(got[k], want[k])
    elif dataclasses.is_dataclass(want):
        for field in dataclasses.fields(want):
            assert_same_types(getattr(got, field.name), getattr(want, field.name))
    elif isinstance(want, pydantic.BaseModel):
        for name in type(want).model_fields:
            assert_same_types(getattr(got, name), getattr(want, name))


@pytest.fixture(params=list(SERIALIZERS))
def serializer_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def pair(
    layered_kind: tuple[str, Any], serializer_name: str, tmp_path: Path
) -> AsyncIterator[tuple[CacheStack, CacheStack]]:
    """Instances A and B of a service: own memory layers, one shared lower layer."""
    kind, client = layered_kind

    def shared() -> Any:
        serializer = SERIALIZERS[serializer_name]()
        if kind == "memory+disk":
            return DiskLayer(tmp_path / "shared", serializer=serializer)
        return RedisLayer(client=client, prefix="lc-typed:", serializer=serializer)

    a = CacheStack([MemoryLayer(), shared()])
    b = CacheStack([MemoryLayer(), shared()])
    yield a, b
    await a.aclose()
    await b.aclose()


@pytest.mark.parametrize("case", list(CASES))
async def test_wrap_rebuilds_the_return_annotation_on_another_instance(
    pair: tuple[CacheStack, CacheStack], case: str
) -> None:
    a, b = pair
    fn, expected = CASES[case]
    CALLS.clear()
    assert_same_types(await a.wrap("typed", fn)(3), expected)  # A fetches and stores
    assert len(CALLS) == 1
    from_shared = await b.wrap("typed", fn)(3)  # B: an L1 miss, a hit in the shared layer
    assert len(CALLS) == 1, "B fetched instead of reading the shared layer"
    assert_same_types(from_shared, expected)
    # B's memory layer was backfilled with the rebuilt value, and hits on it stay typed.
    memory = b.layers[0]
    entry = await lcall(memory, "get", "typed:3")
    assert entry is not None
    assert_same_types(entry.value, expected)
    assert_same_types(await b.wrap("typed", fn)(3), expected)
    assert len(CALLS) == 1


async def test_optional_model_none_is_not_rebuilt(pair: tuple[CacheStack, CacheStack]) -> None:
    a, b = pair
    assert await a.wrap("maybe", load_maybe_order, negative_cache=True)(0) is None
    CALLS.clear()
    assert await b.wrap("maybe", load_maybe_order, negative_cache=True)(0) is None
    assert CALLS == []


async def test_get_and_get_or_raise_take_type(pair: tuple[CacheStack, CacheStack]) -> None:
    a, b = pair
    orders = [make_order(1), make_order(2)]
    await a.set("orders", orders)
    await a.set("person", make_person(1))
    assert_same_types(await b.get("orders", type=list[Order]), orders)
    assert_same_types(await b.get_or_raise("person", type=Person), make_person(1))
    ns_value = await b.namespace("ns").get("x", lambda: make_order(5), type=Order)
    assert_same_types(ns_value, make_order(5))
    c = CacheStack([MemoryLayer(), b.layers[1]])  # a third instance: namespace reads typed too
    assert_same_types(await c.namespace("ns").get_or_raise("x", type=Order), make_order(5))
    await c.aclose()


async def test_a_pydantic_model_can_be_cached_in_a_serializing_layer(
    pair: tuple[CacheStack, CacheStack],
) -> None:
    a, _ = pair
    order = make_order(9)
    assert await a.get("order", lambda: order) == order
    assert await a.get("order", type=Order) is order  # L1: the very object
    stored = await lcall(a.layers[1], "get", "order")
    assert stored is not None
    assert stored.value["total"] == "9.10", "stored as model_dump(mode='json')"


async def test_a_stored_value_that_does_not_validate_is_a_miss(
    pair: tuple[CacheStack, CacheStack],
) -> None:
    a, b = pair
    await a.set("addr", {"street": "no city field"})
    errors = EventLog(b, "error")
    fetched = Address("fetched")
    assert await b.get("addr", type=Address) is None, "not of the type: a miss"
    assert await b.get("addr", lambda: fetched, type=Address) == fetched
    assert any(
        e["context"].get("operation") == "get.convert" and e["context"].get("key") == "addr"
        for e in errors.of("error")
    ), errors.events
    # The refetched value replaced the bad one in the shared layer.
    c = CacheStack([MemoryLayer(), b.layers[1]])
    assert_same_types(await c.get("addr", type=Address), fetched)
    await c.aclose()


async def test_an_untyped_l1_copy_is_converted_on_a_typed_hit(
    pair: tuple[CacheStack, CacheStack],
) -> None:
    a, b = pair
    await a.set("p", make_person(4))
    raw = await b.get("p")  # no type=: the stored fields, backfilled into B's L1 as they are
    assert isinstance(raw, dict)
    assert_same_types(await b.get("p", type=Person), make_person(4))
    errors = EventLog(b, "error")
    assert await b.get("p", lambda: Address("x"), type=Address) == Address("x")
    assert errors.of("error"), "an L1 value not of the type is reported and refetched"


async def test_wrap_type_override_and_opt_out(pair: tuple[CacheStack, CacheStack]) -> None:
    a, b = pair

    def untyped(n: int):  # type: ignore[no-untyped-def]
        return make_person(n)

    await a.wrap("u", untyped)(1)
    assert isinstance(await b.wrap("u", untyped)(1), dict), "no annotation: as stored"
    c = CacheStack([MemoryLayer(), b.layers[1]])
    assert_same_types(await c.wrap("u", untyped, type=Person)(1), make_person(1))
    d = CacheStack([MemoryLayer(), b.layers[1]])
    assert isinstance(await d.wrap("p", load_person, type=None)(1), Person)  # fetched here
    e = CacheStack([MemoryLayer(), b.layers[1]])
    assert isinstance(await e.wrap("p", load_person, type=None)(1), dict)
    for stack in (c, d, e):
        await stack.aclose()


async def test_memory_only_stack_keeps_objects(memory_env: Any) -> None:
    cache = memory_env.cache
    order = make_order(1)
    await cache.set("o", order)
    assert await cache.get("o", type=Order) is order
    assert await cache.get("absent", type=Order) is None
    with pytest.raises(TypeError, match="must be a type"):
        await cache.get("o", type="Order")


async def test_an_unresolvable_return_annotation_is_a_clear_error(memory_env: Any) -> None:
    namespace: dict[str, Any] = {}
    exec(
        "from __future__ import annotations\ndef f(n: int) -> NotDefinedAnywhere:\n    return n\n",
        namespace,
    )
    cached = memory_env.cache.wrap("x", namespace["f"])
    with pytest.raises(TypeError, match="type="):
        await cached(1)
    assert await memory_env.cache.wrap("y", namespace["f"], type=int)(2) == 2
