"""asyncio stores: the six operations as coroutines, with every guarantee of the
synchronous stores (see docs/asyncio.md).

Each is a shell around the synchronous store of the same name, whose code runs in a
greenlet and whose I/O awaits the asyncio client: one code decides for both.
"""

from sa_stockpyle.asyncio.chained import AsyncChainedStore
from sa_stockpyle.asyncio.redis import AsyncRedisStore
from sa_stockpyle.asyncio.sqlalchemy import AsyncSqlAlchemyStore
from sa_stockpyle.stores.async_base import AsyncStore

__all__ = ["AsyncChainedStore", "AsyncRedisStore", "AsyncSqlAlchemyStore", "AsyncStore"]
