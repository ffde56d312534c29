"""The stress schema: two cached classes, and the table of committed tokens.

Both cached classes have a primary key and an alternate unique key, and columns whose
types change some values on the way in (``Numeric``, ``CHAR``, ``DateTime``) or that no
cache payload carries (``PickleType``).  ``Versioned`` commits carry a version and are
written through; ``Plain`` updates invalidate.  Every writer transaction also inserts
the tokens it wrote into ``stress_committed`` (:class:`Committed`).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any, ClassVar, NamedTuple, cast

from sqlalchemy import (
    CHAR,
    BigInteger,
    DateTime,
    Engine,
    Identity,
    Integer,
    Numeric,
    PickleType,
    String,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from stress.ordering import State

#: Rows seeded per class; ids stay in 1..ROWS (deleted rows are re-inserted under them).
ROWS = 50


class Base(DeclarativeBase):
    """The stress schema: every table name starts with ``stress_``."""


class RowState(NamedTuple):
    """What a row or a cached object says, compared field by field."""

    id: int
    alternate: str
    value: str
    version: int | None
    #: The other columns, each as (type name, value); None where a replay cannot know them.
    extras: tuple[tuple[str, Any], ...] | None = None

    def core(self) -> State:
        """The fields a replay of the committed writes knows."""
        return self.alternate, self.value, self.version


class Row(Base):
    """Columns shared by the two cached classes."""

    __abstract__ = True

    #: The attribute of the alternate unique key.
    alternate: ClassVar[str]

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    value: Mapped[str] = mapped_column(String(64))
    # Types that change some values on the way in, and one no cache payload can carry.
    amount: Mapped[Decimal | None] = mapped_column(Numeric(10, 2))
    tag: Mapped[str | None] = mapped_column(CHAR(5))
    taken: Mapped[dt.datetime | None] = mapped_column(DateTime)
    blob: Mapped[Any] = mapped_column(PickleType, nullable=True)

    def alt(self) -> str:
        """The alternate key value."""
        return cast("str", getattr(self, self.alternate))

    def state(self) -> RowState:
        """The fields the checker compares."""
        extras = tuple(
            (type(value).__name__, value)
            for value in (self.amount, self.tag, self.taken, self.blob)
        )
        return RowState(self.id, self.alt(), self.value, getattr(self, "version", None), extras)


class Versioned(Row):
    """Commits carry a version: written through, the highest version wins."""

    __tablename__ = "stress_versioned"
    __stockpyle_keys__ = ["id", "email"]
    alternate = "email"

    email: Mapped[str] = mapped_column(String(64), unique=True)
    version: Mapped[int] = mapped_column(Integer)
    __mapper_args__ = {"version_id_col": version}


class Plain(Row):
    """No version: updates invalidate."""

    __tablename__ = "stress_plain"
    __stockpyle_keys__ = ["id", "code"]
    alternate = "code"

    code: Mapped[str] = mapped_column(String(64), unique=True)


class Committed(Base):
    """One row per token a transaction wrote, inserted in that same transaction.

    Inserted after the transaction's row writes were flushed, so ``seq`` is drawn while
    it holds the lock of every row it wrote (an UPDATE's or DELETE's row lock, an
    INSERT's unique index entry): another transaction writing one of those rows waits
    for this one to commit before it can draw its own.  For one row, ``seq`` is the
    commit order.
    """

    __tablename__ = "stress_committed"

    token: Mapped[str] = mapped_column(String(64), primary_key=True)
    klass: Mapped[str] = mapped_column(String(32))
    row_id: Mapped[int] = mapped_column(Integer)
    #: The operation: seed, insert, update, bulk_update, bulk_mappings, table_update,
    #: pair_update, external, held, overtaking (value updates too), move or delete.
    kind: Mapped[str] = mapped_column(String(16))
    seq: Mapped[int] = mapped_column(BigInteger, Identity(), unique=True)


#: The cached classes, and each by its name.
CLASSES: tuple[type[Row], ...] = (Versioned, Plain)
BY_NAME: dict[str, type[Row]] = {klass.__name__: klass for klass in CLASSES}


def seed_alternate(klass: type[Row], row_id: int) -> str:
    """The alternate key value row ``row_id`` of ``klass`` is seeded with."""
    return f"v{row_id}@seed" if klass is Versioned else f"c-seed-{row_id}"


def new_alternate(klass: type[Row], token: str) -> str:
    """The alternate key value a write of ``token`` moves or inserts a row to."""
    return f"{token}@moved" if klass is Versioned else f"c-{token}"


def create_schema(engine: Engine) -> None:
    """Drop and create the stress tables, then seed ROWS rows per class."""
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        for klass in CLASSES:
            for row_id in range(1, ROWS + 1):
                token = f"seed-{klass.__name__}-{row_id}"
                row = klass(id=row_id, value=token)
                setattr(row, klass.alternate, seed_alternate(klass, row_id))
                session.add(row)
                # Seed values are committed values like any other.
                session.add(
                    Committed(token=token, klass=klass.__name__, row_id=row_id, kind="seed")
                )
        session.commit()
