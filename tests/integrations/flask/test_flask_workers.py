"""The Flask extension across worker processes: ``LAYERCACHE_INVALIDATION_BUS``,
``LAYERCACHE_TAG_INDEX`` and ``LAYERCACHE_SINGLE_FLIGHT`` against a real Redis.

Two applications in one process stand for two gunicorn workers (each has its own stack, memory
layer and bus ``source_id``); one test forks a real child process, as ``gunicorn --preload``
does.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from flask import Flask

from layercache.integrations.flask import LayerCache

SECRET = "flask-workers-test-secret-" + "x" * 32
DB_KEY = "test-db:item"  # the "database" both workers read (outside the cache's prefixes)
ITEM_KEY = "flask:GET:/item?"  # the documented key of GET /item: method, path, query


class Worker:
    """One application (one worker process in production) and what its view rendered."""

    def __init__(self, url: str, db: redis.Redis, **config: Any) -> None:
        self.app = Flask(f"worker-{id(self)}")
        self.app.config["LAYERCACHE_URL"] = url
        self.app.config.update(config)
        self.ext = LayerCache(self.app)
        self.renders: list[str] = []
        self.in_view = threading.Event()
        self.release = threading.Event()
        self.release.set()  # views run at once unless a test holds them
        self.client = self.app.test_client()

        @self.app.get("/item")
        @self.ext.cached(ttl=60, tags=["item"])
        def item() -> str:
            self.in_view.set()
            assert self.release.wait(5), "the test never released the view"
            value = db.get(DB_KEY)
            body = value.decode() if value is not None else "none"
            self.renders.append(body)
            return body

    def get(self) -> tuple[str, str]:
        """GET /item: (body, X-Cache)."""
        response = self.client.get("/item")
        assert response.status_code == 200
        return response.get_data(as_text=True), response.headers["X-Cache"]

    def stack(self) -> Any:
        with self.app.app_context():
            return self.ext.stack


@pytest.fixture
def db(redis_clean: Any) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_clean.url, socket_timeout=5)
    client.set(DB_KEY, "one")
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def workers(redis_clean: Any, db: redis.Redis) -> Iterator[Callable[..., Worker]]:
    built: list[Worker] = []

    def make(**config: Any) -> Worker:
        worker = Worker(redis_clean.url, db, **config)
        built.append(worker)
        return worker

    try:
        yield make
    finally:
        # Closed side by side: closing a bus joins its subscriber thread (up to ~1 s each).
        closers = [threading.Thread(target=worker.ext.close) for worker in built]
        for worker, closer in zip(built, closers, strict=True):
            worker.release.set()
            closer.start()
        for closer in closers:
            closer.join(10)


def eventually(probe: Callable[[], bool], timeout: float = 3.0) -> bool:
    """Bounded polling: whether ``probe()`` became true before ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if probe():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def layercache_threads(prefix: str = "layercache-") -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix) and t.is_alive()]


BUS = {"SIGNING_SECRET": SECRET}


# -- the invalidation bus ----------------------------------------------------------------------


@pytest.mark.redis
def test_a_tag_invalidation_in_one_worker_drops_the_other_workers_memory_copy(
    workers: Callable[..., Worker], db: redis.Redis
) -> None:
    a = workers(LAYERCACHE_INVALIDATION_BUS=BUS)
    b = workers(LAYERCACHE_INVALIDATION_BUS=BUS)
    assert b.get() == ("one", "MISS")
    assert b.get() == ("one", "HIT")  # now in B's memory layer
    db.set(DB_KEY, "two")
    with a.app.app_context():
        assert a.ext.invalidate_by_tag("item") == 1  # B's key, through the Redis tag index
    assert eventually(lambda: b.get()[0] == "two")
    assert b.renders == ["one", "two"]
    assert a.renders == []


@pytest.mark.redis
def test_a_delete_in_one_worker_drops_the_other_workers_memory_copy(
    workers: Callable[..., Worker], db: redis.Redis
) -> None:
    # The in-process tag index: only the bus can tell B.
    a = workers(LAYERCACHE_INVALIDATION_BUS={**BUS, "CHANNEL": "flask-test-channel"})
    b = workers(
        LAYERCACHE_INVALIDATION_BUS={**BUS, "CHANNEL": "flask-test-channel"},
        LAYERCACHE_TAG_INDEX="memory",
    )
    assert a.stack()._link.bus.channel == "flask-test-channel"
    assert a.stack()._link.bus.source_id != b.stack()._link.bus.source_id
    assert b.get() == ("one", "MISS")
    assert a.get() == ("one", "HIT")  # from Redis
    assert b.get() == ("one", "HIT")  # from B's memory
    db.set(DB_KEY, "two")
    a.stack().delete(ITEM_KEY)
    assert eventually(lambda: b.get()[0] == "two")
    assert b.renders == ["one", "two"]


@pytest.mark.redis
def test_without_the_bus_the_other_worker_keeps_its_stale_copy(
    workers: Callable[..., Worker], db: redis.Redis
) -> None:
    # The control of the two tests above: what the bus fixes.
    a = workers()
    b = workers()
    assert b.get() == ("one", "MISS")
    db.set(DB_KEY, "two")
    with a.app.app_context():
        assert a.ext.invalidate_by_tags(["item", "other"], mode="any") == 1
    assert b.get() == ("one", "HIT")
    assert b.stack()._link.bus is None


# -- the tag index ---------------------------------------------------------------------------


@pytest.mark.redis
def test_the_redis_tag_index_is_shared_and_lives_outside_the_layer_prefix(
    workers: Callable[..., Worker], redis_clean: Any, db: redis.Redis
) -> None:
    a = workers()
    b = workers()
    assert a.get() == ("one", "MISS")
    assert b.client.get("/item?page=2").headers["X-Cache"] == "MISS"
    index_keys = [key for key in db.keys("*") if key.startswith(b"{layercache-flask-tag-index}")]
    assert index_keys
    # Clearing the Redis layer (its "layercache:" prefix) leaves the index alone.
    b.stack().layers[1].clear()
    assert all(db.exists(key) for key in index_keys)
    b.get()  # refill /item through B
    with a.app.app_context():
        assert a.ext.invalidate_by_tag("item") == 2  # A's /item?page=2 is B's, /item both
    fresh = workers()  # a new worker: nothing left in Redis
    assert fresh.get() == ("one", "MISS")


@pytest.mark.redis
def test_a_memory_tag_index_knows_only_its_own_keys(
    workers: Callable[..., Worker], db: redis.Redis
) -> None:
    a = workers(LAYERCACHE_TAG_INDEX="memory")
    b = workers(LAYERCACHE_TAG_INDEX="memory")
    assert b.get() == ("one", "MISS")
    with a.app.app_context():
        assert a.ext.invalidate_by_tag("item") == 0
    assert not [key for key in db.keys("*") if b"tag-index" in key]


# -- single flight ----------------------------------------------------------------------------


@pytest.mark.redis
def test_a_cold_view_renders_once_across_workers(
    workers: Callable[..., Worker], db: redis.Redis
) -> None:
    a = workers(LAYERCACHE_SINGLE_FLIGHT=True)
    b = workers(LAYERCACHE_SINGLE_FLIGHT=True)
    a.release.clear()
    b.release.clear()
    results: dict[str, tuple[str, str]] = {}

    def request(name: str, worker: Worker) -> None:
        results[name] = worker.get()

    first = threading.Thread(target=request, args=("a", a))
    first.start()
    try:
        assert a.in_view.wait(5)  # A holds the Redis lock and renders
        second = threading.Thread(target=request, args=("b", b))
        second.start()
        coordinator = b.stack()._loader._coordinator
        # B found the lock held and waits for A's response instead of rendering.
        assert eventually(lambda: coordinator.stats.waits >= 1 or b.in_view.is_set())
    finally:
        a.release.set()
        b.release.set()
        first.join(5)
    second.join(5)
    assert results == {"a": ("one", "MISS"), "b": ("one", "HIT")}
    assert a.renders == ["one"]
    assert b.renders == []
    assert b.stack()._loader._coordinator.prefix == "layercache-flask-single-flight"


# -- configuration and lifecycle ---------------------------------------------------------------


URL = "redis://127.0.0.1:1/0"  # never connected to: building a stack opens no connection


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"LAYERCACHE_INVALIDATION_BUS": "yes"}, "must be True, False or a dict"),
        ({"LAYERCACHE_INVALIDATION_BUS": {"channel": "x"}}, "unknown LAYERCACHE_INVALIDATION_BUS"),
        ({"LAYERCACHE_INVALIDATION_BUS": {"REPLAY_WINDOW": -1}}, "replay_window"),
        ({"LAYERCACHE_INVALIDATION_BUS": {"CHANNEL": ""}}, "LAYERCACHE_INVALIDATION_BUS"),
        ({"LAYERCACHE_TAG_INDEX": "disk"}, "'redis' or 'memory'"),
        ({"LAYERCACHE_SINGLE_FLIGHT": "true"}, "True or False"),
        (
            {"LAYERCACHE_SINGLE_FLIGHT": True, "LAYERCACHE_STACK_OPTIONS": {"tag_index": None}},
            None,  # not a conflict: the tag index option only conflicts with LAYERCACHE_TAG_INDEX
        ),
        (
            {"LAYERCACHE_TAG_INDEX": "redis", "LAYERCACHE_STACK_OPTIONS": {"tag_index": None}},
            "conflicts with LAYERCACHE_TAG_INDEX",
        ),
        (
            {
                "LAYERCACHE_INVALIDATION_BUS": True,
                "LAYERCACHE_STACK_OPTIONS": {"broadcast_l1_invalidation": False},
            },
            "conflicts with LAYERCACHE_INVALIDATION_BUS",
        ),
    ],
)
def test_bad_coordination_values_raise_at_init_app(
    config: dict[str, Any], message: str | None
) -> None:
    app = Flask(__name__)
    app.config["LAYERCACHE_URL"] = URL
    app.config.update(config)
    ext = LayerCache()
    try:
        if message is None:
            ext.init_app(app)
        else:
            with pytest.raises(ValueError, match=message):
                ext.init_app(app)
            assert "layercache" not in app.extensions
    finally:
        ext.close()


@pytest.mark.parametrize(
    "config",
    [
        {"LAYERCACHE_INVALIDATION_BUS": True},
        {"LAYERCACHE_TAG_INDEX": "redis"},
        {"LAYERCACHE_SINGLE_FLIGHT": True},
    ],
)
def test_coordination_needs_a_url(config: dict[str, Any]) -> None:
    app = Flask(__name__)
    app.config.update(config)
    with pytest.raises(ValueError, match="needs a LAYERCACHE_URL"):
        LayerCache(app)


def test_memory_only_defaults_need_no_redis() -> None:
    app = Flask(__name__)
    app.config.update(LAYERCACHE_TAG_INDEX="memory", LAYERCACHE_SINGLE_FLIGHT=False)
    ext = LayerCache(app)
    with app.app_context():
        assert ext.invalidate_by_tag("nothing") == 0
    ext.close()


@pytest.mark.redis
def test_close_stops_the_bus_and_single_flight_threads(
    workers: Callable[..., Worker],
) -> None:
    channel = "flask-close-test"
    a = workers(
        LAYERCACHE_INVALIDATION_BUS={**BUS, "CHANNEL": channel},
        LAYERCACHE_SINGLE_FLIGHT=True,
        LAYERCACHE_PREFIX="closing",
    )
    assert not layercache_threads(f"layercache-bus:{channel}")  # nothing before first use
    assert a.get() == ("one", "MISS")
    assert layercache_threads(f"layercache-bus:{channel}")
    a.ext.close()
    assert not layercache_threads(f"layercache-bus:{channel}")
    assert not layercache_threads("layercache-single-flight:layercache-closing-single-flight")
    a.ext.close()  # idempotent


# -- fork (gunicorn --preload) ---------------------------------------------------------------


def _read_line(fd: int, timeout: float) -> str:
    """One line from a pipe, or "" when nothing came within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return ""
        chunk = os.read(fd, 1024)
        if not chunk:
            return data.decode()
        data += chunk
    return data.decode().strip()


def _child(worker: Worker, parent_stack_id: int, to_parent: int, from_parent: int) -> int:
    """The forked worker: serve, report, receive the parent's invalidation."""
    stack = worker.stack()
    if id(stack) == parent_stack_id:
        os.write(to_parent, b"inherited the parent's stack\n")
        return 1
    first, second = worker.get(), worker.get()
    if (first, second) != (("one", "HIT"), ("one", "HIT")):  # Redis, then its own memory
        os.write(to_parent, f"unexpected {first} {second}\n".encode())
        return 1
    # Its own subscription: the parent's bus thread did not survive the fork.
    if not layercache_threads("layercache-bus:"):
        os.write(to_parent, b"no bus thread in the child\n")
        return 1
    os.write(to_parent, b"ready\n")
    if _read_line(from_parent, 5) != "go":
        return 1
    fresh = eventually(lambda: worker.get()[0] == "two", timeout=3)
    worker.ext.close()
    if layercache_threads("layercache-bus:"):
        os.write(to_parent, b"bus thread left after close\n")
        return 1
    os.write(to_parent, b"fresh\n" if fresh else f"stale {worker.get()}\n".encode())
    return 0 if fresh else 1


@pytest.mark.redis
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_worker_builds_its_own_stack_and_hears_the_parent(
    workers: Callable[..., Worker], db: redis.Redis
) -> None:
    parent = workers(LAYERCACHE_INVALIDATION_BUS=BUS)
    assert parent.get() == ("one", "MISS")  # the parent subscribed: it has a bus thread
    parent_stack = parent.stack()
    child_read, parent_write = os.pipe()
    parent_read, child_write = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a process with threads: exactly the case tested.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe and its exit code
        code = 1
        try:
            code = _child(parent, id(parent_stack), child_write, child_read)
        except BaseException as exc:
            os.write(child_write, f"child failed: {exc!r}\n".encode())
        finally:
            sys.stdout.flush()
            os._exit(code)
    try:
        assert _read_line(parent_read, 5) == "ready"
        db.set(DB_KEY, "two")
        with parent.app.app_context():
            assert parent.ext.invalidate_by_tag("item") == 1
        assert parent.stack() is parent_stack  # the parent keeps its own
        os.write(parent_write, b"go\n")
        assert _read_line(parent_read, 5) == "fresh"
        deadline = time.monotonic() + 5
        while (status := os.waitpid(pid, os.WNOHANG))[0] == 0:
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.01)
        assert os.waitstatus_to_exitcode(status[1]) == 0
        pid = 0
        # The child's close() left the parent's subscription alone.
        assert parent_stack._link.bus.is_subscribed
        assert layercache_threads("layercache-bus:")
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        for fd in (child_read, parent_write, parent_read, child_write):
            os.close(fd)


# -- the example application ------------------------------------------------------------------


def _load_example(name: str) -> Any:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[3] / "examples" / "flask_app.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example


@pytest.mark.redis
def test_the_example_app_with_redis_invalidates_across_workers(
    redis_clean: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("LAYERCACHE_URL", redis_clean.url)
    monkeypatch.setenv("LAYERCACHE_SECRET", SECRET)
    # Two worker processes, each importing the example and configured alike (one database
    # file, as gunicorn workers share their environment); nothing else is shared.
    monkeypatch.setenv("PRODUCTS_DATABASE", str(tmp_path / "products.sqlite3"))
    one, two = _load_example("flask_example_worker_1"), _load_example("flask_example_worker_2")
    first = one.create_app({"TESTING": True}).test_client(use_cookies=False)
    second = two.create_app({"TESTING": True}).test_client(use_cookies=False)
    try:
        assert first.get("/products/1").headers["X-Cache"] == "MISS"
        assert second.get("/products/1").headers["X-Cache"] == "HIT"  # from Redis
        assert second.get("/products/1").headers["X-Cache"] == "HIT"  # from its memory
        assert first.post("/products/1/price", data={"price": "7.5"}).json == {"invalidated": 1}
        assert eventually(lambda: second.get("/products/1").json["price"] == 7.5)
        assert one.lookups["count"] + two.lookups["count"] == 2
    finally:
        # Side by side: closing a bus joins its subscriber thread (up to ~1 s each).
        closers = [threading.Thread(target=m.cache.close) for m in (one, two)]
        for closer in closers:
            closer.start()
        for closer in closers:
            closer.join(10)
