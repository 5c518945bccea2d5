"""Write-behind (issue 3 point 8) and fetcher rate limiting through the stack (point 9)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from _twins_async import Event, join, join_all, pause, spawn
from layercache import (
    CacheStack,
    Entry,
    FetcherQueueFullError,
    MemoryLayer,
    RateLimit,
)
from layercache._codec import EntryCodec


class RemoteDict:
    """A non-local async layer that records every call and can hold its writes."""

    name, default_ttl, is_local = "remote", 300, False

    def __init__(self) -> None:
        self.data: dict[str, Entry] = {}
        self.calls: list[tuple[str, Any]] = []
        self.gate: Any = None  # an Event (tests/_twins_async.py) holding the writes

    async def _maybe_wait(self) -> None:
        if self.gate is not None:
            await self.gate.wait()

    async def get(self, key: str) -> Entry | None:
        return self.data.get(key)

    async def set(self, key: str, entry: Entry, ttl: float | None) -> None:
        await self._maybe_wait()
        self.calls.append(("set", key))
        self.data[key] = entry

    async def set_many(self, items: list[tuple[str, Entry, float | None]]) -> None:
        await self._maybe_wait()
        self.calls.append(("set_many", [k for k, _, _ in items]))
        for key, entry, _ in items:
            self.data[key] = entry

    async def delete(self, key: str) -> None:
        self.calls.append(("delete", key))
        self.data.pop(key, None)

    async def delete_many(self, keys: list[str]) -> None:
        await self._maybe_wait()
        self.calls.append(("delete_many", list(keys)))
        for key in keys:
            self.data.pop(key, None)

    async def clear(self) -> None:
        self.calls.append(("clear", None))
        self.data.clear()

    async def keys(self, pattern: str | None = None) -> list[str]:
        from layercache._glob import glob_match

        return [k for k in self.data if pattern is None or glob_match(pattern, k)]


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await pause(0.005)


def behind_stack(remote: RemoteDict, **settings: Any) -> CacheStack:
    config = {"batch_size": 100, "flush_interval": 0.02, "max_queue": 1000, **settings}
    return CacheStack([MemoryLayer(), remote], write_strategy="write-behind", write_behind=config)


async def test_writes_reach_the_local_layer_at_once_and_the_remote_in_batches() -> None:
    remote = RemoteDict()
    cache = behind_stack(remote, batch_size=10, flush_interval=60)
    for i in range(25):
        await cache.set(f"k{i}", i)
    # Local at once; the remote got two full batches of 10 (the size trigger), not 25 writes.
    assert await cache.get("k24") == 24
    await wait_until(lambda: len(remote.data) >= 20)
    batches = [c for c in remote.calls if c[0] == "set_many"]
    assert all(len(keys) == 10 for _, keys in batches)
    assert not [c for c in remote.calls if c[0] == "set"]
    await cache.aclose()  # flushes the last 5
    assert sorted(remote.data) == sorted(f"k{i}" for i in range(25))


async def test_a_delete_queued_after_a_set_wins() -> None:
    remote = RemoteDict()
    cache = behind_stack(remote, flush_interval=60)
    await cache.set("k", "v")
    await cache.delete("k")
    await cache.aclose()
    assert "k" not in remote.data
    # The set never reached the remote layer at all: the queue kept only the delete.
    assert not any(c[0] == "set_many" and "k" in c[1] for c in remote.calls)


async def test_reads_see_queued_writes_and_deletes_before_they_land() -> None:
    remote = RemoteDict()
    remote.data["old"] = Entry("stale", 0.0, None)
    cache = behind_stack(remote, flush_interval=60)
    await cache.delete("old")
    # The remote still holds it, but the queued delete answers first: no resurrection.
    assert "old" in remote.data
    assert await cache.get("old") is None
    await cache.set("new", "v")
    cache.layers[0].clear()  # memory lost it: the queued write answers for the remote
    assert await cache.get("new") == "v"
    assert await cache.get_many(["old", "new"]) == [None, "v"]
    await cache.aclose()


async def test_clear_drops_what_it_supersedes() -> None:
    remote = RemoteDict()
    cache = behind_stack(remote, flush_interval=60)
    await cache.set("a:1", 1)
    await cache.set("b:1", 2)
    await cache.invalidate_by_prefix("a:")
    await cache.aclose()
    assert "a:1" not in remote.data
    assert remote.data["b:1"].value == 2


async def test_a_full_queue_makes_the_writer_wait_and_loses_nothing() -> None:
    remote = RemoteDict()
    cache = behind_stack(remote, batch_size=5, flush_interval=60, max_queue=5)
    for i in range(23):
        await cache.set(f"k{i}", i)
    await cache.aclose()
    assert sorted(remote.data) == sorted(f"k{i}" for i in range(23))


async def test_write_behind_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        CacheStack([MemoryLayer()], write_strategy="write-behind", write_behind={"batch_size": 0})
    with pytest.raises(ValueError, match="write_strategy"):
        CacheStack([MemoryLayer()], write_strategy="later")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="need write_strategy"):
        CacheStack([MemoryLayer()], write_behind={"batch_size": 1})


async def test_global_rate_limit_bounds_concurrent_fetchers_across_keys() -> None:
    cache = CacheStack([MemoryLayer()])
    running = peak = 0
    release = Event()

    async def fetch() -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        return 1

    limit = RateLimit(max_concurrent=2, scope="global")
    tasks = [spawn(cache.get, f"k{i}", fetch, fetcher_rate_limit=limit) for i in range(10)]
    await wait_until(lambda: running == 2)
    release.set()
    assert await join_all(tasks) == [1] * 10
    assert peak == 2


async def test_a_full_fetcher_queue_fails_fast() -> None:
    cache = CacheStack([MemoryLayer()])
    release = Event()

    async def fetch() -> int:
        await release.wait()
        return 1

    limit = {"max_concurrent": 1, "scope": "global", "max_queue": 1}
    first = spawn(cache.get, "a", fetch, fetcher_rate_limit=limit)
    second = spawn(cache.get, "b", fetch, fetcher_rate_limit=limit)
    await wait_until(lambda: cache._loader.limiter.waiting("b", RateLimit(**limit)) == 1)  # type: ignore[arg-type]
    with pytest.raises(FetcherQueueFullError):
        await cache.get("c", fetch, fetcher_rate_limit=limit)
    release.set()
    assert await join(first) == 1
    assert await join(second) == 1


class SerializingRemote(RemoteDict):
    """A remote layer that serializes like the built-in ones (JSON: arbitrary objects fail)."""

    async def set(self, key: str, entry: Entry, ttl: float | None) -> None:
        EntryCodec().encode(entry)
        await super().set(key, entry, ttl)

    async def set_many(self, items: list[tuple[str, Entry, float | None]]) -> None:
        for _, entry, _ in items:
            EntryCodec().encode(entry)
        await super().set_many(items)


async def test_a_value_the_remote_cannot_serialize_does_not_block_the_queue() -> None:
    # Retrying the batch would fail the same way forever: the other writes land, the rejected
    # key is removed everywhere (the caller's set returned long ago), and it is reported.
    remote = SerializingRemote()
    remote.data["bad"] = Entry("old", 0.0, None)
    cache = behind_stack(remote, flush_interval=60)
    errors: list[Any] = []
    cache.on("error", errors.append)
    await cache.set("good", 1)
    await cache.set("bad", object())
    await cache.set("good2", 2)
    await cache.aclose()  # flushes the batch
    assert sorted(remote.data) == ["good", "good2"]
    assert cache.layers[0].get("bad") is None
    assert [(e["context"]["operation"], e["context"]["key"]) for e in errors] == [
        ("write_behind", "bad")
    ]
