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
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from sa_stockpyle import attach
from sa_stockpyle.asyncio import AsyncChainedStore, AsyncRedisStore, AsyncSqlAlchemyStore
from sa_stockpyle.errors import ConfigurationError
from sa_stockpyle.stores import (
    ChainedStore,
    MemcacheStore,
    ProcessMemoryStore,
    RedisStore,
    SqlAlchemyStore,
)
from sa_stockpyle.testing import LayerProtocolConformance
from tests.asyncio_helpers import PATIENT, Blocking
from tests.helpers import until

# -- the conformance suites, through the asyncio transport --------------------------------


class TestAsyncRedisStore(LayerProtocolConformance):
    @pytest.fixture(autouse=True)
    def _server(self, redis_url: str) -> None:
        self.url = redis_url

    def make_store(self, **options: Any) -> Blocking:
        return Blocking(AsyncRedisStore(url=self.url, **PATIENT, **options))


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
            AsyncRedisStore(url=self.url, prefix=prefix, **PATIENT, **options),
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
        self.redis = AsyncRedisStore(url=redis_url, prefix=uuid.uuid4().hex, **PATIENT)
        self.writes = AsyncChainedStore([self.memory, self.redis])
        self.factory = async_sessionmaker(engine, expire_on_commit=False)
        self.scoped = async_scoped_session(self.factory, scopefunc=asyncio.current_task)
        # As docs/asyncio.md advises: the attached chain's broadcast serves the memory
        # layer both chains share.
        self.reads = AsyncChainedStore(
            [self.memory, self.redis, AsyncSqlAlchemyStore(session=self.scoped)],
            broadcast=False,
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


# -- what is refused, and why ----------------------------------------------------------


def test_what_would_block_the_loop_is_refused(
    redis_url: str, memcached_addresses: list[str]
) -> None:
    blocking = RedisStore(url=redis_url)
    memcached = MemcacheStore(servers=memcached_addresses)
    try:
        with pytest.raises(ConfigurationError, match="AsyncRedisStore"):
            AsyncChainedStore([ProcessMemoryStore(), blocking])
        with pytest.raises(ConfigurationError, match="no asyncio memcached store"):
            AsyncChainedStore([ProcessMemoryStore(), memcached])
        with pytest.raises(ConfigurationError, match="AsyncChainedStore"):
            AsyncChainedStore([ChainedStore([ProcessMemoryStore()])])
    finally:
        blocking.close()
        memcached.close()
    with pytest.raises(ConfigurationError, match="non-empty list"):
        AsyncChainedStore("memory")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="exactly one of url="):
        AsyncRedisStore()
    with pytest.raises(ConfigurationError, match="synchronous client belongs to a RedisStore"):
        AsyncRedisStore(client=RedisStore(url=redis_url).client)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="exactly one of session="):
        AsyncSqlAlchemyStore()
    with pytest.raises(ConfigurationError, match="expects an AsyncSession"):
        AsyncSqlAlchemyStore(session=Session())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="expects an AsyncEngine"):
        AsyncSqlAlchemyStore(engine=create_engine("sqlite://"))  # type: ignore[arg-type]
    engine = create_async_engine("sqlite+aiosqlite://")
    with pytest.raises(
        ConfigurationError, match=r"use sa_stockpyle\.asyncio\.AsyncSqlAlchemyStore"
    ):
        SqlAlchemyStore(session=AsyncSession(engine))  # type: ignore[arg-type]
    with pytest.raises(
        ConfigurationError, match=r"use sa_stockpyle\.asyncio\.AsyncSqlAlchemyStore"
    ):
        SqlAlchemyStore(engine=engine)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="async_sessionmaker, async_scoped_session"):
        attach(object(), AsyncChainedStore([ProcessMemoryStore()]))  # type: ignore[arg-type]


def test_a_synchronous_call_on_the_event_loop_raises_instead_of_blocking(redis_url: str) -> None:
    async def scenario() -> None:
        store = AsyncRedisStore(url=redis_url, **PATIENT)
        try:
            with pytest.raises(RuntimeError, match="would block the loop"):
                store.sync.get(Member, 1)
            assert await store.get(Member, 1) is None  # awaited, it works
        finally:
            await store.aclose()

    asyncio.run(scenario())


def test_a_hit_in_memory_opens_no_session_and_a_task_with_one_gets_it_attached(
    tables: str, redis_url: str
) -> None:
    async def scenario() -> None:
        async with layers_of(tables, redis_url) as layers:
            handle = attach(layers.factory, layers.writes)
            try:
                async with layers.factory() as session:
                    session.add(Member(id=1, email="a@example.com"))
                    await session.commit()
                detached = await layers.reads.get(Member, 1)
                assert detached is not None
                assert not layers.scoped.registry.has()  # no session opened for a hit
                assert layers.reads.layer_stats[0].count(Member, "hits") == 1
                session = layers.scoped()
                attached = await layers.reads.get(Member, 1)
                assert attached in session  # the task's session holds what it returned
                assert await layers.reads.get(Member, 1) is attached  # its identity map
                await layers.scoped.remove()
            finally:
                handle.detach()

    asyncio.run(scenario())


def test_synchronous_and_asyncio_processes_share_one_redis_and_its_broadcast(  # noqa: PLR0915
    tables: str, postgres_url: str, redis_url: str
) -> None:
    # Two processes in one: a synchronous app's chain and an asyncio app's, each with a
    # memory layer of its own, on one Redis and one channel.
    prefix = uuid.uuid4().hex
    sync_engine = create_engine(postgres_url)
    sync_memory = ProcessMemoryStore()
    sync_chain = ChainedStore([sync_memory, RedisStore(url=redis_url, prefix=prefix)])
    sync_factory = sessionmaker(sync_engine, expire_on_commit=False)
    sync_handle = attach(sync_factory, sync_chain)

    async def scenario() -> None:
        engine = create_async_engine(tables)
        factory = async_sessionmaker(engine, expire_on_commit=False)
        memory = ProcessMemoryStore()
        chain = AsyncChainedStore(
            [memory, AsyncRedisStore(url=redis_url, prefix=prefix, **PATIENT)]
        )
        handle = attach(factory, chain)
        scoped = async_scoped_session(factory, scopefunc=asyncio.current_task)
        database = AsyncSqlAlchemyStore(session=scoped)
        reader = AsyncChainedStore([memory, chain.stores[1], database], broadcast=False)
        try:
            # The asyncio app only reads at first (its attached chain is not used yet):
            # its memory layer hears the synchronous app's commits all the same.
            with sync_factory() as session:
                session.add(Member(id=2, email="b@example.com", name="first"))
                session.commit()
            coherence = chain.coherence
            assert coherence is not None
            # The insert's own message first (it would evict what the read fills).
            assert await asyncio.to_thread(
                until, lambda: coherence.counts().get("received", 0) >= 1
            )
            assert (await reader.get(Member, 2)).name == "first"
            await scoped.remove()
            assert memory.get(Member, 2) is not None
            with sync_factory() as session:
                session.get(Member, 2).name = "second"
                session.commit()
            assert await asyncio.to_thread(until, lambda: memory.get(Member, 2) is None)
            assert (await reader.get(Member, 2)).name == "second"
            await scoped.remove()
            async with factory() as session:  # the asyncio app writes
                session.add(Member(id=1, email="a@example.com", name="async"))
                await session.commit()
            # The synchronous app reads what the asyncio one wrote through Redis (once the
            # insert's own message has arrived: it would evict what the read fills).
            sync_coherence = sync_chain.coherence
            assert sync_coherence is not None
            assert await asyncio.to_thread(
                until, lambda: sync_coherence.counts().get("received", 0) >= 1
            )
            assert sync_chain.get(Member, 1).name == "async"
            assert sync_memory.get(Member, 1) is not None
            with sync_factory() as session:  # the synchronous app updates it
                session.get(Member, 1).name = "sync"
                session.commit()
            # Its broadcast reaches the asyncio process's memory layer, and Redis agrees.
            await asyncio.to_thread(until, lambda: memory.get(Member, 1) is None)
            assert memory.get(Member, 1) is None
            assert await chain.get(Member, 1) is None  # removed (no version column)
            async with factory() as session:  # and back: the asyncio app deletes it
                await session.delete(await session.get(Member, 1))
                await session.commit()
            assert await asyncio.to_thread(until, lambda: sync_memory.get(Member, 1) is None)
        finally:
            handle.detach()
            await reader.aclose()
            await chain.aclose()
            await engine.dispose()

    try:
        sync_chain.get(Member, 1)  # the synchronous side knows the class before messages
        asyncio.run(scenario())
    finally:
        sync_handle.detach()
        sync_chain.close()
        sync_engine.dispose()


class RoutingSession(Session):
    """A custom synchronous Session class, as a routing or sharding setup has."""


class RoutedAsyncSession(AsyncSession):
    sync_session_class = RoutingSession


def test_attach_keeps_a_custom_sync_session_class_and_covers_only_its_target() -> None:
    async def scenario() -> None:
        engine = create_async_engine("sqlite+aiosqlite://")
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        routed = async_sessionmaker(engine, class_=RoutedAsyncSession, expire_on_commit=False)
        other = async_sessionmaker(engine, expire_on_commit=False)
        memory = ProcessMemoryStore()
        handle = attach(routed, AsyncChainedStore([memory]))
        try:
            async with routed() as session:
                assert isinstance(session.sync_session, RoutingSession)  # kept, subclassed
                session.add(Member(id=1, email="a@example.com"))
                await session.commit()
            async with other() as session:  # another factory: not covered
                assert type(session.sync_session) is Session
                session.add(Member(id=2, email="b@example.com"))
                await session.commit()
            assert memory.get(Member, 1) is not None
            assert memory.get(Member, 2) is None
        finally:
            handle.detach()
            await engine.dispose()

    asyncio.run(scenario())


def test_attach_of_asyncio_sessions_refuses_a_store_that_would_block(redis_url: str) -> None:
    blocking = ChainedStore([ProcessMemoryStore(), RedisStore(url=redis_url)], broadcast=False)
    engine = create_async_engine("sqlite+aiosqlite://")
    try:
        with pytest.raises(ConfigurationError, match="would block the event loop"):
            attach(async_sessionmaker(engine), blocking)
        attach(async_sessionmaker(engine), ProcessMemoryStore()).detach()  # in-process: fine
    finally:
        blocking.close()


def test_the_asyncio_stores_take_their_synchronous_twins_parameters() -> None:
    # Explicit signatures (for readers and type checkers) that must not drift apart.
    import inspect

    def parameters(cls: type) -> list[tuple[str, object]]:
        signature = inspect.signature(cls.__init__)
        return [(p.name, p.default) for p in signature.parameters.values() if p.name != "self"]

    assert parameters(AsyncChainedStore) == parameters(ChainedStore)
    assert parameters(AsyncRedisStore) == parameters(RedisStore)
