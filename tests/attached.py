"""A memory layer, a Redis layer and the database, chained and attached: the harness of
the tests that compare every cached entry with the database after each commit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, MetaData, create_engine, inspect
from sqlalchemy.orm import Session, sessionmaker

from sa_stockpyle import attach
from sa_stockpyle.stores import ChainedStore, ProcessMemoryStore, RedisStore, SqlAlchemyStore


def typed_columns(obj: object) -> dict[str, tuple[type, Any]]:
    """Every column attribute of ``obj`` with the type and the value it holds."""
    return {attr.key: (type(attr.value), attr.value) for attr in inspect(obj).attrs}


class Attached:
    """``[memory, Redis, database]`` attached to a sessionmaker of ``engine``."""

    def __init__(self, engine: Engine, redis_url: str) -> None:
        self.engine = engine
        self.memory = ProcessMemoryStore()
        self.shared = RedisStore(url=redis_url)
        self.chain = ChainedStore([self.memory, self.shared, SqlAlchemyStore(engine=engine)])
        self.factory = sessionmaker(engine)
        self.handle = attach(self.factory, self.chain)

    def held(self, klass: type, ident: int) -> list[Any]:
        """What the memory and the Redis layer hold for ``ident``."""
        return [layer.get(klass, ident) for layer in (self.memory, self.shared)]

    def read(self, klass: type, ident: int) -> dict[str, Any] | None:
        """A reader's lookup through the caches (filling them): the object's columns."""
        with Session(self.engine) as session:
            chain = ChainedStore(
                [self.memory, self.shared, SqlAlchemyStore(session=session)], broadcast=False
            )
            found = chain.get(klass, ident)
            return None if found is None else {k: v for k, (_, v) in typed_columns(found).items()}

    def assert_never_stale(self, classes: list[type], idents: range) -> None:
        """Every cached entry equals the database's row, column by column, types too."""
        with Session(self.engine) as session:
            for klass in classes:
                rows = {row.id: typed_columns(row) for row in session.query(klass)}
                for ident in idents:
                    for held in self.held(klass, ident):
                        if held is not None:
                            assert typed_columns(held) == rows.get(ident), (klass, ident)


@contextmanager
def attached(
    request: pytest.FixtureRequest, tmp_path: Path, metadata: MetaData
) -> Iterator[Attached]:
    """:class:`Attached` over ``metadata``'s tables, on SQLite or PostgreSQL as the
    fixture's ``request.param`` says; the tables are dropped afterwards."""
    if request.param == "sqlite":
        engine = create_engine(f"sqlite:///{tmp_path}/attached.db")
    else:
        engine = create_engine(request.getfixturevalue("postgres_url"))
    metadata.drop_all(engine)
    metadata.create_all(engine)
    layers = Attached(engine, request.getfixturevalue("redis_url"))
    try:
        yield layers
    finally:
        layers.handle.detach()
        layers.chain.close()
        metadata.drop_all(engine)
        engine.dispose()
