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
* Raw SQL that bypasses the ORM (``connection.execute(text(...))``, Core statements on
  tables) is not tracked.
* A store failure during the commit-time write is logged and counted in
  ``handle.stats`` (event ``errors``); it never raises out of the commit, which has
  already happened in the database.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Engine, event, inspect
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
from sqlalchemy.orm.base import NO_VALUE
from sqlalchemy.orm.state import InstanceState

from sa_stockpyle.codec import packed, restore, snapshot, version_of
from sa_stockpyle.column_values import Check, value_checks
from sa_stockpyle.errors import ConfigurationError, PayloadError
from sa_stockpyle.keys import KeySpec, key_spec
from sa_stockpyle.stores.base import BaseStore, Removal, Stats

__all__ = ["Attachment", "attach"]

log = logging.getLogger("sa_stockpyle")

#: The one key sa_stockpyle uses in ``Session.info``.
INFO_KEY = "sa_stockpyle"

_Identity = tuple[Any, ...]


@dataclass
class _Buffer:
    """What one transaction will write through if it commits.

    Every change is applied here in the order it happened, so what remains is what the
    commit must do: invalidate ``classes``, then remove ``removals``, then store ``puts``
    (a put recorded before a later removal or invalidation of its row is dropped).
    """

    #: identity key -> detached object holding the committed state to store
    puts: dict[_Identity, object] = field(default_factory=dict)
    #: (class, lookup items) -> the identity whose entry it removes, if it is one, and the
    #: lookup itself
    removals: dict[
        tuple[type, tuple[tuple[str, Any], ...]], tuple[_Identity | None, dict[str, Any]]
    ] = field(default_factory=dict)
    #: classes whose every cached entry must become unreachable
    classes: dict[type, None] = field(default_factory=dict)

    def remove(self, klass: type, lookup: dict[str, Any], identity: _Identity | None) -> None:
        """Remove a key; when it is an object's identity, drop that object's pending put."""
        if identity is not None:
            self.puts.pop(identity, None)
        # Order-free, so one key named twice is one removal (a one-item lookup is sorted).
        items = tuple(lookup.items()) if len(lookup) == 1 else tuple(sorted(lookup.items()))
        self.removals[klass, items] = (identity, lookup)

    def invalidate(self, classes: list[type]) -> None:
        """Invalidate whole classes, dropping their pending puts."""
        self.classes.update(dict.fromkeys(classes))
        self.puts = {i: obj for i, obj in self.puts.items() if type(obj) not in self.classes}

    def merge(self, child: _Buffer) -> None:
        """Take over a released savepoint's buffer: its changes come after ours."""
        for (klass, _), (identity, lookup) in child.removals.items():
            self.remove(klass, lookup, identity)
        if child.classes:
            self.invalidate(list(child.classes))
        self.puts.update(child.puts)

    def __bool__(self) -> bool:
        return bool(self.puts or self.removals or self.classes)


@dataclass
class _Flushed:
    """One object seen at ``after_flush``, finished at ``after_flush_postexec``."""

    # A strong reference: after its flush, an object nobody else holds would otherwise
    # leave the session's weak identity map before we read its state.
    obj: object
    state: InstanceState[Any]
    info: _ClassInfo
    deleted: bool
    old_identity: _Identity | None
    old_keys: list[dict[str, Any]]


@dataclass
class _SessionState:
    """Per-session bookkeeping of one attachment, kept in ``session.info``."""

    buffers: dict[SessionTransaction, _Buffer] = field(default_factory=dict)
    committed: set[SessionTransaction] = field(default_factory=set)
    #: committed root transactions whose write-through was started: what finishes it
    writing: dict[SessionTransaction, Callable[[], None]] = field(default_factory=dict)
    #: the flush under way (its unit of work) and what it changes, from ``after_flush``
    #: to ``after_flush_postexec``; a flush that fails in between (another listener
    #: raised) never reaches the second, and its record is dropped with it
    flushing: tuple[object, list[_Flushed]] | None = None


@dataclass(frozen=True)
class _ClassInfo:
    """How the plugin reads one mapped, storable class."""

    spec: KeySpec
    mapper: Mapper[Any]
    primary_attrs: tuple[str, ...]  # mapper.primary_key as attribute names, in order
    key_attrs: frozenset[str]  # every attribute named in __stockpyle_keys__
    columns: frozenset[str]  # every column attribute


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
        self._engine = target if isinstance(target, Engine) else None
        self._event_target: Any = Session if self._engine is not None else target
        self._info_key = f"{INFO_KEY}:{id(self)}"
        self._classes: dict[type, _ClassInfo | None] = {}
        self._checks: dict[tuple[type, str], dict[str, Check]] = {}
        self._listeners: list[tuple[str, Callable[..., Any]]] = [
            ("after_flush", self._after_flush),
            ("after_flush_postexec", self._after_flush_postexec),
            ("after_commit", self._after_commit),
            ("after_transaction_end", self._after_transaction_end),
            ("do_orm_execute", self._do_orm_execute),
        ]
        for name, listener in self._listeners:
            # First in line for the transaction events: a listener of the application's
            # that raises there cannot keep a commit from being written through, or a
            # flush's record from being taken (do_orm_execute keeps its place: the first
            # listener that returns a result is the one that executes).
            first = name != "do_orm_execute"
            event.listen(self._event_target, name, listener, propagate=True, insert=first)

    def detach(self) -> None:
        """Remove every listener; sessions stop writing through at once."""
        with _REGISTRY_LOCK:
            for name, listener in self._listeners:
                if event.contains(self._event_target, name, listener):
                    event.remove(self._event_target, name, listener)
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

    def _info(self, klass: type) -> _ClassInfo | None:
        try:
            return self._classes[klass]
        except KeyError:
            pass
        info = None
        if getattr(klass, "__stockpyle_keys__", None) is not None:
            spec = key_spec(klass)
            mapper = _mapper_of(klass)
            primary = tuple(
                mapper.get_property_by_column(column).key for column in mapper.primary_key
            )
            if frozenset(primary) not in {frozenset(item) for item in spec.items}:
                raise ConfigurationError(
                    f"{spec.describe()}, but its primary key {primary!r} is not one of "
                    f"them; attach() removes cached entries by primary key, so declare it"
                )
            info = _ClassInfo(
                spec,
                mapper,
                primary,
                frozenset(a for item in spec.items for a in item),
                frozenset(prop.key for prop in mapper.column_attrs),
            )
        self._classes[klass] = info
        return info

    def _session_state(self, session: Session) -> _SessionState:
        state: _SessionState | None = session.info.get(self._info_key)
        if state is None:
            state = session.info[self._info_key] = _SessionState()
        return state

    def _buffer(self, session: Session) -> _Buffer:
        transaction = session.get_nested_transaction() or session.get_transaction()
        if transaction is None:  # a flush or an executed statement always has one
            raise RuntimeError(f"{self!r}: a change was recorded outside any transaction")
        return self._session_state(session).buffers.setdefault(transaction, _Buffer())

    # -- flush ------------------------------------------------------------------------

    def _after_flush(self, session: Session, context: Any) -> None:
        # Pre-flush view: new/dirty/deleted and attribute history are still intact.
        flushing: list[_Flushed] = []
        self._session_state(session).flushing = (context, flushing)
        covered: dict[type, _ClassInfo | None] = {}  # per class: its bind is looked up once
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
                old_keys = _known_keys(info, state) if deleted else _old_keys(info, state)
                flushing.append(_Flushed(obj, state, info, deleted, state.key, old_keys))

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
            if ordered and _fully_loaded(info, state):
                checks = checks_of.get(klass)
                if checks is None:
                    checks = checks_of[klass] = self._value_checks(session, info)
                put = self._put_of(obj, checks)
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

    def _value_checks(self, session: Session, info: _ClassInfo) -> dict[str, Check]:
        dialect = session.get_bind(mapper=info.mapper).dialect
        checks = self._checks.get((info.mapper.class_, dialect.name))
        if checks is None:
            checks = self._checks[info.mapper.class_, dialect.name] = value_checks(
                info.mapper, dialect
            )
        return checks

    def _put_of(self, obj: object, checks: dict[str, Check]) -> object | None:
        """The detached copy of ``obj`` to write through at commit, or None, and every
        layer removes it instead (the rest of the commit is written as usual): when one of
        its values may differ from what the database stored (see
        :mod:`sa_stockpyle.column_values`; counted as ``inexact``), or when a shared layer
        could not carry one (logged, counted as ``refused``)."""
        try:
            state = snapshot(obj)
        except (PayloadError, TypeError, copy.Error) as exc:  # a value that does not copy
            self._refused(obj, exc)
            return None
        for name, value in state.items():
            check = checks.get(name)
            if check is not None and not check(value):
                log.debug("sa_stockpyle: %s.%s is removed at commit", type(obj).__qualname__, name)
                self.stats.add(type(obj), "inexact")
                return None
        try:
            packed(state)
        except PayloadError as exc:
            self._refused(obj, exc)
            return None
        put: object = restore(type(obj), state, owned=True)
        return put

    def _refused(self, obj: object, exc: Exception) -> None:
        log.warning(
            "sa_stockpyle: a %s will be removed from the caches at commit, not written: %s",
            type(obj).__qualname__,
            exc,
        )
        self.stats.add(type(obj), "refused")

    # -- bulk statements --------------------------------------------------------------

    def _do_orm_execute(self, orm_state: ORMExecuteState) -> Any:
        if not (orm_state.is_update or orm_state.is_delete or orm_state.is_insert):
            return None
        mapper = orm_state.bind_mapper
        if mapper is None or not self._covers(orm_state.session, mapper):
            return None
        klass = mapper.class_
        info = self._info(klass)
        if info is None:
            return None
        statement: Any = orm_state.statement
        params: Any = orm_state.parameters
        rows: list[Any] = params if isinstance(params, list) else [params] if params else []
        upsert = orm_state.is_insert and _is_upsert(statement)
        by_key = bool(rows) and all(set(info.primary_attrs) <= set(row) for row in rows)
        touched = [{a: row[a] for a in info.primary_attrs} for row in rows] if by_key else []
        whole_class = False
        if orm_state.is_insert and not upsert:
            if not touched:
                return None  # new rows: nothing cached can describe them
            result = orm_state.invoke_statement()
        elif by_key and not upsert:
            result = orm_state.invoke_statement()  # bulk UPDATE by primary key
        elif self._can_return(orm_state, mapper) and not rows:
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
            buffer.invalidate(_family(klass))
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

    # -- transaction ends -------------------------------------------------------------

    def _after_commit(self, session: Session) -> None:
        # Fires for a released savepoint as well as for the real COMMIT, before the
        # transaction's after_transaction_end; the one committing is the innermost.
        transaction = session.get_nested_transaction() or session.get_transaction()
        if transaction is None:
            return
        session_state = self._session_state(session)
        session_state.committed.add(transaction)
        if not transaction.nested:
            # The database has committed: the write starts now and is finished when the
            # transaction ends, so its round trip overlaps SQLAlchemy's work in between.
            buffer = session_state.buffers.pop(transaction, None)
            finish = self._start_write(buffer) if buffer else None
            if finish is not None:
                session_state.writing[transaction] = finish

    def _after_transaction_end(self, session: Session, transaction: SessionTransaction) -> None:
        session_state: _SessionState | None = session.info.get(self._info_key)
        if session_state is None:
            return
        if transaction.parent is None:
            session_state.flushing = None  # a failed flush's record, if one is left
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
            session_state.buffers.setdefault(parent, _Buffer()).merge(buffer)

    def _start_write(self, buffer: _Buffer) -> Callable[[], None] | None:
        """Start writing a committed transaction's buffer through (see
        :meth:`BaseStore.start_committed`); the call returned finishes it, None when it
        failed to start.  Neither raises: the database has committed, and raising would
        tell the caller otherwise."""
        removals: list[Removal] = [
            (klass, lookup) for (klass, _), (_, lookup) in buffer.removals.items()
        ]
        puts = list(buffer.puts.values())
        try:
            for klass in buffer.classes:
                self.store.invalidate_class(klass)
                self.stats.add(klass, "class_invalidations")
            started = self.store.start_committed(puts, removals)
        except Exception:
            self._write_failed(puts, removals)
            return None

        def finish() -> None:
            try:
                if started is not None:
                    started()
            except Exception:
                self._write_failed(puts, removals)
                return
            for klass, count in Counter(type(obj) for obj in puts).items():
                self.stats.add(klass, "written", count)
            for klass, count in Counter(klass for klass, _ in removals).items():
                self.stats.add(klass, "removed", count)

        return finish

    def _write_failed(self, puts: list[object], removals: list[Removal]) -> None:
        log.exception("sa_stockpyle: write-through after commit failed in %r", self)
        for klass in {type(obj) for obj in puts} | {k for k, _ in removals}:
            self.stats.add(klass, "errors")


def _mapper_of(klass: type) -> Mapper[Any]:
    """The mapper of a mapped class (ConfigurationError when it is not mapped)."""
    mapper: object = inspect(klass, raiseerr=False)
    if not isinstance(mapper, Mapper):
        raise ConfigurationError(f"{klass.__qualname__} is not a mapped class")
    return mapper


def _old_keys(info: _ClassInfo, state: InstanceState[Any]) -> list[dict[str, Any]]:
    """The lookups of declared keys whose values this flush changes, with old values."""
    # committed_state holds the value each changed attribute had when loaded (NO_VALUE
    # when it never was): cheaper than attribute history, which this runs for every row.
    committed = state.committed_state
    if info.key_attrs.isdisjoint(committed):
        return []  # the usual update: no key attribute changed
    current = state.dict
    changed = {
        attr: committed[attr]
        for attr in info.key_attrs & committed.keys()
        if committed[attr] is not NO_VALUE and committed[attr] != current.get(attr)
    }
    if not changed:
        return []
    lookups = []
    for item in info.spec.items:
        if changed.keys() & set(item):
            old = {a: changed[a] if a in changed else current.get(a) for a in item}
            if None not in old.values():
                lookups.append(old)
    return lookups


def _known_keys(info: _ClassInfo, state: InstanceState[Any]) -> list[dict[str, Any]]:
    """The lookups of every declared key whose values are loaded and not None."""
    loaded = state.dict
    return [
        {a: loaded[a] for a in item}
        for item in info.spec.items
        if all(loaded.get(a) is not None for a in item)
    ]


def _fully_loaded(info: _ClassInfo, state: InstanceState[Any]) -> bool:
    return info.columns <= state.dict.keys()


def _is_upsert(statement: Any) -> bool:
    # Dialect INSERT ... ON CONFLICT / ON DUPLICATE KEY UPDATE constructs carry their
    # clause here; a plain INSERT does not.
    return getattr(statement, "_post_values_clause", None) is not None


def _family(klass: type) -> list[type]:
    """``klass``, its mapped subclasses and its bases declaring keys: every namespace a
    row of ``klass``'s table may be cached under."""
    family = [base for base in klass.__mro__ if getattr(base, "__stockpyle_keys__", None)]
    pending: list[type] = list(klass.__subclasses__())
    while pending:
        sub = pending.pop()
        family.append(sub)
        pending.extend(sub.__subclasses__())
    return family


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
