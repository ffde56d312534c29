"""The suite's servers, on the ports the environment gives (see the root conftest.py).

``python -m tests.suite_servers COMMAND...`` starts them, runs COMMAND and stops them: for
runs that start many pytest sessions (``scripts/mutation``), each of which then finds the
servers answering and reuses them instead of starting its own.

Sessions that run at the same time each need servers and a database of their own (every
test flushes them).  With ``STOCKPYLE_TEST_SLOTS=N`` there are N sets, in slots: slot
``i`` adds ``10 * i`` to every port and ``_i`` to the PostgreSQL database's name, and a
session takes the first slot no other session holds (:func:`take_slot`).
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import IO

from tests.servers import MemcachedServer, RedisCluster, RedisServer, ServerError, ServerProcess


def configured_ports(name: str, default: str, slot: int = 0) -> list[int]:
    """The ports in environment variable ``name`` (a comma list, else ``default``), moved
    to ``slot``."""
    raw = os.environ.get(name, default)
    try:
        return [int(part) + 10 * slot for part in raw.split(",") if part.strip()]
    except ValueError:
        raise ServerError(f"{name}={raw!r} is not a comma-separated list of ports") from None


def slots() -> int:
    """How many sessions may run at once: ``STOCKPYLE_TEST_SLOTS`` (1)."""
    raw = os.environ.get("STOCKPYLE_TEST_SLOTS", "1")
    if not raw.isdigit() or int(raw) < 1:
        raise ServerError(f"STOCKPYLE_TEST_SLOTS={raw!r} is not a positive number")
    return int(raw)


def take_slot() -> tuple[int, IO[bytes] | None]:
    """The first slot no other running session holds, and the lock file that holds it for
    this one until closed (None: a single slot, nothing to hold)."""
    if slots() == 1:
        return 0, None
    base = configured_ports("STOCKPYLE_TEST_REDIS_PORT", "16379")[0]
    for slot in range(slots()):
        path = os.path.join(tempfile.gettempdir(), f"sa_stockpyle-{base}-{slot}.lock")
        lock = open(path, "wb")  # noqa: SIM115 - held open by the session: its lock
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        return slot, lock
    raise ServerError(f"all {slots()} slots are taken (STOCKPYLE_TEST_SLOTS)")


def suite_redis(slot: int = 0) -> RedisServer:
    """The standalone Redis of the suite: STOCKPYLE_TEST_REDIS_PORT (16379)."""
    return RedisServer(configured_ports("STOCKPYLE_TEST_REDIS_PORT", "16379", slot)[0])


def suite_cluster(slot: int = 0) -> RedisCluster:
    """The Redis Cluster of the suite: STOCKPYLE_TEST_CLUSTER_PORTS (17001-17003)."""
    ports = configured_ports("STOCKPYLE_TEST_CLUSTER_PORTS", "17001,17002,17003", slot)
    return RedisCluster(ports)


def suite_memcached(slot: int = 0) -> list[MemcachedServer]:
    """The two memcached servers of the suite: STOCKPYLE_TEST_MEMCACHED_PORTS (11311, 11312)."""
    ports = configured_ports("STOCKPYLE_TEST_MEMCACHED_PORTS", "11311,11312", slot)
    return [MemcachedServer(port) for port in ports]


def main(argv: Sequence[str]) -> int:
    """Start the suite's servers, run the command ``argv``, stop them; its exit status."""
    if not argv:
        print("usage: python -m tests.suite_servers COMMAND [ARGS...]", file=sys.stderr)
        return 2
    # Stopped by a signal (Ctrl-C, a timeout's SIGTERM), the servers stop too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    servers: list[ServerProcess | RedisCluster] = []
    for slot in range(slots()):
        servers += [suite_redis(slot), suite_cluster(slot), *suite_memcached(slot)]
    try:
        for server in servers:
            server.start()
        return subprocess.call(list(argv))
    finally:
        for server in reversed(servers):
            server.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
