"""What a live SqlAlchemyStore and attach() cost a query in a session nothing attached.

Run: ``.venv-bench/bin/python benchmarks/bench_listeners.py`` (SQLite in memory; needs
no server).  One process maps the same table twice: ``Served`` is the class a
``[ProcessMemoryStore, SqlAlchemyStore]`` chain reads and an ``attach()`` writes through
(both kept alive and used before the timing), ``Twin`` a copy in its own registry that
no store has seen.  A plain ``sessionmaker`` on the same engine then loads the same
1,000 rows with ``SELECT ... WHERE id IN (...)`` through either class, the two
alternating round by round, and the medians are compared: the ratio is what the store's
and the attachment's listeners add to a query they do not serve.  Each run also counts
the calls into sa_stockpyle's modules during one query of each class.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from types import FrameType
from typing import Any

import sqlalchemy
from sqlalchemy import Engine, String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool

from sa_stockpyle import attach
from sa_stockpyle.stores import ChainedStore, ProcessMemoryStore, SqlAlchemyStore


class ServedBase(DeclarativeBase):
    pass


class TwinBase(DeclarativeBase):
    pass


class RowColumns:
    """The table both classes map."""

    __tablename__ = "bench_listener_rows"
    __stockpyle_keys__ = ["id"]

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    score: Mapped[int]


class Served(RowColumns, ServedBase):
    pass


class Twin(RowColumns, TwinBase):
    pass


def load(factory: sessionmaker[Session], klass: type[Any], ids: list[int]) -> float:
    """Seconds for one plain ``IN`` query of ``ids`` in a new session."""
    with factory() as session:
        start = time.perf_counter()
        rows = session.scalars(select(klass).where(klass.id.in_(ids))).all()
        elapsed = time.perf_counter() - start
    assert len(rows) == len(ids)
    return elapsed


def package_calls(factory: sessionmaker[Session], klass: type[Any], ids: list[int]) -> int:
    """Calls into sa_stockpyle's modules during one query."""
    calls = 0

    def profile(frame: FrameType, event_name: str, arg: Any) -> None:
        nonlocal calls
        if event_name == "call" and str(frame.f_globals.get("__name__")).startswith(
            "sa_stockpyle."
        ):
            calls += 1

    sys.setprofile(profile)
    try:
        load(factory, klass, ids)
    finally:
        sys.setprofile(None)
    return calls


def setup(rows: int) -> tuple[Engine, Any, Any]:
    engine = create_engine(
        "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
    )
    ServedBase.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(Served(id=i, name=f"row {i}", score=i) for i in range(1, rows + 1))
        session.commit()
    served = sessionmaker(engine, expire_on_commit=False)
    store = ChainedStore([ProcessMemoryStore(), SqlAlchemyStore(session=served())])
    handle = attach(served, store)
    with served() as session:  # both at work before the timing starts
        row = session.get(Served, 1)
        assert row is not None
        row.score += 1
        session.commit()
    assert store.get(Served, 1) is not None
    assert len(store.batch_get(Served, range(1, 101))) == 100
    return engine, store, handle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1000, help="rows per query")
    parser.add_argument("--rounds", type=int, default=400, help="queries per class")
    parser.add_argument("--runs", type=int, default=1, help="independent runs")
    args = parser.parse_args()
    print(
        f"Python {platform.python_version()}, SQLAlchemy {sqlalchemy.__version__}, "
        f"SQLite in memory, {args.rows} rows per query, {args.rounds} rounds per class"
    )
    engine, store, handle = setup(args.rows)
    plain = sessionmaker(engine)  # the same engine, nothing attached
    ids = list(range(1, args.rows + 1))
    for _ in range(20):  # warm both classes' compiled caches
        load(plain, Served, ids)
        load(plain, Twin, ids)
    ratios = []
    for run in range(args.runs):
        served, twin = [], []
        for _ in range(args.rounds):
            served.append(load(plain, Served, ids))
            twin.append(load(plain, Twin, ids))
        ratio = statistics.median(served) / statistics.median(twin)
        ratios.append(ratio)
        print(
            f"run {run + 1}: served {statistics.median(served) * 1e3:.3f} ms, "
            f"twin {statistics.median(twin) * 1e3:.3f} ms, ratio {ratio:.3f}x"
        )
    print(
        f"calls into sa_stockpyle per query: served {package_calls(plain, Served, ids)}, "
        f"twin {package_calls(plain, Twin, ids)}"
    )
    if args.runs > 1:
        print(
            f"median ratio of {args.runs} runs: {statistics.median(ratios):.3f}x "
            f"({min(ratios):.3f}-{max(ratios):.3f})"
        )
    handle.detach()
    store.close()
    engine.dispose()


if __name__ == "__main__":
    main()
