"""The invalidation broadcast: what publishing costs a commit, and how fast it arrives.

Run: ``.venv/bin/python benchmarks/bench_coherence.py --postgres-url
postgresql+psycopg://postgres@127.0.0.1:5432/test`` (it starts a throwaway redis-server
unless given ``--redis-url``).

Commits of ``--rows`` updated rows alternate between a session factory attached to a
``[ProcessMemoryStore, RedisStore, SqlAlchemyStore]`` chain with the broadcast and one
attached to the same layers without it; the medians are compared.  Meanwhile another
process subscribes with its own memory layer and records, for every message, the delay
from the sender's clock at the commit to its own clock when the eviction is done.
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import statistics
from multiprocessing.connection import Connection

import redis
from bench_attach import Account, Base, alternate
from common import servers
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker

from sa_stockpyle import attach
from sa_stockpyle.stores import ChainedStore, ProcessMemoryStore, RedisStore, SqlAlchemyStore


def subscriber(redis_url: str, pipe: Connection) -> None:
    """Another process: listen until told to stop, then send back the delays."""
    chain = ChainedStore([ProcessMemoryStore(), RedisStore(url=redis_url)])
    assert chain.coherence is not None
    pipe.send("ready")
    pipe.recv()
    pipe.send(chain.coherence.delays())
    chain.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--postgres-url", required=True)
    parser.add_argument("--redis-url", help="use this Redis instead of starting one")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 100])
    parser.add_argument("--rounds", type=int, default=101)
    args = parser.parse_args()
    with servers(args.redis_url) as (redis_url, _):
        run(args, redis_url)


def run(args: argparse.Namespace, redis_url: str) -> None:
    """Time commits with and without the broadcast; collect the delays."""
    engine = create_engine(args.postgres_url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(
            Account(id=i, email=f"a{i}@example.com", name=f"A {i}", balance=0)
            for i in range(max(args.rows))
        )
        session.commit()
    redis.Redis.from_url(redis_url).flushdb()
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    listener = context.Process(target=subscriber, args=(redis_url, theirs))
    listener.start()
    assert ours.recv() == "ready"

    def chain(broadcast: bool) -> ChainedStore:
        layers = [ProcessMemoryStore(), RedisStore(url=redis_url), SqlAlchemyStore(engine=engine)]
        return ChainedStore(layers, broadcast=broadcast)

    quiet, loud = chain(False), chain(True)
    without, with_ = sessionmaker(engine), sessionmaker(engine)
    handles = [attach(without, quiet), attach(with_, loud)]
    print(
        f"invalidation broadcast on PostgreSQL + Redis; {platform.python_version()}, "
        f"{platform.machine()}, median of {args.rounds} alternating rounds"
    )
    print(f"{'rows':>6} {'no channel ms':>14} {'channel ms':>11} {'ratio':>7}")
    try:
        for rows in args.rows:
            base, loaded = alternate(without, with_, rows, args.rounds)
            print(f"{rows:>6} {base * 1e3:>14.2f} {loaded * 1e3:>11.2f} {loaded / base:>6.2f}x")
    finally:
        for handle in handles:
            handle.detach()
        quiet.close()
        loud.close()  # sends what is queued before it returns
        ours.send("stop")
        delays = ours.recv()
        listener.join(30)
        Base.metadata.drop_all(engine)
        engine.dispose()
    cuts = statistics.quantiles(delays, n=100, method="inclusive")
    print(
        f"propagation delay to another process, {len(delays)} messages: "
        f"p50 {cuts[49] * 1e3:.2f} ms, p90 {cuts[89] * 1e3:.2f} ms, "
        f"p99 {cuts[98] * 1e3:.2f} ms, max {max(delays) * 1e3:.2f} ms"
    )


if __name__ == "__main__":
    main()
