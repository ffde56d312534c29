"""Which cached rows a Core ``INSERT``, ``UPDATE`` or ``DELETE`` changes.

:func:`touched` answers, for a statement on a table that storable mapped classes map, per
class: the primary-key lookups of the rows it changed, or that every row may have
changed.  The rows are known

* from its ``WHERE`` clause, when it pins every primary-key column to a bound value
  (``pk == :value``, ``pk IN (...)``), per parameter set: the form of the ORM's own
  by-key statements (``Session.bulk_update_mappings``, ``bulk_save_objects``) and of
  most hand-written ones;
* from the primary keys the database returned, when :func:`with_returning` added
  ``RETURNING`` to it;
* for an upsert (``INSERT ... ON CONFLICT``, ``ON DUPLICATE KEY UPDATE``), only from
  what the database returns: the row it updates is the one that conflicts on whichever
  unique key, not necessarily the one its parameters name.

A plain ``INSERT`` adds rows, which nothing cached can describe.  Anything else changes
rows that cannot be known: every entry of the classes is then to be made unreachable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Column, Table
from sqlalchemy.sql import operators
from sqlalchemy.sql.dml import Delete, Insert, Update, UpdateBase
from sqlalchemy.sql.elements import BinaryExpression, BindParameter, BooleanClauseList

from sa_stockpyle.mapped import table_mappings

__all__ = [
    "RETURNING_OPTION",
    "Touched",
    "is_upsert",
    "sets_primary_key",
    "touched",
    "with_returning",
]

#: The execution option :func:`with_returning` marks a statement with.
RETURNING_OPTION = "sa_stockpyle_returning"


@dataclass
class Touched:
    """What one statement changed of one storable class's rows."""

    klass: type
    #: primary-key lookups (attribute name -> value) of the rows changed
    lookups: list[dict[str, Any]] = field(default_factory=list)
    #: the rows changed cannot be known: every entry of the class must go
    every_row: bool = False


def _table_of(statement: UpdateBase) -> Table | None:
    table = getattr(statement, "table", None)
    return table if isinstance(table, Table) else None


def is_upsert(statement: Any) -> bool:
    """Whether ``statement`` is an ``INSERT`` that may update existing rows."""
    # Dialect INSERT ... ON CONFLICT / ON DUPLICATE KEY UPDATE constructs carry their
    # clause here; a plain INSERT does not.
    return isinstance(statement, Insert) and statement._post_values_clause is not None


def sets_primary_key(statement: Any, rows: Sequence[dict[str, Any]]) -> bool:
    """Whether ``statement`` is an ``UPDATE`` whose ``SET`` (its values, or those of the
    parameter sets ``rows``) may change a primary-key column.  ``RETURNING`` then names
    the rows by their new keys, and nothing names the entries under their old ones."""
    if not isinstance(statement, Update):
        return False
    table = _table_of(statement)
    if table is None:
        return True  # cannot tell which columns are keys
    names = {column.key for column in table.primary_key}
    for mapping in table_mappings(table):
        names.update(mapping.attrs)
    ordered = getattr(statement, "_ordered_values", None) or ()  # SQLAlchemy 2.0
    assigned = [*(statement._values or {}), *(name for name, _ in ordered)]
    assigned += [name for row in rows for name in row]
    # A name is a string, a column or a mapped attribute; each of the last two has a key.
    return any(getattr(name, "key", name) in names for name in assigned)


def _pinned(table: Table, whereclause: Any) -> dict[Column[Any], BindParameter[Any]]:
    """The primary-key columns of ``table`` that ``whereclause`` pins to a bound value."""
    conjuncts: Sequence[Any] = (
        whereclause.clauses
        if isinstance(whereclause, BooleanClauseList) and whereclause.operator is operators.and_
        else [whereclause]
    )
    pinned: dict[Column[Any], BindParameter[Any]] = {}
    for clause in conjuncts:
        if not isinstance(clause, BinaryExpression) or clause.operator not in (
            operators.eq,
            operators.in_op,
        ):
            continue
        left, right = clause.left, clause.right
        if isinstance(left, BindParameter):
            left, right = right, left
        # == rather than is: an ORM statement's columns name an annotated copy of the table.
        if not isinstance(right, BindParameter) or getattr(left, "table", None) != table:
            continue
        column = table.c.get(getattr(left, "key", ""))
        if column is not None and column.primary_key:
            pinned[column] = right
    return pinned


_UNKNOWN = object()


def _bound(column: Column[Any], bind: BindParameter[Any], params: dict[str, Any]) -> Any:
    """The values (a list) ``bind`` takes with ``params``, or _UNKNOWN: also when one is
    not of the column's Python type, which the database may convert (``"1"`` to ``1``)
    into another key than the cache's."""
    if bind.key in params:
        value = params[bind.key]
    elif bind.callable is None and not bind.required:
        value = bind.value
    else:
        return _UNKNOWN
    values = value if bind.expanding else [value]
    if not isinstance(values, list | tuple):
        return _UNKNOWN
    try:
        expected = column.type.python_type
    except NotImplementedError:
        return _UNKNOWN
    if any(type(v) is not expected for v in values):
        return _UNKNOWN
    return list(values)


def _keys_from_where(
    statement: Update | Delete, table: Table, rows: Sequence[dict[str, Any]]
) -> list[tuple[Any, ...]] | None:
    """Primary-key values (table key order) of the rows the statement's WHERE names."""
    where = statement.whereclause
    if where is None:
        return None
    pinned = _pinned(table, where)
    columns = list(table.primary_key)
    if not columns or set(columns) - pinned.keys():
        return None
    keys = []
    for params in rows or [{}]:
        values = [_bound(c, pinned[c], params) for c in columns]
        if any(v is _UNKNOWN for v in values):
            return None
        if len(columns) > 1 and any(len(v) != 1 for v in values):
            return None  # a composite key with IN: not one row per value
        for position in range(len(values[0]) if len(columns) == 1 else 1):
            keys.append(tuple(v[position] for v in values))
    return keys


def touched(
    statement: Any, rows: Sequence[dict[str, Any]], returned: Sequence[Any] | None
) -> list[Touched]:
    """What ``statement``, executed with the parameter sets ``rows`` (and returning the
    primary-key rows ``returned`` when :func:`with_returning` added RETURNING), changed
    of storable classes' rows; empty when it changes none that can be cached."""
    if not isinstance(statement, UpdateBase):
        return []
    table = _table_of(statement)
    mappings = table_mappings(table) if table is not None else ()
    if not mappings or table is None:
        return []
    if isinstance(statement, Insert) and not is_upsert(statement):
        return []  # new rows
    keys: list[tuple[Any, ...]] | None
    if returned is not None:
        keys = [tuple(row) for row in returned]
    elif isinstance(statement, Update | Delete):
        keys = _keys_from_where(statement, table, rows)
    else:
        keys = None  # an upsert the database returned nothing of
    columns = list(table.primary_key)
    found = []
    for mapping in mappings:
        if keys is None or mapping.columns is None:
            found.append(Touched(mapping.klass, every_row=True))
            continue
        order = [columns.index(c) for c in mapping.columns]
        lookups = [dict(zip(mapping.attrs, (key[i] for i in order), strict=True)) for key in keys]
        found.append(Touched(mapping.klass, lookups))
    return found


def with_returning(
    statement: Any, rows: Sequence[dict[str, Any]], dialect: Any
) -> UpdateBase | None:
    """``statement`` with ``RETURNING`` of its table's primary key added, when it changes
    storable rows that :func:`touched` could not otherwise know and the dialect can
    return them; else None.  The caller's result keeps its shape (``return_defaults``:
    no rows, the same ``rowcount``); the keys arrive as ``returned_defaults_rows``."""
    if not isinstance(statement, UpdateBase) or len(rows) > 1:
        return None
    table = _table_of(statement)
    if table is None or not table_mappings(table):
        return None
    if statement._returning or statement._return_defaults:
        return None  # the caller's own RETURNING: their rows are theirs to read
    if isinstance(statement, Insert):
        if not is_upsert(statement):
            return None
        supported = dialect.insert_returning
    elif isinstance(statement, Update):
        if _keys_from_where(statement, table, rows) is not None:
            return None
        if sets_primary_key(statement, rows):
            return None  # RETURNING would give the new keys only: every row goes
        supported = dialect.update_returning
    elif isinstance(statement, Delete):
        if _keys_from_where(statement, table, rows) is not None:
            return None
        supported = dialect.delete_returning
    else:
        return None
    if not supported:
        return None
    changed: UpdateBase = statement.return_defaults(*table.primary_key).execution_options(
        **{RETURNING_OPTION: True}
    )
    return changed
