"""The synchronous side of SQLAlchemy's asyncio objects: what ``attach()`` and
``AsyncSqlAlchemyStore`` listen on and work in.

An ``AsyncSession`` is a shell around a synchronous ``Session`` (``sync_session``) that it
drives in a greenlet; an ``AsyncEngine`` wraps a synchronous ``Engine``
(``sync_engine``).  Session events are delivered to the synchronous side only, so
listeners go there.  An ``async_sessionmaker`` makes each ``AsyncSession`` around a new
instance of its ``sync_session_class`` (``Session`` unless configured): a listener on
that class would hear every session of the process, so the factory is given a subclass
of its own, once, that stands for it the way a ``sessionmaker``'s own class stands for
a ``sessionmaker``.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_scoped_session, async_sessionmaker

__all__ = ["current_session", "is_async", "sync_session_class", "sync_target"]

_OWN: weakref.WeakKeyDictionary[Any, type[Session]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _extension() -> Any:
    """SQLAlchemy's asyncio extension, if loaded: an object of it exists only then (and
    it cannot be loaded without the greenlet package)."""
    return sys.modules.get("sqlalchemy.ext.asyncio")


def is_async(target: object) -> bool:
    """Whether ``target`` is one of SQLAlchemy's asyncio session or engine objects."""
    ext = _extension()
    if ext is None:
        return False
    kinds = (ext.async_sessionmaker, ext.async_scoped_session, ext.AsyncSession, ext.AsyncEngine)
    return isinstance(target, kinds) or (
        isinstance(target, type) and issubclass(target, ext.AsyncSession)
    )


def sync_session_class(owner: async_sessionmaker[Any] | type[AsyncSession]) -> type[Session]:
    """The ``Session`` class of the sessions ``owner`` makes, a subclass of their own.

    ``owner``'s ``sync_session_class`` is replaced, at the first call, by a subclass of
    it made for ``owner`` alone (for a factory, a subclass of the class its sessions
    used: the factory's ``sync_session_class``, else its ``class_``'s); later calls
    return that subclass.  The replacement stays after ``detach()``: without listeners,
    the subclass behaves as its base.  Sessions made before the first call keep their
    class, and are not watched.
    """
    factory = isinstance(owner, _extension().async_sessionmaker)
    made: Any = owner  # a factory (its kw) or a class (its attribute)
    with _LOCK:
        own = _OWN.get(owner)
        if own is not None:
            return own
        # A factory's own setting, else its AsyncSession class's (a routing or sharding
        # Session a custom class names keeps its behaviour in the subclass).
        base = (
            made.kw.get("sync_session_class") or made.class_.sync_session_class
            if factory
            else made.sync_session_class
        )
        own = type(base.__name__, (base,), {"__module__": base.__module__})
        if factory:
            made.kw["sync_session_class"] = own
        else:
            made.sync_session_class = own
        _OWN[owner] = own
        return own


def sync_target(target: Any) -> Any:
    """What to listen on for ``target``'s sessions: ``target`` itself when it is
    synchronous, else its synchronous side (see the module doc)."""
    if not is_async(target):
        return target
    ext = _extension()
    if isinstance(target, ext.async_scoped_session):
        return sync_session_class(target.session_factory)
    if isinstance(target, ext.AsyncSession):
        return target.sync_session
    if isinstance(target, ext.AsyncEngine):
        return target.sync_engine
    return sync_session_class(target)  # an async_sessionmaker, or an AsyncSession class


def current_session(
    session: AsyncSession | async_scoped_session[Any],
) -> tuple[Callable[[], Session], Session | type[Session]]:
    """For an ``AsyncSession`` or ``async_scoped_session``: the function that returns
    the synchronous ``Session`` a call works in (the current task's, for a scoped one),
    and what to listen on for it."""
    if isinstance(session, _extension().async_scoped_session):
        scoped = session
        return (lambda: scoped().sync_session), sync_session_class(scoped.session_factory)
    sync = session.sync_session  # type: ignore[union-attr]
    return (lambda: sync), sync
