"""Numbered invalidation messages and heartbeats, so that a subscriber notices lost ones.

Pub/sub delivers at most once, and a message can vanish while the subscription stays up:
a Redis Cluster node restarting between two publishes, a client that reconnects and
subscribes again on its own, a publisher that drops what it cannot send.  So every
publisher (each :class:`~sa_stockpyle.stores.coherence.Coherence`) numbers its messages
1, 2, 3, ... under an identity of its own (:class:`Numbering`), and when it has sent
nothing for its heartbeat interval it sends a heartbeat carrying the number of its last
message.  A subscriber keeps, per publisher, the last number heard (:class:`Tracker`):

* a message numbered past the next one, or a heartbeat past the last one, means messages
  were lost: a *gap*;
* a publisher unheard for :data:`SILENT_BEATS` of its own heartbeat intervals may be
  losing everything it sends: a *silence*.

Either is a loss, and so is a message that does not decode: the subscriber clears its
process-local layers, as when its subscription drops.  A publisher that closes says
goodbye, so its silence costs nothing.  Only decisions live here; the caller sends,
receives and passes the clock in.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from sa_stockpyle.messages import Invalidation
from sa_stockpyle.stores.base import Removal

__all__ = ["MAX_PUBLISHERS", "SILENT_BEATS", "Numbering", "Tracker"]

#: A publisher unheard for this many of its heartbeat intervals counts as silent.
SILENT_BEATS = 3

#: Publishers a subscriber remembers; past this many, the longest unheard is forgotten.
MAX_PUBLISHERS = 10_000


class Numbering:
    """A publisher's identity, its message count and its heartbeat schedule.

    Not locked: the caller numbers messages under the lock that orders its queue.  A
    forked child's chain builds a new broadcast, so a new numbering (see
    ``ChainedStore.after_fork``): two processes under one identity would number different
    messages alike, and a loss of either would go unseen.

    Parameters:
        heartbeat: seconds without a message after which a heartbeat is due.
    """

    def __init__(self, heartbeat: float) -> None:
        self.heartbeat = heartbeat
        self.origin = secrets.token_hex(8)
        #: The number of the last message numbered.
        self.last = 0
        #: ``time.monotonic()`` of the last message sent; the first heartbeat is due at once,
        #: so subscribers know this publisher before its first message can be lost.
        self.sent_at = -float("inf")

    def message(self, removals: Sequence[Removal], classes: Sequence[type]) -> Invalidation:
        """The next message, naming ``removals`` and ``classes``."""
        self.last += 1
        return Invalidation(
            self.origin, time.time(), list(removals), list(classes), self.last, "", self.heartbeat
        )

    def signal(self, kind: str) -> Invalidation:
        """A heartbeat (``"beat"``) or goodbye (``"bye"``) naming the last message."""
        return Invalidation(self.origin, time.time(), [], [], self.last, kind, self.heartbeat)

    def due_in(self, now: float) -> float:
        """Seconds until the next heartbeat is due at ``now`` (monotonic); 0 or less: due."""
        return self.sent_at + self.heartbeat - now


@dataclass
class _Publisher:
    last: int
    heard_at: float
    heartbeat: float


class Tracker:
    """What one subscriber heard from each publisher: the losses it can tell.

    Not locked: one subscriber thread uses it.
    """

    def __init__(self) -> None:
        self._live: OrderedDict[str, _Publisher] = OrderedDict()
        # Silent publishers are kept apart, so that the check for silences scans only
        # those still heard; they are remembered so that a gap shows when one is back.
        self._silent: OrderedDict[str, _Publisher] = OrderedDict()

    def heard(self, message: Invalidation, now: float) -> int:
        """Note ``message``, received at ``now`` (monotonic); return how many messages of
        its publisher were lost before it (0: none that can be told)."""
        seq, origin = message.seq, message.origin
        if seq is None or message.heartbeat is None:
            return 0  # a publisher that does not number its messages
        known = self._live.pop(origin, None) or self._silent.pop(origin, None)
        # A heartbeat or goodbye repeats the number of the last message, a message is the
        # next; one numbered lower came late, after a later one (a retried publish).
        lost = 0 if known is None else max(0, seq - known.last - (message.kind == ""))
        if message.kind != "bye":
            last = seq if known is None else max(seq, known.last)
            self._live[origin] = _Publisher(last, now, message.heartbeat)
            if len(self._live) + len(self._silent) > MAX_PUBLISHERS:
                (self._silent or self._live).popitem(last=False)
        return lost

    def silenced(self, now: float) -> int:
        """How many publishers fell silent by ``now`` (monotonic); each counts once, until
        it is heard again."""
        silent = [
            origin
            for origin, publisher in self._live.items()
            if now - publisher.heard_at > SILENT_BEATS * publisher.heartbeat
        ]
        for origin in silent:
            self._silent[origin] = self._live.pop(origin)
        return len(silent)

    def resubscribed(self, now: float) -> None:
        """The subscription is back at ``now`` after a loss (the local layers were
        cleared): publishers still heard get their full bound before they count as
        silent, rather than at once for the time the subscription was down."""
        for publisher in self._live.values():
            publisher.heard_at = now
