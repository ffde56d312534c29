"""The mapped classes of the benchmark suite, and fast ways to fill their tables.

Every table is named ``bench_suite_*``; the suite creates and drops them itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import Column, Engine, Float, Integer, String, Table, insert
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column


class Base(DeclarativeBase):
    pass


class User(Base):
    """Five columns, a primary key and a unique alternate key; updates invalidate."""

    __tablename__ = "bench_suite_users"
    __stockpyle_keys__ = ["id", "email"]

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(100), unique=True)
    name: Mapped[str] = mapped_column(String(50))
    score: Mapped[float]
    active: Mapped[bool]


def user_row(i: int) -> dict[str, Any]:
    """The column values of user ``i``."""
    return {
        "id": i,
        "email": f"user{i}@example.com",
        "name": f"User {i}",
        "score": i * 1.5,
        "active": i % 7 != 0,
    }


class _AccountColumns:
    """Five columns: ``id``, ``email``, ``name``, ``balance`` and ``version``."""

    __stockpyle_keys__ = ["id", "email"]

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(100), unique=True)
    name: Mapped[str] = mapped_column(String(50))
    balance: Mapped[int]
    version: Mapped[int] = mapped_column(nullable=False)


class _Versioned(_AccountColumns):
    """``version`` is the ``version_id_col``: commits are written through."""

    @declared_attr.directive
    def __mapper_args__(cls) -> dict[str, Any]:
        return {"version_id_col": cls.__table__.c.version}  # type: ignore[attr-defined]


class Account(_Versioned, Base):
    """Accounts of the Zipf workload and of the commit benchmark, with the cache."""

    __tablename__ = "bench_suite_accounts"


class PlainAccount(_Versioned, Base):
    """The same rows for the runs without the cache, in a table of their own, so that
    their commits never leave the cached table's entries stale."""

    __tablename__ = "bench_suite_plain_accounts"


class UnversionedAccount(_AccountColumns, Base):
    """The same rows without a ``version_id_col``: commits invalidate."""

    __tablename__ = "bench_suite_unversioned_accounts"


def account_row(i: int) -> dict[str, Any]:
    """The column values of account ``i``."""
    return {"id": i, "email": f"acct{i}@example.com", "name": f"Account {i}", "balance": 0}


_WIDE: dict[int, type[Base]] = {}


def wide_class(columns: int) -> type[Base]:
    """A mapped class of ``columns`` columns: ``id``, ``email`` and ints, strings and
    floats in turn; its table is ``bench_suite_wide_<columns>``."""
    found = _WIDE.get(columns)
    if found is not None:
        return found
    extra: list[Column[Any]] = []
    for n in range(columns - 2):
        kind = (Integer, String(40), Float)[n % 3]
        extra.append(Column(f"c{n}", kind, nullable=False))
    table = Table(
        f"bench_suite_wide_{columns}",
        Base.metadata,
        Column("id", Integer, primary_key=True),
        Column("email", String(100), unique=True, nullable=False),
        *extra,
    )
    klass = type(
        f"Wide{columns}",
        (Base,),
        {"__table__": table, "__stockpyle_keys__": ["id", "email"]},
    )
    _WIDE[columns] = klass
    return klass


def wide_row(columns: int, i: int) -> dict[str, Any]:
    """The column values of row ``i`` of the table of ``wide_class(columns)``."""
    row: dict[str, Any] = {"id": i, "email": f"wide{i}@example.com"}
    for n in range(columns - 2):
        row[f"c{n}"] = (i * n, f"value {n} of row {i}", i / (n + 1))[n % 3]
    return row


def _chunks(rows: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def create(engine: Engine, classes: Iterable[type[Base]]) -> None:
    """Drop and create the tables of ``classes``."""
    tables = [klass.__table__ for klass in classes]  # type: ignore[attr-defined]
    Base.metadata.drop_all(engine, tables=tables)
    Base.metadata.create_all(engine, tables=tables)


def drop(engine: Engine, classes: Iterable[type[Base]]) -> None:
    """Drop the tables of ``classes``."""
    tables = [klass.__table__ for klass in classes]  # type: ignore[attr-defined]
    Base.metadata.drop_all(engine, tables=tables)


def fill(engine: Engine, klass: type[Base], rows: Iterable[dict[str, Any]]) -> None:
    """Insert ``rows`` with Core executemany in chunks (far faster than the ORM)."""
    table = klass.__table__  # type: ignore[attr-defined]
    version = "version" in table.c
    with engine.begin() as connection:
        for chunk in _chunks(rows, 5000):
            connection.execute(
                insert(table), [{**row, "version": 1} for row in chunk] if version else chunk
            )
