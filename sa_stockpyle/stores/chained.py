"""ChainedStore: layers of stores that read through and write through."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from sa_stockpyle.errors import ConfigurationError, PayloadError, StoreUnavailable
from sa_stockpyle.keys import key_spec
from sa_stockpyle.stores.base import BaseStore, Finish, Removal, Start, finish_write
from sa_stockpyle.stores.broadcast import Broadcast
from sa_stockpyle.stores.chain_reads import ChainReads, First
from sa_stockpyle.stores.coherence import Coherence
from sa_stockpyle.stores.forks import watch_forks
from sa_stockpyle.stores.health import MAX_MISSED, LayerHealth
from sa_stockpyle.stores.stats import Stats

__all__ = ["MAX_MISSED", "ChainedStore", "First"]

log = logging.getLogger("sa_stockpyle")

T = TypeVar("T")


class ChainedStore(ChainReads, BaseStore):
    """Stores layered fastest first, e.g. ``[memory, redis, database]``; itself a Store.

    * ``get``/``batch_get`` try the layers in order and ask each only for the keys still
      missing; objects found in layer *i* are written back into layers ``0..i-1``.
    * ``put``/``delete`` and their batch forms go through every layer, the most
      persistent (last) first, so a failure of the last layer raises before any cache
      holds something it does not.  An object a layer reports as not
      :meth:`~BaseStore.cacheable` (not committed yet) is deleted from the layers above
      it instead of written.
    * Hits are handed to :meth:`~BaseStore.adopt` of every layer below the one that
      found them (the SQLAlchemy store attaches them to its session), and only
      cacheable hits fill the faster layers.
    * A layer that raises :class:`~sa_stockpyle.errors.StoreUnavailable` is skipped: a
      miss for reads, a logged and counted failure for writes.  Only the system of
      record's (the last layer's) write failures propagate.
    * What a layer missed while it did not answer is made up for before it is used
      again: the entries it may still hold for objects written, deleted or invalidated
      meanwhile are removed, and classes invalidated meanwhile are invalidated, before
      it serves another read.  Until that succeeds the layer stays skipped, so it never
      serves an entry from before or during its outage (see
      :class:`~sa_stockpyle.stores.health.Backlog`); then what a shared layer caught up on
      is broadcast, for what other processes copied meanwhile.

    ``layer_stats[i]`` counts, per class, the ``hits``, ``misses``, ``fills``, ``errors``
    and ``caught_up`` (missed keys made up for) of layer *i*; ``stats_by_layer()`` returns
    them all by layer name.

    Parameters:
        stores: the layers, fastest first.
        lease_wait: seconds a reader waits for another reader that is filling the key it
            missed, before it reads the slower layers itself (and fills nothing).
        catch_up_interval: seconds between attempts to make up for what a layer missed,
            made by a background timer while the layer does not answer.
        broadcast: publish every write and commit on a channel of a shared layer, and
            remove what other processes publish from this chain's process-local layers,
            if it has any (see :class:`~sa_stockpyle.stores.coherence.Coherence`).  None
            (the default): on when a layer has a channel (a ``RedisStore``), off otherwise.
        channel: the name of that channel (a ``RedisStore`` puts its key prefix and
            database number in front).
        max_staleness: while the subscription is down, process-local layers are cleared
            this often (seconds), so they serve nothing older.
        heartbeat: seconds without a message after which the broadcast sends a heartbeat,
            so that other processes notice its lost messages even when it goes quiet.
        cooldown: seconds a layer that failed is skipped (reads miss it, writes are
            remembered for its catch-up) before a call tries it again; 0 tries every call.
        monotonic: returns monotonic seconds, the clock of rests, lease waits and the
            broadcast's heartbeats; injected by tests.
    """

    def __init__(
        self,
        stores: Sequence[BaseStore],
        lease_wait: float = 0.05,
        catch_up_interval: float = 0.5,
        broadcast: bool | None = None,
        channel: str = "invalidations",
        max_staleness: float = 2.0,
        cooldown: float = 1.0,
        heartbeat: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        layers = list(stores)
        if not layers or not all(isinstance(store, BaseStore) for store in layers):
            raise ConfigurationError(
                f"ChainedStore needs a non-empty list of stores, got {stores!r}"
            )
        for name, value, low in (
            ("lease_wait", lease_wait, 0.0),
            ("catch_up_interval", catch_up_interval, 0.001),
            ("max_staleness", max_staleness, 0.001),
            ("cooldown", cooldown, 0.0),
            ("heartbeat", heartbeat, 0.001),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (low <= value <= 3600)
            ):
                raise ConfigurationError(
                    f"ChainedStore {name}={value!r}; expected seconds from {low} to 3600"
                )
        self.lease_wait = float(lease_wait)
        self.monotonic = monotonic
        self._closed = False
        self.stores = layers
        rest, interval = float(cooldown), float(catch_up_interval)
        #: Each layer's health, fastest first.
        self.health = [
            LayerHealth(store, self.layer_name(i), rest, interval, monotonic, self._caught_up)
            for i, store in enumerate(layers)
        ]
        #: The system of record: the last layer.  Its reads are the truth, so it is never
        #: claimed; its write failures raise.
        self.record = self.health[-1]
        #: The invalidation broadcast, if on (see :mod:`~sa_stockpyle.stores.broadcast`).
        self.broadcast = Broadcast.of(
            layers,
            [layer.name for layer in self.health],
            broadcast,
            channel,
            float(max_staleness),
            float(heartbeat),
            monotonic,
            self._waits_at_first_use,
        )
        watch_forks(self)

    #: Whether the chain waits for its broadcast's first subscription at its first use
    #: rather than when it is built (the broadcast's threads start at once either way):
    #: a chain built on an event loop's thread (``AsyncChainedStore``) waits where the
    #: wait can await.
    _waits_at_first_use = False

    @property
    def coherence(self) -> Coherence | None:
        """The broadcast's :class:`~sa_stockpyle.stores.coherence.Coherence`, if on."""
        return None if self.broadcast is None else self.broadcast.coherence

    @property
    def cooldown(self) -> float:
        """Seconds a layer that failed is skipped (the constructor's ``cooldown``)."""
        return self.record.cooldown

    @property
    def catch_up_interval(self) -> float:
        """Seconds between catch-up attempts (the constructor's ``catch_up_interval``)."""
        return self.record.catch_up_interval

    @property
    def layer_stats(self) -> list[Stats]:
        """The counts of each layer, fastest first: ``layer_stats[i].count(User, "hits")``."""
        return [layer.stats for layer in self.health]

    def after_fork(self) -> None:
        """In a forked child (see :func:`~sa_stockpyle.stores.forks.watch_forks`): new
        locks; a broadcast of its own, started at first use, before anything is served,
        the parent's threads having stayed in the parent.  The in-process layers start
        empty by their own hooks, so nothing served here is older than the fork."""
        for layer in self.health:
            layer.forked()
        if self.broadcast is not None and not self._closed:
            self.broadcast.forked()

    def layer_name(self, index: int) -> str:
        """A readable name for layer ``index``: ``"0:ProcessMemoryStore"``."""
        return f"{index}:{type(self.stores[index]).__name__}"

    def stats_by_layer(self) -> dict[str, dict[str, dict[str, int]]]:
        """``{layer name: {class name: {event: count}}}`` for every layer."""
        return {layer.name: layer.stats.as_dict() for layer in self.health}

    def _caught_up(self, store: BaseStore, removals: list[Removal], classes: list[type]) -> None:
        if self.broadcast is not None:
            self.broadcast.caught_up(store, removals, classes)

    # -- writes -----------------------------------------------------------------------

    def _write(self, action: str, objs: Iterable[object]) -> None:
        objs = list(objs)
        for obj in objs:  # a class without keys raises here, before any layer changes
            key_spec(type(obj))
        # The key values themselves are checked by each layer, the last first: so bad
        # values raise before anything changes, and a database below may still assign
        # a primary key (autoincrement) that the layers above then store under.
        puts = objs if action == "put" else []
        deletes = [] if action == "put" else objs
        classes = {type(obj) for obj in objs}
        for layer in reversed(self.health):
            store = layer.store
            try:
                if layer is not self.record and not self._usable(layer, classes):
                    layer.remember(objs)
                    continue
                if puts:
                    refused = self._put_what_fits(layer, puts)
                    if refused:
                        # Removed here and above, as the last layer may hold a newer state.
                        gone = {id(obj) for obj in refused}
                        puts = [obj for obj in puts if id(obj) not in gone]
                        deletes = [*deletes, *refused]
                if deletes:
                    store.batch_delete(deletes)
            except StoreUnavailable as exc:
                if layer is self.record:
                    raise
                layer.remember(objs)
                layer.failed(classes, action, exc)
            # State a layer holds uncommitted must not reach the faster layers above it:
            # they drop the object instead (the ORM plugin writes it once committed).
            held_back = [obj for obj in puts if not store.cacheable(obj)]
            if held_back:
                puts = [obj for obj in puts if store.cacheable(obj)]
                deletes = [*deletes, *held_back]
        self._broadcast(objs)

    def _put_what_fits(self, layer: LayerHealth, objs: list[object]) -> list[object]:
        """Put ``objs`` into ``layer``; return those it cannot carry (a value its
        payloads cannot hold), logged and counted as ``refused``.  The system of record's
        refusal raises instead: nothing has changed yet."""
        try:
            layer.store.batch_put(objs)
        except PayloadError:
            if layer is self.record:
                raise
        else:
            return []
        refused = []
        for obj in objs:  # one call each, only when a batch was refused
            try:
                layer.store.put(obj)
            except PayloadError as exc:
                refused.append(obj)
                layer.stats.add(type(obj), "refused")
                log.warning(
                    "sa_stockpyle: layer %s cannot carry a %s; removed there instead: %s",
                    layer.name,
                    type(obj).__qualname__,
                    exc,
                )
        return refused

    def put(self, obj: object) -> None:
        """Store ``obj`` in every layer, the last first."""
        self._write("put", (obj,))

    def batch_put(self, objs: Iterable[object]) -> None:
        """Store ``objs`` in every layer with one batch call per layer, the last first."""
        self._write("put", objs)

    def delete(self, obj: object) -> None:
        """Remove ``obj`` from every layer, the last first."""
        self._write("delete", (obj,))

    def batch_delete(self, objs: Iterable[object]) -> None:
        """Remove ``objs`` from every layer with one batch call per layer, the last first."""
        self._write("delete", objs)

    def write_committed(self, puts: Sequence[object], removals: Sequence[Removal]) -> None:
        """Reflect a database commit in every layer, the last first; never raises for a
        layer that is unavailable (it is logged and counted)."""
        self.start_committed(puts, removals)()

    def start_committed(self, puts: Sequence[object], removals: Sequence[Removal]) -> Finish:
        """Begin :meth:`write_committed`: the first layer written (the slowest) starts at
        once; the call returned waits for it, then writes the faster layers, one after
        the other, and tells other processes (see :meth:`BaseStore.start_committed`).
        The in-process layers' writes are built while the first one's reply is on its
        way."""
        return self._committed(puts, removals)()

    def prepare_committed(self, puts: Sequence[object], removals: Sequence[Removal]) -> Start:
        """Build the writes of the layers other processes share now, and return the call
        that starts them as :meth:`start_committed` does (see
        :meth:`BaseStore.prepare_committed`); an in-process layer's write is built when
        the first layer's reply is on its way, the time it would otherwise wait.  A
        subclass whose ``start_committed`` is its own gets it called whole, by the call
        returned."""
        if type(self).start_committed is not ChainedStore.start_committed:
            return super().prepare_committed(puts, removals)
        return self._committed(puts, removals)

    def _committed(
        self, puts: Sequence[object], removals: Sequence[Removal]
    ) -> Callable[[], Finish]:
        """The write of a commit to every layer, the shared layers' built now, and the
        call that starts it."""
        classes = {type(obj) for obj in puts} | {klass for klass, _ in removals}
        layers = list(reversed(self.health))
        starts: list[Start | None] = [None] * len(layers)
        broadcast = self.broadcast
        message = None if broadcast is None else broadcast.message(puts, removals)

        def prepared(index: int) -> Start:
            start = starts[index]
            if start is None:
                start = starts[index] = self._prepare_layer(layers[index], classes, puts, removals)
            return start

        for index, layer in enumerate(layers):
            if not layer.store.process_local:
                prepared(index)

        def start() -> Finish:
            index, started = 0, None
            while index < len(layers) and started is None:
                started = prepared(index)()
                index += 1
            rest = [prepared(later) for later in range(index, len(layers))]

            def finish() -> None:
                finish_write(started)
                for later in rest:
                    finish_write(later())
                if broadcast is not None and message is not None:
                    broadcast.send(*message)

            return finish

        return start

    def _prepare_layer(
        self,
        layer: LayerHealth,
        classes: set[type],
        puts: Sequence[object],
        removals: Sequence[Removal],
    ) -> Start:
        """Build a commit's write to ``layer``, and return the call that starts it: None
        when done, else the call that finishes it.  A layer that rests is not asked;
        one that fails here is asked again by the call returned, which counts, logs and
        remembers what an unavailable layer missed (nothing is before it is made)."""
        prepared: Start | None = None
        if not layer.resting:
            try:
                prepared = layer.store.prepare_committed(puts, removals)
            except Exception:  # raised again, and counted, by the start's own attempt
                prepared = None

        def failed(exc: StoreUnavailable) -> None:
            layer.failed(classes, "write a commit", exc)
            layer.remember(puts, removals)

        def start() -> Finish | None:
            try:
                if not self._usable(layer, classes):
                    layer.remember(puts, removals)
                    return None
                finish = (prepared or layer.store.prepare_committed(puts, removals))()
            except StoreUnavailable as exc:
                failed(exc)
                return None
            if finish is None:
                return None

            def guarded() -> None:
                try:
                    finish()
                except StoreUnavailable as exc:
                    failed(exc)

            return guarded

        return start

    def invalidate_class(self, klass: type) -> None:
        """Make every entry of ``klass`` unreachable in every layer; an unavailable layer
        is logged and counted."""
        for layer in reversed(self.health):
            try:
                if self._usable(layer, (klass,)):
                    layer.store.invalidate_class(klass)
                    continue
            except StoreUnavailable as exc:
                layer.failed((klass,), "invalidate a class", exc)
            layer.remember(classes=(klass,))
        self._broadcast([], classes=[klass])

    def _broadcast(
        self,
        objs: Sequence[object],
        removals: Sequence[Removal] = (),
        classes: Sequence[type] = (),
    ) -> None:
        """Tell other processes' local layers to drop ``objs``, ``removals`` and ``classes``."""
        if self.broadcast is not None:
            self.broadcast.publish(objs, removals, classes)

    def close(self) -> None:
        """Stop the catch-up retries and the broadcast, and close every layer."""
        self._closed = True
        for layer in self.health:  # first: a catch-up running now schedules no retry
            layer.close()
        if self.broadcast is not None:
            self.broadcast.close()
        for store in self.stores:
            store.close()
