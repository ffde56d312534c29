"""The asyncio stores' race safety and event-loop behaviour, with every window forced open
by a hook (an ``asyncio.Event`` awaited inside the greenlet), never by a sleep: a fill
that read before a commit, commits whose cache writes arrive out of order, a commit's
write built while its COMMIT is on its way (and a COMMIT the database refuses), many
tasks missing one hot key; and, on a slow link,
lookups and commits that overlap while a timer task keeps its pace."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    async_scoped_session,
    async_sessionmaker,
    create_async_engine,
)

from sa_stockpyle import attach
from sa_stockpyle.asyncio import AsyncChainedStore, AsyncRedisStore, AsyncStore
from sa_stockpyle.asyncio.chained import _GreenletChain
from sa_stockpyle.asyncio.sqlalchemy import _GreenletSqlAlchemyStore
from sa_stockpyle.connections import _AfterCommit
from sa_stockpyle.greenlets import wait_for
from sa_stockpyle.stores import BaseStore, ProcessMemoryStore
from sa_stockpyle.stores.base import Finish, Removal, Start
from sa_stockpyle.testing import Foo
from stress.partition import Partition
from tests.asyncio_helpers import PATIENT
from tests.helpers import Statements
from tests.models import CLASSES, Doc, Item, item_tables

#: A slow link's delay per reply: every bound below is a multiple of it, never a tight time.
DELAY = 0.2


@pytest.fixture(params=["asyncpg", "psycopg"])
def url(request: pytest.FixtureRequest, postgres_url: str) -> Iterator[str]:
    """The race tables, made afresh, and their database's URL for an asyncio driver."""
    with item_tables(postgres_url):
        yield (
            make_url(postgres_url)
            .set(drivername=f"postgresql+{request.param}")
            .render_as_string(hide_password=False)
        )


class HookedDatabase(_GreenletSqlAlchemyStore):
    """The database layer, awaiting ``after_read`` once right after its next read: the
    reading task stops there, with its rows read and its fill not written."""

    after_read: asyncio.Event | None = None
    reached: asyncio.Event | None = None

    def batch_get(self, klass: type[Any], keys: Any) -> list[Any]:
        found = super().batch_get(klass, keys)
        hook, self.after_read = self.after_read, None
        if hook is not None:
            assert self.reached is not None
            self.reached.set()
            wait_for(hook.wait())  # in the greenlet: other tasks run meanwhile
        return found


class Caches:
    """A memory and a Redis layer behind an AsyncSession factory, as an app builds them."""

    def __init__(self, engine: AsyncEngine, redis_url: str, writer: BaseStore | None = None):
        self.engine = engine
        self.memory = ProcessMemoryStore()
        self.redis = AsyncRedisStore(url=redis_url, prefix=uuid.uuid4().hex, **PATIENT)
        self.factory = async_sessionmaker(engine, expire_on_commit=False)
        self.writer = (
            AsyncStore(writer)
            if writer is not None
            else AsyncChainedStore([self.memory, self.redis])
        )
        self.handle = attach(self.factory, self.writer)
        self.scoped = async_scoped_session(self.factory, scopefunc=asyncio.current_task)
        self.database = HookedDatabase(session=self.scoped)
        self.reader = AsyncChainedStore(
            [self.memory, self.redis, AsyncStore(self.database)], broadcast=False, lease_wait=1.0
        )

    async def read(self, klass: type, key: object) -> Any:
        """A request's lookup through the reader's chain, in a session of the task's own
        that ends with it."""
        try:
            return await self.reader.get(klass, key)
        finally:
            await self.scoped.remove()

    async def held(self, klass: type, key: object) -> list[Any]:
        return [self.memory.get(klass, key), await self.redis.get(klass, key)]

    async def only_in_database(self, klass: type, value: str) -> None:
        """Row 1 of ``klass``, ``value``, in the database and in neither cache layer."""
        await self.write(klass, 1, value, new=True)
        self.memory.clear()
        await self.redis.batch_delete([klass(id=1, code="c1", value=value)])

    def hold_next_read(self) -> tuple[asyncio.Event, asyncio.Event]:
        """Hold the database layer's next read right after it (see
        :class:`HookedDatabase`): the event that releases it, and the one it sets when
        it has read."""
        gate, reached = asyncio.Event(), asyncio.Event()
        self.database.after_read, self.database.reached = gate, reached
        return gate, reached

    async def write(self, klass: type, ident: int, value: str, new: bool = False) -> None:
        async with self.factory() as session:
            if new:
                fields = {"version": 1} if klass is Doc else {}
                session.add(klass(id=ident, code=f"c{ident}", value=value, **fields))
            else:
                obj = await session.get(klass, ident)
                assert obj is not None
                obj.value = value
            await session.commit()

    async def close(self) -> None:
        self.handle.detach()
        await self.scoped.remove()
        await self.reader.aclose()
        await self.writer.aclose()


@asynccontextmanager
async def caches_of(
    url: str, redis_url: str, writer: BaseStore | None = None
) -> AsyncIterator[Caches]:
    engine = create_async_engine(url, pool_size=60, max_overflow=0)
    caches = Caches(engine, redis_url, writer)
    try:
        yield caches
    finally:
        await caches.close()
        await engine.dispose()


# -- (a) a fill that read the database before a commit ------------------------------------


@pytest.mark.parametrize("klass", CLASSES, ids=lambda k: k.__name__)
def test_a_fill_never_undoes_a_commit_that_landed_after_its_read(
    url: str, redis_url: str, klass: type
) -> None:
    async def scenario() -> None:
        async with caches_of(url, redis_url) as caches:
            await caches.only_in_database(klass, "v1")
            gate, reached = caches.hold_next_read()
            reader = asyncio.create_task(caches.read(klass, 1))
            await reached.wait()  # the reader has read v1, and waits before its fill
            await caches.write(klass, 1, "v2")  # another task commits meanwhile
            gate.set()  # the reader fills, through the leases the commit voided
            got = await reader
            assert got is not None
            assert got.value == "v1"
            for held in await caches.held(klass, 1):
                assert held is None or held.value == "v2"

    asyncio.run(scenario())


@pytest.mark.parametrize("klass", CLASSES, ids=lambda k: k.__name__)
def test_a_fill_never_brings_back_a_row_deleted_after_its_read(
    url: str, redis_url: str, klass: type
) -> None:
    async def scenario() -> None:
        async with caches_of(url, redis_url) as caches:
            await caches.only_in_database(klass, "v1")
            gate, reached = caches.hold_next_read()
            reader = asyncio.create_task(caches.read(klass, {"code": "c1"}))
            await reached.wait()
            async with caches.factory() as session:
                await session.delete(await session.get(klass, 1))
                await session.commit()
            gate.set()
            assert await reader is not None  # it read the row before the delete
            assert await caches.held(klass, 1) == [None, None]
            assert await caches.held(klass, {"code": "c1"}) == [None, None]

    asyncio.run(scenario())


# -- (b) commits whose cache writes arrive in the other order ------------------------------


class GatedChain(_GreenletChain):
    """Holds the commit-time write of one task until released."""

    task: asyncio.Task[Any] | None = None
    arrived: asyncio.Event
    release: asyncio.Event

    def start_committed(self, puts: Sequence[object], removals: Sequence[Removal]) -> Finish:
        if self.task is not None and asyncio.current_task() is self.task:
            self.arrived.set()
            wait_for(self.release.wait())
        return super().start_committed(puts, removals)


@pytest.mark.parametrize("klass", CLASSES, ids=lambda k: k.__name__)
def test_an_older_commit_arriving_late_never_overwrites_a_newer_one(
    url: str, redis_url: str, klass: type
) -> None:
    async def scenario() -> None:
        memory = ProcessMemoryStore()
        redis = AsyncRedisStore(url=redis_url, prefix=uuid.uuid4().hex, **PATIENT)
        chain = GatedChain([memory, redis.sync])
        chain.arrived, chain.release = asyncio.Event(), asyncio.Event()
        async with caches_of(url, redis_url, writer=chain) as caches:
            await caches.write(klass, 1, "v1", new=True)
            chain.task = asyncio.create_task(caches.write(klass, 1, "older"))
            await chain.arrived.wait()  # committed in the database; its cache write waits
            await caches.write(klass, 1, "newer")
            chain.release.set()
            await chain.task
            for layer in (memory, redis.sync):
                held = await AsyncStore(layer).get(klass, 1)
                if klass is Doc:
                    assert held is not None
                    assert held.value == "newer"
                else:
                    assert held is None  # invalidated by both, in either order

    asyncio.run(scenario())


# -- (c) a commit's write, built while the database answers its COMMIT --------------------


class WatchedChain(_GreenletChain):
    """Notes, in ``events``, each write built ahead (with the task building it: None on
    the event loop, between tasks) and each start of one (with its task)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events: list[tuple[str, Any]] = []

    def prepare_committed(self, puts: Sequence[object], removals: Sequence[Removal]) -> Start:
        start = super().prepare_committed(puts, removals)
        self.events.append(("built", asyncio.current_task()))

        def started() -> Finish | None:
            self.events.append(("started", asyncio.current_task()))
            return start()

        return started


@asynccontextmanager
async def watched(url: str, redis_url: str) -> AsyncIterator[tuple[Caches, WatchedChain]]:
    """Caches whose commits are written through a :class:`WatchedChain` of a memory and a
    Redis layer, which notes each COMMIT sent on their engine and each return of one."""
    redis = AsyncRedisStore(url=redis_url, prefix=uuid.uuid4().hex, **PATIENT)
    chain = WatchedChain([ProcessMemoryStore(), redis.sync])
    async with caches_of(url, redis_url, writer=chain) as caches:
        dialect = caches.engine.sync_engine.dialect
        # Inside the plugin's hook (which wraps the dialect's at a session's first begin).
        hooked = isinstance(dialect.do_commit, _AfterCommit)
        commit = dialect.do_commit.commit if hooked else dialect.do_commit

        def noted(connection: Any) -> None:
            chain.events.append(("COMMIT sent", None))
            commit(connection)
            chain.events.append(("COMMIT answered", None))

        if hooked:
            dialect.do_commit.commit = noted
        else:
            dialect.do_commit = noted
        yield caches, chain


async def held_values(chain: WatchedChain, klass: type, ident: int) -> list[str | None]:
    """The value each layer of ``chain`` holds for ``ident`` (None: nothing)."""
    found = [await AsyncStore(layer).get(klass, ident) for layer in chain.stores]
    return [None if obj is None else obj.value for obj in found]


@pytest.mark.parametrize("klass", CLASSES, ids=lambda k: k.__name__)
def test_a_commit_builds_its_write_while_the_database_answers_its_commit(
    url: str, redis_url: str, klass: type
) -> None:
    async def scenario() -> None:
        async with watched(url, redis_url) as (caches, chain):
            await caches.write(klass, 1, "v1", new=True)
            await caches.write(klass, 1, "v2")
            chain.events.clear()
            task = asyncio.create_task(caches.write(klass, 1, "v3"))
            await task
            assert chain.events == [
                ("COMMIT sent", None),
                ("built", None),  # on the loop, while the COMMIT was on its way
                ("COMMIT answered", None),
                ("started", task),
            ]
            value = "v3" if klass is Doc else None  # written through, or removed
            assert await held_values(chain, klass, 1) == [value, value]

    asyncio.run(scenario())


@pytest.mark.parametrize("klass", CLASSES, ids=lambda k: k.__name__)
def test_a_commit_the_database_refuses_writes_nothing_it_built(
    url: str, redis_url: str, klass: type
) -> None:
    async def scenario() -> None:
        async with watched(url, redis_url) as (caches, chain):
            table = klass.__tablename__  # type: ignore[attr-defined]
            async with caches.engine.begin() as connection:
                # Checked at COMMIT: the flush goes through, the COMMIT fails.
                await connection.exec_driver_sql(
                    f"ALTER TABLE {table} ADD CONSTRAINT {table}_value UNIQUE (value) "
                    "DEFERRABLE INITIALLY DEFERRED"
                )
            await caches.write(klass, 1, "one", new=True)
            await caches.write(klass, 2, "two", new=True)
            written = caches.handle.stats.count(klass, "written")
            chain.events.clear()
            with pytest.raises(IntegrityError):
                await caches.write(klass, 2, "one")
            assert [event for event, _ in chain.events] == [
                "COMMIT sent",
                "built",  # and never started
            ]
            assert await held_values(chain, klass, 2) == ["two", "two"]
            assert caches.handle.stats.count(klass, "written") == written
            assert caches.handle.stats.count(klass, "errors") == 0

    asyncio.run(scenario())


# -- many tasks missing one hot key ---------------------------------------------------------


def test_fifty_tasks_missing_one_hot_key_cost_one_database_read(url: str, redis_url: str) -> None:
    async def scenario() -> None:
        async with caches_of(url, redis_url) as caches:
            await caches.only_in_database(Item, "hot")
            statements = Statements(caches.engine.sync_engine)

            found = await asyncio.gather(*(caches.read(Item, 1) for _ in range(50)))
            assert all(item is not None and item.value == "hot" for item in found)
            assert statements.kinds.count("SELECT") == 1  # the others waited for its fill
            assert caches.reader.layer_stats[0].count(Item, "waits") >= 49

    asyncio.run(scenario())


# -- a slow link: overlap, not queueing -----------------------------------------------------


class Ticker:
    """A timer task ticking every 10 ms; ``longest`` is its longest wait between ticks."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.ticks = 0
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            self.longest = max(self.longest, now - last)
            self.ticks += 1
            last = now

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def test_lookups_on_a_slow_link_overlap_and_never_hold_up_the_loop(redis_url: str) -> None:
    host, port = make_url(redis_url).host, make_url(redis_url).port

    async def scenario(link: Partition) -> None:
        store = AsyncRedisStore(url=f"redis://{link.address}/0", timeout=10 * DELAY)
        try:
            await store.batch_put([Foo(key=i, zap=i, bar=i) for i in range(10)])
            link.delay, link.most_in_flight = DELAY, 0
            ticker = Ticker()
            found = await asyncio.gather(*(store.get(Foo, i) for i in range(10)))
            await ticker.stop()
            assert [foo.key for foo in found if foo is not None] == list(range(10))
            assert link.most_in_flight == 10  # all ten waited for Redis at once
            # The loop ran its timer throughout: no wait near a reply's delay.
            assert ticker.longest < DELAY / 2, ticker.longest
            assert ticker.ticks >= 5
        finally:
            link.delay = 0.0
            await store.aclose()

    assert host is not None
    assert port is not None
    with Partition(host, port) as link:
        asyncio.run(scenario(link))


def test_commits_on_a_slow_link_overlap_and_never_hold_up_the_loop(
    url: str, redis_url: str
) -> None:
    parsed = make_url(redis_url)
    assert parsed.host is not None
    assert parsed.port is not None

    async def scenario(link: Partition) -> None:
        async with caches_of(url, redis_url) as caches:
            slow = AsyncRedisStore(url=f"redis://{link.address}/0", timeout=10 * DELAY)
            handle = attach(caches.factory, AsyncChainedStore([slow], broadcast=False))
            try:
                link.delay, link.most_in_flight = DELAY, 0
                ticker = Ticker()
                await asyncio.gather(*(caches.write(Item, i, "v", new=True) for i in range(5)))
                await ticker.stop()
                assert link.most_in_flight == 5  # five commits' writes awaited Redis at once
                assert ticker.longest < DELAY / 2, ticker.longest
                link.delay = 0.0
                held = await slow.batch_get(Item, range(5))
                assert [item.id for item in held if item is not None] == list(range(5))
            finally:
                link.delay = 0.0
                handle.detach()
                await slow.aclose()

    with Partition(parsed.host, parsed.port) as link:
        asyncio.run(scenario(link))


@pytest.mark.parametrize("klass", CLASSES, ids=lambda k: k.__name__)
def test_a_commit_cancelled_during_its_write_through_reaches_every_layer(
    url: str, redis_url: str, klass: type
) -> None:
    # The chain writes Redis first, then memory: a task cancelled while Redis answers
    # (the database has committed) still removes what memory holds, then is cancelled.
    parsed = make_url(redis_url)
    assert parsed.host is not None
    assert parsed.port is not None

    async def scenario(link: Partition) -> None:
        async with caches_of(url, redis_url) as caches:
            memory = ProcessMemoryStore()
            slow = AsyncRedisStore(
                url=f"redis://{link.address}/0", prefix=uuid.uuid4().hex, **PATIENT
            )
            chain = AsyncChainedStore([memory, slow], broadcast=False)
            handle = attach(caches.factory, chain)
            try:
                await caches.write(klass, 1, "v1", new=True)
                assert memory.get(klass, 1) is not None
                link.delay, link.most_in_flight = DELAY, 0
                task = asyncio.create_task(caches.write(klass, 1, "v2"))
                for _ in range(10_000):  # until the write-through waits for Redis
                    if link.most_in_flight:
                        break
                    await asyncio.sleep(0.001)
                assert link.most_in_flight == 1
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert task.cancelled()
                link.delay = 0.0
                for held in (memory.get(klass, 1), await slow.get(klass, 1)):
                    assert held is None or held.value == "v2", held
                async with caches.factory() as session:
                    assert (await session.get(klass, 1)).value == "v2"  # it committed
                # A timeout is a cancellation too: it still reads as a timeout to its
                # caller, once the write-through has reached every layer.
                await caches.write(klass, 1, "v3")
                assert memory.get(klass, 1) is None or memory.get(klass, 1).value == "v3"
                link.delay = DELAY
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(caches.write(klass, 1, "v4"), DELAY / 2)
                link.delay = 0.0
                for held in (memory.get(klass, 1), await slow.get(klass, 1)):
                    assert held is None or held.value == "v4", held
            finally:
                link.delay = 0.0
                handle.detach()
                await chain.aclose()

    with Partition(parsed.host, parsed.port) as link:
        asyncio.run(scenario(link))
