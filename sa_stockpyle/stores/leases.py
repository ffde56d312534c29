"""Leases (:class:`Leases`): how a key-value store lets a reader that missed fill what the
database gave it only while no removal or newer write has landed since its miss (the
memcache "leases" idea; see :class:`~sa_stockpyle.stores.BaseKeyValueStore`)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sa_stockpyle.codec import Marker, Pointer
from sa_stockpyle.keys import key_spec, storage_classes
from sa_stockpyle.stores.base import Reservation
from sa_stockpyle.stores.ops import Op, OpKind

if TYPE_CHECKING:
    from sa_stockpyle.stores.keyvalue import BaseKeyValueStore

__all__ = ["Leases"]


class Leases:
    """The claims of one key-value store: a lease per key a reader missed
    (:meth:`reserve`), and the fill that needs it (:meth:`fill`)."""

    def __init__(self, store: BaseKeyValueStore) -> None:
        self.store = store

    def reserve(self, klass: type, keys: Sequence[object]) -> Reservation:
        """Take a lease on the cache key of each lookup in ``keys`` (see the class doc)."""
        store = self.store
        lookups = list(keys)
        spec = key_spec(klass)
        # Every class a found object may be stored under: the fill checks that none of
        # their namespaces changed since the claim.
        family: list[type] = []
        pending = [klass]
        while pending:
            cls = pending.pop()
            family += storage_classes(cls, store.polymorphic)
            pending += cls.__subclasses__()
        store.generations.learn_classes(family)
        wanted = store.keymaker.keys(spec, lookups)
        clock_now = store.clock()
        lease = store.encode_marker(
            Marker(secrets.token_hex(8), clock_now, clock_now + store.lease_ttl)
        )
        asked = [key for key in dict.fromkeys(wanted) if key is not None]
        take, until = OpKind.LEASE, clock_now + store.lease_ttl
        results = dict(
            zip(
                asked,
                store.apply_unexpired([Op(take, key, lease, until) for key in asked]),
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
            marker = store.marker_of(held)
            # A record that appeared since the miss, or a lease taken a moment ago: another
            # reader has filled or is filling this key.  An old lease is a reader that
            # will not fill (it crashed, or found nothing): waiting for it is pointless; so
            # is waiting for one "taken" well after now (forged: it would stay busy).
            age = backend_now - marker.taken if marker is not None else 0.0
            busy[position] = marker is None or (
                marker.lease is not None and -store.lease_busy < age < store.lease_busy
            )
        return Reservation(
            klass,
            lookups,
            granted,
            busy,
            detail=_Claim(wanted, lease, since, dict(store.keymaker.generations)),
        )

    def fill(self, reservation: Reservation, objs: Sequence[object | None]) -> None:
        """Fill what a slower layer found for ``reservation`` (see the class doc); leases
        left unused become tombstones again."""
        store = self.store
        claim = reservation.detail
        if not isinstance(claim, _Claim):
            raise TypeError(f"{store!r} cannot fill a reservation it did not make")
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
        store.generations.learn(found)
        generations = store.keymaker.generations
        # A class whose namespace changed since the claim (or was not known then) would be
        # filled with keys the claim never covered.
        unchanged = {
            klass: all(
                c in claim.generations and generations.get(c) == claim.generations[c]
                for c in storage_classes(klass, store.polymorphic)
            )
            for klass in {type(obj) for obj in found}
        }
        found = [obj for obj in found if unchanged[type(obj)]]
        may_add = time.monotonic() - reservation.started < store.tombstone_ttl / 2
        ops: list[Op] = []
        # An object this store cannot carry is not filled (the reader has it already):
        # no tombstones for it either, only releases of the leases on its keys.
        # The kinds read once: an enum member costs an attribute lookup per key.
        fill, pointer, add = OpKind.FILL, OpKind.SET, OpKind.ADD
        since = claim.since if store.compares_tombstone_times else None
        for key, record, payload in store.layout.encoded(store.layout.records(found), []):
            if leased.pop(key, False):
                ops.append(Op(fill, key, payload, record.expires_at, claim.lease))
            elif type(record) is Pointer:
                ops.append(Op(pointer, key, payload, record.expires_at))
            elif may_add:
                ops.append(Op(add, key, payload, record.expires_at, since))
        ops += [Op(OpKind.RELEASE, key, None, None, claim.lease) for key in leased]
        if ops:
            store.apply_unexpired(ops)


@dataclass(frozen=True)
class _Claim:
    """A key-value store's part of a :class:`Reservation`."""

    keys: list[str | None]  # the cache key of each lookup
    lease: Any  # the raw lease value held at each granted key
    since: float | None  # when the first lease was taken, on the backend's clock
    generations: dict[type, str]  # the namespaces the keys were made in
