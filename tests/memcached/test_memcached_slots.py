"""The sync memcached twin's count of free connections per server (``_Slots``): callers beyond
``max_connections`` wait for a release (each release wakes one), at most ``timeout``."""

from __future__ import annotations

import threading
import time

from layercache.memcached._sync_client import _Slots

DEADLINE = 10.0


def test_free_slots_are_taken_without_waiting_then_refused_after_the_timeout() -> None:
    slots = _Slots(2)
    assert slots.take(None)
    assert slots.take(None)
    began = time.monotonic()
    assert not slots.take(0.05)
    assert time.monotonic() - began >= 0.05
    slots.give()
    assert slots.take(0.0)


def test_a_release_wakes_a_waiting_caller() -> None:
    slots = _Slots(1)
    assert slots.take(None)
    waiting = threading.Event()
    got: list[bool] = []

    def wait_for_one() -> None:
        waiting.set()
        got.append(slots.take(DEADLINE))

    thread = threading.Thread(target=wait_for_one)
    thread.start()
    assert waiting.wait(DEADLINE)
    # The waiter is queued (or about to be): either way the release reaches it.
    slots.give()
    thread.join(DEADLINE)
    assert got == [True]


def test_each_release_wakes_one_of_several_waiters() -> None:
    slots = _Slots(1)
    assert slots.take(None)
    results: list[bool] = []
    lock = threading.Lock()

    def waiter() -> None:
        taken = slots.take(DEADLINE)
        with lock:
            results.append(taken)
        if taken:
            slots.give()  # pass it on, as a finished command does

    threads = [threading.Thread(target=waiter) for _ in range(8)]
    for thread in threads:
        thread.start()
    slots.give()
    for thread in threads:
        thread.join(DEADLINE)
    assert results == [True] * 8
    assert slots.take(0.0)  # every slot came back
