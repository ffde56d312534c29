"""The stores, under the seed's names: ``from sa_stockpyle.stores import ProcessMemoryStore``.

Every store speaks the six-operation contract documented in
:mod:`sa_stockpyle.stores.base`.
"""

from __future__ import annotations

from sa_stockpyle.stores.base import BaseDictionaryStore, BaseKeyValueStore, BaseStore, Stats
from sa_stockpyle.stores.chained import ChainedStore
from sa_stockpyle.stores.mapping import ShoveStore
from sa_stockpyle.stores.memory import ProcessMemoryStore, ThreadLocalStore

__all__ = [
    "BaseDictionaryStore",
    "BaseKeyValueStore",
    "BaseStore",
    "ChainedStore",
    "ProcessMemoryStore",
    "ShoveStore",
    "Stats",
    "ThreadLocalStore",
]
