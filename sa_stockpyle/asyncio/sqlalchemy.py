"""AsyncSqlAlchemyStore: mapped objects in their database, through an ``AsyncSession``."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_scoped_session
from sqlalchemy.orm import Session

from sa_stockpyle.async_sessions import current_session
from sa_stockpyle.errors import ConfigurationError
from sa_stockpyle.greenlets import in_greenlet, run_apart
from sa_stockpyle.stores.async_base import AsyncStore
from sa_stockpyle.stores.freshness import track
from sa_stockpyle.stores.sqlalchemy import SqlAlchemyStore

__all__ = ["AsyncSqlAlchemyStore"]

T = TypeVar("T")


class _GreenletSqlAlchemyStore(SqlAlchemyStore):
    """A SqlAlchemyStore working in the synchronous session of an ``AsyncSession``
    (whose driver awaits in a greenlet)."""

    #: The async_scoped_session given, if one was.
    _scoped: async_scoped_session[Any] | None = None
    #: With ``engine=``, the session of each task that called the store.
    _tasks: weakref.WeakKeyDictionary[Any, Session] | None = None

    def _session_of(self, session: object) -> tuple[Callable[[], Session], Any]:
        if isinstance(session, async_scoped_session):
            self._scoped = session
        if isinstance(session, (AsyncSession, async_scoped_session)):
            return current_session(session)
        raise ConfigurationError(
            f"AsyncSqlAlchemyStore(session=...) expects an AsyncSession or an "
            f"async_scoped_session, got {type(session).__qualname__}"
        )

    def _own_sessions(
        self, engine: Engine
    ) -> tuple[Callable[[], Session], Callable[[], Iterable[Session]]]:
        """A session of the store's own per task, made at the task's first call and
        dropped with the task: tasks run at once, and a session serves one at a time
        (after each operation's commit it holds no connection)."""
        owned: type[Session] = type("OwnedSession", (Session,), {})  # listened on alone
        track(self._listeners, owned)
        sessions = self._tasks = weakref.WeakKeyDictionary()

        def current() -> Session:
            task = _current_task()
            session = sessions.get(task) if task is not None else None
            if session is None:
                session = owned(engine, expire_on_commit=False)
                if task is not None:
                    sessions[task] = session
            return session

        return current, lambda: list(sessions.values())

    def _commit(self, session: Session, write: bool) -> None:
        # A write's flush and COMMIT run to their end whatever cancels the task (their
        # awaits are SQLAlchemy's, which a cancellation would reach): the database may
        # commit either way, and the cache layers written after it must follow.
        if write and in_greenlet():
            run_apart(session.commit)
        else:
            session.commit()

    def _engine_of(self, engine: object) -> Engine:
        if isinstance(engine, AsyncEngine):
            return engine.sync_engine
        raise ConfigurationError(
            f"AsyncSqlAlchemyStore(engine=...) expects an AsyncEngine, got "
            f"{type(engine).__qualname__}"
        )

    def adopt(self, klass: type[T], objs: list[T]) -> list[T]:
        """Attach what a faster layer found to the task's session, as
        ``SqlAlchemyStore.adopt`` does; a task that has no session yet gets the objects
        detached, and no session is made for it (opening and closing an AsyncSession
        costs more than the cache hit it would hold)."""
        if self._scoped is not None and not self._scoped.registry.has():
            return objs
        if self._tasks is not None:
            task = _current_task()
            if task is None or self._tasks.get(task) is None:
                return objs
        return super().adopt(klass, objs)

    def __repr__(self) -> str:
        return "<Async" + super().__repr__()[1:]


def _current_task() -> Any:
    """The running task, or None (no event loop: a session for the call alone)."""
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


class AsyncSqlAlchemyStore(AsyncStore[SqlAlchemyStore]):
    """Mapped objects in their database, read and written through an ``AsyncSession``:
    :class:`~sa_stockpyle.stores.SqlAlchemyStore`, with its six operations as coroutines.

    Give exactly one of:

    * ``session``: an ``AsyncSession``, or an ``async_scoped_session`` resolved at each
      call (the current task's session, for ``scopefunc=asyncio.current_task``).  Writes
      are flushed, never committed: the caller owns the transaction.
    * ``engine``: an ``AsyncEngine``; the store owns a session per task
      (``expire_on_commit=False``), made at the task's first call that needs one and
      dropped with the task, and commits after every operation.  Tasks may call it at
      once.  An object it returns belongs to the calling task's session (its lazy loads
      go through it while the task lives); SQLAlchemy refuses to add an object another
      live session holds, so another task puts a copy of it.

    Objects read from the database are persistent in the session, and their loading is
    the synchronous store's: the same SELECT, the same identity-map answers, the same
    stamps that decide which objects may fill a cache.  An object a faster layer found
    is attached to the task's session when the task has one (the identity map's
    instance answers for an identity it holds); a task with no session yet gets it
    detached, and no session is opened for it.
    """

    def __init__(
        self,
        session: AsyncSession | async_scoped_session[Any] | None = None,
        engine: AsyncEngine | None = None,
    ) -> None:
        if (session is None) == (engine is None):
            raise ConfigurationError(
                "AsyncSqlAlchemyStore takes exactly one of session= (an AsyncSession or "
                f"async_scoped_session) or engine= (an AsyncEngine); got session={session!r}, "
                f"engine={engine!r}"
            )
        sync = (
            _GreenletSqlAlchemyStore(session=session)  # type: ignore[arg-type]
            if session is not None
            else _GreenletSqlAlchemyStore(engine=engine)  # type: ignore[arg-type]
        )
        super().__init__(sync)
