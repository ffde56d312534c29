"""AsyncChainedStore: a ChainedStore whose layers' I/O awaits."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sa_stockpyle.errors import ConfigurationError
from sa_stockpyle.greenlets import run
from sa_stockpyle.stores.async_base import AsyncStore
from sa_stockpyle.stores.base import BaseStore
from sa_stockpyle.stores.chained import ChainedStore
from sa_stockpyle.stores.coherence import Coherence
from sa_stockpyle.stores.dictionary import BaseDictionaryStore
from sa_stockpyle.stores.stats import Stats

__all__ = ["AsyncChainedStore"]

T = TypeVar("T")


class _GreenletChain(ChainedStore):
    """A ChainedStore built on an event loop's thread: its broadcast's threads start at
    once, and its first use (in a greenlet) awaits their first subscription."""

    _waits_at_first_use = True


def _layer(store: object) -> BaseStore:
    """The synchronous store an AsyncChainedStore layers for ``store``."""
    if isinstance(store, AsyncStore):
        return store.sync  # type: ignore[no-any-return]
    if isinstance(store, BaseDictionaryStore) or (
        isinstance(store, BaseStore) and store.process_local
    ):
        return store  # in-process: no I/O to await
    counterpart = {
        "RedisStore": "use sa_stockpyle.asyncio.AsyncRedisStore",
        "SqlAlchemyStore": "use sa_stockpyle.asyncio.AsyncSqlAlchemyStore",
        "ChainedStore": "use sa_stockpyle.asyncio.AsyncChainedStore",
        "MemcacheStore": "there is no asyncio memcached store yet: no maintained asyncio "
        "client places keys on the servers where pymemcache does, so use AsyncRedisStore "
        "for the shared layer (see docs/asyncio.md, memcached)",
    }
    advice = next(
        (
            advice
            for klass in type(store).__mro__
            if (advice := counterpart.get(klass.__name__)) is not None
        ),
        "only in-process stores, dictionary stores and the stores of sa_stockpyle.asyncio "
        "can be layers (see docs/asyncio.md)",
    )
    raise ConfigurationError(
        f"AsyncChainedStore layer {store!r} would block the event loop on its I/O; {advice}"
    )


class AsyncChainedStore(AsyncStore[ChainedStore]):
    """Stores layered fastest first, e.g. ``[memory, AsyncRedisStore, AsyncSqlAlchemyStore]``,
    with :class:`~sa_stockpyle.stores.ChainedStore`'s reads, writes, leases, catch-up and
    broadcast, and its six operations as coroutines.

    Layers are the asyncio stores (:class:`~sa_stockpyle.asyncio.AsyncRedisStore`,
    :class:`~sa_stockpyle.asyncio.AsyncSqlAlchemyStore`) and in-process stores as they are
    (``ProcessMemoryStore``, ``ThreadLocalStore``, dictionary stores); a store that would
    block the event loop on its I/O is refused with a
    :class:`~sa_stockpyle.errors.ConfigurationError`.  A layer may serve in several
    chains (a ``ProcessMemoryStore`` shared by the chain ``attach()`` writes through and
    the chain the application reads through).

    The parameters after ``stores`` are ``ChainedStore``'s.  The invalidation broadcast's
    threads start here (the memory layer hears other processes' commits from now on),
    and the chain's first use awaits their first subscription: building the chain on
    the event loop's thread never waits for Redis.
    """

    def __init__(
        self,
        stores: Sequence[object],
        lease_wait: float = 0.05,
        catch_up_interval: float = 0.5,
        broadcast: bool | None = None,
        channel: str = "invalidations",
        max_staleness: float = 2.0,
        cooldown: float = 1.0,
        heartbeat: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(stores, (str, bytes)) or not isinstance(stores, Sequence):
            raise ConfigurationError(
                f"AsyncChainedStore needs a non-empty list of stores, got {stores!r}"
            )
        super().__init__(
            _GreenletChain(
                [_layer(store) for store in stores],
                lease_wait=lease_wait,
                catch_up_interval=catch_up_interval,
                broadcast=broadcast,
                channel=channel,
                max_staleness=max_staleness,
                cooldown=cooldown,
                heartbeat=heartbeat,
                monotonic=monotonic,
            )
        )
        #: The layers as given, fastest first.
        self.stores: list[Any] = list(stores)

    async def get(self, klass: type[T], key: object) -> T | None:
        """The ``klass`` object with ``key``: a hit in an in-process first layer is
        answered at once, anything else by the chain's code in a greenlet."""
        hit, first = self.sync.ask_first(klass, key)
        if hit is not None:
            return hit
        return await run(self.sync.get_after, klass, key, first)

    @property
    def layer_stats(self) -> list[Stats]:
        """The counts of each layer, fastest first (see ``ChainedStore.layer_stats``)."""
        return self.sync.layer_stats

    @property
    def coherence(self) -> Coherence | None:
        """The invalidation broadcast between processes, if any."""
        return self.sync.coherence

    def stats_by_layer(self) -> dict[str, dict[str, dict[str, int]]]:
        """``{layer name: {class name: {event: count}}}`` for every layer."""
        return self.sync.stats_by_layer()
