"""``layercache stats``, ``keys``, ``inspect`` and ``doctor``: reading a deployment's Redis.

Every command here only reads (``doctor`` also sends ``PING``s). ``--json`` prints one JSON
document on stdout and nothing else there; errors are one ``Error: ...`` line on stderr.
Keys are walked with ``SCAN`` (never ``KEYS``), on every master of a cluster.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import click
import redis

from .._codec import COMPRESSIONS, HEADER_SIZE, MAGIC, VERSION, CorruptEntryError, EntryCodec
from .._glob import glob_match
from .._keys import validate_pattern
from ..redis._keys import (
    encode_key,
    invalidation_channel,
    prefix_match,
    scan_match,
    strip_prefix,
    tag_index_expiry,
    tag_index_layout,
    tag_index_shard,
)
from ..redis._lease import INTERNAL_MARK, TOMBSTONE_MAGIC
from ..serializers import JsonSerializer, MsgpackSerializer, PickleSerializer, Serializer
from ._common import CliError
from ._redis import RedisTarget, SyncClient, is_cluster, masters, redis_errors, redis_options

__all__ = [
    "DEFAULT_BUS_CHANNEL",
    "DEFAULT_PREFIX",
    "DEFAULT_TAG_INDEX_PREFIX",
    "doctor",
    "inspect_key",
    "keys",
    "read_layout",
    "scan_cache_keys",
    "stats",
]

DEFAULT_PREFIX = "layercache:"
"""RedisLayer's default key prefix."""
DEFAULT_TAG_INDEX_PREFIX = "layercache:tag-index"

# Options several commands share (one definition each).
json_option = click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
tag_index_prefix_option = click.option(
    "--tag-index-prefix",
    default=DEFAULT_TAG_INDEX_PREFIX,
    show_default=True,
    help="The RedisTagIndex prefix.",
)
progress_option = click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bar on stderr (default: when stderr is a terminal).",
)
"""RedisTagIndex's default prefix."""
DEFAULT_BUS_CHANNEL = "layercache:invalidation"
"""RedisInvalidationBus's default channel."""
SCAN_COUNT = 1000
CHECK_BATCH = 500
_SERIALIZER_NAMES = {1: "json", 2: "msgpack", 3: "pickle"}
_COMPRESSION_NAMES = {0: "none", **{v: k for k, v in COMPRESSIONS.items()}}


def emit_json(data: Any) -> None:
    """The machine output of a ``--json`` run: one document on stdout."""
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def checked_pattern(pattern: str) -> str:
    try:
        return validate_pattern(pattern)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--pattern'") from None


def shown_key(key: str) -> str:
    """A key as printed on a text line: control characters escaped, nothing else changed."""
    if key.isprintable():
        return key
    return key.encode("unicode_escape").decode("ascii")


# -- scanning ------------------------------------------------------------------------------------


def _not_tombstones(node: redis.Redis, batch: list[tuple[bytes, str]]) -> list[tuple[bytes, str]]:
    """The keys of ``batch`` that are not a delete's tombstone (one pipeline)."""
    pipe = node.pipeline(transaction=False)
    for raw, _ in batch:
        pipe.getrange(raw, 0, len(TOMBSTONE_MAGIC) - 1)
    heads = pipe.execute(raise_on_error=False)
    return [item for item, head in zip(batch, heads, strict=True) if head != TOMBSTONE_MAGIC]


def scan_cache_keys(
    client: SyncClient, prefix: str, pattern: str
) -> Iterator[tuple[redis.Redis, bytes, str]]:
    """Every live cache key under ``prefix`` whose un-prefixed part matches the glob
    ``pattern``: ``(node, redis_key, key)``, streamed master by master.

    ``SCAN MATCH`` narrows the candidates on the server (:func:`scan_match`), the glob decides;
    the layer's own bookkeeping keys and deletes' tombstones are skipped, as ``RedisLayer.keys``
    skips them. A key may be reported twice if Redis rehashes during the scan (SCAN's
    guarantee), so callers that count de-duplicate per node.
    """
    match = scan_match(prefix, pattern)
    prefix_bytes = prefix.encode("utf-8", "surrogatepass")
    for _, node in masters(client):
        batch: list[tuple[bytes, str]] = []
        for raw in node.scan_iter(match=match, count=SCAN_COUNT):
            key = strip_prefix(prefix_bytes, raw)
            if key is None or key.startswith(INTERNAL_MARK) or not glob_match(pattern, key):
                continue
            batch.append((raw, key))
            if len(batch) >= CHECK_BATCH:
                for raw_key, found in _not_tombstones(node, batch):
                    yield node, raw_key, found
                batch = []
        if batch:
            for raw_key, found in _not_tombstones(node, batch):
                yield node, raw_key, found


def read_layout(client: SyncClient, tag_index_prefix: str) -> int | None:
    """The known-keys shard count a tag index was created with (``None``: no index there)."""
    raw = client.get(tag_index_layout(tag_index_prefix))
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise CliError(
            f"the tag index {tag_index_prefix!r} has an unreadable layout value {raw!r}"
        ) from None


def _as_bytes(value: bytes | str) -> bytes:
    # Clients are made with decode_responses=False; this narrows redis-py's typing.
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def _int(info: dict[str, Any], name: str) -> int:
    try:
        return int(info.get(name, 0))
    except (TypeError, ValueError):
        return 0


# -- stats -----------------------------------------------------------------------------------------


def _group_of(key: str) -> str:
    head, colon, _ = key.partition(":")
    return head if colon else "(no ':')"


@click.command()
@redis_options
@click.option("--prefix", default=DEFAULT_PREFIX, show_default=True, help="The layer's key prefix.")
@tag_index_prefix_option
@click.option(
    "--scan-limit",
    type=click.IntRange(min=1),
    default=100_000,
    show_default=True,
    help="Most keys examined per master when counting (the counts say when they stopped).",
)
@click.option("--groups", "max_groups", type=click.IntRange(min=1), default=25, show_default=True)
@json_option
def stats(
    target: RedisTarget,
    prefix: str,
    tag_index_prefix: str,
    scan_limit: int,
    max_groups: int,
    as_json: bool,
) -> None:
    """Key counts per prefix, memory, tag-index size and the server facts a cache depends on."""
    client = target.connect()
    with redis_errors(target, "stats"):
        report = _collect_stats(client, target, prefix, tag_index_prefix, scan_limit, max_groups)
        client.close()
    if as_json:
        emit_json(report)
        return
    server, memory, counted, index = (
        report["server"],
        report["memory"],
        report["keys"],
        report["tag_index"],
    )
    echo = click.echo
    echo(f"Redis {target.shown}  ({report['nodes']} master{'s' if report['nodes'] > 1 else ''})")
    echo(f"  version            {server['version']}")
    echo(f"  maxmemory-policy   {server['maxmemory_policy']}")
    limit = _bytes(server["maxmemory"]) if server["maxmemory"] else "0 (no limit)"
    echo(f"  maxmemory          {limit}")
    echo(f"  memory used        {_bytes(memory['used_memory'])}")
    ratio = server["hit_ratio"]
    echo(
        f"  keyspace hits      {server['keyspace_hits']} hits, {server['keyspace_misses']} misses"
        f" ({'n/a' if ratio is None else f'{ratio:.1%}'} hit ratio)"
    )
    echo(f"  connected clients  {server['connected_clients']}")
    echo(f"  evicted keys       {server['evicted_keys']}")
    echo(f"  keys in database   {server['db_keys']}")
    partial = "" if counted["complete"] else " (at least; the scan stopped at --scan-limit)"
    echo(f"Keys under {prefix!r}: {counted['total']}{partial}")
    for group, count in counted["groups"].items():
        echo(f"  {shown_key(group):<30} {count}")
    if counted["internal"]:
        echo(f"  (layer bookkeeping keys: {counted['internal']})")
    if index["known_keys_shards"] is None:
        echo(f"Tag index {tag_index_prefix!r}: none")
    else:
        echo(
            f"Tag index {tag_index_prefix!r}: {index['keys']} tagged keys in "
            f"{index['known_keys_shards']} known-keys shards, {index['expiring']} with an expiry"
        )


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit} ({n} B)"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _collect_stats(
    client: SyncClient,
    target: RedisTarget,
    prefix: str,
    tag_index_prefix: str,
    scan_limit: int,
    max_groups: int,
) -> dict[str, Any]:
    nodes = masters(client)
    versions: set[str] = set()
    policies: set[str] = set()
    totals = Counter[str]()
    maxmemory = 0
    for _, node in nodes:
        info = node.info()
        versions.add(str(info.get("redis_version", "?")))
        policies.add(str(info.get("maxmemory_policy", "?")))
        maxmemory += _int(info, "maxmemory")
        for name in (
            "used_memory",
            "connected_clients",
            "evicted_keys",
            "expired_keys",
            "keyspace_hits",
            "keyspace_misses",
        ):
            totals[name] += _int(info, name)
        totals["db_keys"] += int(node.dbsize())
    lookups = totals["keyspace_hits"] + totals["keyspace_misses"]
    groups = Counter[str]()
    internal = 0
    complete = True
    match = prefix_match(prefix)
    prefix_bytes = prefix.encode("utf-8", "surrogatepass")
    for _, node in nodes:
        seen: set[bytes] = set()
        for raw in node.scan_iter(match=match, count=SCAN_COUNT):
            if raw in seen:
                continue
            if len(seen) >= scan_limit:
                complete = False
                break
            seen.add(raw)
            key = strip_prefix(prefix_bytes, raw)
            if key is None:
                continue
            if key.startswith(INTERNAL_MARK):
                internal += 1
            else:
                groups[_group_of(key)] += 1
    shown = dict(groups.most_common(max_groups))
    rest = sum(groups.values()) - sum(shown.values())
    if rest:
        shown["(other groups)"] = rest
    layout = read_layout(client, tag_index_prefix)
    indexed = expiring = 0
    if layout is not None:
        pipe = client.pipeline(transaction=False)
        for n in range(layout):
            pipe.scard(tag_index_shard(tag_index_prefix, n))
        indexed = sum(int(c) for c in pipe.execute())
        expiring = int(client.zcard(tag_index_expiry(tag_index_prefix)))
    return {
        "redis": target.shown,
        "cluster": is_cluster(client),
        "nodes": len(nodes),
        "server": {
            "version": ", ".join(sorted(versions)),
            "maxmemory_policy": ", ".join(sorted(policies)),
            "maxmemory": maxmemory,
            "connected_clients": totals["connected_clients"],
            "evicted_keys": totals["evicted_keys"],
            "expired_keys": totals["expired_keys"],
            "keyspace_hits": totals["keyspace_hits"],
            "keyspace_misses": totals["keyspace_misses"],
            "hit_ratio": None if lookups == 0 else totals["keyspace_hits"] / lookups,
            "db_keys": totals["db_keys"],
        },
        "memory": {
            "used_memory": totals["used_memory"],
            "maxmemory": maxmemory,
            "used_ratio": None if maxmemory == 0 else totals["used_memory"] / maxmemory,
        },
        "keys": {
            "prefix": prefix,
            "total": sum(groups.values()),
            "complete": complete,
            "scan_limit": scan_limit,
            "groups": shown,
            "internal": internal,
        },
        "tag_index": {
            "prefix": tag_index_prefix,
            "known_keys_shards": layout,
            "keys": indexed,
            "expiring": expiring,
        },
    }


# -- keys ------------------------------------------------------------------------------------------


@click.command()
@redis_options
@click.option("--pattern", required=True, help="Glob over the cache keys (after the prefix).")
@click.option(
    "--prefix",
    default=DEFAULT_PREFIX,
    show_default=True,
    help="The layer's key prefix ('' for raw).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=1000,
    show_default=True,
    help="Stop after this many keys (0: no limit).",
)
@json_option
def keys(target: RedisTarget, pattern: str, prefix: str, limit: int, as_json: bool) -> None:
    """Stream the cache keys matching PATTERN (SCAN, never KEYS; every master of a cluster).

    Printed one per line as they are found, without the prefix (ready for ``inspect`` and
    ``invalidate --key``).
    """
    checked_pattern(pattern)
    client = target.connect()
    found: list[str] = []
    truncated = False
    with redis_errors(target, "keys"):
        seen: set[bytes] = set()
        for _, raw, key in scan_cache_keys(client, prefix, pattern):
            if raw in seen:
                continue
            if limit and len(found) >= limit:
                truncated = True
                break
            seen.add(raw)
            found.append(key)
            if not as_json:
                click.echo(shown_key(key))
        client.close()
    if as_json:
        emit_json(
            {
                "redis": target.shown,
                "prefix": prefix,
                "pattern": pattern,
                "count": len(found),
                "truncated": truncated,
                "keys": found,
            }
        )
    elif truncated:
        click.echo(f"(stopped at --limit {limit})", err=True)


# -- inspect ---------------------------------------------------------------------------------------


def _serializer_for(fid: int, pickle_secret: str | None) -> Serializer | None:
    if fid == 1:
        return JsonSerializer()
    if fid == 2:
        try:
            return MsgpackSerializer()
        except ImportError as exc:
            raise CliError(f"this entry is msgpack: {exc}") from None
    if fid == 3 and pickle_secret:
        return PickleSerializer(signing_secret=pickle_secret)
    return None


def _remaining(until: float | None, now: float) -> float | None:
    return None if until is None else until - now


def _preview(value: Any, limit: int) -> tuple[str, Any, bool]:
    """``(text, json_value, truncated)``: a bounded repr, and the value itself when it is
    JSON-representable within the bound (else ``None``)."""
    text = repr(value)
    truncated = len(text) > limit
    if truncated:
        text = text[:limit] + f"... ({len(repr(value))} characters)"
    try:
        dumped = json.dumps(value)
    except (TypeError, ValueError):
        return text, None, truncated
    return text, (value if len(dumped) <= limit else None), truncated


@click.command("inspect")
@redis_options
@click.argument("key")
@click.option("--prefix", default=DEFAULT_PREFIX, show_default=True, help="The layer's key prefix.")
@click.option(
    "--preview",
    type=click.IntRange(min=10, max=100_000),
    default=200,
    show_default=True,
    help="Characters of the value shown at most.",
)
@click.option(
    "--pickle-secret-env",
    metavar="VAR",
    help="Environment variable holding a PickleSerializer's signing secret.",
)
@json_option
def inspect_key(
    target: RedisTarget,
    key: str,
    prefix: str,
    preview: int,
    pickle_secret_env: str | None,
    as_json: bool,
) -> None:
    """Decode the entry stored under KEY: value preview, windows, tags, size, format.

    Works for entries of the asyncio and the sync stack alike (one format). A value that is
    not a layercache entry is reported as such (exit 1).
    """
    pickle_secret = None
    if pickle_secret_env:
        pickle_secret = os.environ.get(pickle_secret_env)
        if not pickle_secret:
            raise CliError(f"environment variable {pickle_secret_env} is not set")
    client = target.connect()
    redis_key = encode_key(prefix, key)
    with redis_errors(target, "inspect"):
        kind = _as_bytes(client.type(redis_key))
        stored = client.get(redis_key) if kind == b"string" else None
        raw = None if stored is None else _as_bytes(stored)
        pttl = int(client.pttl(redis_key))
        client.close()
    where = f"{shown_key(key)!r} (Redis key {shown_key(redis_key.decode('utf-8', 'replace'))!r})"
    if kind == b"none":
        raise CliError(f"no key {where}")
    if raw is None:
        raise CliError(f"{where} is not a layercache entry (a Redis {kind.decode()}, not a string)")
    if raw[: len(TOMBSTONE_MAGIC)] == TOMBSTONE_MAGIC:
        raise CliError(f"{where} was deleted (it holds a delete's tombstone, read as a miss)")
    if len(raw) < HEADER_SIZE or raw[: len(MAGIC)] != MAGIC:
        raise CliError(f"{where} is not a layercache entry ({len(raw)} bytes of something else)")
    version, method, fid = raw[3], raw[4], raw[5]
    header = {
        "key": key,
        "redis_key": redis_key.decode("utf-8", "surrogateescape"),
        "size_bytes": len(raw),
        "format_version": version,
        "serializer": _SERIALIZER_NAMES.get(fid, f"id {fid}"),
        "compression": _COMPRESSION_NAMES.get(method, f"id {method}"),
        "redis_ttl": None if pttl < 0 else pttl / 1000,
    }
    if version != VERSION:
        raise CliError(f"{where} is not a layercache entry this version reads (format {version})")
    serializer = _serializer_for(fid, pickle_secret)
    if serializer is None:
        why = (
            "pickle: pass --pickle-secret-env to verify and decode it"
            if fid == 3
            else f"unknown serializer id {fid}"
        )
        raise CliError(f"{where}: cannot decode the value ({why})")
    try:
        entry = EntryCodec(serializer=serializer).decode(raw)
    except CorruptEntryError as exc:
        raise CliError(f"{where} is not a readable layercache entry: {exc}") from None
    now = time.time()
    text, value, truncated = _preview(entry.value, preview)
    if entry.is_fresh(now):
        state = "fresh"
    elif entry.stale_until is not None and now < entry.stale_until:
        state = "stale (stale-while-revalidate window)"
    elif entry.error_until is not None and now < entry.error_until:
        state = "stale (only if the fetcher fails: stale-if-error window)"
    else:
        state = "expired"
    report = {
        **header,
        "state": state,
        "stored_at": entry.stored_at,
        "age": now - entry.stored_at,
        "fresh_until": entry.fresh_until,
        "fresh_remaining": _remaining(entry.fresh_until, now),
        "stale_until": entry.stale_until,
        "stale_remaining": _remaining(entry.stale_until, now),
        "error_until": entry.error_until,
        "error_remaining": _remaining(entry.error_until, now),
        "tags": list(entry.tags),
        "value_type": type(entry.value).__name__,
        "value_preview": text,
        "value_truncated": truncated,
        "value": value,
    }
    if as_json:
        emit_json(report)
        return

    def window(remaining: float | None, until: float | None, none: str) -> str:
        if until is None:
            return none
        assert remaining is not None
        return f"{remaining:.1f} s left" if remaining > 0 else f"ended {-remaining:.1f} s ago"

    echo = click.echo
    echo(f"key           {shown_key(key)}")
    echo(f"redis key     {shown_key(str(header['redis_key']))}")
    echo(f"state         {state}")
    formats = f"serializer {header['serializer']}, compression {header['compression']}"
    echo(f"size          {len(raw)} bytes ({formats})")
    echo(f"stored        {report['age']:.1f} s ago")
    echo(f"fresh         {window(report['fresh_remaining'], entry.fresh_until, 'forever')}")
    echo(f"stale window  {window(report['stale_remaining'], entry.stale_until, 'none')}")
    echo(f"error window  {window(report['error_remaining'], entry.error_until, 'none')}")
    ttl = header["redis_ttl"]
    echo(f"redis ttl     {'none' if ttl is None else f'{ttl:.1f} s'}")
    echo(f"tags          {', '.join(entry.tags) if entry.tags else '(none)'}")
    echo(f"value ({type(entry.value).__name__})  {text}")


# -- doctor ----------------------------------------------------------------------------------------

_SEVERITIES = ("critical", "warning", "info", "ok")


def _finding(severity: str, check: str, message: str, fix: str = "") -> dict[str, str]:
    return {"severity": severity, "check": check, "message": message, "fix": fix}


def _percentile(samples: list[float], share: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))
    return ordered[index]


def _config(node: redis.Redis, name: str) -> str | None:
    """``CONFIG GET name``, or ``None`` where CONFIG is disabled (managed services)."""
    try:
        reply: dict[Any, Any] = dict(node.config_get(name))
    except redis.exceptions.ResponseError:
        return None
    value = reply.get(name, reply.get(name.encode()))
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _doctor_node(name: str, node: redis.Redis, multi: bool) -> list[dict[str, str]]:
    where = f" on {name}" if multi else ""
    found: list[dict[str, str]] = []
    info = node.info()
    policy = str(info.get("maxmemory_policy", "?"))
    if policy == "noeviction":
        found.append(
            _finding(
                "critical",
                "maxmemory-policy",
                f"maxmemory-policy is noeviction{where}: once full, every cache write fails "
                "with an OOM error",
                "CONFIG SET maxmemory-policy allkeys-lru (or allkeys-lfu); persist it in "
                "redis.conf",
            )
        )
    elif policy.startswith("volatile-"):
        found.append(
            _finding(
                "warning",
                "maxmemory-policy",
                f"maxmemory-policy is {policy}{where}: only keys with a TTL are evicted, so "
                "entries stored without one (ttl=None) can fill the memory",
                "use allkeys-lru or allkeys-lfu for a dedicated cache",
            )
        )
    else:
        found.append(_finding("ok", "maxmemory-policy", f"maxmemory-policy is {policy}{where}"))
    if _int(info, "maxmemory") == 0:
        found.append(
            _finding(
                "warning",
                "maxmemory",
                f"maxmemory is 0 (no limit){where}: Redis grows until the machine runs out "
                "of memory, and the eviction policy never runs",
                "CONFIG SET maxmemory <bytes> (e.g. 75% of the memory Redis may use)",
            )
        )
    else:
        found.append(
            _finding("ok", "maxmemory", f"maxmemory is {_bytes(_int(info, 'maxmemory'))}{where}")
        )
    aof = _int(info, "aof_enabled") == 1
    save = _config(node, "save")
    if aof:
        found.append(
            _finding(
                "warning",
                "persistence",
                f"AOF is on{where}: every cache write is also written to disk; a cache can "
                "be refilled from its origin",
                "CONFIG SET appendonly no (unless this Redis also holds data that must survive)",
            )
        )
    if save:
        found.append(
            _finding(
                "info",
                "persistence",
                f"RDB snapshots are on{where} (save {save!r}): forks and disk writes for data "
                "a cache can refill",
                "CONFIG SET save '' on a Redis that only caches",
            )
        )
    if not aof and not save:
        found.append(
            _finding("ok", "persistence", f"no persistence{where} (right for a pure cache)")
        )
    if _int(info, "cluster_enabled") == 1:
        cluster_info = _command(node, "CLUSTER", "INFO")
        text = cluster_info.decode() if isinstance(cluster_info, bytes) else str(cluster_info)
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        state = fields.get("cluster_state", "?").strip()
        if state != "ok":
            found.append(
                _finding(
                    "critical",
                    "cluster",
                    f"cluster_state is {state}{where} "
                    f"(slots ok {fields.get('cluster_slots_ok', '?').strip()} of 16384)",
                    "assign every slot and bring failed masters back (redis-cli --cluster fix)",
                )
            )
        else:
            found.append(_finding("ok", "cluster", f"cluster_state is ok{where}"))
    return found


@click.command()
@redis_options
@click.option(
    "--bus-channel",
    default=DEFAULT_BUS_CHANNEL,
    show_default=True,
    help="The invalidation bus channel whose subscribers are counted.",
)
@click.option(
    "--samples",
    type=click.IntRange(min=3, max=10_000),
    default=50,
    show_default=True,
    help="PING round trips measured.",
)
@click.option(
    "--latency-warning-ms",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="p99 PING round trip above which latency is a warning.",
)
@json_option
def doctor(
    target: RedisTarget,
    bus_channel: str,
    samples: int,
    latency_warning_ms: float,
    as_json: bool,
) -> None:
    """Check a deployment and say what to fix; exit 1 on a critical finding."""
    client = target.connect()
    findings: list[dict[str, str]] = []
    with redis_errors(target, "doctor"):
        nodes = masters(client)
        for name, node in nodes:
            findings.extend(_doctor_node(name, node, len(nodes) > 1))
        rtts: list[float] = []
        for _ in range(samples):
            start = time.perf_counter()
            nodes[0][1].ping()
            rtts.append((time.perf_counter() - start) * 1000)
        p50, p99 = statistics.median(rtts), _percentile(rtts, 0.99)
        latency = {"samples": samples, "p50_ms": p50, "p99_ms": p99, "max_ms": max(rtts)}
        if p99 > latency_warning_ms:
            findings.append(
                _finding(
                    "warning",
                    "latency",
                    f"PING round trip p50 {p50:.2f} ms, p99 {p99:.2f} ms (over "
                    f"{latency_warning_ms:g} ms): an L2 hit costs at least this",
                    "run the cache close to the application (same zone), check the server's "
                    "load (SLOWLOG GET) and the network",
                )
            )
        else:
            findings.append(
                _finding("ok", "latency", f"PING round trip p50 {p50:.2f} ms, p99 {p99:.2f} ms")
            )
        subscribers = _bus_subscribers(client, bus_channel)
        client.close()
    if target.scheme in ("redis", "redis+sentinel") and not target.is_loopback:
        findings.append(
            _finding(
                "warning",
                "tls",
                f"plain {target.scheme}:// to a remote host: passwords and cached values cross "
                "the network unencrypted",
                "enable TLS on Redis and use rediss:// (then run with --require-tls)",
            )
        )
    elif target.uses_tls:
        findings.append(_finding("ok", "tls", "TLS (rediss://)"))
    else:
        findings.append(_finding("ok", "tls", "plain connection, but to this machine only"))
    if subscribers == 0:
        findings.append(
            _finding(
                "warning",
                "bus",
                f"nobody subscribes to the bus channel {bus_channel!r}: invalidations reach no "
                "instance's L1 (or the instances use another channel)",
                "give every CacheStack a RedisInvalidationBus on this channel "
                "(or pass --bus-channel)",
            )
        )
    else:
        findings.append(
            _finding("ok", "bus", f"{subscribers} subscriber(s) on the bus channel {bus_channel!r}")
        )
    findings.sort(key=lambda f: _SEVERITIES.index(f["severity"]))
    critical = sum(f["severity"] == "critical" for f in findings)
    warnings = sum(f["severity"] == "warning" for f in findings)
    if as_json:
        emit_json(
            {
                "redis": target.shown,
                "cluster": is_cluster(client),
                "findings": findings,
                "critical": critical,
                "warnings": warnings,
                "latency": latency,
                "bus": {"channel": bus_channel, "subscribers": subscribers},
            }
        )
    else:
        for f in findings:
            colour = {"critical": "red", "warning": "yellow", "info": "cyan", "ok": "green"}
            label = click.style(f"{f['severity'].upper():<8}", fg=colour[f["severity"]], bold=True)
            click.echo(f"{label} {f['check']}: {f['message']}")
            if f["fix"]:
                click.echo(f"         fix: {f['fix']}")
        click.echo(f"{critical} critical, {warnings} warning(s)")
    if critical:
        raise click.exceptions.Exit(1)


def _command(client: Any, *args: Any) -> Any:
    """A raw command (redis-py leaves execute_command untyped)."""
    return client.execute_command(*args)


def _bus_subscribers(client: SyncClient, channel: str) -> int:
    name = invalidation_channel(channel)
    if is_cluster(client):
        # The bus uses sharded pub/sub on a cluster: count on the node owning the channel.
        cluster: Any = client
        node = cluster.get_node_from_key(name)
        reply = _command(cluster.get_redis_connection(node), "PUBSUB", "SHARDNUMSUB", name)
    else:
        reply = _command(client, "PUBSUB", "NUMSUB", name)
    # [channel, count] (redis-py may already pair it up).
    if isinstance(reply, list | tuple) and reply and isinstance(reply[0], list | tuple):
        return int(reply[0][1])
    return int(reply[1]) if len(reply) > 1 else 0
