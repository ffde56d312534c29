"""Multi-process consistency stress: real PostgreSQL, real Redis, many writers, one checker.

``python -m stress.consistency --postgres-url URL --redis-url URL --processes 4 --seconds 20``
``python -m stress.consistency --postgres-url URL --redis-url URL --chaos --memory-layer``

Worker processes (started with the ``spawn`` method, each with its own engine, sessions,
``RedisStore`` and :func:`~sa_stockpyle.attach`) read through
``ChainedStore([RedisStore, SqlAlchemyStore])`` (``--memory-layer``: a
``ProcessMemoryStore`` in front) and write with a skewed random mix: value updates,
alternate-key moves, deletes, re-inserts, ORM bulk updates, ``bulk_update_mappings``,
UPDATEs of the table (by key, or by the alternate key: the keys come back by
RETURNING), two-row transactions, transactions that write and then roll back,
sessions joined to a caller's transaction that the caller commits or rolls back after
the session's commit, and two updates of one row whose first reaches Redis after the
second (its write held back, as a writer paused between its COMMIT and its
write-through would be; see :func:`stress.ordering.overtaken`).  Writes give the
``Numeric``, ``CHAR`` and ``DateTime`` columns values the database keeps or changes, and
now and then an object no cache payload carries (a ``PickleType``); an application
``after_flush`` listener refuses a share of the flushes.  With ``--forked N``, N workers
build and use their chain, then fork, and the child works with the chain it inherited (a
preloading server's workers).
Every writer transaction inserts the token it wrote into ``stress_committed`` in the same
transaction, after its row writes, with a sequence number drawn then: so that table lists
exactly the committed tokens, and, for each row, in the order their transactions
committed (see ``Committed``).

With ``--chaos`` the workers reach Redis through a :class:`~stress.partition.Partition`
of the parent's, which cuts the link at random moments (every ``--fault-interval``
seconds, for ``--downtime`` seconds, the last heal at least ``QUIET`` seconds before the
workers stop; see :mod:`stress.chaos`) while Redis runs on with every entry it holds:
the cuts, in turn, reset every connection, and silently drop every byte.  The workers go
on: reads fall through to PostgreSQL, commits succeed and their write-through failures
are counted by the chain; the entries their commits could not remove meanwhile are still
in Redis when the link is back, and only the chains' catch-up (or a later write) removes
them.  Just before each heal the parent counts them, straight from Redis
(``Fault.stale``).

When every worker has stopped, the parent checks that:

* every value a reader saw is a committed token, of the row it was read from;
* no committed write is lost: replaying the committed writes of each row in commit order
  (value updates, alternate-key moves, deletes, inserts) gives exactly the row the
  database holds, version included;
* whatever Redis holds for any primary key or alternate key ever used is either nothing
  or equal (every column, with its type) to the row the database holds now;
* no read of Redis made during the run (the workers read the hot rows straight from
  Redis now and then, and the rows of each commit right after it) found a row older than
  a commit whose write-through had reached Redis before the read (see
  :mod:`stress.ordering`).

An entry that a write of a deleted row, arriving late, left over the row inserted again
under its primary key is a documented window (a primary key used again): it is listed
apart (``Report.late``), not counted as stale.

Before it stops, each worker waits until its chain uses Redis again, which it does only
once it has made up for every write it missed during an outage (see ``_Worker.settle``).
With ``--memory-layer``, each worker makes the last check against its own memory layer
once every other worker has stopped and all their invalidation broadcasts have arrived
(see ``_Worker.check_memory``).  The exit status is 1 when a check fails.

Cache keys and the broadcast channel are named after a prefix of their own per run, so a
shared Redis server may be used; the tables (``stress_*``) are dropped again after a run
that passed, and kept, with the Redis keys, for inspection after one that did not.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import multiprocessing
import os
import queue
import random
import secrets
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import Any, ClassVar, NamedTuple, NoReturn, cast
from urllib.parse import urlsplit

from sqlalchemy import (
    CHAR,
    BigInteger,
    DateTime,
    Engine,
    Identity,
    Integer,
    Numeric,
    PickleType,
    String,
    create_engine,
    event,
    select,
    update,
)
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    scoped_session,
    sessionmaker,
)
from sqlalchemy.orm.exc import StaleDataError

from sa_stockpyle import attach
from sa_stockpyle.errors import StoreUnavailable
from sa_stockpyle.stores import (
    BaseKeyValueStore,
    BaseStore,
    ChainedStore,
    ProcessMemoryStore,
    RedisStore,
    SqlAlchemyStore,
)
from stress.chaos import DOWNTIME, FAULT_INTERVAL, QUIET, Chaos, Fault, through
from stress.ordering import Peek, State, Step, TracedRedis, late_states, out_of_order, overtaken
from stress.partition import Partition

__all__ = [
    "Fault",
    "Plain",
    "Report",
    "RowState",
    "Versioned",
    "WorkerReport",
    "main",
    "run",
]

#: Rows seeded per class; ids stay in 1..ROWS (deleted rows are re-inserted under them).
ROWS = 50
#: The hot rows, 1..HOT_ROWS, and the share of operations that go to them.
HOT_ROWS = 5
HOT_SHARE = 0.6
#: Seconds a worker may take to start (imports, connections) or to wait for the others.
SETUP_TIMEOUT = 120.0
#: Seconds a worker waits for the other workers' last invalidations (--memory-layer), or
#: for its chain to use Redis again after the last fault.
FENCE_TIMEOUT = 30.0
#: Anomalies listed by :meth:`Report.format`, per kind; the counts are always complete.
LISTED = 20
#: The share of flushes an application listener refuses (it raises; the worker rolls back).
REFUSED_FLUSHES = 0.03
#: Values a write gives the columns whose types change some values on the way in: each
#: list has ones the database stores as they are, and ones it changes (rounds, pads,
#: drops an offset); the ORM plugin must write through only the first.
TOKYO = dt.timezone(dt.timedelta(hours=9))
AMOUNTS = [Decimal("1.01"), Decimal("1.005"), Decimal("250"), Decimal("0.125"), None]
TAGS = ["abcde", "ab", "xyz12", None]
TIMES = [dt.datetime(2026, 12, 6, 3, 0), dt.datetime(2026, 12, 6, 12, 0, tzinfo=TOKYO), None]

#: Operation kinds and their weights in the random mix.
MIX: dict[str, int] = {
    "read_pk": 40,
    "read_alt": 15,
    "read_batch": 5,
    "update": 14,
    "move": 4,
    "delete": 3,
    "insert": 5,
    "bulk_update": 3,
    "pair_update": 3,
    "rollback": 8,
    "external": 4,
    "bulk_mappings": 2,
    "table_update": 3,
    "peek": 5,
    "overtake": 3,
}


# -- the schema -----------------------------------------------------------------------------


class Base(DeclarativeBase):
    """The stress schema: every table name starts with ``stress_``."""


class RowState(NamedTuple):
    """What a row or a cached object says, compared field by field."""

    id: int
    alternate: str
    value: str
    version: int | None
    #: The other columns, each as (type name, value); None where a replay cannot know them.
    extras: tuple[tuple[str, Any], ...] | None = None

    def core(self) -> State:
        """The fields a replay of the committed writes knows."""
        return self.alternate, self.value, self.version


class Opaque:
    """An application object in a ``PickleType`` column: no cache payload carries it."""

    def __init__(self, token: str) -> None:
        self.token = token

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Opaque) and other.token == self.token

    def __hash__(self) -> int:
        return hash(self.token)

    def __repr__(self) -> str:
        return f"Opaque({self.token!r})"


class _AppRefusal(Exception):
    """What the application's flush listener raises now and then."""


class _Row(Base):
    """Columns shared by the two cached classes."""

    __abstract__ = True

    #: The attribute of the alternate unique key.
    alternate: ClassVar[str]

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    value: Mapped[str] = mapped_column(String(64))
    # Types that change some values on the way in, and one no cache payload can carry.
    amount: Mapped[Decimal | None] = mapped_column(Numeric(10, 2))
    tag: Mapped[str | None] = mapped_column(CHAR(5))
    taken: Mapped[dt.datetime | None] = mapped_column(DateTime)
    blob: Mapped[Any] = mapped_column(PickleType, nullable=True)

    def alt(self) -> str:
        """The alternate key value."""
        return cast("str", getattr(self, self.alternate))

    def state(self) -> RowState:
        """The fields the checker compares."""
        extras = tuple(
            (type(value).__name__, value)
            for value in (self.amount, self.tag, self.taken, self.blob)
        )
        return RowState(self.id, self.alt(), self.value, getattr(self, "version", None), extras)


class Versioned(_Row):
    """Commits carry a version: written through, the highest version wins."""

    __tablename__ = "stress_versioned"
    __stockpyle_keys__ = ["id", "email"]
    alternate = "email"

    email: Mapped[str] = mapped_column(String(64), unique=True)
    version: Mapped[int] = mapped_column(Integer)
    __mapper_args__ = {"version_id_col": version}


class Plain(_Row):
    """No version: updates invalidate."""

    __tablename__ = "stress_plain"
    __stockpyle_keys__ = ["id", "code"]
    alternate = "code"

    code: Mapped[str] = mapped_column(String(64), unique=True)


class Committed(Base):
    """One row per token a transaction wrote, inserted in that same transaction.

    Inserted after the transaction's row writes were flushed, so ``seq`` is drawn while
    it holds the lock of every row it wrote (an UPDATE's or DELETE's row lock, an
    INSERT's unique index entry): another transaction writing one of those rows waits
    for this one to commit before it can draw its own.  For one row, ``seq`` is the
    commit order.
    """

    __tablename__ = "stress_committed"

    token: Mapped[str] = mapped_column(String(64), primary_key=True)
    klass: Mapped[str] = mapped_column(String(32))
    row_id: Mapped[int] = mapped_column(Integer)
    #: The operation: seed, insert, update, bulk_update, bulk_mappings, table_update,
    #: pair_update, external, held, overtaking (value updates too), move or delete.
    kind: Mapped[str] = mapped_column(String(16))
    seq: Mapped[int] = mapped_column(BigInteger, Identity(), unique=True)


CLASSES: tuple[type[_Row], ...] = (Versioned, Plain)
_BY_NAME: dict[str, type[_Row]] = {klass.__name__: klass for klass in CLASSES}


def _fence(index: int) -> type:
    """The class whose invalidation worker ``index`` broadcasts after its last operation.

    Never stored: invalidating it only sends a message, behind every earlier message of
    that worker (one publishing thread, one Redis server).  A new class per call, under
    the same name in every process, so each process resolves the others' messages.
    """
    name = f"Fence{index}"
    return type(
        name, (), {"__stockpyle_keys__": ["id"], "__module__": __name__, "__qualname__": name}
    )


def _seed_alternate(klass: type[_Row], row_id: int) -> str:
    return f"v{row_id}@seed" if klass is Versioned else f"c-seed-{row_id}"


def _new_alternate(klass: type[_Row], token: str) -> str:
    return f"{token}@moved" if klass is Versioned else f"c-{token}"


def _create_schema(engine: Engine) -> None:
    """Drop and create the stress tables, then seed ROWS rows per class."""
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        for klass in CLASSES:
            for row_id in range(1, ROWS + 1):
                token = f"seed-{klass.__name__}-{row_id}"
                row = klass(id=row_id, value=token)
                setattr(row, klass.alternate, _seed_alternate(klass, row_id))
                session.add(row)
                # Seed values are committed values like any other.
                session.add(
                    Committed(token=token, klass=klass.__name__, row_id=row_id, kind="seed")
                )
        session.commit()


def _replay(klass: type[_Row], row_id: int, writes: Sequence[Committed]) -> list[Step]:
    """The committed ``writes`` of row ``row_id`` applied in commit order, each with the
    row it leaves.  Raises ValueError for a write that cannot apply: to a row absent by
    then, or an insert over a row present."""
    state: RowState | None = None
    steps: list[Step] = []
    for write in writes:
        token, kind = write.token, write.kind
        if kind in ("seed", "insert"):
            if state is not None:
                raise ValueError(f"{kind} {token!r} (seq {write.seq}) over the row {state}")
            alternate = (
                _seed_alternate(klass, row_id) if kind == "seed" else _new_alternate(klass, token)
            )
            state = RowState(row_id, alternate, token, 1 if klass is Versioned else None)
        elif state is None:
            raise ValueError(f"{kind} {token!r} (seq {write.seq}) to an absent row")
        elif kind == "delete":
            state = None
        else:
            version = None if state.version is None else state.version + 1
            if kind == "move":
                state = state._replace(alternate=_new_alternate(klass, token), version=version)
            else:
                state = state._replace(value=token, version=version)
        steps.append(Step(token, kind, write.seq, None if state is None else state.core()))
    return steps


def _histories(writes: Iterable[Committed]) -> tuple[dict[tuple[str, int], list[Step]], list[str]]:
    """The committed ``writes`` (in commit order) of every row, replayed (see _replay),
    by (class name, row id); and why those of a row do not apply, if they do not."""
    by_row: dict[tuple[str, int], list[Committed]] = {}
    for write in writes:
        by_row.setdefault((write.klass, write.row_id), []).append(write)
    histories: dict[tuple[str, int], list[Step]] = {}
    broken: list[str] = []
    for klass in CLASSES:
        for row_id in range(1, ROWS + 1):
            row = (klass.__name__, row_id)
            try:
                histories[row] = _replay(klass, row_id, by_row.get(row, []))
            except ValueError as exc:
                broken.append(
                    f"{klass.__name__} id={row_id}: a committed write does not apply in "
                    f"commit order: {exc}"
                )
    return histories, broken


# -- reports --------------------------------------------------------------------------------


@dataclass
class WorkerReport:
    """What one worker process did and saw."""

    pid: int
    index: int
    #: Seconds the operation loop ran.
    seconds: float = 0.0
    operations: Counter[str] = field(default_factory=Counter)
    #: Operations the database refused (serialization, deadlock, unique violation, a row
    #: changed or deleted meanwhile): rolled back and counted, not retried.
    conflicts: Counter[str] = field(default_factory=Counter)
    #: The same conflicts by cause (the exception class, the driver's for DBAPIError).
    causes: Counter[str] = field(default_factory=Counter)
    #: Write operations with nothing to do (the row was absent, or present for an insert).
    skipped: Counter[str] = field(default_factory=Counter)
    commits: int = 0
    #: Transactions that wrote, then rolled back or closed on purpose.
    rollbacks: int = 0
    #: Flushes the application's listener refused (rolled back).
    refused_flushes: int = 0
    #: Whether this worker ran in a process forked after its chain was used.
    forked: bool = False
    #: Objects the attachment removed instead of writing: a value the database changes
    #: on the way in (inexact), or that no cache payload carries (refused).
    inexact: int = 0
    refused: int = 0
    reads: int = 0
    #: Reads that found a row.
    found: int = 0
    #: Per chain layer name, per event (hits, misses, fills, waits, errors), summed.
    layer_events: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Hits of the caching layers (every layer but the database).
    cache_hits: int = 0
    #: Commit-time write-through failures counted by the attachment.
    writethrough_errors: int = 0
    #: The Redis layer's events (errors, skipped, caught_up...), all classes.
    redis: dict[str, int] = field(default_factory=dict)
    #: Commits and reads during which the chain found Redis failing or resting (--chaos:
    #: while the link was cut, or right after, while the chain let it rest).
    commits_while_down: int = 0
    reads_while_down: int = 0
    #: (class name, row id, value) of every read result.
    seen: set[tuple[str, int, str]] = field(default_factory=set)
    #: Tokens written by transactions that then rolled back.
    rolled_back: list[str] = field(default_factory=list)
    #: (token, time) of each commit whose write-through had reached Redis when it
    #: returned, and the rows read straight from Redis (see stress.ordering).
    returned: list[tuple[str, float]] = field(default_factory=list)
    peeks: list[Peek] = field(default_factory=list)
    #: (class name, alternate key value) this worker wrote or read.
    alternates: set[tuple[str, str]] = field(default_factory=set)
    #: Reads that answered another key than asked, or not a transaction's own write.
    wrong: list[str] = field(default_factory=list)
    #: Keys of the memory layer checked, those that held an entry, and those found stale
    #: (--memory-layer).
    memory_checked: int = 0
    memory_held: int = 0
    memory_stale: list[str] = field(default_factory=list)
    #: Entries of the memory layer left by a late write of a deleted row (see Report.late).
    memory_late: list[str] = field(default_factory=list)
    #: The chain's invalidation broadcast counters (--memory-layer; see Coherence).
    broadcast: dict[str, int] = field(default_factory=dict)
    #: Why a check could not be made (the chain never used Redis again after a fault).
    unsettled: list[str] = field(default_factory=list)
    #: The traceback, when the worker failed.
    error: str | None = None


@dataclass
class Report:
    """The outcome of :func:`run`."""

    processes: int
    seconds: float
    memory_layer: bool
    seed: int
    prefix: str
    #: Wall-clock seconds of the whole run, process start-up and checks included.
    elapsed: float
    workers: list[WorkerReport]
    chaos: bool = False
    #: The faults injected (--chaos).
    faults: list[Fault] = field(default_factory=list)
    #: Redis keys checked (primary and alternate keys of both classes), and how many of
    #: them held an entry.
    keys_checked: int = 0
    keys_held: int = 0
    #: Rows whose committed writes were replayed (both classes, every id).
    rows_checked: int = 0
    #: Rows the database holds otherwise than their committed writes, replayed, leave.
    lost: list[str] = field(default_factory=list)
    #: Checks that could not be made (see WorkerReport.unsettled).
    unsettled: list[str] = field(default_factory=list)
    #: Redis entries that disagree with the database.
    stale: list[str] = field(default_factory=list)
    #: Rows read from Redis during the run that were older than a commit written through
    #: before the read (guarantee 3), how many reads were compared with one, and how many
    #: commits reached Redis after a newer commit of their row had.
    out_of_order: list[str] = field(default_factory=list)
    peeks_compared: int = 0
    reordered: int = 0
    #: Memory-layer entries that disagree with the database (--memory-layer).
    memory_stale: list[str] = field(default_factory=list)
    #: Entries (Redis, memory layers) that disagree with the database because a write of
    #: a row deleted since, arriving late, replaced the entry of a row inserted again
    #: under its primary key: a documented window (docs/consistency.md), not counted stale.
    late: list[str] = field(default_factory=list)
    #: Values read that no committed transaction wrote.
    uncommitted: list[str] = field(default_factory=list)
    #: Reads that answered another key or row than asked.
    wrong: list[str] = field(default_factory=list)

    @property
    def operations(self) -> Counter[str]:
        """Operations by kind, all workers."""
        return sum((w.operations for w in self.workers), Counter())

    @property
    def conflicts(self) -> int:
        """Operations the database refused, all workers."""
        return sum(sum(w.conflicts.values()) for w in self.workers)

    @property
    def causes(self) -> Counter[str]:
        """Conflicts by cause, all workers."""
        return sum((w.causes for w in self.workers), Counter())

    @property
    def commits(self) -> int:
        """Committed write transactions, all workers."""
        return sum(w.commits for w in self.workers)

    @property
    def rollbacks(self) -> int:
        """Transactions rolled back or closed on purpose after writing, all workers."""
        return sum(w.rollbacks for w in self.workers)

    @property
    def reads(self) -> int:
        """Lookups through the chain, all workers."""
        return sum(w.reads for w in self.workers)

    @property
    def hits(self) -> int:
        """Hits of the caching layers, all workers."""
        return sum(w.cache_hits for w in self.workers)

    @property
    def refused_flushes(self) -> int:
        """Flushes the application's listener refused, all workers."""
        return sum(w.refused_flushes for w in self.workers)

    def removed_instead(self, why: str) -> int:
        """Objects removed instead of written, ``"inexact"`` or ``"refused"``, all workers."""
        return sum(getattr(w, why) for w in self.workers)

    @property
    def writethrough_errors(self) -> int:
        """Commit-time write-through failures, all workers."""
        return sum(w.writethrough_errors for w in self.workers)

    @property
    def commits_while_down(self) -> int:
        """Commits during which the chain found Redis failing or resting, all workers."""
        return sum(w.commits_while_down for w in self.workers)

    @property
    def reads_while_down(self) -> int:
        """Reads during which the chain found Redis failing or resting, all workers."""
        return sum(w.reads_while_down for w in self.workers)

    def redis_events(self, event: str) -> int:
        """A Redis layer event (errors, skipped, caught_up...) summed over the workers."""
        return sum(w.redis.get(event, 0) for w in self.workers)

    @property
    def faults_injected(self) -> int:
        """Times the link to Redis was cut (--chaos)."""
        return len(self.faults)

    @property
    def stale_at_heal(self) -> int:
        """Entries left stale in Redis by missed writes, counted just before each heal
        (--chaos): what only the catch-up, or a later write, removes."""
        return sum(fault.stale for fault in self.faults)

    @property
    def lost_writes(self) -> int:
        """Rows whose committed writes the database does not hold."""
        return len(self.lost)

    @property
    def stale_entries(self) -> int:
        """Stale entries found in Redis and in the memory layers."""
        return len(self.stale) + len(self.memory_stale)

    @property
    def uncommitted_reads(self) -> int:
        """Reads of values no committed transaction wrote."""
        return len(self.uncommitted)

    @property
    def ok(self) -> bool:
        """Whether every check passed."""
        return not (
            self.stale
            or self.memory_stale
            or self.uncommitted
            or self.wrong
            or self.lost
            or self.unsettled
            or self.out_of_order
        )

    def format(self) -> str:
        """A short human-readable report."""
        layers = "ProcessMemoryStore, RedisStore" if self.memory_layer else "RedisStore"
        lines = [
            f"stress.consistency: {self.processes} processes x {self.seconds:g} s, "
            f"layers {layers}, seed {self.seed}, cache prefix {self.prefix}, "
            f"elapsed {self.elapsed:.1f} s" + (", chaos" if self.chaos else "")
        ]
        for w in self.workers:
            ops = ", ".join(f"{kind} {n}" for kind, n in sorted(w.operations.items()))
            conflicts = ", ".join(f"{kind} {n}" for kind, n in sorted(w.conflicts.items()))
            layer_hits = ", ".join(
                f"{name} {events.get('hits', 0)}" for name, events in w.layer_events.items()
            )
            forked = ", forked after its chain was used" if w.forked else ""
            lines += [
                f"  process {w.pid}{forked} ({w.seconds:.1f} s): "
                f"{sum(w.operations.values())} ops: {ops}",
                f"    commits {w.commits}, rollbacks {w.rollbacks}, "
                f"conflicts {sum(w.conflicts.values())} ({conflicts or 'none'}), "
                f"skipped {sum(w.skipped.values())}, reads {w.reads} (found {w.found}), "
                f"hits by layer: {layer_hits}, write-through errors {w.writethrough_errors}",
                f"    flushes the application refused {w.refused_flushes}; removed instead "
                f"of written: {w.inexact} inexact, {w.refused} refused",
            ]
            if self.chaos:
                lines.append(
                    f"    Redis layer: errors {w.redis.get('errors', 0)}, "
                    f"skipped {w.redis.get('skipped', 0)}, "
                    f"caught up {w.redis.get('caught_up', 0)}; while it failed or rested: "
                    f"commits {w.commits_while_down}, reads {w.reads_while_down}"
                )
            if w.broadcast:
                counts = ", ".join(f"{event} {n}" for event, n in sorted(w.broadcast.items()))
                lines.append(f"    broadcast: {counts}")
        lines += [
            f"  total: {sum(self.operations.values())} ops, {self.commits} commits, "
            f"{self.rollbacks} rollbacks, {self.conflicts} conflicts "
            f"({', '.join(f'{c} {n}' for c, n in sorted(self.causes.items())) or 'none'}), "
            f"{self.reads} reads, "
            f"{self.hits} cache hits, {self.writethrough_errors} write-through errors",
        ]
        if self.chaos:
            faults = ", ".join(
                f"{f.at:.1f}+{f.lasted:.1f} {f.mode} ({f.stale} stale)" for f in self.faults
            )
            calm = self.seconds - max((f.at + f.lasted for f in self.faults), default=0.0)
            lines += [
                f"  faults: the link to Redis cut {len(self.faults)} times (at+lasted s, how, "
                f"entries Redis held stale at the heal: {faults or 'none'}); healed for the "
                f"last {calm:.1f} s",
                f"  Redis layer: errors {self.redis_events('errors')}, "
                f"skipped {self.redis_events('skipped')}, "
                f"caught up {self.redis_events('caught_up')}; while it failed or rested: "
                f"{self.commits_while_down} commits, {self.reads_while_down} reads",
            ]
        lines += [
            f"  checked {self.rows_checked} rows against their committed writes: "
            f"lost writes {len(self.lost)}",
            f"  checked {self.keys_checked} Redis keys ({self.keys_held} held an entry)"
            + (
                f", {sum(w.memory_checked for w in self.workers)} memory-layer keys "
                f"({sum(w.memory_held for w in self.workers)} held an entry)"
                if self.memory_layer
                else ""
            )
            + f": stale entries {len(self.stale)} in Redis"
            + (f", {len(self.memory_stale)} in memory layers" if self.memory_layer else "")
            + f" (and {len(self.late)} a deleted row's late write left)"
            + f"; uncommitted reads {len(self.uncommitted)}; wrong answers {len(self.wrong)}",
            f"  {self.reordered} commits reached Redis after a newer one of their row; "
            f"read {sum(len(w.peeks) for w in self.workers)} rows straight from Redis, "
            f"{self.peeks_compared} after a commit of theirs had written through: older "
            f"than it {len(self.out_of_order)}",
        ]
        for title, items in (
            ("could not check", self.unsettled),
            ("lost writes", self.lost),
            ("stale in Redis", self.stale),
            ("stale in memory layers", self.memory_stale),
            ("left by a deleted row's late write (a primary key used again)", self.late),
            ("older than a commit written through", self.out_of_order),
            ("uncommitted reads", self.uncommitted),
            ("wrong answers", self.wrong),
        ):
            if items:
                lines.append(f"  {title} (first {min(len(items), LISTED)}):")
                lines += [f"    {item}" for item in items[:LISTED]]
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)


# -- checks shared by the parent and the workers ----------------------------------------------


def _database_rows(session: Session, klass: type[_Row]) -> dict[int, RowState]:
    return {row.id: row.state() for row in session.scalars(select(klass))}


def _stale_entries(
    layer: BaseKeyValueStore,
    label: str,
    klass: type[_Row],
    rows: dict[int, RowState],
    alternates: Iterable[str],
    histories: dict[tuple[str, int], list[Step]],
) -> tuple[int, int, list[str], list[str]]:
    """Compare what ``layer`` holds for every id and for ``alternates`` with ``rows``.

    Returns the number of keys checked, the number that held an entry, and a description
    of each stale entry: one that is held although the database has no such row, or that
    differs from the row; apart from those, the entries a late write of an earlier row
    under the same primary key left (see stress.ordering.late_states).
    """
    stale: list[str] = []
    late: list[str] = []
    held = 0
    by_alternate = {state.alternate: state for state in rows.values()}
    ids = list(range(1, ROWS + 1))
    names = sorted(set(alternates))
    lookups: list[object] = [*ids, *({klass.alternate: name} for name in names)]
    wanted = [rows.get(row_id) for row_id in ids] + [by_alternate.get(name) for name in names]
    for lookup, row, got in zip(lookups, wanted, layer.batch_get(klass, lookups), strict=True):
        held += got is not None
        if got is None or got.state() == row:
            continue
        now = rows.get(got.id)
        earlier = histories.get((klass.__name__, got.id), [])
        window = now is not None and got.state().core() in late_states(earlier, now.version)
        (late if window else stale).append(
            f"{label} {klass.__name__} {lookup!r}: holds {got.state()}, database {row}"
        )
    return len(lookups), held, stale, late


# -- the worker process ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Config:
    postgres_url: str
    redis_url: str
    prefix: str
    seconds: float
    memory_layer: bool
    seed: int
    index: int
    processes: int
    chaos: bool
    #: Build and use the chain, then fork: the child works with the inherited chain, as
    #: a worker of a preloading server or a prefork pool does.
    fork: bool = False


_Written = list[tuple[str, int]]  # (token, row id) per row a transaction wrote


class _Memory(ProcessMemoryStore):
    """A ProcessMemoryStore that notes each class it has invalidated (the fences).

    A flush of the layer (the broadcast subscription was lost) starts new generations of
    every class too, so generations cannot tell a fence's arrival from a flush.
    """

    def __init__(self, prefix: str) -> None:
        super().__init__(prefix=prefix)
        self.invalidated: set[type] = set()

    def invalidate_class(self, klass: type) -> None:
        """Invalidate, then note ``klass``."""
        super().invalidate_class(klass)
        self.invalidated.add(klass)


class _Worker:
    """One process's engine, sessions, cache layers, attachment and operation mix."""

    def __init__(self, config: _Config) -> None:
        self.config = config
        if config.chaos:
            # Each failure of Redis is logged as a warning: thousands, all expected, all
            # counted in the report.  Errors (a traceback) still show.
            logging.getLogger("sa_stockpyle").setLevel(logging.ERROR)
        self.rng = random.Random(config.seed * 1_000_003 + config.index)
        self.engine = create_engine(config.postgres_url, pool_size=2, max_overflow=2)
        self.factory = sessionmaker(self.engine)
        # One short-lived session per operation: scoped() opens it, remove() closes it.
        self.scoped = scoped_session(self.factory)
        self.redis = TracedRedis(url=config.redis_url, prefix=config.prefix)
        self.memory = _Memory(config.prefix) if config.memory_layer else None
        caches: list[BaseStore] = (
            [self.redis] if self.memory is None else [self.memory, self.redis]
        )
        # With a memory layer the chain broadcasts invalidations between the workers; on a
        # channel of this run's own, so other users of the Redis server neither hear nor
        # disturb it.
        self.store = ChainedStore(
            [*caches, SqlAlchemyStore(session=self.scoped)],
            channel=f"{config.prefix}:invalidations",
        )
        self.fences = [_fence(index) for index in range(config.processes)]
        if self.memory is not None:
            for fence in self.fences:
                self.memory.get(fence, 0)  # makes its key: the process now knows the class
        self.redis_stats = self.store.layer_stats[len(self.store.stores) - 2]
        self.handle = attach(self.factory, self.store)
        # The application's own flush listener, after the plugin's: now and then it raises.
        event.listen(self.factory, "after_flush", self._refuse_now_and_then)
        self.report = WorkerReport(pid=os.getpid(), index=config.index)
        self.counter = 0
        # The alternate key last known per row, and every one known, per class name.
        self.latest: dict[str, dict[int, str]] = {
            k.__name__: {i: _seed_alternate(k, i) for i in range(1, ROWS + 1)} for k in CLASSES
        }
        self.known: dict[str, list[str]] = {k: list(v.values()) for k, v in self.latest.items()}
        self.report.alternates = {(k, a) for k, known in self.known.items() for a in known}
        self.operations: dict[str, Callable[[type[_Row]], None]] = {
            "read_pk": self._read_pk,
            "read_alt": self._read_alt,
            "read_batch": self._read_batch,
            "update": self._update,
            "move": self._move,
            "delete": self._delete,
            "insert": self._insert,
            "bulk_update": self._bulk_update,
            "pair_update": self._pair_update,
            "rollback": self._rollback,
            "external": self._external,
            "bulk_mappings": self._bulk_mappings,
            "table_update": self._table_update,
            "peek": self._peek,
            "overtake": self._overtake,
        }

    def _refuse_now_and_then(self, session: Session, context: Any) -> None:
        if self.rng.random() < REFUSED_FLUSHES:
            raise _AppRefusal("the application refuses this flush")

    def _vary(self, obj: _Row, token: str) -> None:
        """Give the other columns values the database keeps, or changes, or that no cache
        can carry (an application object, now and then)."""
        obj.amount = self.rng.choice(AMOUNTS)
        obj.tag = self.rng.choice(TAGS)
        obj.taken = self.rng.choice(TIMES)
        obj.blob = Opaque(token) if self.rng.random() < 0.1 else self.rng.choice([None, [1, 2]])

    def warm_up(self) -> None:
        """Read every row through the chain, filling its layers (before a fork)."""
        self.scoped()
        try:
            for klass in CLASSES:
                self.store.batch_get(klass, range(1, ROWS + 1))
        finally:
            self.scoped.remove()

    def close(self) -> None:
        """Detach, close the layers, dispose of the engine."""
        self.handle.detach()
        self.scoped.remove()
        self.store.close()
        self.engine.dispose()

    # -- the loop -------------------------------------------------------------------------

    def loop(self) -> None:
        """Run random operations until ``config.seconds`` have passed."""
        kinds, weights = list(MIX), list(MIX.values())
        started = time.monotonic()
        deadline = started + self.config.seconds
        while time.monotonic() < deadline:
            kind = self.rng.choices(kinds, weights)[0]
            klass = self.rng.choice(CLASSES)
            self.report.operations[kind] += 1
            self.operations[kind](klass)
        self.report.seconds = time.monotonic() - started

    def finish(self) -> WorkerReport:
        """The report, with the chain's and the attachment's counters."""
        report = self.report
        last = len(self.store.stores) - 1
        for index, stats in enumerate(self.store.layer_stats):
            events: Counter[str] = Counter()
            for by_event in stats.as_dict().values():
                events.update(by_event)
            report.layer_events[self.store.layer_name(index)] = dict(events)
            if index != last:
                report.cache_hits += events["hits"]
        report.redis = report.layer_events[self.store.layer_name(last - 1)]
        report.writethrough_errors = self.handle.stats.count(None, "errors")
        report.inexact = self.handle.stats.count(None, "inexact")
        report.refused = self.handle.stats.count(None, "refused")
        if self.store.coherence is not None:
            report.broadcast = self.store.coherence.counts()
        return report

    def settle(self) -> None:
        """Wait until the chain reads Redis again (after the last fault, --chaos).

        The chain uses a layer only once it has made up for every write it missed while
        the layer was down: from then on this process leaves nothing stale behind.
        """
        deadline = time.monotonic() + FENCE_TIMEOUT
        while True:
            asked = self._redis_reads()
            self.scoped()
            try:
                self.store.get(Plain, ROWS + 1)  # no such row: every layer is asked
            finally:
                self.scoped.remove()
            if self._redis_reads() > asked:
                return
            if time.monotonic() > deadline:
                self.report.unsettled.append(
                    f"process {self.report.pid}: the chain did not use Redis again within "
                    f"{FENCE_TIMEOUT:g} s after the workers stopped"
                )
                return
            time.sleep(0.05)  # the layer rests after a failure; no race depends on it

    def _redis_reads(self) -> int:
        return self.redis_stats.count(None, "hits") + self.redis_stats.count(None, "misses")

    def _redis_trouble(self) -> int:
        """Calls that found Redis failing, or skipped it while it rested."""
        return self.redis_stats.count(None, "errors") + self.redis_stats.count(None, "skipped")

    def _row_id(self) -> int:
        # Skewed: most operations fall on a few hot rows, where the races are.
        if self.rng.random() < HOT_SHARE:
            return self.rng.randint(1, HOT_ROWS)
        return self.rng.randint(1, ROWS)

    def _token(self) -> str:
        self.counter += 1
        return f"{self.report.pid}-{self.counter}"

    def _learn(self, klass: type[_Row], row_id: int, alternate: str) -> None:
        name = klass.__name__
        self.latest[name][row_id] = alternate
        if (name, alternate) not in self.report.alternates:
            self.report.alternates.add((name, alternate))
            self.known[name].append(alternate)

    # -- reads ----------------------------------------------------------------------------

    def _read_pk(self, klass: type[_Row]) -> None:
        self._read(klass, [self._row_id()])

    def _read_alt(self, klass: type[_Row]) -> None:
        self._read(klass, [self._alternate_lookup(klass)])

    def _read_batch(self, klass: type[_Row]) -> None:
        lookups: list[int | dict[str, str]] = [
            self._row_id() if self.rng.random() < 0.5 else self._alternate_lookup(klass)
            for _ in range(5)
        ]
        self._read(klass, lookups)

    def _alternate_lookup(self, klass: type[_Row]) -> dict[str, str]:
        # Mostly the latest alternate key this process knows for a (skewed) row, which may
        # have moved since; sometimes any it ever knew, most of which answer nothing now.
        name = klass.__name__
        if self.rng.random() < 0.8:
            return {klass.alternate: self.latest[name][self._row_id()]}
        return {klass.alternate: self.rng.choice(self.known[name])}

    def _read(self, klass: type[_Row], lookups: Sequence[int | dict[str, str]]) -> None:
        self.scoped()
        try:
            trouble = self._redis_trouble()
            if len(lookups) == 1:
                found = [self.store.get(klass, lookups[0])]
            else:
                found = self.store.batch_get(klass, lookups)
            if self._redis_trouble() > trouble:
                self.report.reads_while_down += 1
            for lookup, obj in zip(lookups, found, strict=True):
                self._saw(klass, lookup, obj)
        finally:
            self.scoped.remove()

    def _saw(self, klass: type[_Row], lookup: int | dict[str, str], obj: _Row | None) -> None:
        report = self.report
        report.reads += 1
        if obj is None:
            return
        report.found += 1
        state = obj.state()
        answers = (
            state.id == lookup
            if isinstance(lookup, int)
            else state.alternate == next(iter(lookup.values()))
        )
        if not answers:
            report.wrong.append(f"{klass.__name__} {lookup!r} answered {state}")
        report.seen.add((klass.__name__, state.id, state.value))
        self._learn(klass, state.id, state.alternate)

    def _peek(self, klass: type[_Row], ids: Iterable[int] = range(1, HOT_ROWS + 1)) -> None:
        """Read rows (the hot ones) straight from Redis, for the order check (see
        stress.ordering)."""
        at = time.monotonic()
        try:
            found = self.redis.batch_get(klass, ids)
        except StoreUnavailable:
            return  # the link is cut (--chaos)
        self.report.peeks += [
            Peek(at, klass.__name__, obj.id, obj.state().core())
            for obj in found
            if obj is not None
        ]

    def _returned(self, klass: type[_Row], written: _Written, trouble: int, finished: int) -> None:
        """Note the tokens of a commit that just returned, if its write-through reached
        Redis (the Redis layer finished a commit write on this thread, and the chain found
        no failure meanwhile and skipped nothing: what it skipped is caught up later);
        then read its rows from Redis: a write of an older commit held up until after
        this one would show there."""
        if self._redis_trouble() == trouble and self.redis.finished() > finished:
            at = time.monotonic()
            self.report.returned += [(token, at) for token, _ in written]
            self._peek(klass, [row_id for _, row_id in written])

    # -- writes ---------------------------------------------------------------------------

    def _load(self, session: Session, klass: type[_Row], row_id: int) -> _Row | None:
        # As an application would: half the time through the cache (the chain attaches a
        # hit to the session), else from the database.  A stale cached copy of a versioned
        # row then fails its UPDATE (StaleDataError), which is counted as a conflict.
        if self.rng.random() < 0.5:
            return self.store.get(klass, row_id)
        return session.get(klass, row_id)

    def _commit(self, kind: str, klass: type[_Row], change: Callable[[Session], _Written]) -> None:
        """Run ``change`` in a new transaction; record its tokens in it and commit."""
        session = self.scoped()
        try:
            written = change(session)
            if not written:
                self.report.skipped[kind] += 1
                session.rollback()
                return
            # The rows' writes first: their locks are held when seq is drawn (Committed).
            session.flush()
            session.add_all(
                Committed(token=token, klass=klass.__name__, row_id=row_id, kind=kind)
                for token, row_id in written
            )
            trouble, finished = self._redis_trouble(), self.redis.finished()
            session.commit()
            self.report.commits += 1
            self._returned(klass, written, trouble, finished)
            if self._redis_trouble() > trouble:
                self.report.commits_while_down += 1
        except (DBAPIError, StaleDataError) as exc:
            # Lost a race in the database: a deadlock, a unique violation, a row changed
            # (version) or deleted since it was read.  Counted and skipped, not retried.
            session.rollback()
            self._conflict(kind, exc)
        except _AppRefusal:
            session.rollback()
            self.report.refused_flushes += 1
        finally:
            self.scoped.remove()

    def _conflict(self, kind: str, exc: DBAPIError | StaleDataError) -> None:
        self.report.conflicts[kind] += 1
        # The driver's error class names the cause: DeadlockDetected, UniqueViolation...
        cause = exc.orig if isinstance(exc, DBAPIError) else exc
        self.report.causes[type(cause).__name__] += 1

    def _update(self, klass: type[_Row]) -> None:
        def change(session: Session) -> _Written:
            obj = self._load(session, klass, self._row_id())
            if obj is None:
                return []
            token = self._token()
            obj.value = token
            self._vary(obj, token)
            return [(token, obj.id)]

        self._commit("update", klass, change)

    def _move(self, klass: type[_Row]) -> None:
        def change(session: Session) -> _Written:
            obj = self._load(session, klass, self._row_id())
            if obj is None:
                return []
            token = self._token()
            alternate = _new_alternate(klass, token)
            self._learn(klass, obj.id, alternate)
            setattr(obj, klass.alternate, alternate)
            return [(token, obj.id)]

        self._commit("move", klass, change)

    def _delete(self, klass: type[_Row]) -> None:
        def change(session: Session) -> _Written:
            row_id = self._row_id()
            # Locked, so a concurrent delete waits instead of matching no row.
            obj = session.get(klass, row_id, with_for_update=True)
            if obj is None:
                return []
            session.delete(obj)
            return [(self._token(), row_id)]

        self._commit("delete", klass, change)

    def _insert(self, klass: type[_Row]) -> None:
        def change(session: Session) -> _Written:
            row_id = self._row_id()
            if session.get(klass, row_id) is not None:
                return []
            token = self._token()
            alternate = _new_alternate(klass, token)
            self._learn(klass, row_id, alternate)
            row = klass(id=row_id, value=token)
            setattr(row, klass.alternate, alternate)
            self._vary(row, token)
            session.add(row)
            return [(token, row_id)]

        self._commit("insert", klass, change)

    def _bulk_update(self, klass: type[_Row]) -> None:
        def change(session: Session) -> _Written:
            row_id = self._row_id()
            token = self._token()
            values: dict[str, Any] = {"value": token}
            if klass is Versioned:
                values["version"] = Versioned.version + 1  # as an application would
            result = session.execute(update(klass).where(klass.id == row_id).values(values))
            return [(token, row_id)] if cast("CursorResult[Any]", result).rowcount else []

        self._commit("bulk_update", klass, change)

    def _overtake(self, klass: type[_Row]) -> None:
        """Two updates of one row, the first written to Redis after the second."""
        row_id = self._row_id()

        def change(session: Session) -> _Written:
            obj = session.get(klass, row_id)  # the database's: the cache's is held back
            if obj is None:
                return []
            token = self._token()
            obj.value = token
            return [(token, row_id)]

        overtaken(
            self.redis,
            lambda: self._commit("held", klass, change),
            lambda: self._commit("overtaking", klass, change),
        )

    def _pair_update(self, klass: type[_Row]) -> None:
        def change(session: Session) -> _Written:
            written: _Written = []
            for row_id in self.rng.sample(range(1, HOT_ROWS * 2 + 1), 2):
                obj = self._load(session, klass, row_id)
                if obj is None:
                    continue
                token = self._token()
                obj.value = token
                written.append((token, row_id))
                # Row locks taken in a random order: two such transactions can deadlock.
                session.flush()
            return written

        self._commit("pair_update", klass, change)

    def _rollback(self, klass: type[_Row]) -> None:
        """Write and flush a token, read it back through the chain, then roll back."""
        session = self.scoped()
        try:
            row_id = self._row_id()
            obj = self._load(session, klass, row_id)
            if obj is None:
                self.report.skipped["rollback"] += 1
                return
            token = self._token()
            obj.value = token
            self.report.rolled_back.append(token)
            session.flush()
            # This transaction reads its own write; the chain must fill no cache with it.
            again = self.store.get(klass, row_id)
            if again is None or again.value != token:
                got = None if again is None else again.state()
                self.report.wrong.append(
                    f"{klass.__name__} id={row_id} read in its writing transaction: {got}, "
                    f"not its own uncommitted {token!r}"
                )
            # Both ways a transaction ends without committing.
            if self.rng.random() < 0.5:
                session.rollback()
            else:
                session.close()
            self.report.rollbacks += 1
        except (DBAPIError, StaleDataError) as exc:
            session.rollback()
            self._conflict("rollback", exc)
        except _AppRefusal:
            session.rollback()
            self.report.refused_flushes += 1
        finally:
            self.scoped.remove()

    def _bulk_mappings(self, klass: type[_Row]) -> None:
        """``Session.bulk_update_mappings``: by primary key, outside any flush."""

        def change(session: Session) -> _Written:
            row_id = self._row_id()
            if klass is Versioned or session.get(klass, row_id) is None:
                return []  # its version is the ORM's to keep; a missing row is no write
            token = self._token()
            mappings = [{"id": row_id, "value": token}]
            session.bulk_update_mappings(klass, mappings)  # type: ignore[arg-type]
            return [(token, row_id)]

        self._commit("bulk_mappings", klass, change)

    def _table_update(self, klass: type[_Row]) -> None:
        """An UPDATE of the table (no mapper), by key or by the alternate key."""

        def change(session: Session) -> _Written:
            table = klass.__table__
            row_id = self._row_id()
            token = self._token()
            values: dict[str, Any] = {"value": token}
            if klass is Versioned:
                values["version"] = table.c.version + 1
            if self.rng.random() < 0.5:
                where = table.c.id == row_id
            else:  # the rows are known only from what the database returns
                where = table.c[klass.alternate] == self.latest[klass.__name__].get(row_id, "")
            result = session.execute(update(table).where(where).values(values))
            return [(token, row_id)] if cast("CursorResult[Any]", result).rowcount else []

        self._commit("table_update", klass, change)

    def _external(self, klass: type[_Row]) -> None:
        """A session joined to the caller's transaction, which commits or rolls back."""
        rollback = self.rng.random() < 0.5
        with self.engine.connect() as connection:
            outer = connection.begin()
            session = self.factory(bind=connection)
            try:
                row_id = self._row_id()
                obj = session.get(klass, row_id)
                if obj is None:
                    self.report.skipped["external"] += 1
                    return
                token = self._token()
                obj.value = token
                if rollback:
                    self.report.rolled_back.append(token)
                else:
                    session.flush()
                    written = Committed(
                        token=token, klass=klass.__name__, row_id=row_id, kind="external"
                    )
                    session.add(written)
                session.commit()  # the session's part; the database commits with the caller
                # A read in the caller's transaction, which may see the write: no fill.
                with self.factory(bind=connection) as reader:
                    layers = [*self.store.stores[:-1], SqlAlchemyStore(session=reader)]
                    ChainedStore(layers, broadcast=False).get(klass, row_id)
                if rollback:
                    outer.rollback()
                    self.report.rollbacks += 1
                else:
                    trouble, finished = self._redis_trouble(), self.redis.finished()
                    outer.commit()  # the write-through follows the database's COMMIT
                    self.report.commits += 1
                    self._returned(klass, [(token, row_id)], trouble, finished)
            except (DBAPIError, StaleDataError) as exc:
                self._conflict("external", exc)
            except _AppRefusal:
                self.report.refused_flushes += 1
            finally:
                session.close()

    # -- the memory layer check -----------------------------------------------------------

    def check_memory(self) -> None:
        """Once every other worker has stopped and its invalidations have arrived, compare
        this process's memory layer with the database."""
        memory = self.memory
        if memory is None:
            return
        # Invalidations travel asynchronously.  Each worker broadcasts its fence after its
        # last operation; once this process has applied the fence of every other worker,
        # it has applied all their earlier messages, and nobody writes any more.
        self.store.invalidate_class(self.fences[self.config.index])
        others = [f for i, f in enumerate(self.fences) if i != self.config.index]
        deadline = time.monotonic() + FENCE_TIMEOUT
        waiting = others
        while waiting and time.monotonic() < deadline:
            time.sleep(0.001)  # polls for the fences' arrival; no race depends on it
            waiting = [fence for fence in waiting if fence not in memory.invalidated]
        for fence in waiting:
            self.report.memory_stale.append(
                f"memory of {self.report.pid}: the last invalidation of worker "
                f"{self.fences.index(fence)} did not arrive within {FENCE_TIMEOUT:g} s"
            )
        with Session(self.engine) as session:
            histories, _ = _histories(session.scalars(select(Committed).order_by(Committed.seq)))
            for klass in CLASSES:
                rows = _database_rows(session, klass)
                checked, held, stale, late = _stale_entries(
                    memory,
                    f"memory of {self.report.pid}:",
                    klass,
                    rows,
                    self.known[klass.__name__],
                    histories,
                )
                self.report.memory_checked += checked
                self.report.memory_held += held
                self.report.memory_stale += stale
                self.report.memory_late += late


def _work(config: _Config, start: Barrier, results: Queue[WorkerReport]) -> None:
    """A worker process: set up, wait for the others, loop, check, report.

    With ``config.fork`` it sets up and uses its chain, then forks: the child does the
    rest and reports, and this process waits for it."""
    try:
        worker = _Worker(config)
        if config.fork:
            worker.warm_up()
            child = os.fork()
            if child:
                try:
                    os.waitpid(child, 0)
                finally:
                    worker.close()
                return
            _in_forked_child(worker, start, results)
    except BaseException:
        # Release the others from the barrier, and tell the parent why.
        start.abort()
        results.put(WorkerReport(os.getpid(), config.index, error=traceback.format_exc()))
        return
    results.put(_run(worker, start))


def _run(worker: _Worker, start: Barrier) -> WorkerReport:
    """Wait for the other workers, loop, check: the report, or the traceback in one."""
    try:
        try:
            start.wait(SETUP_TIMEOUT)
            worker.loop()
            worker.settle()
            worker.check_memory()
            return worker.finish()
        finally:
            worker.close()
    except BaseException:
        start.abort()
        return WorkerReport(os.getpid(), worker.config.index, error=traceback.format_exc())


def _in_forked_child(worker: _Worker, start: Barrier, results: Queue[WorkerReport]) -> NoReturn:
    """The forked worker: its own database connections (as SQLAlchemy documents for
    forks), the inherited chain, the usual run; it ends the process, whatever happens."""
    code = 1
    try:
        worker.engine.dispose(close=False)
        worker.report.pid = os.getpid()
        worker.report.forked = True
        report = _run(worker, start)
        results.put(report)
        results.close()
        results.join_thread()  # the report is sent before the process ends
        code = 0 if report.error is None else 1
    finally:
        os._exit(code)


# -- the parent -----------------------------------------------------------------------------


def _stale_now(engine: Engine, redis: RedisStore) -> int:
    """How many entries Redis holds, by primary key, that disagree with the database.

    Counted while the workers' link is cut: these are what their missed writes left, and
    nothing but their catch-up (or a later write) will remove them."""
    stale = 0
    for klass in CLASSES:
        # Before the database: Redis cannot change while the link is cut, the rows can.
        held = redis.batch_get(klass, range(1, ROWS + 1))
        with Session(engine) as session:
            rows = _database_rows(session, klass)
        stale += sum(
            got is not None and got.state() != rows.get(row_id)
            for row_id, got in zip(range(1, ROWS + 1), held, strict=True)
        )
    return stale


def _run_workers(configs: list[_Config], chaos: Chaos | None = None) -> list[WorkerReport]:
    context = multiprocessing.get_context("spawn")
    # With chaos the parent waits at the barrier too: the faults start with the workers.
    start = context.Barrier(len(configs) + (chaos is not None))
    results: Queue[WorkerReport] = context.Queue()
    processes = [
        context.Process(target=_work, args=(config, start, results), name=f"stress-{config.index}")
        for config in configs
    ]
    for process in processes:
        process.start()
    if chaos is not None:
        chaos.start(start)
    reports: list[WorkerReport] = []
    finished = False
    try:
        deadline = time.monotonic() + configs[0].seconds + 3 * SETUP_TIMEOUT
        while len(reports) < len(processes):
            try:
                reports.append(results.get(timeout=1.0))
                continue
            except queue.Empty:
                pass
            # _work reports every failure it can catch and then exits with 0: a non-zero
            # exit code is a process that died without a report (in start-up, or killed).
            codes = [process.exitcode for process in processes]
            if any(code not in (None, 0) for code in codes) or time.monotonic() > deadline:
                raise RuntimeError(f"stress workers did not all report (exit codes {codes})")
        finished = True
    finally:
        if chaos is not None:
            chaos.stop()
        for process in processes:
            # After a failure the others may be waiting at a barrier: do not wait for them.
            process.join(timeout=30 if finished else 0)
            if process.is_alive():
                process.terminate()
                process.join()
    errors = [report.error for report in reports if report.error is not None]
    if chaos is not None and chaos.error is not None:
        errors.append(f"fault injection failed:\n{chaos.error}")
    if errors:
        raise RuntimeError("stress worker failed:\n" + "\n".join(errors))
    return sorted(reports, key=lambda report: report.index)


def _check(engine: Engine, redis: RedisStore, report: Report) -> None:
    """Fill ``report``'s findings from the database and Redis, every worker stopped."""
    with Session(engine) as session:
        writes = list(session.scalars(select(Committed).order_by(Committed.seq)))
        rows = {klass: _database_rows(session, klass) for klass in CLASSES}
    committed = {write.token: (write.klass, write.row_id) for write in writes}
    rolled_back = {token: w.pid for w in report.workers for token in w.rolled_back}
    for worker in report.workers:
        report.memory_stale += worker.memory_stale
        report.late += worker.memory_late
        report.unsettled += worker.unsettled
        report.wrong += [f"process {worker.pid}: {item}" for item in worker.wrong]
        for name, row_id, value in sorted(worker.seen):
            origin = committed.get(value)
            if origin is None:
                why = (
                    f"rolled back by process {rolled_back[value]}"
                    if value in rolled_back
                    else "never committed"
                )
                report.uncommitted.append(
                    f"process {worker.pid} read {name} id={row_id} value={value!r}: {why}"
                )
            elif origin != (name, row_id):
                report.wrong.append(
                    f"process {worker.pid} read {name} id={row_id} value={value!r}, "
                    f"committed for {origin[0]} id={origin[1]}"
                )
    histories, report.lost = _histories(writes)
    report.rows_checked = len(histories) + len(report.lost)
    for (name, row_id), steps in histories.items():
        expected = steps[-1].state if steps else None
        row = rows[_BY_NAME[name]].get(row_id)
        # The other columns are not compared: the committed tokens do not name them.
        if (None if row is None else row.core()) != expected:
            last = ", ".join(f"{s.kind} {s.token!r} (seq {s.seq})" for s in steps[-3:])
            report.lost.append(
                f"{name} id={row_id}: database {row}, the committed writes leave "
                f"{expected} (the last: {last})"
            )
    report.reordered, report.peeks_compared, report.out_of_order = out_of_order(
        histories,
        [item for worker in report.workers for item in worker.returned],
        [peek for worker in report.workers for peek in worker.peeks],
    )
    for klass in CLASSES:
        # Read first: a lookup would start a new (empty) generation where none is.
        if not all(redis.client.mget(redis.keymaker.generation_keys(klass))):
            report.unsettled.append(
                f"Redis holds no generation of {klass.__name__}: what the workers cached "
                "cannot be found"
            )
    for klass in CLASSES:
        alternates = {_seed_alternate(klass, i) for i in range(1, ROWS + 1)}
        alternates |= {
            alternate
            for worker in report.workers
            for name, alternate in worker.alternates
            if name == klass.__name__
        }
        checked, held, stale, late = _stale_entries(
            redis, "Redis", klass, rows[klass], alternates, histories
        )
        report.keys_checked += checked
        report.keys_held += held
        report.stale += stale
        report.late += late


def run(
    postgres_url: str,
    redis_url: str,
    processes: int,
    seconds: float,
    memory_layer: bool = False,
    seed: int = 0,
    chaos: bool = False,
    fault_interval: tuple[float, float] = FAULT_INTERVAL,
    downtime: tuple[float, float] = DOWNTIME,
    forked: int = 0,
) -> Report:
    """Run the stress: ``processes`` workers for ``seconds``, then check; see the module doc.

    Parameters:
        postgres_url: a SQLAlchemy URL of a PostgreSQL database whose ``stress_*`` tables
            may be dropped and created.
        redis_url: a Redis URL; keys are written under a prefix of this run's own.
        processes: worker processes.
        seconds: how long each worker runs its operation loop.
        memory_layer: put a ``ProcessMemoryStore`` in front of Redis in every worker, and
            check it at the end.
        seed: seeds each worker's choice of operations, and the faults.
        chaos: the workers reach Redis through a :class:`~stress.partition.Partition`
            that cuts the link and heals it while they run; Redis keeps its entries.
        fault_interval: with ``chaos``, the range of seconds from one heal to the next
            cut (the first: from the start).
        downtime: with ``chaos``, the range of seconds the link stays cut.
        forked: how many of the workers fork after using their chain, and work in the
            child with the chain it inherited.

    Raises RuntimeError when a worker fails (its traceback is in the message).
    """
    if processes < 1 or seconds <= 0:
        raise ValueError(f"need processes >= 1 and seconds > 0, got {processes}, {seconds}")
    if chaos and seconds <= QUIET:
        raise ValueError(f"chaos needs seconds > {QUIET:g} (the quiet end), got {seconds}")
    for name, (low, high) in (("fault_interval", fault_interval), ("downtime", downtime)):
        if not 0 < low <= high:
            raise ValueError(f"need 0 < low <= high for {name}, got {(low, high)}")
    started = time.monotonic()
    prefix = f"stress{secrets.token_hex(4)}"
    engine = create_engine(postgres_url)
    # The parent's own checks read Redis straight, never through the partition.
    redis = RedisStore(url=redis_url, prefix=prefix)
    partition: Partition | None = None
    faults: Chaos | None = None
    try:
        workers_url = redis_url
        if chaos:
            server = urlsplit(redis_url)
            partition = Partition(server.hostname or "127.0.0.1", server.port or 6379)
            workers_url = through(partition, redis_url)
            faults = Chaos(
                partition,
                lambda: _stale_now(engine, redis),
                seconds,
                seed,
                fault_interval,
                downtime,
                SETUP_TIMEOUT,
            )
        _create_schema(engine)
        configs = [
            _Config(
                postgres_url,
                workers_url,
                prefix,
                seconds,
                memory_layer,
                seed,
                index,
                processes,
                chaos,
                fork=index < forked,
            )
            for index in range(processes)
        ]
        workers = _run_workers(configs, faults)
        report = Report(processes, seconds, memory_layer, seed, prefix, 0.0, workers, chaos)
        if faults is not None:
            report.faults = faults.faults
        _check(engine, redis, report)
        if report.ok:
            Base.metadata.drop_all(engine)
            keys = list(redis.client.scan_iter(match=f"{prefix}:*", count=1000))
            if keys:
                redis.client.delete(*keys)
    finally:
        if partition is not None:
            partition.close()
        redis.close()
        engine.dispose()
    report.elapsed = time.monotonic() - started
    return report


def _seconds_range(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    return float(low), float(high or low)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: run, print the report, return 1 when a check failed."""
    parser = argparse.ArgumentParser(
        prog="python -m stress.consistency",
        description="Multi-process consistency stress of attach() and ChainedStore.",
    )
    parser.add_argument("--postgres-url", required=True, help="SQLAlchemy URL of PostgreSQL")
    parser.add_argument("--redis-url", required=True, help="redis:// URL (any database)")
    parser.add_argument("--processes", type=int, default=4, help="worker processes")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of operations")
    parser.add_argument(
        "--memory-layer",
        action="store_true",
        help="a ProcessMemoryStore in front of Redis in each worker, checked at the end",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the operation choices and the faults"
    )
    parser.add_argument(
        "--forked",
        type=int,
        default=0,
        help="workers that fork after using their chain, and work in the child",
    )
    parser.add_argument(
        "--chaos",
        action="store_true",
        help="cut the workers' link to Redis at random moments (Redis keeps its entries)",
    )
    parser.add_argument(
        "--fault-interval",
        type=_seconds_range,
        default=FAULT_INTERVAL,
        metavar="LOW,HIGH",
        help="--chaos: seconds from a heal to the next cut (default %(default)s)",
    )
    parser.add_argument(
        "--downtime",
        type=_seconds_range,
        default=DOWNTIME,
        metavar="LOW,HIGH",
        help="--chaos: seconds the link stays cut (default %(default)s)",
    )
    args = parser.parse_args(argv)
    report = run(
        args.postgres_url,
        args.redis_url,
        args.processes,
        args.seconds,
        memory_layer=args.memory_layer,
        seed=args.seed,
        chaos=args.chaos,
        fault_interval=args.fault_interval,
        downtime=args.downtime,
        forked=args.forked,
    )
    print(report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":
    # Under ``python -m`` this file runs as ``__main__``, but cache keys name classes by
    # module: run the copy imported as ``stress.consistency``, the one workers import.
    from stress.consistency import main as _main

    sys.exit(_main())
