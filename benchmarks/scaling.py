"""Part 5 of the suite: how a lookup's cost grows with the number of cached objects and
with the size of an object.

Number of objects: one ``ProcessMemoryStore`` grows from 10^3 to 10^6 users and one
``RedisStore`` (on a redis-server of its own) from 10^3 to 10^5, filled in batches.  At
each size, ``store.get`` of random keys of the whole population is timed in the same
rounds as the same lookup on a reference store that always holds 10^3 (a second
redis-server for Redis), so the growth factor is free of the machine's drift.  These
are store lookups, without a session.  At each memory size, ``LATENCY_CALLS`` lookups
are also timed one by one, for the spread (p50, p99) and the garbage collector's pauses
among them, and one full collection of the heap is timed.

Size of an object: tables of 5 to 100 columns, 1,000 rows each; ``Session.get`` on
PostgreSQL against the chain's memory and Redis layers, each lookup in a fresh session
as in part 1.
"""

from __future__ import annotations

import gc
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from itertools import cycle
from pathlib import Path
from typing import Any

from common import Case, FreshSession, interleaved, then
from models import User, create, drop, fill, user_row, wide_class, wide_row
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from sa_stockpyle.snapshots import restore
from sa_stockpyle.stores import (
    BaseStore,
    ChainedStore,
    ProcessMemoryStore,
    RedisStore,
    SqlAlchemyStore,
)

MEMORY_SIZES = (1_000, 10_000, 100_000, 1_000_000)
REDIS_SIZES = (1_000, 10_000, 100_000)
COLUMNS = (5, 10, 25, 50, 100)
WIDE_ROWS = 1_000
REFERENCE = 1_000
#: Lookups timed one by one at each memory size, for p50 and p99.
LATENCY_CALLS = 200_000

# Row names, shared with the report.
POSTGRES = "PostgreSQL Session.get"
MEMORY = "memory layer of [memory, Redis, db]"
REDIS = "Redis layer of [memory, Redis, db]"
REDIS_ONLY = "Redis layer of [Redis, db]"


def _users(low: int, high: int) -> list[Any]:
    """Users ``low`` to ``high - 1`` as detached instances, built as a cache hit is."""
    return [restore(User, user_row(i)) for i in range(low, high)]


def _lookup(store: BaseStore, population: int) -> Callable[[], object]:
    keys = cycle(random.Random(population).choices(range(population), k=10_000)).__next__
    return lambda: store.get(User, keys())


def _spread(store: BaseStore, population: int) -> dict[str, float]:
    """p50 and p99 of ``LATENCY_CALLS`` lookups timed one by one, the garbage
    collector's pauses among them (``gc.callbacks``), and one full collection of the
    heap as it is, timed apart."""
    lookup, clock = _lookup(store, population), time.perf_counter
    samples = [0.0] * LATENCY_CALLS
    pauses: list[float] = []
    started = [0.0]

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = clock()
        else:
            pauses.append(clock() - started[0])

    gc.callbacks.append(watch)
    try:
        for i in range(LATENCY_CALLS):
            start = clock()
            lookup()
            samples[i] = clock() - start
    finally:
        gc.callbacks.remove(watch)
    cuts = statistics.quantiles(samples, n=100)
    start = clock()
    gc.collect()
    full = clock() - start
    return {
        "p50_us": cuts[49] * 1e6,
        "p99_us": cuts[98] * 1e6,
        "collections": len(pauses),
        "longest_pause_ms": max(pauses, default=0.0) * 1e3,
        "full_collection_ms": full * 1e3,
        "tracked": len(gc.get_objects()),
    }


def _grow(
    store: BaseStore,
    reference: BaseStore,
    sizes: tuple[int, ...],
    rounds: int,
    label: str,
    spread: bool = False,
) -> dict[str, dict[str, float]]:
    """Fill ``store`` size by size; time it against ``reference`` at each size (and,
    with ``spread``, the spread of its lookups, see :func:`_spread`)."""
    reference.batch_put(_users(0, REFERENCE))
    held = 0
    results = {}
    for size in sizes:
        for low in range(held, size, 10_000):
            store.batch_put(_users(low, min(low + 10_000, size)))
        held = size
        print(f"  {label}: {size:,} objects cached ...", flush=True)
        timings = interleaved(
            {
                "grown": Case(_lookup(store, size)),
                "reference": Case(_lookup(reference, REFERENCE)),
            },
            rounds,
        )
        grown, ref = timings["grown"], timings["reference"]
        results[str(size)] = {"us": grown.median * 1e6, "growth": ref.ratio(grown)}
        if spread:
            results[str(size)] |= _spread(store, size)
    return results


@contextmanager
def _redis_servers(count: int) -> Iterator[list[str]]:
    """``count`` throwaway redis-servers of this run alone."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.servers import RedisServer, free_port

    with ExitStack() as stack:
        urls = []
        for _ in range(count):
            server = RedisServer(free_port())
            server.start()
            stack.callback(server.stop)
            urls.append(server.url)
        yield urls


def by_count(
    rounds: int,
    memory_sizes: tuple[int, ...] = MEMORY_SIZES,
    redis_sizes: tuple[int, ...] = REDIS_SIZES,
) -> dict[str, Any]:
    """``{"memory": {size: ...}, "Redis": {size: ...}}``."""
    results: dict[str, Any] = {}
    memory, reference = ProcessMemoryStore(), ProcessMemoryStore()
    results["memory"] = _grow(memory, reference, memory_sizes, rounds, "memory", spread=True)
    del memory, reference
    gc.collect()
    with _redis_servers(2) as (grown_url, reference_url):
        grown, reference = RedisStore(url=grown_url), RedisStore(url=reference_url)
        try:
            results["Redis"] = _grow(grown, reference, redis_sizes, rounds, "Redis")
        finally:
            grown.close()
            reference.close()
    return results


def by_columns(postgres_url: str, redis_url: str, rounds: int) -> dict[str, Any]:
    """``{columns: {case: {"us", "faster"}}}``, ratios against ``Session.get``."""
    engine = create_engine(postgres_url)
    classes = [wide_class(n) for n in COLUMNS]
    create(engine, classes)
    results: dict[str, Any] = {}
    with ExitStack() as stack:
        stack.callback(engine.dispose)
        stack.callback(drop, engine, classes)
        scoped = scoped_session(sessionmaker(engine))
        sql = SqlAlchemyStore(session=scoped)
        memory, evicted = ProcessMemoryStore(), ProcessMemoryStore()
        chains = {
            MEMORY: ChainedStore([memory, RedisStore(url=redis_url), sql], broadcast=False),
            REDIS: ChainedStore([evicted, RedisStore(url=redis_url), sql], broadcast=False),
            REDIS_ONLY: ChainedStore([RedisStore(url=redis_url), sql], broadcast=False),
        }
        for chain in chains.values():
            stack.callback(chain.close)
        for columns, klass in zip(COLUMNS, classes, strict=True):
            fill(engine, klass, (wide_row(columns, i) for i in range(WIDE_ROWS)))
            for name in (REDIS_ONLY, MEMORY):
                chains[name].batch_get(klass, list(range(WIDE_ROWS)))
                scoped.remove()
            print(f"  objects of {columns} columns ...", flush=True)
            timings = interleaved(_width_cases(klass, engine, scoped, chains, evicted), rounds)
            base = timings[POSTGRES]
            results[str(columns)] = {
                name: {"us": timing.median * 1e6, "faster": timing.ratio(base)}
                for name, timing in timings.items()
            }
    return results


def _width_cases(
    klass: Any,
    engine: Any,
    scoped: scoped_session[Session],
    chains: dict[str, ChainedStore],
    evicted: ProcessMemoryStore,
) -> dict[str, Case]:
    fresh = FreshSession(sessionmaker(engine))

    def keys() -> Callable[[], int]:
        return cycle(random.Random(7).sample(range(WIDE_ROWS), WIDE_ROWS)).__next__

    database_key = keys()

    def database() -> object:
        session = fresh.use()
        obj = session.get(klass, database_key())
        session.close()
        return obj

    def cached(name: str) -> Callable[[], object]:
        chain, key = chains[name], keys()

        def call() -> object:
            obj = chain.get(klass, key())
            scoped.remove()
            return obj

        return call

    return {
        POSTGRES: Case(database, before=fresh.open),
        MEMORY: Case(cached(MEMORY), before=scoped),
        REDIS: Case(cached(REDIS), before=then(evicted.dictionary.clear, scoped)),
        REDIS_ONLY: Case(cached(REDIS_ONLY), before=scoped),
    }
