"""Guarantee 3 of docs/consistency.md, checked while the stress runs: once a commit's
write-through has reached Redis, Redis never again holds an older state of that row.

A check at the end sees only what Redis holds then, and the next write to a row erases
the evidence of an older write that replaced a newer one.  So the workers record, as
they go:

* when each commit returned whose write-through reached Redis: :class:`TracedRedis`
  tells a worker that its thread finished a commit write there, and the chain counted no
  failure or skipped call meanwhile (a write it skipped or failed is caught up later,
  and Redis may hold older states until then: guarantee 4, not 3);
* what Redis held, read straight from Redis (never through a process-local layer, which
  may lag by the broadcast delay by design), and when the read was sent
  (:class:`Peek`): the hot rows now and then, and the rows of each commit right after
  it returned.

Commits reach Redis out of order by themselves only when a writer stalls between its
COMMIT and its write-through for as long as another whole transaction takes, which is
rare; :func:`overtaken` makes it happen on purpose.

Every time is ``time.monotonic()``, one clock for every process of the machine.  After
the run, :func:`out_of_order` places each state a peek found in its row's commit order
and reports those older than a commit that had returned before the peek was sent.  A
newer state is fine (a fill may have read a commit that had not returned yet); so is
nothing (a tombstone, a lease); so is a state of the row before a delete and an insert
that came after it: a primary key used again is a documented window (a late write of
the deleted row is kept over the new row's lower version; see :func:`late_states`).
"""

from __future__ import annotations

import asyncio
import threading
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from sa_stockpyle.greenlets import blocking, in_greenlet, run, wait_for
from sa_stockpyle.stores import RedisStore
from sa_stockpyle.stores.base import Finish, Removal, Start

__all__ = [
    "HOLD_TIMEOUT",
    "Peek",
    "State",
    "Step",
    "TracedRedis",
    "late_states",
    "out_of_order",
    "overtaken",
]

#: Seconds a held write waits for its release: a hang guard, never a timing bound.
HOLD_TIMEOUT = 60.0

#: A row's state as a peek and the replay compare it: (alternate key, value, version).
State = tuple[str, str, int | None]


class Peek(NamedTuple):
    """One row found by reading Redis directly."""

    #: ``time.monotonic()`` just before the read was sent.
    at: float
    klass: str
    row_id: int
    state: State


#: The kinds of write that start a row (again) under its primary key.
INSERTS = ("seed", "insert")


class Step(NamedTuple):
    """One committed write of a row, in the row's commit order."""

    token: str
    kind: str
    seq: int
    #: The row it left (None: deleted).
    state: State | None


def _caller() -> object:
    """Who is calling: the asyncio task, in a greenlet (the tasks of a thread share it);
    else the thread."""
    return asyncio.current_task() if in_greenlet() else threading.get_ident()


class TracedRedis(RedisStore):
    """A RedisStore that counts, per thread (per task, in an asyncio worker), the commit
    writes it finished; and holds a caller's next commit write when asked to
    (:meth:`hold`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._holds: dict[object, tuple[threading.Event, threading.Event]] = {}
        self._finished: dict[object, int] = {}

    def hold(self, reached: threading.Event, release: threading.Event) -> None:
        """Hold this caller's next commit write that carries objects (never a catch-up's,
        which only removes) before it is sent: set ``reached``, wait for ``release``.
        The write of a commit then reaches Redis after those of later commits, as a
        writer paused between its COMMIT and its write-through would."""
        self._holds[_caller()] = (reached, release)

    def finished(self) -> int:
        """Commit writes (``start_committed`` and its finishing call) this caller
        completed without an error."""
        return self._finished.get(_caller(), 0)

    def prepare_committed(self, puts: Sequence[object], removals: Sequence[Removal]) -> Start:
        """Build the write; the call returned starts it once released (see :meth:`hold`:
        a start runs in the committing task or thread, where a build may not), and the
        call that returns finishes it and counts it.  ``start_committed`` goes through
        here too."""
        start = super().prepare_committed(puts, removals)

        def held() -> Finish | None:
            caller = _caller()
            held = self._holds.pop(caller, None) if puts else None
            if held is not None:
                reached, release = held
                reached.set()
                # In a greenlet, the wait runs on a worker thread: the other tasks go on.
                if not blocking(release.wait, HOLD_TIMEOUT):
                    raise RuntimeError(f"a held write was not released within {HOLD_TIMEOUT:g} s")
            finish = start()

            def counted() -> None:
                if finish is not None:
                    finish()
                self._finished[caller] = self._finished.get(caller, 0) + 1

            return counted

        return held


def late_states(steps: Sequence[Step], version: int | None) -> set[State]:
    """The states of the earlier rows under one primary key (``steps``: its committed
    writes) that a cache may hold over the row of ``version`` there now.

    A primary key used again is a documented window (docs/consistency.md): a write of a
    row deleted since, arriving after the delete, the new insert and a refill, replaces
    the new row's entry and stays until a version above its own is written.  Only the
    states of a version at least ``version`` can have stayed: the write of a higher one
    replaces them.
    """
    if version is None:
        return set()
    start = max((i for i, step in enumerate(steps) if step.kind in INSERTS), default=0)
    return {
        step.state
        for step in steps[:start]
        if step.state is not None and step.state[2] is not None and step.state[2] >= version
    }


def out_of_order(
    histories: Mapping[tuple[str, int], Sequence[Step]],
    returned: Sequence[tuple[str, float]],
    peeks: Sequence[Peek],
) -> tuple[int, int, list[str]]:
    """Check ``peeks`` against ``histories`` (per (class name, row id), its committed
    writes in commit order) and ``returned`` ((token, time) of every commit whose
    write-through had reached Redis when it returned).

    Returns how many commits returned after a newer commit of their row had (their
    write reached Redis after the newer one's: what guarantee 3 is about), how many
    peeks were compared with a returned commit of the same incarnation of their row, and
    a description of each violation: a state older than such a commit, or one that no
    commit left."""
    where: dict[str, tuple[tuple[str, int], int]] = {}
    positions: dict[tuple[str, int], dict[State, int]] = {}
    incarnations: dict[tuple[str, int], list[int]] = {}
    for row, steps in histories.items():
        positions[row] = {}
        incarnation = 0
        incarnations[row] = []
        for index, step in enumerate(steps):
            where[step.token] = (row, index)
            incarnation += step.kind in INSERTS
            incarnations[row].append(incarnation)
            if step.state is not None:
                positions[row][step.state] = index
    # Per row, the returns by time, each with the latest commit returned by then.
    times: dict[tuple[str, int], list[float]] = {}
    latest: dict[tuple[str, int], list[int]] = {}
    reordered = 0
    for token, at in sorted(returned, key=lambda item: item[1]):
        if token not in where:
            continue  # not in the committed list: a lost write, reported by its own check
        row, index = where[token]
        times.setdefault(row, []).append(at)
        so_far = latest.setdefault(row, [])
        reordered += bool(so_far) and index < so_far[-1]
        so_far.append(max(index, so_far[-1]) if so_far else index)
    compared = 0
    violations: list[str] = []
    for peek in sorted(peeks, key=lambda peek: peek.at):
        row = (peek.klass, peek.row_id)
        steps = histories.get(row, ())
        found = positions.get(row, {}).get(peek.state)
        if found is None:
            violations.append(
                f"{peek.klass} id={peek.row_id}: Redis held {peek.state}, which no commit left"
            )
            continue
        before = bisect_left(times.get(row, []), peek.at)
        if not before:
            continue
        newest = latest[row][before - 1]
        if incarnations[row][found] != incarnations[row][newest]:
            continue
        compared += 1
        if found < newest:
            old, new = steps[found], steps[newest]
            violations.append(
                f"{peek.klass} id={peek.row_id}: Redis held {peek.state}, left by "
                f"{old.kind} {old.token!r} (seq {old.seq}), after {new.kind} "
                f"{new.token!r} (seq {new.seq}) had written through"
            )
    return reordered, compared, violations


def overtaken(redis: TracedRedis, first: Callable[[], None], second: Callable[[], None]) -> None:
    """Run ``first`` (a commit) on a thread of its own (in an asyncio worker: a task of
    its own) with its write to ``redis`` held, then ``second`` (a later commit) here,
    then release the first write: it reaches Redis after the second, which guarantee 3
    must survive.  ``first`` may write nothing (its row was gone, a flush was refused):
    then ``second`` runs once it has returned."""
    reached, release = threading.Event(), threading.Event()
    failed: list[BaseException] = []

    def held() -> None:
        try:
            redis.hold(reached, release)
            first()
        except BaseException as exc:  # re-raised below, in the worker's thread
            failed.append(exc)
        finally:
            reached.set()

    if in_greenlet():
        task = asyncio.ensure_future(run(held))
        try:
            blocking(reached.wait, HOLD_TIMEOUT)
            second()
        finally:
            release.set()
            wait_for(asyncio.wait_for(task, HOLD_TIMEOUT))
    else:
        thread = threading.Thread(target=held, name="stress-held-write")
        thread.start()
        try:
            reached.wait(HOLD_TIMEOUT)
            second()
        finally:
            release.set()
            thread.join(HOLD_TIMEOUT)
        if thread.is_alive():
            raise RuntimeError(f"a held commit did not return within {HOLD_TIMEOUT:g} s")
    if failed:
        raise failed[0]
