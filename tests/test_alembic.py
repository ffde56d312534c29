"""sa_stockpyle.alembic: touched-table detection, and the shop example migrated under a cache.

The migration tests run the shop's real Alembic environment (``examples/shop``) up and
down while a ``ChainedStore([memory, Redis, SqlAlchemyStore])`` is attached, and assert on
every layer that nothing read after a migration was built from pre-migration rows.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from psycopg import sql
from psycopg.conninfo import make_conninfo
from sqlalchemy import Engine, ForeignKey, String, create_engine, make_url, text
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    scoped_session,
    sessionmaker,
)

from sa_stockpyle import attach
from sa_stockpyle.alembic import (
    Migrated,
    invalidate_migrated,
    invalidate_tables,
    storable_classes,
    tables_named,
    touched_classes,
)
from sa_stockpyle.stores import (
    BaseKeyValueStore,
    ChainedStore,
    ProcessMemoryStore,
    RedisStore,
    SqlAlchemyStore,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

from shop import alembic_config  # noqa: E402
from shop.models import Account, Order  # noqa: E402

# -- the helper on its own ------------------------------------------------------------------


class Fleet(DeclarativeBase):
    pass


class Vehicle(Fleet):
    __tablename__ = "vehicles"
    __stockpyle_keys__ = ["id"]
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "vehicle"}

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))


class Car(Vehicle):
    __tablename__ = "cars"
    __mapper_args__ = {"polymorphic_identity": "car"}

    id: Mapped[int] = mapped_column(ForeignKey("vehicles.id"), primary_key=True)
    doors: Mapped[int]


class Owner(Fleet):
    __tablename__ = "owners"
    __stockpyle_keys__ = ["id", "email"]

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(100))


class Licence(Fleet):
    """Deleted with its owner: a change to owners changes licences too."""

    __tablename__ = "licences"
    __stockpyle_keys__ = ["id"]

    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"))


class Garage(Fleet):
    """Not storable: never invalidated."""

    __tablename__ = "garages"

    id: Mapped[int] = mapped_column(primary_key=True)


def test_storable_classes_are_the_mapped_classes_declaring_keys() -> None:
    assert storable_classes(Fleet) == [Car, Licence, Owner, Vehicle]
    assert storable_classes(Fleet.registry) == storable_classes(Fleet)
    with pytest.raises(TypeError, match="declarative base"):
        storable_classes(object)


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ("UPDATE owners SET email = lower(email)", {"owners"}),
        ('ALTER TABLE "public"."Owners" ADD COLUMN x INT', {"owners"}),
        ("DELETE FROM [licences] WHERE id IN (SELECT id FROM `owners`)", {"licences", "owners"}),
        ("INSERT INTO _alembic_tmp_owners SELECT * FROM owners_archive", set()),
        ("UPDATE shop_alembic_version SET version_num='0002'", set()),
    ],
)
def test_tables_named_finds_whole_identifiers(statement: str, expected: set[str]) -> None:
    assert tables_named(statement, ["owners", "licences", "cars"]) == expected


def test_a_touched_table_invalidates_its_classes_their_bases_and_cascades() -> None:
    assert touched_classes(Fleet, {"cars"}) == [Car, Vehicle]
    assert touched_classes(Fleet, {"vehicles"}) == [Car, Vehicle]
    assert touched_classes(Fleet, {"owners"}) == [Licence, Owner]
    assert touched_classes(Fleet, {"licences", "garages"}) == [Licence]
    assert touched_classes(Fleet, set()) == []
    assert touched_classes(Fleet, None) == [Car, Licence, Owner, Vehicle]


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path}/fleet.db")
    Fleet.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all([Owner(id=1, email="A@x"), Licence(id=1, owner_id=1)])
        session.add(Car(id=1, doors=3))
        session.commit()
    yield engine
    engine.dispose()


def _cached(store: BaseKeyValueStore) -> dict[str, bool]:
    return {
        "owner": store.get(Owner, 1) is not None,
        "licence": store.get(Licence, 1) is not None,
        "car": store.get(Car, 1) is not None,
    }


def test_the_statements_run_in_the_block_choose_what_is_invalidated(fleet: Engine) -> None:
    memory = ProcessMemoryStore()
    with Session(fleet, expire_on_commit=False) as session:
        memory.batch_put([session.get(Owner, 1), session.get(Licence, 1), session.get(Car, 1)])
    with fleet.connect() as connection:
        connection.execute(text("UPDATE cars SET doors = 5"))  # before the block: not seen
        with invalidate_migrated(memory, Fleet, connection=connection) as migrated:
            connection.execute(text("UPDATE owners SET email = lower(email)"))
            connection.commit()
        connection.execute(text("UPDATE cars SET doors = 4"))  # after it: not seen either
    assert migrated == Migrated(tables={"owners"}, everything=False, invalidated=[Licence, Owner])
    assert _cached(memory) == {"owner": False, "licence": False, "car": True}


def test_everything_invalidates_every_storable_class(fleet: Engine) -> None:
    memory = ProcessMemoryStore()
    with Session(fleet, expire_on_commit=False) as session:
        memory.batch_put([session.get(Owner, 1), session.get(Car, 1)])
    with invalidate_migrated(memory, Fleet, everything=True) as migrated:
        pass
    assert migrated.everything
    assert migrated.tables == {"vehicles", "cars", "owners", "licences"}
    assert migrated.invalidated == [Car, Licence, Owner, Vehicle]
    assert _cached(memory) == {"owner": False, "licence": False, "car": False}


def test_a_chain_passes_the_invalidation_to_every_layer_and_other_processes(
    fleet: Engine, redis_url: str
) -> None:
    memory, shared = ProcessMemoryStore(), RedisStore(url=redis_url)
    chain = ChainedStore([memory, shared, SqlAlchemyStore(engine=fleet)])
    other_process = RedisStore(url=redis_url)
    assert chain.get(Owner, 1) is not None  # read from the database, filling both caches
    assert chain.get(Car, 1) is not None
    assert other_process.get(Owner, 1) is not None  # it has learnt the current generation
    assert invalidate_tables(chain, Fleet, ["owners"]) == [Licence, Owner]
    assert memory.get(Owner, 1) is None
    assert shared.get(Owner, 1) is None
    assert other_process.get(Owner, 1) is None
    assert other_process.get(Owner, {"email": "A@x"}) is None
    assert other_process.get(Car, 1) is not None
    chain.close()
    other_process.close()


def test_offline_mode_invalidates_every_class(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    memory = ProcessMemoryStore()
    config = alembic_config(f"sqlite:///{tmp_path}/offline.db", memory)
    command.upgrade(config, "head", sql=True)
    assert "UPDATE accounts SET email = lower(email)" in capsys.readouterr().out
    migrated: Migrated = config.attributes["sa_stockpyle.migrated"]
    assert migrated.everything
    assert migrated.invalidated == [Account, Order]


def test_importing_the_helper_does_not_import_alembic() -> None:
    script = "import sys, sa_stockpyle.alembic\nprint('alembic' in sys.modules)\n"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


# -- the shop, migrated up and down under a chain -------------------------------------------


@pytest.fixture
def shop_postgres_url(postgres_url: str) -> Iterator[str]:
    """A database of the shop's own next to the test database, emptied after the test."""
    parsed = make_url(postgres_url)
    url = parsed.set(database=f"{parsed.database}_shop")
    conninfo = make_conninfo(
        host=parsed.host or "127.0.0.1",
        port=parsed.port or 5432,
        user=parsed.username,
        password=parsed.password,
    )
    with psycopg.connect(conninfo, dbname="postgres", autocommit=True) as conn:
        if not conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [url.database]
        ).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(url.database)))
    rendered = url.render_as_string(hide_password=False)
    _empty(rendered)
    yield rendered
    _empty(rendered)


def _empty(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS orders, accounts, shop_alembic_version"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/shop.db"
    url: str = request.getfixturevalue("shop_postgres_url")
    return url


class Shop:
    """The shop's database under a chain of memory, Redis and the database."""

    def __init__(self, database_url: str, redis_url: str) -> None:
        self.url = database_url
        self.engine = create_engine(database_url)
        self.sessions = sessionmaker(self.engine)
        self.reader = scoped_session(self.sessions)
        self.memory = ProcessMemoryStore()
        self.shared = RedisStore(url=redis_url)
        self.chain = ChainedStore([self.memory, self.shared, SqlAlchemyStore(session=self.reader)])
        self.handle = attach(self.sessions, self.chain)
        #: A second process's view of the Redis layer.
        self.elsewhere = RedisStore(url=redis_url)

    def migrate(self, action: str, revision: str) -> None:
        self.reader.remove()
        getattr(command, action)(alembic_config(self.url, self.chain), revision)

    def rows(self) -> tuple[dict[int, tuple[Any, ...]], dict[int, tuple[Any, ...]]]:
        """What the database holds, read with plain SQL (the model fits only 0002+)."""
        with self.engine.connect() as connection:
            accounts = connection.execute(text("SELECT id, email FROM accounts")).all()
            orders = connection.execute(text("SELECT id, account_id, number, total FROM orders"))
            return {a.id: tuple(a) for a in accounts}, {o.id: tuple(o) for o in orders}

    def layers(self) -> list[Any]:
        return [self.memory, self.shared, self.elsewhere]

    def lookups(
        self, accounts: dict[int, tuple[Any, ...]], orders: dict[int, tuple[Any, ...]]
    ) -> Iterator[tuple[type, object, tuple[Any, ...]]]:
        """Every key of every row: (class, lookup, the row it must find)."""
        for account_id, row in accounts.items():
            yield Account, account_id, row
            yield Account, {"email": row[1]}, row
        for order_id, row in orders.items():
            yield Order, order_id, row
            yield Order, {"account_id": row[1], "number": row[2]}, row

    def assert_no_stale_entry(
        self, accounts: dict[int, tuple[Any, ...]], orders: dict[int, tuple[Any, ...]]
    ) -> None:
        """Each cache layer misses or holds the row the database holds, for every key."""
        for klass, key, row in self.lookups(accounts, orders):
            for layer in self.layers():
                found = layer.get(klass, key)
                assert found is None or _row(found) == row, (layer, key)

    def close(self) -> None:
        self.handle.detach()
        self.chain.close()
        self.elsewhere.close()
        self.engine.dispose()


def _row(obj: object) -> tuple[Any, ...]:
    if isinstance(obj, Account):
        return (obj.id, obj.email)
    assert isinstance(obj, Order)
    return (obj.id, obj.account_id, obj.number, obj.total)


@pytest.fixture
def shop(database_url: str, redis_url: str) -> Iterator[Shop]:
    shop = Shop(database_url, redis_url)
    yield shop
    shop.migrate("downgrade", "base")
    shop.close()


def test_no_lookup_after_a_migration_returns_pre_migration_state(shop: Shop) -> None:
    shop.migrate("upgrade", "0002")
    with shop.sessions() as session:
        session.add_all(Account(id=i, email=f"User{i}@Example.com", name=f"U{i}") for i in (1, 2))
        session.flush()
        session.add_all(Order(id=i, account_id=i, number=1, total=10 * i) for i in (1, 2))
        session.commit()
    before = shop.rows()
    for klass, key, row in shop.lookups(*before):  # every layer holds every row
        assert _row(shop.chain.get(klass, key)) == row
        for layer in shop.layers():
            assert _row(layer.get(klass, key)) == row
    shop.reader.remove()

    shop.migrate("upgrade", "head")  # lower-cased emails, totals in cents
    after = shop.rows()
    assert after != before
    for klass, key, _row_before in shop.lookups(*before):
        if key not in [k for _, k, _ in shop.lookups(*after)]:
            for layer in [shop.chain, *shop.layers()]:  # an old email finds nothing
                assert layer.get(klass, key) is None
    shop.reader.remove()
    shop.assert_no_stale_entry(*after)
    for klass, key, row in shop.lookups(*after):
        assert _row(shop.chain.get(klass, key)) == row
    shop.reader.remove()
    shop.assert_no_stale_entry(*after)

    shop.migrate("downgrade", "0003")  # totals back in whole units
    downgraded = shop.rows()
    assert downgraded[1] == before[1]
    shop.assert_no_stale_entry(*downgraded)
    for klass, key, row in shop.lookups(*downgraded):
        assert _row(shop.chain.get(klass, key)) == row
    shop.reader.remove()

    shop.migrate("downgrade", "0001")  # past the column change: the model no longer fits
    for klass, key, _ in shop.lookups(*downgraded):
        for layer in shop.layers():
            assert layer.get(klass, key) is None


def test_the_migrations_demo_runs_on_postgresql_redis_and_memcached(
    shop_postgres_url: str, redis_url: str, memcached_addresses: list[str]
) -> None:
    memcached = [arg for address in memcached_addresses for arg in ("--memcached", address)]
    result = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "migrations.py"),
            "--database-url",
            shop_postgres_url,
            "--redis-url",
            redis_url,
            *memcached,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "RedisStore -> MemcacheStore -> SqlAlchemyStore" in result.stdout
    assert "answers that differ from the database: 0" in result.stdout
    assert "No lookup after a migration returned a row as it was before it." in result.stdout
