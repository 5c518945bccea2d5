"""Pieces shared by the subcommands: the failure exception and Redis URL handling."""

from __future__ import annotations

from typing import ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import click

__all__ = ["REDIS_SCHEMES", "CliError", "check_redis_url", "redact_url"]

REDIS_SCHEMES = ("redis", "rediss", "unix")


class CliError(click.ClickException):
    """A refused or failed action: printed as one ``Error: ...`` line, exit code 1."""

    exit_code: ClassVar[int] = 1


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, safe to print in messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hostport}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        # password=, and the sentinels' own sentinel_password= in a redis+sentinel:// URL.
        query = urlencode(
            [(k, "***" if "password" in k.lower() else v) for k, v in pairs], safe="*"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def check_redis_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback: accept only ``redis://``, ``rediss://`` and ``unix://`` URLs."""
    if value is None:
        return None
    try:
        scheme = urlsplit(value).scheme
    except ValueError:
        scheme = ""
    if scheme not in REDIS_SCHEMES:
        raise click.BadParameter(
            f"expected a redis://, rediss:// or unix:// URL, got {redact_url(value)!r}",
            ctx=ctx,
            param=param,
        )
    return value
