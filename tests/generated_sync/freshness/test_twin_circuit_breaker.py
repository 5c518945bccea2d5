# DO NOT EDIT: generated from tests/freshness/test_circuit_breaker.py
# by scripts/unasync_tests.py. Change the async source and run
# `python scripts/unasync_tests.py`.
"""Issue 3, point 7: the circuit breaker per fetcher key.

It opens after ``failure_threshold`` consecutive failures; while open a fetch fails fast with
``CircuitOpenError`` (the fetcher is not called) or serves stale within ``stale_if_error``;
after ``cooldown`` (fake clock) one probe goes through: success closes the circuit, failure
re-opens it. Stack-wide or per operation, as a ``CircuitBreaker`` or a dict.
"""

from __future__ import annotations

from typing import Any

import pytest
from twin_freshness_support import BuildStack, EventLog, Failing, Gate, Value, within

import layercache
from _twins_sync import join_all, spawn
from layercache import CircuitOpenError, FetchTimeoutError, LayerCacheError
from layercache._options import CircuitBreaker


class OriginError(Exception):
    """The fetcher's own exception."""


def _fail(cache: Any, key: str, fetcher: Any, times: int, **opts: Any) -> None:
    for _ in range(times):
        with pytest.raises(OriginError):
            cache.get(key, fetcher, **opts)


def test_option_dataclasses_are_public() -> None:
    """API.md: options may be given as the dataclass (``CircuitBreaker(...)``,
    ``AdaptiveTtl(...)``), so both are importable from ``layercache``."""
    assert layercache.CircuitBreaker is CircuitBreaker
    from layercache._options import AdaptiveTtl

    assert layercache.AdaptiveTtl is AdaptiveTtl


@pytest.mark.parametrize(
    "breaker",
    [CircuitBreaker(failure_threshold=3, cooldown=10), {"failure_threshold": 3, "cooldown": 10}],
    ids=["dataclass", "dict"],
)
def test_stack_wide_breaker_opens_probes_and_closes(build_stack: BuildStack, breaker: Any) -> None:
    env = build_stack(circuit_breaker=breaker)
    failing = Failing(OriginError("db down"))
    _fail(env.cache, "k", failing.fetch, 3)
    assert failing.calls == 3

    # Open: fails fast, the fetcher is not called.
    for _ in range(5):
        with pytest.raises(CircuitOpenError) as info:
            env.cache.get("k", failing.fetch)
        assert info.value.key == "k"
        assert isinstance(info.value, LayerCacheError)
    assert failing.calls == 3
    env.clock.advance(9.9)
    with pytest.raises(CircuitOpenError):
        env.cache.get("k", failing.fetch)
    assert failing.calls == 3

    # Cooldown over: one probe goes through; it fails, so the circuit re-opens at once.
    env.clock.advance(0.2)
    with pytest.raises(OriginError):
        env.cache.get("k", failing.fetch)
    assert failing.calls == 4
    with pytest.raises(CircuitOpenError):
        env.cache.get("k", failing.fetch)
    assert failing.calls == 4, "a failed probe must re-open the circuit"
    env.clock.advance(9.9)
    with pytest.raises(CircuitOpenError):
        env.cache.get("k", failing.fetch)

    # Next cooldown over: the probe succeeds and closes the circuit.
    env.clock.advance(0.2)
    good = Value("v")
    assert env.cache.get("k", good.fetch) == "v"
    assert good.calls == 1
    env.cache.delete("k")
    # Closed with its failure count reset: two failures do not open it (threshold 3).
    _fail(env.cache, "k", failing.fetch, 2)
    assert env.cache.get("k", good.fetch) == "v"
    assert good.calls == 2


def test_circuits_are_per_key(build_memory: BuildStack) -> None:
    env = build_memory(circuit_breaker={"failure_threshold": 1, "cooldown": 10})
    failing = Failing(OriginError("db down"))
    _fail(env.cache, "a", failing.fetch, 1)
    with pytest.raises(CircuitOpenError):
        env.cache.get("a", failing.fetch)
    assert env.cache.get("b", Value("B").fetch) == "B"


def test_per_operation_breaker(build_memory: BuildStack) -> None:
    env = build_memory()  # no stack default
    failing = Failing(OriginError("db down"))
    opts: dict[str, Any] = {"circuit_breaker": CircuitBreaker(failure_threshold=2, cooldown=5)}
    _fail(env.cache, "k", failing.fetch, 2, **opts)
    with pytest.raises(CircuitOpenError):
        env.cache.get("k", failing.fetch, **opts)
    assert failing.calls == 2
    # As a dict too.
    dict_opts: dict[str, Any] = {"circuit_breaker": {"failure_threshold": 1, "cooldown": 5}}
    _fail(env.cache, "d", failing.fetch, 1, **dict_opts)
    with pytest.raises(CircuitOpenError):
        env.cache.get("d", failing.fetch, **dict_opts)
    # Without a breaker on the call (and none on the stack) failures never open anything.
    _fail(env.cache, "plain", failing.fetch, 10)
    assert failing.calls == 2 + 1 + 10


def test_false_per_call_disables_the_stack_default(build_memory: BuildStack) -> None:
    env = build_memory(circuit_breaker={"failure_threshold": 1, "cooldown": 10})
    failing = Failing(OriginError("db down"))
    _fail(env.cache, "k", failing.fetch, 1)
    with pytest.raises(CircuitOpenError):
        env.cache.get("k", failing.fetch)
    # Opted out for this call: the fetcher runs despite the open circuit.
    good = Value("v")
    assert env.cache.get("k", good.fetch, circuit_breaker=False) == "v"
    assert good.calls == 1
    _fail(env.cache, "other", failing.fetch, 5, circuit_breaker=False)


def test_open_circuit_serves_stale_inside_stale_if_error(build_stack: BuildStack) -> None:
    env = build_stack(circuit_breaker={"failure_threshold": 2, "cooldown": 200})
    log = EventLog(env.cache, "stale_serve")
    opts: dict[str, Any] = {"ttl": 10, "stale_if_error": 100}
    env.cache.set("k", "v1", **opts)
    env.clock.advance(15)
    failing = Failing(OriginError("db down"))
    assert env.cache.get("k", failing.fetch, **opts) == "v1"
    assert env.cache.get("k", failing.fetch, **opts) == "v1"
    assert failing.calls == 2
    # Open now: stale is served without calling the fetcher.
    for _ in range(3):
        assert env.cache.get("k", failing.fetch, **opts) == "v1"
    assert failing.calls == 2
    assert log.states() == ["stale-if-error"] * 5
    # Past the error window (still inside the cooldown) the open circuit's error propagates.
    env.clock.advance(100)
    with pytest.raises(CircuitOpenError):
        env.cache.get("k", failing.fetch, **opts)
    assert failing.calls == 2


def test_fetch_timeouts_count_as_failures(build_memory: BuildStack) -> None:
    env = build_memory(circuit_breaker={"failure_threshold": 2, "cooldown": 10})
    never = Gate("never")
    for _ in range(2):
        with pytest.raises(FetchTimeoutError):
            within(spawn(env.cache.get, "k", never.fetch, fetch_timeout=0.02), "a fetch")
    with pytest.raises(CircuitOpenError):
        env.cache.get("k", never.fetch, fetch_timeout=0.02)
    assert never.calls == 2
    never.release()


def test_only_one_probe_goes_through_when_half_open(build_memory: BuildStack) -> None:
    # Without single-flight every caller would fetch: the breaker alone admits one probe.
    env = build_memory(
        circuit_breaker={"failure_threshold": 1, "cooldown": 10}, stampede_prevention=False
    )
    failing = Failing(OriginError("db down"))
    _fail(env.cache, "k", failing.fetch, 1)
    env.clock.advance(10.1)
    probe = Gate("v")
    first = spawn(env.cache.get, "k", probe.fetch)
    probe.wait_started()
    others = join_all(
        [spawn(env.cache.get, "k", probe.fetch) for _ in range(5)], return_exceptions=True
    )
    assert all(isinstance(o, CircuitOpenError) for o in others), others
    assert probe.calls == 1
    probe.release()
    assert within(first, "the probe") == "v"
    env.cache.delete("k")
    assert env.cache.get("k", Value("w").fetch) == "w", "the probe's success closed it"


def test_breaker_state_is_bounded(build_memory: BuildStack) -> None:
    """With ``max_profile_entries=10`` at most 10 circuits are remembered: the oldest open
    ones are forgotten (closed), the newest stay open."""
    env = build_memory(
        max_profile_entries=10, circuit_breaker={"failure_threshold": 1, "cooldown": 60}
    )
    failing = Failing(OriginError("db down"))
    for i in range(100):
        _fail(env.cache, f"k{i}", failing.fetch, 1)
    with pytest.raises(CircuitOpenError):
        env.cache.get("k99", failing.fetch)
    calls = failing.calls
    with pytest.raises(OriginError):  # forgotten: the fetcher is called again
        env.cache.get("k0", failing.fetch)
    assert failing.calls == calls + 1
