"""MemcacheStore on real memcached servers: one server, and a two-server hashing pool.

The conformance suite, payload safety, memcached's key and expiry rules, the error
policy and round trips.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from pymemcache.client.base import Client
from pymemcache.client.hash import HashClient

from sa_stockpyle.codec import MAGIC
from sa_stockpyle.errors import ConfigurationError, StoreTimeout, StoreUnavailable
from sa_stockpyle.keys import key_spec
from sa_stockpyle.stores import MemcacheStore
from sa_stockpyle.testing import FakeClock, Foo, LayerProtocolConformance
from tests.helpers import exploit, freeze
from tests.servers import MemcachedServer, free_port


class TestMemcacheStore(LayerProtocolConformance):
    compares_tombstone_times = False

    @pytest.fixture(autouse=True)
    def _server(self, memcached_addresses: list[str]) -> None:
        self.servers = memcached_addresses[:1]

    def make_store(self, **options: Any) -> MemcacheStore:
        return MemcacheStore(servers=self.servers, **options)


class TestMemcachePoolStore(LayerProtocolConformance):
    compares_tombstone_times = False

    @pytest.fixture(autouse=True)
    def _servers(self, memcached_addresses: list[str]) -> None:
        self.servers = memcached_addresses

    def make_store(self, **options: Any) -> MemcacheStore:
        return MemcacheStore(servers=self.servers, **options)


@pytest.fixture
def pool(memcached_addresses: list[str]) -> Iterator[MemcacheStore]:
    with MemcacheStore(servers=memcached_addresses) as store:
        yield store


def remaining_ttl(address: str, key: str) -> int | None:
    """Seconds ``key`` has left on one server, -1 for no expiry (None: not there).

    Asked with the meta protocol's ``mg <key> t``, which reports what the server holds.
    """
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=2) as sock:
        sock.sendall(b"mg " + key.encode() + b" t\r\n")
        reply = sock.makefile("rb").readline().decode()
    if reply == "EN\r\n":
        return None
    assert reply.startswith("HD t"), reply
    return int(reply[4:])


def locate(addresses: list[str], key: str) -> tuple[str, int]:
    """The one server holding ``key``, and the seconds the key has left there."""
    found = [(a, ttl) for a in addresses if (ttl := remaining_ttl(a, key)) is not None]
    assert len(found) == 1, (key, found)
    return found[0]


def foo_keys(store: MemcacheStore, foo: Foo) -> list[str]:
    """The cache keys a Foo is stored under: primary, then (zap, bar)."""
    spec = key_spec(Foo)
    return [
        store.keymaker.key(spec, 0, (foo.key,)),
        store.keymaker.key(spec, 1, (foo.zap, foo.bar)),
    ]


# -- keys, payloads and expiry ------------------------------------------------------------


def test_keys_meet_memcached_rules_and_values_are_codec_bytes(
    pool: MemcacheStore, memcached_addresses: list[str]
) -> None:
    odd = "ünï cödé\n" * 556  # 5,000 characters with spaces, newlines and non-ASCII
    foo = Foo(key=odd, zap=odd, bar="bar")
    pool.put(foo)
    assert pool.get(Foo, odd) == foo
    assert pool.get(Foo, {"zap": odd, "bar": "bar"}) == foo
    for key in foo_keys(pool, foo):
        assert len(key.encode()) <= 250
        assert key.isascii()
        assert key.isprintable()
        assert " " not in key
        locate(memcached_addresses, key)
        assert pool.client.get(key).startswith(MAGIC)


def test_keys_spread_over_both_servers(
    pool: MemcacheStore, memcached_addresses: list[str]
) -> None:
    foos = [Foo(key=i, zap=i, bar=i) for i in range(100)]
    pool.batch_put(foos)
    servers = Counter(
        locate(memcached_addresses, key)[0] for foo in foos for key in foo_keys(pool, foo)
    )
    assert sum(servers.values()) == 200
    assert min(servers.values()) > 50


def _ttls(store: MemcacheStore, addresses: list[str]) -> list[int]:
    foo = Foo(key=1, zap=1, bar=1)
    return [locate(addresses, key)[1] for key in foo_keys(store, foo)]


def test_a_short_lifetime_is_sent_relative(memcached_addresses: list[str]) -> None:
    store = MemcacheStore(servers=memcached_addresses, lifetime_cb=lambda obj: 20)
    store.put(Foo(key=1, zap=1, bar=1))
    for ttl in _ttls(store, memcached_addresses):
        assert 15 < ttl <= 20
    store.close()


def test_a_lifetime_beyond_30_days_is_sent_as_an_absolute_time(
    memcached_addresses: list[str],
) -> None:
    store = MemcacheStore(
        servers=memcached_addresses, lifetime_cb=lambda obj: dt.timedelta(days=60)
    )
    foo = Foo(key=1, zap=1, bar=1)
    store.put(foo)
    # Sent as a 60-day duration, memcached would read it as a time in 1970 and drop it.
    assert store.get(Foo, 1) == foo
    assert store.get(Foo, {"zap": 1, "bar": 1}) == foo
    for ttl in _ttls(store, memcached_addresses):
        assert 60 * 86400 - 60 < ttl <= 60 * 86400 + 3  # whole seconds, rounded up
    store.close()


def test_an_injected_clock_far_ahead_still_gives_sane_ttls(
    memcached_addresses: list[str],
) -> None:
    ahead = time.time() + 10 * 365 * 86400
    store = MemcacheStore(
        servers=memcached_addresses[:1], clock=lambda: ahead, lifetime_cb=lambda obj: 600
    )
    store.put(Foo(key=1, zap=1, bar=1))
    assert store.get(Foo, 1) == Foo(key=1, zap=1, bar=1)
    for ttl in _ttls(store, memcached_addresses):
        assert 590 < ttl <= 600
    store.close()


def test_writing_an_already_expired_object_removes_it(memcached_addresses: list[str]) -> None:
    lifetimes: dict[str, Any] = {"now": 100}
    store = MemcacheStore(servers=memcached_addresses, lifetime_cb=lambda obj: lifetimes["now"])
    store.put(Foo(key=1, zap=1, bar=1))
    assert _ttls(store, memcached_addresses) == [100, 100]
    lifetimes["now"] = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
    store.put(Foo(key=1, zap=1, bar=1))
    assert store.get(Foo, 1) is None
    assert store.get(Foo, {"zap": 1, "bar": 1}) is None
    store.close()


def test_a_value_too_large_for_memcached_is_refused_and_leaves_nothing_stale(
    pool: MemcacheStore,
) -> None:
    pool.put(Foo(key=1, zap=1, bar=1, blob=b"small"))
    with pytest.raises(StoreUnavailable, match="too large"):
        pool.put(Foo(key=1, zap=1, bar=1, blob=b"x" * 2_000_000))
    assert pool.get(Foo, 1) is None


@pytest.mark.parametrize("kind", ["pickle", "random"])
def test_a_hostile_payload_is_a_counted_miss_and_is_deleted(
    pool: MemcacheStore, tmp_path: Any, kind: str
) -> None:
    marker = tmp_path / "pwned"
    pool.put(Foo(key=1, zap=2, bar=3))
    primary = pool.keymaker.key(key_spec(Foo), 0, (1,))
    assert pool.client.get(primary) is not None
    payload = exploit(marker) if kind == "pickle" else os.urandom(256)
    # flags=1 is what pymemcache's pickle serde marks pickles with.
    pool.client.set(primary, payload, flags=1, noreply=False)
    assert pool.get(Foo, 1) is None
    assert not marker.exists()
    assert pool.client.get(primary).startswith(b"SPKT")  # removed: a tombstone
    assert pool.stats.count(Foo, "corrupt") == 1
    assert pool.get(Foo, {"zap": 2, "bar": 3}) is None


# -- round trips --------------------------------------------------------------------------


class CountingSockets:
    """A ``socket_module`` for pymemcache whose sockets count the requests they send.

    pymemcache sends each request with one ``sendall`` and then reads every reply, so one
    ``sendall`` is one round trip.  The sockets are real; only the count is added.
    """

    def __init__(self) -> None:
        self.sent: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(socket, name)

    def socket(self, *args: Any) -> Any:
        return _CountingSocket(socket.socket(*args), self.sent)


class _CountingSocket:
    def __init__(self, sock: socket.socket, sent: Counter[str]) -> None:
        self._sock = sock
        self._sent = sent

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def sendall(self, data: bytes) -> None:
        host, port = self._sock.getpeername()[:2]
        self._sent[f"{host}:{port}"] += 1
        self._sock.sendall(data)


def test_batch_get_of_1000_keys_is_one_round_trip_per_server(
    memcached_addresses: list[str],
) -> None:
    sockets = CountingSockets()
    client = HashClient(memcached_addresses, socket_module=sockets, default_noreply=False)
    store = MemcacheStore(client=client)
    foos = [Foo(key=i, zap=i, bar=i) for i in range(1000)]
    store.batch_put(foos)
    sockets.sent.clear()
    assert store.batch_get(Foo, range(1000)) == foos
    assert sockets.sent == dict.fromkeys(memcached_addresses, 1)
    sockets.sent.clear()
    store.batch_put(foos)
    store.batch_delete(foos)
    # A put and a delete per server, and one read of the class's generation right after
    # the delete (see Generations.write_current), on the server holding it.
    assert sorted(sockets.sent.values()) == [2, 3]
    assert store.batch_get(Foo, range(1000)) == [None] * 1000
    client.close()


def test_a_single_server_batch_is_one_round_trip(memcached_addresses: list[str]) -> None:
    sockets = CountingSockets()
    client = Client(memcached_addresses[0], socket_module=sockets, default_noreply=False)
    store = MemcacheStore(client=client)
    foos = [Foo(key=i, zap=i, bar=i) for i in range(1000)]
    store.batch_put(foos)
    sockets.sent.clear()
    assert store.batch_get(Foo, range(1000)) == foos
    assert store.batch_get(Foo, [{"zap": i, "bar": i} for i in range(1000)]) == foos
    assert sockets.sent == {memcached_addresses[0]: 3}  # primary keys; pointers, entries
    client.close()


# -- the error policy ---------------------------------------------------------------------


@pytest.mark.parametrize("servers", [None, [], "127.0.0.1:11211"])
def test_servers_must_be_a_list(servers: Any) -> None:
    with pytest.raises(ConfigurationError, match="exactly one"):
        MemcacheStore(servers=servers)


def test_not_both_servers_and_client() -> None:
    with pytest.raises(ConfigurationError, match="exactly one"):
        MemcacheStore(servers=["127.0.0.1:11211"], client=Client("127.0.0.1:11211"))


def test_a_dead_server_in_a_pool_raises_instead_of_missing(
    memcached_addresses: list[str],
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    store = MemcacheStore(servers=[memcached_addresses[0], dead])
    foos = [Foo(key=i, zap=i, bar=i) for i in range(20)]
    operations = [
        lambda: store.batch_get(Foo, range(20)),
        lambda: store.batch_put(foos),
        lambda: store.batch_delete(foos),
    ]
    for _ in range(3):  # HashClient would start answering misses after its first failure
        for operation in operations:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match=re.escape(dead)) as info:
                operation()
            assert time.monotonic() - started < 2
            assert isinstance(info.value.__cause__, OSError)
    store.close()


@pytest.fixture
def private_memcached() -> Iterator[MemcachedServer]:
    server = MemcachedServer(free_port())
    server.start()
    yield server
    server.stop()


def test_a_frozen_server_times_out_within_the_timeout(
    private_memcached: MemcachedServer,
) -> None:
    store = MemcacheStore(servers=[private_memcached.address], timeout=0.2)
    store.put(Foo(key=1, zap=1, bar=1))
    assert private_memcached.pid is not None
    freeze(private_memcached.pid)
    try:
        for operation in (lambda: store.get(Foo, 1), lambda: store.put(Foo(key=2, zap=2, bar=2))):
            started = time.monotonic()
            with pytest.raises(StoreTimeout):
                operation()
            assert time.monotonic() - started < 2
    finally:
        os.kill(private_memcached.pid, signal.SIGCONT)
    assert store.get(Foo, 1) == Foo(key=1, zap=1, bar=1)
    store.close()


@pytest.mark.slow
def test_without_pymemcache_the_error_names_the_extra() -> None:
    script = (
        "import sys\n"
        "sys.modules['pymemcache'] = None\n"
        "from sa_stockpyle.stores import MemcacheStore\n"
        "try:\n"
        "    MemcacheStore(servers=['127.0.0.1:1'])\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert 'pip install "sa_stockpyle[memcache]"' in result.stdout


def test_a_live_lease_is_not_taken_over_by_a_process_whose_clock_runs_ahead(
    memcached_addresses: list[str],
) -> None:
    # memcached cannot say how old a lease is: its stated expiry, on its writer's clock,
    # is all there is.  A reader 6 s ahead (more than lease_ttl) must still leave it.
    behind, ahead = FakeClock(), FakeClock()
    ahead.advance(6)
    first = MemcacheStore(servers=memcached_addresses, clock=behind)
    second = MemcacheStore(servers=memcached_addresses, clock=ahead)
    try:
        claim = first.reserve(Foo, [1])
        assert claim.granted == [True]
        assert second.reserve(Foo, [1]).granted == [False]
        first.fill(claim, [Foo(key=1, zap=1, bar=1)])
        assert second.get(Foo, 1) == Foo(key=1, zap=1, bar=1)
    finally:
        first.close()
        second.close()
