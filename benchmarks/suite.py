"""The benchmark suite: sa_stockpyle against the database and a dogpile.cache setup.

Run everything with ``bash scripts/bench`` (it creates ``.venv``, installs the servers
and the ``bench`` extra), or, in that virtualenv::

    .venv-bench/bin/python benchmarks/suite.py [--postgres-url URL] [--quick] [--no-docs]

Five parts, each measured side by side in this one process (part 4 in worker
processes) and reported as ratios, because absolute times drift on shared machines:

1. single-key lookups by primary and alternate key (``lookups.py``);
2. ``batch_get`` of 10 to 10,000 keys against one ``IN`` query (``lookups.py``);
3. the commit overhead of ``attach()`` for 1 to 1,000 changed rows (``commits.py``);
4. a read-mostly Zipf workload in 1, 2 and 4 processes (``zipf.py``);
5. lookup cost against the number of cached objects and their size (``scaling.py``).

PostgreSQL must be running (``--postgres-url``; the suite creates and drops tables named
``bench_suite_*``).  Redis and memcached are throwaway servers started on free loopback
ports with ``tests/servers.py``, unless ``--redis-url`` and ``--memcached`` name running
ones; the suite fills the Redis database it is given, so name one you can lose.  Unless
``--no-docs``, it writes the tables into ``docs/benchmarks.md`` and the plots into
``docs/*.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import commits
import lookups
import redis
import report
import scaling
import zipf
from common import environment, servers
from pymemcache.client.base import Client
from sqlalchemy import create_engine, text

PARTS = ("lookups", "commits", "zipf", "scaling")
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
QUICK_SIZES = {"memory_sizes": (10**3, 10**4), "redis_sizes": (10**3, 10**4)}
DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def server_versions(postgres_url: str, redis_url: str, memcached: str) -> str:
    """The versions of the three servers, as one line."""
    engine = create_engine(postgres_url)
    with engine.connect() as connection:
        postgres = connection.execute(text("SHOW server_version")).scalar()
    engine.dispose()
    client = redis.Redis.from_url(redis_url)
    redis_version = client.info("server")["redis_version"]
    client.close()
    host, port = memcached.rsplit(":", 1)
    memcache_client = Client((host, int(port)))
    memcached_version = memcache_client.version().decode()
    memcache_client.close()
    return (
        f"PostgreSQL {str(postgres).split()[0]}, Redis {redis_version}, memcached "
        f"{memcached_version}, all on loopback"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "STOCKPYLE_BENCH_POSTGRES_URL",
            os.environ.get("STOCKPYLE_TEST_POSTGRES_URL", DEFAULT_POSTGRES),
        ),
    )
    parser.add_argument("--redis-url", help="use this Redis database (it gets filled)")
    parser.add_argument("--memcached", help="use this memcached host:port")
    parser.add_argument("--rounds", type=int, default=9, help="rounds per timed table")
    parser.add_argument(
        "--only", nargs="+", choices=PARTS, default=list(PARTS), help="run only these parts"
    )
    parser.add_argument(
        "--quick", action="store_true", help="few rounds and short runs: a smoke test"
    )
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()
    rounds = 3 if args.quick else args.rounds
    started = time.monotonic()
    env = environment()
    print(f"sa_stockpyle benchmark suite, {env['date']}")
    print(f"{env['machine']}; {env['os']}; {env['python']}; sa_stockpyle at {env['revision']}")
    print(env["packages"], flush=True)
    results: dict[str, Any] = {}
    with servers(args.redis_url, args.memcached) as (redis_url, memcached):
        env["servers"] = server_versions(args.postgres_url, redis_url, memcached)
        print(env["servers"], flush=True)
        parts: dict[str, Callable[[], Any]] = {
            "lookups": lambda: {
                "fresh": lookups.run_fresh(args.postgres_url, redis_url, memcached, rounds),
                **lookups.run(args.postgres_url, redis_url, memcached, rounds),
            },
            "commits": lambda: commits.run(args.postgres_url, redis_url, 3 * rounds),
            "zipf": lambda: zipf.run(
                args.postgres_url,
                redis_url,
                **({"warm": 0.5, "measure": 1.5} if args.quick else {}),
            ),
            # Fewer rounds: a full collection over a million cached objects takes a while.
            "scaling": lambda: {
                "count": scaling.by_count(
                    max(3, rounds - 2), **(QUICK_SIZES if args.quick else {})
                ),
                "columns": scaling.by_columns(args.postgres_url, redis_url, max(3, rounds - 2)),
            },
        }
        for name in PARTS:
            if name in args.only:
                print(f"{name}:", flush=True)
                began = time.monotonic()
                results[name] = parts[name]()
                print(f"{name}: {time.monotonic() - began:.0f} s", flush=True)
    runtime = time.monotonic() - started
    text_ = report.markdown(env, results, runtime)
    print()
    print(text_)
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "results": results}, indent=1))
    if args.no_docs or args.quick or set(args.only) != set(PARTS):
        print("docs/ not written (--no-docs, --quick or --only)")
    else:
        report.write_docs(text_, results, DOCS)
        print(f"wrote {DOCS} and its plots")


if __name__ == "__main__":
    main()
