"""SqlAlchemyStore on SQLite and PostgreSQL: constructors, lookups with their statement
counts, writes, attaching cached objects, and the chain never caching uncommitted state."""

from __future__ import annotations

import datetime as dt
import gc
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, inspect, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, load_only, scoped_session, sessionmaker

from sa_stockpyle.errors import (
    ConfigurationError,
    InvalidKeyValueError,
    NonUniqueKeyError,
    NotStorableError,
    UnknownKeyError,
)
from sa_stockpyle.stores import (
    BaseStore,
    ChainedStore,
    MemcacheStore,
    ProcessMemoryStore,
    RedisStore,
    ShoveStore,
    SqlAlchemyStore,
)
from sa_stockpyle.stores.sqlalchemy import MAX_PARAMETERS
from sa_stockpyle.testing import Foo
from tests.helpers import Statements
from tests.models import (
    Address,
    Base,
    Car,
    Color,
    Employee,
    Engineer,
    Manager,
    Membership,
    Pet,
    Truck,
    Typed,
    Unkeyed,
    User,
    Vehicle,
)
from tests.threads import finish_all, started


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A database with the test tables, on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = create_engine(url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    yield engine
    Base.metadata.drop_all(engine)
    engine.dispose()


@pytest.fixture
def statements(engine: Engine) -> Statements:
    """The statement counter of ``engine``."""
    return Statements(engine)


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    """A session the test owns."""
    with Session(engine) as session:
        yield session


def _users(engine: Engine, count: int) -> None:
    with Session(engine) as session:
        session.add_all(
            User(id=i, name=f"user {i}", email=f"u{i}@example.com") for i in range(1, count + 1)
        )
        session.commit()


def _typed() -> Typed:
    return Typed(
        id=1,
        uid=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        naive=dt.datetime(2024, 2, 29, 12, 30, 45, 123456),
        aware=dt.datetime(2024, 2, 29, 12, 30, tzinfo=dt.timezone.utc),
        day=dt.date(1999, 12, 31),
        price=Decimal("12.3400"),
        color=Color.BLUE,
        blob=b"\x00\xff binary",
        doc={"a": [1, 2, {"b": None}], "c": 1.5, "$t": "not a tag"},
        items=[1, "two", 3.5, None, True],
        flag=False,
        ratio=0.25,
        text="ünïcödé ✓ \n",
        note=None,
    )


COLUMNS = [prop.key for prop in inspect(Typed).column_attrs]


# -- constructors ---------------------------------------------------------------------------


def test_uri_form_owns_a_session_and_commits(engine: Engine) -> None:
    with SqlAlchemyStore(engine.url.render_as_string(hide_password=False)) as store:
        assert store.owned
        store.put(User(id=1, name="a", email="a@x"))
        with Session(engine) as other:
            assert other.get(User, 1) is not None  # committed
        got = store.get(User, 1)
        assert got is not None
        assert got.name == "a"
        assert not store.session.in_transaction()  # no connection idles in a transaction


def test_engine_form_keeps_returned_objects_usable(engine: Engine) -> None:
    _users(engine, 1)
    store = SqlAlchemyStore(engine=engine)
    user = store.get(User, 1)
    assert user is not None
    store.put(Address(id=1, user_id=1, street="Main St"))
    assert user.name == "user 1"  # not expired by the store's commits
    assert [a.street for a in user.addresses] == ["Main St"]
    assert repr(store) == f"<SqlAlchemyStore {engine.url.render_as_string()}>"
    store.close()


def test_session_form_flushes_and_leaves_the_transaction_to_the_caller(
    engine: Engine, session: Session
) -> None:
    store = SqlAlchemyStore(session=session)
    assert store.session is session
    assert not store.owned
    assert repr(store) == "<SqlAlchemyStore session>"
    store.put(User(id=1, name="a", email="a@x"))
    with Session(engine) as other:
        assert other.get(User, 1) is None  # flushed, not committed
    session.rollback()
    assert store.get(User, 1) is None


def test_scoped_session_is_resolved_at_each_call(engine: Engine) -> None:
    _users(engine, 1)
    scoped = scoped_session(sessionmaker(engine))
    store = SqlAlchemyStore(session=scoped)
    seen: dict[str, Session] = {}

    def work(name: str) -> None:
        user = store.get(User, 1)
        assert user is not None
        assert user in scoped()
        seen[name] = store.session
        scoped.remove()

    finish_all([started(work, name) for name in "ab"])
    assert seen["a"] is not seen["b"]
    assert store.session is scoped()
    scoped.remove()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, "got none"),
        ({"uri": "sqlite://", "engine": create_engine("sqlite://")}, "got uri, engine"),
        ({"session": "not a session"}, "expects a Session"),
        ({"engine": "sqlite://"}, "expects an Engine"),
    ],
)
def test_bad_constructor_arguments(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        SqlAlchemyStore(**arguments)


# -- lookups and their statements -----------------------------------------------------------


def test_get_by_primary_key_uses_the_identity_map(
    engine: Engine, session: Session, statements: Statements
) -> None:
    _users(engine, 2)
    store = SqlAlchemyStore(session=session)
    with statements.exactly(1):
        user = store.get(User, 1)
    with statements.exactly(0):
        assert store.get(User, 1) is user
        assert store.get(User, {"id": 1}) is user
        assert session.get(User, 1) is user
    with statements.exactly(1):
        assert store.get(User, 99) is None


def test_store_and_session_return_the_same_instance(engine: Engine, session: Session) -> None:
    _users(engine, 1)
    store = SqlAlchemyStore(session=session)
    assert store.get(User, 1) is session.get(User, 1)


def test_get_by_alternate_key_is_one_select(
    engine: Engine, session: Session, statements: Statements
) -> None:
    _users(engine, 2)
    store = SqlAlchemyStore(session=session)
    with statements.exactly(1):
        user = store.get(User, {"email": "u2@example.com"})
    assert user is not None
    assert user.id == 2
    with statements.exactly(1):  # the identity map cannot answer an alternate key
        assert store.get(User, {"email": "u2@example.com"}) is user
    with statements.exactly(0):
        assert store.get(User, {"email": None}) is None


def test_batch_get_of_500_keys_is_one_statement(
    engine: Engine, session: Session, statements: Statements
) -> None:
    _users(engine, 600)
    store = SqlAlchemyStore(session=session)
    keys = [*range(500, 0, -1)]
    keys[10] = 10_000  # a miss
    with statements.exactly(1):
        found = store.batch_get(User, keys)
    assert [None if user is None else user.id for user in found] == [
        None if key == 10_000 else key for key in keys
    ]


def test_batch_get_mixes_keys_in_one_statement_and_skips_identity_map_hits(
    engine: Engine, session: Session, statements: Statements
) -> None:
    _users(engine, 10)
    store = SqlAlchemyStore(session=session)
    held = store.get(User, 3)
    keys: list[object] = [{"email": "u5@example.com"}, 3, 7, {"email": None}, 7, 42]
    with statements.exactly(1):
        found = store.batch_get(User, keys)
    assert found[1] is held
    assert [None if user is None else user.id for user in found] == [5, 3, 7, None, 7, None]
    assert found[2] is found[4]
    with statements.exactly(0):
        assert store.batch_get(User, [3, 5, 7]) == [held, found[0], found[2]]
        assert store.batch_get(User, []) == []


def test_batch_get_past_the_parameter_limit_is_split(
    engine: Engine, session: Session, statements: Statements
) -> None:
    _users(engine, 3)
    store = SqlAlchemyStore(session=session)
    keys = [{"email": f"u{i}@example.com"} for i in range(MAX_PARAMETERS + 1)]
    with statements.exactly(2):
        found = store.batch_get(User, keys)
    assert [user.id for user in found if user is not None] == [1, 2, 3]


def test_an_expired_instance_is_refreshed_by_the_select(
    engine: Engine, session: Session, statements: Statements
) -> None:
    _users(engine, 1)
    store = SqlAlchemyStore(session=session)
    user = store.get(User, 1)
    session.commit()  # expire_on_commit
    with Session(engine) as other:
        other.get(User, 1).name = "renamed"  # type: ignore[union-attr]
        other.commit()
    with statements.exactly(1):
        assert store.get(User, 1) is user
    with statements.exactly(0):
        assert user is not None
        assert user.name == "renamed"


def test_composite_keys(engine: Engine, session: Session, statements: Statements) -> None:
    store = SqlAlchemyStore(session=session)
    store.batch_put(
        [Membership(org=org, member=m, role=f"{org}{m}") for org in ("a", "b") for m in (1, 2)]
    )
    session.commit()
    session.expunge_all()
    with statements.exactly(1):
        found = store.batch_get(Membership, [(2, "b"), {"org": "a", "member": 1}, (3, "a")])
    assert [None if m is None else m.role for m in found] == ["b2", "a1", None]
    with statements.exactly(0):  # declared (member, org), mapped (org, member)
        assert store.get(Membership, (2, "b")) is found[0]
        assert store.get(Membership, {"member": 1, "org": "a"}) is found[1]


def test_the_first_key_need_not_be_the_primary_key(
    engine: Engine, session: Session, statements: Statements
) -> None:
    typed = _typed()
    store = SqlAlchemyStore(session=session)
    store.put(typed)
    with statements.exactly(1):
        assert store.get(Typed, typed.uid) is typed
    with statements.exactly(0):
        assert store.get(Typed, {"id": 1}) is typed


def test_a_key_matching_several_rows_raises(engine: Engine, session: Session) -> None:
    store = SqlAlchemyStore(session=session)
    store.batch_put([Pet(id=1, nick="rex"), Pet(id=2, nick="rex"), Pet(id=3, nick="tom")])
    with pytest.raises(NonUniqueKeyError, match=r"'rex'.*more than one row.*Pet"):
        store.batch_get(Pet, [{"nick": "tom"}, {"nick": "rex"}])
    assert store.get(Pet, {"nick": "tom"}) is not None


def test_inheritance_queries_return_complete_subclass_instances(
    engine: Engine, session: Session, statements: Statements
) -> None:
    store = SqlAlchemyStore(session=session)
    store.batch_put(
        [
            Car(id=1, plate="CAR", doors=4),
            Truck(id=2, plate="TRK", payload=9),
            Manager(id=1, name="m", budget=Decimal("10.50")),
            Engineer(id=2, name="e", language="Python"),
        ]
    )
    session.commit()
    session.expunge_all()
    with statements.exactly(1):
        vehicles = store.batch_get(Vehicle, [{"plate": "TRK"}, 1])
    assert [type(v) for v in vehicles] == [Truck, Car]
    assert store.get(Truck, 1) is None
    with statements.exactly(1):
        staff = store.batch_get(Employee, [1, 2])
    with statements.exactly(0):  # subclass columns came with the one SELECT
        assert isinstance(staff[0], Manager)
        assert staff[0].budget == Decimal("10.50")
        assert isinstance(staff[1], Engineer)
        assert staff[1].language == "Python"


# -- writes ---------------------------------------------------------------------------------


def test_put_assigns_an_autoincrement_key(engine: Engine) -> None:
    store = SqlAlchemyStore(engine=engine)
    user = User(name="new", email=None)
    store.put(user)
    assert user.id is not None
    assert store.get(User, user.id) is user


def test_delete_every_kind_of_object(engine: Engine, session: Session) -> None:
    _users(engine, 5)
    store = SqlAlchemyStore(session=session)
    persistent = store.get(User, 1)
    with Session(engine) as other:
        detached = other.get(User, 2)
    pending = User(id=6, name="pending")
    session.add(pending)
    store.batch_delete([persistent, detached, pending, User(id=99, name="absent")])
    store.delete(User(id=3, name="by key only"))
    session.commit()
    assert [u.id for u in session.scalars(select(User).order_by(User.id))] == [4, 5]
    store.delete(User(name="never stored"))


def test_integrity_errors_propagate_and_the_owned_session_recovers(engine: Engine) -> None:
    store = SqlAlchemyStore(engine=engine)
    store.put(User(id=1, name="a", email="same@x"))
    with pytest.raises(IntegrityError):
        store.put(User(id=2, name="b", email="same@x"))
    store.put(User(id=3, name="c", email="other@x"))
    assert store.batch_get(User, [1, 2, 3])[1] is None


def test_bad_input_raises_typed_errors_and_runs_no_sql(
    engine: Engine, session: Session, statements: Statements
) -> None:
    store = SqlAlchemyStore(session=session)
    calls: list[tuple[type[Exception], Callable[[], object], str]] = [
        (NotStorableError, lambda: store.get(Foo, 1), "not mapped"),
        (NotStorableError, lambda: store.get(Unkeyed, 1), "Unkeyed"),
        (NotStorableError, lambda: store.put(Foo(key=1)), "not mapped"),
        (NotStorableError, lambda: store.batch_delete([User(id=1), Foo(key=1)]), "Foo"),
        (UnknownKeyError, lambda: store.get(User, {"name": "a"}), "email"),
        (UnknownKeyError, lambda: store.get(Membership, "x"), "Membership"),
        (InvalidKeyValueError, lambda: store.batch_get(User, [1, [2]]), "unhashable"),
    ]
    for error, call, message in calls:
        with statements.exactly(0), pytest.raises(error, match=message):
            call()
    assert not session.new


# -- the entity codec through cache layers --------------------------------------------------


CACHES: dict[str, Callable[[pytest.FixtureRequest], BaseStore]] = {
    "memory": lambda request: ProcessMemoryStore(polymorphic=True),
    "shove": lambda request: ShoveStore(shove={}, polymorphic=True),
    "redis": lambda request: RedisStore(
        url=request.getfixturevalue("redis_url"), polymorphic=True
    ),
    "memcached": lambda request: MemcacheStore(
        servers=request.getfixturevalue("memcached_addresses"), polymorphic=True
    ),
}


def _reader(cache: BaseStore, session: Session) -> ChainedStore:
    """A chain of ``cache`` over ``session``, without the broadcast: these tests are about
    one process's layers, and a chain per session would start a publisher per session."""
    return ChainedStore([cache, SqlAlchemyStore(session=session)], broadcast=False)


@pytest.fixture(params=list(CACHES))
def cache(request: pytest.FixtureRequest) -> Iterator[BaseStore]:
    """A polymorphic caching layer of every kind."""
    store = CACHES[request.param](request)
    yield store
    store.close()


def test_every_column_type_round_trips(
    engine: Engine, cache: BaseStore, statements: Statements
) -> None:
    with Session(engine) as session:
        session.add(_typed())
        session.commit()
    with Session(engine) as session:
        chain = _reader(cache, session)
        loaded = chain.get(Typed, _typed().uid)  # from the database, filling the cache
    assert loaded is not None
    with Session(engine) as session, statements.exactly(0):
        chain = _reader(cache, session)
        cached = chain.get(Typed, {"id": 1})
        assert cached is not None
        assert inspect(cached).persistent
        for name in COLUMNS:
            assert getattr(cached, name) == getattr(loaded, name), name
            assert type(getattr(cached, name)) is type(getattr(loaded, name)), name
    expected = _typed()
    if engine.dialect.name == "postgresql":  # SQLite keeps no time zone
        assert cached.aware == expected.aware
        assert cached.aware is not None
        assert cached.aware.tzinfo is not None
    assert (cached.doc, cached.items, cached.blob) == (expected.doc, expected.items, expected.blob)


def test_inheritance_through_polymorphic_caches(
    engine: Engine, cache: BaseStore, statements: Statements
) -> None:
    with Session(engine) as session:
        session.add_all([Car(id=1, plate="CAR", doors=2), Manager(id=1, name="m", budget=1)])
        session.commit()
    with Session(engine) as session:
        chain = _reader(cache, session)
        chain.get(Vehicle, 1)
        chain.get(Employee, 1)
    with Session(engine) as session, statements.exactly(0):
        chain = _reader(cache, session)
        car = chain.get(Vehicle, {"plate": "CAR"})
        assert type(car) is Car
        assert car.doors == 2
        assert chain.get(Car, 1) is car
        assert cache.get(Truck, 1) is None
        manager = chain.get(Employee, 1)
        assert type(manager) is Manager
        assert manager.budget == Decimal("1.00")
        assert manager.name == "m"


def test_a_relationship_lazy_loads_on_an_object_from_redis(
    engine: Engine, redis_url: str, statements: Statements
) -> None:
    redis_store = RedisStore(url=redis_url)
    with Session(engine) as session:
        user = User(id=1, name="a", email="a@x")
        session.add_all([user, Address(id=1, user=user, street="Main St")])
        session.commit()
    with Session(engine) as session:
        _reader(redis_store, session).get(User, 1)
    with Session(engine) as session:
        chain = _reader(redis_store, session)
        with statements.exactly(0):
            cached = chain.get(User, 1)
        assert chain.layer_stats[0].count(User, "hits") == 1
        assert cached is not None
        assert "addresses" not in cached.__dict__
        with statements.exactly(1):
            assert [a.street for a in cached.addresses] == ["Main St"]
        cached.name = "renamed"
        session.commit()
    with Session(engine) as session:
        assert session.get(User, 1).name == "renamed"  # type: ignore[union-attr]
    redis_store.close()


# -- attaching cached objects ---------------------------------------------------------------


def _cached_users(engine: Engine, count: int) -> ProcessMemoryStore:
    """A memory layer holding users 1 to ``count``, read once through a chain."""
    _users(engine, count)
    memory = ProcessMemoryStore()
    with Session(engine) as session:
        chain = ChainedStore([memory, SqlAlchemyStore(session=session)])
        chain.batch_get(User, range(1, count + 1))
    return memory


def test_cached_objects_attach_without_sql(engine: Engine, statements: Statements) -> None:
    memory = _cached_users(engine, 3)
    with Session(engine) as session:
        chain = ChainedStore([memory, SqlAlchemyStore(session=session)])
        with statements.exactly(0):
            users = chain.batch_get(User, [3, 1, 2])
            assert all(user in session and inspect(user).persistent for user in users)
            assert session.get(User, 3) is users[0]
        assert not session.dirty
        with statements.exactly(1):
            users[0].name = "changed"
            session.flush()


def test_the_identity_map_instance_wins_over_the_cached_one(
    engine: Engine, session: Session, statements: Statements
) -> None:
    _users(engine, 1)
    memory = ProcessMemoryStore()
    memory.put(User(id=1, name="stale cached", email="u1@example.com"))
    held = session.get(User, 1)
    assert held is not None
    chain = ChainedStore([memory, SqlAlchemyStore(session=session)])
    with statements.exactly(0):
        assert chain.get(User, 1) is held
    assert held.name == "user 1"


def test_attaching_begins_no_transaction_and_fires_loaded_as_persistent(
    engine: Engine, statements: Statements
) -> None:
    memory = _cached_users(engine, 2)
    with Session(engine) as session:
        loaded: list[object] = []
        attached: list[object] = []
        event.listen(session, "loaded_as_persistent", lambda s, obj: loaded.append(obj))
        event.listen(session, "after_attach", lambda s, obj: attached.append(obj))
        chain = ChainedStore([memory, SqlAlchemyStore(session=session)])
        with statements.exactly(0):
            users = chain.batch_get(User, [2, 1])
        # As the ORM's loader attaches a row: persistent, no transaction begun yet.
        assert loaded == users
        assert not attached
        assert not session.in_transaction()
        assert all(inspect(user).persistent and not inspect(user).modified for user in users)
        users[0].name = "changed"
        assert list(session.dirty) == [users[0]]
        session.commit()  # begins the transaction it needs, writes the change
    with Session(engine) as session:
        assert session.get(User, 2).name == "changed"  # type: ignore[union-attr]


def test_a_detached_modified_object_is_attached_with_its_change(engine: Engine) -> None:
    _users(engine, 1)
    with Session(engine) as first:
        theirs = first.get(User, 1)
    assert theirs is not None
    assert inspect(theirs).detached
    theirs.name = "changed while detached"
    with Session(engine) as second:
        [mine] = SqlAlchemyStore(session=second).adopt(User, [theirs])
        assert mine is theirs
        assert mine in second.dirty
        second.commit()
    with Session(engine) as session:
        assert session.get(User, 1).name == "changed while detached"  # type: ignore[union-attr]


def test_adopting_an_object_of_another_session_merges_it(engine: Engine) -> None:
    _users(engine, 1)
    with Session(engine) as first, Session(engine) as second:
        theirs = first.get(User, 1)
        assert theirs is not None
        [mine] = SqlAlchemyStore(session=second).adopt(User, [theirs])
        assert mine is not theirs
        assert mine in second
        assert mine.name == "user 1"


def test_partially_loaded_objects_cache_what_was_loaded(
    engine: Engine, statements: Statements
) -> None:
    _users(engine, 1)
    memory = ProcessMemoryStore()
    with Session(engine) as session:
        user = session.scalars(select(User).options(load_only(User.name))).one()
        with statements.exactly(1):  # a key column left out is loaded: entries hold keys
            memory.put(user)
    with Session(engine) as session:
        with statements.exactly(0):
            cached = ChainedStore([memory, SqlAlchemyStore(session=session)]).get(User, 1)
        assert cached is not None
        assert cached.email == "u1@example.com"
    with Session(engine) as session:
        user = session.scalars(select(User).options(load_only(User.email))).one()
        memory.put(user)
    with Session(engine) as session:
        cached = ChainedStore([memory, SqlAlchemyStore(session=session)]).get(User, 1)
        assert cached is not None
        with statements.exactly(1):  # the column the query left out loads on access
            assert cached.name == "user 1"


# -- uncommitted state never reaches a faster layer -----------------------------------------


def test_reads_never_cache_flushed_but_uncommitted_state(engine: Engine, session: Session) -> None:
    _users(engine, 3)
    memory = ProcessMemoryStore()
    chain = ChainedStore([memory, SqlAlchemyStore(session=session)])
    user = session.get(User, 1)
    assert user is not None
    user.name = "uncommitted"
    assert chain.get(User, 1) is user  # dirty
    session.flush()
    assert chain.get(User, 1) is user  # flushed in the open transaction
    session.add(User(id=4, name="new"))
    session.flush()
    assert chain.get(User, 4) is not None  # inserted in the open transaction
    with session.begin_nested():
        session.get(User, 2).name = "in a savepoint"  # type: ignore[union-attr]
    assert chain.get(User, 2) is not None  # flushed in a committed savepoint
    session.delete(session.get(User, 3))
    assert chain.get(User, 3) is not None  # marked for deletion
    assert memory.batch_get(User, [1, 2, 3, 4]) == [None, None, None, None]
    session.rollback()
    assert chain.get(User, 1) is not None
    cached = memory.get(User, 1)
    assert cached is not None
    assert cached.name == "user 1"


def test_a_cached_copy_never_hides_what_the_transaction_wrote(
    engine: Engine, session: Session, statements: Statements
) -> None:
    _users(engine, 2)
    memory = ProcessMemoryStore()
    chain = ChainedStore([memory, SqlAlchemyStore(session=session)])
    chain.batch_get(User, [1, 2])
    session.commit()
    session.get(User, 1).name = "mine"  # type: ignore[union-attr]
    session.delete(session.get(User, 2))
    session.flush()
    gc.collect()  # the flushed, unreferenced instances leave the weak identity map
    assert not session.identity_map
    with statements.exactly(1):
        found = chain.batch_get(User, [1, 2])
    assert found[0] is not None
    assert found[0].name == "mine"
    assert found[1] is None
    assert memory.get(User, 1).name == "user 1"  # type: ignore[union-attr]
    session.rollback()  # the transaction's record ends with it
    session.expunge_all()
    with statements.exactly(0):
        assert chain.get(User, 1).name == "user 1"  # type: ignore[union-attr]


def test_chain_puts_in_a_borrowed_session_cache_nothing_until_commit(
    engine: Engine, session: Session
) -> None:
    memory = ProcessMemoryStore()
    memory.put(User(id=1, name="stale", email=None))
    chain = ChainedStore([memory, SqlAlchemyStore(session=session)])
    chain.put(User(id=1, name="fresh", email=None))
    assert memory.get(User, 1) is None  # invalidated, not filled
    session.commit()
    session.expire_all()
    assert chain.get(User, 1) is not None
    assert memory.get(User, 1).name == "fresh"  # type: ignore[union-attr]


def test_expired_objects_are_not_cacheable(engine: Engine, session: Session) -> None:
    _users(engine, 1)
    store = SqlAlchemyStore(session=session)
    user = store.get(User, 1)
    assert store.cacheable(user)
    session.expire(user, ["name"])
    assert not store.cacheable(user)


# -- the seed's examples, as written but for the imports and the class argument -------------


def test_seed_example_sqlalchemy_store() -> None:
    store = SqlAlchemyStore("sqlite:///:memory:")
    Base.metadata.create_all(store.engine)  # type: ignore[arg-type]  # an in-memory database

    obj = User(name="seed")
    store.put(obj)

    obj_retrieved = store.get(User, {"id": obj.id})
    assert obj_retrieved is obj
    store.close()


def test_seed_example_chained_store() -> None:
    pm = ProcessMemoryStore()
    sa = SqlAlchemyStore("sqlite:///:memory:")
    Base.metadata.create_all(sa.engine)  # type: ignore[arg-type]  # an in-memory database
    store = ChainedStore([pm, sa])

    obj = User(name="seed")
    store.put(obj)

    obj_retrieved = store.get(User, {"id": obj.id})
    assert obj_retrieved is obj
    assert store.layer_stats[0].count(User, "hits") == 1
    assert pm.get(User, obj.id).name == "seed"  # type: ignore[union-attr]
    store.close()
