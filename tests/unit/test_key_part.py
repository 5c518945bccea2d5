"""``layercache.key_part``: the one renderer of plain data into key text (wrap, FastAPI)."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from layercache import key_part


def test_types_never_share_a_rendering() -> None:
    values = [1, "1", 1.0, True, None, b"1", (1,), [1], {1}, {"1": 1}, dt.timedelta(seconds=1)]
    rendered = [key_part(v) for v in values]
    assert len(set(rendered)) == len(values), rendered
    assert key_part({"b": 1, "a": 2}) == key_part({"a": 2, "b": 1})  # mappings sorted
    assert key_part({"x", "y"}) == key_part({"y", "x"})


def test_other_values_need_a_fallback_which_also_serves_inside_containers() -> None:
    @dataclasses.dataclass
    class Point:
        x: int

    with pytest.raises(TypeError, match="Point"):
        key_part([Point(1)])

    def fallback(value: object) -> str:
        assert isinstance(value, Point)
        return f"P{value.x}"

    assert key_part([Point(1), {"p": Point(2)}], fallback) == '[P1,{"p":P2}]'
