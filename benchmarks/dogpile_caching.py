"""The dogpile.cache setup the suite compares with, as SQLAlchemy documents it.

Written for this benchmark after SQLAlchemy's ``examples/dogpile_caching``
(``caching_query.py``, ``environment.py``): an ``ORMCache`` listens to ``do_orm_execute``
on a session factory; a statement carrying the ``FromCache`` option is looked up in a
dogpile.cache region under a key built from the statement's cache key and its parameters
(md5 of it, as the example's key mangler does); a miss runs the statement and caches its
``FrozenResult``; a hit is merged into the session with ``merge_frozen_result(...,
load=False)``.  The region uses the ``dogpile.cache.redis`` backend, which pickles the
frozen result.  Only what the suite uses is kept (no ``RelationshipCache``).
"""

from __future__ import annotations

from hashlib import md5
from typing import Any

from dogpile.cache import make_region
from dogpile.cache.api import NO_VALUE
from dogpile.cache.region import CacheRegion
from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, loading, sessionmaker
from sqlalchemy.orm.interfaces import UserDefinedOption


class ORMCache:
    """Loads results of statements with a ``FromCache`` option from dogpile regions."""

    def __init__(self, regions: dict[str, CacheRegion]) -> None:
        self.cache_regions = regions
        self._statement_cache: dict[Any, Any] = {}

    def listen_on_session(self, session_factory: sessionmaker[Any]) -> None:
        """Serve the sessions of ``session_factory`` from the cache."""
        event.listen(session_factory, "do_orm_execute", self._do_orm_execute)

    def _do_orm_execute(self, orm_context: ORMExecuteState) -> Any:
        for opt in orm_context.user_defined_options:
            if isinstance(opt, FromCache):
                region = self.cache_regions[opt.region]
                key = opt.cache_key_of(orm_context.statement, orm_context.parameters or {}, self)
                cached = region.get_or_create(key, lambda: orm_context.invoke_statement().freeze())
                if cached is NO_VALUE:
                    raise KeyError(key)
                merged = loading.merge_frozen_result(
                    orm_context.session, orm_context.statement, cached, load=False
                )
                return merged()
        return None


class FromCache(UserDefinedOption):
    """Marks a statement to be loaded from the cache region ``region``."""

    propagate_to_loaders = False

    def __init__(self, region: str = "default") -> None:
        self.region = region

    def _gen_cache_key(self, anon_map: Any, bindparams: Any) -> None:
        return None

    def cache_key_of(self, statement: Any, parameters: Any, orm_cache: ORMCache) -> str:
        """The statement's structure and parameter values, as one string."""
        return statement._generate_cache_key().to_offline_string(
            orm_cache._statement_cache, statement, parameters
        )


def md5_key_mangler(key: str) -> str:
    """Boil the long statement keys down to an md5 digest, as the example does."""
    return md5(key.encode("utf-8")).hexdigest()


def redis_region(redis_url: str) -> CacheRegion:
    """A region on the ``dogpile.cache.redis`` backend at ``redis_url``."""
    return make_region(key_mangler=md5_key_mangler).configure(
        "dogpile.cache.redis",
        expiration_time=3600,
        arguments={"url": redis_url, "redis_expiration_time": 7200},
    )
