"""The asyncio stores and attach() for AsyncSession: the conformance suites through the
real transport (redis.asyncio, asyncpg and psycopg's async driver), write-through at
commit for every asyncio target, single-flight across tasks, failing servers, and
processes of both kinds on one Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio
from redis.asyncio.cluster import ClusterNode, RedisCluster
from sqlalchemy import String, create_engine, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_scoped_session,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sa_stockpyle import attach
from sa_stockpyle.asyncio import AsyncChainedStore, AsyncRedisStore, AsyncSqlAlchemyStore
from sa_stockpyle.stores import ProcessMemoryStore
from sa_stockpyle.testing import LayerProtocolConformance
from tests.asyncio_helpers import Blocking

# -- the conformance suites, through the asyncio transport --------------------------------


class TestAsyncRedisStore(LayerProtocolConformance):
    @pytest.fixture(autouse=True)
    def _server(self, redis_url: str) -> None:
        self.url = redis_url

    def make_store(self, **options: Any) -> Blocking:
        return Blocking(AsyncRedisStore(url=self.url, **options))


class TestAsyncRedisStoreOnAGivenClient(LayerProtocolConformance):
    """The same contract through a caller's redis.asyncio client, used through its API."""

    @pytest.fixture(autouse=True)
    def _server(self, redis_url: str) -> None:
        self.url = redis_url

    def make_store(self, **options: Any) -> Blocking:
        client = redis.asyncio.Redis.from_url(self.url)
        store = Blocking(AsyncRedisStore(client=client, **options))
        store.closing.append(client.aclose)
        return store


class TestAsyncRedisClusterStore(LayerProtocolConformance):
    compares_tombstone_times = False

    @pytest.fixture(autouse=True)
    def _cluster(self, redis_cluster_nodes: list[tuple[str, int]]) -> None:
        self.nodes = redis_cluster_nodes

    def make_store(self, **options: Any) -> Blocking:
        client = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in self.nodes],
            socket_connect_timeout=1,
            socket_timeout=2,
        )
        store = Blocking(AsyncRedisStore(client=client, **options))
        store.closing.append(client.aclose)
        return store


class TestAsyncChainOfMemoryAndRedis(LayerProtocolConformance):
    @pytest.fixture(autouse=True)
    def _server(self, redis_url: str) -> None:
        self.url = redis_url

    def make_store(self, **options: Any) -> Blocking:
        prefix = uuid.uuid4().hex  # each chain's own keys: the suite expects empty stores
        layers = [
            ProcessMemoryStore(**options),
            AsyncRedisStore(url=self.url, prefix=prefix, **options),
        ]
        return Blocking(AsyncChainedStore(layers))


# -- models and engines ------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class Member(Base):
    __tablename__ = "asyncio_members"
    __stockpyle_keys__ = ["id", "email"]

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(100), unique=True)
    name: Mapped[str] = mapped_column(String(100), default="")


DRIVERS = ["asyncpg", "psycopg"]


@pytest.fixture(params=DRIVERS)
def async_url(request: pytest.FixtureRequest, postgres_url: str) -> str:
    """The test database's URL for each asyncio driver."""
    url = make_url(postgres_url).set(drivername=f"postgresql+{request.param}")
    return url.render_as_string(hide_password=False)


@pytest.fixture
def tables(async_url: str, postgres_url: str) -> str:
    """``async_url``, its tables made afresh."""
    sync = create_engine(postgres_url)
    Base.metadata.drop_all(sync)
    Base.metadata.create_all(sync)
    sync.dispose()
    return async_url


class Layers:
    """``[memory, AsyncRedisStore]`` for attach(), and the same plus the database for
    reads, as the pinned quickstart builds them."""

    def __init__(self, engine: AsyncEngine, redis_url: str) -> None:
        self.engine = engine
        self.memory = ProcessMemoryStore()
        self.redis = AsyncRedisStore(url=redis_url, prefix=uuid.uuid4().hex)
        self.writes = AsyncChainedStore([self.memory, self.redis])
        self.factory = async_sessionmaker(engine, expire_on_commit=False)
        self.scoped = async_scoped_session(self.factory, scopefunc=asyncio.current_task)
        self.reads = AsyncChainedStore(
            [self.memory, self.redis, AsyncSqlAlchemyStore(session=self.scoped)]
        )

    async def held(self, ident: int) -> list[Member | None]:
        """What the memory and the Redis layer hold for ``ident``."""
        return [self.memory.get(Member, ident), await self.redis.get(Member, ident)]

    async def close(self) -> None:
        await self.scoped.remove()
        await self.reads.aclose()
        await self.writes.aclose()


@asynccontextmanager
async def layers_of(url: str, redis_url: str) -> AsyncIterator[Layers]:
    """Layers on an engine of this event loop (an asyncio engine's connections belong
    to the loop that opened them)."""
    engine = create_async_engine(url)
    layers = Layers(engine, redis_url)
    try:
        yield layers
    finally:
        await layers.close()
        await engine.dispose()


def _target(kind: str, layers: Layers) -> Any:
    """The attach() target of each asyncio kind, and the session factory it covers."""
    if kind == "async_sessionmaker":
        return layers.factory
    if kind == "async_scoped_session":
        return layers.scoped
    if kind == "AsyncEngine":
        return layers.engine
    if kind == "AsyncSession subclass":

        class Covered(AsyncSession):
            pass

        layers.factory = async_sessionmaker(layers.engine, class_=Covered, expire_on_commit=False)
        return Covered
    raise AssertionError(kind)


TARGETS = ["async_sessionmaker", "async_scoped_session", "AsyncEngine", "AsyncSession subclass"]


@pytest.mark.parametrize("kind", TARGETS)
def test_commit_writes_through_for_every_asyncio_target(
    kind: str, tables: str, redis_url: str
) -> None:
    async def scenario() -> None:
        async with layers_of(tables, redis_url) as layers:
            handle = attach(_target(kind, layers), layers.writes)
            try:
                async with layers.factory() as session:
                    session.add(Member(id=1, email="a@example.com", name="A"))
                    await session.flush()
                    assert await layers.held(1) == [None, None]  # not before the commit
                    await session.commit()
                memory, shared = await layers.held(1)
                assert memory is not None
                assert shared is not None
                assert (memory.email, shared.name) == ("a@example.com", "A")
                assert handle.stats.count(Member, "written") == 1
                async with layers.factory() as session:
                    member = await session.get(Member, 1)
                    assert member is not None
                    await session.delete(member)
                    await session.commit()
                assert await layers.held(1) == [None, None]
                assert await layers.reads.get(Member, {"email": "a@example.com"}) is None
            finally:
                handle.detach()

    asyncio.run(scenario())


def test_an_asyncsession_instance_is_attached_alone(tables: str, redis_url: str) -> None:
    async def scenario() -> None:
        async with layers_of(tables, redis_url) as layers:
            async with layers.factory() as watched, layers.factory() as other:
                handle = attach(watched, layers.writes)
                other.add(Member(id=2, email="b@example.com"))
                await other.commit()
                watched.add(Member(id=1, email="a@example.com"))
                await watched.commit()
                handle.detach()
            assert (await layers.held(1))[1] is not None
            assert await layers.held(2) == [None, None]

    asyncio.run(scenario())


def test_rollbacks_and_savepoints_are_exact(tables: str, redis_url: str) -> None:
    async def scenario() -> None:
        async with layers_of(tables, redis_url) as layers:
            handle = attach(layers.factory, layers.writes)
            try:
                async with layers.factory() as session:
                    session.add(Member(id=1, email="gone@example.com"))
                    await session.flush()
                    await session.rollback()
                assert await layers.held(1) == [None, None]
                async with layers.factory() as session:
                    session.add(Member(id=2, email="kept@example.com"))
                    savepoint = await session.begin_nested()
                    session.add(Member(id=3, email="undone@example.com"))
                    await session.flush()
                    await savepoint.rollback()
                    await session.commit()
                assert (await layers.held(2))[1] is not None
                assert await layers.held(3) == [None, None]
            finally:
                handle.detach()

    asyncio.run(scenario())


def test_reads_fill_the_layers_and_updates_reach_them(tables: str, redis_url: str) -> None:
    async def scenario() -> None:
        async with layers_of(tables, redis_url) as layers:
            handle = attach(layers.factory, layers.writes)
            try:
                async with layers.factory() as session:
                    session.add_all([Member(id=i, email=f"{i}@example.com") for i in (1, 2, 3)])
                    await session.commit()
                layers.memory.clear()
                found = await layers.reads.batch_get(Member, [3, 1, 99])
                assert [m.id if m else None for m in found] == [3, 1, None]
                async with layers.factory() as session:
                    await session.execute(
                        update(Member).where(Member.id == 1).values(name="renamed")
                    )
                    await session.commit()
                await layers.scoped.remove()  # a new request
                member = await layers.reads.get(Member, 1)
                assert member is not None
                assert member.name == "renamed"
            finally:
                handle.detach()

    asyncio.run(scenario())
