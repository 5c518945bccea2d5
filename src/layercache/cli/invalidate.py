"""``layercache invalidate``: delete keys by tag, pattern, prefix or name, and tell every
instance's L1 through the invalidation bus.

Nothing is re-implemented: the command builds a :class:`~layercache.SyncCacheStack` over the
deployment's Redis (a :class:`~layercache.SyncRedisLayer` with the layer prefix, a
:class:`~layercache.SyncRedisInvalidationBus` on the bus channel, and the
:class:`~layercache.SyncRedisTagIndex` when one exists) and calls its ``delete_many`` and
``invalidate_by_*`` methods, so fences, tombstones, tag-index bookkeeping and bus messages are
exactly what an application instance would produce.

Order of work: the matching keys are counted first (tag index, or ``SCAN`` for patterns and
prefixes); ``--dry-run`` stops there. Then they are deleted in chunks of 500 with a progress
bar, and a final ``invalidate_by_tags`` / ``invalidate_by_pattern`` writes the fences, removes
keys written meanwhile, and announces the tag or pattern on the bus (peers drop every matching
L1 entry, including ones Redis no longer held).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .._glob import escape_glob
from .._keys import validate_key, validate_pattern, validate_prefix
from .._sync.stack import SyncCacheStack
from .._types import InvalidationMessage
from ..redis import SyncRedisInvalidationBus, SyncRedisLayer, SyncRedisTagIndex
from ..redis._keys import encode_key
from ..redis._lease import TOMBSTONE_MAGIC
from ._common import CliError
from ._redis import RedisTarget, SyncClient, redis_errors, redis_options
from .admin import (
    DEFAULT_BUS_CHANNEL,
    DEFAULT_PREFIX,
    emit_json,
    json_option,
    progress_option,
    read_layout,
    scan_cache_keys,
    shown_key,
    tag_index_prefix_option,
)

__all__ = ["invalidate"]

CHUNK = 500
"""Keys per delete_many call (one progress step)."""
SAMPLE = 10
"""Keys listed by a dry run."""


def _live(client: SyncClient, keys: Sequence[str], prefix: str) -> list[str]:
    """Which of ``keys`` hold a value in Redis (not absent, not a tombstone)."""
    found = []
    for key in keys:
        head = client.getrange(encode_key(prefix, key), 0, len(TOMBSTONE_MAGIC) - 1)
        if head and head != TOMBSTONE_MAGIC:
            found.append(key)
    return found


class _PublishOnly:
    """An invalidation bus (the ``InvalidationBus`` protocol) that publishes through a
    ``SyncRedisInvalidationBus`` and never subscribes: a one-shot command has no L1 to keep
    in step, and a subscriber would only cost a connection and a second on close."""

    def __init__(self, bus: SyncRedisInvalidationBus) -> None:
        self._bus = bus
        self.source_id = bus.source_id

    def start(self, on_message: Any, on_reconnect: Any, on_error: Any) -> None:
        return None

    def publish(self, message: InvalidationMessage) -> None:
        self._bus.publish(message)


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )


def _selector(
    tags: tuple[str, ...], pattern: str | None, prefix: str | None, keys: tuple[str, ...]
) -> tuple[str, Any]:
    chosen = [
        (name, value)
        for name, value in (
            ("tag", tags),
            ("pattern", pattern),
            ("prefix", prefix),
            ("key", keys),
        )
        if value
    ]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --tag, --pattern, --prefix or --key")
    name, value = chosen[0]
    try:
        if name == "key":
            for key in value:
                validate_key(key)
        elif name == "pattern":
            validate_pattern(value)
        elif name == "prefix":
            validate_prefix(value)
        else:
            for tag in value:
                if not tag or not tag.isprintable():
                    raise ValueError(f"invalid tag {tag!r}")
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=f"'--{name}'") from None
    return name, value


@click.command()
@redis_options
@click.option("--tag", "tags", multiple=True, help="Keys carrying this tag (repeatable: any).")
@click.option("--pattern", help="Keys matching this glob (after the layer prefix).")
@click.option(
    "--prefix", "key_prefix", help="Keys starting with this text (after the layer prefix)."
)
@click.option("--key", "keys", multiple=True, help="This key (repeatable).")
@click.option(
    "--layer-prefix",
    default=DEFAULT_PREFIX,
    show_default=True,
    help="The RedisLayer prefix of the deployment.",
)
@tag_index_prefix_option
@click.option(
    "--bus-channel",
    default=DEFAULT_BUS_CHANNEL,
    show_default=True,
    help="The invalidation bus channel the instances listen on.",
)
@click.option("--no-bus", is_flag=True, help="Do not announce on the bus (L1 copies stay).")
@click.option(
    "--secret-env",
    metavar="VAR",
    help="Environment variable holding the bus's signing secret.",
)
@click.option("--dry-run", is_flag=True, help="Count (and list a few of) the keys; delete nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before a large deletion.")
@click.option(
    "--confirm-above",
    type=click.IntRange(min=0),
    default=1000,
    show_default=True,
    help="Ask for confirmation when more keys than this match.",
)
@progress_option
@json_option
def invalidate(
    target: RedisTarget,
    tags: tuple[str, ...],
    pattern: str | None,
    key_prefix: str | None,
    keys: tuple[str, ...],
    layer_prefix: str,
    tag_index_prefix: str,
    bus_channel: str,
    no_bus: bool,
    secret_env: str | None,
    dry_run: bool,
    yes: bool,
    confirm_above: int,
    progress: bool | None,
    as_json: bool,
) -> None:
    """Delete cached keys by --tag, --pattern, --prefix or --key, and announce it on the bus
    so every instance drops them from its L1.

    Counts first; --dry-run stops there. More than --confirm-above keys ask for confirmation
    (refused without a terminal unless --yes).
    """
    kind, selector = _selector(tags, pattern, key_prefix, keys)
    secret: str | None = None
    if secret_env:
        secret = os.environ.get(secret_env)
        if not secret:
            raise CliError(f"--secret-env: environment variable {secret_env} is not set")
    if no_bus and secret_env:
        raise click.UsageError("--secret-env goes with the bus; drop --no-bus or --secret-env")
    glob = None
    if kind == "pattern":
        glob = str(selector)
    elif kind == "prefix":
        glob = escape_glob(str(selector)) + "*"
    client = target.connect()
    started = time.perf_counter()
    with redis_errors(target, "invalidate"):
        layout = read_layout(client, tag_index_prefix)
        if kind == "key":
            given = list(dict.fromkeys(selector))
            matched = _live(client, given, layer_prefix)
        elif kind == "tag":
            matched = []
            if layout is not None:
                index = SyncRedisTagIndex(client, prefix=tag_index_prefix, known_keys_shards=layout)
                matched = sorted(index.keys_for_tags(list(selector), "any"))
        else:
            assert glob is not None
            matched = list(
                dict.fromkeys(key for _, _, key in scan_cache_keys(client, layer_prefix, glob))
            )
    described = {
        "tag": lambda: "tag " + ", ".join(repr(t) for t in selector),
        "pattern": lambda: f"pattern {selector!r}",
        "prefix": lambda: f"prefix {selector!r}",
        "key": lambda: "key " + ", ".join(repr(shown_key(k)) for k in selector),
    }[kind]()
    report: dict[str, Any] = {
        "redis": target.shown,
        "selector": {"kind": kind, "value": list(selector) if kind in ("tag", "key") else selector},
        "layer_prefix": layer_prefix,
        "matched": len(matched),
        "dry_run": dry_run,
    }
    if dry_run:
        report["sample"] = matched[:SAMPLE]
        client.close()
        if as_json:
            emit_json(report)
            return
        click.echo(f"dry run: {len(matched)} key(s) match {described}; nothing deleted")
        for key in matched[:SAMPLE]:
            click.echo(f"  {shown_key(key)}")
        if len(matched) > SAMPLE:
            click.echo(f"  ... and {len(matched) - SAMPLE} more")
        return
    if len(matched) > confirm_above and not yes:
        if not sys.stdin.isatty():
            client.close()
            raise CliError(
                f"refusing to invalidate {len(matched)} keys (more than --confirm-above "
                f"{confirm_above}) without confirmation: stdin is not a terminal; "
                "rerun with --yes"
            )
        click.confirm(
            f"Invalidate {len(matched)} keys matching {described} on {target.shown}?",
            abort=True,
            err=True,
        )
    show = progress if progress is not None else Console(stderr=True).is_terminal
    deleted, stragglers = _run(
        client,
        target,
        kind,
        selector,
        glob,
        matched,
        layer_prefix=layer_prefix,
        tag_index_prefix=tag_index_prefix,
        layout=layout,
        bus=None
        if no_bus
        else lambda: SyncRedisInvalidationBus(
            publisher=client, channel=bus_channel, signing_secret=secret
        ),
        show_progress=bool(show),
    )
    client.close()
    report.update(
        {
            "deleted": deleted,
            "deleted_after_count": stragglers,
            "announced": not no_bus,
            "bus_channel": None if no_bus else bus_channel,
            "seconds": round(time.perf_counter() - started, 3),
        }
    )
    if as_json:
        emit_json(report)
        return
    extra = f" (+{stragglers} written meanwhile)" if stragglers else ""
    told = f"announced on {bus_channel!r}" if not no_bus else "not announced (--no-bus)"
    click.echo(f"invalidated {deleted} key(s) matching {described}{extra}; {told}")


def _run(
    client: SyncClient,
    target: RedisTarget,
    kind: str,
    selector: Any,
    glob: str | None,
    matched: list[str],
    *,
    layer_prefix: str,
    tag_index_prefix: str,
    layout: int | None,
    bus: Callable[[], SyncRedisInvalidationBus] | None,
    show_progress: bool,
) -> tuple[int, int]:
    """Delete through a stack; ``(keys deleted from the count, keys found afterwards)``."""
    with redis_errors(target, "invalidate"):
        layer = SyncRedisLayer(client=client, prefix=layer_prefix, ttl=None, name="redis")
        tag_index = (
            None
            if layout is None
            else SyncRedisTagIndex(client, prefix=tag_index_prefix, known_keys_shards=layout)
        )
        stack = SyncCacheStack(
            [layer],
            invalidation_bus=None if bus is None else _PublishOnly(bus()),
            tag_index=tag_index,
            logger=False,
        )
        try:
            if kind == "key":
                # Every given key, found in Redis or not: a peer's L1 may still hold it.
                stack.delete_many(list(dict.fromkeys(selector)))
                return len(matched), 0
            with _progress(show_progress) as bar:
                task = bar.add_task("invalidating", total=len(matched))
                for start in range(0, len(matched), CHUNK):
                    chunk = matched[start : start + CHUNK]
                    stack.delete_many(chunk)
                    bar.advance(task, len(chunk))
            # Fences, keys written since the count, and the announcement of the tag/pattern.
            if kind == "tag":
                rest = stack.invalidate_by_tags(list(selector))
            else:
                assert glob is not None
                rest = stack.invalidate_by_pattern(glob)
            return len(matched), rest
        finally:
            stack.close()
