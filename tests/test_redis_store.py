"""RedisStore on a real Redis and a real 3-node Redis Cluster.

The conformance suite, payload safety, native expiry, the error policy and round trips.
"""

from __future__ import annotations

import datetime as dt
import gc
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from sa_stockpyle.codec import MAGIC, VERSIONED_HEAD
from sa_stockpyle.errors import ConfigurationError, StoreTimeout, StoreUnavailable
from sa_stockpyle.keys import key_spec
from sa_stockpyle.stores import RedisStore
from sa_stockpyle.stores.backend_errors import ErrorTranslator
from sa_stockpyle.stores.redis_script import _lua_pattern
from sa_stockpyle.testing import Foo, LayerProtocolConformance
from tests.helpers import cluster_client, exploit, freeze
from tests.servers import RedisServer, free_port
from tests.threads import finish_all, started


class TestRedisStore(LayerProtocolConformance):
    @pytest.fixture(autouse=True)
    def _server(self, redis_url: str) -> None:
        self.url = redis_url

    def make_store(self, **options: Any) -> RedisStore:
        return RedisStore(url=self.url, **options)


class TestRedisStoreOnAGivenClient(LayerProtocolConformance):
    """The same contract through a caller's client, used through its own API."""

    @pytest.fixture(autouse=True)
    def _server(self, redis_url: str) -> Iterator[None]:
        self.url = redis_url
        self.clients: list[redis.Redis] = []
        yield
        for client in self.clients:
            client.close()

    def make_store(self, **options: Any) -> RedisStore:
        client = redis.Redis.from_url(self.url)
        self.clients.append(client)
        return RedisStore(client=client, **options)


class TestRedisClusterStore(LayerProtocolConformance):
    compares_tombstone_times = False

    @pytest.fixture(autouse=True)
    def _cluster(self, redis_cluster_nodes: list[tuple[str, int]]) -> Iterator[None]:
        self.nodes = redis_cluster_nodes
        self.clients: list[RedisCluster] = []
        yield
        for client in self.clients:
            client.close()

    def make_store(self, **options: Any) -> RedisStore:
        client = cluster_client(self.nodes)
        self.clients.append(client)
        return RedisStore(client=client, **options)


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisStore]:
    with RedisStore(url=redis_url) as made:
        yield made


def entry_keys(store: RedisStore) -> list[bytes]:
    """Every key in Redis but the namespace generation tokens."""
    return [key for key in store.client.keys("*") if b":gen:" not in key]


def primary_key(store: RedisStore, key: object) -> str:
    """The cache key of the Foo with primary key ``key``."""
    return store.keymaker.key(key_spec(Foo), 0, (key,))


# -- payloads and expiry ------------------------------------------------------------------


def test_values_are_codec_bytes_under_printable_keys(store: RedisStore) -> None:
    store.put(Foo(key="ünïcödé " * 700, zap=1, bar=2))
    keys = entry_keys(store)
    assert len(keys) == 2
    for key in keys:
        assert len(key) <= 250
        assert key.decode("ascii").isprintable()
        assert b" " not in key
        assert store.client.get(key).startswith(MAGIC)
    assert store.get(Foo, "ünïcödé " * 700) == Foo(key="ünïcödé " * 700, zap=1, bar=2)


def test_the_script_matches_the_codec_s_magic_bytes_literally() -> None:
    # The script is built from the codec's constants; a Lua pattern character in one of
    # them would match more than itself, so each is escaped.
    assert _lua_pattern(VERSIONED_HEAD) == 'SPK1{"v":'
    assert _lua_pattern(b"a.b-c%d(e)[f]*+?^$") == "a%.b%-c%%d%(e%)%[f%]%*%+%?%^%$"


def test_lifetime_becomes_a_native_ttl(redis_url: str) -> None:
    store = RedisStore(url=redis_url, lifetime_cb=lambda obj: 20)
    store.put(Foo(key=1, zap=1, bar=1))
    keys = entry_keys(store)
    assert len(keys) == 2  # the entry and its alternate key's pointer
    for key in keys:
        assert 19_000 < store.client.pttl(key) <= 20_000
    store.close()


@pytest.mark.parametrize(
    "lookup", [1, {"zap": 1, "bar": 1}, None], ids=["fill by key", "fill by alternate", "commit"]
)
def test_a_fill_or_a_commit_gives_every_key_it_writes_the_native_ttl(
    redis_url: str, lookup: object
) -> None:
    # Leased or added, entry or pointer: Redis drops each when the object expires.
    store = RedisStore(url=redis_url, lifetime_cb=lambda obj: 20)
    if lookup is None:
        store.write_committed([Foo(key=1, zap=1, bar=1)], [])
    else:
        store.fill(store.reserve(Foo, [lookup]), [Foo(key=1, zap=1, bar=1)])
    keys = entry_keys(store)
    assert len(keys) == 2
    for key in keys:
        assert 19_000 < store.client.pttl(key) <= 20_000
    store.close()


def test_lifetime_is_relative_to_the_injected_clock(redis_url: str) -> None:
    # A clock years ahead of the server's: the native TTL is still the lifetime itself.
    future = dt.datetime(2040, 1, 1, tzinfo=dt.timezone.utc)
    store = RedisStore(
        url=redis_url,
        clock=lambda: future.timestamp() - 3600,
        lifetime_cb=lambda obj: future,
    )
    store.put(Foo(key=1, zap=1, bar=1))
    [primary] = [k for k in store.client.keys("*") if k.endswith(b":key:i1")]
    assert 3_599_000 < store.client.pttl(primary) <= 3_600_000
    store.close()


def test_writing_an_already_expired_object_removes_it(redis_url: str) -> None:
    lifetimes: dict[str, Any] = {"now": 100}
    store = RedisStore(url=redis_url, lifetime_cb=lambda obj: lifetimes["now"])
    store.put(Foo(key=1, zap=1, bar=1))
    assert len(entry_keys(store)) == 2
    lifetimes["now"] = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
    store.put(Foo(key=1, zap=1, bar=1))
    assert entry_keys(store) == []
    assert store.get(Foo, 1) is None
    store.close()


def test_the_exploit_is_live(tmp_path: Path) -> None:
    # Proves the payload used below would run code if anything unpickled it.
    control = tmp_path / "control"
    pickle.loads(exploit(control))
    assert control.exists()


@pytest.mark.parametrize("kind", ["pickle", "random"])
def test_a_hostile_payload_is_a_counted_miss_and_is_deleted(
    store: RedisStore, tmp_path: Path, kind: str
) -> None:
    marker = tmp_path / "pwned"
    store.put(Foo(key=1, zap=2, bar=3))
    primary = primary_key(store, 1)
    assert store.client.exists(primary)
    store.client.set(primary, exploit(marker) if kind == "pickle" else os.urandom(256))
    assert store.get(Foo, 1) is None
    assert not marker.exists()
    assert store.client.get(primary).startswith(b"SPKT")  # removed: a tombstone
    assert store.stats.count(Foo, "corrupt") == 1
    assert store.get(Foo, {"zap": 2, "bar": 3}) is None


def test_a_hostile_payload_in_the_cluster_is_deleted(
    redis_cluster_nodes: list[tuple[str, int]], tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    client = cluster_client(redis_cluster_nodes)
    store = RedisStore(client=client)
    store.put(Foo(key=1, zap=2, bar=3))
    primary = primary_key(store, 1)
    client.set(primary, exploit(marker))
    assert store.get(Foo, 1) is None
    assert not marker.exists()
    assert client.get(primary).startswith(b"SPKT")  # removed: a tombstone
    assert store.stats.count(Foo, "corrupt") == 1
    client.close()


# -- round trips --------------------------------------------------------------------------


class CountingConnection(redis.Connection):
    """A real connection that counts each request it sends, per server."""

    sent: Counter[str] = Counter()

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent[f"{self.host}:{self.port}"] += 1
        super().send_packed_command(command, check_health)


def _commandstats(server_execute: Any) -> dict[str, int]:
    stats: dict[str, int] = {}
    for line in server_execute("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, _, fields = line.partition(":")
            stats[name] = int(fields.split(",")[0].removeprefix("calls="))
    return stats


def test_batch_get_of_1000_keys_is_one_round_trip(
    redis_url: str, redis_server: RedisServer
) -> None:
    pool = redis.ConnectionPool.from_url(redis_url, connection_class=CountingConnection)
    client = redis.Redis(connection_pool=pool)
    store = RedisStore(client=client)
    foos = [Foo(key=i, zap=i, bar=i) for i in range(1000)]
    store.batch_put(foos)
    keys = list(range(1000))
    store.get(Foo, 0)  # connect, so the handshake is not counted
    CountingConnection.sent.clear()
    before = _commandstats(redis_server.execute)
    assert store.batch_get(Foo, keys) == foos
    after = _commandstats(redis_server.execute)
    assert CountingConnection.sent == {redis_server.address: 1}
    assert after["cmdstat_mget"] - before["cmdstat_mget"] == 1
    assert after.get("cmdstat_get", 0) == before.get("cmdstat_get", 0)
    CountingConnection.sent.clear()
    store.batch_put(foos)
    store.batch_delete(foos)
    # A put, and a delete that reads the class's generation in the same script call,
    # right after its writes (see Generations.write_current).
    assert CountingConnection.sent == {redis_server.address: 2}
    client.close()


def test_cluster_batch_get_of_1000_keys_is_one_round_trip_per_node(
    redis_cluster_nodes: list[tuple[str, int]],
) -> None:
    host, port = redis_cluster_nodes[0]
    # from_url is the form in which the cluster client hands connection_class to nodes.
    client = RedisCluster.from_url(
        f"redis://{host}:{port}", connection_class=CountingConnection, socket_timeout=2
    )
    store = RedisStore(client=client)
    foos = [Foo(key=i, zap=i, bar=i) for i in range(1000)]
    store.batch_put(foos)
    store.batch_get(Foo, range(1000))  # every node connected and warmed up
    nodes = {f"{host}:{port}" for host, port in redis_cluster_nodes}
    CountingConnection.sent.clear()
    assert store.batch_get(Foo, range(1000)) == foos
    assert CountingConnection.sent == dict.fromkeys(nodes, 1)
    assert store.batch_get(Foo, [{"zap": i, "bar": i} for i in range(1000)]) == foos
    CountingConnection.sent.clear()
    store.batch_delete(foos)
    # One pipeline per node, and the read of the generation on the node holding it.
    assert sorted(CountingConnection.sent.values()) == [1, 1, 2]
    assert store.batch_get(Foo, range(1000)) == [None] * 1000
    client.close()


# -- the error policy ---------------------------------------------------------------------


def test_exactly_one_of_url_and_client() -> None:
    with pytest.raises(ConfigurationError, match="exactly one"):
        RedisStore()
    with pytest.raises(ConfigurationError, match="exactly one"):
        RedisStore(url="redis://127.0.0.1:1/0", client=redis.Redis())


def test_a_server_that_refuses_raises_store_unavailable_at_once() -> None:
    store = RedisStore(url=f"redis://127.0.0.1:{free_port()}/0")
    operations = [
        lambda: store.get(Foo, 1),
        lambda: store.batch_get(Foo, [1, 2]),
        lambda: store.put(Foo(key=1, zap=1, bar=1)),
        lambda: store.delete(Foo(key=1, zap=1, bar=1)),
    ]
    for operation in operations:
        started = time.monotonic()
        with pytest.raises(
            StoreUnavailable, match=re.escape("Redis at redis://127.0.0.1")
        ) as info:
            operation()
        assert time.monotonic() - started < 2
        assert isinstance(info.value.__cause__, redis.ConnectionError)
    store.close()


def test_a_frozen_server_times_out_within_the_timeout(
    private_redis_server: RedisServer,
) -> None:
    store = RedisStore(url=private_redis_server.url, timeout=0.2, connect_timeout=0.2)
    store.put(Foo(key=1, zap=1, bar=1))
    assert private_redis_server.pid is not None
    freeze(private_redis_server.pid)
    try:
        started = time.monotonic()
        with pytest.raises(StoreTimeout) as info:
            store.get(Foo, 1)
        assert time.monotonic() - started < 2
        assert isinstance(info.value, StoreUnavailable)
        assert isinstance(info.value, TimeoutError)
    finally:
        os.kill(private_redis_server.pid, signal.SIGCONT)
    # The timed-out GET's reply arrives late; it must not answer these.
    store.put(Foo(key=2, zap=2, bar=2))
    assert store.get(Foo, 2) == Foo(key=2, zap=2, bar=2)
    assert store.get(Foo, 1) == Foo(key=1, zap=1, bar=1)
    store.close()


def _connections(server: RedisServer) -> int:
    """Clients connected to ``server``, not counting the one asking."""
    return server.execute("CLIENT", "LIST").count("\n") - 1


def _await_connections(server: RedisServer, expected: int) -> None:
    # The server sees a closed connection when it next polls its sockets.
    deadline = time.monotonic() + 5
    while _connections(server) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _connections(server) == expected


def test_each_thread_sends_on_its_own_connection_closed_with_the_thread_or_the_store(
    private_redis_server: RedisServer,
) -> None:
    store = RedisStore(url=private_redis_server.url)
    store.put(Foo(key=1, zap=1, bar=1))
    _await_connections(private_redis_server, 1)
    arrived, leave = threading.Barrier(5), threading.Event()
    found: list[object] = []

    def work(key: int) -> None:
        store.put(Foo(key=key, zap=key, bar=key))
        found.append(store.get(Foo, key))
        arrived.wait()
        leave.wait()

    workers = [started(work, key) for key in range(2, 6)]
    arrived.wait()
    assert _connections(private_redis_server) == 5  # the main thread's and four more
    assert sorted(found, key=lambda foo: foo.key) == [  # type: ignore[attr-defined]
        Foo(key=key, zap=key, bar=key) for key in range(2, 6)
    ]
    leave.set()
    finish_all(workers)
    del workers
    gc.collect()
    _await_connections(private_redis_server, 1)  # a finished thread's closes with it
    store.close()
    _await_connections(private_redis_server, 0)


def test_a_connection_the_server_closed_is_replaced_before_use(redis_url: str) -> None:
    with RedisStore(url=redis_url) as store:
        store.put(Foo(key=1, zap=1, bar=1))
        killer = redis.Redis.from_url(redis_url)
        killer.client_kill_filter(_type="normal", skipme=True)
        killer.close()
        assert store.get(Foo, 1) == Foo(key=1, zap=1, bar=1)


def test_a_write_started_on_one_thread_is_finished_on_that_thread_only(redis_url: str) -> None:
    with RedisStore(url=redis_url) as store:
        store.put(Foo(key=1, zap=1, bar=1))
        finish = store.start_committed([], [(Foo, {"key": 1})])
        assert finish is not None
        raised: list[BaseException] = []

        def elsewhere() -> None:
            try:
                finish()
            except RuntimeError as exc:
                raised.append(exc)

        started(elsewhere).finish()
        [error] = raised
        assert "finish it on the thread that started it" in str(error)
        finish()  # where it belongs: the reply is read, and nothing else was disturbed
        assert store.get(Foo, 1) is None


def test_a_flushed_script_cache_is_loaded_again(redis_url: str) -> None:
    with RedisStore(url=redis_url) as store:
        store.put(Foo(key=1, zap=1, bar=1))
        store.client.script_flush()
        store.delete(Foo(key=1, zap=1, bar=1))  # a tombstone: written by the script
        assert store.get(Foo, 1) is None
        store.client.script_flush()
        store.write_committed([Foo(key=3, zap=3, bar=3)], [])  # an add: by the script too
        assert store.get(Foo, 3) == Foo(key=3, zap=3, bar=3)


def test_a_callers_client_survives_a_server_without_the_script(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    with RedisStore(client=client) as store:
        client.script_flush()  # a new server, or one flushed: the script is not there
        store.put(Foo(key=1, zap=1, bar=1))
        client.script_flush()
        store.delete(Foo(key=1, zap=1, bar=1))
        assert store.get(Foo, 1) is None
        client.script_flush()
        store.write_committed([Foo(key=3, zap=3, bar=3)], [])
        assert store.get(Foo, 3) == Foo(key=3, zap=3, bar=3)
    client.close()


def test_a_callers_cluster_survives_nodes_without_the_script(
    redis_cluster_nodes: list[Any],
) -> None:
    client = cluster_client(redis_cluster_nodes)
    with RedisStore(client=client) as store:
        flush = ("SCRIPT FLUSH",)
        client.execute_command(*flush, target_nodes=RedisCluster.ALL_NODES)
        store.put(Foo(key=1, zap=1, bar=1))
        client.execute_command(*flush, target_nodes=RedisCluster.ALL_NODES)
        store.write_committed([Foo(key=3, zap=3, bar=3)], [])
        assert store.get(Foo, 1) == Foo(key=1, zap=1, bar=1)
        assert store.get(Foo, 3) == Foo(key=3, zap=3, bar=3)
    client.close()


@pytest.mark.parametrize("owner", ["store", "caller"])
def test_a_flushed_or_restarted_server_is_served_again_at_once(
    private_redis_server: RedisServer, owner: str
) -> None:
    client = redis.Redis.from_url(private_redis_server.url) if owner == "caller" else None
    store = RedisStore(client=client) if client else RedisStore(url=private_redis_server.url)
    admin = redis.Redis.from_url(private_redis_server.url)
    try:
        store.put(Foo(key=1, zap=1, bar=1))
        admin.flushall()  # the entries, the generation tokens and every marker gone
        assert store.get(Foo, 1) is None
        _writes_and_reads_work(store)
        admin.close()
        private_redis_server.restart()  # a new server: no script, no data, new sockets
        try:
            assert store.get(Foo, 3) is None
        except StoreUnavailable:
            # Only a caller's client may lose its first call, on a socket the restart closed
            # (the store's own connections are checked before each use).
            assert owner == "caller"
        _writes_and_reads_work(store)
    finally:
        store.close()
        if client is not None:
            client.close()


def test_a_flushed_cluster_is_served_again_at_once(redis_cluster_nodes: list[Any]) -> None:
    client = cluster_client(redis_cluster_nodes)
    with RedisStore(client=client) as store:
        store.put(Foo(key=1, zap=1, bar=1))
        client.flushall(target_nodes=RedisCluster.ALL_NODES)
        assert store.get(Foo, 1) is None
        _writes_and_reads_work(store)
    client.close()


def _writes_and_reads_work(store: RedisStore) -> None:
    """Every kind of write a store makes, each read back.  The store has read since the
    server lost its data: until a read finds the namespace generation gone, writes go to
    the old one, and are misses (never stale)."""
    store.put(Foo(key=1, zap=1, bar=1))
    assert store.get(Foo, {"zap": 1, "bar": 1}) == Foo(key=1, zap=1, bar=1)
    store.delete(Foo(key=1, zap=1, bar=1))  # a tombstone, by the script
    assert store.get(Foo, 1) is None
    store.write_committed([Foo(key=3, zap=3, bar=3)], [])  # an add, by the script
    assert store.batch_get(Foo, [3, 1]) == [Foo(key=3, zap=3, bar=3), None]
    store.invalidate_class(Foo)  # a new generation
    assert store.get(Foo, 3) is None


def test_a_forked_child_opens_its_own_connection(redis_url: str) -> None:
    with RedisStore(url=redis_url) as store:
        store.put(Foo(key=1, zap=1, bar=1))
        pid = os.fork()
        if pid == 0:  # the child: the parent's socket must not carry its commands
            try:
                store.put(Foo(key=2, zap=2, bar=2))
                ok = store.get(Foo, 1) == Foo(key=1, zap=1, bar=1)
                store.close()
            finally:
                os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert store.batch_get(Foo, [1, 2]) == [Foo(key=1, zap=1, bar=1), Foo(key=2, zap=2, bar=2)]


def test_a_client_it_was_given_stays_open(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    RedisStore(client=client).close()
    assert client.ping()
    client.close()


@pytest.mark.slow
def test_without_redis_py_the_error_names_the_extra() -> None:
    script = (
        "import sys\n"
        "sys.modules['redis'] = None\n"
        "from sa_stockpyle.stores import RedisStore\n"
        "try:\n"
        "    RedisStore(url='redis://127.0.0.1:1/0')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert 'pip install "sa_stockpyle[redis]"' in result.stdout


@pytest.mark.slow
def test_without_hiredis_redis_py_packs_and_parses(redis_url: str) -> None:
    script = (
        "import sys\n"
        "sys.modules['hiredis'] = None\n"
        "from sa_stockpyle.stores import RedisStore\n"
        "from sa_stockpyle.testing import Foo\n"
        f"store = RedisStore(url={redis_url!r})\n"
        "store.batch_put([Foo(key=1, zap=1, bar=1), Foo(key=2, zap=2, bar=2)])\n"
        "store.write_committed([Foo(key=3, zap=3, bar=3)], [(Foo, {'key': 2})])\n"
        "print(store.batch_get(Foo, [1, 2, 3]), store._pack_command)\n"
        "store.close()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == (
        "[Foo({'key': 1, 'zap': 1, 'bar': 1}), None, Foo({'key': 3, 'zap': 3, 'bar': 3})] None"
    )


def test_a_full_server_refuses_writes_as_unavailable(private_redis_server: RedisServer) -> None:
    store = RedisStore(url=private_redis_server.url)
    store.put(Foo(key=1, zap=1, bar=1))
    private_redis_server.execute("CONFIG", "SET", "maxmemory-policy", "noeviction")
    private_redis_server.execute("CONFIG", "SET", "maxmemory", "1")
    with pytest.raises(StoreUnavailable, match="maxmemory") as info:
        store.put(Foo(key=2, zap=2, bar=2))
    assert isinstance(info.value.__cause__, redis.exceptions.OutOfMemoryError)
    assert store.get(Foo, 1) == Foo(key=1, zap=1, bar=1)
    store.close()


def test_errors_that_mean_a_bug_are_not_translated() -> None:
    translator = ErrorTranslator("Redis at nowhere", (TimeoutError,), (OSError,))
    with pytest.raises(redis.exceptions.ResponseError), translator:
        raise redis.exceptions.ResponseError("ERR wrong number of arguments")
    with pytest.raises(StoreTimeout, match="Redis at nowhere did not answer"), translator:
        raise TimeoutError("slow")


def test_invalidate_class_reaches_every_process(redis_url: str) -> None:
    # Two stores, two key makers: as two processes sharing one Redis.
    with RedisStore(url=redis_url) as first, RedisStore(url=redis_url) as second:
        foo = Foo(key=1, zap=1, bar=1)
        first.put(foo)
        assert second.get(Foo, 1) == foo
        second.invalidate_class(Foo)
        assert first.get(Foo, 1) is None
        assert first.get(Foo, {"zap": 1, "bar": 1}) is None
        first.put(foo)  # written under the generation it just learned
        assert second.get(Foo, 1) == foo


def test_a_lost_generation_never_revives_older_entries(redis_url: str) -> None:
    with RedisStore(url=redis_url) as first, RedisStore(url=redis_url) as second:
        first.put(Foo(key=1, zap=1, bar=1))
        first.invalidate_class(Foo)
        # Evicted, or the server restarted with only some keys: the token is gone.
        [token] = [key for key in first.client.keys("*") if b":gen:" in key]
        first.client.delete(token)
        assert second.get(Foo, 1) is None
        assert first.get(Foo, 1) is None
