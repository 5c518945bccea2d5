# DO NOT EDIT: generated from src/layercache/_async/flights.py by scripts/unasync.py.
# Change the async source and run `python scripts/unasync.py`.
# unasync: begin async-wording
"""In-flight reads and fetches of keys, and the marks of changed keys: one owner, one lock.

A ``SyncCacheStack`` shares work between concurrent callers of a key twice: the read of the
layers below L1 (one read per key per burst, not one per caller) and the origin fetch (one
fetch per key). Every write, delete and invalidation marks the flights it concerns, so that a
read or fetch that started before the change never stores (or hands to a later caller) the
value it replaced.

The table is touched by callers, by background refreshes and by the invalidation bus's
subscriber, which in the threaded twin run in different threads, and in the asyncio stack may
run on several event loops in several threads: so it sits behind a real lock in both twins
(an uncontended ``threading.Lock`` costs tens of nanoseconds and is never held across an
``await``). Lookups that only read one dict entry take no lock; every check-then-act and
every iteration does.

Flights are kept per event loop (an asyncio future can only be awaited on its own loop; the
threaded twin has one scope): a caller on another loop starts its own flight, and a mark
reaches the flights of every loop.
"""
# unasync: end async-wording

from __future__ import annotations

import contextlib
import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any, TypeAlias

from .._primitives.threads import FlightFuture, flight_scope, new_future, start_over_after_fork

__all__ = ["FOLLOW", "JOIN_FETCH", "LEAD", "Flight", "Flights", "among", "no_flight"]

# What join_read() tells a caller to do.
LEAD = 0  # read the lower layers for everyone (a new read flight)
FOLLOW = 1  # wait for the running read's result
JOIN_FETCH = 2  # a fetch of the key is running: wait for it instead

# Recently changed keys remembered (older changes count as "everything changed").
MAX_KEY_MARKS = 1_024


class Flight:
    """One in-flight read or fetch of a key, shared by its concurrent callers.

    ``invalidated`` is set when the key is deleted, invalidated, cleared or explicitly set
    while the work runs: a fetched value then reaches the callers already waiting but is not
    stored, and no caller arriving after the change joins it. ``outdated`` (fetches only) is
    set when a shared layer reported a change of the key (server-assisted invalidation,
    :meth:`Flights.outdating`): no caller arriving after it joins the fetch, and its value is
    not written to the in-process layers, but what it stored in the shared layers stands.
    """

    __slots__ = ("future", "handle", "invalidated", "leases", "outdated", "scope", "tags")

    def __init__(self, tags: tuple[str, ...], scope: Any = None) -> None:
        self.invalidated = False
        self.outdated = False
        self.tags = tags
        self.scope = scope
        self.future: FlightFuture[Any] | None = None
        self.handle: Any = None
        # A fetch's leases on the layers with conditional stores (layer index -> lease),
        # from the read that found the key missing; the fetch takes the missing ones itself.
        self.leases: dict[int, Any] | None = None


# Flights of one kind (reads or fetches): scope (a loop, or the whole threaded twin) -> key.
_Table: TypeAlias = dict[Any, dict[str, Flight]]


class Flights:
    """The in-flight reads and fetches of one stack, and its change marks."""

    def __init__(self, max_key_marks: int = MAX_KEY_MARKS) -> None:
        self._lock = threading.Lock()
        self._fetches: _Table = {}
        self._reads: _Table = {}
        self._max_key_marks = max_key_marks
        # Every change bumps the epoch; a read remembers the epoch it started in.
        self.epoch = 0
        self._broad_mark = 0
        self._key_marks: OrderedDict[str, int] = OrderedDict()
        # Changes under way: keys being written or deleted now, and broad changes (pattern,
        # tags, clear). Bounded by the changes running at once, not by keys.
        self._active_keys: dict[str, int] = {}
        self._active_broad = 0
        start_over_after_fork(self)

    def _after_fork(self) -> None:
        """In a child process made by ``fork()``: the flights and changes under way belong to
        threads that are not in the child (only the forking thread is copied). Kept, a caller
        would wait forever for a fetch nobody runs, and a change that never ends would keep
        every fetch's value out of L1; a lock one of those threads held would stay held."""
        self._lock = threading.Lock()
        self._fetches = {}
        self._reads = {}
        self._active_keys = {}
        self._active_broad = 0

    # ------------------------------------------------------------------ flights

    def join_fetch(self, key: str, tags: tuple[str, ...]) -> tuple[Flight | None, Flight]:
        """The running fetch of ``key`` to join, or a new one registered for it.

        Returns ``(running, flight)``: ``running`` is the flight to join (``flight`` then
        too), or ``None`` when ``flight`` was just registered, before its work starts, so
        every caller from now on joins it.
        """
        return self._join(self._fetches, key, tags)

    def join_read(self, key: str, fetching: bool) -> tuple[int, Flight]:
        """What a caller that missed L1 does, decided under one lock: join the running fetch
        of ``key`` (``JOIN_FETCH``; only when the caller has a fetcher, ``fetching``), wait
        for the running read of the lower layers (``FOLLOW``), or lead a new read (``LEAD``).

        Both tables are looked at in one step: a read registers its fetch before it ends, so
        a caller never sees neither while work of the key is in flight (it would read the
        layers again). A read's future is made by its first follower, not by its leader: most
        reads have no follower, and then the read costs two lock round trips and nothing
        else. The leader hands its result over with :meth:`finish_read`.
        """
        scope = flight_scope()
        with self._lock:
            if fetching:
                fetches = self._fetches.get(scope)
                if fetches is not None:
                    fetch = fetches.get(key)
                    if fetch is not None and not (fetch.invalidated or fetch.outdated):
                        return JOIN_FETCH, fetch
            flights = _in_scope(self._reads, scope)
            running = flights.get(key)
            if running is not None and not running.invalidated:
                if running.future is None:
                    running.future = new_future()
                return FOLLOW, running
            flight = Flight((), scope)
            flights[key] = flight
            return LEAD, flight

    def _join(self, table: _Table, key: str, tags: tuple[str, ...]) -> tuple[Flight | None, Flight]:
        scope = flight_scope()
        with self._lock:
            flights = _in_scope(table, scope)
            running = flights.get(key)
            if running is not None and not (running.invalidated or running.outdated):
                return running, running
            flight = Flight(tags, scope)
            flight.future = new_future()
            flights[key] = flight
            return None, flight

    def finish_fetch(self, key: str, flight: Flight) -> None:
        """Forget ``flight`` (done) unless a newer flight of the key replaced it."""
        self._finish(self._fetches, key, flight)

    def finish_read(self, key: str, flight: Flight) -> FlightFuture[Any] | None:
        """:meth:`finish_fetch` for a read; returns the future its followers wait on (``None``
        when it had none: from now on no caller can join it)."""
        self._finish(self._reads, key, flight)
        return flight.future

    def _finish(self, table: _Table, key: str, flight: Flight) -> None:
        with self._lock:
            flights = table.get(flight.scope)
            if flights is not None and flights.get(key) is flight:
                del flights[key]
                if not flights:
                    # A scope's table lives only while it has work in flight.
                    del table[flight.scope]

    def handles(self) -> list[Any]:
        """Handles of this scope's running fetches (to let them finish on close)."""
        with self._lock:
            flights = self._fetches.get(flight_scope(), {})
            return [f.handle for f in flights.values() if f.handle is not None]

    def __len__(self) -> int:
        with self._lock:
            return sum(
                len(flights) for table in (self._fetches, self._reads) for flights in table.values()
            )

    # ------------------------------------------------------------------ marks

    def changing(
        self, predicate: Callable[[str, Flight], bool], keys: Iterable[str] | None = None
    ) -> contextlib.AbstractContextManager[None]:
        """A write, delete or invalidation of the keys ``predicate`` selects, under way for
        as long as the ``with`` block runs (its layer writes go inside).

        On entry the running reads and fetches it concerns are invalidated (a fetched value
        then reaches its callers but is not stored). A change is an interval, not an instant:
        a read that started before it ends (even one that started after it began, and read a
        layer the change had not reached yet) may hold the value it replaces, so
        :meth:`changed_since` counts the keys of a change under way as changed, and marks
        them again at its end. ``keys`` names the keys changed; without it the change is broad
        (pattern, tags, clear) and every key counts as changed.
        """
        return self._under_way(
            None if keys is None else list(keys), functools.partial(self._mark, predicate)
        )

    @contextlib.contextmanager
    def _under_way(
        self, names: list[str] | None, mark: Callable[[list[str] | None], None]
    ) -> Iterator[None]:
        """A change of ``names`` (``None``: every key) for as long as the ``with`` block runs:
        ``mark`` applies it to the marks and flights under the lock on entry and again at
        the end, and meanwhile :meth:`changed_since` counts those keys as changed.

        A change of more keys than the marks hold counts as a change of every key while it
        runs (its end mark is the broad one anyway): one counter, not a dict update per key.
        """
        broad = names is None or len(names) > self._max_key_marks
        with self._lock:
            mark(names)
            if broad:
                self._active_broad += 1
            else:
                assert names is not None
                for key in names:
                    self._active_keys[key] = self._active_keys.get(key, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                # Again at the end, flights included: a read that began during the change
                # may have read the value it replaces, and a caller arriving after the change
                # returned must not be handed that read's result (nor join its fetch).
                mark(names)
                if broad:
                    self._active_broad -= 1
                else:
                    assert names is not None
                    for key in names:
                        left = self._active_keys[key] - 1
                        if left:
                            self._active_keys[key] = left
                        else:
                            del self._active_keys[key]

    def unless_changed(
        self, flight: Flight, write: Callable[[], None], key: str | None = None, epoch: int = 0
    ) -> bool:
        """Run ``write`` (a fetch's synchronous, in-process store) unless ``flight`` was
        invalidated or, given ``key``, the key changed since ``epoch`` (when the fetch
        recorded its tags) or is being changed now; whether it ran.

        Atomic with respect to changes: a change marks flights under this lock on entry, and
        removes the key from the layers after that. So either the change marked ``flight``
        first (nothing is written) or it comes after the write and removes it. A check and
        a write apart would let a change slip in between, and the fetched value would sit in
        L1 after the change returned, until the fetch's own clean-up removed it.

        A change that began before the fetch (so did not mark it) may still be under way: its
        removal forgets the key in the tag index, then deletes it from the layers. A fetch
        that recorded its tags before that "forget" and wrote L1 after that delete would
        leave a value the tag index does not know, out of reach of the next
        ``invalidate_by_tag``. Hence the check of ``key`` since ``epoch`` as well: every
        change marks its keys under this lock on entry and at its end, and counts them as
        changing meanwhile.
        """
        with self._lock:
            if flight.invalidated or (key is not None and self._changed_since(key, epoch)):
                return False
            if not flight.outdated:
                # (An outdated fetch writes nothing here, and its shared stores stand.)
                write()
            return True

    def outdating(self, keys: Collection[str] | None) -> contextlib.AbstractContextManager[None]:
        """A shared layer reports that ``keys`` (``None``: every key) changed there, by anyone,
        this instance included (server-assisted invalidation); the in-process copies are
        removed inside the ``with`` block.

        Like :meth:`changing` for reads (their values are not backfilled, nor handed to later
        callers) and for the marks :meth:`changed_since` looks at. Running fetches are only
        *outdated*, not invalidated: what they stored in the shared layers stands (the
        change may be their own store coming back, and conditional stores already refuse a
        value older than a change), but their values no longer go to the in-process layers
        and no later caller joins them.
        """
        return self._under_way(None if keys is None else list(keys), self._outdate)

    def _outdate(self, names: list[str] | None) -> None:
        """Mark ``names`` changed, invalidate their reads and outdate their fetches (call
        with the lock held)."""
        self._mark(_nothing, names)
        for table, attribute in ((self._reads, "invalidated"), (self._fetches, "outdated")):
            for flights in table.values():
                if names is None:
                    found: Iterable[Flight] = list(flights.values())
                else:
                    found = [f for f in map(flights.get, names) if f is not None]
                for flight in found:
                    setattr(flight, attribute, True)

    def changing_all(self) -> contextlib.AbstractContextManager[None]:
        """:meth:`changing` of every key (a clear, a reconnect)."""
        return self.changing(_everything)

    def mark_all(self) -> None:
        """Every key changed at once, with nothing to write (a new generation)."""
        with self.changing(_everything):
            pass

    def _mark(self, predicate: Callable[[str, Flight], bool], keys: list[str] | None) -> None:
        self.epoch += 1
        epoch = self.epoch
        if keys is None:
            self._broad_mark = epoch
        elif len(keys) > self._max_key_marks:
            # More keys than the marks hold (a bulk invalidation): marking them one by one
            # would forget every older mark and set the broad mark, which alone then answers
            # for every key marked so far. Straight to that: O(1), not O(keys).
            self._key_marks.clear()
            self._broad_mark = epoch
        else:
            marks = self._key_marks
            for key in keys:
                marks[key] = epoch
                marks.move_to_end(key)
            while len(marks) > self._max_key_marks:
                marks.popitem(last=False)
                self._broad_mark = epoch  # forgetting a mark must err on the safe side
        if predicate is _nothing:
            return
        for table in (self._fetches, self._reads):
            for flights in table.values():
                for key, flight in flights.items():
                    if not flight.invalidated and predicate(key, flight):
                        flight.invalidated = True

    def changed_since(self, key: str, epoch: int) -> bool:
        """Whether ``key`` may have been written or invalidated since ``epoch``, or is being
        changed now (a value read meanwhile may be the one the change replaces)."""
        with self._lock:
            return self._changed_since(key, epoch)

    def _changed_since(self, key: str, epoch: int) -> bool:
        return (
            self._broad_mark > epoch
            or self._key_marks.get(key, 0) > epoch
            or self._active_broad > 0
            or key in self._active_keys
        )

    def unless_changed_since(self, key: str, epoch: int, write: Callable[[], None]) -> bool:
        """Run ``write`` (a synchronous, in-process backfill of a value read at ``epoch``)
        unless ``key`` changed since; whether it ran. Atomic like :meth:`unless_changed`: a
        change marks under this lock before it removes the key from the layers."""
        with self._lock:
            if self._changed_since(key, epoch):
                return False
            write()
            return True


def _in_scope(table: _Table, scope: Any) -> dict[str, Flight]:
    """``table``'s flights of ``scope``, made on first use (call with the lock held)."""
    flights = table.get(scope)
    if flights is None:
        flights = table[scope] = {}
    return flights


def _everything(_key: str, _flight: Flight) -> bool:
    return True


def _nothing(_key: str, _flight: Flight) -> bool:
    return False


def no_flight(_key: str, _flight: Flight) -> bool:
    """For a change that concerns no fetch in flight (it only removes what a fetch stored)."""
    return False


def among(keys: Collection[str]) -> Callable[[str, Flight], bool]:
    """A change predicate: the flights of ``keys``."""
    wanted = keys if isinstance(keys, set | frozenset) else set(keys)
    return lambda key, _flight: key in wanted
