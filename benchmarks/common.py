"""What every benchmark script shares: timing loops and throwaway servers.

The scripts run as ``python benchmarks/NAME.py``, which puts this folder on
``sys.path``, so they import this module as ``common``.
"""

from __future__ import annotations

import datetime as dt
import gc
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.orm import Session

T = TypeVar("T")


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


@dataclass
class Case:
    """One thing to time: ``call`` is timed; ``before``, when given, runs untimed before
    each call (to clear a cache layer, say)."""

    call: Callable[[], object]
    before: Callable[[], object] | None = None


@dataclass
class Timing:
    """Seconds per call of one case, one sample per round."""

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        """The median seconds per call."""
        return statistics.median(self.samples)

    def ratio(self, other: Timing) -> float:
        """How many times ``other`` takes as long as this: the median of the per-round
        ratios, each from two cases timed in the same round, so drift between rounds
        cancels out."""
        return statistics.median(
            theirs / ours for ours, theirs in zip(self.samples, other.samples, strict=True)
        )


class RawRedis:
    """``GET`` and ``MGET`` on one redis-py connection, without the client's per-command
    path (pool checkout, retry wrapper, metrics hooks): the floor of a Redis hit, sent the
    way a ``RedisStore`` sends on the client it built."""

    def __init__(self, client: Any) -> None:
        pool = client.connection_pool
        self.connection = pool.connection_class(**pool.connection_kwargs)

    def get(self, key: str) -> Any:
        """The value at ``key``, or None."""
        self.connection.send_command("GET", key)
        return self.connection.read_response()

    def mget(self, keys: list[str]) -> list[Any]:
        """The values at ``keys``, None where there is none."""
        self.connection.send_command("MGET", *keys)
        values: list[Any] = self.connection.read_response()
        return values

    def close(self) -> None:
        """Close the connection."""
        self.connection.disconnect()


class FreshSession:
    """A new session for every call of a case: ``open`` runs before the clock starts,
    the timed call takes it with ``use`` and closes it.  Closing is timed: a session
    that read from the database gives its connection back then, with a ROLLBACK."""

    def __init__(self, factory: Callable[[], Session]) -> None:
        self.factory = factory
        self.session: Session | None = None

    def open(self) -> None:
        """Open the session the next call uses."""
        self.session = self.factory()

    def use(self) -> Session:
        """The session opened for this call."""
        assert self.session is not None, "FreshSession.open() runs before each call"
        return self.session


def then(*steps: Callable[[], object]) -> Callable[[], None]:
    """One ``before`` hook that runs ``steps`` in order."""

    def before() -> None:
        for step in steps:
            step()

    return before


def _run(case: Case, calls: int) -> float:
    """Seconds per call of ``calls`` calls of ``case``."""
    call, before = case.call, case.before
    if before is None:
        start = time.perf_counter()
        for _ in range(calls):
            call()
        return (time.perf_counter() - start) / calls
    total = 0.0
    for _ in range(calls):
        before()
        start = time.perf_counter()
        call()
        total += time.perf_counter() - start
    return total / calls


def interleaved(cases: dict[str, Case], rounds: int, budget: float = 0.04) -> dict[str, Timing]:
    """Time every case in ``rounds`` rounds; each round times every case once, in turn.

    Each case is first called a few times (connections opened, caches warm) and then
    given as many calls per round as fill about ``budget`` seconds, so a fast case is
    not timed on a handful of calls.  The order of the cases is reversed every other
    round, so no case always runs right after the same neighbour, and the garbage
    collector runs before each case's turn.
    """
    calls: dict[str, int] = {}
    for name, case in cases.items():
        _run(case, 1)
        once = _run(case, 1)
        if once < budget / 10:
            once = _run(case, 5)  # a steadier estimate, where it costs little
        calls[name] = max(1, min(50_000, round(budget / max(once, 1e-7))))
    timings = {name: Timing() for name in cases}
    names = list(cases)
    for number in range(rounds):
        for name in names if number % 2 == 0 else reversed(names):
            # A full collection set off by what the previous case left behind (a memory
            # layer it filled) would be charged to this one.
            gc.collect()
            timings[name].samples.append(_run(cases[name], calls[name]))
    return timings


def round_robin(cases: dict[str, Case], rounds: int, budget: float) -> dict[str, Timing]:
    """Time every case in ``rounds`` rounds of cycles; each cycle calls every case once,
    in turn (the order reversed every other cycle), so the garbage collections that all
    the cases' allocations set off together land on each case as often as its own
    allocations set them off.  A case's sample of a round is its mean over the round's
    cycles, which are as many as fill about ``budget`` seconds per case.

    For cases whose calls set off full collections every few calls (batches of 1,000 and
    more): timed in turns of their own (:func:`interleaved`), a turn's share of them
    depends on where the previous turn left the collector's counts.
    """
    once = {name: _run(case, 1) for name, case in cases.items()}
    cycles = max(3, round(budget / max(statistics.mean(once.values()), 1e-7)))
    timings = {name: Timing() for name in cases}
    names = list(cases)
    for _ in range(rounds):
        gc.collect()
        totals = dict.fromkeys(names, 0.0)
        for cycle in range(cycles):
            for name in names if cycle % 2 == 0 else reversed(names):
                totals[name] += _run(cases[name], 1)
        for name in names:
            timings[name].samples.append(totals[name] / cycles)
    return timings


def sql_statements(engine: Any, fn: Callable[[], T]) -> tuple[int, T]:
    """How many SQL statements ``engine`` runs during ``fn()``, and what it returned."""
    count = 0

    def counted(*args: object) -> None:
        nonlocal count
        count += 1

    event.listen(engine, "before_cursor_execute", counted)
    try:
        result = fn()
    finally:
        event.remove(engine, "before_cursor_execute", counted)
    return count, result


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _revision() -> str:
    """The git commit of the code measured, and whether the package has local changes."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True)
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "sa_stockpyle")
    except (OSError, subprocess.CalledProcessError):
        return "outside git"
    return f"commit {commit}" + (" with uncommitted changes" if changed else "")


def environment() -> dict[str, str]:
    """What the numbers were measured on: date, machine and software versions."""
    return {
        "revision": _revision(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, {_cpu_model()}",
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": ", ".join(
            f"{name} {_version(name)}"
            for name in (
                "SQLAlchemy",
                "psycopg",
                "redis",
                "hiredis",
                "pymemcache",
                "dogpile.cache",
            )
        ),
    }


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
