"""The custom-layer example in docs/layers.md passes the contract suite it recommends.

The example is read from the document itself (its ``python`` code blocks under "Writing your
own layer"), so the page cannot drift from what this test runs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from layercache.testing import LayerContractTests, ManualClock, run_layer_contract

DOC = Path(__file__).resolve().parents[2] / "docs" / "layers.md"


def _section_blocks(heading: str) -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"## {heading}\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end >= 0 else len(text)]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


def _example() -> dict[str, Any]:
    blocks = _section_blocks("Writing your own layer")
    assert len(blocks) >= 2, "the section shows the layer and how to run the contract on it"
    namespace: dict[str, Any] = {"__name__": "docs_layers_example"}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)  # our own document
    return namespace


async def test_the_documented_layer_passes_the_contract_in_real_time() -> None:
    report = await run_layer_contract(_example()["DictLayer"])
    assert report.failed == {}
    assert "ttl_expiry" in report.passed


async def test_the_documented_layer_passes_the_contract_on_a_manual_clock() -> None:
    layer_class = _example()["DictLayer"]
    clock = ManualClock()
    report = await run_layer_contract(lambda: layer_class(clock=clock), clock=clock)
    assert "ttl_expiry" in report.passed


# The documented test class itself, collected and run by pytest as a user's suite would be.
TestDocumentedDictLayer = _example()["TestDictLayer"]
assert issubclass(TestDocumentedDictLayer, LayerContractTests)
