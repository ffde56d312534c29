"""SqlAlchemyStore: mapped objects in their database, through an ORM session.

The bottom layer of a chain.  A mapped class declares ``__stockpyle_keys__`` with column
attribute names; the first item should be its primary key, so that ``get`` can answer from
the session's identity map (any other item is looked up with ``SELECT ... WHERE``).

Errors of the database driver are not translated: a :class:`ChainedStore` treats
:class:`~sa_stockpyle.errors.StoreUnavailable` as a miss, and a database that does not
answer is not a miss.  ``IntegrityError``, ``OperationalError`` and the rest of
SQLAlchemy's ``DBAPIError`` family propagate unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, or_, select, tuple_
from sqlalchemy.orm import Mapper, Session, scoped_session, with_polymorphic
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.orm.state import InstanceState

from sa_stockpyle.errors import (
    ConfigurationError,
    InvalidKeyValueError,
    NonUniqueKeyError,
    NotStorableError,
)
from sa_stockpyle.keys import KeySpec, is_null, key_spec
from sa_stockpyle.listeners import Listeners
from sa_stockpyle.mapped import mapped
from sa_stockpyle.stores.base import BaseStore, Removal, Reservation
from sa_stockpyle.stores.freshness import cacheable, reading, track, written

__all__ = ["MAX_PARAMETERS", "SqlAlchemyStore"]

T = TypeVar("T")

#: The most bound parameters one ``batch_get`` statement carries; larger batches are split
#: into several statements.  Below PostgreSQL's 65,535 and SQLite's 32,766 (SQLite 3.32+).
MAX_PARAMETERS = 10_000

#: A declared key item and its values, e.g. ``(1, ("acme", 7))``.
Lookup = tuple[int, tuple[Any, ...]]


@dataclass(frozen=True)
class _Mapped:
    """How the store queries one mapped class."""

    mapper: Mapper[Any]
    #: What ``select()`` loads: the class, or all its subclasses' columns at once when it
    #: has subclasses, so a cached subclass instance is complete.
    entity: Any
    #: The declared item that is the primary key, or None when none is.
    primary_item: int | None
    #: Positions of that item's values in ``mapper.primary_key`` order.
    primary_order: tuple[int, ...]
    #: The entity's attributes of each declared item.
    columns: tuple[tuple[Any, ...], ...]


_MAPPED: dict[type, _Mapped] = {}


def _mapped(klass: type) -> _Mapped:
    """The query plan of ``klass``; NotStorableError when it is not a storable mapped class."""
    found = _MAPPED.get(klass)
    if found is not None:
        return found
    spec = key_spec(klass)
    facts = mapped(klass)
    if facts is None:
        raise NotStorableError(
            f"{klass.__qualname__} is not mapped by SQLAlchemy; SqlAlchemyStore stores "
            f"mapped classes ({spec.describe()})"
        )
    mapper = facts.mapper
    entity: Any = with_polymorphic(klass, "*") if len(mapper.self_and_descendants) > 1 else klass
    try:
        columns = tuple(tuple(getattr(entity, attr) for attr in item) for item in spec.items)
    except AttributeError as exc:
        raise NotStorableError(
            f"{klass.__qualname__} has no mapped attribute {exc.name!r}: {spec.describe()}"
        ) from exc
    primary = facts.primary_attrs
    primary_item = next(
        (index for index, item in enumerate(spec.items) if sorted(item) == sorted(primary)),
        None,
    )
    order = () if primary_item is None else tuple(map(spec.items[primary_item].index, primary))
    found = _Mapped(mapper, entity, primary_item, order, columns)
    _MAPPED[klass] = found
    return found


_ASYNC_ADVICE = (
    " (for an AsyncSession or AsyncEngine, use sa_stockpyle.asyncio.AsyncSqlAlchemyStore)"
)


class SqlAlchemyStore(BaseStore):
    """Mapped objects in a database, read and written through a SQLAlchemy ``Session``.

    Give exactly one of:

    * ``uri`` or ``engine``: the store owns one session (``expire_on_commit=False``, so
      objects stay usable) and commits after every operation.  Like any ``Session``, it
      is for one thread at a time; threaded applications pass a ``scoped_session``.
    * ``session``: a ``Session``, or a ``scoped_session`` resolved at each call.  Writes
      are flushed, never committed: the caller owns the transaction.

    Objects returned are persistent in the session, and the identity map's instance is
    returned whenever it holds the object.  ``batch_get`` is one ``SELECT`` (``IN`` or
    tuple-``IN``) for every key the identity map does not answer, split only past
    :data:`MAX_PARAMETERS` bound parameters.  Objects a faster layer found are attached
    by :meth:`adopt` without SQL.  The store does not create tables.

    Parameters:
        uri: a database URL, for :func:`sqlalchemy.create_engine`.
        engine: an :class:`~sqlalchemy.Engine`.
        session: a :class:`~sqlalchemy.orm.Session` or :class:`~sqlalchemy.orm.scoped_session`.
    """

    def __init__(
        self,
        uri: str | None = None,
        engine: Engine | None = None,
        session: Session | scoped_session[Session] | None = None,
    ) -> None:
        super().__init__()
        arguments = {"uri": uri, "engine": engine, "session": session}
        given = [name for name, value in arguments.items() if value is not None]
        if len(given) != 1:
            raise ConfigurationError(
                f"SqlAlchemyStore takes exactly one of uri=, engine= or session=; got "
                f"{', '.join(given) or 'none'}"
            )
        self._current: Callable[[], Session]
        self._listeners = Listeners()
        if session is not None:
            self._current, listened = self._session_of(session)
            track(self._listeners, listened)
            self.engine: Engine | None = None
            self.owned = False
        else:
            if engine is None:
                engine = create_engine(uri)  # type: ignore[arg-type]  # one of them is set
            engine = self._engine_of(engine)
            self._current, self._open = self._own_sessions(engine)
            self.engine = engine
            self.owned = True
        self._disposes = uri is not None

    def _session_of(self, session: object) -> tuple[Callable[[], Session], Any]:
        """The function returning the session a call works in, and what to listen on."""
        if isinstance(session, scoped_session):
            return session, session
        if isinstance(session, Session):
            return (lambda: session), session
        raise ConfigurationError(
            f"SqlAlchemyStore(session=...) expects a Session or a scoped_session, got "
            f"{type(session).__qualname__}{_ASYNC_ADVICE}"
        )

    def _own_sessions(
        self, engine: Engine
    ) -> tuple[Callable[[], Session], Callable[[], Iterable[Session]]]:
        """The store's own sessions on ``engine``: the function returning the one a call
        works in, and the one returning those open.  Here one session, for one thread at
        a time."""
        owned = Session(engine, expire_on_commit=False)
        track(self._listeners, owned)
        return (lambda: owned), (lambda: (owned,))

    def _engine_of(self, engine: object) -> Engine:
        """``engine``, checked."""
        if not isinstance(engine, Engine):
            raise ConfigurationError(
                f"SqlAlchemyStore(engine=...) expects an Engine, got "
                f"{type(engine).__qualname__}{_ASYNC_ADVICE}"
            )
        return engine

    @property
    def session(self) -> Session:
        """The session this call works in (for a ``scoped_session``, the current one)."""
        return self._current()

    @contextmanager
    def _work(self, write: bool) -> Iterator[Session]:
        # A borrowed session's transaction belongs to the caller: writes are flushed so
        # the database assigns keys and checks constraints now.  An owned session commits
        # after every operation, reads included, so no connection idles in a transaction.
        session = self._current()
        if not self.owned:
            yield session
            if write:
                session.flush()
            return
        try:
            yield session
            self._commit(session, write)
        except BaseException:
            session.rollback()
            raise

    def _commit(self, session: Session, write: bool) -> None:
        """Commit the store's own ``session`` after an operation (``write``: one that
        wrote)."""
        session.commit()

    # -- reads ------------------------------------------------------------------------

    def get(self, klass: type[T], key: object) -> T | None:
        """Return the ``klass`` object with ``key``: from the identity map, else one SELECT."""
        return self.batch_get(klass, (key,))[0]

    def batch_get(self, klass: type[T], keys: Iterable[object]) -> list[T | None]:
        """One object or None per key, in order, with one SELECT for what the identity map
        does not hold; NonUniqueKeyError when a key matches several rows."""
        mapped = _mapped(klass)
        spec = key_spec(klass)
        lookups = [_hashable(spec, *spec.lookup(key)) for key in keys]
        with self._work(write=False) as session:
            return self._load(session, klass, mapped, spec, lookups)

    def _load(
        self,
        session: Session,
        klass: type[T],
        mapped: _Mapped,
        spec: KeySpec,
        lookups: Sequence[Lookup],
    ) -> list[T | None]:
        results: list[T | None] = [None] * len(lookups)
        wanted: dict[Lookup, list[int]] = {}
        refreshing: list[InstanceState[Any]] = []
        for position, lookup in enumerate(lookups):
            index, values = lookup
            if is_null(values):
                continue
            if index == mapped.primary_item:
                obj = _from_identity_map(session, mapped, values)
                if isinstance(obj, klass):
                    state = instance_state(obj)
                    if not state.expired:
                        results[position] = obj
                        continue
                    # Like Session.get: an expired instance is left to the SELECT,
                    # which refreshes it.
                    refreshing.append(state)
            wanted.setdefault(lookup, []).append(position)
        if any(index != mapped.primary_item for index, _ in wanted):
            # The SELECT may refresh an expired instance it finds by another key: which
            # one only its row tells, so every wholly expired instance of the class is
            # noted (a scan of the identity map, cheaper than the round trip it precedes).
            refreshing += [
                state
                for state in session.identity_map.all_states()
                if state.expired and issubclass(state.class_, klass)
            ]
        selected = self._select(session, mapped, spec, list(wanted), refreshing)
        for lookup, obj in selected.items():
            for position in wanted[lookup]:
                results[position] = obj
        return results

    def _select(
        self,
        session: Session,
        mapped: _Mapped,
        spec: KeySpec,
        lookups: list[Lookup],
        refreshing: list[InstanceState[Any]],
    ) -> dict[Lookup, Any]:
        """Load the rows of ``lookups``: one statement per MAX_PARAMETERS bound values,
        stamping what each read (see :func:`~sa_stockpyle.stores.freshness.reading`)."""
        found: dict[Lookup, Any] = {}
        asked = set(lookups)
        for chunk in _chunks(lookups):
            by_item: dict[int, list[tuple[Any, ...]]] = {}
            for index, values in chunk:
                by_item.setdefault(index, []).append(values)
            conditions = [
                mapped.columns[index][0].in_([values[0] for values in rows])
                if len(mapped.columns[index]) == 1
                else tuple_(*mapped.columns[index]).in_(rows)
                for index, rows in by_item.items()
            ]
            statement = select(mapped.entity).where(or_(*conditions))
            stamp = reading(refreshing)
            for obj in session.scalars(statement).unique():
                stamp(obj)
                for index in by_item:
                    lookup = (index, spec.values_of(obj, index))
                    if lookup in asked and found.setdefault(lookup, obj) is not obj:
                        raise NonUniqueKeyError(
                            f"{dict(zip(spec.items[index], lookup[1], strict=True))!r} "
                            f"matches more than one row: {spec.describe()}"
                        )
        return found

    # -- writes -----------------------------------------------------------------------

    def put(self, obj: object) -> None:
        """Add ``obj`` to the session and flush (the owned session commits)."""
        self.batch_put((obj,))

    def batch_put(self, objs: Iterable[object]) -> None:
        """Add every object of ``objs`` to the session and flush once (owned: commit)."""
        objs = list(objs)
        for obj in objs:  # bad input raises here, before the session changes
            _mapped(type(obj))
        with self._work(write=True) as session:
            session.add_all(objs)

    def delete(self, obj: object) -> None:
        """Delete ``obj``'s row; deleting an absent object is not an error."""
        self.batch_delete((obj,))

    def batch_delete(self, objs: Iterable[object]) -> None:
        """Delete the rows of ``objs`` and flush once (owned: commit).

        A detached object (from a cache, or another session) is found by its primary
        declared key, with one SELECT per class for those the identity map lacks; a
        pending one is expunged, which cancels its insert.
        """
        objs = list(objs)
        for obj in objs:
            _mapped(type(obj))
        with self._work(write=True) as session:
            elsewhere: dict[type, list[Lookup]] = {}
            for obj in objs:
                state = instance_state(obj)
                if state.pending and obj in session:
                    session.expunge(obj)
                elif obj in session:
                    session.delete(obj)
                else:
                    spec = key_spec(type(obj))
                    elsewhere.setdefault(type(obj), []).append(
                        _hashable(spec, 0, spec.values_of(obj, 0))
                    )
            for klass, lookups in elsewhere.items():
                found: list[Any] = self._load(
                    session, klass, _mapped(klass), key_spec(klass), lookups
                )
                for row in found:
                    if row is not None:
                        session.delete(row)

    # -- chains -----------------------------------------------------------------------

    def adopt(self, klass: type[T], objs: list[T]) -> list[T]:
        """Attach objects a faster layer found to the session, without SQL.

        An identity the identity map already holds answers with that instance, which the
        cached state does not overwrite.  An unmodified detached instance (what caching
        layers restore) is attached as the ORM's own loader attaches a row it read: it
        enters the identity map as persistent and ``loaded_as_persistent`` fires, without
        beginning a transaction (the first SQL it needs, a lazy load, begins one).  Any
        other detached instance goes through ``Session.add``, an instance of another
        session through ``Session.merge(load=False)``; one without a primary key is
        returned as it is.  The cached state of a row this session's open transaction has
        written is refused (None), so the chain reads that row from the database.
        """
        session = self._current()
        identity_map = session.identity_map
        held, attach = identity_map.get, identity_map._add_unpresent
        session_id = session.hash_key
        flushed = written(session)
        loaded = session.dispatch.loaded_as_persistent
        adopted: list[Any] = []
        for obj in objs:
            state = instance_state(obj)
            key = state.key
            if key is None:  # no database identity: nothing to attach it to
                adopted.append(obj)
                continue
            present = held(key)
            if present is not None:
                adopted.append(present)
            elif key in flushed:
                adopted.append(None)
            elif (
                # A state no session ever held is detached (it has a key), and asking
                # is one attribute read instead of two of SQLAlchemy's Python properties.
                (state.session_id is None or state.detached)
                and not state.modified
                and not state.was_deleted
            ):
                # What loading._instance does with a new row; Session.add() would also
                # begin a transaction and walk the save-update cascade (relationships are
                # never cached), which cost more than the rest of a memory-layer hit.
                state.session_id = session_id
                attach(state, key)
                if loaded:
                    loaded(session, state)
                adopted.append(obj)
            elif state.detached:
                session.add(obj)
                adopted.append(obj)
            else:
                adopted.append(session.merge(obj, load=False))
        return adopted

    def cacheable(self, obj: object, since: float | None = None) -> bool:
        """False while ``obj`` holds state its transaction has not committed, or, with
        ``since``, state read from the database before ``since``.

        Uncommitted: pending, modified, marked for deletion or deleted, a row written by a
        flush of the session's open transaction (savepoints included), any row read in a
        caller's transaction that holds writes the database has not committed (a session
        joined to it committed them, see :mod:`sa_stockpyle.connections`), or with expired
        column attributes (its committed state is not known).  Read before ``since``:
        anything this store's own SELECT did not read in full after ``since`` (an object
        the identity map already held, which a SELECT does not overwrite, or one the
        application loaded itself); or any object of a transaction that reads one
        snapshot (REPEATABLE READ, SERIALIZABLE) and began before ``since``.  A commit
        may have changed such rows since.
        """
        return cacheable(obj, since)

    def reserve(self, klass: type, keys: Sequence[object]) -> Reservation:
        """Grant nothing: the system of record is never filled from a cache."""
        keys = list(keys)
        return Reservation(klass, keys, [False] * len(keys), [False] * len(keys))

    def write_committed(self, puts: Sequence[object], removals: Sequence[Removal]) -> None:
        """Nothing to do: the database is the system of record and holds the commit."""

    def invalidate_class(self, klass: type) -> None:
        """Nothing to do: the database is the system of record."""

    def close(self) -> None:
        """Close the owned session, remove the store's session listeners (and dispose of
        an engine made from ``uri``)."""
        if self.owned:
            for session in list(self._open()):
                session.close()
        self._listeners.remove()
        if self._disposes and self.engine is not None:
            self.engine.dispose()

    def __repr__(self) -> str:
        bound = self.engine.url.render_as_string() if self.engine is not None else "session"
        return f"<SqlAlchemyStore {bound}>"


def _hashable(spec: KeySpec, index: int, values: tuple[Any, ...]) -> Lookup:
    """``(index, values)``, once it is known that ``values`` can be a key."""
    try:
        hash(values)
    except TypeError:
        raise InvalidKeyValueError(
            f"{values!r} cannot be part of a key (unhashable): {spec.describe()}"
        ) from None
    return index, values


def _from_identity_map(session: Session, mapped: _Mapped, values: tuple[Any, ...]) -> Any:
    """The identity map's instance with primary key ``values``, or None."""
    key = mapped.mapper.identity_key_from_primary_key(
        tuple([values[i] for i in mapped.primary_order])
    )
    return session.identity_map.get(key)


def _chunks(lookups: list[Lookup]) -> Iterator[list[Lookup]]:
    """Split ``lookups`` into runs of at most MAX_PARAMETERS bound values."""
    chunk: list[Lookup] = []
    size = 0
    for lookup in lookups:
        if chunk and size + len(lookup[1]) > MAX_PARAMETERS:
            yield chunk
            chunk, size = [], 0
        chunk.append(lookup)
        size += len(lookup[1])
    if chunk:
        yield chunk
