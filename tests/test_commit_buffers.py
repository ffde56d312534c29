"""What one transaction's buffer keeps until its commit (sa_stockpyle.changes.Buffer),
seen through attach() on SQLite with a memory layer: a key named twice in two orders is
one removal; a class invalidated after a flush drops the puts that flush recorded; a
buffer written as removals only, because its commit cannot be known, keeps its class
invalidations."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, update
from sqlalchemy.orm import Session, sessionmaker

from sa_stockpyle import Attachment, attach
from sa_stockpyle.stores import ChainedStore, ProcessMemoryStore, SqlAlchemyStore
from tests.models import Base, Membership, User


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'buffers.db'}")
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@dataclass
class Layers:
    """A memory layer over the database, attached to ``factory``'s sessions."""

    memory: ProcessMemoryStore
    factory: sessionmaker[Session]
    handle: Attachment


@pytest.fixture(params=[True, False], ids=["returning", "no returning"])
def layers(engine: Engine, request: pytest.FixtureRequest) -> Iterator[Layers]:
    factory = sessionmaker(engine)
    memory = ProcessMemoryStore()
    chain = ChainedStore([memory, SqlAlchemyStore(engine=engine)])
    handle = attach(factory, chain, use_returning=request.param)
    yield Layers(memory, factory, handle)
    handle.detach()
    chain.close()


def test_a_key_named_in_two_orders_is_removed_once(layers: Layers) -> None:
    # Membership declares ("member", "org"); its mapper's primary key is (org, member).
    with layers.factory() as session:
        session.add(Membership(org="acme", member=7, role="admin"))
        session.commit()
    assert layers.memory.get(Membership, {"member": 7, "org": "acme"}) is not None
    with layers.factory() as session:
        session.delete(session.get(Membership, ("acme", 7)))
        session.commit()
    assert layers.handle.stats.count(Membership, "removed") == 1
    assert layers.memory.get(Membership, {"member": 7, "org": "acme"}) is None


def test_a_bulk_update_after_a_flush_drops_that_flush_s_put(layers: Layers) -> None:
    # With RETURNING the UPDATE names its row; without, the whole class goes.  Either
    # way the state the earlier flush recorded for the new row is no longer the row's,
    # and a put of another class stays.
    with layers.factory() as session:
        session.add(Membership(org="acme", member=7, role="admin"))
        session.add(User(id=1, email="u1@example.com", name="flushed"))
        session.flush()
        session.execute(update(User).where(User.id == 1).values(name="updated"))
        session.commit()
    invalidated = 0 if layers.handle.use_returning else 1
    assert layers.handle.stats.count(User, "class_invalidations") == invalidated
    assert layers.memory.get(User, 1) is None
    held = layers.memory.get(Membership, {"member": 7, "org": "acme"})
    assert held is not None
    assert held.role == "admin"


def test_a_session_closed_in_a_caller_s_transaction_keeps_its_class_invalidation(
    engine: Engine,
) -> None:
    # The session's work lives on in the caller's transaction, which it cannot commit:
    # its buffer is written as removals only when the caller commits, class included.
    with Session(engine) as session:
        session.add(User(id=1, email="u1@example.com", name="before"))
        session.commit()
    memory = ProcessMemoryStore()
    chain = ChainedStore([memory, SqlAlchemyStore(engine=engine)])
    assert chain.get(User, 1) is not None
    assert memory.get(User, 1) is not None
    handle = attach(Session, chain, use_returning=False)
    caller = engine.connect()
    try:
        outer = caller.begin()
        session = Session(bind=caller)
        session.execute(update(User).where(User.id == 1).values(name="after"))
        session.close()  # no COMMIT of its own: the caller's transaction stays open
        outer.commit()
        assert memory.get(User, 1) is None
        found = chain.get(User, 1)
        assert found is not None
        assert found.name == "after"
    finally:
        handle.detach()
        caller.close()
        chain.close()
