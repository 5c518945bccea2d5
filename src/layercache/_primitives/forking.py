"""Objects that start over in a child process made by ``fork()``.

Only the thread that forked is copied into the child: work that other threads had under way
(a fetch, a refresh, a delete) never finishes there, and a lock one of them held stays held.
An owner of such state registers here and is told, in the child, to drop it (a pre-fork
server builds and warms a stack in the parent, then every worker it forks uses that stack).
Both twins' primitives use this one module.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

__all__ = ["start_over_after_fork"]

# Live owners only (weak references): bounded by the objects the program keeps.
_OWNERS: weakref.WeakSet[Any] = weakref.WeakSet()


def start_over_after_fork(owner: Any) -> None:
    """Call ``owner._after_fork()`` in every child process this one forks from now on."""
    _OWNERS.add(owner)


def _after_fork_in_child() -> None:
    for owner in list(_OWNERS):
        owner._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
