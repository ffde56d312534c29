"""Key values as strings: each value a type-tagged string of printable ASCII without spaces.

The tag keeps ``1``, ``"1"``, ``True`` and ``1.0`` apart; equal values (``Decimal("1.0")``
and ``Decimal("1.00")``, one instant in two time zones) encode alike; and the encoding is
the same in every process and on every Python version (``hash()`` is never used).
"""

from __future__ import annotations

import datetime as dt
import enum
import math
from collections.abc import Callable
from decimal import Context, Decimal
from typing import Any, cast
from urllib.parse import quote
from uuid import UUID

from sa_stockpyle.errors import InvalidKeyValueError

__all__ = ["SUPPORTED_KEY_TYPES", "encode_int", "encode_str", "encode_value"]

# Characters a string value keeps as they are; the rest is %-escaped.  Everything
# printable but the separators of the encoding (",", "(", ")") and the escape itself.
_SAFE = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-@!~*'=?&/[]{}<>;^|$#+:"
)
_EXACT_INT_LIMIT = 2**63


def encode_str(value: str) -> str:
    """Encode a ``str`` key value (what :func:`encode_value` does, without its lookup)."""
    if _SAFE.issuperset(value):
        return "s" + value
    # surrogatepass: a lone surrogate is a str value like any other, and its bytes are
    # never those of a valid string, so it cannot collide with one.
    return "s" + quote(value.encode("utf-8", "surrogatepass"), safe="")


def encode_int(value: int) -> str:
    """Encode an ``int`` key value (what :func:`encode_value` does, without its lookup)."""
    if -_EXACT_INT_LIMIT < value < _EXACT_INT_LIMIT:
        return f"i{value}"
    # str() of a huge int is capped by sys.int_info.str_digits_check_threshold; hex is not.
    return f"I{value:x}"


def _enc_float(value: float) -> str:
    if math.isnan(value):
        raise InvalidKeyValueError("NaN is not equal to itself and cannot identify an object")
    # -0.0 == 0.0 in Python and in SQL, so they name the same object.
    return f"f{value + 0.0!r}"


def _enc_decimal(value: Decimal) -> str:
    if value.is_nan():
        raise InvalidKeyValueError("NaN is not equal to itself and cannot identify an object")
    if not value.is_finite():
        return f"D{value}"
    # Decimal("1.0") == Decimal("1.00"): equal values share a key.  Trailing zeros are
    # stripped by hand: Decimal.normalize() rounds to the context's 28 digits, which
    # would give unequal values one key (and overflows on huge exponents).
    sign, digits, shift = value.as_tuple()
    exponent = cast(int, shift)  # a finite value's is an int
    significant = "".join(map(str, digits)).rstrip("0")
    if not significant:
        return "D0"  # -0 == 0
    exponent += len(digits) - len(significant)
    exact = Decimal((sign, tuple(map(int, significant)), exponent))
    # Fixed-point for every value the default context holds exactly (the keys such values
    # always had); beyond it, the scientific form, whose "E" no fixed-point form holds.
    adjusted = exponent + len(significant) - 1
    held = len(significant) <= _CONTEXT.prec and _CONTEXT.Emin <= adjusted <= _CONTEXT.Emax
    return f"D{exact:f}" if held else f"D{exact}"


#: The context Decimal key values were normalised in before keys were made exactly.
_CONTEXT = Context()


def _enc_datetime(value: dt.datetime) -> str:
    # Equal aware datetimes in different zones name the same instant: key them in UTC.
    if value.tzinfo is not None and value.utcoffset() is not None:
        try:
            utc = value.astimezone(dt.timezone.utc)
        except OverflowError:
            # 0001-01-01 00:30+01:00 is a datetime, but its instant is not one in UTC.
            raise InvalidKeyValueError(
                f"datetime {value!r} names an instant outside datetime's range in UTC, "
                f"and cannot identify an object"
            ) from None
        return "tZ" + utc.replace(tzinfo=None).isoformat()
    return "t" + value.isoformat()


def _enc_enum(value: enum.Enum) -> str:
    cls = type(value)
    return "e" + quote(f"{cls.__module__}.{cls.__qualname__}.{value.name}", safe="")


def _enc_tuple(value: tuple[Any, ...]) -> str:
    return "(" + ",".join(encode_value(item) for item in value) + ")"


_ENCODERS: dict[type, Callable[[Any], str]] = {
    str: encode_str,
    int: encode_int,
    bool: lambda v: "T" if v else "F",
    float: _enc_float,
    Decimal: _enc_decimal,
    bytes: lambda v: "b" + v.hex(),
    UUID: lambda v: "u" + v.hex,
    dt.datetime: _enc_datetime,
    dt.date: lambda v: "d" + v.isoformat(),
    dt.time: lambda v: "h" + v.isoformat(),
    tuple: _enc_tuple,
    type(None): lambda v: "n",
}

#: The types a key value may have, as error messages name them.
SUPPORTED_KEY_TYPES = (
    "str, int, bool, float, Decimal, bytes, UUID, datetime, date, time, Enum or a tuple of these"
)


def encode_value(value: object) -> str:
    """Encode one key value as a type-tagged string of printable ASCII without spaces;
    raise for values that are not keys."""
    encoder = _ENCODERS.get(type(value))
    if encoder is not None:
        return encoder(value)
    if isinstance(value, enum.Enum):
        return _enc_enum(value)
    for base, base_encoder in _ENCODERS.items():
        if isinstance(value, base):
            return base_encoder(value)
    raise InvalidKeyValueError(
        f"{type(value).__qualname__} value {value!r} cannot be part of a key; "
        f"supported: {SUPPORTED_KEY_TYPES}"
    )
