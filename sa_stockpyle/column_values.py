"""Which flushed values equal what the database stored, decided per column type.

After a flush, the session holds the Python values the application assigned; the database
stored what its column types made of them.  ``NUMERIC(10, 2)`` rounds ``1.005`` to
``1.01``, ``CHAR(5)`` pads ``"ab"``, ``TIMESTAMP WITHOUT TIME ZONE`` drops an offset,
``VARCHAR`` stores the int ``5`` as ``"5"``.  The ORM plugin writes an object through only
when each of its values is one the database gives back equal and of the same type; any
other object is removed from the caches, and the next read fills them with what the
database returns.  The rules, per column type (docs/orm.md has them as a table):

* ``None`` (NULL) always.
* Integers, booleans, strings, bytes, dates, intervals: a value of exactly the type the
  column returns (``True`` is not exact for an ``Integer`` column, nor ``5`` for a
  ``String`` one, nor a ``datetime`` for a ``Date``).
* ``CHAR(n)``/``NCHAR(n)``: a string of exactly ``n`` characters, not ending in a space
  (databases pad shorter ones, and some strip trailing spaces).
* ``Numeric(p, s)`` returning ``Decimal``: a finite ``Decimal`` with at most ``s``
  decimal places (and, on SQLite, which keeps a float, at most 15 digits).
* ``Float``: a ``float``; not on PostgreSQL for ``Float(precision <= 24)``, a 4-byte
  ``REAL`` that rounds.
* ``DateTime``/``Time``: a value with a time zone where the column keeps one
  (``timezone=True`` on PostgreSQL), a naive value elsewhere; on MySQL and MariaDB,
  whose default precision is seconds, only whole seconds.
* ``Uuid``: a ``UUID`` (``as_uuid=True``), or its canonical lower-case string.
* ``Enum``: a member of its enum class, or one of its strings.
* ``JSON``: a value that a JSON round trip gives back equal (no tuples, no int keys).
* ``ARRAY``: a list whose items each pass the item type's rule.
* ``PickleType``: any value (pickling gives an equal copy back).
* Any other type, ``TypeDecorator`` included (its ``process_bind_param`` may change the
  value): only ``None``.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from sqlalchemy import types
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapper

__all__ = ["Check", "value_checks"]

#: Whether a column's flushed value is what the database stored.
Check = Callable[[Any], bool]

#: Exactly these Python types, where the column returns that type.
_PLAIN: list[tuple[type[types.TypeEngine[Any]], type]] = [
    (types.Boolean, bool),
    (types.Integer, int),
    (types.LargeBinary, bytes),
    (types.Date, dt.date),
    (types.Interval, dt.timedelta),
    (types.String, str),  # after Enum, CHAR and NCHAR, which are Strings too
]


def value_checks(mapper: Mapper[Any], dialect: Dialect) -> dict[str, Check]:
    """For each column attribute of ``mapper``, the check of its values on ``dialect``."""
    return {prop.key: _check(prop.columns[0].type, dialect.name) for prop in mapper.column_attrs}


def _of_type(python_type: type) -> Check:
    return lambda value: value is None or type(value) is python_type


def _never(value: Any) -> bool:
    return value is None


def _check(column_type: types.TypeEngine[Any], dialect: str) -> Check:
    """The check for one column type on the dialect named ``dialect``."""
    if isinstance(column_type, types.PickleType):
        return lambda value: True
    if isinstance(column_type, types.TypeDecorator) and not isinstance(
        column_type, types.Interval
    ):
        return _never
    if isinstance(column_type, types.Enum):
        return _enum_check(column_type)
    if isinstance(column_type, (types.CHAR, types.NCHAR)):
        length = column_type.length
        return lambda value: (
            value is None
            or (type(value) is str and len(value) == length and not value.endswith(" "))
        )
    if isinstance(column_type, types.Float):
        rounds = dialect == "postgresql" and (column_type.precision or 53) <= 24
        return _never if rounds or column_type.asdecimal else _of_type(float)
    if isinstance(column_type, types.Numeric):
        return _numeric_check(column_type, dialect)
    if isinstance(column_type, (types.DateTime, types.Time)):
        return _clock_check(column_type, dialect)
    if isinstance(column_type, types.Uuid):
        return _uuid_check(column_type.as_uuid)
    if isinstance(column_type, types.JSON):
        return _json_check
    if isinstance(column_type, types.ARRAY):
        item = _check(column_type.item_type, dialect)
        return lambda value: (
            value is None or (type(value) is list and all(item(element) for element in value))
        )
    for declared, python_type in _PLAIN:
        if isinstance(column_type, declared):
            return _of_type(python_type)
    return _never


def _enum_check(column_type: types.Enum) -> Check:
    enum_class = column_type.enum_class
    if enum_class is not None:
        return lambda value: value is None or type(value) is enum_class
    names = frozenset(column_type.enums)
    return lambda value: (
        value is None
        or (type(value) is str and not isinstance(value, enum.Enum) and value in names)
    )


def _numeric_check(column_type: types.Numeric[Any], dialect: str) -> Check:
    if not column_type.asdecimal:
        return _of_type(float)
    scale = column_type.scale
    digits = 15 if dialect == "sqlite" else None  # SQLite keeps a double

    def check(value: Any) -> bool:
        if value is None:
            return True
        if type(value) is not Decimal or not value.is_finite():
            return False
        _, figures, exponent = value.as_tuple()
        if scale is not None and isinstance(exponent, int) and exponent < -scale:
            return False
        return digits is None or len(figures) <= digits

    return check


def _clock_check(column_type: types.DateTime | types.Time, dialect: str) -> Check:
    python_type = dt.datetime if isinstance(column_type, types.DateTime) else dt.time
    aware = column_type.timezone and dialect == "postgresql"
    whole_seconds = dialect in ("mysql", "mariadb")

    def check(value: Any) -> bool:
        if value is None:
            return True
        return (
            type(value) is python_type
            and (value.tzinfo is not None) == aware
            and not (whole_seconds and value.microsecond)
        )

    return check


def _uuid_check(as_uuid: bool) -> Check:
    if as_uuid:
        return _of_type(uuid.UUID)
    return lambda value: value is None or (type(value) is str and _canonical_uuid(value) == value)


def _canonical_uuid(text: str) -> str | None:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


def _json_check(value: Any) -> bool:
    if value is None:
        return True
    try:
        again = json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return False
    return _same(value, again)


def _same(ours: Any, theirs: Any) -> bool:
    """Equal, and of the same types all the way down (``1 == 1.0 == True`` is not)."""
    if type(ours) is not type(theirs):
        return False
    if isinstance(ours, list):
        return len(ours) == len(theirs) and all(map(_same, ours, theirs))
    if isinstance(ours, dict):
        return ours.keys() == theirs.keys() and all(_same(ours[k], theirs[k]) for k in ours)
    return bool(ours == theirs)
