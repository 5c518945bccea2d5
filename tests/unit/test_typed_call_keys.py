"""Keys of wrapped calls bound to the signature (layercache._keys.CallKey, receiver_kind)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from layercache._keys import CallKey, receiver_kind, render_call_key


def f(a: int, b: int = 2, *, c: str = "x") -> None: ...


class Owner:
    def method(self, n: int) -> None: ...

    @classmethod
    def build(cls, n: int) -> None: ...

    @staticmethod
    def helper(self_like: int) -> None: ...


def outer() -> Any:
    def self_named(self: int) -> None: ...

    return self_named


def test_every_spelling_of_one_call_renders_one_key() -> None:
    key = CallKey(f)
    spellings = [
        ((1,), {}),
        ((), {"a": 1}),
        ((1, 2), {}),
        ((1,), {"b": 2}),
        ((), {"b": 2, "a": 1}),
        ((1,), {"c": "x"}),
    ]
    assert {key(args, kwargs) for args, kwargs in spellings} == {'1,2,c="x"'}


def test_receiver_kind_by_definition_site_and_first_parameter() -> None:
    assert receiver_kind(Owner.method) == "instance"
    assert receiver_kind(Owner.build.__func__) == "class"  # type: ignore[attr-defined]
    assert receiver_kind(Owner.helper) == "none"
    assert receiver_kind(outer()) == "none", "a nested function's 'self' is an argument"
    assert receiver_kind(f) == "none"


def test_the_receiver_is_skipped_or_rendered_by_its_hook() -> None:
    key = CallKey(Owner.method, "instance")
    assert key((Owner(), 3), {}) == "3"

    class Hooked(Owner):
        def __cache_key__(self) -> tuple[str, int]:
            return ("t", 1)

    assert key((Hooked(), 3), {}) == '@("t",1),3'


@given(
    receiver=st.one_of(st.integers(), st.text(max_size=5)),
    args=st.lists(st.one_of(st.integers(), st.text(max_size=5)), max_size=3),
)
def test_a_receiver_never_renders_like_plain_arguments(receiver: Any, args: list[Any]) -> None:
    with_receiver = render_call_key(tuple(args), {}, receiver=receiver)
    assert with_receiver[0] in "@#"  # "#": a hashed rendering (control characters)
    assert with_receiver != render_call_key((receiver, *args), {})
    assert with_receiver != render_call_key(tuple(args), {})
