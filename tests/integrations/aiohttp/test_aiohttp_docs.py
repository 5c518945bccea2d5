"""The Python examples of ``docs/aiohttp.md`` run as written (and check themselves)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("aiohttp")

from _redis_server import RedisServer

DOC = Path(__file__).resolve().parents[3] / "docs" / "aiohttp.md"


def blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.DOTALL)


def run(*sources: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "docs_aiohttp"}
    for source in sources:
        exec(compile(source, str(DOC), "exec"), namespace)
    return namespace


def test_the_guide_has_the_examples_this_test_runs() -> None:
    assert len(blocks()) == 4


def test_the_app_its_test_client_and_a_key_resolver() -> None:
    app, try_it, resolver, _ = blocks()
    namespace = run(app, try_it, resolver)  # try_it runs asyncio.run itself and asserts
    assert namespace["loads"] == ["1", "1"]
    assert callable(namespace["personal"])


@pytest.mark.redis
async def test_the_several_instances_stack(redis_clean: RedisServer) -> None:
    first, _, _, several = blocks()
    namespace = run(first, several)
    async with namespace["build_stack"](redis_clean.url) as stack:
        await stack.set("k", 1, tags=["t"])
        assert await stack.invalidate_by_tag("t") == 1
