"""Invalidations cross a process boundary: a second Python process publishes through its own
``RedisInvalidationBus``, this one receives every message (``bench/bus_latency.py``).

Delays are machine-dependent, so the bounds are loose: they catch a receiver that polls or
batches (hundreds of milliseconds), not a slow machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from _redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("keys_per_message", "signed"), [(1, True), (1, False), (1000, True)], ids=str
)
async def test_messages_from_another_process_arrive_promptly(
    redis_clean: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    keys_per_message: int,
    signed: bool,
) -> None:
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.bus_latency import measure

    count = 200 if keys_per_message == 1 else 20
    figures = await measure(
        redis_clean.url,
        count=count,
        keys_per_message=keys_per_message,
        signed=signed,
        timeout=50.0,
    )
    assert figures["received"] == count  # every message, none twice (distinct first keys)
    assert 0 < figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"]
    assert figures["p50_ms"] < 100, figures
