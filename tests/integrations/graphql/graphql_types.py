"""Strawberry types the GraphQL tests share (module level: the cached results are rebuilt from
the resolvers' return annotations, resolved in their module)."""

from __future__ import annotations

import enum

import strawberry


@strawberry.enum
class Color(str, enum.Enum):  # a str enum: JsonSerializer stores str values (see docs)
    RED = "red"
    BLUE = "blue"


@strawberry.type
class Maker:
    name: str
    country: str | None = None


@strawberry.type
class Product:
    id: strawberry.ID
    name: str
    price: float
    color: Color
    maker: Maker
    tags: list[str]


@strawberry.type
class LabelledProduct:
    """A type with a computed field (a resolver method): a dataclass field whose value is a
    bound method, which JsonSerializer cannot encode (see test_graphql_resolver)."""

    name: str

    @strawberry.field
    def label(self) -> str:
        return f"<{self.name}>"


@strawberry.input
class ProductFilter:
    color: Color | None = None
    name_contains: str | None = strawberry.UNSET
    makers: list[str] | None = None


def product(pid: int, color: Color = Color.RED) -> Product:
    return Product(
        id=strawberry.ID(str(pid)),
        name=f"product {pid}",
        price=pid * 1.5,
        color=color,
        maker=Maker(name=f"maker {pid % 3}", country=None if pid % 2 else "FR"),
        tags=[f"t{pid}", "all"],
    )
