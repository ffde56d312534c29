"""The writes of the mix: ORM updates, alternate-key moves, deletes and inserts, bulk and
Core UPDATEs, two-row transactions, rollbacks, a caller's transaction, and two updates of
one row whose write-throughs reach Redis out of order.

Each write that commits runs in :meth:`Workload._commit
<stress.consistency.workload.Workload._commit>`, which records its tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from sqlalchemy import update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from sa_stockpyle.stores import ChainedStore, SqlAlchemyStore
from stress.consistency.schema import Committed, Row, Versioned, new_alternate
from stress.consistency.workload import HOT_ROWS, AppRefusal, Workload, Written
from stress.ordering import overtaken


class Writer(Workload):
    """The whole mix: the reads of :class:`Workload`, and every kind of write."""

    def operations(self) -> dict[str, Callable[[type[Row]], None]]:
        """Each kind of operation of the mix, by name."""
        return {
            **super().operations(),
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
            "overtake": self._overtake,
        }

    def _update(self, klass: type[Row]) -> None:
        def change(session: Session) -> Written:
            obj = self._load(session, klass, self._row_id())
            if obj is None:
                return []
            token = self._token()
            obj.value = token
            self._vary(obj, token)
            return [(token, obj.id)]

        self._commit("update", klass, change)

    def _move(self, klass: type[Row]) -> None:
        def change(session: Session) -> Written:
            obj = self._load(session, klass, self._row_id())
            if obj is None:
                return []
            token = self._token()
            alternate = new_alternate(klass, token)
            self._learn(klass, obj.id, alternate)
            setattr(obj, klass.alternate, alternate)
            return [(token, obj.id)]

        self._commit("move", klass, change)

    def _delete(self, klass: type[Row]) -> None:
        def change(session: Session) -> Written:
            row_id = self._row_id()
            # Locked, so a concurrent delete waits instead of matching no row.
            obj = session.get(klass, row_id, with_for_update=True)
            if obj is None:
                return []
            session.delete(obj)
            return [(self._token(), row_id)]

        self._commit("delete", klass, change)

    def _insert(self, klass: type[Row]) -> None:
        def change(session: Session) -> Written:
            row_id = self._row_id()
            if session.get(klass, row_id) is not None:
                return []
            token = self._token()
            alternate = new_alternate(klass, token)
            self._learn(klass, row_id, alternate)
            row = klass(id=row_id, value=token)
            setattr(row, klass.alternate, alternate)
            self._vary(row, token)
            session.add(row)
            return [(token, row_id)]

        self._commit("insert", klass, change)

    def _bulk_update(self, klass: type[Row]) -> None:
        def change(session: Session) -> Written:
            row_id = self._row_id()
            token = self._token()
            values: dict[str, Any] = {"value": token}
            if klass is Versioned:
                values["version"] = Versioned.version + 1  # as an application would
            result = session.execute(update(klass).where(klass.id == row_id).values(values))
            return [(token, row_id)] if cast("CursorResult[Any]", result).rowcount else []

        self._commit("bulk_update", klass, change)

    def _overtake(self, klass: type[Row]) -> None:
        """Two updates of one row, the first written to Redis after the second."""
        row_id = self._row_id()

        def change(session: Session) -> Written:
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

    def _pair_update(self, klass: type[Row]) -> None:
        def change(session: Session) -> Written:
            written: Written = []
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

    def _rollback(self, klass: type[Row]) -> None:
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
        except AppRefusal:
            session.rollback()
            self.report.refused_flushes += 1
        finally:
            self.scoped.remove()

    def _bulk_mappings(self, klass: type[Row]) -> None:
        """``Session.bulk_update_mappings``: by primary key, outside any flush."""

        def change(session: Session) -> Written:
            row_id = self._row_id()
            if klass is Versioned or session.get(klass, row_id) is None:
                return []  # its version is the ORM's to keep; a missing row is no write
            token = self._token()
            mappings = [{"id": row_id, "value": token}]
            session.bulk_update_mappings(klass, mappings)  # type: ignore[arg-type]
            return [(token, row_id)]

        self._commit("bulk_mappings", klass, change)

    def _table_update(self, klass: type[Row]) -> None:
        """An UPDATE of the table (no mapper), by key or by the alternate key."""

        def change(session: Session) -> Written:
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

    def _external(self, klass: type[Row]) -> None:
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
            except AppRefusal:
                self.report.refused_flushes += 1
            finally:
                session.close()
