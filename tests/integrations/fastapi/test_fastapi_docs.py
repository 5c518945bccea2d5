"""The Python examples of ``docs/fastapi.md`` run as written (and check themselves)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx2")

from _redis_server import RedisServer

DOC = Path(__file__).resolve().parents[3] / "docs" / "fastapi.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.DOTALL)


def run(*sources: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "docs_fastapi"}
    for source in sources:
        exec(compile(source, str(DOC), "exec"), namespace)
    return namespace


def test_the_guide_has_the_examples_this_test_runs() -> None:
    assert len(blocks()) == 5


def test_a_cached_route_a_key_resolver_and_invalidation() -> None:
    first, resolver, invalidation, _, _ = blocks()
    namespace = run(first, resolver, invalidation)
    assert namespace["loads"] == [1, 1, 2]


def test_the_lifespan_recipe() -> None:
    run(blocks()[3])


@pytest.mark.redis
async def test_the_several_instances_stack(redis_clean: RedisServer) -> None:
    namespace = run(blocks()[4])
    async with namespace["build_stack"](redis_clean.url) as stack:
        await stack.set("k", 1, tags=["t"])
        assert await stack.invalidate_by_tag("t") == 1
