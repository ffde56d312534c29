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
dialect's ``do_commit`` and ``do_commit_twophase`` (public methods of the Dialect
interface) are wrapped, once per dialect and only once a session joins a caller's
transaction, and run what waits for the connection after the original returns.  A COMMIT
that raises writes only the removals of what waited (the database may have committed
before the error reached the client, and a removal is always safe).

Savepoints of the caller: work done while a savepoint of the connection was open may be
undone by a ``ROLLBACK TO SAVEPOINT``; when one rolls back, such work keeps only its
removals.  Reads: while a session is joined to a caller's transaction, that transaction
may hold writes the database has not committed, so reads on the connection fill nothing
(:func:`is_waiting`) until it ends.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sqlalchemy.engine import Connection

from sa_stockpyle.greenlets import current, in_greenlet, run_apart
from sa_stockpyle.listeners import listen_for_life

__all__ = [
    "any_waiting",
    "is_autocommit",
    "is_waiting",
    "join",
    "join_callers",
    "prepare_during_commit",
    "savepoint_rollbacks",
    "wait_for_commit",
    "watch_commits",
]

log = logging.getLogger("sa_stockpyle")


@dataclass
class _Waiting:
    """One piece of work that waits for its connection's COMMIT."""

    #: what the COMMIT writes through
    write: Callable[[], None]
    #: the same, removals only: what is left when a savepoint it may belong to rolls back
    remove: Callable[[], None]
    #: handed over while the connection was inside a savepoint
    in_savepoint: bool


@dataclass
class _Transaction:
    """What the plugin knows of one connection's open transaction."""

    waiting: list[_Waiting] = field(default_factory=list)
    #: savepoints of the connection rolled back so far
    savepoint_rollbacks: int = 0


class _Registry:
    """The open transactions the plugin knows of, and the lock that guards them."""

    # Keyed by the pool's connection proxy: the object ``do_commit`` receives, and a new
    # one at each checkout, so nothing waits into another checkout of the same DBAPI
    # connection (a connection garbage-collected with its transaction open is rolled back
    # by the pool without any event).
    transactions: weakref.WeakKeyDictionary[Any, _Transaction]
    lock: threading.Lock

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Start empty, with a new lock: a forked child holds no transaction of its
        parent's (its connections are the pool's to replace), nor a lock a thread of the
        parent may still hold."""
        self.transactions = weakref.WeakKeyDictionary()
        self.lock = threading.Lock()


_REGISTRY = _Registry()

os.register_at_fork(after_in_child=_REGISTRY.reset)


def join(connection: Connection) -> int:
    """Note that a session joins ``connection``'s open transaction: from now until that
    transaction ends, reads on it fill nothing, and its end is watched.  Returns the
    count of its savepoints rolled back so far (see :func:`savepoint_rollbacks`)."""
    proxy = _proxy(connection)
    with _REGISTRY.lock:
        _hook_commits(connection.dialect)
        for name, listener in _LISTENERS:
            listen_for_life(connection, name, listener)
        transaction = _REGISTRY.transactions.setdefault(proxy, _Transaction())
        return transaction.savepoint_rollbacks


def join_callers(session: Any, transaction: Any) -> int | None:
    """At a session's ``after_transaction_create``: when the root transaction begins on a
    Connection given as the session's bind that is in a transaction already (the
    caller's), :func:`join` it and return what it returns; else None."""
    bind = session.bind
    if transaction.parent is None and isinstance(bind, Connection) and bind.in_transaction():
        return join(bind)
    return None


def savepoint_rollbacks(connection: Connection) -> int:
    """How many savepoints of ``connection``'s joined transaction rolled back so far."""
    with _REGISTRY.lock:
        transaction = _REGISTRY.transactions.get(_proxy(connection))
        return 0 if transaction is None else transaction.savepoint_rollbacks


def wait_for_commit(
    connection: Connection, write: Callable[[], None], remove: Callable[[], None]
) -> None:
    """Call ``write`` right after ``connection``'s transaction commits, never if it rolls
    back (``remove`` instead of ``write`` when a savepoint of the connection rolled back
    meanwhile and the work was handed over inside one, or when the COMMIT fails).  On a
    connection in ``AUTOCOMMIT`` isolation each statement has committed already:
    ``write`` is called at once.  Neither call may raise."""
    if is_autocommit(connection):
        write()
        return
    join(connection)
    waiting = _Waiting(write, remove, connection.in_nested_transaction())
    with _REGISTRY.lock:
        _REGISTRY.transactions.setdefault(_proxy(connection), _Transaction()).waiting.append(
            waiting
        )


def any_waiting() -> bool:
    """Whether any connection has a joined transaction: the cheap test before
    :func:`is_waiting`."""
    return bool(_REGISTRY.transactions)


def is_waiting(connection: Connection) -> bool:
    """Whether ``connection``'s open transaction was joined by a session or holds work
    that waits for its COMMIT: its reads may then see rows the database has not
    committed."""
    try:
        proxy = connection.connection
    except Exception:  # closed or invalidated: its transaction is gone
        return False
    return proxy in _REGISTRY.transactions


def is_autocommit(connection: Connection) -> bool:
    """Whether ``connection`` runs in ``AUTOCOMMIT`` isolation (each statement commits)."""
    # SQLAlchemy's own test, from the connection's and the engine's options, which asks
    # nothing of the database (get_isolation_level() would).
    return bool(connection._is_autocommit_isolation())


def _proxy(connection: Connection) -> Any:
    return connection.connection


class _AfterCommit:
    """A dialect's ``do_commit`` (or ``do_commit_twophase``) that then runs what waits
    for the connection it committed."""

    def __init__(self, commit: Callable[..., None], proxy_of: Callable[[Any], Any]) -> None:
        self.commit = commit
        self.proxy_of = proxy_of

    def __call__(self, connection: Any, *args: Any, **kwargs: Any) -> None:
        with _REGISTRY.lock:
            transaction = _REGISTRY.transactions.pop(self.proxy_of(connection), None)
        try:
            if in_greenlet():
                # An asyncio driver's COMMIT, once sent, is awaited to its end whatever
                # cancels the task: the database may commit either way, and only a
                # COMMIT seen to end tells whether the cache must follow.  What waits to
                # be built meanwhile is built by the event loop while it is on its way.
                work = _PREPARING.pop(current(), None) if _PREPARING else None
                run_apart(partial(self.commit, connection, *args, **kwargs), work)
            else:
                self.commit(connection, *args, **kwargs)
        except BaseException:
            for item in transaction.waiting if transaction is not None else ():
                item.remove()
            raise
        for item in transaction.waiting if transaction is not None else ():
            item.write()


#: Per greenlet, what :func:`prepare_during_commit` asked to run during its next COMMIT.
_PREPARING: weakref.WeakKeyDictionary[Any, _Work] = weakref.WeakKeyDictionary()


class _Work(list[Callable[[], None]]):
    """What waits to be built during one greenlet's next COMMIT, in the order asked."""

    def __call__(self) -> None:
        for work in self:
            try:
                work()
            except Exception:  # the others still run; the write is built at its start
                log.exception("sa_stockpyle: building a write during a COMMIT failed")


def prepare_during_commit(work: Callable[[], None]) -> None:
    """Have ``work`` run while the next COMMIT this greenlet sends on an asyncio driver
    waits for the database's reply (hooked by :func:`watch_commits`): the event loop
    runs it, between the other tasks it runs meanwhile, outside any greenlet.  An
    ``AsyncSession``'s commit builds its write-through there, so that the work overlaps
    the round trip.  ``work`` must not await (what it raises is logged); it does not run
    when no such COMMIT comes.  Outside a greenlet, nothing happens."""
    if in_greenlet():
        running = current()
        waiting = _PREPARING.get(running)
        if waiting is None:
            waiting = _PREPARING[running] = _Work()
        waiting.append(work)


def watch_commits(dialect: Any) -> None:
    """Hook ``dialect``'s COMMIT (once): for an asyncio driver, a cancelled task's COMMIT
    then ends before the cancellation is raised, so that a commit the database made is
    written through (``attach()`` calls it for the connections of its sessions)."""
    if isinstance(dialect.do_commit, _AfterCommit):
        return  # hooked already: each transaction's begin asks, without the lock
    with _REGISTRY.lock:
        _hook_commits(dialect)


def _hook_commits(dialect: Any) -> None:
    if not isinstance(dialect.do_commit, _AfterCommit):
        dialect.do_commit = _AfterCommit(dialect.do_commit, lambda proxy: proxy)
    if not isinstance(dialect.do_commit_twophase, _AfterCommit):
        dialect.do_commit_twophase = _AfterCommit(
            dialect.do_commit_twophase, lambda connection: connection.connection
        )


def _rolled_back(connection: Connection, *args: Any) -> None:
    # Fired before the ROLLBACK of the connection's transaction, whatever ends it
    # (rollback(), close(), a two-phase rollback): nothing of it reaches a store.
    try:
        proxy = connection.connection
    except Exception:  # invalidated: its proxy, and what waits on it, are gone
        return
    with _REGISTRY.lock:
        _REGISTRY.transactions.pop(proxy, None)


def _undone(connection: Connection, name: str, context: Any) -> None:
    try:
        proxy = connection.connection
    except Exception:
        return
    with _REGISTRY.lock:
        transaction = _REGISTRY.transactions.get(proxy)
        if transaction is None:
            return
        transaction.savepoint_rollbacks += 1
        for item in transaction.waiting:
            if item.in_savepoint:
                item.write = item.remove


_LISTENERS: tuple[tuple[str, Callable[..., None]], ...] = (
    ("rollback", _rolled_back),
    ("rollback_twophase", _rolled_back),
    ("rollback_savepoint", _undone),
)
