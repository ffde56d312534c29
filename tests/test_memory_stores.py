"""ProcessMemoryStore and ThreadLocalStore: the conformance suite plus their own promises."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import random
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from sa_stockpyle.codec import Marker
from sa_stockpyle.errors import ConfigurationError, PayloadError
from sa_stockpyle.stores import BaseDictionaryStore, ProcessMemoryStore, ThreadLocalStore
from sa_stockpyle.stores.base import Reservation
from sa_stockpyle.testing import FakeClock, Foo, LayerProtocolConformance, Versioned
from tests.helpers import Statements
from tests.threads import finish_all, started


class TestProcessMemoryStore(LayerProtocolConformance):
    def make_store(self, **options: Any) -> ProcessMemoryStore:
        return ProcessMemoryStore(**options)


class TestBoundedProcessMemoryStore(LayerProtocolConformance):
    def make_store(self, **options: Any) -> ProcessMemoryStore:
        return ProcessMemoryStore(max_items=1000, **options)


class TestThreadLocalStore(LayerProtocolConformance):
    def make_store(self, **options: Any) -> ThreadLocalStore:
        return ThreadLocalStore(**options)


@pytest.mark.slow
def test_max_items_bounds_the_store_after_a_million_puts() -> None:
    store = ProcessMemoryStore(max_items=10_000)
    for start in range(0, 1_000_000, 1_000):
        store.batch_put([_Key(key=i) for i in range(start, start + 1_000)])
        assert len(store.dictionary) <= 10_000
    assert len(store.dictionary) == 10_000
    assert store.get(_Key, 999_999) == _Key(key=999_999)
    assert store.get(_Key, 0) is None


def test_lru_evicts_the_least_recently_used() -> None:
    store = ProcessMemoryStore(max_items=3)
    store.batch_put([_Key(key=1), _Key(key=2), _Key(key=3)])
    assert store.get(_Key, 1) is not None  # 1 becomes the most recently used
    store.put(_Key(key=4))
    assert store.batch_get(_Key, [1, 2, 3, 4]) == [_Key(key=1), None, _Key(key=3), _Key(key=4)]


@pytest.mark.parametrize("bad", [0, -1, 2.5, "10", True])
def test_max_items_must_be_a_positive_int(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="max_items"):
        ProcessMemoryStore(max_items=bad)  # type: ignore[arg-type]


@pytest.mark.slow
def test_concurrent_mixed_operations_stay_correct() -> None:
    # Eight threads put, get and delete overlapping objects.  Every object's payload names
    # its own key, so a torn or crossed entry would show up as a mismatch.
    store = ProcessMemoryStore(max_items=500)
    errors: list[str] = []
    barrier = threading.Barrier(8)

    def work(seed: int) -> None:
        rng = random.Random(seed)
        barrier.wait()
        for _ in range(20_000):
            key = rng.randrange(800)
            action = rng.random()
            if action < 0.4:
                store.put(Foo(key=key, zap=key, bar=-key, payload=[key] * 3))
            elif action < 0.9:
                got = store.get(Foo, {"zap": key, "bar": -key} if action < 0.6 else key)
                if got is not None and (got.key != key or got.payload != [key] * 3):
                    errors.append(f"asked {key}, got {got!r}")
            else:
                store.delete(Foo(key=key, zap=key, bar=-key))
        assert len(store.dictionary) <= 500

    finish_all([started(work, seed) for seed in range(8)])
    assert errors == []
    assert len(store.dictionary) <= 500


def test_thread_local_store_is_private_to_each_thread() -> None:
    store = ThreadLocalStore()
    store.put(_Key(key=1))
    seen: list[object] = []
    started(lambda: seen.append(store.get(_Key, 1))).finish()
    assert seen == [None]
    assert store.get(_Key, 1) == _Key(key=1)
    store.clear()
    assert store.get(_Key, 1) is None


@pytest.mark.slow
def test_an_unbounded_store_warns_once_when_it_grows_large(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = ProcessMemoryStore()
    limit = ProcessMemoryStore.unbounded_warning
    with caplog.at_level(logging.WARNING, logger="sa_stockpyle"):
        for start in range(0, limit - 1, 10_000):
            store.batch_put([_Key(key=i) for i in range(start, min(start + 10_000, limit - 1))])
        assert len(store.dictionary) == limit - 1
        assert caplog.records == []
        store.put(_Key(key=limit))  # the limit-th cache key
        store.batch_put([_Key(key=-i) for i in range(1, 1_000)])
    [record] = caplog.records
    assert f"holds {limit} cache keys and has no max_items" in record.getMessage()


def test_a_bounded_store_never_warns_of_its_size(caplog: pytest.LogCaptureFixture) -> None:
    store = ProcessMemoryStore(max_items=100)
    store.unbounded_warning = 10
    with caplog.at_level(logging.WARNING, logger="sa_stockpyle"):
        store.batch_put([_Key(key=i) for i in range(100)])
    assert len(store.dictionary) == 100
    assert caplog.records == []


def _request(store: ThreadLocalStore, number: int, scoped: bool) -> tuple[int, object]:
    """One "request" on a pool worker: what it finds cached, then it caches its own."""
    scope: AbstractContextManager[None] = store.scope() if scoped else nullcontext()
    with scope:
        found = store.get(Foo, 1)
        store.put(Foo(key=1, zap=1, bar=1, request=number))
    return threading.get_ident(), found


def test_a_pool_worker_carries_entries_into_the_next_request_unless_scoped() -> None:
    store = ThreadLocalStore()
    store.put(Foo(key=1, zap=1, bar=1, request="main"))  # the main thread's own entry
    with ThreadPoolExecutor(max_workers=1) as pool:  # one worker serves every request
        served = [
            pool.submit(_request, store, number, scoped).result()
            for number, scoped in [(1, False), (2, False), (3, True), (4, True)]
        ]
    assert len({worker for worker, _found in served}) == 1
    found = [found for _worker, found in served]
    # Unscoped, request 2 sees request 1's entry; a scope starts and ends empty, so
    # request 3 does not see request 2's (left outside any scope), nor 4 see 3's.
    assert found == [None, Foo(key=1, zap=1, bar=1, request=1), None, None]
    # Only the worker's entries were dropped, and no namespace changed (clear() would).
    assert store.get(Foo, 1) == Foo(key=1, zap=1, bar=1, request="main")


def test_forget_drops_only_the_calling_threads_entries() -> None:
    store = ThreadLocalStore()
    store.put(Foo(key=1, zap=1, bar=1))
    seen: list[object] = []

    def other() -> None:
        store.put(Foo(key=2, zap=2, bar=2))
        store.forget()
        seen.extend([store.get(Foo, 2), store.get(Foo, {"zap": 2, "bar": 2})])

    started(other).finish()
    assert seen == [None, None]
    assert store.get(Foo, {"zap": 1, "bar": 1}) == Foo(key=1, zap=1, bar=1)


class _Key:
    __stockpyle_keys__ = ["key"]

    def __init__(self, key: int) -> None:
        self.key = key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Key) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)


def test_invalidate_class_frees_the_old_generation() -> None:
    store = ProcessMemoryStore()
    store.batch_put([Foo(key=i, zap=i, bar=i) for i in range(10)] + [_Key(key=1)])
    store.invalidate_class(Foo)
    assert len(store.dictionary) == 1
    assert store.get(_Key, 1) == _Key(key=1)
    assert store.get(Foo, 3) is None


def test_generations_survive_the_lru_bound() -> None:
    store = ProcessMemoryStore(max_items=3)
    for key in range(100):
        store.put(_Key(key=key))
    assert store.get(_Key, 99) == _Key(key=99)


def test_a_store_fills_only_reservations_it_made() -> None:
    store = ProcessMemoryStore()
    foreign = Reservation(Foo, [1], [True], [False], detail=None)
    with pytest.raises(TypeError, match="cannot fill a reservation it did not make"):
        store.fill(foreign, [Foo(key=1, zap=1, bar=1)])
    assert store.get(Foo, 1) is None


@pytest.mark.parametrize(("age", "added"), [(0.4, True), (0.6, False)])
def test_a_fill_adds_keys_it_holds_no_lease_on_within_half_the_tombstone_ttl(
    age: float, added: bool
) -> None:
    # Found by its alternate key: the primary entry is added where nothing is, but only
    # while a removal of it would still have left its tombstone there.
    store = ProcessMemoryStore()
    foo = Foo(key=1, zap=1, bar=1)
    claim = store.reserve(Foo, [{"zap": 1, "bar": 1}])
    claim = dataclasses.replace(claim, started=claim.started - age * store.tombstone_ttl)
    store.fill(claim, [foo])
    expected = foo if added else None  # else the pointer it filled leads to nothing
    assert store.batch_get(Foo, [1, {"zap": 1, "bar": 1}]) == [expected, expected]


def test_a_tombstone_and_a_lease_end_at_their_exact_bound() -> None:
    clock = FakeClock()
    store = ProcessMemoryStore(clock=clock)
    foo = Foo(key=1, zap=1, bar=1)
    store.write_committed([], [(Foo, {"key": 1})])  # a removal: its tombstone blocks adds
    clock.advance(store.tombstone_ttl - 1)
    store.write_committed([foo], [])
    assert store.get(Foo, 1) is None
    clock.advance(1)  # tombstone_ttl after the removal: gone
    store.write_committed([foo], [])
    assert store.get(Foo, 1) == foo
    # Another reader's lease is busy (worth waiting for) for less than lease_busy.
    store.reserve(Foo, [2])
    clock.advance(store.lease_busy - 0.5)
    assert store.reserve(Foo, [2]).busy == [True]
    clock.advance(0.5)
    assert store.reserve(Foo, [2]).busy == [False]


def test_a_write_that_has_expired_already_stores_no_record() -> None:
    """Only tombstones, however it arrives: a dead entry would take a live one's place in a
    bounded store (an entry expiring at this very instant is dead)."""
    clock = FakeClock()
    now = dt.datetime.fromtimestamp(clock.now, tz=dt.timezone.utc)
    store = ProcessMemoryStore(clock=clock, lifetime_cb=lambda obj: now)
    # A fill by primary key (its pointer is set), one by alternate key (its entry is
    # added), a commit (added) and a versioned one (a newer version's write).
    store.fill(store.reserve(Foo, [1]), [Foo(key=1, zap=1, bar=1)])
    store.fill(store.reserve(Foo, [{"zap": 2, "bar": 2}]), [Foo(key=2, zap=2, bar=2)])
    store.write_committed([Foo(key=3, zap=3, bar=3), Versioned(id=1, name="v1", version=1)], [])
    held = list(store.dictionary.values())
    assert held
    assert all(type(raw) is Marker and raw.lease is None for raw in held)


def test_an_object_with_expired_attributes_is_refused_before_its_keys_are_read() -> None:
    engine = create_engine("sqlite://")
    Versioned.metadata.create_all(engine)
    statements = Statements(engine)
    store = ProcessMemoryStore()
    with Session(engine) as session:
        obj = Versioned(id=1, name="v1")
        session.add(obj)
        session.commit()  # expire_on_commit: every attribute is expired
        # Reading its key would refresh it with SQL: a put must not query the database.
        with statements.exactly(0), pytest.raises(PayloadError, match="expired column"):
            store.put(obj)
    assert store.get(Versioned, 1) is None


def test_a_lease_taken_over_a_tombstone_never_shortens_it() -> None:
    # A reader that misses after a removal, and never fills (it crashed): once its lease
    # is over, the tombstone must still keep out a late write of the state before it.
    clock = FakeClock()
    store = ProcessMemoryStore(clock=clock)
    store.write_committed([], [(Foo, {"key": 1})])
    assert store.reserve(Foo, [1]).granted == [True]
    clock.advance(store.lease_ttl + 1)
    store.write_committed([Foo(key=1, zap=1, bar=1, version="before")], [])
    assert store.get(Foo, 1) is None


class _Racing(BaseDictionaryStore):
    """A store over a shared dictionary whose first read is followed, before anything
    else, by ``meanwhile`` (another process's write)."""

    def __init__(self, shared: dict[str, Any], meanwhile: Any) -> None:
        super().__init__(shared)
        self.meanwhile = meanwhile

    def read(self, keys: Sequence[str]) -> list[Any]:
        found = super().read(keys)
        meanwhile, self.meanwhile = self.meanwhile, None
        if meanwhile is not None:
            meanwhile()
        return found


def test_a_generation_token_another_store_adds_first_is_the_one_both_use() -> None:
    # Both find no token for the class; the other adds its own between this store's
    # read and its add: this store's add fails, and it adopts the other's token.
    shared: dict[str, Any] = {}
    first = BaseDictionaryStore(shared)
    foo = Foo(key=1, zap=1, bar=1)
    late = _Racing(shared, lambda: first.put(foo))
    assert late.get(Foo, 1) is None  # read before the other's put, which came meanwhile
    assert late.get(Foo, 1) == foo
    late.put(Foo(key=2, zap=2, bar=2))
    assert first.get(Foo, 2) == Foo(key=2, zap=2, bar=2)


@pytest.mark.parametrize("marker", ["tombstone", "lease"])
def test_expired_markers_are_dropped_from_memory(marker: str) -> None:
    clock = FakeClock()
    store = ProcessMemoryStore(clock=clock)
    if marker == "tombstone":
        store.write_committed([], [(Foo, {"key": key}) for key in range(5)])
    else:  # readers that never fill (they crashed)
        store.reserve(Foo, list(range(5)))
    markers = [key for key, held in store.dictionary.items() if isinstance(held, Marker)]
    assert len(markers) == 5
    clock.advance(max(store.tombstone_ttl, store.lease_ttl))
    store.delete(Foo(key=9, zap=9, bar=9))  # any conditional write sweeps first
    left = [key for key, held in store.dictionary.items() if isinstance(held, Marker)]
    assert set(left).isdisjoint(markers)
