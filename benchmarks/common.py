"""What every benchmark script shares: timing loops and throwaway servers.

The scripts run as ``python benchmarks/NAME.py``, which puts this folder on
``sys.path``, so they import this module as ``common``.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path


class User:
    """A plain storable object of five attributes, for the store-level benchmarks."""

    __stockpyle_keys__ = ["id", "email"]

    def __init__(self, id: int) -> None:
        self.id = id
        self.email = f"user{id}@example.com"
        self.name = f"User {id}"
        self.active = True
        self.score = id * 1.5


def per_call(fn: Callable[[], object], calls: int, rounds: int) -> float:
    """Median seconds per call of ``fn`` over ``rounds`` rounds of ``calls`` calls."""
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls)
    return statistics.median(samples)


def compare(
    fn: Callable[[], object], baseline: Callable[[], object], calls: int, rounds: int
) -> tuple[float, float]:
    """Median seconds per call of ``fn`` and of ``baseline``, timed in alternating rounds,
    so both see the same machine however its speed drifts."""
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for each, sink in ((fn, samples[0]), (baseline, samples[1])):
            start = time.perf_counter()
            for _ in range(calls):
                each()
            sink.append((time.perf_counter() - start) / calls)
    return statistics.median(samples[0]), statistics.median(samples[1])


@contextmanager
def servers(redis_url: str | None, memcached: str | None = "") -> Iterator[tuple[str, str]]:
    """The given addresses, or throwaway servers started on free loopback ports.

    ``memcached=""`` means no memcached is wanted.
    """
    with ExitStack() as stack:
        if redis_url is None or memcached is None:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
            from tests.servers import MemcachedServer, RedisServer, free_port

            if redis_url is None:
                redis_server = RedisServer(free_port())
                redis_server.start()
                stack.callback(redis_server.stop)
                redis_url = redis_server.url
            if memcached is None:
                memcached_server = MemcachedServer(free_port())
                memcached_server.start()
                stack.callback(memcached_server.stop)
                memcached = memcached_server.address
        yield redis_url, memcached or ""
