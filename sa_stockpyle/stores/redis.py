"""RedisStore: objects in Redis or a Redis Cluster, as safe bytes payloads.

redis-py is imported when a store is constructed, never when this module is.  Every call
is one round trip per server: ``GET`` or ``MGET`` for reads (one ``MGET`` per hash slot,
pipelined per node, on a cluster), one non-transactional pipeline of ``SET ... PX`` for
writes and one ``DEL`` (per slot, pipelined per node, on a cluster) for deletes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sa_stockpyle.codec import LifetimeCallback, now
from sa_stockpyle.errors import ConfigurationError
from sa_stockpyle.stores.base import BaseKeyValueStore, Clock, ErrorTranslator, SharedPayloads

if TYPE_CHECKING:
    import redis
    import redis.cluster

__all__ = ["RedisStore"]


class RedisStore(SharedPayloads, BaseKeyValueStore):
    """Objects in Redis (one server) or a Redis Cluster, with native expiry.

    Parameters:
        url: a ``redis://`` or ``rediss://`` URL; the store builds its own client with
            the timeouts below and no retries, so a dead server costs one timeout.
        client: instead of ``url``, a ready ``redis.Redis`` or
            ``redis.cluster.RedisCluster`` (its own timeouts and retries apply; it must
            not decode responses).  The store does not close a client it was given.
        polymorphic: also store each object under every base class that declares
            ``__stockpyle_keys__`` (see :class:`~sa_stockpyle.stores.BaseKeyValueStore`).
        lifetime_cb: ``lifetime_cb(obj)`` returns the object's lifetime; see
            :class:`~sa_stockpyle.stores.BaseKeyValueStore`.
        prefix: the first part of every cache key.
        clock: returns the current Unix time; injected by tests.
        connect_timeout: seconds to wait for a connection (clients built from ``url``).
        timeout: seconds to wait for a reply (clients built from ``url``).

    Failures of the server raise :class:`~sa_stockpyle.errors.StoreUnavailable` (or its
    :class:`~sa_stockpyle.errors.StoreTimeout`); error replies that mean a bug (a
    malformed command, a wrong type) are not translated.
    """

    def __init__(
        self,
        url: str | None = None,
        client: redis.Redis | redis.cluster.RedisCluster | None = None,
        polymorphic: bool = False,
        lifetime_cb: LifetimeCallback | None = None,
        prefix: str = "stockpyle",
        clock: Clock = now,
        connect_timeout: float = 0.25,
        timeout: float = 0.5,
    ) -> None:
        if (url is None) == (client is None):
            raise ConfigurationError(
                "RedisStore takes exactly one of url= (e.g. 'redis://localhost:6379/0') or "
                f"client= (a redis.Redis or redis.cluster.RedisCluster); got url={url!r}, "
                f"client={client!r}"
            )
        super().__init__(
            polymorphic=polymorphic, lifetime_cb=lifetime_cb, prefix=prefix, clock=clock
        )
        try:
            import redis  # noqa: PLC0415 - optional dependency, loaded only when used
            from redis.backoff import NoBackoff  # noqa: PLC0415
            from redis.retry import Retry  # noqa: PLC0415
        except ImportError as exc:
            raise ImportError(
                'RedisStore needs redis-py: pip install "sa_stockpyle[redis]"'
            ) from exc
        if client is None:
            # redis-py retries 10 times with backoff by default: a dead server would hold
            # every request for seconds.  The pool already reconnects stale connections
            # before use, so no retry is needed to survive a server restart.
            client = redis.Redis.from_url(
                str(url),
                socket_connect_timeout=connect_timeout,
                socket_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
            )
            self._owns_client = True
        else:
            self._owns_client = False
        self.client = client
        self.location = url if url is not None else repr(client)
        self._cluster = isinstance(client, redis.cluster.RedisCluster)
        exceptions = redis.exceptions
        self._errors = ErrorTranslator(
            f"Redis at {self.location}",
            timeouts=(exceptions.TimeoutError, TimeoutError),
            # What means "the server cannot serve now": unreachable, loading, read-only
            # replica, out of memory, cluster down or resharding, no reachable node.
            # Other error replies (ResponseError, DataError) mean a bug and propagate.
            failures=(
                exceptions.ConnectionError,
                exceptions.ClusterError,
                exceptions.TryAgainError,
                exceptions.ReadOnlyError,
                exceptions.OutOfMemoryError,
                exceptions.RedisClusterException,
                OSError,
            ),
        )

    def _read(self, keys: Sequence[str]) -> list[Any]:
        with self._errors:
            if len(keys) == 1:
                # A lone GET: redis-py handles a one-key MGET (an array reply) ~20% slower.
                return [self.client.get(keys[0])]
            if self._cluster:
                # One MGET per hash slot, pipelined: one round trip per node.
                return self.client.mget_nonatomic(keys)  # type: ignore[union-attr]
            return self.client.mget(keys)

    def _write(self, items: Sequence[tuple[str, Any, float | None]]) -> None:
        self._replace((), items)

    def _remove(self, keys: Sequence[str]) -> None:
        with self._errors:
            self.client.delete(*keys)

    def _replace(
        self, keys: Sequence[str], items: Sequence[tuple[str, Any, float | None]]
    ) -> None:
        # One pipeline, one round trip: the deletes, then one MSET for the records that
        # never expire (a single command, packed once) and a SET PX for each that does.
        clock_now = self.clock()
        with self._errors:
            pipe = self.client.pipeline(transaction=False)
            if keys and self._cluster:
                for key in keys:  # a multi-key DEL may not span hash slots
                    pipe.delete(key)
            elif keys:
                pipe.delete(*keys)
            forever: dict[str, Any] = {}
            for key, raw, expires_at in items:
                if expires_at is None:
                    forever[key] = raw
                    continue
                # Native TTL relative to the store's clock, rounded up: the record's own
                # expiry (checked on decode) is exact, the server only reclaims memory.
                millis = math.ceil((expires_at - clock_now) * 1000)
                if millis > 0:
                    pipe.set(key, raw, px=millis)
                else:
                    pipe.delete(key)
            if forever and self._cluster:
                for key, raw in forever.items():  # MSET may not span hash slots
                    pipe.set(key, raw)
            elif forever:
                pipe.mset(forever)
            pipe.execute()

    def close(self) -> None:
        """Close the client's connections if the store built the client."""
        if self._owns_client:
            self.client.close()

    def __repr__(self) -> str:
        return f"<RedisStore {self.location} prefix={self.keymaker.prefix!r}>"
