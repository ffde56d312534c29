"""A store over any mutable mapping, with its conditional writes under one lock:
:class:`BaseDictionaryStore`."""

from __future__ import annotations

import secrets
import threading
from collections import deque
from collections.abc import MutableMapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sa_stockpyle.codec import LifetimeCallback, Marker, now
from sa_stockpyle.stores.base import Clock
from sa_stockpyle.stores.forks import watch_forks
from sa_stockpyle.stores.keyvalue import BaseKeyValueStore
from sa_stockpyle.stores.ops import Op, OpKind

__all__ = ["BaseDictionaryStore"]


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
        # Conditional writes read, then write: every write takes this lock, so none lands
        # between the two.  Reads take no lock (one mapping lookup each).
        self._lock: AbstractContextManager[Any] = threading.Lock()
        # Markers in the order written, so that expired ones are swept from the mapping:
        # (when they expire, their keys), one entry for a commit's tombstones.
        self._markers: deque[tuple[float, Sequence[str]]] = deque()
        #: Whether expired markers must be swept: not in a mapping bounded by itself
        #: (an LRU evicts them in time, and tracking evicted ones would grow unbounded).
        self.sweeps_markers = True
        watch_forks(self)

    def after_fork(self) -> None:
        """In a forked child: a new lock (see :func:`watch_forks`); the in-process stores
        also start empty."""
        self._lock = threading.Lock()

    def _start_afresh(self, dictionary: MutableMapping[str, Any]) -> None:
        """Hold nothing from now on, in ``dictionary`` (a forked child's in-process store:
        what the parent cached is as old as the fork, and hears of no commit)."""
        self.dictionary = dictionary
        self._markers = deque()

    def clear(self) -> None:
        """Drop every record.

        Every class also starts a new namespace generation, so that a reader that took a
        claim before the clear cannot fill anything afterwards: the clear took its
        tombstones too.
        """
        with self._lock:
            if not self.shared_generations:
                held = self.keymaker.tokens
                self.keymaker.set_tokens({key: secrets.token_hex(4) for key in held})
            self.dictionary.clear()
            self._markers.clear()

    def invalidate_class(self, klass: type) -> None:
        """Start a new generation of ``klass`` (and of the classes sharing its tables); an
        in-process store also drops the entries of the old ones (but for hashed long keys,
        which an LRU bound evicts in time)."""
        keymaker = self.keymaker
        shared = self.shared_generations
        before = {} if shared else {c: keymaker.class_prefix(c) for c in keymaker.generations}
        super().invalidate_class(klass)
        old = tuple(p for c, p in before.items() if keymaker.class_prefix(c) != p)
        if old:
            for key in [key for key in list(self.dictionary) if key.startswith(old)]:
                self.dictionary.pop(key, None)

    def read(self, keys: Sequence[str]) -> list[Any]:
        mapping = self.dictionary
        return [mapping.get(key) for key in keys]

    def write(self, items: Sequence[tuple[str, Any, float | None]]) -> None:
        with self._lock:
            self._sweep()
            self._set_items({key: raw for key, raw, _expires_at in items})
            if self.sweeps_markers:
                marker_of = self.marker_of
                self._markers.extend(
                    (expires_at, (key,))
                    for key, raw, expires_at in items
                    if expires_at is not None and marker_of(raw) is not None
                )

    def _set_items(self, values: dict[str, Any]) -> None:
        """Write ``values`` into the mapping; a mapping with a batch call overrides this."""
        mapping = self.dictionary
        for key, raw in values.items():
            mapping[key] = raw

    def apply(self, ops: Sequence[Op]) -> list[Any]:
        mapping = self.dictionary
        clock_now = self.clock()
        results: list[Any] = []
        tomb: tuple[Any, float] | None = None
        write: tuple[Any, float | None] | None
        sweeps = self.sweeps_markers
        with self._lock:
            self._sweep()
            # A commit's batch starts with its removals: their tombstones go in at once.
            lead, tombstone = 0, OpKind.TOMBSTONE
            setting, taking = OpKind.SET, OpKind.LEASE
            fresh: tuple[Any, Any, tuple[Any, float | None] | None] | None = None
            for op in ops:
                if op.kind is not tombstone:
                    break
                lead += 1
            if lead:
                tomb = self._tombstone()
                self._entomb([op.key for op in ops[:lead]], tomb)
                results += [True] * lead
            for op in ops[lead:]:
                kind = op.kind
                if kind is tombstone:
                    # Whatever the key holds; one tombstone, stamped once per call (as in
                    # Redis), serves every key: commits leave many.
                    if tomb is None:
                        tomb = self._tombstone()
                    self._entomb((op.key,), tomb)
                    results.append(True)
                    continue
                current = None if kind is setting else mapping.get(op.key)
                if kind is setting:
                    result, write = True, (op.raw, op.expires_at)  # whatever the key holds
                elif kind is taking and current is None:
                    # A lease where nothing is held (a batch's misses): one decision, and
                    # one stamped lease, for every such key of the batch.
                    if fresh is None or fresh[0] is not op.raw:
                        fresh = (op.raw, *self._decide(op, None, clock_now))
                    result, write = fresh[1], fresh[2]
                else:
                    result, write = self._decide(op, current, clock_now)
                if write is not None:
                    raw, expires_at = write
                    mapping[op.key] = raw
                    if sweeps and expires_at is not None and self.marker_of(raw) is not None:
                        self._markers.append((expires_at, (op.key,)))
                results.append(result)
        return results

    def _entomb(self, keys: Sequence[str], tomb: tuple[Any, float]) -> None:
        """Write the tombstone ``tomb`` (raw value, expiry) at ``keys``, whatever they
        hold (called with the lock held)."""
        self._set_items(dict.fromkeys(keys, tomb[0]))
        if self.sweeps_markers:
            self._markers.append((tomb[1], keys))

    def _decide(
        self, op: Op, current: Any, clock_now: float
    ) -> tuple[Any, tuple[Any, float | None] | None]:
        """The result of ``op`` (any kind but ``"S"`` and ``"T"``, which always write) on a
        key holding ``current``, and what to write there."""
        kind, raw, expires_at, arg = op.kind, op.raw, op.expires_at, op.arg
        marker = None if current is None else self.marker_of(current)
        if marker is not None and marker.expires_at <= clock_now:
            current = marker = None
        write = (raw, expires_at)
        if kind == OpKind.ADD:
            tombstone = marker is not None and marker.lease is None
            older = tombstone and arg is not None and marker is not None and marker.taken < arg
            return (True, write) if current is None or older else (False, None)
        if kind in (OpKind.FILL, OpKind.RELEASE):
            # By token: a lease taken over a tombstone was stored with a longer expiry.
            lease = self.marker_of(arg)
            ours = marker is not None and lease is not None and marker.lease == lease.lease
            if not ours:
                return False, None
            return True, (write if kind == OpKind.FILL else self._tombstone())
        if kind == OpKind.NEWER:
            if current is None:
                return True, write
            if marker is not None:
                # Not written over a marker (a removal there may be newer), but stamped
                # now: a lease holder may have read an older state, and so may a reader
                # that adds.
                return False, self._tombstone()
            held = self.version_held(current)
            return (True, write) if held is None or held < arg else (False, None)
        if (marker is None and current is not None) or (marker is not None and marker.lease):
            return (current, float(clock_now)), None  # a record, or another reader's lease
        lease = self.marker_of(raw)
        if lease is None:  # the store encodes a claim's lease itself
            raise TypeError(f"a lease claim carries no lease marker: {raw!r}")
        # Never shorten a tombstone: it outlives readers that missed before it.
        until = max(lease.expires_at, marker.expires_at if marker is not None else 0.0)
        stamped = Marker(lease.lease, clock_now, until)
        return float(clock_now), (self.encode_marker(stamped), until)

    def _sweep(self) -> None:
        """Drop markers that have expired (called with the lock held)."""
        markers = self._markers
        if not markers or markers[0][0] > self.clock():
            return
        clock_now = self.clock()
        mapping = self.dictionary
        while markers and markers[0][0] <= clock_now:
            for key in markers.popleft()[1]:
                raw = mapping.get(key)
                marker = None if raw is None else self.marker_of(raw)
                if marker is not None and marker.expires_at <= clock_now:
                    mapping.pop(key, None)
