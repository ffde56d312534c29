"""The conditional writes of the layer protocol: :class:`OpKind` and :class:`Op`.

A key-value store carries them out with its backend's atomic primitive (a Lua script,
memcached's ``gets``/``cas``, a lock) in :meth:`BaseKeyValueStore.apply
<sa_stockpyle.stores.BaseKeyValueStore.apply>`; what each kind may overwrite is what makes
a fill that read the database before a commit unable to write the old state back.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec
from msgspec.structs import replace

__all__ = ["Op", "OpKind", "soonest_expiry", "unexpired"]


class OpKind(str, enum.Enum):
    """What one :class:`Op` writes, and where; each member is the one-letter string a
    backend's script receives (a ``str``: it compares and encodes as its letter)."""

    #: Write ``raw`` whatever the key holds (pointers, which a reader checks anyway).
    SET = "S"
    #: Leave a tombstone whatever the key holds: a removal.
    TOMBSTONE = "T"
    #: Write ``raw`` only where the key holds nothing or, with ``arg`` (a backend time),
    #: a tombstone written before ``arg``.
    ADD = "A"
    #: Write ``raw`` only where the key holds the lease ``arg``: a reader's fill.
    FILL = "F"
    #: Leave a tombstone where the key holds the lease ``arg``: a fill given up.
    RELEASE = "R"
    #: Write ``raw`` where the key holds nothing or an entry of a version below ``arg``;
    #: a tombstone or a lease there becomes a new tombstone.
    NEWER = "N"
    #: Take the key for a fill (``raw`` is the lease) where it holds nothing or a
    #: tombstone.
    LEASE = "L"


#: The kinds whose write carries an entry or a pointer, and so may have expired already.
WRITES_RECORDS = frozenset({OpKind.SET, OpKind.FILL, OpKind.ADD, OpKind.NEWER})


class Op(msgspec.Struct, frozen=True, gc=False):
    """One conditional write of :meth:`BaseKeyValueStore.apply
    <sa_stockpyle.stores.BaseKeyValueStore.apply>`, on one key.

    It unpacks as ``kind, key, raw, expires_at, arg``.  The garbage collector does not
    track it (a commit or a fill builds thousands, alive until the batch is written, and
    tracked ones would set off collections; nothing in an op refers back to it).
    """

    #: What to write, and where (see :class:`OpKind`).
    kind: OpKind
    #: The cache key.
    key: str
    #: The raw value to write (an encoded record or lease), None for markers the backend
    #: stamps itself.
    raw: Any
    #: When the value expires (Unix time), or None.
    expires_at: float | None
    #: The kind's argument: the lease a fill or release expects, the version a newer
    #: write carries, the backend time an add compares tombstones with.
    arg: Any = None

    def __iter__(self) -> Iterator[Any]:
        return iter((self.kind, self.key, self.raw, self.expires_at, self.arg))


def unexpired(ops: Sequence[Op], now: float) -> list[Op]:
    """``ops`` without the writes that have expired by ``now`` already: a set or a newer
    version's write becomes a tombstone (what the key held is older, and must not stay),
    a fill a release, and an add nothing at all (it writes only where nothing is held)."""
    ready: list[Op] = []
    for op in ops:
        expires_at, kind = op.expires_at, op.kind
        if expires_at is not None and expires_at <= now and kind in WRITES_RECORDS:
            if kind in (OpKind.SET, OpKind.NEWER):
                ready.append(replace(op, kind=OpKind.TOMBSTONE))
            elif kind == OpKind.FILL:
                ready.append(replace(op, kind=OpKind.RELEASE))
            continue
        ready.append(op)
    return ready


def soonest_expiry(ops: Sequence[Op]) -> float | None:
    """When the first write of ``ops`` that :func:`unexpired` may drop expires, or None:
    until then, ``unexpired(ops, now)`` is ``ops`` as they are."""
    times = [
        op.expires_at for op in ops if op.expires_at is not None and op.kind in WRITES_RECORDS
    ]
    return min(times) if times else None
