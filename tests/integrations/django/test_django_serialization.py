"""The Django backend's default serialization: signed pickle, as Django's own backends pickle.

Regression tests of issue 10, point 8: with a Redis ``LOCATION`` the backend used to store
values with the JSON serializer, so model instances, functions, classes and ``cache_page``'s
``HttpResponse`` could not be cached (``cache_page`` answered HTTP 500), and an unpicklable
value did not raise ``pickle.PickleError``. Memory only, values were kept by reference, unlike
``LocMemCache``, which stores a pickled copy.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from dj_testapp.models import Poll, expensive_calculation
from django.core.cache import caches
from django.http import HttpResponse
from django.test import Client, override_settings

from layercache import JsonSerializer, PickleSerializer
from layercache._codec import EntryCodec
from layercache._entry import Entry
from layercache.integrations.django import LayerCacheBackend

_BACKEND = "layercache.integrations.django.LayerCacheBackend"


class Unpicklable:
    """Fails to pickle the way Django's suite makes a value fail."""

    def __getstate__(self) -> Any:
        raise pickle.PickleError("refuses to be pickled")


class SideEffect:
    """A payload whose unpickling would create ``path``: proof that it was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (Path.touch, (self.path,))


class Made:
    """Backends built by a test, shut down at its end (each engine closes its clients)."""

    def __init__(self) -> None:
        self.made: list[LayerCacheBackend] = []

    def __call__(self, location: str, **options: Any) -> LayerCacheBackend:
        backend = LayerCacheBackend(location, {"TIMEOUT": 300, "OPTIONS": options})
        self.made.append(backend)
        return backend

    def shutdown(self) -> None:
        for backend in self.made:
            backend.shutdown()


@pytest.fixture
def made() -> Iterator[Made]:
    backends = Made()
    yield backends
    backends.shutdown()


def _process(i: int) -> dict[str, Any]:
    """Options that give backend ``i`` an engine (a memory layer) of its own: another process."""
    return {"MEMORY_MAX_SIZE": 5_000 + i}


@pytest.mark.redis
def test_model_instance_round_trip_through_redis(made: Made, redis_clean: Any) -> None:
    writer, reader = made(redis_clean.url, **_process(1)), made(redis_clean.url, **_process(2))
    expensive_calculation.runs = 0  # type: ignore[attr-defined]
    poll = Poll(id=7, question="Well?")
    assert expensive_calculation.runs == 1  # type: ignore[attr-defined]
    writer.set("poll", poll)
    cached = reader.get("poll")  # the other process's memory is empty: read from Redis
    assert isinstance(cached, Poll)
    assert (cached.pk, cached.question, cached.score) == (7, "Well?", poll.score)
    # Neither pickling nor unpickling ran the field default again (Django's own check).
    assert expensive_calculation.runs == 1  # type: ignore[attr-defined]


@pytest.mark.redis
def test_functions_classes_and_tuples_round_trip_through_redis(
    made: Made, redis_clean: Any
) -> None:
    writer, reader = made(redis_clean.url, **_process(1)), made(redis_clean.url, **_process(2))
    values = {"function": expensive_calculation, "class": Poll, "tuple": (1, 2), "set": {3}}
    writer.set_many(values)
    assert reader.get_many(list(values)) == values


@pytest.mark.redis
def test_cache_page_with_a_redis_location_is_served_from_cache(redis_clean: Any) -> None:
    location = {
        "BACKEND": _BACKEND,
        "LOCATION": redis_clean.url,
        "KEY_PREFIX": "pages",
        "OPTIONS": _process(3),
    }
    with override_settings(CACHES={"default": location}):
        try:
            client = Client()
            first = client.get("/page/")
            second = client.get("/page/")
            assert first.status_code == second.status_code == 200
            assert first.content.startswith(b"render #")
            assert second.content == first.content  # not rendered again: served from cache
            # ... and the page is in Redis: another process serves the same render.
            other = LayerCacheBackend(redis_clean.url, {"KEY_PREFIX": "pages", "OPTIONS": {}})
            try:
                with override_settings(CACHES={"default": {**location, "OPTIONS": {}}}):
                    assert Client().get("/page/").content == first.content
            finally:
                other.shutdown()
        finally:
            caches["default"].shutdown()


@pytest.mark.parametrize("where", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_unpicklable_value_raises_pickle_error(
    made: Made, where: str, request: pytest.FixtureRequest
) -> None:
    location = request.getfixturevalue("redis_clean").url if where == "redis" else ""
    cache = made(location, **_process(4))
    cache.set("unpicklable", "old")
    with pytest.raises(pickle.PickleError):
        cache.set("unpicklable", Unpicklable())
    with pytest.raises(pickle.PickleError):
        cache.add("fresh", Unpicklable())
    with pytest.raises(pickle.PickleError):
        cache.set_many({"a": 1, "b": Unpicklable()})
    assert cache.get("unpicklable") == "old"  # nothing was written
    assert cache.get_many(["fresh", "a", "b"]) == {}


def test_memory_only_stores_a_copy_like_locmem(made: Made) -> None:
    cache = made("", **_process(5))
    value = {"items": [1, 2]}
    cache.set("k", value)
    value["items"].append(3)  # mutating after set does not change the cached value
    first = cache.get("k")
    assert first == {"items": [1, 2]}
    first["items"].append(4)  # nor does mutating what a get returned
    assert cache.get("k") == {"items": [1, 2]}
    assert cache.get("k") is not cache.get("k")


def _raw_key(cache: LayerCacheBackend, key: str) -> bytes:
    return cache._engine.remote_sync[0]._key(cache.make_and_validate_key(key))  # type: ignore[no-any-return]


@pytest.mark.redis
@pytest.mark.parametrize("forgery", ["raw-pickle", "unsigned-in-envelope", "other-secret"])
def test_forged_bytes_in_redis_are_never_unpickled(
    made: Made,
    redis_clean: Any,
    tmp_path: Path,
    forgery: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    marker = tmp_path / "unpickled"
    cache = made(redis_clean.url, **_process(6))
    cache.set("victim", "legit")
    payload = pickle.dumps(SideEffect(marker))
    pickle.loads(payload)  # the payload does what the test claims when unpickled ...
    assert marker.exists()
    marker.unlink()  # ... and is now planted, and must not be
    if forgery == "raw-pickle":
        planted = payload
    else:
        blob = (
            payload
            if forgery == "unsigned-in-envelope"
            else PickleSerializer(signing_secret="not-the-secret-key").dumps(SideEffect(marker))
        )
        now = time.time()
        entry = Entry(value=blob, stored_at=now, fresh_until=now + 300)
        planted = EntryCodec(JsonSerializer()).encode(entry)
    raw = redis.Redis.from_url(redis_clean.url)
    try:
        raw.set(_raw_key(cache, "victim"), planted)
        reader = made(redis_clean.url, **_process(7))  # another process: nothing in memory
        errors: list[dict[str, Any]] = []
        reader._engine.stack.on("error", errors.append)
        with caplog.at_level(logging.WARNING, logger="layercache"):
            assert reader.get("victim", "miss") == "miss"
        assert not marker.exists()
        assert errors, "the forged entry was not reported as the stack's error event"
        assert "victim" in errors[0]["context"]["key"]
        assert errors[0]["context"]["operation"] == "get"
        # Logged with the key's hash (log lines never carry keys, which may be personal data).
        stored = errors[0]["context"]["key"]
        digest = hashlib.blake2b(stored.encode(), digest_size=8).hexdigest()
        assert any(getattr(r, "key_hash", None) == digest for r in caplog.records), (
            "the forged entry was not reported"
        )
        assert not any("victim" in record.getMessage() for record in caplog.records)
        assert reader.get_many(["victim"]) == {}
        assert not marker.exists()
        # A forged entry is gone, not kept in memory: the next write and read work normally.
        assert reader.add("victim", "again") is True
        assert reader.get("victim") == "again"
    finally:
        raw.close()


def test_a_response_is_cached_by_default(made: Made) -> None:
    cache = made("", **_process(8))
    response = HttpResponse("body")
    response.set_cookie("foo", "bar")
    cache.set("page", response)
    cached = cache.get("page")
    assert cached is not response
    assert cached.content == b"body"
    assert cached.cookies == response.cookies


@pytest.mark.redis
async def test_forged_bytes_are_never_unpickled_by_the_async_methods(
    made: Made, redis_clean: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled"
    cache = made(redis_clean.url, **_process(9))
    await cache.aset("victim", "legit")
    now = time.time()
    forged = Entry(value=pickle.dumps(SideEffect(marker)), stored_at=now, fresh_until=now + 300)
    raw = redis.Redis.from_url(redis_clean.url)
    try:
        raw.set(_raw_key(cache, "victim"), EntryCodec(JsonSerializer()).encode(forged))
        reader = made(redis_clean.url, **_process(10))
        try:
            assert await reader.aget("victim", "miss") == "miss"
            raw.set(_raw_key(cache, "victim"), EntryCodec(JsonSerializer()).encode(forged))
            assert await reader.aget_many(["victim"]) == {}
            assert not marker.exists()
            assert await reader.aadd("victim", "again") is True
            assert await reader.aget("victim") == "again"
        finally:
            await reader.ashutdown()
    finally:
        raw.close()
        await cache.ashutdown()


@pytest.mark.parametrize(
    "spec",
    [
        "json",
        "msgpack",
        "layercache.JsonSerializer",  # a dotted path to a class: instantiated, as RedisCache does
        JsonSerializer,
        JsonSerializer(),
    ],
)
def test_serializer_option_chooses_the_value_encoding(made: Made, spec: Any) -> None:
    cache = made("", SERIALIZER=spec)
    cache.set("k", (1, 2))
    assert cache.get("k") == [1, 2]  # not pickle: a tuple comes back as a list
    with pytest.raises(TypeError):
        cache.set("k", Unpicklable())


def test_serializer_option_pickle_is_the_default(made: Made) -> None:
    for cache in (made(""), made("", SERIALIZER="pickle", MEMORY_MAX_SIZE=77)):
        cache.set("k", (1, 2))
        assert cache.get("k") == (1, 2)


@pytest.mark.parametrize(
    "spec", ["yaml", "no.such.module.Serializer", 42, object(), PickleSerializer]
)
def test_a_bad_serializer_option_is_improperly_configured(spec: Any) -> None:
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="SERIALIZER"):
        LayerCacheBackend("", {"OPTIONS": {"SERIALIZER": spec}})


def test_the_signing_key_depends_on_secret_key_and_prefix(made: Made) -> None:
    from layercache.integrations._django_config import signing_key as _signing_key

    with override_settings(SECRET_KEY="one"):
        first = _signing_key({})
        assert _signing_key({"PREFIX": "other:"}) != first
    with override_settings(SECRET_KEY="two"):
        assert _signing_key({}) != first
    with override_settings(SECRET_KEY="one"):
        assert _signing_key({"PREFIX": "layercache:"}) == first
        assert first != b"one"
