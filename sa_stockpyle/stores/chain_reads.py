"""ChainReads: how a :class:`~sa_stockpyle.stores.ChainedStore` reads through its
layers (``get``, ``batch_get``) and how another chain claims and fills it (``reserve``,
``fill``).

Each faster layer that misses claims the keys it missed before any slower layer is read,
and is filled through its claim only (see :mod:`~sa_stockpyle.stores.claims`).  The
system of record is never claimed: its reads are the truth.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from sa_stockpyle.errors import StoreUnavailable
from sa_stockpyle.keys import key_spec
from sa_stockpyle.stores.base import BaseStore, Reservation
from sa_stockpyle.stores.broadcast import Broadcast
from sa_stockpyle.stores.claims import Claims
from sa_stockpyle.stores.health import LayerHealth

__all__ = ["ChainReads", "First"]

T = TypeVar("T")


class First(enum.Enum):
    """How far :meth:`ChainedStore.ask_first` went with the first layer."""

    #: Not asked: :meth:`ChainedStore.get_after` asks it.
    UNASKED = enum.auto()
    #: Asked, and it missed: it is claimed next.
    MISSED = enum.auto()
    #: Done with: resting, failed, or its hit was refused by a slower layer.
    DONE = enum.auto()


class ChainReads:
    """The read path of :class:`~sa_stockpyle.stores.ChainedStore`, which holds the
    attributes below."""

    stores: list[BaseStore]
    health: list[LayerHealth]
    record: LayerHealth
    lease_wait: float
    monotonic: Callable[[], float]
    broadcast: Broadcast | None

    def _usable(self, layer: LayerHealth, classes: Iterable[type]) -> bool:
        """:meth:`LayerHealth.usable`, the broadcast made ready first."""
        if self.broadcast is not None:
            self.broadcast.ready()
        return layer.usable(classes)

    def get(self, klass: type[T], key: object) -> T | None:
        """Return the ``klass`` object with ``key`` from the first layer that has it."""
        # The one-key form of batch_get, without its lists: it is the hot path.
        hit, first = self.ask_first(klass, key)  # bad input raises here
        return hit if hit is not None else self.get_after(klass, key, first)

    def ask_first(self, klass: type[T], key: object) -> tuple[T | None, First]:
        """The first step of :meth:`get`, when it needs no I/O: asking a first layer that
        is in-process (an ``AsyncChainedStore`` answers its hits without a greenlet).

        Returns the object found and adopted by the slower layers, or None and how far
        the step went, for :meth:`get_after` to go on from.  Bad input raises here,
        before any layer is asked.
        """
        key_spec(klass).lookup(key)
        layer = self.health[0]
        if (
            layer is self.record
            or not layer.store.process_local
            or (self.broadcast is not None and self.broadcast.pending)
        ):
            return None, First.UNASKED
        if not layer.usable((klass,)):
            return None, First.DONE
        try:
            obj = layer.store.get(klass, key)
        except StoreUnavailable as exc:
            layer.failed((klass,), "read", exc)
            return None, First.DONE
        if obj is None:
            return None, First.MISSED
        layer.stats.add(klass, "hits")
        # Refused (None) by a slower layer, the slower layers answer instead.
        return self._adopt(0, klass, [obj])[0], First.DONE

    def get_after(self, klass: type[T], key: object, first: First = First.UNASKED) -> T | None:
        """The rest of :meth:`get`, after :meth:`ask_first` went as far as ``first``."""
        claims = None  # taken on the first miss
        for index, layer in enumerate(self.health):
            if index or first is First.UNASKED:
                if not self._usable(layer, (klass,)):
                    continue
                try:
                    obj = layer.store.get(klass, key)
                except StoreUnavailable as exc:
                    layer.failed((klass,), "read", exc)
                    continue
            elif first is First.DONE:
                continue
            else:
                obj = None  # the first layer missed: it is claimed below
            if obj is None and layer is not self.record:
                claims = claims or Claims(self.lease_wait, self.monotonic)
                obj = claims.take(layer, klass, [key], [0]).get(0)
            if obj is None:
                layer.stats.add(klass, "misses")
                continue
            layer.stats.add(klass, "hits")
            if claims:
                claims.fill(klass, {0: (layer, obj)})
            adopted = self._adopt(index, klass, [obj])[0]
            if adopted is not None:
                return adopted
        if claims:
            claims.fill(klass, {})
        return None

    def batch_get(self, klass: type[T], keys: Iterable[object]) -> list[T | None]:
        """Look ``keys`` up layer by layer, filling faster layers with what is found."""
        keys = list(keys)
        spec = key_spec(klass)
        for key in keys:  # bad input raises here, before any layer is asked or filled
            spec.lookup(key)
        results: list[T | None] = [None] * len(keys)
        found_in: dict[int, tuple[LayerHealth, object]] = {}
        claims = Claims(self.lease_wait, self.monotonic)
        missing = list(range(len(keys)))
        for index, layer in enumerate(self.health):
            if not self._usable(layer, (klass,)):
                continue
            try:
                found = layer.store.batch_get(klass, [keys[i] for i in missing])
            except StoreUnavailable as exc:
                layer.failed((klass,), "read", exc)
                continue
            hits = {i: obj for i, obj in zip(missing, found, strict=True) if obj is not None}
            missed = [i for i in missing if i not in hits]
            if missed and layer is not self.record:
                hits |= claims.take(layer, klass, [keys[i] for i in missed], missed)
            layer.stats.add(klass, "hits", len(hits))
            layer.stats.add(klass, "misses", len(missing) - len(hits))
            if hits:
                positions = [i for i in missing if i in hits]
                objs = [hits[i] for i in positions]
                if claims:  # what faster layers claimed is filled from here
                    found_in.update(
                        (i, (layer, obj)) for i, obj in zip(positions, objs, strict=True)
                    )
                adopted = self._adopt(index, klass, objs)
                for position, obj in zip(positions, adopted, strict=True):
                    results[position] = obj
                missing = [i for i in missing if results[i] is None]
            if not missing:
                break
        if claims:
            claims.fill(klass, found_in)
        return results

    def reserve(self, klass: type, keys: Sequence[object]) -> Reservation:
        """Reserve ``keys`` in every layer (for a chain used as a layer of another)."""
        keys = list(keys)
        claims: list[Reservation | None] = []
        for layer in self.health:
            claim = None
            if self._usable(layer, (klass,)):
                try:
                    claim = layer.store.reserve(klass, keys)
                except StoreUnavailable as exc:
                    layer.failed((klass,), "reserve", exc)
            claims.append(claim)
        held = [claim for claim in claims if claim is not None]
        return Reservation(
            klass,
            keys,
            [any(claim.granted[i] for claim in held) for i in range(len(keys))],
            [any(claim.busy[i] for claim in held) for i in range(len(keys))],
            detail=claims,
        )

    def fill(self, reservation: Reservation, objs: Sequence[object | None]) -> None:
        """Fill every layer through its own claim, the last first."""
        claims: list[Reservation | None] = reservation.detail
        for layer, claim in reversed(list(zip(self.health, claims, strict=True))):
            if claim is None:
                continue
            try:
                layer.store.fill(claim, objs)
            except StoreUnavailable as exc:
                layer.failed({type(obj) for obj in objs if obj is not None}, "fill", exc)

    def _adopt(self, found_in: int, klass: type[T], hits: list[T]) -> list[T | None]:
        """Hand ``hits`` to each layer below ``found_in``; return what the last one gives
        back (None where it refuses one)."""
        adopted: list[Any] = hits
        for below in self.stores[found_in + 1 :]:
            adopted = below.adopt(klass, adopted)
        return adopted
