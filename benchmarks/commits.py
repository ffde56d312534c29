"""Part 3 of the suite: what ``attach()`` adds to a commit of 1 to 1,000 changed rows.

Each round loads the same rows (not timed), changes them and times ``session.commit()``:
the flush, the COMMIT and, when attached, the write-through to a ``[ProcessMemoryStore,
RedisStore, SqlAlchemyStore]`` chain with its default invalidation broadcast.  Plain and
attached commits alternate; the ratio is the median of the per-round ratios.  Two kinds
of class: without a ``version_id_col`` a commit leaves tombstones (the next read fills
the entry), with one it writes the new state through.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from models import Account, Base, User, account_row, create, drop, fill, user_row
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.orm import Session, sessionmaker

from sa_stockpyle import attach
from sa_stockpyle.stores import ChainedStore, ProcessMemoryStore, RedisStore, SqlAlchemyStore

ROW_COUNTS = (1, 10, 100, 1_000)

#: The report's names of the two kinds of class.
KINDS: dict[str, tuple[type[Base], str]] = {
    "invalidated (no version_id_col)": (User, "score"),
    "written through (version_id_col)": (Account, "balance"),
}
KIND_CLASSES = [klass for klass, _ in KINDS.values()]


def timed_commit(
    factory: sessionmaker[Session], klass: Any, column: str, rows: int, value: int
) -> float:
    """Seconds to commit ``rows`` changed objects (loading them is not timed)."""
    with factory() as session:
        objs = session.scalars(select(klass).where(klass.id < rows)).all()
        for obj in objs:
            setattr(obj, column, value)
        start = time.perf_counter()
        session.commit()
        return time.perf_counter() - start


def prepare(engine: Engine) -> None:
    """Create the tables of both kinds with ``max(ROW_COUNTS)`` rows each."""
    create(engine, KIND_CLASSES)
    most = max(ROW_COUNTS)
    fill(engine, User, map(user_row, range(most)))
    fill(engine, Account, map(account_row, range(most)))


def run(postgres_url: str, redis_url: str, rounds: int) -> dict[str, Any]:
    """``{kind: {rows: {"plain_ms", "attached_ms", "ratio"}}}``."""
    engine = create_engine(postgres_url)
    prepare(engine)
    plain, attached = sessionmaker(engine), sessionmaker(engine)
    chain = ChainedStore(
        [ProcessMemoryStore(), RedisStore(url=redis_url), SqlAlchemyStore(engine=engine)]
    )
    handle = attach(attached, chain)
    results: dict[str, Any] = {}
    try:
        for kind, (klass, column) in KINDS.items():
            print(f"  commits, {kind} ...", flush=True)
            results[kind] = {}
            for rows in ROW_COUNTS:
                without: list[float] = []
                with_: list[float] = []
                count = rounds if rows < 1000 else max(7, rounds // 2)
                for number in range(-2, count):  # two rounds to warm up
                    first = timed_commit(plain, klass, column, rows, 2 * number)
                    second = timed_commit(attached, klass, column, rows, 2 * number + 1)
                    if number >= 0:
                        without.append(first)
                        with_.append(second)
                results[kind][str(rows)] = {
                    "plain_ms": statistics.median(without) * 1e3,
                    "attached_ms": statistics.median(with_) * 1e3,
                    "ratio": statistics.median(a / p for a, p in zip(with_, without, strict=True)),
                }
        written = chain.get(Account, 0)
        assert written is not None
        assert written.balance == 2 * count - 1, "the last commit was not written through"
    finally:
        handle.detach()
        chain.close()
        drop(engine, KIND_CLASSES)
        engine.dispose()
    return results
