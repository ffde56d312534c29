"""Mapped classes for the SQLAlchemy tests and benchmarks: every kind of key, inheritance
and column type the entity codec supports; and the race tables, which the tests of races,
faults, forks and coherence share."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    Engine,
    Enum,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    Uuid,
    create_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship


class Base(DeclarativeBase):
    """The declarative base of the test models."""


class Color(enum.Enum):
    """Stored by an ``Enum`` column."""

    RED = "red"
    BLUE = "blue"


class User(Base):
    """A primary key, a nullable unique alternate key, and a relationship."""

    __tablename__ = "sa_store_users"
    __stockpyle_keys__ = ["id", "email"]

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    email: Mapped[str | None] = mapped_column(String(100), unique=True)
    addresses: Mapped[list[Address]] = relationship(back_populates="user", order_by="Address.id")


class Address(Base):
    """The many side of ``User.addresses``."""

    __tablename__ = "sa_store_addresses"
    __stockpyle_keys__ = ["id"]

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("sa_store_users.id"))
    street: Mapped[str] = mapped_column(String(100))
    user: Mapped[User] = relationship(back_populates="addresses")


class Typed(Base):
    """Every supported column type; its primary lookup key (``uid``) is not the table's."""

    __tablename__ = "sa_store_typed"
    __stockpyle_keys__ = ["uid", "id"]

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uid: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    naive: Mapped[dt.datetime | None] = mapped_column(DateTime)
    aware: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    day: Mapped[dt.date | None] = mapped_column(Date)
    price: Mapped[Decimal | None] = mapped_column(Numeric(12, 4))
    color: Mapped[Color | None] = mapped_column(Enum(Color))
    blob: Mapped[bytes | None] = mapped_column(LargeBinary)
    doc: Mapped[Any] = mapped_column(JSON, nullable=True)
    items: Mapped[Any] = mapped_column(JSON, nullable=True)
    flag: Mapped[bool | None] = mapped_column(Boolean)
    ratio: Mapped[float | None] = mapped_column(Float)
    text: Mapped[str | None] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(String(20))


class Membership(Base):
    """A composite primary key, declared in another order than the table's."""

    __tablename__ = "sa_store_memberships"
    __stockpyle_keys__ = [("member", "org")]

    org: Mapped[str] = mapped_column(String(20), primary_key=True)
    member: Mapped[int] = mapped_column(Integer, primary_key=True)
    role: Mapped[str] = mapped_column(String(20))


class Vehicle(Base):
    """Single-table inheritance: every subclass lives in this table."""

    __tablename__ = "sa_store_vehicles"
    __stockpyle_keys__ = ["id", "plate"]

    id: Mapped[int] = mapped_column(primary_key=True)
    plate: Mapped[str] = mapped_column(String(20), unique=True)
    kind: Mapped[str] = mapped_column(String(20))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "vehicle"}


class Car(Vehicle):
    """A single-table subclass with a column of its own."""

    doors: Mapped[int | None] = mapped_column(nullable=True)
    __mapper_args__ = {"polymorphic_identity": "car"}


class Truck(Vehicle):
    """Another single-table subclass."""

    payload: Mapped[int | None] = mapped_column(nullable=True)
    __mapper_args__ = {"polymorphic_identity": "truck"}


class Employee(Base):
    """Joined-table inheritance: subclasses add tables."""

    __tablename__ = "sa_store_employees"
    __stockpyle_keys__ = ["id"]

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    type: Mapped[str] = mapped_column(String(20))
    __mapper_args__ = {"polymorphic_on": "type", "polymorphic_identity": "employee"}


class Manager(Employee):
    """A joined subclass."""

    __tablename__ = "sa_store_managers"

    id: Mapped[int] = mapped_column(ForeignKey("sa_store_employees.id"), primary_key=True)
    budget: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    __mapper_args__ = {"polymorphic_identity": "manager"}


class Engineer(Employee):
    """Another joined subclass."""

    __tablename__ = "sa_store_engineers"

    id: Mapped[int] = mapped_column(ForeignKey("sa_store_employees.id"), primary_key=True)
    language: Mapped[str] = mapped_column(String(20))
    __mapper_args__ = {"polymorphic_identity": "engineer"}


class Pet(Base):
    """Declares ``nick`` a key although the table lets two rows share one."""

    __tablename__ = "sa_store_pets"
    __stockpyle_keys__ = ["id", "nick"]

    id: Mapped[int] = mapped_column(primary_key=True)
    nick: Mapped[str] = mapped_column(String(20))


class Unkeyed(Base):
    """Mapped, but without ``__stockpyle_keys__``."""

    __tablename__ = "sa_store_unkeyed"

    id: Mapped[int] = mapped_column(primary_key=True)


# -- the race tables: tests of races, faults, forks and coherence --------------------------


class RaceBase(DeclarativeBase):
    """The declarative base of the race tables (:func:`item_tables` makes them)."""


class Item(RaceBase):
    """No version column: updates invalidate."""

    __tablename__ = "race_items"
    __stockpyle_keys__ = ["id", "code"]

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(20), unique=True)
    value: Mapped[str] = mapped_column(String(20))


class Doc(RaceBase):
    """A version column: updates are written through, the highest version wins."""

    __tablename__ = "race_docs"
    __stockpyle_keys__ = ["id", "code"]

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(20), unique=True)
    value: Mapped[str] = mapped_column(String(20))
    version: Mapped[int] = mapped_column(Integer)
    __mapper_args__ = {"version_id_col": version}


CLASSES = [Item, Doc]


@contextmanager
def item_tables(
    postgres_url: str, items: int = 0, value: str = "", **options: Any
) -> Iterator[Engine]:
    """An engine (``options`` for ``create_engine``) over fresh race tables holding items
    0 to ``items - 1`` with ``value``; the tables are dropped afterwards."""
    engine = create_engine(postgres_url, **options)
    RaceBase.metadata.drop_all(engine)
    RaceBase.metadata.create_all(engine)
    if items:
        with Session(engine) as session:
            session.add_all([Item(id=i, code=f"c{i}", value=value) for i in range(items)])
            session.commit()
    yield engine
    RaceBase.metadata.drop_all(engine)
    engine.dispose()
