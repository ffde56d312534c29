"""Part 4 of the suite: a read-mostly workload on PostgreSQL + Redis + memory.

Keys follow a Zipf distribution (s = 1.1) over 100,000 rows, mapped to ids through a
fixed random permutation; 95% of the operations read one row, 5% update one.  Each
worker process is a small app: per request a fresh session; with the cache, a lookup is
``chain.get(Account, key)`` on ``[ProcessMemoryStore(), RedisStore, SqlAlchemyStore(
session=scoped)]`` (default settings: the invalidation broadcast runs) and an update
loads through the chain, changes the row and commits through a sessionmaker the chain is
attached to; without it, ``Session.get`` and the same update.  The class has an integer
``version_id_col``, so commits are written through rather than invalidated; one more
run uses a class without one.  An update that loses an optimistic-concurrency race
(``StaleDataError``) is rolled back and counted.

Steady state: Redis holds every row before the cached runs start, each process's memory
layer holds the ``HOTTEST`` rows (89% of the lookups), and each process runs ``WARM``
seconds before ``MEASURE`` seconds of measurement, when its counters start.  SQL
statements are counted with a ``before_cursor_execute`` engine event, separately for
lookups (an update's load of its row included) and for the updates' flushes.
"""

from __future__ import annotations

import bisect
import itertools
import multiprocessing
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import Any

from models import Account, Base, PlainAccount, UnversionedAccount, account_row, create, drop, fill
from sqlalchemy import create_engine, event, select
from sqlalchemy.orm import Session, scoped_session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from sa_stockpyle import attach
from sa_stockpyle.stores import ChainedStore, ProcessMemoryStore, RedisStore, SqlAlchemyStore

ROWS = 100_000
EXPONENT = 1.1
UPDATES = 0.05
PROCESSES = (1, 2, 4)
WARM = 2.0
MEASURE = 6.0
#: Rows each process's memory layer holds before it starts: 89% of the lookups.
HOTTEST = 10_000

#: The report's names of the runs, and the class each uses.
PLAIN = "no cache (Session.get)"
CACHED = "cache, write-through (version_id_col)"
INVALIDATED = "cache, invalidation (no version_id_col)"
CLASSES: dict[str, type[Base]] = {
    PLAIN: PlainAccount,
    CACHED: Account,
    INVALIDATED: UnversionedAccount,
}
LAYERS = ("memory", "Redis", "database")


@dataclass(frozen=True)
class Config:
    """What one worker process runs."""

    run: str
    postgres_url: str
    redis_url: str
    seed: int
    warm: float
    measure: float


class Zipf:
    """Draws row ids: rank ``k`` with probability proportional to ``k ** -EXPONENT``."""

    def __init__(self, seed: int) -> None:
        self.cumulative = list(itertools.accumulate(k**-EXPONENT for k in range(1, ROWS + 1)))
        self.ids = list(range(ROWS))
        random.Random(0).shuffle(self.ids)  # the same hot rows in every process
        self.random = random.Random(seed)

    def __call__(self) -> int:
        rank = bisect.bisect(self.cumulative, self.random.random() * self.cumulative[-1])
        return self.ids[min(rank, ROWS - 1)]


class _App:
    """One worker's app: a session per request, with or without the cache."""

    def __init__(self, config: Config) -> None:
        self.klass: Any = CLASSES[config.run]
        self.engine = create_engine(config.postgres_url, pool_size=2)
        #: SQL statements run, by what the app was doing: "lookup" or "update".
        self.statements: Counter[str] = Counter()
        self.phase = "lookup"
        event.listen(self.engine, "before_cursor_execute", self._count)
        self.factory = sessionmaker(self.engine)
        self.scoped = scoped_session(self.factory)
        self.chain: ChainedStore | None = None
        if config.run != PLAIN:
            layers = [
                ProcessMemoryStore(),
                RedisStore(url=config.redis_url),
                SqlAlchemyStore(session=self.scoped),
            ]
            self.chain = ChainedStore(layers)
            attach(self.factory, self.chain)

    def _count(self, *args: object) -> None:
        self.statements[self.phase] += 1

    def warm(self, hottest: list[int]) -> None:
        """Fill the memory layer with the ``hottest`` rows, from Redis."""
        if self.chain is not None:
            for low in range(0, len(hottest), 5_000):
                self.chain.batch_get(self.klass, hottest[low : low + 5_000])
                self.scoped.remove()

    def lookup(self, key: int) -> Any:
        if self.chain is None:
            with self.factory() as session:
                return session.get(self.klass, key)
        try:
            return self.chain.get(self.klass, key)
        finally:
            self.scoped.remove()

    def update(self, key: int) -> bool:
        """Add 1 to the balance of row ``key``; False when a concurrent update won."""
        session = self.scoped()
        try:
            obj = (
                session.get(self.klass, key)
                if self.chain is None
                else self.chain.get(self.klass, key)
            )
            self.phase = "update"
            obj.balance += 1
            session.commit()
        except StaleDataError:
            session.rollback()
            return False
        finally:
            self.phase = "lookup"
            self.scoped.remove()
        return True

    def reset(self) -> None:
        self.statements.clear()
        if self.chain is not None:
            for stats in self.chain.layer_stats:
                stats.reset()

    def layers(self) -> dict[str, dict[str, int]]:
        if self.chain is None:
            return {}
        return {
            name: {event: stats.count(self.klass, event) for event in ("hits", "misses")}
            for name, stats in zip(LAYERS, self.chain.layer_stats, strict=True)
        }

    def broadcast(self) -> dict[str, int]:
        """The invalidation broadcast's counters (see ``Coherence``)."""
        if self.chain is None or self.chain.coherence is None:
            return {}
        return self.chain.coherence.counts()

    def close(self) -> None:
        if self.chain is not None:
            self.chain.close()
        self.engine.dispose()


def worker(config: Config, barrier: Barrier, results: Queue[dict[str, Any]]) -> None:
    """One app process: warm up, measure, send what it counted."""
    app = _App(config)
    draw = Zipf(config.seed)
    app.warm(draw.ids[:HOTTEST])
    chance = random.Random(config.seed + 1).random
    latencies: dict[str, list[float]] = {"lookup": [], "update": []}
    counts: Counter[str] = Counter()
    barrier.wait(120)
    now = start = time.monotonic()
    warm_until, until = start + config.warm, start + config.warm + config.measure
    measured_from = None
    while now < until:
        if measured_from is None and now >= warm_until:
            measured_from = now
            app.reset()
            counts.clear()
            latencies = {"lookup": [], "update": []}
        key = draw()
        began = time.perf_counter()
        if chance() < UPDATES:
            counts["conflicts"] += not app.update(key)
            latencies["update"].append(time.perf_counter() - began)
            counts["updates"] += 1
        else:
            if app.lookup(key) is None:
                raise AssertionError(f"row {key} not found")
            latencies["lookup"].append(time.perf_counter() - began)
        counts["lookups"] += 1  # an update looks its row up too
        counts["operations"] += 1
        now = time.monotonic()
    assert measured_from is not None
    report = {
        "elapsed": now - measured_from,
        "counts": dict(counts),
        "statements": dict(app.statements),
        "lookup_latencies": latencies["lookup"],
        "update_latencies": latencies["update"],
        "layers": app.layers(),
        "broadcast": app.broadcast(),
    }
    app.close()
    results.put(report)


def _percentile(values: list[float], fraction: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=1000, method="inclusive")[round(fraction * 1000) - 1]


def _one_run(
    run: str, processes: int, postgres_url: str, redis_url: str, warm: float, measure: float
) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    results: Queue[dict[str, Any]] = context.Queue()
    workers = [
        context.Process(
            target=worker,
            args=(
                Config(run, postgres_url, redis_url, 100 * processes + n, warm, measure),
                barrier,
                results,
            ),
        )
        for n in range(processes)
    ]
    for process in workers:
        process.start()
    reports = [results.get(timeout=120 + warm + measure) for _ in workers]
    for process in workers:
        process.join(30)
        if process.exitcode != 0:
            raise RuntimeError(f"a Zipf worker of {run!r} exited with {process.exitcode}")
    counts: Counter[str] = Counter()
    statements: Counter[str] = Counter()
    layers: dict[str, Counter[str]] = {name: Counter() for name in LAYERS}
    broadcast: Counter[str] = Counter()
    lookups_seen: list[float] = []
    updates_seen: list[float] = []
    throughput = 0.0
    for report in reports:
        counts.update(report["counts"])
        statements.update(report["statements"])
        for name, events in report["layers"].items():
            layers[name].update(events)
        broadcast.update(report["broadcast"])
        lookups_seen += report["lookup_latencies"]
        updates_seen += report["update_latencies"]
        throughput += report["counts"]["operations"] / report["elapsed"]
    lookups = counts["lookups"]
    hit_ratio = {
        name: events["hits"] / (events["hits"] + events["misses"])
        for name, events in layers.items()
        if events["hits"] + events["misses"]
    }
    return {
        "throughput": throughput,
        "lookup_p50_ms": _percentile(lookups_seen, 0.5) * 1e3,
        "lookup_p99_ms": _percentile(lookups_seen, 0.99) * 1e3,
        "update_p50_ms": _percentile(updates_seen, 0.5) * 1e3,
        "update_p99_ms": _percentile(updates_seen, 0.99) * 1e3,
        "hit_ratio": hit_ratio,
        "sql_per_1000_lookups": statements["lookup"] * 1000 / lookups,
        "sql_per_1000_operations": sum(statements.values()) * 1000 / counts["operations"],
        "operations": counts["operations"],
        "lookups": lookups,
        "updates": counts["updates"],
        "conflicts": counts["conflicts"],
        "broadcast": dict(broadcast),
    }


def _warm_redis(engine: Any, redis_url: str, klass: Any) -> None:
    """Put every row into Redis, as a long-running app's cache would hold it."""
    store = RedisStore(url=redis_url)
    with Session(engine) as session:
        for low in range(0, ROWS, 10_000):
            rows = session.scalars(select(klass).where(klass.id.between(low, low + 9_999))).all()
            store.batch_put(rows)
            session.expunge_all()
    store.close()


def run(
    postgres_url: str,
    redis_url: str,
    processes: tuple[int, ...] = PROCESSES,
    warm: float = WARM,
    measure: float = MEASURE,
) -> dict[str, Any]:
    """``{run: {processes: figures}}`` for every run of every process count, the runs
    of one process count back to back."""
    engine = create_engine(postgres_url)
    classes = list(CLASSES.values())
    create(engine, classes)
    results: dict[str, Any] = {run: {} for run in CLASSES}
    try:
        for klass in classes:
            fill(engine, klass, map(account_row, range(ROWS)))
        for klass in (Account, UnversionedAccount):
            _warm_redis(engine, redis_url, klass)
        for count in processes:
            for run_name in CLASSES:
                print(f"  Zipf workload, {count} process(es), {run_name} ...", flush=True)
                results[run_name][str(count)] = _one_run(
                    run_name, count, postgres_url, redis_url, warm, measure
                )
    finally:
        drop(engine, classes)
        engine.dispose()
    return results
