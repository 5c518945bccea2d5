"""Goal test: 4 real processes x 25 concurrent callers on a cold key = 1 origin fetch.

Each process is one instance with its own client and coordinator (tests/redis/
_single_flight_worker.py). All of them are released at once by a Redis barrier; the origin
counts its calls with INCR on a key every process shares, so the count is the number of origin
fetches across the processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from _redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.slow]

WORKER = Path(__file__).with_name("_single_flight_worker.py")
PROCESSES = 4
CALLERS = 25
FETCH_DELAY = 0.2  # seconds the origin takes


def test_four_processes_times_25_callers_make_one_origin_fetch(redis_clean: RedisServer) -> None:
    run_id = f"sf-{uuid.uuid4().hex[:8]}"
    args = [redis_clean.url, run_id, "product:42", str(CALLERS), str(FETCH_DELAY)]
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        for _ in range(PROCESSES)
    ]
    try:
        # Barrier: every process is connected and blocked on BLPOP before any is released.
        deadline = time.monotonic() + 30
        while int(redis_clean.command("LLEN", f"{run_id}:ready")) < PROCESSES:
            dead = [w for w in workers if w.poll() is not None]
            assert not dead, dead[0].communicate()[1].decode()
            assert time.monotonic() < deadline, "workers did not start in time"
            time.sleep(0.01)
        released_at = time.time()
        redis_clean.command("RPUSH", f"{run_id}:go", *["go"] * PROCESSES)
        outputs = [w.communicate(timeout=30) for w in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()

    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err.decode()
    reports = [json.loads(out) for out, _ in outputs]

    fetches = int(redis_clean.command("GET", f"{run_id}:fetches"))
    values = [value for report in reports for value in report["results"]]
    wall = max(report["end"] for report in reports) - released_at
    spread = max(r["start"] for r in reports) - min(r["start"] for r in reports)
    stats = [report["stats"] for report in reports]
    print(
        f"\n{PROCESSES} processes x {CALLERS} callers, origin {FETCH_DELAY * 1000:.0f} ms: "
        f"{fetches} origin fetch(es), wall time {wall * 1000:.1f} ms from release "
        f"(start spread {spread * 1000:.1f} ms), "
        f"notifications {sum(s['notifications'] for s in stats)}, "
        f"shared hits {sum(s['shared_hits'] for s in stats)}"
    )
    assert fetches == 1
    assert len(values) == PROCESSES * CALLERS
    assert len(set(values)) == 1
    assert sum(s["fetches"] for s in stats) == 1
    assert sum(s["degraded"] + s["timeouts"] for s in stats) == 0
    # One origin round plus coordination, far from the 10 s single-flight timeout.
    assert wall < FETCH_DELAY + 1.5
