"""What SQLAlchemy's mapper says about a class, read once per class.

The one module that asks a mapper which attributes are columns, which of them form the
primary key and which counts versions; the snapshots, the write-through plugin, Core
statement tracking and the SQLAlchemy store all read these facts from here.  They are
fixed once a class is mapped (a class mapped again is a new class object).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy
from sqlalchemy import Column, Table
from sqlalchemy.orm import Mapper
from sqlalchemy.orm.exc import UnmappedColumnError

# Every registry's mappers: a Core statement names a table, and every storable class
# mapping it has entries to remove, whether or not this process has used it yet.
from sqlalchemy.orm.mapper import _all_registries

from sa_stockpyle.errors import ConfigurationError
from sa_stockpyle.listeners import listen_for_life

__all__ = ["Mapped", "TableMapping", "mapped", "mapper_of", "table_mappings"]


@dataclass(frozen=True, slots=True)
class Mapped:
    """The mapper facts of one mapped class."""

    mapper: Mapper[Any]
    #: every column attribute, in the mapper's order
    columns: tuple[str, ...]
    #: the same, for whole-state comparisons
    column_set: frozenset[str]
    #: the attributes of ``mapper.primary_key``, in its order
    primary_attrs: tuple[str, ...]
    #: The attribute of the mapper's ``version_id_col`` when the ORM counts it up itself
    #: (the default generator or a custom one); None without one or when the database
    #: assigns it (``version_id_generator=False``).
    version: str | None
    #: the primary key values of a complete state, as a tuple (a restore's hot path)
    primary_key_of: Callable[[dict[str, Any]], tuple[Any, ...]]


# A plain dict: it is read on every snapshot and restore.
_MAPPED: dict[type, Mapped | None] = {}


def mapped(klass: type) -> Mapped | None:
    """The mapper facts of ``klass``, or None when SQLAlchemy does not map it."""
    try:
        return _MAPPED[klass]
    except KeyError:
        pass
    mapper: object = sqlalchemy.inspect(klass, raiseerr=False)
    found = None
    if isinstance(mapper, Mapper):
        columns = tuple(prop.key for prop in mapper.column_attrs)
        primary = _primary_attrs(mapper)
        version = None
        if mapper.version_id_col is not None and mapper.version_id_generator is not False:
            version = mapper.get_property_by_column(mapper.version_id_col).key
        found = Mapped(mapper, columns, frozenset(columns), primary, version, _getter(primary))
    _MAPPED[klass] = found
    return found


def mapper_of(klass: type) -> Mapper[Any]:
    """The mapper of ``klass``; :class:`ConfigurationError` when it is not mapped."""
    found = mapped(klass)
    if found is None:
        raise ConfigurationError(f"{klass.__qualname__} is not a mapped class")
    return found.mapper


@dataclass(frozen=True)
class TableMapping:
    """One storable class mapping a table: how the table's primary key names its rows."""

    klass: type
    #: the attributes of the class's primary key, in order
    attrs: tuple[str, ...]
    #: per attribute of the class's primary key, in order, the table column holding it
    columns: tuple[Column[Any], ...] | None  # None: the table's key does not give it


_TABLES: dict[Table, tuple[TableMapping, ...]] = {}


def _forget_tables(mapper: Mapper[Any], klass: type) -> None:
    _TABLES.clear()  # a class mapped later may map a table seen before


listen_for_life(Mapper, "mapper_configured", _forget_tables)


def table_mappings(table: Table) -> tuple[TableMapping, ...]:
    """Every class declaring ``__stockpyle_keys__`` that maps ``table``, in any registry."""
    found = _TABLES.get(table)
    if found is not None:
        return found
    mappings = []
    for registry in list(_all_registries()):
        for mapper in list(registry.mappers):
            klass = mapper.class_
            if getattr(klass, "__stockpyle_keys__", None) is None or table not in mapper.tables:
                continue
            by_attr = {}
            for column in table.primary_key:
                try:
                    by_attr[mapper.get_property_by_column(column).key] = column
                except UnmappedColumnError:  # a key column the class does not map
                    continue
            primary = _primary_attrs(mapper)
            columns = (
                tuple(by_attr[a] for a in primary) if set(primary) <= by_attr.keys() else None
            )
            mappings.append(TableMapping(klass, primary, columns))
    found = _TABLES[table] = tuple(mappings)
    return found


def _primary_attrs(mapper: Mapper[Any]) -> tuple[str, ...]:
    return tuple(mapper.get_property_by_column(column).key for column in mapper.primary_key)


def _getter(names: tuple[str, ...]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """A function reading ``names`` out of a dict, always as a tuple."""
    if len(names) == 1:
        name = names[0]
        return lambda values: (values[name],)
    return operator.itemgetter(*names)
