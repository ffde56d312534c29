"""AsyncRedisStore: a RedisStore whose commands await redis.asyncio.

The store is :class:`~sa_stockpyle.stores.RedisStore` itself, with one change: in a
greenlet (an ``AsyncRedisStore`` operation, a commit of an ``AsyncSession``) its commands
go out through a ``redis.asyncio`` client and the greenlet awaits the reply, so the
event loop runs other tasks meanwhile.  Keys, payloads, scripts and channels are the
synchronous store's, so asyncio and synchronous processes share one Redis.

Work that runs on the chain's background threads (a catch-up retried by its timer, the
invalidation broadcast's publisher and subscriber) has no event loop and goes out on a
synchronous client of the same server.  A synchronous call made on an event loop's
thread outside a greenlet would block the loop, and raises instead.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sa_stockpyle.codec import LifetimeCallback, now
from sa_stockpyle.errors import ConfigurationError
from sa_stockpyle.greenlets import in_greenlet, on_event_loop, wait_for
from sa_stockpyle.stores.async_base import AsyncStore
from sa_stockpyle.stores.backend_errors import ErrorTranslator
from sa_stockpyle.stores.base import Clock
from sa_stockpyle.stores.redis import RedisStore, _Replies
from sa_stockpyle.stores.redis_script import APPLY

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["AsyncRedisStore"]

#: Connection settings a synchronous twin of a caller's asyncio client copies.
_COPIED = (
    "host",
    "port",
    "db",
    "username",
    "password",
    "path",
    "socket_timeout",
    "socket_connect_timeout",
    "client_name",
    "ssl_keyfile",
    "ssl_certfile",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_check_hostname",
)


class _GreenletRedisStore(RedisStore):
    """A :class:`RedisStore` whose commands await ``redis.asyncio`` in a greenlet."""

    def __init__(
        self,
        url: str | None = None,
        client: redis.asyncio.Redis | redis.asyncio.RedisCluster | None = None,
        **options: Any,
    ) -> None:
        import redis  # noqa: PLC0415 - optional dependency, loaded only when used
        import redis.asyncio  # noqa: PLC0415

        if client is not None and not isinstance(
            client, (redis.asyncio.Redis, redis.asyncio.RedisCluster)
        ):
            raise ConfigurationError(
                "AsyncRedisStore(client=...) takes a redis.asyncio.Redis or "
                f"redis.asyncio.RedisCluster; got {client!r} (a synchronous client "
                "belongs to a RedisStore)"
            )
        super().__init__(url=url, client=None if client is None else _sync_twin(client), **options)
        self._given = client
        self._url = url
        self._timeouts = (options.get("connect_timeout", 0.25), options.get("timeout", 0.5))
        #: The store's own asyncio clients: one per event loop (a client's connections
        #: belong to the loop that opened them), and per process.
        self._by_loop: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._pid = os.getpid()
        if client is not None:
            self.location = repr(client)
        errors = self._errors
        # Before Python 3.11, asyncio's TimeoutError is a class of its own.
        self._errors = ErrorTranslator(
            errors.backend, (*errors.timeouts, asyncio.TimeoutError), errors.failures
        )

    def _client(self) -> Any:
        """The asyncio client of the running event loop."""
        if self._given is not None:
            return self._given
        if self._pid != os.getpid():  # a forked child: the parent's clients are its own
            self._by_loop, self._pid = weakref.WeakKeyDictionary(), os.getpid()
        loop = asyncio.get_running_loop()
        client = self._by_loop.get(loop)
        if client is None:
            import redis.asyncio  # noqa: PLC0415
            from redis.asyncio.retry import Retry  # noqa: PLC0415
            from redis.backoff import NoBackoff  # noqa: PLC0415

            connect_timeout, timeout = self._timeouts
            client = self._by_loop[loop] = redis.asyncio.Redis.from_url(
                str(self._url),
                socket_connect_timeout=connect_timeout,
                socket_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
            )
        return client

    def _send(self, commands: Sequence[tuple[Any, ...]]) -> _Replies:
        if in_greenlet():
            return _Replies.read(wait_for(self._round_trip(commands)))
        if on_event_loop():
            raise RuntimeError(
                f"{self!r} was called synchronously on an event loop's thread, which "
                "would block the loop; await the AsyncRedisStore's (or "
                "AsyncChainedStore's) operations instead"
            )
        return super()._send(commands)

    async def _round_trip(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        client = self._client()
        if len(commands) == 1:
            return [await client.execute_command(*commands[0])]
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(await pipe.execute())

    def _start_eval(self, keys: Sequence[str], args: Sequence[Any]) -> Callable[[], Any]:
        if not (self._cluster and in_greenlet()):
            return super()._start_eval(keys, args)
        # A cluster routes the script by its keys (see RedisStore._start_eval).
        client = self._client()
        try:
            reply = wait_for(client.evalsha(self._script.sha, len(keys), *keys, *args))
        except self._no_script:
            reply = wait_for(client.eval(APPLY, len(keys), *keys, *args))
        return lambda: reply

    def read(self, keys: Sequence[str]) -> list[Any]:
        if self._cluster and len(keys) > 1 and in_greenlet():
            with self._errors:
                # One MGET per hash slot, pipelined: one round trip per node.
                return list(wait_for(self._client().mget_nonatomic(keys)))
        return super().read(keys)

    def close(self) -> None:
        """Close the synchronous connections and, in a greenlet, the running loop's
        asyncio client (clients of other loops are dropped with their loops)."""
        super().close()
        if self._given is None and in_greenlet():
            client = self._by_loop.pop(asyncio.get_running_loop(), None)
            if client is not None:
                wait_for(client.aclose())
        self._by_loop = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"<AsyncRedisStore {self.location} prefix={self.keymaker.prefix!r}>"


def _sync_twin(client: Any) -> Any:
    """A synchronous client of the same server (or cluster) and credentials as the
    asyncio ``client``, for the chain's background threads."""
    import redis  # noqa: PLC0415
    import redis.asyncio  # noqa: PLC0415
    import redis.cluster  # noqa: PLC0415

    if isinstance(client, redis.asyncio.RedisCluster):
        # Before its first command, the client knows only its startup nodes.
        nodes = list(client.nodes_manager.startup_nodes.values())
        settings = {k: v for k, v in client.connection_kwargs.items() if k in _COPIED}
        return redis.cluster.RedisCluster(
            startup_nodes=[redis.cluster.ClusterNode(n.host, n.port) for n in nodes],  # type: ignore[no-untyped-call]
            **settings,
        )
    settings = {k: v for k, v in client.connection_pool.connection_kwargs.items() if k in _COPIED}
    ssl = "SSL" in client.connection_pool.connection_class.__name__
    return redis.Redis(ssl=ssl, **settings)


class AsyncRedisStore(AsyncStore[_GreenletRedisStore]):
    """Objects in Redis or a Redis Cluster, through ``redis.asyncio``: a
    :class:`~sa_stockpyle.stores.RedisStore` whose operations are coroutines.

    The parameters are :class:`~sa_stockpyle.stores.RedisStore`'s, except ``client``:

    Parameters:
        url: a ``redis://`` or ``rediss://`` URL; the store builds its own asyncio
            client for each event loop it runs in, with the timeouts below and no
            retries, and a synchronous one for its chain's background threads.
        client: instead of ``url``, a ready ``redis.asyncio.Redis`` or
            ``redis.asyncio.RedisCluster`` (its own pool, timeouts and retries apply; it
            must not decode responses).  The store does not close it.  The background
            threads use a synchronous client of the same address and credentials.
        polymorphic: also store each object under every base class that declares keys.
        lifetime_cb: ``lifetime_cb(obj)`` returns the object's lifetime.
        prefix: the first part of every cache key.
        clock: returns the current Unix time; injected by tests.
        connect_timeout: seconds to wait for a connection (clients built from ``url``).
        timeout: seconds to wait for a reply (clients built from ``url``).
        signing_key: bytes (16 to 64) shared by every process of the application.

    Keys, payloads and the invalidation channel are ``RedisStore``'s: asyncio and
    synchronous processes share one Redis.  Failures raise
    :class:`~sa_stockpyle.errors.StoreUnavailable`, as ``RedisStore``'s do.
    """

    def __init__(
        self,
        url: str | None = None,
        client: redis.asyncio.Redis | redis.asyncio.RedisCluster | None = None,
        polymorphic: bool = False,
        lifetime_cb: LifetimeCallback | None = None,
        prefix: str = "stockpyle",
        clock: Clock = now,
        connect_timeout: float = 0.25,
        timeout: float = 0.5,
        signing_key: bytes | None = None,
    ) -> None:
        if (url is None) == (client is None):
            raise ConfigurationError(
                "AsyncRedisStore takes exactly one of url= (e.g. 'redis://localhost:6379/0') "
                "or client= (a redis.asyncio.Redis or RedisCluster); got "
                f"url={url!r}, client={client!r}"
            )
        super().__init__(
            _GreenletRedisStore(
                url,
                client,
                polymorphic=polymorphic,
                lifetime_cb=lifetime_cb,
                prefix=prefix,
                clock=clock,
                connect_timeout=connect_timeout,
                timeout=timeout,
                signing_key=signing_key,
            )
        )
