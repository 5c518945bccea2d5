"""A change of more keys than the flight table's marks hold (a bulk invalidation) sets the
broad mark at once instead of marking and then forgetting every key one by one (issue 16:
10,000 invalidated keys cost two passes over a bounded OrderedDict per change before). The
answers of ``changed_since`` stay on the safe side of the truth, and the marks stay bounded.
"""

from __future__ import annotations

import random

import pytest

from layercache._async.flights import Flights, among


class Truth:
    """When each key last changed (unbounded: what the bounded marks approximate)."""

    def __init__(self) -> None:
        self.epoch = 0
        self.broad = 0
        self.last: dict[str, int] = {}

    def change(self, keys: list[str] | None) -> None:
        for _ in range(2):  # on entry and at the end, as Flights.changing marks
            self.epoch += 1
            if keys is None:
                self.broad = self.epoch
            else:
                self.last.update(dict.fromkeys(keys, self.epoch))

    def changed_since(self, key: str, epoch: int) -> bool:
        return self.broad > epoch or self.last.get(key, 0) > epoch


def test_a_change_larger_than_the_marks_keeps_none_and_marks_everything() -> None:
    flights = Flights(max_key_marks=100)
    keys = [f"k{i}" for i in range(500)]
    before = flights.epoch
    with flights.changing(among(keys), keys):
        assert flights.changed_since("k1", flights.epoch)  # under way
    after = flights.epoch
    assert len(flights._key_marks) == 0
    assert flights.changed_since("k499", before)
    assert flights.changed_since("other", before)  # the broad mark: the safe side
    assert not flights.changed_since("k499", after)
    assert not flights.changed_since("other", after)


@pytest.mark.parametrize("repeats", [False, True])
def test_marks_stay_bounded_and_never_miss_a_change(repeats: bool) -> None:
    """Random changes of few and of more keys than the bound (repeated keys or not): a key
    that changed after ``epoch`` always counts as changed since ``epoch``; the marks never
    hold more than the bound; and while no change passed the bound, the answers are exact."""
    rng = random.Random(7)
    pool = [f"k{i}" for i in range(60)]
    for _ in range(300):
        bound = rng.randint(1, 20)
        flights = Flights(max_key_marks=bound)
        truth = Truth()
        exact = True
        for _ in range(rng.randint(1, 12)):
            if rng.random() < 0.1:
                keys = None
                with flights.changing(lambda _k, _f: True):
                    pass
                exact = False
            else:
                size = rng.choice([0, 1, 2, bound, bound + 1, 3 * bound])
                if repeats:
                    keys = [rng.choice(pool) for _ in range(size)]
                else:
                    keys = rng.sample(pool, min(size, len(pool)))
                with flights.changing(among(keys), keys):
                    pass
                exact = exact and len(keys) <= bound and len(truth.last.keys() | set(keys)) <= bound
            truth.change(keys)
            assert flights.epoch == truth.epoch
            assert len(flights._key_marks) <= bound
            for key in pool:
                for epoch in range(truth.epoch + 1):
                    got = flights.changed_since(key, epoch)
                    expected = truth.changed_since(key, epoch)
                    assert got or not expected, (bound, key, epoch)
                    if exact:
                        assert got == expected, (bound, key, epoch)


def test_a_large_change_counts_as_every_key_while_it_runs_and_leaves_nothing() -> None:
    """While a change of more keys than the marks hold runs, every key counts as changing
    (one counter instead of a dict entry per key); afterwards nothing is left under way, and a
    small change still counts only its own keys."""
    flights = Flights(max_key_marks=100)
    keys = [f"k{i}" for i in range(500)]
    epoch = flights.epoch
    with flights.changing(among(keys), keys):
        assert flights.changed_since("k0", flights.epoch)
        assert flights.changed_since("unrelated", flights.epoch)  # on the safe side
        assert flights._active_keys == {}
    after = flights.epoch
    assert flights._active_broad == 0
    assert flights.changed_since("k499", epoch)
    assert not flights.changed_since("unrelated", after)
    with flights.changing(among(["a"]), ["a"]):
        assert flights.changed_since("a", flights.epoch)
        assert not flights.changed_since("b", flights.epoch)
    assert flights._active_keys == {}
