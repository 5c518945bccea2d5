"""The built-in layers: :class:`MemoryLayer` (in-process) and :class:`DiskLayer` (SQLite).

``DiskLayer`` is imported on first use, so importing the memory layer never loads ``sqlite3``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .memory import MemoryLayer

if TYPE_CHECKING:
    from .disk import DiskLayer

__all__ = ["DiskLayer", "MemoryLayer"]


def __getattr__(name: str) -> Any:
    if name == "DiskLayer":
        return importlib.import_module(".disk", __name__).DiskLayer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
