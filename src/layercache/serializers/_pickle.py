"""Pickle serializer with an HMAC-SHA256 signature, for values only pickle can carry (opt-in)."""

from __future__ import annotations

import hashlib
import hmac
import pickle
from typing import Any

from ._base import PICKLE_FORMAT_ID

__all__ = ["PickleSerializer"]

_VERSION = b"\x01"
_DIGEST_SIZE = hashlib.sha256().digest_size
# Domain separation: a MAC made with the same secret for another purpose (say, the invalidation
# bus) can never validate a pickle payload.
_CONTEXT = b"layercache.pickle.v1\x00"


class PickleSerializer:
    """Pickle values, signing every payload so that only holders of the secret can feed it.

    Unpickling runs code chosen by whoever wrote the bytes, so a payload is unpickled only
    after its HMAC-SHA256 signature has been checked (in constant time) against
    ``signing_secret``. Anyone who can write to the cache store but does not hold the secret
    cannot get code executed; treat the secret like a password and share it only between the
    processes that share the cache.

    Payload: ``b"\\x01" + hmac_sha256(secret, context + pickle) + pickle``.

    Args:
        signing_secret: Non-empty ``str`` (UTF-8 encoded) or ``bytes`` key.
        protocol: Pickle protocol to write (default: ``pickle.HIGHEST_PROTOCOL``).

    Raises:
        ValueError: If ``signing_secret`` is missing or empty.
    """

    format_id = PICKLE_FORMAT_ID

    def __init__(
        self, signing_secret: str | bytes, protocol: int = pickle.HIGHEST_PROTOCOL
    ) -> None:
        if isinstance(signing_secret, str):
            signing_secret = signing_secret.encode("utf-8")
        if not isinstance(signing_secret, bytes) or not signing_secret:
            raise ValueError("PickleSerializer needs a non-empty signing_secret (str or bytes)")
        self._key = signing_secret
        self._protocol = protocol

    def __repr__(self) -> str:
        return "PickleSerializer(signing_secret=<hidden>)"

    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._key, _CONTEXT + payload, hashlib.sha256).digest()

    def dumps(self, obj: Any) -> bytes:
        """Pickle and sign ``obj``.

        Raises:
            TypeError: If ``obj`` cannot be pickled.
        """
        try:
            payload = pickle.dumps(obj, protocol=self._protocol)
        except (pickle.PicklingError, AttributeError) as exc:
            raise TypeError(f"PickleSerializer cannot pickle the value: {exc}") from exc
        return _VERSION + self._sign(payload) + payload

    def loads(self, data: bytes) -> Any:
        """Verify the signature of ``data``, then unpickle it.

        Raises:
            ValueError: If ``data`` is unsigned, signed with another secret, or tampered with
                (nothing is unpickled then), or does not unpickle.
        """
        header = 1 + _DIGEST_SIZE
        if len(data) <= header or data[:1] != _VERSION:
            raise ValueError("refusing to unpickle: payload is not a signed layercache pickle")
        signature, payload = data[1:header], data[header:]
        if not hmac.compare_digest(signature, self._sign(payload)):
            raise ValueError(
                "refusing to unpickle: signature mismatch (wrong signing_secret or tampered data)"
            )
        try:
            return pickle.loads(payload)
        except Exception as exc:
            raise ValueError(f"signed pickle payload does not unpickle: {exc!r}") from exc
