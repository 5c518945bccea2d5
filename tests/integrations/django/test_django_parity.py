"""LayerCacheBackend against the rest of what Django's own cache suite checks.

Django's ``tests/cache/tests.py`` (class ``BaseCacheTests``) and ``tests/cache/tests_async.py``
run every built-in backend through one list of behaviours. test_django_backend.py already checks
most of them on a memory-only backend; this module adds the ones it does not check, on both a
memory-only backend and a Redis ``LOCATION`` (the default serializer: signed pickle, as Django's
own backends pickle), plus, where the serializer matters, a Redis ``LOCATION`` with an explicit
``PickleSerializer`` instance and one with ``SERIALIZER: "json"``. Django's own ``BaseCacheTests``
also run against the backend: test_django_suite.py.

Behaviours of BaseCacheTests and where they are checked (``backend`` = test_django_backend.py,
``parity`` = this module):

- simple / non_existent / default_used_when_none_is_set: backend ``test_simple_set_get``,
  ``test_default_used_only_on_miss``; parity ``test_none_is_a_value_everywhere`` (over Redis).
- add: backend ``test_add``; parity ``test_set_returns_none_and_add_returns_bool``.
- prefix: parity ``test_key_prefix_isolates_on_a_shared_store``.
- get_many (with None values): backend ``test_get_set_delete_many``; parity
  ``test_none_is_a_value_everywhere``.
- delete / delete_nonexistent: backend ``test_delete``; parity ``test_delete_returns_bool``.
- has_key / in: backend ``test_has_key_and_in``; parity ``test_has_key_and_in_operator``.
- incr / decr: backend ``test_incr_decr``; parity ``test_incr_decr_missing_or_not_a_number``.
- close: backend ``test_close_keeps_cache_usable``; parity ``test_close_over_redis``.
- data_types: backend ``test_data_types``; parity ``test_data_types_with_pickle``,
  ``test_data_types_json_limits``.
- cache_read_for_model_instance(_with_deferred), cache_write_for_model_instance_with_deferred
  (no database here: a model-like object whose field default is expensive): parity
  ``test_model_like_object_is_not_rebuilt``, ``test_model_like_object_needs_pickle`` (JSON);
  a real model instance: test_django_serialization.py.
- expiration: backend ``test_expiration``; parity ``test_expiration_over_redis``.
- touch: backend ``test_touch``; parity ``test_touch_without_timeout_uses_default``.
- unicode: parity ``test_unicode_keys_and_values``.
- binary_string: parity ``test_binary_string``.
- set_many / set_many_returns_empty_list_on_success / set_many_empty_data / set_many_expiration /
  delete_many / delete_many_no_keys: backend ``test_get_set_delete_many``,
  ``test_set_many_expiration``; parity ``test_set_many_and_delete_many_results``.
- clear: backend ``test_clear``; parity ``test_clear_spans_key_prefixes_not_configurations``.
- long_timeout: parity ``test_long_timeout``.
- forever_timeout / zero_timeout: backend ``test_forever_timeout``,
  ``test_zero_or_negative_timeout``; parity ``test_zero_timeout_add_returns_true``,
  ``test_forever_timeout_over_redis``.
- float_timeout: parity ``test_float_timeout``.
- cull / zero_cull / cull_delete_when_store_empty: not applicable (no MAX_ENTRIES culling;
  ``MEMORY_MAX_SIZE`` evicts by policy and is covered by the memory layer's own tests).
- invalid_key_characters / invalid_key_length: backend
  ``test_key_warnings_and_odd_keys_still_work``; parity ``test_key_warning_messages``.
- invalid_with_version_key_length: parity ``test_key_warning_messages``.
- cache_versioning_get_set / _add / _has_key / _delete / _incr_decr / _get_set_many:
  backend ``test_versioning``, ``test_cache_versioning_setting``; parity
  ``test_versioning_get_set``, ``test_versioning_add``, ``test_versioning_has_key_and_delete``,
  ``test_versioning_incr_decr``, ``test_versioning_get_set_many``.
- incr_version / decr_version: backend ``test_incr_decr_version``; parity
  ``test_incr_decr_version_default_version``.
- custom_key_func: backend ``test_key_prefix_and_key_func``; parity
  ``test_custom_key_functions_share_or_separate``.
- cache_write_unpicklable_object (cache middleware, cookies): parity
  ``test_cache_middleware_keeps_cookies``, ``test_cache_middleware_needs_pickle_with_json``.
- add_fail_on_pickleerror / set_fail_on_pickleerror: parity
  ``test_unserializable_value_fails_loudly``, ``test_memory_only_stores_copies``.
- get_or_set / get_or_set_callable / get_or_set_version / get_or_set_racing: backend
  ``test_get_or_set``; parity ``test_get_or_set_details``, ``test_get_or_set_racing``.
- *_async_uses_specialized_implementation: backend ``test_async_does_not_hop_threads``; parity
  ``test_async_methods_are_native``.
- tests_async.py (aadd, aget, aset, adelete, ahas_key, aincr, adecr, atouch, aget_many,
  aset_many, adelete_many, aclear, aclose, aincr_version, adecr_version, aget_or_set, key
  warnings): backend ``test_async_variants``, ``test_async_key_warning``; parity the
  ``test_async_*`` tests below.

With the default serializer (signed pickle) the backend behaves as Django's backends in every
configuration: a get returns a copy, an unpicklable value raises ``pickle.PickleError``. The
deliberate difference is opt-in: with ``SERIALIZER: "json"`` a value JSON cannot hold raises
``TypeError`` (never ``CacheLayerError``: Redis is not at fault), and tuples come back as lists.
"""

from __future__ import annotations

import dataclasses
import pickle
import warnings
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from django.core.cache import CacheKeyWarning
from django.core.cache.backends.base import BaseCache
from django.http import HttpRequest, HttpResponse
from django.middleware.cache import FetchFromCacheMiddleware, UpdateCacheMiddleware
from django.test import RequestFactory, override_settings
from django_support import FakeClock

from layercache import CacheLayerError, PickleSerializer
from layercache.integrations.django import LayerCacheBackend

_DAY = 24 * 60 * 60
_BACKEND_PATH = "layercache.integrations.django.LayerCacheBackend"
_CHARS_WARNING = "Cache key contains characters that will cause errors if used with memcached: %r"
_LENGTH_WARNING = "Cache key will cause errors if used with memcached: %r (longer than 250)"


# ---------------------------------------------------------------------- values used by the tests


def answer() -> int:
    """A plain function, cached as a value."""
    return 42


class Holder:
    """A plain class, cached as a value."""

    def method(self) -> int:
        """Something to call."""
        return 24


class Unpicklable:
    """A value whose pickling fails the way Django's suite makes it fail."""

    def __getstate__(self) -> Any:
        raise pickle.PickleError("refuses to be pickled")


class ExpensiveDefault:
    """Counts the runs of a costly field default (a model's ``default=callable``)."""

    runs = 0

    @classmethod
    def compute(cls) -> str:
        """The default; each call is one run."""
        cls.runs += 1
        return f"computed-{cls.runs}"


class PollLike:
    """Stands for a model instance: building one runs its expensive default once.

    Unpickling restores ``__dict__`` without calling ``__init__``, as for a model instance, so a
    cache round-trip must not run the default again.
    """

    def __init__(self, question: str) -> None:
        self.question = question
        self.pub_date = ExpensiveDefault.compute()


# ---------------------------------------------------------------------- backends under test


@dataclasses.dataclass
class Flavour:
    """One configuration under test; every backend it builds shares the same storage.

    ``backend(**params)`` builds an instance with other ``KEY_PREFIX``/``VERSION``/... over the
    same engine (Django's suite shares one store between its ``default``, ``prefix``, ``v2`` and
    ``custom_key`` caches). ``reader()`` reads what the storage holds: over Redis, a backend with
    no memory copy of its own (another "process"); memory only, the store itself.
    """

    name: str
    location: str
    options: dict[str, Any]
    made: list[LayerCacheBackend] = dataclasses.field(default_factory=list)

    @property
    def remote(self) -> bool:
        """Whether values go through a Redis layer (and its serializer)."""
        return bool(self.location)

    def _build(self, options: dict[str, Any], params: dict[str, Any]) -> LayerCacheBackend:
        backend = LayerCacheBackend(self.location, {"TIMEOUT": 300, **params, "OPTIONS": options})
        self.made.append(backend)
        return backend

    def backend(self, **params: Any) -> LayerCacheBackend:
        """A backend on this flavour's engine, with its own Django params."""
        return self._build(dict(self.options), params)

    def reader(self, **params: Any) -> LayerCacheBackend:
        """A backend that sees only what the shared storage holds."""
        if not self.remote:
            return self.backend(**params)
        # MEMORY_TTL 0: this engine never keeps a copy, so every read goes to Redis.
        return self._build({**self.options, "MEMORY_TTL": 0}, params)

    def shutdown(self) -> None:
        """Close every engine built (registry entries and Redis connections)."""
        for backend in self.made:
            backend.shutdown()

    async def ashutdown(self) -> None:
        """Close every engine from the test's event loop (its asyncio clients first)."""
        for backend in self.made:
            await backend.ashutdown()


_REDIS = pytest.mark.redis


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=_REDIS),
    ]
)
def flavour(request: pytest.FixtureRequest, clock: FakeClock) -> Iterator[Flavour]:
    name: str = request.param
    options: dict[str, Any] = {"CLOCK": clock}
    location = ""
    if name.startswith("redis"):
        location = request.getfixturevalue("redis_clean").url
    if name == "redis-pickle":
        options["SERIALIZER"] = PickleSerializer(signing_secret="parity-tests")
    if name == "redis-json":
        options["SERIALIZER"] = "json"
    made = Flavour(name, location, options)
    try:
        yield made
    finally:
        made.shutdown()


@pytest.fixture
def cache(flavour: Flavour) -> LayerCacheBackend:
    return flavour.backend()


@pytest.fixture
async def acache(flavour: Flavour) -> AsyncIterator[LayerCacheBackend]:
    # The a* methods open asyncio clients on the test's loop: close them on that loop.
    backend = flavour.backend()
    yield backend
    await flavour.ashutdown()


def _only(*names: str) -> pytest.MarkDecorator:
    """Run a test on the named flavours only (the Redis ones marked ``redis``)."""
    return pytest.mark.parametrize(
        "flavour",
        [pytest.param(n, marks=_REDIS) if n.startswith("redis") else n for n in names],
        indirect=True,
    )


def _key_warnings(operation: Callable[[], Any]) -> list[str]:
    """The CacheKeyWarning messages ``operation`` emits (other warnings still fail the test)."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", CacheKeyWarning)
        operation()
    return [str(w.message) for w in seen if issubclass(w.category, CacheKeyWarning)]


async def _akey_warnings(operation: Callable[[], Awaitable[Any]]) -> list[str]:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", CacheKeyWarning)
        await operation()
    return [str(w.message) for w in seen if issubclass(w.category, CacheKeyWarning)]


# ---------------------------------------------------------------------- basic semantics


def test_set_returns_none_and_add_returns_bool(flavour: Flavour, cache: LayerCacheBackend) -> None:
    assert cache.set("k", "v") is None
    assert cache.add("k", "other") is False
    assert cache.add("fresh", "v") is True
    assert cache.delete("fresh") is True
    assert cache.add("fresh", "again") is True
    assert flavour.reader().get_many(["k", "fresh"]) == {"k": "v", "fresh": "again"}


def test_none_is_a_value_everywhere(flavour: Flavour, cache: LayerCacheBackend) -> None:
    cache.set("null", None)
    cache.set_many({"x": None, "y": 1})
    reader = flavour.reader()
    assert reader.get("null", default="default") is None
    assert reader.get("missing", default="default") == "default"
    assert reader.get_many(["x", "y", "missing"]) == {"x": None, "y": 1}
    assert reader.has_key("null") is True
    assert cache.add("null", "not None") is False


def test_has_key_and_in_operator(flavour: Flavour, cache: LayerCacheBackend) -> None:
    cache.set("hello", "goodbye")
    cache.set("no_expiry", "here", None)
    cache.set("null", None)
    for backend in (cache, flavour.reader()):
        assert backend.has_key("hello") is True
        assert backend.has_key("goodbye") is False
        assert backend.has_key("no_expiry") is True
        assert backend.has_key("null") is True
        assert "hello" in backend
        assert "null" in backend
        assert "goodbye" not in backend


def test_has_key_after_expiry(flavour: Flavour, cache: LayerCacheBackend, clock: FakeClock) -> None:
    cache.set("null", None, 1)
    cache.set("value", "v", 1)
    clock.advance(2)
    for backend in (cache, flavour.reader()):
        assert backend.has_key("null") is False
        assert backend.has_key("value") is False
        assert "value" not in backend
        assert backend.get("null", "default") == "default"


def test_delete_returns_bool(flavour: Flavour, cache: LayerCacheBackend) -> None:
    assert cache.delete("nonexistent_key") is False
    cache.set("null", None)
    assert cache.delete("null") is True  # a cached None is still an entry
    assert cache.delete("null") is False
    cache.set("k", 1)
    reader = flavour.reader()
    assert reader.delete("k") is True  # through the shared storage
    assert reader.delete("k") is False


def test_incr_decr_missing_or_not_a_number(cache: LayerCacheBackend) -> None:
    with pytest.raises(ValueError, match="not found"):
        cache.incr("does_not_exist", -1)
    with pytest.raises(ValueError, match="not found"):
        cache.decr("does_not_exist", -1)
    cache.set("null", None)
    with pytest.raises(TypeError):
        cache.decr("null")
    cache.set("text", "abc")
    with pytest.raises(TypeError):
        cache.incr("text")
    # A failed increment leaves the value as it was.
    assert cache.get("text") == "abc"
    assert cache.get("null", "default") is None
    assert not cache.has_key("does_not_exist")


@_only("redis")
def test_incr_keeps_expiry_over_redis(
    flavour: Flavour, cache: LayerCacheBackend, clock: FakeClock
) -> None:
    cache.set("counter", 1, timeout=10)
    clock.advance(6)
    assert cache.incr("counter") == 2
    assert cache.decr("counter", 5) == -3
    assert flavour.reader().get("counter") == -3
    clock.advance(5)
    assert flavour.reader().get("counter") is None
    assert cache.get("counter") is None


@_only("redis")
def test_close_over_redis(flavour: Flavour, cache: LayerCacheBackend) -> None:
    assert callable(cache.close)
    cache.set("k", 1)
    cache.close()
    assert cache.get("k") == 1
    assert flavour.reader().get("k") == 1


# ---------------------------------------------------------------------- values


def test_unicode_keys_and_values(flavour: Flavour, cache: LayerCacheBackend) -> None:
    stuff = {
        "ascii": "ascii_value",
        "unicode_ascii": "Iñtërnâtiônàlizætiøn1",
        "Iñtërnâtiônàlizætiøn": "Iñtërnâtiônàlizætiøn2",
        "ascii2": {"x": 1},
        "キー": "値 🎉",
    }
    for key, value in stuff.items():
        cache.set(key, value)
        assert flavour.reader().get(key) == value
    for key, value in stuff.items():
        assert cache.delete(key) is True
        assert cache.add(key, value) is True
        assert flavour.reader().get(key) == value
    for key in stuff:
        assert cache.delete(key) is True
    assert cache.set_many(stuff) == []
    assert flavour.reader().get_many(list(stuff)) == stuff


def test_binary_string(flavour: Flavour, cache: LayerCacheBackend) -> None:
    text = "value_to_be_compressed"
    packed = zlib.compress(text.encode())
    cache.set("binary1", packed)
    assert cache.add("binary1-add", packed) is True
    cache.set_many({"binary1-set_many": packed})
    reader = flavour.reader()
    for key in ("binary1", "binary1-add", "binary1-set_many"):
        got = reader.get(key)
        assert type(got) is bytes
        assert got == packed
        assert zlib.decompress(got).decode() == text


@_only("memory", "redis", "redis-pickle")
def test_data_types_with_pickle(flavour: Flavour, cache: LayerCacheBackend) -> None:
    values = {
        "string": "this is a string",
        "int": 42,
        "bool": True,
        "list": [1, 2, 3, 4],
        "tuple": (1, 2, 3, 4),
        "dict": {"A": 1, "B": 2},
        "function": answer,
        "class": Holder,
    }
    for key, value in values.items():
        cache.set(key, value)
    got = flavour.reader().get_many(list(values))
    assert got == values
    assert type(got["tuple"]) is tuple
    assert got["function"]() == 42
    assert got["class"]().method() == 24


@_only("redis-json")
def test_data_types_json_limits(flavour: Flavour, cache: LayerCacheBackend) -> None:
    # The JSON serializer: JSON types round-trip, a tuple comes back as a list ...
    cache.set_many({"string": "s", "int": 42, "bool": True, "dict": {"A": 1}, "tuple": (1, 2)})
    assert flavour.reader().get_many(["string", "int", "bool", "dict", "tuple"]) == {
        "string": "s",
        "int": 42,
        "bool": True,
        "dict": {"A": 1},
        "tuple": [1, 2],
    }
    # ... and what JSON cannot hold fails loudly, naming the serializer.
    for value in (answer, Holder, Holder()):
        # A TypeError (the caller's value), never a CacheLayerError (a failure of Redis).
        with pytest.raises(TypeError, match="JsonSerializer cannot encode") as info:
            cache.set("unsupported", value)
        assert not isinstance(info.value, CacheLayerError)
    assert flavour.reader().get("unsupported") is None


@_only("memory", "redis", "redis-pickle")
def test_model_like_object_is_not_rebuilt(flavour: Flavour, cache: LayerCacheBackend) -> None:
    ExpensiveDefault.runs = 0
    poll = PollLike("Well?")
    assert ExpensiveDefault.runs == 1
    cache.set("question", poll)
    assert ExpensiveDefault.runs == 1  # writing does not run the default again
    cached = flavour.reader().get("question")
    assert isinstance(cached, PollLike)
    assert (cached.question, cached.pub_date) == ("Well?", poll.pub_date)
    assert ExpensiveDefault.runs == 1  # nor does reading


@_only("redis-json")
def test_model_like_object_needs_pickle(flavour: Flavour, cache: LayerCacheBackend) -> None:
    with pytest.raises(TypeError, match="JsonSerializer cannot encode"):
        cache.set("question", PollLike("Well?"))


@_only("memory", "redis", "redis-pickle")
def test_unserializable_value_fails_loudly(flavour: Flavour, cache: LayerCacheBackend) -> None:
    cache.set("kept", "old value")
    for write in (
        lambda: cache.set("kept", Unpicklable()),
        lambda: cache.add("added", Unpicklable()),
        lambda: cache.set_many({"many": Unpicklable()}),
    ):
        # pickle's own error, as Django's backends raise it (its suite checks PickleError).
        with pytest.raises(pickle.PickleError):
            write()
    # As with Django's backends, a write that raised changed nothing: not this process's
    # memory layer, not what other processes read.
    for backend in (cache, flavour.reader()):
        assert backend.get("kept") == "old value"
        assert backend.get_many(["added", "many"]) == {}
        assert not backend.has_key("added")


@_only("memory")
def test_memory_only_stores_copies(cache: LayerCacheBackend) -> None:
    # As LocMemCache: the memory layer holds a pickle, every get unpickles a new copy.
    value = {"list": [1]}
    cache.set("k", value)
    assert cache.add("k-add", value) is True
    value["list"].append(2)
    assert cache.get("k") == cache.get("k-add") == {"list": [1]}
    assert cache.get("k") is not cache.get("k")


# ---------------------------------------------------------------------- timeouts


@_only("redis")
def test_expiration_over_redis(
    flavour: Flavour, cache: LayerCacheBackend, clock: FakeClock
) -> None:
    cache.set("expire1", "very quickly", 1)
    cache.set("expire2", "very quickly", 1)
    cache.set("expire3", "very quickly", 1)
    clock.advance(2)
    reader = flavour.reader()
    assert reader.get("expire1") is None
    assert reader.add("expire2", "newvalue") is True
    assert cache.get("expire2") == "newvalue"
    assert not reader.has_key("expire3")


def test_touch_without_timeout_uses_default(
    flavour: Flavour, cache: LayerCacheBackend, clock: FakeClock
) -> None:
    cache.set("expire1", "very quickly", timeout=1)
    assert cache.touch("expire1") is True  # the default TIMEOUT (300)
    clock.advance(2)
    assert cache.has_key("expire1")
    assert flavour.reader().get("expire1") == "very quickly"
    clock.advance(300)
    assert not cache.has_key("expire1")
    assert cache.touch("expire1") is False
    assert cache.touch("nonexistent", 10) is False
    assert not flavour.reader().has_key("nonexistent")  # touch never creates a key


def test_long_timeout(flavour: Flavour, cache: LayerCacheBackend, clock: FakeClock) -> None:
    # More than 30 days is a relative timeout here (memcached alone would read an absolute
    # timestamp): the values outlive 30 days and expire on time.
    month_and_a_second = 30 * _DAY + 1
    cache.set("key1", "eggs", month_and_a_second)
    assert cache.add("key2", "ham", month_and_a_second) is True
    cache.set_many({"key3": "sausage", "key4": "lobster bisque"}, month_and_a_second)
    everything = {"key1": "eggs", "key2": "ham", "key3": "sausage", "key4": "lobster bisque"}
    assert flavour.reader().get_many(list(everything)) == everything
    clock.advance(30 * _DAY)
    assert flavour.reader().get_many(list(everything)) == everything
    clock.advance(2)
    assert cache.get_many(list(everything)) == {}


@_only("redis")
def test_long_timeout_reaches_redis_as_seconds(
    flavour: Flavour, cache: LayerCacheBackend, redis_clean: Any
) -> None:
    import redis

    cache.set("long", "eggs", 30 * _DAY + 1)
    raw = redis.Redis.from_url(redis_clean.url)
    try:
        ttl = raw.ttl(f"layercache:{cache.make_key('long')}")
    finally:
        raw.close()
    assert 30 * _DAY - 5 <= ttl <= 30 * _DAY + 1


def test_float_timeout(flavour: Flavour, cache: LayerCacheBackend, clock: FakeClock) -> None:
    cache.set("key1", "spam", 100.2)
    assert cache.add("key2", "eggs", 100.2) is True
    cache.set_many({"key3": "ham"}, 100.2)
    cache.set("key4", "beans", 1)
    assert cache.touch("key4", 100.2) is True
    everything = {"key1": "spam", "key2": "eggs", "key3": "ham", "key4": "beans"}
    assert flavour.reader().get_many(list(everything)) == everything
    clock.advance(100.1)
    assert flavour.reader().get_many(list(everything)) == everything
    clock.advance(0.2)
    assert cache.get_many(list(everything)) == {}


def test_zero_timeout_add_returns_true(flavour: Flavour, cache: LayerCacheBackend) -> None:
    # Django's backends report the add as done although a zero timeout stores nothing.
    assert cache.add("key2", "ham", 0) is True
    assert cache.get("key2") is None
    assert flavour.reader().get("key2") is None
    assert cache.add("key2", "ham", 0) is True


@_only("redis")
def test_forever_timeout_over_redis(
    flavour: Flavour, cache: LayerCacheBackend, clock: FakeClock
) -> None:
    cache.set("key1", "eggs", None)
    assert cache.add("key2", "ham", None) is True
    assert cache.add("key1", "new eggs", None) is False
    cache.set_many({"key3": "sausage"}, None)
    cache.set("key5", "belgian fries", timeout=1)
    assert cache.touch("key5", timeout=None) is True
    clock.advance(10 * 365 * _DAY)
    assert flavour.reader().get_many(["key1", "key2", "key3", "key5"]) == {
        "key1": "eggs",
        "key2": "ham",
        "key3": "sausage",
        "key5": "belgian fries",
    }


# ---------------------------------------------------------------------- many-key operations


def test_set_many_and_delete_many_results(flavour: Flavour, cache: LayerCacheBackend) -> None:
    assert cache.set_many({"key1": "spam", "key2": "eggs", "key3": "ham"}) == []
    assert cache.set_many({}) == []
    assert cache.set_many({"a": 1, "b": 2}, timeout=2, version="1") == []
    assert cache.delete_many(["key1", "key2", "never-set", "never-set-either"]) is None
    assert cache.delete_many([]) is None
    assert flavour.reader().get_many(["key1", "key2", "key3", "a", "b"]) == {
        "key3": "ham",
        "a": 1,
        "b": 2,
    }


def test_clear_spans_key_prefixes_not_configurations(
    flavour: Flavour, cache: LayerCacheBackend
) -> None:
    # As with Django's backends, clear() empties the whole store, whatever KEY_PREFIX or
    # VERSION the keys were made with; another configuration (here another Redis PREFIX, or
    # another memory-only engine) is a different store and keeps its keys.
    prefixed = flavour.backend(KEY_PREFIX="other-site")
    v2 = flavour.backend(VERSION=2)
    elsewhere = LayerCacheBackend(
        flavour.location, {"OPTIONS": {**flavour.options, "PREFIX": "elsewhere:"}}
    )
    flavour.made.append(elsewhere)
    cache.set("a", 1)
    prefixed.set("b", 2)
    v2.set("c", 3)
    elsewhere.set("d", 4)
    cache.clear()
    assert cache.get("a") is None
    assert prefixed.get("b") is None
    assert v2.get("c") is None
    assert flavour.reader().get_many(["a", "c"]) == {}
    assert elsewhere.get("d") == 4
    if flavour.remote:
        reader = LayerCacheBackend(
            flavour.location,
            {"OPTIONS": {**flavour.options, "PREFIX": "elsewhere:", "MEMORY_TTL": 0}},
        )
        flavour.made.append(reader)
        assert reader.get("d") == 4


# ---------------------------------------------------------------------- keys, prefixes, versions


def test_key_prefix_isolates_on_a_shared_store(flavour: Flavour, cache: LayerCacheBackend) -> None:
    prefixed = flavour.backend(KEY_PREFIX="cacheprefix")
    cache.set("somekey", "value")
    assert prefixed.has_key("somekey") is False
    prefixed.set("somekey", "value2")
    assert cache.get("somekey") == "value"
    assert prefixed.get("somekey") == "value2"
    assert flavour.reader(KEY_PREFIX="cacheprefix").get("somekey") == "value2"


def _length_key(key: str, *args: Any) -> str:
    return key + ":1"


@pytest.mark.parametrize(
    ("key", "key_func", "expected"),
    [
        ("key with spaces and 清", None, _CHARS_WARNING % "key with spaces and 清"),
        ("a" * 250 + "清", None, _LENGTH_WARNING % ("a" * 250 + "清")),
        ("a" * 249, _length_key, _LENGTH_WARNING % ("a" * 249 + ":1")),
    ],
    ids=["characters", "length", "length-with-version"],
)
def test_key_warning_messages(
    flavour: Flavour,
    cache: LayerCacheBackend,
    key: str,
    key_func: Callable[..., str] | None,
    expected: str,
) -> None:
    # Django's check: each operation warns with exactly this message (the key as made by the
    # key function), and the odd key still works.
    cache.key_func = key_func or (lambda k, *args: k)
    operations: list[tuple[str, Callable[[], Any]]] = [
        ("add", lambda: cache.add(key, 1)),
        ("get", lambda: cache.get(key)),
        ("set", lambda: cache.set(key, 1)),
        ("incr", lambda: cache.incr(key)),
        ("decr", lambda: cache.decr(key)),
        ("touch", lambda: cache.touch(key)),
        ("has_key", lambda: cache.has_key(key)),
        ("in", lambda: key in cache),
        ("get_or_set", lambda: cache.get_or_set(key, 1)),
        ("incr_version", lambda: cache.incr_version(key, version=1)),
        # The key functions here ignore the version: store the key again before moving it back.
        ("decr_version", lambda: (cache.set(key, 1), cache.decr_version(key, version=2))),
        ("delete", lambda: cache.delete(key)),
        ("get_many", lambda: cache.get_many([key, "b"])),
        ("set_many", lambda: cache.set_many({key: 1, "b": 2})),
        ("delete_many", lambda: cache.delete_many([key, "b"])),
    ]
    for name, operation in operations:
        seen = _key_warnings(operation)
        assert seen, name
        assert set(seen) == {expected}, name
    assert _key_warnings(lambda: cache.set(key, "stored")) == [expected]
    reader = flavour.reader()
    reader.key_func = cache.key_func
    with pytest.warns(CacheKeyWarning):
        assert reader.get(key) == "stored"


def custom_key_func(key: str, key_prefix: str, version: int) -> str:
    """A key function in the shape of Django's suite's (importable by dotted path)."""
    return "CUSTOM-" + "-".join([key_prefix, str(version), key])


def test_custom_key_functions_share_or_separate(flavour: Flavour, cache: LayerCacheBackend) -> None:
    custom = flavour.backend(KEY_FUNCTION=custom_key_func)
    dotted = flavour.backend(KEY_FUNCTION=f"{__name__}.custom_key_func")
    cache.set("answer1", 42)
    assert cache.get("answer1") == 42
    assert custom.get("answer1") is None
    assert dotted.get("answer1") is None
    custom.set("answer2", 42)
    assert cache.get("answer2") is None
    assert custom.get("answer2") == 42
    assert dotted.get("answer2") == 42  # the same function, by object or by path
    assert flavour.reader(KEY_FUNCTION=custom_key_func).get("answer2") == 42


def test_versioning_get_set(flavour: Flavour, cache: LayerCacheBackend) -> None:
    v2 = flavour.backend(VERSION=2)
    cache.set("answer1", 42)
    cache.set("answer2", 42, version=2)
    v2.set("answer3", 42)
    v2.set("answer4", 42, version=1)
    for backend_v1, backend_v2 in ((cache, v2), (flavour.reader(), flavour.reader(VERSION=2))):
        for key, stored_in in (("answer1", 1), ("answer2", 2), ("answer3", 2), ("answer4", 1)):
            for version in (1, 2, 3):
                expected = 42 if version == stored_in else None
                assert backend_v1.get(key, version=version) == expected, (key, version)
                assert backend_v2.get(key, version=version) == expected, (key, version)
            assert backend_v1.get(key) == (42 if stored_in == 1 else None)
            assert backend_v2.get(key) == (42 if stored_in == 2 else None)


def test_versioning_add(flavour: Flavour, cache: LayerCacheBackend) -> None:
    v2 = flavour.backend(VERSION=2)
    assert cache.add("answer1", 42, version=2) is True
    assert cache.add("answer1", 37, version=2) is False
    assert cache.add("answer1", 37, version=1) is True
    assert v2.add("answer2", 42) is True
    assert v2.add("answer2", 37) is False
    assert v2.add("answer2", 37, version=1) is True
    assert v2.add("answer3", 42, version=1) is True
    assert v2.add("answer3", 37, version=1) is False
    assert v2.add("answer3", 37) is True
    reader = flavour.reader()
    for key, (in_v1, in_v2) in {
        "answer1": (37, 42),
        "answer2": (37, 42),
        "answer3": (42, 37),
    }.items():
        assert reader.get(key, version=1) == in_v1, key
        assert reader.get(key, version=2) == in_v2, key


def test_versioning_has_key_and_delete(flavour: Flavour, cache: LayerCacheBackend) -> None:
    v2 = flavour.backend(VERSION=2)
    cache.set("answer1", 42)
    assert cache.has_key("answer1", version=1) is True
    assert cache.has_key("answer1", version=2) is False
    assert v2.has_key("answer1") is False
    assert v2.has_key("answer1", version=1) is True
    for name, deleter, version, gone, kept in (
        ("a", cache, None, 1, 2),
        ("b", cache, 2, 2, 1),
        ("c", v2, None, 2, 1),
        ("d", v2, 1, 1, 2),
    ):
        cache.set(name, 37, version=1)
        cache.set(name, 42, version=2)
        assert deleter.delete(name, version=version) is True
        assert deleter.delete(name, version=version) is False
        reader = flavour.reader()
        assert reader.get(name, version=gone) is None, name
        assert reader.get(name, version=kept) == (37 if kept == 1 else 42), name


def test_versioning_incr_decr(flavour: Flavour, cache: LayerCacheBackend) -> None:
    v2 = flavour.backend(VERSION=2)
    for name, backend, version, changed in (
        ("a", cache, None, 1),
        ("b", cache, 2, 2),
        ("c", v2, None, 2),
        ("d", v2, 1, 1),
    ):
        cache.set(name, 37, version=1)
        cache.set(name, 42, version=2)
        start = 37 if changed == 1 else 42
        assert backend.incr(name, version=version) == start + 1
        assert flavour.reader().get(name, version=changed) == start + 1
        assert backend.decr(name, version=version) == start
        other = 2 if changed == 1 else 1
        assert flavour.reader().get_many([name], version=other) == {name: 79 - start}
        assert flavour.reader().get(name, version=changed) == start


def test_versioning_get_set_many(flavour: Flavour, cache: LayerCacheBackend) -> None:
    v2 = flavour.backend(VERSION=2)
    cache.set_many({"ford1": 37, "arthur1": 42})
    cache.set_many({"ford2": 37, "arthur2": 42}, version=2)
    v2.set_many({"ford3": 37, "arthur3": 42})
    v2.set_many({"ford4": 37, "arthur4": 42}, version=1)
    for backend_v1, backend_v2 in ((cache, v2), (flavour.reader(), flavour.reader(VERSION=2))):
        for n, stored_in in ((1, 1), (2, 2), (3, 2), (4, 1)):
            keys = [f"ford{n}", f"arthur{n}"]
            both = {f"ford{n}": 37, f"arthur{n}": 42}
            for version in (1, 2):
                expected = both if version == stored_in else {}
                assert backend_v1.get_many(keys, version=version) == expected, (n, version)
                assert backend_v2.get_many(keys, version=version) == expected, (n, version)
            assert backend_v1.get_many(keys) == (both if stored_in == 1 else {})
            assert backend_v2.get_many(keys) == (both if stored_in == 2 else {})


def test_incr_decr_version_default_version(flavour: Flavour, cache: LayerCacheBackend) -> None:
    v2 = flavour.backend(VERSION=2)
    v2.set("answer2", 42)
    assert v2.incr_version("answer2") == 3
    assert v2.get("answer2") is None
    assert v2.get("answer2", version=3) == 42
    assert v2.decr_version("answer2", version=3) == 2
    assert v2.decr_version("answer2") == 1
    assert flavour.reader().get("answer2") == 42
    assert flavour.reader(VERSION=2).get("answer2") is None
    with pytest.raises(ValueError, match="not found"):
        cache.decr_version("does_not_exist", version=2)
    cache.set("null", None, version=2)
    assert cache.decr_version("null", version=2) == 1
    assert flavour.reader().get("null", "default") is None


# ---------------------------------------------------------------------- get_or_set


def test_get_or_set_details(flavour: Flavour, cache: LayerCacheBackend) -> None:
    assert cache.get_or_set("mykey", lambda: "value") == "value"
    assert cache.get_or_set("mykey", "value-not-used") == "value"
    assert cache.get_or_set("null", lambda: None) is None
    assert flavour.reader().get("null", "default") is None  # the None was stored
    assert cache.get_or_set("null", lambda: "never") is None
    assert cache.get_or_set("brian", 1979, version=2) == 1979
    with pytest.raises(TypeError, match=r"get_or_set\(\) missing 1 required positional"):
        cache.get_or_set("brian")
    with pytest.raises(TypeError, match=r"get_or_set\(\) missing 1 required positional"):
        cache.get_or_set("brian", version=1)
    assert cache.get("brian", version=1) is None
    assert cache.get_or_set("brian", 42, version=1) == 42
    assert cache.get_or_set("brian", 1979, version=2) == 1979
    assert cache.get("brian", version=3) is None
    reader = flavour.reader()
    assert reader.get("brian", version=1) == 42
    assert reader.get("brian", version=2) == 1979


def test_get_or_set_racing(flavour: Flavour, cache: LayerCacheBackend) -> None:
    # Someone else stores the key between the miss and the add: their value wins, and is
    # what get_or_set returns (Django re-reads after its add).
    def slow_default() -> str:
        flavour.reader().set("raced", "winner")
        return "loser"

    assert cache.get_or_set("raced", slow_default) == "winner"
    assert flavour.reader().get("raced") == "winner"
    # Nothing ends up stored (a zero timeout): the default is returned all the same.
    assert cache.get_or_set("never-stored", "default", timeout=0) == "default"
    assert not cache.has_key("never-stored")


# ---------------------------------------------------------------------- cache middleware


def _cached_page() -> tuple[HttpRequest, HttpResponse, Any]:
    """Serve one page through UpdateCacheMiddleware; (request, response, fetch middleware)."""

    def view(request: HttpRequest) -> HttpResponse:
        response = HttpResponse("Testing cookie serialization.")
        response.set_cookie("foo", "bar")
        return response

    fetch = FetchFromCacheMiddleware(view)
    request = RequestFactory().get("/cache/test")
    assert fetch.process_request(request) is None  # a miss, which marks the page to cache
    response = UpdateCacheMiddleware(view)(request)
    return request, response, fetch


def _page_cache_settings(flavour: Flavour) -> Any:
    return override_settings(
        CACHES={
            "parity": {
                "BACKEND": _BACKEND_PATH,
                "LOCATION": flavour.location,
                "OPTIONS": flavour.options,
            }
        },
        CACHE_MIDDLEWARE_ALIAS="parity",
        CACHE_MIDDLEWARE_SECONDS=60,
        CACHE_MIDDLEWARE_KEY_PREFIX="parity",
    )


@_only("memory", "redis", "redis-pickle")
def test_cache_middleware_keeps_cookies(flavour: Flavour, cache: LayerCacheBackend) -> None:
    from django.core.cache import caches

    with _page_cache_settings(flavour):
        try:
            request, response, fetch = _cached_page()
            cached = fetch.process_request(request)
            assert cached is not None
            assert cached.content == b"Testing cookie serialization."
            assert cached.cookies == response.cookies
            # Storing the cached response again (a second pass) works as well.
            UpdateCacheMiddleware(lambda req: cached)(request)
            again = fetch.process_request(request)
            assert again is not None
            assert again.content == b"Testing cookie serialization."
            assert again.cookies == response.cookies
        finally:
            caches["parity"].clear()


@_only("redis-json")
def test_cache_middleware_needs_pickle_with_json(
    flavour: Flavour, cache: LayerCacheBackend
) -> None:
    with _page_cache_settings(flavour), pytest.raises(TypeError, match="JsonSerializer"):
        _cached_page()


# ---------------------------------------------------------------------- async


def test_async_methods_are_native() -> None:
    # Django's check: an a* method must not fall back on BaseCache's generic version when the
    # sync one is specialised. Here every a* method is the backend's own (no thread hop),
    # except the version helpers, which BaseCache builds on the native aget/aset/adelete.
    for name in (
        "aadd",
        "aget",
        "aset",
        "atouch",
        "adelete",
        "ahas_key",
        "aincr",
        "adecr",
        "aget_many",
        "aset_many",
        "adelete_many",
        "aclear",
        "aclose",
        "aget_or_set",
    ):
        assert getattr(LayerCacheBackend, name) is not getattr(BaseCache, name), name
    assert LayerCacheBackend.incr_version is BaseCache.incr_version
    assert LayerCacheBackend.aincr_version is BaseCache.aincr_version


async def test_async_write_semantics(
    flavour: Flavour, acache: LayerCacheBackend, clock: FakeClock
) -> None:
    assert await acache.aset("k", "v") is None
    assert await acache.aadd("k", "other") is False
    assert await acache.aadd("null", None) is True
    assert await acache.aget("null", "default") is None
    assert await acache.ahas_key("null") is True
    assert await acache.aset("no_expiry", "here", None) is None
    assert await acache.ahas_key("no_expiry") is True
    assert await acache.ahas_key("missing") is False
    assert await acache.aset_many({"a": 1, "b": 2}) == []
    assert await acache.aset_many({}) == []
    assert await acache.aset_many({"c": 3}, timeout=2, version="1") == []
    assert await acache.adelete_many(["a", "never-set"]) is None
    assert await acache.adelete_many([]) is None
    assert await acache.aget_many(["a", "b", "c", "null"]) == {"b": 2, "c": 3, "null": None}
    assert await acache.adelete("never-set") is False
    assert await acache.atouch("nonexistent") is False
    assert await acache.ahas_key("nonexistent") is False
    assert await acache.aadd("zero", "ham", 0) is True
    assert await acache.aget("zero") is None
    await acache.aset("expire", "soon", 1)
    assert await acache.atouch("expire") is True  # the default TIMEOUT (300)
    clock.advance(2)
    assert await acache.ahas_key("expire") is True
    assert await acache.ahas_key("c") is False  # timeout 2 passed
    assert await acache.aadd("c", "new") is True
    assert flavour.reader().get_many(["k", "b", "c", "null", "no_expiry"]) == {
        "k": "v",
        "b": 2,
        "c": "new",
        "null": None,
        "no_expiry": "here",
    }
    clock.advance(300)
    assert await acache.ahas_key("expire") is False
    assert await acache.aget("expire", "default") == "default"


async def test_async_incr_decr(acache: LayerCacheBackend) -> None:
    await acache.aset("answer", 43)
    assert await acache.adecr("answer") == 42
    assert await acache.adecr("answer", 10) == 32
    assert await acache.adecr("answer", -10) == 42
    assert await acache.aincr("answer", -2) == 40
    for operation in (acache.aincr, acache.adecr):
        with pytest.raises(ValueError, match="not found"):
            await operation("does_not_exist")
        with pytest.raises(ValueError, match="not found"):
            await operation("does_not_exist", -1)
    await acache.aset("null", None)
    with pytest.raises(TypeError):
        await acache.aincr("null")
    with pytest.raises(TypeError):
        await acache.adecr("null")
    assert await acache.aget("answer") == 40


async def test_async_get_or_set(flavour: Flavour, acache: LayerCacheBackend) -> None:
    assert await acache.aget_or_set("key", "default") == "default"
    assert await acache.aget_or_set("key", "other") == "default"
    assert await acache.aget_or_set("none", None) is None
    assert await acache.ahas_key("none") is True
    assert await acache.aget_or_set("called", lambda: "value") == "value"
    assert await acache.aget_or_set("called", "value-not-used") == "value"
    assert await acache.aget_or_set("null", lambda: None) is None
    assert await acache.aget("null", "default") is None
    assert await acache.aget_or_set("brian", 1979, version=2) == 1979
    assert await acache.aget("brian", version=1) is None
    with pytest.raises(TypeError, match=r"get_or_set\(\) missing 1 required positional"):
        await acache.aget_or_set("brian")
    assert await acache.aget_or_set("brian", 42, version=1) == 42
    assert await acache.aget_or_set("brian", 7, version=2) == 1979
    reader = flavour.reader()
    assert reader.get("brian", version=1) == 42
    assert reader.get("called") == "value"


async def test_async_versions(flavour: Flavour, acache: LayerCacheBackend) -> None:
    v2 = flavour.backend(VERSION=2)
    assert await acache.aset_many({"ford": 37, "arthur": 42}, version=2) == []
    assert await acache.aget_many(["ford", "arthur"]) == {}
    assert await acache.aget_many(["ford", "arthur"], version=2) == {"ford": 37, "arthur": 42}
    assert await v2.aget_many(["ford", "arthur"]) == {"ford": 37, "arthur": 42}
    assert await v2.aget_many(["ford", "arthur"], version=1) == {}
    await acache.adelete_many(["ford"], version=2)
    assert await v2.aget_many(["ford", "arthur"]) == {"arthur": 42}
    assert await v2.aincr_version("arthur") == 3
    assert await v2.aget("arthur") is None
    assert await acache.aget("arthur", version=3) == 42
    assert await acache.adecr_version("arthur", version=3) == 2
    assert await v2.adecr_version("arthur") == 1
    assert await acache.aget("arthur") == 42
    assert flavour.reader().get("arthur") == 42
    with pytest.raises(ValueError, match="not found"):
        await acache.aincr_version("does_not_exist")
    with pytest.raises(ValueError, match="not found"):
        await acache.adecr_version("does_not_exist", version=2)
    await acache.aset("null", None, version=2)
    assert await acache.adecr_version("null", version=2) == 1
    assert await acache.ahas_key("null") is True
    assert await acache.ahas_key("null", version=2) is False


async def test_async_values(flavour: Flavour, acache: LayerCacheBackend) -> None:
    packed = zlib.compress(b"value_to_be_compressed")
    stuff = {
        "ascii": "ascii_value",
        "Iñtërnâtiônàlizætiøn": "Iñtërnâtiônàlizætiøn2",
        "ascii2": {"x": 1},
        "binary": packed,
    }
    for key, value in stuff.items():
        await acache.aset(key, value)
    assert await acache.aget_many(list(stuff)) == stuff
    for key, value in stuff.items():
        assert await acache.adelete(key) is True
        assert await acache.aadd(key, value) is True
    assert flavour.reader().get_many(list(stuff)) == stuff


async def test_async_clear_and_close(flavour: Flavour, acache: LayerCacheBackend) -> None:
    prefixed = flavour.backend(KEY_PREFIX="other-site")
    await acache.aset_many({"key1": "spam", "key2": "eggs"})
    await prefixed.aset("key3", "ham")
    await acache.aclose()
    assert await acache.aget("key1") == "spam"  # aclose leaves the cache usable
    await acache.aclear()
    assert await acache.aget_many(["key1", "key2"]) == {}
    assert await prefixed.aget("key3") is None
    assert flavour.reader().get_many(["key1", "key2"]) == {}


@_only("memory", "redis", "redis-pickle")
async def test_async_unserializable_value_fails_loudly(
    flavour: Flavour, acache: LayerCacheBackend
) -> None:
    await acache.aset("kept", "old value")
    with pytest.raises(pickle.PickleError):
        await acache.aset("kept", Unpicklable())
    with pytest.raises(pickle.PickleError):
        await acache.aadd("added", Unpicklable())
    with pytest.raises(pickle.PickleError):
        await acache.aset_many({"many": Unpicklable()})
    assert await acache.aget("kept") == "old value"
    assert await acache.aget_many(["added", "many"]) == {}
    assert flavour.reader().get("kept") == "old value"


async def test_async_key_warnings(flavour: Flavour, acache: LayerCacheBackend) -> None:
    key = "key with spaces"
    expected = _CHARS_WARNING % key
    acache.key_func = lambda k, *args: k
    operations: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("aadd", lambda: acache.aadd(key, 1)),
        ("aget", lambda: acache.aget(key)),
        ("aset", lambda: acache.aset(key, 1)),
        ("aincr", lambda: acache.aincr(key)),
        ("adecr", lambda: acache.adecr(key)),
        ("atouch", lambda: acache.atouch(key)),
        ("ahas_key", lambda: acache.ahas_key(key)),
        ("aget_or_set", lambda: acache.aget_or_set(key, 1)),
        ("aincr_version", lambda: acache.aincr_version(key, version=1)),
        ("aset", lambda: acache.aset(key, 1)),
        ("adecr_version", lambda: acache.adecr_version(key, version=2)),
        ("adelete", lambda: acache.adelete(key)),
        ("aget_many", lambda: acache.aget_many([key, "b"])),
        ("aset_many", lambda: acache.aset_many({key: 1, "b": 2})),
        ("adelete_many", lambda: acache.adelete_many([key, "b"])),
    ]
    for name, operation in operations:
        seen = await _akey_warnings(operation)
        assert seen, name
        assert set(seen) == {expected}, name
