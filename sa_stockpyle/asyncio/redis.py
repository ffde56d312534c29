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
    "ssl_ca_path",
    "ssl_ca_data",
    "ssl_password",
    "ssl_min_version",
    "credential_provider",
)
#: Where the synchronous client names a setting otherwise.
_SYNC_NAMES = {"path": "unix_socket_path"}
#: Idle connections a loop keeps; more are closed as they come back (a burst of
#: concurrent tasks opens one each).
MAX_IDLE = 64


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
        self._given: Any = client
        self._recipe: Any = None
        if client is None:
            from redis.asyncio.retry import Retry  # noqa: PLC0415
            from redis.backoff import NoBackoff  # noqa: PLC0415

            # The connection class and settings of the store's own connections: a
            # command costs one round trip and a packed write, without the client's
            # per-command path (its pool's checkout, its retry wrapper), which takes a
            # third as long as the round trip itself.
            self._recipe = redis.asyncio.ConnectionPool.from_url(
                str(url),
                socket_connect_timeout=options.get("connect_timeout", 0.25),
                socket_timeout=options.get("timeout", 0.5),
                retry=Retry(NoBackoff(), 0),
            )
        else:
            self.location = repr(client)
        #: The store's idle connections of each event loop (a connection belongs to the
        #: loop that opened it), in this process.
        self._idle: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()
        self._pid = os.getpid()
        self._response_errors = (redis.exceptions.ResponseError,)
        errors = self._errors
        # Before Python 3.11, asyncio's TimeoutError is a class of its own.
        self._errors = ErrorTranslator(
            errors.backend, (*errors.timeouts, asyncio.TimeoutError), errors.failures
        )

    def _idle_connections(self) -> list[Any]:
        """The running loop's idle connections of the store's own."""
        if self._pid != os.getpid():  # a forked child: the parent's sockets are its own
            self._idle, self._pid = weakref.WeakKeyDictionary(), os.getpid()
        loop = asyncio.get_running_loop()
        idle = self._idle.get(loop)
        if idle is None:
            idle = self._idle[loop] = []
        return idle

    def _send(
        self, commands: Sequence[tuple[Any, ...]], packed: list[bytes] | None = None
    ) -> _Replies:
        if in_greenlet():
            if self._given is not None:
                return _Replies.read(wait_for(self._through_client(commands)))
            return self._send_now(commands, packed)
        if on_event_loop():
            raise RuntimeError(
                f"{self!r} was called synchronously on an event loop's thread, which "
                "would block the loop; await the AsyncRedisStore's (or "
                "AsyncChainedStore's) operations instead"
            )
        return super()._send(commands, packed)

    async def _through_client(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` through the caller's client, in one round trip."""
        client = self._given
        if len(commands) == 1:
            return [await client.execute_command(*commands[0])]
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(await pipe.execute())

    def _send_now(
        self, commands: Sequence[tuple[Any, ...]], packed: list[bytes] | None
    ) -> _Replies:
        """Put ``commands`` on the wire of one of the store's own connections, in one
        packet, without waiting: their replies are read by the ``receive()`` of what is
        returned, so a commit's other layers are written while Redis answers (as the
        synchronous store's are)."""
        idle = self._idle_connections()
        connection = (
            idle.pop() if idle else self._recipe.connection_class(**self._recipe.connection_kwargs)
        )
        packet = self._packet(commands, packed, connection)
        try:
            if not _idle_and_sound(connection):
                wait_for(_ready(connection, self._errors.failures))
            # The transport sends at once what the socket takes, and the rest as it can.
            connection._writer.writelines(packet)
        except BaseException:
            wait_for(connection.disconnect(nowait=True))  # a command sent in part
            raise
        return _AwaitedReplies(connection, len(commands), idle, self._response_errors)

    def _start_eval(
        self, keys: Sequence[str], args: Sequence[Any], packed: list[bytes] | None = None
    ) -> Callable[[], Any]:
        if not (self._cluster and in_greenlet()):
            return super()._start_eval(keys, args, packed)
        # A cluster routes the script by its keys (see RedisStore._start_eval).
        client = self._given  # a cluster is always a caller's client
        try:
            reply = wait_for(client.evalsha(self._script.sha, len(keys), *keys, *args))
        except self._no_script:
            reply = wait_for(client.eval(APPLY, len(keys), *keys, *args))
        return lambda: reply

    def read(self, keys: Sequence[str]) -> list[Any]:
        if self._cluster and len(keys) > 1 and in_greenlet():
            with self._errors:
                # One MGET per hash slot, pipelined: one round trip per node.
                return list(wait_for(self._given.mget_nonatomic(keys)))
        return super().read(keys)

    def close(self) -> None:
        """Close the synchronous connections and, in a greenlet, the running loop's
        own connections (those of other loops are dropped with their loops)."""
        super().close()
        if in_greenlet():
            for connection in self._idle.pop(asyncio.get_running_loop(), []):
                wait_for(connection.disconnect())
        self._idle = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"<AsyncRedisStore {self.location} prefix={self.keymaker.prefix!r}>"


class _AwaitedReplies(_Replies):
    """The replies owed to commands :meth:`_GreenletRedisStore._send_now` sent, read by
    ``receive()`` in a greenlet; the connection goes back to its loop's idle ones once
    every reply is read, and is closed when the reading is cut short."""

    def __init__(
        self,
        connection: Any,
        count: int,
        idle: list[Any],
        response_errors: tuple[type[Exception], ...],
    ) -> None:
        super().__init__(connection, count, None)
        self._idle = idle
        self._response_errors = response_errors

    def collect(self) -> None:
        if self._replies is not None or self._error is not None:
            return
        try:
            self._replies = wait_for(self._read())
        except Exception as exc:  # kept for receive(), as the synchronous replies are
            self._error = exc

    async def _read(self) -> list[Any]:
        connection = self._connection
        replies: list[Any] = []
        error: Exception | None = None
        try:
            for _ in range(self._count):
                try:
                    replies.append(await connection.read_response())
                except self._response_errors as exc:  # read the others all the same
                    error = error or exc
                    replies.append(exc)
        except BaseException:
            # A failure, a timeout, a cancelled task: a reply left unread would answer
            # the next command.  Never reuse the connection.
            await connection.disconnect(nowait=True)
            raise
        if len(self._idle) < MAX_IDLE:
            self._idle.append(connection)
        else:
            await connection.disconnect()
        if error is not None:
            raise error
        return replies


def _idle_and_sound(connection: Any) -> bool:
    """Whether ``connection`` is connected, with nothing left to read, and its server has
    not closed it, as far as its stream tells without waiting: the event loop reads a
    connection's socket whenever it runs, so a reply left over or the server's close
    shows there.  A connection this cannot vouch for is checked by :func:`_ready`."""
    reader = getattr(connection, "_reader", None)
    return (
        connection.is_connected
        and isinstance(reader, asyncio.StreamReader)
        and not reader.at_eof()
        and not getattr(reader, "_buffer", True)  # its unread bytes; unknown: not vouched for
        and reader.exception() is None
    )


async def _ready(connection: Any, failures: tuple[type[BaseException], ...]) -> None:
    """Connect ``connection`` if it is not; start it afresh if it is stale: what a pool
    checks before lending a connection (nothing is left unread, and the server has not
    closed it, as a restart does)."""
    await connection.connect()  # at once when connected
    try:
        stale = await _can_read(connection)
    except failures:
        stale = True
    if stale:
        await connection.disconnect()
        await connection.connect()


async def _can_read(connection: Any) -> bool:
    """Whether ``connection`` has something to read before a command is sent: a reply
    left over, or the end of a socket its server closed (``can_read`` from redis-py 5.1
    on, ``can_read_destructive`` before)."""
    check = getattr(connection, "can_read", None) or connection.can_read_destructive
    return bool(await check())


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
        if "SSL" in client.connection_kwargs.get("connection_class", type).__name__:
            settings["ssl"] = True
        return redis.cluster.RedisCluster(
            startup_nodes=[redis.cluster.ClusterNode(n.host, n.port) for n in nodes],  # type: ignore[no-untyped-call]
            **settings,
        )
    settings = {
        _SYNC_NAMES.get(k, k): v
        for k, v in client.connection_pool.connection_kwargs.items()
        if k in _COPIED
    }
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
            threads use a synchronous client made from its address and settings (host,
            port or socket path, database, username and password or credential
            provider, timeouts, TLS files); a client configured otherwise (a custom
            connection class) is better given as ``url``.  For a cluster, that client
            asks a startup node for the slots when the store is built.
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
