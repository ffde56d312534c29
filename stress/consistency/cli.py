"""The command line: ``python -m stress.consistency --help``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from stress.chaos import DOWNTIME, FAULT_INTERVAL
from stress.consistency.runner import run

__all__ = ["main"]


def _seconds_range(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    return float(low), float(high or low)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: run, print the report, return 1 when a check failed."""
    parser = argparse.ArgumentParser(
        prog="python -m stress.consistency",
        description="Multi-process consistency stress of attach() and ChainedStore.",
    )
    parser.add_argument("--postgres-url", required=True, help="SQLAlchemy URL of PostgreSQL")
    parser.add_argument("--redis-url", required=True, help="redis:// URL (any database)")
    parser.add_argument("--processes", type=int, default=4, help="worker processes")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of operations")
    parser.add_argument(
        "--memory-layer",
        action="store_true",
        help="a ProcessMemoryStore in front of Redis in each worker, checked at the end",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the operation choices and the faults"
    )
    parser.add_argument(
        "--forked",
        type=int,
        default=0,
        help="workers that fork after using their chain, and work in the child",
    )
    parser.add_argument(
        "--asyncio-workers",
        type=int,
        default=0,
        help="workers that run on an event loop (asyncpg, redis.asyncio), the last ones",
    )
    parser.add_argument(
        "--chaos",
        action="store_true",
        help="cut the workers' link to Redis at random moments (Redis keeps its entries)",
    )
    parser.add_argument(
        "--fault-interval",
        type=_seconds_range,
        default=FAULT_INTERVAL,
        metavar="LOW,HIGH",
        help="--chaos: seconds from a heal to the next cut (default %(default)s)",
    )
    parser.add_argument(
        "--downtime",
        type=_seconds_range,
        default=DOWNTIME,
        metavar="LOW,HIGH",
        help="--chaos: seconds the link stays cut (default %(default)s)",
    )
    args = parser.parse_args(argv)
    report = run(
        args.postgres_url,
        args.redis_url,
        args.processes,
        args.seconds,
        memory_layer=args.memory_layer,
        seed=args.seed,
        chaos=args.chaos,
        fault_interval=args.fault_interval,
        downtime=args.downtime,
        forked=args.forked,
        asyncio_workers=args.asyncio_workers,
    )
    print(report.format())
    return 0 if report.ok else 1
