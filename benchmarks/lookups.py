"""Parts 1 and 2 of the suite: single-key lookups and batches, each layer against the
database and against the dogpile.cache setup, every lookup in a fresh session.

Batches of ``FRESH_SIZE`` keys are timed twice: in a process of their own that has done
nothing else (``python lookups.py``, started by :func:`run`), and in the suite's process
after the single lookups and the smaller batches, so that what a process leaves behind
(listeners, registries, a larger heap) shows as a difference between the two.

Every case of one table is timed in the same rounds (see ``common.interleaved``) and its
ratio is the median of per-round ratios against the table's first row.  The cost of a
``signing_key`` is the median of per-round ratios of the signed Redis layer to the
unsigned one, timed next to each other.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from itertools import cycle
from pathlib import Path
from typing import Any

from common import (
    Case,
    FreshSession,
    RawRedis,
    Timing,
    interleaved,
    round_robin,
    sql_statements,
    then,
)
from dogpile_caching import FromCache, ORMCache, redis_region
from models import User, create, drop, fill, user_row
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from sa_stockpyle.codec import decode_record
from sa_stockpyle.keys import key_spec
from sa_stockpyle.snapshots import restore
from sa_stockpyle.stores import (
    BaseStore,
    ChainedStore,
    MemcacheStore,
    ProcessMemoryStore,
    RedisStore,
    SqlAlchemyStore,
)

#: Rows in the users table; batches of up to 10,000 keys are drawn from them.
ROWS = 20_000
#: Distinct keys the single lookups cycle through.
KEYS = 2_000
BATCH_SIZES = (10, 100, 1_000, 10_000)
#: Seconds of calls per case and round, where not 0.2.  A full garbage collection of this
#: process's heap takes tens of milliseconds; batches of 1,000 and more each leave many
#: objects alive while they run, so they set one off every few calls.  Those sizes are
#: timed call by call in turn (``common.round_robin``), so that each case is charged the
#: collections it sets off, whatever the case before it left behind.
BATCH_BUDGETS = {1_000: 1.0, 10_000: 2.0}
#: The batch size also timed in a fresh process.
FRESH_SIZE = 1_000

# Row names, shared with the report.
POSTGRES = "PostgreSQL, fresh session"
SQLITE = "SQLite, fresh session"
DOGPILE = "dogpile.cache on Redis (FromCache, merge_frozen_result)"
FLOOR = "floor: GET on a redis-py connection + decode + restore + attach"
MEMORY = "sa_stockpyle: memory layer of [memory, Redis, db]"
REDIS = "sa_stockpyle: Redis layer of [memory, Redis, db]"
REDIS_ONLY = "sa_stockpyle: Redis layer of [Redis, db]"
REDIS_SIGNED = "sa_stockpyle: Redis layer of [Redis, db], signed (signing_key)"
MEMCACHED = "sa_stockpyle: memcached layer of [memory, memcached, db]"
MEMCACHED_ONLY = "sa_stockpyle: memcached layer of [memcached, db]"
MEMORY_STORE = "context: ProcessMemoryStore.get alone (detached, no session)"
IN_QUERY = "PostgreSQL: SELECT ... IN, fresh session"
BATCH_FLOOR = "floor: MGET on a redis-py connection + decode + restore + attach"

#: The key of the signed Redis layer, which keeps its entries under a prefix of its own:
#: it reads the unsigned layer's payloads as forged, and would replace them.  The prefix
#: is as long as the default one, so keys and payloads differ only by the signature.
SIGNING_KEY = b"0123456789abcdef0123456789abcdef"
SIGNED_PREFIX = "stocksign"


@dataclass
class Setup:
    """The databases, sessions and chains both parts use."""

    postgres: Engine
    sqlite: Engine
    scoped: scoped_session[Session]
    sql: SqlAlchemyStore
    memory: ProcessMemoryStore  # the warm memory layer
    evicted: ProcessMemoryStore  # the memory layer emptied before each call
    evicted_mc: ProcessMemoryStore  # the same, above memcached
    chains: dict[str, ChainedStore]
    redis: RedisStore
    raw: RawRedis  # the floors' connection to the same Redis
    dogpile: sessionmaker[Session]


@contextmanager
def setup(postgres_url: str, redis_url: str, memcached: str) -> Iterator[Setup]:
    """Fill PostgreSQL and SQLite with ``ROWS`` users and every cache with all of them."""
    with ExitStack() as stack:
        postgres = create_engine(postgres_url)
        stack.callback(postgres.dispose)
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="stockpyle-bench-"))
        sqlite = create_engine(f"sqlite:///{Path(folder) / 'bench.db'}")
        stack.callback(sqlite.dispose)
        for engine in (postgres, sqlite):
            create(engine, [User])
            stack.callback(drop, engine, [User])
            fill(engine, User, map(user_row, range(ROWS)))

        scoped = scoped_session(sessionmaker(postgres))
        sql = SqlAlchemyStore(session=scoped)

        def layer(store: BaseStore) -> BaseStore:
            stack.callback(store.close)
            return store

        redis = RedisStore(url=redis_url)
        memory, evicted, evicted_mc = (ProcessMemoryStore() for _ in range(3))

        def chain(*layers: BaseStore) -> ChainedStore:
            # No broadcast: lookups publish nothing, and no thread should run meanwhile.
            return ChainedStore([*layers, sql], broadcast=False)

        chains = {
            MEMORY: chain(memory, layer(RedisStore(url=redis_url))),
            REDIS: chain(evicted, layer(RedisStore(url=redis_url))),
            REDIS_ONLY: chain(layer(redis)),
            REDIS_SIGNED: chain(
                layer(RedisStore(url=redis_url, prefix=SIGNED_PREFIX, signing_key=SIGNING_KEY))
            ),
            MEMCACHED: chain(evicted_mc, layer(MemcacheStore(servers=[memcached]))),
            MEMCACHED_ONLY: chain(layer(MemcacheStore(servers=[memcached]))),
        }
        for lo in range(0, ROWS, 5000):
            ids = list(range(lo, min(lo + 5000, ROWS)))
            for name in (REDIS_ONLY, REDIS_SIGNED, MEMCACHED_ONLY, MEMORY):  # shared first
                chains[name].batch_get(User, ids)
                scoped.remove()

        dogpile = sessionmaker(postgres)
        ORMCache({"default": redis_region(redis_url)}).listen_on_session(dogpile)
        raw = RawRedis(redis.client)
        stack.callback(raw.close)
        yield Setup(
            postgres, sqlite, scoped, sql, memory, evicted, evicted_mc, chains, redis, raw, dogpile
        )
        scoped.remove()


def _keys(alternate: bool, seed: int = 1) -> Callable[[], Any]:
    """Next key of a fixed random sequence of ``KEYS`` users: ids, or emails."""
    ids = random.Random(seed).sample(range(ROWS), KEYS)
    keys = [f"user{i}@example.com" for i in ids] if alternate else ids
    return cycle(keys).__next__


def single_cases(s: Setup, alternate: bool) -> dict[str, Case]:
    """The cases of one single-lookup table: by primary key, or by the email."""

    def database(factory: sessionmaker[Session], *options: Any) -> Case:
        fresh, key = FreshSession(factory), _keys(alternate)
        column = User.email if alternate else User.id

        def call() -> object:
            session = fresh.use()
            if alternate or options:
                statement = select(User).where(column == key()).options(*options)
                obj: object = session.scalars(statement).one()
            else:
                obj = session.get(User, key())
            session.close()
            return obj

        return Case(call, before=fresh.open)

    def cached(name: str, evict: Callable[[], object] | None = None) -> Case:
        chain, key, scoped = s.chains[name], _keys(alternate), s.scoped

        def call() -> object:
            obj = chain.get(User, {"email": key()} if alternate else key())
            scoped.remove()
            return obj

        return Case(call, before=scoped if evict is None else then(evict, scoped))

    cases = {
        POSTGRES: database(sessionmaker(s.postgres)),
        SQLITE: database(sessionmaker(s.sqlite)),
        DOGPILE: database(s.dogpile, FromCache("default")),
    }
    if not alternate:
        cases[FLOOR] = _floor(s)
    cases[MEMORY] = cached(MEMORY)
    memory_key = _keys(alternate)
    cases[MEMORY_STORE] = Case(
        lambda: s.memory.get(User, {"email": memory_key()} if alternate else memory_key())
    )
    cases[REDIS] = cached(REDIS, s.evicted.dictionary.clear)
    cases[REDIS_ONLY] = cached(REDIS_ONLY)
    cases[REDIS_SIGNED] = cached(REDIS_SIGNED)
    cases[MEMCACHED] = cached(MEMCACHED, s.evicted_mc.dictionary.clear)
    cases[MEMCACHED_ONLY] = cached(MEMCACHED_ONLY)
    return cases


def _floor(s: Setup) -> Case:
    """What any Redis layer under a session must do for one hit, and nothing else."""
    client, spec, key = s.raw, key_spec(User), _keys(False)
    cache_keys = {i: s.redis.keymaker.key(spec, 0, (i,)) for i in range(ROWS)}

    def call() -> object:
        entry: Any = decode_record(client.get(cache_keys[key()]), User)
        obj = s.sql.adopt(User, [restore(entry.klass, entry.state)])[0]
        s.scoped.remove()
        return obj

    return Case(call, before=s.scoped)


def _batch_floor(s: Setup, ids: list[int]) -> Case:
    """The same for a batch: one MGET of the very bytes the store wrote."""
    client, spec = s.raw, key_spec(User)
    cache_keys = [s.redis.keymaker.key(spec, 0, (i,)) for i in ids]

    def call() -> object:
        objs = []
        for raw in client.mget(cache_keys):
            entry: Any = decode_record(raw, User)
            objs.append(restore(entry.klass, entry.state))
        objs = s.sql.adopt(User, objs)
        s.scoped.remove()
        return objs

    return Case(call, before=s.scoped)


def batch_cases(s: Setup, size: int) -> dict[str, Case]:
    """The cases of one batch size: the IN query and ``batch_get`` from each layer."""
    ids = random.Random(size).sample(range(ROWS), size)
    fresh = FreshSession(sessionmaker(s.postgres))

    def in_query() -> object:
        session = fresh.use()
        objs = session.scalars(select(User).where(User.id.in_(ids))).all()
        session.close()
        return objs

    def cached(name: str, evict: Callable[[], object] | None = None) -> Case:
        chain, scoped = s.chains[name], s.scoped

        def call() -> object:
            objs = chain.batch_get(User, ids)
            scoped.remove()
            return objs

        return Case(call, before=scoped if evict is None else then(evict, scoped))

    return {
        IN_QUERY: Case(in_query, before=fresh.open),
        BATCH_FLOOR: _batch_floor(s, ids),
        MEMORY: cached(MEMORY),
        REDIS: cached(REDIS, s.evicted.dictionary.clear),
        REDIS_ONLY: cached(REDIS_ONLY),
        REDIS_SIGNED: cached(REDIS_SIGNED),
        MEMCACHED: cached(MEMCACHED, s.evicted_mc.dictionary.clear),
        MEMCACHED_ONLY: cached(MEMCACHED_ONLY),
    }


def _check(s: Setup, cases: dict[str, Case], database: tuple[str, ...]) -> None:
    """Every case but the database ones answers without SQL (its cache is warm), and
    every case answers."""
    for name, case in cases.items():
        if case.before is not None:
            case.before()
        statements, result = sql_statements(s.postgres, case.call)
        if result is None or result == [] or (isinstance(result, list) and None in result):
            raise AssertionError(f"{name} found nothing")
        if name not in database and statements:
            raise AssertionError(f"{name} ran {statements} SQL statements; its cache is cold")


def run(postgres_url: str, redis_url: str, memcached: str, rounds: int) -> dict[str, Any]:
    """Time both parts; return ``{"single": {...}, "batch": {...}}`` of medians (µs)
    and ratios against each table's first row, and ``{"signing": {...}}``: per table,
    how many times a signed Redis hit takes as long as an unsigned one."""
    results: dict[str, Any] = {"single": {}, "batch": {}, "signing": {}}
    with setup(postgres_url, redis_url, memcached) as s:
        for kind, alternate in (("primary key", False), ("alternate key", True)):
            cases = single_cases(s, alternate)
            dogpile = cases[DOGPILE]
            for _ in range(KEYS):  # fill the dogpile region with every key
                dogpile.before()  # type: ignore[misc]
                dogpile.call()
            _check(s, cases, (POSTGRES, SQLITE))
            print(f"  single lookups by {kind} ...", flush=True)
            timings = interleaved(cases, rounds)
            results["single"][kind] = _table(timings, POSTGRES)
            results["signing"][kind] = timings[REDIS_ONLY].ratio(timings[REDIS_SIGNED])
        for size in BATCH_SIZES:
            print(f"  batches of {size:,} ...", flush=True)
            timings = _batches(s, size, rounds)
            results["batch"][str(size)] = _table(timings, IN_QUERY)
            results["signing"][str(size)] = timings[REDIS_ONLY].ratio(timings[REDIS_SIGNED])
    return results


def _batches(s: Setup, size: int, rounds: int) -> dict[str, Timing]:
    """Time the batch cases of ``size`` keys."""
    cases = batch_cases(s, size)
    _check(s, cases, (IN_QUERY,))
    if size in BATCH_BUDGETS:
        return round_robin(
            cases, rounds if size < 10_000 else max(3, rounds - 4), BATCH_BUDGETS[size]
        )
    return interleaved(cases, rounds, 0.2)


def run_fresh(postgres_url: str, redis_url: str, memcached: str, rounds: int) -> dict[str, Any]:
    """The batch table of ``FRESH_SIZE`` keys, timed in a new process that does nothing
    else (this file run as a script)."""
    print(f"  batches of {FRESH_SIZE:,} in a fresh process ...", flush=True)
    arguments = [postgres_url, redis_url, memcached, str(rounds)]
    done = subprocess.run(
        [sys.executable, __file__, *arguments], check=True, capture_output=True, text=True
    )
    fresh: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return fresh


def _fresh_main() -> None:
    postgres_url, redis_url, memcached, rounds = sys.argv[1:]
    with setup(postgres_url, redis_url, memcached) as s:
        table = _table(_batches(s, FRESH_SIZE, int(rounds)), IN_QUERY)
    print(json.dumps(table))


def _table(timings: dict[str, Timing], baseline: str) -> dict[str, dict[str, float]]:
    base = timings[baseline]
    return {
        name: {"us": timing.median * 1e6, "faster": timing.ratio(base)}
        for name, timing in timings.items()
    }


if __name__ == "__main__":
    _fresh_main()
