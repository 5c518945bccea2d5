"""``layercache export`` / ``layercache import``: a Redis prefix to and from a snapshot file.

``export`` lists the keys our ``RedisLayer`` wrote under ``--prefix`` (SCAN, never KEYS; on a
cluster every primary), decodes their envelopes in bulk and writes the fresh ones as a
snapshot (:mod:`layercache.snapshots`; atomically, optionally signed). ``import`` validates a
whole file first and writes its entries back through a ``RedisLayer`` (so the bytes are in our
format), optionally recording their tags in a ``RedisTagIndex``. Signing secrets are read from
an environment variable named on the command line, never from the command line itself.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from .._entry import Entry
from ..snapshots import (
    SnapshotEntry,
    make_snapshot,
    read_snapshot,
    snapshot_entries,
    write_snapshot,
)
from ._common import CliError
from ._redis import RedisTarget, redis_errors, redis_options

__all__ = ["export_command", "import_command"]

_BATCH = 500


def _secret(var: str | None) -> str | None:
    if var is None:
        return None
    value = os.environ.get(var)
    if not value:
        raise CliError(f"--secret-env {var}: the environment variable is not set or empty")
    return value


def _layer(target: RedisTarget, prefix: str) -> Any:
    """A sync ``RedisLayer`` on a client of its own (closed with :func:`_close`)."""
    from ..redis._sync_layer import SyncRedisLayer

    client = target.connect()
    try:
        return SyncRedisLayer(client=client, prefix=prefix, ttl=None)
    except ValueError as exc:
        client.close()
        raise CliError(f"--prefix: {exc}") from None


def _close(layer: Any) -> None:
    client = layer.client
    layer.close()  # a layer given a client leaves it open
    client.close()


def _emit(as_json: bool, data: dict[str, Any], text: str) -> None:
    if as_json:
        click.echo(json.dumps(data))
    else:
        click.echo(text, err=True)


@click.command("export")
@redis_options
@click.option("--prefix", default="layercache:", show_default=True, help="RedisLayer prefix.")
@click.option(
    "--secret-env", metavar="VAR", help="Sign the file with the secret in this env variable."
)
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON on stdout.")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def export_command(
    target: RedisTarget, prefix: str, secret_env: str | None, as_json: bool, file: Path
) -> None:
    """Write the fresh keys under --prefix to FILE as a snapshot."""
    secret = _secret(secret_env)
    layer = _layer(target, prefix)
    began = time.monotonic()
    entries: list[SnapshotEntry] = []
    scanned = 0
    now = time.time()
    try:
        with redis_errors(target, "export"):
            keys = layer.keys()  # SCAN in batches, tombstones and bookkeeping keys left out
            for start in range(0, len(keys), _BATCH):
                batch = keys[start : start + _BATCH]
                scanned += len(batch)
                for key, entry in zip(batch, layer.get_many(batch), strict=True):
                    if entry is None or not entry.is_fresh(now):
                        continue

                    def left(until: float | None) -> float | None:
                        return None if until is None else until - now

                    entries.append(
                        SnapshotEntry(
                            key,
                            entry.value,
                            left(entry.fresh_until),
                            left(entry.stale_until),
                            left(entry.error_until),
                            tuple(entry.tags),
                        )
                    )
        try:
            snapshot = make_snapshot(entries, created_at=now)
            written = write_snapshot(snapshot, file, secret=secret, base_dir=False)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        except OSError as exc:
            raise CliError(f"cannot write {str(file)!r}: {exc.strerror or exc}") from None
    finally:
        _close(layer)
    _emit(
        as_json,
        {
            "file": str(written),
            "prefix": prefix,
            "redis": target.shown,
            "keys_scanned": scanned,
            "entries": len(entries),
            "signed": secret is not None,
            "seconds": round(time.monotonic() - began, 3),
        },
        f"exported {len(entries)} entries (of {scanned} keys) under {prefix!r} "
        f"from {target.shown} to {written}{' (signed)' if secret else ''}",
    )


@click.command("import")
@redis_options
@click.option("--prefix", default="layercache:", show_default=True, help="RedisLayer prefix.")
@click.option("--secret-env", metavar="VAR", help="Verify the file with this env variable.")
@click.option(
    "--tag-index-prefix",
    help="Also record the entries' tags in the RedisTagIndex with this prefix.",
)
@click.option(
    "--known-key-shards",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="known_keys_shards of that tag index.",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON on stdout.")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def import_command(
    target: RedisTarget,
    prefix: str,
    secret_env: str | None,
    tag_index_prefix: str | None,
    known_key_shards: int,
    yes: bool,
    as_json: bool,
    file: Path,
) -> None:
    """Write the entries of snapshot FILE under --prefix (all or nothing: the file is
    validated completely first). Entries whose TTL ran out are skipped."""
    secret = _secret(secret_env)
    try:
        snapshot = read_snapshot(file, secret=secret, base_dir=False)
        entries = snapshot_entries(snapshot)
    except FileNotFoundError:
        raise CliError(f"no such file: {str(file)!r}") from None
    except ValueError as exc:
        raise CliError(f"{file}: {exc}") from None
    except OSError as exc:
        raise CliError(f"cannot read {str(file)!r}: {exc.strerror or exc}") from None
    live = [e for e in entries if e.ttl is None or e.ttl > 0]
    if not yes:
        if not sys.stdin.isatty():
            raise CliError(
                f"refusing to write {len(live)} entries under {prefix!r} unconfirmed: "
                "pass --yes (stdin is not a terminal)"
            )
        click.confirm(
            f"Write {len(live)} entries under {prefix!r} at {target.shown}?",
            abort=True,
            err=True,
        )
    layer = _layer(target, prefix)
    began = time.monotonic()
    try:
        with redis_errors(target, "import"):
            index = None
            if tag_index_prefix is not None:
                from ..redis._sync_tag_index import SyncRedisTagIndex

                try:
                    index = SyncRedisTagIndex(
                        layer.client, prefix=tag_index_prefix, known_keys_shards=known_key_shards
                    )
                except ValueError as exc:
                    raise CliError(f"--tag-index-prefix: {exc}") from None
            now = time.time()
            for start in range(0, len(live), _BATCH):
                items: list[tuple[str, Entry, float | None]] = []
                records: list[tuple[str, tuple[str, ...], float | None]] = []
                for item in live[start : start + _BATCH]:
                    entry = _entry(item, now)
                    items.append((item.key, entry, entry.storage_ttl(now)))
                    if item.tags:
                        records.append((item.key, item.tags, entry.expires_at))
                if index is not None and records:
                    index.record_many(records)  # tags first: no tagged value escapes the index
                layer.set_many(items)
    finally:
        _close(layer)
    _emit(
        as_json,
        {
            "file": str(file),
            "prefix": prefix,
            "redis": target.shown,
            "entries": len(live),
            "skipped_expired": len(entries) - len(live),
            "tags_recorded": tag_index_prefix is not None,
            "seconds": round(time.monotonic() - began, 3),
        },
        f"imported {len(live)} entries under {prefix!r} into {target.shown} "
        f"({len(entries) - len(live)} expired skipped)",
    )


def _entry(item: SnapshotEntry, now: float) -> Entry:
    """The envelope of one snapshot entry, its windows counted from ``now`` (``ttl`` null:
    no expiry)."""
    if item.ttl is None:
        return Entry(item.value, now, None, tags=item.tags)
    fresh = now + item.ttl
    stale = (
        now + item.stale_ttl if item.stale_ttl is not None and item.stale_ttl > item.ttl else None
    )
    error = (
        now + item.error_ttl if item.error_ttl is not None and item.error_ttl > item.ttl else None
    )
    return Entry(item.value, now, fresh, stale, error, item.tags)
