"""The twin primitives (``layercache/_primitives``): both modules offer the same names, the
generator maps the asyncio module to the thread one, ``_sync/`` is wholly generated, and the
primitives rate_limit and write_behind are written on (Waiter, Mutex, runs_here, join_spawned)
behave alike on both twins."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

import pytest

from layercache._primitives import aio, threads
from polling import eventually

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import unasync  # noqa: E402  (scripts/ is not a package)


def test_both_twins_define_the_same_names() -> None:
    assert sorted(aio.__all__) == sorted(threads.__all__)
    for name in aio.__all__:
        assert hasattr(aio, name), name
        assert hasattr(threads, name), name


def test_the_generator_maps_imports_of_the_asyncio_primitives() -> None:
    source = (
        "from .._primitives.aio import Waiter, spawn\n"
        "from layercache._primitives.aio import Mutex\n"
        "import layercache._primitives.aio as prims\n"
        "    from ..._primitives.aio import pause\n"
        "# prose naming _primitives.aio stays as written\n"
    )
    assert unasync.convert(source) == (
        "from .._primitives.threads import Waiter, spawn\n"
        "from layercache._primitives.threads import Mutex\n"
        "import layercache._primitives.threads as prims\n"
        "    from ..._primitives.threads import pause\n"
        "# prose naming _primitives.aio stays as written\n"
    )


def test_every_sync_module_is_generated_from_an_async_one() -> None:
    package = ROOT / "src" / "layercache"
    sync = sorted(p.name for p in (package / "_sync").glob("*.py"))
    source = sorted(p.name for p in (package / "_async").glob("*.py"))
    assert sync == source
    for name in sync:
        text = (package / "_sync" / name).read_text(encoding="utf-8")
        assert text.startswith("# DO NOT EDIT: generated from src/layercache/_async/"), name
    wanted, _ = unasync.generate()
    assert {p.name for p in wanted if p.parent == package / "_sync"} == set(sync)


# == Waiter ======================================================================================


async def test_aio_waiter_woken() -> None:
    waiter = aio.Waiter()
    assert not waiter.granted
    assert not waiter.cancelled
    task = asyncio.create_task(waiter.wait())
    await asyncio.sleep(0)
    assert not task.done()
    waiter.wake()
    await asyncio.wait_for(task, 5)
    assert waiter.granted
    assert not waiter.cancelled


async def test_aio_waiter_cancelled_while_waiting() -> None:
    waiter = aio.Waiter()
    task = asyncio.create_task(waiter.wait())
    await asyncio.sleep(0)
    task.cancel()
    # Cancelled at once, before the waiting task even resumed: an owner skips it.
    assert waiter.cancelled
    assert not waiter.granted
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_aio_waiter_abandoned() -> None:
    waiter = aio.Waiter()
    waiter.abandon()
    assert waiter.cancelled
    with pytest.raises(asyncio.CancelledError):
        await waiter.wait()


def test_threads_waiter_woken_by_another_thread() -> None:
    waiter = threads.Waiter()
    woken = threading.Event()

    def wait() -> None:
        waiter.wait()
        woken.set()

    thread = threading.Thread(target=wait)
    thread.start()
    assert not woken.wait(0.05)  # blocked until woken
    assert not waiter.cancelled
    waiter.wake()
    assert woken.wait(5)
    thread.join(5)
    assert waiter.granted
    waiter.abandon()  # nothing to undo
    assert not waiter.cancelled


def test_threads_waiter_woken_before_it_waits() -> None:
    waiter = threads.Waiter()
    waiter.wake()
    waiter.wait()  # returns at once
    assert waiter.granted


# == spawned work: runs_here / join_spawned =====================================================


async def test_aio_join_spawned_waits_for_work_to_end_by_itself() -> None:
    stop = aio.Signal()
    ended: list[bool] = []

    async def work() -> None:
        await stop.wait()
        ended.append(True)

    handle = aio.spawn(work, "test-work")
    assert aio.runs_here(handle)
    stop.set()
    await aio.join_spawned(handle, 5)
    assert ended == [True]  # ended by itself, not cancelled
    assert not handle.cancelled()
    assert not aio.runs_here(handle)
    assert not aio.runs_here(None)


async def test_aio_join_spawned_is_bounded() -> None:
    handle = aio.spawn(lambda: asyncio.sleep(60), "test-sleeper")
    await aio.join_spawned(handle, 0.01)
    assert aio.runs_here(handle)  # still running: the wait was bounded
    handle.cancel()
    await asyncio.wait({handle})


def test_aio_work_of_another_loop_does_not_run_here() -> None:
    holder: list[asyncio.Task[None]] = []

    async def first() -> None:
        holder.append(aio.spawn(lambda: asyncio.sleep(60), "other-loop"))

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(first())

        async def second() -> None:
            assert not aio.runs_here(holder[0])
            await aio.join_spawned(holder[0], 5)  # returns at once: not awaitable here

        asyncio.run(second())
    finally:
        holder[0].cancel()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()


def test_threads_join_spawned() -> None:
    stop = threads.Signal()
    seen: list[bool] = []

    def work() -> None:
        seen.append(threads.runs_here(threading.current_thread()))
        stop.wait(5)

    handle = threads.spawn(work, "test-work")
    eventually(lambda: bool(seen), what="the thread started")
    assert seen == [False]  # a thread cannot wait for itself
    assert threads.runs_here(handle)
    threads.join_spawned(handle, 0.01)
    assert handle.is_alive()  # bounded
    stop.set()
    threads.join_spawned(handle, 5)
    assert not handle.is_alive()
    assert not threads.runs_here(handle)
    assert not threads.runs_here(None)


# == Mutex =======================================================================================


async def test_aio_mutex_is_held_across_awaits() -> None:
    mutex = aio.Mutex()
    inside = 0
    peak = 0

    async def section() -> None:
        nonlocal inside, peak
        async with mutex:
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0)
            inside -= 1

    await asyncio.gather(*(section() for _ in range(10)))
    assert peak == 1


def test_threads_mutex_excludes_threads() -> None:
    mutex = threads.Mutex()
    assert mutex.acquire(blocking=False)
    taken: list[bool] = []
    thread = threading.Thread(target=lambda: taken.append(mutex.acquire(timeout=0.01)))
    thread.start()
    thread.join(5)
    assert taken == [False]
    mutex.release()
