"""sa_stockpyle in one screen: a memory cache in front of SQLite, kept right by attach().

Run it with ``bash scripts/demo`` (or ``python examples/demo.py``).  It needs no server:
an SQLite file in a temporary folder and this process's memory.  It

1. creates an accounts table and 1,000 accounts,
2. chains ``ProcessMemoryStore`` in front of ``SqlAlchemyStore`` and attaches the chain
   to the session factory, so every commit writes through,
3. serves 20,000 keyed lookups (by id and by email, a few accounts much hotter than the
   rest), counting the SQL statements they cost,
4. changes accounts in transactions that commit, roll back, and move an email, and shows
   the cache answering with exactly what the database holds.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, String, create_engine, event
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    scoped_session,
    sessionmaker,
)

import sa_stockpyle
from sa_stockpyle.stores import ChainedStore, ProcessMemoryStore, SqlAlchemyStore


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "accounts"
    __stockpyle_keys__ = ["id", "email"]

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(100), unique=True)
    name: Mapped[str] = mapped_column(String(50))
    balance: Mapped[int]


class StatementCounter:
    """Counts the SQL statements an engine sends."""

    def __init__(self, engine: Engine) -> None:
        self.count = 0
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, *args: Any) -> None:
        self.count += 1


def create_database(folder: Path) -> Engine:
    """An SQLite file in ``folder``, with 1,000 accounts."""
    engine = create_engine(f"sqlite:///{folder / 'demo.db'}")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(
            Account(id=i, email=f"user{i}@example.com", name=f"User {i}", balance=100)
            for i in range(1, 1001)
        )
        session.commit()
    print(f"sa_stockpyle {sa_stockpyle.__version__} demo: 1,000 accounts in {folder}/demo.db")
    return engine


def serve_lookups(
    store: ChainedStore, reader: scoped_session[Session], sql: StatementCounter
) -> None:
    """20,000 lookups by id and by email, a few accounts much hotter than the rest."""
    rng = random.Random(7)
    lookups = 20_000
    ids = [min(int(rng.paretovariate(1.2)), 1000) for _ in range(lookups)]
    start = time.perf_counter()
    for n, account_id in enumerate(ids):
        key: object = account_id if n % 2 else {"email": f"user{account_id}@example.com"}
        account = store.get(Account, key)
        assert account is not None
        assert account.id == account_id
    elapsed = time.perf_counter() - start
    reader.remove()
    layers = store.stats_by_layer()
    memory_hits = layers["0:ProcessMemoryStore"]["Account"].get("hits", 0)
    database_hits = layers["1:SqlAlchemyStore"]["Account"].get("hits", 0)
    print(f"\n{lookups:,} lookups by id and by email in {elapsed:.2f} s:")
    print(f"  served from memory:    {memory_hits:>6,}")
    print(f"  read from the database:{database_hits:>6,}  (and then cached)")
    print(f"  SQL statements:        {sql.count:>6,}  ({lookups - sql.count:,} queries saved)")


def show_write_through(
    sessions: sessionmaker[Session],
    store: ChainedStore,
    reader: scoped_session[Session],
    sql: StatementCounter,
) -> None:
    """A commit that changes a balance and moves an email, and a rollback."""
    with sessions() as session:
        account = session.get(Account, 1)
        assert account is not None
        account.balance = 250
        account.email = "ada@example.com"
        session.commit()
    with sessions() as session:
        account = session.get(Account, 2)
        assert account is not None
        account.balance = -999
        session.flush()
        session.rollback()
    before = sql.count
    moved = store.get(Account, 1)
    old_email = store.get(Account, {"email": "user1@example.com"})
    new_email = store.get(Account, {"email": "ada@example.com"})
    kept = store.get(Account, 2)
    reader.remove()
    assert moved is not None
    assert moved.balance == 250
    assert old_email is None
    assert new_email is not None
    assert new_email.id == 1
    assert kept is not None
    assert kept.balance == 100
    print("\nAfter a commit (account 1: balance 250, email moved) and a rollback (account 2):")
    print(f"  account 1 balance from the cache: {moved.balance}")
    print(f"  old email user1@example.com finds: {old_email}")
    print(f"  new email ada@example.com finds:   account {new_email.id}")
    print(f"  account 2 balance (rolled back):   {kept.balance}")
    print(f"  SQL statements for those 4 lookups: {sql.count - before}")


def report_write_through(written: int, removed: int) -> None:
    """What attach() did at the commit, and why."""
    assert (written, removed) == (0, 2), (written, removed)  # what the lines below explain
    print("\nWhat attach() did at the commit:")
    print(f"  entries written through: {written}")
    print(f"  cached keys removed:     {removed}  (account 1 by id, and its old email)")
    print(
        "Account has no version column, so attach() cannot tell this commit's state from an"
        "\nolder commit's that races it: it removes the cached entry instead of writing it,"
        "\nand the next read refills it from the database (the SQL statements above). A class"
        "\nwith a version_id_col is written through instead. Every answer above matched the"
        "\ndatabase."
    )


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sa_stockpyle_demo_") as folder:
        run(create_database(Path(folder)))


def run(engine: Engine) -> None:
    """Chain memory in front of the database, attach it, and put it to work."""
    sessions = sessionmaker(engine)
    memory = ProcessMemoryStore(max_items=10_000)
    # One session per unit of work (a web request, a job), as an application would have.
    reader = scoped_session(sessions)
    store = ChainedStore([memory, SqlAlchemyStore(session=reader)])
    handle = sa_stockpyle.attach(sessions, store)
    sql = StatementCounter(engine)
    serve_lookups(store, reader, sql)
    show_write_through(sessions, store, reader, sql)
    report_write_through(
        handle.stats.count(Account, "written"), handle.stats.count(Account, "removed")
    )
    store.close()
    engine.dispose()


if __name__ == "__main__":
    main()
