"""SqlAlchemyStore.cacheable on PostgreSQL: which objects may fill a faster layer.

Uncommitted state never may; with ``since`` (the time a fill was reserved), only state
read after it, which a transaction reading one snapshot (REPEATABLE READ, however it
was set) guarantees only when it began after ``since``.  Each test asks the store
directly, as a chain does before it fills (sa_stockpyle.stores.freshness).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session

from sa_stockpyle.stores import SqlAlchemyStore
from tests.models import Base, User

RR = "REPEATABLE READ"


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    engine = create_engine(postgres_url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(User(id=i, email=f"u{i}@example.com", name=f"user {i}") for i in (1, 2, 3))
        session.commit()
    yield engine
    Base.metadata.drop_all(engine)
    engine.dispose()


def _engines(engine: Engine, how: str) -> Engine:
    """An engine on ``engine``'s database whose transactions run REPEATABLE READ, set
    ``how``: as an execution option, as the dialect's level, or as the server's default."""
    if how == "execution option":
        return engine.execution_options(isolation_level=RR)
    if how == "dialect":
        return create_engine(engine.url, isolation_level=RR)
    return create_engine(
        engine.url, connect_args={"options": "-c default_transaction_isolation=repeatable\\ read"}
    )


@pytest.mark.parametrize("how", ["execution option", "dialect", "server default"])
def test_a_snapshot_taken_before_the_fill_was_reserved_fills_nothing(
    engine: Engine, how: str
) -> None:
    snapshot_engine = _engines(engine, how)
    try:
        with Session(snapshot_engine) as session:
            store = SqlAlchemyStore(session=session)
            assert store.get(User, 1) is not None  # the transaction, and its snapshot, begin
            since = time.monotonic()
            found = store.get(User, 2)  # read after ``since``, from the older snapshot
            assert found is not None
            assert store.cacheable(found)
            assert not store.cacheable(found, since)
            store.close()
    finally:
        if snapshot_engine.engine is not engine:
            snapshot_engine.engine.dispose()


@pytest.mark.parametrize("how", ["execution option", "dialect", "server default"])
def test_a_snapshot_taken_after_the_fill_was_reserved_fills(engine: Engine, how: str) -> None:
    snapshot_engine = _engines(engine, how)
    try:
        with Session(snapshot_engine) as session:
            store = SqlAlchemyStore(session=session)
            since = time.monotonic()
            found = store.get(User, 1)  # the transaction begins after ``since``
            assert found is not None
            assert store.cacheable(found, since)
            session.commit()  # each transaction of the session has its own start
            second = time.monotonic()
            found = store.get(User, 2)
            assert found is not None
            assert store.cacheable(found, second)
            store.close()
    finally:
        if snapshot_engine.engine is not engine:
            snapshot_engine.engine.dispose()


def test_a_read_committed_transaction_fills_what_it_reads_after_since(engine: Engine) -> None:
    with Session(engine) as session:
        store = SqlAlchemyStore(session=session)
        assert store.get(User, 1) is not None
        since = time.monotonic()
        found = store.get(User, 2)  # each statement sees the latest commit
        assert found is not None
        assert store.cacheable(found, since)
        store.close()


@pytest.fixture
def waiting(engine: Engine) -> Iterator[None]:
    """A caller's open transaction that a store's session joined: from then on the
    store asks, for a read in a transaction, whether its connection is such a one."""
    caller = engine.connect()
    outer = caller.begin()
    joined = SqlAlchemyStore(session=Session(bind=caller))
    assert joined.get(User, 3) is not None
    yield
    joined.session.close()
    joined.close()
    outer.rollback()
    caller.close()


@pytest.mark.usefixtures("waiting")
def test_a_session_bound_per_class_is_asked_about_the_class_engine(engine: Engine) -> None:
    # No default bind: asking the session for a bind without naming the class fails.
    with Session(binds={User: engine.execution_options(isolation_level=RR)}) as session:
        store = SqlAlchemyStore(session=session)
        assert store.get(User, 1) is not None
        since = time.monotonic()
        found = store.get(User, 2)
        assert found is not None
        assert store.cacheable(found)  # asks the class's connection whether it waits
        assert not store.cacheable(found, since)  # and the class's engine's level
        store.close()


@pytest.mark.usefixtures("waiting")
def test_asking_begins_no_transaction(engine: Engine) -> None:
    with Session(engine, expire_on_commit=False) as session:
        store = SqlAlchemyStore(session=session)
        found = store.get(User, 1)
        session.commit()
        assert not session.in_transaction()
        assert store.cacheable(found)
        assert not session.in_transaction()
        store.close()


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("detached", True),
        ("modified", False),
        ("pending without values", False),
        ("deleted and committed", False),
    ],
)
def test_uncommitted_or_removed_state_never_fills(
    engine: Engine, state: str, expected: bool
) -> None:
    with Session(engine, autoflush=False, expire_on_commit=False) as session:
        store = SqlAlchemyStore(session=session)
        found: Any = store.get(User, 1)
        if state == "detached":
            session.expunge(found)
        elif state == "modified":
            found.name = "changed"  # not flushed
        elif state == "pending without values":
            found = User()
            session.add(found)
        else:
            session.delete(found)
            session.commit()
            session.expunge(found)  # detached, deleted in a committed transaction
        assert store.cacheable(found) is expected
        session.rollback()
        store.close()
