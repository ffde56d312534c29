"""The objects the conformance suites store, and the fake clock they move."""

from __future__ import annotations

import datetime as dt
import enum
from decimal import Decimal
from typing import Any
from uuid import UUID

from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Automobile",
    "BadDeclaration",
    "Car",
    "Color",
    "Duplicated",
    "EmptyDeclaration",
    "FakeClock",
    "Falsy",
    "Foo",
    "MissingAttr",
    "NoKeys",
    "NotAList",
    "Pair",
    "Truck",
    "User",
    "Versioned",
    "rich_values",
]


class FakeClock:
    """A clock that only moves when told to: ``clock.advance(seconds)``."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += seconds


class _Comparable:
    def __init__(self, **attrs: Any) -> None:
        self.__dict__.update(attrs)

    def __getattr__(self, name: str) -> Any:
        # Attributes are set per instance; this only tells type checkers so.
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({vars(self)!r})"


class Foo(_Comparable):
    """The seed's example: a primary key and a composite alternate key."""

    __stockpyle_keys__ = ["key", ("zap", "bar")]


class Pair(_Comparable):
    """A class whose primary key is composite (tuple shorthand)."""

    __stockpyle_keys__ = [("a", "b")]


class User(_Comparable):
    """A user with a nullable alternate key (``email``)."""

    __stockpyle_keys__ = ["id", "email"]


class Automobile(_Comparable):
    """Base of a polymorphic hierarchy."""

    __stockpyle_keys__ = ["license_plate"]


class Car(Automobile):
    """A stored subclass."""


class Truck(Automobile):
    """Another subclass, never equal to a Car."""


class Falsy(_Comparable):
    """An object that is falsy: only None may mean a miss."""

    __stockpyle_keys__ = ["key"]

    def __bool__(self) -> bool:
        return False

    def __len__(self) -> int:
        return 0


class Color(enum.Enum):
    """An Enum attribute value."""

    RED = "red"
    BLUE = "blue"


class NoKeys:
    """A class without ``__stockpyle_keys__``."""


# Classes that store calls must refuse (see test_bad_input_raises_typed_errors...).  They
# are defined once: a class token names one class in a process.


class MissingAttr:
    __stockpyle_keys__ = ["id", "email"]

    def __init__(self) -> None:
        self.id = 1


class BadDeclaration:
    __stockpyle_keys__ = ["id", ("a", 3)]


class Duplicated:
    __stockpyle_keys__ = ["id", "id"]


class EmptyDeclaration:
    __stockpyle_keys__: list[str] = []


class NotAList:
    __stockpyle_keys__ = "id"


class _Base(DeclarativeBase):
    pass


class Versioned(_Base):
    """A mapped class whose commits are ordered by a ``version_id_col``."""

    __tablename__ = "stockpyle_conformance_versioned"
    __stockpyle_keys__ = ["id"]

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column()
    version: Mapped[int] = mapped_column()
    __mapper_args__ = {"version_id_col": version}


def rich_values() -> dict[str, Any]:
    """Attribute values of every type a store must give back exactly."""
    return {
        "naive": dt.datetime(2024, 2, 29, 12, 30, 45, 123456),
        "aware": dt.datetime(2024, 2, 29, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=5))),
        "day": dt.date(1999, 12, 31),
        "clock": dt.time(23, 59, 1),
        "span": dt.timedelta(days=2, seconds=5, microseconds=7),
        "price": Decimal("12.3400"),
        "uid": UUID("12345678-1234-5678-1234-567812345678"),
        "color": Color.BLUE,
        "blob": b"\x00\xff binary",
        "doc": {"a": [1, 2, {"b": None}], "c": 1.5, "$t": "not a tag"},
        "odd_dict": {1: "one", (2, 3): "pair"},
        "items": [1, "two", 3.0, None, True],
        "pair": (1, ("nested", b"x")),
        "tags": {"x", "y"},
        "frozen": frozenset({1, 2}),
        "big": 10**40,
        "text": "ünïcödé ✓ \n\t",
        "nothing": None,
        "flag": False,
        "inf": float("inf"),
    }
