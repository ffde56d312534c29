"""AsyncSqlAlchemyStore(engine=...) on both asyncio drivers: a session of the store's own
per task, so that tasks call it at once, as the requests of an app do."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from sqlalchemy import String, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sa_stockpyle.asyncio import AsyncSqlAlchemyStore

TASKS = 30


class Base(DeclarativeBase):
    pass


class Gadget(Base):
    __tablename__ = "asyncio_store_gadgets"
    __stockpyle_keys__ = ["id", "code"]

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(20), unique=True)
    name: Mapped[str] = mapped_column(String(50))


@pytest.fixture(params=["asyncpg", "psycopg"])
def url(request: pytest.FixtureRequest, postgres_url: str) -> Iterator[str]:
    """The gadgets table, made afresh, and its database's URL for an asyncio driver."""
    sync = create_engine(postgres_url)
    Base.metadata.drop_all(sync)
    Base.metadata.create_all(sync)
    yield (
        make_url(postgres_url)
        .set(drivername=f"postgresql+{request.param}")
        .render_as_string(hide_password=False)
    )
    Base.metadata.drop_all(sync)
    sync.dispose()


def test_tasks_call_an_engine_store_at_once_each_in_a_session_of_its_own(url: str) -> None:
    async def scenario() -> None:
        engine = create_async_engine(url, pool_size=TASKS, max_overflow=0)
        store = AsyncSqlAlchemyStore(engine=engine)
        sessions: list[Session] = []

        async def request(ident: int) -> None:
            await store.put(Gadget(id=ident, code=f"c{ident}", name=f"g{ident}"))
            await asyncio.sleep(0)  # the other tasks' calls run in between
            found = await store.get(Gadget, {"code": f"c{ident}"})
            assert found is not None
            assert (found.id, found.name) == (ident, f"g{ident}")
            pair = await store.batch_get(Gadget, [ident, ident + 1000])
            assert pair == [found, None]  # the task's own session's instance
            sessions.append(store.sync.session)
            await store.delete(found)
            assert await store.get(Gadget, ident) is None

        try:
            await asyncio.gather(*(request(ident) for ident in range(TASKS)))
            assert len({id(session) for session in sessions}) == TASKS
            assert engine.sync_engine.pool.checkedout() == 0  # each call committed
        finally:
            await store.aclose()
            await engine.dispose()
        assert all(not session.identity_map for session in sessions)  # closed

    asyncio.run(scenario())
