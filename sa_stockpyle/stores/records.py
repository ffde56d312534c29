"""Record layout (:class:`RecordLayout`): what a key-value store writes under which keys.

An object is stored, per class it is stored under, as an :class:`~sa_stockpyle.codec.Entry`
at its primary key and a :class:`~sa_stockpyle.codec.Pointer` at each alternate key; a
lookup through a pointer checks that the entry it leads to still lists it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from sa_stockpyle.codec import Entry, Pointer, Record, expiry
from sa_stockpyle.errors import PayloadError
from sa_stockpyle.keys import is_null, key_spec, storage_classes
from sa_stockpyle.snapshots import refuse_expired, snapshot, version_of
from sa_stockpyle.stores.base import Removal
from sa_stockpyle.stores.ops import Op, OpKind

if TYPE_CHECKING:
    from sa_stockpyle.stores.keyvalue import BaseKeyValueStore

__all__ = ["RecordLayout"]

#: The cache keys of an object as one class it is stored under, primary key first.
_KeysOf = Callable[[object], tuple[str, ...]]

log = logging.getLogger("sa_stockpyle")


class RecordLayout:
    """The records of one key-value store's objects, and their payloads."""

    def __init__(self, store: BaseKeyValueStore) -> None:
        self.store = store
        #: Classes whose objects the store refused to carry, warned of once: a hot row
        #: read again and again would otherwise log at every read.
        self.refused_classes: set[type] = set()

    def key_makers(self, objs: Iterable[object]) -> Iterator[tuple[object, list[_KeysOf]]]:
        """Each object with, per class it is stored under (its own first), the function
        giving its cache keys as that class (:meth:`KeyMaker.keys_maker`), looked up once
        per class."""
        polymorphic, keymaker = self.store.polymorphic, self.store.keymaker
        makers: dict[type, list[_KeysOf]] = {}
        for obj in objs:
            klass = type(obj)
            stored = makers.get(klass)
            if stored is None:
                stored = makers[klass] = [
                    keymaker.keys_maker(key_spec(c)) for c in storage_classes(klass, polymorphic)
                ]
            yield obj, stored

    def encoded(
        self, records: tuple[list[str], list[Record]], removed: list[Op]
    ) -> Iterator[tuple[str, Record, Any]]:
        """``records`` (see :meth:`records`) with their keys and payloads, but for objects
        with a value this store cannot carry: those are logged, and their keys tombstoned
        into ``removed`` (a commit's other objects are still written, and the refused one
        is not served stale)."""
        store = self.store
        encode = store.encode
        refused: set[str] = set()
        for key, record in zip(*records, strict=True):
            if isinstance(record, Pointer):
                if record.primary not in refused:
                    yield key, record, encode(record)
                continue
            try:
                payload = encode(record)
            except PayloadError as exc:
                level = logging.DEBUG if record.klass in self.refused_classes else logging.WARNING
                self.refused_classes.add(record.klass)
                log.log(
                    level,
                    "sa_stockpyle: %r cannot carry a %s, and removes it instead: %s",
                    store,
                    record.klass.__qualname__,
                    exc,
                )
                refused.add(key)
                removed.extend(Op(OpKind.TOMBSTONE, k, None, None) for k in record.keys)
                continue
            yield key, record, payload

    def records(self, objs: Iterable[object]) -> tuple[list[str], list[Record]]:
        """The records of ``objs`` and the key of each: per storage class, an entry at the
        primary key and a pointer at each alternate key.  Everything that can fail on bad
        input fails here, before any write.

        Two lists, not a list of pairs: a batch's records stay alive until it is written,
        and thousands of pairs would set off collections (records themselves are not
        tracked by the garbage collector)."""
        store = self.store
        objs = list(objs)
        store.generations.learn(objs)
        keys_at: list[str] = []
        records: list[Record] = []
        clock_now = store.clock()
        lifetime_cb = store.lifetime_cb
        for obj, makers in self.key_makers(objs):
            expires_at = expiry(lifetime_cb(obj), clock_now) if lifetime_cb else None
            # The keys before the snapshot: reading a key attribute that was never loaded
            # (deferred) loads it, and an entry must hold its key values (a reader checks
            # them against its keys).  An expired object is refused first, not refreshed.
            refuse_expired(obj)
            keyed = [keys_of(obj) for keys_of in makers]
            # Checked again: reading a key attribute that was not loaded may have flushed
            # (autoflush) and expired columns; refused, not refreshed.
            state, version = snapshot(obj), version_of(obj)
            for keys in keyed:
                keys_at.append(keys[0])
                records.append(Entry(type(obj), state, keys, expires_at, version))
                for key in keys[1:]:
                    keys_at.append(key)
                    records.append(Pointer(keys[0], expires_at))
        return keys_at, records

    def removal_keys(self, removals: Sequence[Removal]) -> list[str]:
        """The cache keys of ``(class, lookup)`` removals, in every storage class (whose
        generations the caller has learned)."""
        store = self.store
        by_class: dict[type, list[dict[str, Any]]] = {}
        for klass, lookup in removals:
            by_class.setdefault(klass, []).append(lookup)
        keys: list[str] = []
        for klass, lookups in by_class.items():
            spec = key_spec(klass)
            storages = storage_classes(klass, store.polymorphic)
            if storages == (klass,):
                # The usual case, a commit's batch of one class: keys built in one pass.
                keys += [key for key in store.keymaker.keys(spec, lookups) if key is not None]
                continue
            for lookup in lookups:
                index, values = spec.lookup(lookup)
                if is_null(values):
                    continue
                attrs = frozenset(spec.items[index])
                for storage in storages:
                    storage_spec = key_spec(storage)
                    storage_index = storage_spec.index_of(attrs)
                    if storage_index is not None:
                        keys.append(store.keymaker.key(storage_spec, storage_index, values))
        return keys
