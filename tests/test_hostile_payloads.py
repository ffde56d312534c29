"""Hostile payloads and values (#18), on every shared store: Redis, a Redis Cluster,
memcached, a dictionary and a folder of files.

Whatever bytes sit under a key the library reads, a lookup misses (counted as ``corrupt``,
the entry replaced by a tombstone) or, without a signing key, returns a well-formed object
of the right class whose key values give the key asked; a chain falls through to its next
layer.  ``put`` refuses what it cannot store exactly with a :class:`PayloadError` naming the
attribute, and stores nothing.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import uuid
import zoneinfo
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, load_only, mapped_column

from sa_stockpyle.codec import (
    MAGIC,
    Entry,
    Marker,
    Pointer,
    decode_marker,
    encode_marker,
    encode_record,
    entry_version,
)
from sa_stockpyle.errors import ConfigurationError, PayloadError
from sa_stockpyle.keys import key_spec
from sa_stockpyle.messages import Invalidation, encode_invalidation
from sa_stockpyle.signing import SIGNATURE_BYTES, Signer
from sa_stockpyle.stores import (
    BaseKeyValueStore,
    ChainedStore,
    MemcacheStore,
    ProcessMemoryStore,
    RedisStore,
    ShoveStore,
    ThreadLocalStore,
)
from sa_stockpyle.tagged import MAX_DEPTH
from sa_stockpyle.testing import Foo
from tests.helpers import cluster_client, examples, until
from tests.hostile import DIGIT_LIMIT, mutations

SIGNING_KEY = b"0123456789abcdef-test-signing-key"
SIGNER = Signer(SIGNING_KEY)
SPEC = key_spec(Foo)
GOOD = Foo(key=1, zap=1, bar=1)
OTHER = Foo(key=2, zap=2, bar=2)


class Slotted:
    """A class whose objects hold only their slots."""

    __slots__ = ("id", "x")
    __stockpyle_keys__ = ["id"]

    def __init__(self, id: int, x: int) -> None:
        self.id = id
        self.x = x

    def __eq__(self, other: object) -> bool:
        return type(other) is Slotted and (self.id, self.x) == (other.id, other.x)

    __hash__ = None  # type: ignore[assignment]


# -- the stores -----------------------------------------------------------------------------

SHARED = ["dict", "files", "redis", "cluster", "memcached"]


def _shared(kind: str, request: pytest.FixtureRequest, **options: Any) -> BaseKeyValueStore:
    if kind == "dict":
        return ShoveStore(shove={}, **options)
    if kind == "files":
        folder: Path = request.getfixturevalue("tmp_path")
        return ShoveStore(shoveuri=f"file://{folder}/cache", **options)
    if kind == "redis":
        return RedisStore(url=request.getfixturevalue("redis_url"), **options)
    if kind == "cluster":
        client = cluster_client(request.getfixturevalue("redis_cluster_nodes"))
        request.addfinalizer(client.close)
        return RedisStore(client=client, **options)
    return MemcacheStore(servers=request.getfixturevalue("memcached_addresses"), **options)


@pytest.fixture(params=SHARED)
def shared(request: pytest.FixtureRequest) -> Iterator[BaseKeyValueStore]:
    store = _shared(request.param, request)
    yield store
    store.close()


@pytest.fixture(params=[(kind, signing) for kind in SHARED for signing in (False, True)])
def layered(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[BaseKeyValueStore, ChainedStore, bool]]:
    """A shared store (signed or not) in front of a memory layer holding the truth."""
    kind, signing = request.param
    store = _shared(kind, request, signing_key=SIGNING_KEY if signing else None)
    # A lease left in the shared layer is not waited for: reads go on to the next layer.
    chain = ChainedStore([store, ProcessMemoryStore()], lease_wait=0)
    yield store, chain, signing
    chain.close()


def _primary(store: BaseKeyValueStore, klass: type = Foo, ident: Any = 1) -> str:
    return store.keymaker.key(key_spec(klass), 0, (ident,))


def _raw(store: BaseKeyValueStore, key: str) -> Any:
    return store.read([key])[0]


def _overwrite(store: BaseKeyValueStore, key: str, raw: bytes) -> None:
    store.write([(key, raw, None)])


def _forged(store: BaseKeyValueStore, body: bytes) -> bytes:
    """``body`` as a writer with the store's signing key (if any) would have stored it."""
    signer: Signer | None = store._signer  # type: ignore[attr-defined]
    return body if signer is None else signer.sign(body)


#: Two Enum classes with one name, as a factory makes them.
TWINS: list[type[enum.Enum]] = [
    enum.Enum("Twin", names)  # type: ignore[misc]
    for names in ("ON OFF", "OFF ON")
]

# -- item 1 and 3: payloads that do not decode ---------------------------------------------

#: The rest of an entry of Foo listing the key "K" (each test puts the key it reads in).
_STATE = b'"c":"sa_stockpyle.testing.models.Foo","k":["K"],"x":null}'
UNDECODABLE = [
    b"",
    b"\x00\x01garbage",
    MAGIC + b"{",
    MAGIC + b"[]",
    MAGIC + b'{"x":"soon","p":"k"}',
    MAGIC + b'{"x":null,"c":"os.system","s":{},"k":[]}',
    MAGIC
    + b'{"x":null,"c":"sa_stockpyle.testing.models.Foo","s":{"a":{"$t":"nope","v":1}},"k":[]}',
    # Tagged values out of their type's range.
    MAGIC + b'{"s":{"key":1,"zap":1,"bar":1,"d":{"$t":"timedelta","v":[1e20,0,0]}},' + _STATE,
    MAGIC
    + b'{"s":{"key":1,"zap":1,"bar":1,"d":{"$t":"timedelta","v":[99999999999,0,0]}},'
    + _STATE,
    MAGIC + b'{"s":{"key":1,"zap":1,"bar":1,"d":{"$t":"timedelta","v":[1.5,0,0]}},' + _STATE,
    MAGIC + b'{"s":{"key":1,"zap":1,"bar":1,"d":{"$t":"date","v":"99999-01-01"}},' + _STATE,
    # An offset put() refuses (microseconds): it would be served, and refused when put back.
    MAGIC + b'{"s":{"key":1,"zap":1,"bar":1,"d":{"$t":"datetime","v":"2020-01-01T00:00'
    b'+05:00:00.000001"}},' + _STATE,
    MAGIC
    + b'{"s":{"key":1,"zap":1,"bar":1,"d":{"$t":"time","v":["01:30+01:00:00.000500",1]}},'
    + _STATE,
    MAGIC + b'{"s":{"key":1,"zap":1,"bar":1,"d":{"$t":"zoned","v":["2020-01-01T00:00",'
    b'"../../../etc/passwd",0]}},' + _STATE,
    MAGIC + b'{"s":{"key":1,"zap":1,"bar":1,"d":{"$t":"enum","v":["os","system",1]}},' + _STATE,
    # A number over the digit limit, JSON nested past every limit, deeper than MAX_DEPTH.
    MAGIC + b'{"s":{"key":1,"zap":1,"bar":1,"d":' + b"7" * (DIGIT_LIMIT + 1) + b"}," + _STATE,
    MAGIC + b'{"s":{"d":' + b"[" * 100_000,
    MAGIC + b'{"s":{"d":' + b"[" * 100_000 + b"]" * 100_000 + b"}," + _STATE,
    MAGIC
    + b'{"s":{"key":1,"zap":1,"bar":1,"d":'
    + b"[" * (MAX_DEPTH + 1)
    + b"]" * (MAX_DEPTH + 1)
    + b"},"
    + _STATE,
    # A zone name that is a folder of the zone database, or too long to be a file name.
    MAGIC + b'{"s":{"key":1,"zap":1,"bar":1,"d":{"$t":"zoned","v":["2020-01-01T00:00",'
    b'"America",0]}},' + _STATE,
    MAGIC + b'{"s":{"key":1,"zap":1,"bar":1,"d":{"$t":"zoned","v":["2020-01-01T00:00",'
    b'"' + b"x" * 5_000 + b'",0]}},' + _STATE,
    # Key values a key cannot be made of, and keys the state does not give.
    MAGIC + b'{"s":{"key":NaN,"zap":1,"bar":1},' + _STATE,
    MAGIC + b'{"s":{"key":{"$t":"decimal","v":"1e999999999999999999"},"zap":1,"bar":1},' + _STATE,
    MAGIC + b'{"s":{},' + _STATE,
    MAGIC + b'{"s":{"zap":1,"bar":1},' + _STATE,
    # An Enum whose name two classes share.
    MAGIC + b'{"s":{"key":1,"zap":1,"bar":1,"d":{"$t":"enum","v":["tests.test_hostile_payloads",'
    b'"Twin",1]}},' + _STATE,
    # Never expiring.
    MAGIC
    + b'{"x":NaN,"c":"sa_stockpyle.testing.models.Foo","s":{"key":1,"zap":1,"bar":1},"k":[]}',
    MAGIC + b'{"x":Infinity,"p":"k"}',
    b"SPKT:nan:nan",
    b"SPKL:abc:0:inf",
]


@pytest.mark.parametrize("payload", UNDECODABLE, ids=range(len(UNDECODABLE)))
def test_undecodable_payloads_are_counted_misses_that_block_nothing(
    layered: tuple[BaseKeyValueStore, ChainedStore, bool], payload: bytes
) -> None:
    store, chain, _ = layered
    chain.batch_put([GOOD, OTHER])
    primary = _primary(store)
    payload = _forged(store, payload.replace(b'"K"', json.dumps(primary).encode()))
    _overwrite(store, primary, payload)
    assert store.get(Foo, 1) is None
    assert store.stats.count(Foo, "corrupt") == 1
    assert decode_marker(_raw(store, primary)) is not None  # replaced by a tombstone
    assert store.get(Foo, 2) == OTHER  # no other entry is harmed
    _overwrite(store, primary, payload)
    # A chain falls through to its next layer, which fills this one again.
    assert chain.get(Foo, 1) == GOOD
    assert chain.batch_get(Foo, [1, {"zap": 1, "bar": 1}, 2]) == [GOOD, GOOD, OTHER]
    assert store.get(Foo, 1) == GOOD


@pytest.mark.parametrize(
    "zap", [b"NaN", b'{"$t":"decimal","v":"NaN"}', b'{"$t":"decimal","v":"1e999999999999999999"}']
)
def test_an_entry_whose_alternate_key_values_give_no_key_it_lists_is_a_miss_by_it(
    shared: BaseKeyValueStore, zap: bytes
) -> None:
    # A lookup by the primary key checks that key only: the entry answers it.  One by the
    # alternate key checks every key the entry lists against its state: NaN makes no key,
    # a huge Decimal another one.
    shared.put(GOOD)
    primary, alternate = _primary(shared), shared.keymaker.key(SPEC, 1, (1, 1))
    keys = json.dumps([primary, alternate]).encode()
    body = b'{"s":{"key":1,"zap":' + zap + b',"bar":1},"c":"sa_stockpyle.testing.models.Foo","k":'
    _overwrite(shared, primary, MAGIC + body + keys + b',"x":null}')
    assert shared.get(Foo, {"zap": 1, "bar": 1}) is None
    assert shared.stats.count(Foo, "corrupt") == 1
    shared.put(GOOD)
    assert shared.get(Foo, {"zap": 1, "bar": 1}) == GOOD


def _slotted_payloads() -> list[bytes]:
    def body(state: str) -> bytes:
        return (
            MAGIC + b'{"c":"tests.test_hostile_payloads.Slotted","s":{' + state.encode() + b"},"
            b'"k":["K"],"x":null}'
        )

    return [
        body('"id":1,"__class__":2'),
        body('"id":1,"zz":2'),
        body('"__dict__":{},"id":1'),
        body('"x":2'),  # no key at all: a slot is never computed
    ]


@pytest.mark.parametrize(
    "payload", _slotted_payloads(), ids=["__class__", "unknown", "__dict__", "no key"]
)
def test_state_a_slots_class_cannot_hold_is_a_miss(
    shared: BaseKeyValueStore, payload: bytes
) -> None:
    shared.put(Slotted(1, 2))
    primary = _primary(shared, Slotted)
    assert shared.get(Slotted, 1) == Slotted(1, 2)
    _overwrite(shared, primary, payload.replace(b'"K"', json.dumps(primary).encode()))
    assert shared.get(Slotted, 1) is None
    assert shared.stats.count(Slotted, "corrupt") == 1
    shared.put(Slotted(1, 3))
    assert shared.get(Slotted, 1) == Slotted(1, 3)


# -- item 2: an entry must answer to the key it is found under -----------------------------


def _entry(store: BaseKeyValueStore, obj: Foo, keys: tuple[str, ...]) -> bytes:
    return _forged(store, encode_record(Entry(Foo, dict(vars(obj)), keys, None)))


def test_an_entry_whose_state_names_another_key_is_a_miss(shared: BaseKeyValueStore) -> None:
    shared.batch_put([GOOD, OTHER])
    primary = _primary(shared)
    # The entry of id=2, word for word, under the key of id=1.
    _overwrite(shared, primary, _raw(shared, _primary(shared, Foo, 2)))
    assert shared.get(Foo, 1) is None
    assert shared.stats.count(Foo, "corrupt") == 1
    # id=2's state, relabelled as id=1's entry: its keys list says id=1, its state not.
    _overwrite(shared, primary, _entry(shared, OTHER, (primary,)))
    assert shared.batch_get(Foo, [1, 2]) == [None, OTHER]
    assert shared.stats.count(Foo, "corrupt") == 2


def test_an_entry_listing_an_alternate_key_its_state_does_not_give_is_a_miss(
    shared: BaseKeyValueStore,
) -> None:
    shared.put(GOOD)
    primary = _primary(shared)
    forged_alternate = shared.keymaker.key(SPEC, 1, (9, 9))
    # id=1's true state, claiming the alternate key (9, 9), with a pointer there.
    _overwrite(shared, primary, _entry(shared, GOOD, (primary, forged_alternate)))
    pointer = encode_record(Pointer(primary, None))
    _overwrite(shared, forged_alternate, _forged(shared, pointer))
    assert shared.get(Foo, {"zap": 9, "bar": 9}) is None
    assert shared.stats.count(Foo, "corrupt") == 1
    # The same, listing the key its state gives too.
    true_alternate = shared.keymaker.key(SPEC, 1, (1, 1))
    listed = (primary, true_alternate, forged_alternate)
    _overwrite(shared, primary, _entry(shared, GOOD, listed))
    _overwrite(shared, forged_alternate, _forged(shared, pointer))
    assert shared.get(Foo, {"zap": 9, "bar": 9}) is None
    assert shared.stats.count(Foo, "corrupt") == 2
    # An entry whose key values are not key values at all (None in the primary key).
    _overwrite(shared, primary, _entry(shared, Foo(key=None, zap=1, bar=1), (primary,)))
    assert shared.get(Foo, 1) is None
    assert shared.stats.count(Foo, "corrupt") == 3


@pytest.mark.parametrize(
    "target", ["a b", "é", "x" * 300, "", "stockpyle:v1:other.Class:key:i1", 7, None]
)
def test_a_pointer_to_anything_but_a_primary_key_of_the_class_is_a_miss(
    shared: BaseKeyValueStore, target: Any
) -> None:
    shared.put(GOOD)
    alternate = shared.keymaker.key(SPEC, 1, (1, 1))
    body = MAGIC + json.dumps({"p": target, "x": None}).encode()
    _overwrite(shared, alternate, _forged(shared, body))
    assert shared.batch_get(Foo, [{"zap": 1, "bar": 1}, 1]) == [None, GOOD]
    assert shared.stats.count(Foo, "corrupt") == 1
    shared.put(GOOD)
    assert shared.get(Foo, {"zap": 1, "bar": 1}) == GOOD


def test_a_forged_marker_that_never_expires_blocks_no_fill(
    layered: tuple[BaseKeyValueStore, ChainedStore, bool],
) -> None:
    store, chain, _ = layered
    chain.put(GOOD)
    primary = _primary(store)
    # Without a TTL, and a lease whose own expiry has long passed (written by no store).
    for marker in (b"SPKL:forged:1000.0:1000.5", b"SPKT:1000.0:0"):
        _overwrite(store, primary, marker)
        assert store.get(Foo, 1) is None
        assert chain.get(Foo, 1) == GOOD  # from the memory layer, which fills this one
        assert store.get(Foo, 1) == GOOD


@pytest.mark.parametrize("kind", ["redis", "cluster"])
def test_another_type_of_redis_value_under_a_key_is_a_miss(
    request: pytest.FixtureRequest, kind: str
) -> None:
    store = _shared(kind, request)
    chain = ChainedStore([store, ProcessMemoryStore()])
    try:
        chain.put(GOOD)
        primary = _primary(store)
        client: Any = store.client  # type: ignore[attr-defined]
        client.delete(primary)
        client.rpush(primary, b"x")
        assert store.get(Foo, 1) is None
        assert store.batch_get(Foo, [1, 2]) == [None, None]
        assert chain.get(Foo, 1) == GOOD  # and the fill writes over the list
        assert store.get(Foo, 1) == GOOD
    finally:
        chain.close()


# -- mapped classes: every entry holds its key columns ------------------------------------


class _Mapped(DeclarativeBase):
    pass


class Article(_Mapped):
    """Declared by its slug first; ``body`` and ``slug`` may be left unloaded."""

    __tablename__ = "hostile_articles"
    __stockpyle_keys__ = ["slug", "id", "email"]

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(40), unique=True)
    email: Mapped[str] = mapped_column(String(40), unique=True)
    body: Mapped[str] = mapped_column(String(200))


@pytest.fixture
def articles() -> Iterator[Session]:
    engine = create_engine("sqlite://")
    _Mapped.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(
            [
                Article(id=1, slug="one", email="a@x", body="first"),
                Article(id=2, slug="two", email="b@x", body="second"),
            ]
        )
        session.commit()
        yield session
    engine.dispose()


def test_an_entry_of_an_object_loaded_without_its_key_columns_holds_them(
    shared: BaseKeyValueStore, articles: Session
) -> None:
    partial = articles.scalars(
        select(Article).where(Article.id == 1).options(load_only(Article.id, Article.body))
    ).one()
    shared.put(partial)  # reading its keys loads slug and email, and the entry holds them
    for lookup in ("one", {"id": 1}, {"email": "a@x"}):
        found = shared.get(Article, lookup)
        assert found is not None
        assert (found.id, found.slug, found.email) == (1, "one", "a@x")
    assert shared.stats.count(Article, "corrupt") == 0


def test_a_mapped_entry_without_a_key_column_is_a_miss(
    shared: BaseKeyValueStore, articles: Session
) -> None:
    second = articles.get(Article, 2)
    assert second is not None
    shared.put(second)
    spec = key_spec(Article)
    primary = shared.keymaker.key(spec, 0, ("two",))
    forged_alternate = shared.keymaker.key(spec, 2, ("admin@x",))
    # id=2's entry without its email, claiming the email admin@x, which points to it.
    state = {"id": 2, "slug": "two", "body": "second"}
    listed = (primary, shared.keymaker.key(spec, 1, (2,)), forged_alternate)
    _overwrite(
        shared, primary, _forged(shared, encode_record(Entry(Article, state, listed, None)))
    )
    pointer = encode_record(Pointer(primary, None))
    _overwrite(shared, forged_alternate, _forged(shared, pointer))
    assert shared.get(Article, {"email": "admin@x"}) is None
    assert shared.get(Article, "two") is None
    assert shared.stats.count(Article, "corrupt") >= 1


class Root:
    """Foo's keys on a class of this module's own: subclasses of the shared Foo would
    stay alive into other tests, and every polymorphic lookup of Foo there would read
    their namespaces too."""

    __stockpyle_keys__ = ["key", ("zap", "bar")]

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


def test_subclasses_sharing_a_name_elsewhere_do_not_hide_a_sibling(
    request: pytest.FixtureRequest,
) -> None:
    class Legit(Root):
        pass

    # Stored, so its name is claimed for the process: a name of its own at every run.
    Legit.__qualname__ += f"[{id(Legit):x}]"

    def make() -> type:
        class Twin(Root):
            pass

        return Twin

    twins = [make(), make()]  # never given to a store
    for twin in twins:  # one name for both, new at every run (a payload claims it)
        twin.__qualname__ += f"[{id(twins[0]):x}]"
    store = _shared("redis", request, polymorphic=True)
    try:
        store.put(Legit(key=1, zap=1, bar=1))
        assert type(store.get(Root, 1)) is Legit
        assert store.stats.count(Root, "corrupt") == 0
        # A payload naming the twins' class cannot tell them apart: a miss.
        forged = dict(vars(Legit(key=2, zap=2, bar=2)))
        primary = _primary(store, Root, 2)
        entry = Entry(twins[0], forged, (primary,), None)
        body = encode_record(entry)  # claims the first twin's token
        _overwrite(store, primary, body)
        assert store.get(Root, 2) is None
        assert store.stats.count(Root, "corrupt") == 1
    finally:
        store.close()


# -- item 4: put refuses what it cannot store exactly -------------------------------------


class Stamp(dt.datetime):
    """A datetime subclass: it would come back as a plain datetime."""


class Name(str):
    """A str subclass: it would come back as a plain str."""


def _cycle() -> list[Any]:
    cycle: list[Any] = []
    cycle.append(cycle)
    return cycle


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


REFUSED_BY_SHARED: dict[str, Callable[[], Any]] = {
    "5000-digit int": lambda: 10**5000,
    "cycle": _cycle,
    "nested past MAX_DEPTH": lambda: _nested(MAX_DEPTH + 1),
    "nested 600 deep": lambda: _nested(600),
    "datetime subclass": lambda: Stamp(2020, 1, 1),
    "str subclass": lambda: Name("x"),
    "object": object,
    "file handle": lambda: open(__file__),  # noqa: SIM115 - closed by the garbage collector
    # Time zones that would come back as a bare offset, or not at all.
    "named offset": lambda: dt.datetime(
        2020, 1, 1, tzinfo=dt.timezone(-dt.timedelta(hours=5), "EST")
    ),
    "time in a zone": lambda: dt.time(12, tzinfo=ZoneInfo("Europe/Paris")),
    "zone from a file": lambda: dt.datetime(2020, 1, 1, tzinfo=_zone_from_file()),
    "another tzinfo": lambda: dt.datetime(2020, 1, 1, tzinfo=_Utc()),
    "offset with microseconds": lambda: dt.datetime(
        2020, 1, 1, tzinfo=dt.timezone(dt.timedelta(microseconds=1))
    ),
    "uncached zone": lambda: dt.datetime(2020, 1, 1, tzinfo=ZoneInfo.no_cache("Europe/Paris")),
    "Enum named like another": lambda: TWINS[1]["ON"],
}


EST = dt.timezone(-dt.timedelta(hours=5), "EST")


def _zone_from_file() -> ZoneInfo:
    with (Path(zoneinfo.TZPATH[0]) / "Europe" / "Paris").open("rb") as file:
        return ZoneInfo.from_file(file)


class _Utc(dt.tzinfo):
    """A tzinfo of its own: its rules could not be carried."""

    def utcoffset(self, when: dt.datetime | None) -> dt.timedelta:
        return dt.timedelta(0)

    def dst(self, when: dt.datetime | None) -> dt.timedelta:
        return dt.timedelta(0)

    def tzname(self, when: dt.datetime | None) -> str:
        return "UTC"


#: What a process-local store refuses too: values it cannot copy.
REFUSED_BY_ALL = ["nested 600 deep", "file handle"]


@pytest.mark.parametrize("value", list(REFUSED_BY_SHARED))
def test_put_refuses_a_value_a_shared_store_cannot_carry_and_stores_nothing(
    shared: BaseKeyValueStore, value: str
) -> None:
    bad = Foo(key=3, zap=3, bar=3, v=REFUSED_BY_SHARED[value]())
    with pytest.raises(PayloadError, match="'v'"):
        shared.put(bad)
    with pytest.raises(PayloadError, match="'v'"):
        shared.batch_put([GOOD, bad])
    assert shared.batch_get(Foo, [1, 3]) == [None, None]  # nothing of the batch was stored


@pytest.mark.parametrize("value", REFUSED_BY_ALL)
@pytest.mark.parametrize("store", [ProcessMemoryStore, ThreadLocalStore])
def test_put_refuses_a_value_a_local_store_cannot_copy(
    store: Callable[[], BaseKeyValueStore], value: str
) -> None:
    local = store()
    bad = Foo(key=3, zap=3, bar=3, v=REFUSED_BY_SHARED[value]())
    with pytest.raises(PayloadError, match="'v'"):
        local.batch_put([GOOD, bad])
    assert local.batch_get(Foo, [1, 3]) == [None, None]


def test_accepted_values_come_back_equal_and_of_the_same_type(shared: BaseKeyValueStore) -> None:
    values = {
        "bytearray": bytearray(b"\x00ab"),
        "bytes": b"\x00ab",
        "frozenset": frozenset({(1, "a"), (2, "b")}),
        "tuple-keyed": {(1, 2): [1.5, None], "plain": {"$t": "not a tag"}},
        "nested": _nested(MAX_DEPTH),
        "big": 10**4000,
        "fold": dt.datetime(2020, 11, 1, 1, 30, fold=1),
        "time fold": dt.time(1, 30, fold=1),
        "offset": dt.datetime(2020, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        "utc time": dt.time(1, 30, tzinfo=dt.timezone.utc),
        "zoned": dt.datetime(2020, 11, 1, 1, 30, fold=1, tzinfo=ZoneInfo("America/New_York")),
    }
    shared.put(Foo(key=4, zap=4, bar=4, **values))
    found = shared.get(Foo, 4)
    assert found is not None
    for name, value in values.items():
        assert getattr(found, name) == value
        assert type(getattr(found, name)) is type(value)
        if isinstance(value, (dt.datetime, dt.time)):
            assert getattr(found, name).fold == value.fold
            assert repr(getattr(found, name).tzinfo) == repr(value.tzinfo)


# -- item 5: one class per class token -----------------------------------------------------


def _factory(name: str) -> type:
    class Made:
        __stockpyle_keys__ = ["id"]

        def __init__(self, id: int) -> None:
            self.id = id
            self.made_by = name

    return Made


def test_two_classes_with_one_name_are_refused(shared: BaseKeyValueStore) -> None:
    first, second = _factory("first"), _factory("second")
    # One name per run of this test (it runs once per store, in one process; an id()
    # could be an earlier run's store's again, whose classes still hold the name).
    name = f"Made{uuid.uuid4().hex}"
    first.__qualname__ = second.__qualname__ = name
    shared.put(first(1))
    with pytest.raises(ConfigurationError, match="two classes named") as info:
        shared.put(second(1))
    assert "__qualname__" in str(info.value)
    with pytest.raises(ConfigurationError):
        shared.get(second, 1)
    # What docs/keys.md says to do: a factory names each class it makes.
    third = _factory("third")
    third.__qualname__ = f"{name}[third]"
    shared.put(third(1))
    assert shared.get(third, 1).made_by == "third"  # type: ignore[attr-defined]
    assert shared.get(first, 1).made_by == "first"  # type: ignore[attr-defined]


# -- signatures ----------------------------------------------------------------------------


def test_a_signed_store_reads_only_payloads_signed_with_its_key(
    request: pytest.FixtureRequest,
) -> None:
    signed_store = _shared("redis", request, signing_key=SIGNING_KEY)
    plain = _shared("redis", request)
    other = _shared("redis", request, signing_key=b"another key, 16+ bytes")
    try:
        signed_store.put(GOOD)
        assert _raw(signed_store, _primary(signed_store)).startswith(MAGIC)
        assert signed_store.get(Foo, 1) == GOOD
        for reader in (plain, other):  # a process with another key, or none: misses
            assert reader.get(Foo, 1) is None
            assert reader.stats.count(Foo, "corrupt") == 1
            signed_store.put(GOOD)
        plain.put(GOOD)  # unsigned bytes read by the signed store
        assert signed_store.get(Foo, 1) is None
        signed_store.put(GOOD)
        raw = _raw(signed_store, _primary(signed_store))
        for position in (5, len(raw) - SIGNATURE_BYTES - 2, len(raw) - 1):
            flipped = raw[:position] + bytes([raw[position] ^ 1]) + raw[position + 1 :]
            _overwrite(signed_store, _primary(signed_store), flipped)
            assert signed_store.get(Foo, 1) is None
        assert signed_store.stats.count(Foo, "corrupt") == 4
    finally:
        for store in (signed_store, plain, other):
            store.close()


def test_a_signed_entry_keeps_its_version_where_the_redis_script_reads_it() -> None:
    entry = Entry(Foo, {"key": 1, "zap": 1, "bar": 1}, ("k",), None, 7)
    assert entry_version(SIGNER.sign(encode_record(entry))) == 7


def test_a_signed_store_signs_its_invalidation_messages(redis_url: str) -> None:
    def chain(*local: BaseKeyValueStore) -> ChainedStore:
        shared = RedisStore(url=redis_url, signing_key=SIGNING_KEY)
        return ChainedStore([*local, shared], heartbeat=0.2)

    reader, writer = chain(ProcessMemoryStore()), chain()
    assert reader.coherence is not None
    memory = reader.stores[0]
    try:
        assert until(lambda: reader.coherence.subscribed)  # type: ignore[union-attr]
        reader.batch_put([GOOD, OTHER])
        # A well-formed message, but unsigned: counted as corrupt, and ignored.
        forged = Invalidation("someone", 1.0, [(Foo, {"key": 1})], [], 1, "", 1.0)
        channel = reader.stores[1].backend_channel("invalidations")  # type: ignore[attr-defined]
        channel.publish([encode_invalidation(forged)])
        assert until(lambda: reader.coherence.counts().get("corrupt", 0) == 1)  # type: ignore[union-attr]
        assert memory.get(Foo, 1) == GOOD
        # The other chain's signed message is applied.
        writer.delete(OTHER)
        assert until(lambda: memory.get(Foo, 2) is None)
        assert memory.get(Foo, 1) == GOOD
        assert reader.coherence.counts().get("flushes", 0) == 0
    finally:
        reader.close()
        writer.close()


@pytest.mark.parametrize("key", ["a str of 16+ characters", b"short", b"x" * 65, 12345])
def test_an_unusable_signing_key_is_refused(key: Any) -> None:
    with pytest.raises(ConfigurationError, match="signing_key"):
        ShoveStore(shove={}, signing_key=key)


# -- the property: any bytes, any mutation of a real record -------------------------------


def _verdict(store: BaseKeyValueStore, key: str, raw: bytes) -> str:
    """What a read of ``raw`` at ``key`` must see: ``corrupt``, a ``marker`` (a miss) or a
    ``record`` (served, unless expired, or a pointer to no entry that answers)."""
    try:
        record = store.decode(raw, Foo)
    except PayloadError:
        return "marker" if store.marker_of(raw) is not None else "corrupt"
    # Where it was read: an entry's key values give that key (a lookup by an alternate key
    # checks the rest where a pointer leads to it), a pointer leads to a primary key.
    if type(record) is Entry:
        belongs = store.keymaker.agrees(SPEC, key, record.keys, record.state, alternates=False)
    else:
        belongs = store.keymaker.is_primary(SPEC, record.primary)  # type: ignore[union-attr]
    return "record" if belongs else "corrupt"


#: The records a mutation starts from, and the lookup that reads the key holding each.
RECORDS = {"entry": 1, "pointer": {"zap": 1, "bar": 1}, "tombstone": 1, "lease": 1}


@pytest.mark.slow
@settings(
    max_examples=examples(100),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.data())
def test_every_read_of_hostile_bytes_is_the_truth_or_a_miss(
    layered: tuple[BaseKeyValueStore, ChainedStore, bool], data: st.DataObject
) -> None:
    store, chain, signing = layered
    truth = Foo(key=1, zap=1, bar=1, when=dt.date(2020, 1, 1), tags=("a", 1), d={"x": [1.5]})
    chain.batch_put([truth, OTHER])
    primary, alternate = _primary(store), store.keymaker.key(SPEC, 1, (1, 1))
    # What a store writes, unsigned, to start from or to splice in: an entry and a pointer
    # (of the other object), a tombstone, a lease, an invalidation message.  Their times
    # are fixed (taken in the past, expiring in the future): a mutation drawn for bytes of
    # one length must find the same length when Hypothesis replays it.
    real = {
        "entry": _raw(store, _primary(store, Foo, 2)),
        "pointer": _raw(store, store.keymaker.key(SPEC, 1, (2, 2))),
        "tombstone": encode_marker(Marker(None, 1.7e9, 4e9)),
        "lease": encode_marker(Marker("hostile", 1.7e9, 4e9)),
        "message": encode_invalidation(Invalidation("hostile", 1.7e9, [(Foo, {"key": 1})], [])),
    }
    if signing:
        real["entry"], real["pointer"] = (SIGNER.verify(real[k]) for k in ("entry", "pointer"))
    kind = data.draw(st.sampled_from(sorted(RECORDS)))
    lookup, location = RECORDS[kind], alternate if kind == "pointer" else primary
    if kind == "tombstone":
        store.delete(truth)
    if kind in ("tombstone", "lease"):
        _overwrite(store, primary, real[kind])
    raw = _raw(store, location)
    unsigned = SIGNER.verify(raw) if signing and kind in ("entry", "pointer") else raw
    hostile = data.draw(mutations(unsigned, list(real.values())))
    # Signed again, as by someone who holds the key: then only the decoder's checks hold.
    resigned = signing and data.draw(st.booleans())
    if resigned:
        hostile = SIGNER.sign(hostile)
    verdict = _verdict(store, location, hostile)
    if signing and not resigned:
        assert verdict in ("corrupt", "marker")  # no signature: never a record
    store.stats.reset()
    _overwrite(store, location, hostile)
    found = store.get(Foo, lookup)
    assert store.stats.count(Foo, "corrupt") == (verdict == "corrupt")
    if found is not None:  # a well-formed entry of the right class and key
        assert verdict == "record"
        assert type(found) is Foo
        if kind == "pointer":
            assert found == truth  # a pointer leads to the entry that lists its key, or none
        else:
            assert found.key == 1
    if location == primary:
        # By the alternate key: only an entry whose every key agrees with its state answers.
        _overwrite(store, primary, hostile)
        by_alternate = store.get(Foo, {"zap": 1, "bar": 1})
        if by_alternate is not None:
            assert verdict == "record"
            assert (by_alternate.key, by_alternate.zap, by_alternate.bar) == (1, 1, 1)
    # Through the chain: the truth, from the next layer, unless a well-formed entry stands.
    _overwrite(store, location, hostile)
    assert chain.batch_get(Foo, [lookup, 2]) in ([truth, OTHER], [found, OTHER])
    # Nothing is blocked: the next write and read work.
    store.put(truth)
    assert store.get(Foo, lookup) == truth


# -- write paths meet hostile bytes too ---------------------------------------------------


class Versioned(_Mapped):
    """A class whose commits are ordered by their ``version_id_col``."""

    __tablename__ = "hostile_versioned"
    __stockpyle_keys__ = ["id"]

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(20))
    version: Mapped[int] = mapped_column()

    __mapper_args__ = {"version_id_col": version}


def test_a_version_past_the_digit_limit_stops_no_write(shared: BaseKeyValueStore) -> None:
    # A write of a versioned class reads the version of the entry it would replace: one
    # with more digits than int() converts raised ValueError out of the commit's write.
    engine = create_engine("sqlite://")
    _Mapped.metadata.create_all(engine, tables=[Versioned.__table__])  # type: ignore[list-item]
    try:
        with Session(engine, expire_on_commit=False) as session:
            row = Versioned(id=1, name="first")
            session.add(row)
            session.commit()
            shared.write_committed([row], [])
            primary = _primary(shared, Versioned)
            held = _raw(shared, primary)
            assert held.startswith(MAGIC + b'{"v":1,')
            huge = held.replace(b'{"v":1,', b'{"v":' + b"9" * (DIGIT_LIMIT + 1) + b",", 1)
            _overwrite(shared, primary, huge)
            row.name = "second"
            session.commit()
            assert row.version == 2
            shared.write_committed([row], [])  # raises nothing
            # The entry written over the undecodable one, or (Redis, whose script reads the
            # number as infinity) that one left for a read to find corrupt and remove.
            found = shared.get(Versioned, 1)
            assert found is None or (found.name, found.version) == ("second", 2)
            assert shared.stats.count(Versioned, "corrupt") == (found is None)
    finally:
        engine.dispose()
