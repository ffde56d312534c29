"""Invalidation messages: what one process's commit removed, sent to the others'
process-local layers (see :mod:`sa_stockpyle.stores.coherence`).

``SPKI`` followed by JSON, key values tagged as in a payload's state
(:mod:`sa_stockpyle.tagged`).  Decoding builds only what a payload's decoding builds,
names only classes this process has made keys for, and raises
:class:`~sa_stockpyle.errors.PayloadError` for anything else.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from sa_stockpyle.codec import JSON_DECODER, JSON_ENCODER, UNDECODABLE
from sa_stockpyle.errors import PayloadError
from sa_stockpyle.key_encoding import encode_value
from sa_stockpyle.keys import class_named, class_token, key_spec
from sa_stockpyle.tagged import pack, unpack

__all__ = ["MESSAGE_MAGIC", "Invalidation", "decode_invalidation", "encode_invalidation"]

#: The first bytes of an invalidation message between processes.
MESSAGE_MAGIC = b"SPKI"


@dataclass(frozen=True, slots=True)
class Invalidation:
    """What one commit removed, sent to the other processes' process-local layers.

    ``removals`` name objects by a lookup (``(User, {"id": 5})``), because every process
    builds its own cache keys; ``classes`` were invalidated whole.  ``sent_at`` is the
    sender's Unix time, for the propagation delay.  ``seq``, ``kind`` and ``heartbeat``
    let a subscriber notice that messages were lost on the way.
    """

    origin: str
    sent_at: float
    removals: list[tuple[type, dict[str, Any]]]
    classes: list[type]
    #: The publisher's number of this message (1, 2, ...); of a heartbeat or a goodbye,
    #: the number of its last message.  None from a publisher that does not number.
    seq: int | None = None
    #: ``""``: an invalidation; ``"beat"``: a heartbeat; ``"bye"``: the publisher closed.
    kind: str = ""
    #: The publisher's heartbeat interval in seconds: it is heard at least that often.
    heartbeat: float | None = None


_KINDS = frozenset({"", "beat", "bye"})


def encode_invalidation(message: Invalidation) -> bytes:
    """Serialise an invalidation: ``SPKI`` followed by JSON, key values tagged as in state."""
    body = {
        "o": message.origin,
        "t": message.sent_at,
        "r": [
            [class_token(klass), {name: pack(value) for name, value in lookup.items()}]
            for klass, lookup in message.removals
        ],
        "c": [class_token(klass) for klass in message.classes],
    }
    if message.seq is not None:
        body |= {"s": message.seq, "k": message.kind, "h": message.heartbeat}
    try:
        return MESSAGE_MAGIC + JSON_ENCODER.encode(body).encode()
    except ValueError as exc:  # a key value JSON cannot carry (an int over its digit limit)
        raise PayloadError(f"invalidation cannot be encoded: {exc}") from None


def decode_invalidation(data: bytes) -> Invalidation:
    """Decode an invalidation; classes this process never made a key for are left out
    (it caches nothing of them).  Raises :class:`PayloadError` for anything else."""
    if not isinstance(data, bytes) or not data.startswith(MESSAGE_MAGIC):
        raise PayloadError(f"message does not start with {MESSAGE_MAGIC!r}: {data[:16]!r}")
    try:
        body = JSON_DECODER.decode(data[len(MESSAGE_MAGIC) :].decode())
        removals = []
        for token, lookup in body["r"]:
            klass = class_named(token)
            if klass is not None:
                values = {str(k): unpack(v) for k, v in lookup.items()}
                # A lookup of a declared key, with values keys can hold, or the message is
                # corrupt (UnknownKeyError and InvalidKeyValueError are undecodable here).
                for value in key_spec(klass).lookup(values)[1]:
                    encode_value(value)
                removals.append((klass, values))
        classes = [klass for klass in map(class_named, body["c"]) if klass is not None]
        message = Invalidation(str(body["o"]), float(body["t"]), removals, classes)
        if "s" not in body:
            return message  # from a publisher that does not number its messages
        seq, kind, beat = body["s"], body["k"], body["h"]
        if not (
            type(seq) is int
            and 0 <= seq < 2**63
            and kind in _KINDS
            and type(beat) in (int, float)
            and 0 < beat <= 3600
        ):
            raise PayloadError(f"message has a bad number: {seq!r}, {kind!r}, {beat!r}")
        return replace(message, seq=seq, kind=kind, heartbeat=float(beat))
    except PayloadError:
        raise
    except UNDECODABLE as exc:
        raise PayloadError(f"message did not decode: {exc!r}") from exc
