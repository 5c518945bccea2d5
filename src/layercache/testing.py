"""The layer contract suite: checks that a :class:`~layercache.CacheLayer` does what stacks need.

Ship a layer, run this suite over it. It covers the required methods (``get`` miss is ``None``,
``set``/``get`` round trip of an :class:`~layercache.Entry` with many value types and awkward
keys, overwrite, ``delete`` of present and absent keys, ``clear``, storage-TTL expiry, several-MiB
values, concurrent writes) and every optional method the layer has (``get_many``, ``set_many``,
``delete_many``, ``delete_matching``, ``keys``, ``has``, ``ttl``, ``size``, ``ping``). A check of
an optional method the layer does not have is *skipped* (``unittest.SkipTest``, which pytest
reports as a skip too). Layer methods may be plain or ``async``: every call is made and then
awaited when it returned an awaitable.

Two ways to run it; neither imports pytest.

**As a test class** (pytest or unittest). Subclass :class:`LayerContractTests` and give it a
``make_layer`` method (plain or ``async``) returning a fresh, empty layer::

    from layercache import MemoryLayer
    from layercache.testing import LayerContractTests

    class TestMemoryLayer(LayerContractTests):  # pytest, with pytest-asyncio
        uses_manual_clock = True  # the expiry checks advance self.clock instead of waiting

        def make_layer(self):
            return MemoryLayer(ttl=60, clock=self.clock)

    class MemoryLayerTests(LayerContractTests, unittest.IsolatedAsyncioTestCase):  # unittest
        def make_layer(self):
            return MemoryLayer(ttl=60)

Every test method builds its own layer with ``make_layer``, runs one check and closes the
layer with ``close_layer`` (default: ``aclose()`` or ``close()`` when the layer has one;
override it when the layer wraps a client the test owns). Under pytest the methods are
``async def`` tests, which pytest runs only through a plugin: install ``pytest-asyncio``
(this package does not depend on it) and set ``asyncio_mode = "auto"`` in
``[tool.pytest.ini_options]``, or set ``pytestmark = pytest.mark.asyncio`` on the subclass in
strict mode. Without the plugin pytest skips or fails every check instead of running it. To
use pytest fixtures (``tmp_path``, a Redis client), store them on ``self`` from an autouse fixture::

    class TestDiskLayer(LayerContractTests):
        @pytest.fixture(autouse=True)
        def _dir(self, tmp_path):
            self.directory = tmp_path

        def make_layer(self):
            return DiskLayer(self.directory / "cache")

Class attributes tune the suite: ``uses_manual_clock`` (``make_layer`` passes ``self.clock``, a
:class:`ManualClock`, to the layer, and expiry is tested by advancing it; otherwise expiry is
tested in real time with a short TTL and bounded polling, at most ``expiry_deadline`` = 1.5 s),
``expiry_ttl``, ``large_value_size`` (0 skips that check), ``round_trip_values``.

**As a function**: ``await run_layer_contract(factory)`` runs every check, each on a fresh
layer from ``factory()`` (plain or ``async``), and raises ``AssertionError`` listing every failed
check; it returns a :class:`ContractReport` otherwise. Pass ``clock=`` (a :class:`ManualClock`
the factory's layers use) to test expiry without waiting.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import time
import traceback
import unittest
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ._entry import Entry
from ._glob import escape_glob
from ._types import CacheLayer

__all__ = [
    "CONTRACT_CHECKS",
    "CONTRACT_KEYS",
    "CONTRACT_VALUES",
    "ContractReport",
    "LayerContractTests",
    "ManualClock",
    "run_layer_contract",
]

CONTRACT_VALUES: tuple[Any, ...] = (
    "plain",
    "",
    "héllo wörld ✓ 🎉 日本語",
    0,
    -7,
    2**62,
    3.25,
    -0.5,
    1e300,
    True,
    False,
    None,
    [],
    {},
    [1, "a", None, 2.5, [True, False]],
    {"a": 1, "nested": {"b": [1, 2, {"c": "d"}]}, "emoji 🎉": "✓", "none": None},
)
"""Values every layer must round-trip exactly (type included: ``1`` is not ``1.0`` or ``True``)."""

CONTRACT_KEYS: tuple[str, ...] = (
    "k",
    "user:123",
    "emoji:🎉🔥",
    "ключ",
    "日本語のキー",
    "with space",
    "glob*?[chars]\\",
    "path/../../etc/passwd",
    "/absolute",
    "..",
    "Case",
    "case",
    "a\u00a0nbsp",
    "x" * 1024,
)
"""Keys every layer must store independently (a layer hashing keys must not collide them)."""


class ManualClock:
    """A wall clock that only moves when told to: pass it as a layer's ``clock=``.

    Args:
        start: The initial time in seconds (default: the current wall time).
    """

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        """Return the current (manual) time in seconds."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self.now += seconds


async def _call(layer: Any, method: str, *args: Any) -> Any:
    # Layers may be sync or async: call, then await only what is awaitable.
    result = getattr(layer, method)(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


def _require(layer: Any, *methods: str) -> None:
    for method in methods:
        if not callable(getattr(layer, method, None)):
            raise unittest.SkipTest(f"{type(layer).__name__} has no optional method {method}()")


def _same_value(got: Any, expected: Any) -> bool:
    """Equality that also compares types, recursively (``True`` is not ``1``, ``1`` not ``1.0``)."""
    if type(got) is not type(expected):
        return False
    if isinstance(expected, list):
        return len(got) == len(expected) and all(map(_same_value, got, expected))
    if isinstance(expected, dict):
        return got.keys() == expected.keys() and all(
            _same_value(got[k], expected[k]) for k in expected
        )
    if isinstance(expected, float) and math.isnan(expected):
        return math.isnan(got)
    return bool(got == expected)


def _same_time(got: float | None, expected: float | None) -> bool:
    if got is None or expected is None:
        return got is None and expected is None
    return isinstance(got, int | float) and abs(got - expected) < 1e-3


def _assert_entry(got: Any, expected: Entry, what: str) -> None:
    assert got is not None, f"{what}: got None, expected the stored entry"
    assert isinstance(got, Entry), f"{what}: got {type(got).__name__}, expected an Entry"
    assert _same_value(got.value, expected.value), (
        f"{what}: value {got.value!r} ({type(got.value).__name__}) != "
        f"{expected.value!r} ({type(expected.value).__name__})"
    )
    for name in ("stored_at", "fresh_until", "stale_until", "error_until"):
        assert _same_time(getattr(got, name), getattr(expected, name)), (
            f"{what}: {name} {getattr(got, name)!r} != {getattr(expected, name)!r}"
        )
    assert isinstance(got.tags, tuple), f"{what}: tags is a {type(got.tags).__name__}, not a tuple"
    assert got.tags == expected.tags, f"{what}: tags {got.tags!r} != {expected.tags!r}"


@dataclass
class _Context:
    """What a check gets: the layer, the clock driving it (if manual) and the suite's settings."""

    layer: Any
    clock: ManualClock | None
    expiry_ttl: float = 0.3
    expiry_deadline: float = 1.5
    large_value_size: int = 3 * 1024 * 1024
    round_trip_values: Sequence[Any] = CONTRACT_VALUES

    def now(self) -> float:
        return self.clock() if self.clock is not None else time.time()

    def entry(self, value: Any, ttl: float | None = 60.0, tags: Sequence[str] = ()) -> Entry:
        """An entry whose freshness agrees with the storage ``ttl`` it will be stored with."""
        now = self.now()
        return Entry(
            value=value,
            stored_at=now,
            fresh_until=None if ttl is None else now + ttl,
            tags=tuple(tags),
        )

    async def get(self, key: str) -> Any:
        return await _call(self.layer, "get", key)

    async def set(self, key: str, entry: Entry, ttl: float | None = 60.0) -> None:
        await _call(self.layer, "set", key, entry, ttl)


Check = Callable[[_Context], Awaitable[None]]


# --- required methods -------------------------------------------------------------------------


async def check_attributes(ctx: _Context) -> None:
    """``name``, ``default_ttl`` and ``is_local`` are present and well-typed; protocol satisfied."""
    layer = ctx.layer
    assert isinstance(layer, CacheLayer), "the layer does not satisfy layercache.CacheLayer"
    assert isinstance(layer.name, str), "name must be a str"
    assert layer.name, "name must not be empty"
    ttl = layer.default_ttl
    assert ttl is None or (
        isinstance(ttl, int | float) and not isinstance(ttl, bool) and ttl >= 0
    ), f"default_ttl must be None or a non-negative number, not {ttl!r}"
    assert isinstance(layer.is_local, bool), "is_local must be a bool"
    if callable(getattr(layer, "set_error_handler", None)):
        await _call(layer, "set_error_handler", lambda exc, context: None)


async def check_get_miss(ctx: _Context) -> None:
    """``get`` of a key never stored returns ``None`` (not a sentinel, not an exception)."""
    assert await ctx.get("never-stored") is None


async def check_round_trip_values(ctx: _Context) -> None:
    """Every value type round-trips exactly, with its metadata."""
    for index, value in enumerate(ctx.round_trip_values):
        key = f"value:{index}"
        entry = ctx.entry(value, tags=("t1", "t:2"))
        await ctx.set(key, entry)
        _assert_entry(await ctx.get(key), entry, f"round trip of {value!r}")


async def check_round_trip_metadata(ctx: _Context) -> None:
    """All ``Entry`` fields survive: no expiry, stale/error windows, unicode tags."""
    now = ctx.now()
    forever = Entry(value="v", stored_at=now, fresh_until=None)
    windows = Entry(
        value={"x": 1},
        stored_at=now - 1.5,
        fresh_until=now + 10.25,
        stale_until=now + 20.5,
        error_until=now + 30.75,
        tags=("tag", "tenant:🎉", "a b"),
    )
    await ctx.set("forever", forever, None)
    await ctx.set("windows", windows, 31.0)
    _assert_entry(await ctx.get("forever"), forever, "entry without expiry")
    _assert_entry(await ctx.get("windows"), windows, "entry with stale/error windows")


async def check_keys_independent(ctx: _Context) -> None:
    """Unicode, emoji, path-like, glob-like, case-different and 1024-character keys are distinct."""
    entries = {key: ctx.entry(f"value of {key}") for key in CONTRACT_KEYS}
    for key, entry in entries.items():
        await ctx.set(key, entry)
    for key, entry in entries.items():
        _assert_entry(await ctx.get(key), entry, f"key {key[:40]!r}")
    await _call(ctx.layer, "delete", "Case")
    assert await ctx.get("Case") is None
    _assert_entry(await ctx.get("case"), entries["case"], "'case' after deleting 'Case'")


async def check_overwrite(ctx: _Context) -> None:
    """A second ``set`` replaces the value and the tags."""
    first = ctx.entry("first", tags=("old",))
    second = ctx.entry({"second": 2}, tags=("new",))
    await ctx.set("k", first)
    await ctx.set("k", second)
    _assert_entry(await ctx.get("k"), second, "after overwrite")
    third = ctx.entry("third", ttl=None)
    await ctx.set("k", third, None)
    _assert_entry(await ctx.get("k"), third, "after overwrite with ttl=None")


async def check_delete(ctx: _Context) -> None:
    """``delete`` removes only its key (a key that is a prefix of another is not confused)."""
    a, ab = ctx.entry("a"), ctx.entry("a:b")
    await ctx.set("a", a)
    await ctx.set("a:b", ab)
    await _call(ctx.layer, "delete", "a")
    assert await ctx.get("a") is None, "deleted key still readable"
    _assert_entry(await ctx.get("a:b"), ab, "sibling of a deleted key")


async def check_delete_absent(ctx: _Context) -> None:
    """Deleting a key that is not there is not an error, twice in a row too."""
    await _call(ctx.layer, "delete", "absent")
    await ctx.set("present", ctx.entry(1))
    await _call(ctx.layer, "delete", "present")
    await _call(ctx.layer, "delete", "present")
    assert await ctx.get("present") is None


async def check_clear(ctx: _Context) -> None:
    """``clear`` removes every key; clearing an empty layer is fine; the layer stays usable."""
    for index in range(5):
        await ctx.set(f"c:{index}", ctx.entry(index))
    await _call(ctx.layer, "clear")
    for index in range(5):
        assert await ctx.get(f"c:{index}") is None, f"c:{index} survived clear()"
    await _call(ctx.layer, "clear")
    entry = ctx.entry("after")
    await ctx.set("after", entry)
    _assert_entry(await ctx.get("after"), entry, "set after clear")


async def check_ttl_expiry(ctx: _Context) -> None:
    """An entry stored with a storage TTL is gone after it; ``None`` and long TTLs stay."""
    short = ctx.expiry_ttl
    if ctx.clock is not None:
        short = 10.0
    keep_forever = ctx.entry("forever", ttl=None)
    keep_long = ctx.entry("long", ttl=3600)
    await ctx.set("forever", keep_forever, None)
    await ctx.set("long", keep_long, 3600)
    started = time.monotonic()
    await ctx.set("short", ctx.entry("short", ttl=short), short)
    if ctx.clock is not None:
        ctx.clock.advance(short * 0.5)
        assert await ctx.get("short") is not None, "entry gone before its TTL"
        ctx.clock.advance(short * 0.5 + 0.01)
        assert await ctx.get("short") is None, "entry still readable after its TTL"
    else:
        first = await ctx.get("short")
        if time.monotonic() - started < short * 0.7:
            assert first is not None, "entry gone before its TTL"
        deadline = started + ctx.expiry_deadline
        while await ctx.get("short") is not None:
            assert time.monotonic() < deadline, (
                f"entry stored with ttl={short}s still readable after {ctx.expiry_deadline}s"
            )
            await asyncio.sleep(0.02)
    if callable(getattr(ctx.layer, "has", None)):
        assert not await _call(ctx.layer, "has", "short"), "has() true for an expired key"
    if callable(getattr(ctx.layer, "get_many", None)):
        got = await _call(ctx.layer, "get_many", ["short", "forever"])
        assert got[0] is None, "get_many() returned an expired entry"
    _assert_entry(await ctx.get("forever"), keep_forever, "ttl=None entry after another expired")
    _assert_entry(await ctx.get("long"), keep_long, "ttl=3600 entry after another expired")


async def check_large_value(ctx: _Context) -> None:
    """A value of several MiB is stored and read back like a small one."""
    if ctx.large_value_size <= 0:
        raise unittest.SkipTest("large_value_size is 0")
    value = os.urandom(ctx.large_value_size // 2).hex()
    entry = ctx.entry({"blob": value, "n": 1})
    await ctx.set("large", entry)
    _assert_entry(await ctx.get("large"), entry, f"{len(value)}-character value")


async def check_concurrent_writes(ctx: _Context) -> None:
    """Fifty concurrent ``set`` calls on distinct keys all land."""
    entries = {f"conc:{index}": ctx.entry(index) for index in range(50)}
    await asyncio.gather(*(ctx.set(key, entry) for key, entry in entries.items()))
    results = await asyncio.gather(*(ctx.get(key) for key in entries))
    for (key, entry), got in zip(entries.items(), results, strict=True):
        _assert_entry(got, entry, key)


# --- optional methods -------------------------------------------------------------------------


async def check_get_many(ctx: _Context) -> None:
    """``get_many`` gives one result per key, in order: ``None`` for misses, duplicates kept."""
    _require(ctx.layer, "get_many")
    a, b = ctx.entry("a"), ctx.entry(["b"])
    await ctx.set("a", a)
    await ctx.set("b", b)
    got = list(await _call(ctx.layer, "get_many", ["b", "missing", "a", "b"]))
    assert len(got) == 4, f"get_many returned {len(got)} results for 4 keys"
    _assert_entry(got[0], b, "get_many[0]")
    assert got[1] is None, "get_many: a missing key must give None"
    _assert_entry(got[2], a, "get_many[2]")
    _assert_entry(got[3], b, "get_many[3] (duplicate key)")
    assert list(await _call(ctx.layer, "get_many", [])) == [], "get_many([]) must be []"


async def check_set_many(ctx: _Context) -> None:
    """``set_many`` stores ``(key, entry, ttl)`` items, mixing TTLs, overwriting old values."""
    _require(ctx.layer, "set_many")
    await ctx.set("old", ctx.entry("old"))
    items = [
        ("m:1", ctx.entry(1), 60.0),
        ("m:2", ctx.entry({"two": 2}, ttl=None, tags=("t",)), None),
        ("old", ctx.entry("new", ttl=30), 30.0),
        ("m:🎉", ctx.entry("emoji"), 60.0),
    ]
    await _call(ctx.layer, "set_many", items)
    for key, entry, _ttl in items:
        _assert_entry(await ctx.get(key), entry, f"set_many item {key!r}")
    await _call(ctx.layer, "set_many", [])


async def check_delete_many(ctx: _Context) -> None:
    """``delete_many`` removes the listed keys, ignores absent ones, leaves the rest."""
    _require(ctx.layer, "delete_many")
    keep = ctx.entry("keep")
    for key in ("d:1", "d:2", "d:3"):
        await ctx.set(key, ctx.entry(key))
    await ctx.set("keep", keep)
    await _call(ctx.layer, "delete_many", ["d:1", "absent", "d:3"])
    assert await ctx.get("d:1") is None
    assert await ctx.get("d:3") is None
    assert await ctx.get("d:2") is not None, "delete_many removed an unlisted key"
    _assert_entry(await ctx.get("keep"), keep, "unlisted key after delete_many")
    await _call(ctx.layer, "delete_many", [])


async def check_delete_matching(ctx: _Context) -> None:
    """``delete_matching`` removes exactly the keys a Redis glob matches and returns the count."""
    _require(ctx.layer, "delete_matching")
    keys = ["user:1", "user:2", "user:10", "users", "post:1", "lit*eral", "litXeral", "Ab", "ab"]
    for key in keys:
        await ctx.set(key, ctx.entry(key))

    async def remaining() -> set[str]:
        return {key for key in keys if await ctx.get(key) is not None}

    assert await _call(ctx.layer, "delete_matching", "nomatch:*") == 0
    assert await _call(ctx.layer, "delete_matching", "user:?") == 2, "user:? must match 2 keys"
    assert await remaining() == set(keys) - {"user:1", "user:2"}
    assert await _call(ctx.layer, "delete_matching", escape_glob("lit*eral")) == 1, (
        "an escaped * must match only itself"
    )
    assert "litXeral" in await remaining()
    assert "lit*eral" not in await remaining()
    assert await _call(ctx.layer, "delete_matching", "[A]b") == 1, "classes are case-sensitive"
    assert await remaining() == {"user:10", "users", "post:1", "litXeral", "ab"}
    assert await _call(ctx.layer, "delete_matching", "*") == 5
    assert await remaining() == set()


async def check_has(ctx: _Context) -> None:
    """``has`` is true for a stored key and false for absent and deleted ones."""
    _require(ctx.layer, "has")
    assert await _call(ctx.layer, "has", "h") is False
    await ctx.set("h", ctx.entry(None))
    assert await _call(ctx.layer, "has", "h") is True, "has() false for a stored None value"
    await _call(ctx.layer, "delete", "h")
    assert await _call(ctx.layer, "has", "h") is False


async def check_ttl(ctx: _Context) -> None:
    """``ttl`` is the remaining storage lifetime: about the TTL set, ``None`` for none/absent."""
    _require(ctx.layer, "ttl")
    await ctx.set("t:60", ctx.entry("v", ttl=60), 60.0)
    await ctx.set("t:none", ctx.entry("v", ttl=None), None)
    remaining = await _call(ctx.layer, "ttl", "t:60")
    assert isinstance(remaining, int | float), f"ttl() of a key with a TTL gave {remaining!r}"
    # One second of slack above: a backend may round up to whole seconds.
    assert 50 < remaining <= 61, f"ttl() gave {remaining} for a key stored with ttl=60"
    assert await _call(ctx.layer, "ttl", "t:none") is None, "ttl() of a key without expiry"
    assert await _call(ctx.layer, "ttl", "absent") is None, "ttl() of an absent key"
    if ctx.clock is not None:
        ctx.clock.advance(20)
        later = await _call(ctx.layer, "ttl", "t:60")
        assert later is not None, "ttl() of a live key after 20 s"
        assert 38 < later <= 41, f"ttl() gave {later} 20 s after storing with ttl=60"


async def check_size(ctx: _Context) -> None:
    """``size`` counts stored keys; overwrites do not add; delete and clear remove."""
    _require(ctx.layer, "size")
    assert await _call(ctx.layer, "size") == 0, "a fresh layer must be empty"
    for key in ("s:1", "s:2", "s:3"):
        await ctx.set(key, ctx.entry(key))
    await ctx.set("s:1", ctx.entry("again"))
    assert await _call(ctx.layer, "size") == 3
    await _call(ctx.layer, "delete", "s:2")
    assert await _call(ctx.layer, "size") == 2
    await _call(ctx.layer, "clear")
    assert await _call(ctx.layer, "size") == 0


async def check_keys(ctx: _Context) -> None:
    """``keys`` lists the layer's keys (as given to ``set``), filtered by glob, bounded by limit."""
    _require(ctx.layer, "keys")
    stored = ["user:1", "user:2", "post:1", "emoji:🎉"]
    for key in stored:
        await ctx.set(key, ctx.entry(key))
    assert sorted(await _call(ctx.layer, "keys")) == sorted(stored)
    assert sorted(await _call(ctx.layer, "keys", "user:*")) == ["user:1", "user:2"]
    assert list(await _call(ctx.layer, "keys", "nomatch*")) == []
    limited = list(await _call(ctx.layer, "keys", None, 2))
    assert len(limited) == 2, f"keys(limit=2) gave {len(limited)} keys out of 4"
    assert set(limited) <= set(stored)
    await _call(ctx.layer, "delete", "post:1")
    assert "post:1" not in await _call(ctx.layer, "keys")


async def check_ping(ctx: _Context) -> None:
    """``ping`` reports a working layer as healthy."""
    _require(ctx.layer, "ping")
    assert await _call(ctx.layer, "ping") is True


CONTRACT_CHECKS: dict[str, Check] = {
    "attributes": check_attributes,
    "get_miss": check_get_miss,
    "round_trip_values": check_round_trip_values,
    "round_trip_metadata": check_round_trip_metadata,
    "keys_independent": check_keys_independent,
    "overwrite": check_overwrite,
    "delete": check_delete,
    "delete_absent": check_delete_absent,
    "clear": check_clear,
    "ttl_expiry": check_ttl_expiry,
    "large_value": check_large_value,
    "concurrent_writes": check_concurrent_writes,
    "get_many": check_get_many,
    "set_many": check_set_many,
    "delete_many": check_delete_many,
    "delete_matching": check_delete_matching,
    "has": check_has,
    "ttl": check_ttl,
    "size": check_size,
    "keys": check_keys,
    "ping": check_ping,
}
"""Every check of the contract by name, in the order :func:`run_layer_contract` runs them."""


async def _close(layer: Any) -> None:
    for method in ("aclose", "close"):
        if callable(getattr(layer, method, None)):
            await _call(layer, method)
            return


# --- runners ----------------------------------------------------------------------------------


class LayerContractTests:
    """Mixin of contract test methods; subclass it and define :meth:`make_layer`.

    Works as a pytest test class (``async def`` tests; needs pytest-asyncio) and, mixed with
    ``unittest.IsolatedAsyncioTestCase``, as a unittest case. See the module docstring.

    Attributes:
        uses_manual_clock: When true, each test creates ``self.clock`` (a :class:`ManualClock`)
            before calling ``make_layer``, which must hand it to the layer; expiry is then
            tested by advancing the clock instead of waiting.
        expiry_ttl: Storage TTL (seconds) of the real-time expiry check.
        expiry_deadline: Longest the real-time expiry check polls (seconds).
        large_value_size: Characters of the large-value check (0 skips it).
        round_trip_values: The values the round-trip check stores.
    """

    uses_manual_clock: ClassVar[bool] = False
    expiry_ttl: ClassVar[float] = 0.3
    expiry_deadline: ClassVar[float] = 1.5
    large_value_size: ClassVar[int] = 3 * 1024 * 1024
    round_trip_values: ClassVar[Sequence[Any]] = CONTRACT_VALUES

    clock: ManualClock | None = None

    def make_layer(self) -> Any:
        """Return a fresh, empty layer (or an awaitable of one). Subclasses must override this."""
        raise NotImplementedError("subclasses of LayerContractTests must define make_layer()")

    async def close_layer(self, layer: Any) -> None:
        """Release ``layer`` after a test (default: its ``aclose()`` or ``close()``)."""
        await _close(layer)

    async def run_check(self, check: Check) -> None:
        """Build a layer, run one contract check on it, close it."""
        self.clock = ManualClock() if self.uses_manual_clock else None
        layer = await _maybe_await(self.make_layer())
        try:
            await check(
                _Context(
                    layer=layer,
                    clock=self.clock,
                    expiry_ttl=self.expiry_ttl,
                    expiry_deadline=self.expiry_deadline,
                    large_value_size=self.large_value_size,
                    round_trip_values=self.round_trip_values,
                )
            )
        finally:
            await self.close_layer(layer)

    async def test_attributes(self) -> None:
        """name / default_ttl / is_local and the CacheLayer protocol."""
        await self.run_check(check_attributes)

    async def test_get_miss_returns_none(self) -> None:
        """get of an unknown key is None."""
        await self.run_check(check_get_miss)

    async def test_round_trip_values(self) -> None:
        """Every contract value round-trips with its type."""
        await self.run_check(check_round_trip_values)

    async def test_round_trip_metadata(self) -> None:
        """Every Entry field round-trips."""
        await self.run_check(check_round_trip_metadata)

    async def test_keys_independent(self) -> None:
        """Awkward keys are stored independently."""
        await self.run_check(check_keys_independent)

    async def test_overwrite(self) -> None:
        """set replaces value and tags."""
        await self.run_check(check_overwrite)

    async def test_delete(self) -> None:
        """delete removes only its key."""
        await self.run_check(check_delete)

    async def test_delete_absent(self) -> None:
        """delete of an absent key is not an error."""
        await self.run_check(check_delete_absent)

    async def test_clear(self) -> None:
        """clear removes everything and leaves the layer usable."""
        await self.run_check(check_clear)

    async def test_ttl_expiry(self) -> None:
        """Storage TTL expiry."""
        await self.run_check(check_ttl_expiry)

    async def test_large_value(self) -> None:
        """A several-MiB value round-trips."""
        await self.run_check(check_large_value)

    async def test_concurrent_writes(self) -> None:
        """Concurrent sets all land."""
        await self.run_check(check_concurrent_writes)

    async def test_get_many(self) -> None:
        """Optional get_many: order, misses, duplicates."""
        await self.run_check(check_get_many)

    async def test_set_many(self) -> None:
        """Optional set_many."""
        await self.run_check(check_set_many)

    async def test_delete_many(self) -> None:
        """Optional delete_many."""
        await self.run_check(check_delete_many)

    async def test_delete_matching(self) -> None:
        """Optional delete_matching with Redis glob semantics."""
        await self.run_check(check_delete_matching)

    async def test_has(self) -> None:
        """Optional has."""
        await self.run_check(check_has)

    async def test_ttl(self) -> None:
        """Optional ttl."""
        await self.run_check(check_ttl)

    async def test_size(self) -> None:
        """Optional size."""
        await self.run_check(check_size)

    async def test_keys(self) -> None:
        """Optional keys(pattern, limit)."""
        await self.run_check(check_keys)

    async def test_ping(self) -> None:
        """Optional ping."""
        await self.run_check(check_ping)


@dataclass
class ContractReport:
    """Outcome of :func:`run_layer_contract`.

    Attributes:
        passed: Names of the checks that passed.
        skipped: Check name -> reason (an optional method the layer does not have).
        failed: Check name -> formatted failure (empty when the function returns normally).
    """

    passed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


async def run_layer_contract(
    factory: Callable[[], Any],
    *,
    clock: ManualClock | None = None,
    close: Callable[[Any], Any] | None = None,
    skip: Sequence[str] = (),
    expiry_ttl: float = 0.3,
    expiry_deadline: float = 1.5,
    large_value_size: int = 3 * 1024 * 1024,
) -> ContractReport:
    """Run every contract check, each on a fresh layer from ``factory``.

    Args:
        factory: Returns a fresh, empty layer (plain or ``async``).
        clock: The :class:`ManualClock` the factory's layers read time from; when given, expiry
            is tested by advancing it (no waiting).
        close: Releases a layer after its check (default: ``aclose()`` / ``close()``).
        skip: Names (keys of :data:`CONTRACT_CHECKS`) not to run.
        expiry_ttl: Storage TTL of the real-time expiry check, in seconds.
        expiry_deadline: Longest the real-time expiry check polls, in seconds.
        large_value_size: Characters of the large-value check (0 skips it).

    Returns:
        The report of passed and skipped checks.

    Raises:
        AssertionError: One or more checks failed; the message lists each with its traceback.
    """
    report = ContractReport()
    for name, check in CONTRACT_CHECKS.items():
        if name in skip:
            report.skipped[name] = "skipped by the caller"
            continue
        layer = await _maybe_await(factory())
        try:
            await check(
                _Context(
                    layer=layer,
                    clock=clock,
                    expiry_ttl=expiry_ttl,
                    expiry_deadline=expiry_deadline,
                    large_value_size=large_value_size,
                )
            )
        except unittest.SkipTest as exc:
            report.skipped[name] = str(exc)
        except Exception:
            report.failed[name] = traceback.format_exc()
        else:
            report.passed.append(name)
        finally:
            await (_maybe_await(close(layer)) if close is not None else _close(layer))
    if report.failed:
        details = "\n".join(f"--- {name}\n{text}" for name, text in report.failed.items())
        raise AssertionError(
            f"{len(report.failed)} of {len(CONTRACT_CHECKS)} layer contract checks failed: "
            f"{', '.join(report.failed)}\n{details}"
        )
    return report
