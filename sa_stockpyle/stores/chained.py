"""ChainedStore: layers of stores that read through and write through."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from sa_stockpyle.errors import ConfigurationError, PayloadError, StoreUnavailable
from sa_stockpyle.keys import key_spec
from sa_stockpyle.stores.base import BaseStore, Finish, Removal, Reservation, finish_write
from sa_stockpyle.stores.coherence import Coherence
from sa_stockpyle.stores.forks import watch_forks
from sa_stockpyle.stores.stats import Stats

__all__ = ["MAX_MISSED", "ChainedStore"]

log = logging.getLogger("sa_stockpyle")

T = TypeVar("T")

#: Beyond this many missed keys, a layer that answers again drops whole classes instead.
MAX_MISSED = 10_000


def _by_primary_key(objs: Iterable[object]) -> tuple[list[Removal], list[type]]:
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


class _Missed:
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
        #: The thread that retries the catch-up while the layer does not answer.
        self.retry: threading.Timer | None = None

    def copied(self) -> _Missed:
        """The same backlog, with a new lock and no retry thread (a forked child's; the
        parent's own catch-up may apply it too, which is harmless)."""
        copy = _Missed()
        copy.removals = dict(self.removals)
        copy.classes = dict(self.classes)
        return copy

    def __bool__(self) -> bool:
        return bool(self.removals or self.classes or self.applying)

    def add(
        self,
        objs: Iterable[object] = (),
        removals: Iterable[Removal] = (),
        classes: Iterable[type] = (),
    ) -> None:
        """Remember objects, removals and classes the layer missed."""
        by_key, keyless = _by_primary_key(objs)
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


class ChainedStore(BaseStore):
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
      miss for reads, a logged and counted failure for writes.  Only the last layer's
      write failures propagate.
    * What a layer missed while it did not answer is made up for before it is used
      again: the entries it may still hold for objects written, deleted or invalidated
      meanwhile are removed, and classes invalidated meanwhile are invalidated, before
      it serves another read.  Until that succeeds the layer stays skipped, so it never
      serves an entry from before or during its outage (see ``_Missed``); then what a
      shared layer caught up on is broadcast, for what other processes copied meanwhile.

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
        self.catch_up_interval = float(catch_up_interval)
        self.cooldown = float(cooldown)
        self._closed = False
        self.stores = layers
        self.layer_stats = [Stats() for _ in layers]
        self._missed = [_Missed() for _ in layers]
        self._resting = [0.0] * len(layers)
        self.coherence = self._coherence(broadcast, channel, max_staleness, heartbeat)
        self._restart_lock = threading.Lock()
        #: Set in a forked child: the broadcast's threads stayed in the parent, and a new
        #: one starts at the child's first use of the chain.
        self._restarting = False
        watch_forks(self)

    def _coherence(
        self, broadcast: bool | None, name: str, max_staleness: float, heartbeat: float
    ) -> Coherence | None:
        local = [store for store in self.stores if store.process_local]
        shared = (store.channel(name) for store in self.stores if not store.process_local)
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
                f"the layers are {[self.layer_name(i) for i in range(len(self.stores))]}"
            )
        return Coherence(channel, local, float(max_staleness), heartbeat=float(heartbeat))

    def after_fork(self) -> None:
        """In a forked child (see :func:`~sa_stockpyle.stores.forks.watch_forks`): new
        locks; a broadcast of its own, started at first use, before anything is served,
        the parent's threads having stayed in the parent.  The in-process layers start
        empty by their own hooks, so nothing served here is older than the fork."""
        self._restart_lock = threading.Lock()
        self._missed = [missed.copied() for missed in self._missed]
        self._resting = [0.0] * len(self.stores)
        old = self.coherence
        if old is not None and not self._closed:
            self.coherence = Coherence(
                old.channel, old.local, old.max_staleness, False, old.heartbeat
            )
            self._restarting = True

    def _restart(self) -> None:
        """Start the broadcast a fork left without threads (see :meth:`after_fork`), and
        empty the process-local layers of other makes than this package's."""
        with self._restart_lock:
            if self._restarting and self.coherence is not None:
                for store in self.coherence.local:
                    store.clear()
                self.coherence.start()
                self._restarting = False

    def layer_name(self, index: int) -> str:
        """A readable name for layer ``index``: ``"0:ProcessMemoryStore"``."""
        return f"{index}:{type(self.stores[index]).__name__}"

    def stats_by_layer(self) -> dict[str, dict[str, dict[str, int]]]:
        """``{layer name: {class name: {event: count}}}`` for every layer."""
        return {self.layer_name(i): stats.as_dict() for i, stats in enumerate(self.layer_stats)}

    def _failed(
        self, index: int, classes: Iterable[type], action: str, exc: StoreUnavailable
    ) -> None:
        # A circuit breaker: a layer that failed rests for ``cooldown`` seconds, so a dead
        # server costs one timeout per cooldown, not one per request.
        self._resting[index] = time.monotonic() + self.cooldown
        for klass in classes:
            self.layer_stats[index].add(klass, "errors")
        log.warning("sa_stockpyle: layer %s failed to %s: %s", self.layer_name(index), action, exc)

    def _remember(
        self,
        index: int,
        objs: Iterable[object] = (),
        removals: Iterable[Removal] = (),
        classes: Iterable[type] = (),
    ) -> None:
        """Add to what layer ``index`` missed, and make sure a catch-up is retried soon:
        other processes must not read the layer's stale entries for long after it is
        back, even if this process does not use it again."""
        missed = self._missed[index]
        missed.add(objs, removals, classes)
        retry = missed.retry
        if (retry is None or not retry.is_alive()) and not self._closed:
            retry = threading.Timer(self.catch_up_interval, self._retry_catch_up, (index,))
            retry.name = "sa_stockpyle-catch-up"
            retry.daemon = True
            missed.retry = retry
            retry.start()

    def _retry_catch_up(self, index: int) -> None:
        # A catch-up that fails schedules the next one (_ready remembers what it took),
        # and so does one another thread is applying now: this timer has no more to do.
        self._missed[index].retry = None
        self._ready(index, ())

    def _usable(self, index: int, classes: Iterable[type]) -> bool:
        """Whether layer ``index`` may be used now: not resting after a failure, and
        caught up with what it missed."""
        if self._restarting:
            self._restart()
        until = self._resting[index]
        if until and time.monotonic() < until:
            for klass in classes:
                self.layer_stats[index].add(klass, "skipped")
            return False
        return not self._missed[index] or self._ready(index, classes)

    def _ready(self, index: int, classes: Iterable[type]) -> bool:
        """Make up for what layer ``index`` missed; False while it still does not answer."""
        missed = self._missed[index]
        if not missed:
            return True
        taken = missed.take()
        if taken is None:
            return False  # another thread is catching up right now
        removals, invalidated = taken
        store = self.stores[index]
        try:
            for klass in invalidated:
                store.invalidate_class(klass)
            store.write_committed([], removals)
        except StoreUnavailable as exc:
            missed.applying = False
            self._remember(index, removals=removals, classes=invalidated)
            self._failed(index, classes, "catch up", exc)
            return False
        missed.applying = False
        self._resting[index] = 0.0
        if self.coherence is not None and not store.process_local:
            # Other processes may have filled their local layers from the stale entries
            # between the layer's return and now: they drop them too.
            self.coherence.publish(removals, invalidated)
        for klass, _ in removals:
            self.layer_stats[index].add(klass, "caught_up")
        for klass in invalidated:
            self.layer_stats[index].add(klass, "caught_up")
        log.info(
            "sa_stockpyle: layer %s answers again; removed %d missed keys, invalidated %d classes",
            self.layer_name(index),
            len(removals),
            len(invalidated),
        )
        return True

    # -- reads ------------------------------------------------------------------------
    #
    # A layer that misses takes a claim (BaseStore.reserve: a lease per key) before any
    # slower layer is read, and is filled through that claim only (BaseStore.fill): a
    # commit that removes or rewrites the key in between voids the fill, so a reader that
    # read the database before a commit can never write the old state back.  Only state
    # the source layer read after the claim was taken fills it (BaseStore.cacheable).

    def get(self, klass: type[T], key: object) -> T | None:
        """Return the ``klass`` object with ``key`` from the first layer that has it."""
        # The one-key form of batch_get, without its lists: it is the hot path.
        key_spec(klass).lookup(key)  # bad input raises here, before any layer is asked
        claims: list[tuple[int, Reservation, list[int]]] = []
        last = len(self.stores) - 1
        for index, store in enumerate(self.stores):
            if not self._usable(index, (klass,)):
                continue
            try:
                obj = store.get(klass, key)
            except StoreUnavailable as exc:
                self._failed(index, (klass,), "read", exc)
                continue
            if obj is None and index != last:
                obj = self._claim(index, klass, [key], [0], claims).get(0)
            if obj is None:
                self.layer_stats[index].add(klass, "misses")
                continue
            self.layer_stats[index].add(klass, "hits")
            if claims:
                self._fill(klass, claims, {0: (index, obj)})
                claims = []
            adopted = self._adopt(index, klass, [obj])[0]
            if adopted is not None:
                return adopted
        if claims:
            self._fill(klass, claims, {})
        return None

    def batch_get(self, klass: type[T], keys: Iterable[object]) -> list[T | None]:
        """Look ``keys`` up layer by layer, filling faster layers with what is found."""
        keys = list(keys)
        spec = key_spec(klass)
        for key in keys:  # bad input raises here, before any layer is asked or filled
            spec.lookup(key)
        results: list[T | None] = [None] * len(keys)
        found_in: dict[int, tuple[int, object]] = {}
        claims: list[tuple[int, Reservation, list[int]]] = []
        missing = list(range(len(keys)))
        last = len(self.stores) - 1
        for index, store in enumerate(self.stores):
            stats = self.layer_stats[index]
            if not self._usable(index, (klass,)):
                continue
            try:
                found = store.batch_get(klass, [keys[i] for i in missing])
            except StoreUnavailable as exc:
                self._failed(index, (klass,), "read", exc)
                continue
            hits = {i: obj for i, obj in zip(missing, found, strict=True) if obj is not None}
            missed = [i for i in missing if i not in hits]
            if missed and index != last:
                hits |= self._claim(index, klass, [keys[i] for i in missed], missed, claims)
            stats.add(klass, "hits", len(hits))
            stats.add(klass, "misses", len(missing) - len(hits))
            if hits:
                positions = [i for i in missing if i in hits]
                objs = [hits[i] for i in positions]
                if claims:  # what faster layers claimed is filled from here
                    found_in.update(
                        (i, (index, obj)) for i, obj in zip(positions, objs, strict=True)
                    )
                adopted = self._adopt(index, klass, objs)
                for position, obj in zip(positions, adopted, strict=True):
                    results[position] = obj
                missing = [i for i in missing if results[i] is None]
            if not missing:
                break
        if claims:
            self._fill(klass, claims, found_in)
        return results

    def _claim(
        self,
        index: int,
        klass: type[T],
        keys: list[object],
        positions: list[int],
        claims: list[tuple[int, Reservation, list[int]]],
    ) -> dict[int, T]:
        """Reserve the keys layer ``index`` missed (at ``positions``); wait briefly for those
        another reader is filling.  Returns what the wait found, by position."""
        store = self.stores[index]
        try:
            claim = store.reserve(klass, keys)
        except StoreUnavailable as exc:
            self._failed(index, (klass,), "reserve", exc)
            return {}
        if any(claim.granted):
            claims.append((index, claim, positions))
        busy = [(p, key) for p, key, b in zip(positions, keys, claim.busy, strict=True) if b]
        return self._await(index, klass, busy) if busy else {}

    def _await(self, index: int, klass: type[T], busy: list[tuple[int, object]]) -> dict[int, T]:
        """Read layer ``index`` again for keys another reader is filling, for at most
        ``lease_wait`` seconds: many readers missing one hot key then cost one database
        read, not one each.  What is still missing is read from slower layers, unfilled."""
        store = self.stores[index]
        self.layer_stats[index].add(klass, "waits", len(busy))
        found: dict[int, T] = {}
        deadline = time.monotonic() + self.lease_wait
        delay = 0.001
        while busy:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(delay, remaining))
            delay *= 2
            try:
                objs = store.batch_get(klass, [key for _, key in busy])
            except StoreUnavailable as exc:
                self._failed(index, (klass,), "read", exc)
                break
            found.update(
                (p, obj) for (p, _), obj in zip(busy, objs, strict=True) if obj is not None
            )
            busy = [(p, key) for p, key in busy if p not in found]
        return found

    def _fill(
        self,
        klass: type,
        claims: list[tuple[int, Reservation, list[int]]],
        found_in: dict[int, tuple[int, object]],
    ) -> None:
        """Fill each claiming layer with what slower layers found at its positions, the
        deepest first, as for every write; release the leases of the rest."""
        for index, claim, positions in reversed(claims):
            objs: list[object | None] = []
            for position in positions:
                source, obj = found_in.get(position, (index, None))
                # What a layer holds uncommitted, or read before the claim, stays out.
                fresh = source > index and self.stores[source].cacheable(obj, claim.started)
                objs.append(obj if fresh else None)
            try:
                self.stores[index].fill(claim, objs)
            except StoreUnavailable as exc:
                self._failed(index, (klass,), "fill", exc)
            except PayloadError as exc:
                # A store of another make that cannot carry one of them: the reader has
                # them anyway, and its leases expire.
                self.layer_stats[index].add(klass, "refused")
                log.warning(
                    "sa_stockpyle: layer %s refused a fill: %s", self.layer_name(index), exc
                )
            else:
                self.layer_stats[index].add(klass, "fills", sum(obj is not None for obj in objs))

    def reserve(self, klass: type, keys: Sequence[object]) -> Reservation:
        """Reserve ``keys`` in every layer (for a chain used as a layer of another)."""
        keys = list(keys)
        claims: list[Reservation | None] = []
        for index, store in enumerate(self.stores):
            claim = None
            if self._usable(index, (klass,)):
                try:
                    claim = store.reserve(klass, keys)
                except StoreUnavailable as exc:
                    self._failed(index, (klass,), "reserve", exc)
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
        for index in reversed(range(len(self.stores))):
            claim = claims[index]
            if claim is None:
                continue
            try:
                self.stores[index].fill(claim, objs)
            except StoreUnavailable as exc:
                self._failed(index, {type(obj) for obj in objs if obj is not None}, "fill", exc)

    def _adopt(self, found_in: int, klass: type[T], hits: list[T]) -> list[T | None]:
        """Hand ``hits`` to each layer below ``found_in``; return what the last one gives
        back (None where it refuses one)."""
        adopted: list[Any] = hits
        for below in self.stores[found_in + 1 :]:
            adopted = below.adopt(klass, adopted)
        return adopted

    # -- writes -----------------------------------------------------------------------

    def _write(self, action: str, objs: Iterable[object]) -> None:
        objs = list(objs)
        for obj in objs:  # a class without keys raises here, before any layer changes
            key_spec(type(obj))
        # The key values themselves are checked by each layer, the last first: so bad
        # values raise before anything changes, and a database below may still assign
        # a primary key (autoincrement) that the layers above then store under.
        last = len(self.stores) - 1
        puts = objs if action == "put" else []
        deletes = [] if action == "put" else objs
        classes = {type(obj) for obj in objs}
        for index in reversed(range(len(self.stores))):
            store = self.stores[index]
            try:
                if index != last and not self._usable(index, classes):
                    self._remember(index, objs)
                    continue
                if puts:
                    refused = self._put_what_fits(index, puts)
                    if refused:
                        # Removed here and above, as the last layer may hold a newer state.
                        gone = {id(obj) for obj in refused}
                        puts = [obj for obj in puts if id(obj) not in gone]
                        deletes = [*deletes, *refused]
                if deletes:
                    store.batch_delete(deletes)
            except StoreUnavailable as exc:
                if index == last:
                    raise
                self._remember(index, objs)
                self._failed(index, classes, action, exc)
            # State a layer holds uncommitted must not reach the faster layers above it:
            # they drop the object instead (the ORM plugin writes it once committed).
            held_back = [obj for obj in puts if not store.cacheable(obj)]
            if held_back:
                puts = [obj for obj in puts if store.cacheable(obj)]
                deletes = [*deletes, *held_back]
        self._broadcast(objs)

    def _put_what_fits(self, index: int, objs: list[object]) -> list[object]:
        """Put ``objs`` into layer ``index``; return those it cannot carry (a value its
        payloads cannot hold), logged and counted as ``refused``.  The last layer's
        refusal raises instead: nothing has changed yet."""
        store = self.stores[index]
        try:
            store.batch_put(objs)
        except PayloadError:
            if index == len(self.stores) - 1:
                raise
        else:
            return []
        refused = []
        for obj in objs:  # one call each, only when a batch was refused
            try:
                store.put(obj)
            except PayloadError as exc:
                refused.append(obj)
                self.layer_stats[index].add(type(obj), "refused")
                log.warning(
                    "sa_stockpyle: layer %s cannot carry a %s; removed there instead: %s",
                    self.layer_name(index),
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
        the other, and tells other processes (see :meth:`BaseStore.start_committed`)."""
        classes = {type(obj) for obj in puts} | {klass for klass, _ in removals}
        waiting = list(reversed(range(len(self.stores))))
        started = None
        while waiting and started is None:
            started = self._start_layer(waiting.pop(0), classes, puts, removals)

        def finish() -> None:
            finish_write(started)
            for index in waiting:
                finish_write(self._start_layer(index, classes, puts, removals))
            self._broadcast(puts, removals)

        return finish

    def _start_layer(
        self, index: int, classes: set[type], puts: Sequence[object], removals: Sequence[Removal]
    ) -> Finish | None:
        """Start writing a commit to layer ``index``: None when done, else the call that
        finishes it.  Neither raises for an unavailable layer: it is logged, counted and
        remembered for its catch-up."""

        def failed(exc: StoreUnavailable) -> None:
            self._failed(index, classes, "write a commit", exc)
            self._remember(index, puts, removals)

        try:
            if not self._usable(index, classes):
                self._remember(index, puts, removals)
                return None
            finish = self.stores[index].start_committed(puts, removals)
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

    def invalidate_class(self, klass: type) -> None:
        """Make every entry of ``klass`` unreachable in every layer; an unavailable layer
        is logged and counted."""
        for index in reversed(range(len(self.stores))):
            try:
                if self._usable(index, (klass,)):
                    self.stores[index].invalidate_class(klass)
                    continue
            except StoreUnavailable as exc:
                self._failed(index, (klass,), "invalidate a class", exc)
            self._remember(index, classes=(klass,))
        if self._restarting:
            self._restart()
        if self.coherence is not None:
            self.coherence.publish([], [klass])

    def _broadcast(self, objs: Sequence[object], removals: Sequence[Removal] = ()) -> None:
        """Tell other processes' local layers to drop ``objs`` and ``removals``."""
        if self._restarting:
            self._restart()
        if self.coherence is not None:
            by_key, keyless = _by_primary_key(objs)
            self.coherence.publish([*removals, *by_key], keyless)

    def close(self) -> None:
        """Stop the broadcast and the catch-up retries, and close every layer."""
        self._closed = True  # first: a catch-up running now schedules no further retry
        if self.coherence is not None:
            self.coherence.close()
        for missed in self._missed:
            if missed.retry is not None:
                missed.retry.cancel()
        for store in self.stores:
            store.close()
