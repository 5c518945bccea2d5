"""A fetch's tag record erased by a removal it overlaps must not leave its value in L1.

The rare stale read of ``tests/chaos/test_sync_threads.py``: a thread read, from L1, a value
that an ``invalidate_by_tag`` which had returned before the read began should have removed.
Its history (``SyncCacheStack`` of memory + Redis, one key ``k`` tagged ``g``)::

    D  delete(k): origin v366; marks k (changing)
    F  get(k): L1 miss, Redis miss, fetch registered (after D's mark: not invalidated),
       fetcher reads v366 (current), records k -> g in the tag index
    D  tag index: forget k; L1: delete k
    F  Redis: conditional store (D's tombstone is not there yet: stored); L1: v366 written
       (the flight is not invalidated: D's end mark has not come yet); F returns
    D  Redis: tombstone; end mark; returns
       -> L1 holds v366, the tag index does not know k
    I  invalidate_by_tag(g): origin v367; the index names no k: L1 keeps v366
    R  get(k) -> v366 from L1: stale

A fetch records its tags *before* it stores (so that an invalidation resolving keys after the
record finds it), and every removal forgets keys in the index *before* it deletes them from the
layers (so that a key written again in between keeps its record). A fetch whose record falls
before a removal's "forget" and whose L1 write falls after the removal's layer delete breaks
both: its value is stored, its record is gone. Deletes, ``delete_many``, pattern
invalidations and ``clear`` all remove that way; until the removal's end mark the fetch is not
invalidated (it began after the removal's start and read the new row), so nothing stopped the
L1 write. The value is current when written, so no read notices it until the next
``invalidate_by_tag`` of its tags, which cannot find it.

The test drives that interleaving with gates (events) in a tag index and a memory layer that
pause a chosen thread at one point each, then checks the state (an L1 value the tag index does
not know) and the consequence (a stale read after ``invalidate_by_tag``). Real components: the
memory layer and tag index are the library's, subclassed only to add the pauses; Redis is the
session's ``redis-server``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pytest

from layercache import InMemoryTagIndex, MemoryLayer, RedisLayer, SyncCacheStack

KEY = "user:1"
TAG = "users"
WAIT = 10.0


class Gate:
    """Pauses one chosen thread once at a point of the code: it signals ``reached`` and waits
    for ``release``. Every other thread (and the chosen one after its pause) passes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.thread: threading.Thread | None = None
        self.reached = threading.Event()
        self.release = threading.Event()

    def arm(self, thread: threading.Thread) -> None:
        self.thread = thread

    def point(self) -> None:
        if self.thread is None or threading.current_thread() is not self.thread:
            return
        self.thread = None
        self.reached.set()
        if not self.release.wait(WAIT):
            raise TimeoutError(f"gate {self.name} was never released")

    def wait_reached(self) -> None:
        assert self.reached.wait(WAIT), f"gate {self.name} was never reached"


class GatedIndex(InMemoryTagIndex):
    """``InMemoryTagIndex`` with a pause after a record and before a removal's first step
    (a pattern's look-up of the keys it forgets, a remove, a clear)."""

    def __init__(self) -> None:
        super().__init__()
        self.after_record = Gate("after record")
        self.before_forget = Gate("before forget")

    def record(self, key: str, tags: Sequence[str], expires_at: float | None = None) -> list[str]:
        evicted = super().record(key, tags, expires_at)
        self.after_record.point()
        return evicted

    def remove(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        self.before_forget.point()
        super().remove(keys)

    def keys_matching(self, pattern: str) -> list[str]:
        self.before_forget.point()
        return super().keys_matching(pattern)

    def clear(self) -> None:
        self.before_forget.point()
        super().clear()


class GatedMemory(MemoryLayer):
    """``MemoryLayer`` with a pause after each removal (delete, delete_many, pattern, clear)."""

    def __init__(self) -> None:
        super().__init__(ttl=60)
        self.after_remove = Gate("after L1 removal")

    def delete(self, key: str) -> None:
        super().delete(key)
        self.after_remove.point()

    def delete_many(self, keys: Iterable[str]) -> None:
        super().delete_many(keys)
        self.after_remove.point()

    def delete_matching(self, pattern: str) -> int:
        removed = super().delete_matching(pattern)
        self.after_remove.point()
        return removed

    def clear(self) -> None:
        super().clear()
        self.after_remove.point()


class Origin:
    """One row: its version is bumped before the cache is told (write, then invalidate)."""

    def __init__(self) -> None:
        self.version = 0
        self.fetches = 0

    def fetch(self) -> dict[str, int]:
        self.fetches += 1
        return {"v": self.version}


REMOVALS: dict[str, Callable[[SyncCacheStack], Any]] = {
    "delete": lambda stack: stack.delete(KEY),
    "delete_many": lambda stack: stack.delete_many([KEY, "user:2"]),
    "invalidate_by_pattern": lambda stack: stack.invalidate_by_pattern("user:*"),
    "clear": lambda stack: stack.clear(),
}


@pytest.fixture(params=["memory", pytest.param("memory+redis", marks=pytest.mark.redis)])
def layers(request: pytest.FixtureRequest) -> tuple[GatedMemory, list[Any]]:
    memory = GatedMemory()
    stack_layers: list[Any] = [memory]
    if request.param == "memory+redis":
        server = request.getfixturevalue("redis_clean")
        stack_layers.append(RedisLayer(url=server.url, ttl=600))
    return memory, stack_layers


def _run(name: str, target: Callable[[], Any], failures: list[BaseException]) -> threading.Thread:
    def body() -> None:
        try:
            target()
        except BaseException as exc:  # reported by the test, never lost in the thread
            failures.append(exc)

    return threading.Thread(target=body, name=name, daemon=True)


@pytest.mark.parametrize("removal", sorted(REMOVALS))
def test_fetch_recorded_before_a_removal_and_stored_after_it(
    layers: tuple[GatedMemory, list[Any]], removal: str
) -> None:
    memory, stack_layers = layers
    index = GatedIndex()
    stack = SyncCacheStack(stack_layers, tag_index=index)
    origin = Origin()
    failures: list[BaseException] = []
    got: list[Any] = []
    try:
        # D: the removal, after the origin changed (v1). It pauses before the index forgets
        # the key, and again right after L1 dropped it.
        origin.version = 1
        remover = _run("remover", lambda: REMOVALS[removal](stack), failures)
        index.before_forget.arm(remover)
        memory.after_remove.arm(remover)
        remover.start()
        index.before_forget.wait_reached()

        # F: a reader that misses and fetches while D is under way: it reads the new row (v1)
        # and records the key's tag, then pauses before it stores.
        fetcher = _run(
            "fetcher", lambda: got.append(stack.get(KEY, origin.fetch, tags=[TAG])), failures
        )
        index.after_record.arm(fetcher)
        fetcher.start()
        index.after_record.wait_reached()

        # D forgets the key in the index and drops it from L1 ...
        index.before_forget.release.set()
        memory.after_remove.wait_reached()
        # ... then F stores (Redis: before D's tombstone, so its conditional store goes
        # through; L1: D's end mark has not come yet) and returns.
        index.after_record.release.set()
        fetcher.join(WAIT)
        assert not fetcher.is_alive()
        # D deletes the key from the layers below L1, marks its end and returns.
        memory.after_remove.release.set()
        remover.join(WAIT)
        assert not remover.is_alive()
        assert not failures, failures
        assert got == [{"v": 1}]  # F's caller gets the row it read

        # The state: whatever L1 holds for the key, the tag index must know it.
        held = memory.get(KEY)
        assert held is None or TAG in index.tags_of(KEY), (
            f"L1 holds {held.value!r} for {KEY} but the tag index does not know the key: "
            f"the next invalidate_by_tag({TAG!r}) cannot remove it"
        )

        # The consequence: the next change of the row invalidates by tag ...
        origin.version = 2
        stack.invalidate_by_tag(TAG)
        # ... and a read that starts after it returned must not get v1.
        assert stack.get(KEY, origin.fetch, tags=[TAG]) == {"v": 2}
    finally:
        for gate in (index.before_forget, index.after_record, memory.after_remove):
            gate.release.set()
        stack.close()
