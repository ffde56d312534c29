"""The key-value store every caching store builds on (:class:`BaseKeyValueStore`): the
layer protocol's primitives a backend implements, and the six operations and commit
writes built on them, with three collaborators, each in its own module: the record layout
(:mod:`~sa_stockpyle.stores.records`), namespace generations
(:mod:`~sa_stockpyle.stores.generations`) and leases (:mod:`~sa_stockpyle.stores.leases`),
all writing through conditional operations (:mod:`~sa_stockpyle.stores.ops`)."""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from sa_stockpyle.cache_keys import KeyMaker
from sa_stockpyle.codec import (
    Entry,
    LifetimeCallback,
    Marker,
    Pointer,
    Record,
    now,
)
from sa_stockpyle.errors import PayloadError
from sa_stockpyle.keys import KeySpec, key_spec, storage_classes
from sa_stockpyle.snapshots import restore
from sa_stockpyle.stores.base import (
    BaseStore,
    Clock,
    Finish,
    Removal,
    Reservation,
    Start,
    finish_write,
)
from sa_stockpyle.stores.generations import Generations
from sa_stockpyle.stores.leases import Leases
from sa_stockpyle.stores.ops import Op, OpKind, unexpired
from sa_stockpyle.stores.records import RecordLayout

__all__ = ["BaseKeyValueStore"]

log = logging.getLogger("sa_stockpyle")

T = TypeVar("T")


class BaseKeyValueStore(BaseStore):
    """A caching store over string keys: records, pointers, expiry and polymorphism.

    Subclasses provide the backend through three primitives, each one round trip for a
    whole batch: :meth:`read`, :meth:`write` (unconditional) and :meth:`apply`
    (conditional, atomic per key), and the payload pair :meth:`encode` /
    :meth:`decode` (identity for in-process stores, bytes for shared ones).

    Race safety (the memcache "leases" idea):

    * Every removal leaves a *tombstone* for :attr:`tombstone_ttl` seconds instead of
      deleting the key.
    * A reader that misses takes a *lease* on each key it missed (:meth:`reserve`) before
      it reads the database, and fills a key only while it still holds its lease there
      (:meth:`fill`); a removal or a newer write replaces the lease and so voids the fill.
      Keys it could not lease (the primary key of an object found by an alternate key) are
      only *added* where they hold nothing, not even a tombstone, and only within
      ``tombstone_ttl / 2`` of the reservation.  Pointers are written as they are: a
      lookup through one checks that the entry it leads to still lists it.
    * Commits (:meth:`write_committed`) leave tombstones for what they removed, add new
      objects where nothing is held, and write an object whose class has an integer
      ``version_id_col`` only over an entry of a lower version.

    Parameters:
        polymorphic: also store each object under every base class that declares
            ``__stockpyle_keys__``.
        lifetime_cb: ``lifetime_cb(obj)`` returns int seconds, a timedelta, an absolute
            datetime or None (no expiry).
        prefix: the first part of every cache key.
        clock: returns the current Unix time; injected by tests.
    """

    #: Seconds a tombstone stays: longer than a reader may take between its miss and its
    #: fill, and than a commit's write may take to arrive.
    tombstone_ttl = 30.0
    #: Seconds a lease stays when its reader never fills (it crashed or found nothing).
    lease_ttl = 5.0
    #: A lease younger than this many seconds means its reader is filling right now.
    lease_busy = 1.0
    #: Whether an object found by an alternate key may replace a tombstone at its primary
    #: key that is older than the reader's lease.  That needs one clock for both markers:
    #: the process's, or one Redis server's; not memcached's or a Redis Cluster's.
    compares_tombstone_times = True
    #: Whether generation tokens live in the backend, shared with other processes.  An
    #: in-process store keeps them in its key maker only: nothing else can bump them, and
    #: an LRU bound must never evict them.
    shared_generations = True

    def __init__(
        self,
        polymorphic: bool = False,
        lifetime_cb: LifetimeCallback | None = None,
        prefix: str = "stockpyle",
        clock: Clock = now,
    ) -> None:
        super().__init__()
        self.polymorphic = polymorphic
        self.lifetime_cb = lifetime_cb
        self.keymaker = KeyMaker(prefix)
        self.clock = clock
        #: The namespace generations of the classes this store holds.
        self.generations = Generations(self)
        #: What this store writes under which keys.
        self.layout = RecordLayout(self)
        #: The leases readers of this store take when they miss.
        self.leases = Leases(self)

    # -- backend primitives -----------------------------------------------------------

    @abstractmethod
    def read(self, keys: Sequence[str]) -> list[Any]:
        """Return the raw value of each key, None where absent."""

    @abstractmethod
    def write(self, items: Sequence[tuple[str, Any, float | None]]) -> None:
        """Store ``(key, raw value, expires_at)`` triples, whatever the keys hold."""

    @abstractmethod
    def apply(self, ops: Sequence[Op]) -> list[Any]:
        """Carry out conditional writes (see :class:`Op`), each atomic on its key.

        Returns, per op, whether it wrote; for a lease, the backend time it was taken at
        (a float) or, when not taken, the raw value the key holds instead and the backend
        time (a tuple).  Expired
        markers count as nothing held.  Tombstones and leases are stamped with the
        backend's own clock, so that "written before" compares times of one clock.
        """

    def start_apply_then_read(
        self, ops: Sequence[Op], keys: Sequence[str]
    ) -> Callable[[], tuple[list[Any], list[Any]]]:
        """:meth:`apply` ``ops``, then :meth:`read` ``keys`` (their raw values as they
        are after the writes); the call returned gives both results.  A backend that can
        do both in one round trip, and read its reply later, overrides it; this default
        does both at once."""
        done = (self.apply(ops) if ops else []), self.read(keys)
        return lambda: done

    def prepare_apply_then_read(
        self, ops: Sequence[Op], keys: Sequence[str]
    ) -> Callable[[], Callable[[], tuple[list[Any], list[Any]]]]:
        """:meth:`start_apply_then_read` in two steps: what can be built before anything
        is sent is built now, and the call returned starts it.  A backend that builds a
        request of any size overrides it; this default builds nothing ahead."""
        return lambda: self.start_apply_then_read(ops, keys)

    #: Whether :meth:`decode` builds a new record each time (bytes decoded), rather than
    #: returning the one the backend keeps (in-process stores): then an object restored
    #: from it may take its state over instead of copying it.
    decodes_copies = False

    def encode(self, record: Record) -> Any:
        """Turn a record into the raw value the backend holds."""
        return record

    def decode(self, raw: Any, klass: type) -> Record:
        """Turn a raw value back into a record; raise PayloadError when it is not one."""
        if not isinstance(raw, (Entry, Pointer)):
            raise PayloadError(f"stored value is not a record: {type(raw).__qualname__}")
        return raw

    def encode_marker(self, marker: Marker) -> Any:
        """Turn a tombstone or lease into the raw value the backend holds."""
        return marker

    def marker_of(self, raw: Any) -> Marker | None:
        """The tombstone or lease ``raw`` is, or None when it is something else."""
        return raw if type(raw) is Marker else None

    def version_held(self, raw: Any) -> int | None:
        """The version of the entry ``raw`` (None: no version, or not an entry)."""
        return raw.version if type(raw) is Entry else None

    def _tombstone(self) -> tuple[Any, float]:
        """A new tombstone's raw value and expiry, stamped with this process's clock."""
        clock_now = self.clock()
        expires_at = clock_now + self.tombstone_ttl
        return self.encode_marker(Marker(None, clock_now, expires_at)), expires_at

    def _remove(self, keys: Sequence[str]) -> None:
        """Leave a tombstone at each key: a removal never makes room for a stale fill."""
        if keys:
            self.apply_unexpired([Op(OpKind.TOMBSTONE, key, None, None) for key in keys])

    def apply_unexpired(self, ops: Sequence[Op]) -> list[Any]:
        """:meth:`apply`, after turning writes that have expired already into removals
        (see :func:`~sa_stockpyle.stores.ops.unexpired`); what the store's own decisions
        call, not for overriding."""
        ready = unexpired(ops, self.clock())
        return self.apply(ready) if ready else []

    # -- the contract -----------------------------------------------------------------

    def invalidate_class(self, klass: type) -> None:
        """Make every entry of ``klass`` unreachable, in every process: new generation
        tokens.  Those of a mapped class are its tables': every class mapped to one of
        them, whatever its schema fingerprint, loses its entries too."""
        self.generations.invalidate(klass)

    def write_committed(self, puts: Sequence[object], removals: Sequence[Removal]) -> None:
        """Reflect a database commit in one conditional batch: tombstones for
        ``removals``; ``puts`` added where nothing is held, or, for a class with an integer
        ``version_id_col``, written over an entry of a lower version."""
        finish_write(self.start_committed(puts, removals))

    def start_committed(
        self, puts: Sequence[object], removals: Sequence[Removal]
    ) -> Finish | None:
        """Begin :meth:`write_committed` (see :meth:`BaseStore.start_committed`): the
        batch is sent, and its reply read by the call returned, where the backend allows."""
        return self._committed(puts, removals)()

    def prepare_committed(self, puts: Sequence[object], removals: Sequence[Removal]) -> Start:
        """Build :meth:`write_committed`'s batch now (keys, records and payloads); the
        call returned sends it (see :meth:`BaseStore.prepare_committed`).  A subclass
        whose ``start_committed`` is its own gets it called whole, by the call returned."""
        if type(self).start_committed is not BaseKeyValueStore.start_committed:
            return super().prepare_committed(puts, removals)
        return self._committed(puts, removals)

    def _committed(self, puts: Sequence[object], removals: Sequence[Removal]) -> Start:
        """The write of a commit, built now, and the call that sends it."""
        classes = self._classes_of(puts)
        for klass in {klass for klass, _ in removals}:
            classes.update(storage_classes(klass, self.polymorphic))

        def write() -> list[Op]:
            # The kinds read once: an enum member costs an attribute lookup per row.
            tomb, pointer, add, newer = OpKind.TOMBSTONE, OpKind.SET, OpKind.ADD, OpKind.NEWER
            ops = [Op(tomb, key, None, None) for key in self.layout.removal_keys(removals)]
            for key, record, payload in self.layout.encoded(self.layout.records(puts), ops):
                # A pointer is written as it is: it answers only while its entry lists it.
                version = record.version if type(record) is Entry else None
                kind = pointer if type(record) is Pointer else add if version is None else newer
                ops.append(Op(kind, key, payload, record.expires_at, version))
            return ops

        return self.generations.prepare_current(classes, write)

    def reserve(self, klass: type, keys: Sequence[object]) -> Reservation:
        """Take a lease on the cache key of each lookup in ``keys`` (see the class doc)."""
        return self.leases.reserve(klass, keys)

    def fill(self, reservation: Reservation, objs: Sequence[object | None]) -> None:
        """Fill what a slower layer found for ``reservation`` (see the class doc); leases
        left unused become tombstones again."""
        self.leases.fill(reservation, objs)

    def put(self, obj: object) -> None:
        """Store ``obj`` under every declared key (see the module contract)."""
        self.batch_put((obj,))

    def batch_put(self, objs: Iterable[object]) -> None:
        """Store every object of ``objs`` in one backend write."""
        # Written under the generations known now: if one moved meanwhile, the object is
        # only missing from the new one, which is never stale.
        keys, records = self.layout.records(objs)
        if records:
            encode = self.encode
            self.write(
                [
                    (key, encode(record), record.expires_at)
                    for key, record in zip(keys, records, strict=True)
                ]
            )

    def delete(self, obj: object) -> None:
        """Remove ``obj`` from under every key it is stored at."""
        self.batch_delete((obj,))

    def batch_delete(self, objs: Iterable[object]) -> None:
        """Remove every object of ``objs`` in one backend call."""
        objs = list(objs)

        def write() -> list[Op]:
            return [
                Op(OpKind.TOMBSTONE, key, None, None)
                for obj, makers in self.layout.key_makers(objs)
                for keys_of in makers
                for key in keys_of(obj)
            ]

        finish_write(self.generations.write_current(self._classes_of(objs), write))

    def _classes_of(self, objs: Sequence[object]) -> set[type]:
        """Every class ``objs`` are stored under."""
        return {
            c
            for klass in {type(o) for o in objs}
            for c in storage_classes(klass, self.polymorphic)
        }

    def get(self, klass: type[T], key: object) -> T | None:
        """Return the ``klass`` object with ``key``, or None."""
        return self._resolve(klass, key_spec(klass), (key,))[0]

    def batch_get(self, klass: type[T], keys: Iterable[object]) -> list[T | None]:
        """Return one object or None per key, in order; one read, two with alternate keys."""
        return self._resolve(klass, key_spec(klass), list(keys))

    def _resolve(self, klass: type[T], spec: KeySpec, lookups: Sequence[object]) -> list[T | None]:
        """Fetch the records of ``lookups`` (as callers write them) and rebuild objects."""
        if not self.shared_generations and klass not in self.keymaker.generations:
            self.generations.learn_classes((klass,))
        known = self.keymaker.generations.get(klass)
        wanted = self.keymaker.keys(spec, lookups)
        if not any(wanted):
            return [None] * len(wanted)
        asked = [key for key in dict.fromkeys(wanted) if key is not None]
        raws: list[Any] | None
        if not self.shared_generations:
            raws = self.read(asked)
        else:
            raws = self.generations.read_with(klass, known, asked)
            if raws is None:
                return [None] * len(wanted)  # a brand-new namespace holds nothing
            if self.keymaker.generations.get(klass) != known:
                wanted = self.keymaker.keys(spec, lookups)
                asked = [key for key in dict.fromkeys(wanted) if key is not None]
                raws = self.read(asked)
        found = self._decoded(spec, known, asked, raws)
        # Alternate keys hold pointers: fetch the entries they lead to, in one more read.
        pointers = {key: rec.primary for key, rec in found.items() if type(rec) is Pointer}
        if pointers:
            targets = [p for p in dict.fromkeys(pointers.values()) if p not in found]
            if targets:
                found.update(self._decoded(spec, known, targets, self.read(targets)))
            if self.decodes_copies:
                self._check_alternates(spec, known, found, set(pointers.values()))
            dangling = [
                key for key, primary in pointers.items() if not _answering(found, primary, key)
            ]
            if dangling:
                # Left behind when the alternate key moved: it answers nothing, reclaim it.
                self._remove(dangling)
        results: list[T | None] = []
        # A record decoded for this call is this call's: the first object restored from
        # it takes its state over; another key answered by the same entry gets a copy.
        # Without pointers and repeated keys (the usual batch), each entry answers once.
        copies = self.decodes_copies
        once = copies and not pointers and len(asked) == len(wanted)
        given: set[int] = set()
        for key in wanted:
            entry = None if key is None else _answering(found, pointers.get(key, key), key)
            if entry is None or not (entry.klass is klass or issubclass(entry.klass, klass)):
                results.append(None)
                continue
            owned = once or (copies and id(entry) not in given)
            if owned and not once:
                given.add(id(entry))
            results.append(restore(entry.klass, entry.state, owned))
        return results

    def _decoded(
        self, spec: KeySpec, known: str | None, keys: list[str], raws: list[Any]
    ) -> dict[str, Record]:
        """Decode the raw values read at ``keys`` for a lookup of ``spec.klass`` under its
        generation ``known``; expired and corrupt records are removed, not returned.

        Records another process wrote (a store that :attr:`decodes_copies`) must also be
        what they claim: an entry whose key values do not give the key it was found at
        is corrupt (see :meth:`KeyMaker.agrees`).
        """
        klass = spec.klass
        found: dict[str, Record] = {}
        dead: list[str] = []
        clock_now = self.clock()
        decode = self.decode
        # Records another process may have written must belong where they were read: an
        # entry's key values give its key, a pointer leads to a primary key of the class
        # (what else an entry claims is checked when a pointer leads to it, see
        # _check_alternates).
        shared = self.decodes_copies
        gives = self.keymaker.primary_check(spec) if shared else None
        for key, raw in zip(keys, raws, strict=True):
            if raw is None:
                continue
            try:
                record = decode(raw, klass)
                if gives is not None and not (
                    gives(key, record.keys, record.state)
                    if type(record) is Entry
                    else self.keymaker.is_primary(spec, record.primary)  # type: ignore[union-attr]
                ):
                    if self.keymaker.generations.get(klass) != known:
                        continue  # keys of a generation that moved on meanwhile: a miss
                    raise PayloadError(f"record does not belong at the key {key!r}")
            except PayloadError as exc:
                if self.marker_of(raw) is not None:
                    continue  # a tombstone or a lease: a miss
                self._count_corrupt(klass, key, exc)
                dead.append(key)
                continue
            expires_at = record.expires_at
            if expires_at is not None and clock_now >= expires_at:
                # Removing can only ever cost a later miss, never serve a stale value.
                dead.append(key)
            else:
                found[key] = record
        if dead:
            self._remove(dead)
        return found

    def _check_alternates(
        self, spec: KeySpec, known: str | None, found: dict[str, Record], targets: set[str]
    ) -> None:
        """Drop from ``found`` each entry pointers lead to (``targets``) that lists a key
        its state does not give: it is corrupt, and replaced by a tombstone."""
        klass, agrees = spec.klass, self.keymaker.agrees
        corrupt = [
            key
            for key in targets
            if isinstance(entry := found.get(key), Entry)
            and not agrees(spec, key, entry.keys, entry.state)
        ]
        for key in corrupt:
            del found[key]
        if not corrupt or self.keymaker.generations.get(klass) != known:
            return  # none, or keys of a generation that moved on meanwhile: misses only
        for key in corrupt:
            self._count_corrupt(klass, key, "it lists keys its state does not give")
        self._remove(corrupt)

    def _count_corrupt(self, klass: type, key: str, reason: object) -> None:
        """Log and count the corrupt record at ``key`` (the caller removes it)."""
        log.warning("sa_stockpyle: %s: deleting corrupt entry %r: %s", self, key, reason)
        self.stats.add(klass, "corrupt")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} prefix={self.keymaker.prefix!r}>"


def _answering(found: dict[str, Record], primary: str, key: str) -> Entry | None:
    """The entry at ``primary`` if it still answers to ``key``."""
    entry = found.get(primary)
    return entry if type(entry) is Entry and key in entry.keys else None
