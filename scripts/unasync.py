"""Generate ``src/layercache/_sync/`` from ``src/layercache/_async/`` (httpcore-style unasync).

The async orchestration is the single source of truth. This script removes ``async``/``await``,
unwraps ``Awaitable[X]`` annotations to ``X`` and renames the names in ``RENAMES``; the sync
primitives (``_sync/_primitives.py``) are hand-written. ``--check`` exits 1 when a generated file
is stale, and the test command runs it.

Usage: python scripts/unasync.py [--check]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "src" / "layercache" / "_async"
TARGET = ROOT / "src" / "layercache" / "_sync"
GENERATED = ("adapter.py", "stack.py", "tag_index.py")

RENAMES = {
    "CacheStack": "SyncCacheStack",
    "CacheNamespace": "SyncCacheNamespace",
    "aclose": "close",
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "asyncio": "threads",
}

HEADER = (
    "# DO NOT EDIT: generated from src/layercache/_async/{name} by scripts/unasync.py.\n"
    "# Change the async source and run `python scripts/unasync.py`.\n"
)


def _unwrap_awaitable(text: str) -> str:
    """``Awaitable[X]`` → ``X`` with nested brackets handled."""
    out: list[str] = []
    i = 0
    marker = "Awaitable["
    while True:
        j = text.find(marker, i)
        if j < 0:
            out.append(text[i:])
            return "".join(out)
        if j > 0 and (text[j - 1].isalnum() or text[j - 1] == "_"):
            out.append(text[i : j + len(marker)])
            i = j + len(marker)
            continue
        out.append(text[i:j])
        depth = 1
        k = j + len(marker)
        start = k
        while depth:
            if text[k] == "[":
                depth += 1
            elif text[k] == "]":
                depth -= 1
            k += 1
        out.append(text[start : k - 1])
        i = k


def convert(source: str) -> str:
    """The sync twin of one async module."""
    text = re.sub(r"\basync (def|with|for)\b", r"\1", source)
    text = re.sub(r"\bawait ", "", text)
    text = _unwrap_awaitable(text)
    text = re.sub(r"\bAwaitable, ", "", text)
    for old, new in RENAMES.items():
        text = re.sub(rf"\b{re.escape(old)}\b", new, text)
    return text


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale: list[str] = []
    for name in GENERATED:
        wanted = HEADER.format(name=name) + convert((SOURCE / name).read_text(encoding="utf-8"))
        target = TARGET / name
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current == wanted:
            continue
        if check:
            stale.append(str(target.relative_to(ROOT)))
        else:
            target.write_text(wanted, encoding="utf-8")
            print(f"wrote {target.relative_to(ROOT)}")
    if stale:
        print(
            "stale generated files (run `python scripts/unasync.py`): " + ", ".join(stale),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
