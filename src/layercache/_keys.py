"""Validation of keys, patterns and prefixes, and collision-free rendering of call arguments."""

from __future__ import annotations

import datetime as _dt
import decimal
import enum
import hashlib
import inspect
import json
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Literal

__all__ = [
    "MAX_KEY_LENGTH",
    "MAX_PREFIX_LENGTH",
    "CallKey",
    "ReceiverKind",
    "key_part",
    "receiver_kind",
    "render_call_key",
    "validate_key",
    "validate_pattern",
    "validate_prefix",
]

MAX_KEY_LENGTH = 1024
MAX_PREFIX_LENGTH = 256
# Unicode category Cc: C0 controls, DEL and the C1 controls.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
# Lone surrogates are not text: they cannot be encoded to UTF-8 for Redis or disk.
_SURROGATE = re.compile("[\ud800-\udfff]")
# Longest rendered argument text kept verbatim in a wrap() key; longer ones are hashed.
_MAX_RENDERED_ARGS = 200


def _check_text(kind: str, value: object, limit: int) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{kind} must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{kind} must not be empty")
    if len(value) > limit:
        raise ValueError(f"{kind} is {len(value)} characters long; the limit is {limit}")
    # isprintable() is a fast C check; only text that fails it needs the exact control test
    # (a non-breaking space is not printable but is allowed).
    if not value.isprintable():
        match = _CONTROL.search(value)
        if match is not None:
            raise ValueError(
                f"{kind} contains the control character {match.group()!r} "
                f"at position {match.start()}"
            )
        match = _SURROGATE.search(value)
        if match is not None:
            raise ValueError(
                f"{kind} contains the lone surrogate {match.group()!r} at position "
                f"{match.start()}; keys must be valid Unicode text"
            )
    return value


def validate_key(key: object) -> str:
    """Return ``key`` if it is a valid cache key, else raise ``ValueError``."""
    if type(key) is str and 0 < len(key) <= MAX_KEY_LENGTH and key.isprintable():
        return key
    return _check_text("key", key, MAX_KEY_LENGTH)


def validate_pattern(pattern: object) -> str:
    """Return ``pattern`` if it is a valid glob pattern, else raise ``ValueError``."""
    return _check_text("pattern", pattern, MAX_KEY_LENGTH)


def validate_prefix(prefix: object, *, limit: int = MAX_KEY_LENGTH) -> str:
    """Return ``prefix`` if it is valid for prefix invalidation or a namespace."""
    return _check_text("prefix", prefix, limit)


def key_part(value: Any, fallback: Callable[[Any], str] | None = None) -> str:
    """Unambiguous text of plain data for a cache key: every type renders with its own
    shape (strings are JSON-quoted, so ``f("1")`` and ``f(1)``, or ``f("a:b")`` and
    ``f("a", "b")``, never share a key); containers recurse, sets and mappings are sorted.

    ``fallback`` renders any other value (and is used inside containers too); without it,
    or when it raises, such a value is a ``TypeError``. Integrations build keys with this.
    """
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bytes):
        return "b" + json.dumps(value.hex())
    if isinstance(value, decimal.Decimal):
        return f"D({value})"
    if isinstance(value, uuid.UUID):
        return f"U({value})"
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return f"T({value.isoformat()})"
    if isinstance(value, _dt.timedelta):
        return f"T({value!r})"
    if isinstance(value, tuple):
        return "(" + ",".join(key_part(v, fallback) for v in value) + ")"
    if isinstance(value, list):
        return "[" + ",".join(key_part(v, fallback) for v in value) + "]"
    if isinstance(value, frozenset | set):
        return "s{" + ",".join(sorted(key_part(v, fallback) for v in value)) + "}"
    if isinstance(value, Mapping):
        items = sorted((key_part(k, fallback), key_part(v, fallback)) for k, v in value.items())
        return "{" + ",".join(f"{k}:{v}" for k, v in items) + "}"
    if fallback is not None:
        return fallback(value)
    raise TypeError(
        f"cannot build a cache key from an argument of type {type(value).__name__}; "
        "pass key_resolver= to wrap()"
    )


def _render(value: Any) -> str:
    return key_part(value)


_NO_RECEIVER: Any = object()


def render_call_key(
    args: tuple[Any, ...], kwargs: Mapping[str, Any], *, receiver: Any = _NO_RECEIVER
) -> str:
    """Render call arguments as stable, collision-free key text.

    ``f(123)`` renders ``123``; strings are quoted (``f("a:b")`` → ``"a:b"``); positional
    arguments are joined by ``,``; keyword arguments follow sorted by name. ``receiver`` (the
    ``__cache_key__()`` of a method's instance) comes first, marked ``@`` (no other rendering
    starts with it). Renderings longer than 200 characters are replaced by a SHA-256 digest so
    keys stay within the limits.
    """
    parts = [_render(a) for a in args]
    if receiver is not _NO_RECEIVER:
        parts.insert(0, "@" + _render(receiver))
    # Identifier names render bare (``page=2``); any other name (``f(**{"a=1,b": 2})``) is
    # quoted, so a keyword name can never imitate another call's arguments.
    parts.extend(
        f"{name if name.isidentifier() else json.dumps(name)}={_render(kwargs[name])}"
        for name in sorted(kwargs)
    )
    text = ",".join(parts)
    if len(text) > _MAX_RENDERED_ARGS or _CONTROL.search(text) or _SURROGATE.search(text):
        text = "#" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return text


ReceiverKind = Literal["none", "instance", "class"]


class CallKey:
    """Renders the key text of calls of one function, bound to its signature.

    Built once per wrapped function (``inspect.signature`` is slow): each call's arguments are
    bound to the signature with defaults applied before rendering, so ``f(1)``, ``f(a=1)`` and
    ``f(1, b=2)`` (``b=2`` being the default) share one key. Parameters that can be passed by
    position render positionally; keyword-only ones and ``**kwargs`` as ``name=value``.

    ``receiver``: ``"instance"`` or ``"class"`` when the first parameter is the bound ``self``
    or ``cls`` of a method. It is left out of the key (a method's instance is usually a
    service object, not data), except an instance whose class defines ``__cache_key__()``:
    its result is rendered first. :func:`receiver_kind` guesses it for a plain function. A
    bound method (``cache.wrap("p", obj.method)``) follows the same rule for its ``__self__``.
    """

    __slots__ = ("_arity", "_bound_hook", "_receiver", "_signature")

    def __init__(self, func: Callable[..., Any], receiver: ReceiverKind = "none") -> None:
        self._receiver = receiver
        self._bound_hook: Callable[[], Any] | None = None
        if inspect.ismethod(func) and not isinstance(func.__self__, type):
            hook = getattr(type(func.__self__), "__cache_key__", None)
            if hook is not None:
                owner = func.__self__
                self._bound_hook = lambda: hook(owner)
        try:
            self._signature: inspect.Signature | None = inspect.signature(func)
        except (TypeError, ValueError):  # some builtins have no signature: render as called
            self._signature = None
            self._arity = -1
            return
        params = self._signature.parameters.values()
        simple = all(
            p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
            for p in params
        )
        # Calls passing exactly every (default-less, positional) parameter by position skip
        # the binding: the common f(1, 2).
        self._arity = len(self._signature.parameters) if simple else -1

    def __call__(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
        """The key text of ``func(*args, **kwargs)``.

        Raises:
            TypeError: The arguments do not match the signature (the call itself would fail),
                or an argument cannot be rendered (pass ``key_resolver=`` to ``wrap``).
        """
        if self._signature is not None and (kwargs or len(args) != self._arity):
            bound = self._signature.bind(*args, **kwargs)
            bound.apply_defaults()
            args, kwargs = bound.args, bound.kwargs
        if self._bound_hook is not None:
            return render_call_key(args, kwargs, receiver=self._bound_hook())
        if self._receiver == "none" or not args:
            return render_call_key(args, kwargs)
        receiver, args = args[0], args[1:]
        if self._receiver == "instance":
            hook = getattr(type(receiver), "__cache_key__", None)
            if hook is not None:
                return render_call_key(args, kwargs, receiver=hook(receiver))
        return render_call_key(args, kwargs)


def receiver_kind(func: Callable[..., Any]) -> ReceiverKind:
    """Whether ``func``'s first parameter is a method's ``self`` or ``cls``.

    True for a function defined in a class body (its ``__qualname__`` is ``Class.name``, not
    ``outer.<locals>.name``) whose first positional parameter is named ``self`` or ``cls``, the
    universal convention; a ``staticmethod`` has neither. ``wrap`` applied to a
    ``classmethod`` or ``staticmethod`` object knows without guessing.
    """
    parts = getattr(func, "__qualname__", "").split(".")
    if len(parts) < 2 or parts[-2] == "<locals>":
        return "none"
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return "none"
    if not params or params[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        return "none"
    if params[0].name == "self":
        return "instance"
    if params[0].name == "cls":
        return "class"
    return "none"
