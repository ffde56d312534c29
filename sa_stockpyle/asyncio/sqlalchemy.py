"""AsyncSqlAlchemyStore: mapped objects in their database, through an ``AsyncSession``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_scoped_session
from sqlalchemy.orm import Session

from sa_stockpyle.async_sessions import current_session
from sa_stockpyle.errors import ConfigurationError
from sa_stockpyle.stores.async_base import AsyncStore
from sa_stockpyle.stores.sqlalchemy import SqlAlchemyStore

__all__ = ["AsyncSqlAlchemyStore"]


class _GreenletSqlAlchemyStore(SqlAlchemyStore):
    """A SqlAlchemyStore working in the synchronous session of an ``AsyncSession``
    (whose driver awaits in a greenlet)."""

    def _session_of(self, session: object) -> tuple[Callable[[], Session], Any]:
        if isinstance(session, (AsyncSession, async_scoped_session)):
            return current_session(session)
        raise ConfigurationError(
            f"AsyncSqlAlchemyStore(session=...) expects an AsyncSession or an "
            f"async_scoped_session, got {type(session).__qualname__}"
        )

    def _engine_of(self, engine: object) -> Engine:
        if isinstance(engine, AsyncEngine):
            return engine.sync_engine
        raise ConfigurationError(
            f"AsyncSqlAlchemyStore(engine=...) expects an AsyncEngine, got "
            f"{type(engine).__qualname__}"
        )

    def __repr__(self) -> str:
        return "<Async" + super().__repr__()[1:]


class AsyncSqlAlchemyStore(AsyncStore[SqlAlchemyStore]):
    """Mapped objects in their database, read and written through an ``AsyncSession``:
    :class:`~sa_stockpyle.stores.SqlAlchemyStore`, with its six operations as coroutines.

    Give exactly one of:

    * ``session``: an ``AsyncSession``, or an ``async_scoped_session`` resolved at each
      call (the current task's session, for ``scopefunc=asyncio.current_task``).  Writes
      are flushed, never committed: the caller owns the transaction.
    * ``engine``: an ``AsyncEngine``; the store owns one session
      (``expire_on_commit=False``) and commits after every operation.  Like any
      session, it serves one task at a time.

    Objects returned are persistent in the session, as ``SqlAlchemyStore``'s are, and
    their loading is the synchronous store's: the same SELECT, the same identity-map
    answers, the same stamps that decide which objects may fill a cache.
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
