"""Signing and replay protection of messages between instances. Pure and synchronous: no I/O.

A message is a JSON object. Its signature is HMAC-SHA256, as lowercase hex, over the
*canonical bytes* of the object without its signature field: compact JSON with sorted keys,
ASCII only (every other character escaped), floats in Python's shortest round-trip form. Two
processes that parse the same wire JSON therefore compute the same bytes, whatever the key order
or whitespace the sender used.

A valid signature proves that a holder of the secret wrote the message, not that it is new: an
attacker who can publish on the channel can send a captured message again. :class:`ReplayGuard`
refuses a message whose timestamp is outside the replay window (so old captures are useless)
and one whose signature it has already seen within the window.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import json
import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "SIGNATURE_HEX_LENGTH",
    "MessageSigner",
    "ReplayError",
    "ReplayGuard",
    "SignatureError",
    "canonical_bytes",
    "check_timestamp",
    "coerce_secret",
    "sign",
    "verify",
]

SIGNATURE_HEX_LENGTH = 64  # SHA-256 digest, hex encoded


class SignatureError(ValueError):
    """A message carries no signature, or one that does not match its content."""


class ReplayError(ValueError):
    """A message is outside the replay window, or was seen before within it."""


def coerce_secret(secret: str | bytes) -> bytes:
    """The HMAC key for ``secret`` (a ``str`` is UTF-8 encoded).

    Raises:
        ValueError: If ``secret`` is empty or neither ``str`` nor ``bytes``.
    """
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    elif isinstance(secret, bytearray | memoryview):
        secret = bytes(secret)
    if not isinstance(secret, bytes):
        raise ValueError(f"signing secret must be str or bytes, not {type(secret).__name__}")
    if not secret:
        raise ValueError("signing secret must not be empty")
    return secret


def canonical_bytes(message: Mapping[str, Any]) -> bytes:
    """The bytes that are signed for ``message``: sorted-key, compact, ASCII-only JSON.

    Raises:
        ValueError: If ``message`` holds something JSON cannot represent exactly (NaN,
            infinities, non-string keys), is not JSON-serializable at all, or nests too deeply
            to serialise within the interpreter's recursion limit.
    """
    try:
        text = json.dumps(
            message,
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=True,
            allow_nan=False,
        )
    except TypeError as exc:  # an unsupported type, or mixed key types that cannot be sorted
        raise ValueError(f"message cannot be canonicalised: {exc}") from exc
    except RecursionError:
        # The encoder recurses once per level: a hostile message parsed just under the
        # recursion limit overflows here, from a deeper stack. Said as what it is, a message
        # that cannot be verified, so no caller mistakes it for a failure of its own.
        raise ValueError("message nests too deeply to be canonicalised") from None
    return text.encode("ascii")


def sign(secret: bytes, payload: bytes) -> str:
    """HMAC-SHA256 of ``payload`` under ``secret``, as lowercase hex."""
    return hmac.new(secret, payload, hashlib.sha256).hexdigest()


def verify(secret: bytes, payload: bytes, signature: object) -> bool:
    """Whether ``signature`` is the HMAC-SHA256 of ``payload`` under ``secret``.

    Anything that is not a 64-character string is simply ``False``. The comparison takes the
    same time wherever the first difference is (:func:`hmac.compare_digest`).
    """
    if not isinstance(signature, str) or len(signature) != SIGNATURE_HEX_LENGTH:
        return False
    expected = sign(secret, payload).encode("ascii")
    # Bytes, not str: compare_digest refuses non-ASCII str with TypeError, and a hostile
    # signature may contain anything.
    return hmac.compare_digest(expected, signature.encode("utf-8", "surrogatepass"))


def check_timestamp(timestamp: float, now: float, window: float) -> None:
    """Refuse a timestamp more than ``window`` seconds away from ``now`` (either direction).

    The future side tolerates clock skew between instances by the same amount.

    Raises:
        ReplayError: If ``timestamp`` is outside ``[now - window, now + window]`` or not finite.
    """
    if not math.isfinite(timestamp) or abs(now - timestamp) > window:
        raise ReplayError(
            f"timestamp {timestamp!r} is outside the replay window of {window:g}s around {now:.3f}"
        )


class MessageSigner:
    """Signs and verifies message mappings with one secret.

    Args:
        secret: The shared secret (``str`` is UTF-8 encoded). Use at least 32 random bytes.
        field: Name of the signature field, left out of the signed bytes.

    Raises:
        ValueError: If ``secret`` is empty.
    """

    __slots__ = ("_secret", "field")

    def __init__(self, secret: str | bytes, *, field: str = "sig") -> None:
        self._secret = coerce_secret(secret)
        self.field = field

    def __repr__(self) -> str:
        return f"MessageSigner(field={self.field!r})"  # never the secret

    def _unsigned(self, message: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in message.items() if k != self.field}

    def signature(self, message: Mapping[str, Any]) -> str:
        """The signature of ``message`` (its signature field, if present, is ignored)."""
        return sign(self._secret, canonical_bytes(self._unsigned(message)))

    def signed(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of ``message`` with its signature field set."""
        unsigned = self._unsigned(message)
        unsigned[self.field] = sign(self._secret, canonical_bytes(unsigned))
        return unsigned

    def verify(self, message: Mapping[str, Any]) -> str:
        """Check the signature field of ``message``; return the signature.

        Raises:
            SignatureError: If the field is missing or does not match the content.
        """
        signature = message.get(self.field)
        if signature is None:
            raise SignatureError("message is not signed")
        try:
            payload = canonical_bytes(self._unsigned(message))
        except ValueError as exc:
            raise SignatureError(f"message cannot be verified: {exc}") from exc
        if not verify(self._secret, payload, signature):
            raise SignatureError("signature does not match the message")
        assert isinstance(signature, str)  # verify() accepts nothing else
        return signature


class ReplayGuard:
    """Remembers the signatures seen within the replay window, within a bounded memory.

    :meth:`check` accepts a message once: its timestamp must be within ``window`` seconds of
    ``now`` and its signature new. Remembered signatures are forgotten once their timestamp
    leaves the window (a replay of them is then refused by the window itself).

    Memory is bounded by ``max_entries``. When more messages than that arrive within one
    window, the ones with the oldest timestamps are forgotten and a *floor* rises to the newest
    timestamp forgotten so far: every later message stamped at or before the floor is refused.
    Replay protection thus stays exact; the cost of an overflow is that a genuine but late
    message may be refused (reported, never silently applied twice). The floor also keeps
    forgotten messages refused if the wall clock steps back.

    Args:
        window: Replay window in seconds (> 0).
        max_entries: Signatures remembered at most (> 0).

    Raises:
        ValueError: On a non-positive ``window`` or ``max_entries``.
    """

    __slots__ = ("_floor", "_heap", "_seen", "max_entries", "window")

    def __init__(self, window: float, max_entries: int = 100_000) -> None:
        if isinstance(window, bool) or not isinstance(window, int | float) or not window > 0:
            raise ValueError(f"replay window must be a positive number of seconds, not {window!r}")
        if not math.isfinite(window):
            raise ValueError("replay window must be finite")
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be a positive int, not {max_entries!r}")
        self.window = float(window)
        self.max_entries = max_entries
        self._seen: set[str | bytes] = set()
        # (timestamp, signature), smallest timestamp first: what to forget next.
        self._heap: list[tuple[float, str | bytes]] = []
        self._floor = -math.inf

    def __len__(self) -> int:
        return len(self._seen)

    @property
    def floor(self) -> float:
        """Messages stamped at or before this are refused (``-inf`` until anything is forgotten)."""
        return self._floor

    def check(self, signature: str | bytes, timestamp: float, now: float) -> None:
        """Accept a message (and remember it) or refuse it.

        Args:
            signature: The message's verified signature (or another unique nonce; a prefix
                of the digest as ``bytes`` keeps the memory smaller).
            timestamp: The message's wall-clock publication time.
            now: The current wall-clock time.

        Raises:
            ReplayError: If the timestamp is outside the window or at/before the floor, or
                the signature was seen before.
        """
        self._forget(now)
        check_timestamp(timestamp, now, self.window)
        if timestamp <= self._floor:
            raise ReplayError(
                f"timestamp {timestamp!r} is not after {self._floor!r}, the newest timestamp "
                "the replay memory had to forget"
            )
        if signature in self._seen:
            raise ReplayError("message was seen before (replay)")
        self._seen.add(signature)
        heapq.heappush(self._heap, (timestamp, signature))
        while len(self._seen) > self.max_entries:
            self._pop()

    def _forget(self, now: float) -> None:
        horizon = now - self.window
        heap = self._heap
        while heap and heap[0][0] < horizon:
            self._pop()

    def _pop(self) -> None:
        timestamp, signature = heapq.heappop(self._heap)
        self._seen.discard(signature)
        self._floor = max(self._floor, timestamp)
