"""One object a cache cannot carry never costs the rest of a commit, a read, or a write.

A ``PickleType`` column holding an application object is a value no shared payload can
carry (payloads never execute code).  Such an object is removed from every caching layer
instead of written; the other objects of the same commit are written or removed as usual;
a read returns it from the database without filling; a chain write leaves it removed.
After each step every cached entry equals a fresh read from the database, column by column.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Integer, PickleType
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sa_stockpyle.errors import PayloadError
from sa_stockpyle.stores import RedisStore
from tests.attached import Attached, attached


class Opaque:
    """An application object: picklable, but no payload of a shared layer carries it."""

    def __init__(self, word: str) -> None:
        self.word = word

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.word == self.word

    __hash__ = None  # type: ignore[assignment]


class Base(DeclarativeBase):
    pass


class Wallet(Base):
    __tablename__ = "isolation_wallets"
    __stockpyle_keys__ = ["id"]

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    balance: Mapped[int] = mapped_column(Integer)


class Parcel(Base):
    """Versioned: its updates are written through, not only removed."""

    __tablename__ = "isolation_parcels"
    __stockpyle_keys__ = ["id"]

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    content: Mapped[Any] = mapped_column(PickleType)
    version: Mapped[int] = mapped_column(Integer)
    __mapper_args__ = {"version_id_col": version}


@pytest.fixture(params=["sqlite", "postgresql"])
def layers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Attached]:
    with attached(request, tmp_path, Base.metadata) as layers:
        yield layers


def _assert_never_stale(layers: Attached) -> None:
    layers.assert_never_stale([Wallet, Parcel], range(1, 6))


def test_a_value_no_cache_carries_costs_nothing_else_of_its_commit(layers: Attached) -> None:
    with layers.factory() as session:
        session.add(Wallet(id=1, balance=1))
        session.commit()
    assert layers.read(Wallet, 1) == {"id": 1, "balance": 1}  # cached in both layers
    with layers.factory() as session:
        session.get(Wallet, 1).balance = 2  # unversioned: removed at commit
        session.add(Parcel(id=1, content=Opaque("secret")))  # refused
        session.add(Wallet(id=2, balance=20))  # written
        session.commit()
    assert layers.handle.stats.count(Parcel, "refused") == 1
    assert layers.handle.stats.count(Parcel, "errors") == 0
    assert layers.held(Wallet, 1) == layers.held(Parcel, 1) == [None, None]
    for held in layers.held(Wallet, 2):
        assert (held.id, held.balance) == (2, 20)
    _assert_never_stale(layers)
    # A read returns the refused row from the database and fills nothing with it.
    assert layers.read(Parcel, 1) == {"id": 1, "content": Opaque("secret"), "version": 1}
    assert layers.shared.get(Parcel, 1) is None
    assert layers.read(Wallet, 1) == {"id": 1, "balance": 2}
    _assert_never_stale(layers)


def test_an_update_to_a_value_no_cache_carries_removes_the_old_entry(layers: Attached) -> None:
    with layers.factory() as session:
        session.add(Parcel(id=3, content="plain text"))
        session.commit()
    assert layers.read(Parcel, 3) == {"id": 3, "content": "plain text", "version": 1}
    assert layers.shared.get(Parcel, 3) is not None
    with layers.factory() as session:
        session.get(Parcel, 3).content = Opaque("now opaque")
        session.commit()
    assert layers.held(Parcel, 3) == [None, None]
    _assert_never_stale(layers)


def test_a_chain_write_the_database_took_leaves_the_cache_removed(layers: Attached) -> None:
    layers.shared.put(Parcel(id=4, content="stale", version=1))  # an entry left by a race
    layers.chain.batch_put([Parcel(id=4, content=Opaque("new")), Wallet(id=5, balance=5)])
    assert layers.chain.layer_stats[1].count(Parcel, "refused") == 1
    assert layers.held(Parcel, 4) == [None, None]
    for held in layers.held(Wallet, 5):
        assert (held.id, held.balance) == (5, 5)
    _assert_never_stale(layers)


def test_a_store_alone_refuses_with_a_typed_error_and_changes_nothing(redis_url: str) -> None:
    with RedisStore(url=redis_url) as store:
        store.put(Parcel(id=6, content="kept", version=1))
        with pytest.raises(PayloadError, match="Opaque"):
            store.batch_put(
                [Parcel(id=6, content=Opaque("x"), version=2), Wallet(id=6, balance=6)]
            )
        assert store.get(Parcel, 6).content == "kept"
        assert store.get(Wallet, 6) is None
        # A commit's write is isolated per object, at the store too.
        refused = Parcel(id=6, content=Opaque("y"), version=3)
        store.write_committed([refused, Wallet(id=6, balance=6)], [])
        assert store.get(Parcel, 6) is None
        assert store.get(Wallet, 6).balance == 6
