"""Property-based tests of every input: keys, payloads, markers and messages.

Every bad input raises the documented typed error or is a miss; none corrupts another
entry; round trips are exact for every supported type.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import json
import math
import string
from decimal import Decimal
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given, reject, settings
from hypothesis import strategies as st

from sa_stockpyle import codec
from sa_stockpyle.cache_keys import MAX_KEY_LENGTH, KeyMaker
from sa_stockpyle.codec import (
    MAGIC,
    MAX_PAYLOAD_BYTES,
    Entry,
    Marker,
    Pointer,
    Record,
    carriable,
    decode_marker,
    decode_record,
    encode_marker,
    encode_record,
    entry_version,
)
from sa_stockpyle.errors import InvalidKeyValueError, PayloadError
from sa_stockpyle.key_encoding import encode_value
from sa_stockpyle.keys import class_token, key_spec
from sa_stockpyle.messages import Invalidation, decode_invalidation, encode_invalidation
from sa_stockpyle.signing import Signer
from sa_stockpyle.stores import ShoveStore
from sa_stockpyle.tagged import MAX_DEPTH
from sa_stockpyle.testing import Color, Foo
from tests.helpers import examples
from tests.hostile import (
    DIGIT_LIMIT,
    MAGICS,
    depths,
    digits_of,
    long_ints,
    mutations,
    nested,
)

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


@settings(max_examples=examples(400))
@given(key_values, key_values)
def test_keys_are_equal_exactly_when_values_are(a: Any, b: Any) -> None:
    first, second = _key(a), _key(b)
    for key in (first, second):
        assert len(key.encode()) <= MAX_KEY_LENGTH
        assert key.isprintable()
        assert " " not in key
    assert (first == second) == (_typed(a) == _typed(b))
    assert _key(a) == first  # deterministic


@settings(max_examples=examples(400))
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


# -- equal values, written differently ------------------------------------------------------
# docs/keys.md: "Values that are equal are one key: 0.0 and -0.0, Decimal("1.5") and
# Decimal("1.50"), and aware datetimes naming the same instant in different zones", and
# "Values are type-stable: 1, "1", True, 1.0 and b"1" are five different keys".


@st.composite
def decimals_written_twice(draw: st.DrawFn) -> tuple[Decimal, Decimal]:
    """One Decimal value in two spellings: more trailing zeros and a smaller exponent
    (1.5 and 1.500, 1E+3 and 1000), or zeros of any sign and exponent; exponents past
    the default context's too."""
    sign = draw(st.integers(0, 1))
    digits = tuple(draw(st.lists(st.integers(0, 9), min_size=1, max_size=40)))
    exponent = draw(st.integers(-30, 30) | st.integers(-(10**7), 10**7))
    value = Decimal((sign, digits, exponent))
    if value == 0:
        other = Decimal((draw(st.integers(0, 1)), (0,), draw(st.integers(-(10**7), 10**7))))
    else:
        zeros = draw(st.integers(0, 40))
        other = Decimal((sign, digits + (0,) * zeros, exponent - zeros))
    return (value, other) if draw(st.booleans()) else (other, value)


UTC = dt.timezone.utc
#: Zones with a clock change: a fold (the wall hour that happens twice) and a gap.
CHANGING = [
    ZoneInfo(name) for name in ("America/New_York", "Europe/London", "Australia/Lord_Howe")
]
#: UTC instants within an hour or so of one of their clock changes.
CHANGES = [
    dt.datetime(2020, 11, 1, 6, tzinfo=UTC),  # New York, back an hour
    dt.datetime(2020, 3, 8, 7, tzinfo=UTC),  # New York, forward
    dt.datetime(2021, 10, 31, 1, tzinfo=UTC),  # London, back
    dt.datetime(2021, 4, 3, 15, tzinfo=UTC),  # Lord Howe, back half an hour
]
zones = st.one_of(
    st.just(UTC),
    st.sampled_from(CHANGING),
    st.timezones(),
    # Fixed offsets in whole minutes (what a payload can carry), up to a day.
    st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda m: dt.timezone(dt.timedelta(minutes=m))),
)
instants = st.one_of(
    st.datetimes(timezones=st.just(UTC)),
    st.builds(
        lambda change, minutes: change + dt.timedelta(minutes=minutes),
        st.sampled_from(CHANGES),
        st.integers(-90, 90),
    ),
)


@st.composite
def one_instant_in_two_zones(draw: st.DrawFn) -> tuple[dt.datetime, dt.datetime]:
    """One instant, as the wall times of two zones (a wall time in a fold is told apart by
    its fold, and Python holds it unequal to every other zone's reading, see PEP 495)."""
    instant = draw(instants)
    try:
        return instant.astimezone(draw(zones)), instant.astimezone(draw(zones))
    except OverflowError:
        reject()  # an instant this close to datetime's limits has no wall time there


equal_scalars = st.one_of(
    st.sampled_from([(0.0, -0.0), (-0.0, 0.0)]),
    decimals_written_twice(),
    st.sampled_from([(Decimal("Infinity"), Decimal("inf")), (Decimal("-Inf"), -Decimal("inf"))]),
    one_instant_in_two_zones(),
)
equal_values = equal_scalars | st.lists(equal_scalars, min_size=1, max_size=3).map(
    lambda pairs: (tuple(a for a, _ in pairs), tuple(b for _, b in pairs))
)


@settings(max_examples=examples(300))
@given(equal_values)
def test_equal_values_written_differently_are_one_key(pair: tuple[Any, Any]) -> None:
    first, second = pair
    assert _key(first) == _key(second)
    assert MAKER.key(SPEC, 1, (first, 1)) == MAKER.key(SPEC, 1, (second, 1))
    # A store's lookup by either finds the object stored with the other, and the entry's
    # key values, decoded from a shared layer's payload, agree with the key asked.
    store = ShoveStore(shove={})
    store.put(Foo(key=first, zap=first, bar=0))
    assert store.get(Foo, second) == Foo(key=first, zap=first, bar=0)
    assert store.get(Foo, {"zap": second, "bar": 0}) == Foo(key=first, zap=first, bar=0)
    assert store.stats.count(Foo, "corrupt") == 0


@given(st.integers(-(2**80), 2**80))
def test_equal_numbers_of_different_types_are_different_keys(number: int) -> None:
    spellings: list[Any] = [number, float(number), Decimal(number), str(number)]
    spellings += [str(number).encode(), (number,)]
    if number in (0, 1):
        spellings.append(bool(number))
    assert len({_key(value) for value in spellings}) == len(spellings)


@given(
    st.datetimes(max_value=dt.datetime(1, 1, 2))
    | st.datetimes(min_value=dt.datetime(9999, 12, 31)),
    zones,
)
def test_an_instant_outside_the_range_of_utc_is_refused_as_a_key(
    wall: dt.datetime, zone: dt.tzinfo
) -> None:
    aware = wall.replace(tzinfo=zone)
    try:
        instant = aware.astimezone(UTC)
    except OverflowError:
        with pytest.raises(InvalidKeyValueError, match="outside datetime's range in UTC"):
            _key(aware)
    else:
        assert _key(aware) == _key(instant)


# -- payloads -------------------------------------------------------------------------------

state_scalars = st.one_of(
    texts,
    st.integers(),
    st.integers(min_value=2**64, max_value=10**DIGIT_LIMIT - 1),  # up to the digit limit
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
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=5), inner, max_size=4),
        st.dictionaries(st.integers(), inner, max_size=3),
        st.frozensets(st.integers(), max_size=4),
        st.sets(st.text(max_size=3), max_size=4),
    ),
    max_leaves=12,
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


@settings(max_examples=examples(300))
@given(st.dictionaries(st.text(min_size=1, max_size=10), state_values, max_size=6))
def test_every_supported_value_round_trips_exactly(state: dict[str, Any]) -> None:
    entry = Entry(Foo, state, ("k",), None, None)
    decoded = decode_record(encode_record(entry), Foo)
    assert isinstance(decoded, Entry)
    assert decoded.klass is Foo
    assert _same(decoded.state, state)


# -- numbers across the digit limit ---------------------------------------------------------

#: Where a number sits in a state: as it is, in a list, a tuple, a dict, a set, a dict key.
placements = st.sampled_from(
    [
        lambda n: n,
        lambda n: [1, n],
        lambda n: (n,),
        lambda n: {"n": n},
        lambda n: frozenset({n}),
        lambda n: {n: "as a key"},
    ]
)


@settings(max_examples=examples(100))
@given(long_ints(), placements)
def test_an_int_past_the_digit_limit_is_refused_and_one_within_it_round_trips(
    number: tuple[int, int], placed: Any
) -> None:
    digits, value = number
    entry = Entry(Foo, {"key": 1, "n": placed(value)}, ("k",), None)
    message = Invalidation("origin", 1.5, [(Foo, {"key": value})], [])
    if digits > DIGIT_LIMIT:
        with pytest.raises(PayloadError, match=r"attribute 'n' cannot be stored.*digits"):
            encode_record(entry)
        with pytest.raises(PayloadError, match="digits"):
            encode_invalidation(message)
    else:
        decoded = decode_record(encode_record(entry), Foo)
        assert isinstance(decoded, Entry)
        assert _same(decoded.state, entry.state)
        assert decode_invalidation(encode_invalidation(message)) == message


def _encodes(state: dict[str, Any]) -> bool:
    try:
        encode_record(Entry(Foo, state, (), None))
    except PayloadError:
        return False
    return True


#: Scalars of every size either side of what carriable() takes without encoding.
plain_values = (
    long_ints().map(lambda number: number[1])
    | st.floats()
    | st.booleans()
    | st.none()
    | st.text()
    | st.builds(str.__mul__, st.sampled_from(["x", "\u00e9", "\U0001f600"]), st.integers(0, 10**5))
    | state_values
)


@settings(max_examples=examples(200))
@given(st.dictionaries(st.text(min_size=1, max_size=10), plain_values, max_size=5))
def test_carriable_says_whether_a_state_encodes(state: dict[str, Any]) -> None:
    # Its shortcut for a row of plain values skips the encoding, never the verdict.
    if _encodes(state):
        carriable(Foo, state)
    else:
        with pytest.raises(PayloadError):
            carriable(Foo, state)


def test_carriable_refuses_what_is_past_a_limit_in_a_state_of_plain_values() -> None:
    with pytest.raises(PayloadError, match="digits"):
        carriable(Foo, {"key": 1, "n": 10**DIGIT_LIMIT})
    with pytest.raises(PayloadError, match="bytes"):
        carriable(Foo, {"key": 1, "text": "\u00e9" * (MAX_PAYLOAD_BYTES // 6 + 1)})
    carriable(Foo, {"key": 1, "text": "x" * (MAX_PAYLOAD_BYTES // 12)})


#: Payloads with a number ``N`` in each place a decoder reads one.
NUMBERED = [
    b'SPK1{"c":"sa_stockpyle.testing.models.Foo","s":{"key":1,"n":N},"k":["k"],"x":null}',
    b'SPK1{"v":N,"c":"sa_stockpyle.testing.models.Foo","s":{"key":1},"k":["k"],"x":null}',
    b'SPK1{"c":"sa_stockpyle.testing.models.Foo","s":{"key":1},"k":["k"],"x":N}',
    b'SPK1{"c":"sa_stockpyle.testing.models.Foo","s":{"key":1},"k":[N],"x":null}',
    b'SPK1{"p":"k","x":N}',
    b'SPKI{"o":"x","t":N,"r":[],"c":[]}',
    b'SPKI{"o":"x","t":1,"r":[],"c":[],"s":N,"k":"","h":1}',
    b'SPKI{"o":"x","t":1,"r":[["sa_stockpyle.testing.models.Foo",{"key":N}]],"c":[]}',
]


@settings(max_examples=examples(100))
@given(long_ints(), st.sampled_from(NUMBERED))
def test_a_payload_holding_an_int_past_the_digit_limit_is_a_payload_error(
    number: tuple[int, int], template: bytes
) -> None:
    digits, value = number
    class_token(Foo)  # the messages name Foo, a class this process has made keys for
    payload = template.replace(b"N", digits_of(value).encode())
    decoded: Record | Invalidation | None
    try:
        if payload.startswith(MAGIC):
            decoded = decode_record(payload, Foo)
        else:
            decoded = decode_invalidation(payload)
    except PayloadError:  # anything else escaping fails the test
        decoded = None
    if digits > DIGIT_LIMIT:
        assert decoded is None
    elif template == NUMBERED[0]:
        assert isinstance(decoded, Entry)
        assert decoded.state["n"] == value
    # Where a write looks for the version of the entry it would replace.
    version = entry_version(payload)
    assert version is None or (digits <= DIGIT_LIMIT and version == value)


@pytest.mark.parametrize(
    "number",
    [
        2**63,
        2**64,
        2**64 + 10**18 + 1,
        19933688932870350000,  # msgspec before 0.19 read this 65-bit int wrong, silently
        -(2**63) - 1,
        10**300,
    ],
)
def test_ints_past_64_bits_read_exactly(number: int) -> None:
    # msgspec before 0.18 read such ints as floats, with no error to fall back on: the
    # version pinned must read them exactly (as the json module does).
    payload = encode_record(Entry(Foo, {"key": 1, "n": number}, ("k",), None, None))
    assert codec._PARSER.decode(payload[len(MAGIC) :]).s["n"] == number
    decoded = decode_record(payload, Foo)
    assert isinstance(decoded, Entry)
    assert decoded.state["n"] == number
    assert type(decoded.state["n"]) is int


@settings(max_examples=examples(300))
@given(
    st.dictionaries(
        st.text(st.characters(exclude_categories=()), max_size=4),
        st.recursive(
            long_ints().filter(lambda number: number[0] <= DIGIT_LIMIT).map(lambda n: n[1])
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(st.characters(exclude_categories=()), max_size=8)
            | st.booleans()
            | st.none(),
            lambda inner: (
                st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner)
            ),
            max_leaves=8,
        ),
        max_size=5,
    ),
    st.booleans(),
)
def test_the_fast_parser_reads_a_payload_as_json_does_or_leaves_it_to_json(
    state: dict[str, Any], ascii_only: bool
) -> None:
    # msgspec parses payloads first; what it accepts must be what the json module reads
    # (exact ints up to the digit limit, floats to the last bit, every string), and what
    # it refuses (a lone surrogate) is read by the json module.  Ints past the limit are
    # refused by both (see the test above).
    body = {"c": "token", "s": state, "k": ["k"], "x": 1.5}
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=ascii_only)
    try:
        data = MAGIC + text.encode()
    except UnicodeEncodeError:
        reject()  # a lone surrogate written raw: no UTF-8, never a payload
    try:
        parsed = codec._PARSER.decode(data[len(MAGIC) :])
    except msgspec.MsgspecError:
        parsed = None
    expected = json.loads(text)["s"]
    if parsed is not None:
        assert _same(parsed.s, expected)
    assert _same(codec._body(data).s, expected)  # one parser or the other


# -- nesting across MAX_DEPTH ---------------------------------------------------------------


@settings(max_examples=examples(60))
@given(depths, st.data())
def test_values_nested_to_max_depth_round_trip_and_deeper_ones_are_refused(
    depth: int, data: st.DataObject
) -> None:
    value = data.draw(nested(depth))
    entry = Entry(Foo, {"key": 1, "deep": value}, ("k",), None)
    if depth > MAX_DEPTH:
        with pytest.raises(PayloadError, match=f"'deep'.*more than {MAX_DEPTH} levels"):
            encode_record(entry)
        return
    payload = encode_record(entry)
    decoded = decode_record(payload, Foo)
    assert isinstance(decoded, Entry)
    assert _same(decoded.state, entry.state)
    # The same value inside more lists, as another writer could have put it: the decoder
    # reads it up to MAX_DEPTH levels, and refuses it past them.
    more = data.draw(st.integers(1, 3))
    body = json.loads(payload[len(MAGIC) :])
    for _ in range(more):
        body["s"]["deep"] = [body["s"]["deep"]]
    deeper = MAGIC + json.dumps(body).encode()
    if depth + more > MAX_DEPTH:
        with pytest.raises(PayloadError, match=f"more than {MAX_DEPTH} levels"):
            decode_record(deeper, Foo)
    else:
        wrapped = decode_record(deeper, Foo)
        assert isinstance(wrapped, Entry)
        for _ in range(more):
            value = [value]
        assert _same(wrapped.state["deep"], value)


# -- bytes that are no payload, and real payloads changed -----------------------------------


@given(st.binary(max_size=400) | st.builds(bytes.__add__, st.sampled_from(MAGICS), st.binary()))
def test_random_bytes_never_decode_into_anything_but_payload_errors(data: bytes) -> None:
    with contextlib.suppress(PayloadError):  # a magic and JSON of a record could decode
        decode_record(data, Foo)
    with contextlib.suppress(PayloadError):
        decode_invalidation(data)
    decode_marker(data)  # a marker or None, never an exception
    version = entry_version(data)
    assert version is None or type(version) is int
    if not data.startswith(MAGICS):
        with pytest.raises(PayloadError):
            decode_record(data, Foo)
        with pytest.raises(PayloadError):
            decode_invalidation(data)


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


finite_times = st.floats(min_value=0, max_value=4e9)
message_values = st.integers() | st.text(max_size=8) | st.decimals(allow_nan=False) | st.uuids()


@st.composite
def real_payloads(draw: st.DrawFn) -> tuple[bytes, Record | Marker | Invalidation]:
    """An encoded record, marker or message, and what it encodes."""
    kind = draw(st.sampled_from(["entry", "pointer", "tombstone", "lease", "message"]))
    original: Record | Marker | Invalidation
    if kind == "entry":
        state = draw(st.dictionaries(st.text(min_size=1, max_size=8), state_values, max_size=4))
        keys = tuple(draw(st.lists(st.text(max_size=20), min_size=1, max_size=3)))
        version = draw(st.none() | st.integers(0, 2**63))
        original = Entry(Foo, state, keys, draw(st.none() | finite_times), version)
        return encode_record(original), original
    if kind == "pointer":
        original = Pointer(draw(st.text(max_size=40)), draw(st.none() | finite_times))
        return encode_record(original), original
    if kind == "message":
        class_token(Foo)  # a class this process has made keys for
        lookups = st.builds(lambda v: (Foo, {"key": v}), message_values) | st.builds(
            lambda z, b: (Foo, {"zap": z, "bar": b}), message_values, message_values
        )
        original = Invalidation(
            draw(st.text(max_size=10)),
            draw(finite_times),
            draw(st.lists(lookups, max_size=3)),
            draw(st.lists(st.just(Foo), max_size=1)),
            draw(st.integers(0, 2**63 - 1)),
            draw(st.sampled_from(["", "beat", "bye"])),
            draw(st.floats(min_value=0.001, max_value=3600)),
        )
        return encode_invalidation(original), original
    lease = None
    if kind == "lease":
        lease = draw(st.text(string.ascii_letters + string.digits, min_size=1, max_size=16))
    taken = round(draw(finite_times), 6)
    original = Marker(lease, taken, round(taken + draw(st.floats(0, 3600)), 3))
    return encode_marker(original), original


#: What a decoded value may be made of: plain data, and members of Enum classes.
_CARRIED = frozenset(
    {str, int, float, bool, type(None), Decimal, bytes, bytearray, UUID}
    | {dt.datetime, dt.date, dt.time, dt.timedelta}
)


def _carried(value: Any) -> bool:
    """Whether ``value`` is made only of the types a payload carries."""
    kind = type(value)
    if kind in (list, tuple, set, frozenset):
        return all(map(_carried, value))
    if kind is dict:
        return all(_carried(key) and _carried(item) for key, item in value.items())
    return kind in _CARRIED or isinstance(value, enum.Enum)


def _well_formed(record: Record) -> None:
    """What a decoded record must be, whatever bytes it came from."""
    expires_at = record.expires_at
    assert expires_at is None or (type(expires_at) in (int, float) and math.isfinite(expires_at))
    if isinstance(record, Pointer):
        assert type(record.primary) is str
        return
    assert issubclass(record.klass, Foo)
    assert type(record.state) is dict
    assert all(type(name) is str and _carried(value) for name, value in record.state.items())
    assert type(record.keys) is tuple
    assert all(type(key) is str for key in record.keys)
    assert record.version is None or type(record.version) is int


def _same_record(a: Record, b: Record) -> bool:
    if isinstance(a, Pointer) or isinstance(b, Pointer):
        return a == b
    return (
        (a.klass, a.keys, a.expires_at, a.version) == (b.klass, b.keys, b.expires_at, b.version)
    ) and _same(a.state, b.state)


@settings(max_examples=examples(300))
@given(real_payloads(), real_payloads(), st.data())
def test_a_real_payload_changed_anywhere_decodes_to_what_it_says_or_a_payload_error(
    real: tuple[bytes, Record | Marker | Invalidation],
    other: tuple[bytes, Record | Marker | Invalidation],
    data: st.DataObject,
) -> None:
    payload, original = real
    changed = data.draw(mutations(payload, [other[0]]))
    # Each decoder gives a well-formed value or a PayloadError; anything else escaping
    # fails the test.
    record: Record | None = None
    with contextlib.suppress(PayloadError):
        record = decode_record(changed, Foo)
    if record is not None:
        _well_formed(record)
        # What decodes is a record the encoder writes, and it reads back the same.
        assert _same_record(decode_record(encode_record(record), Foo), record)
    marker = decode_marker(changed)
    if marker is not None:
        assert math.isfinite(marker.taken)
        assert math.isfinite(marker.expires_at)
    message: Invalidation | None = None
    with contextlib.suppress(PayloadError):
        message = decode_invalidation(changed)
    if message is not None:
        assert all(isinstance(klass, type) for klass in message.classes)
        assert all(
            isinstance(klass, type) and all(map(_carried, lookup.values()))
            for klass, lookup in message.removals
        )
    # One reading at most, by the magic; and a payload left as it was reads as it was.
    assert [record, marker, message].count(None) >= 2
    if changed == payload:
        if isinstance(original, (Entry, Pointer)):
            assert record is not None
            assert _same_record(record, original)
        else:
            assert original in (marker, message)
    version = entry_version(changed)
    assert version is None or type(version) is int


SIGNER = Signer(b"0123456789abcdef-property-key")


@settings(max_examples=examples(200))
@given(real_payloads(), real_payloads(), st.data())
def test_a_signed_payload_changed_anywhere_is_refused(
    real: tuple[bytes, Record | Marker | Invalidation],
    other: tuple[bytes, Record | Marker | Invalidation],
    data: st.DataObject,
) -> None:
    signed = SIGNER.sign(real[0])
    changed = data.draw(mutations(signed, [SIGNER.sign(other[0]), other[0]]))
    if changed == signed:
        assert SIGNER.verify(changed) == real[0]
    else:
        with pytest.raises(PayloadError):
            SIGNER.verify(changed)


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
