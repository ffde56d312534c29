"""Coherence: the invalidation broadcast between processes' process-local layers."""

from __future__ import annotations

import atexit
import functools
import logging
import os
import statistics
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable, Sequence

from sa_stockpyle.errors import PayloadError, StoreUnavailable
from sa_stockpyle.greenlets import blocking, wait_until
from sa_stockpyle.messages import Invalidation, decode_invalidation, encode_invalidation
from sa_stockpyle.stores.base import BaseStore, Removal
from sa_stockpyle.stores.channel import Channel
from sa_stockpyle.stores.sequencing import Numbering, Tracker

__all__ = ["MAX_PENDING", "Coherence"]

log = logging.getLogger("sa_stockpyle")

#: Invalidation messages waiting to be published beyond this many are dropped, oldest
#: first, and counted: a flood of commits never grows memory without bound.
MAX_PENDING = 10_000


class Coherence:
    """The invalidation broadcast of a chain with process-local layers.

    Every write, commit and class invalidation of the chain is published on a channel of
    a shared layer (one message per call, naming objects by primary key), by a
    background thread so that a flood of commits never blocks the committing thread.
    A second thread subscribes and removes what other processes' messages name from
    this process's local layers.  When the subscription is lost, messages may have been
    missed: the local layers are cleared, again every ``max_staleness`` seconds until the
    subscription is back, and once more when it is.  Messages are numbered, and a
    heartbeat goes out after ``heartbeat`` seconds without one: the local layers are also
    cleared when a message turns out lost while the subscription stayed up (see
    :mod:`~sa_stockpyle.stores.sequencing`).

    ``counts()`` returns ``sent``, ``received``, ``evicted`` (removals applied to local
    layers), ``flushes``, ``losses`` (subscriptions lost), ``dropped`` (messages never
    sent), ``publish_errors``, ``heartbeats`` (sent), ``gaps`` (numbers found missing;
    ``lost``: how many messages they skipped), ``silences`` (publishers unheard past
    their heartbeat bound) and ``corrupt`` (messages that did not decode, ignored);
    ``subscribed`` tells whether the subscription is up now, and ``delays()`` lists the
    measured propagation delays in seconds (sender's clock to receiver's clock).

    Parameters:
        channel: the channel of a shared layer the messages go through.
        local: the process-local layers that other processes' messages empty.
        max_staleness: while the subscription is down, the local layers are cleared this
            often (seconds).
        start: start the threads now; else :meth:`start` does.
        heartbeat: seconds without a message after which a heartbeat is sent.
        monotonic: returns monotonic seconds, the clock of heartbeats, silences and
            flushes; injected by tests.
    """

    def __init__(
        self,
        channel: Channel,
        local: list[BaseStore],
        max_staleness: float,
        start: bool = True,
        heartbeat: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.channel = channel
        self.local = local
        self.max_staleness = max_staleness
        self.heartbeat = heartbeat
        self.monotonic = monotonic
        self._numbering = Numbering(heartbeat)
        #: This publisher's identity in its messages.
        self.origin = self._numbering.origin
        self._tracker = Tracker()
        self.subscribed = False
        self._counts: Counter[str] = Counter()
        self._delays: deque[float] = deque(maxlen=10_000)
        self._pending: deque[Invalidation] = deque()
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._first_attempt = threading.Event()
        self._last_flush = self.monotonic()
        self._threads = [
            threading.Thread(target=self._publishing, name="sa_stockpyle-publish", daemon=True)
        ]
        if local:  # without local layers there is nothing to evict: publish only
            self._threads.append(
                threading.Thread(
                    target=self._subscribing, name="sa_stockpyle-subscribe", daemon=True
                )
            )
        self._at_exit: Callable[[], None] | None = None
        if start:
            self.start()

    def start(self, wait: bool = True) -> None:
        """Start the threads; with local layers, wait for the first subscription attempt
        (``wait=False``: :meth:`listening` waits for it later)."""
        for thread in self._threads:
            thread.start()
        # A process that exits without close() would leave its subscribers waiting for
        # its next heartbeat, and then flushing their memory layers: say goodbye at exit
        # (in this process only: a forked child inherits the registration, not the
        # threads, and its chain has a broadcast of its own).
        self._at_exit = functools.partial(_close_at_exit, weakref.ref(self), os.getpid())
        atexit.register(self._at_exit)
        if wait:
            self.listening()

    def listening(self) -> None:
        """With local layers, wait for the first subscription attempt: a chain that
        starts to serve before it listens could miss the first messages.  In a greenlet,
        the event loop runs other tasks meanwhile."""
        if self.local:
            wait_until(self._first_attempt, 5)

    def forked(self) -> Coherence:
        """The broadcast of a forked child: the same channel, layers and timings, and a
        publisher identity of its own (see :class:`~sa_stockpyle.stores.sequencing.Numbering`);
        not started, the threads of this one having stayed in the parent."""
        return Coherence(
            self.channel, self.local, self.max_staleness, False, self.heartbeat, self.monotonic
        )

    def counts(self) -> dict[str, int]:
        """The event counters (see the class doc)."""
        with self._wake:
            return dict(self._counts)

    def delays(self) -> list[float]:
        """The propagation delays of the messages received lately, in seconds."""
        with self._wake:
            return list(self._delays)

    def delay_quantiles(self) -> dict[str, float]:
        """``{"p50": ..., "p99": ...}`` of :meth:`delays`, in seconds (empty: none yet)."""
        delays = self.delays()
        if len(delays) < 2:
            return {}
        cuts = statistics.quantiles(delays, n=100, method="inclusive")
        return {"p50": cuts[49], "p99": cuts[98]}

    def _count(self, event: str, amount: int = 1) -> None:
        with self._wake:
            self._counts[event] += amount

    # -- publishing -------------------------------------------------------------------

    def publish(self, removals: Sequence[Removal], classes: Sequence[type]) -> None:
        """Queue one message naming ``removals`` and ``classes``; never blocks on I/O.

        The publisher thread encodes it, mostly while the committing thread waits for I/O.
        """
        if not (removals or classes):
            return
        with self._wake:
            if len(self._pending) >= MAX_PENDING:
                self._pending.popleft()  # its number goes missing: subscribers see the gap
                self._counts["dropped"] += 1
            self._pending.append(self._numbering.message(removals, classes))
            self._wake.notify()

    def _publishing(self) -> None:
        failing = False
        while True:
            with self._wake:
                while not self._pending and not self._stop.is_set():
                    quiet = self._numbering.due_in(self.monotonic())
                    if quiet <= 0:
                        break
                    self._wake.wait(quiet)
                batch = list(self._pending)
                self._pending.clear()
                # Under the lock that numbers messages: none is numbered and not yet sent.
                stopped = self._stop.is_set()
                signal = None if batch else self._numbering.signal("bye" if stopped else "beat")
            if signal is not None:
                self._signal(signal)
                if stopped:
                    return  # everything is sent, and subscribers know this publisher is gone
                continue
            messages = self._encoded(batch)
            try:
                self.channel.publish(messages)
            except StoreUnavailable as exc:
                if not failing:  # once per outage, not once per retry
                    log.warning("sa_stockpyle: cannot publish invalidations: %s", exc)
                failing = True
                with self._wake:
                    self._counts["publish_errors"] += 1
                    # Sent again first, in order; the oldest go when the queue is full.
                    self._pending.extendleft(reversed(batch))
                    while len(self._pending) > MAX_PENDING:
                        self._pending.popleft()
                        self._counts["dropped"] += 1
                if self._stop.wait(0.1):
                    return
            else:
                failing = False
                self._numbering.sent_at = self.monotonic()
                self._count("sent", len(messages))

    def _signal(self, message: Invalidation) -> None:
        """Send a heartbeat or a goodbye; one that fails is not sent again (the next is)."""
        self._numbering.sent_at = self.monotonic()
        try:
            self.channel.publish([encode_invalidation(message)])
            self._count("heartbeats")
        except StoreUnavailable:
            self._count("publish_errors")

    def _encoded(self, batch: list[Invalidation]) -> list[bytes]:
        """The messages of ``batch`` that encode; one that does not is logged and dropped
        (it names a key value the codec cannot carry), never the thread's end."""
        encoded = []
        for message in batch:
            try:
                encoded.append(encode_invalidation(message))
            except PayloadError as exc:
                log.error("sa_stockpyle: cannot send an invalidation: %s", exc)
                self._count("dropped")
        return encoded

    # -- subscribing ------------------------------------------------------------------

    def _subscribing(self) -> None:
        lost = False
        while not self._stop.is_set():
            try:
                subscription = self.channel.subscribe()
            except StoreUnavailable as exc:
                if not lost:
                    self._lose(exc)
                    lost = True
                self._first_attempt.set()
                self._while_down()
                continue
            self.subscribed = True
            if lost:
                self._flush()  # messages sent while it was down were missed
                self._tracker.resubscribed(self.monotonic())
                lost = False
            self._first_attempt.set()
            try:
                while not self._stop.is_set():
                    for data in subscription.receive(0.2):
                        self._apply(data)
                    silences = self._tracker.silenced(self.monotonic())
                    if silences:
                        self._missed("silences", silences)
            except StoreUnavailable as exc:
                self._lose(exc)
                lost = True
            except Exception as exc:  # a bug must not end the thread, or silence go unseen
                log.exception("sa_stockpyle: invalidation subscriber failed")
                self._lose(StoreUnavailable(f"subscriber failed: {exc!r}"))
                lost = True
                self._stop.wait(0.25)
            finally:
                self.subscribed = False
                subscription.close()

    def _lose(self, exc: StoreUnavailable) -> None:
        log.warning("sa_stockpyle: invalidation subscription lost: %s", exc)
        self._flush()  # before the loss is counted: whoever sees the count sees it done
        self._count("losses")

    def _while_down(self) -> None:
        """Wait before the next attempt; keep the local layers younger than max_staleness."""
        self._stop.wait(min(0.25, self.max_staleness))
        if self.monotonic() - self._last_flush >= self.max_staleness:
            self._flush()

    def _flush(self) -> None:
        for store in self.local:
            store.clear()
        self._last_flush = self.monotonic()
        self._count("flushes")

    def _missed(self, event: str, amount: int = 1, lost: int = 0) -> None:
        """Messages were lost while subscribed: clear the local layers, then count."""
        log.warning("sa_stockpyle: invalidation messages were lost (%s); flushing", event)
        self._flush()  # before the count: whoever sees the count sees it done
        with self._wake:
            self._counts[event] += amount
            self._counts["lost"] += lost

    def _apply(self, data: bytes) -> None:
        try:
            message = decode_invalidation(data)
        except PayloadError as exc:
            # Counted and ignored, not a flush: anyone who can publish on the channel could
            # otherwise flush every local layer at will.  Had it been a real invalidation,
            # its publisher's next message or heartbeat shows its number missing (a gap),
            # and that flushes.
            log.warning(
                "sa_stockpyle: ignoring an invalidation message that did not decode: %s", exc
            )
            self._count("corrupt")
            return
        if message.origin == self.origin:
            return  # this chain's own layers are written already
        lost = self._tracker.heard(message, self.monotonic())
        if lost:
            self._missed("gaps", lost=lost)
        if message.kind:
            return  # a heartbeat or a goodbye: nothing to remove
        for store in self.local:
            for klass in message.classes:
                store.invalidate_class(klass)
            if message.removals:
                store.write_committed([], message.removals)
        with self._wake:
            self._counts["received"] += 1
            self._counts["evicted"] += len(message.removals)
            self._delays.append(time.time() - message.sent_at)

    def close(self) -> None:
        """Send what is queued, then stop both threads."""
        if self._at_exit is not None:
            atexit.unregister(self._at_exit)
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        for thread in self._threads:
            if thread.ident is not None:  # started (a forked child's may not be yet)
                blocking(thread.join, 5)  # in a greenlet, the loop runs meanwhile


def _close_at_exit(coherence: weakref.ref[Coherence], pid: int) -> None:
    found = coherence()
    if found is not None and os.getpid() == pid:
        found.close()
