"""The service's Alembic environment, for an async engine.

The application runs it at startup on a connection of its own engine
(``config.attributes["connection"]``, inside ``AsyncConnection.run_sync``), with its
write-through chain in ``config.attributes["store"]``: what the migrations change is
invalidated after their commit (``sa_stockpyle.alembic``).  From the ``alembic`` command
line, ``-x database_url=...`` names the database, and no cache is invalidated.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractContextManager, nullcontext

from alembic import context
from sqlalchemy import Connection, pool
from sqlalchemy.ext.asyncio import create_async_engine

from examples.fastapi_app.models import Base
from sa_stockpyle.alembic import invalidate_migrated

VERSION_TABLE = "fastapi_alembic_version"

config = context.config


def run(connection: Connection) -> None:
    context.configure(
        connection=connection, target_metadata=Base.metadata, version_table=VERSION_TABLE
    )
    store = config.attributes.get("store")
    invalidating: AbstractContextManager[object] = (
        nullcontext() if store is None else invalidate_migrated(store, Base)
    )
    with invalidating, context.begin_transaction():
        context.run_migrations()


async def run_from_the_command_line() -> None:
    url = context.get_x_argument(as_dictionary=True)["database_url"]
    engine = create_async_engine(url, poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(run)
        await connection.commit()
    await engine.dispose()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    asyncio.run(run_from_the_command_line())
