"""RedisStore and MemcacheStore hits against the raw client doing the same work.

Run: ``.venv-bench/bin/python benchmarks/bench_shared_stores.py`` (starts its own redis-server and
memcached on free loopback ports with ``tests/servers.py``), or point it at running servers
with ``--redis-url redis://host:port/db`` and ``--memcached host:port``.

The floor is what any cache of these objects must do: a GET / MGET on a redis-py connection
(Redis; what the store sends on the client it built) or the client's get / get_many
(pymemcache) of the very bytes the store wrote, then
``codec.decode_record`` and ``codec.restore`` of each.  The store adds key building, the
record checks (expiry, pointers, class) and error translation.  Each figure is the median
of several rounds of many calls, store and floor measured alternately in one process, so
the ratios compare like with like even on a shared machine whose speed drifts.
"""

from __future__ import annotations

import argparse
import platform
from collections.abc import Callable
from typing import Any

from common import RawRedis, User, compare, servers

from sa_stockpyle.codec import decode_record
from sa_stockpyle.keys import key_spec
from sa_stockpyle.snapshots import restore
from sa_stockpyle.stores import MemcacheStore, RedisStore
from sa_stockpyle.stores.keyvalue import BaseKeyValueStore

BATCH = 1000


def rebuild(raw: Any) -> object:
    """The floor's decoding: what the store does with the bytes, minus its checks."""
    entry: Any = decode_record(raw, User)
    return restore(entry.klass, entry.state)


def primary_keys(store: BaseKeyValueStore, ids: list[int]) -> list[str]:
    """The cache keys the store uses for ``ids``."""
    spec = key_spec(User)
    return [store.keymaker.key(spec, 0, (i,)) for i in ids]


def bench(
    name: str, store: BaseKeyValueStore, get: Callable[[str], Any], args: argparse.Namespace
) -> list[tuple[str, float, float]]:
    """Rows for one store: get and batch_get(1,000) hits against ``get`` (a raw batch)."""
    users = [User(i) for i in range(args.objects)]
    store.batch_put(users)
    one = primary_keys(store, [4242])
    ids = list(range(BATCH))
    keys = primary_keys(store, ids)
    get_one, get_many = get(one[0]), get(keys)  # warm up connections, check the setup
    assert get_one is not None
    assert all(raw is not None for raw in get_many)
    single = compare(
        lambda: store.get(User, 4242),
        lambda: rebuild(get(one[0])),
        args.calls,
        args.rounds,
    )
    batch = compare(
        lambda: store.batch_get(User, ids),
        lambda: [rebuild(raw) for raw in get(keys)],
        max(args.calls // 100, 5),
        args.rounds,
    )
    return [(f"{name} get", *single), (f"{name} batch_get(1,000)", *batch)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-url", help="use this Redis instead of starting one")
    parser.add_argument("--memcached", help="use this host:port instead of starting one")
    parser.add_argument("--objects", type=int, default=5_000)
    parser.add_argument("--calls", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    with servers(args.redis_url, args.memcached) as (redis_url, memcached):
        redis_store = RedisStore(url=redis_url)
        memcache_store = MemcacheStore(servers=[memcached])
        redis_raw_client = RawRedis(redis_store.client)
        memcache_client = memcache_store.client

        def redis_raw(keys: str | list[str]) -> Any:
            if isinstance(keys, str):
                return redis_raw_client.get(keys)
            return redis_raw_client.mget(keys)

        def memcache_raw(keys: str | list[str]) -> Any:
            if isinstance(keys, str):
                return memcache_client.get(keys)
            found = memcache_client.get_many(keys)
            return [found.get(key) for key in keys]

        rows = [
            *bench("RedisStore", redis_store, redis_raw, args),
            *bench("MemcacheStore", memcache_store, memcache_raw, args),
        ]
        redis_raw_client.close()
        redis_store.close()
        memcache_store.close()

    print(
        f"Shared stores vs raw client + decode_record + restore of the same bytes; "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()}, loopback servers, median of {args.rounds} rounds"
    )
    print(f"{'operation':<32} {'store µs':>10} {'raw µs':>10} {'ratio':>7}")
    for name, store_s, raw_s in rows:
        print(f"{name:<32} {store_s * 1e6:>10.1f} {raw_s * 1e6:>10.1f} {store_s / raw_s:>6.2f}x")


if __name__ == "__main__":
    main()
