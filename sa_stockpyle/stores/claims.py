"""Claims: the leases one read of a chain takes on the layers that missed, the wait for
other readers' fills, and the fill of each layer through its claim.

A layer that misses takes a claim (:meth:`BaseStore.reserve`: a lease per key) before any
slower layer is read, and is filled through that claim only (:meth:`BaseStore.fill`): a
commit that removes or rewrites the key in between voids the fill, so a reader that read
the database before a commit can never write the old state back.  Only state the source
layer read after the claim was taken fills it (:meth:`BaseStore.cacheable`).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import TypeVar

from sa_stockpyle.errors import PayloadError, StoreUnavailable
from sa_stockpyle.greenlets import pause
from sa_stockpyle.stores.base import Reservation
from sa_stockpyle.stores.health import LayerHealth

__all__ = ["Claims", "pauses"]

log = logging.getLogger("sa_stockpyle")

T = TypeVar("T")


def pauses(total: float, first: float = 0.001) -> list[float]:
    """The pauses of a reader waiting ``total`` seconds for another reader's fill:
    ``first``, then each twice the one before, the last cut so that they add up to
    ``total``.  A read follows each: a fill that comes soon is seen soon."""
    ends: list[float] = []
    end = first
    while end < total:
        ends.append(end)
        end = 2 * end + first
    ends.append(total)
    return [later - earlier for earlier, later in itertools.pairwise([0.0, *ends])]


class Claims:
    """The claims one read of a chain holds, and the fills they allow.

    Parameters:
        lease_wait: seconds to wait for keys another reader is filling.
        monotonic: returns monotonic seconds, the clock of that wait.
    """

    __slots__ = ("held", "lease_wait", "monotonic")

    def __init__(self, lease_wait: float, monotonic: Callable[[], float]) -> None:
        self.lease_wait = lease_wait
        self.monotonic = monotonic
        #: Each claiming layer, its reservation, and the positions of its keys in the read.
        self.held: list[tuple[LayerHealth, Reservation, list[int]]] = []

    def __bool__(self) -> bool:
        return bool(self.held)

    def take(
        self, layer: LayerHealth, klass: type[T], keys: list[object], positions: list[int]
    ) -> dict[int, T]:
        """Reserve the keys ``layer`` missed (at ``positions``); wait briefly for those
        another reader is filling.  Returns what the wait found, by position."""
        try:
            claim = layer.store.reserve(klass, keys)
        except StoreUnavailable as exc:
            layer.failed((klass,), "reserve", exc)
            return {}
        if any(claim.granted):
            self.held.append((layer, claim, positions))
        busy = [(p, key) for p, key, b in zip(positions, keys, claim.busy, strict=True) if b]
        return self._await(layer, klass, busy) if busy else {}

    def _await(
        self, layer: LayerHealth, klass: type[T], busy: list[tuple[int, object]]
    ) -> dict[int, T]:
        """Read ``layer`` again for keys another reader is filling, for at most
        ``lease_wait`` seconds: many readers missing one hot key then cost one database
        read, not one each.  What is still missing is read from slower layers, unfilled."""
        layer.stats.add(klass, "waits", len(busy))
        found: dict[int, T] = {}
        deadline = self.monotonic() + self.lease_wait
        for step in pauses(self.lease_wait):
            remaining = deadline - self.monotonic()
            if not busy or remaining <= 0:
                break
            pause(min(step, remaining))  # in a greenlet, other tasks run meanwhile
            try:
                objs = layer.store.batch_get(klass, [key for _, key in busy])
            except StoreUnavailable as exc:
                layer.failed((klass,), "read", exc)
                break
            found.update(
                (p, obj) for (p, _), obj in zip(busy, objs, strict=True) if obj is not None
            )
            busy = [(p, key) for p, key in busy if p not in found]
        return found

    def fill(self, klass: type, found_in: dict[int, tuple[LayerHealth, object]]) -> None:
        """Fill each claiming layer with what slower layers found at its positions
        (``found_in``: by position, the layer that found it and the object), the deepest
        first, as for every write; release the leases of the rest.  No claim is held
        afterwards."""
        held, self.held = self.held, []
        for layer, claim, positions in reversed(held):
            objs: list[object | None] = []
            for position in positions:
                source, obj = found_in.get(position, (layer, None))
                # What a layer holds uncommitted, or read before the claim, stays out.
                fresh = source is not layer and source.store.cacheable(obj, claim.started)
                objs.append(obj if fresh else None)
            try:
                layer.store.fill(claim, objs)
            except StoreUnavailable as exc:
                layer.failed((klass,), "fill", exc)
            except PayloadError as exc:
                # A store of another make that cannot carry one of them: the reader has
                # them anyway, and its leases expire.
                layer.stats.add(klass, "refused")
                log.warning("sa_stockpyle: layer %s refused a fill: %s", layer.name, exc)
            else:
                layer.stats.add(klass, "fills", sum(obj is not None for obj in objs))
