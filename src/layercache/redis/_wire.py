"""The invalidation bus's wire format: one UTF-8 JSON object per pub/sub message.

::

    {"v": 1, "source_id": "...", "scope": "keys", "operation": "delete",
     "keys": ["user:1", "user:2"], "timestamp": 1732460000.123, "mode": "any",
     "nonce": "<32 hex>", "sig": "<64 hex>"}

``sig`` (only with ``signing_secret``) is HMAC-SHA256 over the canonical bytes of every other
field (:mod:`layercache._signing`). ``nonce`` makes two otherwise identical messages distinct,
so the replay memory never mistakes a genuine repeat for a replay. Receivers are strict: any
other field, a wrong type, an unknown scope/operation/mode or an invalid key rejects the whole
message.

Plain code (no I/O): :class:`WireFormat` encodes and checks messages for both twins of the bus,
which therefore raise the very same :class:`RejectedMessageError`.
"""

from __future__ import annotations

import json
import math
import random
import re
import secrets
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from .._exceptions import LayerCacheError
from .._keys import _check_text, validate_key, validate_pattern, validate_prefix
from .._options import MAX_TAG_LENGTH
from .._signing import (
    MessageSigner,
    ReplayError,
    ReplayGuard,
    SignatureError,
    check_timestamp,
)
from .._types import InvalidationMessage

__all__ = [
    "MAX_SOURCE_ID",
    "MODES",
    "OPERATIONS",
    "SCOPES",
    "WIRE_VERSION",
    "RejectedMessageError",
    "WireFormat",
    "backoff_delay",
    "nesting_within",
    "validate_message",
]

WIRE_VERSION = 1
SCOPES = frozenset({"keys", "tags", "pattern", "prefix", "clear", "generation"})
OPERATIONS = frozenset({"set", "delete", "invalidate", "clear", "bump"})
MODES = frozenset({"any", "all"})

_FIELDS = frozenset({"v", "source_id", "scope", "operation", "keys", "timestamp", "mode", "nonce"})
SIGNATURE_FIELD = "sig"
MAX_SOURCE_ID = 256
_NONCE = re.compile(r"[0-9a-f]{16,64}")
_GENERATION = re.compile(r"[0-9]{1,19}")
# Signatures remembered for replay detection (about 180 bytes each, so at most ~18 MB): enough
# for ~3,000 messages a second within the default 30 s window before the memory forgets early
# (then it refuses late messages older than what it forgot, see ReplayGuard).
REPLAY_MEMORY = 100_000
# Containers nested deeper than this refuse a message before it is parsed. A valid message
# nests two deep (the object and its key list). Python's JSON parser, the canonicalisation that
# checks a signature and the repr in an error message all recurse, each from a different stack
# depth: a body nested just under the interpreter's recursion limit got through the parser and
# then raised RecursionError in a later step (issue 11). Bounded here, none of them comes near
# the limit.
MAX_NESTING = 8
# For the nesting scan: every bracket as [ or ], everything else deleted.
_AS_SQUARE = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
# A rejection's detail is logged and handed to on_error: never a hostile payload's worth.
_MAX_DETAIL = 300


class RejectedMessageError(LayerCacheError, ValueError):
    """A message received on the bus was dropped (a ``LayerCacheError``, and a ``ValueError``).

    Attributes:
        reason: ``"oversized"``, ``"malformed"`` (not JSON), ``"schema"`` (wrong fields,
            types or values), ``"unsigned"``, ``"forged"`` (signature does not match),
            ``"stale"`` (timestamp outside the replay window), ``"replayed"`` (seen before) or
            ``"unexpected"`` (a check raised an exception nobody foresaw, chained as the
            ``__cause__``: a defect of layercache, but still only this message is dropped).
        detail: What was wrong, at most a few hundred characters of it.
    """

    def __init__(self, reason: str, detail: str) -> None:
        if len(detail) > _MAX_DETAIL:
            detail = f"{detail[:_MAX_DETAIL]}... ({len(detail)} characters)"
        super().__init__(f"invalidation message dropped ({reason}): {detail}")
        self.reason = reason
        self.detail = detail


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Delay before reconnect attempt ``attempt`` (0-based): ``min(cap, base * 2**attempt)``
    with "equal jitter" (between half and all of it), so instances cut off together do not
    reconnect in lockstep while the delay still grows."""
    ceiling = min(cap, base * (2.0 ** min(attempt, 62)))
    return ceiling / 2 + rng.uniform(0.0, ceiling / 2)


def _schema_error(detail: str) -> NoReturn:
    raise RejectedMessageError("schema", detail)


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A duplicated field would let two parsers of the same bytes disagree on the message.
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate field in JSON object")
    return result


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def nesting_within(data: bytes, limit: int) -> bool:
    """Whether the JSON ``data`` nests containers at most ``limit`` deep, found without
    parsing it (so without recursion) and only with whole-buffer byte operations (so in C: a
    few milliseconds per MiB per pass, at most ``limit`` passes).

    Exact for valid UTF-8 JSON, in which a backslash occurs only inside a string, as the start
    of an escape, and no byte of a multi-byte character is ASCII. In a run of backslashes each
    pair, left to right, is one escaped backslash; a backslash left over escapes the next
    character, and only an escaped quote matters here. With those gone every quote opens or
    closes a string, so every other piece between quotes is outside the strings, and its
    brackets are the structure. Each pass then removes the empty pairs (the innermost
    containers): a document ``d`` deep is empty after exactly ``d`` passes. For anything that
    is not JSON the answer only has to come in that bounded time: the parser refuses it.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        # No more openers than that anywhere, strings included: no deeper than that either.
        return True
    data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = b"".join(data.split(b'"')[::2]).translate(_AS_SQUARE, _NOT_BRACKETS)
    if b"[" * (limit + 1) in brackets or b"]" * (limit + 1) in brackets:
        return False  # that many containers opened, or closed, in a row
    for _ in range(limit):
        if not brackets:
            return True
        inner = brackets.replace(b"[]", b"")
        if len(inner) == len(brackets):
            return False  # unbalanced: no pass will ever empty it
        brackets = inner
    return not brackets


def validate_message(message: InvalidationMessage, *, max_keys: int | None = None) -> None:
    """Check every field of ``message`` (what a receiver accepts).

    Raises:
        ValueError: On a wrong type, an unknown scope/operation/mode, too many keys, or a key,
            tag, pattern, prefix or generation that is not valid for its scope.
    """
    source_id, scope, operation, keys, timestamp, mode = (
        message.source_id,
        message.scope,
        message.operation,
        message.keys,
        message.timestamp,
        message.mode,
    )
    _check_text("source_id", source_id, MAX_SOURCE_ID)
    if type(scope) is not str or scope not in SCOPES:
        raise ValueError(f"scope must be one of {sorted(SCOPES)}, not {scope!r}")
    if type(operation) is not str or operation not in OPERATIONS:
        raise ValueError(f"operation must be one of {sorted(OPERATIONS)}, not {operation!r}")
    if type(mode) is not str or mode not in MODES:
        raise ValueError(f"mode must be 'any' or 'all', not {mode!r}")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
        raise ValueError(f"timestamp must be a number, not {type(timestamp).__name__}")
    if not math.isfinite(timestamp):
        raise ValueError("timestamp must be finite")
    if not isinstance(keys, tuple | list):
        raise ValueError(f"keys must be a tuple of str, not {type(keys).__name__}")
    if max_keys is not None and len(keys) > max_keys:
        raise ValueError(f"{len(keys)} keys in one message; the limit is {max_keys}")
    if scope == "keys":
        for key in keys:
            validate_key(key)
    elif scope == "tags":
        for tag in keys:
            _check_text("tag", tag, MAX_TAG_LENGTH)
    elif scope == "clear":
        if keys:
            raise ValueError("a 'clear' message carries no keys")
    else:
        if len(keys) != 1:
            raise ValueError(f"a {scope!r} message carries exactly one value, not {len(keys)}")
        value = keys[0]
        if scope == "pattern":
            validate_pattern(value)
        elif scope == "prefix":
            validate_prefix(value)
        elif type(value) is not str or _GENERATION.fullmatch(value) is None:
            raise ValueError(f"a generation must be a non-negative integer as text, not {value!r}")


class WireFormat:
    """Encodes the messages a bus publishes and checks the ones it receives.

    Args:
        signing_secret: Shared secret; ``None`` sends and accepts unsigned messages.
        replay_window: Seconds a signed message's timestamp may differ from the receiver's
            clock.
        max_message_bytes: Larger messages are dropped unread; :meth:`encode` splits key and
            tag lists so that no payload it returns is larger.
        max_keys: Keys (or tags) per message at most, on both sides.
    """

    def __init__(
        self,
        *,
        signing_secret: str | bytes | None,
        replay_window: float,
        max_message_bytes: int,
        max_keys: int,
    ) -> None:
        self._signer = None if signing_secret is None else MessageSigner(signing_secret)
        self._replay = None if self._signer is None else ReplayGuard(replay_window, REPLAY_MEMORY)
        self.replay_window = float(replay_window)
        self.max_message_bytes = max_message_bytes
        self.max_keys = max_keys

    @property
    def signed(self) -> bool:
        """Whether messages are signed and signatures required."""
        return self._signer is not None

    def encode(self, message: InvalidationMessage) -> list[bytes]:
        """The wire payloads a bus publishes for ``message`` (split as needed).

        Raises:
            ValueError: If the message is invalid, or cannot be split to fit the limits.
        """
        validate_message(message)
        keys = tuple(message.keys)
        splittable = message.scope == "keys" or (message.scope == "tags" and message.mode == "any")
        if not splittable:
            if len(keys) > self.max_keys:
                raise ValueError(
                    f"{len(keys)} {message.scope} in one message; the limit is {self.max_keys}"
                )
            payload = self._payload(message, keys)
            if len(payload) > self.max_message_bytes:
                raise ValueError(
                    f"message is {len(payload)} bytes; max_message_bytes is "
                    f"{self.max_message_bytes}"
                )
            return [payload]
        step = self.max_keys
        # A stack of chunks, next one last: halved in place when one is too many bytes.
        pending = [keys[i : i + step] for i in range(0, len(keys), step)] or [()]
        pending.reverse()
        payloads: list[bytes] = []
        while pending:
            chunk = pending.pop()
            payload = self._payload(message, chunk)
            if len(payload) <= self.max_message_bytes:
                payloads.append(payload)
            elif len(chunk) > 1:
                half = len(chunk) // 2
                pending.extend((chunk[half:], chunk[:half]))
            else:
                raise ValueError(
                    f"a message with the single key {chunk[0][:40]!r}... is {len(payload)} "
                    f"bytes; max_message_bytes is {self.max_message_bytes}"
                )
        return payloads

    def _payload(self, message: InvalidationMessage, keys: Sequence[str]) -> bytes:
        body: dict[str, Any] = {
            "v": WIRE_VERSION,
            "source_id": message.source_id,
            "scope": message.scope,
            "operation": message.operation,
            "keys": list(keys),
            "timestamp": float(message.timestamp),
            "mode": message.mode,
            "nonce": secrets.token_hex(16),
        }
        if self._signer is not None:
            body = self._signer.signed(body)
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode(
            "utf-8"
        )

    def decode(
        self, data: object, source_id: str, now: float | None = None
    ) -> InvalidationMessage | None:
        """Parse and check one received payload.

        Returns ``None`` for the messages of ``source_id`` (this instance's own). Each accepted
        signed message is remembered for replay detection, so decoding the same payload twice
        fails the second time.

        Raises:
            RejectedMessageError: If the message must be dropped (see its ``reason``); nothing
                else, whatever the payload.
        """
        try:
            return self._decode(data, source_id, now)
        except RejectedMessageError:
            raise
        except Exception as exc:
            # Whatever a check raises drops this one message and says why. Nothing a sender
            # can put on the channel may reach the subscriber loop, which would take it for a
            # lost connection: reconnect, lose what was published meanwhile, and have every
            # stack empty its local layers.
            raise RejectedMessageError("unexpected", f"checking it raised {exc!r}") from exc

    def _decode(
        self, data: object, source_id: str, now: float | None
    ) -> InvalidationMessage | None:
        # Size first, before any work (a memoryview is measured before it is copied).
        if isinstance(data, memoryview):
            size = data.nbytes
        elif isinstance(data, bytes | bytearray):
            size = len(data)
        else:
            raise RejectedMessageError("malformed", f"payload is {type(data).__name__}, not bytes")
        if size > self.max_message_bytes:
            raise RejectedMessageError(
                "oversized", f"{size} bytes; the limit is {self.max_message_bytes}"
            )
        raw = bytes(data)
        try:
            # Strictly UTF-8, as the wire format says (json.loads would guess UTF-16/32 from
            # the bytes, and let lone surrogates through); the nesting scan relies on it.
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RejectedMessageError("malformed", f"not UTF-8: {exc}") from None
        if not nesting_within(raw, MAX_NESTING):
            raise RejectedMessageError(
                "malformed", f"nested deeper than {MAX_NESTING} levels, or brackets unbalanced"
            )
        try:
            body = json.loads(
                text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant
            )
        except ValueError as exc:
            raise RejectedMessageError("malformed", f"not JSON: {exc}") from None
        if not isinstance(body, dict):
            _schema_error(f"a message is a JSON object, not {type(body).__name__}")
        # Authenticate before looking further: an unauthenticated sender learns nothing from
        # how the rest of its message is judged.
        signature: str | None = None
        if self._signer is not None:
            if SIGNATURE_FIELD not in body:
                raise RejectedMessageError("unsigned", "a signing secret is set")
            try:
                signature = self._signer.verify(body)
            except SignatureError as exc:
                raise RejectedMessageError("forged", str(exc)) from None
        message = self._parse(body)
        if message.source_id == source_id:
            return None
        if self._replay is not None:
            assert signature is not None
            clock = time.time() if now is None else now
            try:
                check_timestamp(message.timestamp, clock, self.replay_window)
            except ReplayError as exc:
                raise RejectedMessageError("stale", str(exc)) from None
            try:
                # 128 bits of the digest identify a message as well as all 256, in half the
                # memory.
                self._replay.check(bytes.fromhex(signature[:32]), message.timestamp, clock)
            except ReplayError as exc:
                raise RejectedMessageError("replayed", str(exc)) from None
        return message

    def _parse(self, body: dict[str, Any]) -> InvalidationMessage:
        fields = body.keys() - {SIGNATURE_FIELD}
        if fields != _FIELDS:
            missing, extra = sorted(_FIELDS - fields), sorted(fields - _FIELDS)
            _schema_error(f"missing fields {missing}, unknown fields {extra}")
        version = body["v"]
        if type(version) is not int or version != WIRE_VERSION:
            _schema_error(f"unsupported version {version!r}")
        nonce = body["nonce"]
        if type(nonce) is not str or _NONCE.fullmatch(nonce) is None:
            _schema_error("nonce must be 16 to 64 lowercase hex digits")
        keys = body["keys"]
        if type(keys) is not list:
            _schema_error(f"keys must be a list, not {type(keys).__name__}")
        if len(keys) > self.max_keys:
            _schema_error(f"{len(keys)} keys; the limit is {self.max_keys}")
        if any(type(k) is not str for k in keys):
            _schema_error("every key must be a string")
        message = InvalidationMessage(
            source_id=body["source_id"],
            scope=body["scope"],
            operation=body["operation"],
            keys=tuple(keys),
            timestamp=body["timestamp"],
            mode=body["mode"],
        )
        try:
            validate_message(message, max_keys=self.max_keys)
        except ValueError as exc:
            _schema_error(str(exc))
        if type(message.timestamp) is int:  # JSON without a fraction
            message = InvalidationMessage(
                source_id=message.source_id,
                scope=message.scope,
                operation=message.operation,
                keys=message.keys,
                timestamp=float(message.timestamp),
                mode=message.mode,
            )
        return message
