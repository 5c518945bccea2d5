"""The batching options of a remote layer, checked once (plain code, shared by every twin).

A layer that exposes ``read_batching``, ``write_batching``, ``batch_window`` and ``max_batch``
attributes tunes the batchers the stack's adapter puts in front of it (``_async/batcher.py``,
docs/perf-batching.md).
"""

from __future__ import annotations

import math
from typing import NamedTuple

__all__ = ["MAX_BATCH_LIMIT", "MAX_BATCH_WINDOW", "BatchOptions", "batch_options"]

# Bounds of the options: a bulk call of more items holds the server (and every caller of the
# batch) for too long; a longer window is a stall, not a batching window.
MAX_BATCH_LIMIT = 10_000
MAX_BATCH_WINDOW = 0.1


class BatchOptions(NamedTuple):
    """Checked batching options."""

    read_batching: bool
    write_batching: bool
    batch_window: float
    max_batch: int


def batch_options(
    read_batching: object, write_batching: object, batch_window: object, max_batch: object
) -> BatchOptions:
    """The options checked.

    Raises:
        ValueError: If a flag is not a bool, ``batch_window`` is not a finite number of
            seconds in ``[0, MAX_BATCH_WINDOW]``, or ``max_batch`` is not an int in
            ``[1, MAX_BATCH_LIMIT]``.
    """
    if not isinstance(read_batching, bool):
        raise ValueError(f"read_batching must be True or False, got {read_batching!r}")
    if not isinstance(write_batching, bool):
        raise ValueError(f"write_batching must be True or False, got {write_batching!r}")
    if (
        isinstance(batch_window, bool)
        or not isinstance(batch_window, int | float)
        or not math.isfinite(batch_window)
        or not 0 <= batch_window <= MAX_BATCH_WINDOW
    ):
        raise ValueError(
            f"batch_window must be a number of seconds from 0 to {MAX_BATCH_WINDOW}, "
            f"got {batch_window!r}"
        )
    if (
        isinstance(max_batch, bool)
        or not isinstance(max_batch, int)
        or not 1 <= max_batch <= MAX_BATCH_LIMIT
    ):
        raise ValueError(f"max_batch must be an int from 1 to {MAX_BATCH_LIMIT}, got {max_batch!r}")
    return BatchOptions(read_batching, write_batching, float(batch_window), max_batch)
