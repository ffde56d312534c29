"""Payloads: the record envelope, expiry, markers and safe decoding (the messages between
processes are :mod:`sa_stockpyle.messages`).

A store keeps two kinds of records under its cache keys:

* an :class:`Entry` under the primary key: the object's class, its state (a
  :func:`~sa_stockpyle.snapshots.snapshot` of its attributes, never the live object),
  every cache key that answers to it, and its expiry;
* a :class:`Pointer` under each alternate key: the primary key it leads to.

A lookup by an alternate key follows the pointer and then checks that the entry still
lists that alternate key, so a pointer left behind after the key moved (the user changed
their email) is a miss instead of a stale answer.  The mapped class's schema fingerprint
travels in the class token of shared payloads, so state written under another mapping
never decodes as this one.

Shared layers (Redis, memcached, files) hold records as bytes: ``SPK1`` followed by JSON
whose values are tagged where JSON would not give them back exactly
(:mod:`sa_stockpyle.tagged`).  Decoding builds only plain data, the requested class or one
of its subclasses, and already-imported Enum classes: a payload can never import a
module, run code or build an arbitrary class.  The allow-list is enforced by the decoder
itself, within documented limits (:data:`MAX_PAYLOAD_BYTES`,
:data:`~sa_stockpyle.tagged.MAX_DEPTH`, Python's integer digit limit).  Anything that does
not decode raises :class:`~sa_stockpyle.errors.PayloadError`, which stores turn into a
counted miss and a delete.  What the decoder cannot tell, a well-formed but false value,
an optional MAC (:class:`~sa_stockpyle.signing.Signer`) rules out.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import time
from collections.abc import Callable
from decimal import InvalidOperation
from typing import Any

import msgspec

from sa_stockpyle.errors import InvalidLifetimeError, PayloadError
from sa_stockpyle.keys import class_token, token_of
from sa_stockpyle.snapshots import check_state
from sa_stockpyle.tagged import pack, unpack

__all__ = [
    "JSON_DECODER",
    "JSON_ENCODER",
    "LEASE_MAGIC",
    "MAGIC",
    "MAX_PAYLOAD_BYTES",
    "TOMBSTONE_MAGIC",
    "UNDECODABLE",
    "VERSIONED_HEAD",
    "Entry",
    "Lifetime",
    "LifetimeCallback",
    "Marker",
    "Pointer",
    "Record",
    "carriable",
    "decode_marker",
    "decode_record",
    "encode_marker",
    "encode_record",
    "entry_version",
    "expiry",
    "packed",
]

#: The first bytes of every payload; the digit is the payload format version.
MAGIC = b"SPK1"

#: What ``lifetime_cb`` may return: seconds, a duration, an absolute time, or no expiry.
Lifetime = int | dt.timedelta | dt.datetime | None
LifetimeCallback = Callable[[Any], Lifetime]


class Entry(msgspec.Struct, gc=False):
    """The record under an object's primary key."""

    klass: type
    state: dict[str, Any]
    keys: tuple[str, ...]
    expires_at: float | None
    #: The object's ``version_id_col`` value (see :func:`version_of`), or None.
    version: int | None = None


class Pointer(msgspec.Struct, gc=False):
    """The record under an alternate key: the primary key it leads to."""

    primary: str
    expires_at: float | None


Record = Entry | Pointer

#: The first bytes of a tombstone and of a lease in a shared layer.
TOMBSTONE_MAGIC = b"SPKT"
LEASE_MAGIC = b"SPKL"


class Marker(msgspec.Struct, frozen=True, gc=False):
    """What a key holds instead of a record while it must not be filled freely.

    A *tombstone* (``lease`` None) is what every removal leaves: it stops a fill that
    read the database before the removal from writing the old state back.  A *lease* is
    taken by a reader that missed and is about to read the database; only that reader may
    fill the key, and only while its lease is still there (any removal or newer write
    replaces it).  Both expire.  ``taken`` is when the marker was written, on the clock of
    the backend that holds it (Redis: the server's); ``expires_at`` is a Unix time.
    """

    lease: str | None
    taken: float
    expires_at: float


def encode_marker(marker: Marker) -> bytes:
    """Serialise a marker for a shared layer: ``SPKT:taken:expiry`` for a tombstone,
    ``SPKL:token:taken:expiry`` for a lease."""
    if marker.lease is None:
        return TOMBSTONE_MAGIC + b":%.6f:%.3f" % (marker.taken, marker.expires_at)
    lease = marker.lease.encode()
    return LEASE_MAGIC + b":%s:%.6f:%.3f" % (lease, marker.taken, marker.expires_at)


#: How an entry with a version begins (see :func:`encode_record`): the version follows,
#: where :func:`entry_version` and the Redis script that orders writes read it.
VERSIONED_HEAD = MAGIC + b'{"v":'
_VERSION = re.compile(re.escape(VERSIONED_HEAD) + rb"(\d+),")


def entry_version(data: bytes) -> int | None:
    """The version an encoded entry starts with, or None (no version, not an entry)."""
    match = _VERSION.match(data)
    if match is None:
        return None
    try:
        return int(match[1])
    except ValueError:
        # More digits than int_max_str_digits: no entry this package wrote (the encoder
        # refuses such a number), so a write goes over it like over any corrupt record.
        return None


def decode_marker(data: bytes) -> Marker | None:
    """The marker ``data`` holds, or None when it holds a record (or anything else)."""
    head = data[:4]
    if head not in (TOMBSTONE_MAGIC, LEASE_MAGIC):
        return None
    try:
        if head == TOMBSTONE_MAGIC:
            token = None
            taken, expires_at = data[5:].split(b":")
        else:
            raw, taken, expires_at = data[5:].split(b":")
            token = raw.decode("ascii")
        marker = Marker(token, float(taken), float(expires_at))
    except ValueError:
        return None
    # A marker that would never expire (NaN, infinity) is forged: not a marker at all,
    # so it reads as an undecodable record, a counted miss that is replaced.
    return marker if math.isfinite(marker.taken) and math.isfinite(marker.expires_at) else None


def expiry(lifetime: object, now: float) -> float | None:
    """Turn a ``lifetime_cb`` result into an absolute Unix time (None: never expires).

    ``int`` seconds and ``timedelta`` count from ``now`` and must be positive; a
    ``datetime`` is absolute (naive ones are local time, as ``datetime.timestamp``
    reads them).  Anything else raises :class:`InvalidLifetimeError`.
    """
    if lifetime is None:
        return None
    if isinstance(lifetime, dt.datetime):
        return lifetime.timestamp()
    if isinstance(lifetime, dt.timedelta):
        seconds: float = lifetime.total_seconds()
    elif isinstance(lifetime, int) and not isinstance(lifetime, bool):
        seconds = lifetime
    else:
        raise InvalidLifetimeError(
            f"lifetime_cb returned {type(lifetime).__qualname__} {lifetime!r}; expected "
            f"int seconds, a timedelta, an absolute datetime, or None for no expiry"
        )
    if seconds <= 0:
        raise InvalidLifetimeError(
            f"lifetime_cb returned {lifetime!r}; a relative lifetime must be positive "
            f"(return None for no expiry)"
        )
    return now + seconds


#: A payload longer than this many bytes is refused by ``put`` and read as a corrupt miss
#: (docs/security.md lists every limit of the decoder; see also
#: :data:`~sa_stockpyle.tagged.MAX_DEPTH`).  Integers are limited to Python's
#: ``sys.get_int_max_str_digits()`` digits (4,300 unless the process changes it).
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024

#: What a payload (or a message, see :mod:`sa_stockpyle.messages`) that does not decode
#: may raise on the way: a miss like any other.
UNDECODABLE = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    InvalidOperation,
    # A tagged value out of its type's range (a timedelta of 1e20 days), and JSON nested
    # deeper than the interpreter recurses (the JSON parser's own limit, before ours).
    OverflowError,
    RecursionError,
    # A time zone name that names no file of the zone database (a folder, too long).
    OSError,
)

#: The JSON decoder of every payload and message.
JSON_DECODER = json.JSONDecoder()
#: The JSON encoder of every payload and message (json.dumps() with options builds a new
#: one per call): compact, and refusing NaN and infinities, which a tag carries instead.
JSON_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def encode_record(record: Record) -> bytes:
    """Serialise a record for a shared layer (see the module docstring for the format).

    Raises :class:`PayloadError`, naming the class, the attribute and the reason, for a
    state the format cannot carry exactly (see :func:`packed`)."""
    if isinstance(record, Pointer):
        body: dict[str, Any] = {"p": record.primary, "x": record.expires_at}
    else:
        # The version comes first, where a Redis script ordering writes can read it.
        body = {} if record.version is None else {"v": record.version}
        body |= {
            "c": class_token(record.klass),
            "s": packed(record.state, record.klass),
            "k": list(record.keys),
            "x": record.expires_at,
        }
    try:
        data = MAGIC + JSON_ENCODER.encode(body).encode()
    except ValueError as exc:
        # An int longer than int_max_str_digits (checked only here, where JSON meets it).
        state = {} if isinstance(record, Pointer) else record.state
        raise _unencodable(record, state, exc) from None
    if len(data) > MAX_PAYLOAD_BYTES:
        raise PayloadError(
            f"{_owner(record)} encodes to {len(data):,} bytes, more than the "
            f"{MAX_PAYLOAD_BYTES:,} a shared layer's payload may hold"
        )
    return data


def _owner(record: Record) -> str:
    return "a pointer" if isinstance(record, Pointer) else f"a {record.klass.__qualname__}"


def _unencodable(record: Record, state: dict[str, Any], exc: ValueError) -> PayloadError:
    """The error naming the attribute of ``state`` that JSON refused with ``exc``."""
    for name, value in state.items():
        try:
            JSON_ENCODER.encode(pack(value))
        except ValueError as error:
            return PayloadError(f"{_owner(record)}'s attribute {name!r} cannot be stored: {error}")
    return PayloadError(f"{_owner(record)} cannot be stored: {exc}")


#: State values of these types are written as they are (a float may need a tag: inf, nan).
_AS_IS = frozenset({str, int, bool, type(None)})


def packed(state: dict[str, Any], klass: type) -> dict[str, Any]:
    """``state`` of a ``klass`` object as a shared layer's payload carries it.

    Raises :class:`PayloadError` naming the attribute and the reason for a value that
    cannot be carried exactly: a type the format does not know (see :func:`_pack`), or
    one nested deeper than :data:`MAX_DEPTH` (a cycle is infinitely deep).
    """
    if _AS_IS.issuperset(map(type, state.values())):
        return state
    packed = {}
    for name, value in state.items():
        try:
            packed[name] = pack(value)
        except PayloadError as exc:
            raise PayloadError(
                f"a {klass.__qualname__}'s attribute {name!r} cannot be stored: {exc}"
            ) from None
    return packed


def carriable(klass: type, state: dict[str, Any]) -> None:
    """Raise :class:`PayloadError` unless a shared layer can carry ``state`` of a ``klass``
    object exactly.  The ORM plugin asks before it writes a commit through, so that every
    layer is given the same objects."""
    if _plainly_carriable(state):
        class_token(klass)  # what the encoding checks of the class itself
    else:
        encode_record(Entry(klass, state, (), None))


#: An int of at most this many bits prints in fewer digits than any limit a process may
#: set (``sys.set_int_max_str_digits`` takes nothing between 1 and 640).
_PLAIN_INT_BITS = 2000


def _plainly_carriable(state: dict[str, Any]) -> bool:
    """Whether ``state`` is carriable without being encoded: every value a str, a bool,
    None, a float (a tag carries one that is not finite) or an int too short for any
    digit limit, and the whole too short for :data:`MAX_PAYLOAD_BYTES` even if every
    character took JSON's longest escape (12 bytes).  A commit's rows usually are."""
    size = 0
    for name, value in state.items():
        kind = type(value)
        if kind is str:
            size += len(value)
        elif kind is int:
            if value.bit_length() > _PLAIN_INT_BITS:
                return False
        elif not (kind is float or kind is bool or value is None):
            return False
        size += len(name) + 32  # the name, and a number's digits
    return size * 12 < MAX_PAYLOAD_BYTES - 64 * 1024


def _subclass_named(klass: type, token: str) -> type:
    # The allow-list: the class a caller asked for and its subclasses, nothing else.  The
    # subclasses' tokens are compared, not claimed: two unrelated ones sharing a name
    # (made by a factory) are no reason to refuse another.
    found = []
    pending = [klass]
    while pending:
        cls = pending.pop()
        if token_of(cls) == token:
            found.append(cls)
        pending.extend(cls.__subclasses__())
    if len(found) != 1:
        raise PayloadError(
            f"payload class {token!r} is not {class_token(klass)} or a subclass"
            if not found
            else f"payload class {token!r} names {len(found)} subclasses of "
            f"{klass.__qualname__}; it cannot tell them apart"
        )
    return found[0]


#: What JSON gives back as it was packed: state values of these types need no unpacking.
_PLAIN = frozenset({str, int, float, bool, type(None)})


class _Body(msgspec.Struct, gc=False):
    """The JSON object of a record payload, its fields type-checked as it is parsed; a
    field left out is UNSET (a pointer has ``p``, an entry ``c``, ``s`` and ``k``)."""

    x: int | float | None
    c: str | msgspec.UnsetType = msgspec.UNSET
    s: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    k: tuple[str, ...] | msgspec.UnsetType = msgspec.UNSET
    p: str | msgspec.UnsetType = msgspec.UNSET
    v: int | None = None


# msgspec parses a payload in a third of json's time and checks its shape on the way.  It
# refuses what it cannot give back exactly (an int of more digits than Python's limit, a
# lone surrogate, which the json module's encoder writes as an escape); the json module
# parses those, and msgspec.convert checks the shape of what it gives.
_PARSER = msgspec.json.Decoder(_Body)


def _body(data: bytes) -> _Body:
    """The record object of payload ``data`` (after its magic), type-checked."""
    # Our payloads are one JSON object without surrounding whitespace (which msgspec
    # would skip): nothing else is a payload of ours.
    if data[len(MAGIC)] != 0x7B or data[-1] != 0x7D:  # "{" and "}"
        raise PayloadError("payload is not one JSON object")
    try:
        return _PARSER.decode(memoryview(data)[len(MAGIC) :])
    except msgspec.MsgspecError:
        pass
    # Invalid UTF-8 raises UnicodeDecodeError, a ValueError.
    text = data[len(MAGIC) :].decode()
    body, end = JSON_DECODER.raw_decode(text)
    if end != len(text):
        raise PayloadError(f"payload has {len(text) - end} bytes after its JSON")
    return msgspec.convert(body, _Body)


def decode_record(data: bytes, klass: type) -> Record:
    """Decode bytes written by :func:`encode_record` for a lookup of ``klass``.

    Raises :class:`PayloadError` for anything else: foreign bytes, a pickle, truncated
    JSON, an unknown tag, or a class outside ``klass`` and its subclasses.
    """
    if type(data) is not bytes or data[: len(MAGIC)] != MAGIC:
        raise PayloadError(f"payload does not start with {MAGIC!r}: {bytes(data[:16])!r}")
    if len(data) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload of {len(data):,} bytes is over the decoder's limit")
    try:
        body = _body(data)
        expires_at = body.x
        if expires_at is not None and not math.isfinite(expires_at):
            # NaN would never compare as past: a forged entry that never expires.
            raise PayloadError(f"payload expiry {expires_at!r} is not a finite number")
        if body.p is not msgspec.UNSET:
            return Pointer(body.p, expires_at)
        state, keys, token = body.s, body.k, body.c
        if state is msgspec.UNSET or keys is msgspec.UNSET or token is msgspec.UNSET:
            raise PayloadError("payload is neither an entry nor a pointer")
        if not _PLAIN.issuperset(map(type, state.values())):
            state = {name: unpack(value) for name, value in state.items()}
        found = klass if class_token(klass) == token else _subclass_named(klass, token)
        check_state(found, state)
        return Entry(found, state, keys, expires_at, body.v)
    except PayloadError:
        raise
    except msgspec.MsgspecError as exc:
        raise PayloadError(f"payload has the wrong shape: {exc}") from exc
    except UNDECODABLE as exc:
        raise PayloadError(f"payload did not decode: {exc!r}") from exc


def now() -> float:
    """The default clock of every store: Unix time in seconds."""
    return time.time()
