"""SqlAlchemyStore under a chain, against plain SQLAlchemy, on PostgreSQL and Redis.

Run: ``.venv-bench/bin/python benchmarks/bench_sqlalchemy_store.py --postgres-url
postgresql+psycopg://postgres@127.0.0.1:5432/test`` (PostgreSQL must be up; a throwaway
redis-server is started on a free loopback port with ``tests/servers.py``, or pass
``--redis-url redis://host:port/db``).  It creates and drops a table ``bench_sa_users``.
Each figure is the median of several rounds of many calls, in one process and one run, so
the ratios compare like with like even on a shared machine whose absolute speed drifts.

The chain is ``[ProcessMemoryStore(), RedisStore, SqlAlchemyStore(session=...)]``; every
hit is attached to that session (the weak identity map forgets it as soon as the caller
drops it, so each call attaches anew).  "From Redis" clears the memory layer before each
call, so it includes the memory fill, as a Redis hit in a real chain does.

The floor rows are what any Redis layer under a database session must do for one hit,
with no store code around it: the raw client's GET of the cached bytes, then
``codec.decode_record`` and ``codec.restore``, then attaching to the session.
"""

from __future__ import annotations

import argparse
import platform
from collections.abc import Callable
from typing import Any

import redis
import sqlalchemy
from common import RawRedis, per_call, servers
from sqlalchemy import String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sa_stockpyle.codec import decode_record
from sa_stockpyle.keys import key_spec
from sa_stockpyle.snapshots import restore, snapshot
from sa_stockpyle.stores import ChainedStore, ProcessMemoryStore, RedisStore, SqlAlchemyStore


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "bench_sa_users"
    __stockpyle_keys__ = ["id", "email"]

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    email: Mapped[str] = mapped_column(String(100), unique=True)
    score: Mapped[float]
    active: Mapped[bool]


def floors(
    shared: RedisStore, store: SqlAlchemyStore, next_id: Callable[[], int], rounds: int
) -> dict[str, float]:
    """The floor of a Redis-layer hit, step by step, without the chain around it."""
    client = RawRedis(shared.client)
    spec = key_spec(User)
    keys: dict[int, str] = {}

    def key() -> str:
        i = next_id()
        if i not in keys:
            keys[i] = shared.keymaker.key(spec, 0, (i,))
        return keys[i]

    def raw_get() -> object:
        return client.get(key())

    def raw_restore() -> object:
        entry: Any = decode_record(client.get(key()), User)
        return restore(entry.klass, entry.state)

    def raw_adopt() -> object:
        entry: Any = decode_record(client.get(key()), User)
        return store.adopt(User, [restore(entry.klass, entry.state)])

    for _ in range(10_000):  # build the keys outside the timed rounds
        key()
    timings = {
        "floor: GET on a redis-py connection": per_call(raw_get, 2000, rounds),
        "floor: GET + decode + restore": per_call(raw_restore, 2000, rounds),
        "floor: GET + decode + restore + adopt": per_call(raw_adopt, 2000, rounds),
    }
    client.close()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--postgres-url", required=True)
    parser.add_argument("--redis-url", help="use this Redis instead of starting one")
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with servers(args.redis_url) as (redis_url, _):
        run(args, redis_url)


def run(args: argparse.Namespace, redis_url: str) -> None:
    """Fill the table and the caches, time every row, print the tables."""
    engine = create_engine(args.postgres_url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(
            User(id=i, name=f"User {i}", email=f"u{i}@example.com", score=i * 1.5, active=True)
            for i in range(args.objects)
        )
        session.commit()
    redis.Redis.from_url(redis_url).flushdb()

    session = Session(engine)
    memory = ProcessMemoryStore()
    shared = RedisStore(url=redis_url)
    store = SqlAlchemyStore(session=session)
    chain = ChainedStore([memory, shared, store])
    ids = list(range(args.objects))
    chain.batch_get(User, ids)  # fills Redis and memory from the database
    session.expunge_all()
    batch = ids[:1000]
    counter = iter(range(10**9))

    def next_id() -> int:
        return next(counter) % args.objects

    def session_get() -> object:
        with Session(engine) as fresh:
            return fresh.get(User, next_id())

    def memory_get() -> object:
        return chain.get(User, next_id())

    def redis_get() -> object:
        memory.clear()
        return chain.get(User, next_id())

    def in_query() -> object:
        with Session(engine) as fresh:
            return fresh.scalars(select(User).where(User.id.in_(batch))).all()

    def memory_batch() -> object:
        return chain.batch_get(User, batch)

    def redis_batch() -> object:
        memory.clear()
        return chain.batch_get(User, batch)

    snapshots = [snapshot(obj) for obj in chain.batch_get(User, batch)]
    session.expunge_all()

    def attach() -> object:
        session.expunge_all()
        return [store.adopt(User, [restore(User, snap)]) for snap in snapshots]

    def merge() -> object:
        session.expunge_all()
        return [session.merge(restore(User, snap), load=False) for snap in snapshots]

    rounds = args.rounds
    single = {
        "Session.get, fresh session": per_call(session_get, 500, rounds),
        "chain.get from memory": per_call(memory_get, 5000, rounds),
        "chain.get from Redis": per_call(redis_get, 2000, rounds),
        **floors(shared, store, next_id, rounds),
    }
    batches = {
        "select IN (1,000), fresh session": per_call(in_query, 10, rounds),
        "chain.batch_get(1,000) from memory": per_call(memory_batch, 10, rounds),
        "chain.batch_get(1,000) from Redis": per_call(redis_batch, 10, rounds),
    }
    attaching = {
        "Session.merge(load=False)": per_call(merge, 5, rounds) / len(snapshots),
        "SqlAlchemyStore.adopt": per_call(attach, 5, rounds) / len(snapshots),
    }
    chain.close()  # stops its invalidation broadcast before the server goes away
    session.close()
    Base.metadata.drop_all(engine)

    print(
        f"Python {platform.python_version()}, SQLAlchemy {sqlalchemy.__version__}, "
        f"{platform.machine()}; {args.objects} rows; median of {rounds} rounds"
    )
    for title, results in (
        ("single get", single),
        ("batch of 1,000", batches),
        ("attach one restored object (incl. restore)", attaching),
    ):
        print(f"\n{title}")
        baseline = next(iter(results.values()))
        for name, seconds in results.items():
            print(f"  {name:<38} {seconds * 1e6:10.1f} µs  {baseline / seconds:6.1f}x")


if __name__ == "__main__":
    main()
