"""The ``layercache`` command line (``python -m layercache`` works too).

It needs the ``cli`` extra (click and rich). Without it, :func:`main` prints one line naming
the install command and exits 1. Exit codes: 0 success, 1 a refused or failed action, 2 a usage
error. Errors are one line on stderr, never a traceback (set ``LAYERCACHE_DEBUG=1`` to get one).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import NoReturn

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "main"]

from ._exit import EXIT_FAILED, EXIT_OK, EXIT_USAGE

_MISSING_EXTRA = (
    "Error: the layercache command line needs the 'cli' extra (click, rich): "
    "pip install 'layercache-py[cli]'"
)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the ``layercache`` command line and exit the process with its exit code.

    Args:
        argv: Arguments without the program name; ``None`` reads ``sys.argv[1:]``.
    """
    try:
        # Imported here, not at module level, so a missing extra is one clear line instead
        # of an ImportError traceback from the console-script wrapper.
        import click  # noqa: F401
        import rich  # noqa: F401
    except ImportError:
        print(_MISSING_EXTRA, file=sys.stderr)
        sys.exit(EXIT_FAILED)
    from ._app import cli

    cli.main(args=None if argv is None else list(argv), prog_name="layercache")
    # LayerCacheGroup.main always exits; this keeps the NoReturn promise if it ever did not.
    sys.exit(EXIT_OK)
