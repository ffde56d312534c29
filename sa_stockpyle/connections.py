"""Write-through that waits for a database connection's own transaction to end.

A session joined to a transaction it does not own (``Session(bind=connection)`` inside the
caller's ``connection.begin()``; every ``join_transaction_mode`` but ``"control_fully"``
of a root transaction) commits only a savepoint, or nothing, when ``session.commit()``
returns: the database commits later, when the caller commits the connection, or never.
Statements run on an attached engine's connections outside any session are in the same
position.  What they changed is handed here with :func:`wait_for_commit` and written
through right after the connection's COMMIT succeeds; a ROLLBACK discards it.

How the COMMIT is seen: SQLAlchemy's ``commit`` connection event fires *before* the
COMMIT, and a write made there could be read by another process, and filled back with
the old row, before the database commits.  So the hook sits right after it: the
dialect's ``do_commit`` (a public method of the Dialect interface) is wrapped, once per
dialect and only once something waits, and runs what waits for that connection after
the original returns.  A COMMIT that raises runs nothing.

Savepoints of the caller: work handed over inside one (the connection was in a
``begin_nested()``) may be undone by a later ``ROLLBACK TO SAVEPOINT``; when any savepoint
of the connection rolls back, such work keeps only its removals (a removal after a
COMMIT is always safe: the next read fills from the database).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection

__all__ = ["any_waiting", "is_waiting", "wait_for_commit"]


@dataclass
class _Waiting:
    """One piece of work that waits for its connection's COMMIT."""

    #: what the COMMIT writes through
    write: Callable[[], None]
    #: the same, removals only: what is left when a savepoint it may belong to rolls back
    remove: Callable[[], None]
    #: handed over while the connection was inside a savepoint
    in_savepoint: bool


class _Registry:
    """What waits, per connection, and the lock that guards it."""

    # Keyed by the pool's connection proxy: the object ``do_commit`` receives, and a new
    # one at each checkout, so nothing waits into another checkout of the same DBAPI
    # connection (a connection garbage-collected with its transaction open is rolled back
    # by the pool without any event).
    waiting: weakref.WeakKeyDictionary[Any, list[_Waiting]]
    lock: threading.Lock

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start empty, with a new lock: a forked child holds no transaction of its
        parent's (its connections are the pool's to replace), nor a lock a thread of the
        parent may still hold."""
        self.waiting = weakref.WeakKeyDictionary()
        self.lock = threading.Lock()


_REGISTRY = _Registry()

os.register_at_fork(after_in_child=_REGISTRY.reset)


def wait_for_commit(
    connection: Connection, write: Callable[[], None], remove: Callable[[], None]
) -> None:
    """Call ``write`` right after ``connection``'s transaction commits, never if it rolls
    back (``remove`` instead of ``write`` when a savepoint of the connection rolled back
    meanwhile and the work was handed over inside one).  Neither call may raise."""
    proxy = connection.connection
    waiting = _Waiting(write, remove, connection.in_nested_transaction())
    with _REGISTRY.lock:
        _hook_commits(connection.dialect)
        for name, listener in (("rollback", _rolled_back), ("rollback_savepoint", _undone)):
            if not event.contains(connection, name, listener):
                event.listen(connection, name, listener)
        _REGISTRY.waiting.setdefault(proxy, []).append(waiting)


def any_waiting() -> bool:
    """Whether any connection has work waiting: the cheap test before :func:`is_waiting`."""
    return bool(_REGISTRY.waiting)


def is_waiting(connection: Connection) -> bool:
    """Whether work of ``connection``'s open transaction waits for its COMMIT: its reads
    may then see rows the database has not committed."""
    try:
        proxy = connection.connection
    except Exception:  # closed or invalidated: its transaction is gone
        return False
    return proxy in _REGISTRY.waiting


class _AfterCommit:
    """A dialect's ``do_commit`` that then runs what waits for the connection."""

    def __init__(self, do_commit: Callable[[Any], None]) -> None:
        self.do_commit = do_commit

    def __call__(self, dbapi_connection: Any) -> None:
        self.do_commit(dbapi_connection)
        with _REGISTRY.lock:
            waiting = _REGISTRY.waiting.pop(dbapi_connection, ())
        for item in waiting:
            item.write()


def _hook_commits(dialect: Any) -> None:
    if not isinstance(dialect.do_commit, _AfterCommit):
        dialect.do_commit = _AfterCommit(dialect.do_commit)


def _rolled_back(connection: Connection) -> None:
    # Fired before the ROLLBACK of the connection's transaction, whatever ends it
    # (rollback(), close(), a failed COMMIT's rollback): nothing of it reaches a store.
    try:
        proxy = connection.connection
    except Exception:  # invalidated: its proxy, and what waits on it, are gone
        return
    with _REGISTRY.lock:
        _REGISTRY.waiting.pop(proxy, None)


def _undone(connection: Connection, name: str, context: Any) -> None:
    try:
        proxy = connection.connection
    except Exception:
        return
    with _REGISTRY.lock:
        for item in _REGISTRY.waiting.get(proxy, ()):
            if item.in_savepoint:
                item.write = item.remove
