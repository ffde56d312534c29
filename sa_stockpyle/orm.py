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
* Statements that bypass the unit of work (ORM bulk statements, Core statements on a
  mapped table) remove the rows they touch, or invalidate the whole class when those
  cannot be known (:mod:`sa_stockpyle.bulk`).
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
from functools import partial
from typing import TYPE_CHECKING, Any, TypeAlias

from sqlalchemy import Engine
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, SessionTransaction, scoped_session, sessionmaker
from sqlalchemy.orm.attributes import instance_state

from sa_stockpyle.async_sessions import is_async, sync_target
from sa_stockpyle.bulk import Statements
from sa_stockpyle.changes import Buffer, ClassInfo, Flushed, fully_loaded, known_keys, old_keys
from sa_stockpyle.column_values import Check, value_checks
from sa_stockpyle.connections import (
    is_autocommit,
    join_callers,
    prepare_during_commit,
    savepoint_rollbacks,
    wait_for_commit,
    watch_commits,
)
from sa_stockpyle.errors import ConfigurationError
from sa_stockpyle.greenlets import in_greenlet
from sa_stockpyle.listeners import Listeners
from sa_stockpyle.sessions import Sessions, SessionState
from sa_stockpyle.snapshots import version_of
from sa_stockpyle.stores.async_base import AsyncStore
from sa_stockpyle.stores.base import BaseStore
from sa_stockpyle.stores.stats import Stats
from sa_stockpyle.writethrough import WriteThrough

__all__ = ["Attachment", "attach"]

log = logging.getLogger("sa_stockpyle")


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
        self.stats = Stats()
        # Listeners go on the synchronous side of an asyncio target; they run in the
        # AsyncSession's greenlet, where an asyncio store's I/O awaits.
        target = sync_target(target)
        engine = target if isinstance(target, Engine) else None
        self._sessions = Sessions(engine, str(id(self)))
        self._writer = WriteThrough(store, self.stats, self._sessions.primary_of)
        self._statements = Statements(self._sessions, self._writer, use_returning)
        self._checks: dict[tuple[type, str], dict[str, Check]] = {}
        self._listeners = Listeners()
        for name, listener in (
            ("after_flush", self._after_flush),
            ("after_flush_postexec", self._after_flush_postexec),
            ("before_commit", self._before_commit),
            ("after_commit", self._after_commit),
            ("after_transaction_end", self._after_transaction_end),
            ("do_orm_execute", self._statements.do_orm_execute),
            ("before_flush", self._before_flush),
            ("after_begin", self._after_begin),
            ("after_transaction_create", self._after_transaction_create),
        ):
            # First in line for the transaction events: a listener of the application's
            # that raises there cannot keep a commit from being written through, or a
            # flush's record from being taken (do_orm_execute keeps its place: the first
            # listener that returns a result is the one that executes).
            first = name != "do_orm_execute"
            self._listeners.listen(
                Session if engine is not None else target, name, listener, insert=first
            )
        if engine is not None:
            self._listen_to(engine)

    @property
    def use_returning(self) -> bool:
        """Whether ``RETURNING`` of the primary key is added to bulk statements (the
        ``use_returning`` option of :func:`attach`)."""
        return self._statements.use_returning

    def _listen_to(self, engine: Engine) -> None:
        # Core statements are seen on the connections of the engines the sessions use
        # (every connection of an attached engine): see Statements.after_execute.
        statements = self._statements
        self._listeners.listen(engine, "before_execute", statements.before_execute, retval=True)
        self._listeners.listen(engine, "after_execute", statements.after_execute)

    def detach(self) -> None:
        """Remove every listener; sessions stop writing through at once."""
        with _REGISTRY_LOCK:
            self._listeners.remove()
            _REGISTRY.pop((self.target, self.store), None)

    def __repr__(self) -> str:
        return f"<Attachment of {self.store!r} to {self.target!r}>"

    def _value_checks(self, session: Session, info: ClassInfo) -> dict[str, Check]:
        dialect = session.get_bind(mapper=info.mapper).dialect
        checks = self._checks.get((info.mapper.class_, dialect.name))
        if checks is None:
            checks = self._checks[info.mapper.class_, dialect.name] = value_checks(
                info.mapper, dialect
            )
        return checks

    # -- flush ------------------------------------------------------------------------

    def _before_flush(self, session: Session, context: Any, instances: Any) -> None:
        session_state = self._sessions.state(session)
        session_state.flush_context = context

    def _after_flush(self, session: Session, context: Any) -> None:
        # Pre-flush view: new/dirty/deleted and attribute history are still intact.
        flushing: list[Flushed] = []
        session_state = self._sessions.state(session)
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
                    info = self._sessions.info(klass)
                    if info is not None and not self._sessions.covers(session, info.mapper):
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
        session_state = self._sessions.state(session)
        flushing, session_state.flushing = session_state.flushing, None
        if flushing is None or flushing[0] is not context or not flushing[1]:
            return  # not this flush's record: that flush failed before it got here
        buffer = self._sessions.buffer(session)
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

    # -- transaction ends -------------------------------------------------------------

    def _after_begin(self, session: Session, transaction: Any, connection: Connection) -> None:
        engine = self._sessions.engine
        if engine is not None and connection.engine is not engine:
            return
        if connection.dialect.is_async:
            watch_commits(connection.dialect)
        session_state = self._sessions.state(session)
        session_state.connections[connection] = None
        owners = self._sessions.owners.setdefault(connection, [])
        if session not in owners:
            owners.append(session)
        if engine is None:
            self._listen_to(connection.engine)

    def _after_transaction_create(self, session: Session, transaction: SessionTransaction) -> None:
        # Before the session takes its connection: a Connection given as its bind that is
        # in a transaction already is the caller's, which the session joins.
        joined = join_callers(session, transaction)
        if joined is not None:
            self._sessions.state(session).joined = joined

    def _before_commit(self, session: Session) -> None:
        # An AsyncSession's commit: its write-through is built while the database
        # answers the COMMIT (the work then costs the commit no time of its own).
        if in_greenlet() and session.get_nested_transaction() is None:  # not a savepoint's
            transaction = session.get_transaction()
            if transaction is not None:
                prepare_during_commit(partial(self._prepare, session, transaction))

    def _prepare(self, session: Session, transaction: SessionTransaction) -> None:
        if transaction.is_active:
            return  # not its COMMIT: a flush may still change what it writes
        session_state = self._sessions.state_if_any(session)
        buffer = None if session_state is None else session_state.buffers.get(transaction)
        if buffer and session_state is not None and session_state.joined is None:
            buffer.prepared = self._writer.prepare(buffer)

    def _after_commit(self, session: Session) -> None:
        # Fires for a released savepoint as well as for the real COMMIT, before the
        # transaction's after_transaction_end; the one committing is the innermost.
        transaction = session.get_nested_transaction() or session.get_transaction()
        if transaction is None:
            return
        session_state = self._sessions.state(session)
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
        finish = self._writer.start(buffer, buffer.prepared)
        if finish is not None:
            session_state.writing[transaction] = finish

    def _after_transaction_end(self, session: Session, transaction: SessionTransaction) -> None:
        session_state = self._sessions.state_if_any(session)
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
        self, session: Session, session_state: SessionState, transaction: SessionTransaction
    ) -> None:
        session_state.flushing = None  # a failed flush's record, if one is left
        session_state.flush_context = None
        session_state.joined = None
        buffer = None
        if transaction not in session_state.committed:
            buffer = session_state.buffers.get(transaction)
        for connection in session_state.connections:
            owners = self._sessions.owners.get(connection)
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


_REGISTRY: dict[tuple[object, BaseStore], Attachment] = {}
_REGISTRY_LOCK = threading.Lock()

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import (
        AsyncEngine,
        AsyncSession,
        async_scoped_session,
        async_sessionmaker,
    )

    AttachTarget: TypeAlias = (
        sessionmaker[Any]
        | scoped_session[Any]
        | Session
        | type[Session]
        | Engine
        | async_sessionmaker[Any]
        | async_scoped_session[Any]
        | AsyncSession
        | type[AsyncSession]
        | AsyncEngine
    )


def attach(target: AttachTarget, store: BaseStore | AsyncStore[Any], **options: Any) -> Attachment:
    """Write every committed change of ``target``'s sessions through ``store``.

    Parameters:
        target: a ``sessionmaker``, a ``scoped_session``, a ``Session`` instance or
            subclass, or an ``Engine`` (every ORM session bound to it); or their asyncio
            counterparts: an ``async_sessionmaker`` (its ``sync_session_class`` becomes
            a subclass of its own, see docs/asyncio.md), an ``async_scoped_session``, an
            ``AsyncSession`` instance or subclass, or an ``AsyncEngine``.
        store: usually a :class:`~sa_stockpyle.stores.ChainedStore` of caches ending in a
            :class:`~sa_stockpyle.stores.SqlAlchemyStore`; for asyncio sessions, an
            :class:`~sa_stockpyle.asyncio.AsyncChainedStore`, whose layers' I/O awaits
            within the commit.
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
    writes_to = store.sync if isinstance(store, AsyncStore) else store
    if not isinstance(writes_to, BaseStore):
        raise ConfigurationError(f"attach() needs a store, got {store!r}")
    if is_async(target) and not (isinstance(store, AsyncStore) or store.process_local):
        raise ConfigurationError(
            f"attach() of asyncio sessions to {store!r} would block the event loop in every "
            "commit: give it an AsyncChainedStore (of in-process stores and the stores of "
            "sa_stockpyle.asyncio)"
        )
    valid = (sessionmaker, scoped_session, Session, Engine)
    if not (
        isinstance(target, valid)
        or (isinstance(target, type) and issubclass(target, Session))
        or is_async(target)
    ):
        raise ConfigurationError(
            f"attach() target {target!r} is not a sessionmaker, scoped_session, Session "
            f"(instance or subclass) or Engine, nor one of their asyncio counterparts "
            f"(async_sessionmaker, async_scoped_session, AsyncSession, AsyncEngine)"
        )
    with _REGISTRY_LOCK:
        handle = _REGISTRY.get((target, writes_to))
        if handle is None:
            handle = Attachment(target, writes_to, **options)
            _REGISTRY[target, writes_to] = handle
    return handle
