"""The asyncio stores against AsyncSession on asyncpg, in one run (docs/benchmarks.md,
"asyncio").

``python benchmarks/bench_asyncio.py [--postgres-url URL] [--redis-url URL] [--rounds N]``

1. Lookups of one key, each against ``await AsyncSession.get`` in a fresh session:
   the memory layer of ``AsyncChainedStore([memory, AsyncRedisStore, AsyncSqlAlchemyStore])``,
   Redis through ``[Redis, db]``, Redis through ``[memory, Redis, db]`` filling memory, and
   ``redis.asyncio``'s own ``GET`` of an entry of the same size (the client's floor).
2. ``batch_get`` of 1,000 keys against one ``SELECT ... IN`` of them in a fresh session.
3. What ``attach()`` adds to an ``AsyncSession`` commit of 100 changed rows, invalidated
   (no version column) and written through (a version column).
4. An app's request handlers under 100 concurrent requests of a read-mostly workload
   (95% lookups of a Zipf-distributed key, 5% updates): throughput and p99 latency with no
   cache, with sa_stockpyle (``[memory, Redis, db]``, ``attach()``), and with
   dogpile.cache on Redis called through ``asyncio.to_thread`` (its loads through a
   synchronous engine, its invalidations on each update), as sync caches are used from
   asyncio apps.  Handlers are called directly, without an HTTP framework, so the
   figures are the cache's and the database's.

Parts 1 to 3 alternate the two sides of each ratio round by round, so both see the same
machine; each figure is the median over the rounds (part 3: ten commits per round and
side, each timed alone, its median over them all).  A baseline call's session is opened
before its clock starts (as in the suite); its ``get`` and its close are timed.  A
store's call is a request: the lookup, then the end of the request's scoped session,
both timed (a request served by a cache layer opens no session).  Part 4 warms every
setup up once, then runs the three in turn, twice, and keeps each setup's better run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

import redis.asyncio
from common import environment, servers
from dogpile.cache.api import NO_VALUE
from dogpile_caching import redis_region
from models import Account, User, account_row, create, drop, fill, user_row
from sqlalchemy import create_engine, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_scoped_session,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session

from sa_stockpyle import attach
from sa_stockpyle.asyncio import AsyncChainedStore, AsyncRedisStore, AsyncSqlAlchemyStore
from sa_stockpyle.stores import ProcessMemoryStore

ROWS = 10_000
BATCH = 1_000
COMMIT_ROWS = 100
REQUESTS = 10_000
CONCURRENCY = 100
POOL = 40
WRITE_SHARE = 0.05

Call = Callable[[], Awaitable[object]]


async def per_call(fn: Call, calls: int, before: Callable[[], object] | None) -> float:
    """Seconds per call of ``fn``; ``before`` runs untimed before each call."""
    total = 0.0
    for _ in range(calls):
        if before is not None:
            before()
        start = time.perf_counter()
        await fn()
        total += time.perf_counter() - start
    return total / calls


async def compare(
    fn: Call,
    baseline: Call,
    calls: int,
    rounds: int,
    before: tuple[Callable[[], object] | None, Callable[[], object] | None] = (None, None),
) -> tuple[float, float]:
    """Median seconds per call of ``fn`` and ``baseline``, in alternating rounds."""
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(await per_call(fn, calls, before[0]))
        theirs.append(await per_call(baseline, calls, before[1]))
    return statistics.median(ours), statistics.median(theirs)


def line(name: str, ours: float, baseline: float, target: float | None = None) -> str:
    ratio = baseline / ours
    goal = (
        ""
        if target is None
        else f"  (target >= {target:g}x: {'met' if ratio >= target else 'missed'})"
    )
    return f"  {name:<58} {ours * 1e6:9.1f} us  {ratio:7.2f}x{goal}"


class Setup:
    """The engine, the stores and the keys every part uses."""

    def __init__(self, engine: AsyncEngine, redis_url: str) -> None:
        self.engine = engine
        self.factory = async_sessionmaker(engine, expire_on_commit=False)
        self.scoped = async_scoped_session(self.factory, scopefunc=asyncio.current_task)
        self.memory = ProcessMemoryStore()
        self.redis = AsyncRedisStore(url=redis_url, prefix="bench_asyncio")
        database = AsyncSqlAlchemyStore(session=self.scoped)
        self.chain = AsyncChainedStore([self.memory, self.redis, database], broadcast=False)
        self.redis_chain = AsyncChainedStore([self.redis, database], broadcast=False)

        self.fresh: AsyncSession | None = None

    def open(self) -> None:
        """Open the session the next baseline call uses (untimed, as in the suite)."""
        self.fresh = self.factory()

    async def fresh_get(self, key: int) -> object:
        """``await session.get`` in the session :meth:`open` opened, then its close."""
        assert self.fresh is not None
        try:
            return await self.fresh.get(User, key)
        finally:
            await self.fresh.close()

    async def read(self, store: AsyncChainedStore, key: int) -> object:
        """A request's lookup: the store, then the end of the request's session."""
        try:
            return await store.get(User, key)
        finally:
            await self.scoped.remove()

    async def close(self) -> None:
        await self.chain.aclose()
        await self.redis_chain.aclose()


async def lookups(setup: Setup, rounds: int) -> list[str]:
    key = random.Random(1).randrange(ROWS)
    await setup.read(setup.chain, key)  # fills memory and Redis
    raw = redis.asyncio.Redis.from_url(str(setup.redis.sync.location))
    # The floor reads the largest value the store wrote: an entry, not a pointer to one.
    values = [await raw.get(name) async for name in raw.scan_iter(match="bench_asyncio:*")]
    raw_key = "bench_asyncio_raw"
    await raw.set(raw_key, max((v for v in values if v), key=len))

    async def baseline() -> object:
        return await setup.fresh_get(key)

    async def memory_hit() -> object:
        return await setup.read(setup.chain, key)

    async def redis_hit() -> object:
        return await setup.read(setup.redis_chain, key)

    async def redis_hit_filling_memory() -> object:
        return await setup.read(setup.chain, key)

    def evict() -> None:
        setup.memory.clear()

    async def raw_get() -> object:
        return await raw.get(raw_key)

    results = ["1. One key (per call; ratio: AsyncSession.get in a fresh session / this)"]
    cases: list[tuple[str, Call, Callable[[], object] | None, float | None]] = [
        ("memory layer of [memory, Redis, db]", memory_hit, None, 30),
        ("Redis through [Redis, db]", redis_hit, None, 4),
        (
            "Redis through [memory, Redis, db], filling memory",
            redis_hit_filling_memory,
            evict,
            4,
        ),
        ("redis.asyncio GET of the same bytes (the floor)", raw_get, None, None),
    ]
    base_times = []
    for name, fn, before, target in cases:
        ours, theirs = await compare(fn, baseline, 300, rounds, (before, setup.open))
        base_times.append(theirs)
        results.append(line(name, ours, theirs, target))
    base = statistics.median(base_times) * 1e6
    results.insert(1, f"  {'await AsyncSession.get, fresh session':<58} {base:9.1f} us")
    await raw.aclose()
    return results


async def batches(setup: Setup, rounds: int) -> list[str]:
    keys = random.Random(2).sample(range(ROWS), BATCH)
    await setup.chain.batch_get(User, keys)
    await setup.scoped.remove()

    async def in_query() -> object:
        assert setup.fresh is not None
        try:
            statement = select(User).where(User.id.in_(keys))
            return (await setup.fresh.scalars(statement)).all()
        finally:
            await setup.fresh.close()

    async def from_redis() -> object:
        try:
            return await setup.redis_chain.batch_get(User, keys)
        finally:
            await setup.scoped.remove()

    async def from_memory() -> object:
        try:
            return await setup.chain.batch_get(User, keys)
        finally:
            await setup.scoped.remove()

    results = [
        f"2. batch_get of {BATCH:,} keys (ratio: one SELECT ... IN in a fresh session / this)"
    ]
    for name, fn in (("Redis through [Redis, db]", from_redis), ("memory layer", from_memory)):
        ours, theirs = await compare(fn, in_query, 5, rounds, (None, setup.open))
        results.append(line(name, ours, theirs))
    return results


async def commits(setup: Setup, redis_url: str, rounds: int) -> list[str]:
    plain = async_sessionmaker(setup.engine, expire_on_commit=False)
    attached = async_sessionmaker(setup.engine, expire_on_commit=False)
    writes = AsyncChainedStore(
        [ProcessMemoryStore(), AsyncRedisStore(url=redis_url, prefix="bench_asyncio_c")]
    )
    handle = attach(attached, writes)
    value = 0

    async def commit(factory: async_sessionmaker[Any], klass: Any, column: str) -> float:
        nonlocal value
        value += 1
        async with factory() as session:
            objs = (await session.scalars(select(klass).where(klass.id < COMMIT_ROWS))).all()
            for obj in objs:
                setattr(obj, column, value)
            start = time.perf_counter()
            await session.commit()
            return time.perf_counter() - start

    results = [
        f"3. Commit of {COMMIT_ROWS} changed rows (ratio: attached / plain; target <= 1.25x)"
    ]
    for name, klass, column in (
        ("invalidated (no version_id_col)", User, "score"),
        ("written through (version_id_col)", Account, "balance"),
    ):
        ours, theirs = [], []
        for _ in range(rounds * 10):
            ours.append(await commit(attached, klass, column))
            theirs.append(await commit(plain, klass, column))
        mine, base = statistics.median(ours), statistics.median(theirs)
        verdict = "met" if mine / base <= 1.25 else "missed"
        ratio = f"{mine / base:5.2f}x ({verdict})"
        results.append(f"  {name:<58} {base * 1e3:7.2f} ms -> {mine * 1e3:7.2f} ms  {ratio}")
    handle.detach()
    await writes.aclose()
    return results


def zipf_keys(count: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    weights = [1 / (rank + 1) for rank in range(ROWS)]
    return rng.choices(range(ROWS), weights=weights, k=count)


def p99(latencies: list[float]) -> float:
    latencies = sorted(latencies)
    return latencies[int(len(latencies) * 0.99)]


async def serve(
    handler: Callable[[int, bool], Awaitable[object]], seed: int
) -> tuple[float, float, float, float]:
    """Requests per second, and p99 seconds of all, of the lookups and of the updates, of
    ``REQUESTS`` requests, ``CONCURRENCY`` at a time."""
    keys = zipf_keys(REQUESTS, seed)
    rng = random.Random(seed)
    writes = [rng.random() < WRITE_SHARE for _ in keys]
    latencies: dict[bool, list[float]] = {False: [], True: []}
    queue: asyncio.Queue[tuple[int, bool]] = asyncio.Queue()
    for item in zip(keys, writes, strict=True):
        queue.put_nowait(item)

    async def client() -> None:
        while True:
            # A server awaits the next request's bytes: other tasks run in between, even
            # after a request that never had to wait (a memory hit).
            await asyncio.sleep(0)
            if queue.empty():
                return
            key, write = queue.get_nowait()
            start = time.perf_counter()
            await handler(key, write)
            latencies[write].append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - start
    every = latencies[False] + latencies[True]
    return REQUESTS / elapsed, p99(every), p99(latencies[False]), p99(latencies[True])


async def app(setup: Setup, sync_url: str, redis_url: str) -> list[str]:
    # 100 requests share 40 connections, as an app's pool does (PostgreSQL allows 100).
    engine = create_async_engine(setup.engine.url, pool_size=POOL, max_overflow=0)
    factory = async_sessionmaker(engine, expire_on_commit=False)
    scoped = async_scoped_session(factory, scopefunc=asyncio.current_task)
    memory = ProcessMemoryStore()
    redis_store = AsyncRedisStore(url=redis_url, prefix="bench_asyncio_app")
    writes = AsyncChainedStore([memory, redis_store])
    store = AsyncChainedStore(
        [memory, redis_store, AsyncSqlAlchemyStore(session=scoped)], broadcast=False
    )
    attached = async_sessionmaker(engine, expire_on_commit=False)
    handle = attach(attached, writes)
    sync_engine = create_engine(sync_url, pool_size=POOL, max_overflow=0)
    region = redis_region(redis_url)

    async def write(sessions: async_sessionmaker[Any], key: int) -> None:
        async with sessions() as session:
            await session.execute(update(User).where(User.id == key).values(score=User.score + 1))
            await session.commit()

    async def no_cache(key: int, is_write: bool) -> object:
        if is_write:
            return await write(factory, key)
        async with factory() as session:
            return await session.get(User, key)

    async def stockpyle(key: int, is_write: bool) -> object:
        if is_write:
            return await write(attached, key)
        try:
            return await store.get(User, key)
        finally:
            await scoped.remove()

    def load(key: int) -> object:
        def create() -> object:
            with Session(sync_engine) as session:
                return session.get(User, key)

        return region.get_or_create(f"user:{key}", create)

    async def dogpile(key: int, is_write: bool) -> object:
        if is_write:
            await write(factory, key)
            return await asyncio.to_thread(region.delete, f"user:{key}")
        found = await asyncio.to_thread(load, key)
        assert found is not NO_VALUE
        return found

    results = [
        f"4. {REQUESTS:,} requests, {CONCURRENCY} at a time, {1 - WRITE_SHARE:.0%} lookups of "
        "Zipf keys (throughput; p99 of all, of lookups, of updates; throughput / no cache's)"
    ]
    setups: list[tuple[str, Callable[[int, bool], Awaitable[object]]]] = [
        ("no cache", no_cache),
        ("sa_stockpyle", stockpyle),
        ("dogpile.cache via to_thread", dogpile),
    ]
    best: dict[str, tuple[float, float, float, float]] = {}
    for _name, handler in setups:
        await serve(handler, seed=99)  # warm-up, untimed: caches filled, pools opened
    for attempt in range(2):
        for name, handler in setups:
            got = await serve(handler, seed=attempt)
            if name not in best or got[0] > best[name][0]:
                best[name] = got
    base = best["no cache"][0]
    for name, (throughput, *tails) in best.items():
        speed = f"{throughput:9,.0f} req/s"
        every, lookups, updates = (f"{tail * 1e3:6.1f}" for tail in tails)
        results.append(
            f"  {name:<30} {speed}  p99 {every} ms ({lookups} | {updates})  "
            f"{throughput / base:5.2f}x"
        )
    handle.detach()
    await writes.aclose()  # first: its broadcast listens on the layers both chains close
    await store.aclose()
    await engine.dispose()
    sync_engine.dispose()
    return results


async def main_async(postgres_url: str, redis_url: str, rounds: int) -> None:
    """Run the four parts, printing each as it ends."""
    async_url = make_url(postgres_url).set(drivername="postgresql+asyncpg")
    engine = create_async_engine(async_url)
    setup = Setup(engine, redis_url)
    try:
        for part in (
            lookups(setup, rounds),
            batches(setup, rounds),
            commits(setup, redis_url, rounds),
            app(setup, postgres_url, redis_url),
        ):
            print("\n".join(await part), flush=True)
    finally:
        await setup.close()
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "STOCKPYLE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    sync = create_engine(args.postgres_url)
    drop(sync, [User, Account])
    create(sync, [User, Account])
    fill(sync, User, map(user_row, range(ROWS)))
    fill(sync, Account, map(account_row, range(COMMIT_ROWS)))
    print(" ".join(f"{k}={v}" for k, v in environment().items()))
    print(f"asyncpg={metadata.version('asyncpg')} greenlet={metadata.version('greenlet')}")
    try:
        with servers(args.redis_url) as (redis_url, _):
            asyncio.run(main_async(args.postgres_url, redis_url, args.rounds))
    finally:
        drop(sync, [User, Account])
        sync.dispose()


if __name__ == "__main__":
    main()
