"""What one attachment knows of its sessions: which sessions and classes it covers, what
each session's transactions have recorded, and which sessions hold each connection.

:mod:`sa_stockpyle.orm` records flushes and transaction ends through it, and
:mod:`sa_stockpyle.bulk` the statements that bypass the unit of work.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapper, Session, SessionTransaction

from sa_stockpyle.changes import Buffer, ClassInfo, Flushed, class_info
from sa_stockpyle.errors import ConfigurationError

__all__ = ["INFO_KEY", "SessionState", "Sessions"]

#: The one key sa_stockpyle uses in ``Session.info`` (suffixed per attachment).
INFO_KEY = "sa_stockpyle"


@dataclass
class SessionState:
    """Per-session bookkeeping of one attachment, kept in ``session.info``."""

    buffers: dict[SessionTransaction, Buffer] = field(default_factory=dict)
    committed: set[SessionTransaction] = field(default_factory=set)
    #: committed root transactions whose write-through was started: what finishes it
    writing: dict[SessionTransaction, Callable[[], None]] = field(default_factory=dict)
    #: the flush under way (its unit of work) and what it changes, from ``after_flush``
    #: to ``after_flush_postexec``; a flush that fails in between (another listener
    #: raised) never reaches the second, and its record is dropped with it
    flushing: tuple[object, list[Flushed]] | None = None
    #: the connections of the session's transaction (see ``Attachment._after_begin``)
    connections: dict[Connection, None] = field(default_factory=dict)
    #: the flush under way, from ``before_flush`` (its ``transaction`` is set while its
    #: statements run): its own statements are described by its record
    flush_context: Any = None
    #: the savepoint rollbacks counted on the caller's connection when the session's
    #: transaction joined it (None: the session's transaction is its own)
    joined: int | None = None
    #: ORM statements under way in ``Statements.do_orm_execute``, which records them
    orm_executing: int = 0

    def in_flush(self) -> bool:
        """Whether a flush of the session is running its statements."""
        transaction = getattr(self.flush_context, "transaction", None)
        return transaction is not None and bool(transaction.is_active)


class Sessions:
    """The sessions one attachment serves, and what each has recorded."""

    def __init__(self, engine: Engine | None, name: str) -> None:
        #: with ``attach(engine)``, the engine whose sessions are covered (else all of
        #: the target's sessions are)
        self.engine = engine
        self._info_key = f"{INFO_KEY}:{name}"
        self._classes: dict[type, ClassInfo | None] = {}
        #: Per connection, the covered sessions whose transactions hold it (several when
        #: sessions share a caller's connection): a statement is recorded by each.
        self.owners: weakref.WeakKeyDictionary[Connection, list[Session]] = (
            weakref.WeakKeyDictionary()
        )

    def covers(self, session: Session, mapper: Mapper[Any]) -> bool:
        """Whether ``session``'s changes to ``mapper``'s objects are this attachment's."""
        if self.engine is None:
            return True
        bind = session.get_bind(mapper=mapper)
        engine = bind.engine if isinstance(bind, Connection) else bind
        return engine is self.engine

    def info(self, klass: type) -> ClassInfo | None:
        """How ``klass`` is read; None when it declares no ``__stockpyle_keys__``."""
        try:
            return self._classes[klass]
        except KeyError:
            pass
        info = class_info(klass)
        self._classes[klass] = info
        return info

    def primary_of(self, klass: type) -> tuple[str, ...]:
        """The primary key attributes of storable ``klass``."""
        info = self.info(klass)
        if info is None:  # a put is only ever recorded for a storable class
            raise ConfigurationError(f"{klass.__qualname__} is not storable")
        return info.primary_attrs

    def state(self, session: Session) -> SessionState:
        """``session``'s bookkeeping, created on first use."""
        state: SessionState | None = session.info.get(self._info_key)
        if state is None:
            state = session.info[self._info_key] = SessionState()
        return state

    def state_if_any(self, session: Session) -> SessionState | None:
        """``session``'s bookkeeping, if it has recorded anything."""
        found: SessionState | None = session.info.get(self._info_key)
        return found

    def buffer(self, session: Session) -> Buffer:
        """The buffer of ``session``'s innermost open transaction."""
        transaction = session.get_nested_transaction() or session.get_transaction()
        if transaction is None:  # a flush or an executed statement always has one
            raise RuntimeError(f"{session!r}: a change was recorded outside any transaction")
        return self.state(session).buffers.setdefault(transaction, Buffer())
