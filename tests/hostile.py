"""Hypothesis strategies for hostile input: real payloads flipped, cut and spliced; numbers
across Python's integer digit limit; values nested across :data:`MAX_DEPTH`.

Shared by the decoder's properties (``tests/test_properties.py``) and the stores' read
paths (``tests/test_hostile_payloads.py``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from sa_stockpyle.codec import LEASE_MAGIC, MAGIC, TOMBSTONE_MAGIC
from sa_stockpyle.messages import MESSAGE_MAGIC
from sa_stockpyle.tagged import MAX_DEPTH
from sa_stockpyle.testing import Color

#: The most decimal digits ``int()`` and ``str()`` convert (4,300 unless changed).
DIGIT_LIMIT = sys.get_int_max_str_digits()

#: What every kind of payload, marker and message starts with.
MAGICS = (MAGIC, MESSAGE_MAGIC, TOMBSTONE_MAGIC, LEASE_MAGIC, MAGIC + b"{", MESSAGE_MAGIC + b"{")


def digits_of(value: int) -> str:
    """The decimal digits of ``value``, however many (``str()`` stops at the limit)."""
    return str(Decimal(value))


@st.composite
def long_ints(draw: st.DrawFn) -> tuple[int, int]:
    """``(digits, value)``: an int of ``digits`` decimal digits, mostly within a few of
    :data:`DIGIT_LIMIT`, either side of it."""
    digits = draw(st.integers(DIGIT_LIMIT - 2, DIGIT_LIMIT + 2) | st.integers(1, 2 * DIGIT_LIMIT))
    low = 10 ** (digits - 1) if digits > 1 else 0
    value = draw(st.integers(low, 10**digits - 1) | st.sampled_from([low, 10**digits - 1]))
    return digits, -value if draw(st.booleans()) else value


#: Scalars a set or a dict key can hold (no NaN: it is not equal to itself).
hashable_scalars = st.one_of(
    st.text(max_size=5),
    st.integers(),
    st.booleans(),
    st.floats(allow_nan=False),
    st.decimals(allow_nan=False),
    st.binary(max_size=8),
    st.uuids(),
    st.dates(),
    st.sampled_from(Color),
    st.none(),
)

#: Nesting depths, the ones either side of MAX_DEPTH often.
depths = st.integers(0, MAX_DEPTH + 3) | st.sampled_from([MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1])


@st.composite
def nested(draw: st.DrawFn, depth: int) -> Any:
    """A value whose deepest path goes through exactly ``depth`` containers (lists,
    tuples, dicts by str, int or tuple keys, sets, frozensets), each holding a few
    scalars besides."""
    value: Any = draw(hashable_scalars)
    hashable = True
    for _ in range(depth):
        siblings = draw(st.lists(hashable_scalars, max_size=2))
        kinds = ["list", "tuple", "dict", "int-keyed"]
        if hashable:  # what a set or a dict key can hold
            kinds += ["set", "frozenset", "key"]
        kind = draw(st.sampled_from(kinds))
        at = draw(st.integers(0, len(siblings)))
        items = [*siblings[:at], value, *siblings[at:]]
        if kind == "list":
            value, hashable = items, False
        elif kind == "tuple":
            value = tuple(items)
        elif kind == "dict":
            value, hashable = {f"k{i}": item for i, item in enumerate(items)}, False
        elif kind == "int-keyed":
            value, hashable = dict(enumerate(items)), False
        elif kind == "set":
            value, hashable = set(items), False
        elif kind == "frozenset":
            value = frozenset(items)
        else:
            value, hashable = dict.fromkeys(items, draw(hashable_scalars)), False
    return value


# -- mutations of real payloads --------------------------------------------------------------

#: Values written into a real payload's JSON in place of one of its own.
hostile_json = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        ["DIGITS_AT_LIMIT", "DIGITS_PAST_LIMIT", "NAN", "DEEP", "AT_DEPTH", "PAST_DEPTH"]
    ),
    st.none(),
    st.booleans(),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from(
        [
            {"$t": "timedelta", "v": [1e20, 0, 0]},
            {"$t": "timedelta", "v": [-(10**12), 0, 0]},
            {"$t": "bytes", "v": "!!"},
            {"$t": "decimal", "v": "1e999999999"},
            {"$t": "enum", "v": ["os", "system", 1]},
            {"$t": "zoned", "v": ["2020-01-01", "../../etc/passwd", 0]},
            {"$t": "set", "v": [[1]]},
            {"$t": "dict", "v": [[[1], 2]]},
            {"$t": "datetime", "v": "9999-99-99"},
        ]
    ),
)
#: What the placeholders among ``hostile_json`` stand for: JSON that ``json.dumps`` cannot
#: write from Python values (or only slowly).
SPECIAL = {
    '"DIGITS_AT_LIMIT"': "9" * DIGIT_LIMIT,
    '"DIGITS_PAST_LIMIT"': "-" + "9" * (DIGIT_LIMIT + 1),
    '"NAN"': "NaN",
    '"DEEP"': "[" * 5_000 + "]" * 5_000,
    '"AT_DEPTH"': "[" * MAX_DEPTH + "]" * MAX_DEPTH,
    '"PAST_DEPTH"': "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1),
}


def _replace_at(body: Any, path: list[int], value: Any) -> Any:
    """``body`` with the value at the position ``path`` picks (modulo each container's
    size, depth first) replaced by ``value``."""
    if not path or not isinstance(body, (dict, list)) or not body:
        return value
    if isinstance(body, dict):
        name = sorted(body)[path[0] % len(body)]
        return {**body, name: _replace_at(body[name], path[1:], value)}
    index = path[0] % len(body)
    return [*body[:index], _replace_at(body[index], path[1:], value), *body[index + 1 :]]


def _json_body(payload: bytes) -> Any:
    """The JSON after a payload's four-byte magic, or None when it holds none."""
    try:
        return json.loads(payload[4:])
    except ValueError:
        return None


@st.composite
def mutations(draw: st.DrawFn, payload: bytes, others: Sequence[bytes] = ()) -> bytes:
    """``payload`` (a real one: an entry, a pointer, a marker, a message) changed the ways a
    faulty disk, a network or an attacker changes bytes: cut short, bits or bytes flipped
    here and there, a stretch of it or of one of ``others`` spliced in or cut out, one of
    its JSON values (at any depth) replaced by a hostile one; or arbitrary bytes, with or
    without a magic of this package in front."""
    kind = draw(
        st.sampled_from(["bytes", "magic", "truncate", "flip", "flips", "splice", "json", "json"])
    )
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "magic":
        return draw(st.sampled_from(MAGICS)) + draw(st.binary(max_size=200))
    if kind == "truncate":
        return payload[: draw(st.integers(0, len(payload) - 1))]
    if kind == "splice":
        other = draw(st.sampled_from([payload, *others]))
        cut = draw(st.integers(0, len(payload)))
        resume = draw(st.integers(cut, len(payload)))
        start = draw(st.integers(0, len(other)))
        end = draw(st.integers(start, len(other)))
        return payload[:cut] + other[start:end] + payload[resume:]
    body = _json_body(payload) if kind == "json" else None
    if body is None:
        changed = bytearray(payload)
        for _ in range(1 if kind != "flips" else draw(st.integers(2, 8))):
            position = draw(st.integers(0, len(changed) - 1))
            changed[position] ^= draw(
                st.sampled_from([1, 2, 4, 8, 16, 32, 64, 128]) | st.integers(1, 255)
            )
        return bytes(changed)
    path = draw(st.lists(st.integers(0, 10), min_size=1, max_size=4))
    text = json.dumps(_replace_at(body, path, draw(hostile_json)))
    for placeholder, literal in SPECIAL.items():
        text = text.replace(placeholder, literal)
    return payload[:4] + text.encode()
