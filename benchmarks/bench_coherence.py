"""The invalidation broadcast: what publishing costs a commit, and how fast it arrives.

Run: ``.venv-bench/bin/python benchmarks/bench_coherence.py --postgres-url
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

from bench_attach import Base, alternate, arguments, fresh_accounts
from common import servers
from sqlalchemy.orm import sessionmaker

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
    args = arguments(__doc__, [1, 100], 101)
    with servers(args.redis_url) as (redis_url, _):
        run(args, redis_url)


def run(args: argparse.Namespace, redis_url: str) -> None:
    """Time commits with and without the broadcast; collect the delays."""
    engine = fresh_accounts(args.postgres_url, redis_url, max(args.rows))
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
