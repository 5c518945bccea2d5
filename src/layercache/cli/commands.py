"""The admin commands that talk to Redis, for the group in ``_app.py`` to register.

They need redis-py (the ``redis`` extra) besides the ``cli`` extra. Without it each one is
still listed, and running it prints one line naming the install command (exit 1) instead of
breaking every other command of ``layercache`` with an ImportError.
"""

from __future__ import annotations

import importlib.util

import click

from ._common import CliError

__all__ = ["ADMIN_COMMANDS", "redis_commands"]

ADMIN_COMMANDS = ("stats", "keys", "inspect", "invalidate", "migrate-tag-index", "doctor")


def _needs_redis(name: str) -> click.Command:
    def run(args: tuple[str, ...]) -> None:
        raise CliError(
            f"'layercache {name}' needs the 'redis' extra: pip install 'layercache-py[redis]'"
        )

    return click.Command(
        name,
        callback=run,
        params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)],
        context_settings={"ignore_unknown_options": True, "help_option_names": []},
        help="(needs the 'redis' extra)",
    )


def redis_commands() -> list[click.Command]:
    """``stats``, ``keys``, ``inspect``, ``invalidate``, ``migrate-tag-index``, ``doctor``."""
    if importlib.util.find_spec("redis") is None:
        return [_needs_redis(name) for name in ADMIN_COMMANDS]
    from .admin import doctor, inspect_key, keys, stats
    from .invalidate import invalidate
    from .migrate import migrate_tag_index

    return [stats, keys, inspect_key, invalidate, migrate_tag_index, doctor]
