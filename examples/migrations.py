"""Alembic migrations under a live cache: no lookup after a migration sees the old rows.

Run it with ``bash scripts/demo`` (after ``examples/demo.py``) or
``python examples/migrations.py``: by default an SQLite file in a temporary folder and
this process's memory.  Point it at servers with ``--database-url``, ``--redis-url`` and
``--memcached host:port`` (repeatable); it creates and drops only the shop's tables and
its version table (``shop_alembic_version``).  It

1. migrates the shop (``examples/shop``) from nothing to revision 0002 with Alembic,
2. chains ``ProcessMemoryStore``, the shared layers given, and ``SqlAlchemyStore``,
   attaches the chain, adds accounts (emails as typed at sign-up) and orders, and serves
   keyed lookups that fill every cache layer,
3. upgrades to head: 0003 lower-cases every email and 0004 moves order totals into
   cents, rewriting data with UPDATE statements that neither the ORM nor any model
   change can see; the shop's ``env.py`` calls ``sa_stockpyle.alembic``, which watches
   the statements and invalidates the cached classes of the tables they touched,
4. checks every lookup against the database, downgrades 0004 and checks again, and
   drops the tables (``downgrade base``).

Why it starts at 0002: ``shop/models.py`` describes the head schema, as an application's
models do, and revision 0002 added a column it maps, so those classes cannot load rows
from an older database.  A deployment that changes columns also deploys the new models,
whose schema fingerprint differs from the old one, so entries cached by the old code are
unreachable for the new code anyway; this script shows the other half, migrations that
change data under an unchanged model.  The migrations run in this process, so the chain
(memory included) is invalidated directly; from the ``alembic`` command, ``env.py`` can
reach only the shared layers, and other processes' memory layers need a restart.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from shop import alembic_config, shared_layers
from shop.models import Account, Order
from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.orm import Session, scoped_session, sessionmaker

import sa_stockpyle
from sa_stockpyle.alembic import Migrated
from sa_stockpyle.stores import ChainedStore, ProcessMemoryStore, SqlAlchemyStore

ACCOUNTS = 200
FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken"]
LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson"]


class StatementCounter:
    """Counts the SQL statements an engine sends."""

    def __init__(self, engine: Engine) -> None:
        self.count = 0
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, *args: Any) -> None:
        self.count += 1


@dataclass
class Shop:
    """The application side: its engine, sessions, chain and the Alembic configuration."""

    engine: Engine
    sessions: sessionmaker[Session]
    reader: scoped_session[Session]
    store: ChainedStore
    database_url: str

    def migrate(self, action: str, revision: str) -> Migrated | None:
        """``alembic upgrade|downgrade revision``, invalidating in this shop's chain."""
        # End the unit of work first: its session's identity map holds pre-migration
        # objects, and on PostgreSQL its open transaction would block ALTER TABLE.
        self.reader.remove()
        config = alembic_config(self.database_url, self.store)
        getattr(command, action)(config, revision)
        migrated: Migrated | None = config.attributes.get("sa_stockpyle.migrated")
        touched = ", ".join(sorted(migrated.tables)) if migrated else ""
        invalidated = ", ".join(k.__qualname__ for k in migrated.invalidated) if migrated else ""
        print(f"\nalembic {action} {revision}")
        print(f"  tables the statements touched: {touched or 'none'}")
        print(f"  classes invalidated in every layer: {invalidated or 'none'}")
        return migrated

    @contextmanager
    def counting(self, title: str) -> Iterator[StatementCounter]:
        """Count SQL statements and per-layer hits of a block, and print them."""
        for stats in self.store.layer_stats:
            stats.reset()
        sql = StatementCounter(self.engine)
        yield sql
        self.reader.remove()
        event.remove(self.engine, "before_cursor_execute", sql._seen)
        print(f"  {title}:")
        for layer, classes in self.store.stats_by_layer().items():
            hits = sum(events.get("hits", 0) for events in classes.values())
            print(f"    {layer:<22} {hits:>6,} hits")
        print(f"    SQL statements         {sql.count:>6,}")


def seed(shop: Shop) -> None:
    """Accounts with emails as typed at sign-up, two orders each, in whole units."""
    rng = random.Random(7)
    with shop.sessions() as session:
        for i in range(1, ACCOUNTS + 1):
            first, last = rng.choice(FIRST), rng.choice(LAST)
            email = f"{first}.{last}{i}@Example.com"
            session.add(Account(id=i, email=email, name=f"{first} {last}"))
        session.flush()
        for i in range(1, ACCOUNTS + 1):
            for number in (1, 2):
                total = rng.randint(5, 500)
                session.add(Order(id=2 * i + number - 2, account_id=i, number=number, total=total))
        session.commit()
    print(
        f"\nadded {ACCOUNTS} accounts (e.g. Ada.Lovelace@Example.com) and {2 * ACCOUNTS} "
        "orders; attach() wrote them through to the caches at commit"
    )


def serve(shop: Shop, rounds: int = 3) -> None:
    """Lookups by id, by email, and of orders by id and by (account, number)."""
    with shop.sessions() as session:
        emails = list(session.scalars(select(Account.email).order_by(Account.id)))
    with shop.counting(f"{rounds * ACCOUNTS * 4:,} keyed lookups"):
        for _ in range(rounds):
            for i, email in enumerate(emails, start=1):
                assert shop.store.get(Account, i) is not None
                assert shop.store.get(Account, {"email": email}) is not None
                assert shop.store.get(Order, 2 * i) is not None
                assert shop.store.get(Order, {"account_id": i, "number": 1}) is not None
            shop.reader.remove()
    account, order = shop.store.get(Account, 1), shop.store.get(Order, 1)
    shop.reader.remove()
    assert account is not None
    assert order is not None
    print(f"    cached now: account 1: {account.email}; order 1 total: {order.total}")


def check(shop: Shop, old_emails: list[str]) -> None:
    """Every lookup answers exactly what the database holds; old emails find nothing."""
    with shop.sessions() as session:
        accounts = {a.id: (a.email, a.display_name) for a in session.scalars(select(Account))}
        orders = {o.id: (o.account_id, o.number, o.total) for o in session.scalars(select(Order))}
    wrong = 0
    with shop.counting(f"{len(accounts) * 3 + len(orders) * 2:,} lookups checked"):
        for account_id, (email, display_name) in accounts.items():
            for key in (account_id, {"email": email}):
                found = shop.store.get(Account, key)
                wrong += found is None or (found.email, found.display_name) != (
                    email,
                    display_name,
                )
            old = old_emails[account_id - 1]
            wrong += old != email and shop.store.get(Account, {"email": old}) is not None
        for order_id, (account_id, number, total) in orders.items():
            for key in (order_id, {"account_id": account_id, "number": number}):
                order = shop.store.get(Order, key)
                wrong += order is None or order.total != total
        shop.reader.remove()
    first_order = shop.store.get(Order, 1)
    first = shop.store.get(Account, 1)
    shop.reader.remove()
    assert first is not None
    assert first_order is not None
    print(f"    account 1: {first.email}; order 1 total: {first_order.total}")
    print(f"    answers that differ from the database: {wrong}")
    assert wrong == 0, f"{wrong} lookups returned pre-migration state"


def main() -> None:
    """Parse the options and run the migrations under a cache."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: SQLite in a temp folder)")
    parser.add_argument("--redis-url", help="add a RedisStore layer, e.g. redis://localhost/0")
    parser.add_argument(
        "--memcached", action="append", default=[], metavar="HOST:PORT", help="add memcached"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sa_stockpyle_migrations_") as folder:
        url = args.database_url or f"sqlite:///{Path(folder) / 'shop.db'}"
        run(url, args.redis_url, args.memcached)


def run(database_url: str, redis_url: str | None, memcached: list[str]) -> None:
    """Build the chain, migrate under it, and show that it stays right."""
    engine = create_engine(database_url)
    sessions = sessionmaker(engine)
    reader = scoped_session(sessions)
    layers = [ProcessMemoryStore(), *shared_layers(redis_url, memcached)]
    store = ChainedStore([*layers, SqlAlchemyStore(session=reader)])
    shop = Shop(engine, sessions, reader, store, database_url)
    print(
        f"sa_stockpyle {sa_stockpyle.__version__} migrations demo on "
        f"{engine.url.render_as_string(hide_password=True)}"
    )
    print("  layers: " + " -> ".join(type(layer).__name__ for layer in store.stores))
    handle = sa_stockpyle.attach(sessions, store)
    try:
        shop.migrate("downgrade", "base")  # what an earlier run may have left
        shop.migrate("upgrade", "0002")
        seed(shop)
        with sessions() as session:
            old_emails = list(session.scalars(select(Account.email).order_by(Account.id)))
        serve(shop)
        shop.migrate("upgrade", "head")
        check(shop, old_emails)
        shop.migrate("downgrade", "0003")
        check(shop, old_emails)
        shop.migrate("downgrade", "base")
    finally:
        handle.detach()
        store.close()
        engine.dispose()
    print("\nNo lookup after a migration returned a row as it was before it.")


if __name__ == "__main__":
    main()
