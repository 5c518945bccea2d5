"""A process that writes a ``DiskLayer`` without pause until it is SIGKILLed (test_disk_sigkill).

Usage: ``python _disk_writer.py DIRECTORY SEED WRITER_ID``. Prints ``ready`` once its first
write committed, then loops forever over:

* ``set_many`` of a new batch ``b:<writer>:<n>:<i>`` (2-20 keys written in one transaction:
  after a crash a batch must be all there or not at all);
* ``set`` of a hot key ``hot:<j>`` (overwritten again and again) or of a big one ``big:<j>``
  (up to 2 MiB, so that the kill often lands inside a long write);
* ``delete`` of a hot key, ``delete_many`` of a whole earlier batch.

Every value carries the SHA-256 of its payload, so a reader can tell a complete entry from a
torn one. Values are compressed (gzip) in odd-numbered writers, to cover both encodings.
"""

from __future__ import annotations

import hashlib
import random
import sys
import time

from layercache import Entry
from layercache.layers.disk import DiskLayer


def value(rng: random.Random, size: int, **fields: object) -> dict[str, object]:
    data = rng.randbytes(size // 2).hex()
    return {**fields, "data": data, "sum": hashlib.sha256(data.encode()).hexdigest()}


def entry(payload: dict[str, object]) -> Entry:
    return Entry(payload, stored_at=time.time(), fresh_until=None)


def main() -> None:
    directory, seed, writer = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    layer = DiskLayer(
        directory,
        max_files=1_000_000,
        compression="gzip" if writer % 2 else None,
        busy_timeout=30.0,
    )
    batches: list[list[str]] = []
    first = True
    n = 0
    while True:
        kind = rng.random()
        if kind < 0.45:
            size = rng.randint(2, 20)
            keys = [f"b:{writer}:{n}:{i}" for i in range(size)]
            layer.set_many(
                [
                    (key, entry(value(rng, rng.randint(16, 4096), batch=n, i=i, n=size)), None)
                    for i, key in enumerate(keys)
                ]
            )
            batches.append(keys)
            n += 1
        elif kind < 0.75:
            key = f"hot:{rng.randrange(50)}"
            layer.set(key, entry(value(rng, rng.randint(16, 8192), writer=writer)), None)
        elif kind < 0.80:
            key = f"big:{rng.randrange(5)}"
            layer.set(key, entry(value(rng, rng.randint(1, 2) << 20, writer=writer)), None)
        elif kind < 0.92:
            layer.delete(f"hot:{rng.randrange(50)}")
        elif batches:
            layer.delete_many(batches.pop(rng.randrange(len(batches))))
        if first:
            print("ready", flush=True)
            first = False


if __name__ == "__main__":
    main()
