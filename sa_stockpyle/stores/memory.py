"""In-process stores: ProcessMemoryStore (shared by threads) and ThreadLocalStore."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from typing import Any, cast

from sa_stockpyle.codec import LifetimeCallback, now
from sa_stockpyle.errors import ConfigurationError
from sa_stockpyle.stores.base import Clock
from sa_stockpyle.stores.dictionary import BaseDictionaryStore
from sa_stockpyle.stores.ops import Op

log = logging.getLogger("sa_stockpyle")

__all__ = ["LRUDict", "ProcessMemoryStore", "ThreadLocalDict", "ThreadLocalStore"]


class LRUDict(MutableMapping[str, Any]):
    """A thread-safe mapping that holds at most ``max_items`` keys, evicting the least
    recently used.

    Built on :class:`collections.OrderedDict`, whose ``move_to_end`` and ``popitem`` are
    O(1) in C; a third-party LRU (cachetools) would add a dependency and be slower.
    """

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self._data: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def __getitem__(self, key: str) -> Any:
        with self._lock:
            value = self._data[key]
            self._data.move_to_end(key)
            return value

    def get(self, key: str, default: Any = None) -> Any:
        """Return the value of ``key`` (marking it used) or ``default``."""
        with self._lock:
            value = self._data.get(key, default)
            if value is not default:
                self._data.move_to_end(key)
            return value

    def __setitem__(self, key: str, value: Any) -> None:
        with self._lock:
            data = self._data
            if key in data:
                data.move_to_end(key)
            else:
                # Evict first: the mapping never holds more than max_items, not even for
                # the moment between an insert and its eviction (len() takes no lock).
                while len(data) >= self.max_items:
                    data.popitem(last=False)
            data[key] = value

    def __delitem__(self, key: str) -> None:
        with self._lock:
            del self._data[key]

    def pop(self, key: str, default: Any = None) -> Any:
        """Remove ``key`` and return its value, or ``default`` when absent."""
        with self._lock:
            return self._data.pop(key, default)

    def clear(self) -> None:
        """Remove every key at once (MutableMapping's default pops them one by one)."""
        with self._lock:
            self._data.clear()

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._data))

    def __len__(self) -> int:
        return len(self._data)


class ProcessMemoryStore(BaseDictionaryStore):
    """Objects in this process's memory, shared by its threads.

    Objects are stored as snapshots and every ``get`` builds a new instance, so no two
    callers ever share a live object and mutating a result never changes the cache.

    **Unbounded unless** ``max_items`` **is set**: without it the store keeps every object
    it is given until it is deleted, expires or the store is cleared, so it grows with
    every distinct object cached.  Such a store logs one warning when it first holds
    :attr:`unbounded_warning` cache keys.

    Parameters:
        polymorphic: also store each object under every base class that declares
            ``__stockpyle_keys__`` (see :class:`BaseKeyValueStore`).
        lifetime_cb: ``lifetime_cb(obj)`` returns the object's lifetime; see
            :class:`BaseKeyValueStore`.
        prefix: the first part of every cache key.
        clock: returns the current Unix time; injected by tests.
        max_items: bound the number of cache keys held (an object with two declared keys
            uses two); the least recently used are evicted.  None: unbounded.
    """

    shared_generations = False
    process_local = True
    #: How many cache keys a store without ``max_items`` holds when it logs its warning.
    unbounded_warning = 100_000

    def __init__(
        self,
        polymorphic: bool = False,
        lifetime_cb: LifetimeCallback | None = None,
        max_items: int | None = None,
        prefix: str = "stockpyle",
        clock: Clock = now,
    ) -> None:
        if max_items is not None and (
            not isinstance(max_items, int) or isinstance(max_items, bool) or max_items < 1
        ):
            raise ConfigurationError(
                f"ProcessMemoryStore max_items={max_items!r}; expected a positive int or None"
            )
        self.max_items = max_items
        super().__init__(
            self._new_mapping(),
            polymorphic=polymorphic,
            lifetime_cb=lifetime_cb,
            prefix=prefix,
            clock=clock,
        )
        self.sweeps_markers = max_items is None
        self._unwarned = max_items is None

    def after_fork(self) -> None:
        """In a forked child, start empty: what the parent cached is as old as the fork
        and hears of no commit until this process's broadcast starts."""
        super().after_fork()
        self._start_afresh(self._new_mapping())
        self._unwarned = self.max_items is None

    def write(self, items: Sequence[tuple[str, Any, float | None]]) -> None:
        super().write(items)
        if self._unwarned:
            self._check_size()

    def apply(self, ops: Sequence[Op]) -> list[Any]:
        results = super().apply(ops)
        if self._unwarned:
            self._check_size()
        return results

    def _check_size(self) -> None:
        """Warn once when an unbounded store has grown large: the silent way to run out of
        memory is a default nobody chose."""
        size = len(self.dictionary)
        if size < self.unbounded_warning:
            return
        with self._lock:
            if not self._unwarned:
                return  # another thread warned
            self._unwarned = False
        log.warning(
            "sa_stockpyle: %s holds %d cache keys and has no max_items: it keeps every "
            "object it is given; pass ProcessMemoryStore(max_items=...) to bound it (LRU)",
            self,
            size,
        )

    def _new_mapping(self) -> MutableMapping[str, Any]:
        # A plain dict is thread-safe for the single-key operations used here; the LRU
        # needs its own lock because a read also reorders.
        return {} if self.max_items is None else LRUDict(self.max_items)


class ThreadLocalDict(MutableMapping[str, Any]):
    """A mapping whose contents are private to each thread that uses it."""

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def _data(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = self._local.data
        except AttributeError:
            data = self._local.data = {}
        return data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._data[key] = value

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._data))

    def __len__(self) -> int:
        return len(self._data)

    def forget(self) -> None:
        """Drop the calling thread's contents (other threads keep theirs)."""
        self._local.data = {}


class ThreadLocalStore(BaseDictionaryStore):
    """Objects in a dictionary private to each thread (nothing is shared across threads).

    A thread keeps its entries until it ends: a worker of a thread pool carries one
    request's entries into the next it serves.  Wrap each request in :meth:`scope` (or
    call :meth:`forget` when one ends) to give every request a clean dictionary.

    Parameters: see :class:`BaseDictionaryStore`.
    """

    shared_generations = False

    def __init__(
        self,
        polymorphic: bool = False,
        lifetime_cb: LifetimeCallback | None = None,
        prefix: str = "stockpyle",
        clock: Clock = now,
    ) -> None:
        super().__init__(
            self._new_mapping(),
            polymorphic=polymorphic,
            lifetime_cb=lifetime_cb,
            prefix=prefix,
            clock=clock,
        )

    def after_fork(self) -> None:
        """In a forked child, start empty (only the forking thread came along)."""
        super().after_fork()
        self._start_afresh(self._new_mapping())

    def _new_mapping(self) -> MutableMapping[str, Any]:
        return ThreadLocalDict()

    def forget(self) -> None:
        """Drop every entry of the calling thread, and only those: other threads keep
        theirs, and unlike :meth:`clear` no class starts a new namespace generation."""
        cast(ThreadLocalDict, self.dictionary).forget()

    @contextmanager
    def scope(self) -> Iterator[None]:
        """A block in which the calling thread starts with nothing cached and after which
        it keeps nothing: :meth:`forget` on entry and on exit.

        Entry matters too: what a thread cached outside any scope (a streamed response
        body read after the previous block ended) never reaches the next request.
        """
        self.forget()
        try:
            yield
        finally:
            self.forget()
