"""CircuitRegistry state machine on a fake clock, its bounds, and CircuitBreaker coercion."""

from __future__ import annotations

import datetime as dt
import sys
import threading
from typing import Any

import pytest

from layercache._circuit import CircuitRegistry
from layercache._options import CircuitBreaker, coerce_circuit_breaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


BREAKER = CircuitBreaker(failure_threshold=3, cooldown=10)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(clock: FakeClock) -> CircuitRegistry:
    return CircuitRegistry(clock=clock)


def trip(registry: CircuitRegistry, key: str = "k", breaker: CircuitBreaker = BREAKER) -> None:
    for _ in range(breaker.failure_threshold):
        assert registry.before_fetch(key, breaker) == "allow"
        registry.record_failure(key, breaker)
    assert registry.state(key) == "open"


# -- state machine ------------------------------------------------------------------------------


def test_unknown_key_is_closed_and_not_stored(registry: CircuitRegistry) -> None:
    assert registry.before_fetch("k", BREAKER) == "allow"
    registry.record_success("k")
    assert registry.state("k") == "closed"
    assert registry.failures("k") == 0
    assert len(registry) == 0


def test_opens_at_threshold_of_consecutive_failures(registry: CircuitRegistry) -> None:
    registry.record_failure("k", BREAKER)
    registry.record_failure("k", BREAKER)
    assert registry.state("k") == "closed"
    assert registry.before_fetch("k", BREAKER) == "allow"
    registry.record_failure("k", BREAKER)
    assert registry.state("k") == "open"
    assert registry.failures("k") == 3
    assert registry.before_fetch("k", BREAKER) == "reject"


def test_success_resets_the_consecutive_count(registry: CircuitRegistry) -> None:
    registry.record_failure("k", BREAKER)
    registry.record_failure("k", BREAKER)
    registry.record_success("k")
    assert len(registry) == 0
    registry.record_failure("k", BREAKER)
    registry.record_failure("k", BREAKER)
    assert registry.state("k") == "closed"


def test_keys_are_independent(registry: CircuitRegistry) -> None:
    trip(registry, "a")
    assert registry.before_fetch("b", BREAKER) == "allow"
    assert registry.state("b") == "closed"


def test_threshold_of_one(registry: CircuitRegistry) -> None:
    breaker = CircuitBreaker(failure_threshold=1, cooldown=5)
    registry.record_failure("k", breaker)
    assert registry.before_fetch("k", breaker) == "reject"


def test_rejects_during_the_whole_cooldown(registry: CircuitRegistry, clock: FakeClock) -> None:
    trip(registry)
    clock.advance(9.999)
    assert registry.state("k") == "open"
    assert registry.before_fetch("k", BREAKER) == "reject"
    clock.advance(0.001)
    assert registry.state("k") == "half-open"


def test_exactly_one_probe_after_cooldown(registry: CircuitRegistry, clock: FakeClock) -> None:
    trip(registry)
    clock.advance(10)
    assert registry.before_fetch("k", BREAKER) == "probe"
    assert [registry.before_fetch("k", BREAKER) for _ in range(100)] == ["reject"] * 100
    clock.advance(30)  # a long probe: still the only one (within probe_lease)
    assert registry.before_fetch("k", BREAKER) == "reject"
    assert registry.state("k") == "half-open"


def test_probe_success_closes(registry: CircuitRegistry, clock: FakeClock) -> None:
    trip(registry)
    clock.advance(10)
    assert registry.before_fetch("k", BREAKER) == "probe"
    registry.record_success("k")
    assert registry.state("k") == "closed"
    assert len(registry) == 0
    assert registry.before_fetch("k", BREAKER) == "allow"
    # Closed again from scratch: it takes the full threshold to re-open.
    registry.record_failure("k", BREAKER)
    assert registry.before_fetch("k", BREAKER) == "allow"


def test_probe_failure_reopens_for_another_cooldown(
    registry: CircuitRegistry, clock: FakeClock
) -> None:
    trip(registry)
    clock.advance(15)
    assert registry.before_fetch("k", BREAKER) == "probe"
    clock.advance(2)  # the probe took 2 s; the new cooldown starts when it failed
    registry.record_failure("k", BREAKER)
    assert registry.state("k") == "open"
    clock.advance(9.5)
    assert registry.before_fetch("k", BREAKER) == "reject"
    clock.advance(0.5)
    assert registry.before_fetch("k", BREAKER) == "probe"
    assert registry.before_fetch("k", BREAKER) == "reject"


def test_probe_failure_uses_the_cooldown_it_is_given(
    registry: CircuitRegistry, clock: FakeClock
) -> None:
    trip(registry)
    clock.advance(10)
    assert registry.before_fetch("k", BREAKER) == "probe"
    registry.record_failure("k", CircuitBreaker(failure_threshold=3, cooldown=60))
    clock.advance(59)
    assert registry.state("k") == "open"
    clock.advance(1)
    assert registry.state("k") == "half-open"


def test_late_failure_while_open_does_not_extend_cooldown(
    registry: CircuitRegistry, clock: FakeClock
) -> None:
    trip(registry)
    clock.advance(5)
    registry.record_failure("k", BREAKER)  # a fetch started before the circuit opened
    assert registry.failures("k") == 4
    clock.advance(5)
    assert registry.before_fetch("k", BREAKER) == "probe"


def test_late_success_while_open_closes(registry: CircuitRegistry) -> None:
    trip(registry)
    registry.record_success("k")
    assert registry.before_fetch("k", BREAKER) == "allow"


def test_released_probe_lets_the_next_caller_probe(
    registry: CircuitRegistry, clock: FakeClock
) -> None:
    trip(registry)
    clock.advance(10)
    assert registry.before_fetch("k", BREAKER) == "probe"
    registry.release_probe("k")  # the probing caller was cancelled
    assert registry.state("k") == "half-open"
    assert registry.before_fetch("k", BREAKER) == "probe"
    assert registry.before_fetch("k", BREAKER) == "reject"
    registry.release_probe("unknown")  # no-op


def test_lost_probe_expires_after_probe_lease(clock: FakeClock) -> None:
    registry = CircuitRegistry(clock=clock, probe_lease=20)
    trip(registry)
    clock.advance(10)
    assert registry.before_fetch("k", BREAKER) == "probe"
    clock.advance(19.9)
    assert registry.before_fetch("k", BREAKER) == "reject"
    clock.advance(0.1)
    assert registry.before_fetch("k", BREAKER) == "probe"
    assert registry.before_fetch("k", BREAKER) == "reject"


def test_clear_closes_everything(registry: CircuitRegistry) -> None:
    trip(registry, "a")
    registry.record_failure("b", BREAKER)
    registry.clear()
    assert len(registry) == 0
    assert registry.before_fetch("a", BREAKER) == "allow"


def test_single_probe_under_thread_contention(clock: FakeClock) -> None:
    registry = CircuitRegistry(clock=clock)
    trip(registry)
    clock.advance(10)
    start = threading.Barrier(16)
    decisions: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        start.wait()
        for _ in range(200):
            decision = registry.before_fetch("k", BREAKER)
            with lock:
                decisions.append(decision)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    # Switch threads as often as possible to give a check-then-set race a chance to show.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert decisions.count("probe") == 1
    assert decisions.count("reject") == 16 * 200 - 1


# -- bounds -------------------------------------------------------------------------------------


def test_at_most_max_entries_keys(clock: FakeClock) -> None:
    registry = CircuitRegistry(max_entries=10, clock=clock)
    for i in range(1000):
        registry.record_failure(f"k{i}", BREAKER)
        assert len(registry) <= 10
    assert len(registry) == 10
    # The most recent ones are kept.
    assert registry.failures("k999") == 1
    assert registry.failures("k0") == 0


def test_closed_states_are_evicted_before_open_ones(clock: FakeClock) -> None:
    registry = CircuitRegistry(max_entries=3, clock=clock)
    trip(registry, "open-1")
    trip(registry, "open-2")
    for i in range(50):
        registry.record_failure(f"counting-{i}", BREAKER)
    assert registry.state("open-1") == "open"
    assert registry.state("open-2") == "open"
    assert registry.failures("counting-49") == 1
    assert len(registry) == 3


def test_evicting_an_open_state_fails_open(clock: FakeClock) -> None:
    registry = CircuitRegistry(max_entries=2, clock=clock)
    trip(registry, "a")
    trip(registry, "b")
    assert registry.before_fetch("a", BREAKER) == "reject"  # a is now the most recently used
    trip(registry, "c")  # evicts b, the least recently used open key
    assert len(registry) == 2
    assert registry.state("a") == "open"
    assert registry.state("c") == "open"
    assert registry.state("b") == "closed"
    assert registry.before_fetch("b", BREAKER) == "allow"
    trip(registry, "b")  # a still-failing fetcher re-opens after the threshold


def test_a_new_failing_key_can_open_when_full_of_open_keys(clock: FakeClock) -> None:
    registry = CircuitRegistry(max_entries=5, clock=clock)
    for i in range(5):
        trip(registry, f"old-{i}")
    trip(registry, "new")  # each of its failures evicts the oldest open key, not itself
    assert len(registry) == 5
    assert registry.state("old-0") == "closed"
    assert registry.state("old-4") == "open"


def test_max_entries_one(clock: FakeClock) -> None:
    registry = CircuitRegistry(max_entries=1, clock=clock)
    trip(registry, "a")
    registry.record_failure("b", BREAKER)
    assert len(registry) == 1
    assert registry.failures("b") == 1
    trip(registry, "c", CircuitBreaker(failure_threshold=1, cooldown=1))
    assert len(registry) == 1
    assert registry.state("c") == "open"


def test_failing_counter_keeps_its_lru_position_fresh(clock: FakeClock) -> None:
    registry = CircuitRegistry(max_entries=2, clock=clock)
    registry.record_failure("a", BREAKER)
    registry.record_failure("b", BREAKER)
    registry.record_failure("a", BREAKER)  # a is now more recent than b
    registry.record_failure("c", BREAKER)
    assert registry.failures("a") == 2
    assert registry.failures("b") == 0
    assert registry.failures("c") == 1


def test_open_keys_count(registry: CircuitRegistry) -> None:
    trip(registry, "a")
    registry.record_failure("b", BREAKER)
    assert registry.open_keys() == 1
    assert len(registry) == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10"])
def test_registry_rejects_bad_max_entries(bad: Any) -> None:
    with pytest.raises(ValueError, match="max_entries"):
        CircuitRegistry(max_entries=bad)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), "1"])
def test_registry_rejects_bad_probe_lease(bad: Any) -> None:
    with pytest.raises(ValueError, match="probe_lease"):
        CircuitRegistry(probe_lease=bad)


# -- options ------------------------------------------------------------------------------------


def test_defaults() -> None:
    breaker = CircuitBreaker()
    assert breaker.failure_threshold == 3
    assert breaker.cooldown == 10.0
    assert isinstance(breaker.cooldown, float)
    assert breaker.cooldown_seconds == 10.0


def test_timedelta_cooldown_is_coerced() -> None:
    breaker = CircuitBreaker(cooldown=dt.timedelta(milliseconds=1500))
    assert breaker.cooldown == 1.5
    assert breaker.cooldown_seconds == 1.5
    assert breaker == CircuitBreaker(cooldown=1.5)
    assert hash(breaker) == hash(CircuitBreaker(cooldown=1.5))


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, None, "3"])
def test_bad_threshold(bad: Any) -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker(failure_threshold=bad)


@pytest.mark.parametrize(
    "bad",
    [0, -1, float("nan"), float("inf"), True, None, "10", dt.timedelta(0), dt.timedelta(-1)],
)
def test_bad_cooldown(bad: Any) -> None:
    with pytest.raises(ValueError, match="cooldown"):
        CircuitBreaker(cooldown=bad)


def test_is_frozen() -> None:
    breaker = CircuitBreaker()
    with pytest.raises(AttributeError):
        breaker.cooldown = 5  # type: ignore[misc]


def test_coerce_off_values() -> None:
    assert coerce_circuit_breaker(None) is None
    assert coerce_circuit_breaker(False) is None


def test_coerce_true_is_defaults() -> None:
    assert coerce_circuit_breaker(True) == CircuitBreaker()


def test_coerce_dataclass_is_itself() -> None:
    breaker = CircuitBreaker(failure_threshold=5)
    assert coerce_circuit_breaker(breaker) is breaker


def test_coerce_dict() -> None:
    coerced = coerce_circuit_breaker({"failure_threshold": 2, "cooldown": dt.timedelta(minutes=1)})
    assert coerced == CircuitBreaker(failure_threshold=2, cooldown=60)
    assert coerce_circuit_breaker({}) == CircuitBreaker()


def test_coerce_dict_with_bad_value() -> None:
    with pytest.raises(ValueError, match="cooldown"):
        coerce_circuit_breaker({"cooldown": -5})


def test_coerce_dict_with_unknown_name() -> None:
    with pytest.raises(TypeError, match="threshold"):
        coerce_circuit_breaker({"threshold": 2})


@pytest.mark.parametrize("bad", [3, "on", [("failure_threshold", 2)], 0])
def test_coerce_other_types(bad: Any) -> None:
    with pytest.raises(ValueError, match="circuit_breaker"):
        coerce_circuit_breaker(bad)
