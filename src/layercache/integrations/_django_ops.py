"""The Django backend's operations, each written once for its two sides.

An operation is a generator that yields the I/O it needs (a :class:`Call`) and receives the
result. :func:`run` performs the calls on the synchronous side (``SyncCacheStack``, sync Redis
layers, ``time.sleep``); :func:`arun` awaits them on an event loop's side (``CacheStack``,
asyncio Redis layers, ``asyncio.sleep``). A failed call is thrown back into the generator at its
yield, so one body holds the logic, its error handling included, for both.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
import types
from collections.abc import Callable, Generator, Iterable, Mapping
from typing import Any, TypeVar

from .. import (
    CacheEntry,
    CacheLayerError,
    InvalidationMessage,
    MemoryLayer,
    PickleSerializer,
    key_hash,
)

__all__ = ["Call", "Operations", "Side", "Steps", "UnreadableValueError", "arun", "run"]

_T = TypeVar("_T")
_logger = logging.getLogger("layercache")

# incr/decr on Redis is an optimistic compare-and-set loop; each lost race re-reads the value.
# Bounded, with a short jittered back-off so that a burst of writers spreads out instead of
# colliding again at once (worst case about a second before CacheLayerError).
_INCR_ATTEMPTS = 200
_INCR_BACKOFF_CAP = 0.005
MISSING: Any = object()


def _incr_backoff(attempt: int) -> float:
    # Jitter only spreads retries over time; it needs no cryptographic randomness.
    return random.random() * min(_INCR_BACKOFF_CAP, 0.0002 * (attempt + 1))


def _not_found(key: Any) -> ValueError:
    return ValueError(f"Key '{key}' not found")


class UnreadableValueError(ValueError):
    """Stored bytes that do not decode (forged, signed with another key, or from an older
    format): the key reads as a miss."""


# ---------------------------------------------------------------------- one body, two drivers


@dataclasses.dataclass(frozen=True, slots=True)
class Call:
    """One I/O step: ``<side's target>.<method>(*args, **kwargs)``; ``plain`` calls are
    synchronous on both sides (the asyncio side does not await them)."""

    target: str
    method: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    plain: bool = False


Steps = Generator[Call, Any, _T]


class Side:
    """What the steps run against on one side: its stack, its Redis layers (``redis0`` is the
    counter authority), the bus it publishes on, its sleep, and its atomic runner."""

    __slots__ = ("stack", "targets")

    def __init__(
        self, stack: Any, remote: list[Any], bus: Any, clock: Any, atomic: Callable[..., Any]
    ) -> None:
        self.stack = stack
        self.targets: dict[str, Any] = {
            "stack": stack,
            "bus": bus,
            "clock": clock,
            "atomic": types.SimpleNamespace(run=atomic),
        }
        self.targets.update((f"redis{i}", layer) for i, layer in enumerate(remote))

    def start(self, call: Call) -> Any:
        """Make ``call`` (on the asyncio side: start it; its awaitable is the result)."""
        return getattr(self.targets[call.target], call.method)(*call.args, **call.kwargs)


def run(side: Side, steps: Steps[_T]) -> _T:
    """Run ``steps`` on the synchronous ``side``."""
    reply: Any = None
    error: Exception | None = None
    while True:
        try:
            call = steps.send(reply) if error is None else steps.throw(error)
        except StopIteration as done:
            result: _T = done.value
            return result
        try:
            reply, error = side.start(call), None
        except Exception as exc:
            error = exc


async def arun(side: Side, steps: Steps[_T]) -> _T:
    """Run ``steps`` on an event loop's ``side``, awaiting each call."""
    reply: Any = None
    error: Exception | None = None
    while True:
        try:
            call = steps.send(reply) if error is None else steps.throw(error)
        except StopIteration as done:
            result: _T = done.value
            return result
        try:
            reply = side.start(call)
            reply, error = (reply if call.plain else await reply), None
        except Exception as exc:
            error = exc


# ---------------------------------------------------------------------- the operations


class Operations:
    """Every operation of the backend as steps, and the encoding of values, for one engine.

    Keys are stack keys, already made by the backend (its ``KEY_PREFIX``, ``VERSION``, ...);
    ``key`` where given is the caller's key, for error messages. ``data`` is a value encoded by
    :meth:`encode` (never ``None``, so a cached ``None`` differs from a miss).

    Args:
        serializer: The value serializer (``dumps`` to bytes, ``loads``).
        memory: The memory layer every stack of the engine shares.
        caps: Per layer name, the longest a value may stay there (``None``: no cap).
        counter: The name of the first Redis layer (the counter authority), or ``None``.
        copies: How many Redis layers follow the counter authority.
        source_id: The bus identity of this process's announcements (``None``: no bus).
        clock: Wall-clock seconds.
        retry_after: ``GRACEFUL_DEGRADATION``'s retry delay (``None``: off).
        single_flight: Whether ``get_or_set`` runs a callable once across processes.
    """

    def __init__(
        self,
        *,
        serializer: Any,
        memory: MemoryLayer,
        caps: dict[str, float | None],
        counter: str | None,
        copies: int,
        source_id: str | None,
        clock: Callable[[], float],
        retry_after: float | None,
        single_flight: bool,
    ) -> None:
        self.serializer = serializer
        self.memory = memory
        self.caps = caps
        self.counter = counter
        self.copies = copies
        self.source_id = source_id
        self.clock = clock
        self.retry_after = retry_after
        self.single_flight = single_flight
        # incr/decr skip Redis until then after a connection failure (graceful degradation).
        self.counter_down_until = 0.0

    # ------------------------------------------------------------------ values

    def encode(self, value: Any) -> bytes:
        """``value`` as the bytes every layer stores (called before any lock or I/O).

        Raises:
            pickle.PickleError: (or whatever else ``pickle`` raises) If the default serializer
                cannot pickle ``value``: pickle's own error, as Django's backends raise it.
            TypeError: If another serializer cannot encode ``value``.
        """
        try:
            data = self.serializer.dumps(value)
        except TypeError as exc:
            # PickleSerializer reports pickle's error as a TypeError caused by it; Django's
            # backends (and its test suite) raise pickle's own error.
            if isinstance(self.serializer, PickleSerializer) and exc.__cause__ is not None:
                raise exc.__cause__ from None
            raise
        if not isinstance(data, bytes):
            raise TypeError(
                f"SERIALIZER {self.serializer!r} returned {type(data).__name__}, not bytes"
            )
        return data

    def decode(self, data: Any) -> Any:
        """The value in ``data`` read from a stack.

        Raises:
            UnreadableValueError: If ``data`` does not decode (a signature that does not
                verify is refused before anything is unpickled).
        """
        if not isinstance(data, bytes):
            # Not written by this version of the backend (older entries held a list).
            raise UnreadableValueError(f"not an encoded value ({type(data).__name__})")
        try:
            return self.serializer.loads(data)
        except Exception as exc:
            raise UnreadableValueError(str(exc)) from exc

    def drop(self, key: str, error: UnreadableValueError, operation: str) -> Steps[None]:
        """Report an unreadable value and delete it everywhere, so that it reads as a miss
        (a copy backfilled into memory included) and the next ``add`` can store the key."""
        _logger.warning(
            "layercache: unreadable value dropped (%s: %s)",
            operation,
            error,
            extra={
                "operation": operation,
                "key_hash": key_hash(key),
                "layer": None,
                "duration": None,
            },
        )
        yield Call(
            "stack", "report_error", (error,), {"key": key, "operation": operation}, plain=True
        )
        yield Call("stack", "delete", (key,))

    def read(self, key: str, data: Any, operation: str) -> Steps[Any]:
        """The value of ``data`` read under ``key``: ``MISSING`` for a miss or an unreadable
        value (reported and deleted)."""
        if data is None:
            return MISSING
        try:
            return self.decode(data)
        except UnreadableValueError as exc:
            yield from self.drop(key, exc, operation)
            return MISSING

    def write_kwargs(self, seconds: float | None, tags: Iterable[str] | None) -> dict[str, Any]:
        """A stack write's keyword arguments: per layer, the Django timeout capped by the
        layer's own cap (none given: every layer's default, its cap or forever); the tags."""
        kwargs: dict[str, Any] = {}
        if seconds is not None:
            kwargs["ttl"] = {
                name: seconds if cap is None else min(seconds, cap)
                for name, cap in self.caps.items()
            }
        if tags:
            kwargs["tags"] = list(tags)
        return kwargs

    # ------------------------------------------------------------------ Django's operations

    def write(
        self, key: str, data: bytes, seconds: float | None, tags: Iterable[str] | None
    ) -> Steps[None]:
        """Store (or, for a timeout <= 0, delete) ``key``."""
        if seconds is not None and seconds <= 0:
            yield Call("stack", "delete", (key,))
        else:
            # A write that raises leaves no layer holding the value (the stack drops it).
            yield Call("stack", "set", (key, data), self.write_kwargs(seconds, tags))

    def add(
        self, key: str, data: bytes, seconds: float | None, tags: Iterable[str] | None
    ) -> Steps[bool]:
        """Store ``data`` if ``key`` is absent."""
        if (yield Call("stack", "has", (key,))):
            return False
        yield from self.write(key, data, seconds, tags)
        return True

    def touch(self, key: str, seconds: float | None) -> Steps[bool]:
        """Store ``key``'s value (its bytes, as stored) again with a new timeout."""
        info = yield Call("stack", "inspect", (key,))
        data = yield Call("stack", "get", (key,))
        if data is None:
            return False
        yield from self.write(key, data, seconds, info.tags if info is not None else ())
        return True

    def delete(self, key: str) -> Steps[bool]:
        """Delete ``key``; whether it was there."""
        existed: bool = yield Call("stack", "has", (key,))
        yield Call("stack", "delete", (key,))
        return existed

    def get_many(self, wanted: Mapping[str, Any]) -> Steps[dict[Any, Any]]:
        """The values found, by caller's key (``wanted``: stack key -> caller's key)."""
        if not wanted:
            return {}
        found = yield Call("stack", "get_many", (list(wanted),))
        values: dict[Any, Any] = {}
        for key, data in zip(wanted, found, strict=True):
            value = yield from self.read(key, data, "get_many")
            if value is not MISSING:
                values[wanted[key]] = value
        return values

    def set_many(
        self, items: list[tuple[str, bytes]], seconds: float | None, tags: Iterable[str] | None
    ) -> Steps[list[Any]]:
        """Store every (stack key, encoded value)."""
        if seconds is not None and seconds <= 0:
            yield Call("stack", "delete_many", ([k for k, _ in items],))
            return []
        kwargs = self.write_kwargs(seconds, tags)
        entries = [CacheEntry(k, v, options=kwargs or None) for k, v in items]
        yield Call("stack", "set_many", (entries,))
        return []

    def get_or_set(self, key: str, default: Any, seconds: float | None) -> Steps[Any]:
        """The cached value, or ``default`` (called if callable) stored with :meth:`add`."""
        data = yield Call("stack", "get", (key,))
        value = yield from self.read(key, data, "get_or_set")
        if value is not MISSING:
            return value
        if callable(default):
            if self.single_flight and (seconds is None or seconds > 0):
                fetch = default

                def encoded() -> bytes:
                    return self.encode(fetch())

                # The stack's single flight: one call of the callable across every process.
                data = yield Call("stack", "get", (key, encoded), self.write_kwargs(seconds, None))
                value = yield from self.read(key, data, "get_or_set")
                if value is not MISSING:
                    return value
            default = default()
        data = self.encode(default)  # before the lock: pickling may take a while
        yield Call("atomic", "run", (self.add(key, data, seconds, None),))
        # Another writer may have won the add: return what the cache holds now.
        data = yield Call("stack", "get", (key,))
        value = yield from self.read(key, data, "get_or_set")
        return default if value is MISSING else value

    def incr(self, stack_key: str, key: Any, delta: int) -> Steps[Any]:
        """Add ``delta`` to the value under ``stack_key``; the new value (memory only: run it
        atomically; with Redis: a compare-and-set on the counter authority)."""
        if self.counter is not None:
            return (yield from self._redis_incr(stack_key, key, delta))
        data = yield Call("stack", "get", (stack_key,))
        value = yield from self.read(stack_key, data, "incr")
        if value is MISSING:
            raise _not_found(key)
        new_value = value + delta
        info = yield Call("stack", "inspect", (stack_key,))
        remaining = info.fresh_ttl if info is not None else None
        if remaining is not None and remaining <= 0:
            raise _not_found(key)
        tags = info.tags if info else ()
        yield from self.write(stack_key, self.encode(new_value), remaining, tags)
        return new_value

    # ------------------------------------------------------------------ counters on Redis

    def _counter_down(self, stack_key: str) -> Steps[bool]:
        """Graceful degradation: whether the counter authority is out of service (this
        process saw it fail recently, or the stack is skipping it and cannot recover it yet)."""
        if self.clock() < self.counter_down_until:
            return True
        for _ in range(2):
            stats = yield Call("stack", "get_stats", plain=True)
            until = next(s.degraded_until for s in stats.layers if s.name == self.counter)
            if until is None:
                return False
            if self.clock() < until:
                return True
            # Due for a retry: any query of the key lets the stack probe the layer and replay
            # what it missed (deletes included) before incr may read a counter there again.
            yield Call("stack", "inspect", (stack_key,))
        return True

    def _counter_call(self, key: Any, call: Call) -> Steps[Any]:
        """A Redis call of incr; under graceful degradation a failure reads as "not found"."""
        try:
            return (yield call)
        except CacheLayerError as exc:
            if self.retry_after is None or exc.__cause__ is None:
                raise
            self.counter_down_until = self.clock() + self.retry_after
            _logger.warning("layercache: incr could not reach Redis (%r)", exc.__cause__)
            raise _not_found(key) from exc

    def _after_write(self, call: Call) -> Steps[None]:
        """A follow-up of a counter already written: under graceful degradation a failure is
        logged, not raised (the increment happened; raising would invite a second one)."""
        try:
            yield call
        except CacheLayerError as exc:
            if self.retry_after is None:
                raise
            _logger.warning("layercache: incr follow-up %s failed (%r)", call.target, exc)

    def _redis_incr(self, stack_key: str, key: Any, delta: int) -> Steps[Any]:
        if self.retry_after is not None and (yield from self._counter_down(stack_key)):
            raise _not_found(key)
        for attempt in range(_INCR_ATTEMPTS):
            read = Call("redis0", "get_with_token", (stack_key,))
            found = yield from self._counter_call(key, read)
            if found is None or not found[0].is_fresh(self.clock()):
                # Redis is the authority: a copy only this process's memory still holds is stale.
                self.memory.delete(stack_key)
                raise _not_found(key)
            entry, token = found
            try:
                new_value = self.decode(entry.value) + delta
            except UnreadableValueError as exc:
                # Forged or foreign bytes hold no number to add to: "not found", as for a get.
                self.memory.delete(stack_key)
                raise _not_found(key) from exc
            new_entry = entry.with_value(self.encode(new_value))
            swap = Call("redis0", "compare_and_set", (stack_key, token, new_entry))
            if (yield from self._counter_call(key, swap)):
                self.memory.delete(stack_key)
                now = self.clock()
                for i in range(1, 1 + self.copies):
                    # Copies for the other Redis layers; the first one alone is atomic.
                    ttl = new_entry.storage_ttl(now)
                    yield from self._after_write(
                        Call(f"redis{i}", "set", (stack_key, new_entry, ttl))
                    )
                if self.source_id is not None:
                    message = InvalidationMessage(
                        source_id=self.source_id,
                        scope="keys",
                        operation="set",
                        keys=(stack_key,),
                        timestamp=time.time(),
                    )
                    yield from self._after_write(Call("bus", "publish", (message,)))
                return new_value
            yield Call("clock", "sleep", (_incr_backoff(attempt),))
        raise CacheLayerError(str(self.counter), "incr", "too many concurrent writers; gave up")
