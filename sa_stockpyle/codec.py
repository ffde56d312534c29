"""Payloads: the record envelope, expiry, object snapshots and safe decoding.

A store keeps two kinds of records under its cache keys:

* an :class:`Entry` under the primary key: the object's class, its state (a snapshot of
  its attributes, never the live object), every cache key that answers to it, and its
  expiry;
* a :class:`Pointer` under each alternate key: the primary key it leads to.

A lookup by an alternate key follows the pointer and then checks that the entry still
lists that alternate key, so a pointer left behind after the key moved (the user changed
their email) is a miss instead of a stale answer.

The state of an object of a class mapped by SQLAlchemy is its *column state* (the entity
codec): the loaded values of its column attributes, whose primary key is its identity
(plus the identity token of sharded mappings).  Relationships and ``_sa_instance_state``
are never part of it.
:func:`restore` turns it back into a *detached* instance whose values are committed state,
so a session can take it as persistent without SQL; relationships lazy-load once it is
attached.  The mapped class's schema fingerprint travels in the class token of shared
payloads, so state written under another mapping never decodes as this one.

Shared layers (Redis, memcached, files) hold records as bytes: ``SPK1`` followed by JSON
in which values JSON cannot carry exactly (datetime, Decimal, UUID, bytes, Enum, tuples,
sets, dicts with non-string keys) are tagged.  Decoding builds only plain data, the
requested class or one of its subclasses, and already-imported Enum classes: a payload
can never import a module, run code or build an arbitrary class.  This is why there is no
pickle and no need for an HMAC secret: the allow-list is enforced by the decoder itself.
Anything that does not decode raises :class:`~sa_stockpyle.errors.PayloadError`, which
stores turn into a counted miss and a delete.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import enum
import hmac
import json
import math
import operator
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import sqlalchemy
from sqlalchemy.orm import Mapper, make_transient_to_detached
from sqlalchemy.orm.attributes import instance_state

from sa_stockpyle.errors import ConfigurationError, InvalidLifetimeError, PayloadError
from sa_stockpyle.keys import class_named, class_token

__all__ = [
    "LEASE_MAGIC",
    "MAGIC",
    "MAX_DEPTH",
    "MAX_PAYLOAD_BYTES",
    "MESSAGE_MAGIC",
    "SIGNATURE_BYTES",
    "TOMBSTONE_MAGIC",
    "Entry",
    "Invalidation",
    "Lifetime",
    "LifetimeCallback",
    "Marker",
    "Pointer",
    "Record",
    "carriable",
    "check_signing_key",
    "decode_invalidation",
    "decode_marker",
    "decode_record",
    "encode_invalidation",
    "encode_marker",
    "encode_record",
    "entry_version",
    "expired_columns",
    "expiry",
    "packed",
    "restore",
    "signed",
    "snapshot",
    "verified",
    "version_of",
]

#: The first bytes of every payload; the digit is the payload format version.
MAGIC = b"SPK1"

#: What ``lifetime_cb`` may return: seconds, a duration, an absolute time, or no expiry.
Lifetime = int | dt.timedelta | dt.datetime | None
LifetimeCallback = Callable[[Any], Lifetime]


@dataclass(slots=True)
class Entry:
    """The record under an object's primary key."""

    klass: type
    state: dict[str, Any]
    keys: tuple[str, ...]
    expires_at: float | None
    #: The object's ``version_id_col`` value (see :func:`version_of`), or None.
    version: int | None = None


@dataclass(slots=True)
class Pointer:
    """The record under an alternate key: the primary key it leads to."""

    primary: str
    expires_at: float | None


Record = Entry | Pointer

#: The first bytes of a tombstone and of a lease in a shared layer.
TOMBSTONE_MAGIC = b"SPKT"
LEASE_MAGIC = b"SPKL"


@dataclass(slots=True, frozen=True)
class Marker:
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
        return b"SPKT:%.6f:%.3f" % (marker.taken, marker.expires_at)
    return b"SPKL:%s:%.6f:%.3f" % (marker.lease.encode(), marker.taken, marker.expires_at)


_VERSION = re.compile(rb'SPK1\{"v":(\d+),')


def entry_version(data: bytes) -> int | None:
    """The version an encoded entry starts with, or None (no version, not an entry)."""
    match = _VERSION.match(data)
    return int(match[1]) if match else None


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


# --- snapshots -----------------------------------------------------------------------------

_IMMUTABLE = frozenset(
    {str, int, float, bool, bytes, type(None), Decimal, UUID, dt.datetime, dt.date, dt.time}
)


def _detach(value: Any) -> Any:
    # Immutable values can be shared between the cache and its callers; anything else is
    # copied so that mutating a returned object never reaches into the cache.
    if type(value) in _IMMUTABLE or isinstance(value, enum.Enum):
        return value
    return copy.deepcopy(value)


def _detached(values: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``values`` sharing nothing mutable with it."""
    # Snapshots and restores sit on every cache write and hit: when every value is of an
    # immutable type (the usual row of scalars), one C-level check and copy do it all.
    if _IMMUTABLE.issuperset(map(type, values.values())):
        return values.copy()
    return {name: _detached_value(name, value) for name, value in values.items()}


def _detached_value(name: str, value: Any) -> Any:
    try:
        return _detach(value)
    except (RecursionError, TypeError, copy.Error) as exc:
        # A file handle, a lock, a value nested too deep to copy: not a cacheable state.
        raise PayloadError(f"attribute {name!r} cannot be copied into a cache: {exc!r}") from None


# A plain dict, as for the other per-class caches below: read on every snapshot.
_SLOTS: dict[type, tuple[str, ...]] = {}


def _slot_names(klass: type) -> tuple[str, ...]:
    names = _SLOTS.get(klass)
    if names is None:
        found: list[str] = []
        for base in klass.__mro__:
            slots = vars(base).get("__slots__", ())
            found.extend([slots] if isinstance(slots, str) else slots)
        names = tuple(name for name in found if name not in ("__dict__", "__weakref__"))
        _SLOTS[klass] = names
    return names


def snapshot(obj: object) -> dict[str, Any]:
    """A copy of ``obj``'s attributes that shares nothing mutable with ``obj``.

    For a mapped object, its column state (see the module docstring); raises
    :class:`PayloadError` when a column attribute is expired, because the snapshot would
    be incomplete or stale.
    """
    columns = _columns(type(obj))
    if columns is not None:
        return _snapshot_entity(obj, columns)
    state = _detached(getattr(obj, "__dict__", {}))
    for name in _slot_names(type(obj)):
        if hasattr(obj, name):
            state[name] = _detached_value(name, getattr(obj, name))
    return state


def restore(klass: type, state: dict[str, Any], owned: bool = False) -> Any:
    """Build a new ``klass`` instance from a snapshot, without calling ``__init__``.

    A mapped class gets a detached instance holding the snapshot as committed state.
    The instance shares nothing mutable with ``state``, unless ``owned``: then ``state``
    is the caller's to give away (it was just decoded, and nothing else refers to it),
    and its values become the instance's without a copy.
    """
    columns = _columns(klass)
    if columns is not None:
        return _restore_entity(columns, state, owned)
    factory: Any = klass
    obj = factory.__new__(klass)
    values = state if owned else _detached(state)
    slots = _slot_names(klass)
    if slots:
        # Slots through their descriptors, anything else into the instance dict: a name
        # such as "__class__" never reaches object.__setattr__ (checked by _check_names).
        held = getattr(obj, "__dict__", None)
        for name, value in values.items():
            if name in slots:
                object.__setattr__(obj, name, value)
            else:
                held[name] = value  # type: ignore[index]
    else:
        obj.__dict__.update(values)  # one C call; like object.__setattr__, skips __setattr__
    return obj


def _check_names(klass: type, state: dict[str, Any]) -> None:
    """Raise PayloadError unless :func:`restore` can give ``klass`` every name of ``state``
    (a decoded state: its names are strings)."""
    columns = _columns(klass)
    if columns is not None:
        identity = state.get(_IDENTITY)
        if identity is not None and type(identity) not in (str, int):
            raise PayloadError(f"payload identity token {identity!r} is not a str or int")
        return  # restore() takes the column attributes and leaves anything else out
    slots = _slot_names(klass)
    if klass.__dictoffset__ == 0:  # its objects have no instance dict: only slots
        unknown = [name for name in state if name not in slots]
        if unknown:
            raise PayloadError(
                f"payload state names {unknown[:3]!r}, which {klass.__qualname__} objects "
                f"cannot hold (they have only the slots {slots!r})"
            )


# --- the entity codec ----------------------------------------------------------------------

#: The snapshot entry that holds an object's identity token, for the rare mappings that
#: set one (horizontal sharding).  "$" keeps it apart from attribute names.
_IDENTITY = "$identity"


@dataclass(frozen=True, slots=True)
class _Columns:
    """What the entity codec keeps of one mapped class."""

    mapper: Mapper[Any]
    names: tuple[str, ...]  # every column attribute
    name_set: frozenset[str]  # the same, for whole-state comparisons
    primary_key: tuple[str, ...]  # the attributes of mapper.primary_key, in its order
    #: The attribute of the mapper's ``version_id_col`` when the ORM counts it up itself
    #: (the default generator or a custom one); None without one or when the database
    #: assigns it (``version_id_generator=False``).
    version: str | None
    #: The primary key values of a complete state, as a tuple (restore's hot path).
    primary_key_of: Callable[[dict[str, Any]], tuple[Any, ...]]


def _getter(names: tuple[str, ...]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """A function reading ``names`` out of a dict, always as a tuple."""
    if len(names) == 1:
        name = names[0]
        return lambda values: (values[name],)
    return operator.itemgetter(*names)


# A plain dict, as in keys.py: it is read on every snapshot and restore.
_COLUMNS: dict[type, _Columns | None] = {}


def _columns(klass: type) -> _Columns | None:
    """The entity codec's view of ``klass``, or None when SQLAlchemy does not map it."""
    try:
        return _COLUMNS[klass]
    except KeyError:
        pass
    mapper: object = sqlalchemy.inspect(klass, raiseerr=False)
    columns = None
    if isinstance(mapper, Mapper):
        names = tuple(prop.key for prop in mapper.column_attrs)
        primary_key = tuple(
            mapper.get_property_by_column(column).key for column in mapper.primary_key
        )
        columns = _Columns(
            mapper,
            names,
            frozenset(names),
            primary_key,
            None
            if mapper.version_id_col is None or mapper.version_id_generator is False
            else mapper.get_property_by_column(mapper.version_id_col).key,
            _getter(primary_key),
        )
    _COLUMNS[klass] = columns
    return columns


def version_of(obj: object) -> int | None:
    """The integer ``version_id_col`` value of mapped ``obj``, or None when it has none.

    Commits of such a class can be ordered: a cache keeps the entry of the highest version
    and ignores an older commit's write that arrives late.
    """
    columns = _columns(type(obj))
    if columns is None or columns.version is None:
        return None
    value = instance_state(obj).dict.get(columns.version)
    return value if type(value) is int else None


def expired_columns(obj: object) -> tuple[str, ...]:
    """The column attributes of mapped ``obj`` that are expired (empty when none, or unmapped).

    Such an object has no complete committed state to cache until it is refreshed.
    """
    columns = _columns(type(obj))
    if columns is None:
        return ()
    expired = instance_state(obj).expired_attributes
    return tuple(name for name in columns.names if name in expired) if expired else ()


def _snapshot_entity(obj: object, columns: _Columns) -> dict[str, Any]:
    expired = expired_columns(obj)
    if expired:
        raise PayloadError(
            f"{type(obj).__qualname__} object has expired column attributes {expired!r} "
            f"(after a commit or session.expire()); refresh it before caching it, or use "
            f"expire_on_commit=False"
        )
    state = instance_state(obj)
    loaded = state.dict
    # Columns never loaded (deferred, or left out by the query) are left out here too;
    # restore() expires them so they load on first access once attached.
    snap = _detached({name: loaded[name] for name in columns.names if name in loaded})
    if state.key is not None and state.key[2] is not None:
        snap[_IDENTITY] = state.key[2]
    return snap


def _restore_entity(columns: _Columns, snap: dict[str, Any], owned: bool) -> Any:
    mapper = columns.mapper
    obj = mapper.class_manager.new_instance()
    values = obj.__dict__  # what instance_state(obj).dict returns, one lookup cheaper
    if snap.keys() == columns.name_set:
        # Every column and nothing else (no identity token): the common case, in bulk.
        # What a cache holds is the database's state, so the restored object has the
        # identity of its primary key (setting it is all make_transient_to_detached()
        # does for a complete state, at a third of its cost).
        values.update(snap if owned else _detached(snap))
        primary_key = columns.primary_key_of(values)
        if None not in primary_key:  # only an object cached without one stays transient
            instance_state(obj).key = mapper.identity_key_from_primary_key(primary_key)
        return obj
    # Some columns were never loaded, or the state carries an identity token.
    present = {name: snap[name] for name in columns.names if name in snap}
    values.update(present if owned else _detached(present))
    primary_key = tuple(map(values.get, columns.primary_key))
    if None in primary_key:
        return obj
    if len(present) == len(columns.names):
        instance_state(obj).key = mapper.identity_key_from_primary_key(
            primary_key, snap.get(_IDENTITY)
        )
    else:
        make_transient_to_detached(obj)  # and the missing columns load on first access
    return obj


# --- wire format ---------------------------------------------------------------------------

#: The decoder's limits (docs/security.md lists them): a payload longer than this many
#: bytes, or a value nested deeper than :data:`MAX_DEPTH` lists, dicts, tuples and sets,
#: is refused by ``put`` and read as a corrupt miss.  Integers are limited to Python's
#: ``sys.get_int_max_str_digits()`` digits (4,300 unless the process changes it).
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
MAX_DEPTH = 100

_TAG = "$t"


def _tag(name: str, value: Any) -> dict[str, Any]:
    return {_TAG: name, "v": value}


def _too_deep() -> PayloadError:
    return PayloadError(f"value is nested more than {MAX_DEPTH} levels deep (or is a cycle)")


def _pack(value: Any, depth: int = 0) -> Any:
    """Make ``value`` JSON-safe, tagging every type JSON would not give back exactly.

    Types are matched exactly: a subclass (of datetime, of str, ...) would come back as its
    base class, so it is refused like any other type the format cannot carry.
    """
    kind = type(value)
    if kind in (str, int, bool) or value is None:
        return value
    if kind is float:
        return value if math.isfinite(value) else _tag("float", repr(value))
    if isinstance(value, enum.Enum):
        cls = type(value)
        return _tag("enum", [cls.__module__, cls.__qualname__, _pack(value.value, depth)])
    if kind is dt.datetime:
        if isinstance(value.tzinfo, ZoneInfo):
            # The zone itself, not only today's offset: a wall time in the hour a clock
            # goes back is told apart by its fold, and compares unequal across zones.
            wall = value.replace(tzinfo=None).isoformat()
            return _tag("zoned", [wall, value.tzinfo.key, value.fold])
        return _tag("datetime", value.isoformat())
    if kind in _ISO_TAGS:
        return _tag(_ISO_TAGS[kind], value.isoformat())
    if kind is dt.timedelta:
        return _tag("timedelta", [value.days, value.seconds, value.microseconds])
    if kind is Decimal:
        return _tag("decimal", str(value))
    if kind is UUID:
        return _tag("uuid", value.hex)
    if kind in (bytes, bytearray):
        return _tag(kind.__name__, base64.b64encode(value).decode("ascii"))
    if kind in _CONTAINERS:
        if depth >= MAX_DEPTH:
            raise _too_deep()
        depth += 1
        if kind is list:
            return [_pack(item, depth) for item in value]
        if kind is not dict:
            return _tag(kind.__name__, [_pack(item, depth) for item in value])
        if all(type(key) is str for key in value) and _TAG not in value:
            return {key: _pack(item, depth) for key, item in value.items()}
        return _tag(
            "dict", [[_pack(key, depth), _pack(item, depth)] for key, item in value.items()]
        )
    raise PayloadError(
        f"cannot encode {kind.__qualname__} value {value!r:.80} for a shared cache layer; "
        f"supported: JSON types, tuple, set, frozenset, datetime, date, time, timedelta, "
        f"Decimal, UUID, bytes, bytearray and Enum (exactly these types, not subclasses)"
    )


_ISO_TAGS: dict[type, str] = {dt.date: "date", dt.time: "time"}
_CONTAINERS = frozenset({list, tuple, set, frozenset, dict})


def _enum_class(module: str, qualname: str) -> type[enum.Enum]:
    # Only Enum classes the process has already imported are candidates: decoding never
    # imports a module, so a payload cannot make the process load code.
    pending: list[type[enum.Enum]] = [enum.Enum]
    while pending:
        cls = pending.pop()
        if cls.__module__ == module and cls.__qualname__ == qualname:
            return cls
        pending.extend(cls.__subclasses__())
    raise PayloadError(f"payload names Enum {module}.{qualname}, which is not imported here")


def _unpack_tagged(name: str, raw: Any, depth: int) -> Any:
    value: Any
    if name in _SCALARS:
        value = _SCALARS[name](raw)
    elif name == "enum":
        module, qualname, member = raw
        value = _enum_class(module, qualname)(_unpack(member, depth))
    elif name == "zoned":
        wall, key, fold = raw
        # ZoneInfo refuses keys that are not plain relative names of the zone database.
        value = dt.datetime.fromisoformat(wall).replace(tzinfo=ZoneInfo(key), fold=fold)
    elif depth >= MAX_DEPTH:
        raise _too_deep()
    elif name == "tuple":
        value = tuple(_unpack(item, depth + 1) for item in raw)
    elif name == "set":
        value = {_unpack(item, depth + 1) for item in raw}
    elif name == "frozenset":
        value = frozenset(_unpack(item, depth + 1) for item in raw)
    elif name == "dict":
        value = {_unpack(key, depth + 1): _unpack(item, depth + 1) for key, item in raw}
    else:
        raise PayloadError(f"payload holds an unknown value tag {name!r}")
    return value


def _timedelta(raw: list[int]) -> dt.timedelta:
    days, seconds, microseconds = raw
    if not all(type(part) is int for part in raw):
        raise PayloadError(f"payload timedelta {raw!r} is not three integers")
    return dt.timedelta(days=days, seconds=seconds, microseconds=microseconds)


def _base64(raw: str) -> bytes:
    return base64.b64decode(raw, validate=True)


_SCALARS: dict[str, Callable[[Any], Any]] = {
    "float": float,
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "timedelta": _timedelta,
    "decimal": Decimal,
    "uuid": UUID,
    "bytes": _base64,
    "bytearray": lambda raw: bytearray(_base64(raw)),
}


def _unpack(value: Any, depth: int = 0) -> Any:
    kind = type(value)
    if kind is list:
        if depth >= MAX_DEPTH:
            raise _too_deep()
        return [_unpack(item, depth + 1) for item in value]
    if kind is dict:
        if _TAG in value:
            return _unpack_tagged(value[_TAG], value["v"], depth)
        if depth >= MAX_DEPTH:
            raise _too_deep()
        return {key: _unpack(item, depth + 1) for key, item in value.items()}
    return value


#: What a payload that does not decode may raise on the way: a miss like any other.
_UNDECODABLE = (
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
)

_DECODER = json.JSONDecoder()
# One encoder for every payload: json.dumps() with options builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


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
        data = MAGIC + _ENCODER.encode(body).encode()
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
            _ENCODER.encode(_pack(value))
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
            packed[name] = _pack(value)
        except PayloadError as exc:
            raise PayloadError(
                f"a {klass.__qualname__}'s attribute {name!r} cannot be stored: {exc}"
            ) from None
    return packed


def carriable(klass: type, state: dict[str, Any]) -> None:
    """Raise :class:`PayloadError` unless a shared layer can carry ``state`` of a ``klass``
    object exactly.  The ORM plugin asks before it writes a commit through, so that every
    layer is given the same objects."""
    encode_record(Entry(klass, state, (), None))


def _subclass_named(klass: type, token: str) -> type:
    # The allow-list: the class a caller asked for and its subclasses, nothing else.
    pending = [klass]
    while pending:
        cls = pending.pop()
        if class_token(cls) == token:
            return cls
        pending.extend(cls.__subclasses__())
    raise PayloadError(f"payload class {token!r} is not {class_token(klass)} or a subclass")


#: What JSON gives back as it was packed: state values of these types need no unpacking.
_PLAIN = frozenset({str, int, float, bool, type(None)})


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
        # Our payloads are ASCII JSON without surrounding whitespace; json.loads would
        # sniff the encoding and skip whitespace first, which costs as much as parsing a
        # small payload.  Invalid UTF-8 raises UnicodeDecodeError, a ValueError.
        text = data[len(MAGIC) :].decode()
        body, end = _DECODER.raw_decode(text)
        if end != len(text):
            raise PayloadError(f"payload has {len(text) - end} bytes after its JSON")
        expires_at = body["x"]
        if expires_at is not None and (
            type(expires_at) not in (int, float) or not math.isfinite(expires_at)
        ):
            # NaN would never compare as past: a forged entry that never expires.
            raise PayloadError(f"payload expiry {expires_at!r} is not a finite number")
        if "p" in body:
            if type(body["p"]) is not str:
                raise PayloadError("payload pointer is not a string")
            return Pointer(body["p"], expires_at)
        state = body["s"]
        keys = body["k"]
        if type(state) is not dict or type(keys) is not list:
            raise PayloadError("payload state or keys have the wrong shape")
        if not _PLAIN.issuperset(map(type, state.values())):
            state = {name: _unpack(value) for name, value in state.items()}
        version = body.get("v")
        if version is not None and type(version) is not int:
            raise PayloadError(f"payload version {version!r} is not an int")
        token = body["c"]
        found = klass if class_token(klass) == token else _subclass_named(klass, token)
        _check_names(found, state)
        return Entry(
            found,
            state,
            tuple(map(str, keys)),
            expires_at,
            version,
        )
    except PayloadError:
        raise
    except _UNDECODABLE as exc:
        raise PayloadError(f"payload did not decode: {exc!r}") from exc


# --- signatures ----------------------------------------------------------------------------

#: The length of the HMAC-SHA256 that a signed payload ends with.
SIGNATURE_BYTES = 32


def check_signing_key(signing_key: object) -> bytes | None:
    """``signing_key`` if it is usable (None, or bytes of at least 16), else raise
    :class:`ConfigurationError`."""
    if signing_key is not None and (type(signing_key) is not bytes or len(signing_key) < 16):
        raise ConfigurationError(
            f"signing_key must be bytes of at least 16 (e.g. secrets.token_bytes(32)), "
            f"shared by every process that uses the cache; got {type(signing_key).__name__}"
        )
    return signing_key


def signed(data: bytes, signing_key: bytes) -> bytes:
    """``data`` followed by its HMAC-SHA256 under ``signing_key``."""
    return data + hmac.digest(signing_key, data, "sha256")


def verified(data: bytes, signing_key: bytes) -> bytes:
    """The payload a :func:`signed` ``data`` carries; PayloadError when the signature does
    not match (forged or corrupt bytes, or written by a process with another key or none)."""
    body = data[:-SIGNATURE_BYTES]
    if not (
        type(data) is bytes
        and len(data) > SIGNATURE_BYTES
        and hmac.compare_digest(hmac.digest(signing_key, body, "sha256"), data[-SIGNATURE_BYTES:])
    ):
        raise PayloadError("payload signature does not match the signing key")
    return body


def now() -> float:
    """The default clock of every store: Unix time in seconds."""
    return time.time()


# --- invalidation messages -----------------------------------------------------------------

#: The first bytes of an invalidation message between processes.
MESSAGE_MAGIC = b"SPKI"


@dataclass(frozen=True, slots=True)
class Invalidation:
    """What one commit removed, sent to the other processes' process-local layers.

    ``removals`` name objects by a lookup (``(User, {"id": 5})``), because every process
    builds its own cache keys; ``classes`` were invalidated whole.  ``sent_at`` is the
    sender's Unix time, for the propagation delay.  ``seq``, ``kind`` and ``heartbeat``
    let a subscriber notice that messages were lost on the way.
    """

    origin: str
    sent_at: float
    removals: list[tuple[type, dict[str, Any]]]
    classes: list[type]
    #: The publisher's number of this message (1, 2, ...); of a heartbeat or a goodbye,
    #: the number of its last message.  None from a publisher that does not number.
    seq: int | None = None
    #: ``""``: an invalidation; ``"beat"``: a heartbeat; ``"bye"``: the publisher closed.
    kind: str = ""
    #: The publisher's heartbeat interval in seconds: it is heard at least that often.
    heartbeat: float | None = None


_KINDS = frozenset({"", "beat", "bye"})


def encode_invalidation(message: Invalidation) -> bytes:
    """Serialise an invalidation: ``SPKI`` followed by JSON, key values tagged as in state."""
    body = {
        "o": message.origin,
        "t": message.sent_at,
        "r": [
            [class_token(klass), {name: _pack(value) for name, value in lookup.items()}]
            for klass, lookup in message.removals
        ],
        "c": [class_token(klass) for klass in message.classes],
    }
    if message.seq is not None:
        body |= {"s": message.seq, "k": message.kind, "h": message.heartbeat}
    try:
        return MESSAGE_MAGIC + _ENCODER.encode(body).encode()
    except ValueError as exc:  # a key value JSON cannot carry (an int over its digit limit)
        raise PayloadError(f"invalidation cannot be encoded: {exc}") from None


def decode_invalidation(data: bytes) -> Invalidation:
    """Decode an invalidation; classes this process never made a key for are left out
    (it caches nothing of them).  Raises :class:`PayloadError` for anything else."""
    if not isinstance(data, bytes) or not data.startswith(MESSAGE_MAGIC):
        raise PayloadError(f"message does not start with {MESSAGE_MAGIC!r}: {data[:16]!r}")
    try:
        body = _DECODER.decode(data[len(MESSAGE_MAGIC) :].decode())
        removals = []
        for token, lookup in body["r"]:
            klass = class_named(token)
            if klass is not None:
                removals.append((klass, {str(k): _unpack(v) for k, v in lookup.items()}))
        classes = [klass for klass in map(class_named, body["c"]) if klass is not None]
        message = Invalidation(str(body["o"]), float(body["t"]), removals, classes)
        if "s" not in body:
            return message  # from a publisher that does not number its messages
        seq, kind, beat = body["s"], body["k"], body["h"]
        if not (
            type(seq) is int
            and 0 <= seq < 2**63
            and kind in _KINDS
            and type(beat) in (int, float)
            and 0 < beat <= 3600
        ):
            raise PayloadError(f"message has a bad number: {seq!r}, {kind!r}, {beat!r}")
        return replace(message, seq=seq, kind=kind, heartbeat=float(beat))
    except PayloadError:
        raise
    except _UNDECODABLE as exc:
        raise PayloadError(f"message did not decode: {exc!r}") from exc
