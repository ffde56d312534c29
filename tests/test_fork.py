"""A process forked after its chain was used (gunicorn --preload, Celery's prefork pool,
multiprocessing's fork context) serves nothing older than ``max_staleness``.

The parent builds, attaches and uses a ``[memory, Redis, database]`` chain, then forks. In
the child the broadcast's threads are gone; the child's memory layer must start empty,
``coherence.subscribed`` must say so, and the broadcast must be back at first use, so that
a commit of another process evicts what the child cached after the fork.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import scoped_session, sessionmaker

from sa_stockpyle import attach
from sa_stockpyle.stores import ChainedStore, ProcessMemoryStore, RedisStore, SqlAlchemyStore
from sa_stockpyle.stores.stats import Stats
from tests.helpers import until
from tests.models import Item, item_tables
from tests.threads import started

# The documented default bound; ten times it only catches a child that never hears.
MAX_STALENESS = 2.0


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/fork.db"
    else:
        url = request.getfixturevalue("postgres_url")
    with item_tables(url, 3, "v1") as engine:
        yield engine


def _in_child(
    chain: ChainedStore, memory: ProcessMemoryStore, engine: Engine, pipe: Connection
) -> None:
    """What a forked worker does: report, serve, wait for another commit, serve again."""
    # As SQLAlchemy documents for forked processes: the parent's pooled connections stay
    # the parent's.
    engine.dispose(close=False)
    coherence = chain.coherence
    assert coherence is not None
    report: dict[str, Any] = {
        "subscribed_at_fork": coherence.subscribed,
        "memory_at_fork": memory.get(Item, 1),
        "first_read": chain.get(Item, 1).value,
    }
    report["memory_after_read"] = memory.get(Item, 1).value
    report["subscribed_after_use"] = until(lambda: chain.coherence.subscribed)  # type: ignore[union-attr]
    pipe.send(report)
    assert pipe.recv() == "committed"
    report["after_commit"] = until(
        lambda: chain.get(Item, 1).value == "v2", timeout=10 * MAX_STALENESS
    )
    report["received"] = chain.coherence.counts().get("received", 0)  # type: ignore[union-attr]
    pipe.send(report)
    chain.close()


def _by_multiprocessing(target: Callable[[], None]) -> Callable[[], int]:
    process = multiprocessing.get_context("fork").Process(target=target)
    process.start()

    def join() -> int:
        process.join(60)
        return process.exitcode if process.exitcode is not None else -1

    return join


def _by_os_fork(target: Callable[[], None]) -> Callable[[], int]:
    pid = os.fork()  # as a preloading server forks its workers
    if pid == 0:
        code = 1
        try:
            target()
            code = 0
        finally:
            os._exit(code)

    def join() -> int:
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)

    return join


@pytest.mark.parametrize("fork", [_by_multiprocessing, _by_os_fork], ids=["mp-fork", "os-fork"])
def test_a_forked_worker_serves_nothing_older_than_max_staleness(
    engine: Engine, redis_url: str, fork: Callable[[Callable[[], None]], Callable[[], int]]
) -> None:
    memory = ProcessMemoryStore()
    reader = scoped_session(sessionmaker(engine))
    chain = ChainedStore(
        [memory, RedisStore(url=redis_url), SqlAlchemyStore(session=reader)],
        max_staleness=MAX_STALENESS,
    )
    writes = sessionmaker(engine)
    handle = attach(writes, chain)
    ours, theirs = multiprocessing.Pipe()
    try:
        assert chain.get(Item, 1).value == "v1"  # the parent has used the chain
        assert memory.get(Item, 1).value == "v1"
        reader.remove()
        join = fork(lambda: _in_child(chain, memory, engine, theirs))
        assert ours.poll(60), "the child did not report"
        report = ours.recv()
        assert report == {
            "subscribed_at_fork": False,  # its threads stayed in the parent
            "memory_at_fork": None,  # what the parent cached is as old as the fork
            "first_read": "v1",
            "memory_after_read": "v1",  # the child caches again, now listening
            "subscribed_after_use": True,
        }
        with writes() as session:  # another process's commit
            session.get(Item, 1).value = "v2"
            session.commit()
        ours.send("committed")
        assert ours.poll(60), "the child did not report"
        report = ours.recv()
        assert report["after_commit"] is True
        assert report["received"] >= 1  # evicted by the broadcast, not by chance
        assert join() == 0
        assert memory.get(Item, 1) is None or memory.get(Item, 1).value == "v2"
    finally:
        handle.detach()
        chain.close()
        reader.remove()


def test_a_childs_chain_starts_a_broadcast_of_its_own_at_first_use(redis_url: str) -> None:
    # What watch_forks calls in a forked child, called here in-process so that each step
    # shows (the forked tests above show the whole).
    memory = ProcessMemoryStore()
    chain = ChainedStore(
        [memory, RedisStore(url=redis_url)], max_staleness=MAX_STALENESS, heartbeat=0.25
    )
    parents = chain.coherence
    assert parents is not None
    assert until(lambda: parents.subscribed)
    try:
        chain.after_fork()
        parents.close()  # a forked child has none of the parent's threads
        childs = chain.coherence
        assert childs is not None
        assert childs is not parents
        assert (childs.max_staleness, childs.heartbeat) == (MAX_STALENESS, 0.25)  # as set
        assert not childs.subscribed  # not before first use
        memory.put(Item(id=1, code="c1", value="v1"))  # as old as the fork
        assert chain.get(Item, 7) is None  # first use
        assert memory.get(Item, 1) is None  # emptied: nothing older than the fork
        assert until(lambda: childs.subscribed)
        memory.put(Item(id=1, code="c1", value="v1"))
        assert chain.get(Item, 7) is None
        assert memory.get(Item, 1) is not None  # emptied once, not at every use
    finally:
        chain.close()
    chain.after_fork()  # the child of a closed chain starts no broadcast
    assert chain.coherence is childs
    assert chain.get(Item, 7) is None


def test_the_in_process_stores_of_a_child_start_empty_with_new_locks() -> None:
    memory = ProcessMemoryStore(max_items=10)
    memory.put(Item(id=1, code="c1", value="v1"))
    ours, theirs = multiprocessing.Pipe()
    stats = Stats()
    # Another thread of the parent is inside a write at the fork, and reading counters:
    # it holds three locks, and in the child nobody would ever release them.
    held, release = threading.Event(), threading.Event()

    def writing() -> None:
        with memory._lock, memory.dictionary._lock, stats._lock:  # type: ignore[attr-defined]
            held.set()
            release.wait(10)

    writer = started(writing)
    assert held.wait(10)

    def child() -> None:
        theirs.send(memory.get(Item, 1))
        memory.put(Item(id=2, code="c2", value="v2"))
        stats.add(Item, "hits")
        theirs.send((memory.get(Item, 2).value, stats.count(Item, "hits")))

    try:
        join = _by_multiprocessing(child)
    finally:
        release.set()
        writer.finish()
    assert ours.poll(30), "the child hung"
    assert ours.recv() is None
    assert ours.poll(30), "the child hung on a lock held at the fork"
    assert ours.recv() == ("v2", 1)
    assert join() == 0
    assert memory.get(Item, 1).value == "v1"  # the parent keeps its own
    assert memory.get(Item, 2) is None
