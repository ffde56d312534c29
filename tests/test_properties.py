"""Property-based tests of every input: keys, payloads, markers and messages.

Every bad input raises the documented typed error or is a miss; none corrupts another
entry; round trips are exact for every supported type.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sa_stockpyle.codec import (
    Entry,
    Invalidation,
    decode_invalidation,
    decode_marker,
    decode_record,
    encode_invalidation,
    encode_record,
)
from sa_stockpyle.errors import InvalidKeyValueError, PayloadError
from sa_stockpyle.keys import MAX_KEY_LENGTH, KeyMaker, encode_value, key_spec
from sa_stockpyle.testing import Color, Foo

# -- values ---------------------------------------------------------------------------------

texts = st.one_of(
    st.text(),
    st.text(st.characters(exclude_categories=())),  # lone surrogates included
    st.text(min_size=300, max_size=3000),
)
key_scalars = st.one_of(
    texts,
    st.integers(),
    st.integers(min_value=2**63 - 2, max_value=2**200),
    st.booleans(),
    st.floats(allow_nan=False),
    st.decimals(allow_nan=False),
    st.binary(max_size=300),
    st.uuids(),
    st.datetimes(timezones=st.none() | st.timezones()),
    st.dates(),
    st.times(),
    st.sampled_from(Color),
    st.none(),
)
key_values = st.recursive(
    key_scalars, lambda inner: st.lists(inner, max_size=3).map(tuple), max_leaves=6
)


def _typed(value: Any) -> Any:
    """What decides whether two key values name the same object: type and equality."""
    if isinstance(value, tuple):
        return ("tuple", tuple(_typed(item) for item in value))
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return ("aware", value.astimezone(dt.timezone.utc))
    return (type(value).__name__, value)


MAKER = KeyMaker("prop")
SPEC = key_spec(Foo)


def _key(value: Any) -> str:
    return MAKER.key(SPEC, 0, (value,))


@settings(max_examples=400)
@given(key_values, key_values)
def test_keys_are_equal_exactly_when_values_are(a: Any, b: Any) -> None:
    first, second = _key(a), _key(b)
    for key in (first, second):
        assert len(key.encode()) <= MAX_KEY_LENGTH
        assert key.isprintable()
        assert " " not in key
    assert (first == second) == (_typed(a) == _typed(b))
    assert _key(a) == first  # deterministic


@settings(max_examples=400)
@given(key_values)
def test_every_encoded_value_is_printable_ascii_without_spaces(value: Any) -> None:
    # What lets KeyMaker check only the length of a key whose head it checked once.
    encoded = encode_value(value)
    assert encoded.isascii()
    assert encoded.isprintable()
    assert " " not in encoded


unkeyable = st.one_of(
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.sets(st.integers(), max_size=2),
    st.just(float("nan")),
    st.just(Decimal("NaN")),
    st.builds(object),
    st.tuples(st.integers(), st.lists(st.integers(), max_size=1)),
)


@given(unkeyable)
def test_values_that_cannot_be_keys_raise_the_typed_error(value: Any) -> None:
    with pytest.raises(InvalidKeyValueError, match=r"NaN|cannot be part of a key"):
        _key(value)


# -- payloads -------------------------------------------------------------------------------

state_scalars = st.one_of(
    texts,
    st.integers(),
    st.integers(min_value=2**64, max_value=2**300),
    st.booleans(),
    st.floats(),  # NaN, infinities and signed zeros included
    st.decimals(),
    st.binary(max_size=200),
    st.binary(max_size=20).map(bytearray),
    st.uuids(),
    st.datetimes(timezones=st.none() | st.timezones()),
    st.dates(),
    st.times(),
    st.timedeltas(),
    st.sampled_from(Color),
    st.none(),
)
state_values = st.recursive(
    state_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=5), inner, max_size=3),
        st.dictionaries(st.integers(), inner, max_size=2),
        st.frozensets(st.integers(), max_size=3),
        st.sets(st.text(max_size=3), max_size=3),
    ),
    max_leaves=8,
)


def _same(a: Any, b: Any) -> bool:
    """Equality that holds NaN equal to NaN and tells 0.0 from -0.0, types included."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    if isinstance(a, Decimal):
        return (a.is_nan() and b.is_nan()) or (a == b and str(a) == str(b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


@settings(max_examples=300)
@given(st.dictionaries(st.text(min_size=1, max_size=10), state_values, max_size=6))
def test_every_supported_value_round_trips_exactly(state: dict[str, Any]) -> None:
    entry = Entry(Foo, state, ("k",), None, None)
    decoded = decode_record(encode_record(entry), Foo)
    assert isinstance(decoded, Entry)
    assert decoded.klass is Foo
    assert _same(decoded.state, state)


@given(st.binary(max_size=400))
def test_random_bytes_never_decode_into_anything_but_payload_errors(data: bytes) -> None:
    with pytest.raises(PayloadError):
        decode_record(data, Foo)
    with pytest.raises(PayloadError):
        decode_invalidation(data)
    decode_marker(data)  # a marker or None, never an exception


@given(st.data())
def test_truncated_payloads_are_payload_errors(data: st.DataObject) -> None:
    payload = encode_record(Entry(Foo, {"key": 1, "zap": "ü" * 5, "bar": [1.5]}, ("k",), None))
    cut = data.draw(st.integers(min_value=0, max_value=len(payload) - 1))
    with pytest.raises(PayloadError):
        decode_record(payload[:cut], Foo)


@given(
    st.lists(st.tuples(st.integers(), st.text(max_size=5)), max_size=5),
    st.none() | st.integers(min_value=0, max_value=2**63 - 1),
    st.sampled_from(["", "beat", "bye"]),
    st.floats(min_value=0.001, max_value=3600),
)
def test_invalidation_messages_round_trip(
    keys: list[tuple[int, str]], seq: int | None, kind: str, heartbeat: float
) -> None:
    key_spec(Foo)
    removals: list[tuple[type, dict[str, Any]]] = [(Foo, {"zap": z, "bar": b}) for b, z in keys]
    message = Invalidation("origin", 1.5, removals, [Foo])
    if seq is not None:  # numbered, as every publisher of this version sends them
        message = Invalidation("origin", 1.5, removals, [Foo], seq, kind, heartbeat)
    decoded = decode_invalidation(encode_invalidation(message))
    assert decoded == message


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=8,
)


@given(st.dictionaries(st.sampled_from("otrcskh"), json_values, max_size=7))
def test_any_message_body_decodes_or_is_a_payload_error(body: dict[str, Any]) -> None:
    data = b"SPKI" + json.dumps(body).encode()
    with contextlib.suppress(PayloadError):  # anything else escaping fails the test
        decode_invalidation(data)
