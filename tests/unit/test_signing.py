"""layercache._signing: canonical bytes, HMAC-SHA256 sign/verify, the replay window and memory."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from layercache._signing import (
    MessageSigner,
    ReplayError,
    ReplayGuard,
    SignatureError,
    canonical_bytes,
    check_timestamp,
    coerce_secret,
    sign,
    verify,
)

secrets_ = st.binary(min_size=1, max_size=64)
payloads = st.binary(max_size=2048)
json_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5)
    ),
    max_leaves=20,
)
messages = st.dictionaries(st.text(max_size=20), json_values, max_size=8)


def flip(data: bytes, index: int, bit: int) -> bytes:
    changed = bytearray(data)
    changed[index] ^= 1 << bit
    return bytes(changed)


# -- sign / verify -------------------------------------------------------------------------------


@given(secret=secrets_, payload=payloads)
def test_round_trip(secret: bytes, payload: bytes) -> None:
    signature = sign(secret, payload)
    assert len(signature) == 64
    assert signature == signature.lower()
    assert verify(secret, payload, signature)


@given(secret=secrets_, payload=payloads.filter(bool), data=st.data())
def test_any_bit_flip_in_the_payload_fails(secret: bytes, payload: bytes, data: Any) -> None:
    signature = sign(secret, payload)
    index = data.draw(st.integers(0, len(payload) - 1))
    bit = data.draw(st.integers(0, 7))
    assert not verify(secret, flip(payload, index, bit), signature)


@given(secret=secrets_, payload=payloads, data=st.data())
def test_any_bit_flip_in_the_signature_fails(secret: bytes, payload: bytes, data: Any) -> None:
    raw = sign(secret, payload).encode("ascii")
    index = data.draw(st.integers(0, len(raw) - 1))
    bit = data.draw(st.integers(0, 7))
    changed = flip(raw, index, bit).decode("latin-1")
    assert not verify(secret, payload, changed)


@given(secret=secrets_, other=secrets_, payload=payloads)
def test_another_secret_fails(secret: bytes, other: bytes, payload: bytes) -> None:
    if other == secret:
        return
    assert not verify(other, payload, sign(secret, payload))


@pytest.mark.parametrize(
    "signature",
    [None, 123, b"0" * 64, "", "0" * 63, "0" * 65, "é" * 64, "\ud800" * 64, "Z" * 64],
)
def test_verify_refuses_junk_without_raising(signature: object) -> None:
    assert not verify(b"k", b"payload", signature)


def test_uppercase_hex_is_not_the_signature() -> None:
    # The format is fixed (lowercase): a second spelling would be a second valid signature.
    signature = sign(b"k", b"p")
    assert signature != signature.upper()
    assert not verify(b"k", b"p", signature.upper())


def test_known_vector() -> None:
    # RFC 4231 test case 2.
    assert (
        sign(b"Jefe", b"what do ya want for nothing?")
        == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )


def test_coerce_secret() -> None:
    assert coerce_secret("clé") == "clé".encode()
    assert coerce_secret(b"\x00\x01") == b"\x00\x01"
    with pytest.raises(ValueError, match="empty"):
        coerce_secret("")
    with pytest.raises(ValueError, match="str or bytes"):
        coerce_secret(42)  # type: ignore[arg-type]


# -- canonical bytes -----------------------------------------------------------------------------


@given(message=messages, seed=st.integers(0, 2**32))
def test_canonical_bytes_ignore_key_order(message: dict[str, Any], seed: int) -> None:
    items = list(message.items())
    random.Random(seed).shuffle(items)
    assert canonical_bytes(dict(items)) == canonical_bytes(message)


@given(message=messages)
def test_canonical_bytes_survive_a_json_round_trip(message: dict[str, Any]) -> None:
    # What the receiver signs (its parse of the wire JSON) equals what the sender signed,
    # whatever formatting the wire used.
    for wire in (
        json.dumps(message),
        json.dumps(message, ensure_ascii=False, indent=2),
        json.dumps(message, separators=(",", ":")),
    ):
        assert canonical_bytes(json.loads(wire)) == canonical_bytes(message)


@given(message=messages)
def test_canonical_bytes_are_ascii_and_compact(message: dict[str, Any]) -> None:
    data = canonical_bytes(message)
    data.decode("ascii")
    assert json.loads(data) == json.loads(json.dumps(message))


def test_canonical_bytes_shape() -> None:
    assert canonical_bytes({"b": [1, 2.5], "a": "é"}) == b'{"a":"\\u00e9","b":[1,2.5]}'


@pytest.mark.parametrize("bad", [{"t": math.nan}, {"t": math.inf}, {"t": object()}, {1: 2, "a": 3}])
def test_canonical_bytes_refuse_what_json_cannot_carry(bad: dict[Any, Any]) -> None:
    with pytest.raises(ValueError, match=r"JSON compliant|canonicalised"):
        canonical_bytes(bad)


# -- MessageSigner -------------------------------------------------------------------------------


@given(secret=secrets_, message=messages)
def test_signer_round_trip_through_json(secret: bytes, message: dict[str, Any]) -> None:
    signer = MessageSigner(secret)
    signed = signer.signed(message)
    received = json.loads(json.dumps(signed, ensure_ascii=False))
    assert signer.verify(received) == signed["sig"]


@given(secret=secrets_, message=messages.filter(bool), data=st.data())
def test_signer_detects_a_changed_field(secret: bytes, message: dict[str, Any], data: Any) -> None:
    signer = MessageSigner(secret)
    signed = signer.signed(message)
    field = data.draw(st.sampled_from(sorted(k for k in signed if k != "sig")))
    changed = dict(signed)
    changed[field] = [changed[field], "tampered"]
    with pytest.raises(SignatureError, match="does not match"):
        signer.verify(changed)


def test_signer_needs_the_field() -> None:
    signer = MessageSigner("s")
    with pytest.raises(SignatureError, match="not signed"):
        signer.verify({"a": 1})
    with pytest.raises(SignatureError, match="does not match"):
        MessageSigner("other").verify(signer.signed({"a": 1}))


def test_signer_repr_hides_the_secret() -> None:
    assert "hunter2" not in repr(MessageSigner("hunter2"))


# -- replay window and memory ----------------------------------------------------------------------


@given(offset=st.floats(-100, 100), window=st.floats(0.001, 50))
def test_check_timestamp_is_the_window(offset: float, window: float) -> None:
    now = 1_700_000_000.0
    inside = abs(now - (now + offset)) <= window
    if inside:
        check_timestamp(now + offset, now, window)
    else:
        with pytest.raises(ReplayError, match="outside the replay window"):
            check_timestamp(now + offset, now, window)


@pytest.mark.parametrize("timestamp", [math.nan, math.inf, -math.inf])
def test_check_timestamp_refuses_non_finite(timestamp: float) -> None:
    with pytest.raises(ReplayError):
        check_timestamp(timestamp, 0.0, 30.0)


def test_guard_refuses_a_duplicate_signature() -> None:
    guard = ReplayGuard(30.0)
    guard.check("a" * 64, 100.0, 100.0)
    guard.check("b" * 64, 100.0, 100.0)  # same timestamp, other signature: fine
    with pytest.raises(ReplayError, match="seen before"):
        guard.check("a" * 64, 100.0, 101.0)
    assert len(guard) == 2


def test_guard_refuses_old_and_future_messages() -> None:
    guard = ReplayGuard(30.0)
    with pytest.raises(ReplayError, match="outside"):
        guard.check("old", 69.0, 100.0)
    with pytest.raises(ReplayError, match="outside"):
        guard.check("future", 131.0, 100.0)
    guard.check("edge", 70.0, 100.0)


def test_guard_forgets_what_left_the_window_and_still_refuses_it() -> None:
    guard = ReplayGuard(10.0)
    guard.check("s", 100.0, 100.0)
    guard.check("t", 105.0, 105.0)
    guard.check("u", 111.0, 111.0)  # forgets "s" (older than 101)
    assert len(guard) == 2
    with pytest.raises(ReplayError):  # the window refuses it now...
        guard.check("s", 100.0, 111.0)
    with pytest.raises(ReplayError):  # ...and the floor does if the clock steps back
        guard.check("s", 100.0, 100.0)


def test_guard_memory_is_bounded_and_overflow_stays_safe() -> None:
    guard = ReplayGuard(1000.0, max_entries=3)
    for i in range(10):
        guard.check(f"sig{i}", 100.0 + i, 110.0)
        assert len(guard) <= 3
    assert guard.floor == 106.0  # sig0..sig6 were forgotten, newest forgotten stamp 106
    for i in range(10):  # nothing seen can be replayed, forgotten or not
        with pytest.raises(ReplayError):
            guard.check(f"sig{i}", 100.0 + i, 110.0)
    guard.check("late-but-new", 106.5, 110.0)  # newer than the floor: accepted


@settings(max_examples=50)
@given(
    events=st.lists(
        st.tuples(st.integers(0, 30), st.floats(0, 40), st.floats(0, 0.5)), max_size=200
    ),
    capacity=st.integers(1, 20),
)
def test_guard_never_accepts_a_signature_twice(
    events: list[tuple[int, float, float]], capacity: int
) -> None:
    # Whatever the order, clock and memory size: each signature is accepted at most once.
    guard = ReplayGuard(5.0, max_entries=capacity)
    stamps: dict[int, float] = {}
    accepted: set[int] = set()
    now = 0.0
    for sig, advance, age in events:
        now += advance / 10
        stamp = stamps.setdefault(sig, now - age)  # a replay carries the same timestamp
        try:
            guard.check(str(sig), stamp, now)
        except ReplayError:
            continue
        assert sig not in accepted
        accepted.add(sig)
        assert len(guard) <= capacity


@pytest.mark.parametrize("window", [0, -1, math.inf, math.nan, True, "30"])
def test_guard_refuses_a_bad_window(window: Any) -> None:
    with pytest.raises(ValueError, match="replay window"):
        ReplayGuard(window)


@pytest.mark.parametrize("size", [0, -1, 1.5, True])
def test_guard_refuses_a_bad_size(size: Any) -> None:
    with pytest.raises(ValueError, match="max_entries"):
        ReplayGuard(30.0, max_entries=size)
