"""A chain's invalidation broadcast: :class:`Broadcast`, its :class:`Coherence` built from
the chain's layers, started when the chain is built or at its first use (again in a
forked child), and told what the chain wrote."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from sa_stockpyle.errors import ConfigurationError
from sa_stockpyle.greenlets import cancellation_deferred, wait_until
from sa_stockpyle.stores.base import BaseStore, Removal
from sa_stockpyle.stores.coherence import Coherence
from sa_stockpyle.stores.health import by_primary_key

__all__ = ["Broadcast"]


class Broadcast:
    """The broadcast of one chain: :attr:`coherence`, and when it starts.

    Parameters:
        coherence: the chain's, not started yet.
        waits_at_first_use: start its threads now, but wait for their first
            subscription at the chain's first use (:meth:`ready`) rather than here: a
            chain built on an event loop's thread (``AsyncChainedStore``) waits where
            the wait can await.
    """

    def __init__(self, coherence: Coherence, waits_at_first_use: bool) -> None:
        self.coherence = coherence
        self._lock = threading.Lock()
        #: Set while the chain's first use must start the broadcast (in a forked child:
        #: the threads stayed in the parent) or wait for its first subscription.
        self._pending = waits_at_first_use
        #: Set in a forked child: its first use also empties foreign in-process layers.
        self._forked = False
        #: Set while one caller starts the broadcast; the others wait for it.
        self._starting: threading.Event | None = None
        coherence.start(wait=not waits_at_first_use)

    @classmethod
    def of(
        cls,
        stores: Sequence[BaseStore],
        names: Sequence[str],
        broadcast: bool | None,
        name: str,
        max_staleness: float,
        heartbeat: float,
        monotonic: Callable[[], float] = time.monotonic,
        waits_at_first_use: bool = False,
    ) -> Broadcast | None:
        """The broadcast of a chain of ``stores`` (their layer ``names``, for errors; see
        ``ChainedStore``'s ``broadcast``): None when off, on by default when a layer has
        a channel."""
        local = [store for store in stores if store.process_local]
        shared = (store.channel(name) for store in stores if not store.process_local)
        channel = next((found for found in shared if found is not None), None)
        if broadcast is None:
            # Publishing matters even without a local layer here: other processes' local
            # layers must hear this chain's commits.
            broadcast = channel is not None
        if not broadcast:
            return None
        if channel is None:
            raise ConfigurationError(
                "ChainedStore(broadcast=True) needs a layer with a channel (a RedisStore); "
                f"the layers are {list(names)}"
            )
        coherence = Coherence(channel, local, max_staleness, False, heartbeat, monotonic)
        return cls(coherence, waits_at_first_use)

    def forked(self) -> None:
        """In a forked child: a broadcast of its own, started at the chain's first use,
        before anything is served (the parent's threads stayed in the parent)."""
        self._lock = threading.Lock()
        self._starting = None
        self.coherence = self.coherence.forked()
        self._pending = self._forked = True

    def ready(self) -> None:
        """Before the chain serves: start the broadcast a fork left without threads
        (having emptied the process-local layers of other makes than this package's),
        or wait for the first subscription of one that waits for it at first use.

        Concurrent first uses wait for the one that starts it.  No lock is held while it
        waits for its subscription: in a greenlet, other tasks of the thread run then."""
        if not self._pending:
            return
        with self._lock:
            starting = self._starting
            first = starting is None
            if starting is None:
                starting = self._starting = threading.Event()
        if not first:
            wait_until(starting, 5)
            return
        try:
            with cancellation_deferred():  # started threads cannot start again
                coherence = self.coherence
                if self._pending:
                    if self._forked:
                        for store in coherence.local:
                            store.clear()
                        coherence.start()
                    else:
                        coherence.listening()
                    self._pending = False
        finally:
            with self._lock:
                self._starting = None  # a start that raised is tried again
            starting.set()

    @property
    def pending(self) -> bool:
        """Whether :meth:`ready` still has to start or wait for the broadcast."""
        return self._pending

    def publish(
        self,
        objs: Sequence[object],
        removals: Sequence[Removal] = (),
        classes: Sequence[type] = (),
    ) -> None:
        """Tell other processes' local layers to drop ``objs``, ``removals`` and ``classes``."""
        self.send(*self.message(objs, removals, classes))

    def message(
        self,
        objs: Sequence[object],
        removals: Sequence[Removal] = (),
        classes: Sequence[type] = (),
    ) -> tuple[list[Removal], list[type]]:
        """What :meth:`publish` sends for ``objs``, ``removals`` and ``classes``: the
        removals and the classes to drop (an object without a primary key, its class)."""
        by_key, keyless = by_primary_key(objs)
        return [*removals, *by_key], [*keyless, *classes]

    def send(self, removals: Sequence[Removal], classes: Sequence[type]) -> None:
        """Publish a :meth:`message`."""
        self.ready()
        self.coherence.publish(removals, classes)

    def caught_up(self, store: BaseStore, removals: list[Removal], classes: list[type]) -> None:
        """A layer made up for what it missed: when it is shared, other processes may have
        filled their local layers from its stale entries between its return and now,
        and drop them too."""
        if not store.process_local:
            self.coherence.publish(removals, classes)

    def close(self) -> None:
        """Send what is queued, then stop the broadcast's threads."""
        self.coherence.close()
