"""The statements that change rows without the unit of work: ORM bulk statements and
Core statements on a mapped table, and what each must remove from the caches.

* ORM bulk statements (``session.execute(update(User).where(...))``, ``delete(...)``, and
  bulk INSERT/UPDATE by primary key) invalidate the rows they touch: by the primary keys
  in their parameters or, for criteria statements, by the primary keys the database
  returns (``RETURNING``, added to the statement where the dialect supports it).  When the
  keys cannot be known, every cached entry of the classes involved is made unreachable
  with :meth:`~sa_stockpyle.stores.BaseStore.invalidate_class`.
* Core statements on a table a storable class maps are tracked the same way
  (:mod:`sa_stockpyle.dml`) when they run on a connection of an attached session
  (``session.execute(update(table))``, ``Session.bulk_update_mappings``,
  ``session.connection().execute(...)``) or, with ``attach(engine)``, on any connection
  of the engine.  ``text()`` SQL is not tracked.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy.engine import Connection, CursorResult
from sqlalchemy.orm import Mapper, ORMExecuteState
from sqlalchemy.sql.dml import UpdateBase

from sa_stockpyle import dml
from sa_stockpyle.changes import Buffer, ClassInfo, family
from sa_stockpyle.connections import wait_for_commit
from sa_stockpyle.mapped import mapper_of
from sa_stockpyle.sessions import Sessions
from sa_stockpyle.writethrough import WriteThrough

__all__ = ["Statements"]


class Statements:
    """Records, for one attachment, the rows its bulk and Core statements change."""

    def __init__(self, sessions: Sessions, writer: WriteThrough, use_returning: bool) -> None:
        self.sessions = sessions
        self.writer = writer
        #: add ``RETURNING`` of the primary key where the dialect supports it
        self.use_returning = use_returning

    def do_orm_execute(self, orm_state: ORMExecuteState) -> Any:
        """The session's ``do_orm_execute`` listener: runs a covered bulk statement and
        records the rows it touched (None lets SQLAlchemy run anything else)."""
        if not (orm_state.is_update or orm_state.is_delete or orm_state.is_insert):
            return None
        mapper = orm_state.bind_mapper
        if mapper is None or not self.sessions.covers(orm_state.session, mapper):
            return None
        info = self.sessions.info(mapper.class_)
        if info is None:
            return None
        session_state = self.sessions.state(orm_state.session)
        session_state.orm_executing += 1
        try:
            return self._execute_bulk(orm_state, mapper, info)
        finally:
            session_state.orm_executing -= 1

    def _execute_bulk(
        self, orm_state: ORMExecuteState, mapper: Mapper[Any], info: ClassInfo
    ) -> Any:
        klass = mapper.class_
        statement: Any = orm_state.statement
        params: Any = orm_state.parameters
        # A list is one row per dictionary (bulk by primary key); so is one dictionary of
        # an INSERT.  One dictionary of an UPDATE or DELETE holds its SET values and bound
        # parameters: SQLAlchemy runs it against every row its WHERE selects.
        rows: list[Any] = []
        if isinstance(params, list):
            rows = params
        elif params and orm_state.is_insert:
            rows = [params]
        upsert = orm_state.is_insert and dml.is_upsert(statement)
        by_key = bool(rows) and all(set(info.primary_attrs) <= set(row) for row in rows)
        touched = [{a: row[a] for a in info.primary_attrs} for row in rows] if by_key else []
        whole_class = False
        if orm_state.is_insert and not upsert:
            if not touched:
                return None  # new rows: nothing cached can describe them
            result = orm_state.invoke_statement()
        elif by_key and not upsert:
            result = orm_state.invoke_statement()  # bulk UPDATE by primary key
        elif (
            self._can_return(orm_state, mapper)
            and not rows
            and not dml.sets_primary_key(statement, [params] if params else [])
        ):
            # return_defaults() adds RETURNING of the primary key while the caller keeps the
            # result it expects (rowcount, no rows); the keys arrive on the side.
            columns = [info.mapper.get_property(a).class_attribute for a in info.primary_attrs]
            result = orm_state.invoke_statement(statement=statement.return_defaults(*columns))
            returned = cast("CursorResult[Any]", result).returned_defaults_rows or []
            touched = [dict(zip(info.primary_attrs, row, strict=True)) for row in returned]
        else:
            # The rows touched cannot be known: every cached entry of the class must go.
            result = orm_state.invoke_statement()
            whole_class = True
        # Executed now, so the statement's transaction exists to hold the invalidation.
        buffer = self.sessions.buffer(orm_state.session)
        for lookup in touched:
            primary = tuple(lookup[a] for a in info.primary_attrs)
            buffer.remove(klass, lookup, mapper.identity_key_from_primary_key(primary))
        if whole_class:
            buffer.invalidate(family(klass))
        return result

    def _can_return(self, orm_state: ORMExecuteState, mapper: Mapper[Any]) -> bool:
        """Whether RETURNING can be added to this UPDATE or DELETE."""
        if not self.use_returning or orm_state.is_insert:
            return False
        statement: Any = orm_state.statement
        if statement._returning or statement._return_defaults:
            return False  # the caller's own RETURNING: their rows are theirs to read
        dialect = orm_state.session.get_bind(mapper=mapper).dialect
        return bool(dialect.update_returning if orm_state.is_update else dialect.delete_returning)

    # -- Core statements --------------------------------------------------------------
    #
    # Statements reach a connection from a session's flush (recorded by the flush
    # listeners), from do_orm_execute (recorded there), and from everything else:
    # Session.bulk_update_mappings and bulk_save_objects, session.execute() of a
    # statement on a Table, session.connection().execute(), and, with attach(engine),
    # any connection of the engine.  These two listeners see them all and record the
    # rest.  text() SQL names no table and stays untracked.

    def _tracked(self, connection: Connection) -> bool:
        """Whether a statement on ``connection`` is recorded here (not by
        do_orm_execute, and on a connection an attached session holds, or any connection
        of an attached engine)."""
        sessions = self.sessions.owners.get(connection)
        if not sessions:
            return self.sessions.engine is not None
        return not any(self.sessions.state(s).orm_executing for s in sessions)

    def before_execute(
        self,
        connection: Connection,
        statement: Any,
        multiparams: list[dict[str, Any]],
        params: dict[str, Any],
        execution_options: Any,
    ) -> tuple[Any, list[dict[str, Any]], dict[str, Any]]:
        """The engine's ``before_execute`` listener: adds ``RETURNING`` of the primary key
        to a tracked criteria statement where the dialect supports it."""
        # The ORM's own statements (flushes, bulk methods) are by primary key already.
        if (
            self.use_returning
            and isinstance(statement, UpdateBase)
            and not _from_persistence(execution_options)
            and self._tracked(connection)
        ):
            changed = dml.with_returning(statement, multiparams or [params], connection.dialect)
            if changed is not None:
                return changed, multiparams, params
        return statement, multiparams, params

    def after_execute(
        self,
        connection: Connection,
        statement: Any,
        multiparams: list[dict[str, Any]],
        params: dict[str, Any],
        execution_options: Any,
        result: Any,
    ) -> None:
        """The engine's ``after_execute`` listener: records the rows a tracked Core
        statement changed, in each covered session holding its connection (else until
        the connection commits)."""
        if not isinstance(statement, UpdateBase) or not self._tracked(connection):
            return
        sessions = self.sessions.owners.get(connection) or []
        if _from_persistence(execution_options) and any(
            self.sessions.state(s).in_flush() for s in sessions
        ):
            return  # a flush's own statement: its record describes those rows
        returned = None
        if statement.get_execution_options().get(dml.RETURNING_OPTION):
            returned = cast("CursorResult[Any]", result).returned_defaults_rows
        touched = dml.touched(statement, multiparams or [params], returned)
        if not touched:
            return
        if not sessions:
            # A connection of the attached engine outside any session: written through
            # when the connection commits.
            buffer = Buffer()
            self._apply(buffer, touched)
            wait_for_commit(connection, *self.writer.writers(buffer))
        for session in sessions:
            # Recorded after what the flush under way recorded, if any: a put of a row a
            # flush listener's statement changed is dropped.
            self._apply(self.sessions.buffer(session), touched)

    def _apply(self, buffer: Buffer, touched: list[dml.Touched]) -> None:
        for item in touched:
            if item.every_row:
                buffer.invalidate(family(item.klass))
                continue
            mapper = mapper_of(item.klass)
            info = self.sessions.info(item.klass)
            if info is None:
                continue
            for lookup in item.lookups:
                identity = mapper.identity_key_from_primary_key(
                    tuple(lookup[a] for a in info.primary_attrs)
                )
                buffer.remove(item.klass, lookup, identity)


def _from_persistence(execution_options: Any) -> bool:
    """Whether a statement comes from the ORM's persistence layer (a flush, or a bulk
    method): it runs with the mapper's compiled cache, by primary key."""
    return "compiled_cache" in execution_options
