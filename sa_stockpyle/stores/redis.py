"""RedisStore: objects in Redis or a Redis Cluster, as safe bytes payloads.

redis-py is imported when a store is constructed, never when this module is.  Every call
is one round trip per server: ``GET`` or ``MGET`` for reads (one ``MGET`` per hash slot,
pipelined per node, on a cluster), one non-transactional pipeline of ``SET ... PX`` for
writes and one script call for conditional writes (per slot, pipelined per node, on a
cluster).

A store that builds its client from a URL sends its commands on a connection of each
thread's own, with redis-py's ``Connection`` calls: the client's per-command path (the
pool's checkout and release, the retry wrapper, metrics hooks) takes about as long as a
loopback round trip itself.  A client given by the caller is used through its own API,
with its own pool, retries and hooks.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sa_stockpyle.codec import (
    LifetimeCallback,
    now,
)
from sa_stockpyle.errors import ConfigurationError
from sa_stockpyle.stores.backend_errors import ErrorTranslator
from sa_stockpyle.stores.base import Clock
from sa_stockpyle.stores.channel import Channel
from sa_stockpyle.stores.keyvalue import BaseKeyValueStore
from sa_stockpyle.stores.ops import Op, OpKind
from sa_stockpyle.stores.redis_channel import RedisChannel
from sa_stockpyle.stores.redis_script import APPLY
from sa_stockpyle.stores.shared import SharedPayloads

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
        signing_key: bytes (16 to 64) shared by every process of the application:
            payloads carry a MAC of themselves, and one that does not match is a miss
            (see docs/security.md).  None (the default): unsigned.

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
        signing_key: bytes | None = None,
    ) -> None:
        if (url is None) == (client is None):
            raise ConfigurationError(
                "RedisStore takes exactly one of url= (e.g. 'redis://localhost:6379/0') or "
                f"client= (a redis.Redis or redis.cluster.RedisCluster); got url={url!r}, "
                f"client={client!r}"
            )
        super().__init__(
            polymorphic=polymorphic,
            lifetime_cb=lifetime_cb,
            prefix=prefix,
            clock=clock,
            signing_key=signing_key,
        )
        try:
            import redis  # noqa: PLC0415 - optional dependency, loaded only when used
            from redis.backoff import NoBackoff  # noqa: PLC0415
            from redis.retry import Retry  # noqa: PLC0415
        except ImportError as exc:
            raise ImportError(
                'RedisStore needs redis-py: pip install "sa_stockpyle[redis]"'
            ) from exc
        # A client the store built is its own: each thread sends on a connection of its own
        # made by the client's pool's recipe (see _send); close() closes them all.
        self._pool: Any = None
        if client is None:
            # redis-py retries 10 times with backoff by default: a dead server would hold
            # every request for seconds.  A connection is checked before each use and
            # reconnected when stale, so no retry is needed to survive a server restart.
            client = redis.Redis.from_url(
                str(url),
                socket_connect_timeout=connect_timeout,
                socket_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
            )
            self._pool = client.connection_pool
        self.client = client
        self._script = client.register_script(APPLY)
        self._threads = threading.local()
        # The arguments are str, bytes and int: hiredis packs them as they are, without
        # the per-argument conversions of redis-py's packer (a tenth of a millisecond for
        # a commit of 100 rows).  hiredis comes with the redis extra; without it, redis-py
        # packs.
        self._pack_command: Callable[[tuple[Any, ...]], bytes] | None = None
        with contextlib.suppress(ImportError):
            from hiredis import pack_command  # noqa: PLC0415 - optional, with redis-py

            self._pack_command = pack_command
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self.location = url if url is not None else repr(client)
        self._cluster = isinstance(client, redis.cluster.RedisCluster)
        # Nodes of a cluster have clocks of their own: tombstones and leases at keys on
        # different nodes cannot be compared.
        self.compares_tombstone_times = not self._cluster
        exceptions = redis.exceptions
        self._no_script = exceptions.NoScriptError
        self._response_error = exceptions.ResponseError
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

    def _execute(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` in one round trip and return their replies, in order; the
        first error reply raises."""
        return self._send(commands).receive()

    def _pack(self, commands: Sequence[tuple[Any, ...]]) -> list[bytes] | None:
        """``commands`` as the packet the store's own connections send, where they can be
        packed ahead (hiredis packs them; else each connection packs them as it sends,
        and so does a caller's client)."""
        pack = self._pack_command
        if pack is None or self._pool is None:
            return None
        return [b"".join([pack(command) for command in commands])]

    def _packet(
        self, commands: Sequence[tuple[Any, ...]], packed: list[bytes] | None, connection: Any
    ) -> list[bytes]:
        """What ``connection`` sends for ``commands``: ``packed`` ahead, or packed now."""
        return packed or self._pack(commands) or connection.pack_commands(commands)

    def _send(
        self, commands: Sequence[tuple[Any, ...]], packed: list[bytes] | None = None
    ) -> _Replies:
        """Send ``commands`` (``packed`` ahead by :meth:`_pack`, or not) in one packet;
        their replies are read by ``receive()``."""
        pool = self._pool
        if pool is None:
            # The caller's client (or a cluster): through its API, with its retries, and
            # at once.
            if len(commands) == 1:
                return _Replies.read([self.client.execute_command(*commands[0])])  # type: ignore[no-untyped-call]
            pipe = self.client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            return _Replies.read(pipe.execute())
        threads = self._threads
        owed: _Replies | None = getattr(threads, "owed", None)
        if owed is not None:
            owed.collect()  # replies to commands this thread sent ahead come first
        connection = getattr(threads, "connection", None)
        if connection is None or connection.pid != os.getpid():
            # The first call of this thread, or of a forked child (the parent's socket is
            # the parent's; redis-py only closes it here, without a shutdown).
            connection = threads.connection = pool.connection_class(**pool.connection_kwargs)
            self._connections.add(connection)
        try:
            # What the pool checks before lending a connection: nothing is left unread,
            # and the server has not closed it (a restart).  Either way, start afresh.
            stale = connection.can_read()
        except self._errors.timeouts:
            # can_read() connects a new connection, and only that handshake can wait: a
            # server that did not answer it would not answer a second one either.
            raise
        except self._errors.failures:
            stale = True
        if stale:
            connection.disconnect()
        try:
            connection.send_packed_command(self._packet(commands, packed, connection))
        except BaseException:
            connection.disconnect()  # a command sent in part would garble the next
            raise
        owed = threads.owed = _Replies(connection, len(commands), threads)
        return owed

    def _evalsha(self, keys: Sequence[str], args: Sequence[Any]) -> tuple[Any, ...]:
        """The command that runs the ``APPLY`` script by its digest."""
        return ("EVALSHA", self._script.sha, len(keys), *keys, *args)

    def _start_eval(
        self, keys: Sequence[str], args: Sequence[Any], packed: list[bytes] | None = None
    ) -> Callable[[], Any]:
        """Send the ``APPLY`` script by its digest (:meth:`_evalsha`, ``packed`` ahead or
        not); the call returned reads its reply, loading the script when the server lacks
        it."""
        # A new, restarted or flushed server (SCRIPT FLUSH) lacks the script: EVAL runs it
        # and caches it there.  A caller's client or a cluster answers at once, so the
        # miss shows when the command is sent; the store's own connections, at the reply.
        evaluate = ("EVAL", APPLY, len(keys), *keys, *args)
        if self._cluster:
            try:
                reply = self._script(keys=keys, args=args)
            except self._no_script:
                reply = self.client.execute_command(*evaluate)  # type: ignore[no-untyped-call]
            return lambda: reply
        try:
            sent = self._send([self._evalsha(keys, args)], packed)
        except self._no_script:
            sent = self._send([evaluate])

        def receive() -> Any:
            try:
                return sent.receive()[0]
            except self._no_script:
                return self._execute([evaluate])[0]

        return receive

    def read(self, keys: Sequence[str]) -> list[Any]:
        with self._errors:
            if len(keys) == 1:
                # A lone GET: a one-key MGET is an array reply, ~20% slower through redis-py.
                try:
                    return self._execute([("GET", keys[0])])
                except self._response_error as exc:
                    if not str(exc).startswith("WRONGTYPE"):
                        raise
                    return [None]  # another type of value (a list): nothing, as MGET reads it
            if self._cluster:
                # One MGET per hash slot, pipelined: one round trip per node.
                return self.client.mget_nonatomic(keys)  # type: ignore[union-attr]
            return self._execute([("MGET", *keys)])[0]  # type: ignore[no-any-return]

    def write(self, items: Sequence[tuple[str, Any, float | None]]) -> None:
        # One round trip: one MSET for the values that never expire (a single command,
        # packed once; SETs on a cluster, where MSET may not span hash slots) and a
        # SET PX for each that does.
        clock_now = self.clock()
        commands: list[tuple[Any, ...]] = []
        forever: list[tuple[str, Any]] = []
        for key, raw, expires_at in items:
            if expires_at is None:
                forever.append((key, raw))
                continue
            # Native TTL relative to the store's clock, rounded up: the record's own expiry
            # (checked on decode) is exact, the server only reclaims memory.
            millis = math.ceil((expires_at - clock_now) * 1000)
            commands.append(("SET", key, raw, "PX", millis) if millis > 0 else ("DEL", key))
        if forever and self._cluster:
            commands += [("SET", key, raw) for key, raw in forever]
        elif forever:
            commands.append(("MSET", *(part for pair in forever for part in pair)))
        if commands:
            with self._errors:
                self._execute(commands)

    def apply(self, ops: Sequence[Op]) -> list[Any]:
        return self._prepare_run(ops, ())()()[0]

    def start_apply_then_read(
        self, ops: Sequence[Op], keys: Sequence[str]
    ) -> Callable[[], tuple[list[Any], list[Any]]]:
        # In the same script call, after the writes: one round trip instead of two.  Not
        # on a cluster, where the writes take one call per hash slot.
        if self._cluster:
            return super().start_apply_then_read(ops, keys)
        return self._prepare_run(ops, keys)()

    def prepare_apply_then_read(
        self, ops: Sequence[Op], keys: Sequence[str]
    ) -> Callable[[], Callable[[], tuple[list[Any], list[Any]]]]:
        if self._cluster:
            return super().prepare_apply_then_read(ops, keys)
        return self._prepare_run(ops, keys)

    def _prepare_run(
        self, ops: Sequence[Op], reads: Sequence[str]
    ) -> Callable[[], Callable[[], tuple[list[Any], list[Any]]]]:
        # One script call checks and writes every key atomically, then reads ``reads``.  On
        # a cluster (never with reads), one call per hash slot (a script may not span
        # slots; a cluster pipeline refuses EVALSHA), and tombstones go out in one
        # pipeline: their times are never compared there.  The arguments are built here;
        # the call returned sends them, and the call it returns reads the replies: the
        # results of ``ops``, and the values of ``reads``.  A TTL counted from the build
        # may outlast its entry by the time until the send (a COMMIT's round trip): the
        # payload's own expiry, which every read checks, is exact.
        clock_now = self.clock()
        results: list[Any] = [None] * len(ops)
        groups: dict[int, list[int]] = {}
        tombstoned: list[int] = []
        tomb = OpKind.TOMBSTONE  # read once: an enum member costs an attribute lookup
        if self._cluster:
            tombstoned = [p for p, op in enumerate(ops) if op.kind is tomb]
            keyslot = self.client.keyslot  # type: ignore[union-attr]
            for position, op in enumerate(ops):
                if op.kind is not tomb:
                    groups.setdefault(keyslot(op.key), []).append(position)
        else:
            groups[0] = list(range(len(ops)))
        calls: list[tuple[list[int], list[str], list[Any], list[bytes] | None]] = []
        for positions in groups.values():
            tombs = [p for p in positions if ops[p].kind is tomb]
            others = [p for p in positions if ops[p].kind is not tomb]
            args: list[Any] = [math.ceil(self.tombstone_ttl * 1000), len(tombs), len(reads)]
            for position in others:
                kind, _key, raw, expires_at, arg = ops[position]
                millis = (
                    0 if expires_at is None else max(1, math.ceil((expires_at - clock_now) * 1000))
                )
                args += [kind, b"" if raw is None else raw, millis, b"" if arg is None else arg]
            for position in tombs:
                results[position] = True  # unconditional: the script has no reply for it
            keys = [*(ops[p].key for p in tombs + others), *reads]
            packed = None if self._cluster else self._pack([self._evalsha(keys, args)])
            calls.append((others, keys, args, packed))

        def send() -> Callable[[], tuple[list[Any], list[Any]]]:
            sent: list[tuple[list[int], Callable[[], Any]]] = []
            if tombstoned:
                tomb, tomb_expires = self._tombstone()
                self.write([(ops[p].key, tomb, tomb_expires) for p in tombstoned])
                for position in tombstoned:
                    results[position] = True
            with self._errors:
                for others, keys, args, packed in calls:
                    sent.append((others, self._start_eval(keys, args, packed)))

            def receive() -> tuple[list[Any], list[Any]]:
                read: list[Any] = []
                with self._errors:
                    for others, reply in sent:
                        replies = reply()
                        read = replies[len(others) :]
                        for position, result in zip(others, replies[: len(others)], strict=True):
                            if isinstance(result, list) and len(result) == 1:
                                # a lease taken, at this time
                                results[position] = float(result[0])
                            elif isinstance(result, list):
                                # held, and when
                                results[position] = (result[0], float(result[1]))
                            else:
                                results[position] = result == 1
                return results, read

            return receive

        return send

    def backend_channel(self, name: str) -> Channel:
        """The pub/sub channel ``name`` of this store: ``prefix:db:name`` (pub/sub spans
        every database of a server, and other prefixes are other caches).  On a cluster,
        a PUBLISH reaches the subscribers of every node."""
        pool = getattr(self.client, "connection_pool", None)
        db = pool.connection_kwargs.get("db", 0) if pool is not None else 0
        return RedisChannel(self, f"{self.keymaker.prefix}:{db}:{name}")

    def close(self) -> None:
        """Close the client's connections, and every thread's, if the store built the
        client."""
        if self._pool is not None:  # the store built the client
            for connection in list(self._connections):
                connection.disconnect()
            self.client.close()

    def __repr__(self) -> str:
        return f"<RedisStore {self.location} prefix={self.keymaker.prefix!r}>"


class _Replies:
    """The replies owed to commands sent on one thread's connection, read by
    :meth:`receive`.

    Until they are read they come first on that connection: a later command of the same
    thread :meth:`collect` s them before it is sent, and they wait here for
    :meth:`receive`.
    """

    def __init__(self, connection: Any, count: int, threads: threading.local | None) -> None:
        self._connection = connection
        self._count = count
        self._threads = threads
        self._sender = threading.get_ident()
        self._replies: list[Any] | None = None
        self._error: Exception | None = None

    @classmethod
    def read(cls, replies: list[Any]) -> _Replies:
        """Replies read already (through a client's own API)."""
        done = cls(None, len(replies), None)
        done._replies = replies
        return done

    def collect(self) -> None:
        """Read the replies off the connection, once; an error is kept for receive()."""
        threads = self._threads
        if threads is not None and getattr(threads, "owed", None) is self:
            threads.owed = None
        if self._replies is not None or self._error is not None:
            return
        if threading.get_ident() != self._sender:
            # The sender's thread may be using its connection right now.
            raise RuntimeError(
                "a Redis write started on one thread is being finished on another; finish "
                "it on the thread that started it (see BaseStore.start_committed)"
            )
        try:
            self._replies = [self._connection.read_response() for _ in range(self._count)]
        except Exception as exc:
            # A reply left unread would answer the next command: never reuse it.
            self._connection.disconnect()
            self._error = exc
        except BaseException:
            self._connection.disconnect()
            raise

    def receive(self) -> list[Any]:
        """The replies, in order; the first error reply (or a failure) raises."""
        self.collect()
        if self._error is not None:
            raise self._error
        if self._replies is None:  # collect() sets one of the two
            raise RuntimeError("Redis replies were neither read nor failed")
        return self._replies
