"""The checker: what the database, Redis and the reads of a run must agree on.

The committed writes of each row, replayed in commit order (:func:`committed_histories`),
give the row the database must hold; every entry a cache layer holds must be nothing or
that row (:func:`stale_entries`); every value read must be a committed token of the row
it was read from; and no read of Redis may be older than a commit written through before
it (:func:`stress.ordering.out_of_order`).  :func:`check` makes them all once every
worker has stopped; the workers use the same functions for their memory layers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from sa_stockpyle.stores import BaseKeyValueStore, RedisStore
from stress.consistency.report import Report
from stress.consistency.schema import (
    BY_NAME,
    CLASSES,
    ROWS,
    Committed,
    Row,
    RowState,
    Versioned,
    new_alternate,
    seed_alternate,
)
from stress.ordering import Step, late_states, out_of_order


def _replay(klass: type[Row], row_id: int, writes: Sequence[Committed]) -> list[Step]:
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
                seed_alternate(klass, row_id) if kind == "seed" else new_alternate(klass, token)
            )
            state = RowState(row_id, alternate, token, 1 if klass is Versioned else None)
        elif state is None:
            raise ValueError(f"{kind} {token!r} (seq {write.seq}) to an absent row")
        elif kind == "delete":
            state = None
        else:
            version = None if state.version is None else state.version + 1
            if kind == "move":
                state = state._replace(alternate=new_alternate(klass, token), version=version)
            else:
                state = state._replace(value=token, version=version)
        steps.append(Step(token, kind, write.seq, None if state is None else state.core()))
    return steps


def committed_histories(
    writes: Iterable[Committed],
) -> tuple[dict[tuple[str, int], list[Step]], list[str]]:
    """The committed ``writes`` (in commit order) of every row, replayed (see ``_replay``),
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


def database_rows(session: Session, klass: type[Row]) -> dict[int, RowState]:
    """The rows of ``klass`` the database holds, by id."""
    return {row.id: row.state() for row in session.scalars(select(klass))}


def stale_entries(
    layer: BaseKeyValueStore,
    label: str,
    klass: type[Row],
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


def stale_now(engine: Engine, redis: RedisStore) -> int:
    """How many entries Redis holds, by primary key, that disagree with the database.

    Counted while the workers' link is cut: these are what their missed writes left, and
    nothing but their catch-up (or a later write) will remove them."""
    stale = 0
    for klass in CLASSES:
        # Before the database: Redis cannot change while the link is cut, the rows can.
        held = redis.batch_get(klass, range(1, ROWS + 1))
        with Session(engine) as session:
            rows = database_rows(session, klass)
        stale += sum(
            got is not None and got.state() != rows.get(row_id)
            for row_id, got in zip(range(1, ROWS + 1), held, strict=True)
        )
    return stale


def check(engine: Engine, redis: RedisStore, report: Report) -> None:
    """Fill ``report``'s findings from the database and Redis, every worker stopped."""
    with Session(engine) as session:
        writes = list(session.scalars(select(Committed).order_by(Committed.seq)))
        rows = {klass: database_rows(session, klass) for klass in CLASSES}
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
    histories, report.lost = committed_histories(writes)
    report.rows_checked = len(histories) + len(report.lost)
    for (name, row_id), steps in histories.items():
        expected = steps[-1].state if steps else None
        row = rows[BY_NAME[name]].get(row_id)
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
        alternates = {seed_alternate(klass, i) for i in range(1, ROWS + 1)}
        alternates |= {
            alternate
            for worker in report.workers
            for name, alternate in worker.alternates
            if name == klass.__name__
        }
        checked, held, stale, late = stale_entries(
            redis, "Redis", klass, rows[klass], alternates, histories
        )
        report.keys_checked += checked
        report.keys_held += held
        report.stale += stale
        report.late += late
