"""Generate the sync twins from their async sources (httpcore-style unasync).

The jobs, each a source of truth and its generated twin:

* ``src/layercache/_async/`` → ``src/layercache/_sync/``: every module (the stack
  orchestration), so ``_sync/`` is wholly generated and a file there without a source is left
  over (removed; ``--check`` reports it). The primitives the twins differ by live outside the
  twin folders, hand-written: ``_primitives/aio.py`` and ``_primitives/threads.py``;
* ``src/layercache/redis/layer.py`` (``RedisLayer``, redis-py's asyncio client) →
  ``src/layercache/redis/_sync_layer.py`` (``SyncRedisLayer``, redis-py's sync client), and the
  coordination components the same way: ``bus.py``, ``single_flight.py`` and ``tag_index.py`` →
  ``_sync_bus.py``, ``_sync_single_flight.py`` and ``_sync_tag_index.py``, and the layer's
  multi-key commands, ``_keyspace.py`` → ``_sync_keyspace.py``;
* ``src/layercache/memcached/layer.py`` (``MemcachedLayer``, aiomcache) →
  ``src/layercache/memcached/_sync_layer.py`` (``SyncMemcachedLayer``, pymemcache); the commands
  each sends live in the hand-written ``_aio_client.py`` and ``_sync_client.py``.

The script removes ``async``/``await``, rewrites imports of the asyncio primitives
(``_primitives.aio``) to the thread ones (``_primitives.threads``), unwraps ``Awaitable[X]``
annotations to ``X``, applies a job's exact replacements (each must match, so a changed source
fails loudly instead of producing a wrong twin), renames the names in its rename table, and
drops the regions between ``# unasync: begin async-only`` and ``# unasync: end async-only``
(code only the async class has, such as the hooks that build its sync twin). Plain code both
twins share (exceptions, stats, the bus's wire format) lives in plain modules they both import
(``redis/_wire.py``, ``_flight_lease.py``, ``_errors.py``...), so it exists once and both twins
raise the very same classes (``except RejectedMessageError`` catches either's). ``--check``
exits 1 when a generated file is stale, and the test command runs it.

Renaming fixes code, not prose, so the generator refuses (exit 1, ``file:line`` of each) a twin
that still speaks of the asyncio one: ``coroutine``, ``await``, ``asyncio``, ``event loop``,
``aclose`` and the like, or a duplicated operand such as ``getattr(x, "close") or getattr(x,
"close")``. Say it so it is true for both twins, add an exact replacement to the job, or, for
text really about the asyncio twin, put it between ``# unasync: begin async-wording`` and
``# unasync: end async-wording`` comment lines (kept in the twin). Naming the other twin
("the asyncio twin", "an asyncio stack") is allowed.

Usage: python scripts/unasync.py [--check]
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "layercache"

RENAMES = {
    "CacheStack": "SyncCacheStack",
    "CacheNamespace": "SyncCacheNamespace",
    # What a stack closes with itself: aclose() on the asyncio side, close() on the threads'.
    "Closable": "SyncClosable",
    "aclose": "close",
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
}
# The twin closes a layer with its plain close(): a sync stack cannot await an aclose().
ADAPTER_REPLACEMENTS = (
    (
        'getattr(layer, "aclose", None) or getattr(layer, "close", None)',
        'getattr(layer, "close", None)',
    ),
    # A driver that raises CacheLayerError itself is called directly when its method is native
    # to the stack: a coroutine function for the asyncio one, a plain one for the twin (whose
    # bind_method has already refused coroutine functions). Without these the twin never took
    # the direct path: two extra frames on every sync L2 hit.
    (
        '"raises_layer_errors", False) and is_async_callable(layer.get)',
        '"raises_layer_errors", False) and callable(layer.get)',
    ),
    (
        '"raises_layer_errors", False) and is_async_callable(layer.get_leased)',
        '"raises_layer_errors", False) and callable(layer.get_leased)',
    ),
)
STACK_REPLACEMENTS = (
    (
        '"""``CacheStack``: the layered read/write orchestration on asyncio.',
        '"""``CacheStack``: the layered read/write orchestration on threads.',
    ),
)

# The Redis layer: redis-py's asyncio package mirrors the sync one name for name.
REDIS_LAYER_RENAMES = {
    "redis.asyncio": "redis",
    "aioredis": "sync_redis",
    "AsyncIterator": "Iterator",
    "RedisLayer": "SyncRedisLayer",
    "aclose": "close",
    # A client built from url=: one per event loop (redis/_clients.py), one for every thread.
    "url_client": "sync_url_client",
    "fast_reads": "sync_fast_reads",
    "read_pubsub": "sync_read_pubsub",
}

# Exact text the Redis layer's twin differs in beyond renaming (applied before the renames).
REDIS_LAYER_REPLACEMENTS = (
    (
        "shared cache layer on redis-py's asyncio client",
        "shared cache layer on redis-py's sync client",
    ),
    ("from ._keyspace import", "from ._sync_keyspace import"),
    (
        "    One class for both stacks. ``RedisLayer(client=<redis.Redis or redis.RedisCluster>)``"
        """ (a
    sync client) returns a :class:`~layercache.redis.SyncRedisLayer`, the generated sync twin
    of this class, which :class:`~layercache.SyncCacheStack` calls directly (redis-py's sync
    client is thread-safe through its connection pool). ``RedisLayer(url=...)`` is this asyncio
    layer; given to ``SyncCacheStack`` it is swapped, once at construction, for a
    ``SyncRedisLayer`` with the same URL and options that owns its own sync client (closed by
    the stack's ``close()``). A ``RedisLayer`` built on an asyncio ``client`` is refused by
    ``SyncCacheStack`` with a ``TypeError``.

    redis.asyncio connections belong to the event loop that opened them. Built from ``url``,
    the layer keeps one client per event loop, made on first use in that loop and closed when
    the loop shuts down (``asyncio.run``, ``asyncio.Runner``), at most 8 loops at once: one
    layer serves any number of ``asyncio.run()`` calls, test clients, and threads running
    their own loops. A ``client`` you pass is used as given, so the layer then works on the
    loop that client was first used on only.
""",
        # (Applied before the renames: the text avoids the renamed class name.)
        """    The sync twin of the asyncio layer (``layercache.redis.layer``), generated from
    it by ``scripts/unasync.py``: built by the asyncio class when it is given a sync client, and
    by ``SyncCacheStack`` in place of an asyncio layer built from ``url=``. ``SyncCacheStack``
    calls its methods directly from the calling threads (redis-py's sync client is thread-safe
    through its connection pool). It declares ``is_blocking``, so ``CacheStack`` runs it in
    worker threads.
""",
    ),
    # A sync layer blocks on the network: the async stack must run it in a worker thread.
    (
        "    # Methods are coroutines (ignored for them); the sync twin blocks and says so, so that"
        " an\n    # asyncio stack runs it in worker threads.\n    is_blocking = False\n",
        "    # Methods block on the network: CacheStack runs them in worker threads\n"
        "    # (SyncCacheStack calls them directly).\n    is_blocking = True\n",
    ),
)

# The memcached layer: the commands differ by client library (aiomcache, pymemcache) and live in
# hand-written modules with the same methods, _aio_client.py and _sync_client.py.
MEMCACHED_LAYER_RENAMES = {
    "MemcachedLayer": "SyncMemcachedLayer",
    "AioMemcached": "SyncMemcached",
    "aclose": "close",
}
MEMCACHED_LAYER_REPLACEMENTS = (
    (
        '"""``MemcachedLayer``: a shared cache layer in memcached, on aiomcache (asyncio)."""',
        '"""``MemcachedLayer``: a shared cache layer in memcached, on pymemcache (threads)."""',
    ),
    (
        "from ._aio_client import AioMemcached, MemcacheClient, init_signature, is_sync_client",
        "from ._sync_client import MemcacheClient, SyncMemcached",
    ),
    (
        """    One class for both stacks. ``MemcachedLayer(client=<a pymemcache client>)`` returns a
    :class:`~layercache.SyncMemcachedLayer`, the generated sync twin of this class (on
    pymemcache), which :class:`~layercache.SyncCacheStack` calls directly.
    ``MemcachedLayer(servers=...)`` is the asyncio layer (on aiomcache); given to
    ``SyncCacheStack`` it is swapped, once at construction, for a ``SyncMemcachedLayer`` with
    the same servers and options (closed by the stack's ``close()``). A ``MemcachedLayer``
    built on an aiomcache ``client`` is refused by ``SyncCacheStack`` with a ``TypeError``.
""",
        # (Applied before the renames: the text avoids the renamed class name.)
        """    The sync twin of the asyncio layer (``layercache.memcached.layer``), generated
    from it by ``scripts/unasync.py``, on pymemcache: built by the asyncio class when it is
    given a pymemcache client, and by ``SyncCacheStack`` in place of an asyncio layer built
    from ``servers=``. ``SyncCacheStack`` calls its methods directly from the calling threads
    (one pooled client per server). It declares ``is_blocking``, so ``CacheStack`` runs it in
    worker threads.
""",
    ),
    (
        "        client: An ``aiomcache.Client`` (``FlagClient``), used as given and never closed."
        """ Or a
            pymemcache client (``Client``, ``PooledClient``, ``HashClient``): then the sync twin
            is returned.""",
        "        client: A pymemcache client (``Client``, ``PooledClient``, ``HashClient``), used"
        """ as
            given and never closed.""",
    ),
    (
        "        max_connections: Connections per server (per event loop for this asyncio layer).",
        "        max_connections: Connections per server.",
    ),
    (
        "    # Methods are coroutines (ignored for them); the sync twin blocks and says so, so that"
        " an\n    # asyncio stack runs it in worker threads.\n    is_blocking = False\n",
        "    # Methods block on the network: CacheStack runs them in worker threads\n"
        "    # (SyncCacheStack calls them directly).\n    is_blocking = True\n",
    ),
)

# The Redis coordination components (bus, single-flight coordinator, tag index): the same
# client renames, plus the twins' own names and primitives.
COORDINATION_RENAMES = {
    **{k: v for k, v in REDIS_LAYER_RENAMES.items() if k != "RedisLayer"},
    "_async": "_sync",
    "RedisInvalidationBus": "SyncRedisInvalidationBus",
    "RedisSingleFlightCoordinator": "SyncRedisSingleFlightCoordinator",
    "RedisTagIndex": "SyncRedisTagIndex",
}
_SYNC_LAYER_IMPORT = ("from .layer import RedisClient", "from ._sync_layer import RedisClient")
# The sync cluster client loads its slot map in its constructor: nothing to initialize.
_NO_CLUSTER_INIT = (
    "await self._client.initialize()",
    "pass  # the sync cluster client initializes when built",
)
TAG_INDEX_REPLACEMENTS = (
    _SYNC_LAYER_IMPORT,
    ("from ._keyspace import", "from ._sync_keyspace import"),
    _NO_CLUSTER_INIT,
    ("self._needs_initialize = self._is_cluster", "self._needs_initialize = False"),
    (
        "from collections.abc import AsyncIterator, Iterable, Iterator, Sequence",
        "from collections.abc import Iterable, Iterator, Sequence",
    ),
)
BUS_REPLACEMENTS = (
    (
        "await bounded(self._subscriber.initialize(), self.timeout)",
        "pass  # the sync cluster client initializes when built",
    ),
)
SINGLE_FLIGHT_REPLACEMENTS = (_SYNC_LAYER_IMPORT,)
# The multi-key commands of the layer (and the cluster client's first slot-map load).
KEYSPACE_REPLACEMENTS = (
    ("import asyncio\n", "import threading\n"),
    ("asyncio.Lock()", "threading.Lock()"),
    # The sync cluster client loads its slot map in its constructor: nothing to initialize.
    ("self.pending = is_cluster\n", "self.pending = False\n"),
    _NO_CLUSTER_INIT,
)

# The module of the asyncio primitives and that of the thread ones (every job, in imports).
PRIMITIVES = ("_primitives.aio", "_primitives.threads")

# (source, target, renames, replacements) per generated file. Every other ``_async/*.py`` is
# generated into ``_sync/`` too, with RENAMES and ASYNC_REPLACEMENTS (see async_jobs()).
JOBS: tuple[tuple[str, str, dict[str, str], tuple[tuple[str, str], ...]], ...] = (
    ("_async/adapter.py", "_sync/adapter.py", RENAMES, ADAPTER_REPLACEMENTS),
    ("_async/flights.py", "_sync/flights.py", RENAMES, ()),
    ("_async/stack.py", "_sync/stack.py", RENAMES, STACK_REPLACEMENTS),
    ("_async/tag_index.py", "_sync/tag_index.py", RENAMES, ()),
    ("redis/layer.py", "redis/_sync_layer.py", REDIS_LAYER_RENAMES, REDIS_LAYER_REPLACEMENTS),
    (
        "redis/tag_index.py",
        "redis/_sync_tag_index.py",
        COORDINATION_RENAMES,
        TAG_INDEX_REPLACEMENTS,
    ),
    ("redis/bus.py", "redis/_sync_bus.py", COORDINATION_RENAMES, BUS_REPLACEMENTS),
    ("redis/_keyspace.py", "redis/_sync_keyspace.py", COORDINATION_RENAMES, KEYSPACE_REPLACEMENTS),
    (
        "memcached/layer.py",
        "memcached/_sync_layer.py",
        MEMCACHED_LAYER_RENAMES,
        MEMCACHED_LAYER_REPLACEMENTS,
    ),
    (
        "redis/single_flight.py",
        "redis/_sync_single_flight.py",
        COORDINATION_RENAMES,
        SINGLE_FLIGHT_REPLACEMENTS,
    ),
)

# Exact replacements of an ``_async`` module not listed in JOBS, by file name.
ASYNC_REPLACEMENTS: dict[str, tuple[tuple[str, str], ...]] = {}


def async_jobs() -> list[tuple[str, str, dict[str, str], tuple[tuple[str, str], ...]]]:
    """JOBS, plus one for every ``_async/*.py`` JOBS does not list (``_sync/`` is generated
    whole)."""
    listed = {source for source, _, _, _ in JOBS}
    extra = [
        (source, f"_sync/{path.name}", RENAMES, ASYNC_REPLACEMENTS.get(path.name, ()))
        for path in sorted((PACKAGE / "_async").glob("*.py"))
        if (source := f"_async/{path.name}") not in listed
    ]
    return [*JOBS, *extra]


HEADER = (
    "# DO NOT EDIT: generated from src/layercache/{name} by scripts/unasync.py.\n"
    "# Change the async source and run `python scripts/unasync.py`.\n"
)

# ``from .._primitives.aio import``, ``import layercache._primitives.aio`` and the like.
_PRIMITIVES_IMPORT = re.compile(
    rf"^([ \t]*(?:from|import)[ \t]+[\w.]*?){re.escape(PRIMITIVES[0])}\b", re.MULTILINE
)

_ASYNC_ONLY = re.compile(
    r"^[ \t]*# unasync: begin async-only\n.*?^[ \t]*# unasync: end async-only\n",
    re.DOTALL | re.MULTILINE,
)


def _unwrap_awaitable(text: str) -> str:
    """``Awaitable[X]`` → ``X`` with nested brackets handled."""
    out: list[str] = []
    i = 0
    marker = "Awaitable["
    while True:
        j = text.find(marker, i)
        if j < 0:
            out.append(text[i:])
            return "".join(out)
        if j > 0 and (text[j - 1].isalnum() or text[j - 1] == "_"):
            out.append(text[i : j + len(marker)])
            i = j + len(marker)
            continue
        out.append(text[i:j])
        depth = 1
        k = j + len(marker)
        start = k
        while depth:
            if text[k] == "[":
                depth += 1
            elif text[k] == "]":
                depth -= 1
            k += 1
        out.append(text[start : k - 1])
        i = k


def convert(
    source: str,
    renames: dict[str, str] = RENAMES,
    replacements: tuple[tuple[str, str], ...] = (),
) -> str:
    """The sync twin of one async module."""
    text = _ASYNC_ONLY.sub("", source)
    for old, new in replacements:
        if old not in text:
            raise SystemExit(f"unasync: replacement source text not found: {old!r}")
        text = text.replace(old, new)
    text = _PRIMITIVES_IMPORT.sub(rf"\g<1>{PRIMITIVES[1]}", text)
    text = re.sub(r"\basync (def|with|for)\b", r"\1", text)
    text = re.sub(r"\bawait ", "", text)
    text = _unwrap_awaitable(text)
    text = re.sub(r"\bAwaitable, ", "", text)
    for old, new in renames.items():
        text = re.sub(rf"\b{re.escape(old)}\b", new, text)
    return text


def write_or_check(
    wanted: dict[Path, str], check: bool, command: str, leftovers: Iterable[Path] = ()
) -> int:
    """Write the generated files (and delete ``leftovers``), or with ``check`` report every
    stale one and return 1. Shared by this script and scripts/unasync_tests.py."""
    stale: list[str] = []
    for path in sorted(leftovers):
        if check:
            stale.append(f"{path.relative_to(ROOT)} (left over)")
        else:
            path.unlink()
            print(f"removed {path.relative_to(ROOT)}")
    for path, text in wanted.items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if check:
            stale.append(str(path.relative_to(ROOT)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"stale generated files (run `{command}`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


# -- async wording in a sync twin ----------------------------------------------------------------

# Words that are wrong in a sync twin: code the renames missed, or prose that describes only the
# asyncio twin (``SyncCacheStack.wrap`` "returns a coroutine function"). Renaming cannot fix
# prose, so the generator refuses it instead.
ASYNC_WORDING = re.compile(
    r"\b(?:coroutines?|await(?:s|ed|ing|ables?)?|asyncio|event[ -]loops?|async (?:def|with|for)"
    r"|aclose|__aenter__|__aexit__|AsyncIterator)\b",
    re.IGNORECASE,
)
# ``getattr(x, "aclose") or getattr(x, "close")`` renamed into ``... "close") or ... "close")``.
# Operands are calls, dotted names or string literals (plain words are prose: "it or it").
DUPLICATED_OPERAND = re.compile(
    r"(?<![\w.])([A-Za-z_][\w.]*\([^()\n]*\)|[A-Za-z_]\w*(?:\.\w+)+|\"[^\"\n]*\"|'[^'\n]*')"
    r" (?:or|and) \1(?![\w.(\[])"
)
# Text that is about the asyncio twin on purpose keeps its words between these comment lines
# (they stay in the twin, so its reader sees why). Prefer wording true for both twins.
_ALLOWED_WORDING = re.compile(
    r"^[ \t]*# unasync: begin async-wording\n.*?^[ \t]*# unasync: end async-wording\n",
    re.DOTALL | re.MULTILINE,
)
# Naming the other twin is true in both: "the asyncio twin", "an asyncio layer".
_NAMES_THE_OTHER_TWIN = re.compile(r"\basyncio (?:twin|class|layer|stack)s?\b", re.IGNORECASE)


def async_wording(text: str) -> list[tuple[int, str, str]]:
    """``(line number, offending text, line)`` for every async word or duplicated operand in a
    generated twin, outside ``# unasync: begin async-wording`` regions."""
    allowed_lines: set[int] = set()
    for region in _ALLOWED_WORDING.finditer(text):
        first = text.count("\n", 0, region.start()) + 1
        allowed_lines.update(range(first, first + region.group(0).count("\n")))
    found: list[tuple[int, str, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if number in allowed_lines:
            continue
        checked = _NAMES_THE_OTHER_TWIN.sub("", line)
        hits = [m.group(0) for m in ASYNC_WORDING.finditer(checked)]
        hits += [m.group(0) for m in DUPLICATED_OPERAND.finditer(checked)]
        found += [(number, hit, line.strip()) for hit in hits]
    return found


def check_wording(wanted: dict[Path, str], sources: dict[Path, str]) -> int:
    """Report every async word in the generated twins (``file:line``); 1 if there is any."""
    problems = [
        f"{path.relative_to(ROOT)}:{number}: {hit!r} (from {sources[path]}): {line}"
        for path, text in wanted.items()
        for number, hit, line in async_wording(text)
    ]
    if not problems:
        return 0
    print(
        "unasync: async wording in generated sync code. Say it so it is true for both twins in"
        " the async source, add an exact replacement to the job in scripts/unasync.py, or, for"
        " text about the asyncio twin only, put it between '# unasync: begin async-wording' and"
        " '# unasync: end async-wording':",
        file=sys.stderr,
    )
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    return 1


def generate() -> tuple[dict[Path, str], dict[Path, str]]:
    """Every twin's wanted text, and the source each comes from."""
    wanted: dict[Path, str] = {}
    sources: dict[Path, str] = {}
    for source, name, renames, replacements in async_jobs():
        text = (PACKAGE / source).read_text(encoding="utf-8")
        wanted[PACKAGE / name] = HEADER.format(name=source) + convert(text, renames, replacements)
        sources[PACKAGE / name] = f"src/layercache/{source}"
    return wanted, sources


def leftovers(wanted: dict[Path, str]) -> list[Path]:
    """Files of ``_sync/`` that no source generates (a module removed from ``_async/``)."""
    return [p for p in (PACKAGE / "_sync").glob("*.py") if p not in wanted]


def main(argv: list[str]) -> int:
    wanted, sources = generate()
    if check_wording(wanted, sources):
        return 1
    return write_or_check(wanted, "--check" in argv, "python scripts/unasync.py", leftovers(wanted))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
