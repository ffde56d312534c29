"""Only values the database stored as they are written through; others are removed.

Each case commits a value a column type changes on the way in (a Numeric rounds, a CHAR
pads, a naive DateTime drops an offset, a String turns an int into text) and one it keeps.
After every commit, each cached entry, in memory and in Redis, equals a fresh read from
the database column by column, with the same types; the kept values are written through.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    CHAR,
    JSON,
    DateTime,
    Float,
    Integer,
    Numeric,
    String,
    Uuid,
    create_engine,
    inspect,
)
from sqlalchemy.dialects import mysql, oracle, postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sa_stockpyle.column_values import value_checks
from tests.attached import Attached, attached

TOKYO = dt.timezone(dt.timedelta(hours=9))


class Base(DeclarativeBase):
    pass


class Reading(Base):
    """Versioned, so that inserts and updates alike are written through when exact."""

    __tablename__ = "column_value_readings"
    __stockpyle_keys__ = ["id"]

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    amount: Mapped[Decimal | None] = mapped_column(Numeric(10, 2))
    code: Mapped[str | None] = mapped_column(CHAR(5))
    taken: Mapped[dt.datetime | None] = mapped_column(DateTime)
    label: Mapped[str | None] = mapped_column(String(20))
    extra: Mapped[Any] = mapped_column(JSON)
    version: Mapped[int] = mapped_column(Integer)
    __mapper_args__ = {"version_id_col": version}


CHANGED = {  # what each column type changes on the way in
    "amount": Decimal("1.005"),
    "code": "ab",
    "taken": dt.datetime(2026, 12, 6, 12, 0, tzinfo=TOKYO),
    "label": 5,
    "extra": {"pair": (1, 2)},
}
KEPT = {
    "amount": Decimal("1.01"),
    "code": "abcde",
    "taken": dt.datetime(2026, 12, 6, 3, 0),
    "label": "5",
    "extra": {"pair": [1, 2]},
}


@pytest.fixture(params=["sqlite", "postgresql"])
def layers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Attached]:
    with attached(request, tmp_path, Base.metadata) as layers:
        yield layers


def _assert_never_stale(layers: Attached) -> None:
    layers.assert_never_stale([Reading], range(1, 10))


@pytest.mark.parametrize("column", sorted(CHANGED))
def test_a_value_the_database_changes_is_removed_not_written(
    layers: Attached, column: str
) -> None:
    with layers.factory() as session:
        session.add(Reading(id=1, **KEPT))
        session.add(Reading(id=2, **{**KEPT, column: CHANGED[column]}))
        session.commit()
    assert all(held is not None for held in layers.held(Reading, 1))  # exact: written through
    assert layers.held(Reading, 2) == [None, None]
    assert layers.handle.stats.count(Reading, "inexact") == 1
    _assert_never_stale(layers)
    with layers.factory() as session:  # the same on an update
        session.get(Reading, 1).__setattr__(column, CHANGED[column])
        session.commit()
    assert layers.held(Reading, 1) == [None, None]
    _assert_never_stale(layers)
    assert layers.chain.get(Reading, 1) is not None  # refilled with what the database holds
    _assert_never_stale(layers)


def _unshared() -> type[DeclarativeBase]:
    """A base for the classes one test defines, new at every run of the test: on Base,
    their tables would join every later test's ``create_all`` (a PostgreSQL ARRAY on
    SQLite), and a second run in the same process would define them twice."""

    class Unshared(DeclarativeBase):
        pass

    return Unshared


def test_the_checks_follow_the_dialect() -> None:
    class Sample(_unshared()):  # type: ignore[misc]
        __tablename__ = "column_value_samples"
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        stamp: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
        real: Mapped[float] = mapped_column(Float(precision=24))
        ident: Mapped[str] = mapped_column(Uuid(as_uuid=False))
        scores: Mapped[list[int]] = mapped_column(postgresql.ARRAY(Integer))

    mapper = inspect(Sample)
    on_postgresql = value_checks(mapper, postgresql.dialect())
    on_sqlite = value_checks(mapper, create_engine("sqlite://").dialect)
    aware = dt.datetime(2026, 12, 6, tzinfo=dt.timezone.utc)
    assert on_postgresql["stamp"](aware)
    assert not on_postgresql["stamp"](aware.replace(tzinfo=None))
    assert not on_sqlite["stamp"](aware)  # SQLite keeps no time zone
    assert not on_postgresql["real"](0.1)  # a 4-byte REAL rounds
    assert on_sqlite["real"](0.1)
    canonical = str(uuid.uuid4())
    assert on_postgresql["ident"](canonical)
    assert not on_postgresql["ident"](canonical.upper())
    assert on_postgresql["scores"]([1, 2])
    assert not on_postgresql["scores"]((1, 2))
    assert not on_postgresql["scores"]([1, True])
    assert all(check(None) for check in on_postgresql.values())


def test_the_subtler_rules() -> None:
    class Subtle(_unshared()):  # type: ignore[misc]
        __tablename__ = "column_value_subtle"
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        varied: Mapped[str] = mapped_column(String(20).with_variant(CHAR(5), "postgresql"))
        single: Mapped[float] = mapped_column(postgresql.REAL)
        plain_float: Mapped[float] = mapped_column(Float)
        rounded: Mapped[float] = mapped_column(Numeric(10, 2, asdecimal=False))
        loose: Mapped[Decimal] = mapped_column(Numeric)
        seconds: Mapped[dt.datetime] = mapped_column(postgresql.TIMESTAMP(precision=0))
        pair: Mapped[tuple[int, ...]] = mapped_column(postgresql.ARRAY(Integer, as_tuple=True))
        doc: Mapped[Any] = mapped_column(postgresql.JSONB)
        short: Mapped[str] = mapped_column(String(3))

    mapper = inspect(Subtle)
    pg = value_checks(mapper, postgresql.dialect())
    sqlite = value_checks(mapper, create_engine("sqlite://").dialect)
    mysql_checks = value_checks(mapper, mysql.dialect())
    assert not pg["varied"]("ab")
    assert pg["varied"]("abcde")
    assert sqlite["varied"]("ab")  # String(20)
    assert not pg["single"](0.5)
    assert pg["plain_float"](0.5)
    assert not pg["plain_float"](float("nan"))
    assert not mysql_checks["plain_float"](0.5)  # MySQL's FLOAT is 4 bytes
    assert not pg["rounded"](1.005)
    assert pg["loose"](Decimal("1E-12"))  # PostgreSQL's NUMERIC keeps any scale
    assert not sqlite["loose"](Decimal("1E-12"))  # read back at scale 10 on SQLite
    assert not mysql_checks["loose"](Decimal("1.5"))  # DECIMAL(10, 0)
    assert pg["seconds"](dt.datetime(2026, 1, 1, 12))
    assert not pg["seconds"](dt.datetime(2026, 1, 1, 12, 0, 0, 5))
    assert pg["pair"]((1, 2))
    assert not pg["pair"]([1, 2])
    assert pg["doc"]({"a": 1.5})
    assert not pg["doc"]({"a": 1e16})
    assert not pg["short"]("abcd")  # PostgreSQL would cut it if the rest were spaces
    unknown = value_checks(mapper, oracle.dialect())
    assert all(check(None) and not check(1) for check in unknown.values())
