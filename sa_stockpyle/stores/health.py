"""Layer health: one layer of a chain as the chain sees it, the state of each layer kept
apart from the chain's composition.

A :class:`LayerHealth` holds one layer's store and its counts (:class:`Stats`), a
circuit breaker (a layer that failed rests for ``cooldown`` seconds, so that a dead server
costs one timeout per cooldown, not one per request) and a :class:`Backlog` of what the
layer missed meanwhile, made up for before the layer is used again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from sa_stockpyle.errors import StoreUnavailable
from sa_stockpyle.greenlets import cancellation_deferred
from sa_stockpyle.keys import key_spec
from sa_stockpyle.stores.base import BaseStore, Removal
from sa_stockpyle.stores.stats import Stats

__all__ = ["MAX_MISSED", "Backlog", "LayerHealth", "by_primary_key"]

log = logging.getLogger("sa_stockpyle")

#: Beyond this many missed keys, a layer that answers again drops whole classes instead.
MAX_MISSED = 10_000


def by_primary_key(objs: Iterable[object]) -> tuple[list[Removal], list[type]]:
    """Removals of the primary key of each of ``objs``, and the classes of those that
    have no complete primary key to be named by (the whole class must go)."""
    removals: list[Removal] = []
    classes: list[type] = []
    for obj in objs:
        values = {attr: getattr(obj, attr, None) for attr in key_spec(type(obj)).primary}
        if any(value is None for value in values.values()):
            classes.append(type(obj))
        else:
            removals.append((type(obj), values))
    return removals, classes


class Backlog:
    """The writes and invalidations one layer missed while it did not answer.

    Every missed write is kept as a removal of the object's primary key (the entry the
    layer may still hold is stale; removing it makes every alternate key miss too), and
    a missed class invalidation as that class.  Past :data:`MAX_MISSED` keys, the classes
    they belong to are invalidated instead: the backlog stays bounded, at the price of
    more misses.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.removals: dict[tuple[type, tuple[tuple[str, Any], ...]], None] = {}
        self.classes: dict[type, None] = {}
        #: True from take() until the taken backlog is applied or put back: the layer
        #: is not up to date yet, so nobody may use it.
        self.applying = False

    def forked(self) -> None:
        """In a forked child: a new lock, and nothing being applied (the parent's own
        catch-up may apply the same backlog too, which is harmless)."""
        self._lock = threading.Lock()
        self.applying = False

    def __bool__(self) -> bool:
        return bool(self.removals or self.classes or self.applying)

    def add(
        self,
        objs: Iterable[object] = (),
        removals: Iterable[Removal] = (),
        classes: Iterable[type] = (),
    ) -> None:
        """Remember objects, removals and classes the layer missed."""
        by_key, keyless = by_primary_key(objs)
        with self._lock:
            for klass, lookup in [*by_key, *removals]:
                self.removals[klass, tuple(sorted(lookup.items()))] = None
            self.classes.update(dict.fromkeys([*keyless, *classes]))
            if len(self.removals) > MAX_MISSED:
                self.classes.update(dict.fromkeys(klass for klass, _ in self.removals))
                self.removals.clear()

    def take(self) -> tuple[list[Removal], list[type]] | None:
        """Empty the backlog and return what it held; None while another thread is
        applying what it took."""
        with self._lock:
            if self.applying:
                return None
            self.applying = True
            removals = [(klass, dict(items)) for klass, items in self.removals]
            classes = list(self.classes)
            self.removals.clear()
            self.classes.clear()
        return removals, classes


class LayerHealth:
    """One layer of a chain: its store, its counts, its circuit breaker and its backlog.

    ``stats`` counts, per class, the events of the layer (``hits``, ``misses``,
    ``fills``, ``errors``, ``caught_up``, ...: see ``ChainedStore``).

    Parameters:
        store: the layer's store.
        name: the layer's name in logs, such as ``"0:ProcessMemoryStore"``.
        cooldown: seconds the layer rests after a failure: calls skip it meanwhile.
        catch_up_interval: seconds between attempts to make up for what the layer
            missed, made by a background timer while it does not answer.
        monotonic: returns monotonic seconds, the clock of the rests; injected by tests.
        caught_up: called with the store, the removals and the classes a catch-up made
            up for, once they are (to tell other processes).
    """

    def __init__(
        self,
        store: BaseStore,
        name: str,
        cooldown: float,
        catch_up_interval: float,
        monotonic: Callable[[], float],
        caught_up: Callable[[BaseStore, list[Removal], list[type]], None],
    ) -> None:
        self.store = store
        self.name = name
        self.cooldown = cooldown
        self.catch_up_interval = catch_up_interval
        self.monotonic = monotonic
        self._caught_up = caught_up
        self.stats = Stats()
        self.backlog = Backlog()
        #: ``monotonic()`` until which the layer rests; 0: it does not.
        self.resting_until = 0.0
        #: The thread that retries the catch-up while the layer does not answer.
        self.retry: threading.Timer | None = None
        self._closed = False

    def forked(self) -> None:
        """In a forked child: the backlog stays (its entries are as stale in the child),
        the rest and the retry thread stay in the parent."""
        self.backlog.forked()
        self.resting_until = 0.0
        self.retry = None

    def failed(self, classes: Iterable[type], action: str, exc: StoreUnavailable) -> None:
        """The layer failed to do ``action`` for ``classes``: it rests, and the failure is
        counted and logged."""
        self.resting_until = self.monotonic() + self.cooldown
        for klass in classes:
            self.stats.add(klass, "errors")
        log.warning("sa_stockpyle: layer %s failed to %s: %s", self.name, action, exc)

    @property
    def resting(self) -> bool:
        """Whether the layer rests after a failure (asked without counting a skip)."""
        until = self.resting_until
        return bool(until) and self.monotonic() < until

    def usable(self, classes: Iterable[type]) -> bool:
        """Whether the layer may be used now for ``classes``: not resting after a
        failure (a skip is counted), and caught up with what it missed."""
        if self.resting:
            for klass in classes:
                self.stats.add(klass, "skipped")
            return False
        return not self.backlog or self.catch_up(classes)

    def remember(
        self,
        objs: Iterable[object] = (),
        removals: Iterable[Removal] = (),
        classes: Iterable[type] = (),
    ) -> None:
        """Add to what the layer missed, and make sure a catch-up is retried soon: other
        processes must not read the layer's stale entries for long after it is back,
        even if this process does not use it again."""
        self.backlog.add(objs, removals, classes)
        retry = self.retry
        if (retry is None or not retry.is_alive()) and not self._closed:
            retry = threading.Timer(self.catch_up_interval, self._retry_catch_up)
            retry.name = "sa_stockpyle-catch-up"
            retry.daemon = True
            self.retry = retry
            retry.start()

    def _retry_catch_up(self) -> None:
        # A catch-up that fails schedules the next one (catch_up remembers what it took),
        # and so does one another thread is applying now: this timer has no more to do.
        self.retry = None
        self.catch_up(())

    def catch_up(self, classes: Iterable[type]) -> bool:
        """Make up for what the layer missed; False while it still does not answer (the
        failure is counted for ``classes``)."""
        backlog = self.backlog
        if not backlog:
            return True
        taken = backlog.take()
        if taken is None:
            return False  # another thread is catching up right now
        with cancellation_deferred():  # taken, it must be applied or put back
            return self._apply(classes, *taken)

    def _apply(
        self, classes: Iterable[type], removals: list[Removal], invalidated: list[type]
    ) -> bool:
        """Apply a backlog taken by :meth:`catch_up`, or put it back when the layer
        still does not answer."""
        backlog = self.backlog
        try:
            for klass in invalidated:
                self.store.invalidate_class(klass)
            self.store.write_committed([], removals)
        except StoreUnavailable as exc:
            backlog.applying = False
            self.remember(removals=removals, classes=invalidated)
            self.failed(classes, "catch up", exc)
            return False
        except BaseException:
            # Anything else (a bug, a task cancelled as its loop shut down): what was
            # taken goes back, to be applied later, and the layer stays skipped until then.
            backlog.applying = False
            self.remember(removals=removals, classes=invalidated)
            raise
        backlog.applying = False
        self.resting_until = 0.0
        self._caught_up(self.store, removals, invalidated)
        for klass, _ in removals:
            self.stats.add(klass, "caught_up")
        for klass in invalidated:
            self.stats.add(klass, "caught_up")
        log.info(
            "sa_stockpyle: layer %s answers again; removed %d missed keys, invalidated %d classes",
            self.name,
            len(removals),
            len(invalidated),
        )
        return True

    def close(self) -> None:
        """Stop the catch-up retries: a catch-up running now schedules no further one."""
        self._closed = True
        if self.retry is not None:
            self.retry.cancel()
