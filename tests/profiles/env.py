"""The profiles project's Alembic environment, wired as docs/alembic.md shows: the
migration's transaction runs inside ``invalidate_migrated()``, with the store and models
of the release that runs it."""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool

from sa_stockpyle.alembic import invalidate_migrated
from tests.profiles import VERSION_TABLE

config = context.config
store = config.attributes["store"]
base = config.attributes["base"]

engine = engine_from_config(
    config.get_section(config.config_ini_section, {}),
    prefix="sqlalchemy.",
    poolclass=pool.NullPool,
)
with engine.connect() as connection:
    context.configure(
        connection=connection, target_metadata=base.metadata, version_table=VERSION_TABLE
    )
    with invalidate_migrated(store, base), context.begin_transaction():
        context.run_migrations()
engine.dispose()
