"""Invalidations lost on a Redis Cluster: a subscriber notices, and its memory layer heals.

Pub/sub may lose a message while the subscription stays up.  Every publisher numbers its
messages and sends heartbeats (``sa_stockpyle.stores.sequencing``); these tests lose
messages on purpose (a publisher whose message never leaves, one that goes mute, bytes
that are no message, a master killed and restarted) and check that the subscriber counts
the loss, flushes, and that afterwards every entry of its memory layer misses or equals
the row in PostgreSQL, column by column.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Engine, inspect
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from sa_stockpyle import attach
from sa_stockpyle.messages import Invalidation, decode_invalidation, encode_invalidation
from sa_stockpyle.stores import (
    BaseStore,
    ChainedStore,
    ProcessMemoryStore,
    RedisStore,
    SqlAlchemyStore,
)
from sa_stockpyle.stores.channel import Channel, Subscription
from sa_stockpyle.testing import Foo
from tests.helpers import bounded_cluster_client, until
from tests.models import Item, item_tables
from tests.servers import RedisCluster
from tests.threads import finish_all, started

ROWS = 20
CHANNEL = "stockpyle:0:invalidations"


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    with item_tables(postgres_url, ROWS, "v0") as engine:
        yield engine


@pytest.fixture
def cluster(redis_cluster: RedisCluster) -> RedisCluster:
    redis_cluster.flushall()
    return redis_cluster


class _Dropping(Channel):
    """A real channel whose publisher loses the messages ``lose`` picks, as a network
    between a node and a subscriber may; or, with ``garble``, sends them cut short."""

    def __init__(
        self, channel: Channel, lose: Callable[[Invalidation], bool], garble: bool
    ) -> None:
        self.channel = channel
        self.lose = lose
        self.garble = garble
        self.lost = 0

    def publish(self, messages: Sequence[bytes]) -> None:
        kept = [data for data in messages if not self.lose(decode_invalidation(data))]
        self.lost += len(messages) - len(kept)
        if self.garble:
            kept = [data if data in kept else data[:-3] for data in messages]
        if kept:
            self.channel.publish(kept)

    def subscribe(self) -> Subscription:
        return self.channel.subscribe()


class _LossyRedisStore(RedisStore):
    """A RedisStore whose broadcast channel loses what ``lose`` picks."""

    def __init__(
        self, lose: Callable[[Invalidation], bool], garble: bool = False, **options: Any
    ) -> None:
        super().__init__(**options)
        self.lose = lose
        self.garble = garble
        self.dropping: _Dropping | None = None

    def channel(self, name: str) -> Channel:
        self.dropping = _Dropping(super().channel(name), self.lose, self.garble)
        return self.dropping


def _naming(ident: int) -> Callable[[Invalidation], bool]:
    return lambda message: any(
        klass is Item and lookup.get("id") == ident for klass, lookup in message.removals
    )


def _stale(engine: Engine, memory: BaseStore) -> tuple[int, list[Any]]:
    """How many rows a layer (the memory layer) holds, and those of them that differ from
    the row in the database, column by column (as ``(held, row)`` pairs)."""
    columns = [attr.key for attr in inspect(Item).column_attrs]
    with Session(engine) as session:
        rows = {item.id: {c: getattr(item, c) for c in columns} for item in session.query(Item)}
    held = [(memory.get(Item, ident), row) for ident, row in rows.items()]
    values = [({c: getattr(found, c) for c in columns}, row) for found, row in held if found]
    return len(values), [pair for pair in values if pair[0] != pair[1]]


def _never_stale(engine: Engine, memory: BaseStore) -> int:
    """Every row a layer (the memory layer) holds equals the database's; returns how many
    it holds."""
    held, stale = _stale(engine, memory)
    assert not stale
    return held


@dataclass
class _Reader:
    """A process's chain ``[memory, cluster, PostgreSQL]``."""

    chain: ChainedStore
    memory: ProcessMemoryStore
    sessions: scoped_session[Session]

    def read_all(self) -> None:
        """Read every row through the chain, in a session of its own."""
        self.chain.batch_get(Item, range(ROWS))
        self.sessions.remove()

    def counts(self) -> dict[str, int]:
        """The broadcast's counters."""
        return _counts(self.chain)


@contextmanager
def _reader(engine: Engine, url: str) -> Iterator[_Reader]:
    """A reader whose memory layer holds every row."""
    sessions = scoped_session(sessionmaker(engine))
    client = bounded_cluster_client(url)
    memory = ProcessMemoryStore()
    chain = ChainedStore(
        [memory, RedisStore(client=client), SqlAlchemyStore(session=sessions)], heartbeat=0.2
    )
    try:
        reader = _Reader(chain, memory, sessions)
        reader.read_all()
        assert _never_stale(engine, memory) == ROWS
        yield reader
    finally:
        chain.close()
        sessions.remove()
        client.close()


@contextmanager
def _writer(
    engine: Engine,
    url: str,
    lose: Callable[[Invalidation], bool],
    heartbeat: float,
    garble: bool = False,
) -> Iterator[tuple[sessionmaker[Session], _LossyRedisStore, ChainedStore]]:
    """Another process's chain ``[cluster]`` attached to its sessions, losing (or with
    ``garble``, cutting short) what ``lose`` picks on the way to the subscribers."""
    client = bounded_cluster_client(url)
    store = _LossyRedisStore(lose, garble, client=client)
    chain = ChainedStore([store], heartbeat=heartbeat)
    factory = sessionmaker(engine)
    handle = attach(factory, chain)
    try:
        yield factory, store, chain
    finally:
        handle.detach()
        chain.close()
        client.close()


def _commit(factory: sessionmaker[Session], ident: int, value: str) -> None:
    with factory() as session:
        session.get(Item, ident).value = value  # type: ignore[union-attr]
        session.commit()


def _counts(chain: ChainedStore) -> dict[str, int]:
    assert chain.coherence is not None
    return chain.coherence.counts()


def test_a_lost_message_is_noticed_by_the_next_one(engine: Engine, cluster: RedisCluster) -> None:
    with (
        _reader(engine, cluster.url) as reader,
        # No heartbeat after the first: only the next message can tell.
        _writer(engine, cluster.url, _naming(1), heartbeat=3600) as (factory, store, _),
    ):
        _commit(factory, 1, "v1")
        assert until(lambda: store.dropping is not None and store.dropping.lost == 1)
        assert reader.memory.get(Item, 1).value == "v0"  # type: ignore[union-attr]  # stale
        assert reader.counts().get("gaps", 0) == 0
        _commit(factory, 2, "v1")
        assert until(lambda: reader.counts().get("gaps", 0) == 1)
        assert reader.counts()["lost"] == 1
        assert _never_stale(engine, reader.memory) == 0  # flushed
        reader.read_all()
        assert _never_stale(engine, reader.memory) == ROWS


def test_a_heartbeat_tells_of_a_lost_message_when_its_publisher_goes_quiet(
    engine: Engine, cluster: RedisCluster
) -> None:
    with (
        _reader(engine, cluster.url) as reader,
        _writer(engine, cluster.url, _naming(1), heartbeat=0.2) as (factory, _, writer),
    ):
        _commit(factory, 1, "v1")  # lost, and then nothing more is committed
        assert until(lambda: reader.counts().get("gaps", 0) == 1)
        assert reader.counts()["lost"] == 1
        # The first, and one after the loss (counted once its publish returned, which may
        # be after the reader has seen it).
        assert until(lambda: _counts(writer)["heartbeats"] >= 2)
        assert _never_stale(engine, reader.memory) == 0


def test_a_publisher_gone_mute_is_a_loss_and_its_gap_shows_when_it_is_back(
    engine: Engine, cluster: RedisCluster
) -> None:
    mute = threading.Event()
    with (
        _reader(engine, cluster.url) as reader,
        _writer(engine, cluster.url, lambda _: mute.is_set(), heartbeat=0.2) as (factory, *_),
    ):
        mute.set()  # its heartbeats and messages are lost from now on
        _commit(factory, 1, "v1")
        assert until(lambda: reader.counts().get("silences", 0) == 1)
        assert _never_stale(engine, reader.memory) == 0  # flushed, as for a lost subscription
        reader.read_all()
        mute.clear()
        assert until(lambda: reader.counts().get("gaps", 0) == 1)  # its next heartbeat
        assert reader.counts()["lost"] == 1
        # Flushed again: what was read since could predate a lost message it cannot date.
        assert _never_stale(engine, reader.memory) == 0


def test_bytes_that_are_no_message_are_counted_and_ignored(
    engine: Engine, cluster: RedisCluster
) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    hostile = [
        b"\x00\xff garbage",
        b"SPKI{",
        b'SPKI{"o":"x","t":1,"r":[],"c":[],"s":"1","k":"","h":1}',
        b'SPKI{"o":"x","t":1,"r":[],"c":[],"s":-1,"k":"","h":1}',
        b'SPKI{"o":"x","t":1,"r":[],"c":[],"s":1,"k":"boom","h":1}',
        b'SPKI{"o":"x","t":1,"r":[],"c":[],"s":1,"k":"","h":1e308}',
        b'SPKI{"o":"x","t":1,"r":[],"c":[],"s":1,"k":"","h":[]}',
        b'SPKI{"o":"x","t":1,"r":[],"c":[],"s":1}',
        b'SPKI{"o":"x","t":1,"r":' + deep + b',"c":[],"s":1,"k":"","h":1}',
        # A removal of a class this process caches, with key values that do not decode.
        b'SPKI{"o":"x","t":1,"r":[["sa_stockpyle.testing.models.Foo",{"key":{"$t":"timedelta",'
        b'"v":[1e20,0,0]}}]],"c":[],"s":1,"k":"","h":1}',
        b'SPKI{"o":"x","t":1,"r":[["sa_stockpyle.testing.models.Foo",{"key":'
        + deep
        + b'}]],"c":[]}',
        # Removals that name no declared key, or hold values no key can hold.
        b'SPKI{"o":"x","t":1,"r":[["sa_stockpyle.testing.models.Foo",{"nope":1}]],"c":[],"s":1,'
        b'"k":"","h":1}',
        b'SPKI{"o":"x","t":1,"r":[["sa_stockpyle.testing.models.Foo",{"key":[1,2]}]],"c":[],"s":1,'
        b'"k":"","h":1}',
        b'SPKI{"o":"x","t":1,"r":[["sa_stockpyle.testing.models.Foo",{"key":NaN}]],"c":[],"s":1,'
        b'"k":"","h":1}',
    ]
    client = bounded_cluster_client(cluster.url)
    try:
        with _reader(engine, cluster.url) as reader:
            reader.memory.put(Foo(key=5, zap=5, bar=5))
            for data in hostile:
                client.publish(CHANNEL, data)
            assert until(lambda: reader.counts().get("corrupt", 0) == len(hostile))
            # Ignored: no flush (anyone who can publish could flush every process at will).
            assert reader.counts().get("flushes", 0) == 0
            assert _never_stale(engine, reader.memory) == ROWS
            # The subscriber goes on applying what others send.
            message = Invalidation("other", 1.0, [(Foo, {"key": 5})], [], 1, "", 1.0)
            client.publish(CHANNEL, encode_invalidation(message))
            assert until(lambda: reader.memory.get(Foo, 5) is None)
    finally:
        client.close()


def test_a_real_message_garbled_on_the_way_is_a_gap_at_the_next_one(
    engine: Engine, cluster: RedisCluster
) -> None:
    with (
        _reader(engine, cluster.url) as reader,
        _writer(engine, cluster.url, _naming(1), heartbeat=3600, garble=True) as (factory, *_),
    ):
        _commit(factory, 1, "v1")
        assert until(lambda: reader.counts().get("corrupt", 0) == 1)
        assert reader.counts().get("flushes", 0) == 0
        assert reader.memory.get(Item, 1).value == "v0"  # type: ignore[union-attr]  # stale
        _commit(factory, 2, "v1")  # its number shows the garbled one's missing
        assert until(lambda: reader.counts().get("gaps", 0) == 1)
        assert reader.counts()["lost"] == 1
        assert _never_stale(engine, reader.memory) == 0  # flushed


@contextmanager
def _traffic(reader: _Reader, factory: sessionmaker[Session]) -> Iterator[list[int]]:
    """A thread reading every row in a loop, another committing a new value to one row
    after the other; yields the count of commits so far (in a list, as it grows)."""
    stop = threading.Event()
    commits = [0]

    def write() -> None:
        _commit(factory, commits[0] % ROWS, f"v{commits[0]}")
        commits[0] += 1

    def loop(work: Callable[[], None]) -> None:
        while not stop.is_set():
            work()

    workers = [started(loop, work) for work in (reader.read_all, write)]
    try:
        yield commits
    finally:
        stop.set()
        finish_all(workers)  # raises what a worker raised


def _uses_redis(chain: ChainedStore) -> bool:
    """Whether ``chain`` (``[cluster]``) reads Redis again, which it does only once it has
    made up for every write it missed."""
    stats = chain.layer_stats[0]
    asked = stats.count(None, "hits") + stats.count(None, "misses")
    chain.get(Item, ROWS)  # no such row
    return stats.count(None, "hits") + stats.count(None, "misses") > asked


def _channel_node(cluster: RedisCluster) -> int:
    client = bounded_cluster_client(cluster.url)
    try:
        return int(client.get_node_from_key(CHANNEL).port)
    finally:
        client.close()


def _outage(cluster: RedisCluster, port: int, commits: list[int]) -> None:
    """Kill the master on ``port`` and wait until the cluster fails and 20 commits went
    by: every one of them missed Redis, whose other masters keep the entries the commits
    replaced (restarting the master is the caller's)."""
    survivor = cluster.node(next(p for _, p in cluster.startup_nodes if p != port))
    cluster.kill_node(port)
    written = commits[0]
    # Down long enough for the cluster to notice: every node refuses keyed commands.
    assert until(lambda: survivor.cluster_info()["cluster_state"] == "fail", timeout=30)
    assert until(lambda: commits[0] > written + 20, timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["channel's master", "another master"])
def test_a_master_killed_and_restarted_leaves_no_entry_stale_in_memory_or_redis(
    engine: Engine, private_redis_cluster: RedisCluster, victim: str
) -> None:
    cluster = private_redis_cluster
    channel_port = _channel_node(cluster)
    ports = [port for _, port in cluster.startup_nodes]
    port = channel_port if victim == "channel's master" else ports[ports.index(channel_port) - 1]
    with (
        _reader(engine, cluster.url) as reader,
        _writer(engine, cluster.url, lambda _: False, heartbeat=0.2) as (factory, _, writer),
    ):
        try:
            with _traffic(reader, factory) as commits:
                assert until(lambda: commits[0] > 20)
                _outage(cluster, port, commits)
        finally:
            cluster.start_node(port)
        # Redis missed removals, and the masters that stayed up still hold the entries
        # they were for (no commit since has replaced them; unless the restarted master
        # held the table's namespace generation, which starts anew and leaves every older
        # entry unreachable); a reader may fill its memory from them now.  The writer's
        # chain makes up for them on its own once every node is back, and tells the other
        # processes (the bound only catches a chain that never does).
        reader.read_all()
        assert until(lambda: writer.layer_stats[0].count(Item, "caught_up") >= 1, timeout=30)
        assert until(lambda: _uses_redis(writer), timeout=30)  # it has made up for all
        assert until(lambda: not _stale(engine, reader.memory)[1])
        _never_stale(engine, reader.memory)
        # Nor does Redis hold any of them: the next read of any process would fill its
        # memory layer from it.
        client = bounded_cluster_client(cluster.url)
        try:
            _never_stale(engine, RedisStore(client=client))
        finally:
            client.close()
        if victim == "channel's master":
            assert reader.counts()["losses"] >= 1
