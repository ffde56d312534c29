"""Session fixtures: real Redis, Redis Cluster, memcached and PostgreSQL on loopback.

Servers start lazily, the first time a test asks for them, and stop at session end (a
server that was already running is reused and left alone; see ``tests/servers.py``).
A server that cannot be reached fails the test, in CI and locally: nothing is skipped.

Override the defaults with ``STOCKPYLE_TEST_REDIS_PORT``, ``STOCKPYLE_TEST_CLUSTER_PORTS``
and ``STOCKPYLE_TEST_MEMCACHED_PORTS`` (comma lists) and ``STOCKPYLE_TEST_POSTGRES_URL``;
``STOCKPYLE_TEST_SLOTS`` lets several sessions run at once (``tests/suite_servers.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TypeVar

import psycopg
import pytest
from hypothesis import settings
from psycopg import sql
from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import make_url

from tests.servers import (
    MemcachedServer,
    RedisCluster,
    RedisServer,
    ServerError,
    free_port,
    free_ports,
)
from tests.suite_servers import suite_cluster, suite_memcached, suite_redis, take_slot
from tests.threads import no_thread_outlives_its_test  # noqa: F401 - an autouse fixture

pytest_plugins = ["pytester"]

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

T = TypeVar("T")

# Hypothesis fails an example slower than 200 ms by default: a wall-clock bound that a
# loaded machine breaks. Property tests check values, never time.
settings.register_profile("sa_stockpyle", max_examples=100, deadline=None)
# With CI set (CI runs with CI=true): three times the examples (tests.helpers.examples
# scales the tests that set their own count), derived from each test's name instead of a
# random seed, so a failure in CI fails again on every run, locally too with CI=true; no
# example database (a fresh clone has none), and the failing example printed as a
# @reproduce_failure decorator. Hypothesis's own "ci" profile, with more examples.
settings.register_profile(
    "ci",
    settings.get_profile("ci"),
    max_examples=300,
    derandomize=True,
    database=None,
    print_blob=True,
    deadline=None,
)
settings.load_profile("ci" if os.environ.get("CI") else "sa_stockpyle")


def _configured(make: Callable[[], T]) -> T:
    try:
        return make()
    except ServerError as exc:
        pytest.fail(str(exc), pytrace=False)


def _start(server: RedisServer | RedisCluster | MemcachedServer) -> None:
    try:
        server.start()
    except ServerError as exc:
        pytest.fail(
            f"cannot start {server!r}: {exc}\n"
            "Tests use real servers and never skip; `scripts/test` installs and starts them.",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def slot() -> Iterator[int]:
    """Which set of servers and database this session uses (``tests/suite_servers.py``):
    0, unless STOCKPYLE_TEST_SLOTS lets several sessions run at once."""
    taken, lock = _configured(take_slot)
    yield taken
    if lock is not None:
        lock.close()


@pytest.fixture(scope="session")
def redis_server(slot: int) -> Iterator[RedisServer]:
    """A standalone Redis on STOCKPYLE_TEST_REDIS_PORT (16379)."""
    server = _configured(lambda: suite_redis(slot))
    _start(server)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(slot: int) -> Iterator[RedisCluster]:
    """A 3-master Redis Cluster on STOCKPYLE_TEST_CLUSTER_PORTS (17001-17003)."""
    cluster = _configured(lambda: suite_cluster(slot))
    _start(cluster)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def memcached_servers(slot: int) -> Iterator[list[MemcachedServer]]:
    """Two memcached servers on STOCKPYLE_TEST_MEMCACHED_PORTS (11311, 11312)."""
    servers = _configured(lambda: suite_memcached(slot))
    try:
        for server in servers:
            _start(server)
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="session")
def postgres_url(slot: int) -> str:
    """SQLAlchemy URL of a reachable PostgreSQL database (created if missing)."""
    parsed = make_url(os.environ.get("STOCKPYLE_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL))
    if slot:
        parsed = parsed.set(database=f"{parsed.database or 'postgres'}_{slot}")
    url = parsed.render_as_string(hide_password=False)
    database = parsed.database or "postgres"
    conninfo = make_conninfo(
        host=parsed.host or "127.0.0.1",
        port=parsed.port or 5432,
        user=parsed.username,
        password=parsed.password,
        connect_timeout=3,
    )
    try:
        try:
            psycopg.connect(conninfo, dbname=database).close()
        except psycopg.OperationalError as exc:
            if f'database "{database}" does not exist' not in str(exc):
                raise
            with psycopg.connect(conninfo, dbname="postgres", autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    except psycopg.Error as exc:
        pytest.fail(
            f"PostgreSQL at {parsed.render_as_string(hide_password=True)} does not answer: "
            f"{exc}\nStart it (`pg_ctlcluster <version> main start`, or run scripts/test) or "
            "point STOCKPYLE_TEST_POSTGRES_URL at a database the tests may write to.",
            pytrace=False,
        )
    return url


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session Redis, its database flushed for this test."""
    redis_server.flushdb()
    return redis_server.url


@pytest.fixture
def redis_cluster_nodes(redis_cluster: RedisCluster) -> list[tuple[str, int]]:
    """Startup nodes of the session Redis Cluster, every node flushed for this test."""
    redis_cluster.flushall()
    return redis_cluster.startup_nodes


@pytest.fixture
def memcached_addresses(memcached_servers: list[MemcachedServer]) -> list[str]:
    """``host:port`` of each session memcached, each flushed for this test."""
    for server in memcached_servers:
        server.flush_all()
    return [server.address for server in memcached_servers]


@pytest.fixture
def private_memcached_server() -> Iterator[MemcachedServer]:
    """A memcached of this test's own on a free port, for kill/restart fault injection."""
    server = MemcachedServer(free_port())
    _start(server)
    yield server
    server.stop()


@pytest.fixture
def private_redis_cluster() -> Iterator[RedisCluster]:
    """A Redis Cluster of this test's own on free ports, for killing and restarting nodes
    (the session's may be one the tests did not start, and other tests need it whole)."""
    cluster = RedisCluster(free_ports(3, bus_offset=10000))
    _start(cluster)
    yield cluster
    cluster.stop()


@pytest.fixture
def private_redis_server() -> Iterator[RedisServer]:
    """A Redis of this test's own on a free port, for kill/restart fault injection."""
    server = RedisServer(free_port())
    _start(server)
    yield server
    server.stop()
