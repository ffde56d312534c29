"""Which flushed values equal what the database stored, decided per column type.

After a flush, the session holds the Python values the application assigned; the database
stored what its column types made of them.  ``NUMERIC(10, 2)`` rounds ``1.005`` to
``1.01``, ``CHAR(5)`` pads ``"ab"``, ``TIMESTAMP WITHOUT TIME ZONE`` drops an offset,
``VARCHAR`` stores the int ``5`` as ``"5"``.  The ORM plugin writes an object through only
when each of its values is one the database gives back equal and of the same type; any
other object is removed from the caches, and the next read fills them with what the
database returns.  The rules, per column type (docs/orm.md has them as a table):

* ``None`` (NULL) always.
* Integers, booleans, bytes, dates: a value of exactly the type the column returns
  (``True`` is not exact for an ``Integer`` column, nor a ``datetime`` for a ``Date``).
* Strings: a ``str`` (not the int ``5``), no longer than a declared length.
* ``CHAR(n)``/``NCHAR(n)``: a string of exactly ``n`` characters, not ending in a space
  (databases pad shorter ones, and some strip trailing spaces).
* ``Numeric(p, s)`` returning ``Decimal``: a finite ``Decimal`` with at most ``s``
  decimal places (MySQL: ``s`` is 0 when not declared; SQLite, which keeps a float: at
  most 15 digits, and the scale SQLAlchemy reads it back with).  ``Numeric`` returning
  floats: only ``None`` (the database rounds the float).
* ``Float``: a finite ``float``; only ``None`` for a 4-byte column that rounds
  (``REAL``, ``Float(precision <= 24)``, MySQL's ``FLOAT`` unless its precision is over
  24).
* ``DateTime``/``Time``: a value with a time zone where the column keeps one
  (``timezone=True`` on PostgreSQL), a naive value elsewhere; only whole seconds on MySQL
  and MariaDB (their default precision), and no finer than a declared ``precision``.
* ``Interval``: a ``timedelta``, on PostgreSQL and SQLite.
* ``Uuid``: a ``UUID`` (``as_uuid=True``), or its canonical lower-case string.
* ``Enum``: a member of its enum class, or one of its strings.
* ``JSON``: a value that a JSON round trip gives back equal, types included (no tuples,
  no int keys).
* ``ARRAY``: a list (a tuple for ``as_tuple=True``) whose items each pass the item
  type's rule.
* ``PickleType``: any value (pickling gives an equal copy back).
* Any other type, ``TypeDecorator`` included (its ``process_bind_param`` may change the
  value): only ``None``.  So is every value on a database other than PostgreSQL, SQLite,
  MySQL and MariaDB (Oracle turns ``""`` into NULL, SQL Server's text depends on its code
  page), and every ``JSON`` value on an engine with a ``json_serializer`` of its own.

A type given per dialect with ``with_variant()`` is judged by the dialect's variant.
"""

from __future__ import annotations

import datetime as dt
import json
import math
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

#: The databases whose storage of each type the rules describe.
_KNOWN = frozenset({"postgresql", "sqlite", "mysql", "mariadb"})

#: Exactly these Python types, where the column returns that type.
_PLAIN: list[tuple[type[types.TypeEngine[Any]], type]] = [
    (types.Boolean, bool),
    (types.Integer, int),
    (types.LargeBinary, bytes),
    (types.Date, dt.date),
]


def value_checks(mapper: Mapper[Any], dialect: Dialect) -> dict[str, Check]:
    """For each column attribute of ``mapper``, the check of its values on ``dialect``."""
    if dialect.name not in _KNOWN:
        return {prop.key: _never for prop in mapper.column_attrs}
    own_json = getattr(dialect, "_json_serializer", None) is not None
    checks: dict[str, Check] = {}
    for prop in mapper.column_attrs:
        declared = prop.columns[0].type
        column_type = declared._variant_mapping.get(dialect.name, declared)
        if own_json and isinstance(column_type, types.JSON):
            checks[prop.key] = _never
        else:
            checks[prop.key] = _check(column_type, dialect.name)
    return checks


def _of_type(python_type: type) -> Check:
    return lambda value: value is None or type(value) is python_type


def _never(value: Any) -> bool:
    return value is None


def _check(column_type: types.TypeEngine[Any], dialect: str) -> Check:
    """The check for one column type on the dialect named ``dialect``."""
    if isinstance(column_type, types.PickleType):
        return lambda value: True
    if isinstance(column_type, types.Interval):
        return _of_type(dt.timedelta) if dialect in ("postgresql", "sqlite") else _never
    if isinstance(column_type, types.TypeDecorator):
        return _never
    if isinstance(column_type, types.Enum):
        return _enum_check(column_type)
    if isinstance(column_type, (types.CHAR, types.NCHAR)):
        length = column_type.length
        return lambda value: (
            value is None
            or (type(value) is str and len(value) == length and not value.endswith(" "))
        )
    if isinstance(column_type, types.String):
        # PostgreSQL cuts spaces past VARCHAR(n) without an error.
        limit = column_type.length
        return lambda value: (
            value is None or (type(value) is str and (limit is None or len(value) <= limit))
        )
    if isinstance(column_type, types.Float):
        return _float_check(column_type, dialect)
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
        sequence = tuple if column_type.as_tuple else list
        return lambda value: (
            value is None or (type(value) is sequence and all(item(element) for element in value))
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
    return lambda value: value is None or (type(value) is str and value in names)


def _float_check(column_type: types.Float[Any], dialect: str) -> Check:
    precision = column_type.precision
    if dialect in ("mysql", "mariadb"):
        # MySQL's FLOAT is 4 bytes unless a precision over 24 makes it a DOUBLE.
        single = not isinstance(column_type, types.Double) and (precision or 0) <= 24
    elif dialect == "postgresql":
        single = isinstance(column_type, types.REAL) or (precision or 53) <= 24
    else:
        single = False  # SQLite keeps every float in 8 bytes
    if single or column_type.asdecimal:
        return _never
    # NaN never compares equal (and SQLite stores it as NULL).
    return lambda value: value is None or (type(value) is float and not math.isnan(value))


def _numeric_check(column_type: types.Numeric[Any], dialect: str) -> Check:
    if not column_type.asdecimal:
        return _never
    scale = column_type.scale
    digits = None
    if dialect == "sqlite":
        # SQLite keeps a double, and SQLAlchemy rounds what it reads to this scale.
        scale, digits = column_type._effective_decimal_return_scale, 15
    elif scale is None and dialect in ("mysql", "mariadb"):
        scale = 0  # DECIMAL without a scale is DECIMAL(10, 0)

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
    precision = getattr(column_type, "precision", None)  # digits after the second
    if precision is None:
        precision = 0 if dialect in ("mysql", "mariadb") else 6
    step = 10 ** (6 - min(max(precision, 0), 6))

    def check(value: Any) -> bool:
        if value is None:
            return True
        return (
            type(value) is python_type
            and (value.tzinfo is not None) == aware
            and value.microsecond % step == 0
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
    return _kept(value, again)


def _kept(ours: Any, theirs: Any) -> bool:
    """Equal, and of the same types all the way down (``1 == 1.0 == True`` is not); no
    whole float either (PostgreSQL's JSONB gives ``1e16`` back as an int)."""
    if type(ours) is not type(theirs):
        return False
    if isinstance(ours, list):
        return len(ours) == len(theirs) and all(map(_kept, ours, theirs))
    if isinstance(ours, dict):
        return ours.keys() == theirs.keys() and all(_kept(ours[k], theirs[k]) for k in ours)
    if isinstance(ours, float) and ours.is_integer():
        return False
    return bool(ours == theirs)
