"""Profiles of the hot paths behind the suite's targets, with pyinstrument.

Run: ``.venv-bench/bin/python benchmarks/profile_hot_paths.py [--postgres-url URL] [--out DIR]``
(PostgreSQL must be up; Redis and memcached are throwaway servers, as in the suite).  It
sets up the suite's data, runs each case below many times under pyinstrument (only the
calls of the case; the untimed part of a case shows as a subtree of its own) and
writes one text call tree per case into ``--out`` (default ``/tmp/stockpyle-profiles``),
printing the top of each.  The cases: a memory-layer hit, a Redis-layer hit with and
without a memory layer above, ``batch_get(1,000)`` from Redis, and attached commits of
100 rows of each kind of class.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import commits
import lookups
from common import Case, servers
from pyinstrument import Profiler
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session, sessionmaker
from suite import DEFAULT_POSTGRES

from sa_stockpyle import attach
from sa_stockpyle.stores import ChainedStore, ProcessMemoryStore, RedisStore, SqlAlchemyStore


def profile(case: Case, seconds: float) -> Profiler:
    """Run ``case`` for about ``seconds``; its untimed ``before`` is profiled too, and
    shows as a subtree of its own."""
    before = case.before or (lambda: None)
    for _ in range(3):  # warm up, unprofiled
        before()
        case.call()
    profiler = Profiler(interval=0.0002)
    profiler.start()
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        before()
        case.call()
    profiler.stop()
    return profiler


def commit_case(postgres_url: str, redis_url: str, klass: object, column: str) -> Case:
    """An attached commit of 100 changed rows; loading and changing them is the untimed
    part."""
    engine = create_engine(postgres_url)
    factory = sessionmaker(engine)
    chain = ChainedStore(
        [ProcessMemoryStore(), RedisStore(url=redis_url), SqlAlchemyStore(engine=engine)]
    )
    attach(factory, chain)
    state: dict[str, Session] = {}
    counter = iter(range(10**9))

    def before() -> None:
        session = factory()
        objs = session.scalars(select(klass).where(klass.id < 100)).all()  # type: ignore[attr-defined]
        for obj in objs:
            setattr(obj, column, next(counter))
        state["session"] = session

    def call() -> None:
        state["session"].commit()
        state["session"].close()

    return Case(call, before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES)
    parser.add_argument("--out", type=Path, default=Path("/tmp/stockpyle-profiles"))
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with (
        servers(None, None) as (redis_url, memcached),
        lookups.setup(args.postgres_url, redis_url, memcached) as s,
    ):
        single = lookups.single_cases(s, alternate=False)
        batch = lookups.batch_cases(s, 1000)
        cases: dict[str, Callable[[], Case]] = {
            "memory-hit": lambda: single[lookups.MEMORY],
            "redis-hit-after-memory": lambda: single[lookups.REDIS],
            "redis-hit": lambda: single[lookups.REDIS_ONLY],
            "postgres-session-get": lambda: single[lookups.POSTGRES],
            "redis-batch-1000": lambda: batch[lookups.REDIS_ONLY],
            "postgres-in-1000": lambda: batch[lookups.IN_QUERY],
        }
        for name, make in cases.items():
            write(args.out, name, profile(make(), args.seconds))
    with servers(None, None) as (redis_url, _):
        engine = create_engine(args.postgres_url)
        commits.prepare(engine)
        try:
            for kind, (klass, column) in commits.KINDS.items():
                case = commit_case(args.postgres_url, redis_url, klass, column)
                name = "attached-commit-100-" + kind.split()[0]
                write(args.out, name, profile(case, args.seconds))
        finally:
            commits.drop(engine, commits.KIND_CLASSES)
            engine.dispose()


def write(folder: Path, name: str, profiler: Profiler) -> None:
    """Save the call tree of ``profiler`` and print its top."""
    text = profiler.output_text(unicode=False, color=False, show_all=False)
    (folder / f"{name}.txt").write_text(text)
    print(f"===== {name}  ({folder / name}.txt)")
    print("\n".join(text.splitlines()[:45]))


if __name__ == "__main__":
    main()
