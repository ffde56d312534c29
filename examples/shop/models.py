"""The shop's mapped classes, as of the head revision of ``versions/``.

Like an application's models module, this describes the newest schema only: it can run
against a database at revision 0002 or later (0003 and 0004 change data, not columns).
"""

from __future__ import annotations

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """The shop's declarative base: its registry lists every mapped class."""


class Account(Base):
    """A customer, found by id or by email."""

    __tablename__ = "accounts"
    __stockpyle_keys__ = ["id", "email"]

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    # Added by revision 0002.
    display_name: Mapped[str] = mapped_column(String(100), server_default="")


class Order(Base):
    """An order, found by id or by its account and per-account number."""

    __tablename__ = "orders"
    __stockpyle_keys__ = ["id", ("account_id", "number")]

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    number: Mapped[int]
    # In cents since revision 0004, in whole units before it.
    total: Mapped[int]
