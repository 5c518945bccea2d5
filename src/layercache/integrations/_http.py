"""HTTP caching rules shared by the web integrations (framework-free, no I/O).

What a shared HTTP cache in front of an application decides, as plain functions over plain
data: which requests may be answered from the cache, which responses may be stored and for how
long, the cache key (path, sorted query, host, the request headers a ``Vary`` names), and the
stored form of a response (a ``dict`` of ``str``/``int``/``float``/``list`` only, so it
round-trips through every layer's serializer, JSON in Redis included).

Header lists are sequences of ``(name, value)`` ``str`` pairs. A server's raw header bytes map
to ``str`` with ``latin-1`` (one character per byte, so the round trip is exact); names are
compared case-insensitively. The ASGI middleware (:mod:`layercache.integrations.asgi`) is one
user; an aiohttp middleware can use the same functions.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import quote

from .. import CacheOptions, validate_key, validate_prefix

__all__ = [
    "Settings",
    "check_settings",
    "CACHEABLE_STATUSES",
    "DEFAULT_MAX_BODY_SIZE",
    "BYPASS_HEADER",
    "HOP_BY_HOP",
    "MAX_PLAIN_KEY",
    "OWN_HEADERS",
    "Headers",
    "StoredResponse",
    "Verdict",
    "build_key",
    "cache_control",
    "check_exclude",
    "check_prefix",
    "check_statuses",
    "check_tags",
    "finish_key",
    "AppFailed",
    "Pass",
    "ReadyMemo",
    "entry_ttl",
    "fetch_options",
    "stable_options",
    "not_pass",
    "report",
    "seconds",
    "freeze",
    "header_values",
    "hit_headers",
    "is_vary_marker",
    "path_excluded",
    "ready_headers",
    "request_bypass",
    "response_verdict",
    "sorted_query",
    "storable_headers",
    "tags_of",
    "thaw",
    "vary_marker",
    "vary_names",
    "vary_suffix",
]

Headers = Sequence[tuple[str, str]]

#: Statuses stored by default: the 2xx/3xx ones RFC 9110 calls heuristically cacheable,
#: without partial content (206) and temporary redirects (302, 303, 307). Anything outside
#: 200-399 is never stored, whatever the option says.
CACHEABLE_STATUSES: frozenset[int] = frozenset({200, 203, 204, 300, 301, 308})
DEFAULT_MAX_BODY_SIZE = 1024 * 1024
#: Headers that describe one connection, never stored (RFC 9110 section 7.6.1).
HOP_BY_HOP: frozenset[str] = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
#: Headers the cache itself owns on what it sends: never stored.
OWN_HEADERS: frozenset[str] = frozenset({"x-cache", "age", "x-cache-bypass"})
#: A response header the application sets to keep one response out of the cache.
BYPASS_HEADER = "x-cache-bypass"
# Longest key kept verbatim (a namespace adds its own prefix on top); longer keys are hashed.
MAX_PLAIN_KEY = 512
FORMAT = 1
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


def header_values(headers: Headers, name: str) -> list[str]:
    """Every value of header ``name`` (lower-case), in order."""
    return [value for key, value in headers if key.lower() == name]


def cache_control(values: Iterable[str]) -> dict[str, str | None]:
    """``Cache-Control`` directives (lower-case names; quoted arguments unquoted)."""
    directives: dict[str, str | None] = {}
    for value in values:
        for part in value.split(","):
            name, sep, argument = part.partition("=")
            name = name.strip().lower()
            if not name:
                continue
            directives[name] = argument.strip().strip('"') if sep else None
    return directives


def check_statuses(statuses: Collection[int] | None) -> frozenset[int]:
    """The statuses that may be stored: ``None`` is :data:`CACHEABLE_STATUSES`; others must be
    ints within 200-399 (non-2xx/3xx statuses are never cached)."""
    if statuses is None:
        return CACHEABLE_STATUSES
    frozen = frozenset(statuses)
    for status in frozen:
        if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 399:
            raise ValueError(f"cacheable statuses must be ints within 200-399, not {status!r}")
    return frozen


def request_bypass(method: str, headers: Headers, *, credentials_allowed: bool) -> str | None:
    """Why a request must go straight to the application (``None``: it may use the cache).

    Only ``GET`` and ``HEAD`` use the cache; never a request with ``Authorization`` or
    ``Cookie`` (unless ``credentials_allowed``: a key resolver that tells users apart),
    ``Range``, or ``Cache-Control: no-store`` / ``private``.
    """
    if method != "GET" and method != "HEAD":
        return "method"
    control: list[str] | None = None
    for name, value in headers:
        lowered = name.lower()
        if lowered == "authorization" or lowered == "cookie":
            if not credentials_allowed:
                return "credentials"
        elif lowered == "range":
            return "range"
        elif lowered == "cache-control":
            control = [value] if control is None else [*control, value]
    if control is not None:
        directives = cache_control(control)
        if "no-store" in directives or "private" in directives:
            return "request cache-control"
    return None


def sorted_query(query: str) -> str:
    """The query string with its parameters sorted by name (stable: repeated parameters keep
    their order, which applications may rely on); the raw encoding is kept."""
    if not query:
        return ""
    parts = [part for part in query.split("&") if part]
    if len(parts) < 2:
        return "&".join(parts)
    parts.sort(key=lambda part: part.partition("=")[0])
    return "&".join(parts)


def vary_names(headers: Headers) -> tuple[str, ...] | None:
    """The request headers a response's ``Vary`` names (sorted, lower-case, no duplicates);
    ``None`` for ``Vary: *`` (never cached)."""
    names: set[str] = set()
    for value in header_values(headers, "vary"):
        for part in value.split(","):
            name = part.strip().lower()
            if name == "*":
                return None
            if name:
                names.add(name)
    return tuple(sorted(names))


def vary_suffix(names: Sequence[str], request_headers: Headers) -> str:
    """The key part for the varied request headers: ``name=value`` per name (repeated header
    lines joined with ``, ``, surrounding whitespace dropped; absent and empty are the same)."""
    if not names:
        return ""
    wanted = {name: [] for name in names}  # type: dict[str, list[str]]
    for name, value in request_headers:
        bucket = wanted.get(name.lower())
        if bucket is not None:
            bucket.append(value.strip())
    rendered = "&".join(
        f"{name}={quote(', '.join(wanted[name]), safe='', errors='surrogatepass')}"
        for name in names
    )
    return f"|vary:{rendered}"


def build_key(
    prefix: str,
    path: str,
    query: str,
    *,
    host: str | None = None,
    vary: str = "",
    extra: str | None = None,
) -> str:
    """The cache key of a request, the same for ``GET`` and ``HEAD``.

    ``prefix:host/path?sorted-query`` (path percent-quoted, so it is printable), then the
    :func:`vary_suffix` and ``|key:`` + ``extra`` (a key resolver's part). A key longer than
    512 characters, or one that :func:`layercache.validate_key` refuses, becomes
    ``prefix:sha256:<hex>`` of the whole text: distinct requests keep distinct keys.
    """
    rendered_path = quote(path, safe=_PATH_SAFE, errors="surrogatepass")
    text = f"{prefix}:{host or ''}{rendered_path}?{sorted_query(query)}{vary}"
    if extra is not None:
        text = f"{text}|key:{extra}"
    return finish_key(prefix, text)


def finish_key(prefix: str, text: str) -> str:
    """``text`` as a valid cache key: itself when it is at most 512 characters of valid key
    text, else ``prefix:sha256:<hex of text>``."""
    if len(text) <= MAX_PLAIN_KEY:
        try:
            return validate_key(text)
        except ValueError:
            pass
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{prefix}:sha256:{digest}"


def check_prefix(prefix: str) -> str:
    """A valid key prefix (``ValueError`` otherwise)."""
    validate_prefix(prefix)
    return prefix


@dataclass(frozen=True)
class Verdict:
    """What to do with a response: store it for ``ttl`` seconds (``reason`` is ``None``), or
    not (``reason`` says why). ``error`` marks a server error (5xx), which a stale response
    may replace (stale-if-error). ``vary`` is the varied request headers of a storable one."""

    ttl: float
    reason: str | None
    vary: tuple[str, ...] = ()
    error: bool = False


def response_verdict(
    status: int,
    headers: Headers,
    *,
    ttl: float,
    statuses: Collection[int] = CACHEABLE_STATUSES,
    respect_cache_control: bool = False,
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
) -> Verdict:
    """Whether a response (status and headers; the body's size is checked as it comes) may be
    stored, and for how long.

    Never stored: statuses outside ``statuses`` (5xx are flagged ``error``), ``Set-Cookie``,
    ``Cache-Control: no-store``, ``private`` or ``no-cache``, ``Vary: *``, the
    ``X-Cache-Bypass`` header (any value), a ``Content-Length`` above ``max_body_size``. With
    ``respect_cache_control``, ``s-maxage`` (else ``max-age``) sets the TTL, and 0 means not
    stored; without, ``ttl`` applies.
    """
    if status not in statuses:
        return Verdict(0.0, f"status {status}", error=status >= 500)
    control: list[str] = []
    vary: list[str] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == "set-cookie":
            return Verdict(0.0, "set-cookie")
        if lowered == "cache-control":
            control.append(value)
        elif lowered == "vary":
            vary.append(value)
        elif lowered == BYPASS_HEADER:
            return Verdict(0.0, "bypass header")
        elif lowered == "content-length":
            try:
                length = int(value.strip())
            except ValueError:
                return Verdict(0.0, "bad content-length")
            if length > max_body_size:
                return Verdict(0.0, "body too large")
    varied = vary_names([("vary", value) for value in vary])
    if varied is None:
        return Verdict(0.0, "vary *")
    directives = cache_control(control)
    for directive in ("no-store", "private", "no-cache"):
        if directive in directives:
            return Verdict(0.0, f"cache-control {directive}")
    lifetime = ttl
    if respect_cache_control:
        for directive in ("s-maxage", "max-age"):
            if directive in directives:
                argument = directives[directive]
                try:
                    lifetime = float(int(argument or ""))
                except ValueError:
                    return Verdict(0.0, f"bad {directive}")
                break
    if lifetime <= 0:
        return Verdict(0.0, "zero lifetime")
    return Verdict(lifetime, None, varied)


def storable_headers(headers: Headers) -> list[list[str]]:
    """The headers kept in a stored response: without hop-by-hop ones (and those a
    ``Connection`` header names) nor the cache's own (``X-Cache``, ``Age``, ``X-Cache-Bypass``)."""
    dropped = set(HOP_BY_HOP) | OWN_HEADERS
    for value in header_values(headers, "connection"):
        dropped.update(part.strip().lower() for part in value.split(","))
    return [[name, value] for name, value in headers if name.lower() not in dropped]


@dataclass(frozen=True)
class StoredResponse:
    """A response read back from the cache."""

    status: int
    headers: list[list[str]]
    body: bytes
    stored_at: float
    ttl: float

    def age(self, now: float) -> int:
        return max(0, int(now - self.stored_at))

    def is_stale(self, now: float) -> bool:
        return now >= self.stored_at + self.ttl


def freeze(status: int, headers: Headers, body: bytes, *, ttl: float, now: float) -> dict[str, Any]:
    """The stored form of a response: ``{"v", "status", "headers", "body", "at", "ttl"}``;
    the body is a ``latin-1`` ``str`` (exact for any bytes, 1:1 for ASCII text in JSON)."""
    return {
        "v": FORMAT,
        "status": status,
        "headers": storable_headers(headers),
        "body": body.decode("latin-1"),
        "at": now,
        "ttl": ttl,
    }


def vary_marker(names: Sequence[str], *, ttl: float, now: float) -> dict[str, Any]:
    """What the request's plain key holds when responses vary: the varied header names (the
    responses themselves are under keys with :func:`vary_suffix`)."""
    return {"v": FORMAT, "vary": list(names), "at": now, "ttl": ttl}


def is_vary_marker(value: Any) -> tuple[str, ...] | None:
    """The header names of a valid vary marker, else ``None``."""
    if (
        type(value) is dict
        and value.get("v") == FORMAT
        and "status" not in value
        and isinstance(names := value.get("vary"), list)
        and names
        and all(type(name) is str for name in names)
    ):
        return tuple(names)
    return None


def thaw(value: Any) -> StoredResponse | None:
    """A stored response back, or ``None`` when ``value`` has not the shape :func:`freeze`
    writes (foreign data under the key, another format): treat it as a miss."""
    if type(value) is not dict or value.get("v") != FORMAT:
        return None
    status, headers, body = value.get("status"), value.get("headers"), value.get("body")
    at, ttl = value.get("at"), value.get("ttl")
    if (
        type(status) is not int
        or not 100 <= status <= 999
        or type(body) is not str
        or not isinstance(at, int | float)
        or not isinstance(ttl, int | float)
        or not isinstance(headers, list)
    ):
        return None
    for pair in headers:
        if not (
            isinstance(pair, list | tuple)
            and len(pair) == 2
            and type(pair[0]) is str
            and type(pair[1]) is str
        ):
            return None
    try:
        raw = body.encode("latin-1")
    except UnicodeEncodeError:
        return None
    return StoredResponse(status, [list(pair) for pair in headers], raw, float(at), float(ttl))


def ready_headers(stored: StoredResponse) -> list[tuple[str, str]]:
    """The headers of a response served from the cache before ``Age`` and ``X-Cache``: the
    stored ones, and ``Content-Length`` when they have none (a body that was streamed is sent
    in one piece)."""
    out = [(name, value) for name, value in stored.headers]
    if stored.status not in (204, 304) and not any(
        name.lower() == "content-length" for name, _ in out
    ):
        out.append(("content-length", str(len(stored.body))))
    return out


def hit_headers(stored: StoredResponse, x_cache: str, now: float) -> list[tuple[str, str]]:
    """The headers to send with a response served from the cache: :func:`ready_headers`,
    then ``Age`` and ``X-Cache``."""
    out = ready_headers(stored)
    out.append(("age", str(stored.age(now))))
    out.append(("x-cache", x_cache))
    return out


class ReadyMemo:
    """The ready-to-send form of the responses last read under each key (bounded).

    A layer that keeps Python objects (``MemoryLayer``) hands every hit the same stored
    ``dict``: its checked, decoded form is built once and found again by the cache key while
    the stack still returns that very object (compared by identity, so a refreshed,
    invalidated or replaced entry is never served from here). A layer that decodes each read
    (Redis) returns a new object every time: such reads miss here and replace the key's entry.
    The memo keeps at most ``max_entries`` keys and about ``max_bytes`` of bodies; past either
    it starts over (a forgotten entry only costs one decoding again).
    """

    __slots__ = ("_entries", "_size", "max_bytes", "max_entries")

    def __init__(self, max_entries: int = 1024, max_bytes: int = 8 * 1024 * 1024) -> None:
        self._entries: dict[str, tuple[object, Any, int]] = {}
        self._size = 0
        self.max_entries = max_entries
        self.max_bytes = max_bytes

    def get(self, key: str, value: object) -> Any:
        """The ready form stored for ``key`` if it was built from ``value`` itself, else
        ``None``."""
        found = self._entries.get(key)
        if found is not None and found[0] is value:
            return found[1]
        return None

    def put(self, key: str, value: object, ready: Any, size: int) -> None:
        """Remember ``ready`` (about ``size`` bytes) as the form of ``value`` under ``key``."""
        entries = self._entries
        previous = entries.pop(key, None)
        if previous is not None:
            self._size -= previous[2]
        if size > self.max_bytes:
            return
        if len(entries) >= self.max_entries or self._size + size > self.max_bytes:
            entries.clear()
            self._size = 0
        entries[key] = (value, ready, size)
        self._size += size

    def clear(self) -> None:
        self._entries.clear()
        self._size = 0

    def __len__(self) -> int:
        return len(self._entries)


def tags_of(
    tags: Iterable[str] | Callable[[Any], Iterable[str]] | None, request: Any
) -> tuple[str, ...]:
    """The tags of a request: a static iterable, or a callable of the request."""
    if tags is None:
        return ()
    if callable(tags):
        produced = tags(request)
        if isinstance(produced, str):
            raise TypeError("tags(request) must return an iterable of str, not a str")
        return tuple(produced)
    return tuple(tags)


def check_tags(
    tags: Iterable[str] | Callable[[Any], Iterable[str]] | None,
) -> tuple[str, ...] | Callable[[Any], Iterable[str]]:
    """Static tags frozen into a tuple (a lone ``str`` is refused), or the callable."""
    if tags is None:
        return ()
    if callable(tags):
        return tags
    if isinstance(tags, str):
        raise ValueError("tags must be an iterable of str, not a single str")
    frozen = tuple(tags)
    for tag in frozen:
        if not isinstance(tag, str):
            raise ValueError(f"tags must be str, not {type(tag).__name__}")
    return frozen


# -- the fetch flow shared by the middlewares ---------------------------------------------------


class Pass:
    """What a fetch returns for a response that must not be stored: never shared with the
    requests that joined the fetch (they run the application themselves). ``owner`` is the
    middleware's record of the request that ran the application."""

    __slots__ = ("owner",)

    def __init__(self, owner: object) -> None:
        self.owner = owner

    def __repr__(self) -> str:
        return "<uncacheable response>"


class AppFailed(Exception):
    """The application failed (raised, or answered 5xx) during a fetch: the stack may serve a
    stale response instead (stale-if-error); else only the request that ran it gets it."""

    def __init__(self, owner: object, error: BaseException | None) -> None:
        super().__init__("the application failed")
        self.owner = owner
        self.error = error


def not_pass(value: Any) -> bool:
    """The stack's ``should_cache``: a :class:`Pass` is never stored."""
    return not isinstance(value, Pass)


def entry_ttl(_key: str, value: Any) -> float:
    """The stack's ``ttl_policy``: a stored response (or vary marker) carries its own TTL."""
    return float(value["ttl"])


def fetch_options(
    stale_while_revalidate: float | None, stale_if_error: float | None
) -> dict[str, Any]:
    """The options of every ``cache.get`` a middleware makes (tags are added per request)."""
    options: dict[str, Any] = {"ttl_policy": entry_ttl, "should_cache": not_pass, "ttl_jitter": 0}
    if stale_while_revalidate:
        options["stale_while_revalidate"] = stale_while_revalidate
    if stale_if_error:
        options["stale_if_error"] = stale_if_error
    return options


def stable_options(options: dict[str, Any], tags: tuple[str, ...] = ()) -> CacheOptions:
    """``options`` (from :func:`fetch_options`) plus ``tags`` as one :class:`CacheOptions`
    built once: the stack recognises the same object on every call and skips validating it
    again (per-call keyword options built per request would be compared value by value)."""
    return CacheOptions(**options, tags=tags or None)


def report(cache: Any, exc: BaseException, key: str, operation: str = "asgi") -> None:
    """Announce a failure a middleware absorbed through the stack's ``error`` event."""
    reporter = getattr(cache, "report_error", None)
    if reporter is not None:
        try:
            reporter(exc, operation=operation, key=key)
        except Exception:  # pragma: no cover - reporting never breaks a response
            pass


def seconds(name: str, value: Any, *, positive: bool = False) -> float | None:
    """A duration option (number or ``timedelta``) as seconds; ``None`` stays ``None`` unless
    ``positive`` (then it is refused, as are 0 and negatives)."""
    if value is None:
        if positive:
            raise ValueError(f"{name} must be a positive number of seconds, not None")
        return None
    if isinstance(value, _dt.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, not {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


def check_exclude(exclude: Iterable[str] | None) -> tuple[str, ...]:
    """Excluded paths, normalized (no trailing ``/``); a lone ``str`` is refused."""
    if exclude is None:
        return ()
    if isinstance(exclude, str):
        raise ValueError("exclude must be an iterable of paths, not a single str")
    return tuple(path.rstrip("/") or "/" for path in exclude)


def path_excluded(paths: Sequence[str], path: str) -> bool:
    """Whether ``path`` is one of ``paths`` or under one (``/admin`` covers ``/admin/users``,
    not ``/administrators``)."""
    for excluded in paths:
        if excluded == "/" or path == excluded or path.startswith(excluded + "/"):
            return True
    return False


class Settings(NamedTuple):
    """A response-cache middleware's options, checked once (the ASGI and aiohttp ones)."""

    ttl: float
    tags: Any
    prefix: str
    exclude_paths: tuple[str, ...]
    exclude_predicate: Callable[[Any], bool] | None
    statuses: frozenset[int]
    max_body_size: int
    options: dict[str, Any]
    stable_options: CacheOptions | None


def check_settings(
    *,
    ttl: Any,
    tags: Any,
    prefix: str,
    exclude: Any,
    statuses: Collection[int] | None,
    max_body_size: Any,
    stale_while_revalidate: Any,
    stale_if_error: Any,
) -> Settings:
    """Check a middleware's options (``ValueError`` on a bad one) and build what every
    ``cache.get`` it makes passes: the keyword options, and with static tags one
    :class:`CacheOptions` object (see :func:`stable_options`)."""
    checked_tags = check_tags(tags)
    predicate: Callable[[Any], bool] | None = None
    paths: tuple[str, ...] = ()
    if callable(exclude):
        predicate = exclude
    else:
        paths = check_exclude(exclude)
    if isinstance(max_body_size, bool) or not isinstance(max_body_size, int):
        raise ValueError(f"max_body_size must be an int, not {max_body_size!r}")
    if max_body_size < 0:
        raise ValueError("max_body_size must be >= 0")
    options = fetch_options(
        seconds("stale_while_revalidate", stale_while_revalidate),
        seconds("stale_if_error", stale_if_error),
    )
    return Settings(
        ttl=seconds("ttl", ttl, positive=True) or 0.0,
        tags=checked_tags,
        prefix=check_prefix(prefix),
        exclude_paths=paths,
        exclude_predicate=predicate,
        statuses=check_statuses(statuses),
        max_body_size=max_body_size,
        options=options,
        stable_options=None if callable(checked_tags) else stable_options(options, checked_tags),
    )
