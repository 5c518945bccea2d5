"""``layercache migrate-tag-index``: re-shard a RedisTagIndex's known-keys sets online.

A :class:`~layercache.RedisTagIndex` spreads the keys it knows over ``known_keys_shards`` sets
``{prefix}:keys:<n>`` (shard = first 32 bits of SHA-1 of the key modulo the count, the index's
own :func:`~layercache.redis._keys.tag_index_shard_of`) and stores the count in
``{prefix}:layout``; every instance's scripts refuse a different count. The migration from M
to N shards runs in two phases while the instances keep working:

1. **copy**: every member of the M old shards is added to its shard under N as well (the old
   shards keep it), batch by batch with ``SSCAN``. Instances still run with M: their lookups
   walk shards 0..M-1 and find everything; a pattern lookup by an instance with N would find
   every key too (duplicates are dropped). Tag lookups do not use the shards at all.
2. The layout flips from M to N (atomically, only if it still says M). From here instances
   configured with M get a layout error on tag-index writes (under graceful degradation they
   skip the index and replay later): roll out ``known_keys_shards=N`` right after the flip.
3. **move**: every member not in its shard under N is moved there, and members whose key is
   no longer in the index (forgotten during the copy) are dropped, one atomic script per
   batch, so nothing an instance with N writes meanwhile is lost.

Progress (phase, shard, ``SSCAN`` cursor, counts) is kept in ``{prefix}:migration`` after
every batch: an interrupted run (or one stopped by ``--max-batches``) continues where it was
when run again with the same ``--known-key-shards``. A finished migration leaves nothing
behind; running it again re-checks every member and changes nothing.
"""

from __future__ import annotations

import time
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..redis._keys import (
    prefix_match,
    tag_index_base,
    tag_index_key_set_prefix,
    tag_index_layout,
    tag_index_shard,
    tag_index_shard_of,
    tag_index_shard_prefix,
)
from ._common import CliError
from ._redis import RedisTarget, SyncClient, redis_errors, redis_options
from .admin import (
    emit_json,
    json_option,
    progress_option,
    read_layout,
    tag_index_prefix_option,
)

__all__ = ["migrate_tag_index"]

MAX_SHARDS = 4096
"""RedisTagIndex's bound on known_keys_shards."""

# Move members of one shard to their shard under the new count, atomically per batch.
# KEYS[1]  the shard being walked ({prefix}:keys:<i>)
# ARGV[1]  the key-set name prefix ({prefix}:key:)
# ARGV[2..] pairs: a member, the name of its shard under the new count
# Every name shares the hash tag {prefix}, so on a cluster they all live in KEYS[1]'s slot.
# A member whose key set is gone was forgotten (RedisTagIndex keeps a member in a shard
# exactly while its key set exists): it is dropped. Returns {moved, dropped}.
_MOVE = """
local moved, dropped = 0, 0
for i = 2, #ARGV, 2 do
  local member, target = ARGV[i], ARGV[i + 1]
  if redis.call('SISMEMBER', KEYS[1], member) == 1 then
    if redis.call('EXISTS', ARGV[1] .. member) == 0 then
      redis.call('SREM', KEYS[1], member)
      dropped = dropped + 1
    elseif target ~= KEYS[1] then
      redis.call('SADD', target, member)
      redis.call('SREM', KEYS[1], member)
      moved = moved + 1
    end
  end
end
return {moved, dropped}
"""

# Flip the layout from ARGV[1] to ARGV[2] if it still says ARGV[1]. KEYS[1] the layout.
# Returns the layout now.
_FLIP = """
local now = redis.call('GET', KEYS[1])
if now == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return ARGV[2]
end
return now
"""


def migration_key(prefix: str) -> bytes:
    """Where an unfinished migration keeps its progress (``{prefix}:migration``)."""
    return (tag_index_base(prefix) + "migration").encode("utf-8", "surrogatepass")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class _Migration:
    def __init__(
        self,
        client: SyncClient,
        prefix: str,
        state: dict[str, str],
        batch: int,
        max_batches: int | None,
        progress: Progress,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.state = state
        self.batch = batch
        self.batches_left = max_batches
        self.progress = progress
        self.key = migration_key(prefix)
        self.move_script = client.register_script(_MOVE)
        self.flip_script = client.register_script(_FLIP)
        self.key_set_prefix = tag_index_key_set_prefix(prefix)

    @property
    def old(self) -> int:
        return int(self.state["from"])

    @property
    def new(self) -> int:
        return int(self.state["to"])

    def _save(self, **fields: Any) -> None:
        self.state.update({k: str(v) for k, v in fields.items()})
        self.client.hset(self.key, mapping=dict[Any, Any](self.state))

    def _count(self, name: str) -> int:
        return int(self.state.get(name, "0"))

    def _out_of_batches(self) -> bool:
        if self.batches_left is None:
            return False
        if self.batches_left <= 0:
            return True
        self.batches_left -= 1
        return False

    def _walk(self, shards: int, step: Any, description: str) -> bool:
        """Walk shards ``state['shard']..shards-1`` with SSCAN from the saved cursor, calling
        ``step(shard, members)`` per batch and saving progress; ``False`` if stopped early."""
        names = [tag_index_shard(self.prefix, n) for n in range(shards)]
        pipe = self.client.pipeline(transaction=False)
        for name in names[self._count("shard") :]:
            pipe.scard(name)
        remaining = sum(int(n) for n in pipe.execute()) if shards > self._count("shard") else 0
        task = self.progress.add_task(description, total=remaining)
        while self._count("shard") < shards:
            shard = self._count("shard")
            cursor = self._count("cursor")
            while True:
                if self._out_of_batches():
                    return False
                cursor, members = self.client.sscan(names[shard], cursor, count=self.batch)
                cursor = int(cursor)
                if members:
                    step(shard, [m if isinstance(m, bytes) else m.encode() for m in members])
                    self.progress.advance(task, len(members))
                if cursor == 0:
                    self._save(shard=shard + 1, cursor=0)
                    break
                self._save(cursor=cursor)
        return True

    def _copy(self, shard: int, members: list[bytes]) -> None:
        pipe = self.client.pipeline(transaction=False)
        copied = 0
        for member in members:
            target = tag_index_shard_of(member, self.new)
            if target != shard:
                pipe.sadd(tag_index_shard(self.prefix, target), member)
                copied += 1
        if copied:
            pipe.execute()
        self._save(copied=self._count("copied") + copied)

    def _move(self, shard: int, members: list[bytes]) -> None:
        args: list[bytes] = [self.key_set_prefix]
        for member in members:
            args += [member, tag_index_shard(self.prefix, tag_index_shard_of(member, self.new))]
        moved, dropped = self.move_script(keys=[tag_index_shard(self.prefix, shard)], args=args)
        self._save(
            moved=self._count("moved") + int(moved),
            dropped=self._count("dropped") + int(dropped),
        )

    def run(self) -> bool:
        """Continue from the saved state; ``True`` once finished (the state key removed)."""
        if self.state["phase"] == "copy":
            if not self._walk(self.old, self._copy, f"copy {self.old} -> {self.new} shards"):
                return False
            now = self.flip_script(
                keys=[tag_index_layout(self.prefix)], args=[str(self.old), str(self.new)]
            )
            if now is None or _text(now) != str(self.new):
                raise CliError(
                    f"the tag index layout changed during the migration (it says "
                    f"{None if now is None else _text(now)!r}, expected {self.old}); "
                    "nothing was flipped, run the command again"
                )
            self._save(phase="move", shard=0, cursor=0)
        # Every shard that may hold members: the old ones and the new ones, and any stray
        # beyond both (left by an earlier, larger layout).
        highest = max(self.old, self.new, self._stray_shards())
        if not self._walk(highest, self._move, f"move into {self.new} shards"):
            return False
        self.client.delete(self.key)
        return True

    def _stray_shards(self) -> int:
        """One past the highest shard number found by SCAN under ``{prefix}:keys:``."""
        highest = 0
        start = tag_index_shard_prefix(self.prefix)
        match = prefix_match(tag_index_base(self.prefix) + "keys:")
        for raw in self.client.scan_iter(match=match, count=1000):
            tail = raw[len(start) :]
            if tail.isdigit():
                highest = max(highest, int(tail) + 1)
        return highest


@click.command("migrate-tag-index")
@redis_options
@tag_index_prefix_option
@click.option(
    "--known-key-shards",
    "shards",
    type=click.IntRange(min=1, max=MAX_SHARDS),
    required=True,
    help="The new known_keys_shards.",
)
@click.option(
    "--from-shards",
    type=click.IntRange(min=1, max=MAX_SHARDS),
    help="The current count (checked against the index's layout; default: read from it).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1, max=100_000),
    default=1000,
    show_default=True,
    help="Members per SSCAN page and per move script call.",
)
@click.option(
    "--max-batches",
    type=click.IntRange(min=1),
    help="Stop after this many batches (run again to continue).",
)
@progress_option
@json_option
def migrate_tag_index(
    target: RedisTarget,
    tag_index_prefix: str,
    shards: int,
    from_shards: int | None,
    batch_size: int,
    max_batches: int | None,
    progress: bool | None,
    as_json: bool,
) -> None:
    """Re-shard a tag index's known-keys sets online (e.g. 1 -> 16), resumable and idempotent.

    Roll out known_keys_shards=N to the instances right after the layout flips (see
    docs/cli.md).
    """
    if "{" in tag_index_prefix or "}" in tag_index_prefix:
        raise click.BadParameter("must not contain '{' or '}'", param_hint="'--tag-index-prefix'")
    client = target.connect()
    started = time.perf_counter()
    with redis_errors(target, "migrate-tag-index"):
        layout = read_layout(client, tag_index_prefix)
        raw_state = client.hgetall(migration_key(tag_index_prefix))
        state = {_text(k): _text(v) for k, v in raw_state.items()}
        resumed = bool(state)
        if state:
            if int(state["to"]) != shards:
                raise CliError(
                    f"a migration of {tag_index_prefix!r} from {state['from']} to "
                    f"{state['to']} shards is unfinished: run it again with "
                    f"--known-key-shards {state['to']} first"
                )
        else:
            if layout is None:
                raise CliError(f"no tag index at {tag_index_prefix!r} (no layout key)")
            if from_shards is not None and from_shards != layout:
                raise CliError(
                    f"--from-shards {from_shards}, but the tag index {tag_index_prefix!r} "
                    f"uses {layout} shards"
                )
            state = {
                "from": str(layout),
                "to": str(shards),
                # Already at the target: only the move phase runs, re-checking every member.
                "phase": "move" if layout == shards else "copy",
                "shard": "0",
                "cursor": "0",
                "copied": "0",
                "moved": "0",
                "dropped": "0",
                "started_at": repr(time.time()),
            }
            client.hset(migration_key(tag_index_prefix), mapping=dict[Any, Any](state))
        show = progress if progress is not None else Console(stderr=True).is_terminal
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            disable=not show,
        )
        with bar:
            migration = _Migration(client, tag_index_prefix, state, batch_size, max_batches, bar)
            finished = migration.run()
        names = [tag_index_shard(tag_index_prefix, n) for n in range(shards)]
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.scard(name)
        known = sum(int(n) for n in pipe.execute())
        layout_now = read_layout(client, tag_index_prefix)
        client.close()
    report = {
        "redis": target.shown,
        "tag_index_prefix": tag_index_prefix,
        "from": int(state["from"]),
        "to": int(state["to"]),
        "resumed": resumed,
        "finished": finished,
        "phase": "done" if finished else state["phase"],
        "layout": layout_now,
        "copied": int(state["copied"]),
        "moved": int(state["moved"]),
        "dropped": int(state["dropped"]),
        "known_keys": known,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if as_json:
        emit_json(report)
        return
    if not finished:
        click.echo(
            f"stopped after --max-batches {max_batches} in the {state['phase']} phase "
            f"({report['copied']} copied, {report['moved']} moved so far); run the same "
            "command again to continue"
        )
        return
    if report["from"] == report["to"] and not resumed:
        click.echo(
            f"tag index {tag_index_prefix!r} already uses {shards} shards: "
            f"{report['moved']} member(s) moved, {report['dropped']} dropped after re-checking "
            f"{known} known keys"
        )
        return
    click.echo(
        f"tag index {tag_index_prefix!r}: {report['from']} -> {report['to']} known-keys shards "
        f"({report['copied']} copied, {report['moved']} moved, {report['dropped']} dropped; "
        f"{known} known keys; layout now {layout_now}). Set known_keys_shards={shards} on "
        "every instance."
    )
