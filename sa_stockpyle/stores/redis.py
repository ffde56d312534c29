"""RedisStore: objects in Redis or a Redis Cluster, as safe bytes payloads.

redis-py is imported when a store is constructed, never when this module is.  Every call
is one round trip per server: ``GET`` or ``MGET`` for reads (one ``MGET`` per hash slot,
pipelined per node, on a cluster), one non-transactional pipeline of ``SET ... PX`` for
writes and one ``DEL`` (per slot, pipelined per node, on a cluster) for deletes.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sa_stockpyle.codec import LifetimeCallback, now
from sa_stockpyle.errors import ConfigurationError, StoreTimeout
from sa_stockpyle.stores.base import (
    BaseKeyValueStore,
    Channel,
    Clock,
    ErrorTranslator,
    Op,
    SharedPayloads,
    Subscription,
)

if TYPE_CHECKING:
    import redis
    import redis.cluster

__all__ = ["HEALTH_CHECK_INTERVAL", "MAX_SILENCE", "RedisStore"]

#: Seconds between the PINGs a subscription sends to find out that its server is gone.
HEALTH_CHECK_INTERVAL = 1.0
#: A subscription that heard nothing, not even a PONG, for this long counts as lost.
MAX_SILENCE = 3.0

#: The conditional writes of BaseKeyValueStore._apply, atomic per call.  ARGV: the
#: tombstone TTL in ms, the number of keys that only get a tombstone (they come first) and
#: the number of keys that are only read once everything is written (they come last),
#: then per other key: kind, value, TTL in ms (0: none), argument (the lease a fill
#: expects, the version a newer write carries, the time an add compares tombstones with).
#: Tombstones and leases are stamped with the server's clock (TIME).
_APPLY = """
local tomb_ms, tombs, reads = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = string.format('%d.%06d', t[1], t[2])
local tomb = 'SPKT:' .. now .. ':0'
local replies = {}
-- the first ``tombs`` keys only get a tombstone: no value, TTL or argument is passed
for i = 1, tombs do
  redis.call('SET', KEYS[i], tomb, 'PX', tomb_ms)
  replies[i] = 1
end
for i = tombs + 1, #KEYS - reads do
  local key = KEYS[i]
  local at = 3 + (i - tombs - 1) * 4
  local kind, raw, px, arg = ARGV[at + 1], ARGV[at + 2], tonumber(ARGV[at + 3]), ARGV[at + 4]
  local current = kind ~= 'S' and redis.call('GET', key)
  local head = current and string.sub(current, 1, 4)
  local done = false
  if kind == 'S' then
    done = true
  elseif kind == 'T' then
    raw, px, done = tomb, tomb_ms, true
  elseif kind == 'A' then
    if not current then
      done = true
    elseif head == 'SPKT' and arg ~= '' then
      -- a tombstone written before the reader's lease: the database read saw its commit
      local written = tonumber(string.match(current, '^SPKT:([%d.]+):'))
      done = written ~= nil and written < tonumber(arg)
    end
  elseif kind == 'F' or kind == 'R' then
    -- by token: a lease taken over a tombstone was stored with a longer expiry
    local token = string.match(arg, '^SPKL:([^:]+):')
    done = head == 'SPKL' and string.match(current, '^SPKL:([^:]+):') == token
    if done and kind == 'R' then raw, px = tomb, tomb_ms end
  elseif kind == 'N' then
    if head == 'SPKL' or head == 'SPKT' then
      -- not written over a marker (a removal there may be newer), but stamped now: a
      -- lease holder may have read an older state, and so may a reader that adds
      redis.call('SET', key, tomb, 'PX', tomb_ms)
    elseif not current then
      done = true
    elseif head ~= 'SPKT' then
      local held = string.match(current, '^SPK1{"v":(%d+),')
      done = held == nil or tonumber(held) < tonumber(arg)
    end
  elseif not current or head == 'SPKT' then
    if current then
      -- never shorten a tombstone: it outlives readers that missed before it
      local left = redis.call('PTTL', key)
      if left > px then px = left end
    end
    local token = string.match(raw, '^SPKL:([^:]+):')
    raw, done = 'SPKL:' .. token .. ':' .. now .. ':0', true
  end
  if done then
    if px > 0 then redis.call('SET', key, raw, 'PX', px) else redis.call('SET', key, raw) end
    replies[i] = kind == 'L' and {now} or 1
  elseif kind == 'L' then
    replies[i] = {current, now}
  else
    replies[i] = 0
  end
end
for i = #KEYS - reads + 1, #KEYS do
  replies[i] = redis.call('GET', KEYS[i])
end
return replies
"""


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
        self._script = client.register_script(_APPLY)
        self.location = url if url is not None else repr(client)
        self._cluster = isinstance(client, redis.cluster.RedisCluster)
        # Nodes of a cluster have clocks of their own: tombstones and leases at keys on
        # different nodes cannot be compared.
        self.compares_tombstone_times = not self._cluster
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
        # One pipeline, one round trip: one MSET for the values that never expire (a
        # single command, packed once) and a SET PX for each that does.
        clock_now = self.clock()
        with self._errors:
            pipe = self.client.pipeline(transaction=False)
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

    def _apply(self, ops: Sequence[Op]) -> list[Any]:
        return self._run(ops, ())[0]

    def _apply_then_read(
        self, ops: Sequence[Op], keys: Sequence[str]
    ) -> tuple[list[Any], list[Any]]:
        # In the same script call, after the writes: one round trip instead of two.  Not
        # on a cluster, where the writes take one call per hash slot.
        if self._cluster:
            return super()._apply_then_read(ops, keys)
        return self._run(ops, keys)

    def _run(self, ops: Sequence[Op], reads: Sequence[str]) -> tuple[list[Any], list[Any]]:
        # One script call checks and writes every key atomically, then reads ``reads``.  On
        # a cluster (never with reads), one call per hash slot (a script may not span
        # slots; a cluster pipeline refuses EVALSHA), and tombstones go out in one
        # pipeline: their times are never compared there.
        clock_now = self.clock()
        results: list[Any] = [None] * len(ops)
        read: list[Any] = []
        groups: dict[int, list[int]] = {}
        if self._cluster:
            tombs = [p for p, op in enumerate(ops) if op.kind == "T"]
            if tombs:
                tomb, tomb_expires = self._tombstone()
                self._write([(ops[p].key, tomb, tomb_expires) for p in tombs])
                for position in tombs:
                    results[position] = True
            keyslot = self.client.keyslot  # type: ignore[union-attr]
            for position, op in enumerate(ops):
                if op.kind != "T":
                    groups.setdefault(keyslot(op.key), []).append(position)
        else:
            groups[0] = list(range(len(ops)))
        with self._errors:
            for positions in groups.values():
                tombs = [p for p in positions if ops[p].kind == "T"]
                others = [p for p in positions if ops[p].kind != "T"]
                args: list[Any] = [math.ceil(self.tombstone_ttl * 1000), len(tombs), len(reads)]
                for position in others:
                    kind, _key, raw, expires_at, arg = ops[position]
                    millis = (
                        0
                        if expires_at is None
                        else max(1, math.ceil((expires_at - clock_now) * 1000))
                    )
                    args += [
                        kind,
                        b"" if raw is None else raw,
                        millis,
                        b"" if arg is None else arg,
                    ]
                order = tombs + others
                replies = self._script(keys=[*(ops[p].key for p in order), *reads], args=args)
                read = replies[len(order) :]
                for position, reply in zip(order, replies[: len(order)], strict=True):
                    if isinstance(reply, list) and len(reply) == 1:
                        results[position] = float(reply[0])  # a lease taken, at this time
                    elif isinstance(reply, list):
                        results[position] = (reply[0], float(reply[1]))  # held, and when
                    else:
                        results[position] = reply == 1
        return results, read

    def channel(self, name: str) -> Channel:
        """The pub/sub channel ``name`` of this store: ``prefix:db:name`` (pub/sub spans
        every database of a server, and other prefixes are other caches).  On a cluster,
        a PUBLISH reaches the subscribers of every node."""
        pool = getattr(self.client, "connection_pool", None)
        db = pool.connection_kwargs.get("db", 0) if pool is not None else 0
        return _RedisChannel(self, f"{self.keymaker.prefix}:{db}:{name}")

    def close(self) -> None:
        """Close the client's connections if the store built the client."""
        if self._owns_client:
            self.client.close()

    def __repr__(self) -> str:
        return f"<RedisStore {self.location} prefix={self.keymaker.prefix!r}>"


class _RedisChannel(Channel):
    def __init__(self, store: RedisStore, name: str) -> None:
        self.store = store
        self.name = name

    def publish(self, messages: Sequence[bytes]) -> None:
        store = self.store
        with store._errors:
            if store._cluster:
                for message in messages:
                    store.client.publish(self.name, message)
                return
            pipe = store.client.pipeline(transaction=False)
            for message in messages:
                pipe.publish(self.name, message)
            pipe.execute()

    def subscribe(self) -> Subscription:
        store = self.store
        with store._errors:
            pubsub = store.client.pubsub()  # type: ignore[no-untyped-call]
            pubsub.subscribe(self.name)
            # Subscribed once the server confirms: only then is nothing published missed.
            deadline = time.monotonic() + MAX_SILENCE
            while time.monotonic() < deadline:
                message = pubsub.get_message(timeout=0.1)
                if message is not None and message["type"] in ("subscribe", "ssubscribe"):
                    return _RedisSubscription(pubsub, store._errors)
        pubsub.close()
        raise StoreTimeout(f"{store._errors.backend}: SUBSCRIBE was not confirmed")


class _RedisSubscription(Subscription):
    def __init__(self, pubsub: Any, errors: ErrorTranslator) -> None:
        self.pubsub = pubsub
        self.errors = errors
        self.pinged = self.heard = time.monotonic()

    def receive(self, timeout: float) -> list[bytes]:
        messages: list[bytes] = []
        with self.errors:
            if time.monotonic() - self.pinged >= HEALTH_CHECK_INTERVAL:
                # A frozen or partitioned server closes nothing: only its silence tells.
                self.pubsub.ping()
                self.pinged = time.monotonic()
            message = self.pubsub.get_message(timeout=timeout)
            while message is not None:
                self.heard = time.monotonic()
                if message["type"] in ("message", "smessage"):
                    messages.append(message["data"])
                message = self.pubsub.get_message(timeout=0)
        if time.monotonic() - self.heard > MAX_SILENCE:
            raise StoreTimeout(f"{self.errors.backend}: no answer to PING in {MAX_SILENCE} s")
        return messages

    def close(self) -> None:
        # Closing a connection that broke may fail in any way; it is gone either way.
        with contextlib.suppress(Exception):
            self.pubsub.close()
