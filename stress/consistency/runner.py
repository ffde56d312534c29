"""The parent of a run: the schema, the worker processes, the faults, the checks."""

from __future__ import annotations

import multiprocessing
import queue
import secrets
import time
from multiprocessing.queues import Queue
from urllib.parse import urlsplit

from sqlalchemy import create_engine

from sa_stockpyle.stores import RedisStore
from stress.chaos import DOWNTIME, FAULT_INTERVAL, QUIET, Chaos, through
from stress.consistency.checks import check, stale_now
from stress.consistency.report import Report, WorkerReport
from stress.consistency.schema import Base, create_schema
from stress.consistency.worker import SETUP_TIMEOUT, Config, work
from stress.partition import Partition

__all__ = ["run"]


def _run_workers(configs: list[Config], chaos: Chaos | None = None) -> list[WorkerReport]:
    context = multiprocessing.get_context("spawn")
    # With chaos the parent waits at the barrier too: the faults start with the workers.
    start = context.Barrier(len(configs) + (chaos is not None))
    results: Queue[WorkerReport] = context.Queue()
    processes = [
        context.Process(target=work, args=(config, start, results), name=f"stress-{config.index}")
        for config in configs
    ]
    for process in processes:
        process.start()
    if chaos is not None:
        chaos.start(start)
    reports: list[WorkerReport] = []
    finished = False
    try:
        deadline = time.monotonic() + configs[0].seconds + 3 * SETUP_TIMEOUT
        while len(reports) < len(processes):
            try:
                reports.append(results.get(timeout=1.0))
                continue
            except queue.Empty:
                pass
            # work reports every failure it can catch and then exits with 0: a non-zero
            # exit code is a process that died without a report (in start-up, or killed).
            codes = [process.exitcode for process in processes]
            if any(code not in (None, 0) for code in codes) or time.monotonic() > deadline:
                raise RuntimeError(f"stress workers did not all report (exit codes {codes})")
        finished = True
    finally:
        if chaos is not None:
            chaos.stop()
        for process in processes:
            # After a failure the others may be waiting at a barrier: do not wait for them.
            process.join(timeout=30 if finished else 0)
            if process.is_alive():
                process.terminate()
                process.join()
    errors = [report.error for report in reports if report.error is not None]
    if chaos is not None and chaos.error is not None:
        errors.append(f"fault injection failed:\n{chaos.error}")
    if errors:
        raise RuntimeError("stress worker failed:\n" + "\n".join(errors))
    return sorted(reports, key=lambda report: report.index)


def run(
    postgres_url: str,
    redis_url: str,
    processes: int,
    seconds: float,
    memory_layer: bool = False,
    seed: int = 0,
    chaos: bool = False,
    fault_interval: tuple[float, float] = FAULT_INTERVAL,
    downtime: tuple[float, float] = DOWNTIME,
    forked: int = 0,
    asyncio_workers: int = 0,
) -> Report:
    """Run the stress: ``processes`` workers for ``seconds``, then check (see the package
    :mod:`stress.consistency`).

    Parameters:
        postgres_url: a SQLAlchemy URL of a PostgreSQL database whose ``stress_*`` tables
            may be dropped and created.
        redis_url: a Redis URL; keys are written under a prefix of this run's own.
        processes: worker processes.
        seconds: how long each worker runs its operation loop.
        memory_layer: put a ``ProcessMemoryStore`` in front of Redis in every worker, and
            check it at the end.
        seed: seeds each worker's choice of operations, and the faults.
        chaos: the workers reach Redis through a :class:`~stress.partition.Partition`
            that cuts the link and heals it while they run; Redis keeps its entries.
        fault_interval: with ``chaos``, the range of seconds from one heal to the next
            cut (the first: from the start).
        downtime: with ``chaos``, the range of seconds the link stays cut.
        forked: how many of the workers fork after using their chain, and work in the
            child with the chain it inherited.
        asyncio_workers: how many of the workers (the last ones) are asyncio workers:
            asyncpg and redis.asyncio, their work run in a greenlet on an event loop.

    Raises RuntimeError when a worker fails (its traceback is in the message).
    """
    if processes < 1 or seconds <= 0:
        raise ValueError(f"need processes >= 1 and seconds > 0, got {processes}, {seconds}")
    if forked + asyncio_workers > processes:
        raise ValueError(
            f"forked ({forked}) and asyncio workers ({asyncio_workers}) are separate "
            f"workers of the {processes}"
        )
    if chaos and seconds <= QUIET:
        raise ValueError(f"chaos needs seconds > {QUIET:g} (the quiet end), got {seconds}")
    for name, (low, high) in (("fault_interval", fault_interval), ("downtime", downtime)):
        if not 0 < low <= high:
            raise ValueError(f"need 0 < low <= high for {name}, got {(low, high)}")
    started = time.monotonic()
    prefix = f"stress{secrets.token_hex(4)}"
    engine = create_engine(postgres_url)
    # The parent's own checks read Redis straight, never through the partition.
    redis = RedisStore(url=redis_url, prefix=prefix)
    partition: Partition | None = None
    faults: Chaos | None = None
    try:
        workers_url = redis_url
        if chaos:
            server = urlsplit(redis_url)
            partition = Partition(server.hostname or "127.0.0.1", server.port or 6379)
            workers_url = through(partition, redis_url)
            faults = Chaos(
                partition,
                lambda: stale_now(engine, redis),
                seconds,
                seed,
                fault_interval,
                downtime,
                SETUP_TIMEOUT,
            )
        create_schema(engine)
        configs = [
            Config(
                postgres_url,
                workers_url,
                prefix,
                seconds,
                memory_layer,
                seed,
                index,
                processes,
                chaos,
                fork=index < forked,
                asyncio=index >= processes - asyncio_workers,
            )
            for index in range(processes)
        ]
        workers = _run_workers(configs, faults)
        report = Report(processes, seconds, memory_layer, seed, prefix, 0.0, workers, chaos)
        if faults is not None:
            report.faults = faults.faults
        check(engine, redis, report)
        if report.ok:
            Base.metadata.drop_all(engine)
            keys = list(redis.client.scan_iter(match=f"{prefix}:*", count=1000))
            if keys:
                redis.client.delete(*keys)
    finally:
        if partition is not None:
            partition.close()
        redis.close()
        engine.dispose()
    report.elapsed = time.monotonic() - started
    return report
