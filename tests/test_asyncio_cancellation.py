"""A task cancelled while its asyncio driver's COMMIT is on its way, on a slow link to
PostgreSQL (a proxy that holds each reply): the database commits whatever the client
does, so the COMMIT is awaited to its end, the commit is written through to every layer,
and only then is the task cancelled.  And the greenlet bridge's deferral on its own."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from typing import TypeVar

import pytest
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from sa_stockpyle.asyncio import AsyncChainedStore, AsyncRedisStore, AsyncSqlAlchemyStore
from sa_stockpyle.greenlets import cancellation_deferred, pause, run, run_apart, wait_for
from sa_stockpyle.stores import ProcessMemoryStore
from stress.partition import Partition
from tests.asyncio_helpers import PATIENT
from tests.models import CLASSES, Doc, Item, item_tables
from tests.test_asyncio_races import DELAY, caches_of

T = TypeVar("T")


def _through(link: Partition, direct: URL, driver: str) -> URL:
    """The PostgreSQL URL ``direct`` with ``driver``, reached through ``link``."""
    host, port = link.address.rsplit(":", 1)
    return direct.set(drivername=f"postgresql+{driver}", host=host, port=int(port))


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
@pytest.mark.parametrize("klass", CLASSES, ids=lambda k: k.__name__)
def test_a_task_cancelled_while_its_commit_is_on_its_way_is_written_through(
    postgres_url: str, redis_url: str, driver: str, klass: type
) -> None:
    direct = make_url(postgres_url)
    assert direct.host is not None

    async def scenario(link: Partition) -> None:
        url = _through(link, direct, driver)
        async with caches_of(url.render_as_string(hide_password=False), redis_url) as caches:
            await caches.write(klass, 1, "v1", new=True)
            async with caches.factory() as session:
                obj = await session.get(klass, 1)
                assert obj is not None
                obj.value = "v2"
                await session.flush()
                link.delay, link.most_in_flight = DELAY, 0
                task = asyncio.create_task(session.commit())
                while not link.most_in_flight:  # the COMMIT is sent, its reply held
                    await asyncio.sleep(0.001)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert task.cancelled()
                link.delay = 0.0
            async with caches.factory() as session:
                found = await session.get(klass, 1)
                assert found is not None
                assert found.value == "v2"  # the database committed
            held = await caches.held(klass, 1)
            if klass is Doc:  # written through to both layers
                assert [obj is not None and obj.value for obj in held] == ["v2", "v2"]
            else:  # removed from both
                assert held == [None, None]

    with item_tables(postgres_url), Partition(direct.host, direct.port or 5432) as link:
        asyncio.run(scenario(link))


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
def test_a_put_cancelled_while_the_database_answers_reaches_every_layer(
    postgres_url: str, redis_url: str, driver: str
) -> None:
    direct = make_url(postgres_url)
    assert direct.host is not None

    async def scenario(link: Partition) -> None:
        url = _through(link, direct, driver)
        engine = create_async_engine(url)
        memory = ProcessMemoryStore()
        redis = AsyncRedisStore(url=redis_url, prefix=uuid.uuid4().hex, **PATIENT)
        chain = AsyncChainedStore(
            [memory, redis, AsyncSqlAlchemyStore(engine=engine)], broadcast=False
        )
        try:
            await chain.put(Item(id=1, code="c1", value="v1"))
            link.delay, link.most_in_flight = DELAY, 0
            task = asyncio.create_task(chain.put(Item(id=2, code="c2", value="v2")))
            while not link.most_in_flight:  # the database's reply is held
                await asyncio.sleep(0.001)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            link.delay = 0.0
            for layer in (memory, redis, chain):  # the database's last
                found = layer.get(Item, 2) if layer is memory else await layer.get(Item, 2)
                assert found is not None
                assert found.value == "v2"
        finally:
            link.delay = 0.0
            await chain.aclose()
            await engine.dispose()

    with item_tables(postgres_url), Partition(direct.host, direct.port or 5432) as link:
        asyncio.run(scenario(link))


# -- the greenlet bridge's deferral, on its own ---------------------------------------------


def _deferred(awaitable: Awaitable[T]) -> T:
    with cancellation_deferred():
        return wait_for(awaitable)


def test_a_deferred_wait_ends_its_wait_then_raises_the_cancellation() -> None:
    async def scenario() -> None:
        reply: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        after: list[str] = []

        def body() -> None:
            after.append(_deferred(reply))
            pause(0)  # the next wait: the cancellation is raised here

        task = asyncio.create_task(run(body))
        await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.sleep(0.01)
        assert not task.done()  # the wait goes on
        reply.set_result("answered")
        with pytest.raises(asyncio.CancelledError):
            await task
        assert after == ["answered"]
        assert not reply.cancelled()

    asyncio.run(scenario())


def test_a_deferred_wait_whose_relay_is_cancelled_before_it_runs_ends_cancelled() -> None:
    # A loop's shutdown (or a test fixture) cancels every task, the relay included, in
    # the turn after the wait began: the waiter is cancelled too, and never hangs.
    async def scenario() -> None:
        task = asyncio.create_task(run(_deferred, asyncio.sleep(30)))
        await asyncio.sleep(0)  # the task runs up to its wait; the relay has not run
        for other in asyncio.all_tasks():
            if other is not asyncio.current_task():
                other.cancel()
        await asyncio.wait({task}, timeout=5)  # a hang guard, not a timing bound
        assert task.cancelled()

    asyncio.run(scenario())


def test_run_apart_runs_its_work_once_the_function_waits_and_before_it_goes_on() -> None:
    async def scenario() -> None:
        events: list[str] = []
        reply: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def commit() -> str:
            events.append("sent")
            wait_for(reply)
            events.append("answered")
            return "done"

        def work() -> None:
            events.append("work")
            reply.set_result(None)

        assert await run(run_apart, commit, work) == "done"
        assert events == ["sent", "work", "answered"]

    asyncio.run(scenario())
