"""Event counters per class, kept by every store and chain: :class:`Stats`."""

from __future__ import annotations

import threading
from collections import Counter

from sa_stockpyle.stores.forks import watch_forks

__all__ = ["Stats"]


class Stats:
    """Thread-safe event counters per class: ``stats.count(User, "hits")``.

    Counting sits on every lookup of a chain, so it takes no lock: each thread adds to
    its own tally, and reads sum the tallies of every thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()
        watch_forks(self)

    def after_fork(self) -> None:
        # The counts so far stay; the parent's threads' tallies retire as theirs.
        self._lock = threading.Lock()

    def add(self, klass: type, event: str, amount: int = 1) -> None:
        """Count ``amount`` occurrences of ``event`` for ``klass``."""
        if amount:
            try:
                tally: dict[tuple[type, str], int] = self._local.tally
            except AttributeError:
                tally = self._new_tally()
            key = (klass, event)
            tally[key] = tally.get(key, 0) + amount

    def _new_tally(self) -> dict[tuple[type, str], int]:
        tally: dict[tuple[type, str], int] = {}
        with self._lock:
            # Fold the tallies of threads that have ended into one, so a server that
            # starts a thread per request does not grow a tally per request.
            for thread, ended in [(t, c) for t, c in self._tallies if not t.is_alive()]:
                self._retired.update(ended)
                self._tallies.remove((thread, ended))
            self._local.tally = tally
            self._tallies.append((threading.current_thread(), tally))
        return tally

    def _totals(self) -> Counter[tuple[str, str]]:
        totals: Counter[tuple[str, str]] = Counter()
        with self._lock:
            tallies = [self._retired, *(tally for _, tally in self._tallies)]
            for tally in tallies:
                # dict() copies in one step, safe while the owning thread goes on counting.
                for (klass, event), n in dict(tally).items():
                    totals[klass.__qualname__, event] += n
        return totals

    def count(self, klass: type | None, event: str) -> int:
        """How often ``event`` happened for ``klass`` (for every class when None)."""
        return sum(
            n
            for (name, kind), n in self._totals().items()
            if kind == event and (klass is None or name == klass.__qualname__)
        )

    def as_dict(self) -> dict[str, dict[str, int]]:
        """A snapshot: ``{class name: {event: count}}``."""
        result: dict[str, dict[str, int]] = {}
        for (name, event), n in sorted(self._totals().items()):
            result.setdefault(name, {})[event] = n
        return result

    def reset(self) -> None:
        """Forget every count."""
        # New tallies for every thread: one counting right now adds to its old tally,
        # which is forgotten, as if it had counted just before the reset.
        with self._lock:
            self._local = threading.local()
            self._tallies: list[tuple[threading.Thread, dict[tuple[type, str], int]]] = []
            self._retired: Counter[tuple[type, str]] = Counter()
