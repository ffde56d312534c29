"""What a ``signing_key`` costs a Redis hit: signed against unsigned, with a control.

Run: ``.venv-bench/bin/python benchmarks/bench_signing.py --postgres-url
postgresql+psycopg://postgres@127.0.0.1:5432/test`` (it starts throwaway redis-server and
memcached processes unless given ``--redis-url`` and ``--memcached``).

Three chains ``[RedisStore, SqlAlchemyStore]`` over one filled Redis, built by the lookups
part of the suite (``lookups.setup``): its unsigned Redis layer, its signed one, and a
control, a second unsigned store under a prefix of the same length.  Each table times
the three in the same rounds (``common.interleaved``), every lookup in a fresh session,
and prints the median and quartiles of the per-round ratios to the unsigned chain: the
control's spread is what the machine's noise alone gives.
"""

from __future__ import annotations

import argparse
import random
import statistics
from typing import Any

import lookups
from common import Case, interleaved, servers
from lookups import REDIS_ONLY, REDIS_SIGNED, ROWS, Setup, setup
from models import User

from sa_stockpyle.stores import ChainedStore, RedisStore

CONTROL = "control: a second unsigned [Redis, db]"
#: Per table: the lookups, the rounds and the seconds of calls per case and round.
PLAN = [
    ("by id", 61, 0.1),
    ("by email", 61, 0.1),
    ("batch 10", 41, 0.2),
    ("batch 100", 41, 0.2),
    ("batch 1000", 21, 1.0),
]


def _case(s: Setup, name: str, table: str) -> Case:
    chain, sessions = s.chains[name], s.scoped
    if table.startswith("batch"):
        ids = random.Random(table).sample(range(ROWS), int(table.split()[1]))

        def batch() -> object:
            objs = chain.batch_get(User, ids)
            sessions.remove()
            return objs

        return Case(batch, before=sessions)
    key = lookups._keys(alternate=table == "by email")  # the suite's sequence of users

    def single() -> object:
        obj = chain.get(User, {"email": key()} if table == "by email" else key())
        sessions.remove()
        return obj

    return Case(single, before=sessions)


def _quartiles(values: list[float]) -> str:
    low, middle, high = statistics.quantiles(values, n=4)
    return f"{middle:.3f} ({low:.3f}-{high:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--postgres-url", required=True)
    parser.add_argument("--redis-url", help="use this Redis database (it gets filled)")
    parser.add_argument("--memcached", help="use this host:port instead of starting one")
    args = parser.parse_args()
    with (
        servers(args.redis_url, args.memcached) as (redis_url, memcached),
        setup(args.postgres_url, redis_url, memcached) as s,
    ):
        control = RedisStore(url=redis_url, prefix="stockpylf")
        s.chains[CONTROL] = ChainedStore([control, s.sql], broadcast=False)
        for low in range(0, ROWS, 5_000):  # filled, as setup() fills the others
            s.chains[CONTROL].batch_get(User, list(range(low, min(low + 5_000, ROWS))))
            s.scoped.remove()
        names = (REDIS_ONLY, REDIS_SIGNED, CONTROL)
        print(
            f"{'':12s} {'unsigned':>12s} {'signed':>12s}   signed/unsigned       control/unsigned"
        )
        for table, rounds, budget in PLAN:
            timings = interleaved({n: _case(s, n, table) for n in names}, rounds, budget)
            unsigned, signed, same = (timings[n].samples for n in names)
            per_round: dict[str, Any] = {
                "signed": [b / a for a, b in zip(unsigned, signed, strict=True)],
                "control": [b / a for a, b in zip(unsigned, same, strict=True)],
            }
            print(
                f"{table:12s} {statistics.median(unsigned) * 1e6:9.1f} µs"
                f" {statistics.median(signed) * 1e6:9.1f} µs"
                f"   {_quartiles(per_round['signed'])}   {_quartiles(per_round['control'])}",
                flush=True,
            )
        control.close()


if __name__ == "__main__":
    main()
