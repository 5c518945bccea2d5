"""The stats dashboard in a real browser: Debian's headless Chromium loads the page from a real
uvicorn serving a running stack (memory + a real Redis behind the TCP proxy), its script runs
and polls the JSON, and the numbers in the final DOM (``data-stat``) equal ``get_stats()``.

Chromium is missing: skipped locally, a failure under ``CI=true`` (scripts/check installs it).
``LAYERCACHE_UPDATE_SCREENSHOT=1`` also copies the screenshot to docs/stats-dashboard.png.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from _tcp_proxy import TcpProxy
from layercache import CacheStack, MemoryLayer
from layercache.integrations.stats import StatsASGIApp, stats_asgi_app

pytestmark = pytest.mark.redis

T = TypeVar("T")
DOCS = Path(__file__).resolve().parents[2] / "docs"
SECRET = "customer-4711-private"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    # The browser's own background traffic (update checks) never leaves the machine either.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium") or (
        "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None
    )
    if found is None:
        message = "chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def run_chromium(binary: str, tmp: Path, url: str, *extra: str, budget_ms: int) -> str:
    """Chromium headless on ``url`` with a virtual-time budget (timers run, the network is
    real); its stdout (the DOM with ``--dump-dom``)."""
    profile = tmp / f"profile-{len(list(tmp.iterdir()))}"
    done = subprocess.run(
        [
            binary,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",
            *extra,
            url,
        ],
        capture_output=True,
        timeout=45,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout.decode()


class Stats(HTMLParser):
    """Every ``data-stat`` element of a DOM: name -> (text, data-value or None)."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.values: dict[str, tuple[str, str | None]] = {}
        self._open: list[tuple[str, str | None, list[str]]] = []
        self.feed(dom)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        stat = found.get("data-stat")
        if stat is not None:
            self._open.append((stat, found.get("data-value"), []))

    def handle_data(self, data: str) -> None:
        for _, _, parts in self._open:
            parts.append(data)

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            stat, value, parts = self._open.pop()
            self.values[stat] = ("".join(parts), value)

    def text(self, stat: str) -> str:
        assert stat in self.values, f"the page shows no {stat}"
        return self.values[stat][0]

    def number(self, stat: str) -> float:
        assert stat in self.values, f"the page shows no {stat}"
        value = self.values[stat][1]
        assert value is not None, f"{stat} has no data-value"
        return float(value)


class PollHook:
    """An ASGI wrapper counting the page's JSON polls; after poll ``n`` it runs
    ``after_poll(n)``, and poll ``n + 1`` is answered only once that is done (so the page's
    later polls see what it changed, whatever the browser's virtual clock does)."""

    def __init__(
        self,
        app: Any,
        after_poll: Callable[[int], Awaitable[None]],
        observe: Callable[[], Any] = lambda: None,
    ) -> None:
        self.app = app
        self.after_poll = after_poll
        self.observe = observe
        self.served: list[Any] = []  # observe() as each poll was answered
        self.polls = 0
        self.pages = 0
        self.ready: asyncio.Event | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_poll = b"format=json" in scope.get("query_string", b"")
        if not is_poll:
            self.pages += 1
            await self.app(scope, receive, send)
            return
        if self.ready is not None:
            await self.ready.wait()
        self.polls += 1
        number = self.polls
        self.ready = asyncio.Event()
        try:
            self.served.append(self.observe())
            await self.app(scope, receive, send)
            await self.after_poll(number)
        finally:
            self.ready.set()


class Server:
    """uvicorn on a free 127.0.0.1 port in a thread with its own event loop; the stack is built
    on that loop (``setup`` returns the stack and the ASGI app to serve)."""

    def __init__(self, setup: Callable[[], Awaitable[tuple[CacheStack, Any]]]) -> None:
        self._setup = setup
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.error: BaseException | None = None
        self.cache: CacheStack | None = None
        self.server: Any = None
        self.thread = threading.Thread(target=self._main, name="stats-uvicorn", daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported by the test thread
            self.error = exc
            self.started.set()
        finally:
            self.loop.close()

    async def _serve(self) -> None:
        self.cache, app = await self._setup()
        config = uvicorn.Config(app, lifespan="off", log_level="warning", ws="none")
        self.server = uvicorn.Server(config)
        task = asyncio.ensure_future(self.server.serve(sockets=[self.sock]))
        while not self.server.started and not task.done():  # noqa: ASYNC110 (uvicorn's flag)
            await asyncio.sleep(0.01)
        self.started.set()
        try:
            await task
        finally:
            await self.cache.aclose()

    def __enter__(self) -> Server:
        self.thread.start()
        assert self.started.wait(20), "uvicorn did not start"
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.should_exit = True
        self.thread.join(20)
        self.sock.close()
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the server's loop (where the stack lives); its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(20)

    def stats(self) -> Any:
        async def read() -> Any:
            assert self.cache is not None
            return self.cache.get_stats(), self.cache.get_hit_rate()

        return self.call(read())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def page_requests(netlog: Path) -> list[str]:
    """The URLs of every request the page made (the requests in its network partition)."""
    log = json.loads(netlog.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log["events"]:
        params = event.get("params") or {}
        if event["type"] != start_job or "url" not in params:
            continue
        if "127.0.0.1" in params.get("network_isolation_key", "") or params.get(
            "initiator", ""
        ).startswith("http://127.0.0.1"):
            urls.append(params["url"])
    return urls


async def fill(cache: CacheStack, keys: int, reads: int, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(reads):
        key = f"{SECRET}:{rng.randrange(keys)}"
        await cache.get(key, lambda: {"value": 1})


def two_layers(proxy: TcpProxy, retry_after: float) -> CacheStack:
    from layercache import RedisLayer

    return CacheStack(
        [MemoryLayer(ttl=60, max_size=20), RedisLayer(url=proxy.url, ttl=600)],
        graceful_degradation={"retry_after": retry_after},
    )


def test_page_shows_get_stats_and_refreshes_itself(
    chromium: str, redis_proxy: TcpProxy, tmp_path: Path
) -> None:
    hook: PollHook | None = None
    stats_app: StatsASGIApp | None = None

    async def setup() -> tuple[CacheStack, Any]:
        nonlocal hook, stats_app
        cache = two_layers(redis_proxy, retry_after=60)
        await fill(cache, keys=40, reads=120, seed=1)  # L1 evicts: Redis hits and backfills
        redis_proxy.cut("refuse")
        await cache.get(f"{SECRET}:cold", lambda: 1)  # Redis fails: degraded for 60 s
        stats_app = stats_asgi_app(cache, refresh=1.0, title="shop cache")

        async def more_traffic(poll: int) -> None:
            if poll == 1:  # the page's first poll has been answered: change the numbers
                await fill(cache, keys=30, reads=50, seed=2)

        hook = PollHook(Starlette(routes=[Mount("/cache-stats", stats_app)]), more_traffic)
        return cache, hook

    netlog = tmp_path / "net.json"
    with Server(setup) as server:
        assert hook is not None
        before, _ = server.stats()
        dom = run_chromium(
            chromium,
            tmp_path,
            f"{server.url}/cache-stats/",
            "--dump-dom",
            f"--log-net-log={netlog}",
            budget_ms=6000,
        )
        stats, rates = server.stats()
        polls = hook.polls
    page = Stats(dom)

    # It polled, more than once, and the last polls carried the traffic done after the first.
    # (The budget may end with one poll answered but not drawn yet.)
    assert int(page.text("polls")) >= 2
    assert polls - 1 <= int(page.text("polls")) <= polls
    assert page.text("failures") == "0"
    assert stats.metrics.hits > before.metrics.hits
    assert int(page.text("metrics.hits")) == stats.metrics.hits != before.metrics.hits

    # Every number equals get_stats() (the stack is idle now).
    m = stats.metrics
    for name in ("hits", "misses", "fetches", "stale_hits", "refreshes", "write_failures"):
        assert int(page.text(f"metrics.{name}")) == getattr(m, name), name
    for name in ("stampede_dedupes", "backfills", "evictions", "errors"):
        assert int(page.text(f"metrics.{name}")) == getattr(m, name), name
    assert m.backfills > 0
    assert m.evictions > 0
    assert page.number("hit_rate") == rates.overall
    assert page.text("hit_rate") == f"{rates.overall * 100:.1f}%"
    for layer, lm in m.layers.items():
        prefix = f"layers.{layer}."
        assert int(page.text(prefix + "hits")) == lm.hits
        assert int(page.text(prefix + "misses")) == lm.misses
        assert page.number(prefix + "hit_rate") == rates.layers[layer]
        assert int(page.text(prefix + "latency.count")) == lm.latency.count
        assert page.number(prefix + "latency.mean") == lm.latency.mean
        assert page.number(prefix + "latency.p50") == lm.latency.p50
        assert page.number(prefix + "latency.p99") == lm.latency.p99
    assert m.layers["redis"].hits > 0
    redis = stats.layers[1]
    assert page.text("layers.memory.state") == "healthy"
    assert page.text("layers.redis.state") == "degraded"
    assert redis.degraded_until is not None
    assert page.number("layers.redis.degraded_until") == redis.degraded_until
    assert page.text("layers.redis.back_in").endswith(" s"), "a countdown while degraded"
    assert 0 < float(page.text("layers.redis.back_in").split()[0]) <= 60
    for name in ("in_flight_fetches", "background_refreshes"):
        assert int(page.text(name)) == getattr(stats, name)
    optional = ("open_circuits", "tag_index_keys")
    for name in optional:
        if getattr(stats, name, None) is not None:
            assert int(page.text(name)) == getattr(stats, name)
    single_flight = getattr(stats, "single_flight", None)
    if single_flight is not None:
        assert int(page.text("single_flight.in_flight")) == single_flight.in_flight
        assert page.text("single_flight.distributed") == "no"
    if hasattr(stats, "bus"):
        assert page.text("bus") == "no invalidation bus"
    if hasattr(stats, "degradations"):
        assert int(page.text("degradations")) == len(stats.degradations) > 0
    for operation, count in getattr(m, "errors_by_operation", {}).items():
        assert int(page.text(f"errors.{operation}")) == count

    # Nothing but the page's own origin was ever asked for, and no key is shown.
    urls = page_requests(netlog)
    assert f"{server.url}/cache-stats/" in urls
    assert sum(url.endswith("?format=json") for url in urls) == polls
    assert {urlsplit(url).netloc for url in urls} == {f"127.0.0.1:{server.port}"}
    assert SECRET not in dom


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_token_top_keys_and_screenshot(
    chromium: str, redis_proxy: TcpProxy, tmp_path: Path
) -> None:
    """A realistic dashboard: two layers, traffic between polls, one degraded episode (degraded,
    then recovered), top keys shown, behind a token the page passes on its polls."""

    hooks: list[PollHook] = []

    async def setup() -> tuple[CacheStack, Any]:
        cache = two_layers(redis_proxy, retry_after=0.3)
        stats_app = stats_asgi_app(cache, token="dash-token", show_keys=True, refresh=0.5)
        await fill(cache, keys=60, reads=300, seed=3)
        redis_proxy.cut("refuse")
        await fill(cache, keys=60, reads=40, seed=4)  # degraded: reads fall through
        redis_proxy.restore()
        deadline = asyncio.get_running_loop().time() + 10
        probe = 0
        while cache.get_stats().layers[1].degraded_until is not None:
            assert asyncio.get_running_loop().time() < deadline, "redis did not recover"
            await asyncio.sleep(0.05)
            probe += 1
            await cache.get(f"probe:{probe}", lambda: 0)  # an L1 miss: Redis is probed

        async def burst(poll: int) -> None:  # hot keys, then a wider key space
            await fill(cache, keys=15 if poll % 4 else 80, reads=40, seed=10 + poll)

        app = PollHook(
            Starlette(routes=[Mount("/cache-stats", stats_app)]),
            burst,
            lambda: cache.get_stats().metrics.hits,
        )
        hooks.append(app)
        return cache, app

    with Server(setup) as server:
        dom = run_chromium(
            chromium,
            tmp_path,
            f"{server.url}/cache-stats/?token=dash-token",
            "--dump-dom",
            budget_ms=3000,
        )
        stats, _ = server.stats()
        page = Stats(dom)
        polls = int(page.text("polls"))
        assert polls >= 2, "the polls carry the token in a header"
        assert page.text("failures") == "0"
        # Traffic runs after every poll: the page shows what its last drawn poll was served.
        assert int(page.text("metrics.hits")) == hooks[0].served[polls - 1]
        assert hooks[0].served[polls - 1] > hooks[0].served[0]
        assert stats.metrics.hits >= hooks[0].served[polls - 1]
        assert page.text("top.0.key").startswith(f"{SECRET}:")
        assert int(page.text("top.0.hits")) >= int(page.text("top.1.hits")) > 0
        if hasattr(stats, "degradations"):
            assert [e.event for e in stats.degradations][-1] == "recovered"
            assert int(page.text("degradations")) == len(stats.degradations)

        # Without the token the page itself is refused.
        refused = run_chromium(
            chromium, tmp_path, f"{server.url}/cache-stats/", "--dump-dom", budget_ms=500
        )
        assert "unauthorized" in refused
        assert "data-stat" not in refused

        shot = tmp_path / "stats-dashboard.png"
        run_chromium(
            chromium,
            tmp_path,
            f"{server.url}/cache-stats/?token=dash-token",
            f"--screenshot={shot}",
            "--window-size=1280,900",
            "--hide-scrollbars",
            budget_ms=6000,
        )
    assert png_size(shot) == (1280, 900)
    assert shot.stat().st_size > 20_000, "a blank page compresses far smaller"
    if os.environ.get("LAYERCACHE_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, DOCS / "stats-dashboard.png")


@pytest.fixture(autouse=True)
def _no_thread_leak() -> Iterator[None]:
    before = {t.name for t in threading.enumerate()}
    yield
    assert "stats-uvicorn" not in {t.name for t in threading.enumerate()} - before
