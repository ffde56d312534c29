"""The key-value machinery every caching store shares: records under string keys,
pointers for alternate keys, tombstones, leases and namespace generations
(:class:`BaseKeyValueStore`), written through conditional operations (:class:`Op`)."""

from __future__ import annotations

import logging
import secrets
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from sa_stockpyle.cache_keys import KeyMaker
from sa_stockpyle.codec import (
    Entry,
    LifetimeCallback,
    Marker,
    Pointer,
    Record,
    expiry,
    now,
)
from sa_stockpyle.errors import PayloadError
from sa_stockpyle.keys import KeySpec, is_null, key_spec, storage_classes
from sa_stockpyle.snapshots import refuse_expired, restore, snapshot, version_of
from sa_stockpyle.stores.base import (
    BaseStore,
    Clock,
    Finish,
    Removal,
    Reservation,
    finish_write,
)

__all__ = ["BaseKeyValueStore", "Op"]

log = logging.getLogger("sa_stockpyle")

T = TypeVar("T")

#: How often a write is made again when another process keeps starting new namespace
#: generations of its classes while it writes (each new generation starts empty).
MAX_GENERATION_RETRIES = 3


class Op(NamedTuple):
    """One conditional write of :meth:`BaseKeyValueStore._apply`, on one key."""

    #: ``"S"`` set; ``"T"`` leave a tombstone; ``"A"`` add (only where the key holds
    #: nothing, or, with ``arg``, a tombstone written before the backend time ``arg``);
    #: ``"F"`` fill (only where the key holds the lease ``arg``); ``"R"`` release (a
    #: tombstone where the key holds the lease ``arg``); ``"N"`` newer (where the key
    #: holds nothing or an entry of a version below ``arg``; a lease there becomes a
    #: tombstone); ``"L"`` lease (take the key for a fill where it holds nothing or a
    #: tombstone).
    kind: str
    key: str
    raw: Any
    expires_at: float | None
    arg: Any = None


class BaseKeyValueStore(BaseStore):
    """A caching store over string keys: records, pointers, expiry and polymorphism.

    Subclasses provide the backend through three primitives, each one round trip for a
    whole batch: :meth:`_read`, :meth:`_write` (unconditional) and :meth:`_apply`
    (conditional, atomic per key), and the payload pair :meth:`_encode` /
    :meth:`_decode` (identity for in-process stores, bytes for shared ones).

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
        # Classes whose objects this store refused to carry, warned of once: a hot row
        # read again and again would otherwise log at every read.
        self._refused_classes: set[type] = set()

    # -- backend primitives -----------------------------------------------------------

    @abstractmethod
    def _read(self, keys: Sequence[str]) -> list[Any]:
        """Return the raw value of each key, None where absent."""

    @abstractmethod
    def _write(self, items: Sequence[tuple[str, Any, float | None]]) -> None:
        """Store ``(key, raw value, expires_at)`` triples, whatever the keys hold."""

    @abstractmethod
    def _apply(self, ops: Sequence[Op]) -> list[Any]:
        """Carry out conditional writes (see :class:`Op`), each atomic on its key.

        Returns, per op, whether it wrote; for a lease, the backend time it was taken at
        (a float) or, when not taken, the raw value the key holds instead and the backend
        time (a tuple).  Expired
        markers count as nothing held.  Tombstones and leases are stamped with the
        backend's own clock, so that "written before" compares times of one clock.
        """

    def _start_apply_then_read(
        self, ops: Sequence[Op], keys: Sequence[str]
    ) -> Callable[[], tuple[list[Any], list[Any]]]:
        """:meth:`_apply` ``ops``, then :meth:`_read` ``keys`` (their raw values as they
        are after the writes); the call returned gives both results.  A backend that can
        do both in one round trip, and read its reply later, overrides it; this default
        does both at once."""
        done = (self._apply(ops) if ops else []), self._read(keys)
        return lambda: done

    #: Whether :meth:`_decode` builds a new record each time (bytes decoded), rather than
    #: returning the one the backend keeps (in-process stores): then an object restored
    #: from it may take its state over instead of copying it.
    decodes_copies = False

    def _encode(self, record: Record) -> Any:
        """Turn a record into the raw value the backend holds."""
        return record

    def _decode(self, raw: Any, klass: type) -> Record:
        """Turn a raw value back into a record; raise PayloadError when it is not one."""
        if not isinstance(raw, (Entry, Pointer)):
            raise PayloadError(f"stored value is not a record: {type(raw).__qualname__}")
        return raw

    def _encode_marker(self, marker: Marker) -> Any:
        """Turn a tombstone or lease into the raw value the backend holds."""
        return marker

    def _marker_of(self, raw: Any) -> Marker | None:
        """The tombstone or lease ``raw`` is, or None when it is something else."""
        return raw if type(raw) is Marker else None

    def _tombstone(self) -> tuple[Any, float]:
        """A new tombstone's raw value and expiry, stamped with this process's clock."""
        clock_now = self.clock()
        expires_at = clock_now + self.tombstone_ttl
        return self._encode_marker(Marker(None, clock_now, expires_at)), expires_at

    def _remove(self, keys: Sequence[str]) -> None:
        """Leave a tombstone at each key: a removal never makes room for a stale fill."""
        if keys:
            self._conditional([Op("T", key, None, None) for key in keys])

    def _conditional(self, ops: Sequence[Op]) -> list[Any]:
        """:meth:`_apply`, after turning writes that have expired already into removals."""
        ready = self._unexpired(ops)
        return self._apply(ready) if ready else []

    def _unexpired(self, ops: Sequence[Op]) -> list[Op]:
        """``ops`` without the writes that have expired already: a set or a newer
        version's write becomes a tombstone (what the key held is older, and must not
        stay), a fill a release, and an add nothing at all (it writes only where nothing
        is held)."""
        clock_now = self.clock()
        ready: list[Op] = []
        for op in ops:
            if op.expires_at is not None and op.expires_at <= clock_now and op.kind in "SFAN":
                if op.kind in "SN":
                    ready.append(op._replace(kind="T"))
                elif op.kind == "F":
                    ready.append(op._replace(kind="R"))
                continue
            ready.append(op)
        return ready

    # -- the contract -----------------------------------------------------------------

    def _stored_specs(self, objs: Iterable[object]) -> Iterator[tuple[object, list[KeySpec]]]:
        """Each object with the key specs of the classes it is stored under (its own
        first), looked up once per class."""
        specs: dict[type, list[KeySpec]] = {}
        for obj in objs:
            klass = type(obj)
            stored = specs.get(klass)
            if stored is None:
                stored = specs[klass] = [
                    key_spec(c) for c in storage_classes(klass, self.polymorphic)
                ]
            yield obj, stored

    def _encoded(
        self, records: list[tuple[str, Record]], removed: list[Op]
    ) -> Iterator[tuple[str, Record, Any]]:
        """``records`` with their payloads, but for objects with a value this store cannot
        carry: those are logged, and their keys tombstoned into ``removed`` (a commit's
        other objects are still written, and the refused one is not served stale)."""
        encode = self._encode
        refused: set[str] = set()
        for key, record in records:
            if isinstance(record, Pointer):
                if record.primary not in refused:
                    yield key, record, encode(record)
                continue
            try:
                payload = encode(record)
            except PayloadError as exc:
                level = logging.DEBUG if record.klass in self._refused_classes else logging.WARNING
                self._refused_classes.add(record.klass)
                log.log(
                    level,
                    "sa_stockpyle: %r cannot carry a %s, and removes it instead: %s",
                    self,
                    record.klass.__qualname__,
                    exc,
                )
                refused.add(key)
                removed.extend(Op("T", k, None, None) for k in record.keys)
                continue
            yield key, record, payload

    def _records(self, objs: Iterable[object]) -> list[tuple[str, Record]]:
        # Everything that can fail on bad input happens here, before any write.
        objs = list(objs)
        self._learn_generations(objs)
        records: list[tuple[str, Record]] = []
        clock_now = self.clock()
        lifetime_cb = self.lifetime_cb
        keys_of = self.keymaker.keys_of
        for obj, specs in self._stored_specs(objs):
            expires_at = expiry(lifetime_cb(obj), clock_now) if lifetime_cb else None
            # The keys before the snapshot: reading a key attribute that was never loaded
            # (deferred) loads it, and an entry must hold its key values (a reader checks
            # them against its keys).  An expired object is refused first, not refreshed.
            refuse_expired(obj)
            keyed = [keys_of(spec, obj) for spec in specs]
            state, version = snapshot(obj), version_of(obj)
            for keys in keyed:
                records.append((keys[0], Entry(type(obj), state, keys, expires_at, version)))
                for key in keys[1:]:
                    records.append((key, Pointer(keys[0], expires_at)))
        return records

    def _removal_keys(self, removals: Sequence[Removal]) -> list[str]:
        """The cache keys of ``(class, lookup)`` removals, in every storage class (whose
        generations the caller has learned)."""
        by_class: dict[type, list[dict[str, Any]]] = {}
        for klass, lookup in removals:
            by_class.setdefault(klass, []).append(lookup)
        keys: list[str] = []
        for klass, lookups in by_class.items():
            spec = key_spec(klass)
            storages = storage_classes(klass, self.polymorphic)
            if storages == (klass,):
                # The usual case, a commit's batch of one class: keys built in one pass.
                keys += [key for key in self.keymaker.keys(spec, lookups) if key is not None]
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
                        keys.append(self.keymaker.key(storage_spec, storage_index, values))
        return keys

    # -- namespace generations ----------------------------------------------------------
    #
    # Every class's keys carry a generation made of tokens read from the backend, so that
    # invalidate_class() can make all of a class's entries unreachable at once, in every
    # process: it writes new tokens.  A mapped class's tokens are its tables' (see
    # KeyMaker.generation_keys), so every release's model of a table, whatever its schema
    # fingerprint, loses its entries with the others: a migration run by any release, up
    # or down, leaves no release's old entries reachable.  A missing token (never set,
    # evicted, server restarted empty) is replaced by a new random one, never taken as "no
    # generation", so entries written under an older token can never come back.

    #: Whether generation tokens live in the backend, shared with other processes.  An
    #: in-process store keeps them in its key maker only: nothing else can bump them, and
    #: an LRU bound must never evict them.
    shared_generations = True

    def _learn_generations(self, objs: Sequence[object]) -> None:
        self._learn_generations_of(
            {c for obj in objs for c in storage_classes(type(obj), self.polymorphic)}
        )

    def _learn_generations_of(self, classes: Iterable[type]) -> None:
        keymaker = self.keymaker
        unknown = [c for c in classes if c not in keymaker.generations]
        if not unknown:
            return
        keys = list(dict.fromkeys(key for c in unknown for key in keymaker.generation_keys(c)))
        if not self.shared_generations:
            held = keymaker.tokens
            keymaker.set_tokens({key: held.get(key) or secrets.token_hex(4) for key in keys})
            return
        self._adopt_tokens(keys, self._read(keys))

    def _adopt_tokens(self, keys: Sequence[str], raws: Sequence[Any]) -> None:
        """Use the generation tokens ``raws`` read at ``keys``; start one where none is."""
        tokens = _tokens(keys, raws)
        missing = [key for key in keys if key not in tokens]
        if missing:
            # Added only where none is: processes that all find one missing (a restarted
            # server) agree on the first one written instead of replacing each other's.
            new = {key: secrets.token_hex(4) for key in missing}
            added = self._conditional([Op("A", key, new[key].encode(), None) for key in missing])
            won = {key: new[key] for key, done in zip(missing, added, strict=True) if done}
            lost = [key for key in missing if key not in won]
            found = _tokens(lost, self._read(lost)) if lost else {}
            # Gone again since another process added it (evicted at once): start one anyway.
            gone = {key: new[key] for key in lost if key not in found}
            if gone:
                self._write([(key, token.encode(), None) for key, token in gone.items()])
            tokens |= won | found | gone
        self.keymaker.set_tokens(tokens)

    def invalidate_class(self, klass: type) -> None:
        """Make every entry of ``klass`` unreachable, in every process: new generation
        tokens.  Those of a mapped class are its tables': every class mapped to one of
        them, whatever its schema fingerprint, loses its entries too."""
        tokens = {key: secrets.token_hex(4) for key in self.keymaker.generation_keys(klass)}
        if self.shared_generations:
            self._write([(key, token.encode(), None) for key, token in tokens.items()])
        self.keymaker.set_tokens(tokens)

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
        classes = self._classes_of(puts)
        for klass in {klass for klass, _ in removals}:
            classes.update(storage_classes(klass, self.polymorphic))

        def write() -> list[Op]:
            keys = self._removal_keys(removals)
            ops = [Op("T", key, None, None) for key in keys]
            for key, record, payload in self._encoded(self._records(puts), ops):
                # A pointer is written as it is: it answers only while its entry lists it.
                version = record.version if type(record) is Entry else None
                kind = "S" if type(record) is Pointer else "A" if version is None else "N"
                ops.append(Op(kind, key, payload, record.expires_at, version))
            return ops

        return self._in_current_generations(classes, write)

    def _in_current_generations(
        self,
        classes: set[type],
        write: Callable[[], list[Op]],
        attempts: int = MAX_GENERATION_RETRIES,
    ) -> Finish | None:
        """Apply the ops ``write`` builds until the namespace generations their keys were
        made in are still current (at most ``attempts`` times).  Returns None when done,
        or the call that finishes once the backend's reply is read (see
        :meth:`_start_apply_then_read`).

        Writes build their keys from the generations this process last read.  Another
        process may have started a new one meanwhile (``invalidate_class``, a server
        restarted empty); a write under the old one would leave stale entries in the new
        one.  So a shared store reads the generations right after writing (in the same
        round trip where the backend allows), and writes again under any that moved.  A
        generation that moves after that read was started after this write, and its
        readers read the database after this commit.
        """
        if not classes:
            return None
        self._learn_generations_of(classes)
        keymaker = self.keymaker
        keys = list(dict.fromkeys(key for c in classes for key in keymaker.generation_keys(c)))
        used = {key: keymaker.tokens.get(key) for key in keys}
        ops = self._unexpired(write())
        if not self.shared_generations:
            if ops:
                self._apply(ops)
            return None
        receive = self._start_apply_then_read(ops, keys)

        def finish() -> None:
            _, raws = receive()
            if _tokens(keys, raws) != used:
                self._adopt_tokens(keys, raws)
                if attempts > 1:
                    finish_write(self._in_current_generations(classes, write, attempts - 1))

        return finish

    def reserve(self, klass: type, keys: Sequence[object]) -> Reservation:
        """Take a lease on the cache key of each lookup in ``keys`` (see the class doc)."""
        lookups = list(keys)
        spec = key_spec(klass)
        # Every class a found object may be stored under: the fill checks that none of
        # their namespaces changed since the claim.
        family: list[type] = []
        pending = [klass]
        while pending:
            cls = pending.pop()
            family += storage_classes(cls, self.polymorphic)
            pending += cls.__subclasses__()
        self._learn_generations_of(family)
        wanted = self.keymaker.keys(spec, lookups)
        clock_now = self.clock()
        lease = self._encode_marker(
            Marker(secrets.token_hex(8), clock_now, clock_now + self.lease_ttl)
        )
        asked = [key for key in dict.fromkeys(wanted) if key is not None]
        results = dict(
            zip(
                asked,
                self._conditional(
                    [Op("L", key, lease, clock_now + self.lease_ttl) for key in asked]
                ),
                strict=True,
            )
        )
        granted = [key is not None and type(results[key]) is float for key in wanted]
        # The earliest time a lease was taken, on the backend's clock: a tombstone written
        # before it belongs to a commit the database read after it has seen.
        since = min((t for t in results.values() if type(t) is float), default=None)
        busy = [False] * len(wanted)
        for position, key in enumerate(wanted):
            result = None if key is None else results[key]
            if type(result) is not tuple:
                continue  # taken, or given up after losing compare-and-set races
            held, backend_now = result
            marker = self._marker_of(held)
            # A record that appeared since the miss, or a lease taken a moment ago: another
            # reader has filled or is filling this key.  An old lease is a reader that
            # will not fill (it crashed, or found nothing): waiting for it is pointless; so
            # is waiting for one "taken" well after now (forged: it would stay busy).
            age = backend_now - marker.taken if marker is not None else 0.0
            busy[position] = marker is None or (
                marker.lease is not None and -self.lease_busy < age < self.lease_busy
            )
        return Reservation(
            klass,
            lookups,
            granted,
            busy,
            detail=_Claim(wanted, lease, since, dict(self.keymaker.generations)),
        )

    def fill(self, reservation: Reservation, objs: Sequence[object | None]) -> None:
        """Fill what a slower layer found for ``reservation`` (see the class doc); leases
        left unused become tombstones again."""
        claim = reservation.detail
        if not isinstance(claim, _Claim):
            raise TypeError(f"{self!r} cannot fill a reservation it did not make")
        leased = {
            key: granted
            for key, granted in zip(claim.keys, reservation.granted, strict=True)
            if key is not None and granted
        }
        found = [
            obj
            for obj, granted in zip(objs, reservation.granted, strict=True)
            if granted and obj is not None
        ]
        self._learn_generations(found)
        generations = self.keymaker.generations
        # A class whose namespace changed since the claim (or was not known then) would be
        # filled with keys the claim never covered.
        found = [
            obj
            for obj in found
            if all(
                c in claim.generations and generations.get(c) == claim.generations[c]
                for c in storage_classes(type(obj), self.polymorphic)
            )
        ]
        may_add = time.monotonic() - reservation.started < self.tombstone_ttl / 2
        ops: list[Op] = []
        # An object this store cannot carry is not filled (the reader has it already):
        # no tombstones for it either, only releases of the leases on its keys.
        for key, record, payload in self._encoded(self._records(found), []):
            if leased.pop(key, False):
                ops.append(Op("F", key, payload, record.expires_at, claim.lease))
            elif type(record) is Pointer:
                ops.append(Op("S", key, payload, record.expires_at))
            elif may_add:
                since = claim.since if self.compares_tombstone_times else None
                ops.append(Op("A", key, payload, record.expires_at, since))
        ops += [Op("R", key, None, None, claim.lease) for key in leased]
        if ops:
            self._conditional(ops)

    def put(self, obj: object) -> None:
        """Store ``obj`` under every declared key (see the module contract)."""
        self.batch_put((obj,))

    def batch_put(self, objs: Iterable[object]) -> None:
        """Store every object of ``objs`` in one backend write."""
        # Written under the generations known now: if one moved meanwhile, the object is
        # only missing from the new one, which is never stale.
        records = self._records(objs)
        if records:
            encode = self._encode
            self._write([(key, encode(record), record.expires_at) for key, record in records])

    def delete(self, obj: object) -> None:
        """Remove ``obj`` from under every key it is stored at."""
        self.batch_delete((obj,))

    def batch_delete(self, objs: Iterable[object]) -> None:
        """Remove every object of ``objs`` in one backend call."""
        objs = list(objs)

        def write() -> list[Op]:
            keys_of = self.keymaker.keys_of
            return [
                Op("T", key, None, None)
                for obj, specs in self._stored_specs(objs)
                for spec in specs
                for key in keys_of(spec, obj)
            ]

        finish_write(self._in_current_generations(self._classes_of(objs), write))

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
            self._learn_generations_of((klass,))
        known = self.keymaker.generations.get(klass)
        wanted = self.keymaker.keys(spec, lookups)
        if not any(wanted):
            return [None] * len(wanted)
        asked = [key for key in dict.fromkeys(wanted) if key is not None]
        raws: list[Any] | None
        if not self.shared_generations:
            raws = self._read(asked)
        else:
            raws = self._read_generation(klass, known, asked)
            if raws is None:
                return [None] * len(wanted)  # a brand-new namespace holds nothing
            if self.keymaker.generations.get(klass) != known:
                wanted = self.keymaker.keys(spec, lookups)
                asked = [key for key in dict.fromkeys(wanted) if key is not None]
                raws = self._read(asked)
        found = self._decoded(spec, known, asked, raws)
        # Alternate keys hold pointers: fetch the entries they lead to, in one more read.
        pointers = {key: rec.primary for key, rec in found.items() if type(rec) is Pointer}
        if pointers:
            targets = [p for p in dict.fromkeys(pointers.values()) if p not in found]
            if targets:
                found.update(self._decoded(spec, known, targets, self._read(targets)))
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

    def _read_generation(
        self, klass: type, known: str | None, keys: list[str]
    ) -> list[Any] | None:
        """Read ``keys`` with the generation tokens of ``klass``, in one round trip.

        Returns the raw values, or None when a token was missing and a new one was
        started (a new generation holds nothing).  When the generation differs from
        ``known`` (another process bumped it), the key maker now holds the new one and
        the values read are stale: the caller reads again under the new keys.
        """
        generation_keys = self.keymaker.generation_keys(klass)
        count = len(generation_keys)
        raws = self._read([*generation_keys, *keys])
        tokens = raws[:count]
        del raws[:count]
        try:
            current = b".".join(tokens).decode("ascii", "replace")
        except TypeError:  # a token is missing (None), or not a token at all
            current = None
        if current is not None and current == known:
            return raws
        self._adopt_tokens(generation_keys, tokens)
        return None if None in tokens else raws

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
        decode = self._decode
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
                if self._marker_of(raw) is not None:
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


@dataclass(frozen=True)
class _Claim:
    """A key-value store's part of a :class:`Reservation`."""

    keys: list[str | None]  # the cache key of each lookup
    lease: Any  # the raw lease value held at each granted key
    since: float | None  # when the first lease was taken, on the backend's clock
    generations: dict[type, str]  # the namespaces the keys were made in


def _tokens(keys: Sequence[str], raws: Sequence[Any]) -> dict[str, str]:
    """The generation tokens read at ``keys``, where one was."""
    return {
        key: raw.decode("ascii", "replace")
        for key, raw in zip(keys, raws, strict=True)
        if isinstance(raw, bytes) and raw
    }


def _answering(found: dict[str, Record], primary: str, key: str) -> Entry | None:
    """The entry at ``primary`` if it still answers to ``key``."""
    entry = found.get(primary)
    return entry if type(entry) is Entry and key in entry.keys else None
