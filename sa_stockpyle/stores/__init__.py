"""The stores, under the seed's names: ``from sa_stockpyle.stores import ProcessMemoryStore``.

Every store speaks the six-operation contract documented in
:mod:`sa_stockpyle.stores.base`.
"""

from __future__ import annotations

from sa_stockpyle.stores.base import BaseStore, Reservation
from sa_stockpyle.stores.chained import ChainedStore
from sa_stockpyle.stores.dictionary import BaseDictionaryStore
from sa_stockpyle.stores.keyvalue import BaseKeyValueStore
from sa_stockpyle.stores.mapping import ShoveStore
from sa_stockpyle.stores.memcache import MemcacheStore
from sa_stockpyle.stores.memory import ProcessMemoryStore, ThreadLocalStore
from sa_stockpyle.stores.ops import Op, OpKind
from sa_stockpyle.stores.redis import RedisStore
from sa_stockpyle.stores.sqlalchemy import SqlAlchemyStore
from sa_stockpyle.stores.stats import Stats

__all__ = [
    "BaseDictionaryStore",
    "BaseKeyValueStore",
    "BaseStore",
    "ChainedStore",
    "MemcacheStore",
    "Op",
    "OpKind",
    "ProcessMemoryStore",
    "RedisStore",
    "Reservation",
    "ShoveStore",
    "SqlAlchemyStore",
    "Stats",
    "ThreadLocalStore",
]
