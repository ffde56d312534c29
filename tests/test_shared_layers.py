"""Shared layers inside ChainedStores: conformance, and a Redis server dying mid-run."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis.cluster import RedisCluster

from sa_stockpyle.stores import (
    ChainedStore,
    MemcacheStore,
    ProcessMemoryStore,
    RedisStore,
    ShoveStore,
)
from sa_stockpyle.testing import FakeClock, Foo, LayerProtocolConformance, Pair
from tests.helpers import cluster_client, freeze
from tests.servers import RedisServer


class TestChainOfMemoryAndRedis(LayerProtocolConformance):
    @pytest.fixture(autouse=True)
    def _server(self, redis_url: str) -> None:
        self.url = redis_url

    def make_store(self, **options: Any) -> ChainedStore:
        return ChainedStore([ProcessMemoryStore(**options), RedisStore(url=self.url, **options)])


class TestChainOfMemoryAndRedisCluster(LayerProtocolConformance):
    @pytest.fixture(autouse=True)
    def _cluster(self, redis_cluster_nodes: list[tuple[str, int]]) -> Iterator[None]:
        self.client: RedisCluster = cluster_client(redis_cluster_nodes)
        yield
        self.client.close()

    def make_store(self, **options: Any) -> ChainedStore:
        return ChainedStore(
            [ProcessMemoryStore(**options), RedisStore(client=self.client, **options)]
        )


class TestChainOfMemoryAndMemcachePool(LayerProtocolConformance):
    @pytest.fixture(autouse=True)
    def _servers(self, memcached_addresses: list[str]) -> None:
        self.servers = memcached_addresses

    def make_store(self, **options: Any) -> ChainedStore:
        return ChainedStore(
            [ProcessMemoryStore(**options), MemcacheStore(servers=self.servers, **options)]
        )


class TestChainOfMemoryMemcacheAndRedis(LayerProtocolConformance):
    @pytest.fixture(autouse=True)
    def _servers(self, memcached_addresses: list[str], redis_url: str) -> None:
        self.servers = memcached_addresses
        self.url = redis_url

    def make_store(self, **options: Any) -> ChainedStore:
        return ChainedStore(
            [
                ProcessMemoryStore(**options),
                MemcacheStore(servers=self.servers[:1], **options),
                RedisStore(url=self.url, **options),
            ]
        )


def _foos(n: int) -> list[Foo]:
    return [Foo(key=i, zap=i, bar=-i) for i in range(n)]


def test_a_redis_server_stopped_mid_run_is_a_counted_miss(
    private_redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    memory = ProcessMemoryStore()
    redis_layer = RedisStore(url=private_redis_server.url)
    chain = ChainedStore([memory, redis_layer, ShoveStore(shove={})], cooldown=0)
    foos = _foos(10)
    chain.batch_put(foos)
    memory.clear()
    assert chain.batch_get(Foo, range(10)) == foos
    assert chain.layer_stats[1].count(Foo, "hits") == 10

    private_redis_server.kill()
    memory.clear()
    with caplog.at_level(logging.WARNING, logger="sa_stockpyle"):
        assert chain.get(Foo, 3) == foos[3]
        assert chain.batch_get(Foo, [{"zap": 5, "bar": -5}, 7, 99]) == [foos[5], foos[7], None]
        newer = Foo(key=1, zap=1, bar=-1, note="written while Redis is down")
        chain.put(newer)
        chain.delete(foos[2])
    # Each call fails once: a layer that could not be read holds no claim to fill.
    assert chain.layer_stats[1].count(Foo, "errors") == 1 + 1 + 1 + 1
    assert chain.layer_stats[2].count(Foo, "hits") == 3
    assert "1:RedisStore failed" in caplog.text
    assert chain.get(Foo, 1) == newer
    assert chain.get(Foo, 2) is None

    private_redis_server.restart()
    memory.clear()
    errors = chain.layer_stats[1].count(Foo, "errors")
    assert chain.get(Foo, 4) == foos[4]
    assert chain.layer_stats[1].count(Foo, "errors") == errors
    assert redis_layer.get(Foo, 4) == foos[4]
    chain.close()


def test_a_frozen_redis_costs_a_timeout_not_a_hang(private_redis_server: RedisServer) -> None:
    redis_layer = RedisStore(url=private_redis_server.url, timeout=0.2, connect_timeout=0.2)
    chain = ChainedStore([redis_layer, ShoveStore(shove={})], cooldown=0)
    foos = _foos(3)
    chain.batch_put(foos)
    assert private_redis_server.pid is not None
    freeze(private_redis_server.pid)
    try:
        for foo in foos:
            started = time.monotonic()
            assert chain.get(Foo, foo.key) == foo
            # Only a hang fails: the read waits one timeout of 0.2 s (the errors count
            # below shows one per call), and a busy machine is given fifty times that.
            assert time.monotonic() - started < 50 * 0.2
    finally:
        os.kill(private_redis_server.pid, signal.SIGCONT)
    assert chain.layer_stats[0].count(Foo, "errors") == 3  # the read; no claim, no fill
    assert chain.layer_stats[1].count(Foo, "hits") == 3
    chain.close()


def test_a_dead_layer_rests_instead_of_costing_a_timeout_per_request(
    private_redis_server: RedisServer,
) -> None:
    redis_layer = RedisStore(url=private_redis_server.url, timeout=0.2, connect_timeout=0.2)
    # An hour's rest, and no catch-up before it ends: however slow the machine, only the
    # first call tries the frozen layer, and only the cooldown's end brings it back.
    clock = FakeClock(0.0)  # monotonic seconds: exact sums near 0
    chain = ChainedStore(
        [redis_layer, ShoveStore(shove={})],
        cooldown=3600,
        catch_up_interval=3600,
        monotonic=clock,
    )
    try:
        foos = _foos(3)
        chain.batch_put(foos)
        assert private_redis_server.pid is not None
        freeze(private_redis_server.pid)
        try:
            for _ in range(20):
                assert chain.get(Foo, 1) == foos[1]
            newer = Foo(key=2, zap=2, bar=2, note="while frozen")
            chain.put(newer)  # skipped by the resting layer: never sent, remembered
        finally:
            os.kill(private_redis_server.pid, signal.SIGCONT)
        # One timeout for the first call; the others skip the resting layer.
        assert chain.layer_stats[0].count(Foo, "errors") == 1
        assert chain.layer_stats[0].count(Foo, "skipped") >= 20
        assert redis_layer.get(Foo, 2) == foos[2]  # what the skipped put replaced
        skipped = chain.layer_stats[0].count(Foo, "skipped")
        clock.advance(3599)
        assert chain.get(Foo, 1) == foos[1]  # a second before the hour's end: resting
        assert chain.layer_stats[0].count(Foo, "skipped") == skipped + 1
        misses = chain.layer_stats[0].count(Foo, "misses")
        # The cooldown passes (the chain's clock moves on): the next call makes up for the
        # write the layer missed, removing the old entry, then reads the layer again.
        clock.advance(1)
        assert chain.get(Foo, 2) == newer
        assert chain.layer_stats[0].count(Foo, "caught_up") == 1
        assert chain.layer_stats[0].count(Foo, "misses") == misses + 1
        assert redis_layer.get(Foo, 2) in (None, newer)
        assert chain.layer_stats[0].count(Foo, "errors") == 1
    finally:
        chain.close()


def test_writes_redis_refused_are_made_up_for_when_it_accepts_again(
    private_redis_server: RedisServer,
) -> None:
    memory = ProcessMemoryStore()
    redis_layer = RedisStore(url=private_redis_server.url)
    # cooldown=0: the next call tries the layer at once (the catch-up is what is tested).
    chain = ChainedStore([memory, redis_layer, ShoveStore(shove={})], cooldown=0)
    chain.batch_put([Foo(key=1, zap=1, bar=1, v="old"), Pair(a="p", b=1, v="old")])
    admin = redis_layer.client
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", "1")  # every write is refused (OOM); reads still answer
    try:
        chain.invalidate_class(Pair)
        # The layer is behind now: this write does not even try it before it catches up
        # (a DEL would be allowed, but the missed invalidation still cannot be written).
        chain.put(Foo(key=1, zap=1, bar=1, v="new"))
    finally:
        admin.config_set("maxmemory", "0")
    other_process = RedisStore(url=private_redis_server.url)
    assert other_process.get(Foo, 1).v == "old"  # the stale entry the failure left behind
    assert other_process.get(Pair, ("p", 1)).v == "old"
    memory.clear()
    assert chain.get(Foo, 1).v == "new"  # made up for before Redis served anything
    assert other_process.get(Foo, 1).v == "new"
    assert other_process.get(Pair, ("p", 1)) is None
    assert chain.layer_stats[1].count(Foo, "caught_up") == 1
    assert chain.layer_stats[1].count(Pair, "caught_up") == 1
    other_process.close()
    chain.close()
