"""The shop's Alembic environment: run the migrations, then invalidate what they touched.

When the migration runs inside the application's process (``examples/migrations.py``),
the application's chain comes in ``config.attributes``; from the ``alembic`` command line,
the shared layers are named with ``-x redis_url=redis://... -x memcached=host:port,...``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

from alembic import context
from sqlalchemy import engine_from_config, pool

from sa_stockpyle.alembic import invalidate_migrated
from sa_stockpyle.stores import BaseStore, ChainedStore
from shop import STORE, shared_layers
from shop.models import Base

#: Its own version table, so the shop can share a database with another Alembic project.
VERSION_TABLE = "shop_alembic_version"

config = context.config


def cache_store() -> BaseStore | None:
    """The store to invalidate in: the application's, or the shared layers given by -x."""
    store: BaseStore | None = config.attributes.get(STORE)
    if store is not None:
        return store
    x = context.get_x_argument(as_dictionary=True)
    memcached = [address for address in x.get("memcached", "").split(",") if address]
    layers = shared_layers(x.get("redis_url"), memcached)
    return ChainedStore(layers) if layers else None


def run(store: BaseStore | None, **configure: Any) -> None:
    """Run the migrations in the configured context; invalidate after their commit."""
    context.configure(target_metadata=Base.metadata, version_table=VERSION_TABLE, **configure)
    invalidating: AbstractContextManager[object] = (
        nullcontext() if store is None else invalidate_migrated(store, Base)
    )
    with invalidating as migrated, context.begin_transaction():
        context.run_migrations()
    config.attributes["sa_stockpyle.migrated"] = migrated


def main() -> None:
    """Migrate online, or write the SQL script in offline mode (``--sql``)."""
    store = cache_store()
    if context.is_offline_mode():
        run(store, url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
        return
    section = config.get_section(config.config_ini_section, {})
    engine = engine_from_config(section, prefix="sqlalchemy.", poolclass=pool.NullPool)
    with engine.connect() as connection:
        run(store, connection=connection)
    engine.dispose()


main()
