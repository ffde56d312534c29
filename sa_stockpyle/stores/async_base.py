"""AsyncStore: a store's six operations as coroutines, run by the synchronous store.

An asyncio store is a shell around a synchronous store whose I/O awaits (see
:mod:`sa_stockpyle.greenlets`): each operation runs the synchronous store's own code in
a greenlet, so every decision (keys, leases, tombstones, what a reply means) is the one
code the synchronous stores run, and while the backend answers the event loop runs
other tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Generic, TypeVar

from sa_stockpyle.greenlets import cancellation_deferred, run
from sa_stockpyle.stores.base import BaseStore
from sa_stockpyle.stores.stats import Stats

__all__ = ["AsyncStore"]

T = TypeVar("T")
S = TypeVar("S", bound=BaseStore)


def _whole(write: Callable[..., None], *args: Any) -> None:
    """``write(*args)``, which a cancellation of the task does not cut short: a write
    that reached the database reaches every cache layer too, before the cancellation
    is raised (a database layer's own COMMIT runs apart: see ``AsyncSqlAlchemyStore``)."""
    with cancellation_deferred():
        write(*args)


class AsyncStore(Generic[S]):
    """The six operations of :attr:`sync`, as coroutines with the same signatures,
    semantics and errors (see :class:`~sa_stockpyle.stores.BaseStore`).

    A cancelled lookup stops at its next await (the leases it took expire); a cancelled
    write finishes first, in every layer, and the cancellation is raised after it.

    ``sync`` is the synchronous store that does the work.  Its I/O awaits when it runs
    in a greenlet (as here, and in the commits of an ``AsyncSession``); called from a
    thread that runs no event loop it blocks, as a synchronous store does.
    """

    def __init__(self, sync: S) -> None:
        #: The synchronous store that does the work; an ``AsyncChainedStore`` layers it.
        self.sync = sync

    @property
    def stats(self) -> Stats:
        """The synchronous store's counts (``corrupt`` payloads, and others)."""
        return self.sync.stats

    async def put(self, obj: object) -> None:
        """Store ``obj`` under every declared key of its class."""
        await run(_whole, self.sync.put, obj)

    async def get(self, klass: type[T], key: object) -> T | None:
        """The ``klass`` object with ``key``, or None."""
        return await run(self.sync.get, klass, key)

    async def delete(self, obj: object) -> None:
        """Remove ``obj``; removing an absent object is not an error."""
        await run(_whole, self.sync.delete, obj)

    async def batch_put(self, objs: Iterable[object]) -> None:
        """Store every object of ``objs``."""
        await run(_whole, self.sync.batch_put, objs)

    async def batch_get(self, klass: type[T], keys: Iterable[object]) -> list[T | None]:
        """The ``klass`` objects with ``keys``, in order, None for each miss."""
        return await run(self.sync.batch_get, klass, keys)

    async def batch_delete(self, objs: Iterable[object]) -> None:
        """Remove every object of ``objs``."""
        await run(_whole, self.sync.batch_delete, objs)

    async def invalidate_class(self, klass: type) -> None:
        """Make every entry of ``klass`` unreachable at once."""
        await run(_whole, self.sync.invalidate_class, klass)

    async def aclose(self) -> None:
        """Release the store's connections (and, for a chain, its layers')."""
        await run(self.sync.close)

    async def __aenter__(self: T) -> T:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self.sync!r}>"
