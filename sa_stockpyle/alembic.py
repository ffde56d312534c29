"""Alembic integration: make cached entries of the tables a migration touched unreachable.

The schema fingerprint in every cache key (:func:`sa_stockpyle.keys.schema_fingerprint`)
already hides entries written under other mapped columns once the new model is deployed.
Two cases are left, and this module covers them: a migration that rewrites data without
changing the model (lower-casing emails, moving amounts into cents), and a table changed
under a model that was not updated.

Call :func:`invalidate_migrated` around the migration block of your ``env.py``, outside
``context.begin_transaction()`` so that it acts after the commit::

    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata)
        with invalidate_migrated(store, Base), context.begin_transaction():
            context.run_migrations()

How touched tables are found: while the block runs, every SQL statement executed on the
migration connection is matched against the table names of the mapped classes that
declare ``__stockpyle_keys__`` (as SQL identifiers, case-insensitively, quoted or
schema-qualified).  Watching what is executed, rather than parsing migration scripts or
comparing schemas, sees ``op`` calls, ``op.execute()`` text and Core statements alike,
and needs nothing from the migration author.  Over-matching (a table named in a
``SELECT``, a comment or a string literal) only costs cache misses.  Tables whose rows a
foreign key with an ``ON DELETE``/``ON UPDATE`` action (``CASCADE``, ``SET NULL``,
``SET DEFAULT``) changes count as touched too.  What cannot be seen: rows changed by
triggers, stored procedures and functions, classes mapped to views, and statements run
on another connection.  Pass ``everything=True`` for such migrations.  In offline mode
(``alembic upgrade --sql``) nothing is executed, so every storable class is invalidated.

Each invalidation is :meth:`~sa_stockpyle.stores.BaseStore.invalidate_class`: a
:class:`~sa_stockpyle.stores.ChainedStore` passes it to every layer, shared stores
(Redis, memcached) bump the generation tokens of the class's tables, which every process
reads with its lookups, and the SQLAlchemy store ignores it.  A table's token is shared
by every release's model of the table, whatever its schema fingerprint, so a migration
run by any release, upgrading or downgrading, leaves no release an entry of a touched
table cached before it.  In-process layers (``ProcessMemoryStore``) of *other* processes
cannot be reached from the migration's process: restart them after a migration, as a
deployment does.

This module imports Alembic only inside :func:`invalidate_migrated`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapper, registry

from sa_stockpyle.keys import storage_classes, table_names
from sa_stockpyle.listeners import Listeners
from sa_stockpyle.stores.base import BaseStore

__all__ = [
    "Migrated",
    "invalidate_migrated",
    "invalidate_tables",
    "storable_classes",
    "tables_named",
    "touched_classes",
]

log = logging.getLogger("sa_stockpyle")

#: Foreign key actions that change the referencing rows.
_CHANGING_ACTIONS = frozenset({"CASCADE", "SET NULL", "SET DEFAULT"})

#: A declarative base class (anything with a ``registry``) or the registry itself.
Models = registry | type[Any]


@dataclass
class Migrated:
    """What :func:`invalidate_migrated` saw and did; complete once its block has exited."""

    #: Names of the storable classes' tables that the migration's statements named, or
    #: all of them when ``everything``.
    tables: set[str] = field(default_factory=set)
    #: True when the tables could not be told (offline mode) or ``everything`` was asked.
    everything: bool = False
    #: The classes whose cached entries were made unreachable, in invalidation order.
    invalidated: list[type] = field(default_factory=list)


def _registry_of(models: Models) -> registry:
    found = models if isinstance(models, registry) else getattr(models, "registry", None)
    if not isinstance(found, registry):
        raise TypeError(
            f"expected a declarative base class or a sqlalchemy.orm.registry, got {models!r}"
        )
    return found


def _storable_mappers(models: Models) -> list[Mapper[Any]]:
    mappers = [
        mapper
        for mapper in _registry_of(models).mappers
        if getattr(mapper.class_, "__stockpyle_keys__", None) is not None
    ]
    return sorted(mappers, key=lambda m: (m.class_.__module__, m.class_.__qualname__))


def storable_classes(models: Models) -> list[type]:
    """The mapped classes of ``models`` that declare ``__stockpyle_keys__``, by name.

    Parameters:
        models: a declarative base class (``Base``) or its ``registry``.
    """
    return [mapper.class_ for mapper in _storable_mappers(models)]


def tables_named(statement: str, tables: Iterable[str]) -> set[str]:
    """The names of ``tables`` that ``statement`` names as an SQL identifier.

    A name counts wherever it stands as a whole identifier: bare, quoted (``"accounts"``,
    ```accounts```, ``[accounts]``) or schema-qualified, in any letter case.
    """
    by_folded: dict[str, set[str]] = {}
    for name in tables:
        by_folded.setdefault(name.casefold(), set()).add(name)
    if not by_folded:
        return set()
    alternatives = "|".join(re.escape(name) for name in sorted(by_folded, key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w$])(?:{alternatives})(?![\w$])", re.IGNORECASE)
    return {
        name for match in pattern.finditer(statement) for name in by_folded[match[0].casefold()]
    }


def touched_classes(models: Models, tables: Iterable[str] | None) -> list[type]:
    """The storable classes whose cached entries a change to ``tables`` can make wrong.

    Every storable class mapped to one of ``tables`` or to a table whose rows a foreign
    key action changes with them, and the storable base classes of those (a polymorphic
    store keeps a subclass's objects under its bases' keys too).  ``tables=None`` means
    every storable class.

    Parameters:
        models: a declarative base class (``Base``) or its ``registry``.
        tables: table names, e.g. from :func:`tables_named`; None for all.
    """
    mappers = _storable_mappers(models)
    if tables is None:
        return [mapper.class_ for mapper in mappers]
    changed = _with_cascades(models, set(tables))
    touched = {
        mapper.class_ for mapper in mappers if changed.intersection(table_names(mapper.class_))
    }
    touched |= {base for klass in touched for base in storage_classes(klass, True)}
    return [mapper.class_ for mapper in mappers if mapper.class_ in touched]


def _with_cascades(models: Models, tables: set[str]) -> set[str]:
    """``tables`` and, transitively, the tables whose foreign key actions change with them."""
    metadata = _registry_of(models).metadata
    changed = set(tables)
    grown = True
    while grown:
        grown = False
        for table in metadata.tables.values():
            if table.name in changed:
                continue
            for fk in table.foreign_keys:
                actions = {(fk.ondelete or "").upper(), (fk.onupdate or "").upper()}
                if fk.column.table.name in changed and actions & _CHANGING_ACTIONS:
                    changed.add(table.name)
                    grown = True
                    break
    return changed


def invalidate_tables(
    store: BaseStore, models: Models, tables: Iterable[str] | None = None
) -> list[type]:
    """Make every cached entry of the storable classes on ``tables`` unreachable.

    For hooks outside ``env.py``: after applying an offline (``--sql``) script, or after
    changing tables by hand.  Returns the classes invalidated.

    Parameters:
        store: the store to invalidate in, usually the application's chain.
        models: a declarative base class (``Base``) or its ``registry``.
        tables: the changed table names; None (the default) for every storable class.
    """
    classes = touched_classes(models, tables)
    for klass in classes:
        store.invalidate_class(klass)
    if classes:
        log.info(
            "sa_stockpyle: invalidated %s in %r",
            ", ".join(klass.__qualname__ for klass in classes),
            store,
        )
    return classes


@contextmanager
def invalidate_migrated(
    store: BaseStore,
    models: Models,
    everything: bool = False,
    connection: Connection | None = None,
) -> Iterator[Migrated]:
    """Watch the migration run in the block, then invalidate the classes it touched.

    Use it in ``env.py`` after ``context.configure()``, around
    ``context.begin_transaction()`` so the invalidation follows the commit.  The
    invalidation also runs when the block raises: DDL that is not transactional may have
    changed tables before the failure, and invalidating costs only cache misses.

    Parameters:
        store: the store to invalidate in: the application's shared layers, or its chain
            when the migration runs in the application's process.
        models: a declarative base class (``Base``) or its ``registry``.
        everything: invalidate every storable class, whatever the migration touched.
        connection: the connection to watch; by default Alembic's (``context.get_bind()``).
    """
    migrated = Migrated(everything=everything)
    watched: Connection | None = None
    if not everything:
        watched = connection if connection is not None else _alembic_connection()
        migrated.everything = watched is None
    names = {name for mapper in _storable_mappers(models) for name in table_names(mapper.class_)}

    def seen(conn: Connection, cursor: Any, statement: str, *args: Any) -> None:
        migrated.tables |= tables_named(statement, names)

    listeners = Listeners()
    if watched is not None:
        listeners.listen(watched, "before_cursor_execute", seen)
    try:
        yield migrated
    finally:
        listeners.remove()
        # Statements that touched tables in a transaction still open when the block
        # ends: the caller commits later (an external transaction, or the block placed
        # inside context.begin_transaction()).
        if watched is not None and migrated.tables and watched.in_transaction():
            log.warning(
                "sa_stockpyle: the migration's transaction is still open; invalidating "
                "before its commit lets a concurrent read cache pre-migration rows. "
                "Wrap context.begin_transaction() in invalidate_migrated()."
            )
        if migrated.everything:
            migrated.tables = names
        migrated.invalidated = invalidate_tables(
            store, models, None if migrated.everything else migrated.tables
        )


def _alembic_connection() -> Connection | None:
    """The connection of the running Alembic migration, or None in offline mode."""
    try:
        from alembic import context  # noqa: PLC0415 - optional dependency, loaded when used
    except ImportError as exc:
        raise ImportError(
            'invalidate_migrated() needs Alembic: pip install "sa_stockpyle[alembic]"'
        ) from exc
    if context.is_offline_mode():
        log.warning(
            "sa_stockpyle: offline migration (--sql): invalidating every cached class now; "
            "run sa_stockpyle.alembic.invalidate_tables() again once the script is applied"
        )
        return None
    return context.get_bind()
