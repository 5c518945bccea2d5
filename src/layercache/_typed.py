"""Typed values: a value read from a shared layer comes back as the type the caller named.

Remote layers (Redis, disk, Memcached) store data, not classes: a dataclass or a Pydantic model
comes back from them as the ``dict`` its serializer wrote, while the in-process layer hands
back the object itself. The caller names the type it expects (``get(..., type=User)``, or the
return annotation of a ``wrap``-ped function) and :func:`converter_for` builds the function that
turns a decoded value back into it: through ``pydantic.TypeAdapter`` when Pydantic is installed
(imported on first use, never at import time), else through a small standard-library rebuild
of dataclasses, enums and containers of them.

Only the type the caller named is ever built. Nothing is looked up, imported or evaluated on the
strength of the stored bytes: a class named by bytes read from Redis would be an injection path.

Every converter first runs a cheap check (``type(v) is T``, element by element for containers)
and returns a value that already has the type unchanged: a typed L1 hit on an object pays one
``type()`` test.
A value that does not validate raises :class:`StoredValueTypeError`; the stack treats the
stored value as a miss (and reports an ``error`` event) instead of failing the caller.
"""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import enum
import functools
import inspect
import threading
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, Union, get_args, get_origin

__all__ = [
    "Converter",
    "StoredValueTypeError",
    "build_converter",
    "converter_for",
    "return_type",
]

Converter = Callable[[Any], Any]
Check = Callable[[Any], bool]

# Converters kept (per type); building one through Pydantic costs about a millisecond.
MAX_CONVERTERS = 256
_NONE_TYPE = type(None)
_ERROR_TEXT = 300


class StoredValueTypeError(ValueError):
    """A stored value does not validate against the type the caller named."""


def converter_for(tp: Any) -> Converter | None:
    """The converter of values to ``tp`` (``None``: nothing to convert, e.g. ``Any``).

    Cached per type (bounded: the oldest entry goes first); an unhashable type (an
    ``Annotated`` with unhashable metadata) is built on every call.

    Raises:
        TypeError: ``tp`` is not a type, or one that cannot be rebuilt (without Pydantic:
            anything but dataclasses, enums, the standard scalar types and containers).
    """
    try:
        return _converters[tp]  # a plain dict lookup: this runs on every typed L1 hit
    except KeyError:
        pass
    except TypeError:  # unhashable
        return build_converter(tp)
    converter = build_converter(tp)
    with _converters_lock:
        if tp not in _converters and len(_converters) >= MAX_CONVERTERS:
            del _converters[next(iter(_converters))]
        _converters[tp] = converter
    return converter


_converters: dict[Any, Converter | None] = {}
_converters_lock = threading.Lock()


def build_converter(tp: Any, *, use_pydantic: bool | None = None) -> Converter | None:
    """Build (uncached) the converter of values to ``tp``; see :func:`converter_for`.

    ``use_pydantic``: ``None`` uses Pydantic when it is installed; ``False`` forces the
    standard-library rebuild (what runs without Pydantic).
    """
    _check_type_form(tp)
    if tp is Any or tp is object or tp is None or tp is _NONE_TYPE:
        return None
    check = _checker(tp)
    pydantic = _pydantic() if use_pydantic is None or use_pydantic else None
    if use_pydantic and pydantic is None:
        raise ImportError("use_pydantic=True needs pydantic: pip install 'layercache-py[pydantic]'")
    slow = _pydantic_converter(pydantic, tp) if pydantic is not None else _rebuild(tp)
    name = _type_name(tp)

    def rebuild(value: Any) -> Any:
        if check is not None and check(value):
            return value
        try:
            return slow(value)
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            text = str(exc)
            if len(text) > _ERROR_TEXT:
                text = text[:_ERROR_TEXT] + "..."
            raise StoredValueTypeError(
                f"the stored {type(value).__name__} is not a valid {name}: {text}"
            ) from exc

    if isinstance(tp, type) and get_origin(tp) is None:
        cls = tp

        def convert_class(value: Any) -> Any:
            # The common case inline: a value of exactly the class (an L1 hit).
            if type(value) is cls:
                return value
            return rebuild(value)

        return convert_class
    return rebuild


def return_type(func: Callable[..., Any]) -> Any:
    """The type a wrapped function's results are rebuilt as: its return annotation.

    For an ``async def`` that is the awaited type; a plain function annotated as returning an
    ``Awaitable[X]``/``Coroutine[..., X]`` gives ``X``. No annotation (or a callable object
    without one) gives ``Any``: values are returned as stored. Only the return annotation is
    evaluated (a parameter annotated with a ``TYPE_CHECKING``-only name is fine).

    Raises:
        TypeError: The return annotation names something that cannot be resolved.
    """
    target: Any = func
    while isinstance(target, functools.partial):
        target = target.func
    target = inspect.unwrap(target)
    annotations = getattr(target, "__annotations__", None)
    if not isinstance(annotations, dict) or "return" not in annotations:
        return Any
    annotation = annotations["return"]
    if isinstance(annotation, str):
        # Evaluate just this annotation, in the function's own module namespace.
        shim = types.FunctionType(_SHIM_CODE, getattr(target, "__globals__", {}))
        shim.__annotations__ = {"return": annotation}
        try:
            annotation = typing.get_type_hints(shim, include_extras=True)["return"]
        except Exception as exc:  # NameError, SyntaxError, AttributeError...
            raise TypeError(
                f"cannot resolve the return annotation {annotations['return']!r} of "
                f"{getattr(target, '__qualname__', target)!r} ({exc}); pass type= to wrap() "
                "(type=typing.Any returns values as stored)"
            ) from exc
    if annotation is None:
        return _NONE_TYPE
    origin: Any = get_origin(annotation)
    if not inspect.iscoroutinefunction(target) and origin in (cabc.Awaitable, cabc.Coroutine):
        args = get_args(annotation)
        return args[-1] if args else Any
    return annotation


def _shim() -> None:  # pragma: no cover - never called: its code object hosts annotations
    pass


_SHIM_CODE = _shim.__code__


# -- the cheap check: is the value already of the type? ---------------------------------------


def _always(value: Any) -> bool:
    return True


def _checker(tp: Any) -> Check | None:
    """A fast test that ``value`` already has type ``tp`` (``None``: no such test)."""
    if tp is Any or tp is object:
        return _always
    if tp is None or tp is _NONE_TYPE:
        return lambda value: value is None
    if isinstance(tp, typing.TypeVar):
        return _always
    supertype = getattr(tp, "__supertype__", None)  # typing.NewType
    if supertype is not None:
        return _checker(supertype)
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is None:
        return _class_checker(tp) if isinstance(tp, type) else None
    if origin is typing.Annotated:
        return _checker(args[0])
    if origin is Union or origin is types.UnionType:
        arms = [_checker(arm) for arm in args]
        if any(arm is None for arm in arms):
            return None
        checks = typing.cast("list[Check]", arms)
        return lambda value: any(check(value) for check in checks)
    if origin is Literal:
        allowed = args
        return lambda value: any(value == a and type(value) is type(a) for a in allowed)
    if origin in (list, set, frozenset, cabc.Sequence, cabc.MutableSequence, cabc.Set):
        if origin is list and args and _is_plain_class(args[0]):
            return _list_of(args[0])
        element = _checker(args[0]) if args else _always
        if element is None:
            return None
        return _each(origin, element)
    if origin is tuple:
        return _tuple_checker(args)
    if origin in (dict, cabc.Mapping, cabc.MutableMapping):
        keys = _checker(args[0]) if args else _always
        values = _checker(args[1]) if len(args) > 1 else _always
        if keys is None or values is None:
            return None
        container = dict if origin is dict else origin

        def mapping(value: Any) -> bool:
            if not isinstance(value, container):
                return False
            for k, v in value.items():  # noqa: SIM110 (a loop is faster than all() on a hot path)
                if not (keys(k) and values(v)):
                    return False
            return True

        return mapping
    if isinstance(origin, type) and dataclasses.is_dataclass(origin):
        return _class_checker(origin)  # a generic dataclass (Box[int])
    return None


def _class_checker(cls: type) -> Check | None:
    if typing.is_typeddict(cls):
        return None
    try:
        isinstance(None, cls)
    except TypeError:  # a non-runtime Protocol, and the like
        return None
    if cls is float:
        # An int is a valid float (PEP 484); bool is not.
        return lambda value: (
            type(value) is float or (isinstance(value, int | float) and not isinstance(value, bool))
        )
    return lambda value: type(value) is cls or isinstance(value, cls)


def _is_plain_class(tp: Any) -> bool:
    return (
        isinstance(tp, type)
        and get_origin(tp) is None
        and tp is not float
        and _class_checker(tp) is not None
    )


def _list_of(cls: type) -> Check:
    # list[Model]: the element test inline (a call per element would double the cost).
    def each(value: Any) -> bool:
        if type(value) is not list:
            return False
        for item in value:  # noqa: SIM110 (a loop is faster than all() on a hot path)
            if type(item) is not cls and not isinstance(item, cls):
                return False
        return True

    return each


def _each(container: Any, element: Check) -> Check:
    concrete: Any = container if isinstance(container, type) else list
    if container is cabc.Sequence:
        concrete = cabc.Sequence
    elif container is cabc.Set:
        concrete = cabc.Set

    def each(value: Any) -> bool:
        if not isinstance(value, concrete) or isinstance(value, str | bytes):
            return False
        for item in value:  # noqa: SIM110 (a loop is faster than all() on a hot path)
            if not element(item):
                return False
        return True

    return each


def _tuple_checker(args: tuple[Any, ...]) -> Check | None:
    if not args or (len(args) == 2 and args[1] is Ellipsis):
        element = _checker(args[0]) if args else _always
        return None if element is None else _each(tuple, element)
    if args == ((),):  # tuple[()]
        return lambda value: value == ()
    checks = [_checker(arm) for arm in args]
    if any(check is None for check in checks):
        return None
    fixed = typing.cast("list[Check]", checks)

    def each(value: Any) -> bool:
        return (
            type(value) is tuple
            and len(value) == len(fixed)
            and all(check(item) for check, item in zip(fixed, value, strict=True))
        )

    return each


# -- the rebuild: Pydantic, or the standard library -------------------------------------------


@functools.lru_cache(maxsize=1)
def _pydantic() -> Any:
    """The ``pydantic`` module when it is installed (v2), else ``None``; imported lazily."""
    try:
        import pydantic
    except ImportError:
        return None
    if not hasattr(pydantic, "TypeAdapter"):  # Pydantic v1: not supported
        return None
    return pydantic


def _pydantic_converter(pydantic: Any, tp: Any) -> Converter:
    try:
        adapter = pydantic.TypeAdapter(tp)
    except Exception as exc:  # PydanticSchemaGenerationError, PydanticUndefinedAnnotation...
        raise TypeError(f"cannot rebuild values as {_type_name(tp)}: {exc}") from exc
    validate: Converter = adapter.validate_python
    return validate


def _identity(value: Any) -> Any:
    return value


def _rebuild(tp: Any) -> Converter:
    """The standard-library rebuild of a decoded value as ``tp`` (no Pydantic)."""
    if tp is Any or tp is object or isinstance(tp, typing.TypeVar):
        return _identity
    if tp is None or tp is _NONE_TYPE:
        return _expect_none
    supertype = getattr(tp, "__supertype__", None)
    if supertype is not None:
        return _rebuild(supertype)
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is None:
        if isinstance(tp, type):
            return _rebuild_class(tp)
        raise TypeError(f"cannot rebuild values as {tp!r}: not a type")
    if origin is typing.Annotated:
        return _rebuild(args[0])
    if origin is Union or origin is types.UnionType:
        return _rebuild_union(args)
    if origin is Literal:
        return _rebuild_literal(args)
    if origin in (list, cabc.Sequence, cabc.MutableSequence):
        item = _rebuild(args[0]) if args else _identity
        return lambda value: [item(v) for v in _sequence(value)]
    if origin in (set, frozenset, cabc.Set):
        item = _rebuild(args[0]) if args else _identity
        made: Callable[[Any], Any] = frozenset if origin is frozenset else set
        return lambda value: made(item(v) for v in _sequence(value))
    if origin is tuple:
        return _rebuild_tuple(args)
    if origin in (dict, cabc.Mapping, cabc.MutableMapping):
        key = _rebuild(args[0]) if args else _identity
        val = _rebuild(args[1]) if len(args) > 1 else _identity

        def mapping(value: Any) -> Any:
            if not isinstance(value, cabc.Mapping):
                raise TypeError(f"expected a mapping, got {type(value).__name__}")
            return {key(k): val(v) for k, v in value.items()}

        return mapping
    if isinstance(origin, type) and dataclasses.is_dataclass(origin):
        return _rebuild_class(origin)
    raise TypeError(
        f"cannot rebuild values as {_type_name(tp)} without pydantic "
        "(pip install 'layercache-py[pydantic]')"
    )


def _expect_none(value: Any) -> Any:
    if value is not None:
        raise TypeError(f"expected None, got {type(value).__name__}")
    return None


def _sequence(value: Any) -> Any:
    if not isinstance(value, list | tuple | set | frozenset):
        raise TypeError(f"expected a sequence, got {type(value).__name__}")
    return value


def _rebuild_union(arms: tuple[Any, ...]) -> Converter:
    checks = [_checker(arm) for arm in arms]
    rebuilds = [_rebuild(arm) for arm in arms]

    def union(value: Any) -> Any:
        for check in checks:
            if check is not None and check(value):
                return value
        errors: list[str] = []
        for rebuild in rebuilds:
            try:
                return rebuild(value)
            except (ValueError, TypeError, KeyError) as exc:
                errors.append(str(exc))
        raise TypeError("no member of the union matches: " + "; ".join(errors))

    return union


def _rebuild_literal(allowed: tuple[Any, ...]) -> Converter:
    def literal(value: Any) -> Any:
        for option in allowed:
            if value == option and type(value) is type(option):
                return value
            if isinstance(option, enum.Enum) and value == option.value:
                return option
        raise ValueError(f"{value!r} is not one of {allowed!r}")

    return literal


def _rebuild_tuple(args: tuple[Any, ...]) -> Converter:
    if not args or (len(args) == 2 and args[1] is Ellipsis):
        item = _rebuild(args[0]) if args else _identity
        return lambda value: tuple(item(v) for v in _sequence(value))
    if args == ((),):
        args = ()
    items = [_rebuild(arm) for arm in args]

    def fixed(value: Any) -> Any:
        seq = _sequence(value)
        if len(seq) != len(items):
            raise ValueError(f"expected {len(items)} items, got {len(seq)}")
        return tuple(item(v) for item, v in zip(items, seq, strict=True))

    return fixed


def _rebuild_class(cls: type) -> Converter:
    if dataclasses.is_dataclass(cls):
        return _rebuild_dataclass(cls)
    if issubclass(cls, enum.Enum):
        enum_cls: Any = cls
        return lambda value: value if isinstance(value, cls) else enum_cls(value)
    if cls is float:
        return _rebuild_float
    if cls in (list, tuple, set, frozenset):
        return lambda value: cls(_sequence(value))
    check = _class_checker(cls)
    if check is None:  # a TypedDict, a Protocol...
        raise TypeError(
            f"cannot rebuild values as {cls.__qualname__} without pydantic "
            "(pip install 'layercache-py[pydantic]')"
        )

    def plain(value: Any) -> Any:
        # A scalar (int, str, datetime, UUID, Decimal...) is decoded as itself by the
        # serializers: anything else is a mismatch, never coerced by guesswork.
        if check(value):
            return value
        raise TypeError(f"expected {cls.__qualname__}, got {type(value).__name__}")

    return plain


def _rebuild_float(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"expected float, got {type(value).__name__}")


def _rebuild_dataclass(cls: type) -> Converter:
    # Field converters are built on first use: a dataclass may refer to itself (a tree) or
    # to a class defined after it. The plan is published whole (threads may race to build
    # it; each builds the same one), never seen half-built.
    plan: tuple[tuple[str, bool, Converter], ...] | None = None

    def build_plan() -> tuple[tuple[str, bool, Converter], ...]:
        try:
            hints = typing.get_type_hints(cls, include_extras=True)
        except Exception as exc:
            raise TypeError(f"cannot resolve the field types of {cls.__qualname__}: {exc}") from exc
        return tuple(
            (field.name, field.init, _rebuild_cached(hints.get(field.name, Any)))
            for field in dataclasses.fields(cls)
        )

    def rebuild(value: Any) -> Any:
        nonlocal plan
        if isinstance(value, cls):
            return value
        if not isinstance(value, cabc.Mapping):
            raise TypeError(f"expected {cls.__qualname__} fields, got {type(value).__name__}")
        if plan is None:
            plan = build_plan()
        init: dict[str, Any] = {}
        late: list[tuple[str, Any]] = []
        # Stored keys the class does not declare (a field removed since) are ignored, like
        # Pydantic does by default; a missing required field fails in __init__.
        for name, in_init, convert in plan:
            if name in value:
                if in_init:
                    init[name] = convert(value[name])
                else:
                    late.append((name, convert(value[name])))
        obj = cls(**init)
        for name, field_value in late:
            object.__setattr__(obj, name, field_value)  # works on frozen dataclasses too
        return obj

    return rebuild


def _rebuild_cached(tp: Any) -> Converter:
    try:
        return _rebuild_memo(tp)
    except TypeError:
        try:
            hash(tp)
        except TypeError:
            return _rebuild(tp)
        raise


@functools.lru_cache(maxsize=MAX_CONVERTERS)
def _rebuild_memo(tp: Any) -> Converter:
    return _rebuild(tp)


# -- helpers -----------------------------------------------------------------------------------


def _check_type_form(tp: Any) -> None:
    if tp is None or tp is Any or isinstance(tp, type | typing.TypeVar):
        return
    if get_origin(tp) is not None or getattr(tp, "__supertype__", None) is not None:
        return
    raise TypeError(f"type= must be a type (a class, list[Model], Model | None...), not {tp!r}")


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and get_origin(tp) is None:
        return tp.__qualname__
    return repr(tp).replace("typing.", "")
