"""Attribute values as JSON: tags for the types JSON would not give back exactly.

:func:`pack` turns a value into JSON-safe data, tagging ``datetime``, ``date``, ``time``,
``timedelta``, ``Decimal``, ``UUID``, ``bytes``, ``bytearray``, ``Enum`` members,
tuples, sets, frozensets, dicts with non-string keys and non-finite floats as
``{"$t": name, "v": value}``; :func:`unpack` reverses it, building only plain data and
members of Enum classes the process has already imported.  Both refuse values nested
deeper than :data:`MAX_DEPTH` with :class:`~sa_stockpyle.errors.PayloadError`.
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import math
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from sa_stockpyle.errors import PayloadError

__all__ = ["MAX_DEPTH", "pack", "unpack"]

#: A value nested deeper than this many lists, dicts, tuples and sets is refused by
#: :func:`pack` and :func:`unpack` (docs/security.md lists every limit of the decoder).
MAX_DEPTH = 100

_TAG = "$t"


def _tag(name: str, value: Any) -> dict[str, Any]:
    return {_TAG: name, "v": value}


def _too_deep() -> PayloadError:
    return PayloadError(f"value is nested more than {MAX_DEPTH} levels deep (or is a cycle)")


def pack(value: Any, depth: int = 0) -> Any:
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
        name = (kind.__module__, kind.__qualname__)
        if _ENUMS.get(name) is not kind:
            _ENUMS[name] = _enum_class(*name, kind)
        return _tag("enum", [*name, pack(value.value, depth)])
    if kind is dt.datetime:
        zone = value.tzinfo
        if type(zone) is ZoneInfo and zone.key is not None and zone is ZoneInfo(zone.key):
            # The zone itself, not only today's offset: a wall time in the hour a clock
            # goes back is told apart by its fold, and compares unequal across zones (so
            # only the cached zone of its name, which decoding gives, comes back equal).
            wall = value.replace(tzinfo=None).isoformat()
            return _tag("zoned", [wall, zone.key, value.fold])
        return _tag("datetime", _iso(value))
    if kind is dt.time:
        return _tag("time", _iso(value))
    if kind is dt.date:
        return _tag("date", value.isoformat())
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
            return [pack(item, depth) for item in value]
        if kind is not dict:
            return _tag(kind.__name__, [pack(item, depth) for item in value])
        if all(type(key) is str for key in value) and _TAG not in value:
            return {key: pack(item, depth) for key, item in value.items()}
        return _tag("dict", [[pack(key, depth), pack(item, depth)] for key, item in value.items()])
    raise PayloadError(
        f"cannot encode {kind.__qualname__} value {value!r:.80} for a shared cache layer; "
        f"supported: JSON types, tuple, set, frozenset, datetime, date, time, timedelta, "
        f"Decimal, UUID, bytes, bytearray and Enum (exactly these types, not subclasses)"
    )


_CONTAINERS = frozenset({list, tuple, set, frozenset, dict})


def _iso(value: dt.datetime | dt.time) -> str | list[Any]:
    """A naive or fixed-offset ``value`` as ISO 8601, with its fold when it is 1."""
    zone = value.tzinfo
    if zone is not None and (
        type(zone) is not dt.timezone
        or zone.tzname(None) != dt.timezone(zone.utcoffset(None)).tzname(None)
        or zone.utcoffset(None).microseconds  # ISO 8601 as fromisoformat reads it drops them
    ):
        # A zone's rules, or a named offset, would come back as a bare offset.
        raise PayloadError(
            f"cannot encode {type(value).__name__} {value!r:.80} exactly: its tzinfo "
            f"{zone!r} is not a zoneinfo.ZoneInfo (datetime only) or an unnamed "
            f"datetime.timezone offset"
        )
    return [value.isoformat(), 1] if value.fold else value.isoformat()


#: The Enum class of each ``(module, qualname)`` met so far.
_ENUMS: dict[tuple[str, str], type[enum.Enum]] = {}


def _enum_class(module: str, qualname: str, expected: type | None = None) -> type[enum.Enum]:
    """The one Enum class named ``module.qualname`` (it must be ``expected``, if given).

    Only Enum classes the process has already imported are candidates: decoding never
    imports a module, so a payload cannot make the process load code.  Two classes with
    one name (made by a factory) cannot be told apart in a payload: neither is carried.
    """
    found: list[type[enum.Enum]] = []
    pending: list[type[enum.Enum]] = [enum.Enum]
    while pending:
        cls = pending.pop()
        if cls.__module__ == module and cls.__qualname__ == qualname:
            found.append(cls)
        pending.extend(cls.__subclasses__())
    if not found:
        raise PayloadError(f"payload names Enum {module}.{qualname}, which is not imported here")
    if len(found) > 1 or (expected is not None and found[0] is not expected):
        raise PayloadError(
            f"several Enum classes are named {module}.{qualname}; a payload cannot tell "
            f"them apart (give each a __qualname__ of its own)"
        )
    return found[0]


def _enum(module: str, qualname: str) -> type[enum.Enum]:
    name = (module, qualname)
    cls = _ENUMS.get(name)
    if cls is None:
        cls = _ENUMS[name] = _enum_class(module, qualname)
    return cls


def _unpack_tagged(name: str, raw: Any, depth: int) -> Any:
    value: Any
    if name in _SCALARS:
        value = _SCALARS[name](raw)
    elif name == "enum":
        module, qualname, member = raw
        value = _enum(module, qualname)(unpack(member, depth))
    elif name == "zoned":
        wall, key, fold = raw
        if type(key) is not str or len(key) > _MAX_ZONE_NAME:
            raise PayloadError(f"payload time zone {key!r:.80} is not a zone name")
        # ZoneInfo refuses keys that are not plain relative names of the zone database;
        # a name it cannot open raises an OSError, which the caller turns into a miss.
        value = dt.datetime.fromisoformat(wall).replace(tzinfo=ZoneInfo(key), fold=fold)
    elif depth >= MAX_DEPTH:
        raise _too_deep()
    elif name == "tuple":
        value = tuple(unpack(item, depth + 1) for item in raw)
    elif name == "set":
        value = {unpack(item, depth + 1) for item in raw}
    elif name == "frozenset":
        value = frozenset(unpack(item, depth + 1) for item in raw)
    elif name == "dict":
        value = {unpack(key, depth + 1): unpack(item, depth + 1) for key, item in raw}
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


def _from_iso(kind: type[dt.datetime] | type[dt.time]) -> Callable[[Any], Any]:
    """The decoder of what :func:`_iso` makes of a ``kind``."""

    def decode(raw: str | list[Any]) -> Any:
        if isinstance(raw, list):
            text, fold = raw
            value = kind.fromisoformat(text).replace(fold=fold)
        else:
            value = kind.fromisoformat(raw)
        offset = value.utcoffset()
        if offset is not None and offset.microseconds:
            # fromisoformat reads an offset :func:`_iso` never writes: the value would be
            # served, and refused when put back.
            raise PayloadError(
                f"payload {kind.__name__} {raw!r:.80} has an offset in microseconds"
            )
        return value

    return decode


#: The longest zone name a payload may hold (the zone database's are under 40).
_MAX_ZONE_NAME = 255

_SCALARS: dict[str, Callable[[Any], Any]] = {
    "float": float,
    "datetime": _from_iso(dt.datetime),
    "date": dt.date.fromisoformat,
    "time": _from_iso(dt.time),
    "timedelta": _timedelta,
    "decimal": Decimal,
    "uuid": UUID,
    "bytes": _base64,
    "bytearray": lambda raw: bytearray(_base64(raw)),
}


def unpack(value: Any, depth: int = 0) -> Any:
    kind = type(value)
    if kind is list:
        if depth >= MAX_DEPTH:
            raise _too_deep()
        return [unpack(item, depth + 1) for item in value]
    if kind is dict:
        if _TAG in value:
            return _unpack_tagged(value[_TAG], value["v"], depth)
        if depth >= MAX_DEPTH:
            raise _too_deep()
        return {key: unpack(item, depth + 1) for key, item in value.items()}
    return value
