"""A small shop (accounts and orders) with its own Alembic migration history.

``models`` holds the mapped classes, ``env.py`` and ``versions/`` the Alembic
environment; :func:`alembic_config` points Alembic at a database, and
:func:`shared_layers` builds the cache layers other processes share.
"""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config

from sa_stockpyle.stores import BaseStore, MemcacheStore, RedisStore

HERE = Path(__file__).resolve().parent

#: The ``config.attributes`` key under which env.py finds the application's store.
STORE = "sa_stockpyle.store"


def alembic_config(database_url: str, store: BaseStore | None = None) -> Config:
    """The shop's Alembic configuration for ``database_url``, invalidating in ``store``."""
    config = Config(HERE / "alembic.ini")
    # The .ini is read with interpolation: a literal % in a password must be doubled.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes[STORE] = store
    return config


def shared_layers(redis_url: str | None, memcached: list[str]) -> list[BaseStore]:
    """The cache layers shared between processes: Redis and memcached, when given."""
    layers: list[BaseStore] = []
    if redis_url:
        layers.append(RedisStore(url=redis_url))
    if memcached:
        layers.append(MemcacheStore(servers=memcached))
    return layers
