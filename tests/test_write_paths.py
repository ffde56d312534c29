"""Every way a session or an attached engine writes, and what the caches hold after it.

Each test primes the memory and the Redis layer with every row, writes one way, and then
compares every cached entry with the database, column by column (``assert_never_stale``),
at each step where another process could look: after ``session.commit()`` inside a
caller's transaction, after the caller's COMMIT or ROLLBACK, after a statement.  One test
per row of the write-path table in docs/orm.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Connection,
    Integer,
    String,
    bindparam,
    create_engine,
    delete,
    event,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sa_stockpyle import attach
from sa_stockpyle.stores import ChainedStore, SqlAlchemyStore
from tests.attached import Attached, attached


class Base(DeclarativeBase):
    pass


class Acct(Base):
    """Unversioned: updates are removed from the caches at commit."""

    __tablename__ = "paths_accts"
    __stockpyle_keys__ = ["id", "name"]

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(20), unique=True)
    balance: Mapped[int] = mapped_column(Integer)


class Ledger(Base):
    """Versioned: updates are written through."""

    __tablename__ = "paths_ledgers"
    __stockpyle_keys__ = ["id"]

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    balance: Mapped[int] = mapped_column(Integer)
    version: Mapped[int] = mapped_column(Integer)
    __mapper_args__ = {"version_id_col": version}


CLASSES: list[type] = [Acct, Ledger]
IDS = range(1, 6)


def _seeded(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Attached]:
    with attached(request, tmp_path, Base.metadata) as layers:
        with layers.factory() as session:
            for ident in IDS:
                session.add(Acct(id=ident, name=f"a{ident}", balance=10 * ident))
                session.add(Ledger(id=ident, balance=10 * ident))
            session.commit()
        yield layers


@pytest.fixture(params=["sqlite", "postgresql"])
def layers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Attached]:
    yield from _seeded(request, tmp_path)


@pytest.fixture(params=["postgresql"])
def pg_layers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Attached]:
    yield from _seeded(request, tmp_path)


def prime(layers: Attached) -> None:
    """Read every row through the caches, so each layer holds every one."""
    for klass in CLASSES:
        for ident in IDS:
            assert layers.read(klass, ident) is not None
            assert all(held is not None for held in layers.held(klass, ident))


def check(layers: Attached) -> None:
    layers.assert_never_stale(CLASSES, range(1, 10))


def balances(layers: Attached, klass: type) -> dict[int, int]:
    """The balances a reader gets through the caches."""
    found = {}
    for ident in IDS:
        row = layers.read(klass, ident)
        if row is not None:
            found[ident] = row["balance"]
    return found


def change(session: Session) -> None:
    """An insert, an update and a delete of each class."""
    session.add(Acct(id=7, name="a7", balance=70))
    session.add(Ledger(id=7, balance=70))
    session.get(Acct, 1).balance = 111  # type: ignore[union-attr]
    session.get(Ledger, 1).balance = 111  # type: ignore[union-attr]
    session.delete(session.get(Acct, 2))
    session.delete(session.get(Ledger, 2))


# -- a session inside a caller's transaction ---------------------------------------------

# On PostgreSQL: SQLite's driver emits no BEGIN before a SAVEPOINT unless configured to (see
# SQLAlchemy's "Serializable isolation / Savepoints" notes for pysqlite), so its RELEASE
# commits what the caller's transaction was to hold.
MODES = ["conditional_savepoint", "create_savepoint", "rollback_only", "control_fully"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("outcome", ["rollback", "commit"])
def test_a_session_in_a_callers_transaction_follows_the_database(
    pg_layers: Attached, mode: str, outcome: str
) -> None:
    layers = pg_layers
    prime(layers)
    with layers.engine.connect() as connection:
        outer = connection.begin()
        session = layers.factory(bind=connection, join_transaction_mode=mode)
        change(session)
        session.commit()
        # Committed only where the session owns the transaction (control_fully of a root
        # one); any other way, what it wrote is the caller's to commit or roll back.
        check(layers)
        # A reader inside the caller's transaction finds the new row in the database, and
        # fills no layer with it.
        inside = Session(bind=connection, join_transaction_mode=mode)  # type: ignore[arg-type]
        chain = ChainedStore(
            [layers.memory, layers.shared, SqlAlchemyStore(session=inside)], broadcast=False
        )
        if mode != "control_fully":
            assert chain.get(Acct, 7) is not None
        check(layers)
        inside.close()
        session.close()
        if outer.is_active:
            getattr(outer, outcome)()
    check(layers)
    committed = outcome == "commit" or mode == "control_fully"
    assert balances(layers, Acct)[1] == (111 if committed else 10)
    assert balances(layers, Ledger)[1] == (111 if committed else 10)
    assert (layers.read(Acct, 7) is not None) is committed
    assert (layers.read(Acct, 2) is None) is committed
    check(layers)


@pytest.mark.parametrize("ledgers", ["own", "callers"])
def test_a_session_on_two_connections_removes_what_each_may_hold(
    pg_layers: Attached, ledgers: str
) -> None:
    # Accounts on the caller's connection (in its transaction), ledgers on a connection
    # of the session's own or of another caller's transaction: the session cannot tell
    # which rows each holds, so it removes every row, and writes none.
    layers = pg_layers
    prime(layers)
    second = create_engine(layers.engine.url)  # a session holds one connection per engine
    with layers.engine.connect() as callers, second.connect() as other:
        outer = callers.begin()
        other_outer = other.begin() if ledgers == "callers" else None
        session = layers.factory(binds={Acct: callers, Ledger: other})
        session.get(Ledger, 1).balance = 111  # type: ignore[union-attr]
        session.get(Acct, 1).balance = 111  # type: ignore[union-attr]
        session.commit()
        if other_outer is None:  # its own: committed now, so removed now
            assert layers.held(Ledger, 1) == [None, None]
        else:  # nothing committed yet: nothing to remove yet
            assert all(held is not None for held in layers.held(Ledger, 1))
        assert all(held is not None for held in layers.held(Ledger, 2))
        session.close()
        if other_outer is not None:
            other_outer.commit()
        outer.commit()
    second.dispose()
    assert layers.held(Acct, 1) == [None, None]
    assert layers.held(Ledger, 1) == [None, None]
    check(layers)
    assert balances(layers, Ledger)[1] == 111
    assert balances(layers, Acct)[1] == 111


def test_a_caller_savepoint_rolled_back_keeps_nothing_of_its_session(pg_layers: Attached) -> None:
    layers = pg_layers
    prime(layers)
    with layers.engine.connect() as connection:
        outer = connection.begin()
        savepoint = connection.begin_nested()
        session = layers.factory(bind=connection)  # joins with a savepoint of its own
        change(session)
        session.commit()
        session.close()
        savepoint.rollback()
        check(layers)
        # The caller goes on and commits something else.
        with layers.factory(bind=connection) as other:
            other.get(Acct, 3).balance = 333  # type: ignore[union-attr]
            other.commit()
        outer.commit()
    check(layers)
    assert balances(layers, Acct) == {1: 10, 2: 20, 3: 333, 4: 40, 5: 50}
    assert layers.read(Ledger, 7) is None
    check(layers)


def test_a_caller_savepoint_released_is_written_at_the_commit(pg_layers: Attached) -> None:
    layers = pg_layers
    prime(layers)
    with layers.engine.connect() as connection:
        outer = connection.begin()
        savepoint = connection.begin_nested()
        session = layers.factory(bind=connection)
        change(session)
        session.commit()
        session.close()
        savepoint.commit()
        check(layers)
        outer.commit()
    check(layers)
    assert balances(layers, Ledger)[1] == 111
    # Versioned and new objects are written through, not only removed.
    assert layers.memory.get(Ledger, 1).balance == 111  # type: ignore[union-attr]
    assert layers.memory.get(Ledger, 7) is not None
    check(layers)


def test_a_closed_connection_rolls_back_and_writes_nothing(pg_layers: Attached) -> None:
    layers = pg_layers
    prime(layers)
    connection = layers.engine.connect()
    connection.begin()
    session = layers.factory(bind=connection)
    change(session)
    session.commit()
    session.close()
    connection.close()  # the caller's transaction is rolled back
    check(layers)
    assert balances(layers, Acct)[1] == 10


def test_a_joined_session_closed_without_commit_removes_its_rows_at_the_commit(
    pg_layers: Attached,
) -> None:
    layers = pg_layers
    prime(layers)
    with layers.engine.connect() as connection:
        outer = connection.begin()
        session = layers.factory(bind=connection)
        session.get(Acct, 1).balance = 999  # type: ignore[union-attr]
        session.flush()
        session.close()  # the caller's transaction, and the flushed row, live on
        outer.commit()
    check(layers)
    assert balances(layers, Acct)[1] == 999


def test_a_caller_savepoint_rolled_back_under_the_session_leaves_only_removals(
    pg_layers: Attached,
) -> None:
    layers = pg_layers
    prime(layers)
    with layers.engine.connect() as connection:
        outer = connection.begin()
        session = layers.factory(bind=connection)
        session.get(Ledger, 1)  # joins before the caller's savepoint
        savepoint = connection.begin_nested()
        session.get(Ledger, 1).balance = 777  # type: ignore[union-attr]
        session.add(Acct(id=7, name="a7", balance=70))
        session.flush()
        savepoint.rollback()  # the caller undoes what the session flushed
        session.commit()
        outer.commit()
    check(layers)
    assert balances(layers, Ledger)[1] == 10
    assert layers.read(Acct, 7) is None


def test_a_reader_on_the_callers_connection_fills_nothing(pg_layers: Attached) -> None:
    layers = pg_layers
    prime(layers)
    with layers.engine.connect() as connection:
        outer = connection.begin()
        writer = layers.factory(bind=connection)
        writer.add(Acct(id=7, name="a7", balance=70))
        writer.flush()  # not committed by anyone yet
        with layers.factory(bind=connection) as reader:
            chain = ChainedStore(
                [layers.memory, layers.shared, SqlAlchemyStore(session=reader)],
                broadcast=False,
            )
            assert chain.get(Acct, 7) is not None  # it sees the caller's transaction
        check(layers)
        # The caller's own untracked write, read by a session nothing is attached to.
        connection.execute(insert(TABLE).values(id=8, name="a8", balance=80))
        with Session(bind=connection) as plain:
            chain = ChainedStore(
                [layers.memory, layers.shared, SqlAlchemyStore(session=plain)],
                broadcast=False,
            )
            assert chain.get(Acct, 8) is not None
        check(layers)
        writer.close()
        outer.rollback()
    check(layers)
    assert layers.read(Acct, 7) is None
    assert layers.read(Acct, 8) is None


def test_two_sessions_on_the_callers_connection_both_record(pg_layers: Attached) -> None:
    layers = pg_layers
    prime(layers)
    with layers.engine.connect() as connection:
        outer = connection.begin()
        first = layers.factory(bind=connection)
        first.get(Acct, 3)
        second = layers.factory(bind=connection)
        second.get(Acct, 3)
        second.close()
        first.execute(update(TABLE).where(TABLE.c.id == 1).values(balance=111))
        first.commit()
        outer.commit()
    check(layers)
    assert balances(layers, Acct)[1] == 111


def test_a_two_phase_rollback_writes_nothing(pg_layers: Attached) -> None:
    layers = pg_layers
    prime(layers)
    with layers.engine.connect() as connection:
        outer = connection.begin_twophase()
        session = layers.factory(bind=connection)
        change(session)
        session.commit()
        outer.rollback()
        connection.begin()
        connection.commit()  # a later COMMIT on the connection writes nothing of it
    check(layers)
    assert balances(layers, Ledger)[1] == 10
    assert layers.read(Acct, 7) is None


def test_a_failed_commit_of_the_caller_writes_only_removals(pg_layers: Attached) -> None:
    layers = pg_layers
    with layers.engine.begin() as connection:
        connection.execute(
            text(
                "ALTER TABLE paths_ledgers ADD CONSTRAINT paths_unique_balance "
                "UNIQUE (balance) DEFERRABLE INITIALLY DEFERRED"
            )
        )
    prime(layers)
    with layers.engine.connect() as connection:
        outer = connection.begin()
        session = layers.factory(bind=connection)
        session.get(Ledger, 1).balance = 20  # type: ignore[union-attr]  # clashes at COMMIT
        session.commit()
        with pytest.raises(IntegrityError):
            outer.commit()
        connection.rollback()
        connection.begin()
        connection.commit()
    check(layers)
    assert balances(layers, Ledger)[1] == 10


def test_a_session_on_its_own_connection_is_written_at_its_commit(pg_layers: Attached) -> None:
    layers = pg_layers
    prime(layers)
    with layers.engine.connect() as connection:
        session = layers.factory(bind=connection)  # the connection has no transaction: its own
        change(session)
        session.commit()
        session.close()
        check(layers)
        assert layers.memory.get(Ledger, 1).balance == 111  # type: ignore[union-attr]
    check(layers)


def test_a_session_on_its_own_connection_closed_without_commit_leaves_the_caches(
    layers: Attached,
) -> None:
    # Its own transaction rolled back: nothing of it waits for the connection's next
    # COMMIT, which is another transaction's.
    prime(layers)
    with layers.engine.connect() as connection:
        session = layers.factory(bind=connection)
        session.get(Acct, 1).balance = 1  # type: ignore[union-attr]
        session.flush()
        session.close()
        with connection.begin():
            connection.execute(select(TABLE.c.id))
    assert all(held is not None for held in layers.held(Acct, 1))  # before a read fills it
    check(layers)


# -- the session's own write methods -----------------------------------------------------


def test_a_commit_in_a_session_begin_block_is_written(layers: Attached) -> None:
    prime(layers)
    with layers.factory() as session, session.begin():
        change(session)
    check(layers)
    assert layers.memory.get(Ledger, 1).balance == 111  # type: ignore[union-attr]
    assert layers.memory.get(Ledger, 7) is not None


def test_merge_is_tracked_like_a_flush(layers: Attached) -> None:
    prime(layers)
    with layers.factory() as session:
        session.merge(Acct(id=1, name="a1", balance=5))
        session.merge(Ledger(id=1, balance=5, version=1))
        session.merge(Acct(id=9, name="a9", balance=9))
        session.commit()
    check(layers)
    assert balances(layers, Acct)[1] == 5
    assert layers.memory.get(Ledger, 1).balance == 5  # type: ignore[union-attr]


def test_bulk_insert_mappings_adds_rows_nothing_cached_describes(layers: Attached) -> None:
    prime(layers)
    with layers.factory() as session:
        session.bulk_insert_mappings(Acct, [{"id": 8, "name": "a8", "balance": 8}])  # type: ignore[arg-type]
        session.commit()
    check(layers)
    assert layers.read(Acct, 8) == {"id": 8, "name": "a8", "balance": 8}


# -- bulk methods of the session ---------------------------------------------------------


def test_bulk_update_mappings_removes_the_rows_it_updates(layers: Attached) -> None:
    prime(layers)
    with layers.factory() as session:
        session.bulk_update_mappings(Acct, [{"id": 1, "balance": 1}, {"id": 3, "balance": 3}])  # type: ignore[arg-type]
        session.bulk_update_mappings(Ledger, [{"id": 1, "balance": 1, "version": 1}])  # type: ignore[arg-type]
        check(layers)  # nothing before the commit
        session.commit()
    # By primary key: the other rows stay cached (looked at before a read fills them).
    assert all(held is not None for held in layers.held(Acct, 2))
    check(layers)
    assert balances(layers, Acct) == {1: 1, 2: 20, 3: 3, 4: 40, 5: 50}
    assert balances(layers, Ledger)[1] == 1


def test_bulk_update_mappings_rolled_back_changes_nothing(layers: Attached) -> None:
    prime(layers)
    with layers.factory() as session:
        session.bulk_update_mappings(Acct, [{"id": 1, "balance": 1}])  # type: ignore[arg-type]
        session.rollback()
    assert all(held is not None for held in layers.held(Acct, 1))
    check(layers)


def test_bulk_save_objects_of_loaded_objects_removes_them(layers: Attached) -> None:
    prime(layers)
    with layers.factory() as session:
        accts = list(session.scalars(select(Acct).where(Acct.id < 3)))
        for acct in accts:
            acct.balance += 1000
        session.bulk_save_objects(accts)
        session.commit()
    check(layers)
    assert balances(layers, Acct)[1] == 1010


# -- ORM statements ----------------------------------------------------------------------


def test_an_orm_update_without_synchronizing_the_session_is_tracked(layers: Attached) -> None:
    prime(layers)
    with layers.factory() as session:
        session.execute(
            update(Acct)
            .where(Acct.balance > 30)
            .values(balance=0)
            .execution_options(synchronize_session=False)
        )
        session.commit()
    check(layers)
    assert balances(layers, Acct) == {1: 10, 2: 20, 3: 30, 4: 0, 5: 0}


def test_an_orm_update_with_its_own_returning_invalidates_the_class(layers: Attached) -> None:
    prime(layers)
    with layers.factory() as session:
        returned = session.scalars(
            update(Acct).where(Acct.id == 1).values(balance=0).returning(Acct.id)
        ).all()
        assert returned == [1]  # the caller's rows stay the caller's
        session.commit()
    check(layers)
    assert balances(layers, Acct)[1] == 0
    assert layers.handle.stats.count(Acct, "class_invalidations") == 1


def test_an_orm_upsert_is_tracked(pg_layers: Attached) -> None:
    layers = pg_layers
    prime(layers)
    statement = postgresql.insert(Acct).values(id=1, name="a1", balance=1)
    with layers.factory() as session:
        session.execute(
            statement.on_conflict_do_update(index_elements=[Acct.id], set_={"balance": 1})
        )
        session.commit()
    check(layers)
    assert balances(layers, Acct)[1] == 1


def test_an_orm_upsert_conflicting_on_another_key_removes_the_row_it_updated(
    pg_layers: Attached,
) -> None:
    # The parameters name id 9; the row updated is the one whose name conflicts (id 2).
    layers = pg_layers
    prime(layers)
    statement = postgresql.insert(Acct)
    statement = statement.on_conflict_do_update(
        index_elements=[Acct.name], set_={"balance": statement.excluded.balance}
    )
    with layers.factory() as session:
        session.execute(statement, [{"id": 9, "name": "a2", "balance": 99}])
        session.commit()
    check(layers)
    assert balances(layers, Acct)[2] == 99


# -- statements on tables ----------------------------------------------------------------

TABLE = Acct.__table__


def test_an_update_of_a_table_by_key_removes_its_rows(layers: Attached) -> None:
    prime(layers)
    with layers.factory() as session:
        session.execute(update(TABLE).where(TABLE.c.id == 1).values(balance=5))
        session.execute(
            update(TABLE).where(TABLE.c.id == bindparam("key")).values(balance=bindparam("b")),
            [{"key": 3, "b": 6}, {"key": 4, "b": 7}],
        )
        check(layers)
        session.commit()
    assert all(held is not None for held in layers.held(Acct, 2))  # before a read fills it
    check(layers)
    assert balances(layers, Acct) == {1: 5, 2: 20, 3: 6, 4: 7, 5: 50}
    assert layers.handle.stats.count(Acct, "class_invalidations") == 0


def test_an_update_of_a_table_by_criteria_removes_its_rows(layers: Attached) -> None:
    prime(layers)
    with layers.factory() as session:
        result = session.execute(update(TABLE).where(TABLE.c.balance > 30).values(balance=0))
        assert result.rowcount == 2  # type: ignore[attr-defined]
        session.commit()
    # PostgreSQL and SQLite both return the keys: the other rows stay cached (looked at
    # before a read fills them).
    assert all(held is not None for held in layers.held(Acct, 1))
    check(layers)
    assert balances(layers, Acct) == {1: 10, 2: 20, 3: 30, 4: 0, 5: 0}


def test_a_table_statement_on_the_connection_is_named_by_what_it_returns(
    layers: Attached,
) -> None:
    prime(layers)
    with layers.factory() as session:
        connection = session.connection()
        result = connection.execute(update(TABLE).where(TABLE.c.balance > 30).values(balance=0))
        assert result.rowcount == 2
        connection.execute(delete(TABLE).where(TABLE.c.name == "a3"))
        session.commit()
    # RETURNING named the rows: the others stay cached (looked at before any read).
    assert all(held is not None for held in layers.held(Acct, 1))
    assert all(held is not None for held in layers.held(Acct, 2))
    check(layers)
    assert balances(layers, Acct) == {1: 10, 2: 20, 4: 0, 5: 0}


def test_a_delete_from_a_table_removes_its_rows(layers: Attached) -> None:
    prime(layers)
    with layers.factory() as session:
        session.execute(delete(TABLE).where(TABLE.c.id.in_([1, 2])))
        session.execute(delete(Ledger.__table__).where(Ledger.__table__.c.balance >= 40))
        session.commit()
    check(layers)
    assert sorted(balances(layers, Acct)) == [3, 4, 5]
    assert sorted(balances(layers, Ledger)) == [1, 2, 3]


def test_a_statement_on_the_sessions_connection_is_tracked(layers: Attached) -> None:
    prime(layers)
    with layers.factory() as session:
        session.connection().execute(update(TABLE).values(balance=TABLE.c.balance + 1))
        session.commit()
    check(layers)
    assert balances(layers, Acct) == {1: 11, 2: 21, 3: 31, 4: 41, 5: 51}


def test_a_statement_a_flush_listener_runs_is_tracked(layers: Attached) -> None:
    def also(mapper: object, connection: Connection, target: Acct) -> None:
        connection.execute(update(TABLE).where(TABLE.c.id == 5).values(balance=55))

    event.listen(Acct, "after_update", also)
    try:
        prime(layers)
        with layers.factory() as session:
            session.get(Acct, 1).balance = 1  # type: ignore[union-attr]
            session.commit()
    finally:
        event.remove(Acct, "after_update", also)
    assert all(held is not None for held in layers.held(Acct, 2))  # before a read fills it
    check(layers)
    assert balances(layers, Acct) == {1: 1, 2: 20, 3: 30, 4: 40, 5: 55}


def test_a_statement_an_after_flush_listener_runs_is_tracked(layers: Attached) -> None:
    def also(session: Session, context: object) -> None:
        session.connection().execute(update(TABLE).where(TABLE.c.id == 2).values(balance=22))

    event.listen(layers.factory, "after_flush", also)
    try:
        prime(layers)
        with layers.factory() as session:
            session.get(Ledger, 1).balance = 1  # type: ignore[union-attr]
            session.commit()
    finally:
        event.remove(layers.factory, "after_flush", also)
    check(layers)
    assert balances(layers, Acct)[2] == 22


def test_a_session_on_an_attached_engine_discards_a_rolled_back_savepoint(
    layers: Attached,
) -> None:
    # Its flushes are the session's record, not statements of the engine's connection.
    layers.handle.detach()
    layers.handle = attach(layers.engine, layers.chain)
    prime(layers)
    with layers.factory() as session:
        nested = session.begin_nested()
        session.get(Acct, 1).balance = 1  # type: ignore[union-attr]
        session.flush()
        nested.rollback()
        session.get(Acct, 2).balance = 2  # type: ignore[union-attr]
        session.commit()
    assert all(held is not None for held in layers.held(Acct, 1))  # before a read fills it
    assert layers.held(Acct, 2) == [None, None]
    check(layers)


@pytest.mark.parametrize("target", ["factory", "engine"])
def test_an_autocommit_session_that_ends_without_committing_removes_its_rows(
    layers: Attached, target: str
) -> None:
    # docs/orm.md: in AUTOCOMMIT isolation each flushed statement has committed already.
    if target == "engine":
        layers.handle.detach()
        layers.handle = attach(layers.engine, layers.chain)
    prime(layers)
    with layers.engine.connect() as connection:
        autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
        session = layers.factory(bind=autocommit)
        session.get(Acct, 1).balance = 1  # type: ignore[union-attr]
        session.flush()
        session.close()
    assert layers.held(Acct, 1) == [None, None]
    assert all(held is not None for held in layers.held(Acct, 2))  # before a read fills it
    check(layers)
    assert balances(layers, Acct)[1] == 1


@pytest.mark.parametrize("target", ["factory", "engine"])
def test_a_flush_listener_changing_the_flushed_row_costs_its_write(
    layers: Attached, target: str
) -> None:
    if target == "engine":  # the session's statements are still recorded in its record
        layers.handle.detach()
        layers.handle = attach(layers.engine, layers.chain)
    ledgers = Ledger.__table__

    def also(mapper: object, connection: Connection, target: Ledger) -> None:
        connection.execute(
            update(ledgers)
            .where(ledgers.c.id == target.id)
            .values(balance=ledgers.c.balance + 1000)
        )

    event.listen(Ledger, "after_update", also)
    try:
        prime(layers)
        with layers.factory() as session:
            session.get(Ledger, 1).balance = 50  # type: ignore[union-attr]
            session.commit()
    finally:
        event.remove(Ledger, "after_update", also)
    check(layers)
    assert balances(layers, Ledger)[1] == 1050


def _upsert(conflict: Any) -> Any:
    """An upsert of the accounts table: on a conflict over ``conflict``, the new balance."""
    statement = postgresql.insert(TABLE)
    return statement.on_conflict_do_update(
        index_elements=[conflict], set_={"balance": statement.excluded.balance}
    )


def test_an_upsert_conflicting_on_another_key_removes_the_row_it_updated(
    pg_layers: Attached,
) -> None:
    layers = pg_layers
    prime(layers)
    statement = _upsert(TABLE.c.name)
    with layers.factory() as session:
        session.execute(statement, {"id": 99, "name": "a1", "balance": 1})  # updates id 1
        session.commit()
    check(layers)
    assert balances(layers, Acct)[1] == 1


def test_a_key_of_another_type_in_a_where_is_not_trusted(layers: Attached) -> None:
    prime(layers)
    with layers.factory() as session:
        if layers.engine.dialect.name == "sqlite":  # PostgreSQL refuses the statement
            session.execute(update(TABLE).where(TABLE.c.id == "1").values(balance=1))
        else:
            session.execute(update(TABLE).where(TABLE.c.id == 1.0).values(balance=1))
        session.commit()
    check(layers)
    assert balances(layers, Acct)[1] == 1


def test_an_upsert_on_a_table_removes_the_row_the_database_returns(
    pg_layers: Attached,
) -> None:
    # No key in the parameters: RETURNING gives the key of the row it updated (id 2).
    layers = pg_layers
    prime(layers)
    statement = _upsert(TABLE.c.name)
    with layers.factory() as session:
        session.execute(statement.values(name="a2", balance=2))
        session.commit()
    assert layers.held(Acct, 2) == [None, None]
    assert all(held is not None for held in layers.held(Acct, 1))  # before a read fills it
    assert layers.handle.stats.count(Acct, "class_invalidations") == 0
    check(layers)
    assert balances(layers, Acct) == {1: 10, 2: 2, 3: 30, 4: 40, 5: 50}


def test_an_upsert_giving_its_keys_invalidates_the_class(pg_layers: Attached) -> None:
    # The database returns nothing for keys the parameters give (return_defaults()
    # fetches only what they do not), and those need not name the row it updated.
    layers = pg_layers
    prime(layers)
    statement = _upsert(TABLE.c.id)
    with layers.factory() as session:
        session.execute(statement, [{"id": 1, "name": "a1", "balance": 1}])
        session.execute(statement.values(id=3, name="a3", balance=3))
        session.commit()
    assert layers.held(Acct, 2) == [None, None]
    assert layers.handle.stats.count(Acct, "class_invalidations") == 1  # one per commit
    check(layers)
    assert balances(layers, Acct) == {1: 1, 2: 20, 3: 3, 4: 40, 5: 50}


def test_a_statement_whose_rows_cannot_be_known_invalidates_the_class(
    layers: Attached,
) -> None:
    prime(layers)
    with layers.factory() as session:
        # Executed many times: no RETURNING, and the WHERE does not name the key.
        session.execute(
            update(TABLE).where(TABLE.c.name == bindparam("n")).values(balance=bindparam("b")),
            [{"n": "a1", "b": 1}, {"n": "a2", "b": 2}],
        )
        session.commit()
    check(layers)
    assert balances(layers, Acct)[1] == 1
    assert layers.handle.stats.count(Acct, "class_invalidations") == 1


def test_an_attached_engine_tracks_its_connections(layers: Attached) -> None:
    layers.handle.detach()
    handle = attach(layers.engine, layers.chain)
    try:
        prime(layers)
        with layers.engine.begin() as connection:
            connection.execute(update(TABLE).where(TABLE.c.id == 1).values(balance=1))
            connection.execute(insert(TABLE).values(id=8, name="a8", balance=8))
            check(layers)  # before the COMMIT: nothing yet
        check(layers)
        assert balances(layers, Acct)[1] == 1
        with layers.engine.connect() as connection:
            connection.execute(delete(TABLE).where(TABLE.c.id == 3))
            connection.rollback()
        assert all(held is not None for held in layers.held(Acct, 4))  # before a read
        assert balances(layers, Acct)[3] == 30
        check(layers)
    finally:
        handle.detach()


def test_text_sql_is_not_tracked(layers: Attached) -> None:
    """The one untracked path: SQL text names no table the plugin can see."""
    prime(layers)
    with layers.factory() as session:
        session.execute(text("UPDATE paths_accts SET balance = 0 WHERE id = 1"))
        session.commit()
    assert layers.memory.get(Acct, 1).balance == 10  # type: ignore[union-attr]
    layers.chain.delete(layers.memory.get(Acct, 1))  # the documented remedy
    check(layers)


def test_the_write_path_table_matches_the_tests_one_to_one() -> None:
    """docs/orm.md's table names every test of this file, and only tests that exist."""
    docs = Path(__file__).parent.parent / "docs" / "orm.md"
    section = docs.read_text().split("## Every write path")[1].split("\n## ")[0]
    named: dict[str, set[str]] = {"W": set(), "A": set()}
    for row in section.splitlines():
        if row.startswith("|") and ("W: " in row or "A: " in row):
            cell = row.rstrip(" |").rsplit("|", 1)[1].strip()
            named[cell[0]].update(re.findall(r"`(test_\w+)`", cell))
    here = {name for name in globals() if name.startswith("test_")}
    here.discard("test_the_write_path_table_matches_the_tests_one_to_one")
    assert named["W"] == here
    attach_tests = (Path(__file__).parent / "test_attach.py").read_text()
    assert named["A"]
    assert [name for name in named["A"] if f"def {name}(" not in attach_tests] == []
