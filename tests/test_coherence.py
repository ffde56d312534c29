"""Coherent process-local layers: commits of one process evict other processes' memory.

Real processes, a real Redis and PostgreSQL; delays are measured, and only a generous
bound is asserted (the real figures are printed and reported in the docs).
"""

from __future__ import annotations

import enum
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from sa_stockpyle import attach
from sa_stockpyle.errors import ConfigurationError
from sa_stockpyle.stores import (
    ChainedStore,
    MemcacheStore,
    ProcessMemoryStore,
    RedisStore,
    SqlAlchemyStore,
)
from sa_stockpyle.testing import FakeClock, Foo
from stress.partition import Partition
from tests.helpers import cluster_client, until
from tests.models import Item, item_tables
from tests.servers import MemcachedServer, RedisServer

ROUNDS = 100


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    with item_tables(postgres_url, ROUNDS, "v0") as engine:
        yield engine


def _watcher(postgres_url: str, redis_url: str, pipe: Connection) -> None:
    """Process B: fill its memory layer, then time how long each old entry survives."""
    engine = create_engine(postgres_url)
    memory = ProcessMemoryStore()
    shared = RedisStore(url=redis_url)
    with Session(engine) as session:
        chain = ChainedStore([memory, shared, SqlAlchemyStore(session=session)])
        coherence = chain.coherence
        assert coherence is not None
        chain.batch_get(Item, range(ROUNDS))
        pipe.send("ready")
        delays = []
        while (ident := pipe.recv()) is not None:
            assert memory.get(Item, ident).value == "v0"
            pipe.send("watching")
            committed_at = pipe.recv()
            while (held := memory.get(Item, ident)) is not None and held.value == "v0":
                time.sleep(0.0001)  # a request thread, not a busy loop starving the others
            delays.append(time.time() - committed_at)
        session.rollback()
        fresh = [chain.get(Item, i).value for i in range(ROUNDS)]
        # A message is counted just after it is applied: the last one may still be.
        until(lambda: coherence.counts().get("received", 0) >= ROUNDS)
        pipe.send((delays, fresh, coherence.counts()))
        chain.close()
    engine.dispose()


def test_a_commit_in_one_process_evicts_the_memory_layer_of_another(
    engine: Engine, postgres_url: str, redis_url: str
) -> None:
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    watcher = context.Process(target=_watcher, args=(postgres_url, redis_url, theirs))
    watcher.start()
    memory = ProcessMemoryStore()
    chain = ChainedStore([memory, RedisStore(url=redis_url)])
    factory = sessionmaker(engine)
    handle = attach(factory, chain)
    try:
        assert ours.poll(60), "the watcher did not start"
        assert ours.recv() == "ready"
        for ident in range(ROUNDS):
            ours.send(ident)
            # Only a hang fails (an eviction that never arrives): one takes a millisecond.
            assert ours.poll(60), "the watcher stopped answering"
            assert ours.recv() == "watching"
            with factory() as session:
                session.get(Item, ident).value = "v1"
                session.commit()
            ours.send(time.time())
        ours.send(None)
        assert ours.poll(60)
        delays, fresh, counts = ours.recv()
    finally:
        handle.detach()
        chain.close()
        watcher.join(30)
        if watcher.is_alive():  # stuck: it must not outlive the test
            watcher.kill()
            watcher.join()
    assert watcher.exitcode == 0
    assert fresh == ["v1"] * ROUNDS  # and nothing stale is served afterwards
    assert counts["received"] >= ROUNDS
    # Every commit's eviction arrived (the watcher waits for each); how fast is measured by
    # benchmarks/bench_coherence.py, not asserted here.
    assert len(delays) == ROUNDS


def test_losing_the_subscription_flushes_and_counts(
    private_redis_server: RedisServer,
) -> None:
    memory = ProcessMemoryStore()
    chain = ChainedStore([memory, RedisStore(url=private_redis_server.url)])
    other = ChainedStore([ProcessMemoryStore(), RedisStore(url=private_redis_server.url)])
    admin = redis.Redis.from_url(private_redis_server.url)
    try:
        assert chain.coherence is not None
        assert chain.coherence.subscribed
        chain.put(Foo(key=1, zap=1, bar=1, v="old"))
        assert memory.get(Foo, 1) is not None
        assert admin.client_kill_filter(_type="pubsub") >= 2
        assert until(lambda: chain.coherence.counts().get("losses", 0) >= 1)
        assert chain.coherence.counts()["flushes"] >= 1
        assert memory.get(Foo, 1) is None  # anything could have been missed: flushed
        assert until(lambda: chain.coherence.subscribed)
        assert until(lambda: other.coherence.subscribed)
        chain.put(Foo(key=1, zap=1, bar=1, v="old"))
        other.write_committed([Foo(key=1, zap=1, bar=1, v="new")], [(Foo, {"key": 1})])
        assert until(lambda: memory.get(Foo, 1) is None)
        assert chain.get(Foo, 1) is None  # removed in Redis too: nothing stale
    finally:
        chain.close()
        other.close()
        admin.close()


def test_while_the_subscription_is_down_local_layers_stay_younger_than_the_bound(
    private_redis_server: RedisServer,
) -> None:
    memory = ProcessMemoryStore()
    clock = FakeClock(0.0)  # monotonic seconds: exact sums near 0
    chain = ChainedStore(
        [memory, RedisStore(url=private_redis_server.url, timeout=0.2)],
        max_staleness=0.3,
        monotonic=clock,
    )
    try:
        assert chain.coherence is not None
        private_redis_server.kill()
        # The loss flushes once, counted before the subscription shows down; then, on a
        # clock that stands still, no flush is due.
        assert until(lambda: not chain.coherence.subscribed)
        flushes = chain.coherence.counts()["flushes"]
        memory.put(Foo(key=1, zap=1, bar=1))  # filled while other processes go unheard
        # max_staleness passes on the chain's clock: the next flush, counted after it
        # clears, began after the put.
        clock.advance(0.3)
        assert until(lambda: chain.coherence.counts()["flushes"] == flushes + 1)
        assert memory.get(Foo, 1) is None
        memory.put(Foo(key=1, zap=1, bar=1))  # and again
        clock.advance(0.3)
        assert until(lambda: chain.coherence.counts()["flushes"] == flushes + 2)
        assert memory.get(Foo, 1) is None
    finally:
        chain.close()


def test_a_frozen_server_is_noticed_by_its_silence(private_redis_server: RedisServer) -> None:
    memory = ProcessMemoryStore()
    chain = ChainedStore([memory, RedisStore(url=private_redis_server.url, timeout=0.2)])
    try:
        assert private_redis_server.pid is not None
        assert chain.coherence is not None
        os.kill(private_redis_server.pid, signal.SIGSTOP)
        # Noticed after MAX_SILENCE (3 s) without even a PONG; only a subscriber that never
        # notices waits out twenty times that.
        try:
            assert until(lambda: chain.coherence.counts().get("losses", 0) >= 1, timeout=60)
        finally:
            os.kill(private_redis_server.pid, signal.SIGCONT)
        assert until(lambda: chain.coherence.subscribed, timeout=60)
    finally:
        chain.close()


def test_a_redis_cluster_carries_the_broadcast(redis_cluster_nodes: list[Any]) -> None:

    first = ChainedStore(
        [ProcessMemoryStore(), RedisStore(client=cluster_client(redis_cluster_nodes))]
    )
    second_memory = ProcessMemoryStore()
    second = ChainedStore([second_memory, RedisStore(client=cluster_client(redis_cluster_nodes))])
    try:
        assert first.coherence is not None
        assert second.coherence is not None
        second.put(Foo(key=7, zap=7, bar=7))
        assert until(lambda: second_memory.get(Foo, 7) is not None)
        first.write_committed([], [(Foo, {"key": 7})])
        assert until(lambda: second_memory.get(Foo, 7) is None)
        # Counted once the message is applied, which can be just after the eviction shows.
        coherence = second.coherence
        assert until(lambda: coherence.counts().get("received", 0) >= 1)
    finally:
        first.close()
        second.close()


def test_broadcast_is_on_only_with_a_local_layer_and_a_channel(
    redis_url: str, memcached_addresses: list[str]
) -> None:
    with ChainedStore([ProcessMemoryStore(), RedisStore(url=redis_url)]) as chain:
        assert chain.coherence is not None
    with ChainedStore([RedisStore(url=redis_url)]) as chain:
        assert chain.coherence is not None  # publishes for other processes' memory layers
        assert not chain.coherence.subscribed  # and has nothing of its own to evict
    with ChainedStore([ProcessMemoryStore(), MemcacheStore(servers=memcached_addresses)]) as c:
        assert c.coherence is None
    with ChainedStore([ProcessMemoryStore(), RedisStore(url=redis_url)], broadcast=False) as c:
        assert c.coherence is None
    with pytest.raises(ConfigurationError, match="broadcast=True"):
        ChainedStore(
            [ProcessMemoryStore(), MemcacheStore(servers=memcached_addresses)], broadcast=True
        )


def test_a_process_without_a_memory_layer_still_evicts_the_others(redis_url: str) -> None:
    reader_memory = ProcessMemoryStore()
    reader = ChainedStore([reader_memory, RedisStore(url=redis_url)])
    writer = ChainedStore([RedisStore(url=redis_url)])  # a worker with no local layer
    try:
        reader.put(Foo(key=3, zap=3, bar=3))
        assert until(lambda: reader_memory.get(Foo, 3) is not None)
        writer.write_committed([], [(Foo, {"key": 3})])
        assert until(lambda: reader_memory.get(Foo, 3) is None)
    finally:
        reader.close()
        writer.close()
    with pytest.raises(ConfigurationError, match="max_staleness"):
        ChainedStore([ProcessMemoryStore()], max_staleness=0)


def test_the_chain_s_clock_times_its_broadcast(redis_url: str) -> None:
    # Its heartbeats and the bound on the local layers' age run on the clock the chain
    # was given, as the chain's own rests do.
    clock = FakeClock(0.0)
    chain = ChainedStore([ProcessMemoryStore(), RedisStore(url=redis_url)], monotonic=clock)
    try:
        assert chain.coherence is not None
        assert chain.coherence.monotonic is clock
    finally:
        chain.close()


def test_a_class_invalidated_in_one_process_is_dropped_by_the_others(redis_url: str) -> None:
    reader_memory = ProcessMemoryStore()
    reader = ChainedStore([reader_memory, RedisStore(url=redis_url)])
    writer = ChainedStore([ProcessMemoryStore(), RedisStore(url=redis_url)])
    try:
        reader.put(Foo(key=4, zap=4, bar=4))
        assert reader_memory.get(Foo, 4) is not None
        writer.invalidate_class(Foo)
        assert until(lambda: reader_memory.get(Foo, 4) is None)
        assert reader.get(Foo, 4) is None  # Redis's entries are unreachable too
    finally:
        reader.close()
        writer.close()


class _Opaque(enum.Enum):
    """A key value the keys accept (by member name) but a message cannot carry."""

    ONLY = object()


def test_a_message_that_does_not_encode_is_dropped_and_the_publisher_goes_on(
    redis_url: str,
) -> None:
    reader_memory = ProcessMemoryStore()
    reader = ChainedStore([reader_memory, RedisStore(url=redis_url)])
    writer = ChainedStore([RedisStore(url=redis_url)])
    try:
        assert writer.coherence is not None
        reader.put(Foo(key=4, zap=4, bar=4))
        assert until(lambda: reader_memory.get(Foo, 4) is not None)
        writer.write_committed([], [(Foo, {"key": _Opaque.ONLY})])
        writer.write_committed([], [(Foo, {"key": 4})])
        assert until(lambda: reader_memory.get(Foo, 4) is None)
        # The publisher counts a message once PUBLISH has answered, which can be after the
        # reader has already acted on it.
        coherence = writer.coherence
        assert until(lambda: coherence.counts().get("sent") == 1), coherence.counts()
        assert coherence.counts()["dropped"] == 1
        # Its number went missing: the reader noticed, and flushed.
        assert reader.coherence is not None
        assert reader.coherence.counts()["gaps"] == 1
    finally:
        reader.close()
        writer.close()


def test_a_process_that_exits_without_closing_says_goodbye(redis_url: str) -> None:
    """Its subscribers are told it is gone, so its silence flushes nothing."""
    child = (
        "from sa_stockpyle.stores import ChainedStore, ProcessMemoryStore, RedisStore\n"
        "from sa_stockpyle.testing import Foo\n"
        f"chain = ChainedStore([ProcessMemoryStore(), RedisStore(url={redis_url!r})],"
        " heartbeat=0.2, channel='goodbyes')\n"
        "chain.put(Foo(key=2, zap=2, bar=2))\n"  # and exits, never closing the chain
    )
    memory = ProcessMemoryStore()
    chain = ChainedStore([memory, RedisStore(url=redis_url)], heartbeat=0.2, channel="goodbyes")
    try:
        chain.put(Foo(key=1, zap=1, bar=1))
        subprocess.run([sys.executable, "-c", child], check=True, timeout=60)
        assert until(lambda: chain.coherence.counts().get("received", 0) >= 1)
        time.sleep(1.0)  # five of the child's heartbeat intervals: a silence, were it one
        counts = chain.coherence.counts()
        assert counts.get("silences", 0) == 0
        assert counts.get("flushes", 0) == 0
        assert memory.get(Foo, 1) is not None
    finally:
        chain.close()


def test_a_layer_caught_up_tells_the_other_processes_what_it_removed(
    redis_url: str, private_memcached_server: MemcachedServer
) -> None:
    # The writer's link to memcached is cut while it commits a removal; the reader, whose
    # link stays up, reads the entry memcached still holds into its memory layer.  Only
    # the writer's catch-up, once its link is back, can tell the reader: the broadcast
    # itself (on Redis) lost nothing, so nothing else would clear it.
    server = private_memcached_server
    with Partition(server.host, server.port) as link:
        writer = ChainedStore(
            [
                ProcessMemoryStore(),
                MemcacheStore(servers=[link.address], timeout=0.2, connect_timeout=0.2),
                RedisStore(url=redis_url),
            ],
            cooldown=0,
        )
        reader_memory = ProcessMemoryStore()
        reader = ChainedStore(
            [reader_memory, MemcacheStore(servers=[server.address]), RedisStore(url=redis_url)]
        )
        try:
            assert until(lambda: bool(writer.coherence and writer.coherence.subscribed))
            assert until(lambda: bool(reader.coherence and reader.coherence.subscribed))
            writer.put(Foo(key=1, zap=1, bar=1, v="old"))
            link.cut()
            writer.write_committed([], [(Foo, {"key": 1})])  # memcached misses the removal
            assert writer.layer_stats[1].count(Foo, "errors") == 1
            # The broadcast of the commit arrives first (the reader's memory held nothing).
            assert until(
                lambda: (
                    reader.coherence is not None
                    and reader.coherence.counts().get("received", 0) >= 2
                )
            )
            assert reader.get(Foo, 1).v == "old"  # type: ignore[union-attr]  # memcached's
            assert reader_memory.get(Foo, 1) is not None  # and now the reader's memory's
            assert reader.coherence is not None
            evicted = reader.coherence.counts().get("evicted", 0)
            link.heal()  # the writer's catch-up timer removes the key, and says so
            assert until(lambda: writer.layer_stats[1].count(Foo, "caught_up") == 1, timeout=10)
            # By that message (a flush after a late heartbeat on a loaded machine would
            # clear the memory too, but evicts nothing).
            assert until(lambda: reader.coherence.counts().get("evicted", 0) > evicted, timeout=10)
            assert reader_memory.get(Foo, 1) is None
        finally:
            reader.close()
            writer.close()
