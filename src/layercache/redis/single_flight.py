"""``RedisSingleFlightCoordinator``: one origin fetch per cold key across every instance.

The lock of a key is a Redis string set with ``SET NX PX`` to a random token. The caller that
takes it (the *holder*) runs ``fetch()``, which loads the value and stores it in every layer,
renewing its lease meanwhile; it then releases the lock with a compare-and-delete script that
also publishes a completion notice. Every other caller (a *waiter*) waits for that notice on one
pub/sub subscription shared by the coordinator, polls ``read_shared()`` only as the fallback,
takes the lock over when it disappears without a value (the holder died or failed), and never
waits past ``timeout``: then it fetches by itself.

Redis trouble never reaches the caller: the coordinator degrades to calling ``fetch()``
directly (the stack's in-process single-flight still dedupes inside the instance).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .._keys import validate_prefix
from .._primitives.aio import (
    Cancelled,
    Signal,
    Timeout,
    bounded,
    is_running,
    new_flight_lock,
    pause,
    spawn,
    stop_spawned,
    wait_signal,
)
from .._types import ErrorHandler
from ._clients import (
    DEFAULT_SOCKET_TIMEOUT,
    read_pubsub,
    sync_twin_for_sync_clients,
    url_client,
)
from ._errors import DriverErrors, ErrorHandlers, call_error_handler
from ._flight_lease import Found, MustFetch, SingleFlightStats, TakenOver, new_token
from ._keys import single_flight_channel, single_flight_lock, single_flight_message
from ._options import check_raw_client, positive_seconds
from ._scripts import SINGLE_FLIGHT_ACQUIRE, SINGLE_FLIGHT_RELEASE, SINGLE_FLIGHT_RENEW
from .layer import RedisClient

__all__ = ["RedisSingleFlightCoordinator", "SingleFlightStats"]

logger = logging.getLogger("layercache.redis")

T = TypeVar("T")
R = TypeVar("R")

# A Redis call inside run() is bounded by the time left before the caller's timeout, but never
# by less than this: a caller with (almost) no time left still gets one real attempt.
_MIN_CALL_TIME = 0.1
# How long a new waiter waits for the shared subscription to be confirmed before it starts
# relying on polling alone (the subscription keeps trying in the background).
_SUBSCRIBE_WAIT = 1.0
# Subscription health: get_message wakes up this often; after _PING_AFTER seconds without any
# traffic it sends a PING, and after _DEAD_AFTER seconds of silence it reconnects (a connection
# that silently stopped delivering, e.g. a dropped NAT entry, raises no error by itself).
_IDLE_TICK = 1.0
_PING_AFTER = 10.0
_DEAD_AFTER = 25.0
# Reconnect backoff of the subscription (seconds, doubled per failure, with jitter).
_RECONNECT_MIN = 0.05
_RECONNECT_MAX = 5.0
# At most this many keys have waiters registered for notices; waiters beyond that poll.
_MAX_WAITING_KEYS = 10_000
# A waiter that knows the holder's remaining lease sleeps until just after it expires.
_EXPIRY_MARGIN = 0.002
# Repeated warnings of the same kind (e.g. every call during an outage) are logged at most
# this often; the rest go to the debug log.
_WARN_EVERY = 10.0


# unasync: begin async-only
@sync_twin_for_sync_clients("._sync_single_flight:SyncRedisSingleFlightCoordinator")
# unasync: end async-only
class RedisSingleFlightCoordinator:
    """Cross-instance single-flight on a Redis lock: N instances x M callers = 1 origin fetch.

    Pass it to ``CacheStack(single_flight_coordinator=...)``; the stack calls :meth:`run` on a
    miss, after its in-process single-flight.

    Args:
        client: A ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster`` created with
            ``decode_responses=False``. The coordinator does not close it. Its retry settings
            decide how long a call to a dead server takes; ``run()`` bounds each call by the
            caller's ``timeout`` anyway.
        url: Instead of ``client`` (keyword-only; exactly one of the two): the coordinator
            builds its own client as ``RedisLayer(url=...)`` does (usable from any loop) and
            closes it in :meth:`aclose`.
        prefix: Start of the lock keys (``prefix:lock:{key}``) and of the notification channel
            (``prefix:done``). Instances that should coordinate must share it.
        lease: Lifetime of a lock in seconds. A holder renews it while its fetch runs, so it
            only matters when the holder dies: waiters take over after at most this long.
        renew_interval: Seconds between renewals; default ``lease / 3``. Must be below
            ``lease``.

    Raises:
        ValueError: On a bad argument (a prefix that is empty, too long or contains control
            characters, a non-positive lease, a renew interval not below the lease, a client
            that decodes responses).
    """

    def __init__(
        self,
        client: RedisClient | None = None,
        *,
        url: str | None = None,
        prefix: str = "layercache:singleflight",
        lease: float = 30.0,
        renew_interval: float | None = None,
    ) -> None:
        validate_prefix(prefix)
        self._lease = positive_seconds("lease", lease)
        interval = self._lease / 3 if renew_interval is None else renew_interval
        self._renew_interval = positive_seconds("renew_interval", interval)
        if self._renew_interval >= self._lease:
            raise ValueError(
                f"renew_interval ({self._renew_interval}) must be shorter than the lease "
                f"({self._lease}), or the lock expires between renewals"
            )
        if (client is None) == (url is None):
            raise ValueError("RedisSingleFlightCoordinator needs exactly one of client= or url=")
        if url is not None:
            client = url_client(url, socket_timeout=DEFAULT_SOCKET_TIMEOUT)
        assert client is not None
        check_raw_client(
            client,
            "RedisSingleFlightCoordinator needs a client created with decode_responses=False",
        )
        self._client = client
        self._owns_client = url is not None
        self.prefix = prefix
        self._lease_ms = max(1, math.ceil(self._lease * 1000))
        self._channel = single_flight_channel(prefix)
        # register_script only computes the SHA: calls go out as EVALSHA, and redis-py loads
        # the script on NOSCRIPT (a restarted server, another cluster node).
        self._acquire_script = client.register_script(SINGLE_FLIGHT_ACQUIRE)
        self._renew_script = client.register_script(SINGLE_FLIGHT_RENEW)
        self._release_script = client.register_script(SINGLE_FLIGHT_RELEASE)
        self.stats = SingleFlightStats()
        self._error_handler = ErrorHandlers()
        # Waiters of this instance, by notice (the key's bytes): each has its own Event.
        self._waiters: dict[bytes, set[Signal]] = {}
        # Guards _waiters and starting the listener (a real lock only in the sync twin, where
        # callers and the listener are threads).
        self._waiters_lock = new_flight_lock()
        # The notice listener (a task here, a thread in the sync twin), told to stop by _closing.
        self._listener: Any = None
        self._subscribed: Signal | None = None
        self._closing = Signal()
        self._closed = False
        self._last_warning: dict[str, float] = {}

    def __repr__(self) -> str:
        return (
            f"RedisSingleFlightCoordinator(prefix={self.prefix!r}, lease={self._lease!r}, "
            f"renew_interval={self._renew_interval!r})"
        )

    def configure(self, *, lease: float | None = None, renew_interval: float | None = None) -> None:
        """Set the default lease and renewal interval; same checks as the constructor. (A
        stack passes its own ``single_flight_lease`` with each :meth:`run` instead.)"""
        lease_ms, interval = self._terms(lease, renew_interval)
        if lease is not None:
            self._lease = positive_seconds("lease", lease)
        self._renew_interval = interval
        self._lease_ms = lease_ms

    def _terms(self, lease: float | None, renew_interval: float | None) -> tuple[int, float]:
        """``(lease in ms, renew interval)`` of a call: given, or this coordinator's."""
        if lease is None and renew_interval is None:
            return self._lease_ms, self._renew_interval
        new_lease = self._lease if lease is None else positive_seconds("lease", lease)
        if renew_interval is not None:
            interval = positive_seconds("renew_interval", renew_interval)
        elif lease is not None:
            interval = new_lease / 3
        else:
            interval = self._renew_interval
        if interval >= new_lease:
            raise ValueError(
                f"renew_interval ({interval}) must be shorter than the lease ({new_lease}), "
                "or the lock expires between renewals"
            )
        return max(1, math.ceil(new_lease * 1000)), interval

    @property
    def lease(self) -> float:
        """Lock lifetime in seconds."""
        return self._lease

    @property
    def renew_interval(self) -> float:
        """Seconds between lease renewals of a holder."""
        return self._renew_interval

    def set_error_handler(self, handler: ErrorHandler | None) -> None:
        """Call ``handler(exc, context)`` for every Redis failure the coordinator absorbs.

        ``context`` holds ``component`` (``"single_flight"``), ``key`` (or ``None`` for the
        subscription) and ``operation`` (``acquire``, ``wait``, ``recheck``, ``renew``,
        ``release`` or ``subscribe``). Without a handler the coordinator only logs.
        """
        self._error_handler.own = handler

    def add_error_handler(self, handler: ErrorHandler) -> Callable[[], None]:
        """Also call ``handler(exc, context)`` for every failure absorbed (beside the handler
        set with :meth:`set_error_handler`); returns the function that removes it. Each stack
        using this coordinator adds its own: one coordinator may serve several stacks."""
        return self._error_handler.add(handler)

    # -- the one entry point -----------------------------------------------------------------

    async def run(
        self,
        key: str,
        fetch: Callable[[], Awaitable[T]],
        read_shared: Callable[[], Awaitable[tuple[bool, Any]]],
        *,
        timeout: float = 5.0,
        poll: float = 0.05,
        lease: float | None = None,
        renew_interval: float | None = None,
    ) -> T | Any:
        """Run ``fetch()`` here if no other instance is fetching ``key``; else wait for its value.

        Args:
            key: The cache key (as stored in the layers).
            fetch: Loads the value from the origin and stores it in every layer; returns it.
            read_shared: Returns ``(True, value)`` when the shared layers hold a fresh value for
                ``key``, else ``(False, None)``.
            timeout: Longest a waiter waits for another instance before fetching by itself.
            poll: Seconds between ``read_shared()`` polls, the fallback for a missed notice.
            lease: This call's lock lifetime (default: the coordinator's ``lease``); a stack's
                ``single_flight_lease`` arrives here, so one coordinator may serve stacks with
                different settings.
            renew_interval: This call's renewal interval (default: a third of ``lease`` when
                it is given, else the coordinator's).

        Returns:
            The value from ``fetch()``, or the one another instance stored.

        Raises:
            ValueError: If ``timeout`` is negative or infinite, or ``poll`` not positive.
            Exception: Whatever ``fetch()`` raised, unchanged (after the lock was released).
        """
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 <= timeout < math.inf
        ):
            raise ValueError(f"timeout must be a finite number of seconds >= 0, got {timeout!r}")
        poll = positive_seconds("poll", poll)
        terms = self._terms(lease, renew_interval)
        if self._closed:
            self.stats.degraded += 1
            return await fetch()
        deadline = time.monotonic() + timeout
        lock = single_flight_lock(self.prefix, key)
        token = new_token()
        try:
            acquired, pttl = await self._acquire(lock, token, deadline, terms)
        except Exception as exc:
            self._degrade(exc, key, "acquire")
            return await fetch()
        if acquired:
            return await self._lead(key, lock, token, fetch, read_shared, deadline, timeout, terms)
        outcome = await self._await_turn(key, lock, read_shared, deadline, poll, pttl, terms)
        if isinstance(outcome, Found):
            return outcome.value
        if isinstance(outcome, TakenOver):
            self.stats.takeovers += 1
            return await self._lead(
                key, lock, outcome.token, fetch, read_shared, deadline, timeout, terms
            )
        return await fetch()

    # -- holder ------------------------------------------------------------------------------

    async def _lead(
        self,
        key: str,
        lock: bytes,
        token: bytes,
        fetch: Callable[[], Awaitable[T]],
        read_shared: Callable[[], Awaitable[tuple[bool, Any]]],
        deadline: float,
        timeout: float,
        terms: tuple[int, float],
    ) -> T | Any:
        self.stats.acquired += 1
        # Re-check under the lock: another instance may have stored the value and released the
        # lock between the caller's own lookup and our SET NX. Without this, a late caller
        # would start a second origin fetch for a key that is already warm.
        try:
            found, value = await self._bounded(read_shared(), deadline)
        except Exception as exc:
            # We hold the lock; fetching is what we would do on a miss anyway.
            self._report(exc, key, "recheck")
            found, value = False, None
        if found:
            self.stats.shared_hits += 1
            # Nobody needs a notice: the value is already there for every waiter's next poll.
            await self._release(key, lock, token, timeout, notify=False)
            return value
        self.stats.fetches += 1
        done = Signal()

        async def renew() -> None:
            await self._renew(key, lock, token, done, terms)

        renewer = spawn(renew, "layercache-lease")
        try:
            result = await fetch()
        except BaseException:
            await self._stop(renewer, done, terms[1])
            # Released and announced, so that a waiter takes over now rather than at expiry.
            await self._release(key, lock, token, timeout, notify=True)
            raise
        await self._stop(renewer, done, terms[1])
        await self._release(key, lock, token, timeout, notify=True)
        return result

    async def _renew(
        self, key: str, lock: bytes, token: bytes, done: Signal, terms: tuple[int, float]
    ) -> None:
        lease_ms, interval = terms
        while not await wait_signal(done, interval):
            try:
                renewed = await bounded(
                    self._renew_script(keys=[lock], args=[token, lease_ms]), interval
                )
            except Exception as exc:
                # The lease is still running; the next renewal may get through.
                self.stats.renew_failures += 1
                self._report(exc, key, "renew")
                continue
            if not renewed:
                # The lease ran out (e.g. Redis was unreachable for longer than it) and the lock
                # is gone or someone else's: another instance may be fetching too. Nothing to
                # renew any more; our fetch goes on and its value is stored as usual.
                self.stats.lock_lost += 1
                self._warn("lock_lost", "single-flight lock of %r was lost during the fetch", key)
                return
            self.stats.renewals += 1

    async def _stop(self, renewer: Any, done: Signal, interval: float) -> None:
        done.set()
        # A renewal in flight is bounded by the renew interval (the client's socket timeout in
        # the sync twin): wait that long at most.
        await stop_spawned(renewer, interval + _MIN_CALL_TIME)

    async def _release(
        self, key: str, lock: bytes, token: bytes, timeout: float, *, notify: bool
    ) -> None:
        args: list[bytes] = [token]
        if notify:
            args += [self._channel, single_flight_message(key)]
        try:
            released = await bounded(
                self._release_script(keys=[lock], args=args), max(timeout, _MIN_CALL_TIME)
            )
        except Exception as exc:
            # The value is fetched and stored; a lock we could not delete expires with its
            # lease. Never turn the caller's success into an error.
            self.stats.release_failures += 1
            self._report(exc, key, "release")
            return
        if not released:
            self.stats.lock_lost += 1
            self._warn("lock_lost", "single-flight lock of %r expired before its release", key)

    # -- waiter ------------------------------------------------------------------------------

    async def _await_turn(
        self,
        key: str,
        lock: bytes,
        read_shared: Callable[[], Awaitable[tuple[bool, Any]]],
        deadline: float,
        poll: float,
        pttl: int,
        terms: tuple[int, float],
    ) -> Found | TakenOver | MustFetch:
        self.stats.waits += 1
        notice = single_flight_message(key)
        # Registered before the first look at the shared layers, so a notice published after
        # that look cannot be missed.
        event = self._register(notice)
        try:
            await self._ensure_subscribed(deadline)
            if event is not None:
                # A (re)subscription wakes every waiter; this one has not looked yet anyway.
                event.clear()
            found, value = await self._bounded(read_shared(), deadline)
            while not found:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.stats.timeouts += 1
                    return MustFetch()
                delay = min(poll, remaining)
                if pttl >= 0:
                    # The holder's lease ends sooner than the next poll: look right after it,
                    # so a dead holder is replaced promptly even with a long poll interval.
                    delay = min(delay, pttl / 1000 + _EXPIRY_MARGIN)
                await self._sleep(event, delay)
                found, value = await self._bounded(read_shared(), deadline)
                if found:
                    break
                # The lock is free only if the holder finished without storing a value, failed,
                # or died: at most one waiter wins this SET NX, so no second fetch races the
                # first one.
                token = new_token()
                acquired, pttl = await self._acquire(lock, token, deadline, terms)
                if acquired:
                    return TakenOver(token)
        except Timeout:
            # A Redis call (or read_shared) outlived the caller's timeout.
            self.stats.timeouts += 1
            return MustFetch()
        except Exception as exc:
            self._degrade(exc, key, "wait")
            return MustFetch()
        finally:
            self._unregister(notice, event)
        self.stats.shared_hits += 1
        return Found(value)

    async def _sleep(self, event: Signal | None, delay: float) -> None:
        if event is None:
            # Polling only (beyond the cap of waiting keys).
            await pause(delay)
            return
        if await wait_signal(event, delay):
            # Cleared before the next read_shared(): a notice arriving during that read sets
            # it again, so it is never lost.
            event.clear()

    def _register(self, notice: bytes) -> Signal | None:
        with self._waiters_lock:
            events = self._waiters.get(notice)
            if events is None:
                if len(self._waiters) >= _MAX_WAITING_KEYS:
                    # Bounded: a caller beyond the cap still gets its value, by polling.
                    return None
                events = self._waiters[notice] = set()
            event = Signal()
            events.add(event)
            return event

    def _unregister(self, notice: bytes, event: Signal | None) -> None:
        if event is None:
            return
        with self._waiters_lock:
            events = self._waiters.get(notice)
            if events is None:
                return
            events.discard(event)
            if not events:
                del self._waiters[notice]

    # -- notification subscription -------------------------------------------------------------

    async def _ensure_subscribed(self, deadline: float) -> None:
        with self._waiters_lock:
            if self._closed:
                return  # closed while this waiter was on its way: poll
            if not is_running(self._listener):
                # A new listener (the first, or one on a new loop after the last one's loop
                # ended) gets new signals: one of an ended loop cannot be waited for here.
                fresh = self._subscribed = Signal()
                self._closing = Signal()

                async def listen() -> None:
                    await self._listen(fresh)

                self._listener = spawn(listen, f"layercache-single-flight:{self.prefix}")
            subscribed = self._subscribed
        assert subscribed is not None
        if subscribed.is_set():
            return
        wait = min(_SUBSCRIBE_WAIT, deadline - time.monotonic())
        if wait > 0:
            # Not subscribed in time (Redis slow or unreachable): poll until it is.
            await wait_signal(subscribed, wait)

    async def _listen(self, subscribed: Signal) -> None:
        delay = _RECONNECT_MIN
        while not self._closed:
            client: Any = self._client
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                last_seen = time.monotonic()
                pinged = False
                while not self._closed:
                    # A notice that began within the tick gets the socket timeout for its
                    # rest (see read_pubsub).
                    message = await read_pubsub(pubsub, _IDLE_TICK, DEFAULT_SOCKET_TIMEOUT)
                    now = time.monotonic()
                    if message is None:
                        if now - last_seen > _DEAD_AFTER:
                            raise ConnectionError("the single-flight subscription went silent")
                        if now - last_seen > _PING_AFTER and not pinged:
                            await pubsub.ping()
                            pinged = True
                        continue
                    last_seen, pinged = now, False
                    kind = message.get("type")
                    if kind == "message":
                        self._notify(message.get("data"))
                    elif kind == "subscribe":
                        # Also after redis-py reconnected by itself: notices published while
                        # we were away are lost, so every waiter looks again now.
                        subscribed.set()
                        self.stats.subscriptions += 1
                        delay = _RECONNECT_MIN
                        self._wake_all()
            except Cancelled:
                raise
            except Exception as exc:
                subscribed.clear()
                self.stats.subscription_errors += 1
                self._report(exc, None, "subscribe")
            finally:
                try:
                    await pubsub.aclose()
                except Exception:
                    logger.debug("closing the single-flight subscription failed", exc_info=True)
            # Waiters poll meanwhile; jitter keeps many instances from reconnecting in step.
            if await wait_signal(self._closing, delay * random.uniform(0.5, 1.0)):
                return
            delay = min(delay * 2, _RECONNECT_MAX)

    def _notify(self, data: object) -> None:
        if not isinstance(data, bytes):
            return
        with self._waiters_lock:
            events = self._waiters.get(data)
            if not events:
                return
            self.stats.notifications += 1
            for event in events:
                event.set()

    def _wake_all(self) -> None:
        with self._waiters_lock:
            for events in self._waiters.values():
                for event in events:
                    event.set()

    # -- plumbing ----------------------------------------------------------------------------

    async def _acquire(
        self, lock: bytes, token: bytes, deadline: float, terms: tuple[int, float]
    ) -> tuple[bool, int]:
        reply = await self._bounded(
            self._acquire_script(keys=[lock], args=[token, terms[0]]), deadline
        )
        acquired, pttl = reply
        return bool(int(acquired)), int(pttl)

    @staticmethod
    async def _bounded(call: Awaitable[R], deadline: float) -> R:
        limit = max(deadline - time.monotonic(), _MIN_CALL_TIME)
        return await bounded(call, limit)

    def _degrade(self, exc: BaseException, key: str, operation: str) -> None:
        self.stats.degraded += 1
        self._report(exc, key, operation)

    def _report(self, exc: BaseException, key: str | None, operation: str) -> None:
        self._warn(
            operation,
            "single-flight %s failed for %r, continuing without it: %r",
            operation,
            key,
            exc,
        )
        context = {"component": "single_flight", "key": key, "operation": operation}
        broken = "error handler of the single-flight coordinator raised"
        call_error_handler(self._error_handler, exc, context, logger, broken)

    def _warn(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last_warning.get(kind)
        if last is None or now - last >= _WARN_EVERY:
            self._last_warning[kind] = now
            logger.warning(message, *args)
        else:
            logger.debug(message, *args)

    async def aclose(self) -> None:
        """Stop the notification subscription; close the client if the coordinator built it
        (from ``url``; a client passed in stays open: it is the caller's).

        Later :meth:`run` calls fetch directly, without coordination.
        """
        with self._waiters_lock:
            self._closed = True
            listener, self._listener = self._listener, None
        self._closing.set()
        if is_running(listener):
            # The listener notices _closed within one idle tick (a thread cannot be cancelled).
            await stop_spawned(listener, _IDLE_TICK + _MIN_CALL_TIME)
        # Waiters still running fall back to polling until their timeout.
        self._wake_all()
        if self._owns_client:
            with DriverErrors("single_flight")("aclose"):
                await self._client.aclose()
