"""ProcessMemoryStore with max_items: the bound holds under concurrent load, and a long
run of puts, gets and deletes does not grow the process beyond it (RSS measured)."""

from __future__ import annotations

import gc
import random
import threading
from pathlib import Path

from sa_stockpyle.stores import ProcessMemoryStore
from sa_stockpyle.testing import Foo
from tests.threads import finish_all, started

BOUND = 500


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _churn(store: ProcessMemoryStore, seed: int, operations: int, keys: int) -> None:
    rng = random.Random(seed)
    for _ in range(operations):
        key = rng.randrange(keys)
        roll = rng.random()
        if roll < 0.5:
            store.get(Foo, key)
        elif roll < 0.85:
            store.put(Foo(key=key, zap=key, bar=seed, pad="x" * 50))
        else:
            store.delete(Foo(key=key, zap=key, bar=seed))


def test_the_bound_holds_under_concurrent_load() -> None:
    store = ProcessMemoryStore(max_items=BOUND)
    stop = threading.Event()
    largest = [0]

    def watch() -> None:
        while not stop.wait(0.0005):
            largest[0] = max(largest[0], len(store.dictionary))

    watcher = started(watch)
    try:
        finish_all([started(_churn, store, seed, 5_000, 20_000) for seed in range(8)])
    finally:
        stop.set()
        watcher.finish()
    assert 0 < largest[0] <= BOUND
    assert len(store.dictionary) <= BOUND


def test_a_long_run_does_not_grow_the_process() -> None:
    store = ProcessMemoryStore(max_items=BOUND)
    _churn(store, 0, 20_000, 1_000_000)  # warm up: the bound is reached, caches are built
    gc.collect()
    before = _rss_bytes()
    _churn(store, 1, 100_000, 1_000_000)
    gc.collect()
    grown = _rss_bytes() - before
    print(f"RSS grew by {grown / 2**20:.2f} MiB over 100,000 operations (bound {BOUND})")
    assert len(store.dictionary) <= BOUND
    assert grown < 8 * 2**20
