"""Stores written outside the package, against its public names only, as a third party
would write them: one on :class:`BaseStore` alone passes the base suite; one that
implements the layer protocol's primitives on :class:`BaseKeyValueStore` passes both."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import pytest

from sa_stockpyle.cache_keys import KeyMaker
from sa_stockpyle.codec import LifetimeCallback, Marker, expiry
from sa_stockpyle.keys import key_spec, storage_classes
from sa_stockpyle.stores import BaseKeyValueStore, BaseStore, ChainedStore, Op, OpKind
from sa_stockpyle.testing import Foo, LayerProtocolConformance, StoreConformance

T = TypeVar("T")


class PlainStore(BaseStore):
    """Deep copies in a dict, each under every key of its object: the six operations and
    nothing of the layer protocol."""

    def __init__(
        self,
        polymorphic: bool = False,
        lifetime_cb: LifetimeCallback | None = None,
        clock: Any = time.time,
    ) -> None:
        super().__init__()
        self.polymorphic, self.lifetime_cb, self.clock = polymorphic, lifetime_cb, clock
        self.keymaker = KeyMaker("plain")
        # key: (the object, all of its keys, when it expires)
        self.entries: dict[str, tuple[object, tuple[str, ...], float | None]] = {}

    def _keyed(self, obj: object) -> list[tuple[str, ...]]:
        keys_of = self.keymaker.keys_of
        return [
            keys_of(key_spec(klass), obj) for klass in storage_classes(type(obj), self.polymorphic)
        ]

    def put(self, obj: object) -> None:
        self.batch_put([obj])

    def batch_put(self, objs: Iterable[object]) -> None:
        ready = []
        for obj in objs:  # every check before any write
            lifetime = self.lifetime_cb
            expires_at = None if lifetime is None else expiry(lifetime(obj), self.clock())
            ready += [(keys, copy.deepcopy(obj), expires_at) for keys in self._keyed(obj)]
        for keys, stored, expires_at in ready:
            self._remove(keys[0])  # the object's former alternate keys go with it
            entry = (stored, keys, expires_at)
            for key in keys:
                self.entries[key] = entry

    def get(self, klass: type[T], key: object) -> T | None:
        [cache_key] = self.keymaker.keys(key_spec(klass), [key])
        entry = None if cache_key is None else self.entries.get(cache_key)
        if entry is None:
            return None
        obj, keys, expires_at = entry
        if expires_at is not None and self.clock() >= expires_at:
            self._remove(keys[0])
            return None
        return copy.deepcopy(obj) if isinstance(obj, klass) else None

    def delete(self, obj: object) -> None:
        for keys in self._keyed(obj):
            self._remove(keys[0])

    def _remove(self, primary: str) -> None:
        entry = self.entries.get(primary)
        if entry is not None:
            for key in entry[1]:
                if self.entries.get(key) is entry:
                    del self.entries[key]


class LockedDictStore(BaseKeyValueStore):
    """A key-value store over a dict, implementing the protocol's primitives with one
    lock: what a store over a backend with atomic scripts or compare-and-set does."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.held: dict[str, tuple[Any, float | None]] = {}
        self.lock = threading.Lock()

    def read(self, keys: Sequence[str]) -> list[Any]:
        with self.lock:
            return [self._current(key, self.clock()) for key in keys]

    def write(self, items: Sequence[tuple[str, Any, float | None]]) -> None:
        with self.lock:
            for key, raw, expires_at in items:
                self.held[key] = (raw, expires_at)

    def _current(self, key: str, now: float) -> Any:
        raw, expires_at = self.held.get(key, (None, None))
        return None if expires_at is not None and expires_at <= now else raw

    def apply(self, ops: Sequence[Op]) -> list[Any]:
        with self.lock:
            return [self._apply_one(op, self.clock()) for op in ops]

    def _apply_one(self, op: Op, now: float) -> Any:
        kind, key, raw, expires_at, arg = op
        current = self._current(key, now)
        marker = None if current is None else self.marker_of(current)
        tombstone = self.encode_marker(Marker(None, now, now + self.tombstone_ttl))
        done = False
        if kind == OpKind.SET:
            done = True
        elif kind == OpKind.TOMBSTONE:
            raw, expires_at, done = tombstone, now + self.tombstone_ttl, True
        elif kind == OpKind.ADD:
            older = marker is not None and marker.lease is None and arg is not None
            done = current is None or (older and marker is not None and marker.taken < arg)
        elif kind in (OpKind.FILL, OpKind.RELEASE):
            lease = self.marker_of(arg)
            done = marker is not None and lease is not None and marker.lease == lease.lease
            if done and kind == OpKind.RELEASE:
                raw, expires_at = tombstone, now + self.tombstone_ttl
        elif kind == OpKind.NEWER:
            if marker is not None:  # a removal there may be newer: void it, write nothing
                self.held[key] = (tombstone, now + self.tombstone_ttl)
                return False
            held = None if current is None else self.version_held(current)
            done = held is None or held < arg
        elif current is not None and (marker is None or marker.lease is not None):
            return current, now  # a record, or another reader's lease: not taken
        else:
            wanted = self.marker_of(raw)
            assert wanted is not None, "a lease op carries its lease"
            until = max(wanted.expires_at, marker.expires_at if marker else 0.0)
            self.held[key] = (self.encode_marker(Marker(wanted.lease, now, until)), until)
            return now
        if done:
            self.held[key] = (raw, expires_at)
        return done


class TestPlainStore(StoreConformance):
    def make_store(self, **options: Any) -> BaseStore:
        return PlainStore(**options)


class TestLockedDictStore(LayerProtocolConformance):
    def make_store(self, **options: Any) -> BaseStore:
        return LockedDictStore(**options)


class TestChainOfPlainAndLockedDict(StoreConformance):
    def make_store(self, **options: Any) -> BaseStore:
        return ChainedStore([PlainStore(**options), LockedDictStore(**options)])


def test_the_suites_are_split_by_what_a_store_implements() -> None:
    base = {name for name in dir(StoreConformance) if name.startswith("test_")}
    protocol = {name for name in dir(LayerProtocolConformance) if name.startswith("test_")}
    assert base < protocol
    # What the plain store cannot promise is exactly what the protocol suite adds.
    assert "test_write_committed_removes_and_adds" in protocol - base
    assert "test_a_fill_needs_its_lease" in protocol - base
    assert "test_put_get_by_primary_key" in base


def test_a_plain_store_fails_the_protocol_suite() -> None:
    store = PlainStore()
    store.batch_put([Foo(key=2, zap=2, bar=2)])
    claim = store.reserve(Foo, [1])
    store.write_committed([], [(Foo, {"key": 1})])  # a commit lands between miss and fill
    store.fill(claim, [Foo(key=1, zap=1, bar=1)])
    # Without leases the stale fill lands: why a plain store is not race-safe in a chain.
    assert store.get(Foo, 1) == Foo(key=1, zap=1, bar=1)


def test_a_plain_store_removes_what_a_commit_wrote() -> None:
    store = PlainStore()
    old = Foo(key=1, zap=1, bar=1)
    store.put(old)
    store.write_committed([Foo(key=1, zap=1, bar=2)], [(Foo, {"key": 9})])
    # It cannot tell whose commit is newer, so it holds neither state: a miss.
    assert store.get(Foo, 1) is None


@pytest.mark.parametrize("kind", list(OpKind))
def test_every_op_kind_is_one_letter_of_the_scripts(kind: OpKind) -> None:
    assert isinstance(kind, str)
    assert len(kind.value) == 1
    assert kind == kind.value
