"""Helpers shared by the tests: hostile payloads, cluster clients, waits, example counts."""

from __future__ import annotations

import os
import pickle
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hypothesis import settings
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from sqlalchemy import Engine, event


def exploit(marker: Path) -> bytes:
    """A pickle that creates the file ``marker`` when it is loaded."""

    class Exploit:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {marker}",))

    return pickle.dumps(Exploit())


def cluster_client(nodes: list[tuple[str, int]]) -> RedisCluster:
    """A RedisCluster client for the test cluster, with test-friendly timeouts."""
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in nodes],
        socket_connect_timeout=1,
        socket_timeout=2,
    )


def bounded_cluster_client(url: str, **options: Any) -> RedisCluster:
    """A RedisCluster client with the settings docs/operations.md recommends for a
    ``RedisStore``: one attempt per call (no retries, no backoff), 0.25 s to connect and
    0.5 s to answer; ``options`` add to them (a counting ``connection_class``)."""
    return RedisCluster.from_url(
        url,
        socket_connect_timeout=0.25,
        socket_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
        **options,
    )


def until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; return its last value.

    For what other threads or processes make true (a broadcast arriving, a catch-up):
    the tests assert on the state reached, never on a sleep.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.001)
    return condition()


def freeze(pid: int, timeout: float = 5.0) -> None:
    """SIGSTOP a server and wait until every thread of it has stopped.

    The signal is only acted on when each thread next runs, so a worker busy on the other
    core could still answer one more request right after os.kill() returns.
    """
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    tasks = Path(f"/proc/{pid}/task")
    while time.monotonic() < deadline:
        states = [
            (task / "stat").read_text().rsplit(")", 1)[1].split()[0] for task in tasks.iterdir()
        ]
        if all(state in "Tt" for state in states):
            return
        time.sleep(0.001)
    raise AssertionError(f"process {pid} did not stop within {timeout} s")


def examples(local: int) -> int:
    """How many examples a property test that runs ``local`` of them locally runs under
    the loaded Hypothesis profile: as many times more as the profile's ``max_examples``
    is over Hypothesis's default of 100 (see ``conftest.py``: three times, with CI set)."""
    return local * settings().max_examples // 100


class Statements:
    """Counts the SQL statements an engine executes, and keeps the first word of each."""

    def __init__(self, engine: Engine) -> None:
        self.count = 0
        self.kinds: list[str] = []  # "SELECT", "INSERT", ...
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, connection: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.count += 1
        self.kinds.append(statement.split(maxsplit=1)[0])

    @contextmanager
    def exactly(self, expected: int) -> Iterator[None]:
        """Assert that the block executes ``expected`` statements."""
        start = self.count
        yield
        assert self.count - start == expected
