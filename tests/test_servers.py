"""The server fixtures hand out real, working servers (the harness itself, not the library)."""

from __future__ import annotations

import os

import pytest
import redis
from pymemcache.client.base import Client as MemcacheClient
from redis.cluster import ClusterNode
from redis.cluster import RedisCluster as RedisClusterClient
from sqlalchemy import create_engine, text

from tests.servers import (
    MemcachedServer,
    RedisCluster,
    RedisServer,
    ServerError,
    find_binary,
    free_ports,
)


def test_redis_set_get(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        client.set("greeting", b"hello")
        assert client.get("greeting") == b"hello"
    finally:
        client.close()


def test_redis_url_starts_empty(redis_url: str, redis_server: RedisServer) -> None:
    assert redis_server.url == redis_url
    assert redis_server.execute("DBSIZE") == "0"


def test_redis_cluster_spreads_keys_over_all_nodes(
    redis_cluster_nodes: list[tuple[str, int]],
) -> None:
    client = RedisClusterClient(
        startup_nodes=[ClusterNode(host, port) for host, port in redis_cluster_nodes]
    )
    try:
        for i in range(100):
            client.set(f"key:{i}", str(i))
        assert [client.get(f"key:{i}") for i in range(100)] == [
            str(i).encode() for i in range(100)
        ]
    finally:
        client.close()

    per_node = []
    for host, port in redis_cluster_nodes:
        node = redis.Redis(host=host, port=port)
        try:
            per_node.append(node.dbsize())
        finally:
            node.close()
    assert sum(per_node) == 100
    assert all(count > 0 for count in per_node), per_node


def test_memcached_set_get_on_each_server(memcached_addresses: list[str]) -> None:
    assert len(memcached_addresses) == 2
    for address in memcached_addresses:
        host, port = address.rsplit(":", 1)
        client = MemcacheClient((host, int(port)), connect_timeout=2, timeout=2)
        try:
            client.set("greeting", address.encode())
            assert client.get("greeting") == address.encode()
        finally:
            client.close()


def test_memcached_addresses_are_flushed(
    memcached_servers: list[MemcachedServer], request: pytest.FixtureRequest
) -> None:
    clients = [MemcacheClient((server.host, server.port)) for server in memcached_servers]
    try:
        for client in clients:  # what an earlier test left behind
            client.set("greeting", b"left over")
            assert client.get("greeting") == b"left over"
        request.getfixturevalue("memcached_addresses")  # the fixture a test asks for
        for client in clients:
            assert client.get("greeting") is None
    finally:
        for client in clients:
            client.close()


def test_postgres_select_1(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("select 1")).scalar_one() == 1
    finally:
        engine.dispose()


def test_kill_then_restart_loses_data(private_redis_server: RedisServer) -> None:
    server = private_redis_server
    assert server.owned
    assert server.tmpdir is not None
    server.execute("SET", "survivor", "1")

    pid = server.pid
    server.kill()
    assert not server.is_up()
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)

    server.restart()
    assert server.is_up()
    assert server.pid != pid
    # No persistence (--save "", --appendonly no): a restarted server starts empty.
    assert server.execute("GET", "survivor") == ""
    assert server.execute("DBSIZE") == "0"


def test_restart_running_server(private_redis_server: RedisServer) -> None:
    pid = private_redis_server.pid
    private_redis_server.restart()
    assert private_redis_server.is_up()
    assert private_redis_server.pid != pid


def test_stop_removes_process_and_files(private_redis_server: RedisServer) -> None:
    tmpdir = private_redis_server.tmpdir
    assert tmpdir is not None
    assert os.path.isdir(tmpdir)
    private_redis_server.stop()
    assert not private_redis_server.is_up()
    assert not os.path.exists(tmpdir)
    assert private_redis_server.pid is None


def test_running_server_is_reused_not_owned(redis_server: RedisServer) -> None:
    second = RedisServer(redis_server.port)
    second.start()
    assert not second.owned
    assert second.pid is None
    with pytest.raises(ServerError, match="not started by the tests"):
        second.kill()
    second.stop()
    assert redis_server.is_up()


def test_cluster_reused_when_already_formed(redis_cluster: RedisCluster) -> None:
    again = RedisCluster([port for _, port in redis_cluster.startup_nodes])
    again.start()
    assert not again.owned
    again.stop()
    assert redis_cluster.is_up()


def test_cluster_node_stop_and_rejoin() -> None:
    # A cluster of the test's own: stopping a node must not disturb the session cluster.
    cluster = RedisCluster(free_ports(3, bus_offset=10000))
    cluster.start()
    try:
        assert cluster.owned
        port = cluster.startup_nodes[-1][1]
        cluster.stop_node(port)
        assert not cluster.node(port).is_up()
        assert not cluster.is_up()
        cluster.start_node(port)
        assert cluster.is_up()
    finally:
        cluster.stop()
    assert not any(node.is_up() for node in cluster.nodes)


def test_missing_binary_names_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(ServerError, match=r"apt-get install -y redis-tools"):
        find_binary("redis-cli")
