"""One worker's operations: the random mix, its reads, and the transaction of every write.

A :class:`Workload` reads through its chain and picks what to write: rows skewed toward
a few hot ones (where the races are), values the database keeps or changes, alternate
keys it has seen.  Every write runs in :meth:`Workload._commit`, which records the tokens
it wrote in ``stress_committed`` in the same transaction; the writes themselves are
:class:`stress.consistency.writes.Writer`'s.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, scoped_session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from sa_stockpyle.errors import StoreUnavailable
from sa_stockpyle.stores import ChainedStore
from sa_stockpyle.stores.stats import Stats
from stress.consistency.report import WorkerReport
from stress.consistency.schema import CLASSES, ROWS, Committed, Row, seed_alternate
from stress.ordering import Peek, TracedRedis

#: The hot rows, 1..HOT_ROWS, and the share of operations that go to them.
HOT_ROWS = 5
HOT_SHARE = 0.6
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


class AppRefusal(Exception):
    """What the application's flush listener raises now and then."""


#: (token, row id) per row a transaction wrote.
Written = list[tuple[str, int]]


class Workload:
    """One worker's operation mix over its chain (the reads; :class:`Writer` adds the
    writes), counted in its report."""

    def __init__(
        self,
        rng: random.Random,
        engine: Engine,
        factory: sessionmaker[Session],
        scoped: scoped_session[Session],
        store: ChainedStore,
        redis: TracedRedis,
        redis_stats: Stats,
        report: WorkerReport,
    ) -> None:
        self.rng = rng
        self.engine = engine
        self.factory = factory
        # One short-lived session per operation: scoped() opens it, remove() closes it.
        self.scoped = scoped
        self.store = store
        self.redis = redis
        self.redis_stats = redis_stats
        self.report = report
        # The application's own flush listener, after the plugin's: now and then it raises.
        event.listen(factory, "after_flush", self._refuse_now_and_then)
        self.counter = 0
        # The alternate key last known per row, and every one known, per class name.
        self.latest: dict[str, dict[int, str]] = {
            k.__name__: {i: seed_alternate(k, i) for i in range(1, ROWS + 1)} for k in CLASSES
        }
        self.known: dict[str, list[str]] = {k: list(v.values()) for k, v in self.latest.items()}
        report.alternates = {(k, a) for k, known in self.known.items() for a in known}

    def operations(self) -> dict[str, Callable[[type[Row]], None]]:
        """Each kind of operation of :data:`MIX` this workload runs, by name."""
        return {
            "read_pk": self._read_pk,
            "read_alt": self._read_alt,
            "read_batch": self._read_batch,
            "peek": self._peek,
        }

    def _refuse_now_and_then(self, session: Session, context: Any) -> None:
        if self.rng.random() < REFUSED_FLUSHES:
            raise AppRefusal("the application refuses this flush")

    def _vary(self, obj: Row, token: str) -> None:
        """Give the other columns values the database keeps, or changes, or that no cache
        can carry (an application object, now and then)."""
        obj.amount = self.rng.choice(AMOUNTS)
        obj.tag = self.rng.choice(TAGS)
        obj.taken = self.rng.choice(TIMES)
        obj.blob = Opaque(token) if self.rng.random() < 0.1 else self.rng.choice([None, [1, 2]])

    # -- the loop -------------------------------------------------------------------------

    def loop(self, seconds: float) -> None:
        """Run random operations until ``seconds`` have passed."""
        operations = self.operations()
        kinds, weights = list(MIX), list(MIX.values())
        started = time.monotonic()
        deadline = started + seconds
        while time.monotonic() < deadline:
            kind = self.rng.choices(kinds, weights)[0]
            klass = self.rng.choice(CLASSES)
            self.report.operations[kind] += 1
            operations[kind](klass)
        self.report.seconds = time.monotonic() - started

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

    def _learn(self, klass: type[Row], row_id: int, alternate: str) -> None:
        name = klass.__name__
        self.latest[name][row_id] = alternate
        if (name, alternate) not in self.report.alternates:
            self.report.alternates.add((name, alternate))
            self.known[name].append(alternate)

    # -- reads ----------------------------------------------------------------------------

    def _read_pk(self, klass: type[Row]) -> None:
        self._read(klass, [self._row_id()])

    def _read_alt(self, klass: type[Row]) -> None:
        self._read(klass, [self._alternate_lookup(klass)])

    def _read_batch(self, klass: type[Row]) -> None:
        lookups: list[int | dict[str, str]] = [
            self._row_id() if self.rng.random() < 0.5 else self._alternate_lookup(klass)
            for _ in range(5)
        ]
        self._read(klass, lookups)

    def _alternate_lookup(self, klass: type[Row]) -> dict[str, str]:
        # Mostly the latest alternate key this process knows for a (skewed) row, which may
        # have moved since; sometimes any it ever knew, most of which answer nothing now.
        name = klass.__name__
        if self.rng.random() < 0.8:
            return {klass.alternate: self.latest[name][self._row_id()]}
        return {klass.alternate: self.rng.choice(self.known[name])}

    def _read(self, klass: type[Row], lookups: Sequence[int | dict[str, str]]) -> None:
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

    def _saw(self, klass: type[Row], lookup: int | dict[str, str], obj: Row | None) -> None:
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

    def _peek(self, klass: type[Row], ids: Iterable[int] = range(1, HOT_ROWS + 1)) -> None:
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

    def _returned(self, klass: type[Row], written: Written, trouble: int, finished: int) -> None:
        """Note the tokens of a commit that just returned, if its write-through reached
        Redis (the Redis layer finished a commit write on this thread, and the chain found
        no failure meanwhile and skipped nothing: what it skipped is caught up later);
        then read its rows from Redis: a write of an older commit held up until after
        this one would show there."""
        if self._redis_trouble() == trouble and self.redis.finished() > finished:
            at = time.monotonic()
            self.report.returned += [(token, at) for token, _ in written]
            self._peek(klass, [row_id for _, row_id in written])

    # -- the transaction of every write ----------------------------------------------------

    def _load(self, session: Session, klass: type[Row], row_id: int) -> Row | None:
        # As an application would: half the time through the cache (the chain attaches a
        # hit to the session), else from the database.  A stale cached copy of a versioned
        # row then fails its UPDATE (StaleDataError), which is counted as a conflict.
        if self.rng.random() < 0.5:
            return self.store.get(klass, row_id)
        return session.get(klass, row_id)

    def _commit(self, kind: str, klass: type[Row], change: Callable[[Session], Written]) -> None:
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
        except AppRefusal:
            session.rollback()
            self.report.refused_flushes += 1
        finally:
            self.scoped.remove()

    def _conflict(self, kind: str, exc: DBAPIError | StaleDataError) -> None:
        self.report.conflicts[kind] += 1
        # The driver's error class names the cause: DeadlockDetected, UniqueViolation...
        cause = exc.orig if isinstance(exc, DBAPIError) else exc
        self.report.causes[type(cause).__name__] += 1
