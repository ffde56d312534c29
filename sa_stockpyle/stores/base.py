"""The Store contract: :class:`BaseStore`, and the :class:`Reservation` a chain fills through.

The contract every store follows (``sa_stockpyle.testing.StoreConformance`` checks it):

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
  ``corrupt`` and removed.
* Keys whose value contains ``None`` identify nothing (as under a SQL unique constraint):
  objects are not stored under them and looking one up is a miss.

The layer protocol, which a store opts into by overriding :meth:`BaseStore.reserve`,
:meth:`BaseStore.fill`, :meth:`BaseStore.write_committed` and
:meth:`BaseStore.invalidate_class` (every :class:`~sa_stockpyle.stores.BaseKeyValueStore`
does; ``sa_stockpyle.testing.LayerProtocolConformance`` checks it):

* A removal (``delete``, a removal of ``write_committed``, a corrupt or expired record)
  leaves a tombstone rather than an empty key, so that no fill that read the system of
  record before it can write the old state back.
* A commit's write never overwrites what it cannot tell is older: an object without a
  version is only added where nothing is held, a versioned one only over a lower version.
* A chain fills a layer that missed only through that layer's claim: :meth:`BaseStore.reserve`
  when it misses, :meth:`BaseStore.fill` with what a slower layer found; a removal or a
  newer write that lands in between voids the fill.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

from sa_stockpyle.stores.channel import Channel
from sa_stockpyle.stores.stats import Stats

__all__ = [
    "BaseStore",
    "Clock",
    "Finish",
    "Removal",
    "Reservation",
    "Start",
    "finish_write",
]

T = TypeVar("T")
#: Returns the current Unix time: ``time.time``, or a fake clock in tests.
Clock = Callable[[], float]


#: The call that finishes a write started ahead of reading its reply (see
#: :meth:`BaseStore.start_committed`).
Finish = Callable[[], None]

#: The call that starts a write prepared ahead (see :meth:`BaseStore.prepare_committed`):
#: it returns what :meth:`BaseStore.start_committed` does.
Start = Callable[[], Finish | None]


def finish_write(finish: Finish | None) -> None:
    """Finish a write that may have been left in flight."""
    if finish is not None:
        finish()


#: An object to remove by key: its class and a lookup (``{"id": 5}``).
Removal = tuple[type, dict[str, Any]]


@dataclass
class Reservation:
    """A layer's claim, taken when it missed, to fill what a slower layer finds.

    Returned by :meth:`BaseStore.reserve`, handed back to :meth:`BaseStore.fill`.
    """

    klass: type
    #: The lookups the layer missed, as the caller wrote them.
    lookups: list[object]
    #: Per lookup: this reader may fill it.
    granted: list[bool]
    #: Per lookup: another reader is filling it right now; reading this layer again in a
    #: moment is likely to hit.
    busy: list[bool]
    #: ``time.monotonic()`` when the claim was taken: a fill may only use state read from
    #: the database after it.
    started: float = field(default_factory=time.monotonic)
    #: The store's own part of the claim.
    detail: Any = None


class BaseStore(ABC):
    """Abstract base of every store: implement ``put``, ``get`` and ``delete``.

    The batch forms default to loops here, and only here; a store with a network behind
    it overrides them with real batches (one round trip per call).
    """

    #: Whether the store lives in this process only (its entries are invisible to other
    #: processes, and other processes' commits never reach them by themselves).
    process_local = False

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
        returns ``objs`` unchanged; a system of record may bind them to its own unit of
        work (the SQLAlchemy store attaches them to its session).
        The result is as long as ``objs`` and in the same order; a None in it refuses an
        object, and the chain asks the layers below for that key as for a miss.
        """
        return objs

    def cacheable(self, obj: object, since: float | None = None) -> bool:
        """Whether ``obj``, as this store holds it, may be copied into faster layers.

        False for state that is not committed yet (an object pending or flushed in an
        open transaction): a chain then invalidates faster layers instead of filling
        them.  With ``since`` (a ``time.monotonic()`` value), also False unless the state
        was read from the system of record after it: state read earlier may predate a
        commit whose invalidation the fill would undo.  The default is True.
        """
        return True

    def reserve(self, klass: type, keys: Sequence[object]) -> Reservation:
        """Claim the right to fill ``keys``, which this store just missed.

        A :class:`~sa_stockpyle.stores.ChainedStore` calls it before it reads a slower
        layer, and hands the claim back to :meth:`fill`.  Caching stores take a lease per
        key, so that a removal or newer write arriving in between voids the fill (see
        :class:`~sa_stockpyle.stores.BaseKeyValueStore`).  This default grants every key
        and its fills are plain puts: a third-party store without conditional writes is
        not race-safe.
        """
        keys = list(keys)
        return Reservation(klass, keys, [True] * len(keys), [False] * len(keys))

    def fill(self, reservation: Reservation, objs: Sequence[object | None]) -> None:
        """Store what a slower layer found for ``reservation.lookups`` (one item per
        lookup, None where nothing may be filled); see :meth:`reserve`."""
        found = [
            obj
            for obj, granted in zip(objs, reservation.granted, strict=True)
            if granted and obj is not None
        ]
        if found:
            self.batch_put(found)

    def write_committed(self, puts: Sequence[object], removals: Sequence[Removal]) -> None:
        """Reflect a commit of the system of record in this store.

        Called once per commit by the ORM plugin (through a chain, for every layer).
        ``removals`` are ``(class, lookup)`` pairs naming objects that were deleted,
        invalidated, or whose key moved away; ``puts`` are the committed objects.  A
        system of record does nothing: it holds the commit already.  Stores of the layer
        protocol leave tombstones and write ``puts`` conditionally (see the module doc).
        This default, for a store without conditional writes, removes both: it cannot
        tell whether a racing commit's state is newer than ``puts``, and a removal costs
        at most a miss.
        """
        for klass, lookup in removals:
            found: object | None = self.get(klass, lookup)
            if found is not None:
                self.delete(found)
        self.batch_delete(puts)

    def start_committed(
        self, puts: Sequence[object], removals: Sequence[Removal]
    ) -> Finish | None:
        """Begin :meth:`write_committed`: None when it is done, or the call that finishes
        it while the backend's reply is still on its way.

        The ORM plugin starts a commit's write as soon as the system of record has
        committed and finishes it once the transaction is closed, so that the round trip
        overlaps the work in between.  The finishing call must be made by the caller that
        started the write (a backend connection may serve one caller at a time), before
        this store's effects are relied on.  This default writes at once.
        """
        self.write_committed(puts, removals)
        return None

    def prepare_committed(self, puts: Sequence[object], removals: Sequence[Removal]) -> Start:
        """Do now what :meth:`start_committed` can do before the commit is known to have
        happened (build keys and payloads), and return the call that starts the write.

        Nothing is written, counted or remembered before that call, which is made only
        if the system of record commits.  The ORM plugin prepares an ``AsyncSession``'s
        write while the driver's COMMIT is on its way, so that the work overlaps the
        database's round trip.  This default prepares nothing.
        """
        return lambda: self.start_committed(puts, removals)

    def invalidate_class(self, klass: type) -> None:
        """Make every cached entry of ``klass`` unreachable (a bulk statement changed rows
        that cannot be named).  The system of record does nothing."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot invalidate a whole class; override "
            f"invalidate_class() to support bulk statements without RETURNING"
        )

    def channel(self, name: str) -> Channel | None:
        """A publish/subscribe channel called ``name`` on this store's backend, or None
        when it has none (the default).  A chain sends invalidations through it."""
        return None

    def clear(self) -> None:
        """Drop every entry; stores that can, override this."""
        raise NotImplementedError(f"{type(self).__name__} cannot drop every entry")

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
