"""MemcacheStore: objects in memcached, one server or a consistent-hashing pool.

pymemcache is imported when a store is constructed, never when this module is.  Every
call is one round trip per server: ``get_many``, ``set_many`` (one per distinct lifetime
in the batch) and ``delete_many`` on the client of each server that owns some of the
keys.  Cache keys already meet memcached's rules (see :mod:`sa_stockpyle.keys`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from sa_stockpyle.codec import LifetimeCallback, now
from sa_stockpyle.errors import ConfigurationError, StoreUnavailable
from sa_stockpyle.stores.backend_errors import ErrorTranslator
from sa_stockpyle.stores.base import Clock
from sa_stockpyle.stores.keyvalue import BaseKeyValueStore
from sa_stockpyle.stores.ops import Op, OpKind
from sa_stockpyle.stores.shared import SharedPayloads

__all__ = ["MAX_CAS_ATTEMPTS", "MAX_RELATIVE_TTL", "MemcacheStore"]

#: memcached reads an expiry above 30 days as an absolute Unix time, not a duration.
MAX_RELATIVE_TTL = 30 * 86400

#: How often a conditional write looks again after losing a compare-and-set race.
MAX_CAS_ATTEMPTS = 8


class MemcacheStore(SharedPayloads, BaseKeyValueStore):
    """Objects in memcached, with native expiry.

    Parameters:
        servers: ``["host:port", ...]``.  One server gets a ``PooledClient``, several a
            ``HashClient`` (rendezvous hashing, one pooled client per server): a store is
            shared by the threads of a process, and a plain ``Client`` is not
            thread-safe.
        client: instead of ``servers``, a ready pymemcache ``Client``, ``PooledClient`` or
            ``HashClient``.  It must hand values through as bytes (no serde), and
            ``default_noreply=False`` is advised.  The store does not close it.
        polymorphic: also store each object under every base class that declares
            ``__stockpyle_keys__`` (see :class:`~sa_stockpyle.stores.BaseKeyValueStore`).
        lifetime_cb: ``lifetime_cb(obj)`` returns the object's lifetime; see
            :class:`~sa_stockpyle.stores.BaseKeyValueStore`.
        prefix: the first part of every cache key.
        clock: returns the current Unix time; injected by tests.
        connect_timeout: seconds to wait for a connection (clients built from ``servers``).
        timeout: seconds to wait for a reply (clients built from ``servers``).
        signing_key: bytes (16 to 64) shared by every process of the application:
            payloads carry a MAC of themselves, and one that does not match is a miss
            (see docs/security.md).  None (the default): unsigned.

    Failures of a server raise :class:`~sa_stockpyle.errors.StoreUnavailable` (or its
    :class:`~sa_stockpyle.errors.StoreTimeout`).  A value larger than the server's item
    size limit (1 MB by default) is refused the same way.
    """

    compares_tombstone_times = False

    def __init__(
        self,
        servers: Sequence[str] | None = None,
        client: Any = None,
        polymorphic: bool = False,
        lifetime_cb: LifetimeCallback | None = None,
        prefix: str = "stockpyle",
        clock: Clock = now,
        connect_timeout: float = 0.25,
        timeout: float = 0.5,
        signing_key: bytes | None = None,
    ) -> None:
        if (servers is None) == (client is None) or isinstance(servers, str) or servers == []:
            raise ConfigurationError(
                "MemcacheStore takes exactly one of servers= (a non-empty list of "
                f"'host:port' strings) or client= (a pymemcache client); got "
                f"servers={servers!r}, client={client!r}"
            )
        super().__init__(
            polymorphic=polymorphic,
            lifetime_cb=lifetime_cb,
            prefix=prefix,
            clock=clock,
            signing_key=signing_key,
        )
        try:
            from pymemcache import exceptions  # noqa: PLC0415 - optional, loaded when used
            from pymemcache.client.base import PooledClient  # noqa: PLC0415
            from pymemcache.client.hash import HashClient  # noqa: PLC0415
        except ImportError as exc:
            raise ImportError(
                'MemcacheStore needs pymemcache: pip install "sa_stockpyle[memcache]"'
            ) from exc
        self._owns_client = client is None
        if servers is not None:
            # No serde: pymemcache then passes bytes through untouched and never unpickles.
            options = {
                "connect_timeout": connect_timeout,
                "timeout": timeout,
                "no_delay": True,
                "default_noreply": False,
            }
            if len(servers) == 1:
                client = PooledClient(servers[0], **options)
            else:
                client = HashClient(list(servers), use_pooling=True, **options)
        self.client = client
        self.location = ",".join(servers) if servers is not None else repr(client)
        # HashClient's own batch calls are not used: its delete_many deletes key by key,
        # and on a failing server it returns defaults silently, then drops the server from
        # the ring so its keys move to others (and come back stale when it returns). The
        # store groups keys by server through the client's ring and calls each server's
        # client once, so a failure is always raised and a key never changes server.
        self._ring = client if isinstance(client, HashClient) else None
        self._errors = ErrorTranslator(
            f"memcached at {self.location}",
            timeouts=(TimeoutError,),
            # Unreachable, closed mid-reply, SERVER_ERROR (out of memory, item too large),
            # or an unparsable reply.  CLIENT_ERROR and illegal input mean a bug.
            failures=(
                OSError,
                exceptions.MemcacheServerError,
                exceptions.MemcacheUnknownError,
            ),
        )

    def _by_server(self, keys: Sequence[str]) -> list[tuple[Any, list[str]]]:
        """Group ``keys`` by the client of the server that owns them."""
        ring = self._ring
        if ring is None:
            return [(self.client, list(keys))]
        groups: dict[str, list[str]] = {}
        get_node = ring.hasher.get_node
        for key in keys:
            node = get_node(key)
            if node is None:
                raise StoreUnavailable(f"memcached at {self.location}: no server in the ring")
            groups.setdefault(node, []).append(key)
        return [(ring.clients[node], group) for node, group in groups.items()]

    def read(self, keys: Sequence[str]) -> list[Any]:
        found: dict[str, bytes] = {}
        with self._errors:
            for client, group in self._by_server(keys):
                found.update(client.get_many(group))
        return [found.get(key) for key in keys]

    def write(self, items: Sequence[tuple[str, Any, float | None]]) -> None:
        clock_now = self.clock()
        by_expire: dict[int, dict[str, bytes]] = {}
        expired: list[str] = []
        for key, raw, expires_at in items:
            expire = _exptime(expires_at, clock_now)
            if expire is None:
                expired.append(key)
            else:
                by_expire.setdefault(expire, {})[key] = raw
        refused: list[str] = []
        with self._errors:
            for expire, values in by_expire.items():
                for client, group in self._by_server(list(values)):
                    refused += client.set_many(
                        {key: values[key] for key in group}, expire=expire, noreply=False
                    )
        if expired or refused:
            # A refused set must not leave the previous value behind: drop it instead.
            self._remove([*expired, *refused])
        if refused:
            raise StoreUnavailable(f"memcached at {self.location} did not store {refused!r}")

    def apply(self, ops: Sequence[Op]) -> list[Any]:
        # memcached has no scripts and no multi-key compare-and-set: each conditional write
        # is gets, then add or cas, on the key's server (unconditional ones are batched).
        # Without a server clock to compare with, an add never replaces a tombstone.
        clock_now = self.clock()
        results: list[Any] = [None] * len(ops)
        tomb, tomb_expires = self._tombstone()
        sets = [(p, op) for p, op in enumerate(ops) if op.kind in (OpKind.SET, OpKind.TOMBSTONE)]
        if sets:
            self.write(
                [
                    (op.key, op.raw, op.expires_at)
                    if op.kind == OpKind.SET
                    else (op.key, tomb, tomb_expires)
                    for _, op in sets
                ]
            )
            for position, _ in sets:
                results[position] = True
        with self._errors:
            for position, op in enumerate(ops):
                if op.kind not in (OpKind.SET, OpKind.TOMBSTONE):
                    client = self._by_server([op.key])[0][0]
                    results[position] = self._apply_one(client, op, clock_now)
        return results

    def _apply_one(self, client: Any, op: Op, clock_now: float) -> Any:
        kind, key, raw, expires_at, arg = op
        expire = _exptime(expires_at, clock_now) or 0
        if kind == OpKind.RELEASE:
            raw, expires_at = self._tombstone()
            expire = _exptime(expires_at, clock_now) or 0
        for _ in range(MAX_CAS_ATTEMPTS):
            current, token = client.gets(key)
            if current is None:
                if kind in (OpKind.FILL, OpKind.RELEASE):
                    return False
                if client.add(key, raw, expire=expire, noreply=False):
                    return float(clock_now) if kind == OpKind.LEASE else True
                continue  # written meanwhile: look again
            marker = self.marker_of(current)
            if kind == OpKind.ADD:
                return False
            if kind in (OpKind.FILL, OpKind.RELEASE):
                lease = self.marker_of(arg)
                ours = marker is not None and lease is not None and marker.lease == lease.lease
                return ours and bool(client.cas(key, raw, token, expire=expire, noreply=False))
            if kind == OpKind.NEWER:
                if marker is not None:
                    # Not written over a marker (a removal there may be newer), but a
                    # lease there is voided: its holder may have read an older state.
                    tomb, tomb_expires = self._tombstone()
                    raw, expire = tomb, _exptime(tomb_expires, clock_now) or 0
                else:
                    held = self.version_held(current)
                    if held is not None and held >= arg:
                        return False
                if client.cas(key, raw, token, expire=expire, noreply=False):
                    return marker is None
                continue
            if marker is None or (
                marker.lease is not None and clock_now < marker.expires_at + self.tombstone_ttl
            ):
                return current, float(clock_now)  # a record, or another reader's lease
            # A tombstone, or a lease long past its own expiry, which memcached would have
            # dropped (written by someone else without an exptime): taken over like a
            # tombstone.  "Long": the writer's clock may run behind this process's.
            # A lease over a tombstone lives as long as a tombstone: memcached cannot tell
            # how long this one has left, and it must outlive readers that missed before it.
            lease_expire = _exptime(clock_now + self.tombstone_ttl, clock_now) or 0
            if client.cas(key, raw, token, expire=lease_expire, noreply=False):
                return float(clock_now)
        return False

    def close(self) -> None:
        """Close the client's connections if the store built the client."""
        if self._owns_client:
            self.client.close()

    def __repr__(self) -> str:
        return f"<MemcacheStore {self.location} prefix={self.keymaker.prefix!r}>"


def _exptime(expires_at: float | None, clock_now: float) -> int | None:
    """memcached's ``exptime`` for ``expires_at``: 0 for never, None if already expired."""
    if expires_at is None:
        return 0
    # Rounded up: the record's own expiry (checked on decode) is exact, the server only
    # reclaims memory.  Relative to the store's clock, so an injected clock works too.
    remaining = math.ceil(expires_at - clock_now)
    if remaining <= 0:
        return None
    if remaining <= MAX_RELATIVE_TTL:
        return remaining
    # Beyond 30 days memcached wants an absolute time, on the server's (real) clock.
    return math.ceil(time.time()) + remaining
