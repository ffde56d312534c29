"""The cost of attach(): committing updated rows with and without write-through.

Run: ``.venv-bench/bin/python benchmarks/bench_attach.py --postgres-url
postgresql+psycopg://postgres@127.0.0.1:5432/test`` (it starts a throwaway redis-server
unless given ``--redis-url``).
It creates and drops a table ``bench_attach_accounts``.  Each round loads the same rows,
changes them, and times ``session.commit()`` (the flush, the COMMIT and, when attached,
the write-through to a ``[ProcessMemoryStore, RedisStore, SqlAlchemyStore]`` chain).
Rounds with and without the plugin alternate, and the medians are compared, so both
sides see the same machine.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import redis
from common import servers
from sqlalchemy import Engine, String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from sa_stockpyle import attach
from sa_stockpyle.stores import ChainedStore, ProcessMemoryStore, RedisStore, SqlAlchemyStore


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "bench_attach_accounts"
    __stockpyle_keys__ = ["id", "email"]

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(100), unique=True)
    name: Mapped[str] = mapped_column(String(50))
    balance: Mapped[int]


def timed_commit(factory: sessionmaker[Session], rows: int, round_number: int) -> float:
    """Seconds to commit ``rows`` updated accounts (loading them is not timed)."""
    with factory() as session:
        accounts = session.scalars(select(Account).where(Account.id < rows)).all()
        for account in accounts:
            account.balance = round_number
        start = time.perf_counter()
        session.commit()
        return time.perf_counter() - start


def alternate(
    first: sessionmaker[Session], second: sessionmaker[Session], rows: int, rounds: int
) -> tuple[float, float]:
    """Median commit seconds of ``first`` and of ``second``, their rounds alternating so
    that both see the same machine."""
    one, two = [], []
    for number in range(rounds):
        one.append(timed_commit(first, rows, 2 * number))
        two.append(timed_commit(second, rows, 2 * number + 1))
    return statistics.median(one), statistics.median(two)


def arguments(description: str | None, rows: list[int], rounds: int) -> argparse.Namespace:
    """The command line of a commit benchmark."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--postgres-url", required=True)
    parser.add_argument("--redis-url", help="use this Redis instead of starting one")
    parser.add_argument("--rows", type=int, nargs="+", default=rows)
    parser.add_argument("--rounds", type=int, default=rounds)
    return parser.parse_args()


def fresh_accounts(postgres_url: str, redis_url: str, rows: int) -> Engine:
    """An engine on a new table of ``rows`` accounts, and an empty Redis database."""
    engine = create_engine(postgres_url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(
            Account(id=i, email=f"a{i}@example.com", name=f"A {i}", balance=0) for i in range(rows)
        )
        session.commit()
    redis.Redis.from_url(redis_url).flushdb()
    return engine


def main() -> None:
    args = arguments(__doc__, [100], 31)
    with servers(args.redis_url) as (redis_url, _):
        run(args, redis_url)


def run(args: argparse.Namespace, redis_url: str) -> None:
    """Fill the table, alternate plain and attached commits, print the table."""
    engine = fresh_accounts(args.postgres_url, redis_url, max(args.rows))

    plain = sessionmaker(engine)
    attached = sessionmaker(engine)
    chain = ChainedStore(
        [ProcessMemoryStore(), RedisStore(url=redis_url), SqlAlchemyStore(engine=engine)]
    )
    handle = attach(attached, chain)
    print(
        f"attach() commit overhead on PostgreSQL + Redis; {platform.python_version()}, "
        f"{platform.machine()}, median of {args.rounds} alternating rounds"
    )
    print(f"{'rows':>6} {'plain ms':>10} {'attached ms':>12} {'ratio':>7}")
    try:
        for rows in args.rows:
            base, cached = alternate(plain, attached, rows, args.rounds)
            print(f"{rows:>6} {base * 1e3:>10.2f} {cached * 1e3:>12.2f} {cached / base:>6.2f}x")
        assert chain.get(Account, 0).balance == 2 * args.rounds - 1
    finally:
        handle.detach()
        chain.close()
        Base.metadata.drop_all(engine)
        engine.dispose()


if __name__ == "__main__":
    main()
