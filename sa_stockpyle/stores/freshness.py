"""Whether an object a :class:`~sa_stockpyle.stores.SqlAlchemyStore` read may fill a cache.

A fill must hold committed state, read after the fill was reserved.  This module keeps
what that takes, without a listener on any mapper (whose load events fire for every
session in the process):

* per session, through listeners on the session (or ``scoped_session``) the store
  serves, the identity keys of the rows its open transaction wrote and when that
  transaction began on a connection;
* per object, when the store's own ``SELECT`` last read all its columns from a row
  (:func:`reading`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection
from typing import Any

from sqlalchemy.orm import Mapper, Session, SessionTransaction, scoped_session
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.orm.loading import _new_runid
from sqlalchemy.orm.state import InstanceState

from sa_stockpyle.connections import any_waiting, is_waiting, join_callers
from sa_stockpyle.listeners import Listeners
from sa_stockpyle.snapshots import expired_columns

__all__ = ["cacheable", "reading", "track", "written"]

#: ``session.info`` key: identity keys of the rows the session's open transaction wrote.
FLUSHED = "sa_stockpyle.flushed"

#: ``InstanceState.info`` key: ``time.monotonic()`` when the store's own SELECT last read
#: all of the object's columns from a row.
LOADED = "sa_stockpyle.loaded"

#: ``session.info`` key: ``time.monotonic()`` when the session's transaction began on a
#: connection.
BEGAN = "sa_stockpyle.began"

#: Isolation levels under which a transaction reads one snapshot, taken at its start.
SNAPSHOT_LEVELS = frozenset({"REPEATABLE READ", "SERIALIZABLE", "SNAPSHOT"})


def _record_flush(session: Session, flush_context: Any) -> None:
    # Identity keys, not states: once flushed, an unreferenced object leaves the weak
    # identity map, and a later load must still know its row holds uncommitted state.
    written = session.info.setdefault(FLUSHED, set())
    for obj in (*session.new, *session.dirty, *session.deleted):
        state = instance_state(obj)
        written.add(state.mapper.identity_key_from_instance(obj))


def _record_begin(session: Session, transaction: SessionTransaction, connection: Any) -> None:
    session.info.setdefault(BEGAN, time.monotonic())


def _record_join(session: Session, transaction: SessionTransaction) -> None:
    # The caller's transaction may hold writes the database has not committed: reads on
    # its connection fill nothing until it ends.
    join_callers(session, transaction)


def _forget_flushes(session: Session, transaction: SessionTransaction) -> None:
    # A savepoint's writes stay recorded until the whole transaction ends: its rollback
    # makes them uncacheable a little longer than needed, never the other way round.
    if transaction.parent is None:
        session.info.pop(FLUSHED, None)
        session.info.pop(BEGAN, None)


def track(listeners: Listeners, target: Session | type[Session] | scoped_session[Session]) -> None:
    """Record, per session of ``target``, what each flush writes and when its database
    transaction began, until its transaction ends (held by ``listeners``)."""
    for name, listener in (
        ("after_flush", _record_flush),
        ("after_begin", _record_begin),
        ("after_transaction_create", _record_join),
        ("after_transaction_end", _forget_flushes),
    ):
        listeners.listen(target, name, listener)


def reading(refreshing: list[InstanceState[Any]]) -> Callable[[object], None]:
    """Called right before one SELECT of the store: the function that stamps each object
    the SELECT returned, when it read all the object's columns from its row.

    That is an object the SELECT loaded or populated anew (SQLAlchemy's load counter,
    ``InstanceState.runid``, is past the one drawn before it ran), or one of
    ``refreshing``, the wholly expired instances of the identity map it was sent to
    refresh.  Any other instance the identity map held keeps the state read earlier.
    """
    before = _new_runid()
    started = time.monotonic()
    whole = {id(state) for state in refreshing if state.expired}

    def stamp(obj: object) -> None:
        state = instance_state(obj)
        if (state.runid or 0) > before or id(state) in whole:
            state.info[LOADED] = started

    return stamp


def written(session: Session) -> Collection[Any]:
    """The identity keys of the rows ``session``'s open transaction wrote."""
    found: Collection[Any] = session.info.get(FLUSHED, ())
    return found


def cacheable(obj: object, since: float | None) -> bool:
    """See :meth:`SqlAlchemyStore.cacheable <sa_stockpyle.stores.SqlAlchemyStore.cacheable>`."""
    state = instance_state(obj)
    if state.pending or state.modified or state.deleted or state.was_deleted:
        return False
    if expired_columns(obj):
        return False
    if since is not None and state.info.get(LOADED, -math.inf) < since:
        return False
    session = state.session
    if session is None:
        return True
    if (
        since is not None
        and session.in_transaction()  # else a store-owned session, begun for this read
        and session.info.get(BEGAN, -math.inf) < since  # unknown: began long ago
        and _reads_a_snapshot(session, state.mapper)
    ):
        return False  # its rows are as of the transaction's start, before ``since``
    if any_waiting() and session.in_transaction():
        connection = session.connection(bind_arguments={"mapper": state.mapper})
        if is_waiting(connection):
            return False  # a transaction it joined holds writes not yet committed
    return state not in session._deleted and state.key not in written(session)


def _reads_a_snapshot(session: Session, mapper: Mapper[Any]) -> bool:
    """Whether ``session``'s transaction reads the snapshot of its start (SQLite's driver
    begins a transaction only to write, so its reads see the latest commit)."""
    bind = session.get_bind(mapper=mapper)
    if bind.dialect.name == "sqlite":
        return False
    # An engine's own level (create_engine(isolation_level=...)) is set on every new
    # connection before the dialect reads its default_isolation_level, so it shows there.
    level = (
        bind.get_execution_options().get("isolation_level") or bind.dialect.default_isolation_level
    )
    return str(level).upper() in SNAPSHOT_LEVELS
