"""Failing Redis under the asyncio stores: a cut link, a frozen server, a restarted one.
Each is a miss served by the database, logged and counted, never a stale entry, and the
event loop goes on meanwhile; what a layer missed is made up for before it serves again
(by the chain's catch-up timer, on the synchronous side of the same store)."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import async_scoped_session, async_sessionmaker, create_async_engine

from sa_stockpyle import attach
from sa_stockpyle.asyncio import AsyncChainedStore, AsyncRedisStore, AsyncSqlAlchemyStore
from sa_stockpyle.stores import ProcessMemoryStore, RedisStore
from stress.partition import Partition
from tests.asyncio_helpers import PATIENT
from tests.helpers import freeze, until
from tests.models import Doc, Item, item_tables
from tests.servers import RedisServer
from tests.test_asyncio_races import Ticker


@pytest.fixture(params=["asyncpg", "psycopg"])
def url(request: pytest.FixtureRequest, postgres_url: str) -> Iterator[str]:
    with item_tables(postgres_url):
        yield (
            make_url(postgres_url)
            .set(drivername=f"postgresql+{request.param}")
            .render_as_string(hide_password=False)
        )


def test_what_redis_missed_while_cut_off_is_made_up_for_before_it_serves_again(
    url: str, private_redis_server: RedisServer
) -> None:
    server = private_redis_server

    async def scenario(link: Partition) -> None:
        engine = create_async_engine(url)
        factory = async_sessionmaker(engine, expire_on_commit=False)
        memory = ProcessMemoryStore()
        redis = AsyncRedisStore(url=f"redis://{link.address}/0", timeout=0.2, connect_timeout=0.2)
        writer = AsyncChainedStore([memory, redis], catch_up_interval=0.05)
        handle = attach(factory, writer)
        other = RedisStore(url=server.url)  # another process's view of Redis
        try:
            async with factory() as session:
                session.add_all(
                    [Item(id=1, code="c1", value="v1"), Doc(id=1, code="c1", value="v1")]
                )
                await session.commit()
            assert other.get(Item, 1).value == "v1"
            link.cut("reset")
            async with factory() as session:
                (await session.get(Item, 1)).value = "v2"
                (await session.get(Doc, 1)).value = "v2"
                await session.commit()  # Redis cannot be reached: logged, counted, remembered
            assert writer.layer_stats[1].count(None, "errors") >= 1
            assert other.get(Item, 1).value == "v1"  # Redis still holds the old state
            link.heal()
            # The chain's timer makes up for it, on the store's synchronous connections.
            assert await asyncio.to_thread(
                until, lambda: writer.layer_stats[1].count(None, "caught_up") >= 2
            )
            assert other.get(Item, 1) is None
            assert other.get(Doc, 1) is None
            scoped = async_scoped_session(factory, scopefunc=asyncio.current_task)
            reader = AsyncChainedStore(
                [memory, redis, AsyncSqlAlchemyStore(session=scoped)], broadcast=False
            )
            assert (await reader.get(Item, 1)).value == "v2"
            assert (await reader.get(Doc, {"code": "c1"})).value == "v2"
            await scoped.remove()
            assert other.get(Item, 1).value == "v2"  # filled again, with the new state
            await reader.aclose()
        finally:
            handle.detach()
            await writer.aclose()
            other.close()
            await engine.dispose()

    with Partition(server.host, server.port) as link:
        asyncio.run(scenario(link))


def test_a_frozen_redis_is_a_miss_and_the_loop_runs_on(
    url: str, private_redis_server: RedisServer
) -> None:
    server = private_redis_server

    async def scenario() -> None:
        engine = create_async_engine(url)
        factory = async_sessionmaker(engine, expire_on_commit=False)
        scoped = async_scoped_session(factory, scopefunc=asyncio.current_task)
        redis = AsyncRedisStore(url=server.url, timeout=0.5, prefix=uuid.uuid4().hex)
        chain = AsyncChainedStore(
            [redis, AsyncSqlAlchemyStore(session=scoped)], broadcast=False, cooldown=0
        )

        async def request() -> Item | None:
            try:
                return await chain.get(Item, 1)
            finally:
                await scoped.remove()  # each task's session ends with it

        try:
            async with factory() as session:
                session.add(Item(id=1, code="c1", value="v1"))
                await session.commit()
            assert server.pid is not None
            freeze(server.pid)
            try:
                ticker = Ticker()
                found = await asyncio.gather(*(request() for _ in range(3)))
                await ticker.stop()
            finally:
                os.kill(server.pid, signal.SIGCONT)
            assert [item.value for item in found if item is not None] == ["v1"] * 3
            assert chain.layer_stats[0].count(Item, "errors") >= 1  # timed out: a miss
            # The loop ran its timer while the lookups waited out Redis's timeout.
            assert ticker.longest < 0.25, ticker.longest
        finally:
            await chain.aclose()
            await engine.dispose()

    asyncio.run(scenario())


def test_a_stopped_then_restarted_redis_is_a_miss_and_then_used_again(
    url: str, private_redis_server: RedisServer
) -> None:
    server = private_redis_server

    async def scenario() -> None:
        engine = create_async_engine(url)
        factory = async_sessionmaker(engine, expire_on_commit=False)
        scoped = async_scoped_session(factory, scopefunc=asyncio.current_task)
        redis = AsyncRedisStore(url=server.url, timeout=0.5)
        writer = AsyncChainedStore([redis], cooldown=0, broadcast=False)
        reader = AsyncChainedStore(
            [redis, AsyncSqlAlchemyStore(session=scoped)], cooldown=0, broadcast=False
        )
        handle = attach(factory, writer)
        try:
            async with factory() as session:
                session.add(Item(id=1, code="c1", value="v1"))
                await session.commit()
            assert (await redis.get(Item, 1)).value == "v1"
            await asyncio.to_thread(server.stop, keep_files=True)
            # Stopped: reads are served by the database, commits succeed; both counted.
            assert (await reader.get(Item, 1)).value == "v1"
            await scoped.remove()
            assert reader.layer_stats[0].count(Item, "errors") >= 1
            async with factory() as session:
                (await session.get(Item, 1)).value = "v2"
                await session.commit()
            assert writer.layer_stats[0].count(Item, "errors") >= 1
            # Started again, empty and without the store's script: written and read again.
            await asyncio.to_thread(server.start)
            async with factory() as session:
                session.add(Item(id=3, code="c3", value="v3"))
                await session.commit()
            assert (await redis.get(Item, 3)).value == "v3"
            assert (await reader.get(Item, 1)).value == "v2"
            await scoped.remove()
            assert (await redis.get(Item, 1)).value == "v2"  # filled again
        finally:
            handle.detach()
            await reader.aclose()
            await writer.aclose()
            await engine.dispose()

    asyncio.run(scenario())


def test_a_connection_the_server_closed_is_never_sent_on(redis_url: str) -> None:
    from tests.servers import redis_command

    parsed = make_url(redis_url)
    assert parsed.host is not None
    assert parsed.port is not None

    async def scenario() -> None:
        store = AsyncRedisStore(url=redis_url, prefix=uuid.uuid4().hex, **PATIENT)
        try:
            await store.put(Item(id=1, code="c1", value="v1"))
            # The server closes every client's connection (a restart, an idle timeout).
            redis_command(parsed.host, parsed.port, "CLIENT", "KILL", "TYPE", "normal")
            await asyncio.sleep(0.05)  # the loop reads the close off the idle connection
            # No command goes out on it: the lookup answers, it does not fail.
            assert (await store.get(Item, 1)).value == "v1"
        finally:
            await store.aclose()

    asyncio.run(scenario())
