"""ProcessMemoryStore with max_items: the bound holds under concurrent load, and a long
run of puts, gets and deletes does not grow what the process holds (the Python memory
allocated during the run and still alive, measured with tracemalloc; RSS as a backstop)."""

from __future__ import annotations

import gc
import random
import threading
import tracemalloc
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
    # RSS alone depends on the allocator: freed memory may stay mapped, or arenas may be
    # returned, so a bound tight enough to catch a leak flakes.  tracemalloc counts the
    # bytes Python objects hold, whatever the allocator keeps: after a warm-up (the bound
    # reached, its entries allocated under tracing), a long run replaces entries with
    # entries of the same size, and what the process holds stays where it was, to a few
    # hundred bytes.  A leak of one byte per operation would show 50 kB here.
    store = ProcessMemoryStore(max_items=BOUND)
    tracemalloc.start()
    try:
        _churn(store, 0, 20_000, 1_000_000)  # warm up: the bound is reached, caches are built
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
        rss = _rss_bytes()
        _churn(store, 1, 50_000, 1_000_000)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - held
    finally:
        tracemalloc.stop()
    rss_grown = _rss_bytes() - rss
    print(f"{grown:,} bytes more held after 50,000 operations ({held:,} before)")
    print(f"RSS grew by {rss_grown / 2**20:.2f} MiB")
    assert len(store.dictionary) <= BOUND
    assert held > BOUND * 100  # the entries were traced: what the store holds was measured
    assert grown < 32 * 1024
    # The backstop, for memory Python does not allocate (a C extension): a generous bound,
    # hundreds of times what the store's entries take, which no allocator's slack reaches.
    assert rss_grown < 64 * 2**20
