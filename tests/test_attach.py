"""attach(): write-through at commit, nothing before it, savepoints, bulk statements, targets.

Every test asserts on each caching layer directly, not only through the chain.
"""

from __future__ import annotations

import datetime as dt
import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import (
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    String,
    create_engine,
    delete,
    event,
    func,
    insert,
    update,
)
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    scoped_session,
    sessionmaker,
)

from sa_stockpyle import attach
from sa_stockpyle.codec import Marker
from sa_stockpyle.errors import ConfigurationError, StoreUnavailable
from sa_stockpyle.orm import Attachment
from sa_stockpyle.stores import (
    BaseDictionaryStore,
    BaseKeyValueStore,
    ChainedStore,
    MemcacheStore,
    ProcessMemoryStore,
    RedisStore,
    SqlAlchemyStore,
)
from tests.attached import typed_columns
from tests.helpers import Statements


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "attach_accounts"
    __stockpyle_keys__ = ["id", "email", ("tenant", "handle")]

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str | None] = mapped_column(String(100), unique=True)
    tenant: Mapped[str] = mapped_column(String(20), default="acme")
    handle: Mapped[str] = mapped_column(String(20))
    balance: Mapped[int] = mapped_column(Integer, default=0)
    touched: Mapped[int] = mapped_column(Integer, default=0, onupdate=lambda: 7)


class Ledger(Base):
    """A class whose commits are ordered by a version counter: written through."""

    __tablename__ = "attach_ledgers"
    __stockpyle_keys__ = ["id", "code"]

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(20), unique=True)
    balance: Mapped[int] = mapped_column(Integer, default=0)
    touched: Mapped[int] = mapped_column(Integer, default=0, onupdate=lambda: 7)
    version: Mapped[int] = mapped_column(Integer)
    __mapper_args__ = {"version_id_col": version}


class Stamped(Base):
    """Columns whose committed values only the database knows after a flush."""

    __tablename__ = "attach_stamped"
    __stockpyle_keys__ = ["id"]

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(20))
    created: Mapped[dt.datetime] = mapped_column(DateTime, server_default=func.now())
    changed: Mapped[dt.datetime | None] = mapped_column(DateTime, onupdate=func.now())


class Blank(Base):
    """A row that may be added with nothing set: a generated key, every column optional."""

    __tablename__ = "attach_blanks"
    __stockpyle_keys__ = ["id"]

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    note: Mapped[str | None] = mapped_column(String(20))


class Untracked(Base):
    __tablename__ = "attach_untracked"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)


class Owner(Base):
    """Changed through its relationship alone when a pet is added."""

    __tablename__ = "attach_owners"
    __stockpyle_keys__ = ["id"]

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(20))
    pets: Mapped[list[Pet]] = relationship(back_populates="owner")


class Pet(Base):
    __tablename__ = "attach_pets"
    __stockpyle_keys__ = ["id"]

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("attach_owners.id"))
    owner: Mapped[Owner] = relationship(back_populates="pets")


class Layers:
    """A memory layer, a Redis layer and the database, chained."""

    def __init__(self, engine: Engine, redis_url: str) -> None:
        self.memory = ProcessMemoryStore()
        self.shared = RedisStore(url=redis_url)
        self.database = SqlAlchemyStore(engine=engine)
        self.chain = ChainedStore([self.memory, self.shared, self.database])

    @property
    def caches(self) -> list[BaseKeyValueStore]:
        return [self.memory, self.shared]

    def cached(self, klass: type, key: object) -> list[Any]:
        """What each caching layer holds for ``key``."""
        return [layer.get(klass, key) for layer in self.caches]

    def entries(self) -> list[str]:
        """The cache keys at which Redis holds a record (not a tombstone or a lease)."""
        client = self.shared.client
        keys = [key.decode() for key in client.keys("*")]
        return [
            key
            for key in keys
            if ":gen:" not in key and client.get(key)[:4] not in (b"SPKT", b"SPKL")
        ]

    def memory_entries(self) -> list[str]:
        """The cache keys at which the memory layer holds an entry or a pointer."""
        return [
            key for key, held in self.memory.dictionary.items() if not isinstance(held, Marker)
        ]

    def seed(self, *objs: object) -> None:
        """Put stale copies of objects straight into the caches."""
        for layer in self.caches:
            layer.batch_put(objs)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Engine]:
    if request.param == "sqlite":
        engine = create_engine(f"sqlite:///{tmp_path}/attach.db")
    else:
        engine = create_engine(request.getfixturevalue("postgres_url"))
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    yield engine
    Base.metadata.drop_all(engine)
    engine.dispose()


@pytest.fixture
def layers(engine: Engine, redis_url: str) -> Iterator[Layers]:
    layers = Layers(engine, redis_url)
    yield layers
    layers.chain.close()


@pytest.fixture
def factory(engine: Engine, layers: Layers) -> Iterator[sessionmaker[Session]]:
    factory = sessionmaker(engine)
    handle = attach(factory, layers.chain)
    yield factory
    handle.detach()


def _account(id: int = 1, **values: Any) -> Account:
    values.setdefault("email", f"a{id}@example.com")
    values.setdefault("handle", f"h{id}")
    return Account(id=id, **values)


def _assert_holds(layers: Layers, klass: type = Account, **expected: Any) -> None:
    for got in layers.cached(klass, expected["id"]):
        assert got is not None
        for name, value in expected.items():
            assert getattr(got, name) == value, name


def _assert_refills(layers: Layers, klass: type = Account, **expected: Any) -> None:
    """Every caching layer misses ``expected["id"]``; a read through the chain returns the
    committed state and fills them with it."""
    assert layers.cached(klass, expected["id"]) == [None, None]
    with Session(layers.database.engine) as session:
        # The same process as layers.chain: one broadcast for its memory layer is enough.
        chain = ChainedStore(
            [layers.memory, layers.shared, SqlAlchemyStore(session=session)], broadcast=False
        )
        got = chain.get(klass, expected["id"])
        assert got is not None
        for name, value in expected.items():
            assert getattr(got, name) == value, name
    _assert_holds(layers, klass, **expected)


# -- the basic cycle ----------------------------------------------------------------------


def test_insert_is_written_at_commit_not_before(
    factory: sessionmaker[Session], layers: Layers
) -> None:
    with factory() as session:
        session.add(_account(1, balance=10))
        session.flush()
        assert layers.cached(Account, 1) == [None, None]
        session.commit()
    _assert_holds(layers, id=1, balance=10, email="a1@example.com")
    for layer in layers.caches:
        assert layer.get(Account, {"email": "a1@example.com"}).id == 1
        assert layer.get(Account, {"tenant": "acme", "handle": "h1"}).id == 1


def test_rollback_writes_nothing(factory: sessionmaker[Session], layers: Layers) -> None:
    with factory() as session:
        session.add(_account(1))
        session.flush()
        session.rollback()
    assert layers.cached(Account, 1) == [None, None]


def test_close_without_commit_writes_nothing(
    factory: sessionmaker[Session], layers: Layers
) -> None:
    session = factory()
    session.add(_account(1))
    session.flush()
    session.close()
    assert layers.cached(Account, 1) == [None, None]
    with factory() as session:
        session.add(_account(2))
        session.commit()
    assert layers.cached(Account, 1) == [None, None]
    _assert_holds(layers, id=2)


def test_update_without_a_version_invalidates(
    factory: sessionmaker[Session], layers: Layers
) -> None:
    with factory() as session:
        session.add(_account(1, balance=1))
        session.commit()
    with factory() as session:
        account = session.get(Account, 1)
        assert account is not None
        account.balance = 2
        session.flush()
        _assert_holds(layers, id=1, balance=1)
        account.balance = 3
        session.commit()
    _assert_refills(layers, id=1, balance=3, touched=7)


def test_update_with_a_version_writes_the_committed_state(
    factory: sessionmaker[Session], layers: Layers
) -> None:
    with factory() as session:
        session.add(Ledger(id=1, code="L1", balance=1))
        session.commit()
    _assert_holds(layers, Ledger, id=1, balance=1, version=1)
    with factory() as session:
        ledger = session.get(Ledger, 1)
        assert ledger is not None
        ledger.balance = 2
        session.flush()
        _assert_holds(layers, Ledger, id=1, balance=1, version=1)
        ledger.balance = 3
        session.commit()
    _assert_holds(layers, Ledger, id=1, balance=3, touched=7, version=3)  # two flushes
    for layer in layers.caches:
        assert layer.get(Ledger, {"code": "L1"}).balance == 3


def test_moved_alternate_keys_stop_answering(
    factory: sessionmaker[Session], layers: Layers
) -> None:
    with factory() as session:
        session.add(_account(1))
        session.commit()
    with factory() as session:
        account = session.get(Account, 1)
        assert account is not None
        account.email = "new@example.com"
        account.handle = "renamed"
        session.commit()
    # The commit removed the old keys, not merely left them dangling: checked before any
    # lookup, which would remove a dangling pointer itself.
    for entries in (layers.entries(), layers.memory_entries()):
        assert not any("a1@example.com" in key or key.endswith(",sh1") for key in entries), entries
    for layer in layers.caches:
        assert layer.get(Account, {"email": "a1@example.com"}) is None
        assert layer.get(Account, {"tenant": "acme", "handle": "h1"}) is None
    assert layers.chain.get(Account, {"email": "a1@example.com"}) is None
    assert layers.chain.get(Account, {"email": "new@example.com"}).id == 1
    for layer in layers.caches:
        assert layer.get(Account, {"email": "new@example.com"}).id == 1
        assert layer.get(Account, {"tenant": "acme", "handle": "renamed"}).id == 1


def test_moved_alternate_keys_of_a_versioned_class(
    factory: sessionmaker[Session], layers: Layers
) -> None:
    with factory() as session:
        session.add(Ledger(id=1, code="old"))
        session.commit()
    with factory() as session:
        ledger = session.get(Ledger, 1)
        assert ledger is not None
        ledger.code = "new"
        session.commit()
    for entries in (layers.entries(), layers.memory_entries()):  # before any lookup
        assert not any(key.endswith(":sold") for key in entries), entries
        assert any(key.endswith(":snew") for key in entries), entries
    for layer in layers.caches:
        assert layer.get(Ledger, {"code": "old"}) is None
        assert layer.get(Ledger, {"code": "new"}).version == 2


def test_delete_removes_every_key(factory: sessionmaker[Session], layers: Layers) -> None:
    with factory() as session:
        session.add_all([_account(1), _account(2), _account(3)])
        session.commit()
    with factory() as session:
        accounts = [session.get(Account, id) for id in (1, 2, 3)]
        for account in accounts:  # three in one flush: each is removed
            session.delete(account)
        session.flush()
        _assert_holds(layers, id=1)
        session.commit()
    for id in (1, 2, 3):
        assert layers.cached(Account, id) == [None, None]
        assert layers.chain.get(Account, id) is None
    assert layers.entries() == []


def test_insert_then_delete_in_one_transaction(
    factory: sessionmaker[Session], layers: Layers
) -> None:
    layers.seed(_account(1, balance=99))
    with factory() as session:
        account = _account(1)
        session.add(account)
        session.flush()
        session.delete(account)
        session.commit()
    assert layers.cached(Account, 1) == [None, None]


# -- savepoints -----------------------------------------------------------------------------


def test_released_savepoint_is_written(factory: sessionmaker[Session], layers: Layers) -> None:
    with factory() as session:
        session.add(_account(1))
        with session.begin_nested():
            session.add(_account(2))
        session.commit()
    _assert_holds(layers, id=1)
    _assert_holds(layers, id=2)


def test_rolled_back_savepoint_discards_exactly_its_changes(
    factory: sessionmaker[Session], layers: Layers
) -> None:
    with factory() as session:
        session.add(_account(1, balance=1))
        session.add(_account(3))
        session.commit()
    with factory() as session:
        first = session.get(Account, 1)
        assert first is not None
        first.balance = 10  # before the savepoint: kept
        session.flush()
        savepoint = session.begin_nested()
        session.add(_account(2))
        first.balance = 20
        session.delete(session.get(Account, 3))
        session.flush()
        savepoint.rollback()
        session.commit()
    assert layers.cached(Account, 2) == [None, None]
    _assert_holds(layers, id=3)
    _assert_refills(layers, id=1, balance=10)


def test_nested_savepoints(factory: sessionmaker[Session], layers: Layers) -> None:
    with factory() as session:
        outer = session.begin_nested()
        session.add(_account(1))
        inner = session.begin_nested()
        session.add(_account(2))
        inner.commit()  # released into the outer savepoint...
        outer.rollback()  # ...which rolls back, taking it along
        third = session.begin_nested()
        session.add(_account(3))
        innermost = session.begin_nested()
        session.add(_account(4))
        innermost.rollback()
        third.commit()
        session.commit()
    assert layers.cached(Account, 1) == [None, None]
    assert layers.cached(Account, 2) == [None, None]
    _assert_holds(layers, id=3)
    assert layers.cached(Account, 4) == [None, None]


def test_commit_with_open_savepoints_writes_them(
    factory: sessionmaker[Session], layers: Layers
) -> None:
    with factory() as session:
        session.begin_nested()
        session.add(_account(1))
        session.begin_nested()
        session.add(_account(2))
        session.commit()
    _assert_holds(layers, id=1)
    _assert_holds(layers, id=2)


# -- state only the database knows ----------------------------------------------------------


def test_server_defaults_invalidate_instead_of_writing(
    factory: sessionmaker[Session], layers: Layers
) -> None:
    layers.seed(Stamped(id=1, name="stale", created=dt.datetime(2000, 1, 1), changed=None))
    with factory() as session:
        session.add(Stamped(id=1, name="fresh"))
        session.commit()
    assert layers.cached(Stamped, 1) == [None, None]
    fresh = layers.chain.get(Stamped, 1)
    assert fresh is not None
    assert fresh.name == "fresh"
    assert fresh.created is not None
    assert layers.memory.get(Stamped, 1).name == "fresh"  # filled from the database


def test_sql_side_onupdate_invalidates(factory: sessionmaker[Session], layers: Layers) -> None:
    with factory() as session:
        session.add(Stamped(id=1, name="first"))
        session.commit()
        stamped = session.get(Stamped, 1)
        assert stamped is not None
        session.refresh(stamped)
        stale = Stamped(id=1, name="first", created=stamped.created, changed=None)
    layers.seed(stale)
    with factory() as session:
        stamped = session.get(Stamped, 1)
        assert stamped is not None
        stamped.name = "second"
        session.commit()
    assert layers.cached(Stamped, 1) == [None, None]
    fresh = layers.chain.get(Stamped, 1)
    assert fresh is not None
    assert fresh.name == "second"
    assert fresh.changed is not None


def test_sql_expression_values_invalidate(factory: sessionmaker[Session], layers: Layers) -> None:
    with factory() as session:
        session.add(_account(1))
        session.commit()
    _assert_holds(layers, id=1, balance=0)
    with factory() as session:
        account = session.get(Account, 1)
        assert account is not None
        account.balance = Account.balance + 5  # evaluated by the database
        session.commit()
    # Where the dialect returns the new value (RETURNING) it is known and written;
    # otherwise the attribute is expired after the flush and the entry is removed.
    assert all(got is None or got.balance == 5 for got in layers.cached(Account, 1))
    assert layers.chain.get(Account, 1).balance == 5
    _assert_holds(layers, id=1, balance=5)


def test_python_side_onupdate_is_written(factory: sessionmaker[Session], layers: Layers) -> None:
    with factory() as session:
        session.add(Ledger(id=1, code="L1"))
        session.commit()
    with factory() as session:
        ledger = session.get(Ledger, 1)
        assert ledger is not None
        ledger.balance = 5
        session.commit()
    _assert_holds(layers, Ledger, id=1, balance=5, touched=7, version=2)


# -- bulk statements ------------------------------------------------------------------------


def _three(factory: sessionmaker[Session]) -> None:
    with factory() as session:
        session.add_all([_account(1, balance=1), _account(2, balance=2), _account(3, balance=3)])
        session.commit()


def test_bulk_update_invalidates_the_rows_it_returns(
    factory: sessionmaker[Session], layers: Layers
) -> None:
    _three(factory)
    with factory() as session:
        result = session.execute(update(Account).where(Account.balance >= 2).values(balance=0))
        assert result.rowcount == 2
        _assert_holds(layers, id=2, balance=2)  # not before the commit
        session.commit()
    assert layers.cached(Account, 2) == [None, None]
    assert layers.cached(Account, 3) == [None, None]
    _assert_holds(layers, id=1, balance=1)
    assert layers.chain.get(Account, 3).balance == 0


def test_bulk_delete_invalidates_the_rows_it_returns(
    factory: sessionmaker[Session], layers: Layers
) -> None:
    _three(factory)
    with factory() as session:
        session.execute(delete(Account).where(Account.id == 2))
        session.commit()
    assert layers.cached(Account, 2) == [None, None]
    assert layers.chain.get(Account, 2) is None
    _assert_holds(layers, id=1)


def test_bulk_statements_without_returning_invalidate_the_class(
    engine: Engine, layers: Layers
) -> None:
    factory = sessionmaker(engine)
    handle = attach(factory, layers.chain, use_returning=False)
    table = Account.__table__
    try:
        _three(factory)
        with factory() as session:
            session.execute(update(Account).where(Account.id == 2).values(balance=50))
            session.commit()
        for key in (1, 2, 3):
            assert layers.cached(Account, key) == [None, None]
        assert handle.stats.count(Account, "class_invalidations") == 1
        for key in (1, 3):
            layers.chain.get(Account, key)  # cached again
        with factory() as session:  # a table statement on the session's connection too
            session.connection().execute(
                update(table).where(table.c.balance == 3).values(balance=30)
            )
            session.commit()
        assert layers.cached(Account, 1) == [None, None]
        assert handle.stats.count(Account, "class_invalidations") == 2
        assert layers.chain.get(Account, 2).balance == 50
        _assert_holds(layers, id=2, balance=50)  # the class is cached again afterwards
    finally:
        handle.detach()


def test_a_dialect_returning_from_delete_only_is_asked_for_what_it_can_return(
    engine: Engine, layers: Layers, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As MariaDB: DELETE ... RETURNING, but no UPDATE ... RETURNING.
    monkeypatch.setattr(engine.dialect, "update_returning", False)
    factory = sessionmaker(engine)
    handle = attach(factory, layers.chain)
    try:
        _three(factory)
        with factory() as session:
            session.execute(delete(Account).where(Account.balance == 3))
            session.commit()
        assert layers.cached(Account, 3) == [None, None]
        _assert_holds(layers, id=1, balance=1)  # by the key returned: the rest stays
        assert handle.stats.count(Account, "class_invalidations") == 0
        with factory() as session:
            session.execute(update(Account).where(Account.balance == 2).values(balance=20))
            session.commit()
        for key in (1, 2):  # nothing returned: the whole class goes
            assert layers.cached(Account, key) == [None, None]
        assert handle.stats.count(Account, "class_invalidations") == 1
        assert layers.chain.get(Account, 2).balance == 20
    finally:
        handle.detach()


def test_a_session_bound_per_class_is_tracked_through_its_classs_engine(
    engine: Engine, layers: Layers
) -> None:
    factory = sessionmaker(binds={Account: engine})  # no default bind
    handle = attach(factory, layers.chain)
    try:
        _three(factory)
        with factory() as session:
            session.execute(update(Account).where(Account.balance == 2).values(balance=20))
            session.get(Account, 3).balance = 30
            session.commit()
        assert layers.cached(Account, 2) == [None, None]
        _assert_holds(layers, id=1, balance=1)  # by the key returned: the rest stays
        assert layers.chain.get(Account, 2).balance == 20
        assert layers.chain.get(Account, 3).balance == 30
    finally:
        handle.detach()


def test_a_table_statement_after_an_orm_statement_in_one_session_is_tracked(
    factory: sessionmaker[Session], layers: Layers
) -> None:
    # The ORM statement's own Core execution is recorded once, by the ORM hook; the
    # session's next statement on its connection is the Core hook's again.
    _three(factory)
    table = Account.__table__
    with factory() as session:
        session.execute(delete(Account).where(Account.id == 2))
        session.connection().execute(update(table).where(table.c.id == 3).values(balance=30))
        session.commit()
    assert layers.cached(Account, 2) == [None, None]
    assert layers.cached(Account, 3) == [None, None]
    _assert_holds(layers, id=1, balance=1)
    assert layers.chain.get(Account, 3).balance == 30


@pytest.mark.parametrize("klass", [Account, Ledger])
def test_a_row_added_then_deleted_in_one_transaction_leaves_nothing_cached(
    factory: sessionmaker[Session], layers: Layers, klass: type
) -> None:
    values = {"code": "L7", "balance": 7} if klass is Ledger else {"handle": "h7"}
    with factory() as session:
        obj = klass(id=7, **values)
        session.add(obj)
        session.flush()  # its put is recorded here
        session.delete(obj)
        session.flush()  # and its removal here
        session.commit()
    assert layers.cached(klass, 7) == [None, None]
    assert layers.chain.get(klass, 7) is None


def test_an_application_listener_that_executes_orm_statements_keeps_its_place(
    engine: Engine, layers: Layers
) -> None:
    # An application's do_orm_execute listener, added before attach(), that executes
    # UPDATEs itself (here: every one also adds 1000): the first listener to return a
    # result executes the statement, so it still does, and the write-through follows.
    factory = sessionmaker(engine)

    def also_adds(orm_state: Any) -> Any:
        if orm_state.is_update:
            statement = orm_state.statement.values(balance=Account.balance + 1000)
            return orm_state.invoke_statement(statement=statement)
        return None

    event.listen(factory, "do_orm_execute", also_adds)
    handle = attach(factory, layers.chain)
    try:
        _three(factory)
        with factory() as session:
            session.execute(update(Account).where(Account.id == 2).values(balance=20))
            session.commit()
        assert layers.chain.get(Account, 2).balance == 1002
        _assert_holds(layers, id=2, balance=1002)
    finally:
        handle.detach()
        event.remove(factory, "do_orm_execute", also_adds)


def test_bulk_rollback_invalidates_nothing(factory: sessionmaker[Session], layers: Layers) -> None:
    _three(factory)
    with factory() as session:
        session.execute(update(Account).values(balance=0))
        session.rollback()
    _assert_holds(layers, id=1, balance=1)


def test_orm_bulk_insert_and_update_by_primary_key(
    factory: sessionmaker[Session], layers: Layers
) -> None:
    _three(factory)
    layers.seed(_account(4, balance=44), _account(5, balance=55))
    statements = Statements(factory.kw["bind"])
    with factory() as session:
        session.execute(update(Account), [{"id": 1, "balance": 100}, {"id": 3, "balance": 300}])
        session.execute(insert(Account), [{"id": 4, "email": "d@example.com", "handle": "d"}])
        session.execute(insert(Account), {"id": 5, "email": "e@example.com", "handle": "e"})
        # New rows without their keys: nothing cached describes them.  (On SQLite:
        # PostgreSQL's sequence would give a key the explicit inserts took.)
        keyless = [{"email": "f@example.com", "handle": "f"}]
        if session.get_bind().dialect.name == "sqlite":
            session.execute(insert(Account), keyless)
        session.commit()
    inserts = 3 if factory.kw["bind"].dialect.name == "sqlite" else 2
    assert [s for s in statements.kinds if s in ("UPDATE", "INSERT")] == [
        "UPDATE",
        *["INSERT"] * inserts,
    ]
    for key in (1, 3, 4, 5):
        assert layers.cached(Account, key) == [None, None]
    _assert_holds(layers, id=2, balance=2)
    assert layers.chain.get(Account, 3).balance == 300
    assert layers.chain.get(Account, 1).balance == 100


def test_an_orm_bulk_insert_as_a_sessions_first_statement_removes_entries_at_its_keys(
    factory: sessionmaker[Session], layers: Layers
) -> None:
    layers.seed(_account(4, balance=44))  # left by a write nothing tracked
    with factory() as session:
        session.execute(insert(Account), [{"id": 4, "email": "d@example.com", "handle": "d"}])
        session.commit()
    assert layers.cached(Account, 4) == [None, None]
    assert layers.chain.get(Account, 4).balance == 0


def test_rows_with_nothing_but_their_key_are_tracked(
    factory: sessionmaker[Session], layers: Layers
) -> None:
    blank = Blank()  # nothing set: the database gives the key
    layers.seed(Blank(id=5, note="left by a write nothing tracked"))
    with factory() as session:
        session.add(blank)
        session.flush()
        session.execute(insert(Blank), [{"id": 5}])  # a bulk row of its key alone
        session.commit()
        key = blank.id
    # Its columns were never loaded: not written, and read from the database.
    assert layers.cached(Blank, key) == [None, None]
    assert layers.chain.get(Blank, key).note is None
    assert layers.cached(Blank, 5) == [None, None]
    assert layers.chain.get(Blank, 5).note is None


def test_an_orm_delete_with_one_mapping_removes_every_row_it_deletes(
    factory: sessionmaker[Session], layers: Layers
) -> None:
    # One dictionary is not a row to delete by its key: SQLAlchemy deletes every row the
    # statement's (absent) WHERE selects.
    _three(factory)
    with factory() as session:
        assert session.execute(delete(Account), {"id": 2}).rowcount == 3
        session.commit()
    for key in (1, 2, 3):
        assert layers.cached(Account, key) == [None, None]
        assert layers.chain.get(Account, key) is None


@pytest.mark.parametrize(
    "how",
    ["values", "one mapping", "core"],
)
def test_an_update_that_changes_a_primary_key_removes_the_old_entry(
    factory: sessionmaker[Session], layers: Layers, how: str
) -> None:
    # RETURNING names a row by its new key; the entry under its old key must go too.
    _three(factory)
    renamed = update(Account).where(Account.handle == "h1")
    with factory() as session:
        if how == "values":
            session.execute(renamed.values(id=9))
        elif how == "one mapping":  # one dictionary: the SET values, not a row by its key
            session.execute(renamed, {"id": 9})
        else:
            table = Account.__table__
            session.connection().execute(update(table).where(table.c.handle == "h1").values(id=9))
        session.commit()
    assert layers.cached(Account, 1) == [None, None]
    assert layers.chain.get(Account, 1) is None
    assert layers.chain.get(Account, 9).handle == "h1"


# -- targets --------------------------------------------------------------------------------


def _round_trip(make_session: Any, layers: Layers, id: int) -> None:
    session = make_session()
    session.add(_account(id))
    session.commit()
    session.close()


def test_every_kind_of_target(engine: Engine, layers: Layers) -> None:
    factory = sessionmaker(engine)
    scoped = scoped_session(sessionmaker(engine))

    class AppSession(Session):
        pass

    class RequestSession(AppSession):
        pass

    instance = Session(engine)
    targets: list[tuple[Any, Any]] = [
        (factory, factory),
        (scoped, scoped),
        (AppSession, lambda: AppSession(engine)),
        (AppSession, lambda: RequestSession(engine)),  # a subclass of the class attached
        (instance, lambda: instance),
        (engine, lambda: Session(engine)),
        (engine, lambda: RequestSession(engine)),  # any session class, on that engine
    ]
    for id, (target, make) in enumerate(targets, start=1):
        handle = attach(target, layers.chain)
        try:
            _round_trip(make, layers, id)
        finally:
            handle.detach()
        _assert_holds(layers, id=id)
    scoped.remove()


def test_engine_target_ignores_sessions_on_other_engines(
    engine: Engine, layers: Layers, tmp_path: Any
) -> None:
    other = create_engine(f"sqlite:///{tmp_path}/other.db")
    Base.metadata.create_all(other)
    handle = attach(engine, layers.chain)
    try:
        with Session(other) as session:
            session.add(_account(9))
            session.commit()
        # Bound to the attached engine, but accounts to the other: theirs are not tracked,
        # the ledgers are.
        with Session(bind=engine, binds={Account: other}) as session:
            session.add_all([_account(8), Ledger(id=8, code="L8", balance=8)])
            session.commit()
        with engine.connect() as connection, Session(bind=connection) as session:
            session.add(_account(7))  # bound to a connection of the attached engine
            session.commit()
    finally:
        handle.detach()
        other.dispose()
    assert layers.cached(Account, 9) == [None, None]
    assert layers.cached(Account, 8) == [None, None]
    _assert_holds(layers, Ledger, id=8, balance=8)
    _assert_holds(layers, id=7)


def test_two_chains_attached_to_one_factory_each_get_every_commit(
    engine: Engine, layers: Layers
) -> None:
    factory = sessionmaker(engine)
    other = ChainedStore([ProcessMemoryStore(), SqlAlchemyStore(engine=engine)])
    handles = [attach(factory, layers.chain), attach(factory, other)]
    try:
        _three(factory)
        for chain in (layers.chain, other):
            assert chain.get(Account, 1).balance == 1
        with factory() as session:
            session.get(Account, 1).balance = 10
            session.delete(session.get(Account, 2))
            session.commit()
        for chain in (layers.chain, other):
            assert chain.stores[0].get(Account, 1) is None
            assert chain.stores[0].get(Account, 2) is None
            assert chain.get(Account, 1).balance == 10
        assert [handle.stats.count(Account, "written") for handle in handles] == [3, 3]
    finally:
        for handle in handles:
            handle.detach()
        other.close()


def test_a_long_lived_session_keeps_nothing_of_its_ended_transactions(
    factory: sessionmaker[Session], layers: Layers
) -> None:
    with factory() as session:
        ended = []
        for id in (1, 2, 3):
            session.add(_account(id))
            session.flush()
            ended.append(weakref.ref(session.get_transaction()))  # type: ignore[arg-type]
            if id == 2:
                session.rollback()
            else:
                session.commit()
        gc.collect()
        assert [transaction() for transaction in ended] == [None, None, None]


def test_objects_of_classes_without_keys_leave_the_rest_of_a_flush_recorded(
    factory: sessionmaker[Session], layers: Layers
) -> None:
    with factory() as session:
        session.add(Untracked(id=1))  # first in the flush: nothing to record of it
        session.add(_account(9, balance=9))
        session.commit()
    _assert_holds(layers, id=9, balance=9)


def test_an_object_changed_only_through_a_relationship_keeps_its_entry(
    factory: sessionmaker[Session], layers: Layers
) -> None:
    with factory() as session:
        session.add_all([Owner(id=1, name="o"), *(_account(id) for id in range(1, 11))])
        session.commit()
    with factory() as session:
        owner = session.get(Owner, 1)
        accounts = [session.get(Account, id) for id in range(1, 11)]
        owner.pets.append(Pet(id=1))  # type: ignore[union-attr]
        for id, account in enumerate(accounts, start=1):  # flushed with it, in one flush
            account.balance = 100 + id  # type: ignore[union-attr]
        session.commit()
    _assert_holds(layers, Owner, id=1, name="o")  # no column of it changed
    _assert_holds(layers, Pet, id=1, owner_id=1)
    for id in range(1, 11):
        assert layers.cached(Account, id) == [None, None]
        assert layers.chain.get(Account, id).balance == 100 + id


def test_attaching_twice_is_harmless_and_detach_stops_everything(
    engine: Engine, layers: Layers
) -> None:
    factory = sessionmaker(engine)
    first = attach(factory, layers.chain)
    assert attach(factory, layers.chain) is first
    with factory() as session:
        session.add(_account(1))
        session.commit()
    assert first.stats.count(Account, "written") == 1
    first.detach()
    first.detach()
    with factory() as session:
        session.add(_account(2))
        session.commit()
    assert layers.cached(Account, 2) == [None, None]
    assert attach(factory, layers.chain) is not first


def test_unkeyed_classes_are_ignored(factory: sessionmaker[Session], layers: Layers) -> None:
    with factory() as session:
        session.add(Untracked(id=1))
        session.commit()
    assert layers.entries() == []


def test_bad_attach_calls() -> None:
    with pytest.raises(ConfigurationError, match="target"):
        attach(object(), ProcessMemoryStore())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="store"):
        attach(sessionmaker(), object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="unknown options"):
        attach(sessionmaker(), ProcessMemoryStore(), returning=True)


class _Down(BaseDictionaryStore):
    def __init__(self) -> None:
        super().__init__({})

    def write(self, items: Any) -> None:
        raise StoreUnavailable("down")

    def apply(self, ops: Any) -> list[Any]:
        raise StoreUnavailable("down")


def test_a_failing_layer_never_fails_the_commit(engine: Engine, layers: Layers) -> None:
    down = _Down()
    chain = ChainedStore([layers.memory, down, layers.database])
    factory = sessionmaker(engine)
    handle: Attachment = attach(factory, chain)
    try:
        with factory() as session:
            session.add(_account(1))
            session.commit()
        with Session(engine) as check:
            row = typed_columns(check.get(Account, 1))
        assert chain.layer_stats[1].count(Account, "errors") == 1
        assert typed_columns(layers.memory.get(Account, 1)) == row  # the layers still written
    finally:
        handle.detach()
        chain.close()  # and its catch-up retries, which would fail on for good


def test_the_seed_session_extension_example(
    engine: Engine, memcached_addresses: list[str]
) -> None:
    # stockpyle 0.0.7:
    #     mc_store = MemcacheStore(servers=["localhost:11711"])
    #     ext = StockpyleSessionExtension(store=mc_store)
    #     my_session = sessionmaker(extension=ext)
    mc_store = MemcacheStore(servers=memcached_addresses)
    my_session = sessionmaker(engine)
    handle = attach(my_session, mc_store)
    try:
        with my_session() as session:
            session.add(_account(1, balance=5))
            session.commit()
        assert mc_store.get(Account, 1).balance == 5
        with my_session() as session:
            account = session.get(Account, 1)
            assert account is not None
            account.balance = 6
            session.commit()
        # Kept in sync by removing the old state; the next read through a chain fills it.
        assert mc_store.get(Account, {"email": "a1@example.com"}) is None
        with my_session() as session:
            chain = ChainedStore([mc_store, SqlAlchemyStore(session=session)])
            assert chain.get(Account, 1).balance == 6
        assert mc_store.get(Account, {"email": "a1@example.com"}).balance == 6
        with my_session() as session:
            session.delete(session.get(Account, 1))
            session.commit()
        assert mc_store.get(Account, 1) is None
    finally:
        handle.detach()
        mc_store.close()


def test_an_unavailable_redis_never_fails_the_commit(
    engine: Engine, private_redis_server: Any
) -> None:
    memory = ProcessMemoryStore()
    redis_layer = RedisStore(url=private_redis_server.url)
    chain = ChainedStore([memory, redis_layer, SqlAlchemyStore(engine=engine)])
    factory = sessionmaker(engine)
    handle = attach(factory, chain)
    try:
        private_redis_server.kill()
        with factory() as session:
            session.add(_account(1))
            session.commit()
        with Session(engine) as check:
            row = typed_columns(check.get(Account, 1))
        assert chain.layer_stats[1].count(Account, "errors") >= 1
        assert typed_columns(memory.get(Account, 1)) == row  # the layers still written
    finally:
        handle.detach()
        chain.close()


# -- the order of changes within a transaction ----------------------------------------------


def test_a_bulk_update_after_a_flushed_change_wins(
    factory: sessionmaker[Session], layers: Layers
) -> None:
    _three(factory)
    with factory() as session:
        account = session.get(Account, 1)
        assert account is not None
        account.balance = 50
        session.flush()
        session.execute(update(Account).where(Account.id == 1).values(balance=70))
        session.commit()
    assert all(got is None or got.balance == 70 for got in layers.cached(Account, 1))
    assert layers.chain.get(Account, 1).balance == 70


def test_a_released_savepoint_bulk_delete_drops_an_earlier_put(
    factory: sessionmaker[Session], layers: Layers
) -> None:
    with factory() as session:
        session.add(_account(1))
        session.flush()
        with session.begin_nested():
            session.execute(delete(Account).where(Account.id == 1))
        session.commit()
    assert layers.cached(Account, 1) == [None, None]
    assert layers.chain.get(Account, 1) is None


def test_a_class_invalidation_drops_earlier_puts(engine: Engine, layers: Layers) -> None:
    factory = sessionmaker(engine)
    handle = attach(factory, layers.chain, use_returning=False)
    try:
        _three(factory)
        with factory() as session:
            account = session.get(Account, 1)
            assert account is not None
            account.balance = 50
            session.flush()
            with session.begin_nested():
                session.execute(update(Account).values(balance=0))
            session.add(_account(4, balance=4))  # after the bulk statement: written
            session.commit()
        assert layers.cached(Account, 1) == [None, None]
        _assert_holds(layers, id=4, balance=4)
        assert layers.chain.get(Account, 1).balance == 0
    finally:
        handle.detach()


# -- other listeners that fail ----------------------------------------------------------------


class _Refuse:
    """An application's flush listener that raises once when armed."""

    def __init__(self) -> None:
        self.armed = False

    def __call__(self, session: Session, *args: Any) -> None:
        if self.armed:
            self.armed = False
            raise RuntimeError("the application refuses this flush")


@pytest.mark.parametrize("event_name", ["after_flush", "after_flush_postexec"])
def test_a_flush_another_listener_fails_leaves_no_trace(
    factory: sessionmaker[Session], layers: Layers, event_name: str
) -> None:
    refuse = _Refuse()
    event.listen(factory, event_name, refuse)
    try:
        with factory() as session:
            session.add(_account(1, balance=1))
            session.commit()
            session.get(Account, 1).balance = 99  # never committed
            session.add(_account(2, balance=2))  # nor this
            refuse.armed = True
            with pytest.raises(RuntimeError, match="refuses"):
                session.flush()
            session.rollback()
            # The same session goes on: its next commit is written through as usual.
            session.add(_account(3, balance=3))
            session.commit()
    finally:
        event.remove(factory, event_name, refuse)
    with Session(layers.database.engine) as check:
        assert check.get(Account, 2) is None
        assert check.get(Account, 3).balance == 3
        assert check.get(Account, 1).balance == 1
    assert layers.cached(Account, 2) == [None, None]
    assert layers.cached(Account, {"email": "a2@example.com"}) == [None, None]
    _assert_holds(layers, id=1, balance=1)
    _assert_holds(layers, id=3, balance=3)
    with Session(layers.database.engine) as check:  # every column, with its type
        for ident in (1, 2, 3):
            row = check.get(Account, ident)
            expected = None if row is None else typed_columns(row)
            for held in layers.cached(Account, ident):
                assert held is None or typed_columns(held) == expected, ident


class _RefuseAtTheEnd(_Refuse):
    """Raises once when armed, at the session's own transaction end (not a flush's)."""

    def __call__(self, session: Session, *args: Any) -> None:
        if not args or args[0].parent is None:
            super().__call__(session)


@pytest.mark.parametrize("event_name", ["after_commit", "after_transaction_end"])
def test_a_listener_of_the_application_that_fails_at_commit_costs_no_write(
    engine: Engine, layers: Layers, event_name: str
) -> None:
    factory = sessionmaker(engine)
    refuse = _RefuseAtTheEnd()
    event.listen(factory, event_name, refuse)  # the application's, registered first
    handle = attach(factory, layers.chain)
    try:
        with factory() as session:
            session.add(Ledger(id=1, code="L1", balance=1))
            session.commit()
        _assert_holds(layers, Ledger, id=1, balance=1, version=1)
        with factory() as session:
            session.get(Ledger, 1).balance = 2
            refuse.armed = True
            with pytest.raises(RuntimeError, match="refuses"):
                session.commit()  # the database has committed; the listener then raised
    finally:
        handle.detach()
        event.remove(factory, event_name, refuse)
    with Session(engine) as check:
        row = check.get(Ledger, 1)
        assert (row.balance, row.version) == (2, 2)
        expected = typed_columns(row)
    for held in layers.cached(Ledger, 1):
        assert held is not None  # written through, as every versioned commit is
        assert typed_columns(held) == expected
