"""attach(): transaction-correct write-through from SQLAlchemy sessions to a store.

How it works:

* At each flush, the changes to objects of classes declaring ``__stockpyle_keys__`` are
  recorded in a buffer that belongs to the innermost open transaction (the savepoint of
  a ``begin_nested()``, else the session's transaction): the committed state of inserted
  objects and of updated objects whose class has an integer ``version_id_col`` (a
  snapshot taken right after the flush, because after the commit the instances are
  expired and reading them would query the database), the identity of deleted objects
  and of updated objects without such a version, and the old values of key attributes
  that changed.
* Updates are ordered or invalidated: a cache cannot tell an older commit's write that
  arrives late from a newer commit's, unless the object carries a version.  So an object
  with an integer ``version_id_col`` is written through, and a cache keeps the entry of
  the highest version; any other updated object is removed, and the next read fills it.
  New objects are added where the cache holds nothing for their key.
* Nothing reaches the store before the database commits.  A released savepoint hands its
  buffer to its parent; a rolled-back one discards it.  When the session's transaction
  commits, the buffer is written through with one call,
  :meth:`~sa_stockpyle.stores.BaseStore.write_committed`, which a
  :class:`~sa_stockpyle.stores.ChainedStore` turns into one batched write per layer.  It
  is made in two halves (:meth:`~sa_stockpyle.stores.BaseStore.start_committed`): started
  in ``after_commit``, right after the COMMIT, and finished in ``after_transaction_end``,
  so that the slowest layer's round trip overlaps SQLAlchemy's own work in between.
  A transaction that ends any other way (rollback, ``close()``, a failed COMMIT, garbage
  collection) discards its buffer: the decision is taken when the transaction ends, not
  only in ``after_rollback``, which some endings never fire.
* An object whose committed state is not fully known after its flush (server defaults,
  SQL-side ``onupdate``, expired or deferred columns) is invalidated instead of written.
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
* A session joined to a transaction it does not own (``Session(bind=connection)`` inside
  the caller's ``connection.begin()``) hands its commit to that connection: it is written
  through when the connection's own transaction commits, and discarded when it rolls
  back (:mod:`sa_stockpyle.connections`).
* A store failure during the commit-time write is logged and counted in
  ``handle.stats`` (event ``errors``); it never raises out of the commit, which has
  already happened in the database.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Engine, event
from sqlalchemy.engine import Connection, CursorResult
from sqlalchemy.orm import (
    Mapper,
    ORMExecuteState,
    Session,
    SessionTransaction,
    scoped_session,
    sessionmaker,
)
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.sql.dml import UpdateBase

from sa_stockpyle import dml
from sa_stockpyle.changes import (
    Buffer,
    ClassInfo,
    Flushed,
    class_info,
    family,
    fully_loaded,
    known_keys,
    mapper_of,
    old_keys,
)
from sa_stockpyle.column_values import Check, value_checks
from sa_stockpyle.connections import (
    is_autocommit,
    join_callers,
    savepoint_rollbacks,
    wait_for_commit,
)
from sa_stockpyle.errors import ConfigurationError
from sa_stockpyle.snapshots import version_of
from sa_stockpyle.stores.base import BaseStore
from sa_stockpyle.stores.stats import Stats
from sa_stockpyle.writethrough import WriteThrough

__all__ = ["Attachment", "attach"]

log = logging.getLogger("sa_stockpyle")

#: The one key sa_stockpyle uses in ``Session.info``.
INFO_KEY = "sa_stockpyle"


@dataclass
class _SessionState:
    """Per-session bookkeeping of one attachment, kept in ``session.info``."""

    buffers: dict[SessionTransaction, Buffer] = field(default_factory=dict)
    committed: set[SessionTransaction] = field(default_factory=set)
    #: committed root transactions whose write-through was started: what finishes it
    writing: dict[SessionTransaction, Callable[[], None]] = field(default_factory=dict)
    #: the flush under way (its unit of work) and what it changes, from ``after_flush``
    #: to ``after_flush_postexec``; a flush that fails in between (another listener
    #: raised) never reaches the second, and its record is dropped with it
    flushing: tuple[object, list[Flushed]] | None = None
    #: the connections of the session's transaction (see ``_after_begin``)
    connections: dict[Connection, None] = field(default_factory=dict)
    #: the flush under way, from ``before_flush`` (its ``transaction`` is set while its
    #: statements run): its own statements are described by its record
    flush_context: Any = None
    #: the savepoint rollbacks counted on the caller's connection when the session's
    #: transaction joined it (None: the session's transaction is its own)
    joined: int | None = None
    #: ORM statements under way in ``_do_orm_execute``, which records them itself
    orm_executing: int = 0

    def in_flush(self) -> bool:
        transaction = getattr(self.flush_context, "transaction", None)
        return transaction is not None and bool(transaction.is_active)


class Attachment:
    """A store attached to sessions by :func:`attach`; ``detach()`` undoes it.

    ``stats`` counts, per class, the objects ``written`` and ``removed`` at commits, the
    ``class_invalidations`` of bulk statements, commit-time ``errors``, and the objects
    removed instead of written: ``inexact`` (a value that may differ from what the
    database stored) and ``refused`` (a value no shared layer can carry).
    """

    def __init__(self, target: object, store: BaseStore, use_returning: bool = True) -> None:
        self.target = target
        self.store = store
        self.use_returning = use_returning
        self.stats = Stats()
        self._writer = WriteThrough(store, self.stats, self._primary_of)
        self._engine = target if isinstance(target, Engine) else None
        self._event_target: Any = Session if self._engine is not None else target
        self._info_key = f"{INFO_KEY}:{id(self)}"
        self._classes: dict[type, ClassInfo | None] = {}
        self._checks: dict[tuple[type, str], dict[str, Check]] = {}
        self._listeners: list[tuple[str, Callable[..., Any]]] = [
            ("after_flush", self._after_flush),
            ("after_flush_postexec", self._after_flush_postexec),
            ("after_commit", self._after_commit),
            ("after_transaction_end", self._after_transaction_end),
            ("do_orm_execute", self._do_orm_execute),
            ("before_flush", self._before_flush),
            ("after_begin", self._after_begin),
            ("after_transaction_create", self._after_transaction_create),
        ]
        # Core statements are seen on the connections of the engines the sessions use
        # (every connection of an attached engine): see _after_execute.
        self._engines: weakref.WeakSet[Engine] = weakref.WeakSet()
        self._engines_lock = threading.Lock()
        # Per connection, the attached sessions whose transactions hold it (several when
        # sessions share a caller's connection): a statement is recorded by each.
        self._owners: weakref.WeakKeyDictionary[Connection, list[Session]] = (
            weakref.WeakKeyDictionary()
        )
        for name, listener in self._listeners:
            # First in line for the transaction events: a listener of the application's
            # that raises there cannot keep a commit from being written through, or a
            # flush's record from being taken (do_orm_execute keeps its place: the first
            # listener that returns a result is the one that executes).
            first = name != "do_orm_execute"
            event.listen(self._event_target, name, listener, insert=first)
        if self._engine is not None:
            self._listen_to(self._engine)

    def _listen_to(self, engine: Engine) -> None:
        with self._engines_lock:
            if engine in self._engines:
                return
            event.listen(engine, "before_execute", self._before_execute, retval=True)
            event.listen(engine, "after_execute", self._after_execute)
            self._engines.add(engine)

    def detach(self) -> None:
        """Remove every listener; sessions stop writing through at once."""
        with _REGISTRY_LOCK:
            for name, listener in self._listeners:
                if event.contains(self._event_target, name, listener):
                    event.remove(self._event_target, name, listener)
            with self._engines_lock:
                for engine in list(self._engines):
                    event.remove(engine, "before_execute", self._before_execute)
                    event.remove(engine, "after_execute", self._after_execute)
                self._engines.clear()
            _REGISTRY.pop((self.target, self.store), None)

    def __repr__(self) -> str:
        return f"<Attachment of {self.store!r} to {self.target!r}>"

    # -- which sessions and classes ---------------------------------------------------

    def _covers(self, session: Session, mapper: Mapper[Any]) -> bool:
        if self._engine is None:
            return True
        bind = session.get_bind(mapper=mapper)
        engine = bind.engine if isinstance(bind, Connection) else bind
        return engine is self._engine

    def _info(self, klass: type) -> ClassInfo | None:
        try:
            return self._classes[klass]
        except KeyError:
            pass
        info = class_info(klass)
        self._classes[klass] = info
        return info

    def _primary_of(self, klass: type) -> tuple[str, ...]:
        info = self._info(klass)
        if info is None:  # a put is only ever recorded for a storable class
            raise ConfigurationError(f"{klass.__qualname__} is not storable")
        return info.primary_attrs

    def _session_state(self, session: Session) -> _SessionState:
        state: _SessionState | None = session.info.get(self._info_key)
        if state is None:
            state = session.info[self._info_key] = _SessionState()
        return state

    def _buffer(self, session: Session) -> Buffer:
        transaction = session.get_nested_transaction() or session.get_transaction()
        if transaction is None:  # a flush or an executed statement always has one
            raise RuntimeError(f"{self!r}: a change was recorded outside any transaction")
        return self._session_state(session).buffers.setdefault(transaction, Buffer())

    # -- flush ------------------------------------------------------------------------

    def _before_flush(self, session: Session, context: Any, instances: Any) -> None:
        session_state = self._session_state(session)
        session_state.flush_context = context

    def _after_flush(self, session: Session, context: Any) -> None:
        # Pre-flush view: new/dirty/deleted and attribute history are still intact.
        flushing: list[Flushed] = []
        session_state = self._session_state(session)
        session_state.flushing = (context, flushing)
        covered: dict[type, ClassInfo | None] = {}  # per class: its bind is looked up once
        # The three sets are disjoint (dirty leaves out new and deleted objects), so each
        # object's group says whether it is new or deleted.
        for objs, is_new, deleted in (
            (session.new, True, False),
            (session.dirty, False, False),
            (session.deleted, False, True),
        ):
            for obj in objs:
                klass = type(obj)
                if klass in covered:
                    info = covered[klass]
                else:
                    info = self._info(klass)
                    if info is not None and not self._covers(session, info.mapper):
                        info = None
                    covered[klass] = info
                if info is None:
                    continue
                state = instance_state(obj)
                # A column whose value changed, or one the UPDATE left expired (a SQL
                # expression value): otherwise the object is dirty through a relationship.
                if (
                    not (is_new or deleted)
                    and info.columns.isdisjoint(state.committed_state)
                    and info.columns.isdisjoint(state.expired_attributes)
                ):
                    continue
                was = known_keys(info, state) if deleted else old_keys(info, state)
                flushing.append(Flushed(obj, state, info, deleted, state.key, was))

    def _after_flush_postexec(self, session: Session, context: Any) -> None:
        # Post-flush view: identities are assigned and server-generated values expired.
        session_state = self._session_state(session)
        flushing, session_state.flushing = session_state.flushing, None
        if flushing is None or flushing[0] is not context or not flushing[1]:
            return  # not this flush's record: that flush failed before it got here
        buffer = self._buffer(session)
        checks_of: dict[type, dict[str, Check]] = {}  # per class: its bind looked up once
        for item in flushing[1]:
            obj, state, info, old_identity = item.obj, item.state, item.info, item.old_identity
            klass = state.class_
            for old in item.old_keys:
                buffer.remove(klass, old, None)
            identity = state.key
            if old_identity is not None and (item.deleted or identity != old_identity):
                old_primary = dict(zip(info.primary_attrs, old_identity[1], strict=True))
                buffer.remove(klass, old_primary, old_identity)
            if item.deleted or identity is None:
                continue  # deleted, or never persisted (nothing of it can be cached)
            ordered = old_identity is None or version_of(obj) is not None
            put = None
            if ordered and fully_loaded(info, state):
                checks = checks_of.get(klass)
                if checks is None:
                    checks = checks_of[klass] = self._value_checks(session, info)
                put = self._writer.committed_copy(obj, checks)
            if put is not None:
                buffer.puts[identity] = put
            else:
                # An update without a version to order it by: a cache cannot tell an older
                # commit's write arriving late from a newer one's, so the entry goes and
                # the next read fills it.  Likewise when the state the database committed
                # is not known here (server defaults, SQL onupdate, expired columns), or
                # when no cache layer could carry it.
                primary = dict(zip(info.primary_attrs, identity[1], strict=True))
                buffer.remove(klass, primary, identity)

    def _value_checks(self, session: Session, info: ClassInfo) -> dict[str, Check]:
        dialect = session.get_bind(mapper=info.mapper).dialect
        checks = self._checks.get((info.mapper.class_, dialect.name))
        if checks is None:
            checks = self._checks[info.mapper.class_, dialect.name] = value_checks(
                info.mapper, dialect
            )
        return checks

    # -- bulk statements --------------------------------------------------------------

    def _do_orm_execute(self, orm_state: ORMExecuteState) -> Any:
        if not (orm_state.is_update or orm_state.is_delete or orm_state.is_insert):
            return None
        mapper = orm_state.bind_mapper
        if mapper is None or not self._covers(orm_state.session, mapper):
            return None
        info = self._info(mapper.class_)
        if info is None:
            return None
        session_state = self._session_state(orm_state.session)
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
        buffer = self._buffer(orm_state.session)
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
    # listeners), from _do_orm_execute (recorded there), and from everything else:
    # Session.bulk_update_mappings and bulk_save_objects, session.execute() of a
    # statement on a Table, session.connection().execute(), and, with attach(engine),
    # any connection of the engine.  These two listeners see them all and record the
    # rest.  text() SQL names no table and stays untracked.

    def _tracked(self, connection: Connection) -> bool:
        """Whether a statement on ``connection`` is recorded here (not by
        _do_orm_execute, and on a connection an attached session holds, or any connection
        of an attached engine)."""
        sessions = self._owners.get(connection)
        if not sessions:
            return self._engine is not None
        return not any(self._session_state(s).orm_executing for s in sessions)

    def _before_execute(
        self,
        connection: Connection,
        statement: Any,
        multiparams: list[dict[str, Any]],
        params: dict[str, Any],
        execution_options: Any,
    ) -> tuple[Any, list[dict[str, Any]], dict[str, Any]]:
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

    def _after_execute(
        self,
        connection: Connection,
        statement: Any,
        multiparams: list[dict[str, Any]],
        params: dict[str, Any],
        execution_options: Any,
        result: Any,
    ) -> None:
        if not isinstance(statement, UpdateBase) or not self._tracked(connection):
            return
        sessions = self._owners.get(connection) or []
        if _from_persistence(execution_options) and any(
            self._session_state(s).in_flush() for s in sessions
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
            wait_for_commit(connection, *self._writer.writers(buffer))
        for session in sessions:
            # Recorded after what the flush under way recorded, if any: a put of a row a
            # flush listener's statement changed is dropped.
            self._apply(self._buffer(session), touched)

    def _apply(self, buffer: Buffer, touched: list[dml.Touched]) -> None:
        for item in touched:
            if item.every_row:
                buffer.invalidate(family(item.klass))
                continue
            mapper = mapper_of(item.klass)
            info = self._info(item.klass)
            if info is None:
                continue
            for lookup in item.lookups:
                identity = mapper.identity_key_from_primary_key(
                    tuple(lookup[a] for a in info.primary_attrs)
                )
                buffer.remove(item.klass, lookup, identity)

    # -- transaction ends -------------------------------------------------------------

    def _after_begin(self, session: Session, transaction: Any, connection: Connection) -> None:
        if self._engine is not None and connection.engine is not self._engine:
            return
        session_state = self._session_state(session)
        session_state.connections[connection] = None
        owners = self._owners.setdefault(connection, [])
        if session not in owners:
            owners.append(session)
        if self._engine is None:
            self._listen_to(connection.engine)

    def _after_transaction_create(self, session: Session, transaction: SessionTransaction) -> None:
        # Before the session takes its connection: a Connection given as its bind that is
        # in a transaction already is the caller's, which the session joins.
        joined = join_callers(session, transaction)
        if joined is not None:
            self._session_state(session).joined = joined

    def _after_commit(self, session: Session) -> None:
        # Fires for a released savepoint as well as for the real COMMIT, before the
        # transaction's after_transaction_end; the one committing is the innermost.
        transaction = session.get_nested_transaction() or session.get_transaction()
        if transaction is None:
            return
        session_state = self._session_state(session)
        session_state.committed.add(transaction)
        if transaction.nested:
            return
        buffer = session_state.buffers.pop(transaction, None)
        if not buffer:
            return
        connections = list(session_state.connections)
        waiting = [c for c in connections if not c.closed and c.in_transaction()]
        if waiting:
            # The session committed only its part of a transaction it does not own (see
            # sa_stockpyle.connections): the database commits when the caller does.  A
            # session on several connections cannot tell which rows each one holds, so
            # it removes every row, now for those committed and at each later COMMIT.
            write, remove = self._writer.writers(buffer)
            if len(connections) > 1:
                write = remove
                if len(waiting) < len(connections):
                    remove()
            for connection in waiting:
                # A savepoint of the caller rolled back while the session worked may have
                # undone some of it: only removals are safe then.
                undone = (
                    session_state.joined is not None
                    and savepoint_rollbacks(connection) != session_state.joined
                )
                wait_for_commit(connection, remove if undone else write, remove)
            return
        # The database has committed: the write starts now and is finished when the
        # transaction ends, so its round trip overlaps SQLAlchemy's work in between.
        finish = self._writer.start(buffer)
        if finish is not None:
            session_state.writing[transaction] = finish

    def _after_transaction_end(self, session: Session, transaction: SessionTransaction) -> None:
        session_state: _SessionState | None = session.info.get(self._info_key)
        if session_state is None:
            return
        if transaction.parent is None:
            self._root_ended(session, session_state, transaction)
        committed = transaction in session_state.committed
        session_state.committed.discard(transaction)
        writing = session_state.writing.pop(transaction, None)
        if writing is not None:
            writing()
            return
        buffer = session_state.buffers.pop(transaction, None)
        if buffer is None or not committed:
            return  # rolled back, closed or failed: nothing it did reaches any store
        parent = transaction.parent
        if transaction.nested and parent is not None:
            session_state.buffers.setdefault(parent, Buffer()).merge(buffer)

    def _root_ended(
        self, session: Session, session_state: _SessionState, transaction: SessionTransaction
    ) -> None:
        session_state.flushing = None  # a failed flush's record, if one is left
        session_state.flush_context = None
        session_state.joined = None
        buffer = None
        if transaction not in session_state.committed:
            buffer = session_state.buffers.get(transaction)
        for connection in session_state.connections:
            owners = self._owners.get(connection)
            if owners is not None and session in owners:
                owners.remove(session)
            if buffer:
                # Ended without a COMMIT of its own, but what it wrote at its root level
                # may live on: in the caller's transaction it joined (close() leaves that
                # open), or in the database (AUTOCOMMIT).  Its rows go, when that commits.
                _, remove = self._writer.writers(buffer)
                if is_autocommit(connection):
                    remove()
                elif not connection.closed and connection.in_transaction():
                    wait_for_commit(connection, remove, remove)
        session_state.connections.clear()


def _from_persistence(execution_options: Any) -> bool:
    """Whether a statement comes from the ORM's persistence layer (a flush, or a bulk
    method): it runs with the mapper's compiled cache, by primary key."""
    return "compiled_cache" in execution_options


_REGISTRY: dict[tuple[object, BaseStore], Attachment] = {}
_REGISTRY_LOCK = threading.Lock()

AttachTarget = sessionmaker[Any] | scoped_session[Any] | Session | type[Session] | Engine


def attach(target: AttachTarget, store: BaseStore, **options: Any) -> Attachment:
    """Write every committed change of ``target``'s sessions through ``store``.

    Parameters:
        target: a ``sessionmaker``, a ``scoped_session``, a ``Session`` instance or
            subclass, or an ``Engine`` (every ORM session bound to it).
        store: usually a :class:`~sa_stockpyle.stores.ChainedStore` of caches ending in a
            :class:`~sa_stockpyle.stores.SqlAlchemyStore`.
        **options: ``use_returning`` (default True): add ``RETURNING`` of the primary
            key to bulk UPDATE/DELETE statements where the dialect supports it;
            without it, such statements invalidate the whole class.

    Attaching the same store to the same target twice returns the first handle.
    """
    unknown = set(options) - {"use_returning"}
    if unknown:
        raise ConfigurationError(
            f"attach() got unknown options {sorted(unknown)}; expected: use_returning"
        )
    if not isinstance(store, BaseStore):
        raise ConfigurationError(f"attach() needs a store, got {store!r}")
    valid = (sessionmaker, scoped_session, Session, Engine)
    if not (
        isinstance(target, valid) or (isinstance(target, type) and issubclass(target, Session))
    ):
        raise ConfigurationError(
            f"attach() target {target!r} is not a sessionmaker, scoped_session, Session "
            f"(instance or subclass) or Engine"
        )
    with _REGISTRY_LOCK:
        handle = _REGISTRY.get((target, store))
        if handle is None:
            handle = Attachment(target, store, **options)
            _REGISTRY[target, store] = handle
    return handle
