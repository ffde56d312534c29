"""A worker process: its own engine, chain and attachment, the mix, and its own checks.

Started by the ``spawn`` method (:func:`work`), each worker builds ``ChainedStore([
RedisStore, SqlAlchemyStore])`` (a ``ProcessMemoryStore`` in front with ``memory_layer``)
and :func:`~sa_stockpyle.attach`, waits for the others, runs the mix, then waits until
its chain uses Redis again (:meth:`Worker.settle`) and compares its memory layer with the
database once every other worker's last invalidation has arrived
(:meth:`Worker.check_memory`).  With ``fork`` it forks after using its chain, and the
child works with the chain it inherited, as a preloading server's workers do.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import NoReturn

from sqlalchemy import create_engine, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from sa_stockpyle import attach
from sa_stockpyle.asyncio.chained import _GreenletChain
from sa_stockpyle.asyncio.redis import _GreenletRedisStore
from sa_stockpyle.greenlets import run
from sa_stockpyle.stores import BaseStore, ChainedStore, ProcessMemoryStore, SqlAlchemyStore
from stress.consistency.checks import committed_histories, database_rows, stale_entries
from stress.consistency.report import WorkerReport
from stress.consistency.schema import CLASSES, ROWS, Committed, Plain
from stress.consistency.writes import Writer
from stress.ordering import TracedRedis

#: Seconds a worker may take to start (imports, connections) or to wait for the others.
SETUP_TIMEOUT = 120.0
#: Seconds a worker waits for the other workers' last invalidations (--memory-layer), or
#: for its chain to use Redis again after the last fault.
FENCE_TIMEOUT = 30.0


@dataclass(frozen=True)
class Config:
    """What a worker process is told to do (picklable: the ``spawn`` method sends it)."""

    postgres_url: str
    redis_url: str
    prefix: str
    seconds: float
    memory_layer: bool
    seed: int
    index: int
    processes: int
    chaos: bool
    #: Build and use the chain, then fork: the child works with the inherited chain, as
    #: a worker of a preloading server or a prefork pool does.
    fork: bool = False
    #: An asyncio worker: asyncpg and redis.asyncio, the mix run in a greenlet on an
    #: event loop (as ``AsyncSession`` runs the ORM), the chain an ``AsyncChainedStore``'s.
    asyncio: bool = False


class AsyncTracedRedis(TracedRedis, _GreenletRedisStore):
    """:class:`TracedRedis` on the asyncio transport: an ``AsyncRedisStore``'s store."""


class _Memory(ProcessMemoryStore):
    """A ProcessMemoryStore that notes each class it has invalidated (the fences).

    A flush of the layer (the broadcast subscription was lost) starts new generations of
    every class too, so generations cannot tell a fence's arrival from a flush.
    """

    def __init__(self, prefix: str) -> None:
        super().__init__(prefix=prefix)
        self.invalidated: set[type] = set()

    def invalidate_class(self, klass: type) -> None:
        """Invalidate, then note ``klass``."""
        super().invalidate_class(klass)
        self.invalidated.add(klass)


def _fence(index: int) -> type:
    """The class whose invalidation worker ``index`` broadcasts after its last operation.

    Never stored: invalidating it only sends a message, behind every earlier message of
    that worker (one publishing thread, one Redis server).  A new class per call, under
    the same name in every process, so each process resolves the others' messages.
    """
    name = f"Fence{index}"
    return type(
        name, (), {"__stockpyle_keys__": ["id"], "__module__": __name__, "__qualname__": name}
    )


class Worker:
    """One process's engine, sessions, cache layers, attachment and operation mix
    (:attr:`mix`)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        if config.chaos:
            # Each failure of Redis is logged as a warning: thousands, all expected, all
            # counted in the report.  Errors (a traceback) still show.
            logging.getLogger("sa_stockpyle").setLevel(logging.ERROR)
        redis: TracedRedis
        if config.asyncio:
            # The synchronous side of an AsyncEngine: what an AsyncSession's own Session
            # runs on, in its greenlet.  The chain is an AsyncChainedStore's.
            url = make_url(config.postgres_url).set(drivername="postgresql+asyncpg")
            self.engine = create_async_engine(url, pool_size=2, max_overflow=2).sync_engine
            redis = AsyncTracedRedis(url=config.redis_url, prefix=config.prefix)
        else:
            self.engine = create_engine(config.postgres_url, pool_size=2, max_overflow=2)
            redis = TracedRedis(url=config.redis_url, prefix=config.prefix)
        factory = sessionmaker(self.engine)
        # One short-lived session per operation: scoped() opens it, remove() closes it.
        # Per thread; in an asyncio worker, per task (its tasks share one thread).
        self.scoped = scoped_session(
            factory, scopefunc=asyncio.current_task if config.asyncio else None
        )
        self.memory = _Memory(config.prefix) if config.memory_layer else None
        caches: list[BaseStore] = [redis] if self.memory is None else [self.memory, redis]
        # With a memory layer the chain broadcasts invalidations between the workers; on a
        # channel of this run's own, so other users of the Redis server neither hear nor
        # disturb it.
        chain = _GreenletChain if config.asyncio else ChainedStore
        self.store = chain(
            [*caches, SqlAlchemyStore(session=self.scoped)],
            channel=f"{config.prefix}:invalidations",
        )
        self.fences = [_fence(index) for index in range(config.processes)]
        if self.memory is not None:
            for fence in self.fences:
                self.memory.get(fence, 0)  # makes its key: the process now knows the class
        self.redis_stats = self.store.layer_stats[len(self.store.stores) - 2]
        self.handle = attach(factory, self.store)
        self.report = WorkerReport(pid=os.getpid(), index=config.index, asyncio=config.asyncio)
        self.mix = Writer(
            random.Random(config.seed * 1_000_003 + config.index),
            self.engine,
            factory,
            self.scoped,
            self.store,
            redis,
            self.redis_stats,
            self.report,
        )

    def warm_up(self) -> None:
        """Read every row through the chain, filling its layers (before a fork)."""
        self.scoped()
        try:
            for klass in CLASSES:
                self.store.batch_get(klass, range(1, ROWS + 1))
        finally:
            self.scoped.remove()

    def close(self) -> None:
        """Detach, close the layers, dispose of the engine."""
        self.handle.detach()
        self.scoped.remove()
        self.store.close()
        self.engine.dispose()

    def finish(self) -> WorkerReport:
        """The report, with the chain's and the attachment's counters."""
        report = self.report
        last = len(self.store.stores) - 1
        for index, stats in enumerate(self.store.layer_stats):
            events: Counter[str] = Counter()
            for by_event in stats.as_dict().values():
                events.update(by_event)
            report.layer_events[self.store.layer_name(index)] = dict(events)
            if index != last:
                report.cache_hits += events["hits"]
        report.redis = report.layer_events[self.store.layer_name(last - 1)]
        report.writethrough_errors = self.handle.stats.count(None, "errors")
        report.inexact = self.handle.stats.count(None, "inexact")
        report.refused = self.handle.stats.count(None, "refused")
        if self.store.coherence is not None:
            report.broadcast = self.store.coherence.counts()
        return report

    def settle(self) -> None:
        """Wait until the chain reads Redis again (after the last fault, --chaos).

        The chain uses a layer only once it has made up for every write it missed while
        the layer was down: from then on this process leaves nothing stale behind.
        """
        deadline = time.monotonic() + FENCE_TIMEOUT
        while True:
            asked = self._redis_reads()
            self.scoped()
            try:
                self.store.get(Plain, ROWS + 1)  # no such row: every layer is asked
            finally:
                self.scoped.remove()
            if self._redis_reads() > asked:
                return
            if time.monotonic() > deadline:
                self.report.unsettled.append(
                    f"process {self.report.pid}: the chain did not use Redis again within "
                    f"{FENCE_TIMEOUT:g} s after the workers stopped"
                )
                return
            time.sleep(0.05)  # the layer rests after a failure; no race depends on it

    def _redis_reads(self) -> int:
        return self.redis_stats.count(None, "hits") + self.redis_stats.count(None, "misses")

    # -- the memory layer check -----------------------------------------------------------

    def check_memory(self) -> None:
        """Once every other worker has stopped and its invalidations have arrived, compare
        this process's memory layer with the database."""
        memory = self.memory
        if memory is None:
            return
        # Invalidations travel asynchronously.  Each worker broadcasts its fence after its
        # last operation; once this process has applied the fence of every other worker,
        # it has applied all their earlier messages, and nobody writes any more.
        self.store.invalidate_class(self.fences[self.config.index])
        others = [f for i, f in enumerate(self.fences) if i != self.config.index]
        deadline = time.monotonic() + FENCE_TIMEOUT
        waiting = others
        while waiting and time.monotonic() < deadline:
            time.sleep(0.001)  # polls for the fences' arrival; no race depends on it
            waiting = [fence for fence in waiting if fence not in memory.invalidated]
        for fence in waiting:
            self.report.memory_stale.append(
                f"memory of {self.report.pid}: the last invalidation of worker "
                f"{self.fences.index(fence)} did not arrive within {FENCE_TIMEOUT:g} s"
            )
        with Session(self.engine) as session:
            histories, _ = committed_histories(
                session.scalars(select(Committed).order_by(Committed.seq))
            )
            for klass in CLASSES:
                rows = database_rows(session, klass)
                checked, held, stale, late = stale_entries(
                    memory,
                    f"memory of {self.report.pid}:",
                    klass,
                    rows,
                    self.mix.known[klass.__name__],
                    histories,
                )
                self.report.memory_checked += checked
                self.report.memory_held += held
                self.report.memory_stale += stale
                self.report.memory_late += late


def work(config: Config, start: Barrier, results: Queue[WorkerReport]) -> None:
    """A worker process: set up, wait for the others, loop, check, report.

    With ``config.fork`` it sets up and uses its chain, then forks: the child does the
    rest and reports, and this process waits for it."""
    try:
        worker = Worker(config)
        if config.fork:
            worker.warm_up()
            child = os.fork()
            if child:
                try:
                    os.waitpid(child, 0)
                finally:
                    worker.close()
                return
            _in_forked_child(worker, start, results)
    except BaseException:
        # Release the others from the barrier, and tell the parent why.
        start.abort()
        results.put(WorkerReport(os.getpid(), config.index, error=traceback.format_exc()))
        return
    if config.asyncio:
        # The whole run in one task's greenlet: every wait for PostgreSQL or Redis awaits.
        results.put(asyncio.run(run(_run, worker, start)))
        return
    results.put(_run(worker, start))


def _run(worker: Worker, start: Barrier) -> WorkerReport:
    """Wait for the other workers, loop, check: the report, or the traceback in one."""
    try:
        try:
            start.wait(SETUP_TIMEOUT)
            worker.mix.loop(worker.config.seconds)
            worker.settle()
            worker.check_memory()
            return worker.finish()
        finally:
            worker.close()
    except BaseException:
        start.abort()
        return WorkerReport(os.getpid(), worker.config.index, error=traceback.format_exc())


def _in_forked_child(worker: Worker, start: Barrier, results: Queue[WorkerReport]) -> NoReturn:
    """The forked worker: its own database connections (as SQLAlchemy documents for
    forks), the inherited chain, the usual run; it ends the process, whatever happens."""
    code = 1
    try:
        worker.engine.dispose(close=False)
        worker.report.pid = os.getpid()
        worker.report.forked = True
        report = _run(worker, start)
        results.put(report)
        results.close()
        results.join_thread()  # the report is sent before the process ends
        code = 0 if report.error is None else 1
    finally:
        os._exit(code)
