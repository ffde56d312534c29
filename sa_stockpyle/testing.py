"""The store conformance suite, shipped so third-party stores can prove the contract.

A store's test file is configuration only::

    from sa_stockpyle.testing import StoreConformance

    class TestMyStore(StoreConformance):
        def make_store(self, **options):
            return MyStore(**options)

``make_store`` receives the keyword arguments ``polymorphic``, ``lifetime_cb`` and
``clock`` (a :class:`FakeClock`); expiry is tested by moving that clock, never by
sleeping.  Every store a test makes is closed after it.  Requires pytest.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sa_stockpyle.errors import (
    InvalidKeyValueError,
    InvalidLifetimeError,
    NotStorableError,
    StockpyleError,
    UnknownKeyError,
)
from sa_stockpyle.stores.base import BaseStore

__all__ = [
    "Automobile",
    "Car",
    "Color",
    "FakeClock",
    "Falsy",
    "Foo",
    "Pair",
    "StoreConformance",
    "Truck",
    "User",
    "Versioned",
]


class FakeClock:
    """A clock that only moves when told to: ``clock.advance(seconds)``."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += seconds


class _Comparable:
    def __init__(self, **attrs: Any) -> None:
        self.__dict__.update(attrs)

    def __getattr__(self, name: str) -> Any:
        # Attributes are set per instance; this only tells type checkers so.
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({vars(self)!r})"


class Foo(_Comparable):
    """The seed's example: a primary key and a composite alternate key."""

    __stockpyle_keys__ = ["key", ("zap", "bar")]


class Pair(_Comparable):
    """A class whose primary key is composite (tuple shorthand)."""

    __stockpyle_keys__ = [("a", "b")]


class User(_Comparable):
    """A user with a nullable alternate key (``email``)."""

    __stockpyle_keys__ = ["id", "email"]


class Automobile(_Comparable):
    """Base of a polymorphic hierarchy."""

    __stockpyle_keys__ = ["license_plate"]


class Car(Automobile):
    """A stored subclass."""


class Truck(Automobile):
    """Another subclass, never equal to a Car."""


class Falsy(_Comparable):
    """An object that is falsy: only None may mean a miss."""

    __stockpyle_keys__ = ["key"]

    def __bool__(self) -> bool:
        return False

    def __len__(self) -> int:
        return 0


class Color(enum.Enum):
    """An Enum attribute value."""

    RED = "red"
    BLUE = "blue"


class NoKeys:
    """A class without ``__stockpyle_keys__``."""


# Classes that store calls must refuse (see test_bad_input_raises_typed_errors...).  They
# are defined once: a class token names one class in a process.


class MissingAttr:
    __stockpyle_keys__ = ["id", "email"]

    def __init__(self) -> None:
        self.id = 1


class BadDeclaration:
    __stockpyle_keys__ = ["id", ("a", 3)]


class Duplicated:
    __stockpyle_keys__ = ["id", "id"]


class EmptyDeclaration:
    __stockpyle_keys__: list[str] = []


class NotAList:
    __stockpyle_keys__ = "id"


class _Base(DeclarativeBase):
    pass


class Versioned(_Base):
    """A mapped class whose commits are ordered by a ``version_id_col``."""

    __tablename__ = "stockpyle_conformance_versioned"
    __stockpyle_keys__ = ["id"]

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column()
    version: Mapped[int] = mapped_column()
    __mapper_args__ = {"version_id_col": version}


def _name(obj: object) -> object:
    return getattr(obj, "name", None)


def rich_values() -> dict[str, Any]:
    """Attribute values of every type a store must give back exactly."""
    return {
        "naive": dt.datetime(2024, 2, 29, 12, 30, 45, 123456),
        "aware": dt.datetime(2024, 2, 29, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=5))),
        "day": dt.date(1999, 12, 31),
        "clock": dt.time(23, 59, 1),
        "span": dt.timedelta(days=2, seconds=5, microseconds=7),
        "price": Decimal("12.3400"),
        "uid": UUID("12345678-1234-5678-1234-567812345678"),
        "color": Color.BLUE,
        "blob": b"\x00\xff binary",
        "doc": {"a": [1, 2, {"b": None}], "c": 1.5, "$t": "not a tag"},
        "odd_dict": {1: "one", (2, 3): "pair"},
        "items": [1, "two", 3.0, None, True],
        "pair": (1, ("nested", b"x")),
        "tags": {"x", "y"},
        "frozen": frozenset({1, 2}),
        "big": 10**40,
        "text": "ünïcödé ✓ \n\t",
        "nothing": None,
        "flag": False,
        "inf": float("inf"),
    }


class StoreConformance:
    """Mix into a test class and define :meth:`make_store`."""

    supports_polymorphic = True
    supports_expiry = True
    #: Whether the store compares a tombstone's time with a reader's lease (one clock:
    #: the process's, or the server's); memcached has no server clock to compare with.
    compares_tombstone_times = True

    def make_store(self, **options: Any) -> BaseStore:
        """Return a new, empty store built with ``options``."""
        raise NotImplementedError

    @pytest.fixture(autouse=True)
    def _stores(self) -> Iterator[None]:
        self._made: list[BaseStore] = []
        self.clock = FakeClock()
        yield
        for store in self._made:
            store.close()

    def store(self, **options: Any) -> BaseStore:
        """A store from :meth:`make_store`, with the fake clock; closed after the test."""
        options.setdefault("clock", self.clock)
        store = self.make_store(**options)
        self._made.append(store)
        return store

    # -- the six operations -----------------------------------------------------------

    def test_put_get_by_primary_key(self) -> None:
        store = self.store()
        foo = Foo(key="k1", zap=2, bar=3)
        store.put(foo)
        assert store.get(Foo, {"key": "k1"}) == foo
        assert store.get(Foo, "k1") == foo

    def test_missing_is_none(self) -> None:
        store = self.store()
        assert store.get(Foo, {"key": "absent"}) is None
        assert store.get(Foo, {"zap": 1, "bar": 1}) is None

    def test_alternate_tuple_key_is_order_free(self) -> None:
        store = self.store()
        foo = Foo(key=1, zap=2, bar=3)
        store.put(foo)
        assert store.get(Foo, {"zap": 2, "bar": 3}) == foo
        assert store.get(Foo, {"bar": 3, "zap": 2}) == foo
        assert store.get(Foo, {"zap": 3, "bar": 2}) is None

    def test_composite_primary_tuple_shorthand(self) -> None:
        store = self.store()
        pair = Pair(a="x", b=7, payload="p")
        store.put(pair)
        assert store.get(Pair, ("x", 7)) == pair
        assert store.get(Pair, {"b": 7, "a": "x"}) == pair
        assert store.get(Pair, ("x", 8)) is None

    def test_batch_put_get_keeps_order_and_length(self) -> None:
        store = self.store()
        foos = [Foo(key=f"k{i}", zap=i, bar=-i) for i in range(5)]
        store.batch_put(foos)
        keys: list[object] = [
            {"key": "k3"},
            {"key": "nope"},
            {"zap": 1, "bar": -1},
            "k3",
            {"key": "k0"},
        ]
        assert store.batch_get(Foo, keys) == [foos[3], None, foos[1], foos[3], foos[0]]
        assert store.batch_get(Foo, []) == []
        assert store.batch_get(Foo, iter(["k4"])) == [foos[4]]

    def test_delete_and_batch_delete(self) -> None:
        store = self.store()
        foos = [Foo(key=i, zap=i, bar=i) for i in range(4)]
        store.batch_put(foos)
        store.delete(foos[0])
        assert store.get(Foo, 0) is None
        assert store.get(Foo, {"zap": 0, "bar": 0}) is None
        store.batch_delete(foos[1:3])
        assert store.batch_get(Foo, [0, 1, 2, 3]) == [None, None, None, foos[3]]

    def test_deleting_absent_is_not_an_error(self) -> None:
        store = self.store()
        kept = Foo(key="kept", zap=9, bar=9)
        store.put(kept)
        store.delete(Foo(key="ghost", zap=0, bar=0))
        store.batch_delete([Foo(key="g1", zap=1, bar=1), Foo(key="g2", zap=2, bar=2)])
        store.batch_delete([])
        assert store.batch_get(Foo, ["ghost", "g1", "kept"]) == [None, None, kept]
        assert store.get(Foo, {"zap": 9, "bar": 9}) == kept  # nothing else was touched

    def test_put_replaces(self) -> None:
        store = self.store()
        store.put(Foo(key=1, zap=1, bar=1, note="old"))
        newer = Foo(key=1, zap=1, bar=1, note="new")
        store.put(newer)
        assert store.get(Foo, 1) == newer
        assert store.get(Foo, {"zap": 1, "bar": 1}) == newer

    def test_moved_alternate_key_no_longer_answers(self) -> None:
        store = self.store()
        foo = Foo(key=1, zap=2, bar=3)
        store.put(foo)
        foo.zap = 20
        store.put(foo)
        assert store.get(Foo, {"zap": 2, "bar": 3}) is None
        assert store.get(Foo, {"zap": 20, "bar": 3}) == foo

    def test_falsy_objects_are_objects(self) -> None:
        store = self.store()
        falsy = Falsy(key=0)
        store.put(falsy)
        got = store.get(Falsy, 0)
        assert got is not None
        assert got == falsy
        assert store.batch_get(Falsy, [0, 1]) == [falsy, None]

    def test_returned_objects_are_snapshots(self) -> None:
        store = self.store()
        foo = Foo(key=1, zap=1, bar=1, items=[1, 2], doc={"a": 1})
        store.put(foo)
        foo.items.append(3)
        foo.doc["a"] = 2
        first = store.get(Foo, 1)
        assert first is not None
        assert first.items == [1, 2]
        assert first.doc == {"a": 1}
        first.items.append(99)
        first.note = "mutated"
        second = store.get(Foo, 1)
        assert second is not first
        assert second == Foo(key=1, zap=1, bar=1, items=[1, 2], doc={"a": 1})

    def test_one_object_asked_twice_in_a_batch_comes_back_twice_unshared(self) -> None:
        store = self.store()
        store.put(Foo(key=1, zap=2, bar=3, items=[1], doc={"a": 1}))
        by_key, again, by_alternate = store.batch_get(Foo, [1, 1, {"zap": 2, "bar": 3}])
        assert by_key is not None
        assert again is not None
        assert by_alternate is not None
        assert len({id(by_key), id(again), id(by_alternate)}) == 3
        by_key.items.append(2)
        by_key.note = "mutated"
        assert again == by_alternate == Foo(key=1, zap=2, bar=3, items=[1], doc={"a": 1})
        # Twice by one key, and once by each key: a batch of two, shared neither way.
        for lookups in ([1, 1], [1, {"zap": 2, "bar": 3}]):
            first, second = store.batch_get(Foo, lookups)
            assert first is not None
            assert second is not None
            first.items.append(2)
            first.doc["a"] = 2
            assert second == Foo(key=1, zap=2, bar=3, items=[1], doc={"a": 1})

    def test_values_round_trip_exactly(self) -> None:
        store = self.store()
        values = rich_values()
        store.put(Foo(key="rich", zap=0, bar=0, **values))
        got = store.get(Foo, "rich")
        assert got is not None
        for name, value in values.items():
            assert getattr(got, name) == value, name
            assert type(getattr(got, name)) is type(value), name

    def test_invalidate_class(self) -> None:
        store = self.store(polymorphic=True)
        foo, pair, car = Foo(key=1, zap=1, bar=1), Pair(a="a", b=1), Car(license_plate="P")
        store.batch_put([foo, pair, car])
        store.invalidate_class(Foo)
        store.invalidate_class(Automobile)
        assert store.get(Foo, 1) is None
        assert store.get(Foo, {"zap": 1, "bar": 1}) is None
        assert store.get(Automobile, "P") is None
        assert store.get(Car, "P") == car  # its own class was not invalidated
        assert store.get(Pair, ("a", 1)) == pair
        store.put(foo)
        assert store.get(Foo, {"zap": 1, "bar": 1}) == foo

    # -- commits and race-safe fills ----------------------------------------------------

    def test_write_committed_removes_and_adds(self) -> None:
        store = self.store()
        old = Foo(key=1, zap=1, bar=1)
        gone = Foo(key=2, zap=2, bar=2)
        store.batch_put([old, gone])
        new = Foo(key=3, zap=3, bar=3)
        store.write_committed([new], [(Foo, {"zap": 1, "bar": 1}), (Foo, {"key": 2})])
        assert store.get(Foo, 3) == new
        assert store.get(Foo, {"zap": 3, "bar": 3}) == new
        assert store.get(Foo, {"zap": 1, "bar": 1}) is None
        assert store.get(Foo, 2) is None
        assert store.get(Foo, {"zap": 2, "bar": 2}) is None
        # An unversioned put never overwrites: it cannot tell whose commit is newer.
        store.write_committed([Foo(key=1, zap=1, bar=9)], [])
        assert store.get(Foo, 1) == old
        # A removal leaves a tombstone that a late put of the old state cannot pass.
        store.write_committed([gone], [])
        assert store.get(Foo, 2) is None

    def test_versioned_commits_keep_the_highest_version(self) -> None:
        store = self.store()
        store.write_committed([Versioned(id=1, name="v3", version=3)], [])
        assert _name(store.get(Versioned, 1)) == "v3"
        store.write_committed([Versioned(id=1, name="v2", version=2)], [])
        assert _name(store.get(Versioned, 1)) == "v3"
        store.write_committed([Versioned(id=1, name="v4", version=4)], [])
        assert _name(store.get(Versioned, 1)) == "v4"
        store.write_committed([], [(Versioned, {"id": 1})])
        store.write_committed([Versioned(id=1, name="v5", version=5)], [])
        assert store.get(Versioned, 1) is None  # a tombstone's removal may be newer

    def test_a_fill_needs_its_lease(self) -> None:
        store = self.store()
        foo = Foo(key=1, zap=1, bar=1)
        claim = store.reserve(Foo, [1])
        assert claim.granted == [True]
        store.write_committed([], [(Foo, {"key": 1})])  # a commit lands meanwhile
        store.fill(claim, [foo])
        assert store.get(Foo, 1) is None
        claim = store.reserve(Foo, [1])
        assert claim.granted == [True]
        store.fill(claim, [foo])
        assert store.get(Foo, 1) == foo
        assert store.get(Foo, {"zap": 1, "bar": 1}) == foo

    def test_a_versioned_commit_voids_a_lease(self) -> None:
        store = self.store()
        claim = store.reserve(Versioned, [1])
        store.write_committed([Versioned(id=1, name="new", version=2)], [])
        store.fill(claim, [Versioned(id=1, name="old", version=1)])
        assert store.get(Versioned, 1) is None

    def test_a_second_reader_waits_for_the_first(self) -> None:
        store = self.store()
        first = store.reserve(Foo, [1, 2])
        second = store.reserve(Foo, [1, 3])
        assert first.granted == [True, True]
        assert second.granted == [False, True]
        assert second.busy == [True, False]
        third = store.reserve(Foo, [4, 1])  # the busy key after a free one
        assert (third.granted, third.busy) == ([True, False], [False, True])
        store.fill(first, [Foo(key=1, zap=1, bar=1), None])
        assert store.get(Foo, 1) == Foo(key=1, zap=1, bar=1)
        # A lease that found nothing is given back: the next reader may fill.
        assert store.reserve(Foo, [2]).granted == [True]

    def test_an_object_found_by_alternate_key_is_added_only_where_nothing_is(self) -> None:
        store = self.store()
        foo = Foo(key=1, zap=1, bar=1)
        claim = store.reserve(Foo, [{"zap": 1, "bar": 1}])
        store.write_committed([], [(Foo, {"key": 1})])  # its primary key was not leased
        store.fill(claim, [foo])
        assert store.get(Foo, 1) is None
        assert store.get(Foo, {"zap": 1, "bar": 1}) is None
        claim = store.reserve(Foo, [{"zap": 2, "bar": 2}])
        other = Foo(key=2, zap=2, bar=2)
        store.fill(claim, [other])
        assert store.get(Foo, {"zap": 2, "bar": 2}) == other
        assert store.get(Foo, 2) == other

    def test_a_tombstone_older_than_the_claim_is_refilled_by_alternate_key(self) -> None:
        store = self.store()
        foo = Foo(key=1, zap=1, bar=1)
        store.write_committed([], [(Foo, {"key": 1})])  # a commit before the reader came
        self.clock.advance(1)
        claim = store.reserve(Foo, [{"zap": 1, "bar": 1}])
        store.fill(claim, [foo])
        expected = foo if self.compares_tombstone_times else None
        assert store.get(Foo, 1) == expected
        assert store.get(Foo, {"zap": 1, "bar": 1}) == expected

    def test_an_alternate_key_given_up_and_taken_by_another_object_points_to_it(self) -> None:
        store = self.store()
        store.write_committed([User(id=1, email="x@example.com")], [])
        # The first gives the address up (its old key removed), then another takes it.
        store.write_committed([], [(User, {"id": 1}), (User, {"email": "x@example.com"})])
        store.write_committed([User(id=2, email="x@example.com")], [])
        assert store.get(User, {"email": "x@example.com"}) == User(id=2, email="x@example.com")

    def test_a_fill_after_the_class_was_invalidated_writes_nothing(self) -> None:
        store = self.store()
        claim = store.reserve(Foo, [1, {"zap": 2, "bar": 2}])
        store.invalidate_class(Foo)  # a bulk statement changed rows meanwhile
        store.fill(claim, [Foo(key=1, zap=1, bar=1), Foo(key=2, zap=2, bar=2)])
        assert store.batch_get(Foo, [1, 2, {"zap": 2, "bar": 2}]) == [None, None, None]

    # -- keys -------------------------------------------------------------------------

    def test_key_values_are_type_stable(self) -> None:
        store = self.store()
        objs = [
            Foo(key=key, zap=0, bar=n) for n, key in enumerate([1, "1", True, 1.0, b"1", (1,)])
        ]
        store.batch_put(objs)
        assert store.batch_get(Foo, [1, "1", True, 1.0, b"1", (1,)]) == objs

    def test_equal_values_share_a_key(self) -> None:
        store = self.store()
        when = dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone.utc)
        foo = Foo(key=when, zap=0.0, bar=Decimal("1.0"))
        store.put(foo)
        other_zone = when.astimezone(dt.timezone(dt.timedelta(hours=-7)))
        assert store.get(Foo, other_zone) == foo
        assert store.get(Foo, {"zap": -0.0, "bar": Decimal("1.000")}) == foo

    def test_long_and_odd_keys(self) -> None:
        store = self.store()
        odd = [
            "x" * 5000,
            "with space",
            "ctrl\x00\n\r",
            "ünïcödé ✓",
            "colon:and/slash%",
            "",
            10**100,
            -(2**70),
        ]
        objs = [Foo(key=key, zap=i, bar="odd") for i, key in enumerate(odd)]
        store.batch_put(objs)
        assert store.batch_get(Foo, odd) == objs
        assert store.get(Foo, "x" * 4999) is None

    def test_key_value_types(self) -> None:
        store = self.store()
        keys = [
            dt.date(2020, 1, 1),
            dt.datetime(2020, 1, 1),
            dt.time(1, 2),
            UUID(int=5),
            Decimal("2.5"),
            Color.RED,
            ("a", (1, 2)),
            False,
        ]
        objs = [Foo(key=key, zap=i, bar="types") for i, key in enumerate(keys)]
        store.batch_put(objs)
        assert store.batch_get(Foo, keys) == objs

    def test_none_alternate_key_identifies_nothing(self) -> None:
        store = self.store()
        first, second = User(id=1, email=None), User(id=2, email=None)
        store.batch_put([first, second])
        assert store.get(User, 1) == first
        assert store.get(User, {"email": None}) is None
        assert store.batch_get(User, [{"email": None}, 2]) == [None, second]

    # -- bad input: a typed error, and nothing changes --------------------------------

    def _assert_unchanged(self, store: BaseStore, sentinel: Foo) -> None:
        assert store.get(Foo, sentinel.key) == sentinel

    def _bad_calls(self) -> list[tuple[type[StockpyleError], Any, str]]:
        good = Foo(key="new", zap=9, bar=9)
        return [
            (NotStorableError, lambda s: s.get(NoKeys, 1), "NoKeys"),
            (NotStorableError, lambda s: s.get("Foo", 1), "expected a class"),
            (NotStorableError, lambda s: s.put(NoKeys()), "NoKeys"),
            (NotStorableError, lambda s: s.batch_put([good, NoKeys()]), "NoKeys"),
            (NotStorableError, lambda s: s.put(BadDeclaration()), "('a', 3)"),
            (NotStorableError, lambda s: s.get(Duplicated, 1), "twice"),
            (NotStorableError, lambda s: s.get(EmptyDeclaration, 1), "non-empty"),
            (NotStorableError, lambda s: s.get(NotAList, 1), "NotAList"),
            (UnknownKeyError, lambda s: s.get(Foo, {"nope": 1}), "('zap', 'bar')"),
            (UnknownKeyError, lambda s: s.get(Foo, {"zap": 1}), "Foo"),
            (UnknownKeyError, lambda s: s.get(Pair, ("x",)), "Pair"),
            (UnknownKeyError, lambda s: s.get(Pair, "x"), "Pair"),
            (UnknownKeyError, lambda s: s.batch_get(Foo, ["ok", {"bad": 1}]), "Foo"),
            (InvalidKeyValueError, lambda s: s.get(Foo, ["unhashable"]), "list"),
            (InvalidKeyValueError, lambda s: s.get(Foo, {"key": {}}), "dict"),
            (InvalidKeyValueError, lambda s: s.get(Foo, object()), "object"),
            (InvalidKeyValueError, lambda s: s.get(Foo, float("nan")), "NaN"),
            (InvalidKeyValueError, lambda s: s.put(MissingAttr()), "email"),
            (InvalidKeyValueError, lambda s: s.put(Foo(key=[1], zap=1, bar=1)), "list"),
            (InvalidKeyValueError, lambda s: s.batch_put([good, Foo(key=None)]), "None"),
            (InvalidKeyValueError, lambda s: s.delete(Foo(key={1}, zap=1, bar=1)), "set"),
            (InvalidKeyValueError, lambda s: s.batch_delete([good, Foo(zap=1)]), "key"),
        ]

    def test_bad_input_raises_typed_errors_and_changes_nothing(self) -> None:
        store = self.store()
        sentinel = Foo(key="sentinel", zap=0, bar=0)
        store.put(sentinel)
        for error, call, named in self._bad_calls():
            with pytest.raises(error) as info:
                call(store)
            assert named in str(info.value), (str(info.value), named)
            assert isinstance(info.value, StockpyleError)
            self._assert_unchanged(store, sentinel)
            assert store.get(Foo, "new") is None

    # -- expiry -----------------------------------------------------------------------

    def _expiring(self, lifetime: Any) -> BaseStore:
        if not self.supports_expiry:
            pytest.skip("this store does not support expiry")  # pragma: no cover
        return self.store(lifetime_cb=lambda obj: lifetime)

    @pytest.mark.parametrize(
        "lifetime",
        [20, dt.timedelta(seconds=20)],
        ids=["int", "timedelta"],
    )
    def test_relative_lifetime(self, lifetime: Any) -> None:
        store = self._expiring(lifetime)
        foo = Foo(key=1, zap=1, bar=1)
        store.put(foo)
        self.clock.advance(19)
        assert store.get(Foo, 1) == foo
        assert store.get(Foo, {"zap": 1, "bar": 1}) == foo
        self.clock.advance(1)
        assert store.get(Foo, 1) is None
        assert store.get(Foo, {"zap": 1, "bar": 1}) is None

    def test_absolute_lifetime(self) -> None:
        at = dt.datetime.fromtimestamp(self.clock.now + 300, tz=dt.timezone.utc)
        store = self._expiring(at)
        foo = Foo(key=1, zap=1, bar=1)
        store.put(foo)
        self.clock.advance(299)
        assert store.get(Foo, 1) == foo
        self.clock.advance(1)
        assert store.get(Foo, 1) is None

    def test_a_filled_entry_expires_with_its_lifetime(self) -> None:
        store = self._expiring(20)
        foo, other = Foo(key=1, zap=1, bar=1), Foo(key=2, zap=2, bar=2)
        store.fill(store.reserve(Foo, [1]), [foo])
        store.fill(store.reserve(Foo, [{"zap": 2, "bar": 2}]), [other])  # added by key 2
        self.clock.advance(19)
        assert store.batch_get(Foo, [1, {"zap": 1, "bar": 1}]) == [foo, foo]
        assert store.batch_get(Foo, [2, {"zap": 2, "bar": 2}]) == [other, other]
        self.clock.advance(1)
        assert store.batch_get(Foo, [1, {"zap": 1, "bar": 1}]) == [None, None]
        assert store.batch_get(Foo, [2, {"zap": 2, "bar": 2}]) == [None, None]

    def test_no_lifetime_never_expires(self) -> None:
        store = self._expiring(None)
        store.put(Foo(key=1, zap=1, bar=1))
        self.clock.advance(10 * 365 * 86400)
        assert store.get(Foo, 1) == Foo(key=1, zap=1, bar=1)
        assert store.get(Foo, {"zap": 1, "bar": 1}) == Foo(key=1, zap=1, bar=1)

    def test_lifetime_per_object(self) -> None:
        if not self.supports_expiry:
            pytest.skip("this store does not support expiry")  # pragma: no cover
        store = self.store(lifetime_cb=lambda obj: 5 if obj.key == "short" else 500)
        store.batch_put([Foo(key="short", zap=1, bar=1), Foo(key="long", zap=2, bar=2)])
        self.clock.advance(10)
        assert store.batch_get(Foo, ["short", "long"]) == [None, Foo(key="long", zap=2, bar=2)]
        assert store.get(Foo, {"zap": 1, "bar": 1}) is None
        self.clock.advance(489)
        assert store.get(Foo, "long") == Foo(key="long", zap=2, bar=2)
        self.clock.advance(1)
        assert store.get(Foo, "long") is None

    def _ending_now(self, ends: Callable[[Any], bool]) -> BaseStore:
        """A store whose objects for which ``ends`` holds expire at this very instant."""
        if not self.supports_expiry:
            pytest.skip("this store does not support expiry")  # pragma: no cover
        now = dt.datetime.fromtimestamp(self.clock.now, tz=dt.timezone.utc)
        return self.store(lifetime_cb=lambda obj: now if ends(obj) else None)

    def test_a_versioned_commit_that_has_expired_already_removes_the_older_version(
        self,
    ) -> None:
        store = self._ending_now(lambda obj: obj.name == "v2")
        store.write_committed([Versioned(id=1, name="v1", version=1)], [])
        store.write_committed([Versioned(id=1, name="v2", version=2)], [])
        assert store.get(Versioned, 1) is None

    def test_a_fill_that_has_expired_already_stores_nothing_and_gives_its_lease_back(
        self,
    ) -> None:
        store = self._ending_now(lambda obj: obj.key == 1)
        # The alternate key was 2's, and moved to 1 (the database says so), whose fill
        # has expired by the time it is written: neither object may answer it.
        store.write_committed([Foo(key=2, zap=1, bar=1)], [])
        store.fill(store.reserve(Foo, [1]), [Foo(key=1, zap=1, bar=1)])
        assert store.batch_get(Foo, [1, {"zap": 1, "bar": 1}]) == [None, None]
        assert store.reserve(Foo, [1]).granted == [True]

    @pytest.mark.parametrize("lifetime", [0, -5, "10", 2.5, True, dt.timedelta(0)])
    def test_bad_lifetime_raises_and_stores_nothing(self, lifetime: Any) -> None:
        store = self._expiring(lifetime)
        with pytest.raises(InvalidLifetimeError, match="lifetime"):
            store.put(Foo(key=1, zap=1, bar=1))
        assert store.get(Foo, 1) is None

    # -- polymorphism -----------------------------------------------------------------

    def test_polymorphic_lookup_by_base_class(self) -> None:
        if not self.supports_polymorphic:
            pytest.skip("this store is not polymorphic")  # pragma: no cover
        store = self.store(polymorphic=True)
        car = Car(license_plate="1234 XYZ")
        store.put(car)
        as_auto = store.get(Automobile, {"license_plate": "1234 XYZ"})
        assert type(as_auto) is Car
        assert as_auto == car == store.get(Car, {"license_plate": "1234 XYZ"})
        assert store.get(Truck, "1234 XYZ") is None
        store.delete(car)
        assert store.get(Automobile, "1234 XYZ") is None
        assert store.get(Car, "1234 XYZ") is None

    def test_a_polymorphic_fill_by_base_class_stores_the_subclass(self) -> None:
        if not self.supports_polymorphic:
            pytest.skip("this store is not polymorphic")  # pragma: no cover
        store = self.store(polymorphic=True)  # new: no class of the hierarchy used yet
        car = Car(license_plate="1234 XYZ")
        store.fill(store.reserve(Automobile, ["1234 XYZ"]), [car])
        assert store.get(Automobile, "1234 XYZ") == car
        assert store.get(Car, "1234 XYZ") == car

    def test_a_polymorphic_commit_removal_reaches_the_base_class_keys(self) -> None:
        if not self.supports_polymorphic:
            pytest.skip("this store is not polymorphic")  # pragma: no cover
        store = self.store(polymorphic=True)
        store.put(Car(license_plate="1234 XYZ"))
        # A key that holds None names nothing (an unset nullable key): the rest still go.
        removals: list[tuple[type, dict[str, Any]]] = [
            (Car, {"license_plate": None}),
            (Car, {"license_plate": "1234 XYZ"}),
        ]
        store.write_committed([], removals)
        assert store.get(Automobile, "1234 XYZ") is None
        assert store.get(Car, "1234 XYZ") is None

    def test_not_polymorphic_by_default(self) -> None:
        store = self.store()
        store.put(Car(license_plate="ABC"))
        assert store.get(Automobile, "ABC") is None
        assert store.get(Car, "ABC") == Car(license_plate="ABC")
