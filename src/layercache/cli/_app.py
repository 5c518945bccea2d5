"""The click group behind ``layercache`` and its error reporting."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import click

from ._exit import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from .commands import redis_commands
from .demo import demo
from .snapshot import export_command, import_command

__all__ = ["LayerCacheGroup", "cli"]


def _one_line(text: str) -> str:
    return " ".join(text.split())


class LayerCacheGroup(click.Group):
    """A click group whose errors are one ``Error: ...`` line on stderr, never a traceback.

    Click's standalone mode prints usage blocks and lets unexpected exceptions escape as
    tracebacks; this runs click non-standalone and maps every outcome to the documented exit
    codes itself (0 success, 1 refused or failed action, 2 usage error).
    """

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command line; in standalone mode (the default) exit with its code."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        sys.exit(self._run(args, prog_name, complete_var, extra))

    def _run(
        self,
        args: Sequence[str] | None,
        prog_name: str | None,
        complete_var: str | None,
        extra: dict[str, Any],
    ) -> int:
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()  # the help text: a bare ``layercache`` is a usage error
            return EXIT_USAGE
        except click.UsageError as exc:
            hint = f" (try '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            click.echo(f"Error: {_one_line(exc.format_message())}{hint}", err=True)
            return EXIT_USAGE
        except click.ClickException as exc:
            click.echo(f"Error: {_one_line(exc.format_message())}", err=True)
            return exc.exit_code
        except click.Abort:
            click.echo("Error: aborted", err=True)
            return EXIT_FAILED
        except BrokenPipeError:
            # The reader went away (``layercache demo | head``): nothing left to report to.
            return EXIT_FAILED
        except Exception as exc:
            if os.environ.get("LAYERCACHE_DEBUG"):
                raise
            message = _one_line(str(exc)) or "no details"
            click.echo(
                f"Error: unexpected {type(exc).__name__}: {message} "
                "(set LAYERCACHE_DEBUG=1 for a traceback)",
                err=True,
            )
            return EXIT_FAILED
        # --help and friends return their exit code; a command that finished returns None.
        return result if isinstance(result, int) and not isinstance(result, bool) else EXIT_OK


@click.group(cls=LayerCacheGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="layercache-py", prog_name="layercache")
def cli() -> None:
    """layercache: a multi-layer cache (memory -> Redis -> disk) for Python services."""


cli.add_command(demo)
for _command in redis_commands():  # stats, keys, inspect, invalidate, ... (H6)
    cli.add_command(_command)
cli.add_command(export_command)  # H5: layercache export
cli.add_command(import_command)  # H5: layercache import
