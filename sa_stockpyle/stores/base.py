"""The Store contract, and the key-value machinery every caching store shares.

The contract, which every store in this package and every third-party store follows
(``sa_stockpyle.testing`` checks it):

* ``put(obj)`` / ``batch_put(objs)`` store objects under every declared key of their class
  (and, when the store is ``polymorphic``, of every base class declaring keys).
* ``get(klass, key)`` returns the object or ``None``; ``batch_get(klass, keys)`` returns a
  list as long as ``keys``, in the same order, with ``None`` for each miss.  Only ``None``
  means a miss: falsy objects are objects.
* ``delete(obj)`` / ``batch_delete(objs)`` remove objects; deleting an absent object is
  not an error.
* A returned object is never the stored one: caching stores hand out snapshots, so a
  caller mutating what it got never changes the cache.
* Bad input raises before anything changes: :class:`~sa_stockpyle.errors.NotStorableError`,
  :class:`~sa_stockpyle.errors.UnknownKeyError`,
  :class:`~sa_stockpyle.errors.InvalidKeyValueError`,
  :class:`~sa_stockpyle.errors.InvalidLifetimeError`.  A backend that does not answer
  raises :class:`~sa_stockpyle.errors.StoreUnavailable`; nothing else escapes on purpose.
  A payload that does not decode is a miss: it is logged, counted in ``stats`` as
  ``corrupt`` and deleted.
* Keys whose value contains ``None`` identify nothing (as under a SQL unique constraint):
  objects are not stored under them and looking one up is a miss.
"""

from __future__ import annotations

import logging
import secrets
import threading
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from sa_stockpyle.codec import (
    Entry,
    LifetimeCallback,
    Pointer,
    Record,
    decode_record,
    encode_record,
    expiry,
    now,
    restore,
    snapshot,
)
from sa_stockpyle.errors import PayloadError, StoreTimeout, StoreUnavailable
from sa_stockpyle.keys import KeyMaker, KeySpec, is_null, key_spec, storage_classes

__all__ = [
    "BaseDictionaryStore",
    "BaseKeyValueStore",
    "BaseStore",
    "ErrorTranslator",
    "Removal",
    "SharedPayloads",
    "Stats",
]

log = logging.getLogger("sa_stockpyle")

T = TypeVar("T")
Clock = Callable[[], float]

#: An object to remove by key: its class and a lookup (``{"id": 5}``).
Removal = tuple[type, dict[str, Any]]


class Stats:
    """Thread-safe event counters per class: ``stats.count(User, "hits")``.

    Counting sits on every lookup of a chain, so it takes no lock: each thread adds to
    its own tally, and reads sum the tallies of every thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def add(self, klass: type, event: str, amount: int = 1) -> None:
        """Count ``amount`` occurrences of ``event`` for ``klass``."""
        if amount:
            try:
                tally: dict[tuple[type, str], int] = self._local.tally
            except AttributeError:
                tally = self._new_tally()
            key = (klass, event)
            tally[key] = tally.get(key, 0) + amount

    def _new_tally(self) -> dict[tuple[type, str], int]:
        tally: dict[tuple[type, str], int] = {}
        with self._lock:
            # Fold the tallies of threads that have ended into one, so a server that
            # starts a thread per request does not grow a tally per request.
            for thread, ended in [(t, c) for t, c in self._tallies if not t.is_alive()]:
                self._retired.update(ended)
                self._tallies.remove((thread, ended))
            self._local.tally = tally
            self._tallies.append((threading.current_thread(), tally))
        return tally

    def _totals(self) -> Counter[tuple[str, str]]:
        totals: Counter[tuple[str, str]] = Counter()
        with self._lock:
            tallies = [self._retired, *(tally for _, tally in self._tallies)]
            for tally in tallies:
                # dict() copies in one step, safe while the owning thread goes on counting.
                for (klass, event), n in dict(tally).items():
                    totals[klass.__qualname__, event] += n
        return totals

    def count(self, klass: type | None, event: str) -> int:
        """How often ``event`` happened for ``klass`` (for every class when None)."""
        return sum(
            n
            for (name, kind), n in self._totals().items()
            if kind == event and (klass is None or name == klass.__qualname__)
        )

    def as_dict(self) -> dict[str, dict[str, int]]:
        """A snapshot: ``{class name: {event: count}}``."""
        result: dict[str, dict[str, int]] = {}
        for (name, event), n in sorted(self._totals().items()):
            result.setdefault(name, {})[event] = n
        return result

    def reset(self) -> None:
        """Forget every count."""
        # New tallies for every thread: one counting right now adds to its old tally,
        # which is forgotten, as if it had counted just before the reset.
        with self._lock:
            self._local = threading.local()
            self._tallies: list[tuple[threading.Thread, dict[tuple[type, str], int]]] = []
            self._retired: Counter[tuple[type, str]] = Counter()


class BaseStore(ABC):
    """Abstract base of every store: implement ``put``, ``get`` and ``delete``.

    The batch forms default to loops here, and only here; a store with a network behind
    it overrides them with real batches (one round trip per call).
    """

    def __init__(self) -> None:
        self.stats = Stats()

    @abstractmethod
    def put(self, obj: object) -> None:
        """Store ``obj`` under every declared key."""

    @abstractmethod
    def get(self, klass: type[T], key: object) -> T | None:
        """Return the ``klass`` object with ``key``, or None."""

    @abstractmethod
    def delete(self, obj: object) -> None:
        """Remove ``obj``; removing an absent object is not an error."""

    def batch_put(self, objs: Iterable[object]) -> None:
        """Store every object of ``objs``."""
        for obj in objs:
            self.put(obj)

    def batch_get(self, klass: type[T], keys: Iterable[object]) -> list[T | None]:
        """Return one object or None per key, in the order of ``keys``."""
        return [self.get(klass, key) for key in keys]

    def batch_delete(self, objs: Iterable[object]) -> None:
        """Remove every object of ``objs``."""
        for obj in objs:
            self.delete(obj)

    def adopt(self, klass: type[T], objs: list[T]) -> list[T]:
        """Take ownership of ``objs``, found by a faster layer above this one in a chain.

        A :class:`~sa_stockpyle.stores.ChainedStore` hands every hit to each layer below
        the one it came from, and returns what the last one gives back.  The default
        returns ``objs`` unchanged; the SQLAlchemy store attaches them to its session.
        The result is as long as ``objs`` and in the same order; a None in it refuses an
        object, and the chain asks the layers below for that key as for a miss.
        """
        return objs

    def cacheable(self, obj: object) -> bool:
        """Whether ``obj``, as this store holds it, may be copied into faster layers.

        False for state that is not committed yet (an object pending or flushed in an
        open transaction): a chain then invalidates faster layers instead of filling
        them.  The default is True.
        """
        return True

    def write_committed(self, puts: Sequence[object], removals: Sequence[Removal]) -> None:
        """Reflect a database commit: remove ``removals``, then store ``puts``.

        Called by the ORM plugin once per commit.  ``removals`` are ``(class, lookup)``
        pairs naming objects that were deleted, invalidated, or whose key moved away;
        ``puts`` are the committed objects.  The system of record (the SQLAlchemy store)
        does nothing: it holds the commit already.  This default looks each removal up
        and deletes it; caching stores override it with batches.
        """
        for klass, lookup in removals:
            found: object | None = self.get(klass, lookup)
            if found is not None:
                self.delete(found)
        self.batch_put(puts)

    def invalidate_class(self, klass: type) -> None:
        """Make every cached entry of ``klass`` unreachable (a bulk statement changed rows
        that cannot be named).  The system of record does nothing."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot invalidate a whole class; override "
            f"invalidate_class() to support bulk statements without RETURNING"
        )

    def close(self) -> None:  # noqa: B027 - closing is optional; most stores hold nothing
        """Release connections and threads; the store is unusable afterwards."""

    def __enter__(self: T) -> T:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class BaseKeyValueStore(BaseStore):
    """A caching store over string keys: records, pointers, expiry and polymorphism.

    Subclasses provide the backend through four primitives, each one round trip for a
    whole batch: :meth:`_read`, :meth:`_write`, :meth:`_remove`, and the payload pair
    :meth:`_encode` / :meth:`_decode` (identity for in-process stores, bytes for shared
    ones).

    Parameters:
        polymorphic: also store each object under every base class that declares
            ``__stockpyle_keys__``.
        lifetime_cb: ``lifetime_cb(obj)`` returns int seconds, a timedelta, an absolute
            datetime or None (no expiry).
        prefix: the first part of every cache key.
        clock: returns the current Unix time; injected by tests.
    """

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

    # -- backend primitives -----------------------------------------------------------

    @abstractmethod
    def _read(self, keys: Sequence[str]) -> list[Any]:
        """Return the raw value of each key, None where absent."""

    @abstractmethod
    def _write(self, items: Sequence[tuple[str, Any, float | None]]) -> None:
        """Store ``(key, raw value, expires_at)`` triples."""

    @abstractmethod
    def _remove(self, keys: Sequence[str]) -> None:
        """Remove keys; absent keys are ignored."""

    def _replace(
        self, keys: Sequence[str], items: Sequence[tuple[str, Any, float | None]]
    ) -> None:
        """Remove ``keys``, then write ``items``; a backend that can do both in one round
        trip overrides this."""
        if keys:
            self._remove(keys)
        if items:
            self._write(items)

    def _encode(self, record: Record) -> Any:
        """Turn a record into the raw value the backend holds."""
        return record

    def _decode(self, raw: Any, klass: type) -> Record:
        """Turn a raw value back into a record; raise PayloadError when it is not one."""
        if not isinstance(raw, (Entry, Pointer)):
            raise PayloadError(f"stored value is not a record: {type(raw).__qualname__}")
        return raw

    # -- the contract -----------------------------------------------------------------

    def _stored_keys(self, obj: object) -> Iterator[tuple[str, ...]]:
        """For each class ``obj`` is stored under, its cache keys, the primary key first."""
        make = self.keymaker.key
        for klass in storage_classes(type(obj), self.polymorphic):
            spec = key_spec(klass)
            yield tuple([make(spec, index, values) for index, values in spec.identities(obj)])

    def _records(self, objs: Iterable[object]) -> list[tuple[str, Record]]:
        # Everything that can fail on bad input happens here, before any write.
        objs = list(objs)
        self._learn_generations(objs)
        records: list[tuple[str, Record]] = []
        clock_now = self.clock()
        for obj in objs:
            expires_at = expiry(self.lifetime_cb(obj), clock_now) if self.lifetime_cb else None
            state = snapshot(obj)
            for keys in self._stored_keys(obj):
                records.append((keys[0], Entry(type(obj), state, keys, expires_at)))
                for key in keys[1:]:
                    records.append((key, Pointer(keys[0], expires_at)))
        return records

    def _object_keys(self, objs: Iterable[object]) -> list[str]:
        objs = list(objs)
        self._learn_generations(objs)
        return [key for obj in objs for keys in self._stored_keys(obj) for key in keys]

    def _removal_keys(self, removals: Sequence[Removal]) -> list[str]:
        """The cache keys of ``(class, lookup)`` removals, in every storage class."""
        keys: list[str] = []
        classes = {c for klass, _ in removals for c in storage_classes(klass, self.polymorphic)}
        self._learn_generations_of(classes)
        for klass, lookup in removals:
            spec = key_spec(klass)
            index, values = spec.lookup(lookup)
            if is_null(values):
                continue
            attrs = frozenset(spec.items[index])
            for storage in storage_classes(klass, self.polymorphic):
                storage_spec = key_spec(storage)
                storage_index = storage_spec.index_of(attrs)
                if storage_index is not None:
                    keys.append(self.keymaker.key(storage_spec, storage_index, values))
        return keys

    # -- namespace generations ----------------------------------------------------------
    #
    # Every class's keys carry a generation token read from the backend, so that
    # invalidate_class() can make all of a class's entries unreachable at once, in every
    # process: it writes a new token.  A missing token (never set, evicted, server
    # restarted empty) is replaced by a new random one, never taken as "no generation",
    # so entries written under an older token can never come back.

    #: Whether generation tokens live in the backend, shared with other processes.  An
    #: in-process store keeps them in its key maker only: nothing else can bump them, and
    #: an LRU bound must never evict them.
    shared_generations = True

    def _learn_generations(self, objs: Sequence[object]) -> None:
        self._learn_generations_of(
            {c for obj in objs for c in storage_classes(type(obj), self.polymorphic)}
        )

    def _learn_generations_of(self, classes: Iterable[type]) -> None:
        unknown = [c for c in classes if c not in self.keymaker.generations]
        if not unknown:
            return
        if not self.shared_generations:
            for klass in unknown:
                self.keymaker.set_generation(klass, secrets.token_hex(4))
            return
        raws = self._read([self.keymaker.generation_key(c) for c in unknown])
        for klass, raw in zip(unknown, raws, strict=True):
            self._adopt_generation(klass, raw)

    def _adopt_generation(self, klass: type, raw: Any) -> None:
        """Use the generation ``raw`` read from the backend, or start a new one."""
        if isinstance(raw, bytes) and raw:
            self.keymaker.set_generation(klass, raw.decode("ascii", "replace"))
        else:
            self.invalidate_class(klass)

    def invalidate_class(self, klass: type) -> None:
        """Make every entry of ``klass`` unreachable, in every process: a new generation."""
        token = secrets.token_hex(4)
        if self.shared_generations:
            key = self.keymaker.generation_key(klass)
            self._write([(key, token.encode("ascii"), None)])
        self.keymaker.set_generation(klass, token)

    def write_committed(self, puts: Sequence[object], removals: Sequence[Removal]) -> None:
        """Reflect a database commit: one batch of removals, then one of writes."""
        keys = self._removal_keys(removals)
        records = self._records(puts)
        if keys or records:
            encode = self._encode
            self._replace(keys, [(key, encode(rec), rec.expires_at) for key, rec in records])

    def put(self, obj: object) -> None:
        """Store ``obj`` under every declared key (see the module contract)."""
        self.batch_put((obj,))

    def batch_put(self, objs: Iterable[object]) -> None:
        """Store every object of ``objs`` in one backend write."""
        records = self._records(objs)
        if records:
            self._write(
                [(key, self._encode(record), record.expires_at) for key, record in records]
            )

    def delete(self, obj: object) -> None:
        """Remove ``obj`` from under every key it is stored at."""
        self.batch_delete((obj,))

    def batch_delete(self, objs: Iterable[object]) -> None:
        """Remove every object of ``objs`` in one backend call."""
        keys = self._object_keys(objs)
        if keys:
            self._remove(keys)

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
        found = self._decoded(klass, asked, raws)
        # Alternate keys hold pointers: fetch the entries they lead to, in one more read.
        pointers = {key: rec.primary for key, rec in found.items() if type(rec) is Pointer}
        if pointers:
            targets = [p for p in dict.fromkeys(pointers.values()) if p not in found]
            if targets:
                found.update(self._decoded(klass, targets, self._read(targets)))
            dangling = [
                key for key, primary in pointers.items() if not _answering(found, primary, key)
            ]
            if dangling:
                # Left behind when the alternate key moved: it answers nothing, reclaim it.
                self._remove(dangling)
        results: list[T | None] = []
        for key in wanted:
            entry = None if key is None else _answering(found, pointers.get(key, key), key)
            if entry is not None and (entry.klass is klass or issubclass(entry.klass, klass)):
                results.append(restore(entry.klass, entry.state))
            else:
                results.append(None)
        return results

    def _read_generation(
        self, klass: type, known: str | None, keys: list[str]
    ) -> list[Any] | None:
        """Read ``keys`` with the generation of ``klass``, in one round trip.

        Returns the raw values, or None when the class had no generation and a new one
        was started.  When the generation differs from ``known`` (another process bumped
        it), the key maker now holds the new one and the values read are stale: the
        caller reads again under the new keys.
        """
        raws = self._read([self.keymaker.generation_key(klass), *keys])
        current = raws.pop(0)
        if isinstance(current, bytes) and current.decode("ascii", "replace") == known:
            return raws
        self._adopt_generation(klass, current)
        return None if current is None else raws

    def _decoded(self, klass: type, keys: list[str], raws: list[Any]) -> dict[str, Record]:
        """Decode raw values; expired and corrupt records are deleted, not returned."""
        found: dict[str, Record] = {}
        dead: list[str] = []
        clock_now = self.clock()
        decode = self._decode
        for key, raw in zip(keys, raws, strict=True):
            if raw is None:
                continue
            try:
                record = decode(raw, klass)
            except PayloadError as exc:
                log.warning("sa_stockpyle: %s: deleting corrupt entry %r: %s", self, key, exc)
                self.stats.add(klass, "corrupt")
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

    def __repr__(self) -> str:
        return f"<{type(self).__name__} prefix={self.keymaker.prefix!r}>"


def _answering(found: dict[str, Record], primary: str, key: str) -> Entry | None:
    """The entry at ``primary`` if it still answers to ``key``."""
    entry = found.get(primary)
    return entry if type(entry) is Entry and key in entry.keys else None


class BaseDictionaryStore(BaseKeyValueStore):
    """A store over any mutable mapping: a subclass only hands it the mapping.

    Parameters:
        dictionary: the mapping that holds the records.
        polymorphic: also store each object under every base class that declares
            ``__stockpyle_keys__`` (see :class:`BaseKeyValueStore`).
        lifetime_cb: ``lifetime_cb(obj)`` returns the object's lifetime; see
            :class:`BaseKeyValueStore`.
        prefix: the first part of every cache key.
        clock: returns the current Unix time; injected by tests.
    """

    def __init__(
        self,
        dictionary: MutableMapping[str, Any],
        polymorphic: bool = False,
        lifetime_cb: LifetimeCallback | None = None,
        prefix: str = "stockpyle",
        clock: Clock = now,
    ) -> None:
        super().__init__(
            polymorphic=polymorphic, lifetime_cb=lifetime_cb, prefix=prefix, clock=clock
        )
        self.dictionary = dictionary

    def clear(self) -> None:
        """Drop every record."""
        self.dictionary.clear()

    def invalidate_class(self, klass: type) -> None:
        """Start a new generation of ``klass``; an in-process store also drops the entries
        of the old one (but for hashed long keys, which an LRU bound evicts in time)."""
        old = self.keymaker.class_prefix(klass) if klass in self.keymaker.generations else None
        super().invalidate_class(klass)
        if old is not None and not self.shared_generations:
            for key in [key for key in list(self.dictionary) if key.startswith(old)]:
                self.dictionary.pop(key, None)

    def _read(self, keys: Sequence[str]) -> list[Any]:
        mapping = self.dictionary
        return [mapping.get(key) for key in keys]

    def _write(self, items: Sequence[tuple[str, Any, float | None]]) -> None:
        mapping = self.dictionary
        for key, raw, _expires_at in items:
            mapping[key] = raw

    def _remove(self, keys: Sequence[str]) -> None:
        mapping = self.dictionary
        for key in keys:
            mapping.pop(key, None)


class SharedPayloads:
    """Mixin for stores whose backend other processes share: records travel as codec bytes.

    Put it before the store base class (``class RedisStore(SharedPayloads,
    BaseKeyValueStore)``); decoding goes through the codec's allow-list, so whatever
    another process wrote under a key can at worst be a counted miss.
    """

    def _encode(self, record: Record) -> bytes:
        return encode_record(record)

    def _decode(self, raw: Any, klass: type) -> Record:
        return decode_record(raw, klass)


class ErrorTranslator:
    """The error policy at a store's boundary, as a context manager: ``with self._errors:``.

    Exceptions of ``timeouts`` become :class:`~sa_stockpyle.errors.StoreTimeout`, those of
    ``failures`` :class:`~sa_stockpyle.errors.StoreUnavailable`, chained with
    ``raise ... from``; anything else (a bug, not an outage) passes through unchanged.
    Stateless, so one instance serves every thread of a store.

    Parameters:
        backend: names the server in messages, e.g. ``"Redis at redis://host:6379/0"``.
        timeouts: exception types meaning "no answer in time".
        failures: exception types meaning "cannot be reached or cannot serve now".
    """

    def __init__(
        self,
        backend: str,
        timeouts: tuple[type[BaseException], ...],
        failures: tuple[type[BaseException], ...],
    ) -> None:
        self.backend = backend
        self.timeouts = timeouts
        self.failures = failures

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            return
        if isinstance(exc, self.timeouts):
            raise StoreTimeout(f"{self.backend} did not answer in time: {exc}") from exc
        if isinstance(exc, self.failures):
            raise StoreUnavailable(f"{self.backend} is unavailable: {exc}") from exc
