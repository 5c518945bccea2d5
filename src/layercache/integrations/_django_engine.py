"""The Django backend's process-wide engines: one per configuration, shared by every instance.

Django's ``CacheHandler`` builds one backend per thread (and per asyncio context). Like its
``LocMemCache``, which shares one dict per ``LOCATION``, every backend built with the same
configuration shares one :class:`Engine`: the memory layer, the synchronous stack and its Redis
clients, the bus subscription, the in-process tag index, and one asyncio side per event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from .. import CacheStack, InMemoryTagIndex, MemoryLayer, SyncCacheStack
from ._django_config import (
    canonical,
    check_options,
    coordination,
    redis_layers,
    retry_after,
    signing_key,
    split_locations,
    uses_default_pickle,
    value_serializer,
)
from ._django_ops import Operations, Side, Steps, arun, run

__all__ = ["MAX_ENGINES", "Engine", "engine_for", "engines", "live_engine"]

_T = TypeVar("_T")
_logger = logging.getLogger("layercache")

# Bound of the registry; past it the least recently created engine is shut down.
MAX_ENGINES = 64
engines: dict[tuple[str, str, str], Engine] = {}  # insertion order = creation order
_engines_lock = threading.Lock()


def engine_for(location: Any, options: dict[str, Any]) -> Engine:
    """The live engine of this configuration, built (and registered) on first use.

    The signing key is derived from ``SECRET_KEY`` here, so a changed ``SECRET_KEY`` (tests'
    ``override_settings``) gets an engine of its own; only a digest of it is in the key.
    """
    key_bytes = signing_key(options) if uses_default_pickle(options) else None
    fingerprint = "" if key_bytes is None else hashlib.sha256(key_bytes).hexdigest()
    key = (canonical(location), canonical(options), fingerprint)
    evicted: list[Engine] = []
    with _engines_lock:
        engine = engines.get(key)
        if engine is not None and not engine.closed:
            return engine
        # Built under the lock: two threads asking at once must not both subscribe.
        engine = Engine(key, location, options, key_bytes)
        engines[key] = engine
        while len(engines) > MAX_ENGINES:
            evicted.append(engines.pop(next(iter(engines))))
    for old in evicted:
        old.shutdown()  # outside the lock: it joins the bus thread
    return engine


def live_engine(key: tuple[str, str, str]) -> Engine | None:
    """The registered engine of the configuration ``key`` (``None``: none is)."""
    return engines.get(key)


def _log_close_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        _logger.warning("layercache: closing an asyncio stack failed (%r)", future.exception())


class _OwnKeysIndex:
    """The synchronous stack's view of the engine's in-process tag index: the same index,
    declared shared, so that the stack does not resolve a peer's tag invalidation on it.

    With ``TAG_INDEX="memory"`` each process indexes only the keys it stored itself, and every
    process's announcement of a tag invalidation already names the keys it resolved (the
    stack sends them too). Resolving a peer's tags here again would forget this process's
    records and drop its memory copies, but leave the values in the shared Redis layer, out of
    reach of any later ``invalidate_by_tag``. The sync stack is the engine's only subscriber.
    """

    is_shared = True

    def __init__(self, index: InMemoryTagIndex) -> None:
        self.index = index

    def __getattr__(self, name: str) -> Any:
        return getattr(self.index, name)


class Engine:
    """Everything one configuration needs, once per process: the memory layer, the synchronous
    stack and its Redis clients, the bus subscription, the tag index, the operations (and their
    counter state), and one asyncio side per event loop (built on first use of an ``a*`` method
    on that loop)."""

    def __init__(
        self,
        key: tuple[str, str, str],
        location: Any,
        options: dict[str, Any],
        key_bytes: bytes | None,
    ) -> None:
        self.key = key
        self.closed = False
        self.options = options  # also keeps alive the objects whose id is in the key
        self.urls = urls = split_locations(location)
        self.tag_index_kind, single_flight = check_options(options, bool(urls))
        serializer = value_serializer(options, key_bytes)
        clock: Callable[[], float] = options.get("CLOCK") or time.time
        memory_ttl = options.get("MEMORY_TTL")
        # Layers keep values forever by default; every finite Django timeout is passed
        # explicitly per write, so "TIMEOUT: None" really means forever.
        self.memory = MemoryLayer(
            ttl=memory_ttl,
            max_size=options.get("MEMORY_MAX_SIZE"),
            eviction=options.get("MEMORY_EVICTION", "lru"),
            max_bytes=options.get("MEMORY_MAX_BYTES"),
            clock=clock,
        )
        self.stack_options: dict[str, Any] = {
            "clock": clock,
            "write_policy": options.get("WRITE_POLICY", "strict"),
            "graceful_degradation": options.get("GRACEFUL_DEGRADATION"),
        }
        self.remote_sync: list[Any] = []
        extra: dict[str, Any] = {}
        if urls:
            self.remote_sync = redis_layers(urls, options, asyncio_side=False)
            extra = coordination(
                options, self.remote_sync[0].client, self.tag_index_kind, single_flight
            )
        # Without TAG_INDEX="redis": one in-process index for the sync stack and every asyncio
        # stack (it is thread-safe, and both stacks call it directly).
        self.local_tags = None if "tag_index" in extra else InMemoryTagIndex()
        if self.local_tags is not None:
            extra["tag_index"] = _OwnKeysIndex(self.local_tags)
        self.stack = SyncCacheStack([self.memory, *self.remote_sync], **self.stack_options, **extra)
        self.bus: Any = extra.get("invalidation_bus")
        self.ops = Operations(
            serializer=serializer,
            memory=self.memory,
            caps={"memory": memory_ttl, **{layer.name: None for layer in self.remote_sync}},
            counter=self.remote_sync[0].name if urls else None,
            copies=max(len(urls) - 1, 0),
            source_id=None if self.bus is None else self.bus.source_id,
            clock=clock,
            retry_after=retry_after(options.get("GRACEFUL_DEGRADATION")),
            single_flight=single_flight,
        )
        # Serialises the read-modify-write operations (add, incr, touch, delete's result).
        self.lock = threading.RLock()
        self.sync = Side(self.stack, self.remote_sync, self.bus, time, self.run_atomic)
        self._sides: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Side] = (
            weakref.WeakKeyDictionary()
        )
        self._sides_lock = threading.Lock()
        if self.bus is not None:
            self._subscribe()

    def _subscribe(self) -> None:
        """Subscribe now, before this process caches anything in memory.

        The synchronous stack would subscribe on its own first operation, but the asyncio
        stacks share its memory layer and only publish: an ``a*`` call coming first would
        fill memory that nothing listens for yet.
        Under graceful degradation a failure is reported and the bus keeps retrying (it drops
        the memory layer once subscribed, as it may have missed messages); without it, the
        failure is raised and the stack closed, so no retrying thread is left behind.
        """
        try:
            self.stack.start()
        except BaseException:
            self.closed = True
            self.stack.close()
            raise

    # ------------------------------------------------------------------ asyncio sides

    def async_side(self) -> Side:
        """The running event loop's side (a redis.asyncio client never serves two loops)."""
        loop = asyncio.get_running_loop()
        side = self._sides.get(loop)
        return side if side is not None else self._new_async_side(loop)

    def _new_async_side(self, loop: asyncio.AbstractEventLoop) -> Side:
        with self._sides_lock:
            side = self._sides.get(loop)
            if side is not None:
                return side
            # A side keeps its loop alive (its connections refer to it), so a finished loop's
            # entry would never leave the weak dictionary by itself (async_to_sync runs every
            # call on a new loop): forget them here; their connections cannot be used again.
            for finished in [old for old in self._sides if old.is_closed()]:
                del self._sides[finished]
            remote: list[Any] = []
            extra: dict[str, Any] = {}
            if self.urls:
                remote = redis_layers(self.urls, self.options, asyncio_side=True)
                extra = coordination(
                    self.options,
                    remote[0].client,
                    self.tag_index_kind,
                    self.ops.single_flight,
                    source_id=self.ops.source_id,
                )
            if self.local_tags is not None:
                extra["tag_index"] = self.local_tags  # its bus never delivers: see _OwnKeysIndex
            stack = CacheStack([self.memory, *remote], **self.stack_options, **extra)
            side = Side(stack, remote, extra.get("invalidation_bus"), asyncio, self.arun_atomic)
            self._sides[loop] = side
            return side

    async def aclose_side(self) -> None:
        """Close the running loop's side (its Redis connections); the engine stays open."""
        with self._sides_lock:
            side = self._sides.pop(asyncio.get_running_loop(), None)
        if side is not None:
            await side.stack.aclose()

    # ------------------------------------------------------------------ lifecycle

    def shutdown(self) -> None:
        """Close the engine for the whole process and forget it (idempotent).

        Backends still holding it build a fresh one on their next call. The asyncio sides of
        loops still running are closed on their own loop (not awaited); those of finished loops
        are dropped.
        """
        with _engines_lock:
            if self.closed:
                return
            self.closed = True
            if engines.get(self.key) is self:
                del engines[self.key]
        with self._sides_lock:
            sides = list(self._sides.items())
            self._sides.clear()
        for loop, side in sides:
            if loop.is_running() and not loop.is_closed():
                future = asyncio.run_coroutine_threadsafe(side.stack.aclose(), loop)
                future.add_done_callback(_log_close_failure)
        self.stack.close()

    # ------------------------------------------------------------------ drivers

    def run(self, steps: Steps[_T]) -> _T:
        """Run ``steps`` on the synchronous stack and clients."""
        return run(self.sync, steps)

    async def arun(self, steps: Steps[_T]) -> _T:
        """Run ``steps`` on the running loop's asyncio stack and clients."""
        return await arun(self.async_side(), steps)

    def run_atomic(self, steps: Steps[_T]) -> _T:
        """Run ``steps`` under the engine's lock (every thread's backends share it)."""
        with self.lock:
            return run(self.sync, steps)

    async def arun_atomic(self, steps: Steps[_T]) -> _T:
        """Async :meth:`run_atomic`."""
        if not self.urls:
            # Memory only: no I/O inside, so the thread lock is held for microseconds, and the
            # operation is atomic against the synchronous callers too.
            return self.run_atomic(steps)
        return await self.arun(steps)
