"""Asyncio stores driven from a test's synchronous code: :class:`Blocking` runs each call
on an event loop of its own, so the conformance suites check the asyncio stores through
their real transport (a greenlet whose I/O awaits ``redis.asyncio`` or the async
driver)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, TypeVar

from sa_stockpyle.asyncio import AsyncStore
from sa_stockpyle.greenlets import run
from sa_stockpyle.stores.base import BaseStore, Finish, Removal, Reservation
from sa_stockpyle.stores.channel import Channel

T = TypeVar("T")

#: Timeouts for the tests' own AsyncRedisStores: an asyncio connect is Python run by the
#: event loop, which the suite's coverage tracing and a loaded 2-core machine can slow
#: past the production default (0.25 s).  The fault tests set theirs.
PATIENT: dict[str, float] = {"connect_timeout": 2.0, "timeout": 2.0}


class Blocking(BaseStore):
    """``store``'s operations, each run to its end on this adapter's event loop: the six
    through the asyncio store's coroutines, the layer protocol's in a greenlet of the
    synchronous store it wraps (as an ``AsyncChainedStore`` calls them)."""

    def __init__(self, store: AsyncStore[Any]) -> None:
        super().__init__()
        self.store = store
        self.loop = asyncio.new_event_loop()
        self.stats = store.stats
        self.process_local = store.sync.process_local
        self.compares_tombstone_times = getattr(store.sync, "compares_tombstone_times", True)
        #: Coroutine functions awaited after the store closes (a caller's client).
        self.closing: list[Callable[[], Coroutine[Any, Any, Any]]] = []

    def wait(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def greenlet(self, fn: Callable[..., T], *args: Any) -> T:
        return self.wait(run(fn, *args))

    def put(self, obj: object) -> None:
        self.wait(self.store.put(obj))

    def get(self, klass: type[T], key: object) -> T | None:
        return self.wait(self.store.get(klass, key))

    def delete(self, obj: object) -> None:
        self.wait(self.store.delete(obj))

    def batch_put(self, objs: Iterable[object]) -> None:
        self.wait(self.store.batch_put(objs))

    def batch_get(self, klass: type[T], keys: Iterable[object]) -> list[T | None]:
        return self.wait(self.store.batch_get(klass, keys))

    def batch_delete(self, objs: Iterable[object]) -> None:
        self.wait(self.store.batch_delete(objs))

    def adopt(self, klass: type[T], objs: list[T]) -> list[T]:
        return self.greenlet(self.store.sync.adopt, klass, objs)

    def cacheable(self, obj: object, since: float | None = None) -> bool:
        return bool(self.store.sync.cacheable(obj, since))

    def reserve(self, klass: type, keys: Sequence[object]) -> Reservation:
        return self.greenlet(self.store.sync.reserve, klass, keys)

    def fill(self, reservation: Reservation, objs: Sequence[object | None]) -> None:
        self.greenlet(self.store.sync.fill, reservation, objs)

    def write_committed(self, puts: Sequence[object], removals: Sequence[Removal]) -> None:
        self.greenlet(self.store.sync.write_committed, puts, removals)

    def start_committed(self, puts: Sequence[object], removals: Sequence[Removal]) -> Finish:
        finish = self.greenlet(self.store.sync.start_committed, puts, removals)
        return lambda: self.greenlet(finish)

    def invalidate_class(self, klass: type) -> None:
        self.wait(self.store.invalidate_class(klass))

    def channel(self, name: str) -> Channel | None:
        return self.store.sync.channel(name)

    def clear(self) -> None:
        self.greenlet(self.store.sync.clear)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        try:
            self.wait(self.store.aclose())
            for close in self.closing:
                self.wait(close())
            self.wait(self.loop.shutdown_default_executor())
        finally:
            self.loop.close()
