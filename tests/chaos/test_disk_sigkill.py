"""A ``DiskLayer`` whose writers are SIGKILLed mid-write, again and again (issue 11, point 3).

Each round starts two writer processes on the same directory (``_disk_writer.py``: batches
through ``set_many``, overwrites, 1-2 MiB values, deletes), waits until both have committed a
write, and SIGKILLs each at its own random moment: inside a transaction, a WAL append or a
checkpoint, or between them. The next round opens what the last one left.

Afterwards, read with plain ``sqlite3`` and the layer's own codec:

* ``PRAGMA integrity_check`` answers ``ok`` and no database was moved aside as corrupt;
* every stored entry decodes and its payload matches its checksum (0 torn entries);
* every batch written by one ``set_many`` is there completely or not at all;
* the ``totals`` row (kept by triggers) equals the real count and byte total;

and a fresh ``DiskLayer`` on the directory still reads every entry, writes, deletes and
counts.
"""

from __future__ import annotations

import hashlib
import os
import random
import selectors
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from layercache import Entry
from layercache._codec import CorruptEntryError, EntryCodec
from layercache.layers.disk import DATABASE_NAME, DiskLayer

CI_ROUNDS = 20  # two writers each: 40 SIGKILLs
SOAK_ROUNDS = 250
WRITER = Path(__file__).with_name("_disk_writer.py")
READY_BOUND = 30.0  # a writer must commit its first write within this (slow CI start-up)


def start_writer(directory: Path, seed: int, writer: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    # The child imports the same layercache as this process (a worktree's src/ included).
    import layercache

    src = str(Path(layercache.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, str(WRITER), str(directory), str(seed), str(writer)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
    )


def wait_ready(process: subprocess.Popen[bytes]) -> None:
    """Block until the writer printed ``ready`` (bounded: its first write committed)."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(READY_BOUND):
            process.kill()
            raise AssertionError(f"a writer did not commit within {READY_BOUND}s")
    line = process.stdout.readline()
    assert line == b"ready\n", f"writer said {line!r} (exit code {process.poll()})"


def check_store(directory: Path) -> dict[str, Any]:
    """Everything a crash could have broken, read without the layer's own repairs."""
    codec = EntryCodec()
    torn: list[str] = []
    batches: dict[str, set[int]] = {}
    sizes: dict[str, int] = {}
    conn = sqlite3.connect(directory / DATABASE_NAME)
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        rows = 0
        for key, raw in conn.execute("SELECT key, value FROM entries"):
            rows += 1
            try:
                payload = codec.decode(raw).value
                data = payload["data"]
                if hashlib.sha256(data.encode()).hexdigest() != payload["sum"]:
                    raise CorruptEntryError("checksum mismatch")
            except (CorruptEntryError, KeyError, TypeError, AttributeError) as exc:
                torn.append(f"{key}: {exc!r}")
                continue
            if key.startswith("b:"):
                _, writer, batch, _ = key.split(":")
                name = f"{writer}:{batch}"
                batches.setdefault(name, set()).add(int(payload["i"]))
                sizes[name] = int(payload["n"])
        count, total = conn.execute("SELECT count, bytes FROM totals WHERE id = 0").fetchone()
        real_count, real_total = conn.execute(
            "SELECT count(*), COALESCE(sum(size), 0) FROM entries"
        ).fetchone()
    finally:
        conn.close()
    partial = [name for name, seen in batches.items() if len(seen) != sizes[name]]
    return {
        "integrity": integrity,
        "rows": rows,
        "torn": torn,
        "batches": len(batches),
        "partial": partial,
        "totals": (count, total),
        "real_totals": (real_count, real_total),
    }


@pytest.mark.slow
def test_disk_layer_survives_sigkill_mid_write(tmp_path: Path, soak: bool) -> None:
    directory = tmp_path / "disk"
    rng = random.Random(3)
    rounds = SOAK_ROUNDS if soak else CI_ROUNDS
    kills = 0
    exited: dict[int, int] = defaultdict(int)
    started = time.monotonic()
    for round_ in range(rounds):
        writers = [start_writer(directory, rng.getrandbits(32), 2 * round_ + w) for w in (0, 1)]
        try:
            for process in writers:
                wait_ready(process)
            # Each writer dies at its own random moment (the fault schedule, not a wait).
            for process in sorted(writers, key=lambda _: rng.random()):
                time.sleep(rng.uniform(0.0, 0.15))
                process.kill()
                kills += 1
        finally:
            for process in writers:
                process.kill()
                exited[process.wait(10)] += 1
                assert process.stdout is not None
                process.stdout.close()
    elapsed = time.monotonic() - started

    found = check_store(directory)
    aside = list(directory.glob(f"{DATABASE_NAME}.corrupt*"))

    # The layer itself still works on what the kills left.
    layer = DiskLayer(directory, max_files=1_000_000)
    errors: list[Any] = []
    layer.set_error_handler(lambda exc, context: errors.append((exc, context)))
    try:
        keys = layer.keys()
        unreadable = [key for key in keys if layer.get(key) is None]
        layer.set("after:kills", Entry({"ok": True}, stored_at=time.time(), fresh_until=None), None)
        assert layer.get("after:kills") is not None
        assert layer.size() == len(keys) + 1
        layer.delete("after:kills")
        assert layer.get("after:kills") is None
    finally:
        layer.close()

    print(
        f"\nchaos disk-sigkill: kills={kills} rounds={rounds} rows={found['rows']} "
        f"batches={found['batches']} torn={len(found['torn'])} "
        f"partial_batches={len(found['partial'])} integrity={found['integrity']} "
        f"moved_aside={len(aside)} unreadable={len(unreadable)} layer_errors={len(errors)} "
        f"totals={found['totals']} real={found['real_totals']} exit_codes={dict(exited)} "
        f"time={elapsed:.1f}s"
    )
    assert exited == {-9: 2 * rounds}, f"writers did not all die by SIGKILL: {dict(exited)}"
    assert found["integrity"] == "ok"
    assert not aside, f"the database was moved aside as corrupt: {aside}"
    assert not found["torn"], f"{len(found['torn'])} torn entries: {found['torn'][:5]}"
    assert not found["partial"], f"batches half written: {found['partial'][:5]}"
    assert found["totals"] == found["real_totals"]
    assert found["batches"] > 0, "nothing was written"
    assert not unreadable, f"entries the layer cannot read: {unreadable[:5]}"
    assert not errors, errors[:3]
