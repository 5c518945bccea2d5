"""The examples run as documented, as separate processes against a real ``redis-server`` (the
session fixture): ``examples/distributed_service.py URL`` (the two-instance demo) and
``... URL --serve HOST:PORT`` (one service instance per process)."""

from __future__ import annotations

import ast
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from _redis_server import RedisServer, find_free_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "distributed_service.py"
GUIDE = ROOT / "docs" / "distributed.md"
SECRET = "example-test-secret-" + "x" * 32


def run_example(*args: str, secret: str | None = SECRET) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("LAYERCACHE_INVALIDATION_SECRET", None)
    if secret is not None:
        env["LAYERCACHE_INVALIDATION_SECRET"] = secret
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        capture_output=True,
        text=True,
        timeout=50,
        stdin=subprocess.DEVNULL,
        env=env,
        check=False,
    )


@pytest.mark.redis
@pytest.mark.slow
def test_the_demo_shows_one_fetch_and_the_invalidation_reaching_the_other_instance(
    redis_clean: RedisServer,
) -> None:
    done = run_example(redis_clean.url)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "cold key: 20 concurrent requests on 2 instances -> 1 database load(s)" in lines
    assert "instance b saw the invalidation of ['v1:product:1'] from a" in lines
    assert "instance b now reads price 25.0" in lines
    assert "generation: instance a bumped 1 -> 2, instance b follows" in lines
    assert "is not set" not in done.stdout  # the secret came from the environment
    # The demo removed what it wrote; what may remain are the fences of its invalidations (a
    # NUL after the prefix, never a cache key; they expire after the layer's lease_ttl).
    with redis.Redis.from_url(redis_clean.url) as client:
        left = client.keys("*")
    assert all(b"\x00fence:" in key for key in left), left


@pytest.mark.redis
@pytest.mark.slow
def test_the_demo_without_a_secret_uses_a_one_off_one(redis_clean: RedisServer) -> None:
    done = run_example(redis_clean.url, secret=None)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "LAYERCACHE_INVALIDATION_SECRET is not set" in done.stdout


def test_a_bad_command_line_is_a_usage_error() -> None:
    for args in ((), ("redis://127.0.0.1:1/0", "--serve", "nowhere")):
        done = run_example(*args)
        assert done.returncode == 2
        assert "usage:" in done.stderr


# -- two service processes ---------------------------------------------------------------------


class Instance:
    """One ``--serve`` process and a line-protocol connection to it."""

    def __init__(self, url: str) -> None:
        self.port = find_free_port()
        env = {**os.environ, "LAYERCACHE_INVALIDATION_SECRET": SECRET}
        self.process = subprocess.Popen(
            [sys.executable, str(EXAMPLE), url, "--serve", f"127.0.0.1:{self.port}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        self.sock: socket.socket | None = None

    def wait_serving(self, timeout: float = 20.0) -> None:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        assert ready, "the instance did not start serving in time"
        line = self.process.stdout.readline()
        if not line.startswith("serving on"):
            raise AssertionError(f"unexpected output {line!r}; stderr: {self.stop()}")
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.reader = self.sock.makefile("r")

    def ask(self, line: str) -> str:
        assert self.sock is not None
        self.sock.sendall(line.encode() + b"\n")
        return self.reader.readline().strip()

    def stop(self) -> str:
        """SIGTERM (a graceful shutdown); returns stderr."""
        if self.sock is not None:
            self.reader.close()
            self.sock.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            _, err = self.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
        return err


@pytest.fixture
def two_instances(redis_clean: RedisServer) -> Iterator[tuple[Instance, Instance]]:
    instances = [Instance(redis_clean.url), Instance(redis_clean.url)]
    try:
        for instance in instances:
            instance.wait_serving()
        yield instances[0], instances[1]
    finally:
        for instance in instances:
            if instance.process.poll() is None:
                instance.stop()


@pytest.mark.redis
@pytest.mark.slow
def test_two_service_processes_share_the_cache(two_instances: tuple[Instance, Instance]) -> None:
    a, b = two_instances
    assert json.loads(a.ask("product 1"))["price"] == 30.0
    assert json.loads(b.ask("product 1"))["price"] == 30.0
    assert json.loads(b.ask("catalogue 7"))[0]["price"] == 30.0
    assert a.ask("price 1 25") == "ok"
    # B's memory layer held the old values; the bus drops them (asynchronously: poll).
    deadline = time.monotonic() + 5
    while (
        json.loads(b.ask("product 1"))["price"] != 25.0
        or json.loads(b.ask("catalogue 7"))[0]["price"] != 25.0
    ):
        assert time.monotonic() < deadline, "instance b still serves the old price"
        time.sleep(0.01)
    assert a.ask("price 99 1") == "error: no such product"
    assert a.ask("hello").startswith("error:")
    for instance in (a, b):
        err = instance.stop()
        assert instance.process.returncode == 0, err
        assert "Traceback" not in err, err


# -- the guide shows the example's code --------------------------------------------------------


def test_the_guide_shows_the_example_as_it_is() -> None:
    """Every function and class of the guide's complete setup is the example's, verbatim (so
    the code in docs/distributed.md is the code the tests above run)."""
    guide = GUIDE.read_text()
    section = guide.split("## A complete multi-instance setup", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert block is not None
    code = block.group(1)
    example = EXAMPLE.read_text()
    tree = ast.parse(code)
    definitions = [
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    ]
    assert {node.name for node in definitions} >= {
        "make_client",
        "build_cache",
        "Database",
        "ProductService",
        "open_instance",
        "serve",
    }
    for node in definitions:
        source = ast.get_source_segment(code, node)
        assert source is not None
        if node.decorator_list:
            first = node.decorator_list[0].lineno - 1
            source = "\n".join(code.splitlines()[first : node.lineno - 1]) + "\n" + source
        assert source in example, f"{node.name} differs between the guide and the example"
