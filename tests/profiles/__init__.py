"""An Alembic project whose one table, ``profiles``, each release maps its own way.

Release ``rN`` ships a model of the table (:data:`MODELS`) and the revision ``rN``
(``versions/``) that migrates the table to it: every revision changes a column's type, so
every release's model has a schema fingerprint of its own, and some rewrite data too.
Every model reads the table at every revision (only lengths and integer widths change),
so the code of every release can serve from the database at any revision, as during a
rolling deployment or a rollback.  ``env.py`` is wired as ``docs/alembic.md`` shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic.config import Config
from sqlalchemy import BigInteger, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine

from sa_stockpyle.stores import BaseStore

HERE = Path(__file__).resolve().parent

#: The releases, oldest first; each ships the revision of the same name.
REVISIONS = ("r0", "r1", "r2", "r3", "r4")

#: The version table, so the project can share a database with another Alembic project.
VERSION_TABLE = "profiles_alembic_version"

#: Per release: the types of ``email``, ``points`` and ``note``.
_TYPES: dict[str, tuple[TypeEngine[Any], ...]] = {
    "r0": (String(50), Integer(), String(20)),
    "r1": (String(80), Integer(), String(20)),
    "r2": (String(80), BigInteger(), String(20)),
    "r3": (String(80), BigInteger(), String(40)),
    "r4": (String(120), BigInteger(), String(40)),
}


def _model(revision: str) -> tuple[type[DeclarativeBase], type[Any]]:
    email_type, points_type, note_type = _TYPES[revision]

    class Base(DeclarativeBase):
        """The release's declarative base."""

    class Profile(Base):
        """A profile, found by id or by email."""

        __tablename__ = "profiles"
        __stockpyle_keys__ = ["id", "email"]

        id: Mapped[int] = mapped_column(primary_key=True)
        email: Mapped[str] = mapped_column(email_type, unique=True)
        points: Mapped[int] = mapped_column(points_type)
        note: Mapped[str] = mapped_column(note_type)

    return Base, Profile


#: Per release: its declarative base and its ``Profile`` class.
MODELS = {revision: _model(revision) for revision in REVISIONS}


def alembic_config(database_url: str, store: BaseStore, base: type[DeclarativeBase]) -> Config:
    """The project's Alembic configuration, run by the release whose models are ``base``
    and whose cache is ``store``."""
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.set_main_option("path_separator", "os")
    # Read with interpolation: a literal % in a password must be doubled.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["store"] = store
    config.attributes["base"] = base
    return config
