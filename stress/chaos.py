"""The faults of ``python -m stress.consistency --chaos``: the workers' link to Redis is
cut and healed at random moments while they run, and Redis keeps its entries throughout
(see :mod:`stress.partition`)."""

from __future__ import annotations

import random
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.synchronize import Barrier
from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit

from stress.partition import CUTS, Partition

__all__ = ["DOWNTIME", "FAULT_INTERVAL", "QUIET", "Chaos", "Fault", "through"]

#: Seconds between faults, and seconds the link stays cut, drawn uniformly.
FAULT_INTERVAL = (3.0, 10.0)
DOWNTIME = (0.2, 3.0)
#: The last heal comes at least this many seconds before the workers stop, so that every
#: chain has caught up (cooldown 1 s, retries every 0.5 s) and every broadcast
#: subscription is back before the checks.
QUIET = 3.0


class Fault(NamedTuple):
    """One cut of the link between the workers and Redis."""

    #: Seconds after the workers started.
    at: float
    #: Seconds from the cut to the heal.
    lasted: float
    #: How the link was cut (one of stress.partition.CUTS).
    mode: str
    #: Entries Redis held, just before the heal, that disagreed with the database: what
    #: the workers' commits could not remove meanwhile.
    stale: int


class Chaos:
    """Cuts ``partition`` at random moments while the workers run, each way of
    :data:`~stress.partition.CUTS` in turn, and heals it; the last heal comes ``QUIET``
    seconds before they stop, or earlier.  Just before each heal, ``count_stale()``
    counts the entries the cut left stale (see :class:`Fault`)."""

    def __init__(
        self,
        partition: Partition,
        count_stale: Callable[[], int],
        seconds: float,
        seed: int,
        interval: tuple[float, float],
        downtime: tuple[float, float],
        setup_timeout: float,
    ) -> None:
        self.partition = partition
        self.count_stale = count_stale
        self.seconds = seconds
        self.rng = random.Random(seed)
        self.interval = interval
        self.downtime = downtime
        self.setup_timeout = setup_timeout
        self.faults: list[Fault] = []
        #: The traceback, when cutting, counting or healing failed.
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, barrier: Barrier) -> None:
        """Wait with the workers at ``barrier`` in a thread, then inject faults."""
        self._thread = threading.Thread(
            target=self._run, args=(barrier,), name="stress-chaos", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop injecting faults, the link left healed."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self, barrier: Barrier) -> None:
        try:
            barrier.wait(self.setup_timeout)
        except threading.BrokenBarrierError:
            return  # a worker failed to start: the caller reports why
        began = time.monotonic()
        calm = began + self.seconds - QUIET
        try:
            while True:
                cut_at = time.monotonic() + self.rng.uniform(*self.interval)
                down = self.rng.uniform(*self.downtime)
                mode = CUTS[len(self.faults) % len(CUTS)]
                # Slack for counting the stale entries before the heal.
                if cut_at + down + 0.5 > calm or self._stop.wait(cut_at - time.monotonic()):
                    return
                self.partition.cut(mode)
                cut = time.monotonic()
                try:
                    self._stop.wait(down)
                    stale = self.count_stale()
                finally:
                    self.partition.heal()  # even when stopping: the checks need the link
                self.faults.append(Fault(cut - began, time.monotonic() - cut, mode, stale))
        except Exception:
            self.error = traceback.format_exc()


def through(partition: Partition, url: str) -> str:
    """``url`` with the partition's address in place of the server's."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@{partition.address}" if credentials else partition.address
    return urlunsplit(parts._replace(netloc=netloc))
